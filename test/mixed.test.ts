// One cluster of a Node.js, a Deno and a Bun process, plus this process.
import { afterEach, assert, describe, it, runtime, spawnNode, startNode, stopAll, waitFor } from "../deps.ts";

afterEach(stopAll);

describe("Mixed-runtime cluster", () => {
  it(`Node.js, Deno and Bun processes and this ${runtime} process work as one cluster`, async () => {
    const nodeProcess = await spawnNode({}, "node");
    const denoProcess = await spawnNode({ master: nodeProcess.address }, "deno");
    const bunProcess = await spawnNode({ master: denoProcess.address }, "bun");
    const local = await startNode({ master: bunProcess.address });
    const members = [nodeProcess, denoProcess, bunProcess];
    assert.equal(local.stats().peers, 3);

    for (const member of members) await member.call("set", `from ${member.id}`, { by: member.id });
    for (const reader of members) {
      for (const writer of members) {
        assert.deepEqual(await reader.call("get", `from ${writer.id}`), { by: writer.id });
      }
      assert.deepEqual(await local.get(`from ${reader.id}`), { by: reader.id });
    }

    await denoProcess.call("remove", `from ${nodeProcess.id}`);
    assert.equal(await bunProcess.call("get", `from ${nodeProcess.id}`), null);
    assert.equal(await local.get(`from ${nodeProcess.id}`), null);

    // A Bun node stopping hands its entries to the Node.js and Deno processes and this one.
    await bunProcess.stop();
    assert.deepEqual(await nodeProcess.call("get", `from ${bunProcess.id}`), { by: bunProcess.id });
    assert.deepEqual(await local.get(`from ${bunProcess.id}`), { by: bunProcess.id });
    await waitFor("the others to see the Bun node leave", () => local.stats().peers === 2);
  }, 60_000);
});
