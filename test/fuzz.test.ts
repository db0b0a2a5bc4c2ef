// Property-based fuzzing of the wire protocol with fast-check: the frame decoder (through a real
// socket, with frames cut at random places) and message handling (random messages from a peer
// that completed the handshake). Each property runs once with a fixed seed and once with a
// random one; fast-check prints the seed of any failure so that it can be replayed.
import fc from "fast-check";
import { connect, type Socket } from "node:net";
import { afterEach, assert, describe, frame, it, rawConnect, startCluster, stopAll, waitFor, within } from "../deps.ts";
import type { Address, Node } from "../mod.ts";

afterEach(stopAll);

const SEEDS = [{ seed: 20261125 }, {}];
const RUNS = 25;
/** A key the random messages never name, to check that the node still serves. */
const GUARD = "a key no fuzzed message names: 7c1f0d";

/**
 * A connection that completed the handshake; `answers()` gives the answers that came after it
 * (not the node's own requests, such as heartbeats or asking its members for theirs).
 */
async function handshaken(address: Address, id: string) {
  const raw = await rawConnect(address);
  raw.socket.write(frame({ op: "hello", version: 9, placement: "local", id, host: "127.0.0.1", port: 9, nonce: "0".repeat(32) }));
  assert.equal((await raw.next()).op, "welcome");
  await raw.exchangeKeys();
  const start = raw.messages.length;
  return { socket: raw.socket, answers: () => raw.messages.slice(start).filter((m) => m.op === "ok" || m.op === "fail") };
}

/** Writes `bytes` in pieces cut at the given offsets, each piece its own write. */
async function writeInPieces(socket: Socket, bytes: Uint8Array, cuts: number[]): Promise<void> {
  const offsets = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
  let start = 0;
  for (const end of [...offsets, bytes.length]) {
    if (end > start) await new Promise<void>((resolve) => socket.write(bytes.subarray(start, end), () => resolve()));
    start = end;
  }
}

const concat = (frames: Uint8Array[]): Uint8Array => {
  const out = new Uint8Array(frames.reduce((n, f) => n + f.length, 0));
  let offset = 0;
  for (const f of frames) {
    out.set(f, offset);
    offset += f.length;
  }
  return out;
};

describe("Fuzzing the protocol", () => {
  for (const [i, seed] of SEEDS.entries()) {
    const label = i === 0 ? "a fixed seed" : "a random seed";

    it(`requests cut into random pieces each get their answer, in order (${label})`, async () => {
      const [node]: Node[] = await startCluster(1);
      const values = new Map<string, unknown>();
      await fc.assert(
        fc.asyncProperty(
          fc.array(fc.tuple(fc.string({ maxLength: 20 }), fc.jsonValue({ maxDepth: 3 })), { minLength: 1, maxLength: 20 }),
          fc.array(fc.nat(), { maxLength: 30 }),
          async (entries, cuts) => {
            for (const [key, value] of entries) {
              await node.set(key, value);
              values.set(key, JSON.parse(JSON.stringify(value)));
            }
            const peer = await handshaken(node.address, `fuzz-${Math.random()}`);
            const keys = entries.map(([key]) => key);
            await writeInPieces(peer.socket, concat(keys.map((key, rid) => frame({ op: "get", rid: rid + 1, keys: [key] }))), cuts);
            await waitFor("every answer", () => peer.answers().length === keys.length);
            assert.deepEqual(peer.answers().map((m) => m.rid), keys.map((_, rid) => rid + 1));
            assert.deepEqual(peer.answers().map((m) => (m.values as unknown[][])[0][0]), keys.map((key) => values.get(key)));
            peer.socket.destroy();
          },
        ),
        { ...seed, numRuns: RUNS },
      );
    }, 60_000);

    it(`random bytes before the handshake never hurt the node (${label})`, async () => {
      const [node, friend] = await startCluster(2);
      await node.set(GUARD, "v");
      await fc.assert(
        fc.asyncProperty(fc.uint8Array({ maxLength: 2048 }), fc.array(fc.nat(), { maxLength: 8 }), async (bytes, cuts) => {
          const socket = connect(node.address.port, "127.0.0.1");
          socket.on("error", () => {});
          await new Promise<void>((resolve) => socket.once("connect", resolve));
          await writeInPieces(socket, bytes, cuts);
          assert.equal(await within("a get from the friend", friend.get(GUARD)), "v");
          socket.destroy();
        }),
        { ...seed, numRuns: RUNS },
      );
      await waitFor("the node to let go of every fuzzing connection", () => node.stats().connections === 1);
    }, 60_000);

    it(`random messages from a handshaken peer never hurt the node (${label})`, async () => {
      const [node, friend] = await startCluster(2);
      await node.set(GUARD, "v");
      const ops = ["get", "own", "drop", "gone", "fetch", "stats", "peers", "keys", "member", "bye", "ping", "ok", "fail", "duplicate", "hello", "nonsense"];
      const field = fc.oneof(fc.jsonValue({ maxDepth: 2 }), fc.string(), fc.integer(), fc.array(fc.tuple(fc.string(), fc.integer(), fc.integer())));
      const message = fc.record(
        { op: fc.constantFrom(...ops), rid: fc.oneof(fc.nat(), fc.constant(undefined), fc.string()), key: field, keys: field, version: field, id: field, host: field, port: field },
        { requiredKeys: ["op"] },
      );
      await fc.assert(
        fc.asyncProperty(fc.array(message, { minLength: 1, maxLength: 10 }), async (messages) => {
          const peer = await handshaken(node.address, `fuzz-${Math.random()}`);
          peer.socket.write(concat(messages.map(frame)));
          assert.equal(await within("a get from the friend", friend.get(GUARD)), "v");
          assert.equal(await within("a get on the node", node.get(GUARD)), "v");
          peer.socket.destroy();
        }),
        { ...seed, numRuns: RUNS },
      );
      await waitFor("the node to let go of every fuzzing connection", () => node.stats().connections === 1);
      assert.equal(await friend.get(GUARD), "v");
    }, 60_000);
  }
});
