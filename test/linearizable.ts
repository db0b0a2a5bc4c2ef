// A linearizability checker for recorded histories of one cache (see test/history.ts for Op): does
// every operation on a key appear to take effect at one instant between its call and its return,
// in one order that a single register would give? That is what Redis gives on one server, and
// what README promises of a placement whose owner orders a key's writes.
//
// Keys are independent (linearizability is local: a history is linearizable if and only if each
// key's is), so each key is checked alone, by the search of Wing and Gong with Lowe's memo: walk
// the calls and returns in time order; at a call, try to take its operation effect now (if the
// register allows its result), remembering the set of operations taken and the register's value,
// so that no state is tried twice; at a return whose operation was not taken, undo the last choice.
//
// An operation that failed (`ok: false`: it timed out, or its node went away) may or may not have
// taken effect: a failed write may take effect at any instant after its call, which is the same
// as returning at the end of time; a failed read tells nothing and is left out. Keys written
// with a TTL are left out: expiry is a write that no client made.
import type { Op } from "./history.ts";

/** An operation on a key, as the search sees it: where its call and its return fall. */
interface Call {
  /** Its number among the key's operations, for the set of those taken. */
  readonly id: number;
  readonly op: Op;
  readonly start: number;
  /** Infinity for a write whose outcome is unknown. */
  readonly end: number;
}

/** A call or a return in the time-ordered list the search walks; taken operations are unlinked. */
interface Event {
  readonly call: Call;
  readonly isReturn: boolean;
  /** The return of a call (undefined on a return). */
  match: Event | undefined;
  prev: Event | undefined;
  next: Event | undefined;
}

/** Why a key's history is not linearizable: the operations it holds, in call order. */
export interface NonLinearizable {
  key: string;
  ops: Op[];
}

/** What the check found: the keys checked, those that are not linearizable, and those the search gave up on. */
export interface LinearizabilityReport {
  keys: number;
  ops: number;
  violations: NonLinearizable[];
  /** Keys whose search took more than `maxSteps`: neither proved nor refuted. */
  undecided: string[];
}

/**
 * Checks a history key by key. `maxSteps` bounds the search of each key (each step takes or
 * undoes one operation); a key that needs more is reported undecided rather than passed.
 *
 * @example
 * ```ts
 * const set = { node: "a", kind: "set", key: "k", value: "1", start: 0, end: 1, ok: true } as const;
 * const stale = { node: "b", kind: "get", key: "k", value: null, start: 2, end: 3, ok: true } as const;
 * checkLinearizable([set, stale]).violations.length; // 1: the set had returned before the get began
 * ```
 */
export function checkLinearizable(history: Op[], maxSteps = 2_000_000): LinearizabilityReport {
  const byKey = new Map<string, Op[]>();
  const timed = new Set<string>();
  for (const op of history) {
    if (op.kind === "set" && (op.ttl ?? 0) > 0) timed.add(op.key);
    if (op.kind === "get" && !op.ok) continue;
    let ops = byKey.get(op.key);
    if (ops === undefined) byKey.set(op.key, (ops = []));
    ops.push(op);
  }
  const report: LinearizabilityReport = { keys: 0, ops: 0, violations: [], undecided: [] };
  for (const [key, ops] of byKey) {
    if (timed.has(key)) continue;
    report.keys++;
    report.ops += ops.length;
    const verdict = searchKey(ops, maxSteps);
    if (verdict === "undecided") report.undecided.push(key);
    else if (!verdict) report.violations.push({ key, ops: [...ops].sort((a, b) => a.start - b.start) });
  }
  return report;
}

/** A register's value after `op`, or undefined when `op`'s result cannot follow `value`. */
function apply(value: string | null, op: Op): string | null | undefined {
  switch (op.kind) {
    case "set":
      return op.value;
    case "remove":
      // Whether it found the key, where the history recorded it.
      return op.ok && op.existed !== undefined && op.existed !== (value !== null) ? undefined : null;
    case "get":
      return op.value === value ? value : undefined;
  }
}

/** Whether one key's operations can be linearized; "undecided" past `maxSteps`. */
function searchKey(ops: Op[], maxSteps: number): boolean | "undecided" {
  const calls: Call[] = ops.map((op, id) => ({ id, op, start: op.start, end: op.ok ? op.end : Infinity }));
  // Calls before returns at the same instant: operations that touch in time count as concurrent.
  const events = calls.flatMap((call): Event[] => {
    const returned: Event = { call, isReturn: true, match: undefined, prev: undefined, next: undefined };
    return [{ call, isReturn: false, match: returned, prev: undefined, next: undefined }, returned];
  }).sort((a, b) => time(a) - time(b) || Number(a.isReturn) - Number(b.isReturn));
  const head: Event = { call: calls[0], isReturn: false, match: undefined, prev: undefined, next: undefined };
  let last = head;
  for (const event of events) {
    last.next = event;
    event.prev = last;
    last = event;
  }

  const taken = new Uint32Array(Math.ceil(calls.length / 32));
  const seen = new Set<string>();
  const stack: Array<{ event: Event; value: string | null }> = [];
  let value: string | null = null;
  let event = head.next;
  for (let steps = 0; event !== undefined; steps++) {
    if (steps > maxSteps) return "undecided";
    if (!event.isReturn) {
      const after = apply(value, event.call.op);
      if (after !== undefined) {
        flip(taken, event.call.id);
        const state = `${taken.join(",")}|${after}`;
        if (!seen.has(state)) {
          seen.add(state);
          stack.push({ event, value });
          value = after;
          unlink(event);
          event = head.next;
          continue;
        }
        flip(taken, event.call.id);
      }
      event = event.next;
    } else {
      // The earliest return left: its operation must have taken effect by now, and it has not.
      const undone = stack.pop();
      if (undone === undefined) return false;
      value = undone.value;
      flip(taken, undone.event.call.id);
      relink(undone.event);
      event = undone.event.next;
    }
  }
  return true;
}

function time(event: Event): number {
  return event.isReturn ? event.call.end : event.call.start;
}

function flip(bits: Uint32Array, id: number): void {
  bits[id >>> 5] ^= 1 << (id & 31);
}

/** Takes a call and its return out of the list. */
function unlink(call: Event): void {
  for (const event of [call, call.match!]) {
    event.prev!.next = event.next;
    if (event.next !== undefined) event.next.prev = event.prev;
  }
}

/** Puts back a call and its return, in the reverse order of unlink. */
function relink(call: Event): void {
  for (const event of [call.match!, call]) {
    event.prev!.next = event;
    if (event.next !== undefined) event.next.prev = event;
  }
}
