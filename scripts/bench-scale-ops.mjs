// What the in-process and the separate-process members of `npm run bench -- --scale` both do:
// which keys each member writes, random keys of the whole cluster, and a timed loop of operations.
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
