// Nodes in separate OS processes, running the same runtime as the suite.
import { afterEach, assert, describe, it, runtime, spawnNode, startNode, stopAll, waitFor } from "../deps.ts";

afterEach(stopAll);

describe("Nodes in separate processes", () => {
  it(`three ${runtime} processes and this one share keys, removals and stops`, async () => {
    const first = await spawnNode();
    const second = await spawnNode({ master: first.address });
    const third = await spawnNode({ master: second.address });
    const local = await startNode({ master: third.address });
    assert.equal(local.stats().peers, 3);

    await first.call("set", "greeting", { text: "hello" });
    assert.deepEqual(await third.call("get", "greeting"), { text: "hello" });
    assert.deepEqual(await local.get("greeting"), { text: "hello" });

    await local.set("counter", 7);
    assert.equal(await second.call("get", "counter"), 7);

    await second.call("remove", "greeting");
    assert.equal(await first.call("get", "greeting"), null);
    assert.equal(await local.get("greeting"), null);

    const stats = (await first.call("clusterStats")) as Array<{ id: string }>;
    assert.deepEqual(stats.map((s) => s.id).sort(), [first.id, second.id, third.id, local.id].sort());

    await local.set("mine", 1);
    await local.stop();
    assert.equal(await first.call("get", "mine"), 1, "a stopping node hands its entries over");
    await waitFor("the processes to see the local node leave", async () => {
      const counts = await Promise.all([first, second, third].map((n) => n.call("stats")));
      return counts.every((s) => (s as { peers: number }).peers === 2);
    });
  }, 40_000);
});
