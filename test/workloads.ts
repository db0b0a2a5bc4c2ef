// What the coherence tests share: seeded workloads on a few keys, waiting for agreement, and
// checking merged histories with test/history.ts. Used with workload nodes (see deps.ts), on
// loopback or in network namespaces.
import { assert, type Runtime, spawnWorkloadNode, waitFor, type Workload, type WorkloadNode } from "../deps.ts";
import type { NodeOptions } from "../mod.ts";
import { divergentKeys, explain, findStaleReads, type Op, type Violation, type Window } from "./history.ts";

export const KEYS = ["k0", "k1", "k2", "k3", "k4", "k5"];
/** Fast failure detection, so that a frozen or killed node is noticed well within a test. */
export const FAST = { heartbeatInterval: 100, peerTimeout: 600, requestTimeout: 1_000, connectDelay: 100, connectAttempts: 5 } satisfies NodeOptions;
/** Processes of one machine share the clock to well under a millisecond; allow one. */
const SLACK_MS = 1;

export const now = (): number => performance.timeOrigin + performance.now();

/**
 * Writers and readers on every key: 8 loops, 40% sets, 5% removes, 10% getOrSets (a read of the
 * key, or a set of what its loader gives when no node holds the key), the rest gets. The entries
 * of two keys live 300 ms, then 300 ms more stale (see `grace`), and a third of the gets ask for
 * stale values, so that the checker sees expiry, stale reads and refreshes; the other four keys
 * never expire, for the linearizability check (which leaves keys with a ttl out).
 */
export function workload(seed: number, durationMs: number): Workload {
  return {
    keys: KEYS, durationMs, concurrency: 8, writeRatio: 0.4, removeRatio: 0.05, loadRatio: 0.1, seed, maxOps: 100_000,
    ttl: 300, ttlKeys: ["k4", "k5"], grace: 300, staleRatio: 0.3,
  };
}

/** One workload node per target, each joining through the one before it; resolves once all see each other. */
export async function cluster(prefix: string, targets: Runtime[], options: NodeOptions = {}): Promise<WorkloadNode[]> {
  const nodes: WorkloadNode[] = [];
  for (const [i, target] of targets.entries()) {
    const master = i > 0 ? { master: nodes[i - 1].address } : {};
    nodes.push(await spawnWorkloadNode(`${prefix}${i}-${target}`, { ...options, ...master }, target));
  }
  await fullMesh(nodes, 10_000);
  return nodes;
}

/** Waits until each of `nodes` sees the others. */
export async function fullMesh(nodes: WorkloadNode[], timeoutMs: number): Promise<void> {
  await peersAre(nodes, nodes.length - 1, timeoutMs);
}

/** Waits until every node of `nodes` has `count` peers: a member lost, or all of them found. */
export async function peersAre(nodes: WorkloadNode[], count: number, timeoutMs = 10_000): Promise<void> {
  await waitFor(`each of ${nodes.length} nodes to have ${count} peers`, async () => {
    const stats = (await Promise.all(nodes.map((node) => node.call({ cmd: "stats" })))) as Array<{ peers: number }>;
    return stats.every((s) => s.peers === count);
  }, timeoutMs);
}

/**
 * Waits, bounded, for every node to read the same value for every key; resolves with the keys
 * still in dispute when time ran out (none when they agreed), each followed by what each node read.
 */
export async function agreement(nodes: WorkloadNode[], timeoutMs: number): Promise<string[]> {
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
export async function recordedSet(node: WorkloadNode, key: string, value: string): Promise<Op> {
  const start = now();
  await node.call({ cmd: "set", key, value });
  return { node: node.name, kind: "set", key, value, start, end: now(), ok: true };
}

/**
 * What a dead or frozen holder does to its keys: they may vanish at any time in the fault
 * window, like a remove that runs for the whole window.
 */
export function lossDuring(node: string, window: Window): Op[] {
  return KEYS.map((key) => ({ node, kind: "remove", key, value: null, start: window.from, end: window.to, ok: true }));
}

/**
 * Checks the history, prints the figures on one line, and returns the violations. A set with a
 * ttl may be read until `ttlSlackMs` after its end plus its ttl (see CheckOptions).
 */
export function check(title: string, history: Op[], divergent: string[], exclude: Window[] = [], ttlSlackMs?: number): Violation[] {
  const violations = findStaleReads(history, { exclude, slackMs: SLACK_MS, ttlSlackMs });
  const outside = (op: Op) => !exclude.some((w) => op.start <= w.to && op.end >= w.from);
  const ops = history.filter(outside);
  const reads = ops.filter((op) => op.kind === "get" && op.ok).length;
  // The values that getOrSet loaders gave (see workload-node.mjs), and how many were read back.
  const loaded = new Set(history.filter((op) => op.kind === "set" && op.value?.includes(":load:")).map((op) => op.value));
  const readLoaded = history.filter((op) => op.kind === "get" && op.ok && loaded.has(op.value)).length;
  const failedBy = new Map<string, number>();
  for (const op of history) if (!op.ok && !op.maybe) failedBy.set(op.node, (failedBy.get(op.node) ?? 0) + 1);
  const failed = [...failedBy.values()].reduce((sum, count) => sum + count, 0);
  const failures = failed === 0 ? "0 failed" : `${failed} failed: ${[...failedBy].map(([node, count]) => `${count} on ${node}`).join(", ")}`;
  console.log(
    `coherence, ${title}: ${history.length} ops (${ops.length} outside fault windows, ${failures}), ` +
      `${reads} reads checked (${loaded.size} values loaded by getOrSet, read ${readLoaded} times), ${violations.length} violations, divergent keys: [${divergent.join(", ")}]` +
      violations.slice(0, 3).map((v) => `\n  ${explain(v)}`).join(""),
  );
  return violations;
}

export function assertCoherent(violations: Violation[], divergent: string[]): void {
  assert.equal(violations.length, 0, `${violations.length} stale reads; the first: ${violations.slice(0, 3).map(explain).join("; ")}`);
  assert.deepEqual(divergent, [], "every node reads the same value for every key");
}
