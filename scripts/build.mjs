// Builds mod.ts for Node.js 20, which cannot run TypeScript: ESM, CommonJS and declarations in
// dist/, and the `kosyak` command as dist/cli.js.
import { build } from "esbuild";
import { execFileSync } from "node:child_process";
import { chmodSync, rmSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
rmSync(`${root}/dist`, { recursive: true, force: true });

const common = { entryPoints: [`${root}/mod.ts`], platform: "node", target: "node20", logLevel: "warning" };
await build({ ...common, format: "esm", outfile: `${root}/dist/mod.js` });
await build({
  ...common,
  format: "cjs",
  outfile: `${root}/dist/mod.cjs`,
  // The seed's usage is `var Node = require('kosyak')`: the module itself is the class, and the
  // named exports hang off it, so `require('kosyak').Node` works as well.
  footer: { js: "module.exports = Object.assign(module.exports.Node, module.exports);" },
});
execFileSync(
  process.execPath,
  [
    `${root}/node_modules/typescript/bin/tsc`, `${root}/mod.ts`, "--declaration", "--emitDeclarationOnly",
    "--target", "es2022", "--module", "esnext", "--moduleResolution", "bundler", "--types", "node",
    "--skipLibCheck", "--outDir", `${root}/dist`,
  ],
  { stdio: "inherit" },
);

// `require('kosyak')` is the Node class itself, with the named exports as its properties.
writeFileSync(
  `${root}/dist/mod.d.cts`,
  `import type * as kosyak from "./mod.js";
declare const Node: typeof kosyak.Node & {
  readonly Node: typeof kosyak.Node;
  readonly default: typeof kosyak.Node;
  readonly KosyakError: typeof kosyak.KosyakError;
  readonly DEFAULTS: typeof kosyak.DEFAULTS;
  readonly Directory: typeof kosyak.Directory;
  readonly Store: typeof kosyak.Store;
  readonly KeyvStore: typeof kosyak.KeyvStore;
};
type Node = kosyak.Node;
export = Node;
`,
);

// `kosyak/keyv` names the KeyvStore class of the same build, as keyv.ts does for Deno.
writeFileSync(`${root}/dist/keyv.js`, `export { KeyvStore, KeyvStore as default } from "./mod.js";\n`);
writeFileSync(`${root}/dist/keyv.d.ts`, `export { KeyvStore, KeyvStore as default } from "./mod.js";\n`);
writeFileSync(
  `${root}/dist/keyv.cjs`,
  `"use strict";\nconst { KeyvStore } = require("./mod.cjs");\nmodule.exports = KeyvStore;\nmodule.exports.KeyvStore = KeyvStore;\nmodule.exports.default = KeyvStore;\n`,
);
writeFileSync(
  `${root}/dist/keyv.d.cts`,
  `import type * as kosyak from "./mod.js";
declare const KeyvStore: typeof kosyak.KeyvStore & {
  readonly KeyvStore: typeof kosyak.KeyvStore;
  readonly default: typeof kosyak.KeyvStore;
};
type KeyvStore = kosyak.KeyvStore;
export = KeyvStore;
`,
);

await build({ ...common, entryPoints: [`${root}/cli.ts`], bundle: true, format: "esm", outfile: `${root}/dist/cli.js` });
chmodSync(`${root}/dist/cli.js`, 0o755);
