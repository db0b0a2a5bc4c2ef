// A cluster-wide clear reaches a node that missed it: frozen through it, the node learns it when
// it connects again, and drops what it held from before it. A node that saw it already, and
// hears it again on a new connection, keeps what was written after it.
import { afterEach, assert, describe, it, runtime, startCluster, startNode, stopAll, waitFor } from "../deps.ts";
import { cluster, FAST, fullMesh, peersAre } from "./workloads.ts";

afterEach(stopAll);

describe("Cluster-wide clear", () => {
  it(`a ${runtime} process frozen through a clear drops its entries from before it once it runs again, and every node agrees`, async () => {
    const nodes = await cluster("clear", [runtime, runtime, runtime], FAST);
    const [clearing, writing, frozen] = nodes;
    await frozen.call({ cmd: "fill", prefix: "before:", count: 100, tag: "old" });
    frozen.pause();
    await peersAre([clearing, writing], 1, 5_000);
    await clearing.call({ cmd: "clear" });
    await writing.call({ cmd: "set", key: "after", value: "new" });
    frozen.resume();
    await fullMesh(nodes, 8_000);
    const reads = () => Promise.all(nodes.map((node) => node.call({ cmd: "verify", prefix: "before:", count: 100, tag: "old" }))) as Promise<Array<{ missing: number }>>;
    await waitFor("no node to read an entry written before the clear", async () => (await reads()).every((read) => read.missing === 100), 5_000);
    assert.deepEqual(await Promise.all(nodes.map((node) => node.call({ cmd: "get", key: "after" }))), ["new", "new", "new"]);
  }, 40_000);

  for (const placement of ["local", "hash"] as const) {
    it(`a clear passed on again when a node joins removes nothing written after it, and cuts short no load (placement "${placement}")`, async () => {
      const [first, second] = await startCluster(2, { placement });
      await first.set("before", 0);
      await first.clear();
      const keys = Array.from({ length: 10 }, (_, i) => `after:${i}`);
      for (const [i, key] of keys.entries()) await (i % 2 ? first : second).set(key, i);
      let release!: () => void;
      const gate = new Promise<void>((resolve) => (release = resolve));
      let loads = 0;
      const loading = first.getOrSet("loading", async () => (loads++, await gate, "loaded"));
      await waitFor("the loader to start", () => loads === 1);
      // Each member passes the clear on to the joiner, and the joiner to each member.
      const joiner = await startNode({ placement, master: first.address });
      await waitFor("the joiner to be a member of both", () => first.stats().peers === 2 && second.stats().peers === 2);
      release();
      assert.equal(await loading, "loaded");
      assert.equal(loads, 1, "loader calls");
      for (const node of [first, second, joiner]) {
        assert.deepEqual(await node.mget(keys), keys.map((_, i) => i), `what node ${node.id} reads of the keys written after the clear`);
        assert.equal(await node.get("before"), null);
      }
    });
  }
});
