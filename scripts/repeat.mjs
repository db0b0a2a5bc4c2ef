// `node scripts/repeat.mjs [--runs=10] [--runtimes=node,deno,bun] test/a.test.ts ...`: runs the
// given test files again and again under each runtime, one run at a time, and prints a line per
// run and a tally per runtime, so that a test that fails once in ten runs shows itself. Exits
// non-zero if any run failed. The whole output of each failed run goes to a file in the system's
// temporary folder, whose path it prints. Build first (npm run build): the Node.js fixtures load dist/.
import { spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const flags = Object.fromEntries(process.argv.slice(2).filter((arg) => arg.startsWith("--")).map((arg) => arg.slice(2).split("=")));
const files = process.argv.slice(2).filter((arg) => !arg.startsWith("--"));
const runs = Number(flags.runs ?? 10);
const runtimes = (flags.runtimes ?? "node,deno,bun").split(",");
if (files.length === 0 || !Number.isInteger(runs) || runs < 1) {
  console.error("usage: node scripts/repeat.mjs [--runs=10] [--runtimes=node,deno,bun] test/a.test.ts ...");
  process.exit(2);
}

const bin = (name) => `${root}node_modules/.bin/${name}`;
const commands = {
  node: [process.execPath, [`${root}node_modules/vitest/vitest.mjs`, "run", ...files]],
  deno: [bin("deno"), ["test", "-A", ...files]],
  bun: [bin("bun"), ["test", ...files.map((file) => `./${file}`)]],
};
// As in scripts/test.mjs: the suites' "node" is the machine's own, not node_modules/.bin's.
const env = { ...process.env, PATH: (process.env.PATH ?? "").split(delimiter).filter((dir) => !dir.endsWith("node_modules/.bin")).join(delimiter) };

let failedRuns = 0;
for (const name of runtimes) {
  const [command, args] = commands[name] ?? [];
  if (command === undefined) throw new Error(`Unknown runtime: received ${JSON.stringify(name)}`);
  let passed = 0;
  for (let run = 1; run <= runs; run++) {
    const started = performance.now();
    const { status, stdout, stderr } = spawnSync(command, args, { cwd: root, env, encoding: "utf8", maxBuffer: 1 << 28 });
    const seconds = ((performance.now() - started) / 1000).toFixed(0);
    if (status === 0) passed++;
    else {
      failedRuns++;
      // The lines that say what failed, without the colours.
      const lines = `${stdout}\n${stderr}`.replace(/\x1b\[[0-9;]*m/g, "").split("\n").filter((line) => /FAIL|✗|×|\(fail\)|Error|violations, /.test(line) && !/ 0 violations/.test(line));
      console.log(lines.slice(0, 12).join("\n"));
      const saved = join(tmpdir(), `kosyak-repeat-${name}-${process.pid}-${run}.log`);
      writeFileSync(saved, `${stdout}\n${stderr}`);
      console.log(`the whole output: ${saved}`);
    }
    console.log(`${name} run ${run}/${runs}: ${status === 0 ? "passed" : "FAILED"} in ${seconds} s`);
  }
  console.log(`${name}: ${passed} of ${runs} runs passed`);
}
process.exitCode = failedRuns === 0 ? 0 : 1;
