// Hand-over: a node that stops gracefully gives its entries to the others first, so that a
// rolling restart of every node loses nothing.
import {
  afterEach,
  assert,
  clusterIt,
  describe,
  frame,
  it,
  ManualClock,
  mixedIt,
  rawConnect,
  type Runtime,
  runtime,
  spawnWorkloadNode,
  startCluster,
  startNode,
  stopAll,
  waitFor,
} from "../deps.ts";
import type { NodeOptions } from "../mod.ts";
import { assertCoherent, check, cluster, fullMesh, workload } from "./workloads.ts";

afterEach(stopAll);

/** Heartbeats that never fire unless the test moves the clock that far. */
const QUIET = { heartbeatInterval: 1e9, peerTimeout: 2e9 };

const keysOf = (count: number, prefix = "k") => Array.from({ length: count }, (_, i) => `${prefix}${i}`);

describe("Hand-over on stop", () => {
  it("a stopping node hands every entry to the others, and every directory points to them, before stop completes", async () => {
    const [a, b, c] = await startCluster(3);
    const keys = keysOf(1000);
    await a.mset(keys.map((key): [string, string] => [key, `value of ${key}`]));
    await a.stop();
    assert.equal(a.stats().handedOver, 1000);
    assert.equal(b.stats().adopted + c.stats().adopted, 1000);
    assert.ok(b.stats().adopted > 300 && c.stats().adopted > 300, "rendezvous hashing spreads the keys over both");
    for (const node of [b, c]) {
      // Each node holds its share and knows the other's, without asking anyone.
      assert.equal(node.stats().entries + node.stats().remoteKeys, 1000);
      assert.ok(keys.every((key) => node.has(key)));
      assert.deepEqual(await node.mget(keys), keys.map((key) => `value of ${key}`));
      assert.equal(node.stats().misses, 0);
    }
  });

  it("a node holding far more than maxQueueBytes hands every entry over without stalling its heir", async () => {
    // 40,000 values of 300 characters come to about 13 MB, twelve times maxQueueBytes: sent all
    // at once, the heir was cut off as stalled and its share was lost.
    const limits = { maxQueueBytes: 1024 * 1024 };
    const a = await startNode(limits);
    const b = await startNode({ ...limits, master: a.address });
    const keys = keysOf(40_000);
    const value = (key: string) => key.padEnd(300, ".");
    for (let start = 0; start < keys.length; start += 1000) await a.mset(keys.slice(start, start + 1000).map((key): [string, string] => [key, value(key)]));
    await a.stop();
    assert.equal(b.stats().adopted, keys.length);
    assert.deepEqual(await b.mget(keys), keys.map(value));
  }, 60_000);

  it("handed-over entries keep their remaining TTL, on the node that takes them and in every directory", async () => {
    const clock = new ManualClock();
    const [a, b, c] = await startCluster(3, { clock, ...QUIET });
    await a.mset(keysOf(100).map((key): [string, number] => [key, 1]), { ttl: 60_000 });
    await a.set("forever", 1);
    clock.advance(20_000);
    await a.stop();
    clock.advance(39_999);
    for (const node of [b, c]) assert.equal(node.has("k7"), true);
    clock.advance(1);
    for (const node of [b, c]) {
      assert.deepEqual(await node.mget(keysOf(100)), keysOf(100).map(() => null));
      assert.equal(await node.get("forever"), 1);
    }
  });

  it("stop({ handover: false }) hands nothing over, and stop checks its options", async () => {
    const [a, b] = await startCluster(2);
    await a.set("k", 1);
    assert.throws(() => a.stop({ handover: "yes" as unknown as boolean }), { name: "TypeError", message: /handover must be a boolean/ });
    await a.stop({ handover: false });
    assert.equal(a.stats().handedOver, 0);
    assert.equal(await b.get("k"), null);
  });

  it("a member with maxEntries takes what fits by its own eviction rules and never holds more", async () => {
    const a = await startNode();
    const small = await startNode({ master: a.address, maxEntries: 50 });
    const large = await startNode({ master: a.address });
    const keys = keysOf(1000);
    await a.mset(keys.map((key): [string, number] => [key, 1]));
    await a.stop();
    assert.equal(small.stats().entries, 50);
    assert.ok(small.stats().evictions >= small.stats().adopted - 50);
    assert.ok(large.stats().entries > 300);
    const held = (await large.mget(keys)).filter((value) => value === 1).length;
    assert.equal(held, large.stats().entries + 50, "the large member reads its own entries and the small one's");
  });

  it("two nodes stopping at once hand everything to the one that stays, none to each other", async () => {
    const [a, b, c] = await startCluster(3);
    await a.mset(keysOf(1500, "a").map((key): [string, string] => [key, key]));
    await b.mset(keysOf(1500, "b").map((key): [string, string] => [key, key]));
    await Promise.all([a.stop(), b.stop()]);
    const keys = [...keysOf(1500, "a"), ...keysOf(1500, "b")];
    assert.equal(c.stats().entries, 3000);
    assert.deepEqual(await c.mget(keys), keys);
  });

  for (const placement of ["local", "hash"] as const) {
    it(`a member whose connection is down when a node stops takes nothing: every entry goes to a member the node reaches (${placement} placement)`, async () => {
      const [a, b] = await startCluster(2, { ...QUIET, requestTimeout: 1_000, placement });
      const keys = keysOf(1000);
      await a.mset(keys.map((key): [string, string] => [key, key]));
      // A third member joins, then closes its connection saying that another one replaces it,
      // which never comes: the node waits for it up to requestTimeout (with hash placement, the
      // member's keys are its until then). The member would rank
      // first for about a third of the keys.
      const raw = await rawConnect(a.address);
      raw.socket.write(frame({ op: "hello", version: 9, placement, id: "dropped-member", host: "127.0.0.1", port: 9 }));
      assert.equal((await raw.next()).op, "welcome");
      await raw.exchangeKeys();
      if (placement === "hash") raw.socket.write(frame({ op: "moveDone", clock: 0 }));
      raw.socket.end(frame({ op: "duplicate" }));
      await waitFor("the node to see the connection close", () => a.stats().connections === 1, 5_000);
      await a.stop();
      assert.deepEqual(await b.mget(keys), keys);
    });
  }

  it("writes racing with a hand-over win over the entries handed over", async () => {
    const [a, b, c] = await startCluster(3);
    const keys = keysOf(2000);
    await a.mset(keys.map((key): [string, string] => [key, "old"]));
    // The stop and the writes of every key start in the same tick.
    const [stopped, written] = [a.stop(), b.mset(keys.map((key): [string, string] => [key, `new ${key}`]))];
    await Promise.all([stopped, written]);
    for (const node of [b, c]) assert.deepEqual(await node.mget(keys), keys.map((key) => `new ${key}`));
  });
});

/**
 * Writes `count` keys spread over the nodes, stops and restarts every node in turn (a graceful
 * stop: the process ends when its input does), and returns what every node reads back.
 */
async function rollingRestart(prefix: string, targets: Runtime[], count: number, options: NodeOptions = {}): Promise<Array<{ missing: number; wrong: number }>> {
  const nodes = await cluster(`${prefix}-`, targets, options);
  const share = count / nodes.length;
  await Promise.all(nodes.map((node, i) => node.call({ cmd: "fill", prefix: `${prefix}:${i}:`, count: share, tag: "v1" }, 60_000)));
  for (let i = 0; i < nodes.length; i++) {
    await nodes[i].stop();
    const master = nodes[(i + 1) % nodes.length].address;
    nodes[i] = await spawnWorkloadNode(`${prefix}-${i}-restarted`, { ...options, master }, targets[i]);
    await fullMesh(nodes, 10_000);
  }
  // Every node at once, each reading one share after another.
  const verified = await Promise.all(nodes.map(async (node) => {
    const results = [];
    for (let i = 0; i < targets.length; i++) {
      results.push(await node.call({ cmd: "verify", prefix: `${prefix}:${i}:`, count: share, tag: "v1" }, 60_000) as { missing: number; wrong: number });
    }
    return results;
  }));
  return verified.flat();
}

describe("Reads during a stop", () => {
  for (const placement of ["local", "hash"] as const) {
    it(`a get whose holder has not answered when the stop closes its connection fails with ERR_STOPPED, not null (${placement} placement)`, async () => {
      const node = await startNode({ placement, ...QUIET });
      const raw = await rawConnect(node.address);
      raw.socket.write(frame({ op: "hello", version: 9, placement, id: "raw-holder", host: "127.0.0.1", port: 9 }));
      assert.equal((await raw.next()).op, "welcome");
      // The raw peer holds every key (local placement); with hash placement it is the only other
      // member, so it owns about half of them.
      const keys = keysOf(20);
      await raw.exchangeKeys(keys.map((key) => [key, 1, 0]));
      // It has no entries to move to the node, which may then answer for its own keys.
      if (placement === "hash") raw.socket.write(frame({ op: "moveDone", clock: 0 }));
      const reads = keys.map((key) => node.get(key).then((value) => ({ value }), (error: { code?: string }) => ({ error: error.code })));
      await waitFor("a get", () => raw.messages.some((message) => message.op === "get" || message.op === "ownerGet"), 5_000);
      const asked = raw.messages.find((message) => message.op === "get" || message.op === "ownerGet")!;
      // The raw holder never answers the get, but says goodbye when asked to.
      const stopped = node.stop();
      await waitFor("the goodbye", () => raw.messages.some((message) => message.op === "bye"), 5_000);
      const bye = raw.messages.find((message) => message.op === "bye")!;
      raw.socket.write(frame({ op: "ok", rid: bye.rid }));
      await stopped;
      raw.socket.destroy();
      const askedKeys = new Set(asked.keys as string[]);
      const results = await Promise.all(reads);
      assert.ok(askedKeys.size > 0);
      for (const [i, result] of results.entries()) {
        if (askedKeys.has(keys[i])) assert.deepEqual(result, { error: "ERR_STOPPED" }, `the get of ${keys[i]}`);
        // A key this node owns and nobody wrote: a miss, unless its get was still waiting to learn
        // whether the raw member had moved it here when the stop came.
        else assert.ok("error" in result ? result.error === "ERR_STOPPED" : result.value === null, `the get of ${keys[i]}: ${JSON.stringify(result)}`);
      }
    });
  }
});

describe("Hand-over under load", () => {
  clusterIt("writes and reads on every key while a holder stops gracefully: no read returns an older value than an acknowledged write", async () => {
    const nodes = await cluster("load-", [runtime, runtime, runtime, runtime]);
    const leaving = nodes[3];
    const running = nodes.slice(0, 3).map((node, i) => node.run(workload(700 + i, 3_000)));
    const stopping = leaving.run({ ...workload(703, 3_000), stream: true }).catch(() => []);
    await waitFor("the leaving node to complete 100 ops", () => leaving.recorded().filter((op) => op.ok).length >= 100, 5_000);
    await leaving.stop();
    await stopping;
    const history = [...(await Promise.all(running)).flat(), ...leaving.recorded()];
    // No fault window: a graceful stop must not let any read see an older value.
    const violations = check(`${runtime}, a holder stopped gracefully mid-workload`, history, []);
    assertCoherent(violations, []);
  }, 60_000);
});

describe("Rolling restarts", () => {
  for (const placement of ["local", "hash"] as const) {
    const described = placement === "hash" ? " with hash placement" : "";
    clusterIt(`four ${runtime} processes${described} holding 100,000 keys, each stopped and restarted in turn: every node reads every key`, async () => {
      const results = await rollingRestart(`roll-${placement}`, [runtime, runtime, runtime, runtime], 100_000, { placement });
      const lost = results.reduce((sum, r) => sum + r.missing + r.wrong, 0);
      console.log(`rolling restart, four ${runtime} processes${described}, 100,000 keys: ${lost} keys missing or wrong in ${results.length} reads of every share`);
      assert.deepEqual(results.filter((r) => r.missing + r.wrong > 0), []);
    }, 120_000);
  }

  for (const placement of ["local", "hash"] as const) {
    mixedIt(`a cluster of Node.js, Deno and Bun processes restarted one by one loses no key (${placement} placement)`, async () => {
      const results = await rollingRestart(`mixed-${placement}`, ["node", "deno", "bun", runtime], 20_000, { placement });
      assert.deepEqual(results.filter((r) => r.missing + r.wrong > 0), []);
    }, 120_000);
  }
});
