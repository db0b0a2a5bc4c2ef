// The linearizability checker's own tests: histories it must accept, and histories it must
// reject, among them the three ways a third-party checker found local placement to fall short of
// linearizability on four healthy nodes (see issue 19 and README's guarantees).
import { afterEach, assert, describe, it, runtime, stopAll } from "../deps.ts";
import type { Op } from "./history.ts";
import { checkLinearizable } from "./linearizable.ts";
import { cluster, workload } from "./workloads.ts";

afterEach(stopAll);

const set = (node: string, value: string, start: number, end: number, ok = true): Op => ({ node, kind: "set", key: "k", value, start, end, ok });
const get = (node: string, value: string | null, start: number, end: number): Op => ({ node, kind: "get", key: "k", value, start, end, ok: true });
const remove = (node: string, existed: boolean, start: number, end: number): Op => ({ node, kind: "remove", key: "k", value: null, start, end, ok: true, existed });

const verdict = (history: Op[]) => {
  const report = checkLinearizable(history);
  assert.deepEqual(report.undecided, [], "keys the search gave up on");
  return report.violations.length === 0;
};

/** A seeded generator of numbers in [0, 1) (mulberry32). */
function seeded(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * A history of `count` operations on a few keys that is linearizable by construction: each
 * operation takes effect at an instant drawn at random, its result is what a register gives in
 * the order of those instants, and its call and return spread up to 5 ms either side, so that
 * many overlap.
 */
function linearizableHistory(count: number, seed: number): Op[] {
  const random = seeded(seed);
  const values = new Map<string, string | null>();
  const planned = Array.from({ length: count }, (_, i) => ({ i, at: random() * count, dice: random(), key: `k${Math.floor(random() * 4)}` }));
  planned.sort((a, b) => a.at - b.at);
  return planned.map(({ i, at, dice, key }): Op => {
    const [start, end] = [at - 5 * random(), at + 5 * random()];
    const held = values.get(key) ?? null;
    if (dice < 0.4) {
      values.set(key, `v${i}`);
      return { node: `n${i % 4}`, kind: "set", key, value: `v${i}`, start, end, ok: true };
    }
    if (dice < 0.5) {
      values.set(key, null);
      return { node: `n${i % 4}`, kind: "remove", key, value: null, start, end, ok: true, existed: held !== null };
    }
    return { node: `n${i % 4}`, kind: "get", key, value: held, start, end, ok: true };
  });
}

describe("Linearizability checker", () => {
  it("accepts operations in sequence that a register explains, and rejects a read of a replaced value", () => {
    assert.equal(verdict([set("a", "1", 0, 1), get("b", "1", 2, 3), set("a", "2", 4, 5), get("b", "2", 6, 7)]), true);
    assert.equal(verdict([set("a", "1", 0, 1), set("a", "2", 2, 3), get("b", "1", 4, 5)]), false);
    assert.equal(verdict([set("a", "1", 0, 1), get("b", null, 2, 3)]), false);
  });

  it("accepts either value for a read concurrent with a write, but not both orders at once", () => {
    assert.equal(verdict([set("a", "1", 0, 1), set("a", "2", 2, 10), get("b", "1", 3, 4)]), true);
    assert.equal(verdict([set("a", "1", 0, 1), set("a", "2", 2, 10), get("b", "2", 3, 4)]), true);
    // Seen new, then old: the write took effect before the first read, so the second cannot undo it.
    assert.equal(verdict([set("a", "1", 0, 1), set("a", "2", 2, 10), get("b", "2", 3, 4), get("c", "1", 5, 6)]), false);
  });

  it("rejects local placement's first anomaly: a read that begins after another read returned the new value returns the old one", () => {
    // d0's set is visible on d0 and d1 while d2 still serves the old value.
    assert.equal(verdict([set("d0", "old", 0, 1), set("d0", "new", 2, 20), get("d1", "new", 5, 6), get("d2", "old", 7, 8)]), false);
  });

  it("rejects local placement's second anomaly: a remove made after a set was observed loses to it", () => {
    // The remove returned after a read had seen "1"; a later read still sees "1".
    assert.equal(verdict([set("a", "1", 0, 10), get("b", "1", 2, 3), remove("c", true, 4, 5), get("b", "1", 6, 7)]), false);
  });

  it("rejects local placement's third anomaly: a remove that found nothing while a set kept the key present throughout", () => {
    assert.equal(verdict([set("a", "1", 0, 1), remove("b", false, 2, 3), get("c", "1", 4, 5)]), false);
    assert.equal(verdict([set("a", "1", 0, 1), remove("b", true, 2, 3), get("c", null, 4, 5)]), true);
    assert.equal(verdict([remove("b", true, 0, 1)]), false);
  });

  it("lets a failed write take effect at any time after its call, or never; a failed read counts for nothing", () => {
    const failed = set("a", "2", 2, 3, false);
    assert.equal(verdict([set("a", "1", 0, 1), failed, get("b", "1", 4, 5), get("b", "2", 6, 7)]), true);
    assert.equal(verdict([set("a", "1", 0, 1), failed, get("b", "1", 4, 5)]), true);
    // ...but not before its call.
    assert.equal(verdict([set("a", "1", 0, 1), get("b", "2", 1.5, 1.8), failed]), false);
    assert.equal(verdict([set("a", "1", 0, 1), { ...get("b", "9", 2, 3), ok: false }]), true);
  });

  it("leaves out keys written with a TTL, whose expiry no client made", () => {
    const report = checkLinearizable([{ ...set("a", "1", 0, 1), ttl: 10 }, get("b", null, 20, 21)]);
    assert.deepEqual([report.keys, report.violations.length], [0, 0]);
  });

  it("accepts 20,000 generated linearizable operations on four keys with many overlapping, and rejects each of three faults put in them", () => {
    const history = linearizableHistory(20_000, 7);
    assert.equal(verdict(history), true);
    const lastOf = (key: string) => history.filter((op) => op.key === key).reduce((a, b) => (a.end > b.end ? a : b));
    const after = lastOf("k1").end + 10;
    const final = history.filter((op) => op.key === "k1" && op.kind !== "get").reduce((a, b) => (a.start > b.start ? a : b));
    // A read after everything of a value other than the last write's.
    const wrong: Op = { node: "x", kind: "get", key: "k1", value: final.kind === "set" ? null : "v-none", start: after, end: after + 1, ok: true };
    assert.equal(verdict([...history, wrong]), false);
    // A read of a value written only after the read returned.
    const future = history.find((op) => op.kind === "set" && op.key === "k2" && op.start > 100)!;
    assert.equal(verdict([...history, { node: "x", kind: "get", key: "k2", value: future.value, start: future.start - 30, end: future.start - 20, ok: true }]), false);
    // A remove that says it found nothing right after a write of the key returned, with no other op near.
    assert.equal(verdict([...history, set("x", "solo", after, after + 1), remove("y", false, after + 2, after + 3)].map((op) => ({ ...op, key: op.key === "k" ? "k9" : op.key }))), false);
  });

  it(`finds a ${runtime} process's own history linearizable: 8 writers and readers on 6 keys, with removes`, async () => {
    const [node] = await cluster("linear-", [runtime]);
    const history = await node.run({ ...workload(11, 1_500), maxOps: 20_000 });
    const report = checkLinearizable(history);
    console.log(`linearizability, one ${runtime} process: ${report.ops} ops on ${report.keys} keys, ${report.violations.length} keys not linearizable, ${report.undecided.length} undecided`);
    assert.ok(history.filter((op) => op.kind === "remove" && op.existed !== undefined).length > 0, "removes that recorded what they found");
    assert.deepEqual([report.violations.map((violation) => violation.key), report.undecided], [[], []]);
  }, 30_000);
});
