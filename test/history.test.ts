// The coherence checker of test/history.ts on small hand-written histories: what it must flag
// and what it must accept.
import { assert, describe, it } from "../deps.ts";
import { divergentKeys, findStaleReads, type Op } from "./history.ts";

/** An op on key "k": `set(node, value, start, end)` and so on. */
const set = (node: string, value: string, start: number, end: number, ok = true): Op => ({ node, kind: "set", key: "k", value, start, end, ok });
const remove = (node: string, start: number, end: number, ok = true): Op => ({ node, kind: "remove", key: "k", value: null, start, end, ok });
const get = (node: string, value: string | null, start: number, end: number, ok = true): Op => ({ node, kind: "get", key: "k", value, start, end, ok });

describe("findStaleReads", () => {
  it("findStaleReads flags a value that an acknowledged later set had replaced before the read began", () => {
    const older = set("a", "a:1", 0, 10);
    const newer = set("b", "b:1", 20, 30);
    const read = get("c", "a:1", 40, 50);
    const violations = findStaleReads([older, newer, read]);
    assert.equal(violations.length, 1);
    assert.equal(violations[0].read, read);
    assert.equal(violations[0].superseding, newer);
  });

  it("findStaleReads flags a value that an acknowledged remove had dropped before the read began", () => {
    const removal = remove("b", 20, 30);
    const violations = findStaleReads([set("a", "a:1", 0, 10), removal, get("c", "a:1", 40, 50)]);
    assert.deepEqual(violations.map((v) => v.superseding), [removal]);
  });

  it("findStaleReads flags null read after an acknowledged set when every remove ended before that set began", () => {
    const written = set("b", "b:1", 20, 30);
    const read = get("c", null, 40, 50);
    const violations = findStaleReads([remove("a", 0, 10), written, read]);
    assert.equal(violations.length, 1);
    assert.equal(violations[0].read, read);
    assert.equal(violations[0].superseding, written);
  });

  it("findStaleReads flags null read after an acknowledged set of a key never removed", () => {
    assert.equal(findStaleReads([set("a", "a:1", 0, 10), get("b", null, 20, 30)]).length, 1);
  });

  it("findStaleReads flags a value no set of the key wrote, even one written to another key", () => {
    const elsewhere: Op = { ...set("a", "a:7", 0, 10), key: "other" };
    const read = get("b", "a:7", 20, 30);
    const violations = findStaleReads([elsewhere, read]);
    assert.equal(violations.length, 1);
    assert.equal(violations[0].read, read);
    assert.match(violations[0].reason, /no set/);
  });

  it("findStaleReads accepts either value of two overlapping sets, before and after both ended", () => {
    const first = set("a", "a:1", 0, 20);
    const second = set("b", "b:1", 10, 30);
    for (const value of ["a:1", "b:1"]) {
      assert.deepEqual(findStaleReads([first, second, get("c", value, 40, 50)]), []);
      assert.deepEqual(findStaleReads([first, second, get("c", value, 15, 25)]), []);
    }
  });

  it("findStaleReads accepts a value whose set had not been acknowledged yet, and the value it replaces", () => {
    const old = set("a", "a:1", 0, 10);
    const pending = set("b", "b:1", 20, 60);
    assert.deepEqual(findStaleReads([old, pending, get("c", "b:1", 30, 40)]), []);
    assert.deepEqual(findStaleReads([old, pending, get("c", "a:1", 30, 40)]), []);
  });

  it("findStaleReads accepts the value of a failed set at any time after it began", () => {
    const failed = set("a", "a:1", 0, 10, false);
    const later = set("b", "b:1", 20, 30);
    assert.deepEqual(findStaleReads([failed, later, get("c", "a:1", 40, 50)]), []);
  });

  it("findStaleReads accepts null after a remove that followed the last set, and before any set", () => {
    assert.deepEqual(findStaleReads([set("a", "a:1", 0, 10), remove("b", 20, 30), get("c", null, 40, 50)]), []);
    assert.deepEqual(findStaleReads([get("c", null, 0, 5), set("a", "a:1", 10, 20)]), []);
  });

  it("findStaleReads accepts null when a remove overlapping the set may have come after it", () => {
    assert.deepEqual(findStaleReads([remove("b", 0, 15), set("a", "a:1", 10, 20), get("c", null, 40, 50)]), []);
    // A remove still under way while the read runs may be ordered before the read.
    assert.deepEqual(findStaleReads([set("a", "a:1", 0, 10), remove("b", 45, 60), get("c", null, 40, 50)]), []);
  });

  it("findStaleReads accepts null after a failed remove, even one that ended before the set began", () => {
    assert.deepEqual(findStaleReads([remove("b", 0, 5, false), set("a", "a:1", 10, 20), get("c", null, 40, 50)]), []);
  });

  it("findStaleReads flags null when the only remove began after the read ended", () => {
    assert.equal(findStaleReads([set("a", "a:1", 0, 10), get("c", null, 20, 30), remove("b", 40, 50)]).length, 1);
  });

  it("findStaleReads ignores failed reads", () => {
    assert.deepEqual(findStaleReads([set("a", "a:1", 0, 10), set("b", "b:1", 20, 30), get("c", "a:1", 40, 50, false)]), []);
  });

  it("findStaleReads ignores reads and superseding writes that overlap an exclude window", () => {
    const history = [set("a", "a:1", 0, 10), set("b", "b:1", 20, 30), get("c", "a:1", 40, 50), get("c", "a:1", 70, 80)];
    assert.equal(findStaleReads(history).length, 2);
    // The window covers the superseding set: neither read is certain to be stale.
    assert.deepEqual(findStaleReads(history, { exclude: [{ from: 25, to: 26 }] }), []);
    // The window covers the first read only.
    assert.deepEqual(findStaleReads(history, { exclude: [{ from: 45, to: 60 }] }).map((v) => v.read.start), [70]);
  });

  it("findStaleReads still counts an excluded set as the source of a value and an excluded remove as a later remove", () => {
    const window = { exclude: [{ from: 5, to: 12 }] };
    assert.deepEqual(findStaleReads([set("a", "a:1", 0, 10), get("c", "a:1", 40, 50)], window), []);
    assert.deepEqual(findStaleReads([set("a", "a:1", 0, 4), remove("b", 6, 8), get("c", null, 40, 50)], window), []);
  });

  it("findStaleReads believes an order only when the gap exceeds slackMs", () => {
    const history = [set("a", "a:1", 0, 10), set("b", "b:1", 11, 20), get("c", "a:1", 21, 30)];
    assert.equal(findStaleReads(history).length, 1);
    assert.deepEqual(findStaleReads(history, { slackMs: 1 }), []);
  });

  it("findStaleReads flags a value read after its set's ttl was up, and accepts it before", () => {
    const expiring = { ...set("a", "a:1", 0, 10), ttl: 100 };
    const late = get("b", "a:1", 121, 125);
    assert.deepEqual(findStaleReads([expiring, late], { ttlSlackMs: 10 }).map((v) => v.read), [late]);
    assert.deepEqual(findStaleReads([expiring, get("b", "a:1", 119, 125)], { ttlSlackMs: 10 }), []);
  });

  it("findStaleReads accepts null once a set's ttl can be up, and flags it before", () => {
    const expiring = { ...set("a", "a:1", 0, 10), ttl: 100 };
    assert.deepEqual(findStaleReads([expiring, get("b", null, 80, 95)], { ttlSlackMs: 10 }), []);
    assert.equal(findStaleReads([expiring, get("b", null, 20, 85)], { ttlSlackMs: 10 }).length, 1);
  });

  it("findStaleReads accepts null once an overlapping set with a ttl, which may have come last, can have expired", () => {
    const lasting = set("a", "a:1", 0, 10);
    const expiring = { ...set("b", "b:1", 5, 12), ttl: 50 };
    assert.deepEqual(findStaleReads([lasting, expiring, get("c", null, 70, 75)], { ttlSlackMs: 5 }), []);
    // One that certainly came before the lasting set cannot explain the null.
    const earlier = { ...set("b", "b:1", 0, 4), ttl: 50 };
    assert.equal(findStaleReads([earlier, { ...lasting, start: 6 }, get("c", null, 70, 75)], { ttlSlackMs: 5 }).length, 1);
  });

  it("findStaleReads lets a read that asks for stale values read an entry for its grace past its ttl, and only that one", () => {
    const graced = { ...set("a", "a:1", 0, 10), ttl: 100, grace: 200 };
    const stale = (read: Op): Op => ({ ...read, stale: true });
    // A plain read past the ttl is flagged, grace or not; a stale one within the grace is not.
    assert.equal(findStaleReads([graced, get("b", "a:1", 121, 125)], { ttlSlackMs: 10 }).length, 1);
    assert.deepEqual(findStaleReads([graced, stale(get("b", "a:1", 300, 305))], { ttlSlackMs: 10 }), []);
    const late = stale(get("b", "a:1", 321, 325));
    const violations = findStaleReads([graced, late], { ttlSlackMs: 10 });
    assert.deepEqual(violations.map((v) => v.read), [late]);
    assert.match(violations[0].reason, /its ttl of 100 ms and grace of 200 ms were up before the read began \(set "a:1" on a \[0.0, 10.0\]\)/);
    // Within the grace a stale read must find the entry; past the ttl a plain read may not.
    assert.equal(findStaleReads([graced, stale(get("b", null, 150, 160))], { ttlSlackMs: 10 }).length, 1);
    assert.deepEqual(findStaleReads([graced, get("b", null, 150, 160)], { ttlSlackMs: 10 }), []);
    assert.deepEqual(findStaleReads([graced, stale(get("b", null, 300, 305))], { ttlSlackMs: 10 }), []);
  });

  it("findStaleReads keeps keys apart", () => {
    const other: Op = { ...set("b", "b:1", 20, 30), key: "other" };
    assert.deepEqual(findStaleReads([set("a", "a:1", 0, 10), other, get("c", "a:1", 40, 50)]), []);
  });

  it("findStaleReads checks 50,000 ops on a few keys in well under a second", () => {
    const history: Op[] = [];
    for (let i = 0; i < 50_000; i++) {
      const key = `k${i % 6}`;
      const t = i * 0.1;
      // Each read returns the value of the set 6 ops before it, on its own key: always the latest.
      if (i % 12 < 6) history.push({ node: "a", kind: "set", key, value: `a:${i}`, start: t, end: t + 0.05, ok: true });
      else history.push({ node: "b", kind: "get", key, value: `a:${i - 6}`, start: t, end: t + 0.05, ok: true });
    }
    const began = performance.now();
    assert.deepEqual(findStaleReads(history), []);
    assert.ok(performance.now() - began < 1_000, `took ${performance.now() - began} ms`);
    // The same history with the reads moved one write later is all stale.
    const stale = history.map((op) => (op.kind === "get" ? { ...op, start: op.start + 1.2, end: op.end + 1.2 } : op));
    assert.ok(findStaleReads(stale).length > 20_000);
  });
});

describe("divergentKeys", () => {
  it("divergentKeys names the keys on which two nodes differ, a missing key counting as null", () => {
    const views = {
      a: { x: "a:1", y: null, z: "a:2" },
      b: { x: "a:1", y: "b:1", z: "a:2" },
      c: { x: "a:1", y: null },
    };
    assert.deepEqual(divergentKeys(views), ["y", "z"]);
    assert.deepEqual(divergentKeys({ a: { x: "a:1", y: null }, b: { x: "a:1" } }), []);
  });
});
