// Namespaces: keys apart, defaults of their own, and a clear of the whole cluster that costs one
// message per member, in both placements, on every runtime, and in separate processes.
import { afterEach, assert, clusterIt, describe, it, ManualClock, runtime, spawnNode, startCluster, stopAll, waitFor } from "../deps.ts";
import { cluster, FAST, fullMesh, peersAre } from "./workloads.ts";
import type { NodeStats } from "../mod.ts";

afterEach(stopAll);

/** Heartbeats that never fire unless the test moves the clock that far. */
const QUIET = { heartbeatInterval: 1e9, peerTimeout: 2e9 };

describe("Namespaces", () => {
  for (const placement of ["local", "hash"] as const) {
    it(`placement "${placement}": a namespace's keys live apart, under "name:", with its own ttl, grace and loader; its clear leaves other namespaces and outside keys whole`, async () => {
      const clock = new ManualClock();
      const [a, b] = await startCluster(2, { placement, clock, ...QUIET });
      const users = a.namespace("users", { ttl: 1_000, grace: 1_000, loader: (context) => `loaded ${context.key}` });
      const posts = b.namespace("posts");
      await users.set("1", "alice");
      await posts.set("1", "hello");
      await a.set("1", "root");
      assert.deepEqual([await b.namespace("users").get("1"), await a.namespace("posts").get("1"), await b.get("1")], ["alice", "hello", "root"]);
      assert.equal(await b.get("users:1"), "alice", "the node's key of a namespace's key");
      assert.equal(users.has("1") || b.namespace("users").has("1"), true, "has on one node or the other (with hash placement, on its owner)");
      assert.equal(await users.getOrSet("2"), "loaded users:2", "the namespace's loader");
      assert.equal(await users.getOrSet("3", () => "given"), "given", "a loader given to the call");
      await users.mset({ 4: "four", 5: "five" });
      assert.deepEqual(await b.namespace("users").mget(["4", "5", "6"]), ["four", "five", null]);
      assert.deepEqual([...users.keys(), ...b.namespace("users").keys()].sort(), ["1", "2", "3", "4", "5"], "keys held on the two nodes, without the prefix");
      const everywhere: string[] = [];
      for await (const key of b.namespace("users").clusterKeys()) everywhere.push(key);
      assert.deepEqual(everywhere.sort(), ["1", "2", "3", "4", "5"]);

      // The namespace's ttl and grace: stale past 1 s, gone past 2 s; a write's own ttl wins.
      await users.set("long", "stays", { ttl: 10_000 });
      clock.advance(1_000);
      assert.equal(await b.get("users:1"), null);
      assert.equal(await b.get("users:1", { allowStale: true }), "alice");
      clock.advance(1_000);
      assert.equal(await b.get("users:1", { allowStale: true }), null);
      assert.equal(await users.get("long"), "stays");

      // Options that leave ttl out (or undefined) keep the namespace's; getOrSet's options alone keep its loader.
      await users.set("undefined ttl", 1, { ttl: undefined });
      assert.ok(a.namespace("users").has("undefined ttl") || b.namespace("users").has("undefined ttl"));
      assert.equal(await users.getOrSet("opts", { ttl: 500 }), "loaded users:opts");
      clock.advance(500);
      assert.equal(await users.get("opts"), null, "the call's ttl");
      clock.advance(500);
      assert.equal(await users.get("undefined ttl"), null, "the namespace's ttl");

      // A nested namespace is inside its parent: the parent's clear takes it too.
      const admins = users.namespace("admins");
      assert.equal(admins.name, "users:admins");
      await admins.set("root", true);
      await a.set("usersX", "outside", { ttl: 0 });
      await users.clear();
      assert.deepEqual(
        [await users.get("long"), await admins.get("root"), await b.namespace("users").get("4"), await posts.get("1"), await a.get("1"), await b.get("usersX")],
        [null, null, null, "hello", "root", "outside"],
      );
      // Written after the clear, it stays.
      await users.set("after", 1);
      assert.equal(await b.namespace("users").get("after"), 1);
      assert.equal(await users.remove("after"), true);
      assert.equal(await users.delete("after"), false);
    });
  }

  it("callback forms, and wrong arguments that throw at once, saying what was wrong", async () => {
    const node = (await startCluster(1))[0];
    const ns = node.namespace("cb");
    const value = await new Promise((resolve, reject) => ns.set("k", 1, (err, set) => (err ? reject(err) : resolve(set))));
    assert.equal(value, 1);
    assert.equal(await new Promise((resolve, reject) => ns.get("k", (err, got) => (err ? reject(err) : resolve(got)))), 1);
    await new Promise<void>((resolve, reject) => ns.clear((err) => (err ? reject(err) : resolve())));
    assert.equal(await ns.get("k"), null);
    assert.throws(() => node.namespace(""), { name: "TypeError", message: 'Cannot make a namespace: name must be a non-empty string: received ""' });
    assert.throws(() => node.namespace("n", { ttl: -1 }), { name: "RangeError", message: 'Cannot make namespace "n": ttl must be a number of milliseconds, 0 or more: received -1' });
    assert.throws(() => node.namespace("n", { loader: "db" as never }), { name: "TypeError" });
    assert.throws(() => ns.get(1 as never), { name: "TypeError" });
    assert.throws(() => ns.getOrSet("k"), { name: "TypeError", message: 'Cannot getOrSet "k": namespace "cb" has no loader, and none was given' });
  });
});

describe(`Namespaces over ${runtime} member processes`, () => {
  for (const placement of ["local", "hash"] as const) {
    clusterIt(`placement "${placement}": a namespace clear of 2,000 keys is one message to each of the 3 other members, and leaves the other namespace whole on every node`, async () => {
      // No heartbeats meanwhile, so that every message counted is the clear's.
      const options = { placement, heartbeatInterval: 60_000, peerTimeout: 120_000 };
      const first = await spawnNode(options);
      const members = [first, ...(await Promise.all([1, 2, 3].map(() => spawnNode({ ...options, master: first.address }))))];
      const stats = async () => (await Promise.all(members.map((member) => member.call("stats")))) as NodeStats[];
      await waitFor("every member to see the other three", async () => (await stats()).every((s) => s.peers === 3), 10_000);
      await members[0].call("nsFill", "cleared", 2_000);
      await members[1].call("nsFill", "kept", 2_000);
      await waitFor("both namespaces whole on every member", async () => {
        const counts = await Promise.all(members.flatMap((member) => [member.call("nsCount", "cleared"), member.call("nsCount", "kept")]));
        return counts.every((count) => count === 2_000);
      }, 10_000);

      const before = await stats();
      await members[2].call("nsClear", "cleared");
      const after = await stats();
      assert.equal(after[2].messagesSent - before[2].messagesSent, 3, "messages the clearing member sent");
      for (const i of [0, 1, 3]) assert.equal(after[i].messagesReceived - before[i].messagesReceived, 1, `messages member ${i} received`);
      for (const member of members) {
        assert.equal(await member.call("nsCount", "cleared"), 0, `keys of the cleared namespace on ${member.id}`);
        assert.equal(await member.call("nsCount", "kept"), 2_000, `keys of the other namespace on ${member.id}`);
      }
    }, 60_000);
  }

  clusterIt(`a ${runtime} process frozen through a namespace clear drops that namespace's entries from before it once it runs again, and keeps the others`, async () => {
    const nodes = await cluster("ns-clear", [runtime, runtime, runtime], FAST);
    const [clearing, writing, frozen] = nodes;
    await frozen.call({ cmd: "fill", prefix: "gone:", count: 100, tag: "old" });
    await frozen.call({ cmd: "fill", prefix: "kept:", count: 100, tag: "old" });
    frozen.pause();
    await peersAre([clearing, writing], 1, 5_000);
    await clearing.call({ cmd: "clearNamespace", name: "gone" });
    await writing.call({ cmd: "set", key: "gone:after", value: "new" });
    frozen.resume();
    await fullMesh(nodes, 8_000);
    const reads = (prefix: string) => Promise.all(nodes.map((node) => node.call({ cmd: "verify", prefix, count: 100, tag: "old" }))) as Promise<Array<{ missing: number }>>;
    await waitFor("no node to read an entry of the namespace written before the clear", async () => (await reads("gone:")).every((read) => read.missing === 100), 5_000);
    assert.deepEqual((await reads("kept:")).map((read) => read.missing), [0, 0, 0], "entries of another namespace missing");
    assert.deepEqual(await Promise.all(nodes.map((node) => node.call({ cmd: "get", key: "gone:after" }))), ["new", "new", "new"]);
  }, 40_000);
});
