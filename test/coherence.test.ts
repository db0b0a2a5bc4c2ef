// Coherence under concurrency and faults: nodes in separate processes run seeded random
// workloads on the same few keys, and test/history.ts checks the merged histories for reads of
// replaced values; afterwards every node must read the same value for every key.
import {
  afterEach,
  assert,
  describe,
  it,
  type Runtime,
  runtime,
  spawnWorkloadNode,
  stopAll,
  waitFor,
  type Workload,
  type WorkloadNode,
} from "../deps.ts";
import type { NodeOptions } from "../mod.ts";
import { divergentKeys, explain, findStaleReads, type Op, type Violation, type Window } from "./history.ts";

afterEach(stopAll);

const KEYS = ["k0", "k1", "k2", "k3", "k4", "k5"];
/** Fast failure detection, so that a frozen or killed node is noticed well within a test. */
const FAST: NodeOptions = { heartbeatInterval: 100, peerTimeout: 600, requestTimeout: 1_000, connectDelay: 100, connectAttempts: 5 };
/** Processes of one machine share the clock to well under a millisecond; allow one. */
const SLACK_MS = 1;

const now = () => performance.timeOrigin + performance.now();

/** Writers and readers on every key: 8 loops, 40% sets, 5% removes. */
function workload(seed: number, durationMs: number): Workload {
  return { keys: KEYS, durationMs, concurrency: 8, writeRatio: 0.4, removeRatio: 0.05, seed, maxOps: 100_000 };
}

/** One workload node per target, each joining through the one before it; resolves once all see each other. */
async function cluster(prefix: string, targets: Runtime[], options: NodeOptions = {}): Promise<WorkloadNode[]> {
  const nodes: WorkloadNode[] = [];
  for (const [i, target] of targets.entries()) {
    const master = i > 0 ? { master: nodes[i - 1].address } : {};
    nodes.push(await spawnWorkloadNode(`${prefix}${i}-${target}`, { ...options, ...master }, target));
  }
  await fullMesh(nodes, 10_000);
  return nodes;
}

async function fullMesh(nodes: WorkloadNode[], timeoutMs: number): Promise<void> {
  await waitFor(`each of ${nodes.length} nodes to see the others`, async () => {
    const stats = (await Promise.all(nodes.map((node) => node.call({ cmd: "stats" })))) as Array<{ peers: number }>;
    return stats.every((s) => s.peers === nodes.length - 1);
  }, timeoutMs);
}

/**
 * Waits, bounded, for every node to read the same value for every key; resolves with the keys
 * still in dispute when time ran out (none when they agreed), each followed by what each node read.
 */
async function agreement(nodes: WorkloadNode[], timeoutMs: number): Promise<string[]> {
  let divergent: string[] = [];
  try {
    await waitFor("every node to read the same value for every key", async () => {
      const views = Object.fromEntries(await Promise.all(nodes.map(async (node) => [node.name, await node.read(KEYS)])));
      divergent = divergentKeys(views).map((key) => `${key} (${nodes.map((node) => `${node.name}: ${views[node.name][key]}`).join(", ")})`);
      return divergent.length === 0;
    }, timeoutMs);
  } catch (error) {
    if (divergent.length === 0) throw error;
  }
  return divergent;
}

/** A set made by the test itself through a node, as an op of the history. */
async function recordedSet(node: WorkloadNode, key: string, value: string): Promise<Op> {
  const start = now();
  await node.call({ cmd: "set", key, value });
  return { node: node.name, kind: "set", key, value, start, end: now(), ok: true };
}

/**
 * What a dead or frozen holder does to its keys: they may vanish at any time in the fault
 * window, like a remove that runs for the whole window.
 */
function lossDuring(node: string, window: Window): Op[] {
  return KEYS.map((key) => ({ node, kind: "remove", key, value: null, start: window.from, end: window.to, ok: true }));
}

/** Checks the history, prints the figures on one line, and returns the violations. */
function check(title: string, history: Op[], divergent: string[], exclude: Window[] = []): Violation[] {
  const violations = findStaleReads(history, { exclude, slackMs: SLACK_MS });
  const outside = (op: Op) => !exclude.some((w) => op.start <= w.to && op.end >= w.from);
  const ops = history.filter(outside);
  const reads = ops.filter((op) => op.kind === "get" && op.ok).length;
  const failed = history.filter((op) => !op.ok).length;
  console.log(
    `coherence, ${title}: ${history.length} ops (${ops.length} outside fault windows, ${failed} failed), ` +
      `${reads} reads checked, ${violations.length} violations, divergent keys: [${divergent.join(", ")}]` +
      violations.slice(0, 3).map((v) => `\n  ${explain(v)}`).join(""),
  );
  return violations;
}

function assertCoherent(violations: Violation[], divergent: string[]): void {
  assert.equal(violations.length, 0, `${violations.length} stale reads; the first: ${violations.slice(0, 3).map(explain).join("; ")}`);
  assert.deepEqual(divergent, [], "every node reads the same value for every key");
}

describe("Coherence of concurrent reads and writes across processes", () => {
  it(`four ${runtime} processes writing and reading the same keys never read a replaced value, and then agree on every key`, async () => {
    const nodes = await cluster("a", [runtime, runtime, runtime, runtime]);
    const histories = await Promise.all(nodes.map((node, i) => node.run(workload(100 + i, 4_000))));
    const divergent = await agreement(nodes, 5_000);
    const violations = check(`four ${runtime} processes`, histories.flat(), divergent);
    assertCoherent(violations, divergent);
  }, 40_000);

  it("a cluster of Node.js, Deno and Bun processes writing and reading the same keys never reads a replaced value, and then agrees", async () => {
    const nodes = await cluster("b", ["node", "deno", "bun", runtime]);
    const histories = await Promise.all(nodes.map((node, i) => node.run(workload(200 + i, 4_000))));
    const divergent = await agreement(nodes, 5_000);
    const violations = check("node, deno, bun and " + runtime, histories.flat(), divergent);
    assertCoherent(violations, divergent);
  }, 40_000);

  it("a node frozen past peerTimeout while the others overwrite its keys serves no replaced value once it runs again, and all agree", async () => {
    const nodes = await cluster("c", [runtime, runtime, runtime, runtime], FAST);
    const frozen = nodes[3];
    const others = nodes.slice(0, 3);
    const seeded = [];
    for (const key of KEYS) seeded.push(await recordedSet(frozen, key, `${frozen.name}:seed-${key}`));

    const pausedAt = now();
    frozen.pause();
    const whileFrozen = Promise.all(others.map((node, i) => node.run(workload(300 + i, 2_500))));
    await waitFor("the others to declare the frozen node down", async () => {
      const stats = (await Promise.all(others.map((node) => node.call({ cmd: "stats" })))) as Array<{ peers: number }>;
      return stats.every((s) => s.peers === 2);
    }, 5_000);
    const frozenHistories = await whileFrozen;
    frozen.resume();
    await fullMesh(nodes, 8_000);
    const afterResume = await agreement(nodes, 5_000);
    const convergedAt = now();

    const window = { from: pausedAt, to: convergedAt };
    const afterwards = await Promise.all(nodes.map((node, i) => node.run(workload(310 + i, 3_000))));
    const divergent = await agreement(nodes, 5_000);
    const history = [...seeded, ...frozenHistories.flat(), ...afterwards.flat(), ...lossDuring(frozen.name, window)];
    const violations = check(
      `frozen for ${Math.round(window.to - pausedAt)} ms (divergent right after the resume: [${afterResume.join(", ")}])`,
      history,
      divergent,
      [window],
    );
    assert.deepEqual(afterResume, [], "every node reads the same value for every key within 5 s of the resume");
    assertCoherent(violations, divergent);
  }, 40_000);

  it("a node killed mid-workload and replaced by a fresh process joining through a survivor leaves no replaced value readable, and all agree", async () => {
    const nodes = await cluster("d", [runtime, runtime, runtime, runtime], FAST);
    const victim = nodes[3];
    const survivors = nodes.slice(0, 3);
    const running = survivors.map((node, i) => node.run(workload(400 + i, 5_000)));
    const doomed = victim.run({ ...workload(403, 5_000), stream: true }).catch(() => []);
    await waitFor("the victim to complete 100 ops", () => victim.recorded().filter((op) => op.ok).length >= 100, 5_000);

    const killedAt = now();
    await victim.kill();
    await doomed;
    await waitFor("the survivors to see the victim gone", async () => {
      const stats = (await Promise.all(survivors.map((node) => node.call({ cmd: "stats" })))) as Array<{ peers: number }>;
      return stats.every((s) => s.peers === 2);
    }, 5_000);
    const fresh = await spawnWorkloadNode("d4-fresh", { ...FAST, master: survivors[1].address });
    const members = [...survivors, fresh];
    await fullMesh(members, 8_000);
    const window = { from: killedAt, to: now() };

    const freshHistory = await fresh.run(workload(404, 1_500));
    const histories = await Promise.all(running);
    const divergent = await agreement(members, 5_000);
    const history = [...histories.flat(), ...victim.recorded(), ...freshHistory, ...lossDuring(victim.name, window)];
    const violations = check(`killed, replaced after ${Math.round(window.to - window.from)} ms`, history, divergent, [window]);
    assertCoherent(violations, divergent);
  }, 40_000);
});
