/**
 * A coherence checker over recorded histories of gets, sets and removes, for the suite's
 * multi-process tests. Pure code: no I/O, no clock.
 *
 * Clients never learn the order in which the cluster applied their writes, so the checker flags
 * only what is certain from the clients' own timings: a read that returned a value which an
 * acknowledged write had definitely replaced before the read began, a `null` although an
 * acknowledged set definitely came after every remove that could explain it, and a value that
 * nobody wrote. A correct (linearizable) history is never flagged. An entry with a `ttl` expires:
 * it may not be read after its ttl, unless the read asked for stale values (`stale`), which may
 * read it for its `grace` longer, and must until then.
 *
 * @module
 */

/** One operation as a client saw it. */
export interface Op {
  /** The name of the node the client called. */
  node: string;
  kind: "set" | "remove" | "get";
  key: string;
  /** set: the value written (unique per write, `${node}:${n}`); remove: null; get: the value read (null: nothing). */
  value: string | null;
  /** When the call began, in ms (performance.timeOrigin + performance.now(): one clock for every process of a machine). */
  start: number;
  /** When the call returned or gave up, in ms. */
  end: number;
  /** false: the call failed or timed out. A failed read is ignored; a failed write may have taken effect, at any time after `start`. */
  ok: boolean;
  /** set, not ok: no call failed; a loader's value that may have been stored, at any time after `start` (a refresh in the background). */
  maybe?: boolean;
  /** set: the ms its entry lives (absent or 0: until replaced or removed). */
  ttl?: number;
  /** set with a ttl: the ms its entry is kept past it, stale, for reads that ask for stale values. */
  grace?: number;
  /** get: the read asked for stale values (a get with allowStale, or a getOrSet). */
  stale?: boolean;
  /** remove, where recorded: whether it found the key (what `remove` resolved with). */
  existed?: boolean;
}

/** A read that cannot be explained by any order of the writes consistent with the clients' timings. */
export interface Violation {
  read: Op;
  reason: string;
  /**
   * The write the read missed: the set or remove that had replaced the value read, or the set
   * that no remove can have undone. For a value that nobody wrote, the read itself.
   */
  superseding: Op;
}

/** A span of time, in the clock of {@linkcode Op.start}. */
export interface Window {
  from: number;
  to: number;
}

/** How {@linkcode findStaleReads} treats the history. */
export interface CheckOptions {
  /**
   * Faults: every op whose [start, end] overlaps one of these windows is neither checked as a
   * read nor used as a superseding write. It still counts as the possible source of a value read
   * and as a possible later remove.
   */
  exclude?: Window[];
  /**
   * How far apart the clocks of two processes may be, in ms: "a ended before b began" is only
   * believed when `a.end + slackMs < b.start`. Default 0.
   */
  slackMs?: number;
  /**
   * How far the nodes' TTL clock (Date.now, in whole ms) may be from the ops' clock: a set with
   * a `ttl` expires at its latest `ttlSlackMs` after `end + ttl`, at its earliest as much before
   * `start + ttl`. Default 10.
   */
  ttlSlackMs?: number;
}

// ─── The check ───────────────────────────────────────────────────────────────────────────────

/**
 * The successful reads of `history` that no order of its writes can explain (see the module
 * documentation). Runs in O(n log n): the ops are grouped by key and each read is answered by a
 * binary search over the key's writes.
 */
export function findStaleReads(history: Op[], options: CheckOptions = {}): Violation[] {
  const exclude = options.exclude ?? [];
  const slack = options.slackMs ?? 0;
  const ttlSlack = options.ttlSlackMs ?? 10;
  const excluded = (op: Op) => exclude.some((w) => op.start <= w.to && op.end >= w.from);
  const byKey = new Map<string, Op[]>();
  for (const op of history) {
    const ops = byKey.get(op.key);
    if (ops === undefined) byKey.set(op.key, [op]);
    else ops.push(op);
  }
  const violations: Violation[] = [];
  for (const ops of byKey.values()) checkKey(ops, excluded, slack, ttlSlack, violations);
  return violations;
}

/** When a write may have taken effect at the latest: a failed write, at any time. */
function latestEffect(op: Op): number {
  return op.ok ? op.end : Infinity;
}

function checkKey(ops: Op[], excluded: (op: Op) => boolean, slack: number, ttlSlack: number, out: Violation[]): void {
  const sources = new Map<string, Op>();
  for (const op of ops) if (op.kind === "set" && op.value !== null) sources.set(op.value, op);
  // Writes that certainly took effect by their end, and may supersede: by end, each with the
  // write of the greatest start among those ending no later.
  const superseding = new LatestStart(ops.filter((op) => op.kind !== "get" && op.ok && !excluded(op)));
  const sets = new LatestStart(ops.filter((op) => op.kind === "set" && op.ok && !excluded(op)));
  // Every remove, failed and excluded ones too: by start, with the latest possible effect of
  // any remove starting no later.
  const removes = ops.filter((op) => op.kind === "remove").sort((a, b) => a.start - b.start);
  // Sets with a ttl, by start, and the longest any op took: a set that began longer than that
  // before another ended before the other began.
  const expiring = ops.filter((op) => op.kind === "set" && op.ttl).sort((a, b) => a.start - b.start);
  const longest = ops.reduce((most, op) => Math.max(most, op.end - op.start), 0);
  /** How long `set`'s entry is there for `read`: its ttl, and for a read that asks for stale values, its grace too. */
  const lifeFor = (set: Op, read: Op): number => set.ttl! + (read.stale ? set.grace ?? 0 : 0);
  /** Whether a set with a ttl that did not certainly come before `set` can have expired before `read` ended. */
  const expiredSince = (set: Op, read: Op): boolean => {
    for (let i = lastIndexAtMost(expiring, (op) => op.start, read.end + slack); i >= 0; i--) {
      const op = expiring[i];
      if (op.start < set.start - longest - slack) return false;
      if (latestEffect(op) + slack >= set.start && op.start + lifeFor(op, read) - ttlSlack <= read.end) return true;
    }
    return false;
  };
  const latestRemoveEffect: number[] = [];
  for (const [i, remove] of removes.entries()) {
    latestRemoveEffect.push(Math.max(latestEffect(remove), i > 0 ? latestRemoveEffect[i - 1] : -Infinity));
  }

  for (const read of ops) {
    if (read.kind !== "get" || !read.ok || excluded(read)) continue;
    if (read.value !== null) {
      const source = sources.get(read.value);
      if (source === undefined) {
        out.push({ read, superseding: read, reason: `read ${quote(read.value)}, which no set of ${quote(read.key)} wrote` });
        continue;
      }
      // The write that began last among those that ended before the read began.
      const later = superseding.before(read.start - slack);
      if (later !== undefined && later.start - slack > latestEffect(source)) {
        out.push({
          read,
          superseding: later,
          reason: `read ${quote(read.value)} of ${quote(read.key)}, but ${describe(later)} had replaced it before the read began`,
        });
      } else if (source.ok && source.ttl && read.start > source.end + lifeFor(source, read) + ttlSlack) {
        const life = read.stale && source.grace ? `ttl of ${source.ttl} ms and grace of ${source.grace} ms were` : `ttl of ${source.ttl} ms was`;
        out.push({
          read,
          superseding: source,
          reason: `read ${quote(read.value)} of ${quote(read.key)}, but its ${life} up before the read began (${describe(source)})`,
        });
      }
    } else {
      // The set that began last among those that ended before the read began: if any set
      // proves the null stale, this one does.
      const set = sets.before(read.start - slack);
      // No set, or one that may have been followed by a set whose entry expired before the read ended.
      if (set === undefined || expiredSince(set, read)) continue;
      // A remove can explain the null only if it can have taken effect after the set began and
      // before the read ended.
      const i = lastIndexAtMost(removes, (remove) => remove.start, read.end + slack);
      const undone = i >= 0 && latestRemoveEffect[i] + slack >= set.start;
      if (!undone) {
        out.push({
          read,
          superseding: set,
          reason: `read null of ${quote(read.key)}, but ${describe(set)} ended before the read began and no remove can have followed it`,
        });
      }
    }
  }
}

/** Writes sorted by end; answers "which of those that ended before t began last". */
class LatestStart {
  readonly #byEnd: Op[];
  readonly #latest: Op[] = [];

  constructor(writes: Op[]) {
    this.#byEnd = writes.sort((a, b) => a.end - b.end);
    for (const [i, op] of this.#byEnd.entries()) {
      const before = this.#latest[i - 1];
      this.#latest.push(before !== undefined && before.start >= op.start ? before : op);
    }
  }

  /** The write with the greatest start among those whose end is before `t`. */
  before(t: number): Op | undefined {
    const i = lastIndexAtMost(this.#byEnd, (op) => op.end, t, true);
    return i >= 0 ? this.#latest[i] : undefined;
  }
}

/** The last index of `sorted` (ascending by `by`) whose value is <= `limit` (< when `strict`), or -1. */
function lastIndexAtMost<T>(sorted: T[], by: (item: T) => number, limit: number, strict = false): number {
  let low = 0;
  let high = sorted.length;
  while (low < high) {
    const mid = (low + high) >>> 1;
    const v = by(sorted[mid]);
    if (strict ? v < limit : v <= limit) low = mid + 1;
    else high = mid;
  }
  return low - 1;
}

function describe(op: Op): string {
  const what = op.kind === "set" ? `set ${quote(op.value)}` : "remove";
  return `${what} on ${op.node} [${op.start.toFixed(1)}, ${op.end.toFixed(1)}]`;
}

function quote(value: unknown): string {
  return JSON.stringify(value);
}

// ─── Agreement ───────────────────────────────────────────────────────────────────────────────

/**
 * The keys on which the nodes' views disagree, sorted. A key missing from a node's view counts
 * as `null` there.
 *
 * @param views Per node name, what that node read for each key.
 */
export function divergentKeys(views: Record<string, Record<string, string | null>>): string[] {
  const nodes = Object.values(views);
  const keys = new Set(nodes.flatMap((view) => Object.keys(view)));
  return [...keys].filter((key) => new Set(nodes.map((view) => view[key] ?? null)).size > 1).sort();
}

/** A one-line account of a violation, for failure messages. */
export function explain(violation: Violation): string {
  const { read } = violation;
  return `${read.node} get [${read.start.toFixed(1)}, ${read.end.toFixed(1)}]: ${violation.reason}`;
}
