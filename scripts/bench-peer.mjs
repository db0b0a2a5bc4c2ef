// A process the benchmark talks to, in the runtime that runs it. With "node" it runs a kosyak
// node (optionally joining a master and holding N keys, named with a prefix); with "bare" it runs the bare limit: a
// get server over the runtime's own sockets, with the same framing as kosyak and writes batched
// per tick, and nothing else. It prints {"port": P} when ready and runs until stdin closes.
import process from "node:process";
import { Node } from "kosyak";
import { nativeListen } from "./bench-native.mjs";

const [mode, optionsJson = "{}"] = process.argv.slice(2);
const options = JSON.parse(optionsJson);
const ready = (port) => process.stdout.write(JSON.stringify({ port }) + "\n");
let stop = async () => {};

if (mode === "node") {
  const { keys = 0, prefix = "key:", ...nodeOptions } = options;
  const node = await new Node({ port: 0, ...nodeOptions }).init().ready();
  for (let i = 0; i < keys; i += 10_000) {
    const batch = [];
    for (let k = i; k < Math.min(i + 10_000, keys); k++) batch.push([`${prefix}${k}`, k]);
    await node.mset(batch);
  }
  await node.set("hot", "a value of some 30 bytes......");
  stop = () => node.stop();
  ready(node.address.port);
} else if (mode === "bare") {
  const value = "a value of some 30 bytes......";
  // One value per request, or one per key of a batched request (see batchingClient).
  const server = await nativeListen((request) =>
    request.keys === undefined ? { op: "ok", rid: request.rid, value } : { op: "ok", rid: request.rid, values: request.keys.map(() => value) });
  stop = () => server.close();
  ready(server.port);
} else {
  throw new Error(`unknown mode ${mode}`);
}

process.stdin.resume();
process.stdin.on("end", async () => {
  await stop();
  process.exit(0);
});
