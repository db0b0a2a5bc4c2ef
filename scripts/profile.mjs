// `npm run profile`: where the microseconds of a local set, a remote get, a remote set and a set in
// hash placement with replicas: 1 go, on each runtime. For each runtime and workload it runs
// scripts/profile-worker.mjs with the CPU profiler on for a few seconds, then sums the profile's samples by function (self time) and by
// kind (kosyak's own code, the runtime's code, garbage collection, the rest), and writes the
// table to bench/profile.md. Options: --runtimes=node,deno,bun, --workloads=local-set,...,
// --seconds=N (3), --top=N (12 functions a workload). Ops/s include the profiler's overhead.
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const option = (name, fallback) => process.argv.find((a) => a.startsWith(`--${name}=`))?.split("=")[1] ?? fallback;
const runtimes = option("runtimes", "node,deno,bun").split(",");
const workloads = option("workloads", "local-set,remote-get,remote-set,hash-set").split(",");
const seconds = Number(option("seconds", "3"));
const top = Number(option("top", "12"));
const worker = `${root}scripts/profile-worker.mjs`;

spawnSync(process.execPath, [`${root}scripts/build.mjs`], { stdio: "inherit" });

/** The command that runs the worker under a runtime, with the profile written into `dir`. */
const commandOf = (runtime, dir) => ({
  node: [process.execPath],
  deno: [`${root}node_modules/.bin/deno`, "run", "-A"],
  bun: [`${root}node_modules/.bin/bun`, "--cpu-prof", `--cpu-prof-dir=${dir}`],
})[runtime];

/** Self samples by function and by kind, as shares of the samples that were not idle. */
function summarise(profile) {
  const byFunction = new Map();
  const byKind = new Map();
  let busy = 0;
  for (const { callFrame, hitCount = 0 } of profile.nodes) {
    const name = callFrame.functionName || "(anonymous)";
    if (hitCount === 0 || name === "(idle)") continue;
    busy += hitCount;
    const file = callFrame.url.split("/").pop() || "";
    const kind = name === "(garbage collector)" ? "garbage collection"
      : /kosyak|dist\/|mod\.[tj]s/.test(callFrame.url) ? "kosyak"
      : /profile-worker|bench-/.test(callFrame.url) ? "the workload's loop"
      : name.startsWith("(") ? name
      : "runtime (sockets, promises, timers, JSON)";
    const where = file ? `${name} (${file}:${callFrame.lineNumber + 1})` : name;
    byFunction.set(where, (byFunction.get(where) ?? 0) + hitCount);
    byKind.set(kind, (byKind.get(kind) ?? 0) + hitCount);
  }
  const shares = (map) => [...map].sort((a, b) => b[1] - a[1]).map(([what, hits]) => [what, hits / busy]);
  return { functions: shares(byFunction).slice(0, top), kinds: shares(byKind) };
}

const sections = [`CPU profiles, ${new Date().toISOString().slice(0, 10)}, ${seconds} s a workload (\`npm run profile\`); shares of the samples that were not idle.`, ""];
for (const runtime of runtimes) {
  for (const workload of workloads) {
    const dir = mkdtempSync(join(tmpdir(), "kosyak-profile-"));
    const [command, ...args] = commandOf(runtime, dir);
    const result = spawnSync(command, [...args, worker, workload, String(seconds), join(dir, "profile.cpuprofile")], { cwd: root, encoding: "utf8", timeout: 120_000 });
    const file = readdirSync(dir).find((name) => name.endsWith(".cpuprofile"));
    if (result.status !== 0 || file === undefined) {
      rmSync(dir, { recursive: true, force: true });
      throw new Error(`${runtime} ${workload} failed (status ${result.status}): ${result.stderr}`);
    }
    const { opsPerSec } = JSON.parse(result.stdout.trim().split("\n").pop());
    const { functions, kinds } = summarise(JSON.parse(readFileSync(join(dir, file), "utf8")));
    rmSync(dir, { recursive: true, force: true });
    const percent = (share) => `${(share * 100).toFixed(1)}%`;
    sections.push(
      `### ${runtime}, ${workload}: ${Math.round(opsPerSec).toLocaleString("en")} ops/s under the profiler`, "",
      kinds.map(([kind, share]) => `${kind} ${percent(share)}`).join(" · "), "",
      "| function (self time) | share |", "| --- | --- |",
      ...functions.map(([where, share]) => `| ${where.replaceAll("|", "\\|")} | ${percent(share)} |`), "",
    );
    console.log(`${runtime} ${workload}: ${Math.round(opsPerSec).toLocaleString("en")} ops/s`);
  }
}
mkdirSync(`${root}bench`, { recursive: true });
writeFileSync(`${root}bench/profile.md`, sections.join("\n"));
console.log(`wrote bench/profile.md`);
