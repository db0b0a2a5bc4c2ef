// Hand-over and copies across processes: a rolling restart under a reader and a writer, a
// graceful stop with copies, clearLocal and eviction with copies followed by a kill of the
// holder, and TTL across a hand-over with copies. Each runs on this runtime alone and in a
// Node.js, Deno and Bun cluster; where a workload runs, the history checker judges the whole run
// (a graceful stop is not a fault: there is no fault window).
import { afterEach, assert, clusterIt, describe, mixedIt, type Runtime, runtime, spawnWorkloadNode, stopAll, waitFor, type WorkloadNode } from "../deps.ts";
import type { NodeOptions } from "../mod.ts";
import { divergentKeys, type Op } from "./history.ts";
import { assertCoherent, check, cluster, fullMesh, now, peersAre } from "./workloads.ts";

afterEach(stopAll);

const SAME = `${runtime} processes`;
const CLUSTERS: Array<[title: string, targets: Runtime[]]> = [
  [SAME, [runtime, runtime, runtime, runtime]],
  ["Node.js, Deno and Bun processes", ["node", "deno", "bun", runtime]],
];

/** How far the nodes' TTL clock may be from the ops' clock, as test/history.ts allows by default. */
const TTL_SLACK_MS = 10;

const keysOf = (prefix: string, count: number) => Array.from({ length: count }, (_, i) => `${prefix}${i}`);

/** Fills `count` keys through `node` and returns them, adding their sets to `history`. */
async function filled(node: WorkloadNode, prefix: string, count: number, history: Op[], ttl = 0): Promise<string[]> {
  const { start, end } = (await node.call({ cmd: "fill", prefix, count, tag: "v1", ttl }, 60_000)) as { start: number; end: number };
  const keys = keysOf(prefix, count);
  for (const key of keys) history.push({ node: node.name, kind: "set", key, value: `${key}=v1`, start, end, ok: true, ...(ttl > 0 ? { ttl } : {}) });
  return keys;
}

/** What each node reads for every key, added to `history` as reads; returns the views by node name. */
async function readAll(nodes: WorkloadNode[], keys: string[], history: Op[]): Promise<Record<string, Record<string, string | null>>> {
  const views: Record<string, Record<string, string | null>> = {};
  for (const node of nodes) {
    const start = now();
    views[node.name] = await node.call({ cmd: "read", keys }, 60_000) as Record<string, string | null>;
    const end = now();
    for (const key of keys) history.push({ node: node.name, kind: "get", key, value: views[node.name][key], start, end, ok: true });
  }
  return views;
}

/** Reads of `keys` on `node` until halted, for at most a minute. */
const reading = (node: WorkloadNode, keys: string[], seed: number) =>
  node.run({ keys, durationMs: 60_000, concurrency: 8, writeRatio: 0, removeRatio: 0, seed, maxOps: 150_000 });

/**
 * Four members hold 5,000 keys each. Each member in turn writes 1,000 keys of its own, gets
 * SIGTERM (its stop hands over) and is replaced by a new process that joins through a live
 * member, while the next member overwrites 1,000 keys and the one after reads half of all the
 * keys in a loop. Then every member reads every key.
 */
async function rollUnderLoad(prefix: string, targets: Runtime[], options: NodeOptions) {
  const nodes = await cluster(`${prefix}-`, targets, options);
  const history: Op[] = [];
  const shares = await Promise.all(nodes.map((node, i) => filled(node, `${prefix}:${i}:`, 5_000, history)));
  const read = shares.flatMap((share) => share.slice(0, 2_500));
  const overwritten = shares.flatMap((share) => share.slice(0, 250));
  const keys = shares.flat();
  for (let i = 0; i < nodes.length; i++) {
    const [writer, reader] = [nodes[(i + 1) % nodes.length], nodes[(i + 2) % nodes.length]];
    const writes = writer.run({ keys: overwritten, durationMs: 60_000, concurrency: 4, writeRatio: 1, removeRatio: 0, seed: 40 + i, maxOps: 150_000 });
    const reads = reading(reader, read, 50 + i);
    keys.push(...await filled(nodes[i], `${prefix}:restart${i}:`, 1_000, history));
    await nodes[i].stop({ signal: true });
    nodes[i] = await spawnWorkloadNode(`${prefix}-${i}-${targets[i]}-new`, { ...options, master: writer.address }, targets[i]);
    await fullMesh(nodes, 10_000);
    await Promise.all([writer.call({ cmd: "halt" }), reader.call({ cmd: "halt" })]);
    for (const op of [...await writes, ...await reads]) history.push(op);
  }
  const views = await readAll(nodes, keys, history);
  const missing = nodes.map((node) => keys.filter((key) => views[node.name][key] === null).length);
  // A member declared down without leaving (a spurious peerTimeout on a busy machine) is the first suspect of a failure here.
  const events = (await Promise.all(nodes.map((node) => node.call({ cmd: "events" })))) as Array<Array<{ event: string; reason?: string }>>;
  const unexpected = events.map((list, i) => [nodes[i].name, list.filter((event) => event.event === "peerDown" && event.reason !== "left")]);
  if (unexpected.some(([, list]) => list.length > 0)) console.log(`peers down without leaving: ${JSON.stringify(unexpected)}`);
  return { history, divergent: divergentKeys(views), missing };
}

describe("Rolling restarts under a reader and a writer", () => {
  // replicas: 1 alone is the soak's setting (scripts/soak.ts), which restarts members in turn too.
  const configurations: Array<[string, NodeOptions]> = [
    ["", {}],
    [" with replicas: 1 and near caches", { replicas: 1, nearCache: true }],
  ];
  for (const [title, targets] of CLUSTERS) {
    for (const [named, options] of configurations) {
      if (title !== SAME && named !== configurations[1][0]) continue; // mixed: the richest setting only
      (title === SAME ? clusterIt : mixedIt)(`${title}${named}, each replaced in turn while others read and write: no key lost, no stale read, every node agrees`, async () => {
        const { history, divergent, missing } = await rollUnderLoad(`roll${options.replicas ?? 0}${options.nearCache ? "n" : ""}`, targets, options);
        const violations = check(`${title}${named}, a rolling restart under load`, history, divergent.slice(0, 5));
        assert.deepEqual(missing, [0, 0, 0, 0], "keys that read null on each member at the end");
        assertCoherent(violations, divergent);
      }, 120_000);
    }
  }
});

describe("A graceful stop with copies", () => {
  const cases: Array<[string, number, NodeOptions, boolean]> = [
    ["replicas: 1", 4, { replicas: 1 }, true],
    ["replicas: 1, stop({ handover: false })", 4, { replicas: 1 }, false],
    ["replicas: 2 on five members", 5, { replicas: 2 }, true],
  ];
  for (const [title, targets] of CLUSTERS) {
    for (const [named, size, options, handover] of cases) {
      (title === SAME ? clusterIt : mixedIt)(`${title}, ${named}: a member stops, and every survivor reads and knows every key the others hold`, async () => {
        const nodes = await cluster("stop-", [...targets, ...targets].slice(0, size), options);
        const history: Op[] = [];
        const shares = await Promise.all(nodes.map((node, i) => filled(node, `stop:${i}:`, 500, history)));
        await nodes[0].stop({ signal: true, handover });
        const survivors = nodes.slice(1);
        await peersAre(survivors, size - 2);
        const keys = shares.flat();
        const views = await readAll(survivors, keys, history);
        for (const node of survivors) {
          assert.equal(keys.filter((key) => views[node.name][key] === null).length, 0, `keys ${node.name} reads as null`);
          assert.equal(await node.call({ cmd: "has", keys }), keys.length, `keys ${node.name} knows of`);
        }
        assertCoherent(check(`${title}, ${named}, a graceful stop`, history, []), divergentKeys(views));
      }, 60_000);
    }
  }
});

describe("Copies go with their entry", () => {
  for (const [title, targets] of CLUSTERS) {
    const test = title === SAME ? clusterIt : mixedIt;
    test(`${title}, replicas: 1 and near caches: after clearLocal no node reads a cleared key, nor after the holder is killed`, async () => {
      const nodes = await cluster("clear-", targets.slice(0, 3), { replicas: 1, nearCache: true });
      const keys = keysOf("cleared:", 100);
      await nodes[0].call({ cmd: "fill", prefix: "cleared:", count: 100, tag: "v1" });
      // Every other node reads them first: near copies as well as the copies kept for replicas.
      for (const node of nodes.slice(1)) assert.ok(Object.values(await node.read(keys)).every((value) => value !== null));
      await nodes[0].call({ cmd: "clearLocal" });
      for (const node of nodes) {
        assert.deepEqual(Object.values(await node.read(keys)).filter((value) => value !== null), [], `cleared keys ${node.name} still reads`);
        assert.equal(await node.call({ cmd: "has", keys }), 0);
        assert.equal(await node.call({ cmd: "clusterKeys", prefix: "cleared:" }), 0);
      }
      await nodes[0].kill();
      await peersAre(nodes.slice(1), 1);
      for (const node of nodes.slice(1)) {
        assert.deepEqual(Object.values(await node.read(keys)).filter((value) => value !== null), [], `cleared keys ${node.name} reads once the holder died`);
      }
    }, 60_000);

    test(`${title}, replicas: 1 and maxEntries: 10: every node agrees on what the holder evicted, and after it is killed too`, async () => {
      const nodes = await cluster("evict-", targets.slice(0, 3), { replicas: 1, maxEntries: 10 });
      const keys = keysOf("evicted:", 30);
      for (const key of keys) await nodes[0].call({ cmd: "set", key, value: key });
      const live = keys.slice(20);
      const views = Object.fromEntries(await Promise.all(nodes.map(async (node) => [node.name, await node.read(keys)])));
      assert.deepEqual(divergentKeys(views), [], "keys the nodes disagree on");
      for (const node of nodes) {
        assert.deepEqual(keys.filter((key) => views[node.name][key] !== null), live, `keys ${node.name} reads`);
        assert.equal(await node.call({ cmd: "has", keys }), live.length);
        assert.equal(await node.call({ cmd: "clusterKeys", prefix: "evicted:" }), live.length);
      }
      await nodes[0].kill();
      const survivors = nodes.slice(1);
      await peersAre(survivors, 1);
      const after = Object.fromEntries(await Promise.all(survivors.map(async (node) => [node.name, await node.read(keys)])));
      assert.deepEqual(divergentKeys(after), [], "keys the survivors disagree on");
      for (const node of survivors) {
        assert.deepEqual(keys.slice(0, 20).filter((key) => after[node.name][key] !== null), [], `evicted keys ${node.name} reads`);
      }
    }, 60_000);

    test(`${title}, replicas: 1: entries handed over at half their TTL are never read after it`, async () => {
      const ttl = 2_000;
      const nodes = await cluster("ttl-", targets, { replicas: 1 });
      const history: Op[] = [];
      const keys = await filled(nodes[0], "expiring:", 20_000, history, ttl);
      const expired = history[history.length - 1].end + ttl;
      const readers = nodes.slice(1).map((node, i) =>
        node.run({ keys, durationMs: expired + 700 - now(), concurrency: 8, writeRatio: 0, removeRatio: 0, seed: 60 + i, maxOps: 150_000 }));
      await waitFor("half the TTL to pass", () => now() >= expired - ttl / 2, ttl);
      const stoppedAt = now();
      await nodes[0].stop({ signal: true });
      for (const op of (await Promise.all(readers)).flat()) history.push(op);
      // A node's TTL clock (Date.now, whole ms) and the ops' clock may differ by a few ms: the checker's own bound.
      const late = history.filter((op) => op.kind === "get" && op.value !== null && op.start > expired + TTL_SLACK_MS);
      if (late.length > 0) console.log(`reads after the latest expiry (${expired.toFixed(1)}): ${late.length}, the latest began ${(Math.max(...late.map((op) => op.start)) - expired).toFixed(1)} ms after it; at the stop: ${stoppedAt.toFixed(1)}`);
      const violations = check(`${title}, TTL across a hand-over with copies`, history, [], [], TTL_SLACK_MS);
      assert.equal(late.length, 0, "reads that began after the latest expiry and returned a value");
      assertCoherent(violations, []);
    }, 60_000);
  }
});
