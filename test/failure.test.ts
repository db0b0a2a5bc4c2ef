// Failures, with nodes in real OS processes: killed and frozen nodes, a lost master, seeds,
// concurrent joins, and the membership events.
import { afterEach, assert, describe, it, type ProcessNode, spawnNode, startNode, stopAll, waitFor, within } from "../deps.ts";
import { DEFAULTS, type Node, type NodeEvents } from "../mod.ts";

afterEach(stopAll);

/** Keeps every payload of one event of a node. */
function record<E extends keyof NodeEvents>(node: Node, event: E): NodeEvents[E][] {
  const seen: NodeEvents[E][] = [];
  node.on(event, (payload) => seen.push(payload));
  return seen;
}

async function setMany(node: ProcessNode, prefix: string, count: number): Promise<void> {
  for (let i = 0; i < count; i++) await node.call("set", `${prefix}:${i}`, `${prefix} value ${i}`);
}

describe("Failure detection and recovery", () => {
  it("a node killed with SIGKILL under a stream of gets and sets: the others answer, none hangs, its keys are gone", async () => {
    const p1 = await spawnNode();
    const victim = await spawnNode({ master: p1.address });
    const p3 = await spawnNode({ master: victim.address });
    const local = await startNode({ master: p3.address });
    const down = record(local, "peerDown");
    await setMany(p1, "p1", 20);
    await setMany(victim, "victim", 20);
    assert.equal(local.stats().remoteKeys, 40);

    let done = 0;
    const wrong: string[] = [];
    const stream = (async () => {
      for (let i = 0; i < 400; i++) {
        const owner = i % 2 === 0 ? "p1" : "victim";
        const key = `${owner}:${i % 20}`;
        const value = await local.get(key);
        if (value !== `${owner} value ${i % 20}` && !(owner === "victim" && value === null)) wrong.push(`${key} = ${value}`);
        await local.set(`local:${i % 10}`, i);
        done++;
      }
    })();
    await waitFor("the stream to get going", () => done >= 50);
    await victim.kill();
    // The documented bound counts from the kill, while the stream goes on.
    const bound = DEFAULTS.peerTimeout + DEFAULTS.heartbeatInterval;
    const purged = waitFor("every directory to drop the dead node's keys", async () => {
      const remote = await Promise.all([p1, p3].map((n) => n.call("stats") as Promise<{ remoteKeys: number }>));
      return local.stats().remoteKeys === 20 && remote[1].remoteKeys === 30 && remote[0].remoteKeys === 10;
    }, bound);
    await within("the stream to finish", stream, 20_000);
    assert.deepEqual(wrong, []);
    await purged;
    for (const node of [p1, p3]) assert.equal(await node.call("get", "victim:3"), null);
    assert.equal(await local.get("victim:3"), null);
    assert.equal(await p3.call("get", "p1:3"), "p1 value 3");
    assert.deepEqual(down.map((d) => [d.id, d.reason]), [[victim.id, "closed"]]);
  }, 60_000);

  it("a frozen node is declared down after peerTimeout, and rejoins with its keys once it runs again", async () => {
    const fast = { heartbeatInterval: 100, peerTimeout: 600, requestTimeout: 1_000, connectDelay: 200, connectAttempts: 5 };
    const frozen = await spawnNode(fast);
    const local = await startNode({ ...fast, master: frozen.address });
    const down = record(local, "peerDown");
    const up = record(local, "peerUp");
    await frozen.call("set", "k", "v");
    assert.equal(await local.get("k"), "v");

    frozen.pause();
    await waitFor("the frozen node to be declared down", () => down.length === 1, 5_000);
    assert.equal(down[0].reason, "timeout");
    assert.equal(down[0].id, frozen.id);
    assert.equal(await within("a get of the frozen node's key", local.get("k")), null);

    frozen.resume();
    await waitFor("the two nodes to meet again and share keys", () => up.length === 1 && local.has("k"), 10_000);
    assert.equal(up[0].id, frozen.id);
    assert.equal(await local.get("k"), "v");
  }, 40_000);

  it("a member lost for longer than every reconnect attempt is still dialled again later", async () => {
    const fast = { heartbeatInterval: 100, peerTimeout: 300, connectDelay: 10, connectAttempts: 1 };
    const first = await spawnNode(fast);
    const local = await startNode({ ...fast, master: first.address });
    const down = record(local, "peerDown");
    await first.kill();
    await waitFor("the lost member to be reported down", () => down.length === 1);
    // A node that knows nobody comes up where the lost one listened: only the survivor's
    // repeated dialling, long after its connectAttempts ran out, can bring the two together.
    const comeback = await spawnNode({ ...fast, port: first.address.port });
    await comeback.call("set", "k", "back");
    await waitFor("the survivor to dial the old address again", () => local.stats().peers === 1, 10_000);
    assert.equal(await local.get("k"), "back");
  }, 30_000);

  it("a holder that did not answer in time still gets the removal of its key", async () => {
    const holder = await spawnNode();
    const local = await startNode({ master: holder.address, requestTimeout: 300 });
    await holder.call("set", "k", "v");
    holder.pause();
    try {
      assert.equal(await within("a get while the holder is frozen", local.get("k")), null);
    } finally {
      holder.resume();
    }
    await local.remove("k");
    assert.equal(await holder.call("get", "k"), null);
    assert.equal(await local.get("k"), null);
  }, 20_000);

  it("the master's death disturbs no one, and a restarted master rejoins through a non-master node", async () => {
    const master = await spawnNode();
    const a = await spawnNode({ master: master.address });
    const b = await spawnNode({ master: a.address });
    const local = await startNode({ master: b.address });
    await master.kill();
    await waitFor("the others to see the master gone", () => local.stats().peers === 2);

    await local.set("after", "the master died");
    assert.equal(await a.call("get", "after"), "the master died");
    assert.equal(await b.call("get", "after"), "the master died");

    const restarted = await spawnNode({ port: master.address.port, master: a.address });
    assert.equal(restarted.address.port, master.address.port);
    assert.equal(await restarted.call("get", "after"), "the master died");
    const all = (await restarted.call("clusterStats")) as Array<{ id: string; peers: number }>;
    assert.deepEqual(all.map((s) => s.id).sort(), [restarted.id, a.id, b.id, local.id].sort());
    await waitFor("every node to see three peers", () => local.stats().peers === 3);
  }, 60_000);

  it("two nodes joining at the same time through different seeds end in one full mesh", async () => {
    const s1 = await spawnNode();
    const s2 = await spawnNode({ master: s1.address });
    const [j1, j2] = await Promise.all([spawnNode({ master: s1.address }), spawnNode({ master: s2.address })]);
    const all = [s1, s2, j1, j2];
    await waitFor("a full mesh of four", async () => {
      const stats = await Promise.all(all.map((node) => node.call("stats") as Promise<{ peers: number }>));
      return stats.every((s) => s.peers === 3);
    });
    await j1.call("set", "k", "v");
    assert.equal(await j2.call("get", "k"), "v");
  }, 30_000);

  it("master may be a list of seeds, tried in turn", async () => {
    const gone = await startNode();
    const deadAddress = gone.address;
    await gone.stop();
    const live = await startNode();
    const node = await startNode({ master: [deadAddress, live.address], connectAttempts: 1 });
    assert.equal(node.stats().peers, 1);
  });

  it("init names every seed when none can be reached", async () => {
    const gone = await startNode();
    const deadAddress = gone.address;
    await gone.stop();
    const node = startNode({ master: [deadAddress, deadAddress], connectAttempts: 2, connectDelay: 1 });
    await assert.rejects(node, { code: "ERR_CONNECT", message: new RegExp(`:${deadAddress.port}, .*:${deadAddress.port} after 2 attempts`) });
  });

  it("peerUp and peerDown report a member coming and leaving, with reason 'left' for stop", async () => {
    const first = await startNode();
    const up = record(first, "peerUp");
    const down = record(first, "peerDown");
    const second = await startNode({ master: first.address });
    await waitFor("peerUp", () => up.length === 1);
    assert.deepEqual(up[0], { id: second.id, address: second.address });
    await second.stop();
    assert.deepEqual(down, [{ id: second.id, address: second.address, reason: "left" }]);
  });
});
