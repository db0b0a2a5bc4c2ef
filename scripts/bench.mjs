// `npm run bench`: kosyak, in both placements, against a Map, lru-cache, the socket limit, Redis
// (ioredis with and without auto-pipelining, node-redis, Bun's RedisClient) and memjs+memcached,
// under Node.js, Deno and Bun, on loopback. Each runtime runs scripts/bench-worker.mjs; this
// script starts a redis-server and a memcached on free loopback ports (those that are installed),
// gathers the results, and writes bench/results.json (every measurement), bench/results.md (the
// table, with the targets) and bench/chart.svg. Options: --quick (fewer and shorter rounds, a 100,000-key join),
// --runtimes node,deno,bun. With --scale it runs scripts/bench-scale.mjs instead: what a node
// pays as the cluster grows (see docs/scale.md); with --placement, scripts/bench-placement.mjs:
// local and hash placement side by side.
import { execFileSync, spawn } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { connect, createServer } from "node:net";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const args = process.argv.slice(2);
const quick = args.includes("--quick");
const runtimes = (args.find((a) => a.startsWith("--runtimes="))?.split("=")[1] ?? "node,deno,bun").split(",");
const settings = { rounds: quick ? 2 : 5, windowMs: quick ? 300 : 600, joinKeys: quick ? 100_000 : 1_000_000 };
const RUNTIME_TIMEOUT_MS = 15 * 60_000;

const commands = {
  node: { worker: [process.execPath, "--expose-gc"], peer: [process.execPath] },
  deno: { worker: [`${root}node_modules/.bin/deno`, "run", "-A", "--v8-flags=--expose-gc"], peer: [`${root}node_modules/.bin/deno`, "run", "-A"] },
  bun: { worker: [`${root}node_modules/.bin/bun`], peer: [`${root}node_modules/.bin/bun`] },
};

execFileSync(process.execPath, [`${root}scripts/build.mjs`], { stdio: "inherit" });
if (args.includes("--placement")) {
  const placement = spawn(process.execPath, [`${root}scripts/bench-placement.mjs`, ...args.filter((a) => a !== "--placement")], { stdio: "inherit" });
  process.exit(await new Promise((resolve) => placement.once("exit", (code) => resolve(code ?? 1))));
}
if (args.includes("--scale")) {
  const scale = spawn(process.execPath, ["--expose-gc", `${root}scripts/bench-scale.mjs`, ...args.filter((a) => a !== "--scale")], { stdio: "inherit" });
  process.exit(await new Promise((resolve) => scale.once("exit", (code) => resolve(code ?? 1))));
}

// ─── Redis ────────────────────────────────────────────────────────────────────────────────────

async function freePort() {
  const server = createServer();
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Resolves once something accepts connections on the port, trying for at most 10 s. */
async function accepting(port) {
  for (let attempt = 0; attempt < 200; attempt++) {
    const up = await new Promise((resolve) => {
      const socket = connect(port, "127.0.0.1", () => (socket.destroy(), resolve(true))).on("error", () => resolve(false));
    });
    if (up) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`nothing accepts connections on port ${port}`);
}

/**
 * Starts a server the benchmark compares against on a free loopback port, or says how to install
 * it and resolves with undefined when it is missing.
 */
async function startServer(command, versionFlag, argsFor) {
  try {
    execFileSync(command, [versionFlag], { stdio: "pipe" });
  } catch {
    console.log(`${command} is not installed, so its rows are left out. Install it with: apt-get install ${command}`);
    return undefined;
  }
  const port = await freePort();
  const server = spawn(command, argsFor(port), { stdio: "ignore" });
  await accepting(port);
  return { port, stop: () => server.kill("SIGTERM") };
}

const startRedis = () =>
  startServer("redis-server", "--version", (port) => ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
// -u root: memcached refuses to run as root without it; -U 0: no UDP.
const startMemcached = () =>
  startServer("memcached", "-h", (port) => ["-p", String(port), "-l", "127.0.0.1", "-U", "0", "-u", "root"]);

// ─── Running the workers ──────────────────────────────────────────────────────────────────────

async function runWorker(runtime, redisPort, memcachedPort) {
  const { worker, peer } = commands[runtime];
  const workerSettings = { runtime, redisPort, memcachedPort, peerCommand: peer, ...settings };
  const child = spawn(worker[0], [...worker.slice(1), `${root}scripts/bench-worker.mjs`, JSON.stringify(workerSettings)], {
    cwd: root,
    stdio: ["ignore", "pipe", "inherit"],
  });
  const results = [];
  createInterface({ input: child.stdout }).on("line", (line) => {
    const result = JSON.parse(line);
    results.push(result);
    const shown = result.opsPerSec ? `${Math.round(result.opsPerSec).toLocaleString("en")} ops/s`
      : result.p50 ? `p50 ${result.p50.toFixed(1)} µs`
      : result.lostKeys !== undefined ? `${result.lostKeys} keys lost`
      : result.staleReads !== undefined ? `${result.staleReads} stale of ${result.trials}`
      : `${(result.joinMs ?? result.handoverMs ?? result.failoverMs)?.toFixed(0)} ms`;
    console.log(`${runtime} round ${result.round}: ${result.name}: ${shown}`);
  });
  const timer = setTimeout(() => child.kill("SIGKILL"), RUNTIME_TIMEOUT_MS);
  const code = await new Promise((resolve) => child.once("exit", resolve));
  clearTimeout(timer);
  if (code !== 0) console.log(`the ${runtime} worker exited with code ${code}; its results so far are kept`);
  return results;
}

const redis = await startRedis();
const memcached = await startMemcached();
const raw = [];
try {
  for (const runtime of runtimes) raw.push(...(await runWorker(runtime, redis?.port, memcached?.port)));
} finally {
  redis?.stop();
  memcached?.stop();
}

// ─── Summary, targets, table, chart ───────────────────────────────────────────────────────────

const median = (values) => values.slice().sort((a, b) => a - b)[Math.floor(values.length / 2)];
const summary = {};
for (const result of raw) {
  const entry = (summary[result.runtime] ??= {})[result.name] ??= {};
  for (const field of ["opsPerSec", "p50", "p99", "joinMs", "bytesPerKey", "mapBytesPerKey", "handoverMs", "failoverMs", "lostKeys", "staleReads", "trials", "nearShare"]) {
    if (result[field] !== undefined) (entry[field] ??= []).push(result[field]);
  }
}
const stat = (runtime, name, field) => {
  const values = summary[runtime]?.[name]?.[field];
  return values && { median: median(values), min: Math.min(...values), max: Math.max(...values) };
};
const m = (runtime, name, field) => stat(runtime, name, field)?.median;
const join = `join a cluster of ${settings.joinKeys} keys`;
const handover = "hand over 100000 entries of 100 bytes on stop";
const crashLoss = "keys lost when 1 of 4 nodes with replicas: 1 is killed (of 75,000)";
const rollingLoss = "keys lost in a rolling restart of 4 nodes holding 100,000 keys (reads from every node)";
const SCALE_SIZES = [2, 4, 8, 16, 32];
const scaleRow = (size) => `set, ${size} nodes in one process, 16 writers each`;
const zipfRow = (system) => `zipf(0.99) gets of 100,000 keys, 4 processes x 64 in flight, ${system}`;
const staleRow = (system) => `stale reads after an acknowledged write, ${system}`;
/**
 * How close writes come to a cost linear in the peers that acknowledge each one: set/s times
 * (N - 1) at 32 nodes over the same at 2 nodes; 1 is perfectly linear.
 */
const linearity = (runtime) => (m(runtime, scaleRow(32), "opsPerSec") * 31) / m(runtime, scaleRow(2), "opsPerSec");

/** The clients of Redis and memcached the worker measures, each at its best setting. */
const PEER_CLIENTS = ["ioredis+Redis", "ioredis auto-pipelining+Redis", "node-redis+Redis", "Bun RedisClient+Redis", "memjs+memcached"];
/** The fastest peer client's ops/s in the row that `rowOf(client)` names. */
const bestPeer = (runtime, rowOf) => Math.max(...PEER_CLIENTS.map((client) => m(runtime, rowOf(client), "opsPerSec") ?? 0));
const ratio = (runtime, name, over, field = "opsPerSec") => m(runtime, name, field) / m(runtime, over, field);

const targets = (runtime) => [
  ["remote get, 64 in flight / best Redis or memcached client's GET", m(runtime, "remote get, kosyak, 64 in flight", "opsPerSec") / bestPeer(runtime, (c) => `remote get, ${c}, 64 in flight`), ">=", 1.5],
  ["remote get, hash placement, 64 in flight / best client's GET", m(runtime, "remote get, hash placement, 64 in flight", "opsPerSec") / bestPeer(runtime, (c) => `remote get, ${c}, 64 in flight`), ">=", 1.5],
  ["remote get, 64 in flight / limit", ratio(runtime, "remote get, kosyak, 64 in flight", "remote get, bare limit, 64 in flight"), ">=", 0.7],
  ["remote get, hash placement, 64 in flight / limit", ratio(runtime, "remote get, hash placement, 64 in flight", "remote get, bare limit, 64 in flight"), ">=", 0.7],
  ["remote get p50 / limit p50", ratio(runtime, "remote get, kosyak, sequential", "remote get, bare limit, sequential", "p50"), "<=", 1.1],
  ["remote get p50 / ioredis GET p50", ratio(runtime, "remote get, kosyak, sequential", "remote get, ioredis+Redis, sequential", "p50"), "<=", 1.1],
  ["remote get p50, hash placement / ioredis GET p50", ratio(runtime, "remote get, hash placement, sequential", "remote get, ioredis+Redis, sequential", "p50"), "<=", 1.1],
  ["set acked by 1 peer, 64 in flight / best client's SET", m(runtime, "set acked by 1 peer, 64 in flight", "opsPerSec") / bestPeer(runtime, (c) => `set, ${c}, 64 in flight`), ">=", 1.0],
  ["set acked by 1 peer, hash placement, 64 in flight / best client's SET", m(runtime, "set acked by 1 peer, hash placement, replicas: 1, 64 in flight", "opsPerSec") / bestPeer(runtime, (c) => `set, ${c}, 64 in flight`), ">=", 1.0],
  ["local set (callback) / lru-cache set", ratio(runtime, "local set, kosyak callback", "local set, lru-cache"), ">=", 0.3],
  ["local get hit (callback) / Map", ratio(runtime, "local get hit, kosyak callback", "local get hit, Map"), ">=", 0.85],
  ["local get hit (callback) / lru-cache", ratio(runtime, "local get hit, kosyak callback", "local get hit, lru-cache"), ">", 1],
  ["set acked by 3 peers, 64 in flight / ioredis SET", ratio(runtime, "set acked by 3 peers, 64 in flight", "set, ioredis+Redis, 64 in flight"), ">=", 0.5],
  [`join ${settings.joinKeys.toLocaleString("en")} keys (s)`, m(runtime, join, "joinMs") / 1000, "<", 5],
  ["directory bytes per key / Map<string, number>", m(runtime, join, "bytesPerKey") / m(runtime, join, "mapBytesPerKey"), "<=", 1.5],
  ["set/s x peers, 32 nodes / 2 nodes (1 = linear)", linearity(runtime), ">=", 0.5],
  ["hand-over of 100,000 entries on stop (s)", m(runtime, handover, "handoverMs") / 1000, "<", 2],
  ["keys lost when 1 of 4 nodes with replicas: 1 is killed", stat(runtime, crashLoss, "lostKeys")?.max, "<=", 0],
  ["keys lost in a rolling restart of 4 nodes", stat(runtime, rollingLoss, "lostKeys")?.max, "<=", 0],
  ["hot remote get, near cache, 64 in flight / node-redis client-side caching", m(runtime, "hot remote get, kosyak near cache, 64 in flight", "opsPerSec") / m(runtime, "hot remote get, node-redis client-side caching, 64 in flight", "opsPerSec"), ">=", 10],
  ["hot remote get p50, near cache / node-redis client-side caching", m(runtime, "hot remote get, kosyak near cache, sequential", "p50") / m(runtime, "hot remote get, node-redis client-side caching, sequential", "p50"), "<=", 0.5],
  ["zipf gets on 4 nodes, near cache of 100,000 / ioredis+Redis", m(runtime, zipfRow("kosyak, near cache of 100,000"), "opsPerSec") / m(runtime, zipfRow("ioredis"), "opsPerSec"), ">=", 5],
  ["stale reads after an acknowledged write, near cache (every round)", stat(runtime, staleRow("kosyak near cache"), "staleReads")?.max, "<=", 0],
].map(([what, value, op, bound]) => ({
  what,
  value,
  target: `${op} ${bound}`,
  met: Number.isFinite(value) ? { ">=": value >= bound, ">": value > bound, "<=": value <= bound, "<": value < bound }[op] : undefined,
}));

const cell = (runtime, name) => {
  const ops = stat(runtime, name, "opsPerSec");
  const nearShare = m(runtime, name, "nearShare");
  if (ops && nearShare !== undefined) return `${fmt(ops.median)} (${fmt(ops.min)}–${fmt(ops.max)}), ${(nearShare * 100).toFixed(0)}% near hits`;
  if (ops) return `${fmt(ops.median)} (${fmt(ops.min)}–${fmt(ops.max)})`;
  const p50 = stat(runtime, name, "p50");
  if (p50) return `p50 ${p50.median.toFixed(1)} µs, p99 ${m(runtime, name, "p99").toFixed(1)} µs`;
  const handoverMs = stat(runtime, name, "handoverMs") ?? stat(runtime, name, "failoverMs");
  if (handoverMs) return `${(handoverMs.median / 1000).toFixed(3)} s (${(handoverMs.min / 1000).toFixed(3)}–${(handoverMs.max / 1000).toFixed(3)})`;
  const lostKeys = stat(runtime, name, "lostKeys");
  if (lostKeys) return `${lostKeys.max} at most`;
  const staleReads = stat(runtime, name, "staleReads");
  if (staleReads) return `${staleReads.min}–${staleReads.max} of ${m(runtime, name, "trials")} per round`;
  const joinMs = stat(runtime, name, "joinMs");
  if (joinMs) return `${(joinMs.median / 1000).toFixed(2)} s, ${m(runtime, name, "bytesPerKey").toFixed(0)} B/key (Map: ${m(runtime, name, "mapBytesPerKey").toFixed(0)})`;
  return "–";
};
const fmt = (n) => (n >= 1e6 ? `${(n / 1e6).toFixed(1)}M` : n >= 1e3 ? `${(n / 1e3).toFixed(0)}k` : n.toFixed(0));
const names = [...new Set(raw.map((r) => r.name))];
const lines = [
  `Ops/s: median of ${settings.rounds} interleaved rounds of ${settings.windowMs} ms (min–max); latencies in µs. ${new Date().toISOString().slice(0, 10)}, ${process.platform}/${process.arch}, loopback.`,
  "",
  `| workload | ${runtimes.join(" | ")} |`,
  `| --- | ${runtimes.map(() => "---").join(" | ")} |`,
  ...names.map((name) => `| ${name} | ${runtimes.map((r) => cell(r, name)).join(" | ")} |`),
  "",
  `| target | ${runtimes.join(" | ")} |`,
  `| --- | ${runtimes.map(() => "---").join(" | ")} |`,
  ...targets(runtimes[0]).map(({ what, target }, i) =>
    `| ${what} ${target} | ${runtimes.map((r) => { const t = targets(r)[i]; return Number.isFinite(t.value) ? `${t.value.toFixed(2)} ${t.met ? "met" : "**missed**"}` : "–"; }).join(" | ")} |`),
];
const markdown = lines.join("\n") + "\n";
console.log("\n" + markdown);

mkdirSync(`${root}bench`, { recursive: true });
writeFileSync(`${root}bench/results.json`, JSON.stringify({ settings, runtimes, raw, targets: Object.fromEntries(runtimes.map((r) => [r, targets(r)])) }, null, 2) + "\n");
writeFileSync(`${root}bench/results.md`, markdown);
writeFileSync(`${root}bench/chart.svg`, chart());
console.log("wrote bench/results.json, bench/results.md and bench/chart.svg");

/** Two panels of horizontal bars, one bar per runtime: local operations and remote ones. */
function chart() {
  const colors = { node: "#3c873a", deno: "#222222", bun: "#f472b6" };
  const panels = [
    ["Local, millions of ops/s", 1e6, ["local get hit, Map", "local get hit, kosyak callback", "local get hit, lru-cache", "local set, Map", "local set, kosyak callback", "local set, lru-cache"]],
    ["Remote, thousands of ops/s (64 in flight)", 1e3, [
      "remote get, bare limit, 64 in flight", "remote get, kosyak, 64 in flight", "remote get, hash placement, 64 in flight",
      ...PEER_CLIENTS.map((client) => `remote get, ${client}, 64 in flight`),
      "set acked by 1 peer, 64 in flight", "set acked by 1 peer, hash placement, replicas: 1, 64 in flight", "set acked by 3 peers, 64 in flight",
      ...PEER_CLIENTS.map((client) => `set, ${client}, 64 in flight`),
    ]],
    ["Hot keys held by another node, thousands of gets/s (64 in flight)", 1e3, [
      "hot remote get, kosyak near cache, 64 in flight", "hot remote get, node-redis client-side caching, 64 in flight",
      "hot remote get, kosyak, 64 in flight", "hot remote get, ioredis+Redis, 64 in flight",
    ]],
    ["Zipf(0.99) gets of 100,000 keys from 4 processes, thousands/s", 1e3, [
      "kosyak, near cache of 100,000", "node-redis client-side caching of 100,000", "kosyak, near cache of 10,000",
      "node-redis client-side caching of 10,000", "kosyak, no near cache", "ioredis",
    ].map(zipfRow)],
    ["Scaling: set/s in a cluster of N nodes in one process, thousands", 1e3, SCALE_SIZES.map(scaleRow)],
  ];
  const bar = 12, gap = 10, labelWidth = 300, plotWidth = 420;
  let y = 30;
  const parts = [];
  for (const [title, unit, rows] of panels) {
    const present = rows.filter((name) => runtimes.some((r) => m(r, name, "opsPerSec")));
    const max = Math.max(...present.flatMap((name) => runtimes.map((r) => m(r, name, "opsPerSec") ?? 0)));
    parts.push(`<text x="10" y="${y}" font-weight="bold">${title}</text>`);
    y += 14;
    for (const name of present) {
      parts.push(`<text x="10" y="${y + bar * 1.5 + 4}">${name}</text>`);
      runtimes.forEach((runtime, i) => {
        const value = m(runtime, name, "opsPerSec") ?? 0;
        const width = (value / max) * plotWidth;
        parts.push(`<rect x="${labelWidth}" y="${y + i * bar}" width="${width.toFixed(1)}" height="${bar - 2}" fill="${colors[runtime]}"/>`);
        parts.push(`<text x="${labelWidth + width + 4}" y="${y + i * bar + bar - 3}" font-size="10">${(value / unit).toFixed(unit === 1e6 ? 1 : 0)}</text>`);
      });
      y += runtimes.length * bar + gap;
    }
    y += 16;
  }
  const legend = runtimes.map((r, i) => `<rect x="${labelWidth + i * 80}" y="8" width="10" height="10" fill="${colors[r]}"/><text x="${labelWidth + 14 + i * 80}" y="17">${r}</text>`).join("");
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${labelWidth + plotWidth + 80}" height="${y}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>${legend}${parts.join("")}</svg>\n`;
}
