// `npm run burst-start [-- --runs=N]`: how long the first turn of a burst keeps a node from its
// sockets. A node of 8 (all in this process) begins 2,000 sets in one turn, as the flow tests'
// burst does, five times; the first time its code is still cold. Prints, per placement, the
// median over N fresh processes (5) of the first and the fifth turn's milliseconds, and under
// Node.js the bytes the first turn allocated (sampled by the heap profiler). On Deno a socket
// takes one write a turn, so the whole turn is silence to the peers (see README, Flow control).
// Runs itself under Node.js and Deno.
import { spawnSync } from "node:child_process";
import process from "node:process";
import { fileURLToPath } from "node:url";

const SETS = 2_000;
const MEMBERS = 8;
const ROUNDS = 5;

if (process.argv[2] === "--child") await child(process.argv[3]);
else parent();

function parent() {
  const root = fileURLToPath(new URL("..", import.meta.url));
  const runs = Number(process.argv.find((arg) => arg.startsWith("--runs="))?.slice(7) ?? 5);
  spawnSync(process.execPath, [`${root}scripts/build.mjs`], { stdio: "inherit" });
  const script = fileURLToPath(import.meta.url);
  const runtimes = { node: [process.execPath, [script]], deno: [`${root}node_modules/.bin/deno`, ["run", "-A", script]] };
  const median = (values) => values.sort((a, b) => a - b)[Math.floor(values.length / 2)];
  console.log(`${SETS} sets begun in one turn on a node of ${MEMBERS}, replicas: 1; medians of ${runs} processes`);
  console.log("runtime  placement  first turn ms  fifth turn ms  first turn MB allocated");
  for (const [runtime, [command, args]] of Object.entries(runtimes)) {
    for (const placement of ["local", "hash"]) {
      const results = Array.from({ length: runs }, () => {
        const { stdout, status, stderr } = spawnSync(command, [...args, "--child", placement], { cwd: root, encoding: "utf8" });
        if (status !== 0) throw new Error(`${runtime} ${placement} failed: ${stderr}`);
        return JSON.parse(stdout.trim().split("\n").at(-1));
      });
      const mb = results[0].allocatedMB === undefined ? "-" : median(results.map((r) => r.allocatedMB)).toFixed(1);
      console.log(`${runtime.padEnd(8)} ${placement.padEnd(10)} ${median(results.map((r) => r.turns[0])).toFixed(1).padStart(13)} ${median(results.map((r) => r.turns[ROUNDS - 1])).toFixed(1).padStart(14)}  ${mb}`);
    }
  }
}

/** Prints {turns: [ms of each round], allocatedMB?} for one placement. */
async function child(placement) {
  const { Node } = await import("kosyak");
  const nodes = [];
  try {
    for (let i = 0; i < MEMBERS; i++) {
      const master = i > 0 ? { master: nodes[0].address } : {};
      nodes.push(await new Node({ host: "127.0.0.1", port: 0, placement, replicas: 1, ...master }).init().ready());
    }
    for (let wait = 0; nodes.some((node) => node.stats().peers < MEMBERS - 1); wait++) {
      if (wait > 500) throw new Error("the members did not meet within 10 s");
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const sampler = globalThis.Deno ? undefined : await heapSampler();
    const turns = [];
    let allocatedMB;
    for (let round = 0; round < ROUNDS; round++) {
      if (round === 0) await sampler?.start();
      const start = performance.now();
      const sets = Array.from({ length: SETS }, (_, i) => nodes[0].set(`burst:${round}:${i}`, `burst:${round}:${i}=v1`));
      turns.push(performance.now() - start);
      if (round === 0 && sampler) allocatedMB = (await sampler.stop()) / 1e6;
      await Promise.all(sets);
    }
    console.log(JSON.stringify({ turns, allocatedMB }));
  } finally {
    await Promise.all(nodes.map((node) => node.stop()));
  }
}

/** Node.js's sampling heap profiler: start(), then stop() resolves with the bytes sampled meanwhile. */
async function heapSampler() {
  const { Session } = await import("node:inspector");
  const session = new Session();
  session.connect();
  const post = (method, params) => new Promise((resolve, reject) => session.post(method, params, (error, result) => (error ? reject(error) : resolve(result))));
  await post("HeapProfiler.enable");
  const total = (node) => node.selfSize + node.children.reduce((sum, child) => sum + total(child), 0);
  return {
    start: () => post("HeapProfiler.startSampling", { samplingInterval: 512, includeObjectsCollectedByMinorGC: true, includeObjectsCollectedByMajorGC: true }),
    stop: async () => total((await post("HeapProfiler.stopSampling")).profile.head),
  };
}
