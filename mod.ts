/**
 * kosyak: a distributed in-memory cache that lives inside your JavaScript process.
 *
 * Every node keeps its own entries in memory and knows which peer holds every other key.
 * Nodes talk JSON over TCP and form a full mesh; a new node joins through any member.
 * Data is not replicated: when a node dies, the entries it held are gone.
 *
 * The same file runs on Node.js (>= 20, through the npm build), Deno and Bun, each on its own
 * native sockets.
 *
 * @example Two nodes, a set on one and a get on the other
 * ```ts
 * import { Node } from "./mod.ts";
 *
 * const first = new Node({ host: "127.0.0.1", port: 0 }).init();
 * await first.ready();
 * const second = new Node({ master: first.address }).init();
 *
 * await first.set("key", 123);
 * console.log(await second.get("key")); // 123
 * await Promise.all([first.stop(), second.stop()]);
 * ```
 *
 * @module
 */

// ─── Public types ────────────────────────────────────────────────────────────────────────────

/** A host and port pair, as a node listens on it or as a peer can reach it. */
export interface Address {
  /** Host name or IP address. */
  host: string;
  /** TCP port. */
  port: number;
}

/** What `fetch` is handed: call it once with an error or with the value for the key. */
export type FetchDone = (err: Error | null, value?: unknown) => void;

/** Options of {@linkcode Node}; every one may be left out. */
export interface NodeOptions {
  /**
   * Address or host to bind to. Another node reaches this one at this host, or, when it is a
   * wildcard such as `0.0.0.0`, at the address its connection comes from.
   * @default {"127.0.0.1"}
   */
  host?: string;
  /** The seed's name for {@linkcode NodeOptions.host}; give one of the two. */
  addr?: string;
  /**
   * Port to bind to; 0 lets the operating system pick a free one (see {@linkcode Node.address}).
   * @default {0}
   */
  port?: number;
  /**
   * Any node of the cluster to join, or a list of them tried in turn; left out, the node starts a
   * cluster of its own. Once joined, a node no longer needs its master.
   */
  master?: Seed | Seed[];
  /**
   * Options handed to the runtime's socket when this node connects to another: `net.connect` on
   * Node.js, `Deno.connect` on Deno, `Bun.connect` on Bun.
   */
  socket?: Record<string, unknown>;
  /**
   * Options handed to the runtime's listener: `net.createServer` on Node.js, `Deno.listen` on
   * Deno, `Bun.listen` on Bun.
   */
  server?: Record<string, unknown>;
  /**
   * Store values as JSON strings, so that changing an object after `set` never changes the
   * cache and every `get` returns a fresh copy.
   * @default {false}
   */
  stringify?: boolean;
  /**
   * Called by `get` for a key that no node holds; `done(err, value)` gives the value, which is
   * then stored on the node that called `fetch` and announced to the others. A `null` or
   * `undefined` value is returned as `null` and not stored; an error (or no answer within
   * `fetchTimeout`) fails every waiting `get` with `ERR_FETCH` and stores nothing.
   *
   * Concurrent gets of one key on one node call `fetch` once. Across the cluster, the members
   * agree by hashing the key over their ids on one node to call `fetch` for it, so concurrent
   * gets on several nodes call it once too, as long as the members see the same membership and
   * the chosen node has a `fetch` option; otherwise at most once per node.
   */
  fetch?: (key: string, done: FetchDone) => void;
  /**
   * How long a `fetch` call may take before the gets waiting for it fail, in milliseconds.
   * @default {10000}
   */
  fetchTimeout?: number;
  /**
   * Milliseconds an entry lives when `set` gives no `ttl`; 0 keeps entries until they are removed
   * or evicted. An expired entry is never returned, and every directory forgets it.
   * @default {0}
   */
  ttl?: number;
  /**
   * Most entries this node holds; past it, the least recently used entries are evicted and the
   * peers told.
   * @default {Infinity}
   */
  maxEntries?: number;
  /**
   * Most bytes of entries this node holds, where an entry's size is the length of its key plus
   * the length of its value's JSON text (UTF-16 code units: bytes for ASCII text); past it, the
   * least recently used entries are evicted and the peers told. A single larger entry is refused.
   * @default {Infinity}
   */
  maxBytes?: number;
  /**
   * Delay before the second attempt to connect to a node, in milliseconds; each later attempt
   * waits this much longer than the one before (2000, 4000, 6000, ...).
   * @default {2000}
   */
  connectDelay?: number;
  /**
   * How many times to try to connect to a node before giving up.
   * @default {3}
   */
  connectAttempts?: number;
  /**
   * How long to wait for a peer to answer a request (handshake, get, set, stats), in
   * milliseconds. A peer that does not answer in time is treated as not holding the key.
   * @default {5000}
   */
  requestTimeout?: number;
  /**
   * How often connections are checked, in milliseconds; one that has sent nothing for half of
   * this sends a heartbeat.
   * @default {1000}
   */
  heartbeatInterval?: number;
  /**
   * How long a peer may stay silent before it is declared down, in milliseconds: its keys leave
   * the directory and its connection is closed. A killed process is noticed at once, since its
   * operating system closes its connections; a hung process or a silent network within
   * `peerTimeout + heartbeatInterval`. At least twice `heartbeatInterval`.
   * @default {3000}
   */
  peerTimeout?: number;
  /**
   * A shared secret every member knows. Nodes prove knowledge of it to each other when they
   * connect (HMAC-SHA-256 challenge and response, over Web Crypto); the secret itself never
   * crosses the wire. A connection that cannot prove it is refused before it can read, write or
   * learn any key, and the refusal is reported as an `error` event with code `ERR_AUTH`.
   * Left out, any node that can reach the port may join.
   */
  secret?: string;
  /**
   * TLS for every connection: this node's certificate chain and private key (PEM), and the CA
   * (PEM) that signed the other members' certificates. With a CA, connections are mutually
   * authenticated: each end checks the other's certificate (a Deno listener cannot ask for a
   * client certificate; use `secret` as well). A node with `tls` accepts no plain connection.
   */
  tls?: TlsOptions;
  /**
   * Largest frame this node accepts from a peer, in bytes; a larger one closes that connection.
   * Every member should use the same value.
   * @default {16777216}
   */
  maxFrameBytes?: number;
  /**
   * Most connections this node keeps open at once (peers and connections still in their
   * handshake); more are closed at once and reported as an `error` event.
   * @default {1024}
   */
  maxConnections?: number;
  /**
   * Longest key, in UTF-16 code units; a longer one is refused with a `RangeError`.
   * @default {1024}
   */
  maxKeyLength?: number;
  /**
   * Largest value, as the length of its JSON text in UTF-16 code units; a larger one is refused
   * with a `RangeError`. At most `maxFrameBytes` minus 64 KiB.
   * @default {8388608}
   */
  maxValueBytes?: number;
  /**
   * Most bytes that may wait to be sent to one peer; a peer that stops reading that long is
   * disconnected (peerDown reason `stalled`) instead of being buffered for without limit.
   * @default {33554432}
   */
  maxQueueBytes?: number;
}

/** TLS settings of {@linkcode NodeOptions.tls}, in PEM. */
export interface TlsOptions {
  /** This node's certificate chain. */
  cert: string;
  /** This node's private key. */
  key: string;
  /** The CA that signed the other members' certificates; given, each end checks the other. */
  ca?: string;
}

/** An address to join a cluster through; `host` defaults to `"127.0.0.1"`. */
export interface Seed {
  /** Host name or IP address of a member. @default {"127.0.0.1"} */
  host?: string;
  /** Port the member listens on. */
  port: number;
}

/** Why a peer went down, as {@linkcode NodeEvents.peerDown} reports it. */
export type PeerDownReason = "left" | "closed" | "timeout" | "protocol-error" | "stalled";

/** A peer as events describe it. */
export interface PeerInfo {
  /** The peer's node id. */
  id: string;
  /** Where the peer listens. */
  address: Address;
}

/** Events of a {@linkcode Node}, with what each listener receives. */
export interface NodeEvents {
  /** A connection to another node is up and its keys are known. */
  peerUp: PeerInfo;
  /** A peer left (`stop`), its connection closed, it fell silent, or it broke the protocol. */
  peerDown: PeerInfo & { reason: PeerDownReason };
  /** Something went wrong that no caller is waiting for, such as a peer breaking the protocol. */
  error: Error;
}

/** One local entry, as {@linkcode Node.eachEntry} hands it out. */
export interface Entry {
  /** The key. */
  readonly key: string;
  /** The stored value: a JSON string when the node has `stringify: true`. */
  readonly value: unknown;
  /** The write's version; a higher version wins when two nodes set the same key. */
  readonly version: number;
  /** When the entry expires, in milliseconds since the epoch; 0 when it does not. */
  readonly expires: number;
}

/** Options of {@linkcode Node.set} and {@linkcode Node.mset}. */
export interface SetOptions {
  /** Milliseconds the entry lives; 0 keeps it until removed. Defaults to the node's `ttl`. */
  ttl?: number;
}

/** Counters of one node, from {@linkcode Node.stats}. */
export interface NodeStats {
  /** The node's id, random for each instance. */
  id: string;
  /** Host the node listens on. */
  host: string;
  /** Port the node listens on. */
  port: number;
  /** Entries held locally. */
  entries: number;
  /** Their size, as `maxBytes` counts it. */
  bytes: number;
  /** Connected peers. */
  peers: number;
  /** Open connections: peers, and connections still in their handshake. */
  connections: number;
  /** Keys this node knows to be held by peers. */
  remoteKeys: number;
  /** Writes stored here: `set`, each entry of `mset`, and fetched values. */
  sets: number;
  /** `get`s answered from a local entry. */
  hits: number;
  /** `get`s answered by a peer that held the key. */
  remoteHits: number;
  /** `get`s that found the key nowhere (before any `fetch`). */
  misses: number;
  /** Calls to the `fetch` option. */
  fetches: number;
  /** `fetch` calls that ended in an error or timed out. */
  fetchErrors: number;
  /** Entries evicted to stay within `maxEntries` and `maxBytes`. */
  evictions: number;
  /** Entries removed because their time was up. */
  expirations: number;
  /** Requests from peers that this node answered. */
  served: number;
  /** Milliseconds since `init` completed (0 before). */
  uptime: number;
}

/** A callback in the style of Node.js: an error or `null`, then the result. */
export type Callback<T> = (err: Error | null, result?: T) => void;

/** Default values of {@linkcode NodeOptions}. */
export const DEFAULTS: {
  readonly host: string;
  readonly port: number;
  readonly connectDelay: number;
  readonly connectAttempts: number;
  readonly requestTimeout: number;
  readonly heartbeatInterval: number;
  readonly peerTimeout: number;
  readonly fetchTimeout: number;
  readonly ttl: number;
  readonly maxEntries: number;
  readonly maxBytes: number;
  readonly maxFrameBytes: number;
  readonly maxConnections: number;
  readonly maxKeyLength: number;
  readonly maxValueBytes: number;
  readonly maxQueueBytes: number;
} = Object.freeze({
  host: "127.0.0.1",
  port: 0,
  connectDelay: 2000,
  connectAttempts: 3,
  requestTimeout: 5000,
  heartbeatInterval: 1000,
  peerTimeout: 3000,
  fetchTimeout: 10_000,
  ttl: 0,
  maxEntries: Infinity,
  maxBytes: Infinity,
  maxFrameBytes: 16 * 1024 * 1024,
  maxConnections: 1024,
  maxKeyLength: 1024,
  maxValueBytes: 8 * 1024 * 1024,
  maxQueueBytes: 32 * 1024 * 1024,
});

/**
 * Why an operation failed, as the `code` of a {@linkcode KosyakError}. `ERR_REMOTE` is a peer's
 * failure that has no code of its own.
 */
export type KosyakErrorCode =
  | "ERR_LISTEN"
  | "ERR_CONNECT"
  | "ERR_NOT_STARTED"
  | "ERR_ALREADY_STARTED"
  | "ERR_STOPPED"
  | "ERR_PROTOCOL"
  | "ERR_TIMEOUT"
  | "ERR_PEER_GONE"
  | "ERR_FETCH"
  | "ERR_AUTH"
  | "ERR_LIMIT"
  | "ERR_REMOTE";

/** Every code, to tell ours from anything else a peer sends; the record makes it complete. */
const KOSYAK_ERROR_CODES = Object.keys({
  ERR_LISTEN: 0, ERR_CONNECT: 0, ERR_NOT_STARTED: 0, ERR_ALREADY_STARTED: 0, ERR_STOPPED: 0, ERR_PROTOCOL: 0,
  ERR_TIMEOUT: 0, ERR_PEER_GONE: 0, ERR_FETCH: 0, ERR_AUTH: 0, ERR_LIMIT: 0, ERR_REMOTE: 0,
} satisfies Record<KosyakErrorCode, 0>);

/**
 * An operation failed for a reason other than a wrong argument (those throw `TypeError` or
 * `RangeError`).
 *
 * @example Telling a failed start from other errors
 * ```ts
 * import { KosyakError, Node } from "./mod.ts";
 *
 * const node = new Node({ master: { host: "127.0.0.1", port: 1 }, connectAttempts: 1 });
 * node.init((err) => {
 *   if (err instanceof KosyakError) console.log(err.code); // "ERR_CONNECT"
 * });
 * ```
 */
export class KosyakError extends Error {
  /** A stable name for the kind of failure, for programs to branch on. */
  readonly code: KosyakErrorCode;

  /** Makes an error with a code, a message and optionally the error that caused it. */
  constructor(code: KosyakErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "KosyakError";
    this.code = code;
  }
}

// ─── The Node ────────────────────────────────────────────────────────────────────────────────

type Lifecycle = "new" | "starting" | "ready" | "failed" | "stopping" | "stopped";

/**
 * One member of a kosyak cluster: a local store, a TCP listener and a connection to every other
 * member.
 *
 * Every method that takes a callback returns a Promise when the callback is left out. Methods
 * called while `init` is under way wait for it to finish.
 *
 * @example The seed's usage, with promises
 * ```ts
 * import { Node } from "./mod.ts";
 *
 * const firstNode = new Node({ host: "127.0.0.1", port: 0 }).init();
 * await firstNode.ready();
 * const secondNode = new Node({ master: firstNode.address }).init();
 *
 * console.log(await firstNode.set("key", 123)); // 123
 * console.log(await secondNode.get("key")); // 123
 * await firstNode.stop();
 * await secondNode.stop();
 * ```
 */
export class Node {
  /** This node's id: random, different for every instance. */
  readonly id: string = randomId();

  readonly #options: ResolvedOptions;
  readonly #store: Store;
  readonly #cluster: Cluster;
  #lifecycle: Lifecycle = "new";
  #started: Promise<void> | undefined;
  #stopped: Promise<void> | undefined;
  #startedAt = 0;
  #counters = { sets: 0, hits: 0, remoteHits: 0, misses: 0, fetches: 0, fetchErrors: 0 };
  /** Gets under way for keys not held here, so that concurrent gets of one key share one. */
  readonly #gets = new Map<string, Promise<unknown>>();
  /** Calls of the `fetch` option under way, shared by local gets and peers' fetch requests. */
  readonly #fetches = new Map<string, FetchCall>();
  /** Keys evicted or expired this tick, told to the peers in one message. */
  #gone: Array<[string, number]> = [];
  /** Keys written this tick, announced to the peers in one message (see #announce). */
  #owned: Array<[string, number, number]> = [];
  #ownedSent: Deferred<void> = deferred<void>();
  /** Remote gets of this tick, per holder (see #askHolder). */
  readonly #asks = new Map<Peer, Array<{ key: string; resolve: (found: Found) => void }>>();
  #sweeper: ReturnType<typeof setInterval> | undefined;
  readonly #listeners: Record<keyof NodeEvents, Set<(payload: unknown) => void>> = {
    peerUp: new Set(),
    peerDown: new Set(),
    error: new Set(),
  };

  /**
   * Creates a node; nothing listens or connects until {@linkcode Node.init}.
   *
   * @param options What to listen on, whom to join and how to behave; see {@linkcode NodeOptions}.
   * @throws {TypeError | RangeError} An option has the wrong type or is out of range.
   *
   * @example A node that joins an existing cluster
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = new Node({ master: { host: "127.0.0.1", port: 13390 } });
   * ```
   */
  constructor(options: NodeOptions = {}) {
    this.#options = resolveOptions(options);
    this.#store = new Store(this.id, this.#options, (key, version) => this.#tellGone(key, version));
    this.#cluster = new Cluster(this.id, this.#options, {
      localKeys: () => this.#store.versions(),
      observe: (version) => this.#store.observe(version),
      serve: (peer, message) => this.#serve(peer, message),
      emit: (event, payload) => this.#emit(event, payload),
    });
  }

  /**
   * Listens to an event: `peerUp` and `peerDown` (with a `reason`: `left`, `closed`, `timeout`
   * or `protocol-error`) as members come and go, and `error` for failures no caller waits for.
   * An `error` nobody listens to is dropped, never thrown.
   *
   * @param event The event's name.
   * @param listener Called with the event's payload; what it throws is reported as uncaught.
   * @returns This node.
   *
   * @example Logging membership changes
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = new Node()
   *   .on("peerUp", (peer) => console.log("up", peer.id, peer.address))
   *   .on("peerDown", (peer) => console.log("down", peer.id, peer.reason))
   *   .init();
   * await node.stop();
   * ```
   */
  on<E extends keyof NodeEvents>(event: E, listener: (payload: NodeEvents[E]) => void): this {
    assertEvent(event, "on");
    assertFunction(listener, "on", "listener");
    this.#listeners[event].add(listener as (payload: unknown) => void);
    return this;
  }

  /**
   * Stops listening to an event.
   *
   * @param event The event's name.
   * @param listener A listener given to {@linkcode Node.on}.
   * @returns This node.
   *
   * @example
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const log = (error: Error) => console.error(error);
   * const node = new Node().on("error", log);
   * node.off("error", log);
   * ```
   */
  off<E extends keyof NodeEvents>(event: E, listener: (payload: NodeEvents[E]) => void): this {
    assertEvent(event, "off");
    this.#listeners[event].delete(listener as (payload: unknown) => void);
    return this;
  }

  /**
   * Where this node listens. Before `init` completes, `port` is the configured port (0 when the
   * operating system is to pick one).
   *
   * @example Joining a node whose port the operating system picked
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const first = await new Node().init().ready();
   * const second = await new Node({ master: first.address }).init().ready();
   * await Promise.all([first.stop(), second.stop()]);
   * ```
   */
  get address(): Address {
    return { host: this.#options.host, port: this.#cluster.port ?? this.#options.port };
  }

  /**
   * Starts listening and, when `master` is set, joins its cluster: connects to every member and
   * learns which keys each holds. Returns the node itself, so that `new Node(...).init()` chains;
   * use {@linkcode Node.ready} to await the start.
   *
   * @param callback Called once with `null` when the node is ready, or with the error that stopped
   *   it: a `KosyakError` with code `ERR_LISTEN` (the port is taken) or `ERR_CONNECT` (the master
   *   could not be reached in `connectAttempts` attempts). A failed node holds no socket.
   * @returns This node.
   *
   * @example
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = new Node({ port: 0 }).init((err) => {
   *   if (err) throw err;
   *   console.log("listening on", node.address.port);
   *   node.stop();
   * });
   * ```
   */
  init(callback?: (err: Error | null) => void): this {
    if (callback !== undefined) assertFunction(callback, "init", "callback");
    if (this.#lifecycle !== "new") {
      throw new KosyakError("ERR_ALREADY_STARTED", `Cannot init node ${this.id}: init was already called`);
    }
    this.#lifecycle = "starting";
    this.#started = this.#cluster.start().then(
      () => {
        if (this.#lifecycle !== "starting") throw this.#cluster.stoppedError();
        this.#lifecycle = "ready";
        this.#startedAt = Date.now();
        this.#sweeper = setInterval(() => this.#store.sweep(), SWEEP_INTERVAL);
      },
      (err: Error) => {
        if (this.#lifecycle === "starting") this.#lifecycle = "failed";
        throw err;
      },
    );
    // Callers who use neither the callback nor ready() must not see an unhandled rejection.
    this.#started.catch(() => {});
    if (callback) this.#started.then(() => callLater(callback, null), (err) => callLater(callback, err));
    return this;
  }

  /**
   * Waits for `init` to complete.
   *
   * @param callback Called with `null` once the node is ready, or with the error `init` failed with.
   * @returns Without a callback, a Promise of this node.
   *
   * @example
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = await new Node().init().ready();
   * await node.stop();
   * ```
   */
  ready(): Promise<this>;
  /** {@linkcode Node.ready} with a callback. */
  ready(callback: (err: Error | null) => void): void;
  ready(callback?: (err: Error | null) => void): Promise<this> | void {
    const done = this.#whenStarted("ready").then(() => this);
    if (callback === undefined) return done;
    assertFunction(callback, "ready", "callback");
    done.then(() => callLater(callback, null), (err) => callLater(callback, err));
  }

  /**
   * Gets the value of a key: from this node if it holds the key, else from the peer that holds
   * it, else from the `fetch` option, else `null`. Concurrent gets of one key that is not held
   * here share one request and one `fetch` call; see {@linkcode NodeOptions.fetch}.
   *
   * A local hit calls `callback` before `get` returns; anything else calls it later.
   *
   * @param key The key, a string.
   * @param callback `callback(err, value)`.
   * @returns Without a callback, a Promise of the value (`null` when there is none).
   * @throws {TypeError} `key` is not a string or `callback` not a function.
   *
   * @example
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = await new Node().init().ready();
   * await node.set("answer", 42);
   * console.log(await node.get("answer")); // 42
   * console.log(await node.get("nothing")); // null
   * await node.stop();
   * ```
   */
  get<T = unknown>(key: string): Promise<T | null>;
  /** {@linkcode Node.get} with a callback. */
  get<T = unknown>(key: string, callback: Callback<T | null>): void;
  get<T = unknown>(key: string, callback?: Callback<T | null>): Promise<T | null> | void {
    if (typeof key !== "string" || key.length > this.#options.maxKeyLength) this.#checkKey(key, "get");
    if (callback !== undefined && typeof callback !== "function") assertFunction(callback, "get", "callback");
    if (this.#lifecycle === "ready") {
      const entry = this.#store.get(key);
      if (entry !== undefined) {
        this.#counters.hits++;
        const value = (this.#options.stringify ? JSON.parse(entry.value as string) : entry.value) as T;
        if (callback === undefined) return Promise.resolve(value);
        callback(null, value);
        return;
      }
    }
    return settle(this.#getShared(key) as Promise<T | null>, callback);
  }

  /**
   * Gets many keys at once: one request to each peer that holds some of them, then `fetch` for
   * the rest.
   *
   * @param keys The keys, strings.
   * @param callback `callback(err, values)`.
   * @returns Without a callback, a Promise of the values in the order of `keys`, `null` for
   *   each key that nobody has.
   * @throws {TypeError} `keys` is not an array of strings or `callback` not a function.
   *
   * @example
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = await new Node().init().ready();
   * await node.mset([["a", 1], ["b", 2]]);
   * console.log(await node.mget(["a", "b", "c"])); // [1, 2, null]
   * await node.stop();
   * ```
   */
  mget<T = unknown>(keys: string[]): Promise<Array<T | null>>;
  /** {@linkcode Node.mget} with a callback. */
  mget<T = unknown>(keys: string[], callback: Callback<Array<T | null>>): void;
  mget<T = unknown>(keys: string[], callback?: Callback<Array<T | null>>): Promise<Array<T | null>> | void {
    if (!Array.isArray(keys)) throw new TypeError(`Cannot mget: keys must be an array of strings: received ${quote(keys)}`);
    for (const key of keys) this.#checkKey(key, "mget");
    if (callback !== undefined) assertFunction(callback, "mget", "callback");
    return settle(this.#mget(keys) as Promise<Array<T | null>>, callback);
  }

  /**
   * Whether a live entry for the key is held by this node or, as far as this node knows, by a
   * peer. Asks no one: it reads this node's entries and directory.
   *
   * @param key The key, a string.
   * @returns `true` when some node holds the key.
   * @throws {TypeError} `key` is not a string.
   *
   * @example
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = await new Node().init().ready();
   * await node.set("a", 1);
   * console.log(node.has("a"), node.has("b")); // true false
   * await node.stop();
   * ```
   */
  has(key: string): boolean {
    this.#checkKey(key, "has");
    if (this.#lifecycle !== "ready") return false;
    return this.#store.peek(key) !== undefined || this.#cluster.holderOf(key) !== undefined;
  }

  /**
   * Sets a value on this node and tells every peer that this node now holds the key; any peer
   * that held an older value drops it. Completes once every live peer has acknowledged, so a
   * `get` of the key on any node afterwards returns this value.
   *
   * @param key The key, a string.
   * @param value Any value that JSON can carry: it travels as JSON when another node gets it.
   * @param options `ttl`: milliseconds the entry lives (0: until removed); defaults to the
   *   node's `ttl` option.
   * @param callback `callback(err, value)`, with the value as given.
   * @returns Without a callback, a Promise of the value.
   * @throws {TypeError} `key` is not a string, `value` cannot be written as JSON, or `callback`
   *   is not a function.
   * @throws {RangeError} `ttl` is not a number of milliseconds, or the entry alone is larger than
   *   `maxBytes`.
   *
   * @example
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = await new Node().init().ready();
   * node.set("user:1", { name: "Kosyak" }, (err, value) => {
   *   console.log(err, value); // null { name: "Kosyak" }
   *   node.set("session", "abc", { ttl: 60_000 }).then(() => node.stop());
   * });
   * ```
   */
  set<T>(key: string, value: T, options?: SetOptions): Promise<T>;
  /** {@linkcode Node.set} with a callback. */
  set<T>(key: string, value: T, callback: Callback<T>): void;
  /** {@linkcode Node.set} with options and a callback. */
  set<T>(key: string, value: T, options: SetOptions, callback: Callback<T>): void;
  set<T>(
    key: string,
    value: T,
    optionsOrCallback?: SetOptions | Callback<T>,
    callback?: Callback<T>,
  ): Promise<T> | void {
    const [options, done] = typeof optionsOrCallback === "function" ? [{}, optionsOrCallback] : [optionsOrCallback, callback];
    if (done !== undefined) assertFunction(done, "set", "callback");
    const write = this.#prepareWrite("set", key, value, options);
    return settle(this.#write([write]).then(() => value), done);
  }

  /**
   * Sets many keys at once: every peer hears of all of them in one request.
   *
   * @param entries `[key, value]` pairs, or an object whose own properties are the entries.
   * @param options `ttl` for every entry, as in {@linkcode Node.set}.
   * @param callback `callback(err)`.
   * @returns Without a callback, a Promise that resolves once every live peer has acknowledged.
   * @throws {TypeError | RangeError} As {@linkcode Node.set} does, for any of the entries.
   *
   * @example
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = await new Node().init().ready();
   * await node.mset({ a: 1, b: 2 }, { ttl: 1000 });
   * console.log(await node.get("b")); // 2
   * await node.stop();
   * ```
   */
  mset(entries: Iterable<[string, unknown]> | Record<string, unknown>, options?: SetOptions): Promise<void>;
  /** {@linkcode Node.mset} with a callback. */
  mset(entries: Iterable<[string, unknown]> | Record<string, unknown>, callback: (err: Error | null) => void): void;
  /** {@linkcode Node.mset} with options and a callback. */
  mset(
    entries: Iterable<[string, unknown]> | Record<string, unknown>,
    options: SetOptions,
    callback: (err: Error | null) => void,
  ): void;
  mset(
    entries: Iterable<[string, unknown]> | Record<string, unknown>,
    optionsOrCallback?: SetOptions | ((err: Error | null) => void),
    callback?: (err: Error | null) => void,
  ): Promise<void> | void {
    const [options, done] = typeof optionsOrCallback === "function" ? [{}, optionsOrCallback] : [optionsOrCallback, callback];
    if (done !== undefined) assertFunction(done, "mset", "callback");
    if (typeof entries !== "object" || entries === null) {
      throw new TypeError(`Cannot mset: entries must be [key, value] pairs or an object: received ${quote(entries)}`);
    }
    const pairs = Symbol.iterator in entries ? Array.from(entries as Iterable<[string, unknown]>) : Object.entries(entries);
    const writes = pairs.map((pair) => {
      if (!Array.isArray(pair)) throw new TypeError(`Cannot mset: each entry must be a [key, value] pair: received ${quote(pair)}`);
      return this.#prepareWrite("mset", pair[0], pair[1], options);
    });
    return settle(this.#write(writes), done);
  }

  /**
   * Removes a key from the cluster: from this node, from the peer that holds it, and from every
   * node's directory. Completes once every live peer has acknowledged.
   *
   * @param key The key, a string.
   * @param callback `callback(err)`.
   * @returns Without a callback, a Promise that resolves when the key is gone.
   * @throws {TypeError} `key` is not a string or `callback` not a function.
   *
   * @example
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = await new Node().init().ready();
   * await node.set("session", "abc");
   * await node.remove("session");
   * console.log(await node.get("session")); // null
   * await node.stop();
   * ```
   */
  remove(key: string): Promise<void>;
  /** {@linkcode Node.remove} with a callback. */
  remove(key: string, callback: (err: Error | null) => void): void;
  remove(key: string, callback?: (err: Error | null) => void): Promise<void> | void {
    this.#checkKey(key, "remove");
    if (callback !== undefined) assertFunction(callback, "remove", "callback");
    return settle(this.#remove(key), callback);
  }

  /**
   * The same as {@linkcode Node.remove}.
   *
   * @param key The key, a string.
   * @param callback `callback(err)`.
   * @returns Without a callback, a Promise that resolves when the key is gone.
   *
   * @example
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = await new Node().init().ready();
   * await node.set("a", 1);
   * await node.delete("a");
   * await node.stop();
   * ```
   */
  delete(key: string): Promise<void>;
  /** {@linkcode Node.delete} with a callback. */
  delete(key: string, callback: (err: Error | null) => void): void;
  delete(key: string, callback?: (err: Error | null) => void): Promise<void> | void {
    return callback === undefined ? this.remove(key) : this.remove(key, callback);
  }

  /**
   * Removes every entry this node holds (entries of other nodes stay), and tells the peers.
   *
   * @param callback `callback(err)`.
   * @returns Without a callback, a Promise that resolves once every live peer has acknowledged.
   *
   * @example
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = await new Node().init().ready();
   * await node.mset({ a: 1, b: 2 });
   * await node.clear();
   * console.log(node.stats().entries); // 0
   * await node.stop();
   * ```
   */
  clear(): Promise<void>;
  /** {@linkcode Node.clear} with a callback. */
  clear(callback: (err: Error | null) => void): void;
  clear(callback?: (err: Error | null) => void): Promise<void> | void {
    if (callback !== undefined) assertFunction(callback, "clear", "callback");
    return settle(this.#clear(), callback);
  }

  /**
   * The keys of the live entries this node holds: in insertion order, or least recently used
   * first on a node with `maxEntries` or `maxBytes`.
   *
   * @returns An iterator of keys.
   *
   * @example
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = await new Node().init().ready();
   * await node.mset({ a: 1, b: 2 });
   * console.log([...node.keys()]); // ["a", "b"]
   * await node.stop();
   * ```
   */
  *keys(): Generator<string> {
    for (const entry of this.#store.live()) yield entry.key;
  }

  /**
   * Iterates the live entries this node holds as `[key, value]` pairs, with `for await`.
   *
   * @returns An async iterator of `[key, value]` pairs.
   *
   * @example
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = await new Node().init().ready();
   * await node.set("a", 1);
   * for await (const [key, value] of node) console.log(key, value); // a 1
   * await node.stop();
   * ```
   */
  async *[Symbol.asyncIterator](): AsyncGenerator<[string, unknown]> {
    for (const entry of this.#store.live()) yield [entry.key, this.#reveal(entry.value)];
  }

  /**
   * Calls `iterator(value, key, entry)` for every live entry this node holds: in insertion order,
   * or least recently used first on a node with `maxEntries` or `maxBytes`. With
   * `stringify: true`, `value` is a fresh copy and `entry.value` the JSON string.
   *
   * @param iterator Called once per local entry.
   * @throws {TypeError} `iterator` is not a function.
   *
   * @example
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = await new Node().init().ready();
   * await node.set("a", 1);
   * node.eachEntry((value, key) => console.log(key, value)); // a 1
   * await node.stop();
   * ```
   */
  eachEntry(iterator: (value: unknown, key: string, entry: Entry) => void): void {
    assertFunction(iterator, "eachEntry", "iterator");
    for (const entry of this.#store.live()) iterator(this.#reveal(entry.value), entry.key, entry);
  }

  /**
   * Without a callback, returns this node's counters. With one, asks every node of the cluster
   * for theirs and calls `callback(nodesStats)` with them, this node's first; a peer that does
   * not answer within `requestTimeout` is left out.
   *
   * @param callback `callback(nodesStats)`.
   * @returns This node's stats when there is no callback.
   *
   * @example
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = await new Node().init().ready();
   * console.log(node.stats().entries); // 0
   * node.stats((all) => {
   *   console.log(all.length); // 1
   *   node.stop();
   * });
   * ```
   */
  stats(): NodeStats;
  /** Every node's stats, handed to a callback. */
  stats(callback: (nodesStats: NodeStats[]) => void): void;
  stats(callback?: (nodesStats: NodeStats[]) => void): NodeStats | void {
    if (callback === undefined) return this.#localStats();
    assertFunction(callback, "stats", "callback");
    this.clusterStats().then((all) => callLater(callback, all), () => callLater(callback, [this.#localStats()]));
  }

  /**
   * The counters of every node of the cluster, this node's first; the promise form of
   * `stats(callback)`.
   *
   * @returns A Promise of every answering node's stats.
   *
   * @example
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = await new Node().init().ready();
   * const all = await node.clusterStats();
   * console.log(all.map((s) => s.port));
   * await node.stop();
   * ```
   */
  async clusterStats(): Promise<NodeStats[]> {
    await this.#whenStarted("clusterStats");
    const answers = await this.#cluster.askAll({ op: "stats" });
    return [this.#localStats(), ...answers.map((answer) => answer.stats as NodeStats)];
  }

  /**
   * Stops the node: tells every peer it is leaving (they forget its keys at once), then closes
   * every connection and the listener. Calling it again returns the same completion.
   *
   * @param callback `callback()`, once everything is closed.
   * @returns Without a callback, a Promise that resolves when everything is closed.
   *
   * @example
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = await new Node().init().ready();
   * node.stop(() => console.log("stopped"));
   * ```
   */
  stop(): Promise<void>;
  /** {@linkcode Node.stop} with a callback. */
  stop(callback: () => void): void;
  stop(callback?: () => void): Promise<void> | void {
    if (callback !== undefined) assertFunction(callback, "stop", "callback");
    this.#stopped ??= this.#stop();
    if (callback === undefined) return this.#stopped;
    this.#stopped.then(() => callLater(callback));
  }

  // ─── The Node: internals ───────────────────────────────────────────────────────────────────

  async #stop(): Promise<void> {
    this.#lifecycle = "stopping";
    clearInterval(this.#sweeper);
    // Stopping the cluster first cuts short an init that is still connecting or retrying.
    await this.#cluster.stop();
    await this.#started?.catch(() => {});
    this.#lifecycle = "stopped";
  }

  /** Resolves when the node is ready; rejects when it never will be. */
  #whenStarted(operation: string): Promise<void> {
    switch (this.#lifecycle) {
      case "ready":
        return Promise.resolve();
      case "starting":
        return this.#started!;
      case "new":
        return Promise.reject(
          new KosyakError("ERR_NOT_STARTED", `Cannot ${operation}: call init() first`),
        );
      case "failed":
        return this.#started!;
      default:
        return Promise.reject(new KosyakError("ERR_STOPPED", `Cannot ${operation}: the node is stopped`));
    }
  }

  /** Gets a key not held here, sharing the work with concurrent gets of the same key. */
  #getShared(key: string): Promise<unknown> {
    let pending = this.#gets.get(key);
    if (pending === undefined) {
      const started: Promise<unknown> = this.#getSlow(key).finally(() => this.#gets.get(key) === started && this.#gets.delete(key));
      this.#gets.set(key, (pending = started));
    }
    // Callers share one result; with stringify, each still gets a copy of its own.
    return this.#options.stringify ? pending.then(copyJson) : pending;
  }

  async #getSlow(key: string): Promise<unknown> {
    if (this.#lifecycle !== "ready") await this.#whenStarted("get");
    const local = this.#store.get(key);
    if (local !== undefined) {
      this.#counters.hits++;
      return this.#reveal(local.value);
    }
    const holder = this.#cluster.holderOf(key);
    if (holder !== undefined) {
      const found = await this.#askHolder(holder, key);
      if (found !== null && found !== undefined) {
        this.#counters.remoteHits++;
        return found[0];
      }
      // A holder that answered that it has no such entry is forgotten; a silent one is not.
      if (found === null) this.#cluster.forget(key, holder);
    }
    this.#counters.misses++;
    return this.#fetch(key);
  }

  async #mget(keys: string[]): Promise<unknown[]> {
    await this.#whenStarted("mget");
    // Gets started in one tick reach each holder as one request (see #askHolder).
    return Promise.all(keys.map((key) => this.#getShared(key)));
  }

  /**
   * Asks a peer for a key it holds; resolves with `[value]`, with null when the peer has no such
   * entry, or with undefined when it does not answer. The asks of one tick to one peer go as a
   * single `mget`, so that many gets in flight cost one message each way rather than one per key.
   */
  #askHolder(holder: Peer, key: string): Promise<Found> {
    let asks = this.#asks.get(holder);
    if (asks === undefined) {
      if (this.#asks.size === 0) queueMicrotask(() => this.#sendAsks());
      asks = [];
      this.#asks.set(holder, asks);
    }
    return new Promise((resolve) => asks.push({ key, resolve }));
  }

  #sendAsks(): void {
    const batches = [...this.#asks];
    this.#asks.clear();
    for (const [holder, asks] of batches) {
      const askAlone = (key: string, resolve: (found: Found) => void) =>
        holder.request({ op: "get", key }).then((answer) => resolve("value" in answer ? [answer.value] : null), () => resolve(undefined));
      if (asks.length === 1) {
        askAlone(asks[0].key, asks[0].resolve);
        continue;
      }
      const settleAll = (answer: Message | undefined) => {
        const found = Array.isArray(answer?.values) ? answer.values : [];
        asks.forEach(({ key, resolve }, i) => {
          const hit = found[i];
          if (Array.isArray(hit)) resolve(hit.length === 1 ? [hit[0]] : null);
          // Left out to keep the answer within a frame: asked again on its own.
          else if (hit === 0) askAlone(key, resolve);
          else resolve(undefined);
        });
      };
      holder.request({ op: "mget", keys: asks.map((ask) => ask.key) }).then(settleAll, () => settleAll(undefined));
    }
  }

  /**
   * Gets a value from the `fetch` option. The cluster agrees, by hashing the key over the member
   * ids, on one node to call `fetch` for each key, so that gets of one missing key on several
   * nodes call it once; if that node is gone, has no `fetch`, or does not answer, this one calls it.
   */
  async #fetch(key: string): Promise<unknown> {
    if (this.#options.fetch === undefined) return null;
    const fetcher = this.#cluster.fetcherOf(key);
    if (fetcher !== undefined) {
      const timeout = this.#options.fetchTimeout + this.#options.requestTimeout;
      try {
        const answer = await fetcher.request({ op: "fetch", key }, timeout);
        if ("value" in answer) return answer.value;
      } catch (error) {
        if (error instanceof KosyakError && error.code === "ERR_FETCH") throw error;
      }
    }
    return this.#fetchHere(key);
  }

  /** Calls the `fetch` option once for concurrent callers of the same key, here and from peers. */
  #fetchHere(key: string): Promise<unknown> {
    let fetching = this.#fetches.get(key);
    if (fetching === undefined) {
      const call: FetchCall = { overtaken: false, result: Promise.resolve(null) };
      call.result = this.#callFetch(key, call).finally(() => this.#fetches.get(key) === call && this.#fetches.delete(key));
      this.#fetches.set(key, (fetching = call));
    }
    return fetching.result;
  }

  /**
   * A write of `key` (here, or announced by a peer) overtakes the gets and the fetch under way for
   * it: gets that start from now on do not join them, and the fetched value is not stored over
   * the newer one.
   */
  #overtake(key: string): void {
    this.#gets.delete(key);
    const fetching = this.#fetches.get(key);
    if (fetching === undefined) return;
    fetching.overtaken = true;
    this.#fetches.delete(key);
  }

  async #callFetch(key: string, call: FetchCall): Promise<unknown> {
    const { fetch, fetchTimeout } = this.#options;
    this.#counters.fetches++;
    let value: unknown;
    try {
      const called = new Promise((resolve, reject) => fetch!(key, (err, result) => (err ? reject(err) : resolve(result))));
      value = await withTimeout(called, fetchTimeout, () => new Error(`it did not call back within ${fetchTimeout} ms`));
    } catch (cause) {
      this.#counters.fetchErrors++;
      throw new KosyakError("ERR_FETCH", `Cannot get "${key}": fetch failed: ${describe(cause)}`, { cause });
    }
    if (value === undefined || value === null) return null;
    if (!call.overtaken) await this.#write([this.#prepareWrite("fetch", key, value, undefined)]);
    return value;
  }

  /** Checks that a key is a string no longer than `maxKeyLength`. */
  #checkKey(key: unknown, operation: string): asserts key is string {
    assertKey(key, operation);
    const { maxKeyLength } = this.#options;
    if (key.length > maxKeyLength) {
      throw new RangeError(`Cannot ${operation}: the key is ${key.length} characters long, more than maxKeyLength (${maxKeyLength})`);
    }
  }

  /** Checks a write's arguments and measures it, before anything is stored. */
  #prepareWrite(operation: string, key: unknown, value: unknown, options: SetOptions | undefined): Write {
    this.#checkKey(key, operation);
    if (options !== undefined && (typeof options !== "object" || options === null)) {
      throw new TypeError(`Cannot ${operation} "${key}": options must be an object: received ${quote(options)}`);
    }
    const ttl = options?.ttl ?? this.#options.ttl;
    if (typeof ttl !== "number" || !(ttl >= 0) || !Number.isFinite(ttl)) {
      throw new RangeError(`Cannot ${operation} "${key}": ttl must be a number of milliseconds, 0 or more: received ${quote(ttl)}`);
    }
    const { maxValueBytes, maxBytes, maxFrameBytes } = this.#options;
    const json = toJson(value, `Cannot ${operation} "${key}"`);
    if (json.length > maxValueBytes) {
      throw new RangeError(`Cannot ${operation} "${key}": the value takes ${json.length} bytes as JSON, more than maxValueBytes (${maxValueBytes})`);
    }
    const size = key.length + json.length;
    if (size > maxBytes) {
      throw new RangeError(`Cannot ${operation} "${key}": the entry takes ${size} bytes, more than maxBytes (${maxBytes})`);
    }
    // Measured in UTF-8 only when it could matter: a string takes at most 3 bytes per unit.
    const room = maxFrameBytes - FRAME_ROOM;
    if (3 * size > room && utf8Encoder.encode(json).length > room) {
      throw new RangeError(`Cannot ${operation} "${key}": the value takes more than the ${room} bytes of UTF-8 a frame can carry`);
    }
    return { key, stored: this.#options.stringify ? json : value, size, ttl };
  }

  /** Stores writes here and waits until every live peer knows this node holds them. */
  async #write(writes: Write[]): Promise<void> {
    if (this.#lifecycle !== "ready") await this.#whenStarted("set");
    const owned = writes.map(({ key, stored, size, ttl }): [string, number, number] => {
      this.#counters.sets++;
      this.#overtake(key);
      this.#cluster.forgetRemote(key);
      return [key, this.#store.set(key, stored, size, ttl), ttl];
    });
    if (this.#cluster.peerCount > 0) await this.#announce(owned);
  }

  /**
   * Tells every peer that this node now holds these keys, and resolves once all have
   * acknowledged. The writes of one tick go as one `own` request per peer.
   */
  #announce(owned: Array<[string, number, number]>): Promise<void> {
    if (this.#owned.length === 0) {
      this.#ownedSent = deferred<void>();
      queueMicrotask(() => this.#flushOwned());
    }
    for (const triple of owned) this.#owned.push(triple);
    return this.#ownedSent.promise;
  }

  /** Sends the announcements waiting for the end of the tick; a drop must never overtake them. */
  #flushOwned(): void {
    if (this.#owned.length === 0) return;
    const [owned, sent] = [this.#owned, this.#ownedSent];
    this.#owned = [];
    const requests = [];
    for (let i = 0; i < owned.length; i += OWNED_PER_MESSAGE) {
      requests.push(this.#cluster.askAll({ op: "own", keys: owned.slice(i, i + OWNED_PER_MESSAGE) }));
    }
    Promise.all(requests).then(() => sent.resolve());
  }

  async #remove(key: string): Promise<void> {
    await this.#whenStarted("remove");
    // Every peer hears of it: a directory can miss a holder for a while (one that did not answer
    // in time, say), and a removal must reach the holder all the same.
    this.#overtake(key);
    const version = this.#store.delete(key);
    this.#cluster.forgetRemote(key);
    this.#flushOwned();
    await this.#cluster.askAll({ op: "drop", keys: [[key, version]] });
  }

  async #clear(): Promise<void> {
    await this.#whenStarted("clear");
    const gone = this.#store.clear();
    this.#flushOwned();
    for (let i = 0; i < gone.length; i += KEYS_PER_MESSAGE) {
      await this.#cluster.askAll({ op: "gone", keys: gone.slice(i, i + KEYS_PER_MESSAGE) });
    }
  }

  /** Collects keys the store evicted or expired, and tells the peers once per tick, unawaited. */
  #tellGone(key: string, version: number): void {
    if (this.#gone.length === 0) {
      queueMicrotask(() => {
        const keys = this.#gone;
        this.#gone = [];
        this.#flushOwned();
        this.#cluster.askAll({ op: "gone", keys });
      });
    }
    this.#gone.push([key, version]);
  }

  /** Answers a peer's data request with the fields of the reply, or a Promise of them. */
  #serve(peer: Peer, message: Message): Record<string, unknown> | Promise<Record<string, unknown>> {
    switch (message.op) {
      case "get": {
        const entry = this.#store.get(requireString(message, "key"));
        return entry === undefined ? {} : { value: this.#reveal(entry.value) };
      }
      case "mget": {
        // [value] when held, [] when not, 0 when left out to keep the answer within a frame.
        let room = this.#options.maxFrameBytes / 2;
        const values = requireArray(message, "keys").map((key) => {
          const entry = typeof key === "string" ? this.#store.get(key) : undefined;
          if (entry === undefined) return [];
          room -= entry.size;
          return room < 0 ? 0 : [this.#reveal(entry.value)];
        });
        return { values };
      }
      case "own":
        for (const [key, version, ttl] of requireKeyList(message)) {
          this.#overtake(key);
          if (this.#store.yieldTo(key, version, peer.id)) this.#cluster.learn(key, peer, version, ttl);
        }
        return {};
      case "drop":
        for (const [key, version] of requireKeyList(message)) {
          this.#overtake(key);
          this.#store.deleteOlder(key, version, peer.id);
          this.#cluster.forgetOlder(key, version, peer.id);
        }
        return {};
      case "gone":
        for (const [key, version] of requireKeyList(message)) this.#cluster.forgetExact(key, peer, version);
        return {};
      case "fetch":
        return this.#answerFetch(requireString(message, "key"));
      case "stats":
        return { stats: this.#localStats() };
      default:
        throw new ProtocolError(`unknown request "${String(message.op)}"`);
    }
  }

  /** A peer asks this node, the key's agreed fetcher, for a value no node holds. */
  async #answerFetch(key: string): Promise<Record<string, unknown>> {
    const local = this.#store.get(key);
    if (local !== undefined) return { value: this.#reveal(local.value) };
    if (this.#options.fetch === undefined || this.#lifecycle !== "ready") return {};
    // A null from fetch is an answer too: the asking node must not call fetch again.
    return { value: await this.#fetchHere(key) };
  }

  #emit<E extends keyof NodeEvents>(event: E, payload: NodeEvents[E]): void {
    for (const listener of this.#listeners[event]) callLater(listener, payload);
  }

  /** The caller's view of a stored value: a fresh copy when values are stored as JSON. */
  #reveal(stored: unknown): unknown {
    return this.#options.stringify ? JSON.parse(stored as string) : stored;
  }

  #localStats(): NodeStats {
    const address = this.address;
    return {
      id: this.id,
      host: address.host,
      port: address.port,
      entries: this.#store.size,
      bytes: this.#store.bytes,
      peers: this.#cluster.peerCount,
      connections: this.#cluster.connectionCount,
      remoteKeys: this.#cluster.remoteKeyCount,
      ...this.#counters,
      evictions: this.#store.evictions,
      expirations: this.#store.expirations,
      served: this.#cluster.served,
      uptime: this.#startedAt === 0 ? 0 : Date.now() - this.#startedAt,
    };
  }
}

/** A holder's answer for one key: `[value]`, null for no such entry, undefined for no answer. */
type Found = [unknown] | null | undefined;

/** A call of the `fetch` option, and whether a write of its key has made its value stale. */
interface FetchCall {
  overtaken: boolean;
  result: Promise<unknown>;
}

/** A write checked and measured, ready to store. */
interface Write {
  key: string;
  stored: unknown;
  size: number;
  ttl: number;
}

export default Node;

// ─── Options ─────────────────────────────────────────────────────────────────────────────────

interface ResolvedOptions {
  host: string;
  port: number;
  seeds: Address[];
  socket: Record<string, unknown>;
  server: Record<string, unknown>;
  stringify: boolean;
  fetch: ((key: string, done: FetchDone) => void) | undefined;
  connectDelay: number;
  connectAttempts: number;
  requestTimeout: number;
  heartbeatInterval: number;
  peerTimeout: number;
  fetchTimeout: number;
  ttl: number;
  maxEntries: number;
  maxBytes: number;
  secret: string | undefined;
  tls: TlsOptions | undefined;
  maxFrameBytes: number;
  maxConnections: number;
  maxKeyLength: number;
  maxValueBytes: number;
  maxQueueBytes: number;
}

const KNOWN_OPTIONS = new Set([
  "host", "addr", "port", "master", "socket", "server", "stringify", "fetch", "connectDelay",
  "connectAttempts", "requestTimeout", "heartbeatInterval", "peerTimeout", "fetchTimeout", "ttl",
  "maxEntries", "maxBytes", "secret", "tls", "maxFrameBytes", "maxConnections", "maxKeyLength",
  "maxValueBytes", "maxQueueBytes",
]);

function resolveOptions(options: NodeOptions): ResolvedOptions {
  const fail = (what: string, received: unknown, Kind: ErrorConstructor = TypeError): never => {
    throw new Kind(`Cannot create Node: ${what}: received ${quote(received)}`);
  };
  if (typeof options !== "object" || options === null) fail("options must be an object", options);
  for (const name of Object.keys(options)) {
    if (!KNOWN_OPTIONS.has(name)) fail(`unknown option "${name}"`, (options as Record<string, unknown>)[name]);
  }
  const { host, addr } = options;
  if (host !== undefined && addr !== undefined && host !== addr) {
    fail("host and addr name the same setting and differ", `${host}" and "${addr}`);
  }
  const chosenHost = host ?? addr ?? DEFAULTS.host;
  if (typeof chosenHost !== "string" || chosenHost === "") fail("host must be a non-empty string", chosenHost);

  const port = options.port ?? DEFAULTS.port;
  if (!isPort(port, 0)) fail("port must be an integer from 0 to 65535", port, RangeError);

  const masters = options.master === undefined ? [] : [options.master].flat();
  const seeds = masters.map((m): Address => {
    if (typeof m !== "object" || m === null) fail("master must be an object with host and port, or a list of them", m);
    const masterHost = m.host ?? DEFAULTS.host;
    if (typeof masterHost !== "string" || masterHost === "") fail("master.host must be a non-empty string", masterHost);
    if (!isPort(m.port, 1)) fail("master.port must be an integer from 1 to 65535", m.port, RangeError);
    return { host: masterHost, port: m.port };
  });
  for (const name of ["socket", "server"] as const) {
    const value = options[name];
    if (value !== undefined && (typeof value !== "object" || value === null)) fail(`${name} must be an object`, value);
  }
  if (options.stringify !== undefined && typeof options.stringify !== "boolean") {
    fail("stringify must be a boolean", options.stringify);
  }
  if (options.fetch !== undefined && typeof options.fetch !== "function") fail("fetch must be a function", options.fetch);
  const connectDelay = options.connectDelay ?? DEFAULTS.connectDelay;
  if (typeof connectDelay !== "number" || !(connectDelay >= 0) || !Number.isFinite(connectDelay)) {
    fail("connectDelay must be a number of milliseconds, 0 or more", connectDelay, RangeError);
  }
  const connectAttempts = options.connectAttempts ?? DEFAULTS.connectAttempts;
  if (!Number.isInteger(connectAttempts) || connectAttempts < 1) {
    fail("connectAttempts must be an integer of 1 or more", connectAttempts, RangeError);
  }
  const positive = (name: "requestTimeout" | "heartbeatInterval" | "peerTimeout" | "fetchTimeout"): number => {
    const value = options[name] ?? DEFAULTS[name];
    if (typeof value !== "number" || !(value > 0) || !Number.isFinite(value)) {
      fail(`${name} must be a positive number of milliseconds`, value, RangeError);
    }
    return value;
  };
  const requestTimeout = positive("requestTimeout");
  const heartbeatInterval = positive("heartbeatInterval");
  const peerTimeout = positive("peerTimeout");
  const fetchTimeout = positive("fetchTimeout");
  const ttl = options.ttl ?? DEFAULTS.ttl;
  if (typeof ttl !== "number" || !(ttl >= 0) || !Number.isFinite(ttl)) {
    fail("ttl must be a number of milliseconds, 0 or more", ttl, RangeError);
  }
  const maxEntries = options.maxEntries ?? DEFAULTS.maxEntries;
  if (maxEntries !== Infinity && !(Number.isInteger(maxEntries) && maxEntries >= 1)) {
    fail("maxEntries must be an integer of 1 or more, or Infinity", maxEntries, RangeError);
  }
  const maxBytes = options.maxBytes ?? DEFAULTS.maxBytes;
  if (typeof maxBytes !== "number" || !(maxBytes >= 1)) fail("maxBytes must be a number of 1 or more, or Infinity", maxBytes, RangeError);
  const whole = (name: "maxFrameBytes" | "maxConnections" | "maxKeyLength" | "maxValueBytes" | "maxQueueBytes", min: number): number => {
    const value = options[name] ?? DEFAULTS[name];
    if (!Number.isSafeInteger(value) || value < min) fail(`${name} must be an integer of ${min} or more`, value, RangeError);
    return value;
  };
  const maxFrameBytes = whole("maxFrameBytes", 128 * 1024);
  const maxValueBytes = whole("maxValueBytes", 1);
  if (maxValueBytes > maxFrameBytes - FRAME_ROOM) {
    fail(`maxValueBytes must leave 64 KiB of maxFrameBytes (${maxFrameBytes}) free`, maxValueBytes, RangeError);
  }
  const { secret, tls } = options;
  if (secret !== undefined && (typeof secret !== "string" || secret === "")) fail("secret must be a non-empty string", secret);
  if (tls !== undefined) {
    if (typeof tls !== "object" || tls === null) fail("tls must be an object with cert and key", tls);
    for (const field of ["cert", "key"] as const) {
      if (typeof tls[field] !== "string" || tls[field] === "") fail(`tls.${field} must be a PEM string`, tls[field]);
    }
    if (tls.ca !== undefined && typeof tls.ca !== "string") fail("tls.ca must be a PEM string", tls.ca);
  }
  if (peerTimeout < 2 * heartbeatInterval) {
    fail(`peerTimeout must be at least twice heartbeatInterval (${heartbeatInterval} ms)`, peerTimeout, RangeError);
  }
  return {
    host: chosenHost,
    port,
    seeds,
    socket: options.socket ?? {},
    server: options.server ?? {},
    stringify: options.stringify ?? false,
    fetch: options.fetch,
    connectDelay,
    connectAttempts,
    requestTimeout,
    heartbeatInterval,
    peerTimeout,
    fetchTimeout,
    ttl,
    maxEntries,
    maxBytes,
    secret,
    tls: tls && { cert: tls.cert, key: tls.key, ca: tls.ca },
    maxFrameBytes,
    maxConnections: whole("maxConnections", 1),
    maxKeyLength: whole("maxKeyLength", 1),
    maxValueBytes,
    maxQueueBytes: whole("maxQueueBytes", 1024),
  };
}

function isPort(value: unknown, min: number): value is number {
  return Number.isInteger(value) && (value as number) >= min && (value as number) <= 65535;
}

// ─── Small utilities ─────────────────────────────────────────────────────────────────────────

function assertKey(key: unknown, operation: string): asserts key is string {
  if (typeof key !== "string") throw new TypeError(`Cannot ${operation}: key must be a string: received ${quote(key)}`);
}

function assertEvent(event: unknown, operation: string): void {
  if (event !== "peerUp" && event !== "peerDown" && event !== "error") {
    throw new TypeError(`Cannot ${operation}: event must be "peerUp", "peerDown" or "error": received ${quote(event)}`);
  }
}

function assertFunction(value: unknown, operation: string, name: string): void {
  if (typeof value !== "function") {
    throw new TypeError(`Cannot ${operation}: ${name} must be a function: received ${quote(value)}`);
  }
}

/** JSON text of a value, or a TypeError that says why the value cannot travel. */
function toJson(value: unknown, context: string): string {
  let json: string | undefined;
  try {
    json = JSON.stringify(value);
  } catch (cause) {
    throw new TypeError(`${context}: the value cannot be written as JSON: ${describe(cause)}`, { cause });
  }
  if (json === undefined) throw new TypeError(`${context}: the value cannot be written as JSON: received ${quote(value)}`);
  return json;
}

/** A value as it reads in an error message. */
function quote(value: unknown): string {
  if (typeof value === "string") return `"${value}"`;
  if (typeof value === "function") return "a function";
  if (typeof value === "bigint") return `${value}n`;
  if (typeof value === "object" && value !== null) return Array.isArray(value) ? "an array" : "an object";
  return String(value);
}

/** A deep copy of a JSON value. */
function copyJson(value: unknown): unknown {
  return typeof value === "object" && value !== null ? JSON.parse(JSON.stringify(value)) : value;
}

/** Rejects with `timeoutError()` if `promise` has not settled within `ms`. */
function withTimeout<T>(promise: Promise<T>, ms: number, timeoutError: () => Error): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(timeoutError()), ms)));
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** Hands a promise's outcome to a Node.js-style callback, or returns the promise when there is none. */
function settle<T>(promise: Promise<T>, callback: Callback<T> | undefined): Promise<T> | void {
  if (callback === undefined) return promise;
  promise.then((value) => callLater(callback, null, value), (err) => callLater(callback, err));
}

/**
 * Calls a user's callback so that whatever it throws surfaces as an uncaught error, as it would
 * from any Node.js callback, instead of breaking the promise chain or socket handler that called it.
 */
function callLater<A extends unknown[]>(callback: (...args: A) => void, ...args: A): void {
  try {
    callback(...args);
  } catch (error) {
    queueMicrotask(() => {
      throw error;
    });
  }
}

interface Deferred<T> {
  promise: Promise<T>;
  resolve: (value: T) => void;
  reject: (reason: unknown) => void;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (reason: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

function randomId(): string {
  return randomHex(8);
}

/** `size` random bytes, as hex. */
function randomHex(size: number): string {
  const bytes = crypto.getRandomValues(new Uint8Array(size));
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

/** Timers that `stop` can cancel, so that a stopped node never keeps its process alive. */
class Timers {
  #pending = new Set<{ id: ReturnType<typeof setTimeout>; cancel: () => void }>();
  #closed = false;

  /** Resolves after `ms`, or rejects with `reason()` if cancelled first or already closed. */
  sleep(ms: number, reason: () => Error): Promise<void> {
    if (this.#closed) return Promise.reject(reason());
    return new Promise((resolve, reject) => {
      const timer = {
        id: setTimeout(() => {
          this.#pending.delete(timer);
          resolve();
        }, ms),
        cancel: () => reject(reason()),
      };
      this.#pending.add(timer);
    });
  }

  /** Cancels every sleep, now and later. */
  close(): void {
    this.#closed = true;
    for (const timer of this.#pending) {
      clearTimeout(timer.id);
      timer.cancel();
    }
    this.#pending.clear();
  }
}

// ─── Runtime adapter ─────────────────────────────────────────────────────────────────────────
// The only section that touches Deno, Bun, node:net or node:tls. Everything else sees Transport
// and Conn.

/** What a connection tells its owner. */
interface ConnHandlers {
  data(chunk: Uint8Array): void;
  close(): void;
}

/** One TCP (or TLS) connection, whatever the runtime. */
interface Conn {
  /** The address the other end connects from. */
  readonly remoteHost: string;
  /** Starts delivering data and the close event to `handlers`. */
  start(handlers: ConnHandlers): void;
  /** Queues bytes; the connection writes them in order as fast as the other end reads. */
  write(bytes: Uint8Array): void;
  /** Bytes written but not yet taken by the operating system, because the other end is slow. */
  buffered(): number;
  /**
   * Closes once queued bytes are written, or after `CLOSE_GRACE_MS` if the other end does not
   * take them; `close` is then reported once. A pending forced close never keeps the process alive.
   */
  close(): void;
}

/** How long a closing connection may take to hand over its last bytes before it is cut. */
const CLOSE_GRACE_MS = 1000;

interface Listener {
  readonly port: number;
  /** Stops accepting; resolves once the port is free again. */
  close(): Promise<void>;
}

/** How a transport listens and connects: the user's socket options and TLS settings. */
interface TransportOptions {
  native: Record<string, unknown>;
  tls: TlsOptions | undefined;
}

interface Transport {
  listen(address: Address, options: TransportOptions, accept: (conn: Conn) => void): Promise<Listener>;
  connect(address: Address, options: TransportOptions): Promise<Conn>;
}

let transport: Transport | undefined;

/** The transport of the runtime this file runs in; Deno and Bun are checked before Node.js, since both define `process`. */
function currentTransport(): Transport {
  const runtime = globalThis as { Deno?: DenoApi; Bun?: BunApi };
  transport ??= runtime.Deno ? denoTransport(runtime.Deno) : runtime.Bun ? bunTransport(runtime.Bun) : nodeTransport();
  return transport;
}

const NO_HANDLERS: ConnHandlers = { data() {}, close() {} };

// Node.js: node:net and node:tls, loaded on first use so that the module itself imports nothing.

function nodeTransport(): Transport {
  let netModule: Promise<typeof import("node:net")> | undefined;
  let tlsModule: Promise<typeof import("node:tls")> | undefined;
  const net = () => (netModule ??= import("node:net"));
  const tls = () => (tlsModule ??= import("node:tls"));

  function wrap(socket: import("node:net").Socket): Conn {
    socket.setNoDelay(true);
    let handlers = NO_HANDLERS;
    // An 'error' is always followed by 'close'; listening for it keeps Node.js from throwing.
    socket.on("error", () => {});
    socket.on("close", () => handlers.close());
    return {
      remoteHost: socket.remoteAddress ?? "",
      start(next) {
        handlers = next;
        socket.on("data", (chunk: Uint8Array) => handlers.data(chunk));
      },
      write(bytes) {
        socket.write(bytes);
      },
      buffered: () => socket.writableLength,
      close() {
        socket.end(() => socket.destroy());
        const cut = setTimeout(() => socket.destroy(), CLOSE_GRACE_MS);
        cut.unref();
        socket.once("close", () => clearTimeout(cut));
      },
    };
  }

  /** Resolves once `socket` emits `ready`; rejects on its first error. */
  const opened = (socket: import("node:net").Socket, ready: string) =>
    new Promise<void>((resolve, reject) => {
      socket.once("error", reject);
      socket.once(ready, () => {
        socket.off("error", reject);
        resolve();
      });
    });

  return {
    async listen(address, { native, tls: secure }, accept) {
      // With a CA, clients must present a certificate it signed: mutual TLS.
      const server = secure === undefined
        ? (await net()).createServer(native, (socket) => accept(wrap(socket)))
        : (await tls()).createServer(
          { ...native, cert: secure.cert, key: secure.key, ca: secure.ca, requestCert: secure.ca !== undefined, rejectUnauthorized: secure.ca !== undefined },
          (socket) => accept(wrap(socket)),
        );
      await new Promise<void>((resolve, reject) => {
        server.once("error", reject);
        server.listen({ host: address.host, port: address.port }, () => {
          server.off("error", reject);
          resolve();
        });
      });
      server.on("error", () => {});
      // A client that fails the TLS handshake never reaches accept; its socket must not throw.
      server.on("tlsClientError", () => {});
      const bound = server.address();
      return {
        port: typeof bound === "object" && bound !== null ? bound.port : address.port,
        close: () => new Promise<void>((resolve) => server.close(() => resolve())),
      };
    },
    async connect(address, { native, tls: secure }) {
      if (secure === undefined) {
        const socket = (await net()).connect({ ...native, host: address.host, port: address.port });
        await opened(socket, "connect");
        return wrap(socket);
      }
      const socket = (await tls()).connect({ ...native, host: address.host, port: address.port, ...secure });
      await opened(socket, "secureConnect");
      return wrap(socket);
    },
  };
}

// Deno: Deno.listen/Deno.connect, and Deno.listenTls/Deno.connectTls.

interface DenoConn {
  readonly remoteAddr: { hostname?: string };
  read(buffer: Uint8Array): Promise<number | null>;
  write(bytes: Uint8Array): Promise<number>;
  setNoDelay?(noDelay?: boolean): void;
  close(): void;
}

type DenoListener = AsyncIterable<DenoConn> & { readonly addr: { port?: number }; close(): void };

interface DenoApi {
  listen(options: { hostname: string; port: number }): DenoListener;
  listenTls(options: { hostname: string; port: number; cert: string; key: string }): DenoListener;
  connect(options: { hostname: string; port: number }): Promise<DenoConn>;
  connectTls(options: { hostname: string; port: number; caCerts?: string[]; cert?: string; key?: string }): Promise<DenoConn & { handshake(): Promise<unknown> }>;
  unrefTimer(id: ReturnType<typeof setTimeout>): void;
}

function denoTransport(deno: DenoApi): Transport {
  function wrap(conn: DenoConn): Conn {
    conn.setNoDelay?.(true);
    let handlers = NO_HANDLERS;
    let queue: Uint8Array[] = [];
    let queued = 0;
    let writing = false;
    let closing = false;
    let closed = false;

    const finish = () => {
      if (closed) return;
      closed = true;
      try {
        conn.close();
      } catch {
        // Already closed by the other side.
      }
      handlers.close();
    };
    const flush = async () => {
      writing = true;
      try {
        while (queue.length > 0) {
          const batch = queue;
          queue = [];
          for (let chunk of batch) {
            while (chunk.length > 0) {
              const written = await conn.write(chunk);
              queued -= written;
              chunk = chunk.subarray(written);
            }
          }
        }
      } catch {
        finish();
      }
      writing = false;
      if (closing) finish();
    };
    const read = async () => {
      const buffer = new Uint8Array(64 * 1024);
      try {
        while (!closed) {
          const n = await conn.read(buffer);
          if (n === null) break;
          handlers.data(buffer.slice(0, n));
        }
      } catch {
        // A reset, a failed TLS handshake or a close from our side ends the loop like an orderly end.
      }
      finish();
    };

    return {
      remoteHost: conn.remoteAddr.hostname ?? "",
      start(next) {
        handlers = next;
        read();
      },
      write(bytes) {
        if (closed || closing) return;
        queue.push(bytes);
        queued += bytes.length;
        if (!writing) flush();
      },
      buffered: () => queued,
      close() {
        closing = true;
        if (!writing) return finish();
        deno.unrefTimer(setTimeout(finish, CLOSE_GRACE_MS));
      },
    };
  }

  return {
    async listen(address, { native, tls: secure }, accept) {
      // Deno.listenTls cannot ask clients for certificates: `secret` authenticates them instead.
      const where = { ...native, hostname: address.host, port: address.port };
      const listener = secure === undefined ? deno.listen(where) : deno.listenTls({ ...where, cert: secure.cert, key: secure.key });
      const accepting = (async () => {
        try {
          for await (const conn of listener) accept(wrap(conn));
        } catch {
          // The listener was closed.
        }
      })();
      return {
        port: listener.addr.port ?? address.port,
        close: async () => {
          try {
            listener.close();
          } catch {
            // Already closed.
          }
          // Deno frees the port once the pending accept has been cancelled.
          await accepting;
        },
      };
    },
    async connect(address, { native, tls: secure }) {
      const where = { ...native, hostname: address.host, port: address.port };
      if (secure === undefined) return wrap(await deno.connect(where));
      const conn = await deno.connectTls({
        ...where,
        cert: secure.cert,
        key: secure.key,
        caCerts: secure.ca === undefined ? undefined : [secure.ca],
      });
      try {
        await conn.handshake();
      } catch (error) {
        conn.close();
        throw error;
      }
      return wrap(conn);
    },
  };
}

// Bun: Bun.listen and Bun.connect (with their `tls` option), whose socket callbacks are routed to
// a Conn kept in socket.data.

interface BunSocket {
  data: BunConnState;
  readonly remoteAddress: string;
  write(bytes: Uint8Array): number;
  end(): void;
  terminate(): void;
  setNoDelay?(noDelay?: boolean): boolean;
}

interface BunSocketHandlers {
  open(socket: BunSocket): void;
  data(socket: BunSocket, chunk: Uint8Array): void;
  drain(socket: BunSocket): void;
  close(socket: BunSocket): void;
  error(socket: BunSocket, error: Error): void;
  handshake?(socket: BunSocket, success: boolean, authorizationError: Error | null): void;
  connectError?(socket: BunSocket, error: Error): void;
}

interface BunTls {
  cert: string;
  key: string;
  ca?: string;
  requestCert?: boolean;
  rejectUnauthorized?: boolean;
}

interface BunApi {
  listen(options: { hostname: string; port: number; tls?: BunTls; socket: BunSocketHandlers }): {
    readonly port: number;
    stop(closeActive?: boolean): void;
  };
  connect(options: { hostname: string; port: number; tls?: BunTls; socket: BunSocketHandlers }): Promise<BunSocket>;
}

/** What Bun keeps for each socket: the handlers, and bytes the kernel did not take yet. */
interface BunConnState {
  handlers: ConnHandlers;
  early: Uint8Array[] | undefined;
  unsent: Uint8Array[];
  unsentBytes: number;
  closing: boolean;
  closed: boolean;
}

function bunTransport(bun: BunApi): Transport {
  const writeUnsent = (socket: BunSocket) => {
    const state = socket.data;
    while (state.unsent.length > 0) {
      const chunk = state.unsent[0];
      const written = Math.max(socket.write(chunk), 0);
      state.unsentBytes -= written;
      if (written < chunk.length) {
        state.unsent[0] = chunk.subarray(written);
        return;
      }
      state.unsent.shift();
    }
    if (state.closing) socket.end();
  };

  const handlers: BunSocketHandlers = {
    open(socket) {
      socket.data = { handlers: NO_HANDLERS, early: [], unsent: [], unsentBytes: 0, closing: false, closed: false };
      socket.setNoDelay?.(true);
    },
    data(socket, chunk) {
      const state = socket.data;
      if (state.early) state.early.push(chunk.slice());
      else state.handlers.data(chunk);
    },
    drain: writeUnsent,
    close(socket) {
      const state = socket.data;
      if (state === undefined || state.closed) return;
      state.closed = true;
      state.handlers.close();
    },
    error() {
      // 'close' follows.
    },
  };

  function wrap(socket: BunSocket): Conn {
    const state = socket.data;
    return {
      remoteHost: socket.remoteAddress,
      start(next) {
        state.handlers = next;
        const early = state.early ?? [];
        state.early = undefined;
        for (const chunk of early) next.data(chunk);
      },
      write(bytes) {
        if (state.closed || state.closing) return;
        state.unsent.push(bytes);
        state.unsentBytes += bytes.length;
        if (state.unsent.length === 1) writeUnsent(socket);
      },
      buffered: () => state.unsentBytes,
      close() {
        if (state.closing || state.closed) return;
        state.closing = true;
        if (state.unsent.length === 0) return socket.end();
        setTimeout(() => state.closed || socket.terminate(), CLOSE_GRACE_MS).unref();
      },
    };
  }

  /** Bun's tls option; with a CA, both ends verify each other's certificate. */
  const bunTls = (secure: TlsOptions | undefined): BunTls | undefined =>
    secure && { ...secure, requestCert: secure.ca !== undefined, rejectUnauthorized: secure.ca !== undefined };

  return {
    async listen(address, { native, tls: secure }, accept) {
      const server = bun.listen({
        ...native,
        hostname: address.host,
        port: address.port,
        tls: bunTls(secure),
        socket: {
          ...handlers,
          open(socket) {
            handlers.open(socket);
            // A TLS connection is handed over once its handshake has succeeded.
            if (secure === undefined) accept(wrap(socket));
          },
          handshake(socket, success, authorizationError) {
            if (success && (authorizationError === null || secure?.ca === undefined)) accept(wrap(socket));
            else socket.terminate();
          },
        },
      });
      return { port: server.port, close: async () => server.stop(true) };
    },
    async connect(address, { native, tls: secure }) {
      let handshake: Promise<void> | undefined;
      let settle: { resolve(): void; reject(error: Error): void } | undefined;
      if (secure !== undefined) handshake = new Promise((resolve, reject) => (settle = { resolve, reject }));
      const socket = await bun.connect({
        ...native,
        hostname: address.host,
        port: address.port,
        tls: bunTls(secure),
        socket: {
          ...handlers,
          connectError: () => {},
          handshake(socket, success, authorizationError) {
            if (success && authorizationError === null) return settle?.resolve();
            socket.terminate();
            settle?.reject(authorizationError ?? new Error("TLS handshake failed"));
          },
          close(socket) {
            settle?.reject(new Error("The connection closed during the TLS handshake"));
            handlers.close(socket);
          },
        },
      });
      await handshake;
      return wrap(socket);
    },
  };
}

// ─── Protocol ────────────────────────────────────────────────────────────────────────────────
// Each frame: a 4-byte big-endian length, then that many bytes of UTF-8 JSON, one object with
// an `op`. Requests carry `rid`, answered by `{op: "ok", rid, ...}` or `{op: "fail", rid, ...}`.

/** The protocol version both ends must speak; sent in every handshake. */
const PROTOCOL_VERSION = 1;
/** Heartbeat checks between two attempts to reach the members lost without a goodbye. */
const LOST_RETRY_CHECKS = 10;
/** How long a member lost without a goodbye is dialled again before it is given up. */
const LOST_RETENTION_MS = 10 * 60 * 1000;
/** Largest frame before the handshake is done: hello, challenge and prove are small. */
const HANDSHAKE_FRAME_BYTES = 64 * 1024;
/** Room a frame keeps beside the largest value: the key and the message around it. */
const FRAME_ROOM = 64 * 1024;
/** Largest version a peer may send (2^50). */
const MAX_VERSION = 2 ** 50;
/** Keys per message when a node tells a new peer what it holds, or its peers what it dropped. */
const KEYS_PER_MESSAGE = 1000;
/** Writes per `own` message: 10,000 triples stay far within a frame. */
const OWNED_PER_MESSAGE = 10_000;
/** How often a node removes expired entries and tells its peers, in milliseconds. */
const SWEEP_INTERVAL = 1000;

interface Message {
  op: string;
  rid?: number;
  [field: string]: unknown;
}

/** A peer broke the protocol; the connection is closed. */
class ProtocolError extends KosyakError {
  constructor(message: string) {
    super("ERR_PROTOCOL", `Protocol error: ${message}`);
  }
}

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder("utf-8", { fatal: true });

/**
 * Frames messages into one buffer: each one's length prefix, then its JSON. A message that JSON
 * cannot write, or that would be larger than a peer accepts, goes to `replace`; what that
 * returns is sent in its place.
 */
function encodeFrames(
  messages: readonly Message[],
  maxFrameBytes: number,
  replace: (message: Message, problem: string) => Message | undefined,
): Uint8Array {
  const bodies: Uint8Array[] = [];
  for (const message of messages) {
    let body: Uint8Array | undefined;
    let problem: string;
    try {
      body = utf8Encoder.encode(JSON.stringify(message));
      problem = `the message takes ${body.length} bytes, more than the frame limit of ${maxFrameBytes}`;
    } catch (error) {
      problem = `the value cannot be written as JSON: ${describe(error)}`;
    }
    if (body !== undefined && body.length <= maxFrameBytes) {
      bodies.push(body);
      continue;
    }
    const substitute = replace(message, problem);
    if (substitute !== undefined) bodies.push(utf8Encoder.encode(JSON.stringify(substitute)));
  }
  let total = 0;
  for (const body of bodies) total += 4 + body.length;
  const out = new Uint8Array(total);
  const view = new DataView(out.buffer);
  let offset = 0;
  for (const body of bodies) {
    view.setUint32(offset, body.length);
    out.set(body, offset + 4);
    offset += 4 + body.length;
  }
  return out;
}

/** Gathers incoming chunks and hands out each complete message. */
class FrameDecoder {
  #buffer = new Uint8Array(0);
  #start = 0;
  #end = 0;
  /** Largest frame accepted; raised once the other end is trusted. */
  limit: number;

  constructor(limit: number) {
    this.limit = limit;
  }

  /** Adds a chunk and calls `onMessage` for every message it completes; throws ProtocolError. */
  push(chunk: Uint8Array, onMessage: (message: Message) => void): void {
    this.#append(chunk);
    while (this.#end - this.#start >= 4) {
      const view = new DataView(this.#buffer.buffer, this.#buffer.byteOffset + this.#start, 4);
      const length = view.getUint32(0);
      if (length > this.limit) throw new ProtocolError(`frame of ${length} bytes exceeds the limit of ${this.limit}`);
      if (this.#end - this.#start < 4 + length) break;
      const body = this.#buffer.subarray(this.#start + 4, this.#start + 4 + length);
      this.#start += 4 + length;
      onMessage(parseMessage(body));
    }
    if (this.#start === this.#end) {
      this.#start = this.#end = 0;
      // Let go of the room a large frame needed, once it has been read.
      if (this.#buffer.length > 1024 * 1024) this.#buffer = new Uint8Array(0);
    }
  }

  /** Appends a chunk, moving unread bytes to the front or into a larger buffer when it is full. */
  #append(chunk: Uint8Array): void {
    if (this.#end + chunk.length > this.#buffer.length) {
      const unread = this.#end - this.#start;
      if (unread + chunk.length > this.#buffer.length) {
        const larger = new Uint8Array(Math.max(unread + chunk.length, this.#buffer.length * 2, 4096));
        larger.set(this.#buffer.subarray(this.#start, this.#end));
        this.#buffer = larger;
      } else {
        this.#buffer.copyWithin(0, this.#start, this.#end);
      }
      this.#start = 0;
      this.#end = unread;
    }
    this.#buffer.set(chunk, this.#end);
    this.#end += chunk.length;
  }
}

function parseMessage(body: Uint8Array): Message {
  let message: unknown;
  try {
    message = JSON.parse(utf8Decoder.decode(body));
  } catch (error) {
    throw new ProtocolError(`a frame is not UTF-8 JSON: ${describe(error)}`);
  }
  if (typeof message !== "object" || message === null || typeof (message as Message).op !== "string") {
    throw new ProtocolError("a frame is not an object with a string op");
  }
  const rid = (message as Message).rid;
  if (rid !== undefined && !Number.isSafeInteger(rid)) throw new ProtocolError("rid must be an integer");
  return message as Message;
}

function requireString(message: Message, field: string): string {
  const value = message[field];
  if (typeof value !== "string") throw new ProtocolError(`"${message.op}" needs a string ${field}`);
  return value;
}

/** A handshake nonce: 16 random bytes as hex. */
function requireNonce(message: Message): string {
  const nonce = message.nonce;
  if (typeof nonce !== "string" || !/^[0-9a-f]{32}$/.test(nonce)) throw new ProtocolError(`"${message.op}" needs a nonce of 32 hex digits`);
  return nonce;
}

function requireArray(message: Message, field: string): unknown[] {
  const value = message[field];
  if (!Array.isArray(value)) throw new ProtocolError(`"${message.op}" needs an array ${field}`);
  return value;
}

/** The `keys` field of own, drop, gone and keys messages: [key, version, ttl?] triples. */
function requireKeyList(message: Message): Array<[string, number, number]> {
  return requireArray(message, "keys").map((item) => {
    const [key, version, ttl = 0] = Array.isArray(item) ? item : [];
    if (typeof key !== "string" || !isVersion(version) || typeof ttl !== "number" || !(ttl >= 0)) {
      throw new ProtocolError(`"${message.op}" holds something other than [key, version, ttl] lists`);
    }
    return [key, version, ttl];
  });
}

/**
 * Whether a value can be a version. The bound keeps a hostile peer from pushing
 * every clock to where it can no longer count up; no cluster gets near it by writing.
 */
function isVersion(value: unknown): value is number {
  return Number.isSafeInteger(value) && (value as number) >= 0 && (value as number) <= MAX_VERSION;
}

// ─── Peer: one connection ────────────────────────────────────────────────────────────────────

/** The options a connection obeys. */
type PeerLimits = Pick<ResolvedOptions, "requestTimeout" | "maxFrameBytes" | "maxQueueBytes">;

interface PendingRequest {
  resolve: (answer: Message) => void;
  reject: (error: Error) => void;
  deadline: number;
  timeout: number;
}

/** The error a peer's `fail` answer stands for, with the peer's code when it is one of ours. */
function remoteError(message: Message): KosyakError {
  const code = KOSYAK_ERROR_CODES.includes(String(message.code)) ? (message.code as KosyakErrorCode) : "ERR_REMOTE";
  return new KosyakError(code, String(message.message));
}

/**
 * One connection to another node: frames out and in, request ids and their timeouts, and
 * writes batched so that everything sent in one tick leaves in one socket write.
 */
class Peer {
  /** The other node's id, known once the handshake is done. */
  id = "";
  /** Where the other node listens, as it announced in the handshake. */
  listening: Address | undefined;
  /** Whether the other node has told which keys it holds. */
  keysKnown = false;
  /** Whether this node dialled the connection (else the other node did). */
  readonly dialled: boolean;
  /** When a chunk last arrived, and when a batch was last written (Date.now()). */
  lastHeard: number = Date.now();
  lastSent: number = Date.now();
  /** The protocol error that closed the connection, if one did. */
  error: Error | undefined;
  /** Set when another connection to the same node replaced this one; its close is no failure. */
  superseded = false;
  /** The keys the other node holds, with the version of each (this node's directory, in part). */
  readonly keys: Map<string, number> = new Map();
  /** When those of its keys that have a TTL expire (Date.now() scale). */
  #expiries: Map<string, number> | undefined;

  readonly #conn: Conn;
  readonly #decoder: FrameDecoder;
  readonly #limits: PeerLimits;
  readonly #timeout: number;
  readonly #pending = new Map<number, PendingRequest>();
  #nextRid = 1;
  #outgoing: Message[] = [];
  #sweeper: ReturnType<typeof setInterval> | undefined;
  #closed = false;
  #onMessage: (message: Message) => void = () => {};
  #onClose: (reason: PeerDownReason) => void = () => {};

  constructor(conn: Conn, limits: PeerLimits, dialled: boolean) {
    this.#conn = conn;
    this.#limits = limits;
    // Until the handshake is done, nobody may make this node hold a large frame.
    this.#decoder = new FrameDecoder(Math.min(HANDSHAKE_FRAME_BYTES, limits.maxFrameBytes));
    this.#timeout = limits.requestTimeout;
    this.dialled = dialled;
  }

  get remoteHost(): string {
    return this.#conn.remoteHost;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** The handshake is done: frames up to `maxFrameBytes` are welcome from now on. */
  trust(): void {
    this.#decoder.limit = this.#limits.maxFrameBytes;
  }

  /** Records that the other node holds `key` at `version`, for `ttl` more ms (0: no expiry). */
  holdKey(key: string, version: number, ttl: number): void {
    this.keys.set(key, version);
    if (ttl > 0) (this.#expiries ??= new Map()).set(key, Date.now() + ttl);
    else this.#expiries?.delete(key);
  }

  /** Whether the other node's entry for `key` has expired. */
  expired(key: string): boolean {
    const expires = this.#expiries?.get(key);
    return expires !== undefined && expires <= Date.now();
  }

  dropKey(key: string): void {
    this.keys.delete(key);
    this.#expiries?.delete(key);
  }

  dropAllKeys(): void {
    this.keys.clear();
    this.#expiries = undefined;
  }

  /** Takes over what another connection to the same node knew of its keys. */
  adoptKeys(other: Peer): void {
    for (const [key, version] of other.keys) this.keys.set(key, version);
    for (const [key, expires] of other.#expiries ?? []) (this.#expiries ??= new Map()).set(key, expires);
  }

  get info(): PeerInfo {
    return { id: this.id, address: this.listening ?? { host: this.remoteHost, port: 0 } };
  }

  /**
   * Starts reading; each message goes to `onMessage`. Whatever `onMessage` throws closes the
   * connection as a protocol error, so that one bad peer never disturbs the others.
   */
  start(onMessage: (message: Message) => void, onClose: (reason: PeerDownReason) => void): void {
    this.#onMessage = onMessage;
    this.#onClose = onClose;
    this.#conn.start({
      data: (chunk) => {
        this.lastHeard = Date.now();
        try {
          this.#decoder.push(chunk, (message) => this.#receive(message));
        } catch (error) {
          this.error = error instanceof Error ? error : new Error(String(error));
          this.close("protocol-error");
        }
      },
      close: () => this.#teardown("closed"),
    });
  }

  /** Sends a message that expects no answer. */
  send(message: Message): void {
    if (this.#closed) return;
    if (this.#outgoing.length === 0) queueMicrotask(() => this.#flush());
    this.#outgoing.push(message);
  }

  /**
   * Sends a request and resolves with the answer; rejects on `fail`, on close, or when no answer
   * comes within `timeout` ms (by default the node's `requestTimeout`).
   */
  request(message: Message, timeout: number = this.#timeout): Promise<Message> {
    if (this.#closed) return Promise.reject(new KosyakError("ERR_PEER_GONE", `Peer ${this.id} is gone`));
    const rid = this.#nextRid++;
    const answer = new Promise<Message>((resolve, reject) => {
      this.#pending.set(rid, { resolve, reject, deadline: Date.now() + timeout, timeout });
    });
    this.#sweeper ??= setInterval(() => this.#expire(), Math.max(this.#timeout / 4, 10));
    this.send({ ...message, rid });
    return answer;
  }

  /** Answers a request of the other node; `fields` becomes the answer itself. */
  reply(rid: number, fields: Record<string, unknown>): void {
    fields.op = "ok";
    fields.rid = rid;
    this.send(fields as Message);
  }

  /** Answers a request of the other node with an error. */
  fail(rid: number, error: unknown): void {
    const code = error instanceof KosyakError ? error.code : "ERR_REMOTE";
    this.send({ op: "fail", rid, code, message: describe(error) });
  }

  /** Writes what is queued, closes the connection, and fails every pending request. */
  close(reason: PeerDownReason = "closed"): void {
    if (this.#closed) return;
    this.#flush();
    // Torn down first: some runtimes report the close of the socket before close() returns.
    this.#teardown(reason);
    this.#conn.close();
  }

  #receive(message: Message): void {
    if (message.op === "ok" || message.op === "fail") {
      const pending = this.#pending.get(message.rid ?? -1);
      if (pending === undefined) {
        // An answer that came after its request timed out is late, not a breach of the protocol.
        if ((message.rid ?? Infinity) < this.#nextRid) return;
        throw new ProtocolError(`an answer to unknown request ${message.rid}`);
      }
      this.#pending.delete(message.rid!);
      if (message.op === "ok") pending.resolve(message);
      else pending.reject(remoteError(message));
      return;
    }
    this.#onMessage(message);
  }

  #flush(): void {
    if (this.#outgoing.length === 0 || this.#closed) return;
    const messages = this.#outgoing;
    this.#outgoing = [];
    this.lastSent = Date.now();
    // A value changed after set (say, a BigInt added) must fail one answer, not the process.
    const failInstead = (message: Message, problem: string): Message | undefined =>
      message.op === "ok" ? { op: "fail", rid: message.rid, code: "ERR_REMOTE", message: problem } : undefined;
    this.#conn.write(encodeFrames(messages, this.#limits.maxFrameBytes, failInstead));
    // A peer that stops reading is let go, rather than buffered for without limit.
    if (this.#conn.buffered() > this.#limits.maxQueueBytes) this.close("stalled");
  }

  #expire(): void {
    const now = Date.now();
    for (const [rid, pending] of this.#pending) {
      if (pending.deadline > now) continue;
      this.#pending.delete(rid);
      pending.reject(new KosyakError("ERR_TIMEOUT", `Peer ${this.id} did not answer within ${pending.timeout} ms`));
    }
    if (this.#pending.size === 0) this.#stopSweeper();
  }

  #stopSweeper(): void {
    if (this.#sweeper !== undefined) clearInterval(this.#sweeper);
    this.#sweeper = undefined;
  }

  #teardown(reason: PeerDownReason): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#outgoing = [];
    this.#stopSweeper();
    const gone = new KosyakError("ERR_PEER_GONE", `Peer ${this.id || this.remoteHost} closed the connection`);
    for (const pending of this.#pending.values()) pending.reject(gone);
    this.#pending.clear();
    this.#onClose(reason);
  }
}

// ─── Membership: peers, handshake, joining, failure detection, and who holds which key ───────

/** What the cluster needs from the node that owns it. */
interface ClusterHost {
  /** Every local key with its version and remaining milliseconds to live (0: no expiry). */
  localKeys(): Iterable<[string, number, number]>;
  /** Moves the local clock past a version a peer reported. */
  observe(version: number): void;
  /** Answers a data request (get, mget, own, drop, gone, fetch, stats) of a peer. */
  serve(peer: Peer, message: Message): Record<string, unknown> | Promise<Record<string, unknown>>;
  /** Reports a membership change or an error. */
  emit<E extends keyof NodeEvents>(event: E, payload: NodeEvents[E]): void;
}

/** A key's holder as the directory knows it: the peer, and the version of its write. */
interface RemoteHolder {
  peer: Peer;
  version: number;
}

/**
 * The node's view of the cluster: a listener, one Peer per other node (full mesh), and a
 * directory of which peer holds each remote key. Every admitted peer is announced to the others
 * (`member`), so nodes that join at once through different seeds still meet. Heartbeats find
 * peers that fall silent; a connection lost without a goodbye is dialled again by the node
 * by both nodes.
 */
class Cluster {
  /** Requests from peers answered so far. */
  served = 0;

  readonly #id: string;
  readonly #options: ResolvedOptions;
  readonly #host: ClusterHost;
  readonly #peers = new Map<string, Peer>();
  /** Connections of any state, so that stop can close even those mid-handshake. */
  readonly #connections = new Set<Peer>();
  /** Ids of nodes being dialled, so that two announcements of one member make one connection. */
  readonly #dialling = new Set<string>();
  /** Members lost without a goodbye whose redial failed, with where they listen and since when. */
  readonly #lost = new Map<string, { address: Address; since: number }>();
  /** Heartbeat checks so far, to dial lost members every LOST_RETRY_CHECKS of them. */
  #checks = 0;
  /** Ids of peers reported up and not yet down, so that each up is matched by one down. */
  readonly #announced = new Set<string>();
  /** Resolves at the next change of membership or of a peer's keys; see #settled. */
  #changed: Deferred<void> = deferred<void>();
  readonly #timers = new Timers();
  #listener: Listener | undefined;
  /** The port listened on, kept after the listener closes. */
  #port: number | undefined;
  #heartbeat: ReturnType<typeof setInterval> | undefined;
  #lastCheck = Date.now();
  #hmacKey: Promise<CryptoKey> | undefined;
  #stopping = false;

  constructor(id: string, options: ResolvedOptions, host: ClusterHost) {
    this.#id = id;
    this.#options = options;
    this.#host = host;
  }

  get port(): number | undefined {
    return this.#port;
  }

  get peerCount(): number {
    return this.#peers.size;
  }

  get connectionCount(): number {
    return this.#connections.size;
  }

  get remoteKeyCount(): number {
    let count = 0;
    for (const peer of this.#peers.values()) count += peer.keys.size;
    return count;
  }

  /** Listens, then joins through the seeds if there are any; on failure leaves nothing open. */
  async start(): Promise<void> {
    const { host, port, seeds, server, heartbeatInterval } = this.#options;
    try {
      const options = { native: server, tls: this.#options.tls };
      this.#listener = await currentTransport().listen({ host, port }, options, (conn) => this.#accept(conn));
      this.#port = this.#listener.port;
    } catch (cause) {
      throw new KosyakError("ERR_LISTEN", `Cannot listen on ${host}:${port}: ${describe(cause)}`, { cause });
    }
    this.#heartbeat = setInterval(() => this.#checkPeers(), heartbeatInterval);
    try {
      if (this.#stopping) throw this.stoppedError();
      if (seeds.length > 0) await this.#joinVia(await this.#dialSeeds(seeds));
    } catch (error) {
      await this.#closeAll();
      throw error;
    }
  }

  /** Tells every peer this node is leaving, waits for their acknowledgements, and closes everything. */
  async stop(): Promise<void> {
    this.#stopping = true;
    this.#timers.close();
    await Promise.all([...this.#peers.values()].map((peer) => peer.request({ op: "bye" }).catch(() => {})));
    await this.#closeAll();
  }

  /** The peer that holds a live entry for `key`, if another node does. */
  holderOf(key: string): Peer | undefined {
    return this.#holder(key)?.peer;
  }

  /**
   * Records that `peer` holds `key` at `version` for `ttl` more milliseconds (0: no expiry),
   * unless a newer holder is already known.
   */
  learn(key: string, peer: Peer, version: number, ttl: number): void {
    const known = this.#holder(key);
    if (known !== undefined && known.peer !== peer) {
      if (!newer(version, peer.id, known.version, known.peer.id)) return;
      known.peer.dropKey(key);
    }
    peer.holdKey(key, version, ttl);
  }

  /** Forgets the holder of `key` if its write is older than a removal at `version` by `writer`. */
  forgetOlder(key: string, version: number, writer: string): void {
    const known = this.#holder(key);
    if (known !== undefined && newer(version, writer, known.version, known.peer.id)) known.peer.dropKey(key);
  }

  /** Forgets that `peer` holds `key` at exactly `version`: it evicted or expired that entry. */
  forgetExact(key: string, peer: Peer, version: number): void {
    if (peer.keys.get(key) === version) peer.dropKey(key);
  }

  /**
   * The directory is spread over the peers: each keeps the keys it holds with their versions, a
   * Map<string, number> no bigger than a plain map of the same keys. Finding a key's holder asks
   * each member in turn; a full mesh has few.
   */
  #holder(key: string): RemoteHolder | undefined {
    for (const peer of this.#peers.values()) {
      const version = peer.keys.get(key);
      if (version === undefined) continue;
      if (peer.expired(key)) {
        peer.dropKey(key);
        return undefined;
      }
      return { peer, version };
    }
    return undefined;
  }

  /**
   * The peer that should call `fetch` for `key`, or undefined when this node should: of all the
   * members, the one whose id hashed with the key scores highest (rendezvous hashing), so that
   * every node with the same view of the members picks the same one.
   */
  fetcherOf(key: string): Peer | undefined {
    let best: Peer | undefined;
    let bestScore = rendezvousScore(this.#id, key);
    for (const peer of this.#peers.values()) {
      const score = rendezvousScore(peer.id, key);
      if (!peer.closed && (score > bestScore || (score === bestScore && peer.id > (best?.id ?? this.#id)))) {
        best = peer;
        bestScore = score;
      }
    }
    return best;
  }

  /** Forgets that `peer` holds `key`: it answered that it does not. */
  forget(key: string, peer: Peer): void {
    peer.dropKey(key);
  }

  /** Forgets any remote holder of `key`: this node now holds it, or it was removed. */
  forgetRemote(key: string): void {
    this.#holder(key)?.peer.dropKey(key);
  }

  /** Sends a request to every ready peer and gathers the answers of those that answer. */
  async askAll(message: Message): Promise<Message[]> {
    const answers = await Promise.all(
      [...this.#peers.values()].map((peer) => peer.request(message).catch(() => undefined)),
    );
    return answers.filter((answer): answer is Message => answer !== undefined);
  }

  stoppedError(): KosyakError {
    return new KosyakError("ERR_STOPPED", "The node was stopped before init completed");
  }

  /** Asks the seed for the other members, connects to each, and waits until all have told their keys. */
  async #joinVia(seed: Peer): Promise<void> {
    const answer = await seed.request({ op: "peers" });
    const members = Array.isArray(answer.peers) ? (answer.peers as unknown[]) : [];
    await Promise.all(members.map((member) => this.#meet(member)));
    await this.#settled();
  }

  /**
   * Waits, for at most `requestTimeout`, until every member has a live connection that has told
   * its keys. A connection replaced by another to the same node counts as not done yet.
   */
  async #settled(): Promise<void> {
    const deadline = Date.now() + this.#options.requestTimeout;
    const unsettled = () => [...this.#peers.values()].some((peer) => !peer.keysKnown || peer.closed);
    while (unsettled() && Date.now() < deadline && !this.#stopping) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timeout = new Promise<void>((resolve) => (timer = setTimeout(resolve, deadline - Date.now())));
      await Promise.race([this.#changed.promise, timeout]);
      clearTimeout(timer);
    }
  }

  /** Wakes whoever waits in #settled. */
  #notifyChange(): void {
    this.#changed.resolve();
    this.#changed = deferred<void>();
  }

  /** Connects to a member another node told of, unless already connected; never throws. */
  async #meet(member: unknown): Promise<void> {
    const { id, host, port } = (member ?? {}) as Record<string, unknown>;
    if (typeof id !== "string" || typeof host !== "string" || !isPort(port, 1)) return;
    if (id === this.#id || this.#peers.has(id) || this.#dialling.has(id) || this.#stopping) return;
    await this.#dial({ host, port }, id).catch(() => {});
  }

  /** Tries each seed in turn, in up to `connectAttempts` rounds with growing delays between rounds. */
  async #dialSeeds(seeds: Address[]): Promise<Peer> {
    const { connectAttempts, connectDelay } = this.#options;
    let lastError: unknown;
    for (let attempt = 1; attempt <= connectAttempts; attempt++) {
      if (attempt > 1) await this.#timers.sleep(connectDelay * (attempt - 1), () => this.stoppedError());
      for (const seed of seeds) {
        if (this.#stopping) throw this.stoppedError();
        try {
          return await this.#connect(seed);
        } catch (error) {
          // A refusal or a wrong secret will not change by trying again.
          if (error instanceof KosyakError && (error.code === "ERR_PROTOCOL" || error.code === "ERR_AUTH")) throw error;
          lastError = error;
        }
      }
    }
    const where = seeds.map((seed) => `${seed.host}:${seed.port}`).join(", ");
    const tries = `${connectAttempts} attempt${connectAttempts === 1 ? "" : "s"}`;
    throw new KosyakError("ERR_CONNECT", `Cannot connect to ${where} after ${tries}: ${describe(lastError)}`, {
      cause: lastError,
    });
  }

  /**
   * Connects to a member whose id is known, trying `connectAttempts` times with a delay growing
   * by `connectDelay`; stops early when the member connects to this node in the meantime.
   */
  async #dial(address: Address, id: string): Promise<Peer> {
    const { connectAttempts, connectDelay } = this.#options;
    this.#dialling.add(id);
    try {
      for (let attempt = 1; ; attempt++) {
        try {
          return await this.#connect(address);
        } catch (error) {
          const connected = this.#peers.get(id);
          if (connected !== undefined) return connected;
          if (attempt >= connectAttempts || this.#stopping) throw error;
        }
        await this.#timers.sleep(connectDelay * attempt, () => this.stoppedError());
      }
    } finally {
      this.#dialling.delete(id);
    }
  }

  /** Opens a connection and completes the dialling side of the handshake. */
  async #connect(address: Address): Promise<Peer> {
    if (this.#stopping) throw this.stoppedError();
    const conn = await currentTransport().connect(address, { native: this.#options.socket, tls: this.#options.tls });
    if (this.#stopping) {
      conn.close();
      throw this.stoppedError();
    }
    return this.#greet(new Peer(conn, this.#options, true));
  }

  /**
   * The dialling side of the handshake: hello; then, when the other node asks for the secret,
   * its proof checked and this node's proof sent; then welcome, or a refusal.
   */
  async #greet(peer: Peer): Promise<Peer> {
    this.#connections.add(peer);
    const welcomed = deferred<Peer>();
    const fail = (error: Error) => {
      welcomed.reject(error);
      peer.close();
    };
    const nonce = randomHex(16);
    let challenger: string | undefined;
    peer.start(
      (message) => {
        if (peer.id !== "") return this.#dispatch(peer, message);
        switch (message.op) {
          case "challenge":
            if (challenger !== undefined) throw new ProtocolError("a second challenge");
            challenger = requireString(message, "id");
            this.#answerChallenge(peer, nonce, message).catch(fail);
            return;
          case "welcome":
            if (this.#options.secret !== undefined && challenger === undefined) {
              return fail(new KosyakError("ERR_AUTH", "The node does not ask for the secret, so it cannot have proved it knows it"));
            }
            if (challenger !== undefined && challenger !== message.id) throw new ProtocolError("welcome from another id than the challenge");
            // Admitted at once: the peer's key list follows the welcome, maybe in the same chunk.
            return welcomed.resolve(this.#admit(peer, message));
          case "refuse":
            return fail(new KosyakError(message.code === "ERR_AUTH" ? "ERR_AUTH" : "ERR_PROTOCOL", `The node refused the handshake: ${String(message.reason)}`));
          default:
            throw new ProtocolError(`expected welcome, got "${message.op}"`);
        }
      },
      (reason) => {
        const error = peer.error === undefined
          ? new KosyakError("ERR_PEER_GONE", "The node closed the connection during the handshake")
          : new KosyakError("ERR_PROTOCOL", `The node's answer is not kosyak's protocol (does only one side use TLS?): ${peer.error.message}`);
        welcomed.reject(error);
        this.#drop(peer, reason);
      },
    );
    peer.send({ ...this.#hello("hello"), nonce });
    const { requestTimeout } = this.#options;
    const timer = setTimeout(() => fail(new KosyakError("ERR_TIMEOUT", `No handshake answer within ${requestTimeout} ms`)), requestTimeout);
    return await welcomed.promise.finally(() => clearTimeout(timer));
  }

  /** Checks the accepting node's proof of the secret, and answers with this node's own proof. */
  async #answerChallenge(peer: Peer, nonce: string, challenge: Message): Promise<void> {
    if (this.#options.secret === undefined) throw new KosyakError("ERR_AUTH", "The node asks for a secret, and this node has none");
    const transcript = [nonce, requireNonce(challenge), this.#id, requireString(challenge, "id")];
    if (!(await this.#verify("accept", transcript, challenge.proof))) {
      throw new KosyakError("ERR_AUTH", "The node failed to prove it knows the secret");
    }
    peer.send({ op: "prove", proof: await this.#sign("dial", transcript) });
  }

  /**
   * The accepting side of the handshake: hello; with a secret, a challenge that carries this
   * node's proof, then the dialler's proof checked; then welcome and this node's keys.
   */
  #accept(conn: Conn): void {
    const { maxConnections, requestTimeout, secret } = this.#options;
    if (this.#stopping) return conn.close();
    if (this.#connections.size >= maxConnections) {
      conn.close();
      const error = new KosyakError("ERR_LIMIT", `Refused a connection from ${conn.remoteHost}: maxConnections (${maxConnections}) reached`);
      return this.#host.emit("error", error);
    }
    const peer = new Peer(conn, this.#options, false);
    this.#connections.add(peer);
    const timer = setTimeout(() => {
      if (peer.id !== "") return;
      this.#host.emit("error", new KosyakError("ERR_TIMEOUT", `Closed a connection from ${peer.remoteHost}: no handshake within ${requestTimeout} ms`));
      peer.close();
    }, requestTimeout);
    let stage: "hello" | "proof" | "checking" = "hello";
    let hello: Message = { op: "hello" };
    let transcript: string[] = [];
    const refuseUnproven = (what: string) => {
      this.#host.emit("error", new KosyakError("ERR_AUTH", `Refused a connection from ${peer.remoteHost}: ${what}`));
      peer.send({ op: "refuse", code: "ERR_AUTH", reason: "authentication failed" });
      peer.close();
    };
    peer.start(
      (message) => {
        if (peer.id !== "") return this.#dispatch(peer, message);
        if (stage === "hello") {
          if (message.op !== "hello") throw new ProtocolError(`expected hello, got "${message.op}"`);
          const refusal = this.#refusalOf(message);
          if (refusal !== undefined) {
            peer.send({ op: "refuse", reason: refusal });
            return peer.close();
          }
          hello = message;
          if (secret === undefined) return this.#welcome(peer, hello, timer);
          stage = "proof";
          const nonce = randomHex(16);
          transcript = [requireNonce(message), nonce, requireString(message, "id"), this.#id];
          this.#sign("accept", transcript).then((proof) => peer.send({ op: "challenge", id: this.#id, nonce, proof }));
          return;
        }
        if (stage !== "proof" || message.op !== "prove") throw new ProtocolError(`expected prove, got "${message.op}"`);
        stage = "checking";
        this.#verify("dial", transcript, message.proof).then((valid) => {
          if (peer.closed) return;
          if (valid) this.#welcome(peer, hello, timer);
          else refuseUnproven("it failed to prove it knows the secret");
        });
      },
      (reason) => {
        clearTimeout(timer);
        if (stage === "proof" && reason === "closed") refuseUnproven("it left without proving it knows the secret");
        this.#drop(peer, reason);
      },
    );
  }

  #welcome(peer: Peer, hello: Message, timer: ReturnType<typeof setTimeout>): void {
    clearTimeout(timer);
    peer.send(this.#hello("welcome"));
    this.#admit(peer, hello);
  }

  /** HMAC-SHA-256 of a handshake transcript with the secret, as hex. */
  async #sign(role: "accept" | "dial", transcript: string[]): Promise<string> {
    const signature = await crypto.subtle.sign("HMAC", await this.#secretKey(), utf8Encoder.encode([role, ...transcript].join("\n")));
    return Array.from(new Uint8Array(signature), (byte) => byte.toString(16).padStart(2, "0")).join("");
  }

  /** Whether `proof` is the HMAC of the transcript; compared in constant time by Web Crypto. */
  async #verify(role: "accept" | "dial", transcript: string[], proof: unknown): Promise<boolean> {
    if (typeof proof !== "string" || !/^[0-9a-f]{64}$/.test(proof)) return false;
    const bytes = new Uint8Array(32);
    for (let i = 0; i < 32; i++) bytes[i] = parseInt(proof.slice(2 * i, 2 * i + 2), 16);
    return crypto.subtle.verify("HMAC", await this.#secretKey(), bytes, utf8Encoder.encode([role, ...transcript].join("\n")));
  }

  #secretKey(): Promise<CryptoKey> {
    const secret = utf8Encoder.encode(this.#options.secret);
    this.#hmacKey ??= crypto.subtle.importKey("raw", secret, { name: "HMAC", hash: "SHA-256" }, false, ["sign", "verify"]);
    return this.#hmacKey;
  }

  /** Why a hello must be refused, if it must. */
  #refusalOf(hello: Message): string | undefined {
    if (hello.version !== PROTOCOL_VERSION) return `protocol version ${String(hello.version)} is not ${PROTOCOL_VERSION}`;
    if (requireString(hello, "id") === this.#id) return "a node cannot connect to itself";
    return undefined;
  }

  #hello(op: "hello" | "welcome"): Message {
    return { op, version: PROTOCOL_VERSION, id: this.#id, host: this.#options.host, port: this.#port };
  }

  /**
   * Registers a peer whose handshake is done, tells it which keys this node holds, and tells the
   * other peers about it. Returns the connection that serves the peer from now on.
   */
  #admit(peer: Peer, greeting: Message): Peer {
    peer.id = requireString(greeting, "id");
    peer.trust();
    const host = requireString(greeting, "host");
    const port = greeting.port;
    if (!isPort(port, 1)) throw new ProtocolError(`"${greeting.op}" needs a port from 1 to 65535`);
    peer.listening = { host: isWildcard(host) ? peer.remoteHost : host, port };
    const existing = this.#peers.get(peer.id);
    if (existing !== undefined && !existing.closed) {
      // Two nodes dialled each other at once: keep the connection dialled by the smaller id.
      const dialler = (p: Peer) => (p.dialled ? this.#id : p.id);
      if (dialler(peer) >= dialler(existing)) {
        this.#retire(peer);
        return existing;
      }
      this.#peers.set(peer.id, peer);
      peer.adoptKeys(existing);
      this.#retire(existing);
    } else if (existing !== undefined) {
      // The connection this one replaces knew the node's keys; they stay reachable meanwhile.
      peer.adoptKeys(existing);
    }
    this.#peers.set(peer.id, peer);
    let batch: Array<[string, number, number]> = [];
    for (const triple of this.#host.localKeys()) {
      batch.push(triple);
      if (batch.length === KEYS_PER_MESSAGE) {
        peer.send({ op: "keys", keys: batch });
        batch = [];
      }
    }
    peer.send({ op: "keys", keys: batch, done: true });
    for (const other of this.#peers.values()) {
      if (other !== peer) other.send({ op: "member", id: peer.id, ...peer.listening });
    }
    this.#notifyChange();
    return peer;
  }

  /**
   * Closes a connection that another one to the same node replaces, saying so first, so that the
   * other node neither reports the peer down nor dials it again.
   */
  #retire(peer: Peer): void {
    peer.superseded = true;
    this.#forgetKeysOf(peer);
    peer.send({ op: "duplicate" });
    peer.close();
  }

  /** Handles a message from a peer whose handshake is done. */
  #dispatch(peer: Peer, message: Message): void {
    switch (message.op) {
      case "ping":
        return;
      case "keys":
        return this.#learnKeys(peer, message);
      case "member":
        this.#meet(message);
        return;
      case "peers":
        return peer.reply(this.#rid(message), { peers: this.#members(peer) });
      case "bye":
        this.#forgetPeer(peer, "left");
        return peer.reply(this.#rid(message), {});
      case "duplicate":
        // The other node keeps another connection to this one, which #admit will put in this
        // one's place (taking over the keys known so far); until then this one stays, closed,
        // so that #settled waits for the other.
        peer.superseded = true;
        return;
      default:
        return this.#answer(peer, message);
    }
  }

  /** Answers a data request; an answer that fails (say, the user's fetch) fails only the request. */
  #answer(peer: Peer, message: Message): void {
    const rid = this.#rid(message);
    this.served++;
    const fields = this.#host.serve(peer, message);
    if (!(fields instanceof Promise)) return peer.reply(rid, fields);
    fields.then((answer) => peer.reply(rid, answer), (error) => peer.fail(rid, error));
  }

  #rid(message: Message): number {
    if (message.rid === undefined) throw new ProtocolError(`"${message.op}" needs a rid`);
    return message.rid;
  }

  #learnKeys(peer: Peer, message: Message): void {
    for (const [key, version, ttl] of requireKeyList(message)) {
      this.#host.observe(version);
      this.learn(key, peer, version, ttl);
    }
    if (message.done !== true) return;
    peer.keysKnown = true;
    this.#notifyChange();
    if (this.#peers.get(peer.id) === peer && !this.#announced.has(peer.id)) {
      this.#announced.add(peer.id);
      this.#host.emit("peerUp", peer.info);
    }
  }

  /** The other members a joining node should connect to. */
  #members(asking: Peer): Array<Address & { id: string }> {
    const members: Array<Address & { id: string }> = [];
    for (const peer of this.#peers.values()) {
      if (peer !== asking && peer.listening) members.push({ id: peer.id, ...peer.listening });
    }
    return members;
  }

  /**
   * Sends heartbeats on idle connections, closes those whose peer has been silent too long, and
   * every LOST_RETRY_CHECKS checks dials the members lost without a goodbye once more.
   */
  #checkPeers(): void {
    const { heartbeatInterval, peerTimeout } = this.#options;
    const now = Date.now();
    if (++this.#checks % LOST_RETRY_CHECKS === 0) this.#dialLost(now);
    // After this process was busy for a while, timers run before the data that waits in the
    // sockets is read: judge silence only at the next check, once it has been.
    const stalled = now - this.#lastCheck > 2 * heartbeatInterval;
    this.#lastCheck = now;
    for (const peer of this.#peers.values()) {
      if (now - peer.lastHeard > peerTimeout && !stalled) peer.close("timeout");
      // Half an interval of quiet is enough: checks come once an interval, pings never later than 1.5.
      else if (now - peer.lastSent >= heartbeatInterval / 2) peer.send({ op: "ping" });
    }
  }

  /** A connection closed: forget the peer and its keys, and dial it again if it did not leave. */
  #drop(peer: Peer, reason: PeerDownReason): void {
    this.#connections.delete(peer);
    this.#notifyChange();
    if (peer.superseded) {
      // Should the connection that replaces this one never come, treat this as a plain loss.
      const giveUp = () => {
        if (this.#peers.get(peer.id) !== peer) return;
        peer.superseded = false;
        this.#drop(peer, reason);
      };
      this.#timers.sleep(this.#options.requestTimeout, () => this.stoppedError()).then(giveUp, () => {});
      return;
    }
    if (reason === "protocol-error" && peer.error) this.#host.emit("error", peer.error);
    if (!this.#forgetPeer(peer, reason) || this.#stopping || peer.listening === undefined) return;
    // Both ends dial; should both succeed, the rule in #admit keeps one connection. Should all
    // attempts fail, the member is dialled again now and then (see #checkPeers): a partition
    // longer than connectAttempts must not split the cluster for good.
    const { id, listening } = peer;
    this.#dial(listening, id).catch(() => this.#lost.set(id, { address: listening, since: Date.now() }));
  }

  /** Dials each lost member not met again yet; forgets those lost for longer than LOST_RETENTION_MS. */
  #dialLost(now: number): void {
    for (const [id, { address, since }] of this.#lost) {
      if (this.#peers.has(id) || now - since > LOST_RETENTION_MS) this.#lost.delete(id);
      else if (!this.#dialling.has(id)) this.#dial(address, id).then(() => this.#lost.delete(id), () => {});
    }
  }

  /** Forgets a peer and the keys it held; returns whether it was a current member. */
  #forgetPeer(peer: Peer, reason: PeerDownReason): boolean {
    if (this.#peers.get(peer.id) !== peer) return false;
    this.#peers.delete(peer.id);
    this.#forgetKeysOf(peer);
    // A node that is stopping has said goodbye; the connections it closes are no news.
    if (this.#announced.delete(peer.id) && !this.#stopping) this.#host.emit("peerDown", { ...peer.info, reason });
    return true;
  }

  #forgetKeysOf(peer: Peer): void {
    peer.dropAllKeys();
  }

  async #closeAll(): Promise<void> {
    this.#stopping = true;
    this.#timers.close();
    clearInterval(this.#heartbeat);
    for (const peer of this.#connections) peer.close();
    this.#connections.clear();
    const listener = this.#listener;
    this.#listener = undefined;
    await listener?.close();
  }
}

/** FNV-1a over a node id and a key: a well-spread 32-bit score for rendezvous hashing. */
function rendezvousScore(id: string, key: string): number {
  let hash = 0x811c9dc5;
  const text = `${id}\u0000${key}`;
  for (let i = 0; i < text.length; i++) {
    hash ^= text.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193);
  }
  return hash >>> 0;
}

function isWildcard(host: string): boolean {
  return host === "0.0.0.0" || host === "::" || host === "[::]";
}

/** Whether version `a` written by node `aId` supersedes version `b` written by node `bId`. */
function newer(a: number, aId: string, b: number, bId: string): boolean {
  return a > b || (a === b && aId > bId);
}

// ─── Store: the local entries ────────────────────────────────────────────────────────────────

/** A local entry as the store keeps it: the public fields plus its size in bytes. */
interface StoredEntry extends Entry {
  readonly size: number;
}

/** What the store reports when it lets an entry go on its own (evicted or expired). */
type GoneListener = (key: string, version: number) => void;

/**
 * The entries this node holds, in least-recently-used order, within `maxEntries` and `maxBytes`;
 * expiry times in a heap, so that expiry costs no timer per entry; and a Lamport clock: every
 * local write takes a version above any this node has seen, so writes that follow each other
 * across nodes always go up.
 */
class Store {
  /** Entries removed to stay within the bounds, and entries that expired. */
  evictions = 0;
  expirations = 0;

  readonly #id: string;
  readonly #maxEntries: number;
  readonly #maxBytes: number;
  /** Whether reads must move entries to the back; an unbounded store never evicts. */
  readonly #bounded: boolean;
  readonly #onGone: GoneListener;
  /** Map order is the recency order: the first entry is the least recently used. */
  readonly #entries = new Map<string, StoredEntry>();
  readonly #expiries = new ExpiryHeap();
  #bytes = 0;
  #clock = 0;

  constructor(id: string, limits: { maxEntries: number; maxBytes: number }, onGone: GoneListener) {
    this.#id = id;
    this.#maxEntries = limits.maxEntries;
    this.#maxBytes = limits.maxBytes;
    this.#bounded = Number.isFinite(limits.maxEntries) || Number.isFinite(limits.maxBytes);
    this.#onGone = onGone;
  }

  get size(): number {
    return this.#entries.size;
  }

  get bytes(): number {
    return this.#bytes;
  }

  /** A live entry, marked as just used; an expired one is removed and reported instead. */
  get(key: string): StoredEntry | undefined {
    const entry = this.peek(key);
    if (entry !== undefined && this.#bounded) {
      this.#entries.delete(key);
      this.#entries.set(key, entry);
    }
    return entry;
  }

  /** A live entry, without marking it as used. */
  peek(key: string): StoredEntry | undefined {
    const entry = this.#entries.get(key);
    if (entry === undefined || entry.expires === 0 || entry.expires > Date.now()) return entry;
    this.#expire(entry);
    return undefined;
  }

  /**
   * Stores a value of `size` bytes that lives `ttl` ms (0: until removed), evicts the least
   * recently used entries while over a bound, and returns the write's version.
   */
  set(key: string, value: unknown, size: number, ttl: number): number {
    this.#remove(key);
    const entry: StoredEntry = { key, value, version: ++this.#clock, expires: ttl > 0 ? Date.now() + ttl : 0, size };
    this.#entries.set(key, entry);
    this.#bytes += size;
    if (entry.expires !== 0) this.#expiries.push(entry);
    while (this.#entries.size > this.#maxEntries || this.#bytes > this.#maxBytes) {
      const oldest: StoredEntry = this.#entries.values().next().value!;
      this.#remove(oldest.key);
      this.evictions++;
      this.#onGone(oldest.key, oldest.version);
    }
    return entry.version;
  }

  /** Deletes a key and returns the version that a removal announcement carries. */
  delete(key: string): number {
    this.#remove(key);
    return ++this.#clock;
  }

  /** Deletes every entry and returns the key and version of each. */
  clear(): Array<[string, number]> {
    const gone = Array.from(this.#entries.values(), (entry): [string, number] => [entry.key, entry.version]);
    this.#entries.clear();
    this.#expiries.clear();
    this.#bytes = 0;
    return gone;
  }

  /**
   * Another node wrote `key` at `version`: drop the local entry if that write is newer.
   * Returns whether the other node's write wins.
   */
  yieldTo(key: string, version: number, writer: string): boolean {
    this.observe(version);
    const local = this.#entries.get(key);
    if (local !== undefined && !newer(version, writer, local.version, this.#id)) return false;
    this.#remove(key);
    return true;
  }

  /** Another node removed `key` at `version`: drop the local entry if it is older. */
  deleteOlder(key: string, version: number, writer: string): void {
    this.observe(version);
    const local = this.#entries.get(key);
    if (local !== undefined && newer(version, writer, local.version, this.#id)) this.#remove(key);
  }

  /** Removes and reports every entry whose time is up; run once a second. */
  sweep(): void {
    const now = Date.now();
    for (let entry = this.#expiries.peek(); entry !== undefined && entry.expires <= now; entry = this.#expiries.peek()) {
      this.#expiries.pop();
      if (this.#entries.get(entry.key) === entry) this.#expire(entry);
    }
    // Overwritten entries stay in the heap until their time; rebuild it when they pile up.
    if (this.#expiries.size > 2 * this.#entries.size + 1024) {
      this.#expiries.rebuild([...this.#entries.values()].filter((entry) => entry.expires !== 0));
    }
  }

  /** Live entries, least recently used first. */
  *live(): Generator<StoredEntry> {
    const now = Date.now();
    for (const entry of this.#entries.values()) {
      if (entry.expires === 0 || entry.expires > now) yield entry;
    }
  }

  /** Every live key with its version and the milliseconds it has left (0: no expiry). */
  *versions(): Generator<[string, number, number]> {
    const now = Date.now();
    for (const entry of this.live()) yield [entry.key, entry.version, entry.expires === 0 ? 0 : entry.expires - now];
  }

  #remove(key: string): void {
    const entry = this.#entries.get(key);
    if (entry === undefined) return;
    this.#entries.delete(key);
    this.#bytes -= entry.size;
  }

  #expire(entry: StoredEntry): void {
    this.#remove(entry.key);
    this.expirations++;
    this.#onGone(entry.key, entry.version);
  }

  /** Moves the clock past a version seen elsewhere. */
  observe(version: number): void {
    if (version > this.#clock) this.#clock = version;
  }
}

/** A binary min-heap of entries by expiry time. */
class ExpiryHeap {
  #heap: StoredEntry[] = [];

  get size(): number {
    return this.#heap.length;
  }

  peek(): StoredEntry | undefined {
    return this.#heap[0];
  }

  push(entry: StoredEntry): void {
    const heap = this.#heap;
    heap.push(entry);
    let i = heap.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (heap[parent].expires <= entry.expires) break;
      heap[i] = heap[parent];
      i = parent;
    }
    heap[i] = entry;
  }

  pop(): void {
    const heap = this.#heap;
    const last = heap.pop()!;
    if (heap.length === 0) return;
    let i = 0;
    for (;;) {
      const left = 2 * i + 1;
      if (left >= heap.length) break;
      const child = left + 1 < heap.length && heap[left + 1].expires < heap[left].expires ? left + 1 : left;
      if (heap[child].expires >= last.expires) break;
      heap[i] = heap[child];
      i = child;
    }
    heap[i] = last;
  }

  clear(): void {
    this.#heap = [];
  }

  rebuild(entries: StoredEntry[]): void {
    this.#heap = [];
    for (const entry of entries) this.push(entry);
  }
}
