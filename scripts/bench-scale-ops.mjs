// What the in-process and the separate-process members of `npm run bench -- --scale` (and of
// `--placement`) share: which keys each member writes, random keys of the whole cluster, a timed
// loop of operations, and starting a member process.
import { spawn } from "node:child_process";
import process from "node:process";
import { createInterface } from "node:readline";
import { seededRandom } from "./seeded-random.mjs";

/** The keys member `index` writes when the cluster is filled. */
export function memberKeys(index, keysPerNode) {
  return Array.from({ length: keysPerNode }, (_, k) => `n${index}:k${k}`);
}

/** A function that returns a random key of a cluster of `members` filled members (seeded). */
export function randomClusterKey(members, keysPerNode, seed) {
  const random = seededRandom(seed);
  return () => `n${Math.floor(random() * members)}:k${Math.floor(random() * keysPerNode)}`;
}

/** Runs `op` with `inFlight` calls at a time for `ms` ms of real time; resolves with how many completed. */
export async function measureOps(ms, op, inFlight = 64) {
  const end = performance.now() + ms;
  let ops = 0;
  const loop = async () => {
    while (performance.now() < end) await op(ops++);
  };
  await Promise.all(Array.from({ length: inFlight }, loop));
  return ops;
}

/**
 * Starts one member process (scripts/bench-scale-node.mjs) under this Node.js; `next()` resolves
 * with its next line of JSON, `ask` sends a command first.
 */
export function spawnMember(settings) {
  const script = new URL("./bench-scale-node.mjs", import.meta.url).pathname;
  const child = spawn(process.execPath, ["--expose-gc", script, JSON.stringify(settings)], { stdio: ["pipe", "pipe", "inherit"] });
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const exited = new Promise((resolve) => child.once("exit", resolve));
  const next = async () => {
    const line = await Promise.race([lines.next(), exited.then(() => ({ done: true }))]);
    if (line.done) throw new Error(`member ${settings.index} exited`);
    return JSON.parse(line.value);
  };
  return {
    child,
    exited,
    next,
    ask: (command) => {
      child.stdin.write(command + "\n");
      return next();
    },
  };
}
