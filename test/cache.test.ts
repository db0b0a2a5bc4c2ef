// The node as a cache: TTL, bounded memory, single-flight fetch, the batch and iteration API, stats.
import { afterEach, assert, describe, frame, it, rawConnect, type RawClient, startCluster, startNode, stopAll, waitFor, within } from "../deps.ts";
import { type FetchDone, KosyakError, Node } from "../mod.ts";

afterEach(stopAll);

/** A raw connection that has done the handshake with `node` and told it it holds nothing. */
async function handshaken(node: Node): Promise<RawClient> {
  const raw = await rawConnect(node.address);
  raw.socket.write(frame({ op: "hello", version: 9, placement: "local", id: "raw-peer", host: "127.0.0.1", port: 9 }));
  assert.equal((await raw.next()).op, "welcome");
  await raw.exchangeKeys();
  return raw;
}

/** A fetch option whose calls the test answers by hand, and a count of its calls. */
function heldFetch() {
  const calls: Array<{ key: string; done: FetchDone }> = [];
  return { calls, fetch: (key: string, done: FetchDone) => void calls.push({ key, done }) };
}

describe("TTL", () => {
  it("an entry set with a ttl expires on its node and as seen from another node", async () => {
    const [a, b] = await startCluster(2);
    await a.set("short", "lived", { ttl: 150 });
    await a.set("long", "lived");
    assert.equal(await b.get("short"), "lived");
    assert.ok(b.has("short"));
    await waitFor("the entry to expire as b sees it", async () => (await b.get("short")) === null, 5_000);
    assert.equal(await a.get("short"), null);
    assert.equal(b.has("short"), false);
    assert.equal(await b.get("long"), "lived");
    assert.equal(a.stats().expirations, 1);
  });

  it("expired entries leave every peer's directory without anyone asking for them", async () => {
    const [a, b, c] = await startCluster(3);
    await a.mset([["x", 1], ["y", 2]], { ttl: 100 });
    assert.equal(b.stats().remoteKeys, 2);
    await waitFor("the directories to forget the expired keys", () => b.stats().remoteKeys === 0 && c.stats().remoteKeys === 0, 5_000);
    assert.equal(a.stats().entries, 0);
  });

  it("the node's ttl option applies when set gives none, and ttl 0 keeps an entry", async () => {
    const node = await startNode({ ttl: 100 });
    await node.set("default", 1);
    await node.set("forever", 2, { ttl: 0 });
    const expires: Record<string, number> = {};
    node.eachEntry((_v, key, entry) => (expires[key] = entry.expires));
    assert.ok(expires.default > Date.now() - 1000);
    assert.equal(expires.forever, 0);
    await waitFor("the default ttl to pass", async () => (await node.get("default")) === null, 5_000);
    assert.equal(await node.get("forever"), 2);
  });

  it("set refuses a ttl that is not a number of milliseconds", async () => {
    const node = await startNode();
    assert.throws(() => node.set("k", 1, { ttl: -1 }), { name: "RangeError", message: /ttl must be a number of milliseconds/ });
    assert.throws(() => node.set("k", 1, { ttl: "1s" as never }), RangeError);
    assert.throws(() => new Node({ ttl: NaN }), RangeError);
  });
});

describe("Bounded memory", () => {
  it("a node with maxEntries never holds more under a write stream ten times larger, and evicts the least recently used", async () => {
    const [bounded, peer] = await startCluster(2, { maxEntries: 100 });
    for (let i = 0; i < 1000; i++) {
      await bounded.set(`k${i}`, i);
      if (i % 50 === 0) await bounded.get("k0");
      assert.ok(bounded.stats().entries <= 100, `entries after ${i} writes: ${bounded.stats().entries}`);
    }
    assert.equal(bounded.stats().entries, 100);
    assert.equal(bounded.stats().evictions, 900);
    assert.equal(await bounded.get("k0"), 0, "the key read all along stays");
    assert.equal(await bounded.get("k1"), null, "an old key nobody read is gone");
    await waitFor("the peer to forget every evicted key", () => peer.stats().remoteKeys === 100);
  });

  it("a node with maxBytes stays within it, counting key length plus JSON length", async () => {
    const node = await startNode({ maxBytes: 2_000 });
    for (let i = 0; i < 200; i++) {
      await node.set(`key${i}`, "x".repeat(100));
      assert.ok(node.stats().bytes <= 2_000, `bytes after ${i} writes: ${node.stats().bytes}`);
    }
    await node.clear();
    await node.set("abc", { n: 1 });
    assert.equal(node.stats().bytes, 3 + JSON.stringify({ n: 1 }).length);
  });

  it("set refuses one entry larger than maxBytes, maxValueBytes, or what a frame can carry", async () => {
    const node = await startNode({ maxBytes: 50 });
    assert.throws(() => node.set("k", "y".repeat(100)), { name: "RangeError", message: /more than maxBytes \(50\)/ });
    const unbounded = await startNode();
    assert.throws(() => unbounded.set("big", "z".repeat(9 * 1024 * 1024)), { name: "RangeError", message: /more than maxValueBytes \(8388608\)/ });
    // Six million euro signs: within maxValueBytes as UTF-16, but 18 MB of UTF-8.
    assert.throws(() => unbounded.set("wide", "\u20ac".repeat(6_000_000)), { name: "RangeError", message: /a frame can carry/ });
    assert.throws(() => unbounded.set("k".repeat(1025), 1), { name: "RangeError", message: /more than maxKeyLength \(1024\)/ });
  });
});

describe("Single-flight fetch", () => {
  it("100 concurrent gets of a missing key on one node call fetch once and all get its value", async () => {
    const held = heldFetch();
    const node = await startNode({ fetch: held.fetch });
    const gets = Array.from({ length: 100 }, () => node.get("missing"));
    await waitFor("fetch to be called", () => held.calls.length === 1);
    held.calls[0].done(null, { answer: 42 });
    const values = await within("the gets", Promise.all(gets));
    assert.deepEqual(new Set(values.map((v) => JSON.stringify(v))), new Set(['{"answer":42}']));
    assert.equal(held.calls.length, 1);
    assert.equal(node.stats().fetches, 1);
  });

  it("concurrent gets of one missing key on three nodes call fetch once in the whole cluster", async () => {
    const held = heldFetch();
    const nodes = await startCluster(3, { fetch: held.fetch });
    const gets = nodes.flatMap((node) => [node.get("shared"), node.get("shared")]);
    await waitFor("fetch to be called", () => held.calls.length === 1);
    held.calls[0].done(null, "fetched once");
    assert.deepEqual(await within("the gets", Promise.all(gets)), Array(6).fill("fetched once"));
    assert.equal(held.calls.length, 1);
    assert.equal(nodes.reduce((sum, node) => sum + node.stats().entries, 0), 1);
  });

  it("a failing fetch fails every waiting get with ERR_FETCH and caches nothing", async () => {
    const held = heldFetch();
    const node = await startNode({ fetch: held.fetch });
    const gets = Array.from({ length: 10 }, () => node.get("k").then(() => "resolved", (error) => error));
    await waitFor("fetch to be called", () => held.calls.length === 1);
    held.calls[0].done(new Error("upstream is down"));
    for (const outcome of await Promise.all(gets)) {
      assert.ok(outcome instanceof KosyakError);
      assert.equal(outcome.code, "ERR_FETCH");
    }
    assert.equal(node.has("k"), false);
    const again = node.get("k");
    await waitFor("a later get to call fetch again", () => held.calls.length === 2);
    held.calls[1].done(null, "back");
    assert.equal(await again, "back");
  });

  it("a fetch slower than fetchTimeout fails the gets, and its late value is not cached", async () => {
    const held = heldFetch();
    const node = await startNode({ fetch: held.fetch, fetchTimeout: 100 });
    await assert.rejects(node.get("slow"), { code: "ERR_FETCH", message: /did not call back within 100 ms/ });
    held.calls[0].done(null, "too late");
    assert.equal(node.has("slow"), false);
    assert.equal(node.stats().fetchErrors, 1);
  });

  it("a set that has called back is never overwritten by a fetch that started before it", async () => {
    const held = heldFetch();
    // Only c has a fetch option, so c calls it whichever node the key hashes to.
    const a = await startNode();
    const c = await startNode({ master: a.address, fetch: held.fetch });
    const early = c.get("x");
    await waitFor("fetch to be called", () => held.calls.length === 1);
    await a.set("x", "fresh");
    assert.equal(await c.get("x"), "fresh", "a get issued after the set sees the set");
    held.calls[0].done(null, "stale");
    assert.equal(await early, "stale", "the get issued before the set may see what it fetched");
    assert.deepEqual([await a.get("x"), await c.get("x")], ["fresh", "fresh"]);
    assert.equal(c.stats().entries, 0, "the stale value was not stored");
  });

  it("the agreed fetcher asked for a key another node holds names that node instead of calling fetch", async () => {
    const held = heldFetch();
    const [fetcher, writer] = await startCluster(2, { fetch: held.fetch });
    await writer.set("k", "written");
    // A get whose fetch request reaches the fetcher after the write was acknowledged.
    const raw = await handshaken(fetcher);
    raw.socket.write(frame({ op: "fetch", rid: 1, key: "k" }));
    const answer = await raw.next();
    assert.deepEqual([answer.op, (answer.moved as unknown[])[0]], ["ok", writer.id]);
    assert.equal(held.calls.length, 0);
    assert.equal(await fetcher.get("k"), "written");
    assert.equal(fetcher.stats().entries, 0);
    raw.socket.destroy();
  });

  it("a fetch that finds nothing is asked once in the whole cluster too", async () => {
    const held = heldFetch();
    const nodes = await startCluster(3, { fetch: held.fetch });
    const gets = nodes.map((node) => node.get("nothing"));
    // The two other nodes ask the chosen one; null is not stored, so both asks must be in first.
    await waitFor("both asks to reach the fetching node", () => nodes.reduce((sum, node) => sum + node.stats().served, 0) === 2);
    await waitFor("fetch to be called", () => held.calls.length === 1);
    held.calls[0].done(null, null);
    assert.deepEqual(await Promise.all(gets), [null, null, null]);
    assert.equal(held.calls.length, 1);
  });

  it("with stringify, callers that share one remote get each receive their own copy", async () => {
    const [a, b] = await startCluster(2, { stringify: true });
    await a.set("obj", { list: [1] });
    const [first, second] = (await Promise.all([b.get("obj"), b.get("obj")])) as Array<{ list: number[] }>;
    assert.deepEqual(first, { list: [1] });
    assert.notEqual(first, second);
    first.list.push(2);
    assert.deepEqual(second, { list: [1] });
  });
});

describe("Batch and iteration API", () => {
  it("has tells whether a local or a remote entry exists, without asking anyone", async () => {
    const [a, b] = await startCluster(2);
    await a.set("here", 1);
    assert.equal(a.has("here"), true);
    assert.equal(b.has("here"), true);
    assert.equal(b.has("nowhere"), false);
    assert.throws(() => b.has(1 as never), TypeError);
  });

  it("delete is remove by another name", async () => {
    const [a, b] = await startCluster(2);
    await a.set("k", 1);
    await new Promise((resolve) => b.delete("k", resolve));
    assert.equal(await a.get("k"), null);
  });

  it("clearLocal empties this node only and every peer forgets its keys", async () => {
    const [a, b] = await startCluster(2);
    await a.mset({ x: 1, y: 2 });
    await b.set("z", 3);
    await a.clearLocal();
    assert.equal(a.stats().entries, 0);
    assert.equal(b.stats().remoteKeys, 0);
    assert.equal(await a.get("z"), 3);
  });

  it("clear empties the whole cluster in one message per peer, and a write after it stays", async () => {
    const nodes = await startCluster(3);
    for (const [i, node] of nodes.entries()) await node.mset([[`a${i}`, i], [`b${i}`, i]]);
    const served = nodes[2].stats().served;
    await nodes[1].clear();
    for (const node of nodes) {
      assert.deepEqual(await node.mget(["a0", "b0", "a1", "b1", "a2", "b2"]), [null, null, null, null, null, null]);
      assert.deepEqual([node.stats().entries, node.stats().remoteKeys], [0, 0]);
    }
    // The clear itself cost the third node one request (the mgets above asked it nothing: no holders).
    assert.equal(nodes[2].stats().served, served + 1);
    await nodes[0].set("after", 1);
    await nodes[2].clear();
    assert.equal(await nodes[1].get("after"), null);
    await nodes[2].set("later", 2);
    assert.equal(await nodes[0].get("later"), 2);
  });

  it("clusterKeys and clusterEntries list every live key of the cluster once, copies and all, across pages", async () => {
    const nodes = await startCluster(3, { replicas: 1 });
    const written = new Map<string, number>();
    for (const [n, node] of nodes.entries()) {
      const entries = Array.from({ length: 900 }, (_, i): [string, number] => [`n${n}:${i}`, i]);
      await node.mset(entries);
      for (const [key, value] of entries) written.set(key, value);
    }
    await nodes[2].set("short", 1, { ttl: 1 });
    await nodes[1].remove("n0:0");
    written.delete("n0:0");
    // Each node counts the ttl from when it heard of the entry: wait until none knows it.
    await waitFor("the entry with a ttl of 1 ms to expire everywhere", () => nodes.every((node) => !node.has("short")), 1_000);
    const keys: string[] = [];
    for await (const key of nodes[0].clusterKeys()) keys.push(key);
    assert.deepEqual(keys.slice().sort(), [...written.keys()].sort());
    const entries = new Map<string, unknown>();
    for await (const [key, value] of nodes[1].clusterEntries()) entries.set(key, value);
    assert.deepEqual(entries, written);
  });

  it("clusterEntries ends on a bounded node too, whose reads reorder its entries", async () => {
    const [node] = await startCluster(1, { maxEntries: 5_000 });
    await node.mset(Array.from({ length: 2_500 }, (_, i): [string, number] => [`k${i}`, i]));
    let count = 0;
    for await (const _entry of node.clusterEntries()) if (++count > 2_500) break;
    assert.equal(count, 2_500);
  });

  it("keys and for-await list the local live entries, least recently used first", async () => {
    const node = await startNode();
    await node.mset([["a", 1], ["b", 2], ["c", 3]]);
    await node.set("gone", 0, { ttl: 1 });
    await waitFor("the short entry to expire", () => !node.has("gone"));
    assert.deepEqual([...node.keys()], ["a", "b", "c"]);
    const seen: Array<[string, unknown]> = [];
    for await (const pair of node) seen.push(pair);
    assert.deepEqual(seen, [["a", 1], ["b", 2], ["c", 3]]);
  });

  it("mget reads many keys with one request per peer that holds some of them", async () => {
    const [a, b, c] = await startCluster(3, { fetch: (key, done) => done(null, `fetched ${key}`) });
    await b.mset({ b1: 1, b2: 2, b3: 3 });
    await c.mset({ c1: 4, c2: 5 });
    await a.set("a1", 0);
    const servedBefore = [b.stats().served, c.stats().served];
    const values = await a.mget(["b1", "c1", "a1", "b3", "c2", "b2"]);
    assert.deepEqual(values, [1, 4, 0, 3, 5, 2]);
    assert.deepEqual([b.stats().served, c.stats().served], servedBefore.map((n) => n + 1));
    assert.deepEqual(await a.mget(["b1", "new"]), [1, "fetched new"]);
    assert.throws(() => a.mget("b1" as never), { name: "TypeError", message: /keys must be an array of strings/ });
  });

  for (const placement of ["local", "hash"] as const) {
    it(`mget of 5,000 keys held elsewhere begins 1,000 gets a turn of the event loop, so that the node goes on reading and answering meanwhile (${placement} placement)`, async () => {
      const [a, b] = await startCluster(2, { placement });
      const written = Array.from({ length: 12_000 }, (_, i): [string, number] => [`far:${i}`, i]);
      await a.mset(written);
      // With hash placement, b owns about half of them: those it reads without asking.
      const far = written.filter(([key]) => placement === "local" || !b.has(key)).slice(0, 5_000);
      assert.equal(far.length, 5_000);
      const keys = far.map(([key]) => key);
      const values = b.mget(keys);
      // After the first turn, the last key changes: the get of it has not begun yet.
      const rewritten = new Promise((resolve) => setTimeout(() => resolve(b.set(keys[4_999], "newer")), 0));
      const expected = far.map(([, value]) => value as unknown);
      expected[4_999] = "newer";
      assert.deepEqual(await values, expected);
      await rewritten;
    });
  }

  it("a value as large as maxValueBytes is read from another node", async () => {
    const options = { maxFrameBytes: 256 * 1024, maxValueBytes: 192 * 1024 };
    const [a, b] = await startCluster(2, options);
    const largest = "x".repeat(options.maxValueBytes - 2);
    await a.set("large", largest);
    assert.equal(await b.get("large"), largest);
  });

  it("mget of values that fit a frame only one at a time as UTF-8 returns every one of them", async () => {
    const [a, b] = await startCluster(2, { maxFrameBytes: 256 * 1024, maxValueBytes: 192 * 1024 });
    // 60,000 characters of 3 bytes each: 180 KB of UTF-8 per value, one per 256 KiB frame.
    const values = ["漢", "字", "語"].map((character) => character.repeat(60_000));
    await a.mset(values.map((value, i): [string, string] => [`wide:${i}`, value]));
    assert.deepEqual(await b.mget(["wide:0", "wide:1", "wide:2"]), values);
    assert.equal(b.has("wide:1"), true);
  });

  it("mset costs one request per peer, and every node then reads every entry", async () => {
    const nodes = await startCluster(3);
    const servedBefore = nodes.map((n) => n.stats().served);
    const entries = Array.from({ length: 20 }, (_, i): [string, number] => [`m${i}`, i]);
    await new Promise<void>((resolve, reject) => nodes[0].mset(entries, (err) => (err ? reject(err) : resolve())));
    assert.deepEqual(nodes.map((n) => n.stats().served - servedBefore[nodes.indexOf(n)]), [0, 1, 1]);
    assert.deepEqual(await nodes[2].mget(entries.map(([k]) => k)), entries.map(([, v]) => v));
    assert.throws(() => nodes[0].mset([["ok", 1], [2, 2]] as never), TypeError);
  });
});

describe("Stats", () => {
  it("count the messages and bytes each node sends to and receives from its peers", async () => {
    // No heartbeats while the test runs, so that only the set and the get travel.
    const [a, b] = await startCluster(2, { heartbeatInterval: 1e9, peerTimeout: 2e9 });
    const traffic = (node: Node) => {
      const { messagesSent, messagesReceived, bytesSent, bytesReceived } = node.stats();
      return { messagesSent, messagesReceived, bytesSent, bytesReceived };
    };
    const balanced = () => {
      const [x, y] = [traffic(a), traffic(b)];
      return x.bytesSent === y.bytesReceived && y.bytesSent === x.bytesReceived && x.messagesSent === y.messagesReceived;
    };
    await waitFor("the answers to the key lists to arrive", balanced);
    const before = [traffic(a), traffic(b)];
    assert.ok(before[0].messagesSent >= 2 && before[0].bytesSent > 0, "the handshake and the key list count");
    await a.set("k", "v"); // an own request to b, and b's answer
    assert.equal(await b.get("k"), "v"); // a get request to a, and a's answer
    assert.ok(balanced(), "what one node sent, the other received");
    const [aDelta, bDelta] = [traffic(a), traffic(b)].map((now, i) =>
      Object.fromEntries(Object.entries(now).map(([name, count]) => [name, count - before[i][name as keyof typeof now]]))
    );
    assert.deepEqual([aDelta.messagesSent, aDelta.messagesReceived, bDelta.messagesSent, bDelta.messagesReceived], [2, 2, 2, 2]);
    // Each frame is a 4-byte length and JSON that names the key.
    assert.ok(aDelta.bytesSent > 2 * (4 + '{"op":"ok"}'.length) && aDelta.bytesSent < 400, `a sent ${aDelta.bytesSent} bytes`);
  });

  it("count entries, bytes, sets, hits, remote hits, misses, fetches, evictions and served requests", async () => {
    let fail = false;
    const fetch = (key: string, done: FetchDone) => (fail ? done(new Error("no")) : done(null, key));
    // Only b has a fetch option, so b calls it for every miss and the counts are b's alone.
    const a = await startNode({ maxEntries: 2 });
    const b = await startNode({ master: a.address, fetch });
    await a.mset({ one: 1, two: 2, three: 3 });
    await a.get("three");
    await b.get("two");
    await b.get("fresh");
    fail = true;
    await assert.rejects(b.get("broken"), { code: "ERR_FETCH" });

    const aStats = a.stats();
    assert.equal(aStats.entries, 2);
    assert.equal(aStats.sets, 3);
    assert.equal(aStats.evictions, 1);
    assert.equal(aStats.hits, 1);
    assert.equal(aStats.bytes, "two".length + 1 + "three".length + 1);
    assert.ok(aStats.served >= 2, `a answered b's get and fetch requests: ${aStats.served}`);
    const bStats = b.stats();
    assert.equal(bStats.remoteHits, 1);
    assert.equal(bStats.misses, 2);
    assert.equal(bStats.fetches, 2);
    assert.equal(bStats.fetchErrors, 1);
    assert.equal(bStats.sets, 1);
    assert.equal(bStats.peers, 1);
    assert.equal(bStats.remoteKeys, 2);
  });
});
