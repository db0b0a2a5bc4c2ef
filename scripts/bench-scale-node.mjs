// One member of a separate-process cluster of `npm run bench -- --scale` (scripts/bench-scale.mjs
// starts it under Node.js). The argument is JSON {index, port, keysPerNode, members}; port is
// the first member's, absent for the first member itself. The process prints {"port": P,
// "joinMs": T} once its node has joined (T: how long joining took), then answers each line of standard input with one line of JSON:
//   "fill"        writes its keysPerNode keys and prints {"filled": true}
//   "snapshot"    prints its CPU (µs) and its node's stats
//   "heap"        prints its heap after a full collection
//   "write MS"    sets random keys of the cluster, 64 in flight, for MS ms; prints {"ops": N}
//   "read MS"     gets them the same way; prints {"ops": N}
// It stops when standard input ends.
import process from "node:process";
import { createInterface } from "node:readline";
import { Node } from "kosyak";
import { measureOps, memberKeys, randomClusterKey } from "./bench-scale-ops.mjs";

const { index, port, keysPerNode, members } = JSON.parse(process.argv[2]);
const print = (message) => process.stdout.write(JSON.stringify(message) + "\n");
const started = performance.now();
const node = await Node.start({ host: "127.0.0.1", port: 0, master: port === undefined ? undefined : { host: "127.0.0.1", port } });
print({ port: node.address.port, joinMs: performance.now() - started });

const key = randomClusterKey(members, keysPerNode, index + 1);
const commands = {
  fill: async () => {
    await node.mset(memberKeys(index, keysPerNode).map((name) => [name, 0]));
    return { filled: true };
  },
  snapshot: () => {
    const cpu = process.cpuUsage();
    return { cpuUs: cpu.user + cpu.system, stats: node.stats() };
  },
  heap: () => {
    globalThis.gc();
    return { heapUsed: process.memoryUsage().heapUsed };
  },
  write: async (ms) => ({ ops: await measureOps(ms, (n) => node.set(key(), n)) }),
  read: async (ms) => ({ ops: await measureOps(ms, () => node.get(key())) }),
};
for await (const line of createInterface({ input: process.stdin })) {
  const [command, argument] = line.split(" ");
  print(await commands[command](Number(argument)));
}
await node.stop({ handover: false });
