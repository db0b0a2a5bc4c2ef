// The transport option: nodes on the in-memory network of scripts/memory-network.mjs (the one
// `npm run simulate` runs hundreds of nodes on), with a clock that jumps from timer to timer.
import { assert, describe, it } from "../deps.ts";
import { Node, type NodeOptions } from "../mod.ts";
import { MemoryNetwork, VirtualClock } from "../scripts/memory-network.mjs";

describe("Transport", () => {
  it("a transport without listen and connect is refused with a TypeError that names it", () => {
    for (const transport of [{}, null, { listen() {} }, "tcp"]) {
      assert.throws(() => new Node({ transport } as unknown as NodeOptions), { name: "TypeError", message: /transport must be an object with listen and connect functions/ });
    }
  });

  it("a master whose firewall drops packets fails the start after requestTimeout per attempt, not the system's minutes", async () => {
    const clock = new VirtualClock();
    const network = new MemoryNetwork({ clock, latencyMs: 0.1 });
    network.blackhole("10.0.0.9");
    const started = clock.now();
    const options = { connectAttempts: 2, connectDelay: 100, requestTimeout: 500 };
    const start = Node.start({ host: "10.0.0.1", port: 0, clock, transport: network.transport("10.0.0.1"), master: { host: "10.0.0.9", port: 1 }, ...options });
    await assert.rejects(clock.runUntil(start, 60_000), { code: "ERR_CONNECT", message: /after 2 attempts: No connection to 10\.0\.0\.9:1 opened within 500 ms/ });
    // Two attempts of 500 ms, and the delay of 100 ms between them.
    assert.equal(clock.now() - started, 1_100);
    assert.equal(clock.pending, 0, "the failed node keeps no timer");
  });

  it("two members cut apart drop each other after peerTimeout and, once the link heals, connect again and share what they wrote", async () => {
    const clock = new VirtualClock();
    const network = new MemoryNetwork({ clock, latencyMs: 0.1 });
    const nodes: Node[] = [];
    try {
      for (const host of ["10.0.0.1", "10.0.0.2", "10.0.0.3"]) {
        nodes.push(await clock.runUntil(Node.start({ host, port: 0, clock, transport: network.transport(host), master: nodes[0]?.address }), 10_000));
      }
      const [, b, c] = nodes;
      network.cut("10.0.0.2", "10.0.0.3");
      // c's write waits for b's acknowledgement until c declares b down.
      await clock.runUntil(c.set("k", "written during the cut"), 30_000);
      assert.deepEqual(nodes.map((node) => node.stats().peers), [2, 1, 1]);
      network.heal("10.0.0.2", "10.0.0.3");
      // Lost members are dialled again every ten heartbeats.
      await clock.run(15_000);
      assert.deepEqual(nodes.map((node) => node.stats().peers), [2, 2, 2]);
      assert.equal(await clock.runUntil(b.get("k"), 1_000), "written during the cut");
    } finally {
      await clock.runUntil(Promise.all(nodes.map((node) => node.stop({ handover: false }))), 10_000);
    }
  });

  it("three nodes on an in-memory network form a cluster, read each other's writes, hand over on stop, and leave no timer behind", async () => {
    const clock = new VirtualClock();
    const network = new MemoryNetwork({ clock, latencyMs: 0.1, bytesPerMs: 125_000 });
    const nodes: Node[] = [];
    const start = (host: string, master?: Node) =>
      clock.runUntil(Node.start({ host, port: 0, clock, transport: network.transport(host), master: master?.address }), 10_000);
    try {
      for (const host of ["10.0.0.1", "10.0.0.2", "10.0.0.3"]) nodes.push(await start(host, nodes[0]));
      const [a, b, c] = nodes;
      assert.deepEqual(nodes.map((node) => node.stats().peers), [2, 2, 2]);
      assert.deepEqual(a.address, { host: "10.0.0.1", port: 1 });
      await clock.runUntil(a.set("k", "from a"), 1_000);
      assert.equal(await clock.runUntil(c.get("k"), 1_000), "from a");
      await clock.runUntil(b.set("k", "from b"), 1_000);
      assert.equal(await clock.runUntil(c.get("k"), 1_000), "from b");
      // Heartbeats keep an idle cluster together: a minute of clock time loses no member.
      await clock.run(60_000);
      assert.deepEqual(nodes.map((node) => node.stats().peers), [2, 2, 2]);
      assert.ok(a.stats().messagesSent >= 60, `a sent ${a.stats().messagesSent} messages`);
      await clock.runUntil(b.stop(), 10_000);
      nodes.splice(1, 1);
      assert.equal(await clock.runUntil(c.get("k"), 1_000), "from b", "b handed k over before it left");
      await clock.runUntil(Promise.all(nodes.map((node) => node.stop())), 10_000);
      nodes.length = 0;
      await clock.run(10_000);
      assert.equal(clock.pending, 0, "stopped nodes keep no timer");
    } finally {
      await clock.runUntil(Promise.all(nodes.map((node) => node.stop({ handover: false }))), 10_000);
    }
  });
});
