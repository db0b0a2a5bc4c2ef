// `npm run bench-load`: what getOrSet costs, under Node.js, Deno and Bun.
// - Hits: a local hit through getOrSet against one through get, on a lone node of each placement,
//   with callbacks and with promises; rounds of each interleaved in one process, medians.
// - Stampede: 4 member processes, each beginning 250 getOrSets of one missing key at the same
//   moment (1,000 in all, over the cluster), with a loader that takes 50 ms: how many times the
//   loader ran in the cluster, and how long until every call had its value. Fresh keys each round.
// Writes bench/load.md. Options: --runtimes node,deno,bun.
import { spawn, spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import process from "node:process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const ROUNDS = 5;
const WINDOW_MS = 300;
const KEYS = 10_000;
const MEMBERS = 4;
const CALLS_PER_MEMBER = 250;
const LOADER_MS = 50;
const STAMPEDE_ROUNDS = 3;

const root = fileURLToPath(new URL("..", import.meta.url));
const script = fileURLToPath(import.meta.url);
const commands = {
  node: [process.execPath, [script]],
  deno: [`${root}node_modules/.bin/deno`, ["run", "-A", script]],
  bun: [`${root}node_modules/.bin/bun`, [script]],
};
const mode = process.argv[2];
if (mode === "--hits") await hits();
else if (mode === "--member") await member(JSON.parse(process.argv[3]));
else await parent();

// ─── The parent: runs the children, writes the table ────────────────────────────────────────

async function parent() {
  const runtimes = (process.argv.find((arg) => arg.startsWith("--runtimes="))?.slice(11) ?? "node,deno,bun").split(",");
  spawnSync(process.execPath, [`${root}scripts/build.mjs`], { stdio: "inherit" });
  const lines = [
    "# getOrSet: hits, and a stampede of misses",
    "",
    `\`npm run bench-load\`, ${new Date().toISOString().slice(0, 10)}, on this machine (${(await import("node:os")).cpus().length} cores).`,
    "",
    `Hits: ops/s of a local hit on a lone node (${KEYS.toLocaleString("en")} keys), medians of ${ROUNDS} interleaved rounds of ${WINDOW_MS} ms.`,
    "",
    "| runtime | placement | get, callback | getOrSet, callback | ratio | get, promise | getOrSet, promise | ratio |",
    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
  ];
  const stampedes = [];
  for (const runtime of runtimes) {
    const [command, args] = commands[runtime];
    const { stdout, status, stderr } = spawnSync(command, [...args, "--hits"], { cwd: root, encoding: "utf8" });
    if (status !== 0) throw new Error(`${runtime} --hits failed: ${stderr}`);
    for (const row of JSON.parse(stdout.trim().split("\n").at(-1))) {
      const rate = (name) => Math.round(row[name]).toLocaleString("en");
      const ratio = (get, getOrSet) => (row[get] / row[getOrSet]).toFixed(2);
      lines.push(`| ${runtime} | ${row.placement} | ${rate("get callback")} | ${rate("getOrSet callback")} | ${ratio("get callback", "getOrSet callback")} | ${rate("get promise")} | ${rate("getOrSet promise")} | ${ratio("get promise", "getOrSet promise")} |`);
    }
    for (const placement of ["local", "hash"]) stampedes.push({ runtime, placement, rounds: await stampede(Array(MEMBERS).fill(runtime), placement) });
  }
  if (runtimes.length > 1) {
    for (const placement of ["local", "hash"]) stampedes.push({ runtime: "mixed", placement, rounds: await stampede(["node", "deno", "bun", "node"].filter((r) => runtimes.includes(r)), placement) });
  }
  lines.push(
    "",
    "ratio: get's rate over getOrSet's (1.00: the same cost).",
    "",
    `Stampede: ${MEMBERS} member processes each begin ${CALLS_PER_MEMBER} getOrSets of one missing key at once (${MEMBERS * CALLS_PER_MEMBER} in all), with a loader that takes ${LOADER_MS} ms; ${STAMPEDE_ROUNDS} rounds, each with a new key. mixed: Node.js, Deno, Bun and Node.js processes.`,
    "",
    "| members | placement | loader calls per round | ms until every call had its value (per round) |",
    "| --- | --- | --- | --- |",
    ...stampedes.map(({ runtime, placement, rounds }) => `| ${runtime} | ${placement} | ${rounds.map((r) => r.loads).join(", ")} | ${rounds.map((r) => r.ms).join(", ")} |`),
  );
  writeFileSync(`${root}bench/load.md`, lines.join("\n") + "\n");
  console.log(lines.join("\n"));
}

/** One stampede per round over member processes of `runtimes`: loader calls, and ms until the last call had its value. */
async function stampede(runtimes, placement) {
  const members = [];
  try {
    for (const runtime of runtimes) {
      const [command, args] = commands[runtime];
      const options = { placement, ...(members.length > 0 && { master: members[0].address }) };
      const child = spawn(command, [...args, "--member", JSON.stringify(options)], { cwd: root, stdio: ["pipe", "pipe", "inherit"] });
      const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
      const next = async () => JSON.parse((await lines.next()).value);
      members.push({ child, next, address: (await next()).address });
    }
    const rounds = [];
    for (let round = 0; round < STAMPEDE_ROUNDS; round++) {
      const key = `stampede:${round}`;
      // Every member is told in the same turn of this process; each begins its calls at once.
      for (const { child } of members) child.stdin.write(JSON.stringify({ key, peers: members.length - 1 }) + "\n");
      const results = await Promise.all(members.map(({ next }) => next()));
      if (new Set(results.flatMap((result) => result.values)).size !== 1) throw new Error(`the callers of ${key} got different values`);
      rounds.push({ loads: results.reduce((sum, result) => sum + result.loads, 0), ms: Math.round(Math.max(...results.map((result) => result.ms))) });
    }
    return rounds;
  } finally {
    for (const { child } of members) child.stdin.end();
    await Promise.all(members.map(({ child }) => child.exitCode === null ? new Promise((resolve) => child.once("exit", resolve)) : undefined));
  }
}

// ─── The children ────────────────────────────────────────────────────────────────────────────

/** A member of a stampede: for each key it is given, begins its getOrSets at once, and reports. */
async function member(options) {
  const { Node } = await import("kosyak");
  const node = await Node.start(options);
  const print = (message) => process.stdout.write(JSON.stringify(message) + "\n");
  print({ address: node.address });
  let loads = 0;
  const loader = async (context) => {
    loads++;
    await new Promise((resolve) => setTimeout(resolve, LOADER_MS));
    return `loaded for ${context.key} by ${node.id}`;
  };
  for await (const line of createInterface({ input: process.stdin })) {
    const { key, peers } = JSON.parse(line);
    for (const deadline = performance.now() + 10_000; node.stats().peers < peers;) {
      if (performance.now() > deadline) throw new Error(`${node.id} did not see its ${peers} peers within 10 s`);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    const before = loads;
    const start = performance.now();
    const values = await Promise.all(Array.from({ length: CALLS_PER_MEMBER }, () => node.getOrSet(key, loader)));
    print({ loads: loads - before, ms: performance.now() - start, values: [...new Set(values)] });
  }
  await node.stop();
}

/** Local hits through get and getOrSet on a lone node of each placement. */
async function hits() {
  const { Node } = await import("kosyak");
  const rows = [];
  for (const placement of ["local", "hash"]) {
    const node = await Node.start({ placement });
    const key = (i) => `key:${i % KEYS}`;
    for (let i = 0; i < KEYS; i++) await node.set(key(i), `value ${i}`);
    const loader = () => {
      throw new Error("a hit must not load");
    };
    let sink = 0;
    const count = (_err, value) => (sink += value.length);
    const callbacks = (call) => () => {
      let ops = 0;
      const end = performance.now() + WINDOW_MS;
      while (performance.now() < end) for (let i = 0; i < 1000; i++) call(ops++);
      return ops;
    };
    const promises = (call) => async () => {
      let ops = 0;
      const end = performance.now() + WINDOW_MS;
      while (performance.now() < end) for (let i = 0; i < 1000; i++) sink += (await call(ops++)).length;
      return ops;
    };
    const workloads = {
      "get callback": callbacks((i) => node.get(key(i), count)),
      "getOrSet callback": callbacks((i) => node.getOrSet(key(i), loader, count)),
      "get promise": promises((i) => node.get(key(i))),
      "getOrSet promise": promises((i) => node.getOrSet(key(i), loader)),
    };
    const rates = Object.fromEntries(Object.keys(workloads).map((name) => [name, []]));
    for (let round = 0; round < ROUNDS; round++) {
      for (const [name, run] of Object.entries(workloads)) {
        const start = performance.now();
        const ops = await run();
        rates[name].push(ops / ((performance.now() - start) / 1000));
      }
    }
    const median = (values) => values.sort((a, b) => a - b)[Math.floor(values.length / 2)];
    rows.push({ placement, ...Object.fromEntries(Object.entries(rates).map(([name, values]) => [name, median(values)])) });
    if (sink < 0) console.log(sink);
    await node.stop();
  }
  console.log(JSON.stringify(rows));
}
