// A hostile client process attacks a node while a legitimate peer keeps using it.
import { afterEach, assert, commandFor, describe, it, runtime, startNode, startProcess, stopAll, waitFor } from "../deps.ts";

afterEach(stopAll);

describe("Hostile client", () => {
  it("garbage, oversized and truncated frames, silent connections and floods: the node keeps serving and lets go of them", async () => {
    const target = await startNode({ requestTimeout: 1_000, maxQueueBytes: 1024 * 1024 });
    const friend = await startNode({ master: target.address });
    const errors: Error[] = [];
    target.on("error", (error) => errors.push(error));
    for (let i = 0; i < 50; i++) await target.set(`key${i}`, { i, padding: "x".repeat(100) });
    const heapBefore = process.memoryUsage().heapUsed + process.memoryUsage().arrayBuffers;

    const [command, args] = commandFor(runtime, "test/fixtures/hostile.mjs");
    const hostile = startProcess(command, [...args, String(target.address.port)]);
    const report = hostile.line(/^\{/, 30_000).then((match) => JSON.parse(match.input!));

    // The legitimate peer works all through the attack.
    for (let i = 0; i < 300; i++) {
      await friend.set(`friend${i % 10}`, i);
      assert.deepEqual(await friend.get(`key${i % 50}`), { i: i % 50, padding: "x".repeat(100) });
    }
    const seen: Record<string, number> = await report;
    assert.equal(seen.heldOpen, 0, `the node closed every hostile connection itself: ${JSON.stringify(seen)}`);
    assert.equal(seen.closedByNode, 79);
    assert.ok(seen.answers > 0, "the flooders were answered while they read");
    await waitFor("only the friend to stay connected", () => target.stats().connections === 1);
    assert.equal(target.stats().peers, 1);
    assert.ok(errors.length >= 40, `the node reported the bad connections (${errors.length})`);
    // Frames live in ArrayBuffers, outside the heap: both count.
    const memory = process.memoryUsage();
    const grown = memory.heapUsed + memory.arrayBuffers - heapBefore;
    assert.ok(grown < 100 * 1024 * 1024, `heap and buffers grew by ${grown} bytes`);
    assert.equal(await friend.get("key7").then((v) => (v as { i: number }).i), 7);
  }, 60_000);
});
