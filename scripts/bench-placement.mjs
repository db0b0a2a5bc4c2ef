// `npm run bench -- --placement`: local and hash placement side by side (hash with replicas: 1),
// in clusters of 2, 4, 8 and 16 separate Node.js processes (scripts/bench-scale-node.mjs) over
// loopback, each cluster holding the same 1,000,000 keys whatever its size. For each: the heap a
// node spends per key of the cluster, the messages the cluster sends per write made one at a time,
// the write rate and the cluster's CPU per write with 64 writes in flight on every node, the
// latency of a get of a key the reader holds no entry of, and when one more node joins the
// filled cluster, how many keys it ends up holding and how long until the moves are done. It
// writes bench/placement.json and the table, with the targets of issue 19 checked, into
// docs/scale.md between the `placement` markers. Options: --quick (2 and 4 nodes, 50,000 keys).
import { writeFileSync } from "node:fs";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { spawnMember } from "./bench-scale-ops.mjs";
import { writeSection } from "./scale-doc.mjs";

const root = fileURLToPath(new URL("..", import.meta.url));
const quick = process.argv.includes("--quick");
const SIZES = quick ? [2, 4] : [2, 4, 8, 16];
const CLUSTER_KEYS = quick ? 50_000 : 1_000_000;
const WINDOW_MS = quick ? 500 : 1_500;
const SEQUENTIAL_WRITES = 2_000;
const LATENCY_GETS = 2_000;
/** How long the joiner's holdings must stay unchanged for its moves to count as done, and the most to wait. */
const SETTLED_MS = 500;
const MOVE_LIMIT_MS = 60_000;
const MODES = [
  { placement: "local", options: {} },
  { placement: "hash", options: { placement: "hash", replicas: 1 } },
];

const rows = [];
for (const size of SIZES) {
  for (const mode of MODES) {
    const row = await measure(mode, size);
    console.log(JSON.stringify(row));
    rows.push(row);
  }
}
writeFileSync(`${root}bench/placement.json`, JSON.stringify({ clusterKeys: CLUSTER_KEYS, windowMs: WINDOW_MS, rows }, null, 2) + "\n");
writeSection("placement", report(rows));
console.log("wrote bench/placement.json and the placement section of docs/scale.md");

/** Measures one cluster of `size` processes in one placement, then stops it. */
async function measure({ placement, options }, size) {
  const keysPerNode = CLUSTER_KEYS / size;
  const members = await startMembers(size, keysPerNode, options);
  const snapshot = () => Promise.all(members.map((member) => member.ask("snapshot")));
  const heap = async () => sumOf(await Promise.all(members.map(async (member) => (await member.ask("heap")).heapUsed)));
  const total = (before, after, pick) => after.reduce((sum, shot, i) => sum + pick(shot) - pick(before[i]), 0);
  try {
    const empty = await heap();
    await Promise.all(members.map((member) => member.ask("fill")));
    const heapPerNodeKeyBytes = round((await heap() - empty) / size / CLUSTER_KEYS, 1);
    const filled = await snapshot();
    const entriesPerNode = Math.round(sumOf(filled.map((shot) => shot.stats.entries)) / size);

    let before = await snapshot();
    await members[0].ask(`seq ${SEQUENTIAL_WRITES}`);
    let after = await snapshot();
    const messagesPerWrite = round(total(before, after, (shot) => shot.stats.messagesSent) / SEQUENTIAL_WRITES, 2);

    before = await snapshot();
    const started = performance.now();
    const writes = sumOf(await Promise.all(members.map(async (member) => (await member.ask(`write ${WINDOW_MS}`)).ops)));
    const seconds = (performance.now() - started) / 1000;
    after = await snapshot();
    const writesPerSecond = Math.round(writes / seconds);
    const cpuUsPerWrite = round(total(before, after, (shot) => shot.cpuUs) / writes, 1);

    const remoteGet = await members[0].ask(`latency ${LATENCY_GETS}`);
    const join = await joinOne(size, keysPerNode, options, members[0].port);
    return { placement, nodes: size, clusterKeys: CLUSTER_KEYS, entriesPerNode, heapPerNodeKeyBytes, messagesPerWrite, writesPerSecond, cpuUsPerWrite, remoteGet, join };
  } finally {
    for (const member of members) member.child.stdin.end();
    await Promise.all(members.map((member) => member.exited));
  }
}

/** Starts `size` members, each joining through the first; resolves once all have joined. */
async function startMembers(size, keysPerNode, options) {
  const members = [];
  try {
    for (let index = 0; index < size; index++) {
      const member = spawnMember({ index, port: members[0]?.port, keysPerNode, members: size, options });
      members.push(member);
      member.port = (await member.next()).port;
    }
  } catch (error) {
    for (const member of members) member.child.stdin.end();
    throw error;
  }
  return members;
}

/**
 * One more member joins the filled cluster: how long its init took, how many entries it holds
 * (its own and copies) once they have stopped changing for SETTLED_MS, and when that was.
 */
async function joinOne(size, keysPerNode, options, port) {
  const started = performance.now();
  const joiner = spawnMember({ index: size, port, keysPerNode, members: size, options });
  try {
    const { joinMs } = await joiner.next();
    let held = -1;
    let changedAt = performance.now();
    while (performance.now() - changedAt < SETTLED_MS && performance.now() - started < MOVE_LIMIT_MS) {
      const { stats } = await joiner.ask("snapshot");
      if (stats.entries !== held) {
        held = stats.entries;
        changedAt = performance.now();
      }
      await new Promise((resolve) => setTimeout(resolve, 50)); // a polling period, bounded by MOVE_LIMIT_MS
    }
    return { initMs: Math.round(joinMs), keysHeld: held, share: round(held / CLUSTER_KEYS, 3), doneMs: Math.round(changedAt - started) };
  } finally {
    joiner.child.stdin.end();
    await joiner.exited;
  }
}

/** The table, then each target of issue 19 with the figure that meets it or not. */
function report(rows) {
  const at = (placement, nodes) => rows.find((r) => r.placement === placement && r.nodes === nodes);
  const largest = Math.max(...rows.map((r) => r.nodes));
  const smallest = Math.min(...rows.map((r) => r.nodes));
  const lines = [
    `Measured by \`npm run bench -- --placement\` on this machine: ${CLUSTER_KEYS.toLocaleString("en")} keys in every cluster, separate Node.js processes, hash placement with \`replicas: 1\`.`,
    "",
    "| nodes | placement | entries per node | heap per node per cluster key | messages per write, one at a time | writes/s, 64 in flight per node | cluster CPU per write | get of a key held elsewhere, p50 / p99 | one more node joins: keys it holds, done after |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ...rows.map((r) =>
      `| ${r.nodes} | ${r.placement} | ${r.entriesPerNode.toLocaleString("en")} | ${r.heapPerNodeKeyBytes} B | ${r.messagesPerWrite} | ${r.writesPerSecond.toLocaleString("en")} | ${r.cpuUsPerWrite} µs | ${r.remoteGet.p50Us} / ${r.remoteGet.p99Us} µs | ${r.join.keysHeld.toLocaleString("en")} (${(100 * r.join.share).toFixed(1)}%), ${r.join.doneMs} ms |`
    ),
    "",
  ];
  // Per entry, from the smallest hash cluster (every node holds a share of (R + 1) / N); what a
  // node spends on each key it neither owns nor copies is what its heap holds beyond its entries.
  const base = at("hash", smallest);
  const perEntry = (base.heapPerNodeKeyBytes * CLUSTER_KEYS) / base.entriesPerNode;
  const beyond = (r) => round((r.heapPerNodeKeyBytes * CLUSTER_KEYS - perEntry * r.entriesPerNode) / (CLUSTER_KEYS - r.entriesPerNode), 1);
  const big = at("hash", largest);
  const targets = [
    [`messages per write at ${largest} nodes <= 2 (R + 1) + 1 = 5 (local: 2 (N − 1) = ${2 * (largest - 1)})`, big.messagesPerWrite, big.messagesPerWrite <= 5],
    [`cluster CPU per write at ${largest} nodes within 1.5x of ${smallest} nodes`, `${big.cpuUsPerWrite} / ${base.cpuUsPerWrite} µs = ${round(big.cpuUsPerWrite / base.cpuUsPerWrite, 2)}x`, big.cpuUsPerWrite <= 1.5 * base.cpuUsPerWrite],
    [`heap per key a node neither owns nor copies <= 5 B (at ${largest} nodes, entries costing ${Math.round(perEntry)} B each)`, `${beyond(big)} B`, beyond(big) <= 5],
    [`a join into ${largest} nodes moves at most 1.3 (R + 1) / ${largest + 1} = ${round(2.6 / (largest + 1), 3)} of the keys`, big.join.share, big.join.share <= 2.6 / (largest + 1)],
    [`... and is done in under 5 s`, `${big.join.doneMs} ms`, big.join.doneMs < 5_000],
    [`remote get p50 within 10% of local placement's (at ${largest} nodes)`, `${big.remoteGet.p50Us} / ${at("local", largest).remoteGet.p50Us} µs`, big.remoteGet.p50Us <= 1.1 * at("local", largest).remoteGet.p50Us],
  ];
  lines.push("| target (hash placement) | measured | met |", "| --- | --- | --- |");
  for (const [what, measured, met] of targets) lines.push(`| ${what} | ${measured} | ${met ? "yes" : "no"} |`);
  return lines.join("\n");
}

function sumOf(numbers) {
  return numbers.reduce((a, b) => a + b, 0);
}

function round(value, digits) {
  return Math.round(value * 10 ** digits) / 10 ** digits;
}
