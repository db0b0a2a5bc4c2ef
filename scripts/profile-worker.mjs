// One workload of `npm run profile` (scripts/profile.mjs), in the runtime that runs this file:
// `profile-worker.mjs WORKLOAD SECONDS PROFILE_PATH`. It sets the workload up, runs it for the
// seconds given with the CPU profiler on (node:inspector under Node.js and Deno; under Bun the
// launcher passes --cpu-prof instead), writes the profile to PROFILE_PATH where it took it
// itself, and prints {"opsPerSec": N} (with the profiler's overhead in it).
import { writeFileSync } from "node:fs";
import process from "node:process";
import { Node } from "kosyak";
import { startPeer as startBenchPeer, stopPeers } from "./bench-peers.mjs";

const [workload, seconds, profilePath] = process.argv.slice(2);
const KEYS = 1000;
const VALUE = "a value of some 30 bytes......";
const key = (i) => `key:${i % KEYS}`;
const runtimeCommand = globalThis.Deno ? [Deno.execPath(), "run", "-A"] : [process.execPath];
const children = [];

/** Starts a kosyak node of scripts/bench-peer.mjs in this runtime and resolves with its port. */
const startPeer = (options) => startBenchPeer(runtimeCommand, children, "node", options);

/** `op(i)` from 64 loops at once, each awaiting one after another, until `until`. */
async function inFlight64(op, until) {
  let done = 0;
  await Promise.all(Array.from({ length: 64 }, async (_, lane) => {
    for (let i = lane; performance.now() < until; i += 64) {
      await op(i);
      done++;
    }
  }));
  return done;
}

/** Sets with a callback, 1,000 begun at once, then a turn of the event loop, until `until`. */
async function localSets(node, until) {
  let done = 0;
  while (performance.now() < until) {
    await new Promise((resolve) => {
      let left = 1000;
      for (let i = 0; i < 1000; i++) node.set(key(i), VALUE, () => --left === 0 && resolve());
    });
    done += 1000;
    await new Promise((resolve) => setTimeout(resolve, 0));
  }
  return done;
}

const nodes = [];
let run;
if (workload === "local-set") {
  const node = await new Node().init().ready();
  nodes.push(node);
  run = (until) => localSets(node, until);
} else if (workload === "remote-get") {
  const reader = await new Node({ master: { port: await startPeer({ keys: KEYS }) } }).init().ready();
  nodes.push(reader);
  run = (until) => inFlight64((i) => reader.get(key(i)), until);
} else if (workload === "remote-set") {
  const writer = await new Node().init().ready();
  nodes.push(writer);
  await startPeer({ master: { port: writer.address.port } });
  run = (until) => inFlight64((i) => writer.set(key(i), VALUE), until);
} else if (workload === "hash-set") {
  // Hash placement with replicas: 1 over two nodes: each set goes to its owner, and the owner's copy to the other.
  const writer = await new Node({ placement: "hash", replicas: 1 }).init().ready();
  nodes.push(writer);
  await startPeer({ master: { port: writer.address.port }, placement: "hash", replicas: 1 });
  run = (until) => inFlight64((i) => writer.set(key(i), VALUE), until);
} else {
  throw new Error(`unknown workload ${workload}: local-set, remote-get, remote-set or hash-set`);
}

await run(performance.now() + 500); // warm-up, not profiled
const inspector = globalThis.Bun ? undefined : await import("node:inspector");
const session = inspector && new inspector.Session();
const post = (method) => new Promise((resolve, reject) => session.post(method, {}, (error, result) => (error ? reject(error) : resolve(result))));
if (session) {
  session.connect();
  await post("Profiler.enable");
  await post("Profiler.start");
}
const started = performance.now();
const done = await run(started + Number(seconds) * 1000);
const opsPerSec = done / ((performance.now() - started) / 1000);
if (session) writeFileSync(profilePath, JSON.stringify((await post("Profiler.stop")).profile));

await Promise.all(nodes.map((node) => node.stop({ handover: false })));
await stopPeers(children);
process.stdout.write(JSON.stringify({ opsPerSec }) + "\n");
process.exit(0);
