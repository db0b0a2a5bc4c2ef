// `npm test`: type-checks (the code and its doc examples), lints the docs, dry-runs the JSR
// publish, builds, then runs the one shared suite under Node.js (vitest; the Node.js that runs
// this script, then Node.js 22 and 24 from the npm packages node22 and node24), Deno and Bun,
// one runtime after another, then a 60-second soak of a mixed cluster (scripts/soak.ts, counted
// as one test). Each runtime's cluster tests start members of that runtime; the tests of clusters
// mixing runtimes run under Node.js 20 only (their members are the same whichever runtime drives
// them), and Node.js 22 and 24 leave out the fault and load tests of member processes, whose
// JavaScript Node.js 20 runs (see clusterTests in deps.ts). Prints a summary per runtime and, as
// its very last line, the
// totals as "N passed, N failed". Exits non-zero if a step fails or a runtime runs no test.
import { spawnSync } from "node:child_process";
import { mkdirSync, readFileSync, rmSync } from "node:fs";
import { delimiter } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const bin = (name) => `${root}node_modules/.bin/${name}`;
const results = `${root}.test-results`;
rmSync(results, { recursive: true, force: true });
mkdirSync(results, { recursive: true });

/** Node.js of the version an npm package (node22, node24) installed. */
const nodeOf = (name) => `${root}node_modules/${name}/bin/node`;
// npm puts node_modules/.bin first on PATH, and there `node` is Node.js 22 or 24 (the node22 and
// node24 packages link it): without it, "node" stays the machine's own, for the suite too.
const env = { ...process.env, PATH: (process.env.PATH ?? "").split(delimiter).filter((dir) => !dir.endsWith("node_modules/.bin")).join(delimiter) };

function run(title, command, args, settings = {}) {
  const shown = Object.entries(settings).map(([name, value]) => `${name}=${value} `).join("");
  console.log(`\n=== ${title}: ${shown}${[command, ...args].join(" ")}`);
  const { status, error } = spawnSync(command, args, { cwd: root, stdio: "inherit", env: { ...env, ...settings } });
  if (error) console.error(error.message);
  return status === 0;
}

const checks = [
  ["type check (tsc)", bin("tsc"), ["--noEmit", "-p", "."]],
  ["type check (deno)", bin("deno"), ["check", "mod.ts", "cli.ts", "keyv.ts", "deps.ts", "test/", "scripts/soak.ts", "examples/deno-server.ts"]],
  ["type check of the @example blocks", bin("deno"), ["check", "--doc", "mod.ts"]],
  ["documentation lint (JSR)", bin("deno"), ["doc", "--lint", "mod.ts"]],
  ["JSR publish dry run", bin("deno"), ["publish", "--dry-run", "--allow-dirty"]],
  ["build for Node.js 20", process.execPath, ["scripts/build.mjs"]],
];
let checksPassed = true;
for (const [title, command, args] of checks) checksPassed = run(title, command, args) && checksPassed;

const vitest = (name) => [`${root}node_modules/vitest/vitest.mjs`, "run", "--reporter=default", "--reporter=junit", `--outputFile.junit=${results}/${name}.xml`];
const suites = [
  ["node", process.execPath, vitest("node"), {}],
  ["node22", nodeOf("node22"), vitest("node22"), { KOSYAK_TEST_CLUSTERS: "0" }],
  ["node24", nodeOf("node24"), vitest("node24"), { KOSYAK_TEST_CLUSTERS: "0" }],
  ["deno", bin("deno"), ["test", "-A", `--junit-path=${results}/deno.xml`, "test/"], { KOSYAK_TEST_MIXED: "0" }],
  ["bun", bin("bun"), ["test", "--reporter=junit", `--reporter-outfile=${results}/bun.xml`, "test/"], { KOSYAK_TEST_MIXED: "0" }],
];
const summary = [];
for (const [name, command, args, settings] of suites) {
  const exitedZero = run(`suite under ${name}`, command, args, settings);
  summary.push({ name, exitedZero, ...countJUnit(`${results}/${name}.xml`) });
}

// The soak (scripts/soak.ts) for 60 s, in a mixed cluster: one test, which passes on its verdict.
console.log(`\n=== soak, 60 s: ${bin("deno")} run -A scripts/soak.ts --seconds=60`);
const soak = spawnSync(bin("deno"), ["run", "-A", "scripts/soak.ts", "--seconds=60", `--chart=${results}/soak.svg`], { cwd: root, env, encoding: "utf8" });
process.stdout.write(soak.stdout ?? "");
process.stderr.write(soak.stderr ?? "");
const verdict = (soak.stdout ?? "").split("\n").find((line) => line.startsWith("soak verdict:")) ?? "soak: no verdict";
summary.push({ name: "soak", exitedZero: soak.status === 0, passed: soak.status === 0 ? 1 : 0, failed: soak.status === 0 ? 0 : 1, failures: soak.status === 0 ? [] : [verdict], skipped: 0, missing: false });

/**
 * Counts the tests in a JUnit report: passed, failed, and skipped (a test whose runtime cannot run
 * it, which says why in the log, or one this suite leaves to another, as its settings on the
 * "===" line say). Deno also reports each describe() as a test case of its own,
 * whose steps are the real tests, so a case that has sub-cases ("name > ...") is not counted.
 */
function countJUnit(path) {
  let xml;
  try {
    xml = readFileSync(path, "utf8");
  } catch {
    return { passed: 0, failed: 0, skipped: 0, missing: true };
  }
  const cases = [...xml.matchAll(/<testcase\b[^>]*?\bname="([^"]*)"[^>]*?(\/>|>([\s\S]*?)<\/testcase>)/g)].map(
    (match) => ({ name: match[1], failure: failureOf(match[3] ?? ""), skipped: /<skipped\b/.test(match[3] ?? "") }),
  );
  const leaves = cases.filter((c) => !cases.some((other) => other.name.startsWith(`${c.name} &gt; `)));
  const failures = leaves.filter((c) => c.failure !== undefined).map((c) => `${unescapeXml(c.name)}: ${c.failure}`);
  const skipped = leaves.filter((c) => c.skipped && c.failure === undefined).length;
  return { passed: leaves.length - failures.length - skipped, failed: failures.length, failures, skipped, missing: false };
}

/**
 * The first line of a test case's failure or error, so that the summary (all a CI log's tail may
 * keep) says what failed; undefined when the case did not fail.
 */
function failureOf(body) {
  const element = body.match(/<(failure|error)\b([^>]*)>?([^<]*)/);
  if (element === null) return undefined;
  const message = element[2].match(/\bmessage="([^"]*)"/)?.[1] || element[3];
  return unescapeXml(message).trim().split("\n")[0].slice(0, 400) || "(no message)";
}

/** Text of an XML attribute or element, its five entities (and &#39;) decoded. */
function unescapeXml(text) {
  return text.replace(/&(lt|gt|quot|apos|#39|amp);/g, (_, name) => ({ lt: "<", gt: ">", quot: '"', apos: "'", "#39": "'", amp: "&" })[name]);
}

console.log("\n=== summary");
console.log(`checks (${checks.map(([title]) => title).join(", ")}): ${checksPassed ? "ok" : "FAILED"}`);
let passed = 0;
let failed = 0;
let ok = checksPassed;
for (const suite of summary) {
  passed += suite.passed;
  failed += suite.failed;
  const problems = [];
  if (!suite.exitedZero) problems.push("runner exited non-zero");
  if (suite.missing) problems.push("no report");
  else if (suite.passed + suite.failed === 0) problems.push("ran no test");
  if (problems.length > 0) ok = false;
  const skipped = suite.skipped > 0 ? `, ${suite.skipped} skipped` : "";
  console.log(`${suite.name}: ${suite.passed} passed, ${suite.failed} failed${skipped}${problems.length ? ` (${problems.join(", ")})` : ""}`);
  for (const failure of suite.failures ?? []) console.log(`  failed: ${failure}`);
}
console.log(`${passed} passed, ${failed} failed`);
process.exitCode = ok && failed === 0 ? 0 : 1;
