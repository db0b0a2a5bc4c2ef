// One node on its own: options, lifecycle, and the data API in callback and promise forms.
import { createServer } from "node:net";
import { afterEach, assert, describe, it, startCluster, startNode, stopAll, track, waitFor, within } from "../deps.ts";
import { DEFAULTS, KosyakError, Node, type NodeStats } from "../mod.ts";

afterEach(stopAll);

describe("Node options", () => {
  it("DEFAULTS keeps the seed's connectDelay of 2000 ms and connectAttempts of 3", () => {
    assert.equal(DEFAULTS.connectDelay, 2000);
    assert.equal(DEFAULTS.connectAttempts, 3);
    assert.equal(DEFAULTS.host, "127.0.0.1");
  });

  it("constructor rejects a port outside 0-65535 with a RangeError quoting it", () => {
    assert.throws(() => new Node({ port: 70000 }), { name: "RangeError", message: /port must be .*received 70000/ });
    assert.throws(() => new Node({ port: "abc" as unknown as number }), { name: "RangeError", message: /received "abc"/ });
    assert.throws(() => new Node({ port: 1.5 }), RangeError);
  });

  it("constructor rejects options of the wrong type with a TypeError naming the option", () => {
    const wrong: Array<[Record<string, unknown>, RegExp]> = [
      [{ host: 42 }, /host must be a non-empty string/],
      [{ master: "127.0.0.1:1" }, /master must be an object/],
      [{ master: { port: 0 } }, /master.port must be an integer from 1/],
      [{ stringify: "yes" }, /stringify must be a boolean/],
      [{ fetch: {} }, /fetch must be a function/],
      [{ socket: 1 }, /socket must be an object/],
      [{ server: "x" }, /server must be an object/],
      [{ connectDelay: -1 }, /connectDelay must be/],
      [{ connectAttempts: 0 }, /connectAttempts must be an integer of 1 or more/],
      [{ requestTimeout: 0 }, /requestTimeout must be a positive number/],
      [{ heartbeatInterval: 100, peerTimeout: 190 }, /peerTimeout must be at least twice heartbeatInterval \(100 ms\)/],
      [{ prot: 1 }, /unknown option "prot"/],
      [{ host: "a", addr: "b" }, /host and addr name the same setting and differ/],
    ];
    for (const [options, message] of wrong) {
      assert.throws(() => new Node(options as never), { message }, JSON.stringify(options));
    }
  });

  it("addr is the seed's name for host", async () => {
    const node = await startNode({ host: undefined, addr: "127.0.0.1" });
    assert.equal(node.address.host, "127.0.0.1");
    assert.ok(node.address.port > 0);
  });

  it("socket and server options are handed to the runtime without breaking a cluster", async () => {
    const first = await startNode({ server: {}, socket: {} });
    const second = await startNode({ master: first.address, socket: {} });
    await first.set("k", "v");
    assert.equal(await second.get("k"), "v");
  });
});

describe("Node lifecycle", () => {
  it("init returns the node and calls back with null once it listens", async () => {
    const node = track(new Node({ port: 0 }));
    const err = await within("init", new Promise((resolve) => assert.equal(node.init(resolve), node)));
    assert.equal(err, null);
    assert.ok(node.address.port > 0);
  });

  it("ready resolves with the node once init completes", async () => {
    const node = track(new Node());
    assert.equal(await node.init().ready(), node);
    await new Promise<void>((resolve, reject) => node.ready((err) => (err ? reject(err) : resolve())));
  });

  it("Node.start resolves with a node that has joined, and rejects with the error its start failed with", async () => {
    const first = track(await Node.start({ port: 0 }));
    const second = track(await Node.start({ master: first.address }));
    assert.deepEqual([first.stats().peers, second.stats().peers], [1, 1]);
    await assert.rejects(Node.start({ port: first.address.port }), { code: "ERR_LISTEN" });
  });

  it("a failed init without a callback is reported as an error event, never as an unhandled rejection", async () => {
    const first = await startNode();
    const node = track(new Node({ port: first.address.port }));
    const reported = new Promise<Error>((resolve) => node.on("error", resolve));
    node.init();
    const error = await within("the error event", reported);
    assert.ok(error instanceof KosyakError && error.code === "ERR_LISTEN", String(error));
  });

  it("init twice throws", async () => {
    const node = await startNode();
    assert.throws(() => node.init(), { code: "ERR_ALREADY_STARTED" });
  });

  it("init fails with ERR_LISTEN naming the address when the port is taken", async () => {
    const first = await startNode();
    const second = track(new Node({ port: first.address.port }));
    const err = await new Promise<Error | null>((resolve) => second.init(resolve));
    assert.ok(err instanceof KosyakError);
    assert.equal(err.code, "ERR_LISTEN");
    assert.match(err.message, new RegExp(`127\\.0\\.0\\.1:${first.address.port}`));
    await assert.rejects(second.get("k"), { code: "ERR_LISTEN" });
  });

  it("init tries an unreachable master connectAttempts times, then fails with ERR_CONNECT and frees its port", async () => {
    let connections = 0;
    // A master that accepts and hangs up at once, so every attempt is seen and fails.
    const master = createServer((socket) => {
      connections++;
      socket.destroy();
    });
    await new Promise<void>((resolve) => master.listen(0, "127.0.0.1", resolve));
    const masterPort = (master.address() as { port: number }).port;
    try {
      const node = track(new Node({ master: { host: "127.0.0.1", port: masterPort }, connectAttempts: 3, connectDelay: 5 }));
      const err = await new Promise<Error | null>((resolve) => node.init(resolve));
      assert.ok(err instanceof KosyakError);
      assert.equal(err.code, "ERR_CONNECT");
      assert.match(err.message, new RegExp(`127\\.0\\.0\\.1:${masterPort} after 3 attempts`));
      assert.equal(connections, 3);
      // Nothing is left listening: the port the failed node had can be taken again.
      const again = await startNode({ port: node.address.port });
      assert.equal(again.address.port, node.address.port);
    } finally {
      master.close();
    }
  });

  it("operations called while init is under way wait for it", async () => {
    const node = track(new Node().init());
    const set = node.set("early", 1);
    assert.equal(await node.get("early"), 1);
    assert.equal(await set, 1);
  });

  it("operations before init fail with ERR_NOT_STARTED", async () => {
    const node = new Node();
    await assert.rejects(node.get("k"), { code: "ERR_NOT_STARTED" });
    await assert.rejects(node.set("k", 1), { code: "ERR_NOT_STARTED" });
  });

  it("operations after stop fail with ERR_STOPPED", async () => {
    const node = await startNode();
    await node.stop();
    await assert.rejects(node.get("k"), { code: "ERR_STOPPED" });
    await assert.rejects(node.remove("k"), { code: "ERR_STOPPED" });
  });

  it("stop calls back once everything is closed, and a second stop does too", async () => {
    const node = await startNode();
    const port = node.address.port;
    await within("stop callback", new Promise<void>((resolve) => node.stop(resolve)));
    await within("second stop callback", new Promise<void>((resolve) => node.stop(resolve)));
    const again = await startNode({ port });
    assert.equal(again.address.port, port);
  });

  it("stop during init ends init with ERR_STOPPED", async () => {
    const node = new Node({ master: { host: "127.0.0.1", port: 9 }, connectDelay: 60_000 });
    const init = new Promise<Error | null>((resolve) => node.init(resolve));
    await within("stop", node.stop());
    const err = await within("init", init);
    assert.ok(err instanceof KosyakError);
    assert.equal(err.code, "ERR_STOPPED");
  });
});

describe("Node data API", () => {
  it("get of a missing key gives null, in callback and promise form", async () => {
    const node = await startNode();
    assert.equal(await node.get("missing"), null);
    const [err, value] = await new Promise<unknown[]>((resolve) => node.get("missing", (...args) => resolve(args)));
    assert.equal(err, null);
    assert.equal(value, null);
  });

  it("set calls back with (null, value) and get returns the value", async () => {
    const node = await startNode();
    const [err, value] = await new Promise<unknown[]>((resolve) => node.set("k", { a: [1, 2] }, (...args) => resolve(args)));
    assert.equal(err, null);
    assert.deepEqual(value, { a: [1, 2] });
    assert.deepEqual(await node.get("k"), { a: [1, 2] });
    assert.equal(await node.set("n", 0), 0);
    assert.equal(await node.get("n"), 0);
  });

  it("get calls back before returning on a local hit", async () => {
    const node = await startNode();
    await node.set("k", "v");
    let seen: unknown;
    node.get("k", (_err, value) => (seen = value));
    assert.equal(seen, "v");
  });

  it("set on a node alone calls back before returning; with a peer, only once the peer has acknowledged", async () => {
    const [node, peer] = await startCluster(2);
    let acknowledged = false;
    const done = new Promise<void>((resolve) => node.set("shared", 1, () => resolve()));
    assert.equal(node.has("shared"), true);
    // The peer knows the holder once the set has called back, not before: the callback waited.
    void done.then(() => (acknowledged = peer.has("shared")));
    await within("the set to call back", done);
    assert.equal(acknowledged, true);
    const alone = await startNode();
    let seen: unknown;
    alone.set("k", "v", (err, value) => (seen = err ?? value));
    assert.equal(seen, "v");
    assert.equal(await alone.get("k"), "v");
    assert.equal(await alone.set("k", "w"), "w");
    assert.equal((alone.stats() as NodeStats).entries, 1);
  });

  it("remove deletes the key and calls back with null", async () => {
    const node = await startNode();
    await node.set("k", 1);
    const err = await new Promise((resolve) => node.remove("k", resolve));
    assert.equal(err, null);
    assert.equal(await node.get("k"), null);
    await node.remove("never-set");
  });

  it("remove and delete say whether a live entry of the key was removed, here or on the peer that held it", async () => {
    const [holder, other] = await startCluster(2);
    await holder.mset([["here", 1], ["there", 2], ["short", 3]]);
    await holder.set("short", 3, { ttl: 1 });
    assert.equal(await holder.remove("here"), true, "held by the node removing it");
    assert.equal(await other.remove("there"), true, "held by the peer");
    assert.equal(await other.delete("there"), false, "already removed");
    assert.equal(await other.remove("never-set"), false);
    await waitFor("the entry with a ttl of 1 ms to expire", () => !holder.has("short"), 1_000);
    assert.equal(await other.remove("short"), false, "expired");
    const existed = await new Promise((resolve, reject) => holder.set("again", 1, () => holder.remove("again", (err, existed) => (err ? reject(err) : resolve(existed)))));
    assert.equal(existed, true);
  });

  it("eachEntry calls the iterator with (value, key, entry) for each local entry", async () => {
    const node = await startNode();
    await node.set("a", 1);
    await node.set("b", { x: true });
    const seen: unknown[] = [];
    node.eachEntry((value, key, entry) => seen.push([key, value, entry.key, entry.version > 0]));
    assert.deepEqual(seen, [["a", 1, "a", true], ["b", { x: true }, "b", true]]);
  });

  it("stats without a callback returns this node's counters", async () => {
    const node = await startNode();
    await node.set("a", 1);
    await node.get("a");
    await node.get("b");
    const stats = node.stats();
    assert.equal(stats.id, node.id);
    assert.equal(stats.port, node.address.port);
    assert.equal(stats.entries, 1);
    assert.equal(stats.hits, 1);
    assert.equal(stats.misses, 1);
    assert.equal(stats.peers, 0);
    assert.ok(stats.uptime >= 0);
  });

  it("stats with a callback passes the nodes' stats as its only argument", async () => {
    const node = await startNode();
    const args = await within("stats", new Promise<unknown[]>((resolve) => node.stats((...all) => resolve(all))));
    assert.equal(args.length, 1);
    const nodesStats = args[0] as NodeStats[];
    assert.deepEqual(nodesStats.map((s) => s.id), [node.id]);
    assert.deepEqual((await node.clusterStats()).map((s) => s.id), [node.id]);
  });

  it("set refuses a value JSON cannot carry with a TypeError that says so", async () => {
    const node = await startNode();
    const circular: Record<string, unknown> = {};
    circular.self = circular;
    for (const value of [circular, 10n, undefined, () => 1, Symbol("s")]) {
      assert.throws(() => node.set("k", value), { name: "TypeError", message: /Cannot set "k": the value cannot be written as JSON/ });
    }
    assert.equal(await node.get("k"), null);
  });

  it("every method refuses a key that is not a string, and a callback that is not a function", async () => {
    const node = await startNode();
    const bad = 42 as unknown as string;
    assert.throws(() => node.get(bad), { name: "TypeError", message: "Cannot get: key must be a string: received 42" });
    assert.throws(() => node.set(bad, 1), TypeError);
    assert.throws(() => node.remove(bad), TypeError);
    assert.throws(() => node.get("k", "cb" as never), { message: /callback must be a function: received "cb"/ });
    assert.throws(() => node.eachEntry(null as never), { message: /iterator must be a function/ });
  });

  it("stringify stores JSON strings, so changing an object after set never changes the cache", async () => {
    const node = await startNode({ stringify: true });
    const user = { name: "Kosyak", tags: ["cat"] };
    await node.set("user", user);
    user.tags.push("crazy");
    const first = (await node.get("user")) as typeof user;
    assert.deepEqual(first, { name: "Kosyak", tags: ["cat"] });
    first.name = "changed";
    assert.deepEqual(await node.get("user"), { name: "Kosyak", tags: ["cat"] });
    node.eachEntry((value, _key, entry) => {
      assert.equal(entry.value, '{"name":"Kosyak","tags":["cat"]}');
      assert.deepEqual(value, { name: "Kosyak", tags: ["cat"] });
    });
  });

  it("without stringify, get returns the very object that was set", async () => {
    const node = await startNode();
    const user = { name: "Kosyak" };
    await node.set("user", user);
    assert.equal(await node.get("user"), user);
  });
});

describe("Node fetch option", () => {
  it("get calls fetch for a key no node holds, stores the value and returns it", async () => {
    const asked: string[] = [];
    const node = await startNode({
      fetch: (key, done) => {
        asked.push(key);
        setTimeout(() => done(null, `value of ${key}`), 1);
      },
    });
    assert.equal(await node.get("a"), "value of a");
    assert.equal(await node.get("a"), "value of a");
    assert.deepEqual(asked, ["a"]);
    assert.equal(node.stats().entries, 1);
    assert.equal(node.stats().fetches, 1);
  });

  it("a fetch error reaches the get callback as ERR_FETCH with the cause, and nothing is stored", async () => {
    const cause = new Error("upstream down");
    const node = await startNode({ fetch: (_key, done) => done(cause) });
    const err = await new Promise<Error | null>((resolve) => node.get("a", resolve));
    assert.ok(err instanceof KosyakError);
    assert.equal(err.code, "ERR_FETCH");
    assert.equal(err.cause, cause);
    assert.match(err.message, /upstream down/);
    assert.equal(node.stats().entries, 0);
    assert.equal(node.stats().fetchErrors, 1);
  });

  it("a fetch that gives null returns null and stores nothing", async () => {
    const node = await startNode({ fetch: (_key, done) => done(null, null) });
    assert.equal(await node.get("a"), null);
    assert.equal(node.stats().entries, 0);
  });
});
