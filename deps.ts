/**
 * The test suite's single import point. It picks the test runner of the runtime it runs in
 * (vitest under Node.js, `bun:test` under Bun, `node:test` under Deno, which runs it on Deno's
 * own test runner) and adds the helpers every test file shares: starting nodes and clusters,
 * starting nodes in other processes, waiting for a condition with a bounded timeout, and
 * stopping everything a test started.
 *
 * @module
 */
import assert from "node:assert/strict";
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { accessSync, constants, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect, type Socket } from "node:net";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { type Address, type Clock, Node, type NodeOptions } from "./mod.ts";
import type { Op } from "./test/history.ts";

export { assert };

// ─── Runtime and runner ──────────────────────────────────────────────────────────────────────

/** A JavaScript runtime the suite runs under. */
export type Runtime = "node" | "deno" | "bun";

/** The runtime running this suite. */
export const runtime: Runtime = "Deno" in globalThis ? "deno" : "Bun" in globalThis ? "bun" : "node";

type Body = () => void | Promise<void>;
interface Runner {
  describe(name: string, body: () => void): void;
  it: { (name: string, ...rest: unknown[]): void; skip(name: string, body: Body): void };
  beforeEach(body: Body): void;
  afterEach(body: Body): void;
}

// A computed specifier, so that no runtime tries to resolve another runtime's runner.
const runnerModule = { deno: "node:test", bun: "bun:test", node: "vitest" }[runtime];
const runner = (await import(runnerModule)) as Runner;

/** Groups tests under a name. */
export const describe: (name: string, body: () => void) => void = runner.describe;
/** Runs before each test of the enclosing group. */
export const beforeEach: (body: Body) => void = runner.beforeEach;
/** Runs after each test of the enclosing group, failed or not. */
export const afterEach: (body: Body) => void = runner.afterEach;

/**
 * Jest's `expect`, for suites written against vitest's API (the Keyv test suite): the runner's
 * own under vitest and Bun, the `expect` package under Deno, whose runner has none (Bun cannot
 * load that package).
 */
export const expect: typeof import("expect").expect = runtime === "deno"
  ? (await import("expect")).expect
  : (runner as unknown as { expect: typeof import("expect").expect }).expect;

/** A test; it fails if `body` throws, rejects or runs longer than `timeoutMs`. */
export function it(name: string, body: Body, timeoutMs = 20_000): void {
  if (runtime === "deno") runner.it(name, { timeout: timeoutMs }, body);
  else runner.it(name, body, timeoutMs);
}

/** A test that is reported as skipped and not run; say why in the log before calling it. */
export function skip(name: string, body: Body, _timeoutMs?: number): void {
  runner.it.skip(name, body);
}

// ─── What a run covers ───────────────────────────────────────────────────────────────────────

/**
 * Whether this run takes the fault and load tests of member processes: kills, freezes, cuts,
 * rolling restarts and workloads judged by the history checker. `npm test` leaves them out
 * (KOSYAK_TEST_CLUSTERS=0) under Node.js 22 and 24, whose members would run the same JavaScript
 * as under Node.js 20; what differs between Node.js versions (sockets, TLS, timers, child
 * processes) the rest of the suite still meets there, process tests and the burst included.
 */
export const clusterTests: boolean = process.env.KOSYAK_TEST_CLUSTERS !== "0";

/**
 * Whether this run takes the tests of clusters that mix Node.js, Deno and Bun processes. Their
 * members are the same whichever runtime drives the test, so `npm test` runs them under its
 * first suite only (KOSYAK_TEST_MIXED=0 for the others).
 */
export const mixedClusterTests: boolean = clusterTests && process.env.KOSYAK_TEST_MIXED !== "0";

/** A fault or load test of member processes: `it`, or reported as skipped when `clusterTests` is off. */
export const clusterIt: typeof it = clusterTests ? it : skip;

/** A test of a cluster mixing runtimes: `it`, or reported as skipped when `mixedClusterTests` is off. */
export const mixedIt: typeof it = mixedClusterTests ? it : skip;

// ─── Waiting ─────────────────────────────────────────────────────────────────────────────────

/** Resolves once `condition` holds, checking every 10 ms; rejects naming `what` after `timeoutMs`. */
export async function waitFor(
  what: string,
  condition: () => boolean | Promise<boolean>,
  timeoutMs = 5_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`Timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Rejects with a message naming `what` if `promise` does not settle within `timeoutMs`. */
export function within<T>(what: string, promise: Promise<T>, timeoutMs = 5_000): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not settle within ${timeoutMs} ms`)), timeoutMs);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// ─── A clock moved by hand ───────────────────────────────────────────────────────────────────

/**
 * A {@linkcode Clock} whose time moves only when `advance` is called, so that TTL, heartbeats,
 * timeouts and retries are tested without waiting. Its timers fire in time order, each with the
 * clock set to its own due time.
 */
export class ManualClock implements Clock {
  #now = 1_000_000;
  #next = 1;
  readonly #timers = new Map<number, { at: number; callback: () => void; delay: number }>();

  now(): number {
    return this.#now;
  }

  setTimeout(callback: () => void, ms: number): unknown {
    const handle = this.#next++;
    this.#timers.set(handle, { at: this.#now + Math.max(0, ms), callback, delay: ms });
    return handle;
  }

  clearTimeout(handle: unknown): void {
    this.#timers.delete(handle as number);
  }

  /** The delays of the timers waiting to fire, in the order they were set. */
  pendingDelays(): number[] {
    return [...this.#timers.values()].map((timer) => timer.delay);
  }

  /** Moves the time forward by `ms`, firing every timer that falls due on the way (at most 100,000). */
  advance(ms: number): void {
    const end = this.#now + ms;
    for (let fired = 0; fired < 100_000; fired++) {
      let due: [number, { at: number; callback: () => void }] | undefined;
      for (const entry of this.#timers) if (entry[1].at <= end && (due === undefined || entry[1].at < due[1].at)) due = entry;
      if (due === undefined) break;
      this.#timers.delete(due[0]);
      this.#now = due[1].at;
      due[1].callback();
    }
    this.#now = end;
  }
}

// ─── Nodes in this process ───────────────────────────────────────────────────────────────────

const running = new Set<{ stop(): Promise<void> }>();

/** Remembers something to stop after the test; returns it. */
export function track<T extends { stop(): Promise<void> }>(thing: T): T {
  running.add(thing);
  return thing;
}

/** A node on loopback with a port the OS picks, started and stopped after the test. */
export function startNode(options: NodeOptions = {}): Promise<Node> {
  return track(new Node({ host: "127.0.0.1", port: 0, ...options })).init().ready();
}

/**
 * `size` nodes: the first starts the cluster, each other joins through the node before it, so
 * that most joins go through a node that is not the first.
 */
export async function startCluster(size: number, options: NodeOptions = {}): Promise<Node[]> {
  const nodes = [await startNode(options)];
  for (let i = 1; i < size; i++) nodes.push(await startNode({ ...options, master: nodes[i - 1].address }));
  return nodes;
}

/** Stops every node and process the test started; for `afterEach`. */
export async function stopAll(): Promise<void> {
  const things = [...running];
  running.clear();
  await within("stopping every node", Promise.all(things.map((thing) => thing.stop())), 15_000);
}

// ─── Nodes in other processes ────────────────────────────────────────────────────────────────

const root = fileURLToPath(new URL(".", import.meta.url));

/** The command that runs a script under a runtime. */
export function commandFor(target: Runtime, script: string): [string, string[]] {
  // Node.js is the one on PATH (the machine's own); Deno and Bun are the npm packages' binaries.
  const own = target === runtime ? process.execPath : target === "node" ? "node" : `${root}node_modules/.bin/${target}`;
  // With gc() exposed, so that a soak can weigh what a process holds (Bun has Bun.gc).
  if (target === "deno") return [own, ["run", "-A", "--v8-flags=--expose-gc", script]];
  return [own, target === "node" ? ["--expose-gc", script] : [script]];
}

/** A child process whose output the test reads line by line. */
export interface Started {
  readonly process: ChildProcess;
  /** Resolves with the first line of standard output (seen so far or to come) that matches. */
  line(pattern: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  /** Everything written to standard output so far. */
  output(): string;
  /** Sends a signal (through process.kill: Deno's ChildProcess.kill does not send every signal as asked). */
  signal(name: "SIGTERM" | "SIGINT" | "SIGKILL"): void;
  /** Resolves with the exit code (null when a signal ended the process). */
  readonly exit: Promise<number | null>;
}

/** Starts `command` from the project folder; it is killed after the test if still running. */
export function startProcess(command: string, args: string[]): Started {
  const child = spawn(command, args, { cwd: root, stdio: ["ignore", "pipe", "inherit"] });
  const lines: string[] = [];
  const waiters = new Set<() => void>();
  createInterface({ input: child.stdout! }).on("line", (line) => {
    lines.push(line);
    for (const wake of waiters) wake();
  });
  const exit = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  track({ stop: async () => void (child.exitCode === null && child.signalCode === null && process.kill(child.pid!, "SIGKILL")) });
  return {
    process: child,
    exit,
    output: () => lines.join("\n"),
    signal: (name) => void process.kill(child.pid!, name),
    line(pattern, timeoutMs = 15_000) {
      const found = () => lines.map((line) => pattern.exec(line)).find((match) => match !== null);
      const seen = new Promise<RegExpMatchArray>((resolve) => {
        const check = () => {
          const match = found();
          if (match === undefined) return;
          waiters.delete(check);
          resolve(match);
        };
        waiters.add(check);
        check();
      });
      return within(`a line matching ${pattern} from ${command}`, seen, timeoutMs);
    },
  };
}

/** A node running in a child process, driven over its standard input and output. */
export interface ProcessNode {
  readonly address: Address;
  readonly id: string;
  readonly process: ChildProcess;
  /** Runs an operation on the node (`get`, `set`, `remove`, `stats`) and returns its result. */
  call(op: string, key?: string, value?: unknown): Promise<unknown>;
  /** Asks the node to stop and waits for the process to exit. */
  stop(): Promise<void>;
  /** Kills the process with SIGKILL and waits for it to exit. */
  kill(): Promise<void>;
  /** Freezes the process (SIGSTOP): its sockets stay open but it answers nothing. */
  pause(): void;
  /** Lets a frozen process run again (SIGCONT). */
  resume(): void;
}

/** The absolute path of `command`, looked up on PATH when it has no slash in it. */
function absolute(command: string): string {
  if (command.includes("/")) return command;
  for (const dir of (process.env.PATH ?? "").split(":")) {
    if (dir === "") continue;
    try {
      accessSync(join(dir, command), constants.X_OK);
      return join(dir, command);
    } catch {
      // Not in this folder; try the next.
    }
  }
  throw new Error(`Cannot find ${command} on PATH`);
}

/**
 * A command run through `prefix` (such as `["ip", "netns", "exec", name]`), which gets the
 * runtime by its absolute path: the prefix may not search PATH the way the test process does.
 */
function prefixed(prefix: string[], [command, args]: [string, string[]]): [string, string[]] {
  return prefix.length === 0 ? [command, args] : [prefix[0], [...prefix.slice(1), absolute(command), ...args]];
}

/**
 * Starts `test/fixtures/cluster-node.mjs` under `target` and waits until its node is ready.
 * With a `prefix` (such as `["ip", "netns", "exec", name]`), the prefix runs the runtime, given
 * by its absolute path: the prefix may not search PATH the way the test process does.
 */
export function spawnNode(options: NodeOptions = {}, target: Runtime = runtime, prefix: string[] = []): Promise<ProcessNode> {
  const [command, args] = prefixed(prefix, commandFor(target, `${root}test/fixtures/cluster-node.mjs`));
  const child = spawn(command, [...args, JSON.stringify({ host: "127.0.0.1", port: 0, ...options })], {
    cwd: root,
    stdio: ["pipe", "pipe", "inherit"],
  });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const waiting = new Map<number, { resolve(v: unknown): void; reject(e: Error): void }>();
  let nextSeq = 1;
  let ready!: { resolve(info: { address: Address; id: string }): void; reject(error: Error): void };
  const started = new Promise<{ address: Address; id: string }>((resolve, reject) => (ready = { resolve, reject }));
  child.once("exit", (code) => {
    const gone = new Error(`The ${target} node process exited with code ${code}`);
    ready.reject(gone);
    for (const pending of waiting.values()) pending.reject(gone);
  });
  createInterface({ input: child.stdout! }).on("line", (line) => {
    const message = JSON.parse(line);
    if (message.ready) return ready.resolve(message.ready);
    const pending = waiting.get(message.seq);
    waiting.delete(message.seq);
    if (message.error) pending?.reject(new Error(message.error));
    else pending?.resolve(message.result);
  });
  const kill = async () => {
    if (child.exitCode === null && child.signalCode === null) process.kill(child.pid!, "SIGKILL");
    await exited;
  };
  const handle = {
    process: child,
    call(op: string, key?: string, value?: unknown) {
      const seq = nextSeq++;
      const result = new Promise((resolve, reject) => waiting.set(seq, { resolve, reject }));
      child.stdin!.write(JSON.stringify({ seq, op, key, value }) + "\n");
      return within(`${op} on the ${target} node process`, result, 10_000);
    },
    pause: () => void process.kill(child.pid!, "SIGSTOP"),
    resume: () => void process.kill(child.pid!, "SIGCONT"),
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      process.kill(child.pid!, "SIGCONT");
      child.stdin!.end();
      await within(`the ${target} node process to exit`, exited, 10_000).catch(kill);
    },
    kill,
  };
  track(handle);
  return within(`the ${target} node process to start`, started, 15_000).then(
    (info) => ({ ...handle, ...info }),
    async (error) => {
      await kill();
      throw error;
    },
  );
}

// ─── Throwaway TLS certificates ──────────────────────────────────────────────────────────────

/** A CA and a certificate it signed for 127.0.0.1 and localhost, usable by servers and clients. */
export interface TestCertificates {
  ca: string;
  cert: string;
  key: string;
}

/** Makes a new CA and a node certificate with openssl, in a temporary folder it then removes. */
export function makeCertificates(): TestCertificates {
  const dir = mkdtempSync(join(tmpdir(), "kosyak-certs-"));
  const openssl = (...args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: "pipe" });
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  try {
    writeFileSync(join(dir, "ca.cnf"), "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n");
    writeFileSync(
      join(dir, "node.cnf"),
      "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    );
    openssl("req", "-x509", ...ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=kosyak test CA", "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign");
    openssl("req", ...ec, "-keyout", "node.key", "-out", "node.csr", "-subj", "/CN=localhost");
    openssl("x509", "-req", "-in", "node.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "node.crt", "-days", "2", "-extfile", "node.cnf");
    const read = (name: string) => readFileSync(join(dir, name), "utf8");
    return { ca: read("ca.crt"), cert: read("node.crt"), key: read("node.key") };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

// ─── Raw protocol clients ────────────────────────────────────────────────────────────────────

/** A length-prefixed JSON frame, as kosyak writes them. */
export function frame(message: unknown): Uint8Array {
  const body = new TextEncoder().encode(JSON.stringify(message));
  const out = new Uint8Array(4 + body.length);
  new DataView(out.buffer).setUint32(0, body.length);
  out.set(body, 4);
  return out;
}

/** A hand-written client of the wire protocol, for tests of what a node does with bad peers. */
export interface RawClient {
  socket: Socket;
  /** Every message the node has sent, in order. */
  messages: Array<Record<string, unknown>>;
  /** The next message not yet taken by `next`, waiting for it if need be. */
  next(): Promise<Record<string, unknown>>;
  /** Resolves when the connection closes. */
  closed: Promise<void>;
  /** Everything the node has sent, as text. */
  text(): string;
  /**
   * Ends the handshake's key lists: answers the node's, up to the last, which it returns, then
   * sends `keys` as this side's list and waits for the node's answer to it (taking it out of the
   * messages whatever came before it).
   */
  exchangeKeys(keys?: unknown[]): Promise<Record<string, unknown>>;
}

/** The rid of a raw client's key list; its other requests use small ones. */
const RAW_KEYS_RID = 1_000_000;

/** Connects to a node with a plain socket that splits what the node sends into messages. */
export async function rawConnect(address: Address): Promise<RawClient> {
  const socket = connect(address.port, address.host);
  await new Promise<void>((resolve, reject) => socket.once("connect", resolve).once("error", reject));
  socket.on("error", () => {});
  // As nodes do: with Nagle's algorithm, a small write waits for the ack of the one before it,
  // which loopback delays by 40 ms.
  socket.setNoDelay(true);
  const received: Uint8Array[] = [];
  const messages: Array<Record<string, unknown>> = [];
  let unread = new Uint8Array(0);
  let taken = 0;
  socket.on("data", (chunk: Uint8Array) => {
    received.push(chunk);
    const joined = new Uint8Array(unread.length + chunk.length);
    joined.set(unread);
    joined.set(chunk, unread.length);
    unread = joined;
    while (unread.length >= 4) {
      const length = new DataView(unread.buffer, unread.byteOffset).getUint32(0);
      if (unread.length < 4 + length) break;
      messages.push(JSON.parse(new TextDecoder().decode(unread.subarray(4, 4 + length))));
      unread = unread.slice(4 + length);
    }
  });
  const next = async () => {
    await waitFor("a message from the node", () => messages.length > taken);
    return messages[taken++];
  };
  return {
    socket,
    messages,
    closed: new Promise<void>((resolve) => socket.once("close", () => resolve())),
    next,
    text: () => received.map((chunk) => new TextDecoder().decode(chunk)).join(""),
    async exchangeKeys(keys = []) {
      let list: Record<string, unknown>;
      do {
        list = await next();
        assert.equal(list.op, "keys", `a key list, not ${JSON.stringify(list)}`);
        socket.write(frame({ op: "ok", rid: list.rid }));
      } while (list.done !== true);
      socket.write(frame({ op: "keys", rid: RAW_KEYS_RID, keys, done: true }));
      // Taken out of turn: with hash placement, other messages may come before it.
      const isAnswer = (message: Record<string, unknown>) => message.rid === RAW_KEYS_RID;
      await waitFor("the node's answer to the key list", () => messages.slice(taken).some(isAnswer));
      const answer = messages.splice(messages.findIndex((message, i) => i >= taken && isAnswer(message)), 1)[0];
      assert.deepEqual(answer, { op: "ok", rid: RAW_KEYS_RID });
      return list;
    },
  };
}

// ─── Workload nodes in other processes ───────────────────────────────────────────────────────

/** One op of a recorded workload, as `test/fixtures/workload-node.mjs` reports it. */
export type WorkloadOp = Op;

/** A seeded random workload for {@linkcode WorkloadNode.run}. */
export interface Workload {
  keys: string[];
  durationMs: number;
  concurrency: number;
  /** Share of ops that are sets; of removes; of getOrSets (default 0); the rest are gets. */
  writeRatio: number;
  removeRatio: number;
  loadRatio?: number;
  seed: number;
  /** At most this many ops. @default {50000} */
  maxOps?: number;
  /** Report every op as it begins and ends, so that {@linkcode WorkloadNode.recorded} knows them even if the process dies. */
  stream?: boolean;
  /** Share of sets and getOrSets that expire, and after how many ms. @default {0} */
  ttlRatio?: number;
  ttl?: number;
  /** Keys whose every set and getOrSet expires after `ttl`. @default {[]} */
  ttlKeys?: string[];
  /** How many ms an expiring entry is kept past its ttl, stale (see SetOptions.grace). @default {0} */
  grace?: number;
  /** Share of gets that ask for stale values. @default {0} */
  staleRatio?: number;
}

/** A node in a child process running `test/fixtures/workload-node.mjs`. */
export interface WorkloadNode {
  readonly name: string;
  readonly runtime: Runtime;
  readonly address: Address;
  readonly id: string;
  readonly process: ChildProcess;
  /** Sends a command (`{cmd: "run" | "read" | "set" | "get" | "remove" | "stats", ...}`) and returns its result. */
  call(command: Record<string, unknown>, timeoutMs?: number): Promise<unknown>;
  /** Runs a workload and returns its history, in this process's clock (as are {@linkcode recorded}'s ops). */
  run(workload: Workload): Promise<WorkloadOp[]>;
  /** What each key reads as on this node. */
  read(keys: string[]): Promise<Record<string, string | null>>;
  /**
   * The ops of streamed runs reported so far; one that began but never ended counts as failed,
   * ending when the process exited (or now).
   */
  recorded(): WorkloadOp[];
  /** Freezes the process (SIGSTOP). */
  pause(): void;
  /** Lets a frozen process run again (SIGCONT). */
  resume(): void;
  /** Kills the process with SIGKILL and waits for it to exit. */
  kill(): Promise<void>;
  /**
   * Asks the node to stop and waits for the process to exit: by ending its input, or with
   * SIGTERM (`{ signal: true }`), or without a hand-over (`{ handover: false }`).
   */
  stop(options?: { signal?: boolean; handover?: boolean }): Promise<void>;
}

/** How a child process's clock stands to ours: ours = its - offset, give or take error (ms). */
interface ChildClock {
  offset: number;
  error: number;
}

/**
 * Measures a child's clock against ours. Each process reads the wall clock once, for
 * performance.timeOrigin, and then counts from the same monotonic clock; Node.js 24's reading
 * can be a tenth of a millisecond off another process's, longer than an op on loopback takes,
 * which made honest histories look stale. The child read its clock between our call and its
 * answer, so the shortest of several round trips bounds the error by half of it.
 */
async function measureClock(childNow: () => Promise<number>): Promise<ChildClock> {
  let best: ChildClock = { offset: 0, error: Infinity };
  for (let trip = 0; trip < 20; trip++) {
    const sent = performance.timeOrigin + performance.now();
    const theirs = await childNow();
    const answered = performance.timeOrigin + performance.now();
    if ((answered - sent) / 2 < best.error) best = { offset: theirs - (sent + answered) / 2, error: (answered - sent) / 2 };
  }
  return best;
}

/** An op recorded in a child's clock, in ours: widened by the error, so that it surely holds the true span. */
function inOurClock<T extends { start: number; end: number }>(op: T, clock: ChildClock): T {
  return { ...op, start: op.start - clock.offset - clock.error, end: op.end - clock.offset + clock.error };
}

/** Starts `test/fixtures/workload-node.mjs` under `target` as node `name` and waits until it is ready. */
export function spawnWorkloadNode(name: string, options: NodeOptions = {}, target: Runtime = runtime, prefix: string[] = []): Promise<WorkloadNode> {
  const [command, args] = prefixed(prefix, commandFor(target, `${root}test/fixtures/workload-node.mjs`));
  const child = spawn(command, [...args, JSON.stringify({ name, options: { host: "127.0.0.1", port: 0, ...options } })], {
    cwd: root,
    stdio: ["pipe", "pipe", "inherit"],
  });
  let exitedAt: number | undefined;
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const waiting = new Map<number, { resolve(v: unknown): void; reject(e: Error): void }>();
  const streamed = new Map<number, WorkloadOp & { done?: boolean }>();
  let nextSeq = 1;
  let ready!: { resolve(info: { address: Address; id: string }): void; reject(error: Error): void };
  const started = new Promise<{ address: Address; id: string }>((resolve, reject) => (ready = { resolve, reject }));
  child.once("exit", (code, signal) => {
    exitedAt = performance.timeOrigin + performance.now();
    const gone = new Error(`The ${target} workload node ${name} exited with ${signal ?? `code ${code}`}`);
    ready.reject(gone);
    for (const pending of waiting.values()) pending.reject(gone);
    waiting.clear();
  });
  child.stdin!.on("error", () => {}); // a killed child's pipe may fail a pending write
  createInterface({ input: child.stdout! }).on("line", (line) => {
    const message = JSON.parse(line);
    if (message.ready) return ready.resolve(message.ready);
    if (message.begun) return void streamed.set(message.begun.i, message.begun);
    if (message.done) return void streamed.set(message.done.i, { ...message.done, done: true });
    const pending = waiting.get(message.seq);
    waiting.delete(message.seq);
    if (message.error) pending?.reject(new Error(message.error));
    else pending?.resolve(message.result);
  });
  const alive = () => child.exitCode === null && child.signalCode === null;
  const kill = async () => {
    if (alive()) process.kill(child.pid!, "SIGKILL");
    await within(`the ${target} workload node ${name} to die`, exited, 10_000);
  };
  const call = (message: Record<string, unknown>, timeoutMs = 10_000) => {
    if (!alive()) return Promise.reject(new Error(`The ${target} workload node ${name} is not running`));
    const seq = nextSeq++;
    const result = new Promise((resolve, reject) => waiting.set(seq, { resolve, reject }));
    child.stdin!.write(JSON.stringify({ ...message, seq }) + "\n");
    return within(`${message.cmd} on the ${target} workload node ${name}`, result, timeoutMs);
  };
  let clock: ChildClock = { offset: 0, error: 0 };
  const handle = {
    name,
    runtime: target,
    process: child,
    call,
    // A run lasts its duration plus, at worst, the fixture's bound on its last ops.
    run: async (workload: Workload) => ((await call({ cmd: "run", ...workload }, workload.durationMs + 30_000)) as WorkloadOp[]).map((op) => inOurClock(op, clock)),
    read: (keys: string[]) => call({ cmd: "read", keys }) as Promise<Record<string, string | null>>,
    recorded: () =>
      [...streamed.values()].map(({ done, ...op }) => {
        const { i: _, ...plain } = inOurClock(op as WorkloadOp & { i?: number }, clock);
        return done ? plain : { ...plain, ok: false, end: exitedAt ?? performance.timeOrigin + performance.now() };
      }),
    pause: () => void process.kill(child.pid!, "SIGSTOP"),
    resume: () => void process.kill(child.pid!, "SIGCONT"),
    async stop({ signal = false, handover = true }: { signal?: boolean; handover?: boolean } = {}) {
      if (!alive()) return;
      process.kill(child.pid!, "SIGCONT");
      if (!handover) child.stdin!.write(JSON.stringify({ cmd: "stop", handover, seq: nextSeq++ }) + "\n");
      else if (signal) process.kill(child.pid!, "SIGTERM");
      else child.stdin!.end();
      await within(`the ${target} workload node ${name} to exit`, exited, 10_000).catch(kill);
    },
    kill,
  };
  track(handle);
  return within(`the ${target} workload node ${name} to start`, started, 20_000).then(
    async (info) => {
      clock = await measureClock(() => call({ cmd: "now" }) as Promise<number>);
      return { ...handle, ...info };
    },
    async (error) => {
      await kill();
      throw error;
    },
  );
}
