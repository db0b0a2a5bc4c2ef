// An in-memory network for kosyak nodes, and a clock that jumps from one timer to the next:
// together they run the real protocol code of hundreds of nodes in one process, with no socket
// and no waiting (`npm run simulate`). The test suite runs a cluster on the network too.
//
// Each host has one link to the network with a bandwidth, the same both ways; a write leaves
// its host's link after the bytes queued before it, crosses in `latencyMs`, and enters the
// receiving host's link after the bytes queued there. So a joiner that every member sends its
// key list to waits for its own link, as it would on a real network.

import { setImmediate } from "node:timers";

/** @typedef {import("../mod.ts").Clock} Clock */
/** @typedef {import("../mod.ts").Conn} Conn */
/** @typedef {import("../mod.ts").ConnHandlers} ConnHandlers */
/** @typedef {import("../mod.ts").Transport} Transport */

/**
 * A clock whose time moves only when `run` or `runUntil` moves it, straight to the next timer.
 * Between timers it lets every promise reaction run (one turn of the event loop), so the nodes'
 * async code proceeds as it would in real time.
 *
 * @implements {Clock}
 */
export class VirtualClock {
  #now = 0;
  #sequence = 0;
  /** @type {Array<{ at: number, sequence: number, callback: () => void, cancelled: boolean }>} */
  #heap = [];

  /** @param {number} start where the clock starts, in ms */
  constructor(start = Date.UTC(2026, 0, 1)) {
    this.#now = start;
  }

  now() {
    return this.#now;
  }

  /** @param {() => void} callback @param {number} ms */
  setTimeout(callback, ms) {
    const timer = { at: this.#now + Math.max(0, ms), sequence: this.#sequence++, callback, cancelled: false };
    this.#push(timer);
    return timer;
  }

  /** @param {unknown} handle */
  clearTimeout(handle) {
    /** @type {{ cancelled: boolean }} */ (handle).cancelled = true;
  }

  /** Timers not yet fired or cancelled. */
  get pending() {
    return this.#heap.reduce((count, timer) => count + (timer.cancelled ? 0 : 1), 0);
  }

  /** Fires every timer due within `ms` from now, in order of time, then sets the time to now + ms. */
  async run(ms) {
    const end = this.#now + ms;
    await this.#fireUntil(() => false, end);
    this.#now = end;
  }

  /**
   * Fires timers in order until `promise` settles, and returns its result; throws if it has not
   * settled within `limitMs` of clock time or once no timer is left.
   *
   * @template T
   * @param {Promise<T>} promise
   * @param {number} limitMs
   * @returns {Promise<T>}
   */
  async runUntil(promise, limitMs) {
    /** @type {{ value: T } | { error: unknown } | undefined} */
    let outcome;
    promise.then((value) => (outcome = { value }), (error) => (outcome = { error }));
    await this.#fireUntil(() => outcome !== undefined, this.#now + limitMs);
    if (outcome === undefined) throw new Error(`not settled within ${limitMs} ms of clock time (${this.pending} timers left)`);
    if ("error" in outcome) throw outcome.error;
    return outcome.value;
  }

  /** @param {() => boolean} done @param {number} end */
  async #fireUntil(done, end) {
    for (;;) {
      // One turn of the event loop: every promise reaction the last timer started runs first.
      await new Promise((resolve) => setImmediate(resolve));
      if (done()) return;
      const next = this.#pop();
      if (next === undefined) return;
      if (next.at > end) {
        this.#push(next);
        return;
      }
      this.#now = next.at;
      next.callback();
    }
  }

  /** @param {{ at: number, sequence: number, callback: () => void, cancelled: boolean }} timer */
  #push(timer) {
    const heap = this.#heap;
    heap.push(timer);
    for (let i = heap.length - 1; i > 0;) {
      const parent = (i - 1) >> 1;
      if (!earlier(heap[i], heap[parent])) break;
      [heap[i], heap[parent]] = [heap[parent], heap[i]];
      i = parent;
    }
  }

  #pop() {
    const heap = this.#heap;
    for (;;) {
      if (heap.length === 0) return undefined;
      const top = heap[0];
      const last = heap.pop();
      if (heap.length > 0 && last !== undefined) {
        heap[0] = last;
        for (let i = 0; ;) {
          const left = 2 * i + 1;
          const right = left + 1;
          let least = i;
          if (left < heap.length && earlier(heap[left], heap[least])) least = left;
          if (right < heap.length && earlier(heap[right], heap[least])) least = right;
          if (least === i) break;
          [heap[i], heap[least]] = [heap[least], heap[i]];
          i = least;
        }
      }
      if (!top.cancelled) return top;
    }
  }
}

/** The name of the link between two hosts, the same both ways. @param {string} a @param {string} b */
function link(a, b) {
  return a < b ? `${a} ${b}` : `${b} ${a}`;
}

/**
 * @param {{ at: number, sequence: number }} a
 * @param {{ at: number, sequence: number }} b
 */
function earlier(a, b) {
  return a.at < b.at || (a.at === b.at && a.sequence < b.sequence);
}

/**
 * Hosts that listen and connect to each other in memory. `transport(host)` is what a node on
 * that host takes as its `transport` option; addresses are "host:port", ports counted from 1.
 */
export class MemoryNetwork {
  /** Deliveries scheduled so far: writes, and the closes that follow them. */
  deliveries = 0;
  /** @type {Map<string, (conn: Conn) => void>} */
  #listening = new Map();
  /** @type {Map<string, { port: number, sendFree: number, receiveFree: number }>} */
  #hosts = new Map();
  /** Hosts that drop every packet, so that a connection to them never opens (see blackhole). */
  #silent = new Set();
  /** Links cut (see cut), as "a b" with a < b. */
  #cuts = new Set();
  /** @type {Set<MemoryConn>} connections holding what arrived while their link was cut */
  #holding = new Set();
  #clock;
  #latencyMs;
  #bytesPerMs;

  /**
   * @param {{ clock: Clock, latencyMs?: number, bytesPerMs?: number }} settings
   *   the clock that paces deliveries; one-way latency; each host's link bandwidth (Infinity: none)
   */
  constructor({ clock, latencyMs = 0, bytesPerMs = Infinity }) {
    this.#clock = clock;
    this.#latencyMs = latencyMs;
    this.#bytesPerMs = bytesPerMs;
  }

  /**
   * Makes `host` drop every packet sent to it, as a firewall that drops rather than refuses
   * does: a connection to it neither opens nor fails (a real one fails after about two minutes).
   * @param {string} host
   */
  blackhole(host) {
    this.#silent.add(host);
  }

  /**
   * Cuts the link between hosts `a` and `b`, as a partition does: what either sends the other
   * is held, as TCP holds it for a link that comes back, until `heal(a, b)`; a connection
   * between them neither opens nor fails meanwhile.
   * @param {string} a
   * @param {string} b
   */
  cut(a, b) {
    this.#cuts.add(link(a, b));
  }

  /**
   * Heals the link between `a` and `b`: what it held arrives, in order, after the latency.
   * @param {string} a
   * @param {string} b
   */
  heal(a, b) {
    this.#cuts.delete(link(a, b));
    for (const conn of this.#holding) {
      if (this.isCut(conn.remoteHost, conn.host)) continue;
      this.#holding.delete(conn);
      this.at(() => conn.release(), this.now + this.#latencyMs);
    }
  }

  /** Whether what `from` sends `to` is held now. @param {string} from @param {string} to */
  isCut(from, to) {
    return this.#cuts.has(link(from, to));
  }

  /** `conn` holds what arrived on a cut link, until heal releases it. @param {MemoryConn} conn */
  hold(conn) {
    this.#holding.add(conn);
  }

  /**
   * The transport of a node on `host`.
   * @param {string} host
   * @returns {Transport}
   */
  transport(host) {
    return {
      listen: async ({ port }, _options, accept) => {
        const link = this.#link(host);
        const chosen = port === 0 ? link.port++ : port;
        const address = `${host}:${chosen}`;
        if (this.#listening.has(address)) throw new Error(`${address} is in use`);
        this.#listening.set(address, accept);
        return {
          port: chosen,
          close: async () => void this.#listening.delete(address),
        };
      },
      connect: (address) => {
        if (this.#silent.has(address.host) || this.isCut(host, address.host)) return new Promise(() => {});
        return new Promise((resolve, reject) => {
          // A connection takes a round trip to open, or to be refused.
          this.#clock.setTimeout(() => {
            const accept = this.#listening.get(`${address.host}:${address.port}`);
            if (accept === undefined) return reject(new Error(`connect ECONNREFUSED ${address.host}:${address.port}`));
            const [dialled, accepted] = this.#pair(host, address.host);
            accept(accepted);
            resolve(dialled);
          }, 2 * this.#latencyMs);
        });
      },
    };
  }

  /** @param {string} host */
  #link(host) {
    let link = this.#hosts.get(host);
    if (link === undefined) this.#hosts.set(host, link = { port: 1, sendFree: 0, receiveFree: 0 });
    return link;
  }

  /**
   * Two ends of one connection between hosts `a` and `b`.
   * @param {string} a
   * @param {string} b
   * @returns {[Conn, Conn]}
   */
  #pair(a, b) {
    const ends = [new MemoryConn(this, a, b), new MemoryConn(this, b, a)];
    ends[0].other = ends[1];
    ends[1].other = ends[0];
    return [ends[0], ends[1]];
  }

  /**
   * When `bytes` written now from host `from` to host `to` have arrived, and when they have
   * left `from` (until then they count as buffered).
   * @param {string} from
   * @param {string} to
   * @param {number} bytes
   */
  schedule(from, to, bytes) {
    const now = this.#clock.now();
    const sender = this.#link(from);
    const receiver = this.#link(to);
    const transfer = bytes / this.#bytesPerMs;
    const left = Math.max(now, sender.sendFree) + transfer;
    sender.sendFree = left;
    const arrived = Math.max(left + this.#latencyMs, receiver.receiveFree + transfer);
    receiver.receiveFree = arrived;
    return { left, arrived };
  }

  /** The network's time: its clock's. */
  get now() {
    return this.#clock.now();
  }

  /** Calls `callback` at time `at` of the clock: a delivery. @param {() => void} callback @param {number} at */
  at(callback, at) {
    this.deliveries++;
    this.#clock.setTimeout(callback, at - this.#clock.now());
  }
}

/** @implements {Conn} */
class MemoryConn {
  /** @type {MemoryConn | undefined} */
  other;
  /** @type {ConnHandlers | undefined} */
  #handlers;
  /** @type {Uint8Array[]} what arrived before start */
  #early = [];
  /** @type {Array<Uint8Array | null>} what arrived while the link was cut: bytes, and null for the other end's close */
  #held = [];
  #closed = false;
  #peerClosed = false;
  #closeReported = false;
  /** @type {Array<{ left: number, bytes: number }>} writes that have not left this host yet */
  #leaving = [];
  #lastArrival = 0;
  #network;
  #host;
  remoteHost;

  /** @param {MemoryNetwork} network @param {string} host @param {string} remoteHost */
  constructor(network, host, remoteHost) {
    this.#network = network;
    this.#host = host;
    this.remoteHost = remoteHost;
  }

  /** The host this end is on. */
  get host() {
    return this.#host;
  }

  /** @param {ConnHandlers} handlers */
  start(handlers) {
    this.#handlers = handlers;
    for (const chunk of this.#early.splice(0)) handlers.data(chunk);
    if (this.#peerClosed) this.#reportClose();
  }

  /** @param {Uint8Array} bytes */
  write(bytes) {
    if (this.#closed || this.#peerClosed || this.other === undefined) return;
    const copy = bytes.slice();
    const { left, arrived } = this.#network.schedule(this.#host, this.remoteHost, copy.byteLength);
    this.#leaving.push({ left, bytes: copy.byteLength });
    this.#lastArrival = arrived;
    const other = this.other;
    this.#network.at(() => other.arrive(copy), arrived);
  }

  buffered() {
    const now = this.#network.now;
    while (this.#leaving.length > 0 && this.#leaving[0].left <= now) this.#leaving.shift();
    return this.#leaving.reduce((sum, write) => sum + write.bytes, 0);
  }

  close() {
    if (this.#closed) return;
    this.#closed = true;
    const other = this.other;
    // The other end hears of it after the last bytes written, as over TCP.
    if (other !== undefined) this.#network.at(() => other.arrive(null), this.#lastArrival);
    this.#reportClose();
  }

  /**
   * Bytes from the other end, or its close (null): taken now, or held while the link is cut
   * (and after anything held before them).
   * @param {Uint8Array | null} chunk
   */
  arrive(chunk) {
    if (this.#held.length > 0 || this.#network.isCut(this.remoteHost, this.#host)) {
      this.#held.push(chunk);
      this.#network.hold(this);
      return;
    }
    if (chunk === null) {
      this.#peerClosed = true;
      if (this.#handlers !== undefined) this.#reportClose();
    } else if (!this.#closed) {
      if (this.#handlers === undefined) this.#early.push(chunk);
      else this.#handlers.data(chunk);
    }
  }

  /** The link is healed: what it held arrives, unless it was cut again meanwhile. */
  release() {
    for (const chunk of this.#held.splice(0)) this.arrive(chunk);
  }

  #reportClose() {
    if (this.#handlers === undefined || this.#closeReported) return;
    this.#closeReported = true;
    this.#closed = true;
    this.#handlers.close();
  }
}
