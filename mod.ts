/**
 * kosyak: a distributed in-memory cache that lives inside your JavaScript process.
 *
 * Every node keeps its own entries in memory and knows which peer holds every other key.
 * Nodes talk JSON over TCP and form a full mesh; a new node joins through any member.
 * A node that stops gracefully hands its entries to the others first. With `replicas`, every
 * entry is also kept on other members, so a node that dies takes nothing with it; without, the
 * entries a dead node held are gone.
 *
 * The same file runs on Node.js (>= 20, through the npm build), Deno and Bun, each on its own
 * native sockets.
 *
 * The file, top-down: public types; `Node`, the public API; `KeyvStore`, a node as a Keyv
 * storage adapter; `Core`, the node's engine (lifecycle, the request paths, the handlers of
 * peers' requests); `Replication` (hand-over on stop, copies on other members);
 * `Acknowledgements` (what a change waits for); metrics; options; utilities (clock, timers,
 * retries); the runtime adapter (the only code that touches `node:net`, `Deno` or `Bun`); the protocol
 * codec; `Peer`, one connection; `Cluster`, membership; `Handshake`; `Directory`, who holds what
 * (the only place that compares versions); `Store`, the local entries; `NearCache`, values read
 * from peers (`nearCache`), which the Directory drops whenever what it knows of their key changes.
 *
 * A remote get: `Node.get` misses the `Store`, `Core.getShared` joins or starts the key's one get,
 * `Directory.holderOf` names the holder, `Peer.batch` queues the key into this tick's `get` to it;
 * the holder's `Core` answers with the value, or with the newer holder it knows of (asked next).
 * A set: `Core.prepareWrite` checks it, `Directory.write` stores it under a new Lamport version,
 * `Peer.batch` queues an `own` to every peer; each peer's `Directory.own` drops an older copy and
 * points at the writer before it acknowledges; the set completes with the last acknowledgement.
 * A peer's death: its connection closes (or its heartbeats stop for `peerTimeout`), `Cluster`
 * forgets it, `Directory.forgetHolder` forgets its keys, and both sides dial each other again;
 * when they meet, each sends its key list, which `Directory.own` settles like live writes.
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
   * Finds members to join besides `master`: called in the background once the node listens, and
   * then every ten heartbeats (every 10 s by default), for at most `requestTimeout` each time. Each address it gives that is not a member's is joined,
   * with that member's cluster, so that nodes that all restarted at once find each other again,
   * and two clusters that find each other become one. What it throws, or an address that cannot
   * be reached, is no failure: it is asked again later. For a Kubernetes headless service or a
   * Docker Compose service, a `master` with the service's host name may be enough: every address
   * a host name resolves to is tried (see `resolve`).
   */
  discover?: () => Seed[] | Promise<Seed[]>;
  /**
   * Turns the host name of a `master` or of a discovered address into the addresses to try, in
   * order. By default the system's resolver gives every address of the name (DNS, /etc/hosts).
   * Not used with `tls`, whose certificates name hosts, not addresses.
   * @default {the system resolver}
   */
  resolve?: (host: string) => string[] | Promise<string[]>;
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
   * Milliseconds an entry is kept past its `ttl`, stale, when `set` or `getOrSet` gives no
   * `grace`: see {@linkcode SetOptions.grace}.
   * @default {0}
   */
  grace?: number;
  /**
   * Milliseconds a `null` or `undefined` from a {@linkcode Node.getOrSet} loader is kept, as
   * `null`, when the call gives no `nullTtl`: negative caching, so that lookups of ids that do
   * not exist stop reaching the source. 0 keeps nothing.
   * @default {0}
   */
  nullTtl?: number;
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
   * How long to wait for a peer to answer a request (handshake, get, set, stats), and for a
   * connection to open, in milliseconds. A peer that does not answer in time is treated as not
   * holding the key. The time counts while the peer answers nothing: a request that waits
   * behind others at a busy peer that is answering them waits on, up to 10 times this long.
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
   * Most bytes that may wait to be sent to one peer. Requests wait in a queue while the peer has
   * a window's worth (1,000 items) unanswered; a write or removal that finds more than this many
   * bytes of requests waiting for any peer is refused at once with `ERR_OVERLOADED`, and a peer
   * that stops reading until this many bytes wait in its socket is disconnected (peerDown reason
   * `stalled`) instead of being buffered for without limit.
   * @default {33554432}
   */
  maxQueueBytes?: number;
  /**
   * Most items of requests (a write's announcement or copy, a key read or removed) that may wait
   * in the queue to one peer; beyond it, as beyond `maxQueueBytes`, a write or removal is
   * refused at once with `ERR_OVERLOADED`, changing nothing.
   * @default {100000}
   */
  maxQueueItems?: number;
  /**
   * How many other members keep a copy of every entry this node holds, chosen by rendezvous
   * hashing of the key over the members. When a node dies without a goodbye, every member
   * points its directory at the first of those copies, so its entries survive; copies are
   * restored in the background after a member dies or joins. Copies count against the bounds
   * of the node that keeps them, are evicted by its LRU rule like its own entries, and go with
   * the entry: when it is removed, evicted, expires or is cleared on its holder, its copies go
   * too. Every member should use the same value.
   * @default {0}
   */
  replicas?: number;
  /**
   * Where a key lives. `"local"`: on the node that wrote it, and every member knows which node
   * that is (a directory of every key of the cluster on every node), so a write costs a message
   * to every member and a node reads its own writes without asking anyone. `"hash"`: on its
   * owner, the member that rendezvous hashing of the key over the members picks, plus
   * `replicas` copy keepers; a write or a read from any node takes one request to the owner
   * (none on the owner itself), a node keeps no record of keys it neither owns nor copies, and
   * so a cluster's write capacity and memory grow with its members. When members join or leave,
   * only the keys whose owner changes move. Every member must use the same placement: a node
   * with another one is refused when it connects, on both sides.
   *
   * In `"hash"`, `has` knows only the keys this node owns. Every operation on a key is
   * linearizable while no member fails (each takes effect at one instant between its call and
   * its return), which `"local"` does not give; see README, "Placement".
   * @default {"local"}
   */
  placement?: "local" | "hash";
  /**
   * Keep the values this node reads from peers, so that reading a hot key held elsewhere again
   * costs what a local hit costs. `true` keeps up to 10,000 values and 16 MiB (sizes counted as
   * for `maxBytes`), least recently used first out; an object sets either bound.
   *
   * Reads stay as coherent as without it: a kept value is dropped before this node acknowledges
   * any newer write, removal, clear or eviction of its key, so once one of those has called back,
   * no node returns the older value. A kept value expires no later than its entry, and all of
   * them go when a member is lost or (re)connects. They are returned only while every member has
   * answered a request this node sent within the last
   * `min(peerTimeout, requestTimeout) - heartbeatInterval / 2` ms (a node with a near cache asks
   * each member at every heartbeat), and no member is missing: lost without a goodbye, or
   * announced by another member, and not reachable from here while another member still reaches
   * it (checked at every heartbeat). A member that cannot reach this node may declare it down and
   * then write without it, but not before that time is up.
   * Every member should use the same `peerTimeout`, `requestTimeout` and `heartbeatInterval`.
   *
   * Without `stringify`, a kept value is shared like a local entry's: change a value you got and
   * the next get on this node returns the changed one.
   * @default {false}
   */
  nearCache?: boolean | NearCacheOptions;
  /**
   * Where the node reads the time and sets its timers: TTL, heartbeats, peer timeouts, request
   * timeouts, connection retries and `fetchTimeout` all follow it. Tests give a clock they move
   * by hand, to check time-driven behaviour without waiting; sockets are never affected.
   * @default {Date.now with the runtime's setTimeout and clearTimeout}
   */
  clock?: Clock;
  /**
   * How the node listens and connects. Give another {@linkcode Transport} to run nodes over
   * something else than TCP: `npm run simulate` runs hundreds of them in one process over an
   * in-memory one, with a clock it moves by hand.
   * @default {the runtime's TCP and TLS: node:net and node:tls, Deno.listen, or Bun.listen}
   */
  transport?: Transport;
}

/**
 * A source of time and one-off timers, for {@linkcode NodeOptions.clock}.
 *
 * @example A clock that moves only when told to
 * ```ts
 * import type { Clock } from "./mod.ts";
 *
 * let now = 0;
 * const timers = new Map<number, { at: number; callback: () => void }>();
 * let next = 1;
 * const clock: Clock = {
 *   now: () => now,
 *   setTimeout: (callback, ms) => (timers.set(next, { at: now + ms, callback }), next++),
 *   clearTimeout: (handle) => void timers.delete(handle as number),
 * };
 * ```
 */
export interface Clock {
  /** Milliseconds on the clock's own scale (Date.now's for the default clock). */
  now(): number;
  /** Calls `callback` once, `ms` milliseconds from now; returns a handle for clearTimeout. */
  setTimeout(callback: () => void, ms: number): unknown;
  /** Cancels a timer that has not fired yet. */
  clearTimeout(handle: unknown): void;
}

/** Bounds of {@linkcode NodeOptions.nearCache}. */
export interface NearCacheOptions {
  /** Most values kept. @default {10000} */
  maxEntries?: number;
  /** Most bytes of values kept, as `maxBytes` counts them. @default {16777216} */
  maxBytes?: number;
}

/**
 * How a node listens and connects, for {@linkcode NodeOptions.transport}. The default is the
 * runtime's TCP and TLS; another transport carries the same byte streams over something else.
 * `npm run simulate` runs hundreds of nodes in one process over an in-memory one.
 *
 * @example A transport that passes everything to another and counts the connections it opens
 * ```ts
 * function counting(inner: Transport, counts: { dialled: number }): Transport {
 *   return {
 *     listen: (address, options, accept) => inner.listen(address, options, accept),
 *     connect: (address, options) => (counts.dialled++, inner.connect(address, options)),
 *   };
 * }
 * ```
 */
export interface Transport {
  /** Listens at `address` (port 0: any free port) and hands each connection made to it to `accept`. */
  listen(address: Address, options: TransportOptions, accept: (conn: Conn) => void): Promise<Listener>;
  /** Opens a connection to a node listening at `address`; rejects if none does. */
  connect(address: Address, options: TransportOptions): Promise<Conn>;
}

/**
 * What a {@linkcode Transport} listens and connects with: the node's `socket` or `server`
 * option, and its `tls` settings.
 *
 * @example
 * ```ts
 * const options: TransportOptions = { native: { keepAlive: true }, tls: undefined };
 * ```
 */
export interface TransportOptions {
  /** The `socket` option when connecting, the `server` option when listening. */
  native: Record<string, unknown>;
  /** The `tls` option: a transport must encrypt with these when they are given. */
  tls: TlsOptions | undefined;
}

/**
 * Where a {@linkcode Transport} listens.
 *
 * @example Which port the system picks
 * ```ts
 * async function freePort(transport: Transport, options: TransportOptions): Promise<number> {
 *   const listener: Listener = await transport.listen({ host: "127.0.0.1", port: 0 }, options, (conn) => conn.close());
 *   await listener.close();
 *   return listener.port;
 * }
 * ```
 */
export interface Listener {
  /** The port listened on, chosen by the system when 0 was asked. */
  readonly port: number;
  /** Stops accepting; resolves once the port is free again. */
  close(): Promise<void>;
}

/**
 * One connection of a {@linkcode Transport}: an ordered, reliable byte stream.
 *
 * @example Echoing what arrives
 * ```ts
 * function echo(conn: Conn): void {
 *   conn.start({ data: (chunk) => conn.write(chunk), close: () => console.log("closed") });
 * }
 * ```
 */
export interface Conn {
  /** The address the other end connects from. */
  readonly remoteHost: string;
  /** Starts delivering data and the close event to `handlers`. */
  start(handlers: ConnHandlers): void;
  /** Queues bytes; the connection writes them in order as fast as the other end reads. */
  write(bytes: Uint8Array): void;
  /** Bytes written but not yet taken by the other end, because it is slow. */
  buffered(): number;
  /**
   * Closes once queued bytes are written, or soon after if the other end does not take them;
   * `close` is then reported once. A pending forced close never keeps the process alive.
   */
  close(): void;
}

/**
 * What a {@linkcode Conn} tells its owner.
 *
 * @example
 * ```ts
 * const handlers: ConnHandlers = { data: (chunk) => console.log(chunk.byteLength), close: () => {} };
 * ```
 */
export interface ConnHandlers {
  /** Bytes that arrived, in order. */
  data(chunk: Uint8Array): void;
  /** The connection is closed, by either end; called once. */
  close(): void;
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
  /**
   * The write's version; a higher version wins when two nodes set the same key, and of equal
   * versions the one whose writer's id is greater.
   */
  readonly version: number;
  /** The id of the node that wrote the value: this node's, or a stopping node's that handed it over. */
  readonly writer: string;
  /** When the entry expires, on the node's clock (milliseconds since the epoch by default); 0 when it does not. */
  readonly expires: number;
  /**
   * The last milliseconds before `expires` in which the entry is stale (see {@linkcode SetOptions.grace}):
   * kept, and returned only to `getOrSet` and to a get with `allowStale`. 0 for none.
   */
  readonly grace: number;
}

/** Options of {@linkcode Node.stop}. */
export interface StopOptions {
  /**
   * Hand the node's entries to the other members before leaving.
   * @default {true}
   */
  handover?: boolean;
}

/** Options of {@linkcode Node.set} and {@linkcode Node.mset}. */
export interface SetOptions {
  /** Milliseconds the entry lives; 0 keeps it until removed. Defaults to the node's `ttl`. */
  ttl?: number;
  /**
   * Milliseconds the entry is kept past its `ttl`, stale: `get` no longer returns it (unless
   * asked with `allowStale`), but `getOrSet` does, at once, while it refreshes the value in the
   * background, once in the cluster; when that loader fails, the stale value goes on being
   * served until the grace runs out. Ignored without a `ttl`. Defaults to the node's `grace`.
   */
  grace?: number;
}

/** Options of one {@linkcode Node.get}. */
export interface GetOptions {
  /**
   * Return a value that is past its `ttl` but within its `grace` (see {@linkcode SetOptions.grace})
   * rather than nothing.
   * @default {false}
   */
  allowStale?: boolean;
}

/** Options of one {@linkcode Node.getOrSet} call. */
export interface GetOrSetOptions extends SetOptions {
  /**
   * The soft timeout: with a stale value at hand (see `grace`), milliseconds to wait for the
   * loader before returning the stale value; the loader goes on in the background, and its
   * value is stored when it comes. 0 returns the stale value at once. Without a stale value,
   * the call waits for the loader up to `hardTimeout`.
   * @default {0}
   */
  timeout?: number;
  /**
   * Milliseconds the loader may take; past them the call fails with `ERR_FETCH` (or, with a
   * stale value at hand, returns it) and the next caller waiting for the key loads it.
   * Defaults to the node's `fetchTimeout`.
   */
  hardTimeout?: number;
  /**
   * Milliseconds a `null` or `undefined` from the loader is kept, as `null`, so that lookups of
   * what does not exist stop reaching the source; 0 keeps nothing. Defaults to the node's `nullTtl`.
   */
  nullTtl?: number;
}

/**
 * What a loader of {@linkcode Node.getOrSet} is handed: the key, and the life of the entry it is
 * about to make, which the loader may set from the value (a token's expiry, say) or decline.
 */
export interface LoadContext {
  /** The key that no node holds. */
  readonly key: string;
  /** Milliseconds the loaded entry will live (0: until removed); starts as the call's `ttl`. */
  ttl: number;
  /** Returns the value to this call and to the calls waiting for it, without storing it. */
  noStore(): void;
}

/** The defaults of a {@linkcode Namespace}, for {@linkcode Node.namespace}. */
export interface NamespaceOptions {
  /** Milliseconds an entry of the namespace lives when a write gives no `ttl`. Defaults to the node's (or the parent namespace's). */
  ttl?: number;
  /** Milliseconds an entry is kept stale past its `ttl` when a write gives no `grace` (see {@linkcode SetOptions.grace}). Defaults to the node's (or the parent namespace's). */
  grace?: number;
  /** The loader of a {@linkcode Namespace.getOrSet} that gives none. */
  loader?: Loader<unknown>;
}

/** Loads the value of a key for {@linkcode Node.getOrSet}: a value, or a Promise of one. */
export type Loader<T> = (context: LoadContext) => T | Promise<T>;

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
  /** `get`s answered from the near cache (`nearCache`). */
  nearHits: number;
  /** Values kept in the near cache. */
  nearEntries: number;
  /** Their size, as `maxBytes` counts it. */
  nearBytes: number;
  /** `get`s that found the key nowhere (before any `fetch`). */
  misses: number;
  /** Calls to the `fetch` option. */
  fetches: number;
  /** `fetch` calls that ended in an error or timed out. */
  fetchErrors: number;
  /** Calls of `getOrSet` loaders made here. */
  loads: number;
  /** Loader calls that threw, rejected or timed out, refreshes included. */
  loadErrors: number;
  /** Stale values returned (see `grace`): by `getOrSet`, and by gets with `allowStale`. */
  staleHits: number;
  /** Loader calls made here to refresh a stale value in the background. */
  refreshes: number;
  /** Refreshes that failed or timed out, so that the stale value went on being served. */
  refreshErrors: number;
  /** Nulls from loaders stored here as negative entries (see `nullTtl`). */
  negativeSets: number;
  /** Entries this node handed to the others when it stopped. */
  handedOver: number;
  /** Entries this node took over from members that stopped, or (hash placement) as their new owner. */
  adopted: number;
  /** Entries this node gave to their new owners when the members changed (hash placement). */
  moved: number;
  /** Entries held here as copies for other members (`replicas`). */
  copies: number;
  /** Copies this node made its own entries when the member they were kept for died. */
  promoted: number;
  /** Copies sent to the members that keep them, when written and when restored in the background. */
  copiesSent: number;
  /** Entries the background restoration of copies has yet to go through (0: copies are whole). */
  copiesPending: number;
  /** Entries evicted to stay within `maxEntries` and `maxBytes`. */
  evictions: number;
  /** Entries removed because their time was up. */
  expirations: number;
  /** Requests for data from peers that this node answered (not key lists or heartbeats). */
  served: number;
  /** Protocol messages this node sent to peers, handshakes and heartbeats included. */
  messagesSent: number;
  /** Protocol messages this node received from peers. */
  messagesReceived: number;
  /** Bytes this node wrote to its connections (frames, before TLS). */
  bytesSent: number;
  /** Bytes this node read from its connections (frames, after TLS). */
  bytesReceived: number;
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
  readonly grace: number;
  readonly nullTtl: number;
  readonly maxEntries: number;
  readonly maxBytes: number;
  readonly maxFrameBytes: number;
  readonly maxConnections: number;
  readonly maxKeyLength: number;
  readonly maxValueBytes: number;
  readonly maxQueueBytes: number;
  readonly maxQueueItems: number;
  readonly replicas: number;
  readonly placement: "local" | "hash";
  readonly nearCache: { readonly maxEntries: number; readonly maxBytes: number };
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
  grace: 0,
  nullTtl: 0,
  maxEntries: Infinity,
  maxBytes: Infinity,
  maxFrameBytes: 16 * 1024 * 1024,
  maxConnections: 1024,
  maxKeyLength: 1024,
  maxValueBytes: 8 * 1024 * 1024,
  maxQueueBytes: 32 * 1024 * 1024,
  maxQueueItems: 100_000,
  replicas: 0,
  placement: "local",
  nearCache: Object.freeze({ maxEntries: 10_000, maxBytes: 16 * 1024 * 1024 }),
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
  | "ERR_REMOTE"
  | "ERR_OVERLOADED";

/** Every code, to tell ours from anything else a peer sends; the record makes it complete. */
const KOSYAK_ERROR_CODES = Object.keys({
  ERR_LISTEN: 0, ERR_CONNECT: 0, ERR_NOT_STARTED: 0, ERR_ALREADY_STARTED: 0, ERR_STOPPED: 0, ERR_PROTOCOL: 0,
  ERR_TIMEOUT: 0, ERR_PEER_GONE: 0, ERR_FETCH: 0, ERR_AUTH: 0, ERR_LIMIT: 0, ERR_REMOTE: 0, ERR_OVERLOADED: 0,
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

// ─── The Node: the public API ───────────────────────────────────────────────────────────────

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

  readonly #core: Core;

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
    this.#core = new Core(this.id, resolveOptions(options));
  }

  /**
   * Listens to an event: `peerUp` and `peerDown` (with a `reason`: `left`, `closed`, `timeout`,
   * `protocol-error` or `stalled`) as members come and go, and `error` for failures no caller
   * waits for. An `error` nobody listens to is dropped, never thrown.
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
    this.#core.listeners[event].add(listener as (payload: unknown) => void);
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
    this.#core.listeners[event].delete(listener as (payload: unknown) => void);
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
    const { options, cluster } = this.#core;
    return { host: options.host, port: cluster.port ?? options.port };
  }

  /**
   * Creates a node, starts it, and resolves once it has joined: `await Node.start(options)` does
   * what `await new Node(options).init().ready()` does.
   *
   * @param options As for `new Node(options)`.
   * @returns A Promise of the started node; it rejects with the error `init` failed with.
   * @throws {TypeError | RangeError} An option has the wrong type or is out of range.
   *
   * @example
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const first = await Node.start({ port: 0 });
   * const second = await Node.start({ master: first.address });
   * await second.set("key", 1);
   * console.log(await first.get("key")); // 1
   * await Promise.all([first.stop(), second.stop()]);
   * ```
   */
  static start(options?: NodeOptions): Promise<Node> {
    return new Node(options).init().ready();
  }

  /**
   * Starts listening and, when `master` is set, joins its cluster: connects to every member and
   * learns which keys each holds. Returns the node itself, so that `new Node(...).init()` chains;
   * use {@linkcode Node.ready} to await the start, or {@linkcode Node.start} for both at once.
   *
   * @param callback Called once with `null` when the node is ready, or with the error that stopped
   *   it: a `KosyakError` with code `ERR_LISTEN` (the port is taken) or `ERR_CONNECT` (the master
   *   could not be reached in `connectAttempts` attempts). A failed node holds no socket. Without a
   *   callback, that error is also reported as an `error` event, never as an unhandled rejection.
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
    if (this.#core.lifecycle !== "new") {
      throw new KosyakError("ERR_ALREADY_STARTED", `Cannot init node ${this.id}: init was already called`);
    }
    const started = this.#core.start();
    if (callback) started.then(() => callLater(callback, null), (err) => callLater(callback, err));
    // Stopped before it started: the caller who stopped it knows.
    else started.catch((err: Error) => (err instanceof KosyakError && err.code === "ERR_STOPPED") || this.#core.emit("error", err));
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
    const done = this.#core.whenStarted("ready").then(() => this);
    if (callback === undefined) return done;
    assertFunction(callback, "ready", "callback");
    done.then(() => callLater(callback, null), (err) => callLater(callback, err));
  }

  /**
   * Gets the value of a key: from this node if it holds the key, else from the peer that holds
   * it, else from the `fetch` option, else `null`. Concurrent gets of one key that is not held
   * here share one request and one `fetch` call; see {@linkcode NodeOptions.fetch}.
   *
   * A value past its `ttl` and within its `grace` (see {@linkcode SetOptions.grace}) is stale:
   * `get` counts it as none, unless `options.allowStale` is set.
   *
   * A local hit, or a hit in the near cache (see {@linkcode NodeOptions.nearCache}), calls
   * `callback` before `get` returns; anything else calls it later.
   *
   * @param key The key, a string.
   * @param options `allowStale`: return a stale value rather than nothing.
   * @param callback `callback(err, value)`.
   * @returns Without a callback, a Promise of the value (`null` when there is none).
   * @throws {TypeError} `key` is not a string, `options` not an object or `callback` not a function.
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
   *
   * @example A stale value, when asked for
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = await new Node().init().ready();
   * await node.set("price", 10, { ttl: 1, grace: 60_000 });
   * await new Promise((resolve) => setTimeout(resolve, 5));
   * console.log(await node.get("price")); // null: past its ttl
   * console.log(await node.get("price", { allowStale: true })); // 10
   * await node.stop();
   * ```
   */
  get<T = unknown>(key: string, options?: GetOptions): Promise<T | null>;
  /** {@linkcode Node.get} with a callback. */
  get<T = unknown>(key: string, callback: Callback<T | null>): void;
  /** {@linkcode Node.get} with options and a callback. */
  get<T = unknown>(key: string, options: GetOptions, callback: Callback<T | null>): void;
  get<T = unknown>(key: string, optionsOrCallback?: GetOptions | Callback<T | null>, callback?: Callback<T | null>): Promise<T | null> | void {
    const core = this.#core;
    if (typeof key !== "string" || key.length > core.options.maxKeyLength) checkKey(key, "get", core.options.maxKeyLength);
    const done = typeof optionsOrCallback === "function" ? optionsOrCallback : callback;
    if (done !== undefined && typeof done !== "function") assertFunction(done, "get", "callback");
    const allowStale = optionsOrCallback !== undefined && typeof optionsOrCallback !== "function" && allowsStale(key, optionsOrCallback);
    const value = core.valueAtHand(key) as T | undefined;
    if (value !== undefined) {
      if (done === undefined) return Promise.resolve(value);
      done(null, value);
      return;
    }
    return settle((allowStale ? core.getStale(key) : core.getShared(key)) as Promise<T | null>, done);
  }

  /**
   * Gets the value of a key if any node holds it; otherwise calls `loader` and stores what it
   * returns (as `set` would, with `options.ttl`), and returns that. Concurrent `getOrSet`s of one
   * missing key, on any nodes, call one loader in the whole cluster: the member the cluster agrees
   * on (the key's owner with `placement: "hash"`, else the member hashing picks among all) lets
   * one call load at a time, and the others wait for its value. When that loader fails or times
   * out, its call fails with `ERR_FETCH` and the next waiting call loads; when its node dies, the
   * next one loads too. A write or removal of the key while it loads wins: the loaded value is
   * not stored over it, and every call looks again (after a removal, one of them loads again), so
   * that `getOrSet` returns a value the cache held at some moment of the call, or one that the
   * loader declined to store.
   *
   * The loader gets a {@linkcode LoadContext}: it may set `ttl` from the value, or call
   * `noStore()` to hand the value to the waiting calls without caching it. A `null` or
   * `undefined` is returned as `null`, and kept for `nullTtl` when that is set. The `fetch`
   * option plays no part: it is `get`'s loader.
   *
   * With a `grace`, an entry past its `ttl` is stale for that much longer: `getOrSet` returns the
   * stale value at once (or after its soft `timeout`, if the loader is not done by then) and
   * refreshes it in the background, one call at a time in the whole cluster. A refresh that
   * fails is an `error` event, not a failed call; the stale value goes on being served until its
   * grace runs out. A refresh whose loader returns `null`, or declines to store, leaves the stale
   * value in place.
   *
   * A local hit, or a hit in the near cache, calls `callback` before `getOrSet` returns, as `get` does.
   *
   * @param key The key, a string.
   * @param loader Loads the value: `(context) => value`, sync or async.
   * @param options `ttl` and `grace` of the stored entry (defaults: the node's), the soft
   *   `timeout` (default 0) and the loader's `hardTimeout` (default: `fetchTimeout`), `nullTtl`
   *   for negative caching (default: the node's `nullTtl`).
   * @param callback `callback(err, value)`.
   * @returns Without a callback, a Promise of the value, held or loaded (`null` for a null, or
   *   an `undefined` from the loader). A loaded value that cannot be stored (not JSON, too large)
   *   or whose write fails rejects with the error `set` would give.
   * @throws {TypeError} `key` is not a string, `loader` or `callback` not a function.
   * @throws {RangeError} `ttl`, `grace`, `timeout`, `hardTimeout` or `nullTtl` is not a number of milliseconds.
   *
   * @example Loading a user once, however many nodes ask at once
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = await new Node().init().ready();
   * const loadUser = async () => ({ name: "Kosyak" }); // the database, in a real application
   * console.log(await node.getOrSet("user:1", loadUser, { ttl: 60_000 })); // { name: "Kosyak" }
   * console.log(await node.getOrSet("user:1", loadUser)); // the same, from the cache
   * await node.stop();
   * ```
   *
   * @example A TTL that the value decides, and negative caching
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = await new Node({ nullTtl: 5_000 }).init().ready();
   * const token = await node.getOrSet("token", (context) => {
   *   const issued = { value: "abc", expiresIn: 30_000 };
   *   context.ttl = issued.expiresIn;
   *   return issued.value;
   * });
   * console.log(token); // abc
   * console.log(await node.getOrSet("user:404", () => null)); // null, kept for 5 s
   * await node.stop();
   * ```
   *
   * @example Stale while it refreshes, and while the source is down
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = await new Node().init().ready();
   * const options = { ttl: 1, grace: 60_000 };
   * await node.getOrSet("rate", () => 1.08, options);
   * await new Promise((resolve) => setTimeout(resolve, 5)); // past its ttl
   * node.on("error", (error) => console.log(error.message)); // the failed refresh
   * console.log(await node.getOrSet("rate", () => Promise.reject(new Error("source down")), options)); // 1.08
   * await node.stop();
   * ```
   */
  getOrSet<T>(key: string, loader: Loader<T>, options?: GetOrSetOptions): Promise<T | null>;
  /** {@linkcode Node.getOrSet} with a callback. */
  getOrSet<T>(key: string, loader: Loader<T>, callback: Callback<T | null>): void;
  /** {@linkcode Node.getOrSet} with options and a callback. */
  getOrSet<T>(key: string, loader: Loader<T>, options: GetOrSetOptions, callback: Callback<T | null>): void;
  getOrSet<T>(
    key: string,
    loader: Loader<T>,
    optionsOrCallback?: GetOrSetOptions | Callback<T | null>,
    callback?: Callback<T | null>,
  ): Promise<T | null> | void {
    const core = this.#core;
    checkKey(key, "getOrSet", core.options.maxKeyLength);
    assertFunction(loader, "getOrSet", "loader");
    const done = typeof optionsOrCallback === "function" ? optionsOrCallback : callback;
    if (done !== undefined) assertFunction(done, "getOrSet", "callback");
    const options = core.loadOptions(key, typeof optionsOrCallback === "function" ? undefined : optionsOrCallback);
    const value = core.valueAtHand(key) as T | undefined;
    if (value !== undefined) {
      if (done === undefined) return Promise.resolve(value);
      callLater(done, null, value);
      return;
    }
    return settle(core.getOrSet(key, loader, options) as Promise<T | null>, done);
  }

  /**
   * A view of the keys of one namespace: the same calls as the node's (`get`, `set`,
   * `getOrSet`, `remove`, `clear`, iteration, ...), on keys that live apart from other
   * namespaces, with defaults of their own (`ttl`, `grace`, a loader for `getOrSet`). The
   * namespace `users` holds its keys as `users:KEY` on the node, as Keyv and bentocache do, so
   * `node.get("users:1")` reads what `node.namespace("users").get("1")` does. Its `clear()`
   * empties the namespace in the whole cluster with one message per member, whatever its size.
   *
   * @param name The namespace's name: a non-empty string.
   * @param options Its defaults: `ttl`, `grace` and `loader`.
   * @returns The view; views of one name share their keys.
   * @throws {TypeError | RangeError} `name` is not a non-empty string, or an option is wrong.
   *
   * @example Two namespaces, one cleared
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = await new Node().init().ready();
   * const users = node.namespace("users", { ttl: 60_000 });
   * const posts = node.namespace("posts");
   * await users.set("1", { name: "Kosyak" });
   * await posts.set("1", { title: "Hello" });
   * await users.clear();
   * console.log(await users.get("1"), await posts.get("1")); // null { title: "Hello" }
   * await node.stop();
   * ```
   */
  namespace(name: string, options: NamespaceOptions = {}): Namespace {
    return new Namespace(this, checkedNamespace(name, options, { ttl: undefined, grace: undefined, loader: undefined }), (prefix) => this.#core.clear(prefix));
  }

  /**
   * Gets many keys at once: one request to each peer that holds some of them, then `fetch` for
   * the rest; 1,000 keys at a time, with a turn of the event loop between, so that the node goes
   * on reading and answering while it works through a long list.
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
    for (const key of keys) checkKey(key, "mget", this.#core.options.maxKeyLength);
    if (callback !== undefined) assertFunction(callback, "mget", "callback");
    const values = this.#core.whenStarted("mget").then(() => this.#core.getMany(keys));
    return settle(values as Promise<Array<T | null>>, callback);
  }

  /**
   * Whether a live entry for the key is held by this node or, as far as this node knows, by a
   * peer. Asks no one: it reads this node's entries and directory. With `placement: "hash"`
   * there is no directory: whether this node owns a live entry of the key.
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
    checkKey(key, "has", this.#core.options.maxKeyLength);
    return this.#core.has(key);
  }

  /**
   * Sets a value on this node and tells every peer that this node now holds the key; any peer
   * that held an older value drops it. Completes once every live peer has acknowledged, so a
   * `get` of the key on any node afterwards returns this value. A node with no peer to tell (alone,
   * in local placement) stores the entry at once and calls the callback before `set` returns, as
   * `get` does for a local hit.
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
    const done = typeof optionsOrCallback === "function" ? optionsOrCallback : callback;
    if (done !== undefined) assertFunction(done, "set", "callback");
    const write = this.#core.prepareWrite("set", key, value, typeof optionsOrCallback === "function" ? undefined : optionsOrCallback);
    if (this.#core.storeAlone(write)) {
      if (done === undefined) return Promise.resolve(value);
      callLater(done, null, value);
      return;
    }
    return settle(this.#core.write([write]).then(() => value), done);
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
      return this.#core.prepareWrite("mset", pair[0], pair[1], options);
    });
    return settle(this.#core.write(writes).then(() => undefined), done);
  }

  /**
   * Removes a key from the cluster: from this node, from the peer that holds it, and from every
   * node's directory. Completes once every live peer has acknowledged, with whether a live entry
   * of the key was removed anywhere (as `Map.prototype.delete` says whether the key was there).
   *
   * @param key The key, a string.
   * @param callback `callback(err, existed)`.
   * @returns Without a callback, a Promise of whether a live entry was removed.
   * @throws {TypeError} `key` is not a string or `callback` not a function.
   *
   * @example
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = await new Node().init().ready();
   * await node.set("session", "abc");
   * console.log(await node.remove("session")); // true
   * console.log(await node.get("session")); // null
   * console.log(await node.remove("session")); // false
   * await node.stop();
   * ```
   */
  remove(key: string): Promise<boolean>;
  /** {@linkcode Node.remove} with a callback. */
  remove(key: string, callback: (err: Error | null, existed?: boolean) => void): void;
  remove(key: string, callback?: (err: Error | null, existed?: boolean) => void): Promise<boolean> | void {
    checkKey(key, "remove", this.#core.options.maxKeyLength);
    if (callback !== undefined) assertFunction(callback, "remove", "callback");
    return settle(this.#core.remove(key), callback);
  }

  /**
   * The same as {@linkcode Node.remove}.
   *
   * @param key The key, a string.
   * @param callback `callback(err, existed)`.
   * @returns Without a callback, a Promise of whether a live entry was removed.
   *
   * @example
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = await new Node().init().ready();
   * await node.set("a", 1);
   * console.log(await node.delete("a")); // true
   * await node.stop();
   * ```
   */
  delete(key: string): Promise<boolean>;
  /** {@linkcode Node.delete} with a callback. */
  delete(key: string, callback: (err: Error | null, existed?: boolean) => void): void;
  delete(key: string, callback?: (err: Error | null, existed?: boolean) => void): Promise<boolean> | void {
    return callback === undefined ? this.remove(key) : this.remove(key, callback);
  }

  /**
   * Removes every entry of the whole cluster, whichever node holds it: once it has called back,
   * no node returns a value written before it, and values written after it stay. It costs one
   * message to each peer, whatever the number of keys: the clear takes a version like a write,
   * and each node drops the entries and directory records of older writes and refuses any that
   * still arrive. {@linkcode Node.clearLocal} empties only this node.
   *
   * @param callback `callback(err)`.
   * @returns Without a callback, a Promise that resolves once every live peer has acknowledged.
   *
   * @example
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const first = await Node.start();
   * const second = await Node.start({ master: first.address });
   * await first.set("a", 1);
   * await second.set("b", 2);
   * await second.clear();
   * console.log(await first.get("a"), await first.get("b")); // null null
   * await Promise.all([first.stop(), second.stop()]);
   * ```
   */
  clear(): Promise<void>;
  /** {@linkcode Node.clear} with a callback. */
  clear(callback: (err: Error | null) => void): void;
  clear(callback?: (err: Error | null) => void): Promise<void> | void {
    if (callback !== undefined) assertFunction(callback, "clear", "callback");
    return settle(this.#core.clear(), callback);
  }

  /**
   * Removes every entry this node holds (entries of other nodes stay), and tells the peers.
   * {@linkcode Node.clear} empties the whole cluster.
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
   * await node.clearLocal();
   * console.log(node.stats().entries); // 0
   * await node.stop();
   * ```
   */
  clearLocal(): Promise<void>;
  /** {@linkcode Node.clearLocal} with a callback. */
  clearLocal(callback: (err: Error | null) => void): void;
  clearLocal(callback?: (err: Error | null) => void): Promise<void> | void {
    if (callback !== undefined) assertFunction(callback, "clearLocal", "callback");
    return settle(this.#core.clearLocal(), callback);
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
    for (const entry of this.#core.store.freshEntries()) yield entry.key;
  }

  /**
   * Every live key of the whole cluster: those this node holds (their names copied first, since
   * reads reorder a bounded node's entries), then those its directory knows the other members to
   * hold, walked as it is. Asks no one. A key written or removed meanwhile may or may not be in
   * it, and one that moves from this node to a peer meanwhile may come twice.
   *
   * @returns An async iterator of keys.
   *
   * @example
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const first = await Node.start();
   * const second = await Node.start({ master: first.address });
   * await first.set("a", 1);
   * await second.set("b", 2);
   * for await (const key of first.clusterKeys()) console.log(key); // a, then b
   * await Promise.all([first.stop(), second.stop()]);
   * ```
   */
  async *clusterKeys(): AsyncGenerator<string> {
    await this.#core.whenStarted("clusterKeys");
    if (this.#core.hash) return yield* this.#core.hash.clusterKeys();
    yield* Array.from(this.#core.store.freshEntries(), (entry) => entry.key);
    yield* this.#core.directory.remoteKeys();
  }

  /**
   * Every live entry of the whole cluster as `[key, value]` pairs: the keys of
   * {@linkcode Node.clusterKeys}, read 1,000 at a time (one request to each member that holds
   * some of them, as `mget` does), so that memory stays bounded. A key removed before its value
   * is read is left out.
   *
   * @returns An async iterator of `[key, value]` pairs.
   *
   * @example
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const first = await Node.start();
   * const second = await Node.start({ master: first.address });
   * await second.mset({ a: 1, b: 2 });
   * for await (const [key, value] of first.clusterEntries()) console.log(key, value); // a 1, b 2
   * await Promise.all([first.stop(), second.stop()]);
   * ```
   */
  async *clusterEntries(): AsyncGenerator<[string, unknown]> {
    const keys = this.clusterKeys();
    for (let page = await take(keys, ITEMS_PER_BATCH); page.length > 0; page = await take(keys, ITEMS_PER_BATCH)) {
      const values = await this.mget(page);
      for (const [i, value] of values.entries()) if (value !== null) yield [page[i], value];
    }
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
    for (const entry of this.#core.store.freshEntries()) yield [entry.key, this.#core.reveal(entry.value)];
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
    for (const entry of this.#core.store.freshEntries()) iterator(this.#core.reveal(entry.value), entry.key, entry);
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
    if (callback === undefined) return this.#core.localStats();
    assertFunction(callback, "stats", "callback");
    this.clusterStats().then((all) => callLater(callback, all), () => callLater(callback, [this.#core.localStats()]));
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
    const core = this.#core;
    await core.whenStarted("clusterStats");
    const answers = await core.cluster.askAll({ op: "stats" });
    return [core.localStats(), ...answers.map((answer) => answer.stats as NodeStats)];
  }

  /**
   * This node's stats in the Prometheus text exposition format (0.0.4), for a `/metrics`
   * endpoint: each with HELP and TYPE lines and a `node` label holding this node's id; counters
   * end in `_total`, sizes in `_bytes`, times in `_seconds`. `kosyak serve --metrics PORT`
   * serves them over HTTP.
   *
   * @returns The text, one sample per stat.
   *
   * @example
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = await Node.start();
   * await node.set("k", 1);
   * console.log(node.metrics().split("\n").filter((line) => line.startsWith("kosyak_sets_total")));
   * // [ 'kosyak_sets_total{node="..."} 1' ]
   * await node.stop();
   * ```
   */
  metrics(): string {
    return prometheusText(this.#core.localStats());
  }

  /**
   * Stops the node. First it hands every entry it holds to the other members (each key to the
   * member that rendezvous hashing picks for it, with its version and remaining TTL), and waits
   * until they have stored them and every directory points to them, so that a rolling restart
   * loses nothing; then it tells every peer it is leaving, and closes every connection and the
   * listener. Calling it again returns the same completion. Gets and writes on this node fail
   * with `ERR_STOPPED` from the moment `stop` is called; the others go on serving its keys.
   *
   * @param options `handover: false` skips the hand-over: the node's entries are then gone.
   * @param callback `callback()`, once everything is closed.
   * @returns Without a callback, a Promise that resolves when everything is closed.
   * @throws {TypeError} `options` is not an object, or `callback` not a function.
   *
   * @example A graceful stop, and one that hands nothing over
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = await new Node().init().ready();
   * const other = await new Node({ master: node.address }).init().ready();
   * await node.set("kept", 1);
   * await node.stop(); // "kept" now lives on `other`
   * other.stop({ handover: false }, () => console.log("stopped"));
   * ```
   */
  stop(options?: StopOptions): Promise<void>;
  /** {@linkcode Node.stop} with a callback. */
  stop(callback: () => void): void;
  /** {@linkcode Node.stop} with options and a callback. */
  stop(options: StopOptions, callback: () => void): void;
  stop(optionsOrCallback?: StopOptions | (() => void), callback?: () => void): Promise<void> | void {
    const [options, done] = typeof optionsOrCallback === "function" ? [{}, optionsOrCallback] : [optionsOrCallback ?? {}, callback];
    if (typeof options !== "object" || options === null) throw new TypeError(`Cannot stop: options must be an object: received ${quote(options)}`);
    if (options.handover !== undefined && typeof options.handover !== "boolean") {
      throw new TypeError(`Cannot stop: handover must be a boolean: received ${quote(options.handover)}`);
    }
    if (done !== undefined) assertFunction(done, "stop", "callback");
    const stopped = this.#core.stop(options.handover ?? true);
    if (done === undefined) return stopped;
    stopped.then(() => callLater(done));
  }
}

/** Checks that a key is a string no longer than `maxKeyLength`. */
function checkKey(key: unknown, operation: string, maxKeyLength: number): asserts key is string {
  assertKey(key, operation);
  if (key.length > maxKeyLength) {
    throw new RangeError(`Cannot ${operation}: the key is ${key.length} characters long, more than maxKeyLength (${maxKeyLength})`);
  }
}

export default Node;

// ─── Namespace: the keys of one name, with defaults of their own ─────────────────────────────

/** A namespace's prefix and defaults, as {@linkcode Namespace} keeps them. */
interface NamespaceSettings {
  name: string;
  prefix: string;
  ttl: number | undefined;
  grace: number | undefined;
  loader: Loader<unknown> | undefined;
}

/** A namespace's settings, checked, with `parent`'s defaults for what `options` leaves out. */
function checkedNamespace(name: string, options: NamespaceOptions, parent: Omit<NamespaceSettings, "name" | "prefix"> & { prefix?: string }): NamespaceSettings {
  if (typeof name !== "string" || name === "") throw new TypeError(`Cannot make a namespace: name must be a non-empty string: received ${quote(name)}`);
  if (typeof options !== "object" || options === null) throw new TypeError(`Cannot make namespace "${name}": options must be an object: received ${quote(options)}`);
  const { ttl = parent.ttl, grace = parent.grace, loader = parent.loader } = options;
  for (const [option, value] of [["ttl", ttl], ["grace", grace]] as const) {
    if (value !== undefined && !isAmount(value)) {
      throw new RangeError(`Cannot make namespace "${name}": ${option} must be a number of milliseconds, 0 or more: received ${quote(value)}`);
    }
  }
  if (loader !== undefined) assertFunction(loader, `make namespace "${name}"`, "loader");
  const prefix = `${parent.prefix ?? ""}${name}:`;
  return { name: prefix.slice(0, -1), prefix, ttl, grace, loader };
}

/**
 * The keys of one namespace of a node's cluster (see {@linkcode Node.namespace}): the node's
 * calls, on keys that start with `name:` there, with the namespace's defaults.
 *
 * @example A namespace with a loader of its own
 * ```ts
 * import { Node } from "./mod.ts";
 *
 * const node = await new Node().init().ready();
 * const users = node.namespace("users", { ttl: 60_000, loader: (context) => ({ id: context.key }) });
 * console.log(await users.getOrSet("7")); // { id: "users:7" }
 * console.log([...users.keys()]); // ["7"]
 * await node.stop();
 * ```
 */
export class Namespace {
  /** The node whose cluster holds the keys. */
  readonly node: Node;
  /** The namespace's full name: a nested namespace's is `parent:child`. */
  readonly name: string;
  readonly #settings: NamespaceSettings;
  readonly #clear: (prefix: string) => Promise<void>;

  /**
   * Made by {@linkcode Node.namespace} and {@linkcode Namespace.namespace}.
   *
   * @param node The node.
   * @param settings The prefix and the defaults.
   * @param clear Clears the keys that start with a prefix in the whole cluster.
   *
   * @example
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = new Node();
   * const sessions = node.namespace("sessions");
   * console.log(sessions.name); // sessions
   * ```
   */
  constructor(node: Node, settings: NamespaceSettings, clear: (prefix: string) => Promise<void>) {
    this.node = node;
    this.name = settings.name;
    this.#settings = settings;
    this.#clear = clear;
  }

  /**
   * A namespace inside this one, `name:child`, with this one's defaults for what `options` leaves out.
   *
   * @example
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const tenant = new Node().namespace("tenant-1");
   * console.log(tenant.namespace("users").name); // tenant-1:users
   * ```
   */
  namespace(name: string, options: NamespaceOptions = {}): Namespace {
    return new Namespace(this.node, checkedNamespace(name, options, this.#settings), this.#clear);
  }

  /**
   * {@linkcode Node.get} of the namespace's `key`.
   *
   * @example
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = await new Node().init().ready();
   * await node.namespace("a").set("k", 1);
   * console.log(await node.namespace("a").get("k"), await node.namespace("b").get("k")); // 1 null
   * await node.stop();
   * ```
   */
  get<T = unknown>(key: string, options?: GetOptions): Promise<T | null>;
  /** {@linkcode Namespace.get} with a callback. */
  get<T = unknown>(key: string, callback: Callback<T | null>): void;
  /** {@linkcode Namespace.get} with options and a callback. */
  get<T = unknown>(key: string, options: GetOptions, callback: Callback<T | null>): void;
  get<T = unknown>(key: string, optionsOrCallback?: GetOptions | Callback<T | null>, callback?: Callback<T | null>): Promise<T | null> | void {
    return (this.node.get as (...args: unknown[]) => Promise<T | null> | void)(this.#key(key, "get"), ...definedArguments(optionsOrCallback, callback));
  }

  /**
   * {@linkcode Node.set} of the namespace's `key`, with its `ttl` and `grace` for what `options` leaves out.
   *
   * @example
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = await new Node().init().ready();
   * await node.namespace("sessions", { ttl: 1_000 }).set("abc", { user: 1 });
   * await node.stop();
   * ```
   */
  set<T>(key: string, value: T, options?: SetOptions): Promise<T>;
  /** {@linkcode Namespace.set} with a callback. */
  set<T>(key: string, value: T, callback: Callback<T>): void;
  /** {@linkcode Namespace.set} with options and a callback. */
  set<T>(key: string, value: T, options: SetOptions, callback: Callback<T>): void;
  set<T>(key: string, value: T, optionsOrCallback?: SetOptions | Callback<T>, callback?: Callback<T>): Promise<T> | void {
    const [options, done] = typeof optionsOrCallback === "function" ? [undefined, optionsOrCallback] : [optionsOrCallback, callback];
    return (this.node.set as (...args: unknown[]) => Promise<T> | void)(this.#key(key, "set"), value, this.#writeOptions(options), ...definedArguments(done));
  }

  /**
   * {@linkcode Node.getOrSet} of the namespace's `key`: with the namespace's loader when none is
   * given, and its `ttl` and `grace` for what `options` leaves out. The loader's context names
   * the key as the node holds it (`name:key`).
   *
   * @example
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = await new Node().init().ready();
   * const rates = node.namespace("rates", { ttl: 60_000, grace: 3_600_000 });
   * console.log(await rates.getOrSet("EUR", () => 1.08)); // 1.08
   * await node.stop();
   * ```
   */
  getOrSet<T>(key: string, loader?: Loader<T>, options?: GetOrSetOptions): Promise<T | null>;
  /** {@linkcode Namespace.getOrSet} with the namespace's loader and options of the call. */
  getOrSet<T>(key: string, options: GetOrSetOptions): Promise<T | null>;
  /** {@linkcode Namespace.getOrSet} with a callback. */
  getOrSet<T>(key: string, loader: Loader<T> | undefined, callback: Callback<T | null>): void;
  /** {@linkcode Namespace.getOrSet} with options and a callback. */
  getOrSet<T>(key: string, loader: Loader<T> | undefined, options: GetOrSetOptions, callback: Callback<T | null>): void;
  getOrSet<T>(
    key: string,
    loader?: Loader<T> | GetOrSetOptions,
    optionsOrCallback?: GetOrSetOptions | Callback<T | null>,
    callback?: Callback<T | null>,
  ): Promise<T | null> | void {
    // Options in the loader's place: the namespace's loader, with them.
    if (typeof loader === "object" && loader !== null) {
      return this.getOrSet(key, undefined, loader, ...(definedArguments(optionsOrCallback) as [Callback<T | null>]));
    }
    const [options, done] = typeof optionsOrCallback === "function" ? [undefined, optionsOrCallback] : [optionsOrCallback, callback];
    const load = loader ?? (this.#settings.loader as Loader<T> | undefined);
    if (load === undefined) throw new TypeError(`Cannot getOrSet "${key}": namespace "${this.name}" has no loader, and none was given`);
    return (this.node.getOrSet as (...args: unknown[]) => Promise<T | null> | void)(this.#key(key, "getOrSet"), load, this.#writeOptions(options), ...definedArguments(done));
  }

  /**
   * {@linkcode Node.mget} of the namespace's `keys`.
   *
   * @example
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = await new Node().init().ready();
   * const ns = node.namespace("n");
   * await ns.mset([["a", 1]]);
   * console.log(await ns.mget(["a", "b"])); // [1, null]
   * await node.stop();
   * ```
   */
  mget<T = unknown>(keys: string[]): Promise<Array<T | null>>;
  /** {@linkcode Namespace.mget} with a callback. */
  mget<T = unknown>(keys: string[], callback: Callback<Array<T | null>>): void;
  mget<T = unknown>(keys: string[], callback?: Callback<Array<T | null>>): Promise<Array<T | null>> | void {
    if (!Array.isArray(keys)) throw new TypeError(`Cannot mget: keys must be an array of strings: received ${quote(keys)}`);
    return (this.node.mget as (...args: unknown[]) => Promise<Array<T | null>> | void)(keys.map((key) => this.#key(key, "mget")), ...definedArguments(callback));
  }

  /**
   * {@linkcode Node.mset} of entries of the namespace, with its `ttl` and `grace` for what `options` leaves out.
   *
   * @example
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = await new Node().init().ready();
   * await node.namespace("n").mset({ a: 1, b: 2 });
   * console.log(await node.get("n:b")); // 2
   * await node.stop();
   * ```
   */
  mset(entries: Iterable<[string, unknown]> | Record<string, unknown>, options?: SetOptions): Promise<void>;
  /** {@linkcode Namespace.mset} with a callback. */
  mset(entries: Iterable<[string, unknown]> | Record<string, unknown>, callback: (err: Error | null) => void): void;
  /** {@linkcode Namespace.mset} with options and a callback. */
  mset(entries: Iterable<[string, unknown]> | Record<string, unknown>, options: SetOptions, callback: (err: Error | null) => void): void;
  mset(
    entries: Iterable<[string, unknown]> | Record<string, unknown>,
    optionsOrCallback?: SetOptions | ((err: Error | null) => void),
    callback?: (err: Error | null) => void,
  ): Promise<void> | void {
    if (typeof entries !== "object" || entries === null) throw new TypeError(`Cannot mset: entries must be [key, value] pairs or an object: received ${quote(entries)}`);
    const pairs = Symbol.iterator in entries ? Array.from(entries as Iterable<[string, unknown]>) : Object.entries(entries);
    const prefixed = pairs.map((pair): [string, unknown] => {
      if (!Array.isArray(pair)) throw new TypeError(`Cannot mset: each entry must be a [key, value] pair: received ${quote(pair)}`);
      return [this.#key(pair[0], "mset"), pair[1]];
    });
    const [options, done] = typeof optionsOrCallback === "function" ? [undefined, optionsOrCallback] : [optionsOrCallback, callback];
    return (this.node.mset as (...args: unknown[]) => Promise<void> | void)(prefixed, this.#writeOptions(options), ...definedArguments(done));
  }

  /**
   * {@linkcode Node.has} of the namespace's `key`.
   *
   * @example
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = await new Node().init().ready();
   * await node.namespace("n").set("a", 1);
   * console.log(node.namespace("n").has("a"), node.has("a")); // true false
   * await node.stop();
   * ```
   */
  has(key: string): boolean {
    return this.node.has(this.#key(key, "has"));
  }

  /**
   * {@linkcode Node.remove} of the namespace's `key`.
   *
   * @example
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = await new Node().init().ready();
   * const ns = node.namespace("n");
   * await ns.set("a", 1);
   * console.log(await ns.remove("a")); // true
   * await node.stop();
   * ```
   */
  remove(key: string): Promise<boolean>;
  /** {@linkcode Namespace.remove} with a callback. */
  remove(key: string, callback: (err: Error | null, existed?: boolean) => void): void;
  remove(key: string, callback?: (err: Error | null, existed?: boolean) => void): Promise<boolean> | void {
    return (this.node.remove as (...args: unknown[]) => Promise<boolean> | void)(this.#key(key, "remove"), ...definedArguments(callback));
  }

  /**
   * The same as {@linkcode Namespace.remove}.
   *
   * @example
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = await new Node().init().ready();
   * console.log(await node.namespace("n").delete("nothing")); // false
   * await node.stop();
   * ```
   */
  delete(key: string): Promise<boolean>;
  /** {@linkcode Namespace.delete} with a callback. */
  delete(key: string, callback: (err: Error | null, existed?: boolean) => void): void;
  delete(key: string, callback?: (err: Error | null, existed?: boolean) => void): Promise<boolean> | void {
    return (this.node.remove as (...args: unknown[]) => Promise<boolean> | void)(this.#key(key, "delete"), ...definedArguments(callback));
  }

  /**
   * Removes every entry of the namespace (nested ones included) from the whole cluster, with
   * one `clear` message to each member, whatever the namespace holds: once it has called back,
   * no node returns a value of the namespace written before it; entries written after it stay.
   * A member that missed it (cut off, or stopped) learns it when it connects again. Other
   * namespaces, and keys outside any, are left whole.
   *
   * @param callback `callback(err)`; `ERR_TIMEOUT` when a member did not confirm.
   * @returns Without a callback, a Promise.
   *
   * @example
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = await new Node().init().ready();
   * await node.namespace("n").set("a", 1);
   * await node.set("kept", 2);
   * await node.namespace("n").clear();
   * console.log(await node.get("n:a"), await node.get("kept")); // null 2
   * await node.stop();
   * ```
   */
  clear(): Promise<void>;
  /** {@linkcode Namespace.clear} with a callback. */
  clear(callback: (err: Error | null) => void): void;
  clear(callback?: (err: Error | null) => void): Promise<void> | void {
    if (callback !== undefined) assertFunction(callback, "clear", "callback");
    return settle(this.#clear(this.#settings.prefix), callback);
  }

  /**
   * The keys of the namespace's live entries that this node holds, without the namespace's prefix.
   *
   * @example
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = await new Node().init().ready();
   * await node.namespace("n").set("a", 1);
   * console.log([...node.namespace("n").keys()]); // ["a"]
   * await node.stop();
   * ```
   */
  *keys(): Generator<string> {
    const { prefix } = this.#settings;
    for (const key of this.node.keys()) if (key.startsWith(prefix)) yield key.slice(prefix.length);
  }

  /**
   * Every live key of the namespace in the whole cluster, without its prefix (see {@linkcode Node.clusterKeys}).
   *
   * @example
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = await new Node().init().ready();
   * await node.namespace("n").set("a", 1);
   * for await (const key of node.namespace("n").clusterKeys()) console.log(key); // a
   * await node.stop();
   * ```
   */
  async *clusterKeys(): AsyncGenerator<string> {
    const { prefix } = this.#settings;
    for await (const key of this.node.clusterKeys()) if (key.startsWith(prefix)) yield key.slice(prefix.length);
  }

  /**
   * Every live entry of the namespace in the whole cluster, as `[key, value]` without the prefix (see {@linkcode Node.clusterEntries}).
   *
   * @example
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = await new Node().init().ready();
   * await node.namespace("n").set("a", 1);
   * for await (const [key, value] of node.namespace("n").clusterEntries()) console.log(key, value); // a 1
   * await node.stop();
   * ```
   */
  async *clusterEntries(): AsyncGenerator<[string, unknown]> {
    const { prefix } = this.#settings;
    for await (const [key, value] of this.node.clusterEntries()) if (key.startsWith(prefix)) yield [key.slice(prefix.length), value];
  }

  /**
   * The namespace's live entries that this node holds, as `[key, value]`, with `for await`.
   *
   * @example
   * ```ts
   * import { Node } from "./mod.ts";
   *
   * const node = await new Node().init().ready();
   * await node.namespace("n").set("a", 1);
   * for await (const [key, value] of node.namespace("n")) console.log(key, value); // a 1
   * await node.stop();
   * ```
   */
  async *[Symbol.asyncIterator](): AsyncGenerator<[string, unknown]> {
    const { prefix } = this.#settings;
    for await (const [key, value] of this.node) if (key.startsWith(prefix)) yield [key.slice(prefix.length), value];
  }

  /** The node's key of the namespace's `key`; a key that is not a string is refused as the node refuses it. */
  #key(key: unknown, operation: string): string {
    if (typeof key !== "string") checkKey(key, operation, Infinity);
    return this.#settings.prefix + (key as string);
  }

  /** A write's options with the namespace's `ttl` and `grace` for what they leave out. */
  #writeOptions<O extends SetOptions>(options: O | undefined): O | undefined {
    const { ttl, grace } = this.#settings;
    if (ttl === undefined && grace === undefined) return options;
    // Not options: the node says what is wrong with them.
    if (options !== undefined && (typeof options !== "object" || options === null)) return options;
    return { ...options, ttl: options?.ttl ?? ttl, grace: options?.grace ?? grace } as O;
  }
}

/** The arguments up to the last one given: a call passes on exactly what its caller gave. */
function definedArguments(...args: unknown[]): unknown[] {
  let end = args.length;
  while (end > 0 && args[end - 1] === undefined) end--;
  return args.slice(0, end);
}

/** Whether a get's `options` ask for a stale value; throws when they are not options. */
function allowsStale(key: string, options: GetOptions): boolean {
  // Neither options nor a callback: said as for any callback.
  if (typeof options !== "object" || options === null) assertFunction(options, "get", "callback");
  const { allowStale = false } = options;
  if (typeof allowStale !== "boolean") throw new TypeError(`Cannot get "${key}": allowStale must be a boolean: received ${quote(allowStale)}`);
  return allowStale;
}

// ─── KeyvStore: a node as a Keyv storage adapter ─────────────────────────────────────────────

/**
 * A node as a [Keyv](https://keyv.org) storage adapter, and so as a store of cache-manager v7,
 * NestJS caching and `cacheable`. Needs no Keyv at run time: Keyv calls the methods below. The
 * same class is exported as `kosyak/keyv` on npm and `@kosyak/core/keyv` on JSR.
 *
 * Keyv puts its namespace in front of every key (`namespace:key`); with one, `clear` removes
 * only the keys of that namespace, without one the whole cluster (either way one
 * message per peer). Keyv wires `iterator` only for the stores it knows by name; call it
 * directly to walk every entry of the cluster.
 *
 * @example With Keyv and cache-manager
 * ```ts
 * import Keyv from "keyv";
 * import { createCache } from "cache-manager";
 * import { KeyvStore, Node } from "./mod.ts";
 *
 * const node = await Node.start();
 * const cache = createCache({ stores: [new Keyv({ store: new KeyvStore(node) })] });
 * await cache.set("user:1", { name: "Kosyak" }, 60_000);
 * console.log(await cache.get("user:1")); // { name: "Kosyak" }
 * await cache.disconnect(); // stops the node
 * ```
 */
export class KeyvStore {
  /** What Keyv reads of a store's settings. */
  readonly opts: { dialect: string; url: string } = { dialect: "kosyak", url: "" };
  /** The namespace Keyv puts in front of its keys (`namespace:key`); Keyv sets it. */
  namespace: string | undefined;
  /** The node the store reads and writes through. */
  readonly node: Node;

  /**
   * Makes a store over a started (or starting) node.
   *
   * @param node Any member of the cluster.
   *
   * @example
   * ```ts
   * import { KeyvStore, Node } from "./mod.ts";
   *
   * const store = new KeyvStore(await Node.start());
   * await store.disconnect();
   * ```
   */
  constructor(node: Node) {
    if (!(node instanceof Node)) throw new TypeError(`Cannot create KeyvStore: node must be a Node: received ${quote(node)}`);
    this.node = node;
  }

  /**
   * The value of a key, or `undefined` where there is none.
   *
   * @param key The key, with Keyv's namespace in front.
   * @returns A Promise of the value.
   *
   * @example
   * ```ts
   * import { KeyvStore, Node } from "./mod.ts";
   *
   * const store = new KeyvStore(await Node.start());
   * await store.set("k", "v");
   * console.log(await store.get("k")); // "v"
   * await store.disconnect();
   * ```
   */
  async get(key: string): Promise<unknown> {
    return (await this.node.get(key)) ?? undefined;
  }

  /**
   * The values of several keys, `undefined` for each that has none; one request to each member
   * holding some of them.
   *
   * @param keys The keys.
   * @returns A Promise of the values, in the order of `keys`.
   *
   * @example
   * ```ts
   * import { KeyvStore, Node } from "./mod.ts";
   *
   * const store = new KeyvStore(await Node.start());
   * await store.set("a", 1);
   * console.log(await store.getMany(["a", "b"])); // [1, undefined]
   * await store.disconnect();
   * ```
   */
  async getMany(keys: string[]): Promise<unknown[]> {
    return (await this.node.mget(keys)).map((value) => value ?? undefined);
  }

  /**
   * Writes a value, for `ttl` ms if given; resolves once every live member has acknowledged.
   *
   * @param key The key.
   * @param value The value (Keyv gives its serialized text).
   * @param ttl Milliseconds the entry lives; left out or 0, the node's `ttl`.
   * @returns A Promise of `true`.
   *
   * @example
   * ```ts
   * import { KeyvStore, Node } from "./mod.ts";
   *
   * const store = new KeyvStore(await Node.start());
   * console.log(await store.set("k", "v", 1_000)); // true
   * await store.disconnect();
   * ```
   */
  async set(key: string, value: unknown, ttl?: number): Promise<boolean> {
    await this.node.set(key, value, typeof ttl === "number" && ttl > 0 ? { ttl } : {});
    return true;
  }

  /**
   * Removes a key from the cluster.
   *
   * @param key The key.
   * @returns A Promise of whether a live entry of it was removed.
   *
   * @example
   * ```ts
   * import { KeyvStore, Node } from "./mod.ts";
   *
   * const store = new KeyvStore(await Node.start());
   * await store.set("k", "v");
   * console.log(await store.delete("k"), await store.delete("k")); // true false
   * await store.disconnect();
   * ```
   */
  delete(key: string): Promise<boolean> {
    return this.node.remove(key);
  }

  /**
   * Removes several keys from the cluster.
   *
   * @param keys The keys.
   * @returns A Promise of whether a live entry of every one of them was removed.
   *
   * @example
   * ```ts
   * import { KeyvStore, Node } from "./mod.ts";
   *
   * const store = new KeyvStore(await Node.start());
   * await store.set("a", 1);
   * console.log(await store.deleteMany(["a"])); // true
   * await store.disconnect();
   * ```
   */
  async deleteMany(keys: string[]): Promise<boolean> {
    const removed = await Promise.all(keys.map((key) => this.node.remove(key)));
    return removed.every(Boolean);
  }

  /**
   * Whether a live entry of the key exists on any member.
   *
   * @param key The key.
   * @returns A Promise of whether it exists.
   *
   * @example
   * ```ts
   * import { KeyvStore, Node } from "./mod.ts";
   *
   * const store = new KeyvStore(await Node.start());
   * console.log(await store.has("k")); // false
   * await store.disconnect();
   * ```
   */
  async has(key: string): Promise<boolean> {
    return (await this.node.get(key)) !== null;
  }

  /**
   * Without a namespace, removes every entry of the whole cluster ({@linkcode Node.clear}); with
   * one, every key of the namespace, wherever it is held, with one message to each member
   * ({@linkcode Namespace.clear}).
   *
   * @returns A Promise that resolves once every live member has acknowledged.
   *
   * @example
   * ```ts
   * import { KeyvStore, Node } from "./mod.ts";
   *
   * const store = new KeyvStore(await Node.start());
   * await store.set("k", "v");
   * await store.clear();
   * console.log(await store.get("k")); // undefined
   * await store.disconnect();
   * ```
   */
  async clear(): Promise<void> {
    if (this.namespace === undefined || this.namespace === "") return this.node.clear();
    await this.node.namespace(this.namespace).clear();
  }

  /**
   * Every entry of the cluster as `[key, value]`, only those of `namespace` if given
   * ({@linkcode Node.clusterEntries}).
   *
   * @param namespace Keyv's namespace, whose keys start with `namespace:`.
   * @returns An async iterator of `[key, value]` pairs.
   *
   * @example
   * ```ts
   * import { KeyvStore, Node } from "./mod.ts";
   *
   * const store = new KeyvStore(await Node.start());
   * await store.set("ns:a", 1);
   * for await (const [key, value] of store.iterator("ns")) console.log(key, value); // ns:a 1
   * await store.disconnect();
   * ```
   */
  async *iterator(namespace?: string): AsyncGenerator<[string, unknown]> {
    for await (const [key, value] of this.node.clusterEntries()) {
      if (namespace === undefined || key.startsWith(`${namespace}:`)) yield [key, value];
    }
  }

  /**
   * Listens to the node's `error` event, as Keyv does with every store; other events are not
   * the node's to give.
   *
   * @param event The event's name: `error`.
   * @param listener Called with each error.
   * @returns This store.
   *
   * @example
   * ```ts
   * import { KeyvStore, Node } from "./mod.ts";
   *
   * const store = new KeyvStore(await Node.start()).on("error", (error) => console.error(error));
   * await store.disconnect();
   * ```
   */
  on(event: string, listener: (error: Error) => void): this {
    if (event === "error") this.node.on("error", listener);
    return this;
  }

  /**
   * Stops the node (handing its entries to the other members), as Keyv's and cache-manager's
   * `disconnect` ask.
   *
   * @returns A Promise that resolves once the node has stopped.
   *
   * @example
   * ```ts
   * import { KeyvStore, Node } from "./mod.ts";
   *
   * const store = new KeyvStore(await Node.start());
   * await store.disconnect();
   * ```
   */
  disconnect(): Promise<void> {
    return this.node.stop();
  }
}

// ─── The Node's engine: lifecycle, request paths, and the answers to peers ─────────────────

type Lifecycle = "new" | "starting" | "ready" | "failed" | "stopping" | "stopped";

/**
 * Where a key went: the node that holds it now, the version and writer of the write it holds,
 * the ms it has left (0: no expiry), and the last of them that are its grace.
 */
interface Moved {
  holder: string;
  version: number;
  ttl: number;
  writer: string;
  grace: number;
}

/**
 * A holder's value for a key, the ms it has left (0: no expiry), the last of them that are its
 * grace (stale already when `grace` is `ttl`), and its size as `maxBytes` counts it.
 */
interface Held {
  value: unknown;
  ttl: number;
  grace: number;
  size: number;
}

/** A holder's answer for one key: its value, or where it went, or neither (not held, no holder known). */
type Found = Held | { moved: Moved } | Record<string, never>;

/** A call of the `fetch` option, and whether a write of its key has made its value stale. */
interface FetchCall {
  overtaken: boolean;
  result: Promise<unknown>;
}

/** A getOrSet call's options, with the node's defaults for what it left out. */
interface LoadOptions {
  ttl: number;
  grace: number;
  timeout: number;
  hardTimeout: number;
  nullTtl: number;
}

/** What a getOrSet call ends with: the value, and whether the cache keeps it (else the loader declined, or it is a null not kept). */
interface LoadOutcome {
  value: unknown;
  kept: boolean;
}

/** What a getOrSet's lookup found, or its load gave: nothing (a held `null` is a value). */
const MISSING = Symbol("missing");

/** What a getOrSet's lookup found: a value in its grace (see SetOptions.grace), and the version and writer of its write. */
class Stale {
  readonly value: unknown;
  readonly version: number;
  readonly writer: string;

  constructor(value: unknown, version: number, writer: string) {
    this.value = value;
    this.version = version;
    this.writer = writer;
  }
}

/** The {@linkcode LoadContext} of one call of a loader. */
class Loading implements LoadContext {
  readonly key: string;
  ttl: number;
  /** Whether the value is to be kept: until the loader calls noStore. */
  keep = true;

  constructor(key: string, ttl: number) {
    this.key = key;
    this.ttl = ttl;
  }

  noStore(): void {
    this.keep = false;
  }
}

/**
 * A write checked and measured, ready to store: it lives `ttl` ms in all (0: until removed), the
 * last `grace` of them stale (see SetOptions.grace).
 */
interface Write {
  key: string;
  stored: unknown;
  size: number;
  ttl: number;
  grace: number;
}

/**
 * Everything a {@linkcode Node} does below its public API: its lifecycle, the paths of gets,
 * writes, removals and fetches, and the handlers of its peers' requests, over the Store (local
 * entries), the Directory (who holds what) and the Cluster (connections).
 */
class Core {
  readonly id: string;
  readonly options: ResolvedOptions;
  readonly store: Store;
  readonly directory: Directory;
  readonly cluster: Cluster;
  /** Values read from peers (`nearCache`); undefined without the option. */
  readonly near: NearCache | undefined;
  lifecycle: Lifecycle = "new";
  readonly counters = {
    sets: 0, hits: 0, remoteHits: 0, nearHits: 0, misses: 0, fetches: 0, fetchErrors: 0, loads: 0, loadErrors: 0, staleHits: 0, refreshes: 0,
    refreshErrors: 0, negativeSets: 0, handedOver: 0, adopted: 0, moved: 0, promoted: 0, copiesSent: 0, copiesPending: 0,
  };
  readonly listeners: Record<keyof NodeEvents, Set<(payload: unknown) => void>> = {
    peerUp: new Set(),
    peerDown: new Set(),
    error: new Set(),
  };
  #started: Promise<void> | undefined;
  #stopped: Promise<void> | undefined;
  #startedAt = 0;
  readonly #timers: Timers;
  /** The single writes of this turn of the event loop, sent and acknowledged together (see write). */
  #turn: { acknowledgements: Acknowledgements; failures: Promise<Failure[]> } | undefined;
  readonly replication: Replication;
  /** Where keys live with `placement: "hash"`; undefined with "local" (the directory). */
  readonly hash: HashPlacement | undefined;
  /** Gets under way for keys not held here, so that concurrent gets of one key share one. */
  readonly #gets = new Map<string, Promise<unknown>>();
  /** Calls of the `fetch` option under way, shared by local gets and peers' fetch requests. */
  readonly #fetches = new Map<string, FetchCall>();
  /** The loads this node grants as the member agreed on for their keys (see getOrSet). */
  readonly #grants: LoadGrants;
  /** getOrSet calls made here so far, which number them. */
  #loadCalls = 0;
  /** The getOrSet call of each key that leads on this node (see getOrSet). */
  readonly #loadsHere = new Map<string, Promise<LoadOutcome>>();
  /** The options of a getOrSet call that gives none. */
  readonly #loadDefaults: LoadOptions;
  /**
   * Hash placement: the newest clear of each writer applied here, by prefix ("" for the whole
   * cluster) and writer, as their writers numbered them, so that a clear passed on again is
   * applied once (see #clearOlder); the newest of the whole cluster, and of each prefix, oldest
   * first, to pass on. At most CLEARED_PREFIXES_REMEMBERED prefixes, and 4 times as many
   * writers' clears.
   */
  readonly #clearsApplied = new Map<string, number>();
  #wholeClearApplied: { version: number; writer: string } | undefined;
  readonly #prefixClearsApplied = new Map<string, { version: number; writer: string }>();
  /** How long a member's answer vouches for the near cache (see NodeOptions.nearCache). */
  readonly nearLease: number;

  constructor(id: string, options: ResolvedOptions) {
    this.id = id;
    this.options = options;
    this.#timers = new Timers(options.clock);
    this.replication = new Replication(this, this.#timers);
    this.#grants = new LoadGrants(this.#timers);
    this.#loadDefaults = { ttl: options.ttl, grace: options.grace, timeout: 0, hardTimeout: options.fetchTimeout, nullTtl: options.nullTtl };
    const hash = options.placement === "hash" ? new HashPlacement(this, this.#timers) : undefined;
    this.hash = hash;
    this.store = new Store(options, options.clock, (entry) => this.#letGo(entry));
    this.near = options.nearCache && new NearCache(options.nearCache, options.clock);
    this.nearLease = nearLease(options);
    // Whatever changes what the directory knows of a key drops the value kept for it.
    const near = this.near;
    // A removal outlives what may still be queued for this node, and on its way.
    const removalMemory = PATIENCE * options.requestTimeout + options.peerTimeout;
    this.directory = new Directory(id, this.store, options.clock, near && ((key) => near.delete(key)), options.placement === "hash", removalMemory);
    this.cluster = new Cluster(id, options, {
      handlers: {
        get: (_peer, message) => this.#answerGet(requireArray(message, "keys")),
        own: (peer, message) => this.#learn(peer, message),
        moved: (peer, message) => this.#learnMoved(peer, message),
        handover: (peer, message) => hash ? hash.adopt(peer, message) : this.replication.adopt(peer, message),
        keys: (peer, message) => this.#learn(peer, message),
        drop: (peer, message) => this.#dropOlder(peer, message),
        gone: (peer, message) => this.#forgetGone(peer, message),
        clear: (peer, message) => this.#learnCleared(peer, message),
        fetch: (_peer, message) => this.#answerFetch(requireString(message, "key")),
        load: (peer, message) => this.#answerPeerLoad(peer, message),
        loaded: (peer, message) => this.#answerPeerLoaded(peer, message),
        stats: () => ({ stats: this.localStats() }),
        ...(hash && {
          ownerGet: (_peer, message) => hash.answerGet(requireArray(message, "keys")),
          nearGet: (peer, message) => hash.answerGet(requireArray(message, "keys"), peer),
          invalidate: (_peer, message) => hash.invalidated(requireArray(message, "keys")),
          ownerSet: (_peer, message) => hash.answerSet(requireArray(message, "keys")),
          ownerRemove: (_peer, message) => hash.answerRemove(requireArray(message, "keys")),
          take: (_peer, message) => hash.answerTake(requireArray(message, "keys")),
          moveDone: (peer, message) => hash.moveDone(peer, message),
          ownedKeys: (peer, message) => hash.answerOwnedKeys(peer, message),
        }),
      },
      admitted: (peer) => {
        // What it removed while apart reaches no directory here: keep nothing read before.
        this.near?.clear();
        void this.#tellKeys(peer);
        hash?.admitted(peer);
      },
      leaving: (peer) => hash?.leaving(peer),
      lost: (peerId) => {
        // A member this node cannot hear may write without it: keep nothing read before.
        this.near?.clear();
        this.#grants.lost(peerId);
        if (hash) hash.lost(peerId);
        else this.replication.lost(peerId);
      },
      joined: (peer) => {
        if (!hash) this.replication.restoreCopies(peer);
      },
      emit: (event, payload) => this.emit(event, payload),
    });
  }

  // Lifecycle.

  start(): Promise<void> {
    this.lifecycle = "starting";
    this.#started = this.cluster.start().then(
      () => {
        if (this.lifecycle !== "starting") throw this.cluster.stoppedError();
        this.lifecycle = "ready";
        this.#startedAt = this.options.clock.now();
        this.hash?.started();
        this.#timers.every(SWEEP_INTERVAL, () => this.store.sweep());
      },
      (err: Error) => {
        if (this.lifecycle === "starting") this.lifecycle = "failed";
        throw err;
      },
    );
    // Callers who use neither the callback nor ready() must not see an unhandled rejection.
    this.#started.catch(() => {});
    return this.#started;
  }

  /** Stops once, handing the entries over first if asked to and the node was serving. */
  stop(handover: boolean): Promise<void> {
    this.#stopped ??= (async () => {
      const serving = this.lifecycle === "ready";
      this.lifecycle = "stopping";
      this.#grants.endAll();
      if (handover && serving) await (this.hash ?? this.replication).handOver();
      this.#timers.close();
      // Stopping the cluster first cuts short an init that is still connecting or retrying.
      await this.cluster.stop();
      await this.#started?.catch(() => {});
      this.lifecycle = "stopped";
    })();
    return this.#stopped;
  }

  /** The error of an operation on `key` that began while the node was ready and met its stop. */
  stoppedWhile(operation: string, key: string): KosyakError {
    return new KosyakError("ERR_STOPPED", `Cannot ${operation} "${key}": the node stopped meanwhile`);
  }

  /** Resolves when the node is ready; rejects when it never will be. */
  whenStarted(operation: string): Promise<void> {
    switch (this.lifecycle) {
      case "ready":
        return Promise.resolve();
      case "starting":
      case "failed":
        return this.#started!;
      case "new":
        return Promise.reject(new KosyakError("ERR_NOT_STARTED", `Cannot ${operation}: call init() first`));
      default:
        return Promise.reject(new KosyakError("ERR_STOPPED", `Cannot ${operation}: the node is stopped`));
    }
  }

  // Reads.

  /** The local entry a get may return at once: with hash placement, never a copy kept for an owner. */
  localEntry(key: string): StoredEntry | undefined {
    return this.hash ? this.hash.localEntry(key) : this.store.fresh(key);
  }

  /** The value a get may return in this turn, from a local entry or the near cache; else undefined. */
  valueAtHand(key: string): unknown {
    if (this.lifecycle !== "ready") return undefined;
    const entry = this.localEntry(key);
    return entry !== undefined ? this.hit(entry) : this.near === undefined ? undefined : this.nearGet(key);
  }

  /** A local entry's value for a get, counted as a hit. */
  hit(entry: StoredEntry): unknown {
    this.counters.hits++;
    return this.reveal(entry.value);
  }

  /**
   * The value the near cache keeps for `key`, counted as a near hit, while the members vouch
   * that none can have declared this node down and written without it; else undefined.
   */
  nearGet(key: string): unknown {
    const now = this.options.clock.now();
    if (!this.cluster.vouchedFor(now, this.nearLease)) return undefined;
    const value = this.near!.get(key, now);
    if (value === undefined) return undefined;
    this.counters.nearHits++;
    return this.reveal(value);
  }

  /** A get with allowStale of a key not fresh here: a fresh value as a get finds it, else a stale one (see SetOptions.grace). */
  getStale(key: string): Promise<unknown> {
    return this.hash ? this.hash.get(key, true) : this.#getSlow(key, "stale");
  }

  /** Gets a key not held here, sharing the work with concurrent gets of the same key. */
  getShared(key: string): Promise<unknown> {
    // An owner orders a key's writes without telling the other nodes, so a get started here
    // after a write there must not join one started before it: each asks.
    if (this.hash) return this.hash.get(key);
    let pending = this.#gets.get(key);
    if (pending === undefined) {
      const started: Promise<unknown> = this.#getSlow(key).finally(() => this.#gets.get(key) === started && this.#gets.delete(key));
      this.#gets.set(key, (pending = started));
    }
    // Callers share one result; with stringify, each still gets a copy of its own.
    return this.options.stringify ? pending.then(copyJson) : pending;
  }

  /**
   * Gets many keys, ITEMS_PER_BATCH at a time with a turn of the event loop between (as write
   * does): the gets begun in one turn reach each holder as one request, and 10,000 begun at once
   * kept this node from reading and answering for longer than peerTimeout on a busy machine.
   */
  async getMany(keys: string[]): Promise<unknown[]> {
    const slices: Array<Promise<unknown[]>> = [];
    for (let from = 0; from < keys.length; from += ITEMS_PER_BATCH) {
      if (from > 0) await this.#timers.turn(() => this.cluster.stoppedError());
      const slice = Promise.all(keys.slice(from, from + ITEMS_PER_BATCH).map((key) => this.getShared(key)));
      // Its failure is the result's, once every slice has begun: not an unhandled one meanwhile.
      slice.catch(() => {});
      slices.push(slice);
    }
    return (await Promise.all(slices)).flat();
  }

  /** Whether a live entry for `key` is held here or, as far as the directory knows, by a peer. */
  has(key: string): boolean {
    if (this.lifecycle !== "ready") return false;
    if (this.hash) return this.hash.has(key);
    const holding = this.directory.holderOf(key);
    return this.store.peek(key) !== undefined || (holding !== undefined && this.cluster.peer(holding.holder) !== undefined);
  }

  /**
   * The local entry, else the holder the directory names. A holder that has given the key up
   * says who holds it now, if it knows, and is asked no more about that write; the next holder
   * is asked in turn, up to MAX_HOPS times. With no holder, or one that does not answer, the key
   * goes to `fetch`, whose agreed node may also name a holder that has appeared meanwhile; or,
   * for getOrSet (`want` "load"), is MISSING. A stale value (see SetOptions.grace) counts as
   * none, unless `want` is "stale" (a get with allowStale: it is returned) or "load" (it is
   * returned as a {@linkcode Stale}).
   */
  async #getSlow(key: string, want: "fresh" | "stale" | "load" = "fresh"): Promise<unknown> {
    if (this.lifecycle !== "ready") await this.whenStarted("get");
    let silent: Holding | undefined;
    let missed = false;
    // Whether a stale value stands in for the key: a fetch that fails then finds nothing.
    let stale = false;
    for (let hop = 0; hop < MAX_HOPS; hop++) {
      const local = this.store.get(key);
      if (local !== undefined && !isStale(local, this.options.clock)) return this.hit(local);
      if (local !== undefined && want !== "fresh") return this.#staleFound(this.reveal(local.value), local, want);
      const near = this.near === undefined ? undefined : this.nearGet(key);
      if (near !== undefined) return near;
      // A holder known to hold a stale entry only is not asked for a fresh one.
      const holding = local === undefined ? this.directory.holderOf(key) : undefined;
      const worthAsking = holding !== undefined && (want !== "fresh" || !isStale(holding, this.options.clock));
      stale ||= local !== undefined || (holding !== undefined && !worthAsking);
      let peer = worthAsking ? this.cluster.peer(holding.holder) : undefined;
      if (peer?.closed) peer = await this.cluster.connectionTo(peer.id);
      const askedAt = this.options.clock.now();
      // A value asked while the members did not vouch for this node may predate a change it missed.
      const keepable = this.near !== undefined && this.cluster.vouchedFor(askedAt, this.nearLease);
      let found = peer === undefined || isSame(holding, silent) ? undefined : await this.#ask(peer, key);
      if (found !== undefined && "value" in found && isStaleHeld(found as Held)) {
        if (want !== "fresh") return this.#staleFound(found.value, holding!, want);
        // Stale there: to a get, as if that holder did not answer.
        found = undefined;
        stale = true;
      }
      if (found === undefined) {
        // This node stopped meanwhile: its connections close one by one and its directory forgets
        // their keys, so a miss now would say nothing of the key.
        if (this.lifecycle !== "ready") throw this.stoppedWhile("get", key);
        // The holder's connection closed while it was asked: the directory has moved on since
        // (to the member that keeps a copy, or nowhere).
        if (peer?.closed) continue;
        // No holder, or a silent one (not forgotten: it may still have the key).
        if (peer !== undefined) silent = holding;
        if (want === "load") return MISSING;
        if (!missed) this.counters.misses++;
        missed = true;
        const fetched = await this.#fetch(key).catch((error) => {
          if (stale) return { value: null };
          throw error;
        });
        if ("value" in fetched) return fetched.value;
        if (!this.#followMoved(key, fetched.moved)) break;
      } else if ("value" in found) {
        this.counters.remoteHits++;
        if (keepable) this.#keepNear(key, found as Held, holding!, askedAt);
        return found.value;
      } else {
        this.directory.gone(key, holding!.holder, holding!.version);
        if ("moved" in found) this.#followMoved(key, found.moved);
      }
    }
    if (want === "load") return MISSING;
    if (!missed) this.counters.misses++;
    return null;
  }

  /** A stale value a lookup found (see #getSlow): returned to a get with allowStale, counted, or to getOrSet as a Stale. */
  #staleFound(value: unknown, write: { version: number; writer: string }, want: "stale" | "load"): unknown {
    if (want === "load") return new Stale(value, write.version, write.writer);
    this.counters.staleHits++;
    return value;
  }

  /**
   * Keeps a value a holder sent in the near cache, unless the directory has changed since the
   * holder was asked: a newer write may have been announced meanwhile. It expires no later than
   * the holder's entry, since the ms the entry had left count from when the holder was asked.
   */
  #keepNear(key: string, held: Held, asked: Holding, askedAt: number): void {
    if (!isSame(this.directory.holderOf(key), asked)) return;
    const stored = this.options.stringify ? JSON.stringify(held.value) : held.value;
    // Until its grace begins: a near hit is never stale (a stale one is not found here).
    this.near!.keep(key, stored, held.ttl === 0 ? 0 : askedAt + held.ttl - held.grace, held.size);
  }

  /**
   * Records where a key went, if that node is a member; returns whether it is. The record names
   * the write's own writer: one handed over was written by the node that stopped, and a record
   * that named its heir instead would not be the same write to the `moved` of the next hand-over,
   * which would then leave the directory pointing at a node that left.
   */
  #followMoved(key: string, moved: Moved): boolean {
    if (this.cluster.peer(moved.holder) === undefined) return false;
    this.directory.own(key, moved.holder, moved.version, moved.ttl, moved.writer, false, moved.grace);
    return true;
  }

  /**
   * Asks a holder for a key; undefined when it does not answer. Gets of one tick to one holder
   * travel as one request (see Peer.batch); a key left out to keep the answer within a frame
   * (0) is asked again on its own, where it always fits.
   */
  async #ask(peer: Peer, key: string): Promise<Found | undefined> {
    const { answer, index } = peer.batch("get", key, key.length);
    try {
      const values = (await answer).values;
      const item = Array.isArray(values) ? values[index] : undefined;
      if (item !== 0) return parseFound(item);
      const alone = (await peer.request({ op: "get", keys: [key] })).values;
      return Array.isArray(alone) ? parseFound(alone[0]) : undefined;
    } catch {
      return undefined;
    }
  }

  /**
   * Answers a peer's get: `[value, ttl, size]` where held (the ms the entry has left, 0 for no
   * expiry; its size as `maxBytes` counts it); `[null, holder, version, ttl, writer]` where another
   * node holds the key; `[]` where nobody is known to; `0` where the value is left out to keep
   * the answer within a frame (the first value is never left out: a single value always fits).
   */
  #answerGet(keys: unknown[]): Record<string, unknown> {
    if (keys.length > ITEMS_PER_BATCH) throw new ProtocolError(`"get" asks for more than ${ITEMS_PER_BATCH} keys`);
    // UTF-8 takes at most 3 bytes per UTF-16 code unit, which is what sizes count.
    let room = this.options.maxFrameBytes - FRAME_ROOM;
    let sent = 0;
    const values = keys.map((key) => {
      if (typeof key !== "string") throw new ProtocolError(`"get" needs string keys`);
      const entry = this.store.get(key);
      if (entry === undefined) {
        const moved = this.#movedOf(key);
        return moved === undefined ? [] : [null, ...movedItem(moved)];
      }
      if (sent > 0 && 3 * entry.size > room) return 0;
      room -= 3 * entry.size;
      sent++;
      return heldItem(this.reveal(entry.value), entry, this.store.ttlOf(entry));
    });
    return { values };
  }

  /** Where the directory says a key not held here is held, if anywhere. */
  #movedOf(key: string): Moved | undefined {
    const holding = this.directory.holderOf(key);
    if (holding === undefined) return undefined;
    const ttl = holding.expires === 0 ? 0 : Math.max(1, holding.expires - this.options.clock.now());
    return { holder: holding.holder, version: holding.version, ttl, writer: holding.writer, grace: Math.min(holding.grace, ttl) };
  }

  // Fetching what no node holds.

  /**
   * Gets a value from the `fetch` option, or learns that a node now holds the key. The cluster
   * agrees, by hashing the key over the member ids, on one node to call `fetch` for each key, so
   * that gets of one missing key on several nodes call it once; if that node is gone, has no
   * `fetch`, or does not answer, this one calls it.
   */
  async #fetch(key: string): Promise<{ value: unknown } | { moved: Moved }> {
    if (this.options.fetch === undefined) return { value: null };
    const fetcher = this.cluster.fetcherOf(key);
    if (fetcher !== undefined) {
      const timeout = this.options.fetchTimeout + this.options.requestTimeout;
      try {
        const answer = await fetcher.request({ op: "fetch", key }, timeout);
        if ("value" in answer) return { value: answer.value };
        const moved = parseMoved(answer.moved);
        if (moved !== undefined) return { moved };
      } catch (error) {
        if (error instanceof KosyakError && error.code === "ERR_FETCH") throw error;
      }
    }
    return { value: await this.fetchHere(key) };
  }

  /**
   * A peer asks this node, the key's agreed fetcher, for a value it found nowhere: the value if
   * this node holds it, where it is if another node holds it, else what `fetch` gives.
   */
  async #answerFetch(key: string): Promise<Record<string, unknown>> {
    const local = this.store.fresh(key);
    if (local !== undefined) return { value: this.reveal(local.value) };
    const moved = this.store.peek(key) === undefined ? this.#movedOf(key) : undefined;
    // A holder of a stale entry only is no answer to a get: the fetched value replaces it.
    if (moved !== undefined && !isStaleHeld(moved)) return { moved: movedItem(moved) };
    if (this.options.fetch === undefined || this.lifecycle !== "ready") return {};
    // A null from fetch is an answer too: the asking node must not call fetch again.
    return { value: await this.fetchHere(key) };
  }

  /** Calls the `fetch` option once for concurrent callers of the same key, here and from peers. */
  fetchHere(key: string): Promise<unknown> {
    let fetching = this.#fetches.get(key);
    if (fetching === undefined) {
      const call: FetchCall = { overtaken: false, result: Promise.resolve(null) };
      call.result = this.#callFetch(key, call).finally(() => this.#fetches.get(key) === call && this.#fetches.delete(key));
      this.#fetches.set(key, (fetching = call));
    }
    return fetching.result;
  }

  async #callFetch(key: string, call: FetchCall): Promise<unknown> {
    const { fetch, fetchTimeout } = this.options;
    this.counters.fetches++;
    let value: unknown;
    try {
      value = await this.#within(fetchTimeout, "call back", (resolve, reject) => fetch!(key, (err, result) => (err ? reject(err) : resolve(result))));
    } catch (cause) {
      this.counters.fetchErrors++;
      throw new KosyakError("ERR_FETCH", `Cannot get "${key}": fetch failed: ${describe(cause)}`, { cause });
    }
    if (value === undefined || value === null) return null;
    // A write of the key since the get began wins: the fetched value is not stored over it. A
    // stale entry is no such write: the fetched value replaces it.
    const local = this.store.peek(key);
    const holding = local === undefined ? this.directory.holderOf(key) : undefined;
    const held = [local, holding].some((known) => known !== undefined && !isStale(known, this.options.clock));
    if (!call.overtaken && !held) await this.write([this.prepareWrite("fetch", key, value, undefined)]);
    return value;
  }

  /**
   * A write of `key` (here, or announced by a peer) overtakes the gets and the fetch under way for
   * it: gets that start from now on do not join them, and the fetched value is not stored over
   * the newer one.
   */
  overtake(key: string): void {
    this.#gets.delete(key);
    this.#grants.overtaken(key);
    const fetching = this.#fetches.get(key);
    if (fetching === undefined) return;
    fetching.overtaken = true;
    this.#fetches.delete(key);
  }

  // Loading: getOrSet.

  /** A getOrSet call's options, checked, with the node's defaults for what they leave out. */
  loadOptions(key: string, options: GetOrSetOptions | undefined): LoadOptions {
    if (options === undefined) return this.#loadDefaults;
    if (typeof options !== "object" || options === null) {
      throw new TypeError(`Cannot getOrSet "${key}": options must be an object: received ${quote(options)}`);
    }
    const milliseconds = (name: keyof LoadOptions, least: number, most = Infinity): number => {
      const value = options[name] ?? this.#loadDefaults[name];
      if (!isAmount(value) || value < least || value > most) {
        const range = most === Infinity ? `${least} or more` : `from ${least} to ${most}`;
        throw new RangeError(`Cannot getOrSet "${key}": ${name} must be a number of milliseconds, ${range}: received ${quote(value)}`);
      }
      return value;
    };
    return {
      ttl: milliseconds("ttl", 0),
      grace: milliseconds("grace", 0),
      timeout: milliseconds("timeout", 0, MAX_DELAY_MS),
      hardTimeout: milliseconds("hardTimeout", 1, MAX_DELAY_MS),
      nullTtl: milliseconds("nullTtl", 0),
    };
  }

  /**
   * Gets `key` for getOrSet, else loads it once in the cluster. Concurrent calls of one key on
   * this node follow the first (see #leadLoad), so that the members hear of one at a time: a
   * follower takes a value the first call loaded and did not keep; otherwise, once that call is
   * done, it looks for itself. It must: what the first call read, or stored, was the value when
   * its request went, which may be before the follower began, and before a newer write ended.
   */
  async getOrSet(key: string, loader: Loader<unknown>, options: LoadOptions): Promise<unknown> {
    if (this.lifecycle !== "ready") await this.whenStarted("getOrSet");
    const leading = this.#loadsHere.get(key);
    if (leading !== undefined) {
      // Its failure is its own caller's.
      const outcome = await leading.catch(() => undefined);
      if (outcome?.kept === false) return outcome.value;
      return (await this.#leadLoad(key, loader, options)).value;
    }
    // Gone from the map before anyone waiting for it runs on.
    const led: Promise<LoadOutcome> = this.#leadLoad(key, loader, options).finally(() => this.#loadsHere.get(key) === led && this.#loadsHere.delete(key));
    this.#loadsHere.set(key, led);
    return (await led).value;
  }

  /**
   * Each round looks for `key` (with local placement, as a get does, without `fetch`), then asks
   * the member the cluster agrees on for the key (see #agreedOn) for the right to load it. That
   * member answers with the value it holds, or with the right, or, once the load under way is
   * done, with its unstored value or word to look again. After MAX_LOAD_ROUNDS rounds, or
   * MAX_UNANSWERED_LOADS without an answer (the members changing meanwhile), this node loads the
   * key itself.
   */
  async #leadLoad(key: string, loader: Loader<unknown>, options: LoadOptions): Promise<LoadOutcome> {
    const call = ++this.#loadCalls;
    let missed = false;
    for (let round = 0, unanswered = 0; round < MAX_LOAD_ROUNDS && unanswered < MAX_UNANSWERED_LOADS; round++) {
      if (this.lifecycle !== "ready") throw this.stoppedWhile("getOrSet", key);
      let stale: Stale | undefined;
      if (this.hash === undefined) {
        const found = await this.#getSlow(key, "load");
        if (found instanceof Stale) stale = found;
        else if (found !== MISSING) return { value: found, kept: true };
      }
      const agreed = this.#agreedOn(key);
      const asked: LoadAsk = { member: this.id, key, call, timeout: options.hardTimeout, stale: stale && { version: stale.version, writer: stale.writer } };
      const reply = agreed === undefined ? await this.#answerLoad(asked) : await this.#askToLoad(agreed, asked);
      if ("value" in reply) {
        this.counters[agreed === undefined ? "hits" : "remoteHits"]++;
        return { value: reply.value, kept: true };
      }
      if ("stale" in reply) stale = new Stale(reply.stale, 0, "");
      // With a stale value at hand, no call waits: it refreshes with the right to, or not at all
      // (another call refreshes, or the agreed member does not answer).
      if (stale !== undefined && !("again" in reply)) {
        const refresh = "load" in reply ? () => this.#load(key, loader, options, { agreed, call }) : undefined;
        return this.#serveStale(key, stale.value, options, refresh);
      }
      if (!missed) this.counters.misses++;
      missed = true;
      if ("load" in reply) {
        const loaded = await this.#load(key, loader, options, { agreed, call });
        if (loaded !== MISSING) return loaded;
      } else if ("again" in reply) {
        const moved = parseMoved(reply.moved);
        if (moved !== undefined) this.#followMoved(key, moved);
      } else {
        // No answer, or none yet from a member that is not ready: ask again once the members change.
        unanswered++;
        await this.cluster.nextChange(this.options.heartbeatInterval);
      }
    }
    // Without a grant, nobody can refuse the store: the outcome is never MISSING.
    return (await this.#load(key, loader, options, undefined)) as LoadOutcome;
  }

  /**
   * Returns a stale value to getOrSet (see SetOptions.grace), and with the right to `refresh` it,
   * refreshes it in the background: the call waits for the refresh up to its soft `timeout`,
   * and returns the fresh value if it comes by then. A refresh that fails is reported as an
   * `error` event, not to the call, and the stale value goes on being served.
   */
  async #serveStale(key: string, value: unknown, options: LoadOptions, refresh?: () => Promise<LoadOutcome | typeof MISSING>): Promise<LoadOutcome> {
    const served = () => (this.counters.staleHits++, { value, kept: true });
    if (refresh === undefined) return served();
    this.counters.refreshes++;
    const refreshed = refresh().catch((error: Error): typeof MISSING => {
      this.counters.refreshErrors++;
      // A refresh cut short by this node's stop is no failure of the loader.
      if (this.lifecycle !== "ready") return MISSING;
      const code = error instanceof KosyakError ? error.code : "ERR_FETCH";
      this.emit("error", new KosyakError(code, `Cannot refresh the stale value of "${key}", which is served until its grace runs out: ${describe(error)}`, { cause: error }));
      return MISSING;
    });
    if (options.timeout === 0) return served();
    const late = new Promise<typeof MISSING>((resolve) => {
      const cancel = this.#timers.after(options.timeout, () => resolve(MISSING), () => resolve(MISSING));
      void refreshed.then(cancel);
    });
    const outcome = await Promise.race([refreshed, late]);
    // Overtaken by a write, the stale value was the cache's when this call looked; not stored,
    // the stale value stays.
    return outcome === MISSING || (!outcome.kept && outcome.value === null) ? served() : outcome;
  }

  /** The member that grants the loads of `key`: its owner with hash placement, else its fetcher; undefined for this node. */
  #agreedOn(key: string): Peer | undefined {
    return this.hash ? this.hash.ownerOf(key) : this.cluster.fetcherOf(key);
  }

  /**
   * Asks `agreed` for the right to load `key`; `{}` when it does not answer. The answer may wait
   * there for the load under way: the request fails only when `agreed` falls silent, or after
   * PATIENCE request timeouts (see Peer.request), when this call asks again.
   */
  async #askToLoad(agreed: Peer, { key, call, timeout, stale }: LoadAsk): Promise<LoadReply> {
    try {
      const request = stale === undefined ? { op: "load", key, call, timeout } : { op: "load", key, call, timeout, stale: stale.version, staleWriter: stale.writer };
      return parseLoadReply(await agreed.request(request));
    } catch {
      return {};
    }
  }

  /**
   * Calls the loader and stores its value, unless it declines or the value is a null not to
   * keep. With the right to load (`granted`), tells the member that gave it how it went: failed
   * (the next caller loads), the value unstored (the waiting callers take it), or about to store,
   * which that member allows only if the key was not written since the right was given; if it
   * was, the value is neither stored nor returned (MISSING): the call looks again, so that what
   * it returns is always a value the cache held, or one it chose not to keep.
   */
  async #load(key: string, loader: Loader<unknown>, options: LoadOptions, granted: { agreed: Peer | undefined; call: number } | undefined): Promise<LoadOutcome | typeof MISSING> {
    const context = new Loading(key, options.ttl);
    let value: unknown;
    try {
      value = (await this.#callLoader(loader, context, options.hardTimeout)) ?? null;
    } catch (cause) {
      this.counters.loadErrors++;
      if (granted) void this.#tellLoaded(key, granted, { failed: true });
      throw new KosyakError("ERR_FETCH", `Cannot getOrSet "${key}": the loader failed: ${describe(cause)}`, { cause });
    }
    const ttl = value === null ? options.nullTtl : context.ttl;
    try {
      // Checked even when it is not kept: the calls waiting get it as a message.
      // A negative entry lives its nullTtl, no longer.
      const write = this.prepareWrite("getOrSet", key, value, { ttl, grace: value === null ? 0 : options.grace });
      if (!context.keep || (value === null && ttl === 0)) {
        if (granted) void this.#tellLoaded(key, granted, { value });
        return { value, kept: false };
      }
      if (granted !== undefined && (await this.#tellLoaded(key, granted, {})).store === false) return MISSING;
      await this.write([write]);
      if (value === null) this.counters.negativeSets++;
      return { value, kept: true };
    } catch (error) {
      if (granted) void this.#tellLoaded(key, granted, { failed: true });
      throw error;
    }
  }

  /** Calls `loader`, counted; rejects with what it throws, or when it takes longer than `timeout` or the node stops. */
  #callLoader(loader: Loader<unknown>, context: Loading, timeout: number): Promise<unknown> {
    this.counters.loads++;
    return this.#within(timeout, "finish", (resolve, reject) => new Promise((loaded) => loaded(loader(context))).then(resolve, reject));
  }

  /**
   * Runs `start`, a user's `fetch` or loader, and settles as it does, or rejects when it does not
   * `finish` within `ms` (saying so), or when the node stops first.
   */
  #within(ms: number, finish: string, start: (resolve: (value: unknown) => void, reject: (error: unknown) => void) => void): Promise<unknown> {
    return new Promise((resolve, reject) => {
      const cancel = this.#timers.after(ms, () => reject(new Error(`it did not ${finish} within ${ms} ms`)), () => reject(new Error("the node stopped")));
      start((value) => (cancel(), resolve(value)), (error) => (cancel(), reject(error)));
    });
  }

  /** Tells the member that granted a load how it went (see #load); its answer, `{}` when it does not answer. */
  #tellLoaded(key: string, { agreed, call }: { agreed: Peer | undefined; call: number }, outcome: { failed?: true; value?: unknown }): Promise<Message | Record<string, unknown>> {
    if (agreed === undefined) return Promise.resolve(this.#grants.loaded(key, this.id, call, outcome));
    return agreed.request({ op: "loaded", key, call, ...outcome }).catch(() => ({}));
  }

  /**
   * A getOrSet (see LoadAsk) found `key` nowhere, or stale only: the value if this node holds
   * it, word to look again if the directory knows a holder of a newer write, else the right to
   * load once the load under way is done (see LoadGrants). The refresh of a stale value is
   * granted at once, or refused while another call refreshes it: nobody waits for a refresh. A
   * node that is not ready, or (hash placement) not the owner in its own view, answers `{}`:
   * the caller asks again once the members change.
   */
  #answerLoad(asked: LoadAsk): LoadReply | Promise<LoadReply> {
    if (this.lifecycle !== "ready") return {};
    const held = this.hash ? this.hash.ownEntry(asked.key) : this.store.get(asked.key);
    if (held instanceof Promise) return held.then((entry) => this.#grantOrHeld(asked, entry));
    return this.#grantOrHeld(asked, held);
  }

  #grantOrHeld({ member, key, call, timeout, stale }: LoadAsk, entry: StoredEntry | undefined): LoadReply | Promise<LoadReply> {
    // With hash placement, a node that takes another member for the owner (once any pull is done) answers for nothing.
    if (this.hash?.ownerOf(key) !== undefined) return {};
    const caller = { member, call, lasts: timeout + this.options.requestTimeout };
    if (entry !== undefined && !isStale(entry, this.options.clock)) return { value: this.reveal(entry.value) };
    if (entry !== undefined) return this.#grants.refresh(key, caller, { stale: this.reveal(entry.value) });
    const moved = this.hash === undefined ? this.#movedOf(key) : undefined;
    if (moved !== undefined && (stale === undefined || newer(moved.version, moved.writer, stale.version, stale.writer))) return { again: true, moved: movedItem(moved) };
    // The caller holds a stale value that no newer write known here replaces.
    if (stale !== undefined) return this.#grants.refresh(key, caller, {});
    return this.#grants.ask(key, caller);
  }

  /** A peer's `load` request (see #answerLoad). */
  #answerPeerLoad(peer: Peer, message: Message): LoadReply | Promise<LoadReply> {
    const { call, timeout } = message;
    const stale = isVersion(message.stale) && isNodeId(message.staleWriter) ? { version: message.stale, writer: message.staleWriter } : undefined;
    if (!isVersion(call) || !isAmount(timeout) || timeout > MAX_DELAY_MS || (message.stale !== undefined && stale === undefined)) {
      throw new ProtocolError(`"load" needs a call number, a timeout of at most ${MAX_DELAY_MS} ms, and a version and writer if it says stale`);
    }
    return this.#answerLoad({ member: peer.id, key: requireString(message, "key"), call, timeout, stale });
  }

  /** A peer's `loaded` request: how the load this node granted went (see #load). */
  #answerPeerLoaded(peer: Peer, message: Message): Record<string, unknown> {
    if (!isVersion(message.call)) throw new ProtocolError(`"loaded" needs a call number`);
    const outcome = message.failed === true ? { failed: true as const } : "value" in message ? { value: message.value } : {};
    return this.#grants.loaded(requireString(message, "key"), peer.id, message.call, outcome);
  }

  // Writes.

  /** Checks a write's arguments and measures it, before anything is stored. */
  prepareWrite(operation: string, key: unknown, value: unknown, options: SetOptions | undefined): Write {
    checkKey(key, operation, this.options.maxKeyLength);
    if (options !== undefined && (typeof options !== "object" || options === null)) {
      throw new TypeError(`Cannot ${operation} "${key}": options must be an object: received ${quote(options)}`);
    }
    const ttl = options?.ttl ?? this.options.ttl;
    const grace = options?.grace ?? this.options.grace;
    for (const [name, amount] of [["ttl", ttl], ["grace", grace]] as const) {
      if (!isAmount(amount)) {
        throw new RangeError(`Cannot ${operation} "${key}": ${name} must be a number of milliseconds, 0 or more: received ${quote(amount)}`);
      }
    }
    const { maxValueBytes, maxBytes, maxFrameBytes } = this.options;
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
    // Without a ttl the entry never goes stale; with one, it lives its grace longer.
    return { key, stored: this.options.stringify ? json : value, size, ttl: ttl === 0 ? 0 : ttl + grace, grace: ttl === 0 ? 0 : grace };
  }

  /**
   * Stores writes here and tells every peer that this node now holds them (`own`); resolves once
   * every live peer has acknowledged, so a get anywhere afterwards finds them. ITEMS_PER_BATCH
   * writes at a time, with a turn of the event loop between: an `mset` of 10,000 entries done at
   * once kept this node from reading and answering for half a second on a busy machine, long
   * enough for its peers to take it for dead.
   */
  write(writes: Write[]): Promise<unknown> {
    return this.lifecycle === "ready" ? this.#writeStarted(writes) : this.whenStarted("set").then(() => this.#writeStarted(writes));
  }

  #writeStarted(writes: Write[]): Promise<unknown> {
    try {
      if (writes.length === 1) this.cluster.refuseWhenOverloaded("set", writes[0].key);
      else this.cluster.refuseWhenOverloaded(`write ${writes.length} entries`);
      if (this.hash) return this.hash.write(writes);
      if (writes.length > 1) return this.#writeManyHere(writes);
      // A single write shares the acknowledgements of the turn's others (see #writesOfThisTurn).
      const turn = this.#writesOfThisTurn();
      this.#writeHere(writes[0], turn.acknowledgements);
      return turn.failures.then((failures) => throwIfCopyFailed(failures, writes[0].key));
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /** Local placement: ITEMS_PER_BATCH writes a turn, with their acknowledgements waited for together. */
  async #writeManyHere(writes: Write[]): Promise<void> {
    const acknowledgements = new Acknowledgements(this.cluster);
    for (let index = 0; index < writes.length; index++) {
      if (index > 0 && index % ITEMS_PER_BATCH === 0) await this.#timers.turn(() => this.cluster.stoppedError());
      this.#writeHere(writes[index], acknowledgements);
    }
    throwIfCopyFailed(await acknowledgements.settled());
  }

  /** Local placement: stores a write here, tells every peer (`own`), and sends its copies. */
  #writeHere({ key, stored, size, ttl, grace }: Write, acknowledgements: Acknowledgements): void {
    const version = this.#storeOwn(key, stored, size, ttl, grace);
    const copies = this.options.replicas > 0 ? this.cluster.replicasOf(key, this.options.replicas) : [];
    const entry = copies.length > 0 ? this.store.peek(key) : undefined;
    if (entry !== undefined) this.replication.sendCopies(acknowledgements, entry, copies);
    acknowledgements.sendToAll("own", keyItem(key, version, ttl, this.id, this.id, grace), key.length, copies);
  }

  /**
   * Stores a write here at once when nobody else must hear of it (this node is ready, in local
   * placement, and has no peer), and says whether it did: a set then costs a store, not a wait
   * for acknowledgements (a local set ran at 1/17 to 1/26 of a `Map` write with the wait).
   */
  storeAlone({ key, stored, size, ttl, grace }: Write): boolean {
    if (this.lifecycle !== "ready" || this.hash !== undefined || this.cluster.peerCount > 0) return false;
    this.#storeOwn(key, stored, size, ttl, grace);
    return true;
  }

  /** Stores this node's own write of `key`, overtaking the gets and fetch under way; its version. */
  #storeOwn(key: string, stored: unknown, size: number, ttl: number, grace: number): number {
    this.counters.sets++;
    this.overtake(key);
    return this.directory.write(key, stored, size, ttl, grace);
  }

  /**
   * The acknowledgements that the single writes begun in this turn of the event loop share, and
   * the failures they settle with once the turn's writes are all sent. A burst of sets costs
   * one wait for every member's answers, as an `mset` of them would, rather than one each.
   */
  #writesOfThisTurn(): { acknowledgements: Acknowledgements; failures: Promise<Failure[]> } {
    if (this.#turn !== undefined) return this.#turn;
    const acknowledgements = new Acknowledgements(this.cluster);
    const failures = new Promise<Failure[]>((resolve) => queueMicrotask(() => {
      this.#turn = undefined;
      resolve(acknowledgements.settled());
    }));
    return (this.#turn = { acknowledgements, failures });
  }

  /**
   * Removes a key here, and from every peer and directory (`drop`). Every peer hears of it: a
   * directory can miss a holder for a while, and a removal must reach the holder all the same.
   */
  async remove(key: string): Promise<boolean> {
    await this.whenStarted("remove");
    this.cluster.refuseWhenOverloaded("remove", key);
    if (this.hash) return this.hash.remove(key);
    this.overtake(key);
    const heldHere = this.store.peek(key) !== undefined;
    const version = this.directory.remove(key);
    const acknowledgements = new Acknowledgements(this.cluster);
    const item = [key, version];
    acknowledgements.sendToAll("drop", item, key.length);
    await acknowledgements.settled();
    return heldHere || acknowledgements.held.has(item);
  }

  /**
   * Clears the whole cluster, or (with a `prefix`) the keys that start with it: drops every such
   * entry here and every directory record of a write older than the clear's version, then tells
   * every peer to do the same (`clear`, one message each) and waits for their acknowledgements.
   */
  async clear(prefix = ""): Promise<void> {
    await this.whenStarted("clear");
    const version = this.directory.nextVersion();
    this.#clearOlder(version, this.id, prefix);
    const acknowledgements = new Acknowledgements(this.cluster);
    acknowledgements.sendToAll("clear", prefix === "" ? [version, this.id] : [version, this.id, prefix], prefix.length);
    // A member that did not confirm may still return older values: say so.
    for (const failure of await acknowledgements.settled()) {
      const what = prefix === "" ? "the cluster" : `the keys that start with ${quote(prefix)}`;
      throw new KosyakError("ERR_TIMEOUT", `Cannot clear ${what}: member ${failure.peer.id} did not confirm: ${describe(failure.error)}`);
    }
  }

  /**
   * Drops every write older than the clear (`version`, `writer`), and overtakes every get, fetch
   * and load under way; a clear seen before (every node passes the newest on to each new
   * connection, see #tellKeys) changes nothing. With hash placement, every entry stored here
   * goes: an owner's versions follow its own clock, which no write of another node's has moved,
   * so the clear counts as newer than anything this node has seen when it first arrives.
   */
  #clearOlder(version: number, writer: string, prefix: string): void {
    if (this.hash) {
      const applied = `${prefix}\n${writer}`;
      if ((this.#clearsApplied.get(applied) ?? -1) >= version) return;
      this.#clearsApplied.delete(applied);
      this.#clearsApplied.set(applied, version);
      if (this.#clearsApplied.size > 4 * CLEARED_PREFIXES_REMEMBERED) this.#clearsApplied.delete(this.#clearsApplied.keys().next().value!);
      const newest = prefix === "" ? this.#wholeClearApplied : this.#prefixClearsApplied.get(prefix);
      if (newest === undefined || newer(version, writer, newest.version, newest.writer)) {
        if (prefix === "") this.#wholeClearApplied = { version, writer };
        else {
          this.#prefixClearsApplied.delete(prefix);
          this.#prefixClearsApplied.set(prefix, { version, writer });
          if (this.#prefixClearsApplied.size > CLEARED_PREFIXES_REMEMBERED) this.#prefixClearsApplied.delete(this.#prefixClearsApplied.keys().next().value!);
        }
      }
    } else {
      const last = this.directory.lastClear(prefix);
      if (last !== undefined && !newer(version, writer, last.version, last.writer)) return;
    }
    this.directory.clearOlder(this.hash ? Math.max(version, this.directory.clock + 1) : version, writer, prefix);
    if (prefix === "") this.near?.clear();
    else this.near?.deletePrefix(prefix);
    for (const key of [...this.#gets.keys(), ...this.#fetches.keys()]) if (key.startsWith(prefix)) this.overtake(key);
    this.#grants.endAll(prefix);
  }

  /** The cluster, or the keys of a prefix, was cleared (`clear`: by the peer, or by a node the peer heard it from): drop what is older here too. */
  #learnCleared(_peer: Peer, message: Message): Record<string, unknown> {
    for (const item of requireArray(message, "keys")) {
      const [version, writer, prefix = ""] = Array.isArray(item) ? item : [];
      if (!isVersion(version) || !isNodeId(writer) || typeof prefix !== "string" || prefix.length > this.options.maxKeyLength) {
        throw new ProtocolError(`"clear" needs [version, writer, prefix?] items, with a prefix no longer than maxKeyLength`);
      }
      this.#clearOlder(version, writer, prefix);
    }
    return {};
  }

  /** Removes every local entry and tells the peers (`gone`), waiting for their acknowledgements. */
  async clearLocal(): Promise<void> {
    await this.whenStarted("clearLocal");
    const acknowledgements = new Acknowledgements(this.cluster);
    for (const entry of this.store.clear()) {
      // A copy kept for a member goes from here only: the directory points to that member again.
      if (entry.copyOf !== undefined) this.#letGo(entry);
      else acknowledgements.sendToAll("gone", [entry.key, entry.version], entry.key.length);
    }
    await acknowledgements.settled();
  }

  /**
   * The store let an entry go (evicted or expired). The peers are told of an entry of this
   * node's own; of a copy kept for a member, the directory points to that member again.
   */
  #letGo(entry: StoredEntry): void {
    if (this.hash) return this.hash.letGo(entry);
    if (entry.copyOf === undefined) return this.#tellGone(entry.key, entry.version);
    const now = this.options.clock.now();
    if (entry.expires === 0 || entry.expires > now) this.directory.own(entry.key, entry.copyOf, entry.version, this.store.ttlOf(entry), entry.writer, false, entry.grace);
  }

  /** Tells the peers of an entry the store evicted or expired, unawaited. */
  #tellGone(key: string, version: number): void {
    const acknowledgements = new Acknowledgements(this.cluster);
    acknowledgements.sendToAll("gone", [key, version], key.length);
    void acknowledgements.settled();
  }

  // The directory's messages.

  /**
   * Tells a newly admitted peer every key this node holds, ending with `done`; the writer only
   * of entries another node wrote, and no copy kept for another member. The newest clear of the
   * cluster this node has seen goes first, so that a peer that missed it (cut off, or stopped)
   * drops what it held from before it rather than keeping it apart from everyone else.
   *
   * The list goes as requests, at most KEY_LISTS_IN_FLIGHT of them unanswered, so that a node
   * holding millions of keys never queues more for a joiner than the joiner takes (queued all at
   * once, they passed `maxQueueBytes` and the joiner was cut off as stalled). Each batch reads
   * the entries when it is sent, so it never contradicts a change sent to the peer before it. An
   * answer that does not come within `requestTimeout` stops the wait, not the list: the batch was
   * delivered, and only the heartbeats decide that a peer is gone.
   */
  async #tellKeys(peer: Peer): Promise<void> {
    const clears: unknown[][] = this.hash ? [] : this.directory.clears();
    if (this.hash && this.#wholeClearApplied !== undefined) clears.push([this.#wholeClearApplied.version, this.#wholeClearApplied.writer]);
    if (this.hash) for (const [prefix, { version, writer }] of this.#prefixClearsApplied) clears.push([version, writer, prefix]);
    // As many requests as it takes to fit each in a frame (a version and a writer's id take
    // under 100 units besides the prefix).
    const send = (batch: unknown[][]) => void peer.request({ op: "clear", keys: batch }).catch(() => {});
    let batch: unknown[][] = [];
    let units = 0;
    for (const clear of clears) {
      const size = ((clear[2] as string | undefined)?.length ?? 0) + 100;
      if (batch.length > 0 && !fitsInFrame(units + size, this.options.maxFrameBytes)) {
        send(batch);
        batch = [];
        units = 0;
      }
      batch.push(clear);
      units += size;
    }
    if (batch.length > 0) send(batch);
    // The keys as they are now: reads of a bounded store move entries to the back, so walking
    // the store itself across the waits could meet an entry twice, or never end.
    // With hash placement a joiner needs no list: the owners' passes move what it owns.
    const held = this.hash ? [] : Array.from(this.store.live(), (entry) => entry.key);
    const unanswered: Array<Promise<unknown>> = [];
    let next = 0;
    do {
      const batch: unknown[] = [];
      let units = 0;
      for (; next < held.length && batch.length < ITEMS_PER_BATCH; next++) {
        const entry = this.store.peek(held[next]);
        // Copies kept for other members are not announced: the directories point to their holders.
        if (entry === undefined || entry.copyOf !== undefined) continue;
        if (batch.length > 0 && !fitsInFrame(units + entry.key.length, this.options.maxFrameBytes)) break;
        batch.push(keyItem(entry.key, entry.version, this.store.ttlOf(entry), entry.writer, this.id, entry.grace));
        units += entry.key.length;
      }
      const last = next === held.length;
      unanswered.push(peer.request(last ? { op: "keys", keys: batch, done: true } : { op: "keys", keys: batch }).catch(() => {}));
      if (unanswered.length === KEY_LISTS_IN_FLIGHT) await unanswered.shift();
    } while (next < held.length && !peer.closed);
  }

  /**
   * A peer holds these keys: written just now (`own`) or listed when it connected (`keys`).
   * Either way the directory settles them against what this node holds and knows; an `own`
   * item that carries the value asks this node to keep a copy (`replicas`).
   */
  #learn(peer: Peer, message: Message): Record<string, unknown> {
    for (const [key, version, ttl, writer, copy, grace] of requireKeyList(message)) {
      this.overtake(key);
      if (Array.isArray(copy) && message.op === "own") this.replication.keepCopy(peer, key, copy, version, ttl, writer ?? peer.id);
      else this.directory.own(key, peer.id, version, ttl, writer ?? peer.id, message.op === "keys", grace);
    }
    if (message.op === "keys" && message.done === true) this.cluster.synced(peer);
    return {};
  }

  /** A peer took over entries of a stopping or dead node (`moved`): point the directory at it. */
  #learnMoved(peer: Peer, message: Message): Record<string, unknown> {
    for (const [key, version, ttl, writer, from, grace] of requireKeyList(message)) {
      if (writer === undefined || typeof from !== "string") throw new ProtocolError(`"moved" needs the writer and the node it moved from`);
      this.overtake(key);
      if (!this.directory.moved(key, peer.id, from, version, ttl, writer, this.lifecycle !== "ready", grace)) this.replication.refuteClaim(peer, key);
    }
    return {};
  }

  /** A peer removed keys (`drop`); the answer lists the items whose live entry went from here (`held`). */
  #dropOlder(peer: Peer, message: Message): Record<string, unknown> {
    const held: number[] = [];
    for (const [index, [key, version]] of requireKeyList(message).entries()) {
      this.overtake(key);
      if (this.directory.drop(key, peer.id, version)) held.push(index);
    }
    return held.length > 0 ? { held } : {};
  }

  #forgetGone(peer: Peer, message: Message): Record<string, unknown> {
    for (const [key, version] of requireKeyList(message)) {
      this.directory.gone(key, peer.id, version);
      // With hash placement no directory holds the key: the owner tells its near holders too.
      if (this.hash) this.near?.delete(key);
    }
    return {};
  }

  // Reporting.

  emit<E extends keyof NodeEvents>(event: E, payload: NodeEvents[E]): void {
    for (const listener of this.listeners[event]) callLater(listener, payload);
  }

  /** The caller's view of a stored value: a fresh copy when values are stored as JSON. */
  reveal(stored: unknown): unknown {
    return this.options.stringify ? JSON.parse(stored as string) : stored;
  }

  localStats(): NodeStats {
    return {
      id: this.id,
      host: this.options.host,
      port: this.cluster.port ?? this.options.port,
      entries: this.store.size,
      bytes: this.store.bytes,
      peers: this.cluster.peerCount,
      connections: this.cluster.connectionCount,
      remoteKeys: this.directory.remoteCount,
      ...this.counters,
      nearEntries: this.near?.size ?? 0,
      nearBytes: this.near?.bytes ?? 0,
      copies: this.store.copies,
      evictions: this.store.evictions,
      expirations: this.store.expirations,
      served: this.cluster.served,
      ...this.cluster.traffic,
      uptime: this.#startedAt === 0 ? 0 : this.options.clock.now() - this.#startedAt,
    };
  }
}

// ─── Single flight of getOrSet: which call loads a key that no node holds ───────────────────

/** A getOrSet call, as the member that grants its load sees it. */
interface LoadCaller {
  /** The node that made the call. */
  member: string;
  /** The call's number there. */
  call: number;
  /** How long its load may take once granted: the call's timeout and a request's. */
  lasts: number;
}

/**
 * A getOrSet call's `load` request: `member`'s call `call` of `key`, whose loader may take
 * `timeout` ms; with `stale`, the write of the stale value the call holds (see SetOptions.grace).
 */
interface LoadAsk {
  member: string;
  key: string;
  call: number;
  timeout: number;
  stale: { version: number; writer: string } | undefined;
}

/**
 * The granting member's answer to `load`: the value it holds, the right to load, word that
 * another call refreshes the stale value (`busy`), word to look again (with local placement,
 * where the directory says the key is now), or `{}` for no grant here (the caller loads). With
 * `load` or `busy`, a member that holds the stale value itself gives it (`stale`).
 */
type LoadReply =
  | { value: unknown }
  | { load: true; stale?: unknown }
  | { busy: true; stale?: unknown }
  | { again: true; moved?: unknown }
  | Record<string, never>;

/** The reply in a peer's `load` answer. */
function parseLoadReply(answer: Message): LoadReply {
  if ("value" in answer) return { value: answer.value };
  const stale = "stale" in answer ? { stale: answer.stale } : {};
  if (answer.load === true) return { load: true, ...stale };
  if (answer.busy === true) return { busy: true, ...stale };
  if (answer.again === true) return { again: true, moved: answer.moved };
  return {};
}

/** A key's grant: the call that may load it, the cancel of its deadline, and the answers of the calls waiting, by call (see callName). */
interface Grant {
  holder: LoadCaller;
  cancel: () => void;
  waiting: Map<string, (reply: LoadReply) => void>;
}

/**
 * The loads a member grants as the one the cluster agrees on for their keys: of the getOrSet
 * calls that found a key nowhere, one at a time may load it, and the others wait. A write or
 * removal of the key ends the grant and the waiting calls look again (they find the loaded
 * value); a value loaded and not stored goes to them as it is. When the loader fails, its node
 * is lost, or its time is up, the grant ends too and the waiting calls ask again: the first to
 * ask loads. So the right goes only to a call that asks for it, never to one that gave up
 * waiting; a call that asks again while it waits (its request timed out) keeps waiting.
 */
class LoadGrants {
  readonly #timers: Timers;
  readonly #grants = new Map<string, Grant>();

  constructor(timers: Timers) {
    this.#timers = timers;
  }

  /** The right to load `key` for `caller`, or a Promise of what to do once the grant under way ends. */
  ask(key: string, caller: LoadCaller): LoadReply | Promise<LoadReply> {
    const grant = this.#grants.get(key);
    if (grant === undefined) return this.#start(key, caller, {});
    if (isSameCall(grant.holder, caller)) return { load: true };
    return new Promise((answer) => grant.waiting.set(callName(caller), answer));
  }

  /**
   * The right to refresh the stale value of `key` for `caller`, or `busy` while another call
   * holds the grant; either way with `stale`, the value when this member holds it.
   */
  refresh(key: string, caller: LoadCaller, stale: { stale?: unknown }): LoadReply {
    const grant = this.#grants.get(key);
    if (grant === undefined) return this.#start(key, caller, stale);
    return isSameCall(grant.holder, caller) ? { load: true, ...stale } : { busy: true, ...stale };
  }

  #start(key: string, caller: LoadCaller, stale: { stale?: unknown }): LoadReply {
    const started: Grant = { holder: caller, cancel: () => {}, waiting: new Map() };
    // Its time, at most the longest delay a timer takes.
    started.cancel = this.#timers.after(Math.min(caller.lasts, MAX_DELAY_MS), () => this.#end(key, started, { again: true }));
    this.#grants.set(key, started);
    return { load: true, ...stale };
  }

  /**
   * How the load of `member`'s call `call` went: failed, or its value unstored, or (neither)
   * about to be stored. `{ store }` says whether the call still holds the grant: no write of the
   * key came since, and its time is not up; a value about to be stored keeps the grant until
   * its write arrives.
   */
  loaded(key: string, member: string, call: number, outcome: { failed?: true; value?: unknown }): { store: boolean } {
    const grant = this.#grants.get(key);
    if (grant === undefined || !isSameCall(grant.holder, { member, call })) return { store: false };
    if (outcome.failed) this.#end(key, grant, { again: true });
    else if ("value" in outcome) this.#end(key, grant, { value: outcome.value });
    return { store: true };
  }

  /** A write or removal of `key` ends its grant: the waiting calls look again. */
  overtaken(key: string): void {
    if (this.#grants.size === 0) return;
    const grant = this.#grants.get(key);
    if (grant !== undefined) this.#end(key, grant, { again: true });
  }

  /** Ends every grant, or those of the keys that start with `prefix` (the node stops, or they were cleared): the waiting calls look again. */
  endAll(prefix = ""): void {
    for (const [key, grant] of [...this.#grants]) if (key.startsWith(prefix)) this.#end(key, grant, { again: true });
  }

  /** A member is lost: the grants its calls held end, and the calls waiting ask again. */
  lost(member: string): void {
    for (const [key, grant] of [...this.#grants]) if (grant.holder.member === member) this.#end(key, grant, { again: true });
  }

  #end(key: string, grant: Grant, reply: LoadReply): void {
    grant.cancel();
    this.#grants.delete(key);
    // Each its own: an answer becomes the message that carries it.
    for (const answer of grant.waiting.values()) answer({ ...reply });
  }
}

/** A getOrSet call's name among those waiting for one key: its node's id and its number there. */
function callName({ member, call }: Pick<LoadCaller, "member" | "call">): string {
  return `${member} ${call}`;
}

/** Whether two getOrSet calls are the same one. */
function isSameCall(one: Pick<LoadCaller, "member" | "call">, other: Pick<LoadCaller, "member" | "call">): boolean {
  return one.member === other.member && one.call === other.call;
}

// ─── Hand-over and replicas: entries that move to other members, and copies kept there ──────

/**
 * Throws when a member did not confirm a copy (a `copy` item, whose fifth field is its list of
 * keepers) of `key`, or of any key when `key` is undefined: the copy may be missing when the
 * holder dies, and the caller must hear of it.
 */
function throwIfCopyFailed(failures: Failure[], key?: string): void {
  for (const failure of failures) {
    const copy = failure.items.find(([item]) => Array.isArray((item as unknown[])[4]) && (key === undefined || (item as unknown[])[0] === key));
    if (copy === undefined) continue;
    const copied = (copy[0] as [string])[0];
    throw new KosyakError("ERR_TIMEOUT", `Cannot set "${copied}" with replicas: member ${failure.peer.id} did not store its copy: ${describe(failure.error)}`);
  }
}

/**
 * What a node does so that a stop or a crash loses nothing: on `stop`, it hands its entries to
 * the others (`handover`, answered after `moved`); with `replicas`, it keeps copies of its
 * entries on other members (an `own` that carries the value), and when a member dies, whoever
 * keeps its copies takes them on. Works on its node's Core: the store, the directory and the
 * cluster.
 */
class Replication {
  readonly #core: Core;
  readonly #timers: Timers;
  /** Whether a pass of restoreCopies runs, and what the next one must cover. */
  #restoring = false;
  #restoreToAll = false;
  readonly #restoreTo = new Set<Peer>();

  constructor(core: Core, timers: Timers) {
    this.#core = core;
    this.#timers = timers;
  }

  /**
   * The most bytes of entries sent before waiting for their acknowledgements: a quarter of
   * `maxQueueBytes`, so that a member being sent a node's whole store never seems stalled.
   */
  get partBytes(): number {
    return this.#core.options.maxQueueBytes / 4;
  }

  /**
   * Hands every live entry to the member that rendezvous hashing picks for its key, with its
   * version, writer and remaining TTL, and waits until each has stored them and every
   * directory points to it (see adopt). A write of a key under way wins by its version. The
   * other members are told first that this node is leaving; one that is stopping too refuses,
   * and its entries go to the next member, up to MAX_HOPS times.
   */
  async handOver(): Promise<void> {
    this.#core.cluster.announceLeaving();
    const store = this.#core.store;
    let keys = Array.from(store.live(), (entry): [string, number] => [entry.key, entry.size]);
    const refused = new Set<string>();
    for (let round = 0; round < MAX_HOPS && keys.length > 0; round++) {
      const failed: Array<[string, number]> = [];
      // A part at a time, each acknowledged before the next, so that no heir is sent more than
      // it takes (sent all at once, they passed maxQueueBytes and the heir was cut off as stalled).
      for (const part of partsWithin(keys, this.partBytes)) {
        const acknowledgements = new Acknowledgements(this.#core.cluster);
        // A member whose connection is down takes nothing: it may not come back before the stop.
        const passedOver = new Set(refused);
        for (const peer of this.#core.cluster.peers()) if (peer.closed) passedOver.add(peer.id);
        for (const [key, units] of part) {
          // Read as it is now, with the time it has left now: a part goes out after the ones
          // before it are stored, and with the time left when the hand-over began, each entry
          // would outlive its TTL by that wait (37 ms in 20,000 entries).
          const entry = store.peek(key);
          const heir = entry === undefined || entry.copyOf !== undefined ? undefined : this.#core.cluster.heirOf(key, passedOver);
          if (heir === undefined) continue;
          acknowledgements.send(heir, "handover", handoverItem(entry!, this.#core.reveal(entry!.value), store.ttlOf(entry!)), units);
          this.#core.counters.handedOver++;
        }
        for (const failure of await acknowledgements.untaken()) {
          refused.add(failure.peer.id);
          for (const [item, units] of failure.items) {
            failed.push([(item as HandoverItem)[0], units]);
            this.#core.counters.handedOver--;
          }
        }
      }
      keys = failed;
    }
  }

  /**
   * Takes over entries a stopping peer hands over: stores those no newer write has replaced,
   * within this node's bounds, and answers once every peer (the stopping one too) has been told
   * (`moved`), so that no directory still points to the stopping node when it leaves.
   */
  async adopt(peer: Peer, message: Message): Promise<Record<string, unknown>> {
    if (this.#core.lifecycle !== "ready") throw new KosyakError("ERR_STOPPED", `Node ${this.#core.id} is stopping and takes no entries over`);
    const acknowledgements = new Acknowledgements(this.#core.cluster);
    for (const { key, stored, size, version, ttl, writer, grace } of this.#entriesOf(peer, message)) {
      if (!this.#core.directory.adopt(key, stored, size, ttl, version, writer, grace)) continue;
      this.#core.counters.adopted++;
      acknowledgements.sendToAll("moved", keyItem(key, version, ttl, writer, this.#core.id, grace, peer.id), key.length);
      const entry = this.#core.options.replicas > 0 ? this.#core.store.peek(key) : undefined;
      if (entry !== undefined) this.sendCopies(acknowledgements, entry);
    }
    await acknowledgements.settled();
    return {};
  }

  /**
   * A member is gone. Without replicas, its keys leave the directory. With them, each of its
   * keys goes to the first member that keeps a copy (the same one on every node that sees the
   * same members); when that is this node, its copy becomes its own entry. Then the copies are
   * made whole again in the background.
   *
   * A node that is stopping takes nothing on: the others count it as leaving and point no key at
   * it. Were it to promote the copies it keeps as its connections close one by one, its `moved`
   * would reach the members still connected and point their directories at a node about to go.
   */
  lost(peerId: string): void {
    const leaving = this.#core.lifecycle === "stopping" || this.#core.lifecycle === "stopped";
    const keepAlive = () => this.#core.cluster.keepAlive();
    if (this.#core.options.replicas === 0 || leaving) return this.#core.directory.forgetHolder(peerId, undefined, keepAlive);
    this.#core.directory.forgetHolder(peerId, (key) => this.#core.cluster.successorOf(key), keepAlive);
    // A member may have joined since a copy was made, and rank first now: whoever keeps a copy
    // says so (moved), and every directory settles on it.
    const promoted = this.#core.store.promoteCopiesOf(peerId);
    this.#core.counters.promoted += promoted.length;
    const acknowledgements = new Acknowledgements(this.#core.cluster);
    for (const entry of promoted) {
      acknowledgements.sendToAll("moved", keyItem(entry.key, entry.version, this.#core.store.ttlOf(entry), entry.writer, this.#core.id, entry.grace, peerId), entry.key.length);
    }
    void acknowledgements.settled();
    this.restoreCopies();
  }

  /** Sends copies of an entry this node holds to the members that keep them. */
  sendCopies(acknowledgements: Acknowledgements, entry: StoredEntry, keepers = this.#core.cluster.replicasOf(entry.key, this.#core.options.replicas)): void {
    for (const peer of keepers) {
      acknowledgements.send(peer, "own", this.copyItem(entry), entry.size);
      this.#core.counters.copiesSent++;
    }
  }

  /**
   * An entry as an `own` that asks the receiver to keep a copy carries it: `[key, version, ttl,
   * writer, [value, expires, grace?]]`, with the time it has left now and when it expires (see
   * timeLeft).
   */
  copyItem(entry: StoredEntry): unknown[] {
    const copy = [this.#core.reveal(entry.value), entry.expires];
    if (entry.grace > 0) copy.push(entry.grace);
    return [entry.key, entry.version, this.#core.store.ttlOf(entry), entry.writer, copy];
  }

  /**
   * Sends a copy of every entry this node holds to the members that should keep one, in the
   * background: after a member died, to all of them; after `joined` joined, to it alone, for
   * the keys it now keeps copies of. 1,000 entries at a time, or fewer if their values come to a
   * quarter of `maxQueueBytes` (more at once would make a keeper seem stalled), each batch
   * acknowledged before the next, with a turn of the event loop between, so that serving
   * requests comes first. A change during a pass starts another once it ends.
   */
  restoreCopies(joined?: Peer): void {
    if (this.#core.options.replicas === 0) return;
    if (joined === undefined) this.#restoreToAll = true;
    else this.#restoreTo.add(joined);
    if (this.#restoring) return;
    this.#restoring = true;
    const pass = async () => {
      while ((this.#restoreToAll || this.#restoreTo.size > 0) && this.#core.lifecycle === "ready") {
        const only = this.#restoreToAll ? undefined : new Set(this.#restoreTo);
        this.#restoreToAll = false;
        this.#restoreTo.clear();
        const keys = Array.from(this.#core.store.live(), (entry) => entry.key);
        this.#core.counters.copiesPending = keys.length;
        let next = 0;
        while (next < keys.length && this.#core.lifecycle === "ready") {
          const acknowledgements = new Acknowledgements(this.#core.cluster);
          for (let size = 0, count = 0; next < keys.length && count < ITEMS_PER_BATCH && size < this.partBytes; count++) {
            const key = keys[next++];
            this.#core.counters.copiesPending--;
            const entry = this.#core.store.peek(key);
            if (entry === undefined || entry.copyOf !== undefined) continue;
            size += entry.size;
            const item = this.copyItem(entry);
            for (const peer of this.#core.cluster.replicasOf(key, this.#core.options.replicas)) {
              if (only !== undefined && !only.has(peer)) continue;
              acknowledgements.send(peer, "own", item, entry.size);
              this.#core.counters.copiesSent++;
            }
          }
          await acknowledgements.settled();
          await this.#timers.turn(() => this.#core.cluster.stoppedError()).catch(() => {});
        }
        this.#core.counters.copiesPending = 0;
      }
      this.#restoring = false;
    };
    void pass();
  }

  /** Keeps a copy of an entry a peer holds (see NodeOptions.replicas): `copy` is `[value, expires, grace?]`. */
  keepCopy(peer: Peer, key: string, copy: [unknown, number?, number?], version: number, ttl: number, writer: string): void {
    if (!isNodeId(writer)) throw new ProtocolError(`"own" names no writer for the copy of "${key}"`);
    const [value, expires = 0, grace = 0] = copy;
    const measured = this.#measured("own", key, value);
    const left = timeLeft(ttl, expires, this.#core.options.clock.now());
    if (measured === undefined || left < 0) return;
    if (!this.#core.directory.keepCopy(key, measured.stored, measured.size, left, version, writer, peer.id, grace)) this.refuteClaim(peer, key);
  }

  /**
   * Sends `peer`, which claimed this node's own entry of `key` as its own too, a copy of it: a
   * member that ranks lower for the key keeps its entry as a copy of this node's when it gets
   * one (see Directory.moved).
   */
  refuteClaim(peer: Peer, key: string): void {
    const entry = this.#core.store.peek(key);
    if (entry === undefined || entry.copyOf !== undefined) return;
    const acknowledgements = new Acknowledgements(this.#core.cluster);
    acknowledgements.send(peer, "own", this.copyItem(entry), entry.size);
    this.#core.counters.copiesSent++;
    void acknowledgements.settled();
  }

  /**
   * The entries of a `handover` request ({@linkcode HandoverItem}s), measured and ready to
   * store, with the time each has left here (see timeLeft); those larger than `maxBytes`, or
   * expired already, left out. Each overtakes the gets and the fetch under way for its key.
   */
  *#entriesOf(peer: Peer, message: Message): Generator<Write & { version: number; writer: string }> {
    for (const item of requireArray(message, "keys")) {
      const entry = this.entryOf(peer, message.op, item);
      if (entry !== undefined) yield entry;
    }
  }

  /** One {@linkcode HandoverItem} of an `op` from `peer`, as #entriesOf gives them. */
  entryOf(peer: Peer, op: string, item: unknown): (Write & { version: number; writer: string; nearHolders: string[] }) | undefined {
    const [key, value, version, ttl, writer = peer.id, expires = 0, nearHolders = [], grace = 0] = Array.isArray(item) ? item : [];
    if (
      typeof key !== "string" || !isVersion(version) || !isAmount(ttl) || !isNodeId(writer) || !isAmount(expires) ||
      !Array.isArray(nearHolders) || !nearHolders.every(isNodeId) || !isAmount(grace)
    ) {
      throw new ProtocolError(`"${op}" holds something other than [key, value, version, ttl, writer, expires, nearHolders?, grace?] lists`);
    }
    this.#core.overtake(key);
    const measured = this.#measured(op, key, value);
    // The time left now, as the entry is stored: counted from the start of the request, each
    // entry outlived its expiry by the time the ones before it took to store (26 ms, seen).
    const left = timeLeft(ttl, expires, this.#core.options.clock.now());
    return measured !== undefined && left >= 0 ? { key, ...measured, ttl: left, grace, version, writer, nearHolders } : undefined;
  }

  /** A value a peer sent, as this node stores it, and its size; undefined when over `maxBytes`. */
  #measured(op: string, key: string, value: unknown): { stored: unknown; size: number } | undefined {
    const json = JSON.stringify(value);
    if (json === undefined) throw new ProtocolError(`"${op}" needs a JSON value for "${key}"`);
    const size = key.length + json.length;
    if (size > this.#core.options.maxBytes) return undefined;
    return { stored: this.#core.options.stringify ? json : value, size };
  }
}

/**
 * An entry as `handover` carries it: its value, version, the ms it has left, its writer (left
 * out: the sender), and when it expires on the sender's clock (see timeLeft); 0 for no expiry.
 * With hash placement, also the members that may keep it in their near cache (see
 * HashPlacement); then its grace (see SetOptions.grace), where it has one.
 */
type HandoverItem = [key: string, value: unknown, version: number, ttl: number, writer?: string, expires?: number, nearHolders?: string[], grace?: number];

/** The {@linkcode HandoverItem} of an entry, its `value` as the caller sees it and `ttl` the ms it has left; `nearHolders` only where it has them. */
function handoverItem(entry: StoredEntry, value: unknown, ttl: number, nearHolders?: Set<string>): HandoverItem {
  const item: HandoverItem = [entry.key, value, entry.version, ttl, entry.writer, entry.expires];
  if (nearHolders !== undefined || entry.grace > 0) item.push(nearHolders === undefined ? [] : [...nearHolders]);
  if (entry.grace > 0) item.push(entry.grace);
  return item;
}

/**
 * The ms an entry a peer sent has left here (0: no expiry; below 0: expired already): the time
 * it had left when sent, or less where the sender's clock says it expires sooner. The time left
 * alone counts from when this node handles the message, so a busy node that reads it late would
 * keep the entry that much longer (700 ms, seen in a hand-over of 20,000 entries); the expiry
 * alone would trust the clocks to agree. The sooner of the two outlives the entry by no more than
 * the smaller of the delay and the clocks' difference.
 */
function timeLeft(ttl: number, expires: number, now: number): number {
  if (ttl === 0 || expires === 0) return ttl;
  const left = Math.min(ttl, expires - now);
  return left > 0 ? left : -1;
}

/**
 * Consecutive parts of `items` ([item, size]), each of at most PART_ITEMS items and at most
 * `budget` in size, or of a single item.
 */
function* partsWithin<T>(items: ReadonlyArray<[T, number]>, budget: number): Generator<Array<[T, number]>> {
  let part: Array<[T, number]> = [];
  let size = 0;
  for (const item of items) {
    if (part.length === PART_ITEMS || (part.length > 0 && size + item[1] > budget)) {
      yield part;
      part = [];
      size = 0;
    }
    part.push(item);
    size += item[1];
  }
  if (part.length > 0) yield part;
}

/** A request of a change that its member did not acknowledge, though it stayed a member. */
interface Failure {
  peer: Peer;
  op: string;
  /** Each item with its key's length in code units (and its place in its request, where sent). */
  items: Array<[unknown, number, number?]>;
  error: unknown;
}

/**
 * The answers a change waits for: items of batched requests (see Peer.batch) sent to members,
 * grouped by the request that carries them. A member whose connection closes before it answers,
 * because another connection to it replaced that one (two nodes dialled each other), gets the
 * items again on the replacement, so that no write completes before every member knows of it;
 * a member that is gone counts as done.
 */
class Acknowledgements {
  /** The items a member answered that it held a live entry of (a `drop`'s `held`). */
  readonly held = new Set<unknown>();
  /**
   * The items whose member left the cluster after their connection closed, before it took them
   * (or on a connection that closed before they were sent). Nobody needs a change told to a
   * member that is gone; an entry handed to one is not stored anywhere, and goes to another.
   */
  readonly undelivered: Array<{ peer: Peer; op: string; items: Failure["items"] }> = [];
  readonly #cluster: Cluster;
  /**
   * The items of each request sent, by the request's answer, each with its units and its place
   * among the request's items (a request may carry other changes' items too).
   */
  readonly #sent = new Map<Promise<Message>, { peer: Peer; op: string; items: Array<[unknown, number, number]> }>();
  /** The items for members whose connection is closed, by member and op, until it is replaced. */
  readonly #waiting = new Map<Peer, Map<string, Array<[unknown, number]>>>();
  /** The items sent to every member, with the members left out, for members admitted meanwhile. */
  readonly #toAll: Array<{ op: string; item: unknown; units: number; except: string[] }> = [];

  constructor(cluster: Cluster) {
    this.#cluster = cluster;
  }

  /** Sends `item`, whose key is `units` code units long, in an `op` request to `peer`. */
  send(peer: Peer, op: string, item: unknown, units: number): void {
    if (peer.closed) {
      const byOp = this.#waiting.get(peer) ?? new Map<string, Array<[unknown, number]>>();
      this.#waiting.set(peer, byOp);
      let items = byOp.get(op);
      if (items === undefined) byOp.set(op, (items = []));
      items.push([item, units]);
      return;
    }
    const { answer, index } = peer.batch(op, item, units);
    let sent = this.#sent.get(answer);
    if (sent === undefined) {
      this.#sent.set(answer, (sent = { peer, op, items: [] }));
      // Handled in settled(), which a caller that sends over several turns awaits only at the end.
      answer.catch(() => {});
    }
    sent.items.push([item, units, index]);
  }

  /** Sends `item` to every member but those in `except`, and to those admitted before it settles. */
  sendToAll(op: string, item: unknown, units: number, except: Peer[] = []): void {
    this.#toAll.push({ op, item, units, except: except.map((peer) => peer.id) });
    const peers = this.#cluster.peers();
    for (let i = 0; i < peers.length; i++) if (!except.includes(peers[i])) this.send(peers[i], op, item, units);
  }

  /**
   * Resolves once every member has answered, failed, or is gone; items whose connection closed
   * go again on its replacement, up to `retries` times. Resolves with the requests that failed
   * while their member stayed: it did not answer in time, refused, or its connection closed
   * more than `retries` times.
   */
  async settled(retries = 2): Promise<Failure[]> {
    const again = async (peer: Peer, op: string, items: Failure["items"]): Promise<Failure[]> => {
      const live = await this.#cluster.connectionTo(peer.id);
      if (live === undefined) this.undelivered.push({ peer, op, items });
      if (live === undefined || live === peer) return [];
      // Still a member after every retry went on a connection that closed: these items never
      // reached it, and their caller must not take them for stored.
      if (retries === 0) return [{ peer: live, op, items, error: new KosyakError("ERR_PEER_GONE", `Peer ${peer.id} was reconnected too often to take "${op}"`) }];
      const next = new Acknowledgements(this.#cluster);
      for (const [item, units] of items) next.send(live, op, item, units);
      const failures = await next.settled(retries - 1);
      for (const item of next.held) this.held.add(item);
      this.undelivered.push(...next.undelivered);
      return failures;
    };
    const failures = await Promise.all([
      this.#tellAdmitted(retries),
      ...Array.from(this.#sent, ([answer, { peer, op, items }]) =>
        answer.then(
          (message): Failure[] => {
            if (Array.isArray(message.held)) {
              const heldAt = new Set(message.held);
              for (const [item, , index] of items) if (heldAt.has(index)) this.held.add(item);
            }
            return [];
          },
          (error): Failure[] | Promise<Failure[]> => (peer.closed ? again(peer, op, items) : [{ peer, op, items, error }]),
        )),
      ...Array.from(this.#waiting, ([peer, byOp]) => Promise.all(Array.from(byOp, ([op, items]) => again(peer, op, items))).then((lists) => lists.flat())),
    ]);
    return failures.flat();
  }

  /**
   * Resolves, once settled, with every request whose items no member took: those that failed
   * while their member stayed, and those whose member is gone. A hand-over places each elsewhere.
   */
  async untaken(): Promise<Array<Omit<Failure, "error">>> {
    const failures = await this.settled();
    return [...failures, ...this.undelivered];
  }

  /**
   * Once every answer is in, sends what went to every member to the members admitted meanwhile,
   * and waits for them too: no member that is here when a change completes has missed it (a
   * member that reconnected while a removal was under way would otherwise keep the removed key
   * in its directory, and serve it from its near cache).
   */
  async #tellAdmitted(retries: number): Promise<Failure[]> {
    if (this.#toAll.length === 0) return [];
    await Promise.allSettled(this.#sent.keys());
    const told = new Set([...this.#sent.values()].map(({ peer }) => peer.id));
    for (const peer of this.#waiting.keys()) told.add(peer.id);
    const late = [...this.#cluster.peers()].filter((peer) => !told.has(peer.id));
    if (late.length === 0 || retries === 0) return [];
    const next = new Acknowledgements(this.#cluster);
    for (const peer of late) {
      for (const { op, item, units, except } of this.#toAll) if (!except.includes(peer.id)) next.send(peer, op, item, units);
    }
    const failures = await next.settled(retries - 1);
    for (const item of next.held) this.held.add(item);
    return failures;
  }
}

// ─── Hash placement: every key on its owner, the member that hashing picks ──────────────────

/**
 * An owner's answer for one key: `[value]` for a value held (or fetched), `[]` for none, `true`
 * or `false` for whether a removed key existed, `1` for a write stored, `["owner", id]` when the
 * answering node takes member `id` for the key's owner, `["error", code, message]` for a write
 * it refused, and `0` for a value left out to keep the answer within a frame.
 */
type OwnerAnswer = unknown;

/**
 * `placement: "hash"`: each key lives on its owner, the top of the rendezvous ranking of the
 * key over the members (this node left out while it stops, and members that said they leave),
 * with copies on the `replicas` members ranked next. Any node sends a key's gets, writes and
 * removals to its owner (`ownerGet`, `ownerSet`, `ownerRemove`), one request per owner for the
 * keys of one tick; a node that takes another member for the owner answers with a redirect,
 * followed at most MAX_HOPS times. No node keeps a record of keys it neither owns nor copies.
 *
 * When the members change, only the keys whose owner changes move. Each node keeps the members
 * that may still hand it keys (`pending`): every member it admits and every member that says it
 * leaves, until that member's `moveDone`, which it sends after a pass over its entries that began
 * once it had admitted this node (or after its hand-over). An owner that misses a key, or is
 * about to write or remove one it does not hold, first asks every pending member for it
 * (`take`): one that holds it gives it up. A pass hands entries to their new owners (each taken
 * off the store as it is sent: a `take` answered later on the same connection arrives after it),
 * promotes the copies of a lost owner's entries when this node owns them now, drops the copies
 * this node no longer keeps, and sends copies of its own entries to new keepers. `moveDone` and
 * every `take` answer carry the sender's Lamport clock, so that the owner's next version is
 * above any version the key had before it moved. An owner that removes a key while keys move
 * remembers the removal for a while, so that an older entry of the key arriving late (it can be
 * in two places for a moment, see #moving) is not stored again.
 */
class HashPlacement {
  readonly #core: Core;
  readonly #timers: Timers;
  /** Ids of the members that may still hand this node keys it owns. */
  readonly #pending = new Set<string>();
  /** Members owed a `moveDone` at the end of the next pass: admitted since the last began. */
  readonly #owed = new Set<Peer>();
  /** Members to send copies to in the next pass (admitted), or all keepers after a loss. */
  readonly #copiesTo = new Set<Peer>();
  #copiesToAll = false;
  #passing = false;
  #passAgain = false;
  /**
   * Entries handed over and not yet acknowledged, by key: out of the store (this node answers
   * for them no more), but still given up to a `take`, so that until the new owner has one, some
   * member its owner asks does (it may be passed on through a member whose view was behind).
   */
  readonly #moving = new Map<string, StoredEntry>();
  /**
   * The members that may keep a near copy of each key this node owns: it gave them leave. At most
   * NEAR_TRACKED_KEYS keys; past that, reads of other keys go without leave.
   */
  readonly #nearHolders = new Map<string, Set<string>>();
  /** Takes under way, by key, each with whether the key changed here since it was sent (see #takeFrom). */
  readonly #taking = new Map<string, Set<{ changed: boolean }>>();
  /** Drops of near copies under way, by key (see #dropNearCopies). */
  readonly #dropping = new Map<string, Promise<void>>();
  /** Keys whose change is under way here (see #changeHere), with how many: no leave is given for them. */
  readonly #writing = new Map<string, number>();
  /** Gets under way from this node whose answers may be kept near, by key (see get). */
  readonly #asking = new Map<string, Set<NearAsk>>();
  /** Changes of membership so far: a value asked across one is not kept near. */
  #changes = 0;
  /** When the members last changed, on the clock's scale. */
  #changedAt = -Infinity;
  /**
   * Removals made here while keys may be moving (see #rememberRemoval), oldest first: the
   * version each carries and when it was made.
   */
  readonly #removed = new Map<string, { version: number; at: number }>();
  /** The keys of this node's own entries as listed to a peer for `clusterKeys`, by peer. */
  readonly #listings = new WeakMap<Peer, string[]>();

  constructor(core: Core, timers: Timers) {
    this.#core = core;
    this.#timers = timers;
  }

  // The paths of this node's own calls.

  /**
   * Gets `key` from its owner: this node's store, or one request. With a near cache, a value
   * kept from an earlier read comes first, and the owner's answer is kept when the owner gave
   * leave (it then counts this node among the key's near holders), the members vouched for this
   * node when it asked, and neither an invalidation of the key nor a change of membership came
   * while it asked.
   */
  async get(key: string, allowStale = false): Promise<unknown> {
    const core = this.#core;
    if (core.lifecycle !== "ready") await core.whenStarted("get");
    const kept = core.near === undefined ? undefined : core.nearGet(key);
    if (kept !== undefined) return kept;
    const askedAt = core.options.clock.now();
    const asking = core.near && core.cluster.vouchedFor(askedAt, core.nearLease) ? this.#watch(key) : undefined;
    let here = false;
    let found: OwnerAnswer;
    try {
      found = await this.#atOwner("get", key, asking ? "nearGet" : "ownerGet", key, key.length, () => {
        here = true;
        return this.#readHere(key);
      });
    } finally {
      if (asking) this.#unwatch(key, asking);
    }
    const [value = null, ttl, size, grace = 0, leave] = Array.isArray(found) ? found : [];
    const life = isAmount(ttl) && isAmount(grace) ? { ttl, grace } : undefined;
    const stale = life !== undefined && isStaleHeld(life);
    if (value === null || (stale && !allowStale)) {
      core.counters.misses++;
      return null;
    }
    if (stale) core.counters.staleHits++;
    else if (here) core.counters.hits++;
    else core.counters.remoteHits++;
    // Kept near until its grace begins: a near hit is never stale.
    if (asking && !here && !stale && leave === 1 && !asking.invalidated && asking.changes === this.#changes && life !== undefined && isAmount(size)) {
      core.near!.keep(key, core.options.stringify ? JSON.stringify(value) : value, ttl === 0 ? 0 : askedAt + ttl - grace, size);
    }
    return value;
  }

  /** Notes a get of `key` under way that may keep its answer near, for invalidations to find. */
  #watch(key: string): NearAsk {
    const asking: NearAsk = { invalidated: false, changes: this.#changes };
    let asks = this.#asking.get(key);
    if (asks === undefined) this.#asking.set(key, (asks = new Set()));
    asks.add(asking);
    return asking;
  }

  #unwatch(key: string, asking: NearAsk): void {
    const asks = this.#asking.get(key);
    asks?.delete(asking);
    if (asks?.size === 0) this.#asking.delete(key);
  }

  /** Stores each write on its owner; resolves once every owner has stored it and its copies. */
  write(writes: Write[]): Promise<unknown> {
    return writes.length === 1 ? this.#writeOne(writes[0]) : this.#writeMany(writes);
  }

  /**
   * ITEMS_PER_BATCH writes at a time, so that an `mset` of a million entries does not put them
   * all in flight at once (their owners took longer than `requestTimeout` to answer them all).
   */
  async #writeMany(writes: Write[]): Promise<void> {
    for (let from = 0; from < writes.length; from += ITEMS_PER_BATCH) {
      await Promise.all(writes.slice(from, from + ITEMS_PER_BATCH).map((write) => this.#writeOne(write)));
    }
  }

  /** Stores `write` on its owner (this node, or a peer in one hop). */
  #writeOne(write: Write): Promise<OwnerAnswer> {
    // The ttl as set gives, before its grace: the owner adds it again (see prepareWrite); and
    // when it expires on this node's clock.
    const item = [write.key, this.#core.reveal(write.stored), write.ttl - write.grace];
    if (write.ttl > 0) item.push(write.grace, this.#core.options.clock.now() + write.ttl);
    return this.#atOwner("set", write.key, "ownerSet", item, write.size, () => this.#storeHere(write));
  }

  /** Removes `key` on its owner; resolves with whether it held a live entry. */
  async remove(key: string): Promise<boolean> {
    const core = this.#core;
    await core.whenStarted("remove");
    return (await this.#atOwner("remove", key, "ownerRemove", key, key.length, () => this.#removeHere(key))) === true;
  }

  /** Whether this node owns a live entry of `key` (a copy kept for its owner is not one). */
  has(key: string): boolean {
    const entry = this.#core.store.peek(key);
    return entry !== undefined && entry.copyOf === undefined;
  }

  /** This node's own entry of `key`, pulled first from a pending member that may hold it (see #readHere). */
  ownEntry(key: string): StoredEntry | undefined | Promise<StoredEntry | undefined> {
    if (this.#mustPull(key)) return this.#pulled(key).then(() => this.#own(key));
    return this.#own(key);
  }

  /** This node's own entry of `key`, as a local get may return it: never a copy, never stale. */
  localEntry(key: string): StoredEntry | undefined {
    const entry = this.#core.store.fresh(key);
    return entry?.copyOf === undefined ? entry : undefined;
  }

  /** The keys of every member's own entries: this node's, then each peer's, a frame at a time. */
  async *clusterKeys(): AsyncGenerator<string> {
    const core = this.#core;
    yield* this.#ownKeys();
    for (const peer of [...core.cluster.peers()]) {
      for (let from = 0, done = false; !done && !peer.closed;) {
        const answer = await peer.request({ op: "ownedKeys", from }).catch(() => undefined);
        if (answer === undefined || !Array.isArray(answer.keys)) break;
        const keys = answer.keys.filter((key): key is string => typeof key === "string");
        yield* keys;
        from += answer.keys.length;
        done = answer.done === true || answer.keys.length === 0;
      }
    }
  }

  /** The keys of this node's own live entries, stale ones and copies left out, copied: reads reorder a bounded store. */
  #ownKeys(): string[] {
    const keys: string[] = [];
    for (const entry of this.#core.store.freshEntries()) if (entry.copyOf === undefined) keys.push(entry.key);
    return keys;
  }

  /**
   * Runs an op on `key`'s owner: `here` when this node owns it, else a request `op` with `item`
   * to the owner, whose answer for the item it resolves with (an `["error", code, message]`
   * answer rejects). A redirect (from `here` too: this node's view may change while an op waits)
   * is followed to the member it names, once that member is
   * connected; after two hops, each waits for the next change of membership, since views differ
   * only while one spreads.
   */
  #atOwner(operation: string, key: string, op: string, item: unknown, units: number, here: () => OwnerAnswer | Promise<OwnerAnswer>): Promise<OwnerAnswer> {
    const owner = this.ownerOf(key);
    if (owner === undefined) return this.#hops(operation, key, op, item, units, here, 0);
    // The common case, a peer that owns the key, without the loop's frame: a burst of sets
    // begun in one turn holds one of each until its answer comes.
    return this.#ask(owner, op, item, units).then(
      (answer) => (isRedirect(answer) ? this.#hops(operation, key, op, item, units, here, 1, this.#redirectedTo(op, answer)) : throwIfError(answer)),
      (error) => this.#core.cluster.connectionTo(this.#unanswered(operation, key, owner, error)).then(() => this.#hops(operation, key, op, item, units, here, 1)),
    );
  }

  /** #atOwner from hop `first`, with `named` the member a redirect named. */
  async #hops(operation: string, key: string, op: string, item: unknown, units: number, here: () => OwnerAnswer | Promise<OwnerAnswer>, first: number, named?: string): Promise<OwnerAnswer> {
    const cluster = this.#core.cluster;
    for (let hop = first; hop < MAX_HOPS; hop++) {
      if (hop >= 2) await cluster.nextChange(this.#core.options.heartbeatInterval);
      let owner: Peer | undefined;
      if (named !== undefined && named !== this.#core.id) {
        owner = await cluster.memberSoon(named);
        named = undefined;
        if (owner === undefined) continue;
      } else {
        named = undefined;
        owner = this.ownerOf(key);
      }
      // A stopping node has handed its keys over: what its store says of one is no answer.
      if (owner === undefined && this.#core.lifecycle !== "ready") throw this.#core.stoppedWhile(operation, key);
      let answer: OwnerAnswer;
      try {
        answer = owner === undefined ? await here() : await this.#ask(owner, op, item, units);
      } catch (error) {
        if (owner === undefined) throw error;
        await cluster.connectionTo(this.#unanswered(operation, key, owner, error));
        continue;
      }
      if (!isRedirect(answer)) return throwIfError(answer);
      named = this.#redirectedTo(op, answer);
    }
    throw new KosyakError("ERR_TIMEOUT", `Cannot ${operation} "${key}": the members did not agree on its owner within ${MAX_HOPS} hops`);
  }

  /**
   * After `owner` failed a request: the member to wait for a connection to, when its connection
   * closed (gone or reconnecting; then the owner of the view is asked); else throws ERR_TIMEOUT.
   */
  #unanswered(operation: string, key: string, owner: Peer, error: unknown): string {
    if (owner.closed) return owner.id;
    throw new KosyakError("ERR_TIMEOUT", `Cannot ${operation} "${key}": its owner ${owner.id} did not answer: ${describe(error)}`, { cause: error });
  }

  /** The member a redirect names. */
  #redirectedTo(op: string, answer: Redirect): string {
    if (!isNodeId(answer[1])) throw new ProtocolError(`"${op}" names an owner that is not a node id`);
    return answer[1];
  }

  /** Sends `item` in an `op` request to `peer` (batched with the tick's others); resolves with its answer. */
  #ask(peer: Peer, op: string, item: unknown, units: number): Promise<OwnerAnswer> {
    const { answer, index } = peer.batch(op, item, units);
    return answer.then(({ values }) => {
      const result = Array.isArray(values) ? values[index] : undefined;
      if (result === undefined) throw new ProtocolError(`"${op}" answered without a value for each key`);
      if (result !== 0) return result;
      return peer.request({ op, keys: [item] }).then(({ values: alone }) => (Array.isArray(alone) ? alone[0] : undefined));
    });
  }

  /**
   * The member that owns `key`, undefined when this node does: the top of the ranking of the
   * members that do not leave, this node among them once it is ready and until it stops (or
   * when no other is left). A node that is still joining answers for none of its keys: until it
   * has met every member, one of them may not know it yet and answer for the key itself.
   */
  ownerOf(key: string): Peer | undefined {
    return this.#core.cluster.ownerOf(key, this.#core.lifecycle === "ready");
  }

  /** Where an entry of `key` belongs, undefined for here: as ownerOf, a joining node counting as the owner it is about to be. */
  #placeOf(key: string): Peer | undefined {
    return this.#core.cluster.ownerOf(key, this.#joiningOrReady);
  }

  get #joiningOrReady(): boolean {
    return this.#core.lifecycle === "ready" || this.#core.lifecycle === "starting";
  }

  // The owner's side.

  /**
   * `[value, ttl, size, grace]` of `key` here (pulled from a pending member first; the ms it has
   * left, 0 for no expiry; its size as `maxBytes` counts it; the last ms of them that are its
   * grace), or `[value]` as `fetch` gave it, or `[]`.
   * For a near holder (`reader`), a held value also says whether the reader may keep it (1 or
   * 0), decided in the turn the value is read: leave is given unless a write of the key is under
   * way, and the reader is counted among the key's near holders. A node that is no longer the
   * key's owner once the pull is done answers with the owner it sees now (`["owner", id]`).
   */
  #readHere(key: string, reader?: Peer): OwnerAnswer | Promise<OwnerAnswer> {
    if (this.#mustPull(key)) return this.#pulled(key).then(() => this.#readNow(key, reader));
    return this.#readNow(key, reader);
  }

  /** #readHere once nothing is left to pull: in this turn, unless `fetch` is called. */
  #readNow(key: string, reader?: Peer): OwnerAnswer | Promise<OwnerAnswer> {
    const core = this.#core;
    const owner = this.ownerOf(key);
    if (owner !== undefined) return ["owner", owner.id];
    const entry = this.#own(key);
    const found = entry && heldItem(core.reveal(entry.value), entry, core.store.ttlOf(entry));
    if (found?.length === 3) found.push(0);
    // A stale entry goes to a get as it is (one with allowStale takes it), unless `fetch` can
    // replace it; when fetch fails or finds nothing, it goes as it is after all.
    const stale = entry !== undefined && isStale(entry, core.options.clock);
    if (found !== undefined && (core.options.fetch === undefined || !stale)) {
      return reader === undefined ? found : [...found, Number(this.#giveLeave(key, reader))];
    }
    if (core.options.fetch === undefined || core.lifecycle !== "ready") return [];
    if (found === undefined) return core.fetchHere(key).then((value) => [value]);
    return core.fetchHere(key).then((value) => (value === null ? found : [value]), () => found);
  }

  /** Counts `reader` among the near holders of `key`, unless a write of it is under way or too many keys are counted. */
  #giveLeave(key: string, reader: Peer): boolean {
    if (this.#writing.has(key)) return false;
    let holders = this.#nearHolders.get(key);
    if (holders === undefined) {
      if (this.#nearHolders.size >= NEAR_TRACKED_KEYS) return false;
      this.#nearHolders.set(key, (holders = new Set()));
    }
    holders.add(reader.id);
    return true;
  }

  /**
   * Runs the change of `key` that `change` makes, as its owner: first pulls an older entry from
   * the pending members and drops the near copies of the key (the holders are told and answer;
   * one that does not is waited out for the near cache's lease), with no leave to keep the key
   * given meanwhile; then `change`, in the same turn as the last check, if this node still owns
   * the key (else the owner it sees now, as a redirect). With nothing to wait for, all in this turn.
   */
  #changeHere<T>(key: string, change: () => T): T | Redirect | Promise<T | Redirect> {
    if (!this.#mustPull(key) && !this.#nearHolders.has(key) && !this.#dropping.has(key)) return this.#changeNow(key, change);
    return this.#changeLater(key, change);
  }

  async #changeLater<T>(key: string, change: () => T): Promise<T | Redirect> {
    this.#writing.set(key, (this.#writing.get(key) ?? 0) + 1);
    try {
      await this.#pulled(key);
      await this.#dropNearCopies(key);
    } finally {
      const writing = this.#writing.get(key)! - 1;
      if (writing === 0) this.#writing.delete(key);
      else this.#writing.set(key, writing);
    }
    return this.#changeNow(key, change);
  }

  #changeNow<T>(key: string, change: () => T): T | Redirect {
    const owner = this.ownerOf(key);
    return owner === undefined ? change() : ["owner", owner.id];
  }

  /**
   * Tells the near holders of `key` to drop it, and waits for them, and for the drops of the key
   * that other changes began before (see #changeHere): a change that found no holders left,
   * because one under way had taken them, must not complete before their copies are gone.
   */
  async #dropNearCopies(key: string): Promise<void> {
    const earlier = this.#dropping.get(key);
    const holders = this.#nearHolders.get(key);
    this.#nearHolders.delete(key);
    if (holders === undefined) return earlier;
    const dropped = Promise.all([earlier, this.#tellHolders(key, holders)]).then(() => {});
    this.#dropping.set(key, dropped);
    await dropped;
    if (this.#dropping.get(key) === dropped) this.#dropping.delete(key);
  }

  /** Sends `invalidate` of `key` to `holders`; one that does not answer is waited out for the near cache's lease. */
  async #tellHolders(key: string, holders: Set<string>): Promise<void> {
    const { cluster, nearLease } = this.#core;
    const acknowledgements = new Acknowledgements(cluster);
    for (const id of holders) {
      const peer = cluster.peer(id);
      if (peer !== undefined) acknowledgements.send(peer, "invalidate", key, key.length);
    }
    if ((await acknowledgements.settled()).length === 0) return;
    await this.#timers.sleep(nearLease, () => cluster.stoppedError()).catch(() => {});
  }

  /** Stores a write as its owner (see #changeHere), then its copies. */
  async #storeHere(write: Write): Promise<OwnerAnswer> {
    const core = this.#core;
    const entry = await this.#changeHere(write.key, () => {
      core.counters.sets++;
      core.overtake(write.key);
      this.#keyChanged(write.key);
      this.#removed.delete(write.key);
      core.directory.write(write.key, write.stored, write.size, write.ttl, write.grace);
      return core.store.peek(write.key);
    });
    if (isRedirect(entry)) return entry;
    if (entry === undefined || core.options.replicas === 0) return 1;
    const acknowledgements = new Acknowledgements(core.cluster);
    core.replication.sendCopies(acknowledgements, entry);
    for (const failure of await acknowledgements.settled()) {
      return ["error", "ERR_TIMEOUT", `Cannot set "${write.key}" with replicas: member ${failure.peer.id} did not store its copy: ${describe(failure.error)}`];
    }
    return 1;
  }

  /** Removes `key` as its owner (see #changeHere), and its copies; whether it held a live entry. */
  async #removeHere(key: string): Promise<boolean | Redirect> {
    const core = this.#core;
    // Read and removed in one turn: what the removal answers is what it removed.
    const removed = await this.#changeHere(key, () => {
      const held = this.#own(key) !== undefined;
      core.overtake(key);
      this.#keyChanged(key);
      const version = core.directory.remove(key);
      this.#rememberRemoval(key, version);
      return [held, version] as const;
    });
    if (isRedirect(removed)) return removed;
    const [existed, version] = removed;
    const acknowledgements = new Acknowledgements(core.cluster);
    for (const peer of core.cluster.replicasOf(key, core.options.replicas)) acknowledgements.send(peer, "drop", [key, version], key.length);
    await acknowledgements.settled();
    return existed;
  }

  /**
   * Resolves once no pending member still holds `key`: when this node has no own entry of it,
   * each is asked to give it up. Every op on the owner reads or changes the entry in the turn
   * this resolves in, so that what it answers is what it did (a remove of a key whose write was
   * still being stored would otherwise answer that it did not exist, and then remove it).
   */
  async #pulled(key: string): Promise<void> {
    if (this.#mustPull(key)) await Promise.all(Array.from(this.#pending, (id) => this.#takeFrom(id, key)));
  }

  /** Whether a pending member may still hold `key`, of which this node has no own entry. */
  #mustPull(key: string): boolean {
    return this.#pending.size > 0 && this.#own(key) === undefined;
  }

  /**
   * This node's own entry of `key`. A copy kept for an owner that is gone becomes this node's
   * own entry, since this node owns the key now (the pass would make it so, later).
   */
  #own(key: string): StoredEntry | undefined {
    const entry = this.#core.store.get(key);
    if (entry?.copyOf !== undefined && this.#core.cluster.peer(entry.copyOf) === undefined) this.#promote(entry);
    return entry?.copyOf === undefined ? entry : undefined;
  }

  /** Asks pending member `id` for `key` (`take`), and keeps what it gives up. */
  async #takeFrom(id: string, key: string): Promise<void> {
    const peer = this.#core.cluster.peer(id);
    if (peer === undefined || peer.closed) return;
    const taking = { changed: false };
    let takes = this.#taking.get(key);
    if (takes === undefined) this.#taking.set(key, (takes = new Set()));
    takes.add(taking);
    try {
      const { answer, index } = peer.batch("take", key, key.length);
      const message = await answer;
      if (isVersion(message.clock)) this.#core.directory.observe(message.clock);
      const values = Array.isArray(message.values) ? message.values : [];
      let item = values[index];
      if (item === 0) item = ((await peer.request({ op: "take", keys: [key] })).values as unknown[] | undefined)?.[0];
      // Given up before a change made here since the take was sent (a removal leaves nothing to
      // compare its version with): the change is newer.
      if (Array.isArray(item) && item.length > 0 && !taking.changed) void this.#keep(peer, [item], "take").settled();
    } catch {
      // A member that does not answer gives nothing; one that is gone leaves the pending set.
    } finally {
      takes.delete(taking);
      if (takes.size === 0) this.#taking.delete(key);
    }
  }

  /**
   * Remembers a removal of `key` at `version` while keys may be moving: while a member is
   * pending, an entry handed over is unacknowledged, or the members changed less than
   * REMOVAL_MEMORY_TIMEOUTS × (requestTimeout + peerTimeout) ago. An older entry of the key may
   * still arrive then, from a member whose view was behind (a stopping member handed it to one
   * member and gave it up to this node's take too), and a removal leaves no entry whose version
   * would refuse it. At most REMOVALS_REMEMBERED keys; past that, the oldest are forgotten.
   */
  #rememberRemoval(key: string, version: number): void {
    const now = this.#core.options.clock.now();
    const memory = this.#removalMemory;
    if (this.#pending.size === 0 && this.#moving.size === 0 && now - this.#changedAt > memory) return;
    this.#removed.delete(key);
    this.#removed.set(key, { version, at: now });
    for (const [oldest, removal] of this.#removed) {
      if (this.#removed.size <= REMOVALS_REMEMBERED && now - removal.at <= memory) break;
      this.#removed.delete(oldest);
    }
  }

  /** Whether this node removed `key` after the write (`version`, `writer`), as far as it remembers. */
  #removedSince(key: string, version: number, writer: string): boolean {
    const removal = this.#removed.get(key);
    if (removal === undefined) return false;
    if (this.#core.options.clock.now() - removal.at > this.#removalMemory) {
      this.#removed.delete(key);
      return false;
    }
    return newer(removal.version, this.#core.id, version, writer);
  }

  get #removalMemory(): number {
    const { requestTimeout, peerTimeout } = this.#core.options;
    return REMOVAL_MEMORY_TIMEOUTS * (requestTimeout + peerTimeout);
  }

  /** A change of `key` made here: the takes of it under way keep nothing they get back (see #takeFrom). */
  #keyChanged(key: string): void {
    for (const taking of this.#taking.get(key) ?? []) taking.changed = true;
  }

  /**
   * Stores entries a member gave up or handed over, unless newer writes are here, and sends their
   * copies; an entry of a key another member owns in this node's view goes on to that member
   * (the sender's view was behind), so that it never stays where its owner does not look.
   */
  #keep(peer: Peer, items: unknown[], op: string): Acknowledgements {
    const core = this.#core;
    const acknowledgements = new Acknowledgements(core.cluster);
    for (const item of items) {
      const entry = core.replication.entryOf(peer, op, item);
      if (entry === undefined) continue;
      const owner = this.#placeOf(entry.key);
      if (owner !== undefined) {
        acknowledgements.send(owner, "handover", item, entry.size);
        continue;
      }
      // Its near holders come with it: a write here must reach them first.
      if (entry.nearHolders.length > 0) {
        const holders = this.#nearHolders.get(entry.key) ?? new Set();
        for (const id of entry.nearHolders) if (id !== core.id) holders.add(id);
        this.#nearHolders.set(entry.key, holders);
      }
      // The same write again (sent once more on a connection that replaced another) changes
      // nothing; kept here as a copy for the member that hands it over, it becomes this node's.
      const held = core.store.peek(entry.key);
      if (held?.copyOf === undefined && held?.version === entry.version && held.writer === entry.writer) continue;
      if (this.#removedSince(entry.key, entry.version, entry.writer)) continue;
      if (!core.directory.adopt(entry.key, entry.stored, entry.size, entry.ttl, entry.version, entry.writer, entry.grace)) continue;
      this.#keyChanged(entry.key);
      core.counters.adopted++;
      const stored = core.store.peek(entry.key);
      if (stored !== undefined) core.replication.sendCopies(acknowledgements, stored);
    }
    return acknowledgements;
  }

  /** Makes a copy this node's own entry. */
  #promote(entry: StoredEntry): void {
    this.#core.store.keepFor(entry, undefined);
    this.#core.counters.promoted++;
  }

  // The answers to peers.

  /**
   * A peer's gets (`ownerGet`, or `nearGet` from a `reader` with a near cache), answered as the
   * owner (see #readHere), or with the owner this node sees.
   */
  answerGet(keys: unknown[], reader?: Peer): Record<string, unknown> | Promise<Record<string, unknown>> {
    if (keys.length > ITEMS_PER_BATCH) throw new ProtocolError(`"ownerGet" asks for more than ${ITEMS_PER_BATCH} keys`);
    for (const key of keys) if (typeof key !== "string") throw new ProtocolError(`"ownerGet" needs string keys`);
    let room = this.#core.options.maxFrameBytes - FRAME_ROOM;
    let sent = 0;
    const failed = (error: unknown) => ["error", error instanceof KosyakError ? error.code : "ERR_REMOTE", describe(error)];
    const fitted = (key: string, found: OwnerAnswer) => {
      if (!Array.isArray(found) || found.length === 0 || isRedirect(found)) return found;
      // UTF-8 takes at most 3 bytes per UTF-16 code unit; the first value always fits.
      const size = 3 * (key.length + (JSON.stringify(found[0])?.length ?? 0));
      if (sent > 0 && size > room) return 0;
      room -= size;
      sent++;
      return found;
    };
    return this.#answerEach(keys as string[], (key) => {
      let found: OwnerAnswer | Promise<OwnerAnswer>;
      try {
        found = this.#readHere(key, reader);
      } catch (error) {
        return failed(error);
      }
      return found instanceof Promise ? found.then((answer) => fitted(key, answer), failed) : fitted(key, found);
    });
  }

  /**
   * A peer's writes (`ownerSet`, items `[key, value, ttl, grace?, expires?]`: the ttl before the
   * grace, and when the entry expires on the sender's clock; see timeLeft), stored as their owner.
   */
  answerSet(items: unknown[]): Record<string, unknown> | Promise<Record<string, unknown>> {
    const writes = items.map((item) => {
      const [key, value, ttl, grace = 0, expires = 0] = Array.isArray(item) ? item : [];
      if (typeof key !== "string" || !isAmount(ttl) || !isAmount(grace) || !isAmount(expires)) {
        throw new ProtocolError(`"ownerSet" needs [key, value, ttl, grace?, expires?] items`);
      }
      return { key, value, ttl, grace, expires };
    });
    return this.#answerEach(writes.map((write) => write.key), async (key, i) => {
      const { value, ttl, grace, expires } = writes[i];
      let write: Write;
      try {
        write = this.#core.prepareWrite("set", key, value, { ttl, grace });
      } catch (error) {
        return ["error", "ERR_LIMIT", `Member ${this.#core.id}, the owner of "${key}", refused it: ${describe(error)}`];
      }
      // A write read late (this node was frozen, say) lives no longer than its sender said: at
      // least a ms, so that a write that expired on the way still replaces what it overwrote.
      const left = timeLeft(write.ttl, expires, this.#core.options.clock.now());
      if (write.ttl > 0 && left !== write.ttl) write = { ...write, ttl: Math.max(1, left), grace: Math.min(write.grace, Math.max(1, left)) };
      return this.#storeHere(write);
    });
  }

  /** A peer's removals (`ownerRemove`), made as their owner. */
  answerRemove(keys: unknown[]): Record<string, unknown> | Promise<Record<string, unknown>> {
    for (const key of keys) if (typeof key !== "string") throw new ProtocolError(`"ownerRemove" needs string keys`);
    return this.#answerEach(keys as string[], (key) => this.#removeHere(key));
  }

  /** Answers each key with `here` where this node owns it, else with the owner it sees. */
  #answerEach(keys: string[], here: (key: string, index: number) => OwnerAnswer | Promise<OwnerAnswer>): Record<string, unknown> | Promise<Record<string, unknown>> {
    const values = keys.map((key, i) => {
      const owner = this.ownerOf(key);
      return owner === undefined ? here(key, i) : ["owner", owner.id];
    });
    return values.some((value) => value instanceof Promise) ? Promise.all(values).then((all) => ({ values: all })) : { values };
  }

  /**
   * A member that owns keys this node may hold asks for them (`take`): each own entry of this
   * node's whose owner is another member goes from here to the asker, as `[key, value, version,
   * ttl, writer, expires, nearHolders?]` (so does one handed over and not yet acknowledged); `0` where left
   * out to keep the answer within a frame, `[]` where not held. The answer carries this node's
   * Lamport clock.
   */
  answerTake(keys: unknown[]): Record<string, unknown> {
    const core = this.#core;
    let room = core.options.maxFrameBytes - FRAME_ROOM;
    let sent = 0;
    const values = keys.map((key) => {
      if (typeof key !== "string") throw new ProtocolError(`"take" needs string keys`);
      const stored = core.store.peek(key);
      const entry = stored?.copyOf === undefined ? stored ?? this.#moving.get(key) : undefined;
      if (entry === undefined || this.#placeOf(key) === undefined) return [];
      if (sent > 0 && 3 * entry.size > room) return 0;
      room -= 3 * entry.size;
      sent++;
      if (entry === stored) {
        core.store.delete(key);
        core.counters.moved++;
      } else {
        this.#moving.delete(key);
      }
      const item = this.#handoverItem(entry);
      this.#nearHolders.delete(key);
      return item;
    });
    return { values, clock: core.directory.clock };
  }

  /** Entries handed over (`handover`): kept unless newer writes are here; answered once their copies are stored. */
  async adopt(peer: Peer, message: Message): Promise<Record<string, unknown>> {
    if (!this.#joiningOrReady) throw new KosyakError("ERR_STOPPED", `Node ${this.#core.id} is stopping and takes no entries over`);
    await this.#keep(peer, requireArray(message, "keys"), "handover").settled();
    return {};
  }

  /** A member's pass over its entries is done (`moveDone`): it hands this node no more. */
  moveDone(peer: Peer, message: Message): undefined {
    if (isVersion(message.clock)) this.#core.directory.observe(message.clock);
    this.#pending.delete(peer.id);
    return undefined;
  }

  /** A page of this node's own keys for a peer's `clusterKeys`, from a list made at the first page. */
  answerOwnedKeys(peer: Peer, message: Message): Record<string, unknown> {
    const from = message.from;
    if (!isAmount(from)) throw new ProtocolError(`"ownedKeys" needs a count to start from`);
    let listed = this.#listings.get(peer);
    if (from === 0 || listed === undefined) {
      listed = this.#ownKeys();
      this.#listings.set(peer, listed);
    }
    const keys: string[] = [];
    let units = 0;
    for (let next = from; next < listed.length && keys.length < ITEMS_PER_BATCH; next++) {
      if (keys.length > 0 && !fitsInFrame(units + listed[next].length, this.#core.options.maxFrameBytes)) break;
      keys.push(listed[next]);
      units += listed[next].length;
    }
    const done = from + keys.length >= listed.length;
    if (done) this.#listings.delete(peer);
    return { keys, done };
  }

  // Membership.

  /** This node is ready: it owns its keys from now on, and goes over what it was handed while joining. */
  started(): void {
    this.#schedule();
  }

  /** A member was admitted: it may hand this node keys, may own some held here, and may keep copies. */
  admitted(peer: Peer): void {
    this.#membersChanged();
    this.#pending.add(peer.id);
    this.#owed.add(peer);
    this.#copiesTo.add(peer);
    this.#schedule();
  }

  /** A member said it leaves: it hands its keys over, and keeps no copies. */
  leaving(peer: Peer): void {
    // Its keys get other owners, which know nothing of what it let this node keep.
    this.#core.near?.clear();
    this.#membersChanged();
    this.#pending.add(peer.id);
    this.#copiesToAll = true;
    this.#schedule();
  }

  /** Counts a change of the members, and when it came (a near answer asked across one is not kept; see #rememberRemoval). */
  #membersChanged(): void {
    this.#changes++;
    this.#changedAt = this.#core.options.clock.now();
  }

  /** A member is gone: it hands nothing more; its keys' copies are promoted, and copies restored. */
  lost(peerId: string): void {
    this.#membersChanged();
    this.#pending.delete(peerId);
    this.#copiesToAll = true;
    this.#schedule();
  }

  /**
   * Hands every own entry to its owner among the other members, and waits until they have
   * stored them (`stop`). A member that refuses (it stops too) counts as leaving, and the next
   * round gives its entries to the next owner, up to MAX_HOPS rounds.
   */
  async handOver(): Promise<void> {
    this.#core.cluster.announceLeaving();
    for (let round = 0; round < MAX_HOPS; round++) {
      if (!(await this.#moveEntries(false))) break;
    }
  }

  /** Starts a pass over the entries, or another once the one under way ends. */
  #schedule(): void {
    this.#passAgain = true;
    if (this.#passing) return;
    this.#passing = true;
    const passes = async () => {
      while (this.#passAgain && this.#core.lifecycle === "ready") {
        this.#passAgain = false;
        const owed = [...this.#owed];
        this.#owed.clear();
        const failed = await this.#moveEntries(true);
        // A pass cut short by a stop has not handed everything over: its hand-over will, and the
        // members keep this node pending until it is gone.
        if (this.#core.lifecycle !== "ready") break;
        if (failed) {
          // Some entries did not reach their owners: another pass, a heartbeat later, hands them
          // over, and the members owed a `moveDone` keep asking this node for their keys till then.
          for (const peer of owed) this.#owed.add(peer);
          this.#passAgain = true;
          await this.#timers.sleep(this.#core.options.heartbeatInterval, () => this.#core.cluster.stoppedError()).catch(() => {});
          continue;
        }
        for (const peer of owed) if (!peer.closed) peer.send({ op: "moveDone", clock: this.#core.directory.clock });
      }
      this.#passing = false;
    };
    void passes();
  }

  /**
   * One pass over the store, in parts, each acknowledged before the next, with a turn of the
   * event loop between: hands each own entry another member owns to it (an entry not stored
   * there goes back to the store), and with `keeping` (not stopping) promotes, drops and sends
   * copies as the class says. Resolves with whether some entry could not be handed over.
   */
  async #moveEntries(keeping: boolean): Promise<boolean> {
    const core = this.#core;
    const { cluster, store } = core;
    const { replicas } = core.options;
    const copiesTo = this.#copiesToAll ? undefined : new Set(this.#copiesTo);
    this.#copiesToAll = false;
    this.#copiesTo.clear();
    const keys = Array.from(store.live(), (entry): [string, number] => [entry.key, entry.size]);
    const given = keeping ? "moved" : "handedOver";
    let failed = false;
    for (const part of partsWithin(keys, core.replication.partBytes)) {
      if (keeping && this.#core.lifecycle !== "ready") break;
      const acknowledgements = new Acknowledgements(cluster);
      const handed: StoredEntry[] = [];
      for (const [key] of part) {
        const entry = store.peek(key);
        if (entry === undefined) continue;
        const lostOwner = entry.copyOf !== undefined && cluster.peer(entry.copyOf) === undefined;
        if (entry.copyOf !== undefined && !lostOwner) {
          if (keeping && !cluster.isAmongTop(key, replicas + 1)) store.delete(key);
          continue;
        }
        const owner = this.ownerOf(key);
        if (owner !== undefined) {
          if (entry.copyOf === undefined || keeping) {
            store.delete(key);
            this.#moving.set(key, entry);
            handed.push(entry);
            acknowledgements.send(owner, "handover", this.#handoverItem(entry), entry.size);
            core.counters[given]++;
          }
          continue;
        }
        if (!keeping) continue;
        if (lostOwner) this.#promote(entry);
        for (const peer of cluster.replicasOf(key, replicas)) {
          if (copiesTo !== undefined && !copiesTo.has(peer)) continue;
          acknowledgements.send(peer, "own", core.replication.copyItem(entry), entry.size);
          core.counters.copiesSent++;
        }
      }
      const refused = new Set<string>();
      for (const failure of await acknowledgements.untaken()) {
        if (failure.op !== "handover") continue;
        failed = true;
        for (const [item] of failure.items) refused.add((item as HandoverItem)[0]);
      }
      // Stored by its owner, or back here to be handed over again; unless a take had it meanwhile.
      for (const entry of handed) {
        if (this.#moving.get(entry.key) !== entry) continue;
        this.#moving.delete(entry.key);
        if (!refused.has(entry.key)) {
          this.#nearHolders.delete(entry.key);
          continue;
        }
        core.counters[given]--;
        this.#restore(entry);
      }
      await this.#timers.turn(() => cluster.stoppedError()).catch(() => {});
    }
    return failed;
  }

  /** Puts back an entry its owner did not take over, unless a newer write of its key is here or it expired. */
  #restore(entry: StoredEntry): void {
    const core = this.#core;
    if (entry.expires !== 0 && entry.expires <= core.options.clock.now()) return;
    core.directory.adopt(entry.key, entry.value, entry.size, core.store.ttlOf(entry), entry.version, entry.writer, entry.grace);
  }

  /** An entry as `handover` and `take` carry it, with the members that may keep it near. */
  #handoverItem(entry: StoredEntry): HandoverItem {
    return handoverItem(entry, this.#core.reveal(entry.value), this.#core.store.ttlOf(entry), this.#nearHolders.get(entry.key));
  }

  // Near copies kept by the readers of keys this node owns.

  /** The owner of these keys changes them (`invalidate`): drop them from the near cache, and from the answers under way. */
  invalidated(keys: unknown[]): Record<string, unknown> {
    for (const key of keys) {
      if (typeof key !== "string") throw new ProtocolError(`"invalidate" needs string keys`);
      this.#core.near?.delete(key);
      for (const asking of this.#asking.get(key) ?? []) asking.invalidated = true;
    }
    return {};
  }

  /**
   * The store let an entry go (evicted or expired): an own entry's copies (`gone`) and near
   * copies go too, unawaited (nothing waits for an eviction, but the next change of the key
   * waits for its near copies to be gone); a copy's owner keeps its entry.
   */
  letGo(entry: StoredEntry): void {
    if (entry.copyOf !== undefined) return;
    const { cluster } = this.#core;
    void this.#dropNearCopies(entry.key);
    const acknowledgements = new Acknowledgements(cluster);
    for (const peer of cluster.replicasOf(entry.key, this.#core.options.replicas)) acknowledgements.send(peer, "gone", [entry.key, entry.version], entry.key.length);
    void acknowledgements.settled();
  }
}

/** An answer naming the member that the answering node takes for a key's owner. */
type Redirect = ["owner", string];

function isRedirect(answer: unknown): answer is Redirect {
  return Array.isArray(answer) && answer[0] === "owner";
}

/** A get under way that may keep its answer near: whether its key was invalidated meanwhile, and the changes of membership when it began. */
interface NearAsk {
  invalidated: boolean;
  readonly changes: number;
}

/** The most keys an owner counts near holders of (see HashPlacement). */
const NEAR_TRACKED_KEYS = 100_000;

/** Removals an owner remembers while keys move (see HashPlacement's #rememberRemoval), at most. */
const REMOVALS_REMEMBERED = 100_000;

/** How long an owner remembers a removal after the members change, in (requestTimeout + peerTimeout). */
const REMOVAL_MEMORY_TIMEOUTS = 2;

/** An owner's answer, unless it is `["error", code, message]`: then the KosyakError it stands for. */
function throwIfError(answer: OwnerAnswer): OwnerAnswer {
  if (!Array.isArray(answer) || answer[0] !== "error") return answer;
  const code = typeof answer[1] === "string" && KOSYAK_ERROR_CODES.includes(answer[1]) ? answer[1] as KosyakErrorCode : "ERR_REMOTE";
  throw new KosyakError(code, String(answer[2]));
}

// ─── Metrics: the stats in the Prometheus text format ────────────────────────────────────────

/** Each stat as a Prometheus metric: its name, its type, its help, and how it scales to the name's unit. */
const METRICS: ReadonlyArray<[stat: keyof NodeStats, name: string, type: "counter" | "gauge", help: string, scale?: number]> = [
  ["entries", "kosyak_entries", "gauge", "Entries held locally."],
  ["bytes", "kosyak_entries_bytes", "gauge", "Size of the local entries, as maxBytes counts it."],
  ["peers", "kosyak_peers", "gauge", "Connected peers."],
  ["connections", "kosyak_connections", "gauge", "Open connections: peers, and connections still in their handshake."],
  ["remoteKeys", "kosyak_remote_keys", "gauge", "Keys this node knows to be held by peers."],
  ["sets", "kosyak_sets_total", "counter", "Writes stored here."],
  ["hits", "kosyak_hits_total", "counter", "Gets answered from a local entry."],
  ["remoteHits", "kosyak_remote_hits_total", "counter", "Gets answered by a peer that held the key."],
  ["nearHits", "kosyak_near_hits_total", "counter", "Gets answered from the near cache."],
  ["nearEntries", "kosyak_near_entries", "gauge", "Values kept in the near cache."],
  ["nearBytes", "kosyak_near_bytes", "gauge", "Size of the values kept in the near cache."],
  ["misses", "kosyak_misses_total", "counter", "Gets that found the key nowhere, before any fetch."],
  ["fetches", "kosyak_fetches_total", "counter", "Calls to the fetch option."],
  ["fetchErrors", "kosyak_fetch_errors_total", "counter", "Calls to the fetch option that failed or timed out."],
  ["loads", "kosyak_loads_total", "counter", "Calls of getOrSet loaders."],
  ["loadErrors", "kosyak_load_errors_total", "counter", "Calls of getOrSet loaders that failed or timed out."],
  ["staleHits", "kosyak_stale_hits_total", "counter", "Stale values returned within their grace."],
  ["refreshes", "kosyak_refreshes_total", "counter", "Background refreshes of stale values."],
  ["refreshErrors", "kosyak_refresh_errors_total", "counter", "Background refreshes that failed or timed out."],
  ["negativeSets", "kosyak_negative_sets_total", "counter", "Nulls from loaders stored as negative entries."],
  ["handedOver", "kosyak_handed_over_total", "counter", "Entries handed to the others on stop."],
  ["adopted", "kosyak_adopted_total", "counter", "Entries taken over from stopping members, or as their new owner."],
  ["moved", "kosyak_moved_total", "counter", "Entries given to their new owners when the members changed."],
  ["copies", "kosyak_copies", "gauge", "Entries held as copies for other members."],
  ["promoted", "kosyak_promoted_total", "counter", "Copies made own entries when their holder died."],
  ["copiesSent", "kosyak_copies_sent_total", "counter", "Copies sent to the members that keep them."],
  ["copiesPending", "kosyak_copies_pending", "gauge", "Entries the background restoration of copies has yet to go through."],
  ["evictions", "kosyak_evictions_total", "counter", "Entries evicted to stay within maxEntries and maxBytes."],
  ["expirations", "kosyak_expirations_total", "counter", "Entries removed because their time was up."],
  ["served", "kosyak_served_total", "counter", "Requests from peers answered."],
  ["messagesSent", "kosyak_messages_sent_total", "counter", "Protocol messages sent to peers."],
  ["messagesReceived", "kosyak_messages_received_total", "counter", "Protocol messages received from peers."],
  ["bytesSent", "kosyak_sent_bytes_total", "counter", "Bytes written to peer connections."],
  ["bytesReceived", "kosyak_received_bytes_total", "counter", "Bytes read from peer connections."],
  ["uptime", "kosyak_uptime_seconds", "gauge", "Time since init completed.", 1 / 1000],
];

/** `stats` in the Prometheus text exposition format, labelled with the node's id. */
function prometheusText(stats: NodeStats): string {
  // Label values escape backslash, double quote and newline.
  const node = stats.id.replace(/[\\"\n]/g, (c) => (c === "\n" ? "\\n" : `\\${c}`));
  return METRICS.map(([stat, name, type, help, scale = 1]) =>
    `# HELP ${name} ${help}\n# TYPE ${name} ${type}\n${name}{node="${node}"} ${(stats[stat] as number) * scale}\n`
  ).join("");
}

// ─── Options ─────────────────────────────────────────────────────────────────────────────────

interface ResolvedOptions {
  host: string;
  port: number;
  seeds: Address[];
  discover: (() => Seed[] | Promise<Seed[]>) | undefined;
  resolve: (host: string) => string[] | Promise<string[]>;
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
  grace: number;
  nullTtl: number;
  maxEntries: number;
  maxBytes: number;
  secret: string | undefined;
  tls: TlsOptions | undefined;
  maxFrameBytes: number;
  maxConnections: number;
  maxKeyLength: number;
  maxValueBytes: number;
  maxQueueBytes: number;
  maxQueueItems: number;
  replicas: number;
  placement: "local" | "hash";
  nearCache: { maxEntries: number; maxBytes: number } | undefined;
  clock: Clock;
  transport: Transport;
}

const KNOWN_OPTIONS = new Set([
  "host", "addr", "port", "master", "discover", "resolve", "socket", "server", "stringify", "fetch", "connectDelay",
  "connectAttempts", "requestTimeout", "heartbeatInterval", "peerTimeout", "fetchTimeout", "ttl", "grace",
  "nullTtl", "maxEntries", "maxBytes", "secret", "tls", "maxFrameBytes", "maxConnections", "maxKeyLength",
  "maxValueBytes", "maxQueueBytes", "maxQueueItems", "replicas", "placement", "nearCache", "clock", "transport",
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
  for (const name of ["discover", "resolve"] as const) {
    if (options[name] !== undefined && typeof options[name] !== "function") fail(`${name} must be a function`, options[name]);
  }
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
    // A timer given more than MAX_DELAY_MS fires at once.
    if (!isAmount(value) || value === 0 || value > MAX_DELAY_MS) {
      fail(`${name} must be a positive number of milliseconds, at most ${MAX_DELAY_MS}`, value, RangeError);
    }
    return value;
  };
  const requestTimeout = positive("requestTimeout");
  const heartbeatInterval = positive("heartbeatInterval");
  const peerTimeout = positive("peerTimeout");
  const fetchTimeout = positive("fetchTimeout");
  const milliseconds = (name: "ttl" | "grace" | "nullTtl"): number => {
    const value = options[name] ?? DEFAULTS[name];
    if (!isAmount(value)) {
      fail(`${name} must be a number of milliseconds, 0 or more`, value, RangeError);
    }
    return value;
  };
  const ttl = milliseconds("ttl");
  const grace = milliseconds("grace");
  const nullTtl = milliseconds("nullTtl");
  const maxEntries = options.maxEntries ?? DEFAULTS.maxEntries;
  if (maxEntries !== Infinity && !(Number.isInteger(maxEntries) && maxEntries >= 1)) {
    fail("maxEntries must be an integer of 1 or more, or Infinity", maxEntries, RangeError);
  }
  const maxBytes = options.maxBytes ?? DEFAULTS.maxBytes;
  if (typeof maxBytes !== "number" || !(maxBytes >= 1)) fail("maxBytes must be a number of 1 or more, or Infinity", maxBytes, RangeError);
  const whole = (name: "maxFrameBytes" | "maxConnections" | "maxKeyLength" | "maxValueBytes" | "maxQueueBytes" | "maxQueueItems" | "replicas", min: number): number => {
    const value = options[name] ?? DEFAULTS[name];
    if (!Number.isSafeInteger(value) || value < min) fail(`${name} must be an integer of ${min} or more`, value, RangeError);
    return value;
  };
  const maxFrameBytes = whole("maxFrameBytes", 128 * 1024);
  const maxKeyLength = whole("maxKeyLength", 1);
  if (!fitsInFrame(maxKeyLength, maxFrameBytes)) {
    fail(`maxKeyLength must leave a key, at 3 bytes per character, within maxFrameBytes (${maxFrameBytes}) less 64 KiB`, maxKeyLength, RangeError);
  }
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
  const { clock = SYSTEM_CLOCK } = options;
  if (typeof clock !== "object" || clock === null || (["now", "setTimeout", "clearTimeout"] as const).some((name) => typeof clock[name] !== "function")) {
    fail("clock must be an object with now, setTimeout and clearTimeout functions", clock);
  }
  const { transport = currentTransport() } = options;
  if (typeof transport !== "object" || transport === null || typeof transport.listen !== "function" || typeof transport.connect !== "function") {
    fail("transport must be an object with listen and connect functions", transport);
  }
  if (peerTimeout < 2 * heartbeatInterval) {
    fail(`peerTimeout must be at least twice heartbeatInterval (${heartbeatInterval} ms)`, peerTimeout, RangeError);
  }
  const resolved: ResolvedOptions = {
    host: chosenHost,
    port,
    seeds,
    discover: options.discover,
    resolve: options.resolve ?? resolveHost,
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
    grace,
    nullTtl,
    maxEntries,
    maxBytes,
    secret,
    tls: tls && { cert: tls.cert, key: tls.key, ca: tls.ca },
    maxFrameBytes,
    maxConnections: whole("maxConnections", 1),
    maxKeyLength,
    maxValueBytes,
    maxQueueBytes: whole("maxQueueBytes", 1024),
    maxQueueItems: whole("maxQueueItems", 1),
    replicas: whole("replicas", 0),
    placement: resolvePlacement(options.placement, fail),
    nearCache: resolveNearCache(options.nearCache, fail),
    clock,
    transport,
  };
  if (resolved.nearCache && nearLease(resolved) <= heartbeatInterval) {
    fail(`nearCache needs min(peerTimeout, requestTimeout) - heartbeatInterval / 2 above heartbeatInterval (${heartbeatInterval} ms)`, nearLease(resolved), RangeError);
  }
  return resolved;
}

/**
 * How long a member's answer to a request lets a node with a near cache serve from it: the
 * member declares the node down no sooner than `peerTimeout` after hearing from it, and gives up
 * waiting for its acknowledgement no sooner than `requestTimeout`; half a heartbeat is the margin.
 */
function nearLease(options: Pick<ResolvedOptions, "peerTimeout" | "requestTimeout" | "heartbeatInterval">): number {
  return Math.min(options.peerTimeout, options.requestTimeout) - options.heartbeatInterval / 2;
}

function resolvePlacement(option: unknown, fail: (what: string, received: unknown) => never): ResolvedOptions["placement"] {
  if (option === undefined) return DEFAULTS.placement;
  if (option !== "local" && option !== "hash") fail('placement must be "local" or "hash"', option);
  return option;
}

function resolveNearCache(option: NodeOptions["nearCache"], fail: (what: string, received: unknown, Kind?: ErrorConstructor) => never): ResolvedOptions["nearCache"] {
  if (option === undefined || option === false) return undefined;
  if (option === true) return { ...DEFAULTS.nearCache };
  if (typeof option !== "object" || option === null) fail("nearCache must be a boolean or an object with maxEntries and maxBytes", option);
  for (const name of Object.keys(option)) {
    if (name !== "maxEntries" && name !== "maxBytes") fail(`unknown nearCache option "${name}"`, (option as Record<string, unknown>)[name]);
  }
  const bound = (name: "maxEntries" | "maxBytes"): number => {
    const value = option[name] ?? DEFAULTS.nearCache[name];
    if (!Number.isSafeInteger(value) || value < 1) fail(`nearCache.${name} must be an integer of 1 or more`, value, RangeError);
    return value;
  };
  return { maxEntries: bound("maxEntries"), maxBytes: bound("maxBytes") };
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

/** Up to `count` next items of an async iterator; fewer only at its end. */
async function take<T>(iterator: AsyncIterator<T>, count: number): Promise<T[]> {
  const items: T[] = [];
  while (items.length < count) {
    const next = await iterator.next();
    if (next.done) break;
    items.push(next.value);
  }
  return items;
}

function copyJson(value: unknown): unknown {
  return typeof value === "object" && value !== null ? JSON.parse(JSON.stringify(value)) : value;
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

/** The clock of a node that is given none: Date.now and the runtime's timers. */
const SYSTEM_CLOCK: Clock = {
  now: () => Date.now(),
  setTimeout: (callback, ms) => setTimeout(callback, ms),
  clearTimeout: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>),
};

/**
 * Timers on a node's clock that `stop` cancels all at once, so that a stopped node never keeps
 * its process alive: one-off delays, sleeps, and repeating ticks.
 */
class Timers {
  readonly #clock: Clock;
  readonly #pending = new Map<unknown, () => void>();
  #closed = false;
  /** The runtime's own timers, for turns of the event loop, when the clock is another (see turn). */
  readonly #runtime: Timers | undefined;

  constructor(clock: Clock) {
    this.#clock = clock;
    this.#runtime = clock === SYSTEM_CLOCK ? undefined : new Timers(SYSTEM_CLOCK);
  }

  /** Calls `callback` after `ms`, unless cancelled or closed first; returns the cancel function. */
  after(ms: number, callback: () => void, onCancel: () => void = () => {}): () => void {
    if (this.#closed) {
      onCancel();
      return () => {};
    }
    const handle = this.#clock.setTimeout(() => {
      this.#pending.delete(handle);
      callback();
    }, ms);
    this.#pending.set(handle, onCancel);
    return () => {
      if (!this.#pending.delete(handle)) return;
      this.#clock.clearTimeout(handle);
    };
  }

  /** Resolves after `ms`, or rejects with `reason()` if cancelled first or already closed. */
  sleep(ms: number, reason: () => Error): Promise<void> {
    return new Promise((resolve, reject) => this.after(ms, resolve, () => reject(reason())));
  }

  /**
   * Resolves after a turn of the event loop, or rejects with `reason()` if closed first. The turn
   * is timed by the runtime, not the clock: a clock moved by hand must not hold up a node's work.
   */
  turn(reason: () => Error): Promise<void> {
    return (this.#runtime ?? this).sleep(0, reason);
  }

  /** Calls `callback` every `ms` until closed. */
  every(ms: number, callback: () => void): void {
    const tick = () => {
      this.after(ms, tick);
      callback();
    };
    this.after(ms, tick);
  }

  /** Cancels every timer, now and later. */
  close(): void {
    this.#closed = true;
    for (const [handle, onCancel] of this.#pending) {
      this.#clock.clearTimeout(handle);
      onCancel();
    }
    this.#pending.clear();
    this.#runtime?.close();
  }
}

/**
 * Runs `attempt` up to `attempts` times; the n-th retry waits `delay * n` ms first (the delay
 * grows arithmetically: 1x, 2x, 3x...). Rethrows the last error, or at once an error that
 * `final` says will not change by trying again.
 */
async function retry<T>(
  timers: Timers,
  { attempts, delay, stopped }: { attempts: number; delay: number; stopped: () => Error },
  attempt: () => Promise<T>,
  final: (error: unknown) => boolean = () => false,
): Promise<T> {
  for (let n = 1; ; n++) {
    try {
      return await attempt();
    } catch (error) {
      if (n >= attempts || final(error)) throw error;
    }
    await timers.sleep(delay * n, stopped);
  }
}

// ─── Runtime adapter ─────────────────────────────────────────────────────────────────────────
// The only section that touches Deno, Bun, node:net or node:tls. Everything else sees Transport
// and Conn.

/** How long a closing connection may take to hand over its last bytes before it is cut. */
const CLOSE_GRACE_MS = 1000;

/** This machine's network addresses (node:os, which all three runtimes have), loopback included. */
async function localAddresses(): Promise<string[]> {
  const { networkInterfaces } = await import("node:os");
  return Object.values(networkInterfaces()).flatMap((addresses) => (addresses ?? []).map((address) => address.address));
}

/** Every address the system's resolver gives for `host` (node:dns, which all three runtimes have). */
async function resolveHost(host: string): Promise<string[]> {
  const { promises: dns } = await import("node:dns");
  return (await dns.lookup(host, { all: true })).map((found) => found.address);
}

let runtimeTransport: Transport | undefined;

/** The transport of the runtime this file runs in; Deno and Bun are checked before Node.js, since both define `process`. */
function currentTransport(): Transport {
  const runtime = globalThis as { Deno?: DenoApi; Bun?: BunApi };
  runtimeTransport ??= runtime.Deno ? denoTransport(runtime.Deno) : runtime.Bun ? bunTransport(runtime.Bun) : nodeTransport();
  return runtimeTransport;
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
    let closing = false;
    return {
      remoteHost: socket.remoteAddress ?? "",
      start(next) {
        handlers = next;
        // What comes after this side's close is read only to be let go.
        socket.on("data", (chunk: Uint8Array) => closing || handlers.data(chunk));
      },
      write(bytes) {
        socket.write(bytes);
      },
      buffered: () => socket.writableLength,
      close() {
        if (closing) return;
        closing = true;
        // The write side ends, and the socket closes once the other side's does (as Deno's
        // wrap explains, a socket closed with bytes unread would throw away what it wrote last).
        socket.end();
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
  closeWrite(): Promise<void>;
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
    // Ends the write side once the queue is written, and reads on until the other side ends
    // too: a socket closed with bytes still unread sends a reset, and a reset throws away what
    // this side wrote last (a goodbye, a "duplicate") before the other side has read it.
    const shutDown = () => conn.closeWrite().catch(finish);
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
      if (closing && !closed) shutDown();
    };
    const read = async () => {
      const buffer = new Uint8Array(64 * 1024);
      try {
        while (!closed) {
          const n = await conn.read(buffer);
          if (n === null) break;
          // What comes after this side's close is read only to be let go.
          if (!closing) handlers.data(buffer.slice(0, n));
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
        if (closing || closed) return;
        closing = true;
        deno.unrefTimer(setTimeout(finish, CLOSE_GRACE_MS));
        if (!writing) shutDown();
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
      // What comes after this side's close is read only to be let go (see Deno's wrap).
      else if (!state.closing) state.handlers.data(chunk);
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
        // The write side ends once the unsent bytes are out; the socket closes when the other
        // side's does, or is cut after the grace.
        setTimeout(() => state.closed || socket.terminate(), CLOSE_GRACE_MS).unref();
        if (state.unsent.length === 0) socket.end();
      },
    };
  }

  /** Bun's tls option; with a CA, both ends verify each other's certificate. */
  const bunTls = (secure: TlsOptions | undefined): BunTls | undefined =>
    secure && { ...secure, requestCert: secure.ca !== undefined, rejectUnauthorized: secure.ca !== undefined };

  /** Where to listen or connect, with the caller's native options and TLS. */
  const bunAddress = (address: Address, native: Record<string, unknown>, secure: TlsOptions | undefined) =>
    ({ ...native, hostname: address.host, port: address.port, tls: bunTls(secure) });

  return {
    async listen(address, { native, tls: secure }, accept) {
      const server = bun.listen({
        ...bunAddress(address, native, secure),
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
        ...bunAddress(address, native, secure),
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
const PROTOCOL_VERSION = 9;
/** Heartbeat checks between two attempts to reach the members lost without a goodbye, and between two calls of `discover`. */
const LOST_RETRY_CHECKS = 10;
/** How long a member lost without a goodbye is dialled again before it is given up. */
const LOST_RETENTION_MS = 10 * 60 * 1000;
/** Largest frame before the handshake is done: hello, challenge and prove are small. */
const HANDSHAKE_FRAME_BYTES = 64 * 1024;
/** Room a frame keeps beside the largest value: the key and the message around it. */
const FRAME_ROOM = 64 * 1024;
/** Largest version a peer may send (2^50). */
const MAX_VERSION = 2 ** 50;
/**
 * Items per batched request (get, own, drop, gone) and per key list; their keys are kept within
 * a frame too (see fitsInFrame).
 */
const ITEMS_PER_BATCH = 1000;
/** Batches of a key list (see Core.#tellKeys) sent to a peer ahead of its answers. */
const KEY_LISTS_IN_FLIGHT = 4;
/**
 * Entries of one part of a hand-over or of a move of hash placement, acknowledged before the
 * next: small enough for the receiver to store it, and send its copies, well within
 * `requestTimeout` on a busy machine (a part bounded only by bytes held 500,000 small entries, and
 * a member joining two holding 1,000,000 timed out).
 */
const PART_ITEMS = 8 * ITEMS_PER_BATCH;
/**
 * Items of requests a node sends one peer ahead of its answers (see Peer): a batch's worth,
 * which a busy peer on a quarter of a core still answers within a few hundred milliseconds.
 */
const WINDOW_ITEMS = ITEMS_PER_BATCH;
/** How many requestTimeouts a request may wait at a peer that answers others meanwhile (see Peer.request). */
const PATIENCE = 10;
/**
 * Times a getOrSet looks for its key and asks for the right to load it before it loads it
 * without: in all (each time after a load under way ended), and without an answer.
 */
const MAX_LOAD_ROUNDS = 64;
const MAX_UNANSWERED_LOADS = 8;
/** The longest delay a timer takes, in milliseconds (2^31 - 1): the most any timeout option may be. */
const MAX_DELAY_MS = 2 ** 31 - 1;
/** Holders a get asks in turn, each having given the key up to the next, before it counts as missing. */
const MAX_HOPS = 16;
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

/**
 * The `keys` field of own, moved, drop, gone and keys messages: lists of a key, a version, the
 * ms left (0 or left out: no expiry), and for an entry held by another node than its writer the
 * writer's id, then for `moved` the id of the node it moved from, or for an `own` that asks the
 * receiver to keep a copy, `[value, expires, grace?]` (null: neither), then the entry's grace
 * (see SetOptions.grace), where it has one. See keyItem.
 */
function requireKeyList(message: Message): KeyItem[] {
  return requireArray(message, "keys").map((item) => {
    const [key, version, ttl = 0, writer, from, grace = 0] = Array.isArray(item) ? item : [];
    const copy = Array.isArray(from) && from.length >= 1 && from.length <= 3 && from.slice(1).every(isAmount);
    const ids = (writer === undefined || isNodeId(writer)) && (from === undefined || from === null || isNodeId(from) || copy);
    if (typeof key !== "string" || !isVersion(version) || !isAmount(ttl) || !ids || !isAmount(grace)) {
      throw new ProtocolError(`"${message.op}" holds something other than [key, version, ttl, writer, from or [value, expires, grace], grace] lists`);
    }
    return [key, version, ttl, writer, from ?? undefined, grace];
  });
}

/**
 * One item of a key list: key, version, ttl, and where they are given the writer, then for
 * `moved` the node it moved from, or for `own` to a member that keeps a copy, `[value, expires,
 * grace]` (when it expires on the sender's clock, 0 for never; see timeLeft), and the grace.
 */
type KeyItem = [key: string, version: number, ttl: number, writer: string | undefined, fromOrCopy: string | [unknown, number?, number?] | undefined, grace: number];

/**
 * A key list's item (see requireKeyList) of the write (`version`, `writer`) of `key` that
 * `holder` holds, as short as what it carries allows.
 */
function keyItem(key: string, version: number, ttl: number, writer: string, holder: string, grace: number, fromOrCopy?: unknown): unknown[] {
  const item: unknown[] = [key, version, ttl];
  if (writer !== holder || fromOrCopy !== undefined || grace > 0) item.push(writer);
  if (fromOrCopy !== undefined || grace > 0) item.push(fromOrCopy ?? null);
  if (grace > 0) item.push(grace);
  return item;
}

/**
 * Whether a value can be a version. The bound keeps a hostile peer from pushing
 * every clock to where it can no longer count up; no cluster gets near it by writing.
 */
function isVersion(value: unknown): value is number {
  return Number.isSafeInteger(value) && (value as number) >= 0 && (value as number) <= MAX_VERSION;
}

/** Whether a value can be a number of milliseconds or bytes: finite, 0 or more. */
function isAmount(value: unknown): value is number {
  return typeof value === "number" && value >= 0 && Number.isFinite(value);
}

/**
 * Whether keys of `units` UTF-16 code units fit a frame of `maxFrameBytes`, whatever their
 * characters (at most 3 bytes of UTF-8 each), with FRAME_ROOM left for the rest of the message.
 */
function fitsInFrame(units: number, maxFrameBytes: number): boolean {
  return 3 * units <= maxFrameBytes - FRAME_ROOM;
}

/** Whether a value can be a node's id as entries name their writer: a string of at most 64 characters. */
function isNodeId(value: unknown): value is string {
  return typeof value === "string" && value.length > 0 && value.length <= 64;
}

/** One key of a `get` answer, or undefined when it is none of the forms a holder sends. */
function parseFound(item: unknown): Found | undefined {
  if (!Array.isArray(item)) return undefined;
  if (item.length === 0) return {};
  if (item.length === 3 || item.length === 4) {
    const [value, ttl, size, grace = 0] = item;
    return isAmount(ttl) && isAmount(size) && isAmount(grace) ? { value, ttl, size, grace } : undefined;
  }
  const moved = item[0] === null ? parseMoved(item.slice(1)) : undefined;
  return moved && { moved };
}

/** A holder's answer to a get of an entry it holds: `[value, ttl, size, grace?]` (see Held). */
function heldItem(value: unknown, entry: StoredEntry, ttl: number): unknown[] {
  return entry.grace === 0 ? [value, ttl, entry.size] : [value, ttl, entry.size, Math.min(entry.grace, ttl)];
}

/** Where a key went, as get and fetch answers name it: `[holder, version, ttl, writer, grace?]`. */
function movedItem(moved: Moved): unknown[] {
  const item: unknown[] = [moved.holder, moved.version, moved.ttl, moved.writer];
  if (moved.grace > 0) item.push(moved.grace);
  return item;
}

/** The {@linkcode movedItem} of a get or fetch answer; undefined if it is not one. */
function parseMoved(list: unknown): Moved | undefined {
  if (!Array.isArray(list) || list.length < 4 || list.length > 5) return undefined;
  const [holder, version, ttl, writer, grace = 0] = list;
  if (typeof holder !== "string" || !isVersion(version) || !isAmount(ttl) || !isNodeId(writer) || !isAmount(grace)) return undefined;
  return { holder, version, ttl, writer, grace };
}

/** Whether a holder's value was stale already when it answered (see Held). */
function isStaleHeld(held: { ttl: number; grace: number }): boolean {
  return held.grace > 0 && held.grace >= held.ttl;
}

/** Whether two holdings name the same write by the same holder. */
function isSame(a: Holding | undefined, b: Holding | undefined): boolean {
  return a !== undefined && b !== undefined && a.holder === b.holder && a.version === b.version;
}

// ─── Peer: one connection ────────────────────────────────────────────────────────────────────

/** The options a connection obeys. */
type PeerLimits = Pick<ResolvedOptions, "requestTimeout" | "heartbeatInterval" | "maxFrameBytes" | "maxQueueBytes" | "maxQueueItems">;

/** Messages and bytes that a node's connections carried, counted by each of its Peers. */
interface Traffic {
  messagesSent: number;
  messagesReceived: number;
  bytesSent: number;
  bytesReceived: number;
}

interface PendingRequest {
  resolve: (answer: Message) => void;
  reject: (error: Error) => void;
  /** When the request left the queue for the socket; undefined while it waits in the queue. */
  sentAt: number | undefined;
  /** Its items (a batch's keys, else 1), counted against WINDOW_ITEMS once sent. */
  weight: number;
  /** Its bytes as the batch counts them (see Peer.batch), while it waits in the queue. */
  units: number;
  timeout: number;
  /** Whether `timeout` counts from `sentAt` whatever else the peer answers (see Peer.request). */
  fixed: boolean;
}

/** The error a peer's `fail` answer stands for, with the peer's code when it is one of ours. */
function remoteError(message: Message): KosyakError {
  const code = KOSYAK_ERROR_CODES.includes(String(message.code)) ? (message.code as KosyakErrorCode) : "ERR_REMOTE";
  return new KosyakError(code, String(message.message));
}

/** A request whose `keys` list still takes items: see {@linkcode Peer.batch}. */
interface OpenBatch {
  readonly message: Message;
  readonly pending: PendingRequest;
  readonly items: unknown[];
  readonly answer: Promise<Message>;
  /** The length of the keys in the items so far, in UTF-16 code units. */
  units: number;
}

/**
 * One connection to another node: frames out and in, request ids and their timeouts, and flow
 * control. What this node sends waits in one queue, in order, and each tick's worth goes out in
 * one socket write; requests leave it only while the other node has fewer than WINDOW_ITEMS
 * items of requests unanswered, so that however many a burst queues here, a busy peer is never
 * given more than it can answer within a few turns of its event loop, and its heartbeats and
 * answers are never stuck behind a backlog. Answers and pings skip the queue: two nodes waiting
 * for room at each other would otherwise wait for ever. Items of batched requests queued back
 * to back travel as one request, so a queue that waits fills its batches.
 */
class Peer {
  /** The other node's id, known once the handshake is done. */
  id = "";
  /** Where the other node listens, as it announced in the handshake. */
  listening: Address | undefined;
  /** Whether this node dialled the connection (else the other node did). */
  readonly dialled: boolean;
  /** When a chunk last arrived, and when a batch was last written (on the node's clock). */
  lastHeard: number;
  lastSent: number;
  /**
   * When this node sent the latest request the other node has answered (-Infinity: none yet): the other
   * node has heard from this one since then, so it cannot declare this one down before that
   * time plus its peerTimeout.
   */
  answeredAt = -Infinity;
  /** The protocol error that closed the connection, if one did. */
  error: Error | undefined;
  /** Set when another connection to the same node replaced this one; its close is no failure. */
  superseded = false;

  readonly #conn: Conn;
  readonly #decoder: FrameDecoder;
  readonly #limits: PeerLimits;
  readonly #clock: Clock;
  readonly #traffic: Traffic;
  readonly #pending = new Map<number, PendingRequest>();
  #nextRid = 1;
  /** Requests and other messages waiting to be sent, in order. */
  #queue: Message[] = [];
  /** The items and bytes (as their units, see batch) of the requests in the queue. */
  #queuedItems = 0;
  #queuedUnits = 0;
  /** Answers and pings for the next write, ahead of the queue. */
  #urgent: Message[] = [];
  /** Items of the requests sent and not yet answered. */
  #inFlight = 0;
  #flushDue = false;
  /** Whether the handshake is done: only then may a ping go between its messages. */
  #trusted = false;
  #open: OpenBatch | undefined;
  #sweeper: unknown;
  #closed = false;
  #onMessage: (message: Message) => void = () => {};
  #onClose: (reason: PeerDownReason) => void = () => {};

  constructor(conn: Conn, limits: PeerLimits, clock: Clock, traffic: Traffic, dialled: boolean) {
    this.#conn = conn;
    this.#limits = limits;
    this.#clock = clock;
    this.#traffic = traffic;
    // Until the handshake is done, nobody may make this node hold a large frame.
    this.#decoder = new FrameDecoder(Math.min(HANDSHAKE_FRAME_BYTES, limits.maxFrameBytes));
    this.dialled = dialled;
    this.lastHeard = this.lastSent = clock.now();
  }

  get remoteHost(): string {
    return this.#conn.remoteHost;
  }

  get closed(): boolean {
    return this.#closed;
  }

  get info(): PeerInfo {
    return { id: this.id, address: this.listening ?? { host: this.remoteHost, port: 0 } };
  }

  /** The handshake is done: frames up to `maxFrameBytes` are welcome from now on. */
  trust(): void {
    this.#decoder.limit = this.#limits.maxFrameBytes;
    this.#trusted = true;
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
        if (this.#closed) return;
        this.lastHeard = this.#clock.now();
        this.#traffic.bytesReceived += chunk.byteLength;
        try {
          this.#decoder.push(chunk, (message) => {
            this.#traffic.messagesReceived++;
            this.#receive(message);
          });
        } catch (error) {
          this.error = error instanceof Error ? error : new Error(String(error));
          this.close("protocol-error");
        }
      },
      close: () => this.#teardown("closed"),
    });
  }

  /**
   * What is wrong when more requests wait in the queue than `maxQueueItems` or `maxQueueBytes`
   * allow (their bytes as batch counts them), else undefined.
   */
  get overloaded(): string | undefined {
    const { maxQueueItems, maxQueueBytes } = this.#limits;
    if (this.#queuedItems > maxQueueItems) return `${this.#queuedItems} items wait to be sent to member ${this.id}, more than maxQueueItems (${maxQueueItems})`;
    if (this.#queuedUnits > maxQueueBytes) return `${this.#queuedUnits} bytes wait to be sent to member ${this.id}, more than maxQueueBytes (${maxQueueBytes})`;
    return undefined;
  }

  /** Queues a message that expects no answer; a ping goes ahead of the queue once the handshake is done. */
  send(message: Message): void {
    this.#enqueue(message, this.#skipsQueue(message));
  }

  /**
   * Sends a request and resolves with the answer; rejects on `fail`, on close, or on a timeout.
   * By default the timeout is the node's `requestTimeout` of no progress: the request fails when
   * the peer has sent nothing at all, no answer and no heartbeat, for that long since it was
   * sent (and queued requests wait for the window before their time begins), so that a request
   * behind many others at a busy peer is not taken for one that went unanswered; and, however
   * busy the peer, after PATIENCE timeouts. A `timeout` given here counts from the sending,
   * whatever else the peer sends (a remote fetch's loader).
   */
  request(message: Message, timeout?: number): Promise<Message> {
    if (this.#closed) return Promise.reject(new KosyakError("ERR_PEER_GONE", `Peer ${this.id} is gone`));
    return this.#request({ ...message }, timeout, 0).answer;
  }

  /**
   * Adds `item`, whose key is `units` UTF-16 code units long, to the `keys` of an `op` request:
   * to the one queued last if it is an `op` with room left, else to a new one. Returns the
   * request's answer and the item's place in it.
   */
  batch(op: string, item: unknown, units: number): { answer: Promise<Message>; index: number } {
    const open = this.#open;
    if (
      open !== undefined && open.message.op === op && this.#queue.at(-1) === open.message &&
      open.items.length < ITEMS_PER_BATCH && fitsInFrame(open.units + units, this.#limits.maxFrameBytes)
    ) {
      open.items.push(item);
      open.units += units;
      open.pending.units += units;
      this.#queuedItems++;
      this.#queuedUnits += units;
      this.keepAlive();
      return { answer: open.answer, index: open.items.length - 1 };
    }
    const items = [item];
    if (this.#closed) return { answer: this.request({ op, keys: items }), index: 0 };
    const message: Message = { op, keys: items };
    const { answer, pending } = this.#request(message, undefined, units);
    this.#open = { message, pending, items, answer, units };
    return { answer, index: 0 };
  }

  /** Answers a request of the other node; `fields` becomes the answer itself. */
  reply(rid: number, fields: Record<string, unknown>): void {
    fields.op = "ok";
    fields.rid = rid;
    this.#answer(fields as Message);
  }

  /** Answers a request of the other node with an error. */
  fail(rid: number, error: unknown): void {
    const code = error instanceof KosyakError ? error.code : "ERR_REMOTE";
    this.#answer({ op: "fail", rid, code, message: describe(error) });
  }

  /**
   * Writes what is queued, but the requests that wait for the window, closes the connection, and
   * fails every pending request. What was queued to go before the close (a `duplicate`, a
   * goodbye) goes, even from behind requests that are failed instead.
   */
  close(reason: PeerDownReason = "closed"): void {
    if (this.#closed) return;
    this.#flush(true);
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
      if (pending.sentAt! > this.answeredAt) this.answeredAt = pending.sentAt!;
      this.#unanswered(pending);
      if (message.op === "ok") pending.resolve(message);
      else pending.reject(remoteError(message));
      return;
    }
    this.#onMessage(message);
  }

  /** Queues `message` as a request whose items take `units` (see batch). */
  #request(message: Message, timeout: number | undefined, units: number): { answer: Promise<Message>; pending: PendingRequest } {
    const rid = this.#nextRid++;
    const urgent = this.#skipsQueue(message);
    let pending!: PendingRequest;
    const answer = new Promise<Message>((resolve, reject) => {
      pending = { resolve, reject, sentAt: undefined, weight: urgent ? 0 : 1, units, timeout: timeout ?? this.#limits.requestTimeout, fixed: timeout !== undefined };
    });
    this.#pending.set(rid, pending);
    if (this.#sweeper === undefined) this.#sweepLater();
    if (!urgent) {
      this.#queuedItems++;
      this.#queuedUnits += units;
    }
    message.rid = rid;
    this.#enqueue(message, urgent);
    return { answer, pending };
  }

  /** A ping, which tells of this node's liveness, waits for nothing (see Peer) but the handshake. */
  #skipsQueue(message: Message): boolean {
    return message.op === "ping" && this.#trusted;
  }

  #answer(message: Message): void {
    this.#enqueue(message, true);
  }

  /** Puts `message` in the queue, or ahead of it when `urgent`, for the next write. */
  #enqueue(message: Message, urgent: boolean): void {
    if (this.#closed) return;
    if (urgent) this.#urgent.push(message);
    else this.#queue.push(message);
    this.#flushSoon();
    this.keepAlive();
  }

  /**
   * Writes at once, with a ping when nothing else may go, should half a heartbeat interval have
   * passed since the last write: a turn of the event loop that sends or answers thousands of
   * requests, or does other long work that calls this, keeps this node heard, rather than
   * silent till its end, which on a busy machine came later than peerTimeout.
   */
  keepAlive(): void {
    if (!this.#trusted || this.#clock.now() - this.lastSent < this.#limits.heartbeatInterval / 2) return;
    if (this.#urgent.length === 0) this.#urgent.push({ op: "ping" });
    this.#flush();
  }

  /** A request left the window: answered, failed or timed out. The queue may move on. */
  #unanswered(pending: PendingRequest): void {
    if (pending.sentAt === undefined) return;
    this.#inFlight -= pending.weight;
    if (this.#queue.length > 0) this.#flushSoon();
  }

  #flushSoon(): void {
    if (this.#flushDue) return;
    this.#flushDue = true;
    queueMicrotask(() => {
      this.#flushDue = false;
      this.#flush();
    });
  }

  /**
   * Writes what the window lets go of the queue, then the answers and pings, in one socket write;
   * when `closing`, every message but the requests the window holds back.
   */
  #flush(closing = false): void {
    if (this.#closed) return;
    const messages: Message[] = [];
    const now = this.#clock.now();
    let taken = 0;
    for (const message of this.#queue) {
      const pending = message.rid === undefined ? undefined : this.#pending.get(message.rid);
      if (pending !== undefined) {
        const weight = Array.isArray(message.keys) ? message.keys.length : 1;
        if (this.#inFlight > 0 && this.#inFlight + weight > WINDOW_ITEMS) {
          if (!closing) break;
          taken++;
          continue;
        }
        pending.sentAt = now;
        pending.weight = weight;
        this.#inFlight += weight;
        this.#queuedItems -= weight;
        this.#queuedUnits -= pending.units;
      }
      messages.push(message);
      taken++;
    }
    if (taken > 0) this.#queue.splice(0, taken);
    // Answers and pings overtake only what waits for the window. A ping request is timed, but
    // takes no room in the window.
    for (const message of this.#urgent) {
      if (message.rid !== undefined && message.op === "ping") this.#pending.get(message.rid)!.sentAt = now;
      messages.push(message);
    }
    this.#urgent = [];
    // A batch that went can take no more items.
    if (this.#open !== undefined && this.#queue.at(-1) !== this.#open.message) this.#open = undefined;
    if (messages.length === 0) return;
    this.lastSent = now;
    // A value changed after set (say, a BigInt added) must fail one answer, not the process.
    const failInstead = (message: Message, problem: string): Message | undefined =>
      message.op === "ok" ? { op: "fail", rid: message.rid, code: "ERR_REMOTE", message: problem } : undefined;
    const frames = encodeFrames(messages, this.#limits.maxFrameBytes, failInstead);
    this.#traffic.messagesSent += messages.length;
    this.#traffic.bytesSent += frames.byteLength;
    this.#conn.write(frames);
    // A peer that stops reading is let go, rather than buffered for without limit.
    if (this.#conn.buffered() > this.#limits.maxQueueBytes) this.close("stalled");
  }

  /**
   * Fails the requests whose time is up (see request), checking a few times per `requestTimeout`
   * while any wait. A check that runs late, after this process was frozen or busy, runs before
   * the data waiting in the socket is read: a little late, it takes the silence it sees to be
   * that much shorter; later than its interval, it judges nothing, and the next one does.
   */
  #sweepLater(late = false): void {
    const interval = Math.max(this.#limits.requestTimeout / 4, 10);
    const due = this.#clock.now() + interval;
    this.#sweeper = this.#clock.setTimeout(() => {
      const now = this.#clock.now();
      const lateness = Math.max(now - due, 0);
      if (!late && lateness > interval) return this.#sweepLater(true);
      for (const [rid, pending] of this.#pending) {
        const { sentAt, timeout, fixed } = pending;
        // A request that waits in the queue has not been sent: its time has not begun.
        if (sentAt === undefined) continue;
        const silent = now - Math.max(sentAt, this.lastHeard) - lateness >= timeout;
        if (fixed ? now - sentAt < timeout : !silent && now - sentAt < PATIENCE * timeout) continue;
        this.#pending.delete(rid);
        this.#unanswered(pending);
        const why = fixed || silent ? `did not answer within ${timeout} ms` : `did not answer this request within ${PATIENCE * timeout} ms, though it was heard from meanwhile`;
        pending.reject(new KosyakError("ERR_TIMEOUT", `Peer ${this.id} ${why}`));
      }
      if (this.#pending.size > 0 && !this.#closed) this.#sweepLater();
      else this.#sweeper = undefined;
    }, interval);
  }

  #teardown(reason: PeerDownReason): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#queue = [];
    this.#urgent = [];
    this.#queuedItems = this.#queuedUnits = this.#inFlight = 0;
    this.#open = undefined;
    if (this.#sweeper !== undefined) this.#clock.clearTimeout(this.#sweeper);
    this.#sweeper = undefined;
    const gone = new KosyakError("ERR_PEER_GONE", `Peer ${this.id || this.remoteHost} closed the connection`);
    for (const pending of this.#pending.values()) pending.reject(gone);
    this.#pending.clear();
    this.#onClose(reason);
  }
}

// ─── Membership: peers, joining, failure detection ──────────────────────────────────────────

/**
 * Handles one message of a peer whose handshake is done. A request's handler returns the fields
 * of its answer (or a Promise of them); a one-way message's handler returns nothing.
 */
type Handler = (peer: Peer, message: Message) => Record<string, unknown> | Promise<Record<string, unknown>> | undefined;

/** What the cluster needs from the node that owns it. */
interface ClusterHost {
  /** The handlers of the data requests (get, own, drop, gone, keys, fetch, stats). */
  readonly handlers: Record<string, Handler>;
  /** A peer was admitted: tell it what this node holds. */
  admitted(peer: Peer): void;
  /** A peer said it is stopping: it will hand its entries over. */
  leaving(peer: Peer): void;
  /** A peer is gone for good (down or left): forget what it holds. */
  lost(peerId: string): void;
  /** A peer joined and told what it holds. */
  joined(peer: Peer): void;
  /** Reports a membership change or an error. */
  emit<E extends keyof NodeEvents>(event: E, payload: NodeEvents[E]): void;
}

/**
 * The node's view of the cluster: a listener and one Peer per other node (full mesh). Every
 * admitted peer is announced to the others (`member`), so nodes that join at once through
 * different seeds still meet. Heartbeats find peers that fall silent; a connection lost without a
 * goodbye is dialled again by both nodes. Knows nothing of keys: the Node's handlers do.
 */
class Cluster {
  /** Data requests (the host's handlers', key lists left out) from peers answered so far. */
  served = 0;
  /** What every connection of this node carried so far. */
  readonly traffic: Traffic = { messagesSent: 0, messagesReceived: 0, bytesSent: 0, bytesReceived: 0 };

  readonly #id: string;
  readonly #options: ResolvedOptions;
  readonly #host: ClusterHost;
  readonly #clock: Clock;
  /** Every op a peer may send, membership's and the host's, to its handler. */
  readonly #handlers: Record<string, Handler>;
  readonly #peers = new Map<string, Peer>();
  /** #peers' values, for the loops that every operation runs (an iterator is an allocation each, till the code is optimised). */
  #peerList: Peer[] = [];
  /** Connections whose peer has told all the keys it holds. */
  readonly #synced = new WeakSet<Peer>();
  /** Members that said they are stopping: they take no entries over and keep no copies. */
  readonly #leaving = new Set<string>();
  /** Each member's start of its rendezvous scores (see rendezvousSeed), kept while it is one. */
  readonly #rendezvousSeeds = new Map<string, number>();
  /** Connections of any state, so that stop can close even those mid-handshake. */
  readonly #connections = new Set<Peer>();
  /** Ids of nodes being dialled, so that two announcements of one member make one connection. */
  readonly #dialling = new Set<string>();
  /** Members lost without a goodbye whose redial failed, with where they listen and since when. */
  readonly #lost = new Map<string, { address: Address; since: number }>();
  /**
   * Members this node cannot reach, lost without a goodbye or announced by another member and not
   * reachable from here, each with the count of marks when it was marked: either may be alive
   * behind a cut, writing without this node, until no member that this node reaches has it.
   */
  readonly #missing = new Map<string, number>();
  #marks = 0;
  #recheckingMissing = false;
  /** Whether a call of the `discover` option is under way. */
  #discovering = false;
  /** Until when the members' answers vouch for this node (see vouchedFor); -Infinity: work it out again. */
  #vouchedUntil = -Infinity;
  /** Heartbeat checks so far, to dial lost members every LOST_RETRY_CHECKS of them. */
  #checks = 0;
  /** Ids of peers reported up and not yet down, so that each up is matched by one down. */
  readonly #announced = new Set<string>();
  /** Resolves at the next change of membership or of a peer's keys; see #settled. */
  #changed: Deferred<void> = deferred<void>();
  readonly #timers: Timers;
  #listener: Listener | undefined;
  /** The port listened on, kept after the listener closes. */
  #port: number | undefined;
  #lastCheck: number;
  /** When the messages being handled last let every peer hear from this node (see #dispatch). */
  #keptAliveAt = -Infinity;
  readonly #handshake: Handshake;
  #stopping = false;

  constructor(id: string, options: ResolvedOptions, host: ClusterHost) {
    this.#id = id;
    this.#options = options;
    this.#host = host;
    this.#clock = options.clock;
    this.#timers = new Timers(options.clock);
    this.#lastCheck = this.#clock.now();
    const cluster = this;
    this.#handshake = new Handshake(id, options, this.#timers, {
      get port() {
        return cluster.port;
      },
      admit: (peer, greeting) => this.#admit(peer, greeting),
      dispatch: (peer, message) => this.#dispatch(peer, message),
      drop: (peer, reason) => this.#drop(peer, reason),
      emit: (event, error) => host.emit(event, error),
    });
    this.#handlers = {
      // A node with a near cache asks (with a rid) to renew what its members' answers vouch for.
      ping: (_peer, message) => (message.rid === undefined ? undefined : {}),
      leaving: (peer) => {
        this.#leaving.add(peer.id);
        host.leaving(peer);
        return undefined;
      },
      member: (_peer, message) => void this.#meet(message),
      peers: (peer, message) => ({ peers: this.#members(peer, message.ids === undefined ? undefined : new Set(requireArray(message, "ids"))) }),
      bye: (peer) => {
        this.#forgetPeer(peer, "left");
        return {};
      },
      // The other node keeps another connection to this one, which #admit will put in this one's
      // place; until then this one stays, closed, so that #settled waits for the other.
      duplicate: (peer) => {
        peer.superseded = true;
        return undefined;
      },
      ...host.handlers,
    };
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

  /** The connection to the member with this id, if there is one. */
  peer(id: string): Peer | undefined {
    return this.#peers.get(id);
  }

  /** Every member's connection, as a list that stays as it is (a change of the members makes a new one). */
  peers(): readonly Peer[] {
    return this.#peerList;
  }

  /** Makes `peer` the connection that serves member `id`, or forgets the member (undefined). */
  #setPeer(id: string, peer: Peer | undefined): void {
    if (peer === undefined) this.#peers.delete(id);
    else this.#peers.set(id, peer);
    this.#peerList = [...this.#peers.values()];
  }

  /** Lets every peer hear from this node, in a long piece of work that does not send (see Peer.keepAlive). */
  keepAlive(): void {
    for (const peer of this.#peers.values()) peer.keepAlive();
  }

  /**
   * Throws `ERR_OVERLOADED` when more requests wait to be sent to a member than maxQueueItems or
   * maxQueueBytes allow: writes come faster than the cluster takes them, and one more would only
   * wait longer, and hold more memory, than a caller can tell from a member that stopped.
   */
  refuseWhenOverloaded(operation: string, key?: string): void {
    for (let i = 0; i < this.#peerList.length; i++) {
      const peer = this.#peerList[i];
      const problem = peer.overloaded;
      if (problem !== undefined) {
        const what = key === undefined ? operation : `${operation} "${key}"`;
        throw new KosyakError("ERR_OVERLOADED", `Cannot ${what}: ${problem}; the cluster takes writes slower than they come: retry after a pause`);
      }
    }
  }

  /**
   * Whether, at `now`, no member can have declared this node down and written without it: none
   * is missing, and each answered a request this node sent within the last `lease` ms (a member
   * declares a node down only after hearing nothing from it for longer). See NodeOptions.nearCache.
   */
  vouchedFor(now: number, lease: number): boolean {
    if (now < this.#vouchedUntil) return true;
    if (this.#missing.size > 0) return false;
    let until = Infinity;
    for (const peer of this.#peers.values()) until = Math.min(until, peer.answeredAt + lease);
    this.#vouchedUntil = until;
    return now < until;
  }

  /**
   * `peer` has told every key it holds: it counts as settled for a join, and is reported up the
   * first time.
   */
  synced(peer: Peer): void {
    this.#synced.add(peer);
    this.#notifyChange();
    if (this.#peers.get(peer.id) === peer && !this.#announced.has(peer.id)) {
      this.#announced.add(peer.id);
      this.#host.emit("peerUp", peer.info);
      this.#host.joined(peer);
    }
  }

  /** Listens, then joins through the seeds if there are any; on failure leaves nothing open. */
  async start(): Promise<void> {
    const { host, port, seeds, server, heartbeatInterval } = this.#options;
    try {
      const options = { native: server, tls: this.#options.tls };
      this.#listener = await this.#options.transport.listen({ host, port }, options, (conn) => this.#accept(conn));
      this.#port = this.#listener.port;
    } catch (cause) {
      throw new KosyakError("ERR_LISTEN", `Cannot listen on ${host}:${port}: ${describe(cause)}`, { cause });
    }
    this.#timers.every(heartbeatInterval, () => this.#checkPeers());
    try {
      if (this.#stopping) throw this.stoppedError();
      if (seeds.length > 0) await this.#joinVia(await this.#dialSeeds(await this.#addressesOf(seeds)));
    } catch (error) {
      await this.#closeAll();
      throw error;
    }
    // In the background: what discover names may not answer yet, and must not hold up the start.
    void this.#discover();
  }

  /**
   * Every address the seeds' host names resolve to, seed by seed; a name that does not resolve
   * stays as it is (connecting then says why). With `tls` the names stay as they are: the other
   * node's certificate names its host, not its address.
   */
  async #addressesOf(seeds: Address[]): Promise<Address[]> {
    if (this.#options.tls !== undefined) return seeds;
    const lists = await Promise.all(seeds.map(async (seed): Promise<Address[]> => {
      try {
        const hosts = await this.#options.resolve(seed.host);
        const valid = Array.isArray(hosts) ? hosts.filter((host) => typeof host === "string" && host !== "") : [];
        return valid.length > 0 ? valid.map((host) => ({ host, port: seed.port })) : [seed];
      } catch {
        return [seed];
      }
    }));
    return lists.flat();
  }

  /**
   * Asks the `discover` option for addresses, and joins, through each that is neither a member's
   * nor this node's, its cluster, all at once. Never throws: a `discover` that fails, gives
   * something else than a list of { host, port }, or takes longer than `requestTimeout` (with
   * its resolving), is reported as an `error` event; an address that cannot be reached is tried
   * again at the next discovery.
   */
  async #discover(): Promise<void> {
    const { discover, requestTimeout } = this.#options;
    if (discover === undefined || this.#discovering || this.#stopping) return;
    this.#discovering = true;
    try {
      const addresses = await this.#within(this.#discovered(discover), `it took longer than requestTimeout (${requestTimeout} ms)`);
      const known = await this.#knownAddresses();
      await Promise.all(addresses.filter((address) => !known.has(`${address.host}:${address.port}`)).map(async (address) => {
        try {
          await this.#joinVia(await this.#connect(address));
        } catch {
          // Not reachable, or a member after all: the next discovery sees.
        }
      }));
    } catch (cause) {
      if (!this.#stopping) this.#host.emit("error", new KosyakError("ERR_CONNECT", `discover failed: ${describe(cause)}`, { cause }));
    } finally {
      this.#discovering = false;
    }
  }

  /** The addresses `discover` gives, resolved; throws for anything but a list of { host, port }. */
  async #discovered(discover: () => Seed[] | Promise<Seed[]>): Promise<Address[]> {
    const found = await discover();
    const valid = (seed: unknown): seed is Seed =>
      typeof seed === "object" && seed !== null && isPort((seed as Seed).port, 1) &&
      ((seed as Seed).host === undefined || (typeof (seed as Seed).host === "string" && (seed as Seed).host !== ""));
    if (!Array.isArray(found) || !found.every(valid)) {
      throw new TypeError(`discover must give a list of { host, port }: received ${quote(found)}`);
    }
    return this.#addressesOf(found.map((seed) => ({ host: seed.host ?? DEFAULTS.host, port: seed.port })));
  }

  /**
   * Where this node and its members are known to listen, as host:port: the hosts they announced,
   * the addresses their connections come from, and every address of this machine with this
   * node's port (a discovered list usually names this node too).
   */
  async #knownAddresses(): Promise<Set<string>> {
    const known = new Set<string>();
    for (const peer of this.#peers.values()) {
      if (peer.listening === undefined) continue;
      known.add(`${peer.listening.host}:${peer.listening.port}`);
      known.add(`${peer.remoteHost}:${peer.listening.port}`);
    }
    for (const host of [this.#options.host, ...(await localAddresses())]) known.add(`${host}:${this.#port}`);
    return known;
  }

  /** Tells every peer that this node is stopping, so that none hands entries over to it. */
  announceLeaving(): void {
    for (const peer of this.#peers.values()) peer.send({ op: "leaving" });
  }

  /** Tells every peer this node is leaving, waits for their acknowledgements, and closes everything. */
  async stop(): Promise<void> {
    this.#stopping = true;
    this.#timers.close();
    await Promise.all([...this.#peers.values()].map((peer) => peer.request({ op: "bye" }).catch(() => {})));
    await this.#closeAll();
  }

  /**
   * The member that takes over `key` from this node when it stops: of the other members but
   * those that `refused`, the one whose id hashed with the key scores highest; undefined when
   * there is none.
   */
  heirOf(key: string, refused: ReadonlySet<string> = new Set()): Peer | undefined {
    return this.#ranked(key, 1 + refused.size, false).find((peer) => !refused.has(peer!.id));
  }

  /** The `count` other members that keep copies of `key` when this node holds it (`replicas`). */
  replicasOf(key: string, count: number): Peer[] {
    if (count > 1) return this.#ranked(key, count, false) as Peer[];
    const first = this.#first(key, false);
    return first === undefined ? [] : [first];
  }

  /**
   * The member that holds `key` after its holder died: the first of the members that kept copies
   * of it, as the holder chose them; undefined when that is this node. Every node with the same
   * view of the members picks the same one.
   */
  successorOf(key: string): string | undefined {
    return this.#first(key, true)?.id;
  }

  /**
   * The peer that should call `fetch` for `key`, or undefined when this node should: of all the
   * members, the one whose id hashed with the key scores highest (rendezvous hashing), so that
   * every node with the same view of the members picks the same one.
   */
  fetcherOf(key: string): Peer | undefined {
    return this.#first(key, true);
  }

  /**
   * The owner of `key` with hash placement: of the members that do not leave, and this node too
   * when `withSelf`, the one whose id hashed with the key scores highest; undefined for this node
   * (or when no other is left).
   */
  ownerOf(key: string, withSelf: boolean): Peer | undefined {
    return this.#first(key, withSelf);
  }

  /** Whether this node is among the `count` members that rank highest for `key`. */
  isAmongTop(key: string, count: number): boolean {
    return this.#ranked(key, count, true).includes(undefined);
  }

  /**
   * The `count` members whose ids hashed with `key` score highest, best first (rendezvous
   * hashing; ties go to the greater id): the peers (one whose connection is being replaced
   * too, so that the choice does not change meanwhile) but those leaving, and this node too
   * when `withSelf`, which stands in the list as undefined.
   */
  #ranked(key: string, count: number, withSelf: boolean): Array<Peer | undefined> {
    const best: Array<{ id: string; score: number; peer: Peer | undefined }> = [];
    const consider = (id: string, peer: Peer | undefined) => {
      const score = rendezvousScore(this.#seedOf(id), key);
      let at = best.length;
      while (at > 0 && ranksAbove(score, id, best[at - 1].score, best[at - 1].id)) at--;
      if (at < count) best.splice(at, 0, { id, score, peer });
      if (best.length > count) best.pop();
    };
    if (withSelf) consider(this.#id, undefined);
    for (const peer of this.#peerList) if (!this.#leaving.has(peer.id)) consider(peer.id, peer);
    return best.map((ranked) => ranked.peer);
  }

  /** The top of #ranked(key, 1, withSelf), without the list: it is asked once or more for every operation. */
  #first(key: string, withSelf: boolean): Peer | undefined {
    let bestId = withSelf ? this.#id : undefined;
    let bestScore = withSelf ? rendezvousScore(this.#seedOf(this.#id), key) : -1;
    let best: Peer | undefined;
    for (let i = 0; i < this.#peerList.length; i++) {
      const peer = this.#peerList[i];
      if (this.#leaving.has(peer.id)) continue;
      const score = rendezvousScore(this.#seedOf(peer.id), key);
      if (bestId !== undefined && !ranksAbove(score, peer.id, bestScore, bestId)) continue;
      bestId = peer.id;
      bestScore = score;
      best = peer;
    }
    return best;
  }

  /** Where the rendezvous scores of member `id` start, computed once per member. */
  #seedOf(id: string): number {
    let seed = this.#rendezvousSeeds.get(id);
    if (seed === undefined) this.#rendezvousSeeds.set(id, (seed = rendezvousSeed(id)));
    return seed;
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
    const deadline = this.#clock.now() + this.#options.requestTimeout;
    const unsettled = () => [...this.#peers.values()].some((peer) => !this.#synced.has(peer) || peer.closed);
    while (unsettled() && this.#clock.now() < deadline && !this.#stopping) await this.#changeBefore(deadline);
  }

  /**
   * The open connection to member `id`: the current one, or, while a connection that another
   * one replaces waits closed for it, the replacement once admitted (within `requestTimeout`).
   * Undefined when the member is gone.
   */
  async connectionTo(id: string): Promise<Peer | undefined> {
    const deadline = this.#clock.now() + this.#options.requestTimeout;
    for (let peer = this.#peers.get(id); peer !== undefined; peer = this.#peers.get(id)) {
      if (!peer.closed) return peer;
      if (this.#clock.now() >= deadline || this.#stopping) return undefined;
      await this.#changeBefore(deadline);
    }
    return undefined;
  }

  /**
   * The open connection to member `id`, waiting for it to be admitted if it is not yet (another
   * member told of it first), within `requestTimeout`; undefined when it is not by then.
   */
  async memberSoon(id: string): Promise<Peer | undefined> {
    const deadline = this.#clock.now() + this.#options.requestTimeout;
    for (;;) {
      const peer = this.#peers.get(id);
      if (peer !== undefined && !peer.closed) return peer;
      if (this.#clock.now() >= deadline || this.#stopping) return undefined;
      await this.#changeBefore(deadline);
    }
  }

  /** Resolves at the next change of membership or of a peer's keys, or after `ms`. */
  nextChange(ms: number): Promise<void> {
    return this.#changeBefore(this.#clock.now() + ms);
  }

  /** Resolves at the next change of membership or of a peer's keys, or at `deadline`. */
  async #changeBefore(deadline: number): Promise<void> {
    let cancel = () => {};
    const timeout = new Promise<void>((resolve) => (cancel = this.#timers.after(deadline - this.#clock.now(), resolve, resolve)));
    await Promise.race([this.#changed.promise, timeout]);
    cancel();
  }

  /** Wakes whoever waits for a change (#changeBefore). */
  #notifyChange(): void {
    this.#changed.resolve();
    this.#changed = deferred<void>();
  }

  /** Connects to a member another node told of, unless already connected; never throws. */
  async #meet(member: unknown): Promise<void> {
    const { id, host, port } = (member ?? {}) as Record<string, unknown>;
    if (typeof id !== "string" || typeof host !== "string" || !isPort(port, 1)) return;
    if (id === this.#id || this.#peers.has(id) || this.#dialling.has(id) || this.#stopping) return;
    // A member the others know and this node does not yet may already write without it.
    this.#setMissing(id, true);
    await this.#dial({ host, port }, id).catch(() => this.#lose(id, { host, port }));
  }

  /** Tries each seed in turn, in up to `connectAttempts` rounds with growing delays between rounds. */
  async #dialSeeds(seeds: Address[]): Promise<Peer> {
    const { connectAttempts } = this.#options;
    // A refusal or a wrong secret will not change by trying again.
    const refused = (error: unknown) => error instanceof KosyakError && (error.code === "ERR_PROTOCOL" || error.code === "ERR_AUTH");
    const eachSeed = async () => {
      let lastError: unknown;
      for (const seed of seeds) {
        if (this.#stopping) throw this.stoppedError();
        try {
          return await this.#connect(seed);
        } catch (error) {
          if (refused(error)) throw error;
          lastError = error;
        }
      }
      throw lastError;
    };
    try {
      return await retry(this.#timers, this.#backoff(), eachSeed, (error) => refused(error) || this.#stopping);
    } catch (error) {
      if (refused(error) || this.#stopping) throw error;
      const where = seeds.map((seed) => `${seed.host}:${seed.port}`).join(", ");
      const tries = `${connectAttempts} attempt${connectAttempts === 1 ? "" : "s"}`;
      throw new KosyakError("ERR_CONNECT", `Cannot connect to ${where} after ${tries}: ${describe(error)}`, { cause: error });
    }
  }

  /** How dialling retries: `connectAttempts` tries, the n-th retry after `n * connectDelay` ms. */
  #backoff(): { attempts: number; delay: number; stopped: () => Error } {
    return { attempts: this.#options.connectAttempts, delay: this.#options.connectDelay, stopped: () => this.stoppedError() };
  }

  /**
   * Connects to a member whose id is known, trying `connectAttempts` times with a delay growing
   * by `connectDelay`; stops early when the member connects to this node in the meantime.
   */
  async #dial(address: Address, id: string): Promise<Peer> {
    this.#dialling.add(id);
    const attempt = () =>
      this.#connect(address).catch((error) => {
        const connected = this.#peers.get(id);
        if (connected === undefined) throw error;
        return connected;
      });
    try {
      return await retry(this.#timers, this.#backoff(), attempt, () => this.#stopping);
    } finally {
      this.#dialling.delete(id);
    }
  }

  /** Opens a connection and completes the dialling side of the handshake. */
  async #connect(address: Address): Promise<Peer> {
    if (this.#stopping) throw this.stoppedError();
    const conn = await this.#open(address);
    if (this.#stopping) {
      conn.close();
      throw this.stoppedError();
    }
    const peer = new Peer(conn, this.#options, this.#clock, this.traffic, true);
    this.#connections.add(peer);
    return this.#handshake.dial(peer);
  }

  /**
   * Opens a connection within `requestTimeout`. An address whose packets are dropped (a
   * firewall that drops rather than refuses) would otherwise hold a dial for the system's own
   * timeout, about two minutes on Linux, and `init` for several. One that opens too late is closed.
   */
  #open(address: Address): Promise<Conn> {
    const { requestTimeout } = this.#options;
    const opening = this.#options.transport.connect(address, { native: this.#options.socket, tls: this.#options.tls });
    return this.#within(opening, `No connection to ${address.host}:${address.port} opened within ${requestTimeout} ms`, (conn) => conn.close());
  }

  /**
   * What `promise` settles with, unless `requestTimeout` passes first (then ERR_TIMEOUT with
   * `timedOut` as its message) or the node stops; what it gives after that goes to `late`.
   */
  #within<T>(promise: Promise<T>, timedOut: string, late: (value: T) => void = () => {}): Promise<T> {
    return new Promise((resolve, reject) => {
      let gaveUp = false;
      const giveUp = (error: Error) => {
        gaveUp = true;
        reject(error);
      };
      const cancel = this.#timers.after(this.#options.requestTimeout, () => giveUp(new KosyakError("ERR_TIMEOUT", timedOut)), () => giveUp(this.stoppedError()));
      promise.then(
        (value) => {
          if (gaveUp) return late(value);
          cancel();
          resolve(value);
        },
        (error) => {
          cancel();
          reject(error);
        },
      );
    });
  }

  /** Takes a connection another node opened, unless stopping or at `maxConnections`. */
  #accept(conn: Conn): void {
    const { maxConnections } = this.#options;
    if (this.#stopping) return conn.close();
    if (this.#connections.size >= maxConnections) {
      conn.close();
      const error = new KosyakError("ERR_LIMIT", `Refused a connection from ${conn.remoteHost}: maxConnections (${maxConnections}) reached`);
      return this.#host.emit("error", error);
    }
    const peer = new Peer(conn, this.#options, this.#clock, this.traffic, false);
    this.#connections.add(peer);
    this.#handshake.accept(peer);
  }

  /**
   * Registers a peer whose handshake is done, has the host tell it which keys this node holds,
   * and tells the other peers about it. Returns the connection that serves the peer from now on.
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
      // Two nodes dialled each other at once: keep the connection dialled by the smaller id. A
      // node that dialled again has given up its older connection: keep the newer.
      const dialler = (p: Peer) => (p.dialled ? this.#id : p.id);
      if (dialler(peer) > dialler(existing)) {
        this.#retire(peer);
        return existing;
      }
      this.#setPeer(peer.id, peer);
      this.#retire(existing);
    }
    // The directory knows holders by id, so what this node knew of the peer's keys through a
    // connection this one replaces stays valid meanwhile.
    this.#setPeer(peer.id, peer);
    this.#setMissing(peer.id, false);
    // With a near cache, an answer at once, so that this peer's vouches from the start.
    if (this.#options.nearCache) peer.request({ op: "ping" }).catch(() => {});
    this.#host.admitted(peer);
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
    peer.send({ op: "duplicate" });
    peer.close();
  }

  /**
   * Handles a message from a peer whose handshake is done, through the handler its op names; a
   * request is answered with what the handler returns, and a handler that fails (say, the user's
   * fetch) fails only its request.
   */
  #dispatch(peer: Peer, message: Message): void {
    // When much waits, a runtime reads many chunks from each socket in one turn: in the burst
    // of the flow tests a Node.js member's event loop ran 1.25 s late, 300 ms of CPU spent
    // meanwhile, and the peers read first heard nothing and took it for dead. Now each hears a ping.
    const now = this.#clock.now();
    if (now - this.#keptAliveAt >= this.#options.heartbeatInterval / 4) {
      this.#keptAliveAt = now;
      this.keepAlive();
    }
    const handler = Object.hasOwn(this.#handlers, message.op) ? this.#handlers[message.op] : undefined;
    if (handler === undefined) throw new ProtocolError(`unknown request "${String(message.op)}"`);
    const fields = handler(peer, message);
    if (fields === undefined) return;
    if (message.rid === undefined) throw new ProtocolError(`"${message.op}" needs a rid`);
    const rid = message.rid;
    // Key lists are the joining's, not requests for data, though the host answers them.
    if (Object.hasOwn(this.#host.handlers, message.op) && message.op !== "keys") this.served++;
    if (!(fields instanceof Promise)) return peer.reply(rid, fields);
    fields.then((answer) => peer.reply(rid, answer), (error) => peer.fail(rid, error));
  }

  /** The other members a joining node should connect to; of `only`, those that are members. */
  #members(asking: Peer, only?: Set<unknown>): Array<Address & { id: string }> {
    const members: Array<Address & { id: string }> = [];
    for (const peer of this.#peers.values()) {
      if (peer !== asking && peer.listening && (only === undefined || only.has(peer.id))) members.push({ id: peer.id, ...peer.listening });
    }
    return members;
  }

  /**
   * Sends heartbeats on idle connections, closes those whose peer has been silent too long, and
   * every LOST_RETRY_CHECKS checks dials the members lost without a goodbye once more.
   */
  #checkPeers(): void {
    const { heartbeatInterval, peerTimeout } = this.#options;
    const now = this.#clock.now();
    if (++this.#checks % LOST_RETRY_CHECKS === 0) {
      this.#dialLost(now);
      void this.#discover();
    }
    // Only a near cache depends on which members are missing (see vouchedFor).
    if (this.#options.nearCache && this.#missing.size > 0) void this.#recheckMissing();
    // After this process was busy for a while, timers run before the data that waits in the
    // sockets is read: judge silence only at the next check, once it has been.
    // A check that is a little late comes after a long turn, and the data that came meanwhile
    // waits in the sockets for as long: the silence it sees is that much too long.
    const late = now - this.#lastCheck - heartbeatInterval;
    const stalled = late > heartbeatInterval;
    this.#lastCheck = now;
    for (const peer of this.#peers.values()) {
      if (now - peer.lastHeard > peerTimeout + Math.max(late, 0) && !stalled) peer.close("timeout");
      // With a near cache, an answer at least once an interval keeps it trusted (see nearCache).
      else if (this.#options.nearCache && now - peer.answeredAt >= heartbeatInterval / 2) peer.request({ op: "ping" }).catch(() => {});
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
    this.#dial(listening, id).catch(() => this.#lose(id, listening));
  }

  /** Dials a member now and then from now on (see #dialLost): all attempts to reach it failed. */
  #lose(id: string, address: Address): void {
    if (this.#stopping || this.#peers.has(id)) return;
    this.#lost.set(id, { address, since: this.#clock.now() });
    this.#setMissing(id, true);
  }

  #setMissing(id: string, missing: boolean): void {
    if (missing) this.#missing.set(id, ++this.#marks);
    else this.#missing.delete(id);
    this.#vouchedUntil = -Infinity;
  }

  /**
   * Asks every member for its members, and stops counting as missing those none of them has: a
   * member that nobody here reaches gets no write acknowledged where this node reads (it died,
   * or it is cut off from all of them). One marked again meanwhile stays missing.
   */
  async #recheckMissing(): Promise<void> {
    if (this.#recheckingMissing) return;
    this.#recheckingMissing = true;
    const startedAt = this.#marks;
    // Only whether they have the missing ones: a whole member list from every member at every
    // heartbeat would cost each node N² bytes a second while a member is missing.
    const ids = [...this.#missing.keys()];
    try {
      const lists = await Promise.all(Array.from(this.#peers.values(), (peer) => peer.request({ op: "peers", ids }).then((answer) => answer.peers, () => undefined)));
      // A member that does not answer may have one: decide nothing this time.
      if (!lists.every(Array.isArray)) return;
      const reached = new Set(lists.flat().map((member) => (member as { id?: unknown } | null)?.id));
      for (const [id, mark] of this.#missing) {
        if (mark <= startedAt && !reached.has(id)) this.#setMissing(id, false);
      }
    } finally {
      this.#recheckingMissing = false;
    }
  }

  /** Dials each lost member not met again yet; forgets those lost for longer than LOST_RETENTION_MS. */
  #dialLost(now: number): void {
    for (const [id, { address, since }] of this.#lost) {
      if (this.#peers.has(id) || now - since > LOST_RETENTION_MS) {
        this.#lost.delete(id);
        this.#setMissing(id, false);
      }
      else if (!this.#dialling.has(id)) this.#dial(address, id).then(() => this.#lost.delete(id), () => {});
    }
  }

  /** Forgets a peer and the keys it held; returns whether it was a current member. */
  #forgetPeer(peer: Peer, reason: PeerDownReason): boolean {
    if (this.#peers.get(peer.id) !== peer) return false;
    this.#setPeer(peer.id, undefined);
    this.#leaving.delete(peer.id);
    this.#rendezvousSeeds.delete(peer.id);
    if (reason !== "left" && !this.#stopping) this.#setMissing(peer.id, true);
    this.#host.lost(peer.id);
    // A node that is stopping has said goodbye; the connections it closes are no news.
    if (this.#announced.delete(peer.id) && !this.#stopping) this.#host.emit("peerDown", { ...peer.info, reason });
    return true;
  }

  async #closeAll(): Promise<void> {
    this.#stopping = true;
    this.#timers.close();
    for (const peer of this.#connections) peer.close();
    this.#connections.clear();
    const listener = this.#listener;
    this.#listener = undefined;
    await listener?.close();
  }
}


/**
 * FNV-1a over a node id and a 0 after it: where the member's rendezvous scores start, computed
 * once per member rather than for every key ranked (at 16 members, most of a ranking's cost).
 */
function rendezvousSeed(id: string): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < id.length; i++) {
    hash ^= id.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193);
  }
  return Math.imul(hash, 0x01000193);
}

/** FNV-1a over a node id, a 0 and a key (from the id's seed), then mixed: a well-spread 32-bit score for rendezvous hashing. */
function rendezvousScore(seed: number, key: string): number {
  let hash = seed;
  for (let i = 0; i < key.length; i++) {
    hash ^= key.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193);
  }
  // FNV-1a alone scores keys that differ only in their last characters alike on every node,
  // which skews the spread badly (one node of three got 15% of its share of 1,000 keys);
  // murmur3's finalizer mixes every bit into every other.
  hash ^= hash >>> 16;
  hash = Math.imul(hash, 0x85ebca6b);
  hash ^= hash >>> 13;
  hash = Math.imul(hash, 0xc2b2ae35);
  hash ^= hash >>> 16;
  return hash >>> 0;
}

/** Whether a member of id `a` with rendezvous score `scoreA` for a key ranks above member `b`: ties go to the greater id. */
function ranksAbove(scoreA: number, a: string, scoreB: number, b: string): boolean {
  return scoreA > scoreB || (scoreA === scoreB && a > b);
}

function isWildcard(host: string): boolean {
  return host === "0.0.0.0" || host === "::" || host === "[::]";
}

// ─── Handshake: hello, the secret's challenge and response, then welcome or refuse ─────────

/** What a handshake needs from the cluster it admits peers to. */
interface HandshakeHost {
  /** Where this node listens, for its greeting. */
  readonly port: number | undefined;
  /** Registers a peer whose handshake is done; returns the connection that serves it. */
  admit(peer: Peer, greeting: Message): Peer;
  /** Handles a message of a peer whose handshake is done. */
  dispatch(peer: Peer, message: Message): void;
  /** A connection closed. */
  drop(peer: Peer, reason: PeerDownReason): void;
  /** Reports a refused or timed-out connection. */
  emit(event: "error", error: Error): void;
}

/**
 * Both sides of the handshake of every connection. The dialler says hello with a nonce; with a
 * `secret`, the accepting node answers with a challenge that carries its HMAC proof over both
 * nonces and ids, checks the dialler's proof, and only then welcomes it. A refusal names why.
 */
class Handshake {
  readonly #id: string;
  readonly #options: ResolvedOptions;
  readonly #timers: Timers;
  readonly #cluster: HandshakeHost;
  #hmacKey: Promise<CryptoKey> | undefined;

  constructor(id: string, options: ResolvedOptions, timers: Timers, cluster: HandshakeHost) {
    this.#id = id;
    this.#options = options;
    this.#timers = timers;
    this.#cluster = cluster;
  }

  /**
   * The dialling side of the handshake: hello; then, when the other node asks for the secret,
   * its proof checked and this node's proof sent; then welcome, or a refusal.
   */
  async dial(peer: Peer): Promise<Peer> {
    const welcomed = deferred<Peer>();
    const fail = (error: Error) => {
      welcomed.reject(error);
      peer.close();
    };
    const nonce = randomHex(16);
    let challenger: string | undefined;
    peer.start(
      (message) => {
        if (peer.id !== "") return this.#cluster.dispatch(peer, message);
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
            return welcomed.resolve(this.#cluster.admit(peer, message));
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
        this.#cluster.drop(peer, reason);
      },
    );
    peer.send({ ...this.#hello("hello"), nonce });
    const { requestTimeout } = this.#options;
    const cancel = this.#timers.after(requestTimeout, () => fail(new KosyakError("ERR_TIMEOUT", `No handshake answer within ${requestTimeout} ms`)));
    return await welcomed.promise.finally(cancel);
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
  accept(peer: Peer): void {
    const { requestTimeout, secret } = this.#options;
    const cancelTimeout = this.#timers.after(requestTimeout, () => {
      if (peer.id !== "") return;
      this.#cluster.emit("error", new KosyakError("ERR_TIMEOUT", `Closed a connection from ${peer.remoteHost}: no handshake within ${requestTimeout} ms`));
      peer.close();
    });
    let stage: "hello" | "proof" | "checking" = "hello";
    let hello: Message = { op: "hello" };
    let transcript: string[] = [];
    const refuseUnproven = (what: string) => {
      this.#cluster.emit("error", new KosyakError("ERR_AUTH", `Refused a connection from ${peer.remoteHost}: ${what}`));
      peer.send({ op: "refuse", code: "ERR_AUTH", reason: "authentication failed" });
      peer.close();
    };
    peer.start(
      (message) => {
        if (peer.id !== "") return this.#cluster.dispatch(peer, message);
        if (stage === "hello") {
          if (message.op !== "hello") throw new ProtocolError(`expected hello, got "${message.op}"`);
          const refusal = this.#refusalOf(message);
          if (refusal !== undefined) {
            peer.send({ op: "refuse", reason: refusal });
            // A member set up differently is a mistake to show on this side too.
            if (message.placement !== undefined && message.placement !== this.#options.placement) {
              this.#cluster.emit("error", new KosyakError("ERR_PROTOCOL", `Refused a connection from ${peer.remoteHost}: ${refusal}`));
            }
            return peer.close();
          }
          hello = message;
          if (secret === undefined) return this.#welcome(peer, hello, cancelTimeout);
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
          if (valid) this.#welcome(peer, hello, cancelTimeout);
          else refuseUnproven("it failed to prove it knows the secret");
        }).catch((error) => {
          // Outside the socket's handler, so a breach found here is closed by hand.
          peer.error = error instanceof Error ? error : new Error(String(error));
          peer.close("protocol-error");
        });
      },
      (reason) => {
        cancelTimeout();
        if (stage === "proof" && reason === "closed") refuseUnproven("it left without proving it knows the secret");
        this.#cluster.drop(peer, reason);
      },
    );
  }

  /** Admits the dialler, telling it so first. */
  #welcome(peer: Peer, hello: Message, cancelTimeout: () => void): void {
    cancelTimeout();
    peer.send(this.#hello("welcome"));
    this.#cluster.admit(peer, hello);
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

  /** The secret as an HMAC key, imported once. */
  #secretKey(): Promise<CryptoKey> {
    const secret = utf8Encoder.encode(this.#options.secret);
    this.#hmacKey ??= crypto.subtle.importKey("raw", secret, { name: "HMAC", hash: "SHA-256" }, false, ["sign", "verify"]);
    return this.#hmacKey;
  }

  /** Why a hello must be refused, if it must. */
  #refusalOf(hello: Message): string | undefined {
    if (hello.version !== PROTOCOL_VERSION) return `protocol version ${String(hello.version)} is not ${PROTOCOL_VERSION}`;
    if (hello.placement !== this.#options.placement) {
      return `the connecting node uses placement ${quote(hello.placement)}, this node uses ${quote(this.#options.placement)}: every member must use the same`;
    }
    if (requireString(hello, "id") === this.#id) return "a node cannot connect to itself";
    if (typeof hello.host !== "string" || hello.host === "") return "hello needs the host the node listens on";
    if (!isPort(hello.port, 1)) return "hello needs the port the node listens on, from 1 to 65535";
    return undefined;
  }

  /** This node's greeting: the protocol version, its id, where it listens, and its placement. */
  #hello(op: "hello" | "welcome"): Message {
    return { op, version: PROTOCOL_VERSION, id: this.#id, host: this.#options.host, port: this.#cluster.port, placement: this.#options.placement };
  }
}

// ─── Directory: who holds which key, at which version ───────────────────────────────────────

/** A key held by a peer, as a {@linkcode Directory} knows it. */
export interface Holding {
  /** The id of the node that holds the key. */
  readonly holder: string;
  /** The version of the write it holds. */
  readonly version: number;
  /** The id of the node that made the write: the holder, unless a stopping node handed it over. */
  readonly writer: string;
  /** When the entry expires on the clock's scale; 0 when it does not. */
  readonly expires: number;
  /** The last ms before `expires` in which the entry is stale (see {@linkcode SetOptions.grace}). */
  readonly grace: number;
}

/**
 * Who holds what, in one place: for every key, the local entry (in the Store) or the peer that
 * holds it, with the version of its write. The only place that compares versions and moves the
 * Lamport clock: every local write takes a version above any this node has seen, so writes that
 * follow each other across nodes always go up, and of two concurrent writes the higher
 * (version, writer id) wins on every node. Every change of who holds what goes through here,
 * whether a peer announces it (`own`, `drop`, `gone`) or lists its keys when it (re)connects, so
 * a reconnect settles conflicts with the local entries exactly as a live write does. No I/O.
 *
 * Every {@linkcode Node} has one; it is exported, with {@linkcode Store}, for tests and tools
 * that check the rules without sockets. Its API may change in a minor version.
 *
 * @example Two nodes' concurrent writes settle the same way on both
 * ```ts
 * import { Directory, Store } from "./mod.ts";
 *
 * const clock = { now: () => Date.now(), setTimeout, clearTimeout };
 * const limits = { maxEntries: Infinity, maxBytes: Infinity };
 * const a = new Directory("a", new Store(limits, clock, () => {}), clock);
 * const b = new Directory("b", new Store(limits, clock, () => {}), clock);
 * const fromA = a.write("k", "from a", 7, 0);
 * const fromB = b.write("k", "from b", 7, 0);
 * // Each learns of the other's write: the same one, b's (same version, larger id), wins on both.
 * console.log(a.own("k", "b", fromB, 0), b.own("k", "a", fromA, 0)); // true false
 * console.log(a.holderOf("k")?.holder); // "b"
 * ```
 */
export class Directory {
  readonly #id: string;
  readonly #store: Store;
  readonly #clock: Clock;
  /**
   * Keys held by peers. Each holder gets a slot number, and a key's holder and version share one
   * number, `version * HOLDER_SLOTS + slot`, so that the directory costs what a
   * `Map<string, number>` costs; a version too large for that, a holder beyond the last slot, or
   * a write held by another node than its writer, is kept as an object instead.
   */
  readonly #remote = new Map<string, number | { holder: string; version: number; writer: string }>();
  /** When the remote keys that have a TTL expire, on the clock's scale. */
  readonly #expiries = new Map<string, number>();
  /** The grace of the remote keys that have one (see {@linkcode SetOptions.grace}). */
  readonly #graces = new Map<string, number>();
  readonly #slotOf = new Map<string, number>();
  readonly #holderIn: Array<string | undefined> = [];
  readonly #changed: ((key: string) => void) | undefined;
  /**
   * Keys pointed at the member presumed to hold them after their holder died (see
   * forgetHolder), until a member that took the write over says so (see moved).
   */
  readonly #presumed = new Set<string>();
  #lamport = 0;
  readonly #hybrid: boolean;
  /** The newest clear of the whole cluster seen, as (version, writer): older writes are refused. */
  #cleared = { version: 0, writer: "" };
  /**
   * The newest clear of each key prefix (a namespace) seen, oldest first: older writes of its
   * keys are refused. At most CLEARED_PREFIXES_REMEMBERED of them.
   */
  readonly #prefixesCleared = new Map<string, { version: number; writer: string }>();
  /**
   * Removals made or heard of lately, by key, oldest first: the removal's version and writer, and
   * when it came. A write older than one, announced, listed, handed over or copied before the
   * removal but waiting in a queue meanwhile, may arrive after it, and must not bring the key
   * back; a removal leaves no entry whose version would refuse it. Each is kept for
   * `removalMemory` ms, and at most REMOVALS_REMEMBERED of them.
   */
  readonly #removals = new Map<string, { version: number; writer: string; at: number }>();
  readonly #removalMemory: number;

  /**
   * Makes the directory of one node.
   *
   * @param id The id of the node this directory belongs to.
   * @param store The node's local entries.
   * @param clock The node's clock, for expiry times.
   * @param changed Told of every key whose entry here or holder elsewhere changes or is forgotten.
   * @param hybrid Versions follow the clock too (hash placement): each new version is at least
   *   the clock's time since 2020 in 1/1024 ms (so 1,024 writes a ms before they run ahead of
   *   the clock, and below 2^50 until 2054). A key's new owner after its owner was lost never saw the
   *   versions the lost one gave, and its writes must still win over them when that one comes
   *   back; with the clock in the version they do, so long as the members' clocks differ by
   *   less than the time it takes to declare a member lost.
   * @param removalMemory How long a removal refuses older writes of its key that arrive after
   *   it, in ms: at least as long as a message may wait in a queue and on the way.
   */
  constructor(id: string, store: Store, clock: Clock, changed?: (key: string) => void, hybrid = false, removalMemory = 0) {
    this.#id = id;
    this.#store = store;
    this.#clock = clock;
    this.#changed = changed;
    this.#hybrid = hybrid;
    this.#removalMemory = removalMemory;
  }

  /** Keys known to be held by peers (expired ones included until looked up). */
  get remoteCount(): number {
    return this.#remote.size;
  }

  /** The keys of live entries held by peers, stale ones left out, as the directory knows them. */
  *remoteKeys(): Generator<string> {
    const now = this.#clock.now();
    for (const key of this.#remote.keys()) {
      const expires = this.#expiries.size === 0 ? 0 : this.#expiries.get(key) ?? 0;
      const grace = this.#graces.size === 0 ? 0 : this.#graces.get(key) ?? 0;
      if (expires === 0 || expires - grace > now) yield key;
    }
  }

  /** The peer holding a live entry for `key`, if another node holds it. */
  holderOf(key: string): Holding | undefined {
    const holding = this.#holding(key);
    if (holding === undefined || holding.expires === 0 || holding.expires > this.#clock.now()) return holding;
    this.#forget(key);
    return undefined;
  }

  /** Stores a write made here under a new version, which it returns; any remote holder is forgotten. */
  write(key: string, value: unknown, size: number, ttl: number, grace = 0): number {
    const version = this.#tick();
    if (this.#removals.size > 0) this.#removals.delete(key);
    this.#forget(key);
    this.#store.set(key, value, size, ttl, version, this.#id, undefined, grace);
    return version;
  }

  /**
   * Takes an entry a stopping node hands over: stores it here as this node's own, with its
   * version and writer, unless this node holds or knows a newer write of the key; returns
   * whether it stored it.
   */
  adopt(key: string, value: unknown, size: number, ttl: number, version: number, writer: string, grace = 0): boolean {
    this.observe(version);
    if (this.#clearedAway(key, version, writer) || this.#removedAfter(key, version, writer)) return false;
    const local = this.#store.peek(key);
    const known = local ?? this.holderOf(key);
    if (known !== undefined && newer(known.version, known.writer, version, writer)) return false;
    this.#forget(key);
    this.#store.set(key, value, size, ttl, version, writer, undefined, grace);
    return true;
  }

  /**
   * Keeps a copy of the write (`version`, `writer`) of `key` for `holder`, which holds it and
   * sent it, unless this node holds or knows a newer write. Where this node keeps that write
   * already, as a copy or its own, `holder` claims it (see {@linkcode Directory.moved}). Returns
   * false when that claim is refused on this node's own entry: `holder` must then be told to
   * keep its entry as a copy of this node's.
   */
  keepCopy(key: string, value: unknown, size: number, ttl: number, version: number, writer: string, holder: string, grace = 0): boolean {
    this.observe(version);
    if (this.#clearedAway(key, version, writer) || this.#removedAfter(key, version, writer)) return true;
    const local = this.#store.peek(key);
    const known = local ?? this.holderOf(key);
    if (known !== undefined && newer(known.version, known.writer, version, writer)) return true;
    if (local !== undefined && local.version === version && local.writer === writer) return this.#claim(key, local, holder);
    this.#forget(key);
    this.#store.set(key, value, size, ttl, version, writer, holder, grace);
    return true;
  }

  /** A new version for a change made here that is not a write of one key (a clear). */
  nextVersion(): number {
    return this.#tick();
  }

  /**
   * `writer` cleared the whole cluster at `version`, or (with a `prefix`) the keys that start
   * with it: every such local entry and known holder of an older write goes, and from now on
   * older writes are refused (one announced before the clear may arrive after it). One pass over
   * the local entries and one over the directory.
   */
  clearOlder(version: number, writer: string, prefix = ""): void {
    this.observe(version);
    const last = this.lastClear(prefix);
    if (last === undefined || newer(version, writer, last.version, last.writer)) {
      if (prefix === "") this.#cleared = { version, writer };
      else this.#rememberPrefixCleared(prefix, { version, writer });
    }
    for (const entry of [...this.#store.live()]) {
      if (entry.key.startsWith(prefix) && newer(version, writer, entry.version, entry.writer)) this.#store.delete(entry.key);
    }
    for (const key of [...this.#remote.keys()]) {
      const known = this.#holding(key)!;
      if (key.startsWith(prefix) && newer(version, writer, known.version, known.writer)) this.#forget(key);
    }
  }

  #rememberPrefixCleared(prefix: string, clear: { version: number; writer: string }): void {
    this.#prefixesCleared.delete(prefix);
    this.#prefixesCleared.set(prefix, clear);
    if (this.#prefixesCleared.size > CLEARED_PREFIXES_REMEMBERED) this.#prefixesCleared.delete(this.#prefixesCleared.keys().next().value!);
  }

  /** The newest clear seen of the whole cluster (`prefix` ""), or of the keys that start with `prefix`; undefined for none. */
  lastClear(prefix = ""): { readonly version: number; readonly writer: string } | undefined {
    if (prefix !== "") return this.#prefixesCleared.get(prefix);
    return this.#cleared.version === 0 ? undefined : this.#cleared;
  }

  /** Every clear remembered, of the whole cluster first, then of each prefix, as `[version, writer, prefix?]`. */
  clears(): Array<[number, string] | [number, string, string]> {
    const whole = this.lastClear();
    const clears: Array<[number, string] | [number, string, string]> = whole === undefined ? [] : [[whole.version, whole.writer]];
    for (const [prefix, { version, writer }] of this.#prefixesCleared) clears.push([version, writer, prefix]);
    return clears;
  }

  /** Whether the write (`version`, `writer`) of `key` is older than the newest clear seen of the cluster or of a prefix of `key`. */
  #clearedAway(key: string, version: number, writer: string): boolean {
    if (!newer(version, writer, this.#cleared.version, this.#cleared.writer)) return true;
    if (this.#prefixesCleared.size === 0) return false;
    for (const [prefix, clear] of this.#prefixesCleared) {
      if (key.startsWith(prefix) && !newer(version, writer, clear.version, clear.writer)) return true;
    }
    return false;
  }

  /** Removes a key here and from the directory; returns the version the removal carries. */
  remove(key: string): number {
    this.#forget(key);
    this.#store.delete(key);
    const version = this.#tick();
    this.#rememberRemoval(key, version, this.#id);
    return version;
  }

  /** Remembers that `writer` removed `key` at `version` (see #removals). */
  #rememberRemoval(key: string, version: number, writer: string): void {
    if (this.#removalMemory === 0) return;
    const known = this.#removals.get(key);
    if (known !== undefined && !newer(version, writer, known.version, known.writer)) return;
    const now = this.#clock.now();
    this.#removals.delete(key);
    this.#removals.set(key, { version, writer, at: now });
    for (const [oldest, removal] of this.#removals) {
      if (this.#removals.size <= REMOVALS_REMEMBERED && now - removal.at <= this.#removalMemory) break;
      this.#removals.delete(oldest);
    }
  }

  /** Whether a removal of `key` newer than the write (`version`, `writer`) came within removalMemory. */
  #removedAfter(key: string, version: number, writer: string): boolean {
    if (this.#removals.size === 0) return false;
    const removal = this.#removals.get(key);
    return removal !== undefined && this.#clock.now() - removal.at <= this.#removalMemory && newer(removal.version, removal.writer, version, writer);
  }

  /**
   * A peer holds `key` at `version` for `ttl` more ms (0: no expiry), as it announced or listed;
   * `writer` made that write (the holder itself, unless it took the entry over). It wins over
   * the local entry or the known holder if its write is newer, and over a holder only presumed
   * to have the same write (see forgetHolder): a member that was taken for dead and comes back
   * lists what it really holds; returns whether it did. A write older than a removal seen lately
   * is refused when announced (its holder heard of the removal too), but not when `listed` by a
   * member that connects again: that member missed the removal and still holds the entry, and
   * the key it lists comes back on every member alike, as it did before removals were kept.
   */
  own(key: string, holder: string, version: number, ttl: number, writer: string = holder, listed = false, grace = 0): boolean {
    this.observe(version);
    if (this.#clearedAway(key, version, writer) || (!listed && this.#removedAfter(key, version, writer))) return false;
    const local = this.#store.peek(key);
    const known = local ?? this.holderOf(key);
    const presumedSame = local === undefined && this.#presumed.has(key) && known?.version === version && known.writer === writer;
    if (known !== undefined && !presumedSame && !newer(version, writer, known.version, known.writer)) return false;
    this.#record(key, holder, version, ttl, writer, grace);
    return true;
  }

  /**
   * `holder` took over the write (`version`, `writer`) of `key` from `from`: a stopping node
   * handed it over, or `holder` kept a copy of it and made it its own when `from` died. Every
   * directory that knew that write at `from` (and `from` itself) points to `holder` now, and a
   * copy of it kept here is kept for `holder`. A newer write of the key is kept, as with `own`.
   *
   * Two members may take over the same write: with `replicas` of 2 or more every keeper of a
   * dead holder's copies does, and so does a member that kept a copy from before the membership
   * changed. Of two such claims the member that rendezvous hashing ranks higher for the key wins,
   * on every node, whatever order the claims arrive in (a holder this node only presumed, see
   * forgetHolder, gives way to any claim), and the other keeps its entry as a copy of the
   * winner's. Returns false when this node holds the write as its own and wins: `holder` must
   * then be told to keep its entry as a copy of this node's.
   *
   * A claim to have taken the write over from this node lets this node's entry go only while
   * it is `leaving` (it handed the entry over). Otherwise this node was taken for dead and is
   * not: the claim is settled like a rival's, and the entry stays here, as its own or as a copy
   * for `holder`. (Dropping it lost the key: the claimant could then give way to this node and
   * keep only a copy of an entry that no longer existed.)
   */
  moved(key: string, holder: string, from: string, version: number, ttl: number, writer: string, leaving = false, grace = 0): boolean {
    this.observe(version);
    if (this.#clearedAway(key, version, writer) || this.#removedAfter(key, version, writer)) return true;
    const local = this.#store.peek(key);
    const remote = local === undefined ? this.holderOf(key) : undefined;
    const known = local ?? remote;
    const sameWrite = known !== undefined && known.version === version && known.writer === writer;
    if (known !== undefined && !sameWrite && !newer(version, writer, known.version, known.writer)) return true;
    if (sameWrite && local !== undefined && from !== this.#id) return this.#claim(key, local, holder, from);
    if (sameWrite && local !== undefined && local.copyOf === undefined && !leaving) return this.#claim(key, local, holder);
    if (sameWrite && remote !== undefined && remote.holder !== from && !this.#presumed.has(key) && !this.#outranks(holder, remote.holder, key)) return true;
    this.#record(key, holder, version, ttl, writer, grace);
    return true;
  }

  /**
   * `holder` claims the write this node keeps of `key` (`local`: its own entry, or a copy kept
   * for a member), having taken it over `from` a member, if said. The entry is kept as a copy
   * for `holder` from now on if it was the entry of `from`, or if `holder` ranks higher for the
   * key than the member it was kept for (this node, for its own entry), so that copies, like
   * directories, follow the claim that wins. Returns false when the claim is refused on this
   * node's own entry: `holder` must be told.
   */
  #claim(key: string, local: StoredEntry, holder: string, from?: string): boolean {
    const current = local.copyOf ?? this.#id;
    if (current !== from && !this.#outranks(holder, current, key)) return local.copyOf !== undefined;
    this.#store.keepFor(local, holder);
    return true;
  }

  /** Whether member `a` ranks above member `b` for `key`, as the cluster ranks members for a key. */
  #outranks(a: string, b: string, key: string): boolean {
    return ranksAbove(rendezvousScore(rendezvousSeed(a), key), a, rendezvousScore(rendezvousSeed(b), key), b);
  }

  /**
   * `writer` removed `key` at `version`: the local entry or known holder goes if it is older.
   * Returns whether a live local entry went.
   */
  drop(key: string, writer: string, version: number): boolean {
    this.observe(version);
    this.#rememberRemoval(key, version, writer);
    const local = this.#store.peek(key);
    const dropped = local !== undefined && newer(version, writer, local.version, local.writer);
    if (dropped) this.#store.delete(key);
    const known = this.#holding(key);
    if (known !== undefined && newer(version, writer, known.version, known.writer)) this.#forget(key);
    return dropped;
  }

  /**
   * `holder` no longer has its entry for `key` at `version` (evicted, expired, cleared, or it
   * said so when asked), so that write is gone: the record of it goes, and so does a copy of it
   * kept here for `holder`, which is that entry too and must not outlive it (nor be promoted
   * when `holder` dies). A holder recorded since, at another version, stays.
   */
  gone(key: string, holder: string, version: number): void {
    this.observe(version);
    const known = this.#holding(key);
    if (known !== undefined && known.holder === holder && known.version === version) this.#forget(key);
    const local = this.#store.peek(key);
    if (local !== undefined && local.copyOf === holder && local.version === version) {
      this.#changed?.(key);
      this.#store.delete(key);
    }
  }

  /**
   * Forgets every key `holder` holds: it is down, or left. With `successor`, a key goes to the
   * member that function names (the one that should keep a copy) instead, when it names one: a
   * presumption, which the claim of a member that really took the write over replaces (see
   * moved). Costs one pass over the directory, calling `keepAlive` every ITEMS_PER_BATCH keys:
   * with hundreds of thousands of keys, on a busy machine, the pass takes longer than
   * peerTimeout, and the node must not seem dead meanwhile.
   */
  forgetHolder(holder: string, successor?: (key: string) => string | undefined, keepAlive: () => void = () => {}): void {
    const slot = this.#slotOf.get(holder);
    let seen = 0;
    for (const [key, packed] of this.#remote) {
      if (++seen % ITEMS_PER_BATCH === 0) keepAlive();
      if (typeof packed === "number" ? packed % HOLDER_SLOTS !== slot : packed.holder !== holder) continue;
      const next = successor?.(key);
      const holding = next === undefined ? undefined : this.#holding(key)!;
      this.#forget(key);
      if (holding === undefined) continue;
      this.#record(key, next!, holding.version, holding.expires === 0 ? 0 : Math.max(1, holding.expires - this.#clock.now()), holding.writer, holding.grace);
      this.#presumed.add(key);
    }
    if (slot === undefined) return;
    this.#slotOf.delete(holder);
    this.#holderIn[slot] = undefined;
  }

  /** What the directory has for `key`, expired or not. */
  #holding(key: string): Holding | undefined {
    const packed = this.#remote.get(key);
    if (packed === undefined) return undefined;
    const expires = this.#expiries.size === 0 ? 0 : this.#expiries.get(key) ?? 0;
    const grace = this.#graces.size === 0 ? 0 : this.#graces.get(key) ?? 0;
    if (typeof packed !== "number") return { ...packed, expires, grace };
    const holder = this.#holderIn[packed % HOLDER_SLOTS]!;
    return { holder, version: Math.floor(packed / HOLDER_SLOTS), writer: holder, expires, grace };
  }

  /**
   * Records that `holder` holds the write (`version`, `writer`) of `key` for `ttl` more ms, the
   * last `grace` of them stale, dropping a local copy.
   */
  #record(key: string, holder: string, version: number, ttl: number, writer: string, grace: number): void {
    this.#changed?.(key);
    this.#store.delete(key);
    this.#presumed.delete(key);
    const slot = writer === holder && version < PACKABLE_VERSIONS ? this.#slotFor(holder) : undefined;
    this.#remote.set(key, slot !== undefined ? version * HOLDER_SLOTS + slot : { holder, version, writer });
    if (ttl > 0) this.#expiries.set(key, this.#clock.now() + ttl);
    else this.#expiries.delete(key);
    if (ttl > 0 && grace > 0) this.#graces.set(key, Math.min(grace, ttl));
    else this.#graces.delete(key);
  }

  #forget(key: string): void {
    this.#changed?.(key);
    this.#remote.delete(key);
    this.#expiries.delete(key);
    this.#graces.delete(key);
    this.#presumed.delete(key);
  }

  /** The holder's slot, given it now if it has none; undefined when every slot is taken. */
  #slotFor(holder: string): number | undefined {
    let slot = this.#slotOf.get(holder);
    if (slot !== undefined) return slot;
    slot = this.#holderIn.indexOf(undefined);
    if (slot === -1) slot = this.#holderIn.length;
    if (slot >= HOLDER_SLOTS) return undefined;
    this.#slotOf.set(holder, slot);
    this.#holderIn[slot] = holder;
    return slot;
  }

  /** The Lamport clock: the highest version made or seen here. */
  get clock(): number {
    return this.#lamport;
  }

  /** The next version of the Lamport clock (see the constructor's `hybrid`). */
  #tick(): number {
    const fromClock = this.#hybrid ? Math.floor((this.#clock.now() - HYBRID_EPOCH_MS) * VERSIONS_PER_MS) : 0;
    this.#lamport = Math.max(this.#lamport + 1, fromClock);
    return this.#lamport;
  }

  /** Moves the Lamport clock past a version seen elsewhere. */
  observe(version: number): void {
    if (version > this.#lamport) this.#lamport = version;
  }
}

/** Where hybrid versions (see the Directory's constructor) count the clock from, and how finely. */
const HYBRID_EPOCH_MS = Date.UTC(2020, 0, 1);
const VERSIONS_PER_MS = 1024;

/** Prefixes (namespaces) whose newest clear a directory remembers, to refuse older writes of their keys. */
const CLEARED_PREFIXES_REMEMBERED = 1_000;

/** Holders a directory numbers, so that a holder and a version pack into one safe integer. */
const HOLDER_SLOTS = 1024;
/** Versions below this pack with a holder's slot into one safe integer. */
const PACKABLE_VERSIONS = Math.floor(Number.MAX_SAFE_INTEGER / HOLDER_SLOTS);

/** Whether version `a` written by node `aId` supersedes version `b` written by node `bId`. */
function newer(a: number, aId: string, b: number, bId: string): boolean {
  return a > b || (a === b && aId > bId);
}

// ─── Store: the local entries ────────────────────────────────────────────────────────────────

/** A local entry as a {@linkcode Store} keeps it: the public fields plus its size in bytes. */
export interface StoredEntry extends Entry {
  /** The length of the key plus the length of the value's JSON text. */
  readonly size: number;
  /** For a copy kept for another member (`replicas`), that member's id; undefined for this node's own. */
  copyOf: string | undefined;
}

/**
 * The entries this node holds, in least-recently-used order, within `maxEntries` and `maxBytes`,
 * with expiry times in a heap, so that expiry costs no timer per entry. Versions come from the
 * {@linkcode Directory}; the store only keeps them. Exported for tests and tools; its API may
 * change in a minor version.
 *
 * @example A store of at most two entries
 * ```ts
 * import { Store } from "./mod.ts";
 *
 * const clock = { now: () => Date.now(), setTimeout, clearTimeout };
 * const store = new Store({ maxEntries: 2, maxBytes: Infinity }, clock, (entry) => console.log("evicted", entry.key));
 * store.set("a", 1, 2, 0, 1, "this node");
 * store.set("b", 2, 2, 0, 2, "this node");
 * store.set("c", 3, 2, 0, 3, "this node"); // evicted a
 * console.log(store.size); // 2
 * ```
 */
export class Store {
  /** Entries removed to stay within the bounds. */
  evictions = 0;
  /** Entries removed because their time was up. */
  expirations = 0;
  /** Entries kept as copies for other members. */
  copies = 0;

  readonly #maxEntries: number;
  readonly #maxBytes: number;
  /** Whether reads must move entries to the back; an unbounded store never evicts. */
  readonly #bounded: boolean;
  readonly #clock: Clock;
  readonly #onGone: (entry: StoredEntry) => void;
  /** Map order is the recency order: the first entry is the least recently used. */
  readonly #entries = new Map<string, StoredEntry>();
  readonly #expiries = new ExpiryHeap();
  #bytes = 0;

  /**
   * Makes an empty store.
   *
   * @param limits Most entries, and most bytes, to hold (`Infinity`: no bound).
   * @param clock Where expiry times come from.
   * @param onGone Told of each entry the store lets go on its own: evicted or expired.
   */
  constructor(limits: { maxEntries: number; maxBytes: number }, clock: Clock, onGone: (entry: StoredEntry) => void) {
    this.#maxEntries = limits.maxEntries;
    this.#maxBytes = limits.maxBytes;
    this.#bounded = Number.isFinite(limits.maxEntries) || Number.isFinite(limits.maxBytes);
    this.#clock = clock;
    this.#onGone = onGone;
  }

  /** The number of entries held, expired ones included until they are swept or read. */
  get size(): number {
    return this.#entries.size;
  }

  /** The size of the entries held, as `maxBytes` counts it. */
  get bytes(): number {
    return this.#bytes;
  }

  /** A live entry, stale or not, marked as just used; an expired one is removed and reported instead. */
  get(key: string): StoredEntry | undefined {
    const entry = this.peek(key);
    if (entry !== undefined && this.#bounded) {
      this.#entries.delete(key);
      this.#entries.set(key, entry);
    }
    return entry;
  }

  /** A live entry that is not stale (see {@linkcode Entry.grace}), marked as just used. */
  fresh(key: string): StoredEntry | undefined {
    const entry = this.get(key);
    return entry === undefined || !isStale(entry, this.#clock) ? entry : undefined;
  }

  /** A live entry, stale or not, without marking it as used. */
  peek(key: string): StoredEntry | undefined {
    const entry = this.#entries.get(key);
    if (entry === undefined || entry.expires === 0 || entry.expires > this.#clock.now()) return entry;
    this.#expire(entry);
    return undefined;
  }

  /**
   * Stores a value of `size` bytes, written by `writer` at `version`, that lives `ttl` ms (0:
   * until removed), the last `grace` of them stale, as a copy kept for member `copyOf` if
   * given, and evicts the least recently used entries while over a bound.
   */
  set(key: string, value: unknown, size: number, ttl: number, version: number, writer: string, copyOf?: string, grace = 0): void {
    this.delete(key);
    const expires = ttl > 0 ? this.#clock.now() + ttl : 0;
    const entry: StoredEntry = { key, value, version, writer, expires, grace: expires === 0 ? 0 : Math.min(grace, ttl), size, copyOf };
    this.#entries.set(key, entry);
    if (copyOf !== undefined) this.copies++;
    this.#bytes += size;
    if (entry.expires !== 0) this.#expiries.push(entry);
    while (this.#entries.size > this.#maxEntries || this.#bytes > this.#maxBytes) {
      const oldest: StoredEntry = this.#entries.values().next().value!;
      this.delete(oldest.key);
      this.evictions++;
      this.#onGone(oldest);
    }
  }

  /** Deletes the entry of `key`, if there is one. */
  delete(key: string): void {
    const entry = this.#entries.get(key);
    if (entry === undefined) return;
    this.#entries.delete(key);
    this.#bytes -= entry.size;
    if (entry.copyOf !== undefined) this.copies--;
  }

  /** Deletes every entry and returns them. */
  clear(): StoredEntry[] {
    const gone = Array.from(this.#entries.values());
    this.#entries.clear();
    this.#expiries.clear();
    this.#bytes = 0;
    this.copies = 0;
    return gone;
  }

  /** Removes and reports every entry whose time is up; run once a second. */
  sweep(): void {
    const now = this.#clock.now();
    for (let entry = this.#expiries.peek(); entry !== undefined && entry.expires <= now; entry = this.#expiries.peek()) {
      this.#expiries.pop();
      if (this.#entries.get(entry.key) === entry) this.#expire(entry);
    }
    // Overwritten entries stay in the heap until their time; rebuild it when they pile up.
    if (this.#expiries.size > 2 * this.#entries.size + 1024) {
      this.#expiries.rebuild([...this.#entries.values()].filter((entry) => entry.expires !== 0));
    }
  }

  /** Live entries, stale ones included, least recently used first. */
  *live(): Generator<StoredEntry> {
    const now = this.#clock.now();
    for (const entry of this.#entries.values()) {
      if (entry.expires === 0 || entry.expires > now) yield entry;
    }
  }

  /** Live entries that are not stale, least recently used first. */
  *freshEntries(): Generator<StoredEntry> {
    const now = this.#clock.now();
    for (const entry of this.#entries.values()) {
      if (entry.expires === 0 || (entry.expires > now && !isStale(entry, this.#clock))) yield entry;
    }
  }

  /** Makes the copies kept for member `holder` this node's own entries, and returns them. */
  promoteCopiesOf(holder: string): StoredEntry[] {
    const promoted: StoredEntry[] = [];
    for (const entry of this.live()) {
      if (entry.copyOf !== holder) continue;
      this.keepFor(entry, undefined);
      promoted.push(entry);
    }
    return promoted;
  }

  /** Keeps an entry as a copy for member `holder`, or as this node's own (undefined). */
  keepFor(entry: StoredEntry, holder: string | undefined): void {
    this.copies += Number(holder !== undefined) - Number(entry.copyOf !== undefined);
    entry.copyOf = holder;
  }

  /** The milliseconds an entry has left (0: no expiry). */
  ttlOf(entry: StoredEntry): number {
    return entry.expires === 0 ? 0 : Math.max(1, entry.expires - this.#clock.now());
  }

  #expire(entry: StoredEntry): void {
    this.delete(entry.key);
    this.expirations++;
    this.#onGone(entry);
  }
}

/**
 * Whether an entry (or what a directory knows of one) is past its `ttl` now, in the `grace`
 * that ends at `expires` (see {@linkcode SetOptions.grace}). The clock is read only for an entry
 * with a grace: a get of any other pays nothing for it.
 */
function isStale(entry: { readonly expires: number; readonly grace: number }, clock: Clock): boolean {
  return entry.grace > 0 && entry.expires - entry.grace <= clock.now();
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

// ─── Near cache: values read from peers, kept until anything about their key changes ───────

/** A value read from a peer, as a {@linkcode NearCache} keeps it. */
interface NearEntry {
  readonly value: unknown;
  /** When it may no longer be returned, on the clock's scale; 0: not before its key changes. */
  readonly expires: number;
  /** Its size as `maxBytes` counts it. */
  readonly size: number;
  /** Whether it was read since it was kept, or since eviction last passed it over. */
  read: boolean;
}

/**
 * Values this node read from the peers that hold them (see NodeOptions.nearCache), within their
 * bounds, evicted about least recently used first by the "second chance" rule: a read only marks
 * a value, and eviction moves a marked value to the back (unmarked) instead of dropping it.
 * Moving every value read to the back, as the Store does, costs a delete and an insert in a
 * map, which a large map must then compact: half the time of a near hit. It knows nothing of versions: the Directory drops a
 * key's value whenever what it knows of that key changes, and Core keeps a value only if nothing
 * changed while it was being read. No I/O.
 */
class NearCache {
  readonly #maxEntries: number;
  readonly #maxBytes: number;
  readonly #clock: Clock;
  /** Map order is the recency order: the first value is the least recently used. */
  readonly #entries = new Map<string, NearEntry>();
  #bytes = 0;

  constructor(limits: { maxEntries: number; maxBytes: number }, clock: Clock) {
    this.#maxEntries = limits.maxEntries;
    this.#maxBytes = limits.maxBytes;
    this.#clock = clock;
  }

  get size(): number {
    return this.#entries.size;
  }

  get bytes(): number {
    return this.#bytes;
  }

  /** The value kept for `key`, marked as used; undefined when there is none or its time is up at `now`. */
  get(key: string, now: number): unknown {
    const entry = this.#entries.get(key);
    if (entry === undefined) return undefined;
    if (entry.expires !== 0 && entry.expires <= now) {
      this.delete(key);
      return undefined;
    }
    entry.read = true;
    return entry.value;
  }

  /** Keeps `value` of `size` bytes for `key` until `expires` (0: no expiry), within the bounds. */
  keep(key: string, value: unknown, expires: number, size: number): void {
    this.delete(key);
    if (size > this.#maxBytes || (expires !== 0 && expires <= this.#clock.now())) return;
    this.#entries.set(key, { value, expires, size, read: false });
    this.#bytes += size;
    // Each value is passed over at most once before every value is unmarked: bounded.
    while (this.#entries.size > this.#maxEntries || this.#bytes > this.#maxBytes) {
      const [oldest, entry] = this.#entries.entries().next().value!;
      this.#entries.delete(oldest);
      if (entry.read && oldest !== key) {
        entry.read = false;
        this.#entries.set(oldest, entry);
      } else {
        this.#bytes -= entry.size;
      }
    }
  }

  delete(key: string): void {
    const entry = this.#entries.get(key);
    if (entry === undefined) return;
    this.#entries.delete(key);
    this.#bytes -= entry.size;
  }

  /** Drops the values of every key that starts with `prefix`. */
  deletePrefix(prefix: string): void {
    for (const key of [...this.#entries.keys()]) if (key.startsWith(prefix)) this.delete(key);
  }

  clear(): void {
    this.#entries.clear();
    this.#bytes = 0;
  }
}
