// The Directory on its own, with no sockets: who holds which key, and which write wins.
import { assert, describe, it, ManualClock } from "../deps.ts";
import { Directory, Store } from "../mod.ts";

const UNBOUNDED = { maxEntries: Infinity, maxBytes: Infinity };

/** One node's directory and store, on a shared hand-moved clock. */
function nodeOf(id: string, clock: ManualClock, limits = UNBOUNDED) {
  const gone: Array<[string, number]> = [];
  const store = new Store(limits, clock, (entry) => void gone.push([entry.key, entry.version]));
  return { id, store, directory: new Directory(id, store, clock), gone };
}

/** What a node tells a peer when they (re)connect: every local key, version and ttl left. */
function keyList(node: ReturnType<typeof nodeOf>): Array<[string, number, number]> {
  return [...node.store.live()].map((entry) => [entry.key, entry.version, node.store.ttlOf(entry)]);
}

/** Who a node says holds `key`: itself, a peer's id, or nobody. */
function holderSeenBy(node: ReturnType<typeof nodeOf>, key: string): string | undefined {
  return node.store.peek(key) !== undefined ? node.id : node.directory.holderOf(key)?.holder;
}

describe("Directory", () => {
  it("a removal refuses, for removalMemory, an announcement, a copy, a hand-over or a claim of an older write that arrives after it, and takes a newer one", () => {
    const clock = new ManualClock();
    const store = new Store(UNBOUNDED, clock, () => {});
    const a = new Directory("a", store, clock, undefined, false, 1_000);
    // b wrote k at version 5 and c removed it at version 7; the removal reaches a first, and
    // what b sent of its write before it (queued behind other requests) comes after.
    a.drop("k", "c", 7);
    assert.equal(a.own("k", "b", 5, 0), false);
    assert.equal(a.keepCopy("k", "v", 1, 0, 5, "b", "b"), true);
    assert.equal(a.adopt("k", "v", 1, 0, 5, "b"), false);
    a.moved("k", "d", "b", 5, 0, "b");
    assert.equal(store.peek("k"), undefined, "no entry or copy here");
    assert.equal(a.holderOf("k"), undefined, "no holder known");
    // A member that missed the removal lists the key when it connects again: it comes back.
    assert.equal(a.own("k", "b", 5, 0, "b", true), true);
    assert.equal(a.own("k", "b", 8, 0), true, "a newer write is taken");
    // A removal made here is remembered too, and a write made here replaces it.
    const removed = a.remove("j");
    assert.equal(a.own("j", "b", removed - 1, 0), false);
    a.write("j", "again", 5, 0);
    assert.equal(store.peek("j")?.value, "again");
    // Past removalMemory, nothing is left to refuse an older write.
    a.drop("m", "c", 20);
    clock.advance(1_001);
    assert.equal(a.own("m", "b", 19, 0), true);
  });

  it("a clear drops older local entries and holders, refuses older writes that arrive after it, and takes newer ones", () => {
    const clock = new ManualClock();
    const a = nodeOf("a", clock);
    a.directory.write("mine", 1, 5, 0);
    a.directory.own("theirs", "b", 3, 0);
    a.directory.clearOlder(10, "c");
    assert.deepEqual([holderSeenBy(a, "mine"), holderSeenBy(a, "theirs")], [undefined, undefined]);
    // An own sent before the clear and received after it is refused, as is a hand-over of such a write.
    assert.equal(a.directory.own("late", "b", 9, 0), false);
    assert.equal(a.directory.adopt("late", 1, 5, 0, 10, "b"), false);
    assert.equal(holderSeenBy(a, "late"), undefined);
    assert.equal(a.directory.own("newer", "b", 11, 0), true);
    // A write made here after the clear takes a version above it.
    assert.ok(a.directory.write("fresh", 1, 6, 0) > 10);
  });

  it("a local write takes a version above every version seen from peers", () => {
    const clock = new ManualClock();
    const a = nodeOf("a", clock);
    assert.equal(a.directory.write("x", 1, 2, 0), 1);
    a.directory.own("y", "b", 41, 0);
    assert.equal(a.directory.write("x", 2, 2, 0), 42);
    a.directory.drop("z", "c", 99);
    assert.equal(a.directory.remove("x"), 100);
    a.directory.gone("w", "b", 120);
    assert.equal(a.directory.write("x", 3, 2, 0), 121);
  });

  it("a newer write announced by a peer replaces the local entry; an older one is ignored", () => {
    const clock = new ManualClock();
    const a = nodeOf("a", clock);
    const version = a.directory.write("k", "mine", 6, 0);
    assert.equal(a.directory.own("k", "b", version - 1, 0), false);
    assert.equal(a.store.peek("k")?.value, "mine");
    assert.equal(a.directory.holderOf("k"), undefined);
    assert.equal(a.directory.own("k", "b", version + 1, 0), true);
    assert.equal(a.store.peek("k"), undefined);
    assert.deepEqual(a.directory.holderOf("k"), { holder: "b", version: version + 1, writer: "b", expires: 0, grace: 0 });
  });

  it("of two writes with the same version, the larger writer id wins", () => {
    const clock = new ManualClock();
    const b = nodeOf("b", clock);
    const version = b.directory.write("k", "from b", 8, 0);
    assert.equal(b.directory.own("k", "a", version, 0), false);
    assert.equal(b.directory.own("k", "c", version, 0), true);
    assert.equal(b.directory.holderOf("k")?.holder, "c");
    assert.equal(b.directory.own("k", "a", version, 0), false, "a known holder is compared just as a local entry is");
  });

  it("two nodes that wrote the same keys apart settle every key the same way once they exchange key lists", () => {
    const clock = new ManualClock();
    const a = nodeOf("a", clock);
    const b = nodeOf("b", clock);
    // Different histories, so that versions differ on some keys and tie on others.
    for (let i = 0; i < 20; i++) a.directory.write(`k${i}`, `a${i}`, 4, 0);
    for (let i = 0; i < 20; i += 2) b.directory.write(`k${i}`, `b${i}`, 4, 0);
    for (let i = 1; i < 20; i += 3) b.directory.write(`k${i}`, `b${i}`, 4, 0);
    const [fromA, fromB] = [keyList(a), keyList(b)];
    for (const [key, version, ttl] of fromA) b.directory.own(key, "a", version, ttl);
    for (const [key, version, ttl] of fromB) a.directory.own(key, "b", version, ttl);
    for (let i = 0; i < 20; i++) {
      const key = `k${i}`;
      const winner = holderSeenBy(a, key);
      assert.equal(holderSeenBy(b, key), winner, `both agree on ${key}`);
      const loser = winner === "a" ? b : a;
      assert.equal(loser.store.peek(key), undefined, `the losing copy of ${key} is gone`);
    }
  });

  it("a removal drops older entries and holders and leaves newer ones", () => {
    const clock = new ManualClock();
    const a = nodeOf("a", clock);
    const version = a.directory.write("mine", 1, 5, 0);
    a.directory.own("theirs", "b", 10, 0);
    a.directory.drop("mine", "c", version - 1);
    a.directory.drop("theirs", "c", 9);
    assert.ok(a.store.peek("mine") !== undefined && a.directory.holderOf("theirs") !== undefined);
    a.directory.drop("mine", "c", 11);
    a.directory.drop("theirs", "c", 11);
    assert.equal(a.store.peek("mine"), undefined);
    assert.equal(a.directory.holderOf("theirs"), undefined);
  });

  it("gone forgets only the exact holding it names, so a newer holder learned first stays", () => {
    const clock = new ManualClock();
    const a = nodeOf("a", clock);
    a.directory.own("k", "b", 5, 0);
    // c's newer write arrives before b's answer that it no longer holds version 5.
    a.directory.own("k", "c", 7, 0);
    a.directory.gone("k", "b", 5);
    assert.equal(a.directory.holderOf("k")?.holder, "c");
    a.directory.gone("k", "c", 6);
    assert.equal(a.directory.holderOf("k")?.holder, "c");
    a.directory.gone("k", "c", 7);
    assert.equal(a.directory.holderOf("k"), undefined);
  });

  it("a peer's keys are forgotten all at once when it is lost, and no other peer's", () => {
    const clock = new ManualClock();
    const a = nodeOf("a", clock);
    for (let i = 0; i < 10; i++) a.directory.own(`k${i}`, i % 2 === 0 ? "b" : "c", i + 1, 0);
    a.directory.forgetHolder("b");
    assert.equal(a.directory.remoteCount, 5);
    for (let i = 0; i < 10; i++) assert.equal(a.directory.holderOf(`k${i}`)?.holder, i % 2 === 0 ? undefined : "c");
  });

  it("holders past the 1,024 numbered slots and versions past 2^43 are kept as exactly as the rest", () => {
    const clock = new ManualClock();
    const a = nodeOf("a", clock);
    // Small and large versions alike, by holders with a slot and by holders past the last one.
    const versionOf = (i: number) => (i % 2 === 0 ? 2 ** 50 - i : i + 1);
    for (let i = 0; i < 1100; i++) a.directory.own(`k${i}`, `holder${i}`, versionOf(i), 0);
    a.directory.own("small", "holder5", 3, 0);
    for (let i = 0; i < 1100; i++) assert.deepEqual(a.directory.holderOf(`k${i}`), { holder: `holder${i}`, version: versionOf(i), writer: `holder${i}`, expires: 0, grace: 0 });
    assert.deepEqual(a.directory.holderOf("small"), { holder: "holder5", version: 3, writer: "holder5", expires: 0, grace: 0 });
    a.directory.forgetHolder("holder5");
    assert.equal(a.directory.holderOf("small"), undefined);
    assert.equal(a.directory.holderOf("k5"), undefined);
    // The slot holder5 had is given to the next new holder; nobody else's keys move.
    a.directory.own("newcomer", "holder-new", 7, 0);
    assert.equal(a.directory.holderOf("newcomer")?.holder, "holder-new");
    assert.equal(a.directory.holderOf("k6")?.holder, "holder6");
    assert.equal(a.directory.remoteCount, 1100);
  });

  it("a remote entry with a ttl is forgotten when its time is up on the node's clock", () => {
    const clock = new ManualClock();
    const a = nodeOf("a", clock);
    a.directory.own("short", "b", 1, 1_000);
    a.directory.own("forever", "b", 2, 0);
    clock.advance(999);
    assert.equal(a.directory.holderOf("short")?.holder, "b");
    clock.advance(1);
    assert.equal(a.directory.holderOf("short"), undefined);
    assert.equal(a.directory.holderOf("forever")?.holder, "b");
  });

  it("local writes past maxEntries evict the least recently used entry and report it with its version", () => {
    const clock = new ManualClock();
    const a = nodeOf("a", clock, { maxEntries: 2, maxBytes: Infinity });
    const first = a.directory.write("one", 1, 4, 0);
    a.directory.write("two", 2, 4, 0);
    a.directory.write("three", 3, 6, 0);
    assert.equal(a.store.size, 2);
    assert.deepEqual(a.gone, [["one", first]]);
  });

  it("a holder's gone takes the copy kept here of that write with it, and no other entry", () => {
    const clock = new ManualClock();
    const c = nodeOf("c", clock);
    assert.equal(c.directory.keepCopy("k", "v", 2, 0, 5, "a", "a"), true);
    c.directory.gone("k", "b", 5);
    c.directory.gone("k", "a", 4);
    assert.equal(c.store.peek("k")?.copyOf, "a", "another holder's gone, or another version's, leaves the copy");
    c.directory.gone("k", "a", 5);
    assert.equal(holderSeenBy(c, "k"), undefined);
    assert.equal(c.store.copies, 0);
  });

  it("a copy of a write that moved to another member is kept for that member, and goes with its gone", () => {
    const clock = new ManualClock();
    const c = nodeOf("c", clock);
    c.directory.keepCopy("k", "v", 2, 0, 5, "h", "h");
    assert.equal(c.directory.moved("k", "heir", "h", 5, 0, "h"), true);
    assert.equal(c.store.peek("k")?.copyOf, "heir");
    c.directory.gone("k", "heir", 5);
    assert.equal(holderSeenBy(c, "k"), undefined);
  });

  it("two members that claim one write settle on the same one on every node, whatever the order, and the other keeps a copy", () => {
    const clock = new ManualClock();
    for (const [x, y] of [["x", "y"], ["p", "q"], ["m1", "m2"]]) {
      // Two bystanders hear the claims in opposite orders.
      const [first, second] = [nodeOf("first", clock), nodeOf("second", clock)];
      for (const node of [first, second]) node.directory.own("k", "h", 5, 0);
      first.directory.moved("k", x, "h", 5, 0, "h");
      first.directory.moved("k", y, "h", 5, 0, "h");
      second.directory.moved("k", y, "h", 5, 0, "h");
      second.directory.moved("k", x, "h", 5, 0, "h");
      const winner = holderSeenBy(first, "k")!;
      assert.equal(holderSeenBy(second, "k"), winner);
      // Each claimant holds the write as its own and hears the other's claim.
      const [nodeX, nodeY] = [nodeOf(x, clock), nodeOf(y, clock)];
      nodeX.directory.adopt("k", "v", 2, 0, 5, "h");
      nodeY.directory.adopt("k", "v", 2, 0, 5, "h");
      const refusedByX = !nodeX.directory.moved("k", y, "h", 5, 0, "h");
      const refusedByY = !nodeY.directory.moved("k", x, "h", 5, 0, "h");
      assert.deepEqual([refusedByX, refusedByY], [winner === x, winner === y], "the winner refuses the other's claim");
      const loser = winner === x ? nodeY : nodeX;
      assert.equal(loser.store.peek("k")?.copyOf, winner, "the loser keeps a copy of the winner's");
      // A copy sent by the loser does not make the winner's entry a copy: the claim is refused.
      const winnerNode = winner === x ? nodeX : nodeY;
      assert.equal(winnerNode.directory.keepCopy("k", "v", 2, 0, 5, "h", loser.id), false);
      assert.equal(winnerNode.store.peek("k")?.copyOf, undefined);
      // A copy kept elsewhere follows the winner's claim, whichever claim came first.
      for (const claims of [[winner, loser.id], [loser.id, winner]]) {
        const keeper = nodeOf("keeper", clock);
        for (const claimant of claims) keeper.directory.keepCopy("k", "v", 2, 0, 5, "h", claimant);
        assert.equal(keeper.store.peek("k")?.copyOf, winner);
      }
    }
  });

  it("a member taken for dead keeps its entry when another claims to have taken it over, as its own or as the claimant's copy; a leaving one lets it go", () => {
    const clock = new ManualClock();
    for (const claimant of ["c1", "c2", "c3", "c4"]) {
      const holder = nodeOf("h", clock);
      holder.directory.write("k", "v", 2, 0);
      const { version } = holder.store.peek("k")!;
      const refused = !holder.directory.moved("k", claimant, "h", version, 0, "h");
      const kept = holder.store.peek("k");
      assert.ok(kept !== undefined, `the entry stays when ${claimant} claims it`);
      // Refused: the claimant is told to keep its entry as a copy; else this one is its copy.
      assert.equal(kept.copyOf, refused ? undefined : claimant);
      const leaving = nodeOf("h", clock);
      leaving.directory.write("k", "v", 2, 0);
      assert.equal(leaving.directory.moved("k", claimant, "h", leaving.store.peek("k")!.version, 0, "h", true), true);
      assert.equal(leaving.store.peek("k"), undefined, "a leaving member's entry goes to its heir");
      assert.equal(holderSeenBy(leaving, "k"), claimant);
    }
  });

  it("a holder presumed after its holder died gives way to any member that took the write over", () => {
    const clock = new ManualClock();
    // A claimant that the presumed holder outranks: a plain record of the presumed holder keeps it.
    const outranked = Array.from({ length: 32 }, (_, i) => `claimant${i}`).find((claimant) => {
      const bystander = nodeOf("bystander", clock);
      bystander.directory.own("k", "presumed", 5, 0, "h");
      bystander.directory.moved("k", claimant, "h", 5, 0, "h");
      return holderSeenBy(bystander, "k") === "presumed";
    });
    assert.ok(outranked !== undefined, "one of 32 ids ranks below the presumed holder");
    const a = nodeOf("a", clock);
    a.directory.own("k", "h", 5, 0);
    a.directory.forgetHolder("h", () => "presumed");
    assert.equal(holderSeenBy(a, "k"), "presumed");
    a.directory.moved("k", outranked, "h", 5, 0, "h");
    assert.equal(holderSeenBy(a, "k"), outranked);
  });

  it("a holder presumed after its holder was taken for dead gives way to that holder when it comes back and lists the write", () => {
    const clock = new ManualClock();
    const a = nodeOf("a", clock);
    a.directory.own("k", "h", 5, 0);
    // A spurious timeout: h is forgotten, its key presumed at the member that keeps its copy.
    a.directory.forgetHolder("h", () => "keeper");
    assert.equal(holderSeenBy(a, "k"), "keeper");
    // h reconnects and lists the key: the same write, which it really holds.
    assert.equal(a.directory.own("k", "h", 5, 0), true);
    assert.equal(holderSeenBy(a, "k"), "h");
    // Once known for a fact, a holder gives way only to a newer write.
    assert.equal(a.directory.own("k", "keeper", 5, 0, "h"), false);
    assert.equal(holderSeenBy(a, "k"), "h");
  });
});
