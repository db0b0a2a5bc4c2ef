// One runtime's part of `npm run bench`, started by scripts/bench.mjs under Node.js, Deno or Bun.
// It starts the peers it needs (scripts/bench-peer.mjs, same runtime), runs every workload in
// rounds, interleaved so that machine noise hits all of them alike, and prints one JSON line per
// measurement. Every loop is bounded by a time window or a count.
import { spawn } from "node:child_process";
import process from "node:process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import Redis from "ioredis";
import { createClient } from "redis";
import memjs from "memjs";
import { LRUCache } from "lru-cache";
import { Node } from "kosyak";
import { batchingClient, nativeClient } from "./bench-native.mjs";
import { startPeer as startBenchPeer, stopPeers } from "./bench-peers.mjs";

const settings = JSON.parse(process.argv[2]);
const { runtime, redisPort, memcachedPort, rounds, joinKeys, peerCommand } = settings;
const KEYS = 1000;
/** Cluster sizes of the scaling rows. */
const SCALE_SIZES = [2, 4, 8, 16, 32];
const VALUE = "a value of some 30 bytes......";
const report = (result) => process.stdout.write(JSON.stringify({ runtime, ...result }) + "\n");
const gc = () => (globalThis.Bun ? Bun.gc(true) : globalThis.gc?.());
const children = [];

/** Starts scripts/bench-peer.mjs in this runtime and resolves with its port. */
const startPeer = (mode, options) => startBenchPeer(peerCommand, children, mode, options);

/** Yields to the event loop, so that the nodes of this process keep up their heartbeats. */
const breathe = () => new Promise((resolve) => setTimeout(resolve, 0));

/**
 * Operations per second of `batch` (which runs some and says how many) over one window. The
 * event loop gets a turn between batches; that time is not counted.
 */
async function throughput(batch) {
  let done = 0;
  let busy = 0;
  const started = performance.now();
  while (performance.now() - started < settings.windowMs) {
    const t = performance.now();
    done += await batch();
    busy += performance.now() - t;
    await breathe();
  }
  return done / (busy / 1000);
}

/** `op(i)` awaited one after another, in batches of 1,000. */
const sequentialRate = (op) =>
  throughput(async () => {
    for (let i = 0; i < 1000; i++) await op(i);
    return 1000;
  });

/** Sync operations per second: `op(i)` called in batches of 10,000. */
const syncRate = (op) =>
  throughput(() => {
    for (let i = 0; i < 10_000; i++) op(i);
    return 10_000;
  });

/**
 * Async operations per second with `inFlight` loops each awaiting `op(i)` one after another.
 * Each loop reads the clock once per 16 ops, so that the clock costs little next to an op that
 * completes at once (a cache hit); the rate counts the time the loops actually ran.
 */
async function asyncRate(op, inFlight) {
  let done = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: inFlight }, async (_, lane) => {
      for (let i = lane, n = 0; n++ % 16 !== 0 || performance.now() - started < settings.windowMs; i += inFlight) {
        await op(i);
        done++;
      }
    }),
  );
  return done / ((performance.now() - started) / 1000);
}

/** Latency percentiles (µs) of `op` called one after another, for a window or 5,000 calls. */
async function latency(op) {
  const samples = [];
  const started = performance.now();
  for (let i = 0; i < 5_000 && performance.now() - started < settings.windowMs; i++) {
    const t = performance.now();
    await op(i);
    samples.push((performance.now() - t) * 1000);
  }
  samples.sort((a, b) => a - b);
  return { p50: samples[Math.floor(samples.length * 0.5)], p99: samples[Math.floor(samples.length * 0.99)] };
}

const key = (i) => `key:${i % KEYS}`;
/** Hot keys: 100 of the keys the holder process holds. */
const HOT_KEYS = Array.from({ length: 100 }, (_, i) => `key:${i}`);
const hotKey = (i) => HOT_KEYS[i % HOT_KEYS.length];

// ─── Set-up ───────────────────────────────────────────────────────────────────────────────────

const map = new Map();
const lru = new LRUCache({ max: 100_000 });
const local = await new Node().init().ready();
for (let i = 0; i < KEYS; i++) {
  map.set(key(i), VALUE);
  lru.set(key(i), VALUE);
  await local.set(key(i), VALUE);
}

const holderPort = await startPeer("node", { keys: KEYS });
const reader = await new Node({ master: { port: holderPort } }).init().ready();
const nearReader = await new Node({ master: { port: holderPort }, nearCache: true }).init().ready();
// Another member that writes the keys nearReader reads, for the stale-read trials.
const nearWriter = await new Node({ master: { port: holderPort } }).init().ready();
const writer1 = await new Node().init().ready();
await startPeer("node", { master: { port: writer1.address.port } });
const writer3 = await new Node().init().ready();
for (let i = 0; i < 3; i++) await startPeer("node", { master: { port: writer3.address.port } });
const replicated = await new Node({ replicas: 1 }).init().ready();
for (let i = 0; i < 3; i++) await startPeer("node", { master: { port: replicated.address.port }, replicas: 1 });
// Hash placement: a key lives on its owner. The reader gets keys its one peer owns; the writer
// sets keys of both, each acknowledged by one peer (the owner, or the copy keeper of its own).
const hashReader = await new Node({ placement: "hash", master: { port: await startPeer("node", { placement: "hash" }) } }).init().ready();
for (let i = 0; i < KEYS; i++) await hashReader.set(`hash:${i}`, VALUE);
const PEER_OWNED = Array.from({ length: KEYS }, (_, i) => `hash:${i}`).filter((k) => !hashReader.has(k));
if (PEER_OWNED.length === 0) throw new Error("the hash reader's peer owns none of the keys");
const peerOwned = (i) => PEER_OWNED[i % PEER_OWNED.length];
const hashWriter = await new Node({ placement: "hash", replicas: 1 }).init().ready();
await startPeer("node", { master: { port: hashWriter.address.port }, placement: "hash", replicas: 1 });
const barePort = await startPeer("bare");
/** The limit: the gets of one tick in one message, as kosyak sends them (see bench-native.mjs). */
const limit = await batchingClient(barePort);
/** The same server asked one message per get. */
const bare = await nativeClient(barePort);
let memcached;
if (memcachedPort) {
  memcached = memjs.Client.create(`127.0.0.1:${memcachedPort}`, { logger: { log() {} } });
  for (let i = 0; i < KEYS; i++) await memcached.set(key(i), VALUE, { expires: 0 });
}
let redis;
/** node-redis with RESP3 client-side caching: Redis tells it when a key it cached changes. */
let cachingRedis;
/** Each Redis client at its best setting, by the name its rows carry. */
const redisClients = {};
if (redisPort) {
  redis = new Redis({ host: "127.0.0.1", port: redisPort });
  for (let i = 0; i < KEYS; i++) await redis.set(key(i), VALUE);
  cachingRedis = createClient({ socket: { host: "127.0.0.1", port: redisPort }, RESP: 3, clientSideCache: { ttl: 0, maxEntries: 10_000 } });
  await cachingRedis.connect();
  redisClients["ioredis"] = redis;
  // The commands of one tick in one write: ioredis's fastest setting.
  redisClients["ioredis auto-pipelining"] = new Redis({ host: "127.0.0.1", port: redisPort, enableAutoPipelining: true });
  // node-redis pipelines the commands of one tick by itself.
  redisClients["node-redis"] = await createClient({ socket: { host: "127.0.0.1", port: redisPort } }).connect();
  if (globalThis.Bun?.RedisClient) {
    redisClients["Bun RedisClient"] = new Bun.RedisClient(`redis://127.0.0.1:${redisPort}`);
    await redisClients["Bun RedisClient"].connect();
  }
}

/**
 * Reads right after another client's write has completed: each trial reads a key twice (so a
 * client cache holds it), has `write` set a new value, then reads once more; a read of anything
 * but the new value is stale.
 */
async function staleReads(read, write, trials = 1000) {
  let stale = 0;
  for (let i = 0; i < trials; i++) {
    const trialKey = `fresh:${i % 10}`;
    await read(trialKey);
    await read(trialKey);
    const value = `${VALUE}${i}`;
    await write(trialKey, value);
    if ((await read(trialKey)) !== value) stale++;
  }
  return { staleReads: stale, trials };
}

// ─── Workloads ────────────────────────────────────────────────────────────────────────────────

let sink = 0;
const workloads = {
  "local get hit, Map": () => syncRate((i) => (sink += map.get(key(i)).length)),
  "local get hit, lru-cache": () => syncRate((i) => (sink += lru.get(key(i)).length)),
  "local get hit, kosyak callback": () => syncRate((i) => local.get(key(i), (_, value) => (sink += value.length))),
  "local get hit, kosyak promise": () => sequentialRate((i) => local.get(key(i))),
  "local set, Map": () => syncRate((i) => map.set(key(i), VALUE)),
  "local set, lru-cache": () => syncRate((i) => lru.set(key(i), VALUE)),
  "local set, kosyak callback": () => throughput(() => new Promise((resolve) => {
    let left = 1000;
    for (let i = 0; i < 1000; i++) local.set(key(i), VALUE, () => --left === 0 && resolve(1000));
  })),
  "local set, kosyak promise": () => sequentialRate((i) => local.set(key(i), VALUE)),
  "remote get, kosyak, sequential": () => latency((i) => reader.get(key(i))),
  "remote get, bare limit, sequential": () => latency((i) => limit.get(key(i))),
  "set acked by 1 peer, sequential": () => latency((i) => writer1.set(key(i), VALUE)),
  "set acked by 3 peers, sequential": () => latency((i) => writer3.set(key(i), VALUE)),
  "set acked by 3 peers, replicas: 1, sequential": () => latency((i) => replicated.set(key(i), VALUE)),
};
for (const inFlight of [1, 16, 64]) {
  workloads[`remote get, kosyak, ${inFlight} in flight`] = () => asyncRate((i) => reader.get(key(i)), inFlight);
  workloads[`remote get, bare limit, ${inFlight} in flight`] = () => asyncRate((i) => limit.get(key(i)), inFlight);
}
workloads["remote get, hash placement, sequential"] = () => latency((i) => hashReader.get(peerOwned(i)));
workloads["remote get, hash placement, 64 in flight"] = () => asyncRate((i) => hashReader.get(peerOwned(i)), 64);
workloads["set acked by 1 peer, hash placement, replicas: 1, 64 in flight"] = () => asyncRate((i) => hashWriter.set(key(i), VALUE), 64);
workloads["remote get, bare socket, one message per get, 64 in flight"] = () => asyncRate((i) => bare.request({ op: "get", key: key(i) }), 64);
workloads["hot remote get, kosyak near cache, sequential"] = () => latency((i) => nearReader.get(hotKey(i)));
workloads["hot remote get, kosyak near cache, 64 in flight"] = () => asyncRate((i) => nearReader.get(hotKey(i)), 64);
workloads["hot remote get, kosyak, sequential"] = () => latency((i) => reader.get(hotKey(i)));
workloads["hot remote get, kosyak, 64 in flight"] = () => asyncRate((i) => reader.get(hotKey(i)), 64);
workloads["stale reads after an acknowledged write, kosyak near cache"] = () => staleReads((k) => nearReader.get(k), (k, v) => nearWriter.set(k, v));
workloads["set acked by 1 peer, 64 in flight"] = () => asyncRate((i) => writer1.set(key(i), VALUE), 64);
workloads["set acked by 3 peers, 64 in flight"] = () => asyncRate((i) => writer3.set(key(i), VALUE), 64);
workloads["set acked by 3 peers, replicas: 1, 64 in flight"] = () => asyncRate((i) => replicated.set(key(i), VALUE), 64);
for (const [name, client] of Object.entries(redisClients)) {
  workloads[`remote get, ${name}+Redis, sequential`] = () => latency((i) => client.get(key(i)));
  workloads[`set, ${name}+Redis, sequential`] = () => latency((i) => client.set(key(i), VALUE));
  for (const inFlight of [1, 16, 64]) workloads[`remote get, ${name}+Redis, ${inFlight} in flight`] = () => asyncRate((i) => client.get(key(i)), inFlight);
  workloads[`set, ${name}+Redis, 64 in flight`] = () => asyncRate((i) => client.set(key(i), VALUE), 64);
}
if (redis) {
  workloads["hot remote get, ioredis+Redis, sequential"] = () => latency((i) => redis.get(hotKey(i)));
  workloads["hot remote get, ioredis+Redis, 64 in flight"] = () => asyncRate((i) => redis.get(hotKey(i)), 64);
  workloads["hot remote get, node-redis client-side caching, sequential"] = () => latency((i) => cachingRedis.get(hotKey(i)));
  workloads["hot remote get, node-redis client-side caching, 64 in flight"] = () => asyncRate((i) => cachingRedis.get(hotKey(i)), 64);
  workloads["stale reads after an acknowledged write, node-redis client-side caching"] = () => staleReads((k) => cachingRedis.get(k), (k, v) => redis.set(k, v));
}

if (memcached) {
  workloads["remote get, memjs+memcached, sequential"] = () => latency((i) => memcached.get(key(i)));
  workloads["remote get, memjs+memcached, 64 in flight"] = () => asyncRate((i) => memcached.get(key(i)), 64);
  workloads["set, memjs+memcached, 64 in flight"] = () => asyncRate((i) => memcached.set(key(i), VALUE, { expires: 0 }), 64);
}

// A short run of everything first, so that no measured round pays for the JIT's warm-up.
const measuredWindow = settings.windowMs;
settings.windowMs = 100;
for (const run of Object.values(workloads)) await run();
settings.windowMs = measuredWindow;

for (let round = 1; round <= rounds; round++) {
  for (const [name, run] of Object.entries(workloads)) {
    const result = await run();
    if (reader.stats().peers !== 3) throw new Error(`the reader lost a member during "${name}"`);
    report(typeof result === "number" ? { name, round, opsPerSec: result } : { name, round, ...result });
  }
}

// ─── Zipf: hot and cold keys read from 4 processes ────────────────────────────────────────────
// Each system gets 4 processes of this runtime (scripts/bench-zipf.mjs) reading 100,000 keys
// with a zipf(0.99) law, 64 in flight each; the row is the sum of their reads per second. The
// client caches hold 10,000 values (kosyak's default) or all 100,000; each process first reads
// every key once, coldest first, then runs two windows that are not counted.

const ZIPF_KEYS = 100_000;
const ZIPF_MEMBERS = 4;

/** Starts one zipf process; resolves with it and a function that waits for its next line. */
async function startZipf(options) {
  const script = fileURLToPath(new URL("./bench-zipf.mjs", import.meta.url));
  const child = spawn(peerCommand[0], [...peerCommand.slice(1), script, JSON.stringify(options)], { stdio: ["pipe", "pipe", "inherit"] });
  children.push(child);
  const lines = [];
  const waiting = [];
  createInterface({ input: child.stdout }).on("line", (line) => (waiting.length > 0 ? waiting.shift()(line) : lines.push(line)));
  const exited = new Promise((_, reject) => child.once("exit", () => reject(new Error(`a ${options.system} zipf process exited early`))));
  exited.catch(() => {});
  const next = () => Promise.race([lines.length > 0 ? Promise.resolve(lines.shift()) : new Promise((resolve) => waiting.push(resolve)), exited]).then(JSON.parse);
  return { child, next };
}

/** Each zipf row: its name, the system and its client cache's size. */
const zipfSystems = [
  ["kosyak, near cache of 10,000", "kosyak", 10_000],
  ["kosyak, near cache of 100,000", "kosyak", 100_000],
  ["kosyak, no near cache", "kosyak", 0],
];
if (redis) {
  zipfSystems.push(
    ["ioredis", "ioredis", 0],
    ["node-redis client-side caching of 10,000", "node-redis", 10_000],
    ["node-redis client-side caching of 100,000", "node-redis", 100_000],
  );
  for (let k = 0; k < ZIPF_KEYS; k += 10_000) {
    const pairs = [];
    for (let i = k; i < k + 10_000; i++) pairs.push(`z:${i}`, VALUE);
    await redis.mset(pairs);
  }
}
for (const [row, system, cacheEntries] of zipfSystems) {
  const base = { system, cacheEntries, keys: ZIPF_KEYS, inFlight: 64, windowMs: settings.windowMs, members: ZIPF_MEMBERS, port: redisPort };
  const processes = [];
  for (let index = 0; index < ZIPF_MEMBERS; index++) {
    const started = await startZipf({ ...base, index, ...(system === "kosyak" && index > 0 ? { port: processes[0].port } : {}) });
    processes.push({ ...started, port: (await started.next()).port });
  }
  for (const { next } of processes) {
    const { known } = await next();
    if (known < ZIPF_KEYS) throw new Error(`a ${system} zipf process knows ${known} keys of ${ZIPF_KEYS}`);
  }
  for (const { child } of processes) child.stdin.write("warm\n");
  for (const { next } of processes) await next();
  const window = async () => {
    for (const { child } of processes) child.stdin.write("go\n");
    const results = await Promise.all(processes.map(({ next }) => next()));
    const opsPerSec = results.reduce((sum, { readsPerSec }) => sum + readsPerSec, 0);
    const shares = results.map(({ nearShare }) => nearShare).filter((share) => share !== undefined);
    return shares.length === 0 ? { opsPerSec } : { opsPerSec, nearShare: shares.reduce((a, b) => a + b, 0) / shares.length };
  };
  await window();
  await window();
  for (let round = 1; round <= rounds; round++) {
    report({ name: `zipf(0.99) gets of 100,000 keys, 4 processes x 64 in flight, ${row}`, round, ...(await window()) });
  }
  for (const { child } of processes) child.stdin.end();
  await Promise.all(processes.map(({ child }) => child.exitCode === null && new Promise((resolve) => child.once("exit", resolve))));
  children.splice(children.indexOf(processes[0].child), ZIPF_MEMBERS);
}

// ─── Scaling: writes in clusters of 2 to 32 nodes in this process ─────────────────────────────
// Every node runs WRITERS_PER_NODE writers, as N application instances would, so that a write's
// cost (one acknowledgement from each of the N - 1 peers) is what grows, not the batching lost to
// fewer writers per node. All nodes share this process's CPU, so throughput falls with N.

const WRITERS_PER_NODE = 16;
for (const size of SCALE_SIZES) {
  const nodes = [await new Node().init().ready()];
  for (let i = 1; i < size; i++) nodes.push(await new Node({ master: nodes[i - 1].address }).init().ready());
  if (nodes.some((node) => node.stats().peers !== size - 1)) throw new Error(`the ${size} nodes did not form a full mesh`);
  const name = `set, ${size} nodes in one process, ${WRITERS_PER_NODE} writers each`;
  const run = () => asyncRate((i) => nodes[i % size].set(key(i), VALUE), WRITERS_PER_NODE * size);
  settings.windowMs = 100;
  await run();
  settings.windowMs = measuredWindow;
  for (let round = 1; round <= rounds; round++) report({ name, round, nodes: size, opsPerSec: await run() });
  await Promise.all(nodes.map((node) => node.stop()));
}

// ─── Hand-over: a node that stops gives its entries to the others ────────────────────────────

const HANDOVER_ENTRIES = 100_000;
/** About 100 bytes per entry: an 11-character key and a value of 87 characters of JSON. */
const HANDOVER_VALUE = "x".repeat(85);
for (let round = 1; round <= rounds; round++) {
  const leaving = await new Node().init().ready();
  for (let i = 0; i < 3; i++) await startPeer("node", { master: { port: leaving.address.port } });
  await waitForPeers(leaving, 3);
  for (let i = 0; i < HANDOVER_ENTRIES; i += 10_000) {
    const batch = [];
    for (let k = i; k < i + 10_000; k++) batch.push([`hand:${String(k).padStart(6, "0")}`, HANDOVER_VALUE]);
    await leaving.mset(batch);
  }
  const started = performance.now();
  await leaving.stop();
  const handoverMs = performance.now() - started;
  if (leaving.stats().handedOver !== HANDOVER_ENTRIES) throw new Error(`handed over ${leaving.stats().handedOver} entries`);
  report({ name: `hand over ${HANDOVER_ENTRIES} entries of 100 bytes on stop`, round, handoverMs });
  // The peers stop (handing over among themselves) before the next round starts.
  const peers = children.splice(-3);
  for (const child of peers) child.stdin.end();
  await Promise.all(peers.map((child) => child.exitCode === null && new Promise((resolve) => child.once("exit", resolve))));
}

// ─── Rolling restart: every node of four stopped and started again in turn ───────────────────

const ROLLING_KEYS = 100_000;
{
  const members = [await new Node().init().ready()];
  for (let i = 1; i < 4; i++) members.push(await new Node({ master: members[i - 1].address }).init().ready());
  for (let i = 0; i < ROLLING_KEYS; i += 10_000) {
    const batch = [];
    for (let k = i; k < i + 10_000; k++) batch.push([`roll:${k}`, k]);
    await members[(i / 10_000) % 4].mset(batch);
  }
  for (let i = 0; i < 4; i++) {
    await members[i].stop();
    members[i] = await new Node({ master: members[(i + 1) % 4].address }).init().ready();
    await waitForPeers(members[i], 3);
  }
  let lost = 0;
  for (const member of members) {
    const keys = Array.from({ length: ROLLING_KEYS }, (_, k) => `roll:${k}`);
    lost += (await member.mget(keys)).filter((value, k) => value !== k).length;
  }
  report({ name: "keys lost in a rolling restart of 4 nodes holding 100,000 keys (reads from every node)", round: 1, lostKeys: lost });
  await Promise.all(members.map((member) => member.stop({ handover: false })));
}

// ─── Replicas: a holder killed with SIGKILL ────────────────────────────────────────────────────
// Four nodes with replicas: 1, three of them in processes that each write CRASH_KEYS keys; one
// is killed. Failover: from the kill to the first read of one of its keys served by a copy,
// read once the killed process has exited.

const CRASH_KEYS = 25_000;
for (let round = 1; round <= rounds; round++) {
  const survivor = await new Node({ replicas: 1 }).init().ready();
  const first = children.length;
  for (let i = 0; i < 3; i++) {
    await startPeer("node", { master: { port: survivor.address.port }, replicas: 1, keys: CRASH_KEYS, prefix: `crash${i}:` });
  }
  await waitForPeers(survivor, 3);
  const [victim, ...others] = children.splice(first, 3);
  const victimKey = "crash0:123";
  if ((await survivor.get(victimKey)) !== 123) throw new Error(`${victimKey} is not there before the kill`);
  const killed = performance.now();
  victim.kill("SIGKILL");
  // Read only once the process is gone, so that no answer can come from it.
  await new Promise((resolve) => (victim.exitCode !== null || victim.signalCode !== null ? resolve() : victim.once("exit", resolve)));
  let served = false;
  for (let attempt = 0; attempt < 100_000 && !served; attempt++) served = (await survivor.get(victimKey).catch(() => null)) === 123;
  const failoverMs = performance.now() - killed;
  await waitForPeers(survivor, 2, true);
  let lost = 0;
  for (let p = 0; p < 3; p++) {
    const keys = Array.from({ length: CRASH_KEYS }, (_, k) => `crash${p}:${k}`);
    const values = await survivor.mget(keys);
    lost += values.filter((value, k) => value !== k).length;
  }
  report({ name: "failover: SIGKILL of a holder to the first read served by its copy", round, failoverMs });
  report({ name: "keys lost when 1 of 4 nodes with replicas: 1 is killed (of 75,000)", round, lostKeys: lost });
  await survivor.stop({ handover: false });
  for (const child of others) child.stdin.end();
  await Promise.all(others.map((child) => child.exitCode === null && new Promise((resolve) => child.once("exit", resolve))));
}

/** Resolves once `node` has `count` peers (exactly, with `exact`), checking for at most 10 s. */
async function waitForPeers(node, count, exact = false) {
  const done = () => (exact ? node.stats().peers === count : node.stats().peers >= count);
  for (let attempt = 0; attempt < 1000 && !done(); attempt++) await new Promise((resolve) => setTimeout(resolve, 10));
  if (!done()) throw new Error(`${node.stats().peers} peers, not ${count}`);
}

// ─── Joining a large cluster ──────────────────────────────────────────────────────────────────

const bigPort = await startPeer("node", { keys: joinKeys });
for (let round = 1; round <= 3; round++) {
  gc();
  const before = process.memoryUsage().heapUsed;
  const started = performance.now();
  const joiner = await new Node({ master: { port: bigPort }, requestTimeout: 60_000 }).init().ready();
  const joinMs = performance.now() - started;
  gc();
  const directoryBytes = process.memoryUsage().heapUsed - before;
  const known = joiner.stats().remoteKeys;
  await joiner.stop();

  gc();
  const mapBefore = process.memoryUsage().heapUsed;
  let plain = new Map();
  for (let i = 0; i < joinKeys; i++) plain.set(`key:${i}`, i);
  gc();
  const mapBytes = process.memoryUsage().heapUsed - mapBefore;
  sink += plain.size;
  plain = undefined;
  report({ name: `join a cluster of ${joinKeys} keys`, round, joinMs, known, bytesPerKey: directoryBytes / joinKeys, mapBytesPerKey: mapBytes / joinKeys });
}

// ─── Tear-down ────────────────────────────────────────────────────────────────────────────────

await Promise.all([local, reader, nearReader, nearWriter, writer1, writer3, replicated, hashReader, hashWriter].map((node) => node.stop({ handover: false })));
bare.close();
limit.close();
await redisClients["ioredis auto-pipelining"]?.quit();
await redisClients["node-redis"]?.close();
redisClients["Bun RedisClient"]?.close();
await redis?.quit();
await cachingRedis?.close();
memcached?.close();
await stopPeers(children);
if (sink === -1) console.log(sink);
process.exit(0);
