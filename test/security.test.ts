// Trust: the shared secret, TLS, and the limits that keep one connection from taking everything.
import {
  afterEach, assert, describe, frame, it, makeCertificates, rawConnect, startCluster, startNode, stopAll, type TestCertificates, waitFor, within,
} from "../deps.ts";
import { KosyakError, type Node } from "../mod.ts";

afterEach(stopAll);

/** HMAC-SHA-256 as kosyak's handshake computes it, for a client written by hand. */
async function proof(secret: string, role: string, transcript: string[]): Promise<string> {
  const key = await crypto.subtle.importKey("raw", new TextEncoder().encode(secret), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  const signature = await crypto.subtle.sign("HMAC", key, new TextEncoder().encode([role, ...transcript].join("\n")));
  return Array.from(new Uint8Array(signature), (b) => b.toString(16).padStart(2, "0")).join("");
}

function recordErrors(node: Node): Error[] {
  const errors: Error[] = [];
  node.on("error", (error) => errors.push(error));
  return errors;
}

const NONCE = "0123456789abcdef0123456789abcdef";

describe("Shared secret", () => {
  it("nodes that share a secret form a cluster", async () => {
    const nodes = await startCluster(3, { secret: "kosyak's secret" });
    await nodes[0].set("k", "v");
    assert.equal(await nodes[2].get("k"), "v");
    assert.equal(nodes[1].stats().peers, 2);
  });

  it("a client that proves the secret is welcomed, and the secret never crosses the wire", async () => {
    const secret = "never on the wire";
    const node = await startNode({ secret });
    await node.set("k", 1);
    const raw = await rawConnect(node.address);
    raw.socket.write(frame({ op: "hello", version: 9, placement: "local", id: "hand-written", host: "127.0.0.1", port: 9, nonce: NONCE }));
    await waitFor("the challenge", () => raw.messages.length === 1);
    const challenge = raw.messages[0];
    assert.equal(challenge.op, "challenge");
    const transcript = [NONCE, String(challenge.nonce), "hand-written", node.id];
    assert.equal(challenge.proof, await proof(secret, "accept", transcript), "the node proves it knows the secret");
    raw.socket.write(frame({ op: "prove", proof: await proof(secret, "dial", transcript) }));
    await waitFor("welcome and keys", () => raw.messages.length === 3);
    assert.deepEqual(raw.messages.slice(1).map((m) => m.op), ["welcome", "keys"]);
    assert.equal(raw.text().includes(secret), false);
    raw.socket.destroy();
  });

  it("a member that proves the secret but says hello without a port it listens on is refused, and the node keeps serving", async () => {
    const secret = "shared";
    const node = await startNode({ secret });
    await node.set("k", 1);
    for (const [i, port] of [0, "9", 70_000].entries()) {
      const raw = await rawConnect(node.address);
      raw.socket.write(frame({ op: "hello", version: 9, placement: "local", id: `portless-${i}`, host: "127.0.0.1", port, nonce: NONCE }));
      await within("the node to close the connection", raw.closed);
      assert.deepEqual(raw.messages.map((m) => m.op), ["refuse"]);
      assert.match(String(raw.messages[0].reason), /port/);
    }
    const peer = await startNode({ secret, master: node.address });
    assert.equal(await peer.get("k"), 1);
  });

  it("a client without the secret is refused before it learns any key, and the node reports it", async () => {
    const node = await startNode({ secret: "right" });
    const errors = recordErrors(node);
    await node.set("hidden", 1);
    const raw = await rawConnect(node.address);
    raw.socket.write(frame({ op: "hello", version: 9, placement: "local", id: "intruder", host: "127.0.0.1", port: 9, nonce: NONCE }));
    await waitFor("the challenge", () => raw.messages.length === 1);
    raw.socket.write(frame({ op: "prove", proof: "0".repeat(64) }));
    await within("the node to close the connection", raw.closed);
    assert.deepEqual(raw.messages.map((m) => m.op), ["challenge", "refuse"]);
    assert.equal(raw.text().includes("hidden"), false);
    assert.ok(errors.some((e) => e instanceof KosyakError && e.code === "ERR_AUTH"), errors.map(String).join());
    assert.equal(node.stats().peers, 0);
  });

  it("a node with a wrong secret, or none, cannot join; both sides say why", async () => {
    const node = await startNode({ secret: "right" });
    const errors = recordErrors(node);
    for (const options of [{ secret: "wrong" }, {}]) {
      const err = await startNode({ ...options, master: node.address, connectAttempts: 1 }).then(() => null, (e) => e);
      assert.ok(err instanceof KosyakError, String(err));
      assert.equal(err.code, "ERR_AUTH");
    }
    await waitFor("the node to report both refusals", () => errors.filter((e) => (e as KosyakError).code === "ERR_AUTH").length === 2);
    assert.equal(node.stats().peers, 0);
  });

  it("a node with a secret will not join a node that has none", async () => {
    const open = await startNode();
    await assert.rejects(startNode({ secret: "s", master: open.address, connectAttempts: 1 }), { code: "ERR_AUTH" });
  });
});

describe("TLS", () => {
  let certificates: TestCertificates | undefined;
  const tls = () => (certificates ??= makeCertificates());

  it("a TLS cluster works like a plain one", async () => {
    const nodes = await startCluster(3, { tls: tls(), secret: "and a secret" });
    await nodes[1].set("k", { over: "tls" });
    assert.deepEqual(await nodes[0].get("k"), { over: "tls" });
    assert.deepEqual(await nodes[2].get("k"), { over: "tls" });
  });

  it("a plain node cannot join a TLS node", async () => {
    const secure = await startNode({ tls: tls() });
    await assert.rejects(startNode({ master: secure.address, connectAttempts: 1, requestTimeout: 1_000 }), KosyakError);
    assert.equal(secure.stats().peers, 0);
  });

  it("a node whose certificate comes from another CA cannot join", async () => {
    const secure = await startNode({ tls: tls() });
    const stranger = makeCertificates();
    await assert.rejects(startNode({ tls: stranger, master: secure.address, connectAttempts: 1, requestTimeout: 1_000 }), { code: "ERR_CONNECT" });
    assert.equal(secure.stats().peers, 0);
  });
});

describe("Limits", () => {
  it("connections past maxConnections are closed at once and reported", async () => {
    const node = await startNode({ maxConnections: 2 });
    const errors = recordErrors(node);
    const held = [await rawConnect(node.address), await rawConnect(node.address)];
    const extra = await rawConnect(node.address);
    await within("the extra connection to be closed", extra.closed);
    assert.ok(errors.some((e) => /maxConnections \(2\) reached/.test(e.message)));
    for (const raw of held) raw.socket.destroy();
  });

  it("a peer that stops reading is disconnected once maxQueueBytes wait for it", async () => {
    const node = await startNode({ maxQueueBytes: 64 * 1024 });
    await node.set("big", "x".repeat(32 * 1024));
    const down: string[] = [];
    node.on("peerDown", (peer) => down.push(peer.reason));
    const raw = await rawConnect(node.address);
    raw.socket.write(frame({ op: "hello", version: 9, placement: "local", id: "sleeper", host: "127.0.0.1", port: 9, nonce: NONCE }));
    assert.equal((await raw.next()).op, "welcome");
    await raw.exchangeKeys();
    await waitFor("the node to admit the peer", () => node.stats().peers === 1);
    raw.socket.pause();
    for (let rid = 1; rid <= 200; rid++) raw.socket.write(frame({ op: "get", rid, keys: ["big"] }));
    await waitFor("the stalled peer to be let go", () => down.includes("stalled"), 10_000);
    assert.equal(node.stats().peers, 0);
    raw.socket.destroy();
  });

  it("keys longer than maxKeyLength and values larger than maxValueBytes are refused", async () => {
    const node = await startNode({ maxKeyLength: 8, maxValueBytes: 16 });
    assert.throws(() => node.get("123456789"), { name: "RangeError", message: /maxKeyLength \(8\)/ });
    assert.throws(() => node.set("k", "a value that is too long"), { name: "RangeError", message: /maxValueBytes \(16\)/ });
    assert.throws(() => node.mset({ "123456789": 1 }), RangeError);
    assert.equal(await node.set("k", "short"), "short");
  });
});
