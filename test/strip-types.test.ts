// mod.ts needs no build on Node.js 22.6 and later: Node.js strips its types itself. Runs where
// the suite runs on such a Node.js (node22 and node24 in `npm test`); Deno and Bun run
// TypeScript anyway, and Node.js 20 cannot.
import { execFileSync } from "node:child_process";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { assert, describe, it, runtime, skip } from "../deps.ts";

const [major, minor] = process.versions.node.split(".").map(Number);
const strips = runtime === "node" && (major > 22 || (major === 22 && minor >= 6));
if (!strips) console.log(`${runtime} ${process.version}: no type stripping to test (Node.js 22.6 and later have it)`);

describe("Type stripping", () => {
  (strips ? it : skip)("mod.ts runs as it is under Node.js's type stripping: a set on one node, a get on another", () => {
    const root = fileURLToPath(new URL("..", import.meta.url));
    const output = execFileSync(process.execPath, ["--experimental-strip-types", "--no-warnings", "test/fixtures/strip-types.ts"], {
      cwd: root,
      encoding: "utf8",
      timeout: 30_000,
    });
    assert.equal(output.trim(), "123");
  });
});
