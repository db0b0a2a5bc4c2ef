// `npm run soak -- --minutes=N [--chart=path.svg]` (or `--seconds=N`): a soak of a mixed cluster.
// Four member processes (Node.js, Deno, Bun, Node.js) with replicas: 1 and fast failure detection
// run a steady workload of gets, sets and removes on the same few keys, recorded for the history
// checker, while every 30 s one member in turn meets a fault: a graceful restart, SIGKILL and a
// restart, SIGSTOP past peerTimeout and SIGCONT, then a cut of its network link past
// peerTimeout and the heal. For the cut, each member runs in a network namespace of its own
// (test/netns.ts); where the machine cannot make them (not root, not Linux), the members run on
// loopback and the cut is left out, which the output says. Each member meets each fault in turn.
// Before each fault its member writes 1,000 keys that must survive it. The heap and RSS of every
// process are sampled every second.
//
// It ends with the latency (p50, p99, p99.9) and memory of each minute, a verdict (no stale read,
// no acknowledged write lost, every node agreeing on every key within 5 s of each heal, and the
// heap at the end within 10% of the heap after the first segment, both after a full collection) and an SVG chart of latency and memory
// over time (`.test-results/soak.svg` unless `--chart` says where). Exits non-zero unless the
// verdict holds. Runs under Deno, which runs the suite's TypeScript helpers as they are:
// `deno run -A scripts/soak.ts`. `npm test` runs it for 60 s.
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import process from "node:process";
import { type Runtime, spawnWorkloadNode, stopAll, type WorkloadNode } from "../deps.ts";
import type { Address } from "../mod.ts";
import type { Op, Window } from "../test/history.ts";
import { createNetwork, netnsAvailable, type TestNetwork } from "../test/netns.ts";
import { agreement, check, FAST, fullMesh, KEYS, lossDuring, now, peersAre, recordedSet, workload } from "../test/workloads.ts";

// Node.js is the machine's own, as in npm test: npm puts Node.js 22 first on PATH (node_modules/.bin).
process.env.PATH = (process.env.PATH ?? "").split(":").filter((dir) => !dir.endsWith("node_modules/.bin")).join(":");
const option = (name: string) => process.argv.find((arg) => arg.startsWith(`--${name}=`))?.slice(name.length + 3);
const SECONDS = option("minutes") !== undefined ? Number(option("minutes")) * 60 : Number(option("seconds") ?? 60);
const CHART = option("chart") ?? ".test-results/soak.svg";
const SEGMENT_MS = 30_000;
const TARGETS: Runtime[] = ["node", "deno", "bun", "node"];
const OPTIONS = { ...FAST, replicas: 1 };
const NETNS = netnsAvailable();
const FAULTS = ["graceful restart", "SIGKILL and restart", "SIGSTOP past peerTimeout", ...(NETNS.ok ? ["network cut past peerTimeout"] : [])];
const DURABLE_KEYS = 1_000;
/** One loop of ops per member, so that a segment's workload lasts the segment (and its history stays small enough to check). */
const STEADY = { concurrency: 1, maxOps: 200_000 };
/** The heap may grow by this share from warm-up to the end. */
const HEAP_GROWTH = 0.1;

interface Sample {
  at: number;
  heapUsed: number;
  rss: number;
}
interface Fault {
  at: number;
  kind: string;
  node: string;
}

const started = now();
const samples: Sample[] = [];
const faults: Fault[] = [];
/** The latency of every get and set that succeeded, by the 5-second bucket (since the start) in which it began. */
const BUCKET_MS = 5_000;
const latencies = new Map<number, number[]>();
let staleReads = 0;
let lostWrites = 0;
const disagreements: string[] = [];

let nodes: WorkloadNode[] = [];
let generation = 0;
/** The members' network namespaces, one per member, when the machine can make them. */
let network: TestNetwork | undefined;

/** Starts member `i` (again), in its network namespace if there is one, joining through `master`. */
function spawnMember(i: number, master?: Address): Promise<WorkloadNode> {
  const placed = network === undefined ? {} : { host: network.hosts[i], port: 0 };
  const options = { ...OPTIONS, ...placed, ...(master === undefined ? {} : { master }) };
  return spawnWorkloadNode(`${TARGETS[i]}${i}.${generation++}`, options, TARGETS[i], network?.exec(i) ?? []);
}

/** Every second, the heap and RSS of every member, summed; a member that does not answer within a second is left out. */
function sampleMemory(): () => Promise<void> {
  let sampling = true;
  const loop = (async () => {
    while (sampling) {
      const at = now();
      const answers = await Promise.allSettled(nodes.map((node) => node.call({ cmd: "memory" }, 1_000) as Promise<Sample>));
      const memories = answers.flatMap((answer) => (answer.status === "fulfilled" ? [answer.value] : []));
      if (memories.length === nodes.length) {
        samples.push({ at, heapUsed: sum(memories.map((m) => m.heapUsed)), rss: sum(memories.map((m) => m.rss)) });
      }
      await new Promise((resolve) => setTimeout(resolve, Math.max(0, 1_000 - (now() - at))));
    }
  })();
  return async () => {
    sampling = false;
    await loop;
  };
}

/**
 * One segment: seeds every key, has the victim write keys that must survive, runs the workload,
 * and puts the victim through `kind` halfway; then checks the history, waits for agreement, and
 * reads the victim's keys back on every member before removing them.
 */
async function segment(index: number): Promise<void> {
  // Member after member, and each time round the next fault for each: every member meets every fault.
  const v = index % nodes.length;
  const kind = FAULTS[(index + Math.floor(index / nodes.length)) % FAULTS.length];
  const victim = nodes[v];
  const history: Op[] = [];
  // Every read of this segment reads a value written in it.
  for (const key of KEYS) history.push(await recordedSet(nodes[(v + 1) % nodes.length], key, `seed${index}:${key}`));
  const prefix = `durable${index}:`;
  const { start } = (await victim.call({ cmd: "fill", prefix, count: DURABLE_KEYS, tag: "v1" }, 30_000)) as { start: number };

  const segmentEnd = start + SEGMENT_MS;
  const runs = nodes.map((node, i) => node === victim ? undefined : node.run({ ...workload(1_000 * index + i, segmentEnd - now()), ...STEADY }));
  const victimRun = victim.run({ ...workload(1_000 * index + v, segmentEnd - now()), ...STEADY, stream: true }).catch(() => []);
  await new Promise((resolve) => setTimeout(resolve, Math.max(0, (segmentEnd - now()) / 2)));

  const survivors = nodes.filter((node) => node !== victim);
  const from = now();
  faults.push({ at: from, kind, node: victim.name });
  const windows: Window[] = [];
  let replacement: WorkloadNode = victim;
  if (kind === "SIGSTOP past peerTimeout") {
    victim.pause();
    await peersAre(survivors, survivors.length - 1, 10_000);
    victim.resume();
    await fullMesh(nodes, 10_000);
  } else if (kind === "network cut past peerTimeout") {
    network!.cut(v);
    await peersAre(survivors, survivors.length - 1, 10_000);
    await peersAre([victim], 0, 10_000);
    network!.heal(v);
    await fullMesh(nodes, 10_000);
  } else {
    if (kind === "graceful restart") await victim.stop({ signal: true });
    else {
      await victim.kill();
      await peersAre(survivors, survivors.length - 1, 10_000);
    }
    replacement = await spawnMember(v, survivors[0].address);
    nodes[v] = replacement;
    await fullMesh(nodes, 10_000);
  }
  if (kind !== "graceful restart") {
    // Until the last connection lost or made after the fault, a member may miss keys of a peer it
    // reconnects to, and what the victim wrote meanwhile may win over what the others acknowledged.
    const events = (await Promise.all(nodes.map((node) => node.call({ cmd: "events" })))) as Array<Array<{ at: number }>>;
    windows.push({ from, to: Math.max(now(), ...events.flat().map((event) => event.at)) });
    history.push(...lossDuring(victim.name, windows[0]));
  }
  // A victim that ran on (frozen and resumed) returns its history; one that exited left what it
  // streamed, which holds what it streamed when it was a victim before too.
  const victimOps = await victimRun;
  history.push(...(victimOps.length > 0 ? victimOps : victim.recorded().filter((op) => op.start >= start)));
  const rest = segmentEnd - now();
  const replacementRun = rest > 0 && replacement !== victim ? replacement.run({ ...workload(1_000 * index + 99, rest), ...STEADY }) : Promise.resolve([]);
  for (const ops of await Promise.all([...runs, replacementRun])) history.push(...(ops ?? []));

  const divergent = await agreement(nodes, 5_000);
  disagreements.push(...divergent.map((key) => `after ${kind} of ${victim.name}: ${key}`));
  staleReads += check(`soak, segment ${index + 1}, ${kind} of ${victim.name}`, history, divergent, windows).length;
  for (const node of nodes) {
    const { missing, wrong } = (await node.call({ cmd: "verify", prefix, count: DURABLE_KEYS, tag: "v1" }, 30_000)) as { missing: number; wrong: number };
    lostWrites += missing + wrong;
  }
  await nodes[(v + 1) % nodes.length].call({ cmd: "removeAll", prefix, count: DURABLE_KEYS }, 30_000);
  for (const op of history) {
    if (!op.ok || op.kind === "remove") continue;
    const bucket = Math.floor((op.start - started) / BUCKET_MS);
    if (!latencies.has(bucket)) latencies.set(bucket, []);
    latencies.get(bucket)!.push(op.end - op.start);
  }
}

const sum = (values: number[]) => values.reduce((total, value) => total + value, 0);
const quantile = (sorted: number[], q: number) => sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
const mb = (bytes: number) => Math.round(bytes / 1e6);

/** The heap every member holds after a full garbage collection, summed. */
async function liveHeap(): Promise<number> {
  const memories = (await Promise.all(nodes.map((node) => node.call({ cmd: "memory", collect: true }, 10_000)))) as Sample[];
  return sum(memories.map((m) => m.heapUsed));
}

/** The latencies of the ops that began in [from, to) ms after the start (multiples of BUCKET_MS), sorted. */
function latenciesIn(from: number, to: number): number[] {
  const values: number[] = [];
  for (let bucket = from / BUCKET_MS; bucket < to / BUCKET_MS; bucket++) for (const ms of latencies.get(bucket) ?? []) values.push(ms);
  return values.sort((a, b) => a - b);
}

/** Latency (p50, p99) per `bucketMs` and memory per sample, as two charts one above the other, with the faults marked. */
function chart(bucketMs: number): string {
  const width = 960, height = 260, left = 60, right = 20, top = 30;
  const span = Math.max(1, now() - started);
  const x = (at: number) => left + ((at - started) / span) * (width - left - right);
  const rows = Array.from({ length: Math.ceil(span / bucketMs) }, (_, bucket) => {
    const values = latenciesIn(bucket * bucketMs, (bucket + 1) * bucketMs);
    return { at: started + (bucket + 0.5) * bucketMs, p50: quantile(values, 0.5), p99: quantile(values, 0.99) };
  }).filter((row) => !Number.isNaN(row.p50));
  const panel = (offset: number, title: string, unit: string, lines: Array<{ color: string; label: string; points: Array<[number, number]> }>) => {
    const highest = Math.max(1, ...lines.flatMap((line) => line.points.map(([, value]) => value)));
    const y = (value: number) => offset + top + (1 - value / highest) * (height - top - 30);
    const paths = lines.map((line, i) =>
      `<polyline fill="none" stroke="${line.color}" stroke-width="1.5" points="${line.points.map(([at, value]) => `${x(at).toFixed(1)},${y(value).toFixed(1)}`).join(" ")}"/>` +
      `<text x="${left + 10 + i * 120}" y="${offset + top - 8}" fill="${line.color}">${line.label}</text>`).join("");
    const marks = faults.map((fault) => `<line x1="${x(fault.at)}" x2="${x(fault.at)}" y1="${offset + top}" y2="${offset + height - 30}" stroke="#bbb" stroke-dasharray="3,3"/>`).join("");
    return `<text x="${left}" y="${offset + 14}" font-weight="bold">${title}</text>` +
      `<text x="4" y="${y(highest) + 4}">${highest.toFixed(highest < 10 ? 1 : 0)} ${unit}</text><text x="4" y="${y(0) + 4}">0</text>` +
      `<line x1="${left}" x2="${width - right}" y1="${y(0)}" y2="${y(0)}" stroke="#999"/>${marks}${paths}`;
  };
  const latency = panel(0, `Latency of gets and sets per ${bucketMs / 1_000} s (dashed: a fault)`, "ms", [
    { color: "#1f77b4", label: "p50", points: rows.map((row) => [row.at, row.p50]) },
    { color: "#d62728", label: "p99", points: rows.map((row) => [row.at, row.p99]) },
  ]);
  const memory = panel(height, "Memory of the four processes, summed", "MB", [
    { color: "#2ca02c", label: "heap used", points: samples.map((s) => [s.at, s.heapUsed / 1e6]) },
    { color: "#9467bd", label: "RSS", points: samples.map((s) => [s.at, s.rss / 1e6]) },
  ]);
  const minutes = `<text x="${left}" y="${2 * height + 10}">0</text><text x="${width - right - 60}" y="${2 * height + 10}">${(span / 60_000).toFixed(1)} min</text>`;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${2 * height + 20}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>${latency}${memory}${minutes}</svg>\n`;
}

let stopSampling = async () => {};
let exitCode = 1;
try {
  if (NETNS.ok) network = createNetwork(TARGETS.length, "kosyaksoak");
  else console.log(`soak: no network namespaces (${NETNS.why}): the members run on loopback, and the network cut is left out`);
  for (const i of TARGETS.keys()) nodes.push(await spawnMember(i, i > 0 ? nodes[i - 1].address : undefined));
  await fullMesh(nodes, 10_000);
  stopSampling = sampleMemory();
  // Segments until the time is up; the last may end up to half a segment late. The first,
  // with its fault, warms up.
  let warm = NaN;
  for (let index = 0; index === 0 || now() - started < SECONDS * 1_000 - SEGMENT_MS / 2; index++) {
    await segment(index);
    if (index === 0) warm = await liveHeap();
  }
  const final = await liveHeap();
  await stopSampling();

  const minutes = Math.ceil((now() - started) / 60_000);
  console.log("minute  ops      p50 ms  p99 ms  p99.9 ms  heap MB  RSS MB");
  for (let minute = 0; minute < minutes; minute++) {
    const inMinute = (at: number) => at >= started + minute * 60_000 && at < started + (minute + 1) * 60_000;
    const values = latenciesIn(minute * 60_000, (minute + 1) * 60_000);
    if (values.length === 0) continue;
    const memory = samples.filter((s) => inMinute(s.at));
    const last = memory.at(-1);
    console.log(
      `${String(minute + 1).padEnd(8)}${String(values.length).padEnd(9)}${quantile(values, 0.5).toFixed(2).padEnd(8)}${quantile(values, 0.99).toFixed(2).padEnd(8)}` +
        `${quantile(values, 0.999).toFixed(2).padEnd(10)}${String(last ? mb(last.heapUsed) : "-").padEnd(9)}${last ? mb(last.rss) : "-"}`,
    );
  }
  const elapsed = (now() - started) / 1_000;
  const heapHolds = final <= warm * (1 + HEAP_GROWTH);
  writeFileSync((mkdirSync(dirname(CHART), { recursive: true }), CHART), chart(elapsed > 600 ? 30_000 : 5_000));
  const verdict = staleReads === 0 && lostWrites === 0 && disagreements.length === 0 && heapHolds;
  console.log(
    `soak verdict: ${verdict ? "passed" : "FAILED"} after ${Math.round(elapsed)} s and ${faults.length} faults (${faults.map((f) => `${f.kind} of ${f.node}`).join("; ")}): ` +
      `${staleReads} stale reads, ${lostWrites} acknowledged writes lost, ${disagreements.length} keys in dispute after a heal${disagreements.length ? ` (${disagreements.slice(0, 3).join("; ")})` : ""}, ` +
      `heap ${mb(warm)} MB after warm-up and ${mb(final)} MB at the end (after a full collection; at most +${HEAP_GROWTH * 100}%), chart in ${CHART}`,
  );
  exitCode = verdict ? 0 : 1;
} catch (error) {
  console.error(`soak FAILED: ${error instanceof Error ? error.stack : error}`);
} finally {
  await stopSampling();
  await stopAll();
  network?.destroy();
}
process.exit(exitCode);
