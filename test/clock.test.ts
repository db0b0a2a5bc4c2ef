// Time-driven behaviour on a clock moved by hand: TTL, connection retries and failure detection,
// tested without waiting for real time to pass.
import { createServer, type Server } from "node:net";
import { afterEach, assert, describe, it, ManualClock, startCluster, startNode, stopAll, track, waitFor, within } from "../deps.ts";
import { KosyakError, Node, type NodeEvents } from "../mod.ts";

afterEach(stopAll);

/** Heartbeats that never fire unless the test moves the clock that far. */
const QUIET = { heartbeatInterval: 1e9, peerTimeout: 2e9 };

/** A TCP server on loopback that closes every connection at once, counting them. */
async function slammingDoor(): Promise<{ port: number; connections: () => number }> {
  let count = 0;
  const server: Server = createServer((socket) => {
    count++;
    socket.destroy();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  track({ stop: () => new Promise<void>((resolve) => server.close(() => resolve())) });
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error("the server has no port");
  return { port: address.port, connections: () => count };
}

describe("The node's clock", () => {
  it("an entry expires when the clock passes its ttl, on its node and in a peer's directory", async () => {
    const clock = new ManualClock();
    const [a, b] = await startCluster(2, { clock, ...QUIET });
    await a.set("session", "abc", { ttl: 60_000 });
    await a.set("forever", 1);
    assert.equal(await b.get("session"), "abc");
    clock.advance(59_999);
    assert.equal(await a.get("session"), "abc");
    assert.equal(b.has("session"), true);
    clock.advance(1);
    assert.equal(await a.get("session"), null);
    assert.equal(b.has("session"), false);
    assert.equal(await b.get("session"), null);
    assert.equal(await b.get("forever"), 1);
  });

  it("connection attempts wait connectDelay, then twice, then three times as long", async () => {
    const clock = new ManualClock();
    const door = await slammingDoor();
    const node = track(new Node({ master: { port: door.port }, connectAttempts: 4, connectDelay: 1_000, clock, ...QUIET }));
    const failed = new Promise<Error | null>((resolve) => node.init(resolve));
    for (const [attempt, delay] of [[1, 1_000], [2, 2_000], [3, 3_000]]) {
      await waitFor(`attempt ${attempt} to fail and the wait before the next`, () => door.connections() === attempt && clock.pendingDelays().includes(delay));
      clock.advance(delay - 1);
      assert.equal(door.connections(), attempt, `no attempt before ${delay} ms have passed`);
      clock.advance(1);
    }
    const error = await within("init to give up", failed);
    assert.ok(error instanceof KosyakError && error.code === "ERR_CONNECT", String(error));
    assert.match(error.message, /after 4 attempts/);
    assert.equal(door.connections(), 4);
  });

  it("peers that stay silent for longer than peerTimeout are declared down, with reason timeout", async () => {
    const clock = new ManualClock();
    const options = { clock, heartbeatInterval: 1_000, peerTimeout: 3_000, connectAttempts: 1 };
    const a = await startNode(options);
    const b = await startNode({ ...options, master: a.address });
    const down: Array<NodeEvents["peerDown"]> = [];
    a.on("peerDown", (peer) => down.push(peer));
    clock.advance(3_000);
    assert.equal(down.length, 0, "silent for exactly peerTimeout is not yet down");
    clock.advance(1_000);
    await waitFor("a to report b down", () => down.length === 1);
    assert.deepEqual([down[0].id, down[0].reason], [b.id, "timeout"]);
  });
});
