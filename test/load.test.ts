// getOrSet across member processes: one loader in the whole cluster at a time, however many
// callers on however many nodes, in both placements, on every runtime and in a mixed cluster.
import { afterEach, assert, clusterIt, describe, it, ManualClock, mixedIt, type ProcessNode, type Runtime, runtime, spawnNode, startCluster, startNode, stopAll, waitFor } from "../deps.ts";
import { FAST } from "./workloads.ts";
import { type LoadContext, Node, type NodeOptions } from "../mod.ts";

afterEach(stopAll);

/** A loader call in a member process, as the fixture records it (times on the machine's clock). */
interface LoaderCall {
  key: string;
  start: number;
  end: number | null;
  failed: boolean;
}

/** Four member processes in one cluster, of `runtimes` in turn; resolves once each sees the other three. */
async function fourMembers(options: NodeOptions, runtimes: Runtime[] = [runtime]): Promise<ProcessNode[]> {
  const first = await spawnNode(options, runtimes[0]);
  const rest = await Promise.all([1, 2, 3].map((i) => spawnNode({ ...options, master: first.address }, runtimes[i % runtimes.length])));
  const members = [first, ...rest];
  const peerCounts = async () => (await Promise.all(members.map((member) => member.call("stats")))).map((stats) => (stats as { peers: number }).peers);
  await waitFor("every member to see the other three", async () => (await peerCounts()).every((peers) => peers === 3), 10_000);
  return members;
}

/** Every loader call made in the members' processes so far. */
async function loaderCalls(members: ProcessNode[]): Promise<LoaderCall[]> {
  return (await Promise.all(members.map((member) => member.call("loaderCalls") as Promise<LoaderCall[]>))).flat();
}

/** The calls that overlap in time, as pairs; none when they ran one at a time. */
function overlapping(calls: LoaderCall[]): Array<[LoaderCall, LoaderCall]> {
  // Processes read one clock, but each computes its own origin: allow a millisecond of skew.
  const sorted = [...calls].sort((one, other) => one.start - other.start);
  const pairs: Array<[LoaderCall, LoaderCall]> = [];
  for (let i = 1; i < sorted.length; i++) {
    const previous = sorted[i - 1];
    if (previous.end === null || sorted[i].start < previous.end - 1) pairs.push([previous, sorted[i]]);
  }
  return pairs;
}

/** `count` getOrSets of `key` spread over the members in turn, all begun at once, settled. */
function spread(members: ProcessNode[], count: number, key: string, how: Record<string, unknown>): Promise<PromiseSettledResult<unknown>[]> {
  return Promise.allSettled(Array.from({ length: count }, (_, i) => members[i % members.length].call("getOrSet", key, how)));
}

const valuesOf = (settled: PromiseSettledResult<unknown>[]) => settled.flatMap((result) => (result.status === "fulfilled" ? [result.value] : []));
const errorsOf = (settled: PromiseSettledResult<unknown>[]) => settled.flatMap((result) => (result.status === "rejected" ? [String(result.reason)] : []));

for (const placement of ["local", "hash"] as const) {
  describe(`getOrSet over four ${runtime} member processes, placement "${placement}"`, () => {
    clusterIt("50 concurrent getOrSets of a missing key call one loader; a failing loader fails its caller alone and the next caller loads, one at a time; the loader's TTL, nullTtl and noStore hold on every node", async () => {
      const members = await fourMembers({ placement });

      const stampede = await spread(members, 50, "stampede", { delayMs: 200 });
      assert.deepEqual(errorsOf(stampede), []);
      assert.equal((await loaderCalls(members)).length, 1, "loader calls for 50 concurrent getOrSets");
      const [loaded] = valuesOf(stampede);
      assert.match(String(loaded), /^loaded by /);
      assert.deepEqual(new Set(valuesOf(stampede)), new Set([loaded]), "every caller gets the one loaded value");
      for (const member of members) assert.equal(await member.call("get", "stampede"), loaded, `get on ${member.id}`);

      // Each process's first loader call fails: the grant passes from failure to failure until
      // a process that has failed once loads again, or a waiter on it does.
      const flaky = await spread(members, 20, "flaky", { delayMs: 100, failFirst: true });
      const calls = (await loaderCalls(members)).filter((call) => call.key === "flaky");
      const failed = calls.filter((call) => call.failed).length;
      assert.equal(calls.length - failed, 1, "loader calls that succeeded");
      assert.ok(failed >= 1 && failed <= 4, `${failed} failed loader calls, one per process at most`);
      assert.equal(errorsOf(flaky).length, failed, "each failed loader fails its own caller only");
      for (const error of errorsOf(flaky)) assert.match(error, /Cannot getOrSet "flaky": the loader failed: the source failed on /);
      assert.equal(new Set(valuesOf(flaky)).size, 1, "the other callers all get the value of the one loader that succeeded");
      assert.deepEqual(overlapping(calls), [], "loader calls that ran at the same time");

      // The loader sets the TTL: the entry is on every node, then gone from every node.
      const short = await members[0].call("getOrSet", "short", { ttl: 1_500 });
      for (const member of members) assert.equal(await member.call("get", "short"), short, `get on ${member.id}`);
      const gets = () => Promise.all(members.map((member) => member.call("get", "short")));
      await waitFor("the entry to expire on every node", async () => (await gets()).every((value) => value === null), 10_000);

      // A null is kept for nullTtl, so that the next getOrSet anywhere does not load; without
      // nullTtl it is not kept; noStore returns the value and keeps nothing.
      const loadsSoFar = async () => (await loaderCalls(members)).length;
      let loads = await loadsSoFar();
      assert.equal(await members[1].call("getOrSet", "absent", { value: null, options: { nullTtl: 60_000 } }), null);
      assert.equal(await members[2].call("getOrSet", "absent", { value: "loaded again" }), null);
      assert.equal(await loadsSoFar(), loads + 1, "loader calls for a null kept by nullTtl, asked twice");
      loads = await loadsSoFar();
      assert.equal(await members[1].call("getOrSet", "not kept", { value: null }), null);
      assert.equal(await members[2].call("getOrSet", "not kept", { value: "found" }), "found");
      assert.equal(await loadsSoFar(), loads + 2, "loader calls for a null that is not kept, asked twice");
      assert.equal(await members[3].call("getOrSet", "unstored", { value: "handed", noStore: true }), "handed");
      for (const member of members) assert.equal(await member.call("get", "unstored"), null, `get of the unstored key on ${member.id}`);
    }, 60_000);

    clusterIt("a stale value is served within its grace while the loader fails, one refresh at a time, each failure an error event, and never after the grace; a soft timeout returns the stale value and the late value reaches every node", async () => {
      const members = await fourMembers({ placement });
      const life = { ttl: 300, grace: 3_000 };
      const everyone = (op: string, key: string) => Promise.all(members.map((member) => member.call(op, key)));
      assert.equal(await members[0].call("getOrSet", "price", { value: "first", options: life }), "first");
      await waitFor("the entry to go stale on every node", async () => (await everyone("get", "price")).every((value) => value === null), 5_000);
      assert.deepEqual(await everyone("getStale", "price"), Array(4).fill("first"), "gets with allowStale");

      const failing = await spread(members, 20, "price", { fail: true, delayMs: 50, options: life });
      assert.deepEqual(errorsOf(failing), []);
      assert.deepEqual(new Set(valuesOf(failing)), new Set(["first"]), "what the getOrSets returned while the source failed");
      const refreshes = async () => (await loaderCalls(members)).filter((call) => call.key === "price" && call.failed);
      await waitFor("the refreshes to end", async () => (await loaderCalls(members)).every((call) => typeof call.end === "number"), 5_000);
      const failed = (await refreshes()).length;
      assert.ok(failed >= 1 && failed <= 20, `${failed} refreshes for 20 getOrSets`);
      assert.deepEqual(overlapping(await loaderCalls(members)), [], "loader calls that ran at the same time");
      const events = async () => (await Promise.all(members.map((member) => member.call("errors") as Promise<Array<{ code: string; message: string }>>))).flat();
      await waitFor("an error event for each failed refresh", async () => (await events()).length === failed, 5_000);
      for (const event of await events()) assert.match(event.message, /^Cannot refresh the stale value of "price".*the source failed on /);

      await waitFor("the grace to run out on every node", async () => (await everyone("getStale", "price")).every((value) => value === null), 10_000);
      const after = await members[1].call("getOrSet", "price", { fail: true }).then((value) => `returned ${value}`, (error) => String(error));
      assert.match(after, /Cannot getOrSet "price": the loader failed/, "a getOrSet past the grace");

      assert.equal(await members[2].call("getOrSet", "rate", { value: "old", options: life }), "old");
      await waitFor("the rate to go stale", async () => (await members[3].call("get", "rate")) === null, 5_000);
      const soft = await members[3].call("getOrSet", "rate", { delayMs: 1_000, value: "new", options: { ttl: 60_000, timeout: 100 } });
      assert.equal(soft, "old", "a getOrSet whose loader outlasts its soft timeout");
      await waitFor("the late value on every node", async () => (await everyone("get", "rate")).every((value) => value === "new"), 5_000);
    }, 60_000);

    clusterIt("when the node whose call holds the right to load is killed, a call waiting on another node loads instead, once", async () => {
      const members = await fourMembers({ placement, ...FAST });
      const [victim, ...survivors] = members;
      const stuck = victim.call("getOrSet", "orphan", { hang: true }).catch(() => "killed");
      await waitFor("the victim's loader to start", async () => (await victim.call("loaderCalls") as LoaderCall[]).length === 1, 5_000);
      const waiting = spread(survivors, 15, "orphan", { delayMs: 100 });
      await victim.kill();
      const settled = await waiting;
      assert.equal(await stuck, "killed");
      assert.deepEqual(errorsOf(settled), []);
      assert.equal((await loaderCalls(survivors)).length, 1, "loader calls on the survivors");
      assert.equal(new Set(valuesOf(settled)).size, 1, "every waiting call gets the one loaded value");
    }, 60_000);
  });
}

describe("getOrSet in a cluster of Node.js, Deno and Bun processes", () => {
  for (const placement of ["local", "hash"] as const) {
    mixedIt(`placement "${placement}": 50 concurrent getOrSets over the four processes call one loader`, async () => {
      const members = await fourMembers({ placement }, ["node", "deno", "bun"]);
      const stampede = await spread(members, 50, "mixed stampede", { delayMs: 200 });
      assert.deepEqual(errorsOf(stampede), []);
      assert.equal((await loaderCalls(members)).length, 1, "loader calls");
      assert.equal(new Set(valuesOf(stampede)).size, 1, "distinct values the callers got");
    }, 60_000);

    mixedIt(`placement "${placement}": every runtime serves a stale value while one refresh runs, and the refreshed value reaches them all`, async () => {
      const members = await fourMembers({ placement }, ["node", "deno", "bun"]);
      const everyone = (op: string) => Promise.all(members.map((member) => member.call(op, "mixed rate")));
      assert.equal(await members[0].call("getOrSet", "mixed rate", { value: "old", options: { ttl: 300, grace: 10_000 } }), "old");
      await waitFor("the entry to go stale on every node", async () => (await everyone("get")).every((value) => value === null), 5_000);
      const during = await spread(members, 20, "mixed rate", { delayMs: 300, value: "new", options: { ttl: 60_000 } });
      assert.deepEqual(errorsOf(during), []);
      assert.ok(valuesOf(during).includes("old"), "stale values served during the refresh");
      await waitFor("the refreshed value on every node", async () => (await everyone("get")).every((value) => value === "new"), 5_000);
      assert.equal((await loaderCalls(members)).length, 2, "loader calls: the first load and one refresh");
    }, 60_000);
  }
});

/** A loader that waits until `open()` is called, counting its calls and keeping their contexts. */
function gatedLoader<T>(value: T) {
  let open!: () => void;
  const gate = new Promise<void>((resolve) => (open = resolve));
  const contexts: LoadContext[] = [];
  const load = async (context: LoadContext) => {
    contexts.push(context);
    await gate;
    return value;
  };
  return { load, open, contexts };
}

describe("getOrSet on one node, and its arguments", () => {
  it("concurrent getOrSets of a missing key share one loader call; its value is stored with the call's ttl", async () => {
    const node = await startNode();
    const { load, open, contexts } = gatedLoader({ id: 1 });
    const calls = Array.from({ length: 5 }, () => node.getOrSet("user:1", load, { ttl: 60_000 }));
    await waitFor("the loader to be called", () => contexts.length === 1);
    assert.equal(contexts[0].key, "user:1");
    assert.equal(contexts[0].ttl, 60_000);
    open();
    assert.deepEqual(await Promise.all(calls), Array(5).fill({ id: 1 }));
    assert.equal(contexts.length, 1);
    assert.deepEqual(await node.get("user:1"), { id: 1 });
    assert.equal(node.stats().loads, 1);
  });

  it("loaders that outlast their timeout one after another run one at a time, each failing its own call, and leave the key free", async () => {
    for (const placement of ["local", "hash"] as const) {
      const nodes = await startCluster(2, { placement });
      // A loader that never settles keeps running, but its call gives up at its timeout and the
      // right to load goes on: a loader counts as running from its start until its call failed.
      const spans: Array<{ start: number; end: number }> = [];
      const call = (i: number) => {
        const span = { start: NaN, end: NaN };
        const hang = () => {
          span.start = performance.now();
          spans.push(span);
          return new Promise<never>(() => {});
        };
        return nodes[i % 2].getOrSet("stuck", hang, { hardTimeout: 30 }).finally(() => (span.end = performance.now()));
      };
      const settled = await Promise.allSettled(Array.from({ length: 12 }, (_, i) => call(i)));
      assert.equal(spans.length, 12, placement);
      // The next loader may start a moment before the failed call's caller hears of its failure.
      const sorted = spans.sort((one, other) => one.start - other.start);
      const overlaps = sorted.filter((span, i) => i > 0 && span.start < sorted[i - 1].end - 1);
      assert.deepEqual(overlaps, [], `${placement}: loaders that started while another call still held the right`);
      assert.deepEqual(new Set(settled.map((result) => result.status === "rejected" && (result.reason as { code: string }).code)), new Set(["ERR_FETCH"]), placement);
      assert.equal(await nodes[1].getOrSet("stuck", () => "at last"), "at last", placement);
    }
  });

  it("noStore hands the loaded value to every waiting call and stores nothing", async () => {
    const node = await startNode();
    const { load, open, contexts } = gatedLoader("fresh");
    const calls = Array.from({ length: 4 }, () => node.getOrSet("once", (context) => (context.noStore(), load(context))));
    await waitFor("the loader to be called", () => contexts.length === 1);
    open();
    assert.deepEqual(await Promise.all(calls), Array(4).fill("fresh"));
    assert.equal(contexts.length, 1);
    assert.equal(await node.get("once"), null);
  });

  it("a loader that throws, rejects or outlasts its timeout fails its call with ERR_FETCH, counted, and stores nothing", async () => {
    const node = await startNode();
    await assert.rejects(node.getOrSet("sync", () => {
      throw new Error("no database");
    }), { code: "ERR_FETCH", message: 'Cannot getOrSet "sync": the loader failed: no database' });
    await assert.rejects(node.getOrSet("async", () => Promise.reject(new Error("refused"))), { code: "ERR_FETCH" });
    await assert.rejects(node.getOrSet("slow", () => new Promise(() => {}), { hardTimeout: 20 }), {
      code: "ERR_FETCH",
      message: 'Cannot getOrSet "slow": the loader failed: it did not finish within 20 ms',
    });
    assert.equal(node.stats().loadErrors, 3);
    assert.deepEqual(await Promise.all(["sync", "async", "slow"].map((key) => node.get(key))), [null, null, null]);
    // The next call loads: a failure leaves no grant behind.
    assert.equal(await node.getOrSet("slow", () => "second try"), "second try");
  });

  it("a write of the key while its loader runs wins: the loaded value is not stored, and the call returns what the cache holds", async () => {
    for (const placement of ["local", "hash"] as const) {
      const [writer, loader] = await startCluster(2, { placement });
      const { load, open, contexts } = gatedLoader("from the source");
      const overwritten = loader.getOrSet("contended", load);
      await waitFor("the loader to be called", () => contexts.length === 1);
      await writer.set("contended", "written");
      open();
      assert.equal(await overwritten, "written", placement);
      assert.deepEqual([await writer.get("contended"), await loader.get("contended")], ["written", "written"], placement);
      assert.equal(contexts.length, 1, placement);

      // After a removal there is nothing to return: the call loads again, and stores that.
      await writer.remove("contended");
      let loads = 0;
      const removed = gatedLoader(undefined);
      const reloading = loader.getOrSet("contended", async (context) => (await removed.load(context), `load ${++loads}`));
      await waitFor("the loader to be called", () => removed.contexts.length === 1);
      await writer.remove("contended");
      removed.open();
      assert.equal(await reloading, "load 2", placement);
      assert.equal(await writer.get("contended"), "load 2", placement);
    }
  });

  it("a held value is returned without calling the loader, before getOrSet returns for a local hit, and through the callback form", async () => {
    const node = await startNode();
    await node.set("held", 7);
    let order = "";
    node.getOrSet("held", () => assert.fail("the loader must not run"), (err, value) => {
      assert.equal(err, null);
      assert.equal(value, 7);
      order += "callback ";
    });
    order += "returned";
    assert.equal(order, "callback returned");
    const done = new Promise<unknown>((resolve, reject) => node.getOrSet("new", () => 8, { ttl: 1000 }, (err, value) => (err ? reject(err) : resolve(value))));
    assert.equal(await done, 8);
    assert.equal(node.stats().loads, 1);
  });

  it("a loader's TTL from the value, and an invalid one, which fails the call and leaves the key free to load", async () => {
    const node = await startNode();
    assert.equal(await node.getOrSet("token", (context) => ((context.ttl = 30), "jwt")), "jwt");
    await waitFor("the token to expire", async () => (await node.get("token")) === null);
    await assert.rejects(node.getOrSet("broken", (context) => ((context.ttl = -1), "x")), {
      name: "RangeError",
      message: 'Cannot getOrSet "broken": ttl must be a number of milliseconds, 0 or more: received -1',
    });
    assert.equal(await node.getOrSet("broken", () => "fixed"), "fixed");
  });

  it("the fetch option is get's loader, not getOrSet's", async () => {
    let fetches = 0;
    const node = await startNode({ fetch: (_key, done) => done(null, `fetched ${++fetches}`) });
    assert.equal(await node.getOrSet("k", () => "loaded"), "loaded");
    assert.equal(fetches, 0);
    assert.equal(await node.get("other"), "fetched 1");
  });

  it("wrong arguments throw at once, saying what was wrong; a node not started or stopped refuses", async () => {
    const node = await startNode();
    assert.throws(() => node.getOrSet(1 as unknown as string, () => 1), { name: "TypeError" });
    assert.throws(() => node.getOrSet("k", "load" as unknown as () => 1), {
      name: "TypeError",
      message: 'Cannot getOrSet: loader must be a function: received "load"',
    });
    assert.throws(() => node.getOrSet("k", () => 1, { hardTimeout: 0 }), {
      name: "RangeError",
      message: `Cannot getOrSet "k": hardTimeout must be a number of milliseconds, from 1 to ${2 ** 31 - 1}: received 0`,
    });
    assert.throws(() => node.getOrSet("k", () => 1, { timeout: -1 }), { name: "RangeError", message: /timeout must be a number of milliseconds, from 0/ });
    assert.throws(() => node.getOrSet("k", () => 1, { grace: Infinity }), { name: "RangeError", message: /grace must be a number of milliseconds/ });
    assert.throws(() => node.set("k", 1, { ttl: 10, grace: -1 }), { name: "RangeError", message: 'Cannot set "k": grace must be a number of milliseconds, 0 or more: received -1' });
    assert.throws(() => node.get("k", { allowStale: "yes" } as unknown as { allowStale: boolean }), { name: "TypeError", message: 'Cannot get "k": allowStale must be a boolean: received "yes"' });
    assert.throws(() => node.get("k", 5 as unknown as { allowStale: boolean }), { name: "TypeError" });
    assert.throws(() => new Node({ grace: -5 }), { name: "RangeError" });
    assert.throws(() => node.getOrSet("k", () => 1, { nullTtl: -1 }), { name: "RangeError" });
    assert.throws(() => node.getOrSet("k", () => 1, "fast" as unknown as { ttl: number }), { name: "TypeError" });
    assert.throws(() => new Node({ nullTtl: -5 }), { name: "RangeError" });
    await assert.rejects(new Node().getOrSet("k", () => 1), { code: "ERR_NOT_STARTED" });
    await node.stop();
    await assert.rejects(node.getOrSet("k", () => 1), { code: "ERR_STOPPED" });
  });
});

/** Heartbeats that never fire unless the test moves the clock that far. */
const QUIET = { heartbeatInterval: 1e9, peerTimeout: 2e9 };

/** Errors a node reports as `error` events, as they come. */
function errorsOn(node: Node): Error[] {
  const errors: Error[] = [];
  node.on("error", (error) => errors.push(error));
  return errors;
}

describe("Grace: stale values, on a clock moved by hand", () => {
  for (const placement of ["local", "hash"] as const) {
    it(`placement "${placement}": past its ttl an entry is stale for its grace: get misses it unless allowStale, getOrSet returns it and refreshes it once, a failed refresh is an error event; after the grace, nothing`, async () => {
      const clock = new ManualClock();
      const [holder, reader] = await startCluster(2, { placement, clock, ...QUIET });
      const errors = errorsOn(reader);
      await holder.set("price", 10, { ttl: 1_000, grace: 5_000 });
      clock.advance(999);
      assert.deepEqual([await holder.get("price"), await reader.get("price")], [10, 10]);
      clock.advance(1);
      assert.deepEqual([await holder.get("price"), await reader.get("price")], [null, null], "plain gets past the ttl");
      const stale = { allowStale: true };
      assert.deepEqual([await holder.get("price", stale), await reader.get("price", stale)], [10, 10], "gets with allowStale");
      assert.deepEqual([...holder.keys(), ...reader.keys()], [], "stale keys listed");
      assert.deepEqual(await holder.mget(["price"]), [null]);

      // A refresh that fails: the stale value is served, and the failure reported.
      let failedCalls = 0;
      const failing = () => {
        failedCalls++;
        throw new Error("source down");
      };
      assert.equal(await reader.getOrSet("price", failing, { ttl: 1_000, grace: 5_000 }), 10);
      await waitFor("the failed refresh to be reported", () => errors.length === 1);
      assert.equal(failedCalls, 1);
      assert.equal((errors[0] as { code?: string }).code, "ERR_FETCH");
      assert.match(errors[0].message, /^Cannot refresh the stale value of "price", which is served until its grace runs out: .*source down/);
      assert.equal(reader.stats().refreshErrors, 1);

      // One refresh at a time in the cluster: while it runs, every getOrSet gets the stale value.
      const { load, open, contexts } = gatedLoader(11);
      const during = await Promise.all([holder, reader, holder, reader].map((node) => node.getOrSet("price", load, { ttl: 1_000, grace: 5_000 })));
      assert.deepEqual(during, [10, 10, 10, 10]);
      assert.equal(contexts.length, 1, "refreshes begun by four concurrent getOrSets");
      open();
      await waitFor("the refreshed value on both nodes", async () => (await holder.get("price")) === 11 && (await reader.get("price")) === 11);
      const stats = [holder.stats(), reader.stats()];
      assert.equal(stats[0].refreshes + stats[1].refreshes, 2);
      assert.ok(stats[0].staleHits + stats[1].staleHits >= 7, "stale hits counted");

      // Past its grace the entry is gone: getOrSet loads and waits, and a failure fails the call.
      clock.advance(6_000);
      assert.deepEqual([await holder.get("price", stale), await reader.get("price", stale)], [null, null], "gets with allowStale past the grace");
      await assert.rejects(reader.getOrSet("price", failing), { code: "ERR_FETCH", message: /the loader failed: source down/ });
      assert.equal(errors.length, 1, "error events: a failure past the grace is the call's");
    });

    it(`placement "${placement}": a soft timeout returns the stale value when the loader is slower, and stores the late value; a faster loader's value is returned; a hard timeout ends the refresh`, async () => {
      const clock = new ManualClock();
      const [holder, reader] = await startCluster(2, { placement, clock, ...QUIET });
      const errors = errorsOn(holder);
      const options = { ttl: 1_000, grace: 60_000, timeout: 500 };
      await holder.set("rate", 1, options);
      clock.advance(1_000);

      const slow = gatedLoader(2);
      let returned: unknown = "not yet";
      const call = reader.getOrSet("rate", slow.load, options).then((value) => (returned = value));
      await waitFor("the refresh to start", () => slow.contexts.length === 1);
      assert.equal(returned, "not yet", "returned before the soft timeout");
      clock.advance(500);
      assert.equal(await call, 1, "the stale value, at the soft timeout");
      slow.open();
      await waitFor("the late value on both nodes", async () => (await holder.get("rate")) === 2 && (await reader.get("rate")) === 2);

      clock.advance(1_000);
      assert.equal(await reader.getOrSet("rate", () => 3, options), 3, "a loader that finishes within the soft timeout");
      assert.equal(reader.stats().staleHits, 1);

      clock.advance(1_000);
      assert.equal(await holder.getOrSet("rate", () => new Promise(() => {}), { ...options, timeout: 0, hardTimeout: 2_000 }), 3, "at once, with timeout 0");
      clock.advance(2_000);
      await waitFor("the hung refresh to be reported", () => errors.length === 1);
      assert.match(errors[0].message, /did not finish within 2000 ms/);
      assert.equal(await reader.get("rate", { allowStale: true }), 3, "the stale value after the hard timeout");
    });
  }

  for (const placement of ["local", "hash"] as const) {
    it(`placement "${placement}": a near copy is never stale; a negative entry gets no grace; a refresh that finds null within the soft timeout leaves the stale value; with a failing fetch a stale get still gets it`, async () => {
      const clock = new ManualClock();
      const [holder, reader] = await startCluster(2, { placement, clock, nearCache: true, ...QUIET, requestTimeout: 2e9 });
      await holder.set("near", "v", { ttl: 1_000, grace: 10_000 });
      assert.equal(await reader.get("near"), "v");
      clock.advance(1_000);
      assert.equal(await reader.get("near"), null, "a plain get past the ttl, from the node that read it");
      assert.equal(await reader.get("near", { allowStale: true }), "v");

      assert.equal(await reader.getOrSet("none", () => null, { nullTtl: 1_000, grace: 60_000 }), null);
      clock.advance(1_000);
      let loads = 0;
      assert.equal(await reader.getOrSet("none", () => (loads++, "found")), "found", "a negative entry past its nullTtl is gone");
      assert.equal(loads, 1);

      await holder.set("p", 10, { ttl: 1_000, grace: 10_000 });
      clock.advance(1_000);
      assert.equal(await reader.getOrSet("p", () => null, { timeout: 500 }), 10, "a refresh that found null");
      assert.equal(await holder.get("p", { allowStale: true }), 10);

      const fetching = await startCluster(2, { placement, clock, ...QUIET, fetch: (_key, done) => done(new Error("source down")) });
      await fetching[0].set("f", "stale", { ttl: 1_000, grace: 10_000 });
      clock.advance(1_000);
      assert.deepEqual(await Promise.all(fetching.map((node) => node.get("f", { allowStale: true }))), ["stale", "stale"], "stale gets, with fetch failing");
      assert.deepEqual(await Promise.all(fetching.map((node) => node.get("f"))), [null, null], "plain gets: fetch failed, and the stale value is not theirs");
    });
  }

  it("grace travels with the entry: a stale entry handed over on stop, or kept as a copy and promoted, stays stale for the rest of its grace", async () => {
    for (const placement of ["local", "hash"] as const) {
      const clock = new ManualClock();
      const nodes = await startCluster(3, { placement, clock, replicas: 1, ...QUIET });
      for (let i = 0; i < 20; i++) await nodes[i % 3].set(`k${i}`, i, { ttl: 1_000, grace: 10_000 });
      clock.advance(2_000);
      await nodes[0].stop();
      for (let i = 0; i < 20; i++) {
        assert.equal(await nodes[1 + (i % 2)].get(`k${i}`), null, `${placement}: plain get of k${i}`);
        assert.equal(await nodes[1 + (i % 2)].get(`k${i}`, { allowStale: true }), i, `${placement}: stale get of k${i}`);
      }
      clock.advance(9_000);
      for (let i = 0; i < 20; i++) assert.equal(await nodes[1 + (i % 2)].get(`k${i}`, { allowStale: true }), null, `${placement}: k${i} past its grace`);
    }
  });

  it("get with the fetch option replaces a stale value with the fetched one; a null from a loader kept for nullTtl is counted", async () => {
    for (const placement of ["local", "hash"] as const) {
      const clock = new ManualClock();
      let fetches = 0;
      const [holder, reader] = await startCluster(2, { placement, clock, ...QUIET, fetch: (_key, done) => done(null, `fetched ${++fetches}`) });
      await holder.set("k", "old", { ttl: 1_000, grace: 5_000 });
      clock.advance(1_000);
      assert.equal(await reader.get("k"), "fetched 1", placement);
      assert.deepEqual([await holder.get("k"), await reader.get("k")], ["fetched 1", "fetched 1"], placement);
      assert.equal(fetches, 1, placement);
      assert.equal(await reader.getOrSet("missing", () => null, { nullTtl: 1_000 }), null, placement);
      assert.equal(reader.stats().negativeSets, 1, placement);
    }
  });
});
