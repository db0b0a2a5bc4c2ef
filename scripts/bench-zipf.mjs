// One process of the zipf workload of `npm run bench`, started by scripts/bench-worker.mjs in
// the runtime it measures: gets of 100,000 keys, chosen with a zipf(0.99) law, 64 in flight,
// through kosyak (one node of a 4-node cluster, with a near cache of `cacheEntries` values, or
// none for 0), ioredis, or node-redis with client-side caching of `cacheEntries` values. The
// argument is JSON {system, cacheEntries, index, members, port, keys, inFlight, windowMs}. The
// process prints {"port": P} (kosyak: where its node listens) when ready, and {"known": N} once
// its node knows every key; on "warm" it reads every key once, coldest first, so that a cache
// ends up holding the hottest keys, and prints {"warm": true}; on "go" it runs one window and
// prints {"readsPerSec": N, "nearShare": S} (S: for kosyak, the share of gets its near cache
// answered). It stops when standard input ends.
import process from "node:process";
import { createInterface } from "node:readline";
import Redis from "ioredis";
import { createClient } from "redis";
import { Node } from "kosyak";
import { seededRandom } from "./seeded-random.mjs";

const { system, cacheEntries, index, port, keys, inFlight, windowMs, members } = JSON.parse(process.argv[2]);
const print = (message) => process.stdout.write(JSON.stringify(message) + "\n");
const VALUE = "a value of some 30 bytes......";
const zipfKey = sampler(keys, 0.99, 1 + index);

let get;
let stop;
/** For kosyak: the share of gets its near cache answered, since the last call. */
let nearShare = () => undefined;
if (system === "kosyak") {
  const node = await new Node({ master: index > 0 ? { port } : undefined, nearCache: cacheEntries > 0 && { maxEntries: cacheEntries } }).init().ready();
  // Each member writes a quarter of the keys, so that a quarter of the reads are local misses
  // of the near cache at most, and the rest of the keys are held by the three others.
  const batch = [];
  for (let k = index; k < keys; k += members) batch.push([`z:${k}`, VALUE]);
  await node.mset(batch);
  get = (key) => node.get(key);
  stop = () => node.stop({ handover: false });
  let before = node.stats();
  nearShare = () => {
    const now = node.stats();
    const reads = (s) => s.hits + s.nearHits + s.remoteHits + s.misses;
    const share = (now.nearHits - before.nearHits) / (reads(now) - reads(before));
    before = now;
    return share;
  };
  print({ port: node.address.port });
  // Bounded: the worker gives up on a process that never reports.
  for (let attempt = 0; attempt < 3000 && node.stats().entries + node.stats().remoteKeys < keys; attempt++) await new Promise((resolve) => setTimeout(resolve, 10));
  print({ known: node.stats().entries + node.stats().remoteKeys });
} else if (system === "ioredis") {
  const redis = new Redis({ host: "127.0.0.1", port });
  get = (key) => redis.get(key);
  stop = () => redis.quit();
  print({ port: 0 });
  print({ known: keys });
} else if (system === "node-redis") {
  const client = createClient({ socket: { host: "127.0.0.1", port }, RESP: 3, clientSideCache: { ttl: 0, maxEntries: cacheEntries } });
  await client.connect();
  get = (key) => client.get(key);
  stop = () => client.close();
  print({ port: 0 });
  print({ known: keys });
} else {
  throw new Error(`unknown system ${system}`);
}

/** Reads per second of `inFlight` loops, each awaiting one get after another, for one window. */
async function window() {
  let done = 0;
  const started = performance.now();
  // Each loop reads the clock once per 16 gets, as scripts/bench-worker.mjs's asyncRate does.
  await Promise.all(Array.from({ length: inFlight }, async () => {
    for (let n = 0; n++ % 16 !== 0 || performance.now() - started < windowMs;) {
      if ((await get(zipfKey())) === null) throw new Error("a zipf key read as null");
      done++;
    }
  }));
  return done / ((performance.now() - started) / 1000);
}

/** Key names drawn with a zipf(s) law over `n` keys (rank k has weight 1 / (k + 1)^s), seeded. */
function sampler(n, s, seed) {
  const cumulative = new Float64Array(n);
  let total = 0;
  for (let k = 0; k < n; k++) cumulative[k] = total += 1 / Math.pow(k + 1, s);
  const random = seededRandom(seed);
  return () => {
    const target = random() * total;
    let low = 0;
    let high = n - 1;
    while (low < high) {
      const mid = (low + high) >>> 1;
      if (cumulative[mid] < target) low = mid + 1;
      else high = mid;
    }
    return `z:${low}`;
  };
}

/** Reads every key once, coldest first, 1,000 at a time. */
async function warm() {
  for (let from = keys - 1; from >= 0; from -= 1000) {
    const batch = [];
    for (let k = from; k > from - 1000 && k >= 0; k--) batch.push(get(`z:${k}`));
    await Promise.all(batch);
  }
  nearShare();
}

createInterface({ input: process.stdin })
  .on("line", async (line) => {
    if (line === "warm") {
      await warm();
      print({ warm: true });
    }
    else print({ readsPerSec: await window(), nearShare: nearShare() });
  })
  .on("close", async () => {
    await stop();
    process.exit(0);
  });
