// `npm run bench -- --scale`: what one node pays as the cluster grows, on this machine, over
// loopback TCP, under Node.js. Clusters of 2 to 64 nodes in this one process, and of 2 to 16
// separate processes (scripts/bench-scale-node.mjs). For each: connections per node, heap per
// key of the cluster (the directory, mostly), heartbeat messages per node when idle, and under
// writes and then reads of random keys (64 in flight per node) the cluster's rate, its CPU per
// operation, and the messages and bytes each node sends and receives per second. It writes
// bench/scale.json, and the table and bench/scale.svg's chart into docs/scale.md between the
// `scale` markers. Options: --quick (smaller clusters, shorter windows).
import { writeFileSync } from "node:fs";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { Node } from "kosyak";
import { measureOps, memberKeys, randomClusterKey, spawnMember } from "./bench-scale-ops.mjs";
import { writeSection } from "./scale-doc.mjs";

const root = fileURLToPath(new URL("..", import.meta.url));
const quick = process.argv.includes("--quick");
const IN_PROCESS = quick ? [2, 4, 8, 16] : [2, 4, 8, 16, 32, 64];
const SEPARATE = quick ? [2, 4] : [2, 4, 8, 16];
const KEYS_PER_NODE = quick ? 500 : 2_000;
const WINDOW_MS = quick ? 500 : 1_500;
const IDLE_MS = quick ? 1_000 : 3_000;

if (typeof globalThis.gc !== "function") throw new Error("run with --expose-gc (npm run bench -- --scale does)");

const rows = [];
for (const size of IN_PROCESS) rows.push(await measure("one process", size, await inProcess(size)));
for (const size of SEPARATE) rows.push(await measure("processes", size, await separateProcesses(size)));
const model = fitModel(rows);
writeFileSync(`${root}bench/scale.json`, JSON.stringify({ keysPerNode: KEYS_PER_NODE, windowMs: WINDOW_MS, model, rows }, null, 2) + "\n");
writeFileSync(`${root}bench/scale.svg`, chart(rows, model));
writeSection("scale", report(rows, model));
console.log("wrote bench/scale.json, bench/scale.svg and the scale section of docs/scale.md");

/**
 * Measures one cluster: its heap (all processes together), how long one more node takes to
 * join it, and its members, each of which can fill its keys, take a snapshot (CPU, stats), and
 * run timed writes or reads; then stops it.
 */
async function measure(mode, size, cluster) {
  const snapshot = () => Promise.all(cluster.members.map((member) => member.snapshot()));
  const phase = async (run) => {
    const before = await snapshot();
    const started = performance.now();
    const ops = await run();
    const seconds = (performance.now() - started) / 1000;
    const after = await snapshot();
    const total = (pick) => after.reduce((sum, shot, i) => sum + pick(shot) - pick(before[i]), 0);
    // Members in one process share its CPU: count it once.
    const cpuUs = cluster.sharedCpu ? after[0].cpuUs - before[0].cpuUs : total((shot) => shot.cpuUs);
    const perNodePerSecond = (stat) => Math.round(total((shot) => shot.stats[stat]) / size / seconds);
    return {
      opsPerSecond: Math.round(ops / seconds),
      cpuUsPerOp: ops > 0 ? round(cpuUs / ops, 1) : undefined,
      cpuShare: round(cpuUs / 1e6 / seconds, 2),
      messagesSentPerNodePerSecond: perNodePerSecond("messagesSent"),
      messagesReceivedPerNodePerSecond: perNodePerSecond("messagesReceived"),
      bytesSentPerNodePerSecond: perNodePerSecond("bytesSent"),
      bytesReceivedPerNodePerSecond: perNodePerSecond("bytesReceived"),
    };
  };
  try {
    const empty = await cluster.heap();
    await Promise.all(cluster.members.map((member) => member.fill()));
    const heapPerNode = (await cluster.heap() - empty) / size;
    const filled = await snapshot();
    const clusterKeys = size * KEYS_PER_NODE;
    const joinMs = await cluster.join();
    const idle = await phase(async () => {
      await new Promise((resolve) => setTimeout(resolve, IDLE_MS)); // a measuring window, not a wait for an event
      return 0;
    });
    const writes = await phase(async () => sumOf(await Promise.all(cluster.members.map((member) => member.run("write", WINDOW_MS)))));
    const reads = await phase(async () => sumOf(await Promise.all(cluster.members.map((member) => member.run("read", WINDOW_MS)))));
    const row = {
      mode,
      nodes: size,
      clusterKeys,
      connectionsPerNode: filled[0].stats.connections,
      remoteKeysPerNode: filled[0].stats.remoteKeys,
      heapPerNodeBytes: Math.round(heapPerNode),
      heapPerNodeKeyBytes: round(heapPerNode / KEYS_PER_NODE, 1),
      joinMs: round(joinMs, 1),
      idleMessagesPerNodePerSecond: idle.messagesSentPerNodePerSecond,
      idleCpuShare: idle.cpuShare,
      writes,
      reads,
    };
    console.log(JSON.stringify(row));
    return row;
  } finally {
    await cluster.stop();
  }
}

/** `size` nodes in this process, each driven directly. */
async function inProcess(size) {
  const nodes = [];
  try {
    for (let index = 0; index < size; index++) {
      nodes.push(await Node.start({ host: "127.0.0.1", port: 0, master: index === 0 ? undefined : nodes[0].address }));
    }
  } catch (error) {
    await Promise.all(nodes.map((node) => node.stop({ handover: false })));
    throw error;
  }
  const snapshot = (node) => {
    const cpu = process.cpuUsage();
    return { cpuUs: cpu.user + cpu.system, stats: node.stats() };
  };
  return {
    sharedCpu: true,
    heap: async () => {
      globalThis.gc();
      return process.memoryUsage().heapUsed;
    },
    members: nodes.map((node, index) => {
      const key = randomClusterKey(size, KEYS_PER_NODE, index + 1);
      return {
        fill: () => node.mset(memberKeys(index, KEYS_PER_NODE).map((name) => [name, 0])),
        snapshot: async () => snapshot(node),
        run: (what, ms) => measureOps(ms, what === "write" ? (n) => node.set(key(), n) : () => node.get(key())),
      };
    }),
    join: async () => {
      const started = performance.now();
      const joiner = await Node.start({ host: "127.0.0.1", port: 0, master: nodes[0].address });
      const ms = performance.now() - started;
      await joiner.stop({ handover: false });
      return ms;
    },
    stop: () => Promise.all(nodes.map((node) => node.stop({ handover: false }))),
  };
}

/** `size` Node.js processes, one node each, driven over their standard input and output. */
async function separateProcesses(size) {
  const members = [];
  const stop = async () => {
    for (const member of members) member.child.stdin.end();
    await Promise.all(members.map((member) => member.exited));
  };
  let port;
  try {
    for (let index = 0; index < size; index++) {
      const member = spawnMember({ index, port, keysPerNode: KEYS_PER_NODE, members: size });
      members.push(member);
      port ??= (await member.next()).port;
      if (index > 0) await member.next();
    }
  } catch (error) {
    await stop();
    throw error;
  }
  return {
    sharedCpu: false,
    heap: async () => sumOf(await Promise.all(members.map(async (member) => (await member.ask("heap")).heapUsed))),
    members: members.map((member) => ({
      fill: () => member.ask("fill"),
      snapshot: () => member.ask("snapshot"),
      run: async (what, ms) => (await member.ask(`${what} ${ms}`)).ops,
    })),
    join: async () => {
      const joiner = spawnMember({ index: size, port, keysPerNode: KEYS_PER_NODE, members: size });
      try {
        return (await joiner.next()).joinMs;
      } finally {
        joiner.child.stdin.end();
        await joiner.exited;
      }
    },
    stop,
  };
}

// ─── The model's constants ───────────────────────────────────────────────────────────────────

/**
 * The model's two lines, fitted (least squares) to the separate processes, where nothing is
 * shared between nodes: CPU per write = ackUs · (N − 1) + baseUs, and heap per node per key it
 * writes = entryBytes + directoryBytes · (N − 1); and the keys per second a joiner takes in,
 * from the join of the largest cluster (the one with the most keys, so the least latency-bound).
 */
function fitModel(rows) {
  const separate = rows.filter((r) => r.mode === "processes");
  const cpu = fitLine(separate.map((r) => [r.nodes - 1, r.writes.cpuUsPerOp]));
  const heap = fitLine(separate.map((r) => [r.nodes - 1, r.heapPerNodeKeyBytes]));
  const largest = rows.reduce((a, b) => (b.clusterKeys > a.clusterKeys ? b : a));
  return {
    ackUs: round(cpu.slope, 2),
    baseUs: round(cpu.intercept, 2),
    directoryBytes: round(heap.slope, 1),
    entryBytes: round(heap.intercept, 1),
    joinKeysPerSecond: Math.round(largest.clusterKeys / (largest.joinMs / 1000)),
  };
}

function fitLine(points) {
  const n = points.length;
  const meanX = sumOf(points.map(([x]) => x)) / n;
  const meanY = sumOf(points.map(([, y]) => y)) / n;
  const slope = sumOf(points.map(([x, y]) => (x - meanX) * (y - meanY))) / sumOf(points.map(([x]) => (x - meanX) ** 2));
  return { slope, intercept: meanY - slope * meanX };
}

// ─── The report ──────────────────────────────────────────────────────────────────────────────

function report(rows, model) {
  const lines = [
    `Measured by \`npm run bench -- --scale\` (Node.js ${process.version}, ${KEYS_PER_NODE.toLocaleString("en")} keys per node, ${WINDOW_MS} ms windows, 64 operations in flight per node, loopback; this machine has 2 cores, so the rates of large clusters are what 2 cores do for all of them, and the CPU per operation is the figure to read):`,
    "",
    "| cluster | nodes | connections per node | heap per node / keys per node | one more node joins in | idle messages sent per node per s | writes/s | CPU per write (cluster) | CPU per write / (N − 1) | messages sent per node per s (writes) | bytes sent per node per s (writes) | reads/s | CPU per read |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ...rows.map((r) =>
      `| ${r.mode} | ${r.nodes} | ${r.connectionsPerNode} | ${r.heapPerNodeKeyBytes} B | ${r.joinMs} ms | ${r.idleMessagesPerNodePerSecond} | ${r.writes.opsPerSecond.toLocaleString("en")} | ${r.writes.cpuUsPerOp} µs | ${r.nodes > 1 ? round(r.writes.cpuUsPerOp / (r.nodes - 1), 1) : "-"} µs | ${r.writes.messagesSentPerNodePerSecond.toLocaleString("en")} | ${(r.writes.bytesSentPerNodePerSecond / 1e6).toFixed(2)} MB | ${r.reads.opsPerSecond.toLocaleString("en")} | ${r.reads.cpuUsPerOp} µs |`
    ),
    "",
    `Fitted to the separate processes (nothing shared between nodes): CPU per write ≈ ${model.ackUs} µs · (N − 1) ${model.baseUs < 0 ? "−" : "+"} ${Math.abs(model.baseUs)} µs, so each member spends about ${model.ackUs} µs taking and acknowledging a write; heap per node ≈ ${model.entryBytes} B per key it holds + ${model.directoryBytes} B per key each other member holds (a directory record; keys of about 10 characters); the largest cluster's joiner took in ${model.joinKeysPerSecond.toLocaleString("en")} keys per second, sharing 2 cores with every member (\`npm run bench\`'s join of one holder's 1,000,000 keys shows what one core reads alone). In one process nodes share short key strings, so the directory looks cheaper there. The dashed lines are these fits.`,
    "",
    "![CPU per write and heap per node against cluster size](../bench/scale.svg)",
  ];
  return lines.join("\n");
}

/** Two panels against the number of nodes (log scale): CPU per write, and heap per node per key; the model dashed. */
function chart(rows, model) {
  const panels = [
    { title: "CPU per write, whole cluster (µs)", value: (r) => r.writes.cpuUsPerOp, model: (n) => model.ackUs * (n - 1) + model.baseUs },
    { title: "heap per node / keys per node (bytes)", value: (r) => r.heapPerNodeKeyBytes, model: (n) => model.entryBytes + model.directoryBytes * (n - 1) },
  ];
  const modes = [["one process", "#1f77b4"], ["processes", "#d62728"]];
  const width = 420;
  const height = 260;
  const pad = 50;
  const sizes = [...new Set(rows.map((r) => r.nodes))].sort((a, b) => a - b);
  const x = (n) => pad + (Math.log2(n) - Math.log2(sizes[0])) / (Math.log2(sizes.at(-1)) - Math.log2(sizes[0])) * (width - 2 * pad);
  const parts = panels.map((panel, p) => {
    const top = Math.max(...rows.map(panel.value), ...sizes.map(panel.model)) * 1.1;
    const y = (v) => height - pad - (v / top) * (height - 2 * pad);
    const ox = p * width;
    const axis = [
      `<text x="${ox + width / 2}" y="20" text-anchor="middle" font-weight="bold">${panel.title}</text>`,
      `<line x1="${ox + pad}" y1="${height - pad}" x2="${ox + width - pad}" y2="${height - pad}" stroke="black"/>`,
      `<line x1="${ox + pad}" y1="${pad}" x2="${ox + pad}" y2="${height - pad}" stroke="black"/>`,
      ...sizes.map((n) => `<text x="${ox + x(n)}" y="${height - pad + 16}" text-anchor="middle">${n}</text>`),
      `<text x="${ox + width / 2}" y="${height - 10}" text-anchor="middle">nodes</text>`,
      ...[0, 0.5, 1].map((f) => `<text x="${ox + pad - 6}" y="${y(top * f) + 4}" text-anchor="end">${Math.round(top * f)}</text>`),
    ];
    const fitted = sizes.map((n) => `${ox + x(n)},${y(panel.model(n))}`).join(" ");
    axis.push(`<polyline fill="none" stroke="#888" stroke-dasharray="5,4" stroke-width="1.5" points="${fitted}"/>`);
    const lines = modes.map(([mode, color]) => {
      const points = rows.filter((r) => r.mode === mode).map((r) => `${ox + x(r.nodes)},${y(panel.value(r))}`);
      return `<polyline fill="none" stroke="${color}" stroke-width="2" points="${points.join(" ")}"/>` +
        points.map((point) => `<circle cx="${point.split(",")[0]}" cy="${point.split(",")[1]}" r="3" fill="${color}"/>`).join("");
    });
    return [...axis, ...lines].join("");
  });
  const legend = modes.map(([mode, color], i) => `<rect x="${pad + i * 140}" y="${height + 4}" width="12" height="12" fill="${color}"/><text x="${pad + 18 + i * 140}" y="${height + 14}">${mode}</text>`).join("") +
    `<line x1="${pad + 280}" y1="${height + 10}" x2="${pad + 300}" y2="${height + 10}" stroke="#888" stroke-dasharray="5,4" stroke-width="1.5"/><text x="${pad + 306}" y="${height + 14}">model, fitted to the processes</text>`;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${2 * width}" height="${height + 24}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>${parts.join("")}${legend}</svg>\n`;
}

function sumOf(numbers) {
  return numbers.reduce((sum, n) => sum + n, 0);
}

function round(value, digits) {
  return Number(value.toFixed(digits));
}
