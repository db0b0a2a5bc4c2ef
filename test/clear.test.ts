// A cluster-wide clear reaches a node that missed it: frozen through it, the node learns it when
// it connects again, and drops what it held from before it.
import { afterEach, assert, describe, it, runtime, stopAll, waitFor } from "../deps.ts";
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
});
