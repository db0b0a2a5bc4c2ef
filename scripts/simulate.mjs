// `npm run simulate`: clusters of 16 to 256 kosyak nodes (and more, with --nodes) in this one
// process, running the real protocol code over the in-memory network of memory-network.mjs with
// a clock that jumps from timer to timer: 0.1 ms one-way latency, a 1 Gbit/s link per node. For
// each size it forms the cluster one join at a time, fills it, lets it idle, adds one node, runs
// writes and reads, then cuts one member off from all but one for 10 s and heals the cut,
// reporting per node: directory memory, connections, heartbeat load, messages and bytes per
// write and per read, join time and CPU, the partition's load, and how long the mesh takes to
// close again. CPU is this process's main thread's, spent on all nodes at once, less the cost of
// the simulated network itself (measured first).
// It writes bench/simulation.json and the tables between the `simulation` and `verdict` markers
// of docs/scale.md. Options: --nodes=16,32,64,128,256  --keys=200 (per node)  --quick (8,16,32)
// --near (a near cache on every node: writes bench/simulation-near.json and the
// `simulation-near` section)  --placement=hash (hash placement with replicas: 1, the join timed
// until its moves are done: writes bench/simulation-hash.json and the `simulation-hash` section)
// --report-only (rewrite the sections from the saved results, after a new scale benchmark).
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { MemoryNetwork, VirtualClock } from "./memory-network.mjs";
import { writeSection } from "./scale-doc.mjs";
import { seededRandom } from "./seeded-random.mjs";

const root = fileURLToPath(new URL("..", import.meta.url));
const args = process.argv.slice(2);
const option = (name, fallback) => args.find((arg) => arg.startsWith(`--${name}=`))?.split("=")[1] ?? fallback;
const quick = args.includes("--quick");
const sizes = option("nodes", quick ? "8,16,32" : "16,32,64,128,256").split(",").map(Number);
const keysPerNode = Number(option("keys", "200"));
const LATENCY_MS = 0.1;
const BYTES_PER_MS = 125_000; // 1 Gbit/s
const LONE_WRITES = 200;
const WRITES = 2_000;
const READS = 2_000;
const IDLE_MS = 10_000;
const PARTITION_MS = 10_000;
// With --near every node has a near cache, which changes its heartbeats and what a partition costs.
const near = args.includes("--near");
const placement = option("placement", "local");
if (placement !== "local" && placement !== "hash") throw new Error(`--placement is "local" or "hash", not "${placement}"`);
const hash = placement === "hash";
const placementOptions = hash ? { placement: "hash", replicas: 1 } : {};
const section = `simulation${near ? "-near" : ""}${hash ? "-hash" : ""}`;
const saved = `${root}bench/${section}.json`;

if (typeof globalThis.gc !== "function") throw new Error("run with --expose-gc (npm run simulate does)");
// All the nodes share this process's heap, which grows with the square of their number; the
// collector's helper threads then take a share of the CPU no real node would. So CPU is this
// thread's where the runtime can say (Node.js 23.9 and later; npm run simulate uses Node.js 24).
const threadCpu = typeof process.threadCpuUsage === "function";
const cpuUsage = (previous) => (threadCpu ? process.threadCpuUsage(previous) : process.cpuUsage(previous));
execFileSync(process.execPath, [`${root}scripts/build.mjs`], { stdio: "inherit" });
const { DEFAULTS, Node } = await import("kosyak");

let run;
if (args.includes("--report-only")) {
  run = JSON.parse(readFileSync(saved, "utf8"));
} else {
  const overheadUs = await networkOverhead();
  console.log(`the simulated network costs ${overheadUs.toFixed(2)} µs of CPU per delivery; it is taken off every CPU figure`);
  run = { runtime: `Node.js ${process.version}`, threadCpu, near, placement, keysPerNode, latencyMs: LATENCY_MS, bytesPerMs: BYTES_PER_MS, overheadUs, results: [] };
  for (const size of sizes) {
    const row = await simulate(size, overheadUs);
    run.results.push(row);
    console.log(JSON.stringify(row));
  }
  writeFileSync(saved, JSON.stringify(run, null, 2) + "\n");
}
writeSection(section, table(run));
// What breaks first is the local placement's: its directory and its writes grow with the cluster.
if (section === "simulation") writeSection("verdict", verdict(run.results));
console.log(`wrote the ${section}${section === "simulation" ? " and verdict sections" : " section"} of docs/scale.md`);

/** One cluster of `size` nodes, measured phase by phase; `overheadUs` is the network's CPU per delivery. */
async function simulate(size, overheadUs) {
  const clock = new VirtualClock();
  const network = new MemoryNetwork({ clock, latencyMs: LATENCY_MS, bytesPerMs: BYTES_PER_MS });
  const nodes = [];
  const start = async (index, transport) => {
    const host = `10.${index >> 16}.${(index >> 8) & 255}.${index & 255}`;
    const options = { ...placementOptions, host, port: 0, clock, nearCache: near, transport: transport?.(network.transport(host)) ?? network.transport(host), resolve: async (name) => [name] };
    if (index > 0) options.master = { host: "10.0.0.0", port: 1 };
    return clock.runUntil(Node.start(options), 600_000);
  };
  const traffic = () => sum(nodes, (node) => node.stats().messagesSent);
  const moved = () => sum(nodes, (node) => node.stats().moved);
  const bytes = () => sum(nodes, (node) => node.stats().bytesSent);
  /** Runs `phase`, and returns what it cost: CPU less the network's, virtual ms, messages, bytes. */
  const measure = async (phase) => {
    const [messages0, bytes0, deliveries0, at0] = [traffic(), bytes(), network.deliveries, clock.now()];
    const cpu0 = cpuUsage();
    await phase();
    const cpu = cpuUsage(cpu0);
    const cpuUs = cpu.user + cpu.system - (network.deliveries - deliveries0) * overheadUs;
    return { cpuUs, ms: clock.now() - at0, messages: traffic() - messages0, bytes: bytes() - bytes0 };
  };

  // Forming: one join after another, each through the first node; the last one is reported.
  const formed = performance.now();
  let lastJoin;
  for (let index = 0; index < size; index++) {
    lastJoin = await measure(async () => nodes.push(await start(index)));
  }
  const formSeconds = (performance.now() - formed) / 1000;
  await clock.run(100);

  // Filling: every node writes keysPerNode keys, 100 at a time, all nodes at once.
  gc();
  const heapBefore = process.memoryUsage().heapUsed;
  const fill = await measure(async () => {
    for (let start = 0; start < keysPerNode; start += 100) {
      await clock.runUntil(Promise.all(nodes.map((node, index) => {
        const batch = [];
        for (let k = start; k < Math.min(start + 100, keysPerNode); k++) batch.push([`n${index}:k${k}`, k]);
        return node.mset(batch);
      })), 60_000);
    }
  });
  gc();
  const heapPerNode = (process.memoryUsage().heapUsed - heapBefore) / size;
  const clusterKeys = size * keysPerNode;

  // Idle: heartbeats only.
  const idle = await measure(() => clock.run(IDLE_MS));

  // A join into the filled cluster: every member lists its keys to the joiner (local placement),
  // or hands it the keys it now owns and their copies (hash placement: timed until it holds them).
  const joinerCpu = { us: 0 };
  const movedBefore = moved();
  const joinStartedAt = clock.now();
  let joinDoneAt;
  const join = await measure(async () => {
    nodes.push(await start(size, (inner) => timed(inner, joinerCpu)));
    joinDoneAt = hash ? await movesDone(clock, () => [moved(), nodes.at(-1).stats().entries]) : clock.now();
  });
  const keysMoved = moved() - movedBefore;
  const joiner = nodes.pop();
  const joinerBytes = joiner.stats().bytesReceived;
  // With hash placement the joiner hands its keys back, and the others own them again.
  await clock.runUntil(joiner.stop({ handover: hash }), 60_000);
  if (hash) await movesDone(clock, () => [moved(), sum(nodes, (node) => node.stats().copies)]);
  await clock.run(100);

  // Writes and reads of random keys on random nodes: one at a time, then 100 in flight.
  const random = seededRandom(size);
  const randomKey = () => `n${Math.floor(random() * size)}:k${Math.floor(random() * keysPerNode)}`;
  const lone = await measure(async () => {
    for (let done = 0; done < LONE_WRITES; done++) await clock.runUntil(nodes[Math.floor(random() * size)].set(randomKey(), done), 60_000);
  });
  const write = await measure(async () => {
    for (let done = 0; done < WRITES; done += 100) {
      await clock.runUntil(Promise.all(Array.from({ length: 100 }, () => nodes[Math.floor(random() * size)].set(randomKey(), done))), 60_000);
    }
  });
  const read = await measure(async () => {
    for (let done = 0; done < READS; done += 100) {
      await clock.runUntil(Promise.all(Array.from({ length: 100 }, () => nodes[Math.floor(random() * size)].get(randomKey()))), 60_000);
    }
  });
  // A partial partition: the second node cut off from every member but the first, which still
  // reaches it; then healed, and timed until every node has every other again.
  const hosts = nodes.map((node) => node.address.host);
  const partition = await measure(async () => {
    for (const host of hosts.slice(2)) network.cut(hosts[1], host);
    await clock.run(PARTITION_MS);
  });
  for (const host of hosts.slice(2)) network.heal(hosts[1], host);
  const healedAt = clock.now();
  for (let second = 0; second < 60 && nodes.some((node) => node.stats().peers < size - 1); second++) await clock.run(1_000);
  const meshAgainMs = nodes.every((node) => node.stats().peers === size - 1) ? clock.now() - healedAt : undefined;
  const connections = sum(nodes, (node) => node.stats().connections) / size;
  const remoteKeys = sum(nodes, (node) => node.stats().remoteKeys) / size;
  await clock.runUntil(Promise.all(nodes.map((node) => node.stop({ handover: false }))), 600_000);
  return {
    nodes: size,
    clusterKeys,
    connectionsPerNode: connections,
    remoteKeysPerNode: remoteKeys,
    heapPerNodeBytes: Math.round(heapPerNode),
    heapPerClusterKeyBytes: round(heapPerNode / clusterKeys, 1),
    formSeconds: round(formSeconds, 1),
    lastJoinOfEmpty: { ms: round(lastJoin.ms, 1), messages: lastJoin.messages, cpuMs: round(lastJoin.cpuUs / 1000, 1) },
    fillCpuUsPerWrite: round(fill.cpuUs / clusterKeys, 1),
    idlePerNodePerSecond: {
      messages: round(idle.messages / size / (IDLE_MS / 1000), 1),
      bytes: Math.round(idle.bytes / size / (IDLE_MS / 1000)),
      cpuShare: round(idle.cpuUs / size / (IDLE_MS * 1000), 5),
    },
    joinOfFilled: { ms: round(joinDoneAt - joinStartedAt, 1), keysMoved, joinerBytes, messages: join.messages, cpuMs: round(join.cpuUs / 1000, 1), joinerReadingMs: round(joinerCpu.us / 1000, 1) },
    perLoneWrite: { messages: round(lone.messages / LONE_WRITES, 1), bytes: Math.round(lone.bytes / LONE_WRITES), cpuUs: round(lone.cpuUs / LONE_WRITES, 1), ms: round(lone.ms / LONE_WRITES, 2) },
    perWrite: { messages: round(write.messages / WRITES, 1), bytes: Math.round(write.bytes / WRITES), cpuUs: round(write.cpuUs / WRITES, 1), ms: round(write.ms / (WRITES / 100), 2) },
    partitionPerNodePerSecond: {
      messages: round(partition.messages / size / (PARTITION_MS / 1000), 1),
      bytes: Math.round(partition.bytes / size / (PARTITION_MS / 1000)),
      cpuShare: round(partition.cpuUs / size / (PARTITION_MS * 1000), 5),
    },
    meshAgainMs,
    perRead: { messages: round(read.messages / READS, 2), bytes: Math.round(read.bytes / READS), cpuUs: round(read.cpuUs / READS, 1) },
  };
}

/**
 * Runs the clock until the figures `now()` returns have stayed the same for 500 virtual ms (the
 * moves of hash placement are done), at most 60 s; resolves with the time of their last change.
 */
async function movesDone(clock, now) {
  let last = JSON.stringify(now());
  let changedAt = clock.now();
  for (let step = 0; step < 600 && clock.now() - changedAt < 500; step++) {
    await clock.run(100);
    const figures = JSON.stringify(now());
    if (figures !== last) [last, changedAt] = [figures, clock.now()];
  }
  return changedAt;
}

/**
 * `inner`, with the time its connections' data handlers take added to `spent.us`: what a node
 * spends reading, decoding and applying what arrives (its answers go out later, uncounted).
 */
function timed(inner, spent) {
  const time = (conn) => ({
    get remoteHost() {
      return conn.remoteHost;
    },
    start: (handlers) =>
      conn.start({
        data: (chunk) => {
          const started = performance.now();
          handlers.data(chunk);
          spent.us += (performance.now() - started) * 1000;
        },
        close: () => handlers.close(),
      }),
    write: (bytes) => conn.write(bytes),
    buffered: () => conn.buffered(),
    close: () => conn.close(),
  });
  return {
    listen: (address, options, accept) => inner.listen(address, options, (conn) => accept(time(conn))),
    connect: async (address, options) => time(await inner.connect(address, options)),
  };
}

/**
 * The CPU, in µs, that the simulated network and clock spend per delivery without any node:
 * a write, its timer, and the turn of the event loop before it.
 */
function networkOverhead() {
  const clock = new VirtualClock();
  const network = new MemoryNetwork({ clock, latencyMs: LATENCY_MS, bytesPerMs: BYTES_PER_MS });
  const deliveries = 20_000;
  return new Promise((resolve) => {
    const transport = network.transport("10.255.0.1");
    transport.listen({ host: "10.255.0.1", port: 0 }, { native: {}, tls: undefined }, (conn) => conn.start({ data() {}, close() {} }))
      .then(() => clock.runUntil(transport.connect({ host: "10.255.0.1", port: 1 }, { native: {}, tls: undefined }), 1000))
      .then(async (conn) => {
        conn.start({ data() {}, close() {} });
        const bytes = new Uint8Array(64);
        const cpu0 = cpuUsage();
        for (let i = 0; i < deliveries; i++) {
          conn.write(bytes);
          await clock.run(1);
        }
        const cpu = cpuUsage(cpu0);
        resolve((cpu.user + cpu.system) / deliveries);
      });
  });
}

// ─── The report ──────────────────────────────────────────────────────────────────────────────

function table({ runtime, threadCpu, near, placement, keysPerNode, overheadUs, results: rows }) {
  const header = [
    "| nodes | cluster keys | connections per node | heap per node | heap per cluster key | idle messages per node per s | idle CPU per node | one member cut off from all but one: messages, bytes per node per s, CPU per node | full mesh again after the heal | join of an empty node: messages (cluster) | join into the filled cluster: ms at 1 Gbit/s, MB the joiner read, its CPU reading them, keys moved | messages per write | CPU per write (cluster) | messages per read | CPU per read | forming took (real s) |",
    "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ];
  const lines = rows.map((r) =>
    `| ${r.nodes} | ${r.clusterKeys.toLocaleString("en")} | ${r.connectionsPerNode} | ${(r.heapPerNodeBytes / 1e6).toFixed(1)} MB | ${r.heapPerClusterKeyBytes} B | ${r.idlePerNodePerSecond.messages} | ${(r.idlePerNodePerSecond.cpuShare * 100).toFixed(3)}% | ${r.partitionPerNodePerSecond.messages}, ${(r.partitionPerNodePerSecond.bytes / 1000).toFixed(1)} kB, ${(r.partitionPerNodePerSecond.cpuShare * 100).toFixed(3)}% | ${r.meshAgainMs === undefined ? "not within 60 s" : `${(r.meshAgainMs / 1000).toFixed(0)} s`} | ${r.lastJoinOfEmpty.messages.toLocaleString("en")} | ${r.joinOfFilled.ms} ms, ${(r.joinOfFilled.joinerBytes / 1e6).toFixed(2)} MB, ${r.joinOfFilled.joinerReadingMs} ms, ${(r.joinOfFilled.keysMoved ?? 0).toLocaleString("en")} | ${r.perWrite.messages} | ${r.perWrite.cpuUs} µs | ${r.perRead.messages} | ${r.perRead.cpuUs} µs | ${r.formSeconds} |`
  );
  const flags = [near && "--near", placement === "hash" && "--placement=hash"].filter(Boolean).join(" ");
  return [
    `Measured by \`npm run simulate${flags ? ` -- ${flags}` : ""}\` (${runtime}, ${near ? "a near cache on every node, " : ""}${placement === "hash" ? "hash placement with replicas: 1, " : ""}${keysPerNode} keys per node, 0.1 ms latency, 1 Gbit/s per node; CPU is ${threadCpu ? "the main thread's" : "the process's"}, less ${overheadUs.toFixed(2)} µs per delivery for the simulated network):`,
    "",
    ...header,
    ...lines,
  ].join("\n");
}

/**
 * What breaks first: the measured constants carried to a deployment of N nodes with K keys and w
 * writes per second each, against budgets per node: 1 GiB of heap for keys, 30 s for a join,
 * half a core for applying writes, a tenth of a core for heartbeats, and `maxConnections`. The
 * heap per key and the CPU per write come from `npm run bench -- --scale` (bench/scale.json)
 * where it has run: separate processes over real sockets, which share no key strings and pay
 * the kernel's share. The rest are medians over the simulated sizes: their CPU per unit rises
 * with N here, where every node shares one heap and one processor's caches.
 */
function verdict(results) {
  const measured = existsSync(`${root}bench/scale.json`) ? JSON.parse(readFileSync(`${root}bench/scale.json`, "utf8")).model : undefined;
  const directoryBytes = measured?.directoryBytes ?? median(results.map((r) => r.heapPerClusterKeyBytes));
  const entryBytes = measured?.entryBytes ?? 0;
  const writeUs = measured?.ackUs ?? median(results.map((r) => r.perLoneWrite.cpuUs / r.nodes));
  const joinBytesPerKey = median(results.map((r) => r.joinOfFilled.joinerBytes / r.clusterKeys));
  // The joiner's own CPU: on this 2-core machine a measured join shares the cores with every member.
  const joinUsPerKey = median(results.map((r) => (r.joinOfFilled.joinerReadingMs * 1000) / r.clusterKeys));
  const heartbeatUsPerPeer = median(results.map((r) => (r.idlePerNodePerSecond.cpuShare * 1e6) / (r.nodes - 1)));
  const limits = (k, w) => ({
    memory: 1 + Math.floor((2 ** 30 - k * entryBytes) / (k * directoryBytes)),
    join: Math.floor(Math.min((30_000 * BYTES_PER_MS) / (k * joinBytesPerKey), 30e6 / (k * joinUsPerKey))),
    writes: Math.floor(0.5e6 / (w * writeUs)),
    heartbeats: 1 + Math.floor(0.1e6 / heartbeatUsPerPeer),
    connections: DEFAULTS.maxConnections + 1,
  });
  const source = measured ? "separate processes, bench/scale.json" : "this simulation; run npm run bench -- --scale for separate processes";
  const lines = [
    `Constants: ${directoryBytes} B of heap per key of the cluster and ${entryBytes} B per key held, and ${writeUs} µs of each node's CPU per write (${source}); a joiner receives ${joinBytesPerKey.toFixed(0)} B per key of the cluster and reads ${(1 / joinUsPerKey).toFixed(2)} million keys per second with its own CPU, and heartbeats cost ${heartbeatUsPerPeer.toFixed(1)} µs of CPU per peer per second (medians of the simulation).`,
    "",
    `Largest N within each budget per node: 1 GiB of heap for keys; a join within 30 s, at 1 Gbit/s or by the joiner's CPU, whichever is slower; half a core applying writes; a tenth of a core on heartbeats; no more connections than \`maxConnections\` (${DEFAULTS.maxConnections} by default; the process's file descriptor limit too). K: keys each node writes; w: writes per second each node makes:`,
    "",
    "| K per node | w per node | memory | join | writes | heartbeats | connections | first to break |",
    "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
  ];
  for (const k of [10_000, 100_000, 1_000_000]) {
    for (const w of [10, 100, 1_000]) {
      const limit = limits(k, w);
      const first = Object.entries(limit).sort((a, b) => a[1] - b[1])[0];
      const cells = Object.values(limit).map((n) => n.toLocaleString("en"));
      lines.push(`| ${k.toLocaleString("en")} | ${w.toLocaleString("en")} | ${cells.join(" | ")} | ${first[0]}, past N = ${first[1].toLocaleString("en")} |`);
    }
  }
  return lines.join("\n");
}

// ─── Small helpers ───────────────────────────────────────────────────────────────────────────

function sum(items, value) {
  return items.reduce((total, item) => total + value(item), 0);
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

function round(value, digits) {
  return Number(value.toFixed(digits));
}
