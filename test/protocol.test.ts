// The wire protocol seen from a raw socket: handshake, refusals and bad frames.
import { afterEach, assert, describe, frame, it, rawConnect, startCluster, startNode, stopAll, waitFor, within } from "../deps.ts";

afterEach(stopAll);

const hello = (extra: Record<string, unknown> = {}) => ({
  op: "hello", version: 9, placement: "local", id: "raw-peer", host: "127.0.0.1", port: 9, ...extra,
});

describe("Protocol", () => {
  it("a hello gets a welcome with the node's id and address, then the node's keys", async () => {
    const node = await startNode();
    await node.set("k", 1);
    const raw = await rawConnect(node.address);
    raw.socket.write(frame(hello()));
    const welcome = await raw.next();
    assert.equal(welcome.op, "welcome");
    assert.equal(welcome.version, 9);
    assert.equal(welcome.placement, "local");
    assert.equal(welcome.id, node.id);
    assert.equal(welcome.port, node.address.port);
    const keys = await raw.next();
    assert.equal(keys.op, "keys");
    assert.deepEqual((keys.keys as unknown[][]).map((pair) => pair[0]), ["k"]);
    assert.equal(keys.done, true);
    raw.socket.write(frame({ op: "get", rid: 1, keys: ["k"] }));
    // The value, the ms it has left (0: no expiry), and its size ("k" and "1").
    assert.deepEqual(await raw.next(), { op: "ok", rid: 1, values: [[1, 0, 2]] });
    raw.socket.destroy();
  });

  it("peers lists the other members, and with ids only those of them it has", async () => {
    const [a, b, c] = await startCluster(3);
    const raw = await rawConnect(a.address);
    raw.socket.write(frame(hello()));
    assert.equal((await raw.next()).op, "welcome");
    await raw.exchangeKeys();
    const ids = (answer: Record<string, unknown>) => (answer.peers as Array<{ id: string; port: number }>).map(({ id, port }) => [id, port]).sort();
    raw.socket.write(frame({ op: "peers", rid: 1 }));
    assert.deepEqual(ids(await raw.next()), [[b.id, b.address.port], [c.id, c.address.port]].sort());
    raw.socket.write(frame({ op: "peers", rid: 2, ids: [c.id, "not a member"] }));
    assert.deepEqual(ids(await raw.next()), [[c.id, c.address.port]]);
    raw.socket.write(frame({ op: "peers", rid: 3, ids: "not a list" }));
    await within("the node to close a connection that sent a malformed peers", raw.closed);
    assert.equal(a.stats().peers, 2);
  });

  it("a hello with another protocol version is refused with the reason, and closed", async () => {
    const node = await startNode();
    const raw = await rawConnect(node.address);
    raw.socket.write(frame(hello({ version: 99 })));
    const refusal = await raw.next();
    assert.equal(refusal.op, "refuse");
    assert.match(String(refusal.reason), /protocol version 99 is not 9/);
    await within("the node to close the connection", raw.closed);
  });

  it("garbage, an oversized frame, or a request before hello closes that connection only", async () => {
    const [a, b] = await startCluster(2);
    const attacks: Uint8Array[] = [
      new Uint8Array([0, 0, 0, 3, 0x7b, 0x7b, 0x7b]),
      new Uint8Array([0xff, 0xff, 0xff, 0xff, 1, 2, 3]),
      frame({ op: "get", rid: 1, keys: ["k"] }),
      frame([1, 2, 3]),
    ];
    for (const bytes of attacks) {
      const raw = await rawConnect(a.address);
      raw.socket.write(bytes);
      await within("the node to close a bad connection", raw.closed);
    }
    await a.set("still", "serving");
    assert.equal(await b.get("still"), "serving");
    assert.equal(a.stats().peers, 1);
  });

  it("before the handshake, a frame over 64 KiB closes the connection before it is buffered", async () => {
    const node = await startNode();
    const errors: Error[] = [];
    node.on("error", (error) => errors.push(error));
    const raw = await rawConnect(node.address);
    const header = new Uint8Array(4);
    new DataView(header.buffer).setUint32(0, 1024 * 1024);
    raw.socket.write(header);
    raw.socket.write(new Uint8Array(1000));
    await within("the node to close the connection", raw.closed);
    assert.match(errors[0]?.message ?? "", /frame of 1048576 bytes exceeds the limit of 65536/);
  });

  it("writes while a replaced connection waits, closed, for the one that replaces it complete without error", async () => {
    const node = await startNode({ requestTimeout: 500 });
    const raw = await rawConnect(node.address);
    raw.socket.write(frame(hello()));
    assert.equal((await raw.next()).op, "welcome");
    await raw.exchangeKeys();
    // The raw peer says another connection replaces this one, then closes it and sends none.
    raw.socket.write(frame({ op: "duplicate" }));
    raw.socket.end();
    await within("the node to see the close", raw.closed);
    for (let i = 0; i < 3; i++) assert.equal(await within(`set ${i}`, node.set(`k${i}`, i)), i);
    await node.remove("k0");
    assert.deepEqual(await node.mget(["k0", "k1", "k2"]), [null, 1, 2]);
  });

  it("a holder's malformed answers to gets make those gets miss, never throw, and never push versions past 2^50", async () => {
    const node = await startNode({ requestTimeout: 1_000 });
    const raw = await rawConnect(node.address);
    raw.socket.write(frame(hello()));
    assert.equal((await raw.next()).op, "welcome");
    await raw.exchangeKeys([["k", 5, 0]]);
    await waitFor("the node to know that the raw peer holds k", () => node.has("k"));
    const answers = [[[null, "raw-peer", 1e300, 0, "raw-peer"]], [null], [[1, 2]], [[1, -1, 2]], [[1, 0, "2"]], "not a list", [[null, node.id, -1, 0, node.id]], [[null, node.id, 3, 0, 7]]];
    for (const values of answers) {
      const got = node.get("k");
      const request = await raw.next();
      assert.deepEqual([request.op, request.keys], ["get", ["k"]]);
      raw.socket.write(frame({ op: "ok", rid: request.rid, values }));
      assert.equal(await within(`the get answered with ${JSON.stringify(values)}`, got), null);
    }
    await node.set("mine", 1);
    const versions: number[] = [];
    node.eachEntry((_value, _key, entry) => versions.push(entry.version));
    assert.ok(versions.every((version) => version <= 2 ** 50), `versions: ${versions}`);
    assert.equal(node.stats().peers, 1);
    raw.socket.destroy();
  });

  it("a connection that never says hello is closed after requestTimeout", async () => {
    const node = await startNode({ requestTimeout: 200 });
    const raw = await rawConnect(node.address);
    await within("the node to close a silent connection", raw.closed, 3_000);
  });

  it("an answer that comes after its request timed out is ignored, not taken for a breach", async () => {
    const node = await startNode({ requestTimeout: 200 });
    const raw = await rawConnect(node.address);
    raw.socket.write(frame(hello()));
    assert.equal((await raw.next()).op, "welcome");
    await raw.exchangeKeys();
    const stats = node.clusterStats();
    const request = await raw.next();
    assert.equal(request.op, "stats");
    assert.equal((await stats).length, 1, "the silent raw peer is left out");
    raw.socket.write(frame({ op: "ok", rid: request.rid, stats: {} }));
    raw.socket.write(frame({ op: "get", rid: 1, keys: ["nothing"] }));
    assert.deepEqual(await raw.next(), { op: "ok", rid: 1, values: [[]] });
    assert.equal(node.stats().peers, 1);
    raw.socket.destroy();
  });

  it("a version beyond 2^50 is a protocol error: that connection closes, the node reports it and keeps working", async () => {
    const [a, b] = await startCluster(2);
    const errors: Error[] = [];
    a.on("error", (error) => errors.push(error));
    const raw = await rawConnect(a.address);
    raw.socket.write(frame(hello()));
    await raw.next();
    raw.socket.write(frame({ op: "own", rid: 1, keys: [["k", Number.MAX_SAFE_INTEGER, 0]] }));
    await within("the node to close the connection", raw.closed);
    assert.equal(errors.length, 1);
    assert.match(errors[0].message, /\[key, version, ttl, writer, from or \[value, expires, grace\], grace\]/);
    await a.set("x", 1);
    assert.equal(await b.get("x"), 1);
  });
});

