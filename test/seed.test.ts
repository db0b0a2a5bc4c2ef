// The seed README's usage example, as written, and its flow on an OS-chosen port.
import { afterEach, assert, commandFor, describe, it, runtime, startProcess, stopAll, track, within } from "../deps.ts";
import Node from "../mod.ts";

afterEach(stopAll);

describe("Seed usage example", () => {
  it("runs as written (require('kosyak'), port 13390) and its process exits by itself", async () => {
    const seedExample = startProcess(...commandFor(runtime, "test/fixtures/seed-example.cjs"));
    // Exiting at all proves that stop() left no socket or timer behind.
    assert.equal(await within("the seed example to exit", seedExample.exit, 15_000), 0);
  });

  it("works in process with the seed's callbacks on a port the OS picks", async () => {
    const firstNode = track(new Node({ host: "127.0.0.1", port: 0 }).init());
    await firstNode.ready();
    const secondNode = track(new Node({ master: firstNode.address }).init());
    const got = await within(
      "the seed flow",
      new Promise<unknown[]>((resolve) => {
        firstNode.set("key", 123, (err, value) => {
          assert.strictEqual(value, 123);
          secondNode.get("key", (err2, value2) => resolve([err, err2, value2]));
        });
      }),
    );
    assert.deepEqual(got, [null, null, 123]);
  });
});
