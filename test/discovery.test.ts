// Finding members: a master host name that resolves to several addresses, and the discover
// option, with a resolver and a list of addresses that the test controls.
import { afterEach, assert, describe, it, startNode, stopAll, track, waitFor, within } from "../deps.ts";
import { type Address, KosyakError, Node, type Seed } from "../mod.ts";
import { FAST } from "./workloads.ts";

afterEach(stopAll);

describe("Discovery", () => {
  it("a master host name is resolved and every address is tried until one answers", async () => {
    const first = await startNode();
    const asked: string[] = [];
    // The first address has no node on it (the node listens on 127.0.0.1 only).
    const resolve = (host: string) => (asked.push(host), host === "cache.internal" ? ["::1", "127.0.0.1"] : [host]);
    const second = await startNode({ master: { host: "cache.internal", port: first.address.port }, resolve, connectAttempts: 1 });
    assert.deepEqual(asked, ["cache.internal"]);
    assert.equal(second.stats().peers, 1);
  });

  it("nodes that started apart find each other through discover once it names them, and become one cluster", async () => {
    const registry: Seed[] = [];
    const discover = () => registry;
    const nodes = [await startNode({ ...FAST, discover }), await startNode({ ...FAST, discover }), await startNode({ ...FAST, discover })];
    assert.deepEqual(nodes.map((node) => node.stats().peers), [0, 0, 0]);
    // Two of the three are named: the third joins them, and each of them learns of it from the other.
    registry.push(...nodes.slice(0, 2).map((node): Address => node.address));
    await waitFor("all three to form one cluster", () => nodes.every((node) => node.stats().peers === 2), 10_000);
    await nodes[0].set("k", "v");
    assert.equal(await nodes[2].get("k"), "v");
  });

  it("a discover that throws is reported as an error event, and the node starts all the same", async () => {
    const node = track(new Node({ port: 0, discover: () => { throw new Error("registry unreachable"); } }));
    const reported = new Promise<Error>((resolve) => node.on("error", resolve));
    await node.init().ready();
    const error = await within("the error event", reported);
    assert.ok(error instanceof KosyakError && /discover failed: registry unreachable/.test(error.message), String(error));
  });

  it("a discover that never answers holds up neither the start nor the stop, and is reported once requestTimeout is up", async () => {
    const node = track(new Node({ port: 0, requestTimeout: 200, discover: () => new Promise<Seed[]>(() => {}) }));
    const reported = new Promise<Error>((resolve) => node.on("error", resolve));
    await within("the start", node.init().ready());
    const error = await within("the error event", reported);
    assert.match(error.message, /discover failed: it took longer than requestTimeout \(200 ms\)/);
    await within("the stop", node.stop());
  });

  it("a discover that gives something else than a list of { host, port } is reported as an error event", async () => {
    const node = track(new Node({ port: 0, discover: () => [{ host: 7, port: 1 }] as never }));
    const reported = new Promise<Error>((resolve) => node.on("error", resolve));
    await node.init().ready();
    assert.match((await within("the error event", reported)).message, /discover must give a list of \{ host, port \}/);
  });

  it("Node rejects a discover or resolve that is not a function", () => {
    assert.throws(() => new Node({ discover: [] as never }), /discover must be a function: received an array/);
    assert.throws(() => new Node({ resolve: "dns" as never }), /resolve must be a function: received "dns"/);
  });
});
