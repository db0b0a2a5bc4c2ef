// One member of a separate-process cluster of `npm run bench -- --scale` (scripts/bench-scale.mjs
// and scripts/bench-placement.mjs start it under Node.js). The argument is JSON {index, port,
// keysPerNode, members, options?}; port is the first member's, absent for the first member
// itself; options go to the Node (placement, replicas). The process prints {"port": P,
// "joinMs": T} once its node has joined (T: how long joining took), then answers each line of standard input with one line of JSON:
//   "fill"        writes its keysPerNode keys and prints {"filled": true}
//   "snapshot"    prints its CPU (µs) and its node's stats
//   "heap"        prints its heap after a full collection
//   "write MS"    sets random keys of the cluster, 64 in flight, for MS ms; prints {"ops": N}
//   "read MS"     gets them the same way; prints {"ops": N}
//   "seq N"       sets N random keys of the cluster one at a time; prints {"ops": N}
//   "latency N"   gets N random keys of the cluster that this node holds no entry of, one at a
//                 time; prints {"p50Us", "p99Us", "meanUs"}
// It stops when standard input ends.
import process from "node:process";
import { createInterface } from "node:readline";
import { Node } from "kosyak";
import { measureOps, memberKeys, randomClusterKey } from "./bench-scale-ops.mjs";

const { index, port, keysPerNode, members, options = {} } = JSON.parse(process.argv[2]);
const print = (message) => process.stdout.write(JSON.stringify(message) + "\n");
const started = performance.now();
const node = await Node.start({ ...options, host: "127.0.0.1", port: 0, master: port === undefined ? undefined : { host: "127.0.0.1", port } });
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
  seq: async (count) => {
    for (let n = 0; n < count; n++) await node.set(key(), n);
    return { ops: count };
  },
  latency: async (count) => {
    // Held here: this node's entries, but with hash placement a copy kept for the owner is read there.
    const here = new Set(options.placement === "hash" ? [...node.keys()].filter((name) => node.has(name)) : node.keys());
    const took = [];
    for (let tries = 0; took.length < count && tries < 100 * count; tries++) {
      const name = key();
      if (here.has(name)) continue;
      const started = performance.now();
      await node.get(name);
      took.push((performance.now() - started) * 1000);
    }
    took.sort((a, b) => a - b);
    const at = (share) => Math.round(took[Math.min(took.length - 1, Math.floor(share * took.length))]);
    return { p50Us: at(0.5), p99Us: at(0.99), meanUs: Math.round(took.reduce((sum, us) => sum + us, 0) / took.length) };
  },
};
for await (const line of createInterface({ input: process.stdin })) {
  const [command, argument] = line.split(" ");
  print(await commands[command](Number(argument)));
}
await node.stop({ handover: false });
