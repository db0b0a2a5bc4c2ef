// KeyvStore (kosyak/keyv): the official @keyv/test-suite on a cluster of two nodes, writing
// through one and reading through the other (with a near cache), under every runtime; then
// cache-manager v7 on top of it.
import KeyvTestSuite from "@keyv/test-suite";
import { createCache } from "cache-manager";
import Keyv from "keyv";
import { afterEach, assert, beforeEach, describe, expect, it, startNode, stopAll } from "../deps.ts";
import KeyvStoreFromSubpath from "../keyv.ts";
import { KeyvStore, type Node } from "../mod.ts";

/** A store that writes through one node and reads through another. */
class SplitStore extends KeyvStore {
  readonly #reader: KeyvStore;

  constructor(writer: Node, reader: Node) {
    super(writer);
    this.#reader = new KeyvStore(reader);
  }

  override get(key: string): Promise<unknown> {
    return this.#reader.get(key);
  }

  override getMany(keys: string[]): Promise<unknown[]> {
    return this.#reader.getMany(keys);
  }

  override has(key: string): Promise<boolean> {
    return this.#reader.has(key);
  }

  override iterator(namespace?: string): AsyncGenerator<[string, unknown]> {
    return this.#reader.iterator(namespace);
  }
}

let writer: Node;
let reader: Node;

/** The part of vitest's API that @keyv/test-suite calls, on this runtime's runner. */
const runner = {
  it: (name: string, body: (context: { expect: typeof expect }) => unknown) => it(name, async () => void (await body({ expect }))),
  beforeEach,
  afterEach,
};

describe("KeyvStore under @keyv/test-suite, writing through one node and reading through another", () => {
  // Registered before the suite's own beforeEach, which already needs a store.
  beforeEach(async () => {
    writer = await startNode();
    reader = await startNode({ master: writer.address, nearCache: true });
  });
  afterEach(stopAll);
  // api, values and namespace tests. Keyv 5 wires a store's iterator only for the stores it knows
  // by name (sqlite, postgres, redis, ...), so the suite's iterator tests cannot reach ours
  // through Keyv: see the iterator test below.
  KeyvTestSuite(runner as never, Keyv, () => new SplitStore(writer, reader));
});

describe("KeyvStore", () => {
  afterEach(stopAll);

  it("kosyak/keyv names the same class as mod.ts", () => {
    assert.equal(KeyvStoreFromSubpath, KeyvStore);
  });

  it("iterator walks every entry of the cluster, of one namespace when given, and clear of a namespace leaves the others", async () => {
    const first = await startNode();
    const second = await startNode({ master: first.address });
    const store = new KeyvStore(first);
    await new KeyvStore(second).set("one:a", "1");
    await store.set("one:b", "2");
    await store.set("two:c", "3");
    const all = new Map<string, unknown>();
    for await (const [key, value] of store.iterator()) all.set(key, value);
    assert.deepEqual(all, new Map([["one:a", "1"], ["one:b", "2"], ["two:c", "3"]]));
    const one: string[] = [];
    for await (const [key] of store.iterator("one")) one.push(key);
    assert.deepEqual(one.sort(), ["one:a", "one:b"]);
    store.namespace = "one";
    await store.clear();
    assert.deepEqual(await new KeyvStore(second).getMany(["one:a", "one:b", "two:c"]), [undefined, undefined, "3"]);
  });

  it("clear of a namespace on a bounded cluster with replicas leaves no key of it readable anywhere", async () => {
    // Evicted entries' copies outlived them, out of reach of clear: no directory listed them.
    const options = { replicas: 1, maxEntries: 10 };
    const nodes = [await startNode(options)];
    for (let i = 0; i < 2; i++) nodes.push(await startNode({ ...options, master: nodes[0].address }));
    const store = new KeyvStore(nodes[0]);
    store.namespace = "ns";
    const keys = Array.from({ length: 30 }, (_, i) => `ns:k${i}`);
    for (const key of keys) await store.set(key, key);
    const other = new KeyvStore(nodes[1]);
    other.namespace = "ns";
    await other.clear();
    for (const node of nodes) assert.deepEqual((await node.mget(keys)).filter((value) => value !== null), [], `keys ${node.id} still reads`);
  });

  it("a cache-manager v7 cache over Keyv over kosyak shares values between two nodes", async () => {
    const first = await startNode();
    const second = await startNode({ master: first.address, nearCache: true });
    const cacheOn = (node: Node) => createCache({ stores: [new Keyv({ store: new KeyvStore(node) })] });
    const [a, b] = [cacheOn(first), cacheOn(second)];
    await a.set("user:1", { name: "Kosyak" }, 60_000);
    assert.deepEqual(await b.get("user:1"), { name: "Kosyak" });
    let calls = 0;
    const load = async () => ++calls;
    assert.equal(await b.wrap("computed", load, 60_000), 1);
    assert.equal(await a.wrap("computed", load, 60_000), 1, "the value b computed is a's too");
    assert.equal(await a.del("user:1"), true);
    assert.equal(await b.get("user:1"), undefined);
  });
});
