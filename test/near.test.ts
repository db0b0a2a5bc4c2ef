// The near cache (NodeOptions.nearCache): values read from a peer are served again on the reader,
// and never once a newer write, a removal, the entry's expiry or its eviction has called back.
// The trials and the history run in separate processes of the suite's runtime.
import { afterEach, assert, clusterIt, describe, it, runtime, spawnWorkloadNode, startNode, stopAll, waitFor, type WorkloadNode } from "../deps.ts";
import { Node, type NodeStats } from "../mod.ts";
import { agreement, assertCoherent, check, cluster, FAST, KEYS, workload } from "./workloads.ts";

afterEach(stopAll);

/** Keys per round of trials; each key read back after the change is one trial. */
const BATCH = 1_000;
const ROUNDS = 5;
/** The ttl of the expiry trials: long enough to read every key twice before it is up. */
const TTL_MS = 300;

interface Verified {
  missing: number;
  wrong: number;
  examples: string[];
}

const verify = (node: WorkloadNode, prefix: string, tag: string) => node.call({ cmd: "verify", prefix, count: BATCH, tag }) as Promise<Verified>;
const stats = (node: WorkloadNode) => node.call({ cmd: "stats" }) as Promise<NodeStats>;

/**
 * A writer process, and a reader process with a near cache that joins it. Each round the writer
 * writes BATCH keys, the reader reads them twice (the second time from its near cache), then
 * `change` runs on the writer and the reader reads them once more: `expect` says what that read
 * must give. Resolves with the reads that gave anything else, and checks that the near cache
 * served every second read.
 */
async function trials(
  name: string,
  writerOptions: Record<string, unknown>,
  change: (writer: WorkloadNode, prefix: string, filledAt: number) => Promise<unknown>,
  expect: "new" | "nothing",
  ttl = 0,
): Promise<{ stale: number; examples: string[] }> {
  const writer = await spawnWorkloadNode(`${name}-writer`, writerOptions);
  const reader = await spawnWorkloadNode(`${name}-reader`, { master: writer.address, nearCache: { maxEntries: 2 * BATCH } });
  let stale = 0;
  const examples: string[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    const prefix = `${name}${round}:`;
    await writer.call({ cmd: "fill", prefix, count: BATCH, tag: "old", ttl });
    const filledAt = Date.now();
    for (let read = 0; read < 2; read++) {
      const first = await verify(reader, prefix, "old");
      assert.deepEqual([first.missing, first.wrong], [0, 0], `the reader reads what the writer wrote: ${first.examples.join(", ")}`);
    }
    await change(writer, prefix, filledAt);
    const after = await verify(reader, prefix, "new");
    // verify counts a null as missing and any other value as wrong.
    stale += expect === "new" ? after.missing + after.wrong : BATCH - after.missing;
    examples.push(...after.examples.slice(0, 3 - examples.length));
  }
  const { nearHits } = await stats(reader);
  assert.ok(nearHits >= ROUNDS * BATCH, `the near cache served every second read (${nearHits} near hits)`);
  console.log(`near cache, ${name}: ${ROUNDS * BATCH} trials, ${stale} stale reads, ${nearHits} near hits`);
  return { stale, examples };
}

describe("Near cache", () => {
  it("Node rejects a nearCache option of the wrong type, with an unknown bound, or with a bound below 1", () => {
    assert.throws(() => new Node({ nearCache: "yes" as unknown as boolean }), /nearCache must be a boolean or an object with maxEntries and maxBytes: received "yes"/);
    assert.throws(() => new Node({ nearCache: { maxKeys: 5 } as never }), /unknown nearCache option "maxKeys"/);
    assert.throws(() => new Node({ nearCache: { maxEntries: 0 } }), RangeError);
    assert.throws(() => new Node({ nearCache: { maxBytes: 1.5 } }), /nearCache.maxBytes must be an integer of 1 or more: received 1.5/);
  });

  it("a node with a near cache serves repeated reads of a peer's keys from it, within its bounds, and counts them", async () => {
    const holder = await startNode();
    const reader = await startNode({ master: holder.address, nearCache: { maxEntries: 2, maxBytes: 1_000 } });
    await holder.mset([["a", "1"], ["b", "22"], ["c", "333"]]);
    for (const key of ["a", "b", "c", "b", "c"]) await reader.get(key);
    const after = reader.stats();
    // Sizes count as maxBytes does: "b" and "\"22\"", "c" and "\"333\"".
    assert.deepEqual([after.remoteHits, after.nearHits, after.nearEntries, after.nearBytes], [3, 2, 2, (1 + 4) + (1 + 5)]);
    // "a" was the least recently used of three with room for two: it is read from the holder again.
    await reader.get("a");
    assert.equal(reader.stats().remoteHits, 4);
    assert.equal(holder.stats().served >= 4, true);
  });

  it("a full near cache evicts a value nobody read again before one that was read since it was kept", async () => {
    const holder = await startNode();
    const reader = await startNode({ master: holder.address, nearCache: { maxEntries: 2 } });
    await holder.mset([["a", 1], ["b", 2], ["c", 3]]);
    for (const key of ["a", "a", "b", "c"]) await reader.get(key);
    const { remoteHits } = reader.stats();
    await reader.get("a");
    assert.equal(reader.stats().remoteHits, remoteHits, "a, read again, stayed");
    await reader.get("b");
    assert.equal(reader.stats().remoteHits, remoteHits + 1, "b, never read again, went first");
  });

  it("a node without a near cache keeps nothing and reads every time from the holder", async () => {
    const holder = await startNode();
    const reader = await startNode({ master: holder.address });
    await holder.set("a", 1);
    for (let i = 0; i < 3; i++) assert.equal(await reader.get("a"), 1);
    const { remoteHits, nearHits, nearEntries } = reader.stats();
    assert.deepEqual([remoteHits, nearHits, nearEntries], [3, 0, 0]);
  });

  it("a value kept on a reader goes as soon as another node's removal of its key has called back", async () => {
    const holder = await startNode();
    const reader = await startNode({ master: holder.address, nearCache: true });
    await holder.set("short", "lived", { ttl: 60_000 });
    await reader.get("short");
    await reader.get("short");
    assert.equal(reader.stats().nearEntries, 1);
    await holder.remove("short");
    assert.deepEqual([await reader.get("short"), reader.stats().nearEntries], [null, 0]);
  });

  it("a reader that cannot reach a member serves nothing from its near cache, since that member writes without it", async () => {
    const holder = await startNode();
    // With one connection each, the reader and the newcomer refuse each other: a cut between them.
    const reader = await startNode({ master: holder.address, nearCache: true, maxConnections: 1 });
    await holder.set("k", "v1");
    await reader.get("k");
    assert.equal(await reader.get("k"), "v1");
    const cutOff = await startNode({ master: holder.address, maxConnections: 1, connectAttempts: 1 });
    // The holder tells the reader of the newcomer, which it cannot reach: from then on, its
    // reads go to the holder again.
    await waitFor("the reader to read from the holder", async () => {
      const before = reader.stats().remoteHits;
      await reader.get("k");
      return reader.stats().remoteHits > before;
    }, 10_000);
    const hitsBefore = reader.stats().nearHits;
    await cutOff.set("k", "v2");
    assert.equal(await reader.get("k"), null, "the holder names a member the reader cannot reach");
    await cutOff.remove("k");
    assert.equal(await reader.get("k"), null);
    assert.equal(reader.stats().nearHits, hitsBefore);
  });

  it("after a member is killed, a reader serves from its near cache again once no member still reaches the dead one", async () => {
    const holder = await startNode(FAST);
    const reader = await startNode({ ...FAST, master: holder.address, nearCache: true });
    const doomed = await spawnWorkloadNode("near-doomed", { ...FAST, master: holder.address });
    await waitFor("the reader to know every member", () => reader.stats().peers === 2, 5_000);
    await holder.set("k", "v1");
    const nearHitAfter = async () => {
      const before = reader.stats().nearHits;
      assert.equal(await reader.get("k"), "v1");
      return reader.stats().nearHits > before;
    };
    await waitFor("a near hit", nearHitAfter, 5_000);
    await doomed.kill();
    await waitFor("the reader to lose the killed member", () => reader.stats().peers === 1, 5_000);
    await waitFor("a near hit once the holder, too, has lost the killed member", nearHitAfter, 5_000);
  });

  clusterIt(`a ${runtime} reader with a near cache reads no value older than a set on another process that has called back: ${ROUNDS * BATCH} trials`, async () => {
    const { stale, examples } = await trials("set", {}, (writer, prefix) => writer.call({ cmd: "fill", prefix, count: BATCH, tag: "new" }), "new");
    assert.equal(stale, 0, `stale reads after the set: ${examples.join(", ")}`);
  }, 60_000);

  clusterIt(`a ${runtime} reader with a near cache reads no value of a key whose removal on another process has called back: ${ROUNDS * BATCH} trials`, async () => {
    const { stale, examples } = await trials("remove", {}, (writer, prefix) => writer.call({ cmd: "removeAll", prefix, count: BATCH }), "nothing");
    assert.equal(stale, 0, `values read after their removal: ${examples.join(", ")}`);
  }, 60_000);

  clusterIt(`a ${runtime} reader with a near cache reads no value whose ttl is up on its holder: ${ROUNDS * BATCH} trials`, async () => {
    // Waiting for the time itself: the holder is left alone, so that no announcement of the
    // expiry can reach the reader first, and the near cache's own expiry time is what counts.
    const expired = (_writer: WorkloadNode, _prefix: string, filledAt: number) =>
      waitFor("the round's ttl to be up", () => Date.now() > filledAt + TTL_MS, 2 * TTL_MS);
    const { stale, examples } = await trials("expire", {}, expired, "nothing", TTL_MS);
    assert.equal(stale, 0, `values read after their expiry: ${examples.join(", ")}`);
  }, 60_000);

  clusterIt(`a ${runtime} reader with a near cache reads no value its holder evicted in a write that has called back: ${ROUNDS * BATCH} trials`, async () => {
    const evict = (writer: WorkloadNode, prefix: string) => writer.call({ cmd: "fill", prefix: `${prefix}filler-`, count: BATCH, tag: "filler" });
    const { stale, examples } = await trials("evict", { maxEntries: BATCH }, evict, "nothing");
    assert.equal(stale, 0, `values read after their eviction: ${examples.join(", ")}`);
  }, 60_000);

  clusterIt(`three ${runtime} processes with near caches, setting (some with a ttl), removing and reading the same keys, never read a replaced or expired value, and agree`, async () => {
    const nodes = await cluster("n", [runtime, runtime, runtime], { nearCache: true });
    const histories = await Promise.all(nodes.map((node, i) => node.run({ ...workload(900 + i, 4_000), writeRatio: 0.2, removeRatio: 0.03, ttlRatio: 0.3, ttl: 40 })));
    const divergent = await agreement(nodes, 5_000);
    const violations = check(`three ${runtime} processes with near caches`, histories.flat(), divergent);
    const nearHits = (await Promise.all(nodes.map(stats))).reduce((sum, s) => sum + s.nearHits, 0);
    console.log(`near cache history: ${nearHits} near hits over ${KEYS.length} keys`);
    assert.ok(nearHits >= 1_000, `the near caches served reads (${nearHits} near hits)`);
    assertCoherent(violations, divergent);
  }, 40_000);
});
