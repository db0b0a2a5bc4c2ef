// What the in-process and the separate-process members of `npm run bench -- --scale` both do:
// which keys each member writes, random keys of the whole cluster, and a timed loop of operations.

/** The keys member `index` writes when the cluster is filled. */
export function memberKeys(index, keysPerNode) {
  return Array.from({ length: keysPerNode }, (_, k) => `n${index}:k${k}`);
}

/** A function that returns a random key of a cluster of `members` filled members (seeded). */
export function randomClusterKey(members, keysPerNode, seed) {
  let state = seed >>> 0;
  const random = () => {
    // mulberry32
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
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
