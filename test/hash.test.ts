// placement: "hash": every key on its owner, the member that rendezvous hashing picks, with
// `replicas` copies on the members ranked next. In one process first (routing, what each node
// keeps, moves on a join and a stop, single flight, refusal of a mixed cluster), then in separate
// processes under a workload checked for stale reads and for linearizability.
import { afterEach, assert, clusterIt, describe, it, mixedIt, runtime, spawnWorkloadNode, startCluster, startNode, stopAll, track, waitFor, type WorkloadNode } from "../deps.ts";
import { KosyakError, Node, type NodeOptions } from "../mod.ts";
import { checkLinearizable } from "./linearizable.ts";
import { agreement, assertCoherent, check, cluster, FAST, fullMesh, now, peersAre, workload } from "./workloads.ts";

afterEach(stopAll);

const HASH = { placement: "hash" } as const satisfies NodeOptions;
/** No heartbeats unless a test waits that long, so that traffic counts only the ops. */
const QUIET = { heartbeatInterval: 1e9, peerTimeout: 2e9 };
const keysOf = (count: number, prefix = "k") => Array.from({ length: count }, (_, i) => `${prefix}${i}`);
const sum = (nodes: Node[], stat: (node: Node) => number) => nodes.reduce((total, node) => total + stat(node), 0);
const own = (node: Node) => node.stats().entries - node.stats().copies;

describe("Hash placement in one process", () => {
  it("each key is stored once, on its owner, and read from every node; no node keeps a record of other nodes' keys", async () => {
    const nodes = await startCluster(4, HASH);
    const keys = keysOf(1000);
    await nodes[0].mset(keys.map((key, i): [string, number] => [key, i]));
    assert.equal(sum(nodes, (node) => node.stats().entries), 1000);
    for (const node of nodes) {
      assert.ok(node.stats().entries > 150, `entries on one node: ${node.stats().entries}`);
      assert.equal(node.stats().remoteKeys, 0);
      assert.deepEqual(await node.mget(keys), keys.map((_, i) => i));
    }
    // Each key is where every node looks for it: a has() on exactly one node.
    for (const key of keys.slice(0, 50)) assert.equal(nodes.filter((node) => node.has(key)).length, 1, key);
  });

  it("a write from a node that does not own the key costs one request and its answer, whatever the cluster's size", async () => {
    const nodes = await startCluster(6, { ...HASH, ...QUIET });
    const writer = nodes[0];
    await writer.mset(keysOf(400).map((key): [string, number] => [key, 0]));
    const elsewhere = keysOf(400).filter((key) => !writer.has(key));
    const before = sum(nodes, (node) => node.stats().messagesSent);
    for (const key of elsewhere) await writer.set(key, 1);
    const perWrite = (sum(nodes, (node) => node.stats().messagesSent) - before) / elsewhere.length;
    console.log(`hash placement, 6 nodes: ${perWrite.toFixed(2)} messages per write from a node that does not own the key`);
    assert.equal(perWrite, 2);
  });

  it("with replicas: 1 each key is on its owner and one copy keeper; a removal takes both, and a get reads no copy", async () => {
    const nodes = await startCluster(4, { ...HASH, replicas: 1 });
    const keys = keysOf(500);
    await nodes[1].mset(keys.map((key): [string, string] => [key, "v"]));
    assert.equal(sum(nodes, own), 500);
    assert.equal(sum(nodes, (node) => node.stats().copies), 500);
    for (const key of keys.slice(0, 100)) await nodes[2].remove(key);
    assert.equal(sum(nodes, own), 400);
    assert.equal(sum(nodes, (node) => node.stats().copies), 400);
    for (const node of nodes) assert.deepEqual(await node.mget(keys.slice(0, 100)), keys.slice(0, 100).map(() => null));
    assert.equal(await nodes[0].remove(keys[0]), false);
    assert.equal(await nodes[3].remove(keys[200]), true);
  });

  it("a join moves only the keys the new member owns, and every key stays readable from every node", async () => {
    const nodes = await startCluster(4, HASH);
    const keys = keysOf(2000);
    await nodes[0].mset(keys.map((key, i): [string, number] => [key, i]));
    const joiner = track(await Node.start({ ...HASH, master: nodes[2].address }));
    const all = [...nodes, joiner];
    await waitFor("the moves to end", () => sum(nodes, (node) => node.stats().moved) === own(joiner) && own(joiner) > 0, 5_000);
    const moved = sum(nodes, (node) => node.stats().moved);
    console.log(`hash placement, a fifth node joins 4 holding 2,000 keys: ${moved} keys moved (${(moved / 20).toFixed(1)}%)`);
    assert.ok(moved > 250 && moved < 600, `keys moved: ${moved} (about a fifth)`);
    assert.equal(joiner.stats().adopted, moved);
    assert.equal(sum(all, (node) => node.stats().handedOver), 0);
    assert.equal(sum(all, own), 2000);
    for (const node of all) assert.deepEqual(await node.mget(keys), keys.map((_, i) => i));
  });

  it("a graceful stop hands each key to its next owner; a stop without hand-over loses none with replicas: 1", async () => {
    const nodes = await startCluster(4, { ...HASH, replicas: 1 });
    const keys = keysOf(1000);
    await nodes[0].mset(keys.map((key, i): [string, number] => [key, i]));
    await nodes[3].stop();
    const survivors = nodes.slice(0, 3);
    for (const node of survivors) assert.deepEqual(await node.mget(keys), keys.map((_, i) => i));
    await nodes[2].stop({ handover: false });
    const last = nodes.slice(0, 2);
    await waitFor("the survivors to see one peer", () => last.every((node) => node.stats().peers === 1), 5_000);
    for (const node of last) assert.deepEqual(await node.mget(keys), keys.map((_, i) => i));
    assert.ok(sum(last, (node) => node.stats().promoted) > 0, "copies were promoted");
    await waitFor("every key to have its copy again", () => sum(last, (node) => node.stats().copies) === 1000, 5_000);
  });

  it("concurrent gets of a missing key on every node call fetch once, on the key's owner, which then holds it", async () => {
    let calls = 0;
    const fetch = (key: string, done: (err: Error | null, value?: unknown) => void) => {
      calls++;
      setTimeout(() => done(null, `fetched ${key}`), 20);
    };
    const nodes = await startCluster(4, { ...HASH, fetch });
    const values = await Promise.all(nodes.flatMap((node) => [node.get("cold"), node.get("cold")]));
    assert.deepEqual(values, values.map(() => "fetched cold"));
    assert.equal(calls, 1);
    assert.equal(nodes.filter((node) => node.has("cold")).length, 1);
    assert.equal(sum(nodes, (node) => node.stats().fetches), 1);
  });

  it("TTL, clear and clusterKeys work across owners", async () => {
    const nodes = await startCluster(3, HASH);
    await nodes[0].mset(keysOf(300).map((key): [string, number] => [key, 1]));
    await nodes[1].set("brief", 1, { ttl: 50 });
    const listed: string[] = [];
    for await (const key of nodes[2].clusterKeys()) listed.push(key);
    assert.deepEqual(listed.sort(), [...keysOf(300), "brief"].sort());
    await waitFor("the short-lived key to expire", async () => (await nodes[2].get("brief")) === null, 2_000);
    await nodes[2].clear();
    for (const node of nodes) assert.equal(node.stats().entries, 0);
    assert.equal(await nodes[0].get("k1"), null);
  });

  it("a node of the other placement is refused on both sides, with both placements named", async () => {
    const hashed = await startNode(HASH);
    const errors: Error[] = [];
    hashed.on("error", (error) => errors.push(error));
    const local = new Node({ master: hashed.address, connectAttempts: 1 });
    track(local);
    const refused = await local.init().ready().then(() => undefined, (error: unknown) => error);
    assert.ok(refused instanceof KosyakError, `init failed with a KosyakError: ${String(refused)}`);
    assert.equal(refused.code, "ERR_PROTOCOL");
    assert.match(refused.message, /placement "local".*"hash"/);
    await waitFor("the hash node to report the refusal", () => errors.length > 0, 2_000);
    assert.match(errors[0].message, /placement "local".*"hash"/);
    assert.equal(hashed.stats().peers, 0);
  });

  it("a wrong placement is refused with what was wrong", () => {
    assert.throws(() => new Node({ placement: "ring" as "hash" }), /placement must be "local" or "hash": received "ring"/);
  });

  it("a reader with a near cache keeps what the owner let it keep, and a set or remove on another node drops it before calling back: 300 trials", async () => {
    const [reader, writer, other] = await startCluster(3, { ...HASH, nearCache: true });
    let stale = 0;
    for (let i = 0; i < 300; i++) {
      const key = `near${i}`;
      await writer.set(key, "old");
      await reader.get(key);
      await reader.get(key);
      if (i % 3 === 2) {
        await other.remove(key);
        if ((await reader.get(key)) !== null) stale++;
      } else {
        await (i % 3 === 0 ? writer : other).set(key, "new");
        if ((await reader.get(key)) !== "new") stale++;
      }
    }
    const { nearHits } = reader.stats();
    console.log(`hash placement, near cache: 300 trials, ${stale} stale reads, ${nearHits} near hits`);
    assert.equal(stale, 0);
    // The reader owns about a third of the keys; it kept the others near and read them again there.
    assert.ok(nearHits > 100, `near hits: ${nearHits}`);
  });
});

describe("Hash placement across processes", () => {
  /** Checks a history for stale reads and for linearizability per key, and asserts both hold. */
  function assertLinearizable(title: string, history: Parameters<typeof checkLinearizable>[0], divergent: string[]): void {
    const violations = check(title, history, divergent);
    const report = checkLinearizable(history);
    console.log(`linearizability, ${title}: ${report.ops} ops on ${report.keys} keys, ${report.violations.length} keys not linearizable, ${report.undecided.length} undecided`);
    assertCoherent(violations, divergent);
    assert.deepEqual([report.violations.map((violation) => violation.key), report.undecided], [[], []], "keys not linearizable, and undecided");
  }

  clusterIt(`four ${runtime} processes in hash placement writing, removing and reading the same keys: every key linearizable, and all agree`, async () => {
    const nodes = await cluster("h", [runtime, runtime, runtime, runtime], HASH);
    const histories = await Promise.all(nodes.map((node, i) => node.run({ ...workload(300 + i, 2_500), concurrency: 4, maxOps: 1_500 })));
    const divergent = await agreement(nodes, 5_000);
    assertLinearizable(`four ${runtime} processes, hash placement`, histories.flat(), divergent);
  }, 60_000);

  clusterIt(`four ${runtime} processes in hash placement with near caches: every key linearizable, the near caches served reads, and all agree`, async () => {
    const nodes = await cluster("hn", [runtime, runtime, runtime, runtime], { ...HASH, nearCache: true });
    const histories = await Promise.all(nodes.map((node, i) => node.run({ ...workload(350 + i, 2_500), writeRatio: 0.1, concurrency: 4, maxOps: 1_500 })));
    const divergent = await agreement(nodes, 5_000);
    assertLinearizable(`four ${runtime} processes, hash placement, near caches`, histories.flat(), divergent);
    const stats = (await Promise.all(nodes.map((node) => node.call({ cmd: "stats" })))) as Array<{ nearHits: number }>;
    assert.ok(stats.some((s) => s.nearHits > 0), "the near caches served reads");
  }, 60_000);

  mixedIt("Node.js, Deno and Bun processes in hash placement with replicas: 1: every key linearizable, and all agree", async () => {
    const nodes = await cluster("hm", ["node", "deno", "bun", runtime], { ...HASH, replicas: 1 });
    const histories = await Promise.all(nodes.map((node, i) => node.run({ ...workload(400 + i, 2_500), concurrency: 4, maxOps: 1_500 })));
    const divergent = await agreement(nodes, 5_000);
    assertLinearizable(`node, deno, bun and ${runtime}, hash placement, replicas: 1`, histories.flat(), divergent);
  }, 60_000);

  for (const nearCache of [false, true]) {
    clusterIt(`${runtime} processes in hash placement while a member joins and another stops gracefully: no stale read, no lost key, and all agree${nearCache ? " (near caches)" : ""}`, async () => {
      const options = { ...HASH, ...FAST, replicas: 1, nearCache };
      const nodes = await cluster("hj", [runtime, runtime, runtime, runtime], options);
      const [writers, leaver] = [nodes.slice(0, 3), nodes[3]];
      const runs = writers.map((node, i) => node.run({ ...workload(500 + i, 4_000), maxOps: 20_000 }));
      const joined = new Promise<WorkloadNode>((resolve, reject) => {
        setTimeout(() => spawnWorkloadNode(`hj4-${runtime}`, { ...options, master: writers[0].address }, runtime).then(resolve, reject), 1_000);
      });
      const joiner = await joined;
      const joinedAt = now();
      const stoppedAt = now();
      await leaver.stop();
      const leftAt = now();
      const histories = await Promise.all(runs);
      const members = [...writers, joiner];
      await fullMesh(members, 10_000);
      const divergent = await agreement(members, 5_000);
      const history = histories.flat();
      const start = Math.min(...history.map((op) => op.start));
      console.log(
        `hash placement: a join ready and a graceful stop begun ${Math.round(stoppedAt - start)} ms into the workload; the stop took ${Math.round(leftAt - stoppedAt)} ms ` +
          `(the joiner ready at ${joinedAt.toFixed(1)}, the stop from ${stoppedAt.toFixed(1)} to ${leftAt.toFixed(1)})`,
      );
      assertCoherent(check(`${runtime} processes, hash placement${nearCache ? ", near caches" : ""}, a join and a graceful stop`, history, divergent), divergent);
    }, 60_000);
  }

  clusterIt(`four ${runtime} processes in hash placement with replicas: 1 holding 20,000 keys: one killed with SIGKILL, and no key is lost`, async () => {
    const nodes = await cluster("hk", [runtime, runtime, runtime, runtime], { ...HASH, ...FAST, replicas: 1 });
    await nodes[0].call({ cmd: "fill", prefix: "crash:", count: 20_000, tag: "v1" }, 60_000);
    await nodes[2].kill();
    const survivors = nodes.filter((_, i) => i !== 2);
    await peersAre(survivors, 2);
    for (const reader of survivors) {
      const result = (await reader.call({ cmd: "verify", prefix: "crash:", count: 20_000, tag: "v1" }, 60_000)) as { missing: number; wrong: number; examples: string[] };
      assert.deepEqual(result, { missing: 0, wrong: 0, examples: [] }, `what ${reader.name} read back`);
    }
  }, 60_000);
});
