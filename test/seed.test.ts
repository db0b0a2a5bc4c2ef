// The seed README's usage example, as written, and its flow on an OS-chosen port.
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { afterEach, assert, describe, it, runtime, stopAll, track, within } from "../deps.ts";
import Node from "../mod.ts";

afterEach(stopAll);

describe("Seed usage example", () => {
  it("runs as written (require('kosyak'), port 13390) and its process exits by itself", async () => {
    const script = fileURLToPath(new URL("./fixtures/seed-example.cjs", import.meta.url));
    const args = runtime === "deno" ? ["run", "-A", script] : [script];
    const child = spawn(process.execPath, args, { stdio: ["ignore", "inherit", "pipe"] });
    let stderr = "";
    child.stderr!.on("data", (chunk) => (stderr += chunk));
    const exit = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
    track({ stop: async () => void (child.exitCode === null && child.kill("SIGKILL")) });
    // Exiting at all proves that stop() left no socket or timer behind.
    assert.equal(await within("the seed example to exit", exit, 15_000), 0, stderr);
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
