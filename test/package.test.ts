// The npm package as a user gets it: packed, installed into an empty project, required and
// imported by the seed's example, and type-checked from TypeScript.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterEach, assert, describe, it, stopAll, track } from "../deps.ts";

afterEach(stopAll);

const root = fileURLToPath(new URL("..", import.meta.url));

/** A port the OS calls free right now, for the seed example, which needs one port known in advance. */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Packs the package, installs the tarball into a new empty project, and returns npm's list of packed files. */
function installPacked(dir: string, type: "commonjs" | "module"): string[] {
  // --ignore-scripts: the suite's own build is already in dist/, and other tests are using it.
  const packed = JSON.parse(execFileSync("npm", ["pack", "--json", "--ignore-scripts", "--pack-destination", dir], { cwd: root, encoding: "utf8" }));
  writeFileSync(join(dir, "package.json"), JSON.stringify({ name: "consumer", private: true, type }));
  const tarball = join(dir, packed[0].filename);
  execFileSync("npm", ["install", "--offline", "--no-audit", "--no-fund", "--ignore-scripts", tarball], { cwd: dir, stdio: "pipe", timeout: 60_000 });
  return packed[0].files.map((file: { path: string }) => file.path).sort();
}

function temporaryFolder(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  track({ stop: async () => rmSync(dir, { recursive: true, force: true }) });
  return dir;
}

describe("npm package", () => {
  it("packs only what users need, installs, and runs the seed's example with require and with import", async () => {
    const dir = temporaryFolder("kosyak-package-");
    const files = installPacked(dir, "commonjs");
    assert.deepEqual(files, [
      "LICENSE", "README.md", "dist/cli.js", "dist/keyv.cjs", "dist/keyv.d.cts", "dist/keyv.d.ts", "dist/keyv.js", "dist/mod.cjs", "dist/mod.d.cts",
      "dist/mod.d.ts", "dist/mod.js", "package.json",
    ]);
    const manifest = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
    assert.equal(manifest.dependencies, undefined, "no runtime dependencies");
    assert.equal(manifest.engines.node, ">=20");
    const node = (script: string) => execFileSync("node", [script], { cwd: dir, encoding: "utf8", stdio: "pipe", timeout: 30_000 });

    const template = readFileSync(join(root, "test/fixtures/seed-example.cjs"), "utf8");
    const seedOnFreePort = async () => template.replaceAll("13390", String(await freePort()));
    writeFileSync(join(dir, "seed.cjs"), await seedOnFreePort());
    node("seed.cjs");
    const imported = (await seedOnFreePort())
      .replace("var assert = require('assert')", "import assert from 'node:assert'")
      .replace("var Node = require('kosyak')", "import Node from 'kosyak'");
    writeFileSync(join(dir, "seed.mjs"), imported);
    node("seed.mjs");
    assert.match(execFileSync("node", ["node_modules/.bin/kosyak", "--help"], { cwd: dir, encoding: "utf8" }), /Usage:/);
    // kosyak/keyv, required and imported, is the KeyvStore class of the package's own build.
    writeFileSync(join(dir, "keyv.cjs"), `const KeyvStore = require("kosyak/keyv"); console.log(KeyvStore === require("kosyak").KeyvStore && KeyvStore === KeyvStore.default);`);
    writeFileSync(join(dir, "keyv.mjs"), `import KeyvStore from "kosyak/keyv"; import { KeyvStore as Named } from "kosyak"; console.log(KeyvStore === Named);`);
    assert.deepEqual([node("keyv.cjs").trim(), node("keyv.mjs").trim()], ["true", "true"]);
  }, 90_000);

  it("type-checks a TypeScript consumer, ESM and CommonJS", () => {
    const dir = temporaryFolder("kosyak-types-");
    installPacked(dir, "module");
    writeFileSync(join(dir, "esm.ts"), `
import { KosyakError, Node, type NodeOptions, type NodeStats } from "kosyak";
import KeyvStore from "kosyak/keyv";
export const store: KeyvStore = new KeyvStore(new Node());
const options: NodeOptions = { port: 0, ttl: 1000, master: [{ port: 7000 }] };
const node: Node = new Node(options).init();
export async function use(): Promise<number | null> {
  const stats: NodeStats = node.stats();
  if (stats.entries < 0) throw new KosyakError("ERR_LIMIT", "never");
  // @ts-expect-error a key must be a string
  await node.get(42);
  return node.get<number>("answer");
}
`);
    writeFileSync(join(dir, "cjs.cts"), `
import Node = require("kosyak");
const node = new Node({ port: 0 });
const Error = Node.KosyakError;
export const same: boolean = Node.Node === Node && node instanceof Node.default && typeof Error === "function";
`);
    writeFileSync(join(dir, "tsconfig.json"), JSON.stringify({
      compilerOptions: { module: "nodenext", moduleResolution: "nodenext", target: "es2022", strict: true, noEmit: true, types: [] },
      files: ["esm.ts", "cjs.cts"],
    }));
    execFileSync("node", [join(root, "node_modules/typescript/bin/tsc"), "-p", dir], { cwd: dir, stdio: "pipe" });
  }, 90_000);
});
