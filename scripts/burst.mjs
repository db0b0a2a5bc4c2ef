// `npm run burst [-- --writes=N] [--runtimes=node,deno,bun,mixed]`: the flow-control burst of
// test/flow.test.ts at full size. Eight member processes share the machine, with replicas: 1 and
// tight timeouts (heartbeat 200 ms, peerTimeout 600, requestTimeout 1000), each writing N keys
// (50,000 by default) 2,000 at a time; then every key is read back through another member. Runs
// it with all members under Node.js, Deno, Bun, then mixed (with the file's other flow tests),
// and prints each burst's figures: failed writes, lost keys, live members declared down. Exits
// non-zero if any run failed.
import { spawnSync } from "node:child_process";
import { delimiter } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const option = (name, fallback) => process.argv.find((arg) => arg.startsWith(`--${name}=`))?.slice(name.length + 3) ?? fallback;
const writes = option("writes", "50000");
const runtimes = option("runtimes", "node,deno,bun,mixed").split(",");
// The whole file: Deno's --filter picks top-level tests, and a describe() is one.
const bin = (name) => `${root}node_modules/.bin/${name}`;
const vitest = [process.execPath, [`${root}node_modules/vitest/vitest.mjs`, "run", "test/flow.test.ts"]];
const commands = { node: vitest, deno: [bin("deno"), ["test", "-A", "test/flow.test.ts"]], bun: [bin("bun"), ["test", "./test/flow.test.ts"]], mixed: vitest };
// Node.js stays the machine's own, as in npm test (npm puts node22's or node24's first on PATH).
const path = (process.env.PATH ?? "").split(delimiter).filter((dir) => !dir.endsWith("node_modules/.bin")).join(delimiter);
let failed = false;
for (const name of runtimes) {
  const [command, args] = commands[name];
  const env = { ...process.env, PATH: path, KOSYAK_BURST_WRITES: writes };
  if (name === "mixed") env.KOSYAK_BURST_RUNTIMES = "node,deno,bun,node,deno,bun,node,deno";
  const { status, stdout, stderr } = spawnSync(command, args, { cwd: root, env, encoding: "utf8", maxBuffer: 64 * 1024 * 1024 });
  const figures = `${stdout}\n${stderr}`.split("\n").filter((line) => line.includes("burst,")).map((line) => line.replace(/\x1b\[[0-9;]*m/g, "").trim());
  console.log(`${name}: ${status === 0 ? "passed" : "FAILED"}: ${figures.join(" | ") || "no figures (see the output below)"}`);
  if (status !== 0) {
    failed = true;
    if (figures.length === 0) console.log(stdout.slice(-4000), stderr.slice(-4000));
  }
}
process.exit(failed ? 1 : 0);
