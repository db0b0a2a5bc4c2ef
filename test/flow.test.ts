// Flow control: a healthy cluster that is merely busy fails no write, loses no key, and takes no
// live member for dead; one that is written faster than it takes writes refuses the excess at
// once, with ERR_OVERLOADED, and holds a bounded queue. Members run in separate processes.
// `npm run burst` runs the first test at full size (8 x 50,000 writes) on every runtime, mixed.
import process from "node:process";
import { afterEach, assert, clusterIt, describe, it, runtime, type Runtime, spawnWorkloadNode, startNode, stopAll, waitFor, type WorkloadNode } from "../deps.ts";
import { KosyakError } from "../mod.ts";
import { cluster } from "./workloads.ts";

afterEach(stopAll);

/** The fault tests' tight failure detection: a busy member has little time to answer. */
const TIGHT = { heartbeatInterval: 200, peerTimeout: 600, requestTimeout: 1_000, replicas: 1 };

interface Burst {
  failed: number;
  errors: Record<string, number>;
  first: string | null;
}

interface Stalls {
  longestMs: number;
  cpuMs: number;
  gcLongestMs: number;
  episodes: Array<{ at: number; lateMs: number; cpuMs: number }>;
}

type MembershipEvent = { at: number; event: string; id: string; reason?: string };

/**
 * Each member's peerDowns and event-loop stalls, in ms since `start`, with the ids of the
 * members: what to read when a live member was declared down.
 */
function timeline(nodes: WorkloadNode[], ids: string[], events: MembershipEvent[][], stalls: Stalls[], start: number): string {
  const nameOf = (id: string) => nodes[ids.indexOf(id)]?.name ?? id;
  return nodes.map((node, i) => {
    const downs = events[i].filter((e) => e.event === "peerDown").map((e) => `${Math.round(e.at - start)} ms: ${nameOf(e.id)} down (${e.reason})`);
    const late = stalls[i].episodes.map((e) => `${Math.round(e.at - start)} ms: ${e.lateMs} ms late (${e.cpuMs} ms of CPU)`);
    return `  ${node.name}: ${[...downs, ...late].join("; ") || "nothing"}`;
  }).join("\n");
}

/**
 * Each of `writers` sets `perNode` keys of its own, `inFlight` at a time, while `meanwhile` runs;
 * then every key is read back through another member. Resolves with the failed writes, the keys
 * lost, and every peerDown any member saw.
 */
async function burst(nodes: WorkloadNode[], writers: WorkloadNode[], perNode: number, inFlight: number, meanwhile: Promise<unknown> = Promise.resolve()) {
  const prefixOf = (writer: WorkloadNode) => `${writer.name}:`;
  await Promise.all(nodes.map((node) => node.call({ cmd: "stalls" })));
  const start = performance.timeOrigin + performance.now();
  const [bursts] = await Promise.all([
    Promise.all(writers.map((writer) => writer.call({ cmd: "burst", prefix: prefixOf(writer), count: perNode, inFlight, tag: "v1" }, 600_000))) as Promise<Burst[]>,
    meanwhile,
  ]);
  const events = (await Promise.all(nodes.map((node) => node.call({ cmd: "events" })))) as MembershipEvent[][];
  const downs = events.flat().filter((e) => e.event === "peerDown").map((e) => e.reason);
  const stalls = (await Promise.all(nodes.map((node) => node.call({ cmd: "stalls" })))) as Stalls[];
  if (downs.length > 0) {
    const ids = ((await Promise.all(nodes.map((node) => node.call({ cmd: "stats" })))) as Array<{ id: string }>).map((stats) => stats.id);
    console.log(`members declared down in the burst, and each member's stalls:\n${timeline(nodes, ids, events, stalls, start)}`);
  }
  const worst = stalls.reduce((a, b) => (b.longestMs > a.longestMs ? b : a));
  const gcLongestMs = Math.max(...stalls.map((stall) => stall.gcLongestMs));
  const verified = (await Promise.all(writers.map((writer) => {
    const reader = nodes[(nodes.indexOf(writer) + 1) % nodes.length];
    return reader.call({ cmd: "verify", prefix: prefixOf(writer), count: perNode, tag: "v1" }, 120_000);
  }))) as Array<{ missing: number; wrong: number }>;
  const failed = bursts.reduce((sum, b) => sum + b.failed, 0);
  const lost = verified.reduce((sum, v) => sum + v.missing + v.wrong, 0);
  const first = bursts.find((b) => b.first)?.first;
  console.log(
    `burst, ${nodes.map((n) => n.runtime).join("+")}: ${writers.length * perNode} writes, ${inFlight} in flight per writer, ` +
      `${failed} failed, ${lost} lost, ${downs.length} peerDowns [${downs.join(", ")}], ` +
      `a member's event loop ${Math.round(worst.longestMs)} ms late at worst (${Math.round(worst.cpuMs)} ms of CPU spent meanwhile; ` +
      `longest collection ${Math.round(gcLongestMs)} ms)` + (first ? `; the first error: ${first}` : ""),
  );
  return { failed, lost, downs, first };
}

const size = { perNode: Number(process.env.KOSYAK_BURST_WRITES ?? 5_000), inFlight: 2_000 };
const members = (process.env.KOSYAK_BURST_RUNTIMES?.split(",") as Runtime[] | undefined) ?? Array<Runtime>(8).fill(runtime);

describe("Flow control across processes", () => {
  // Node.js 22 and 24 run the local placement's, which meet their sockets under load alike.
  for (const placement of ["local", "hash"] as const) {
    (placement === "local" ? it : clusterIt)(`${members.length} busy members (${[...new Set(members)].join(", ")}) in ${placement} placement with replicas: 1 and tight timeouts, all writing 2,000 at a time: no write fails, no key is lost, nobody is declared down`, async () => {
      const nodes = await cluster(`f${placement[0]}`, members, { ...TIGHT, placement });
      const outcome = await burst(nodes, nodes, size.perNode, size.inFlight);
      assert.equal(outcome.failed, 0, `failed writes; the first: ${outcome.first}`);
      assert.equal(outcome.lost, 0, "keys lost");
      assert.deepEqual(outcome.downs, [], "live members declared down");
    }, 600_000);
  }

  for (const placement of ["local", "hash"] as const) {
    (placement === "local" ? it : clusterIt)(`a member whose event loop is blocked for most of peerTimeout, twice, while the others write to it (${placement} placement) with replicas: no write fails, no key is lost, nobody is declared down`, async () => {
      const nodes = await cluster(`blk${placement[0]}`, [runtime, runtime, runtime], { ...TIGHT, placement });
      const blocked = nodes[2];
      const blocks = (async () => {
        for (let time = 0; time < 2; time++) {
          await blocked.call({ cmd: "block", ms: TIGHT.peerTimeout - 150 });
          // Its next answer comes only once it has read and answered everything that waited.
          await blocked.call({ cmd: "stats" });
        }
      })();
      const outcome = await burst(nodes, nodes.slice(0, 2), 5_000, 500, blocks);
      assert.equal(outcome.failed, 0, `failed writes; the first: ${outcome.first}`);
      assert.equal(outcome.lost, 0, "keys lost");
      assert.deepEqual(outcome.downs, [], "live members declared down");
    }, 120_000);
  }

  // With replicas: 1 in a cluster of two, every write waits for the frozen member, whichever placement.
  for (const placement of ["local", "hash"] as const) {
    it(`writes faster than a frozen member takes them (${placement} placement): beyond maxQueueItems they are refused at once with ERR_OVERLOADED, nobody is disconnected, and the rest complete once it runs again`, async () => {
      const patient = { heartbeatInterval: 200, peerTimeout: 30_000, requestTimeout: 30_000, replicas: 1, placement };
      const frozen = await spawnWorkloadNode(`frozen-${placement}`, patient);
      const node = await startNode({ ...patient, maxQueueItems: 2_000, master: frozen.address });
      await waitFor("the two to meet", () => node.stats().peers === 1, 10_000);
      const downs: string[] = [];
      node.on("peerDown", (peer) => downs.push(peer.reason));
      frozen.pause();
      const outcomes: string[] = [];
      let refusal: unknown;
      const writes = Array.from({ length: 10_000 }, (_, i) =>
        node.set(`k${i}`, i).then(() => outcomes.push("ok"), (error) => {
          refusal ??= error;
          outcomes.push(error instanceof KosyakError ? error.code : String(error));
        }));
      try {
        await waitFor("the refusals, while the member is still frozen", () => outcomes.length > 0, 5_000);
        assert.deepEqual([...new Set(outcomes)], ["ERR_OVERLOADED"], "only refusals settle while the member is frozen");
        assert.match(String(refusal), /Cannot set "k\d+": \d+ items wait to be sent to member \w+, more than maxQueueItems \(2000\)/);
      } finally {
        frozen.resume();
      }
      await Promise.all(writes);
      const accepted = outcomes.filter((outcome) => outcome === "ok").length;
      assert.equal(outcomes.length, 10_000);
      assert.ok(accepted >= 2_000 && accepted < 10_000, `writes accepted: ${accepted}`);
      assert.equal(outcomes.filter((outcome) => outcome !== "ok" && outcome !== "ERR_OVERLOADED").length, 0, "no other failure");
      assert.deepEqual(downs, [], "the frozen member was not disconnected");
      // The queue drained: a write is taken again, and the member reads it.
      await node.set("after", "taken");
      assert.equal(await frozen.call({ cmd: "get", key: "after" }), "taken");
    }, 60_000);
  }
});
