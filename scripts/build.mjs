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

/**
 * The declarations of a CommonJS entry whose module is the class `name` itself, with that class,
 * `default`, and the other exports `also` as its properties.
 */
const classModuleTypes = (name, also) => `import type * as kosyak from "./mod.js";
declare const ${name}: typeof kosyak.${name} & {
${[name, ...also].map((other) => `  readonly ${other}: typeof kosyak.${other};\n`).join("")}  readonly default: typeof kosyak.${name};
};
type ${name} = kosyak.${name};
export = ${name};
`;

// `require('kosyak')` is the Node class itself, with the named exports as its properties.
writeFileSync(`${root}/dist/mod.d.cts`, classModuleTypes("Node", ["KosyakError", "DEFAULTS", "Directory", "Store", "KeyvStore"]));

// `kosyak/keyv` names the KeyvStore class of the same build, as keyv.ts does for Deno.
writeFileSync(`${root}/dist/keyv.js`, `export { KeyvStore, KeyvStore as default } from "./mod.js";\n`);
writeFileSync(`${root}/dist/keyv.d.ts`, `export { KeyvStore, KeyvStore as default } from "./mod.js";\n`);
writeFileSync(
  `${root}/dist/keyv.cjs`,
  `"use strict";\nconst { KeyvStore } = require("./mod.cjs");\nmodule.exports = KeyvStore;\nmodule.exports.KeyvStore = KeyvStore;\nmodule.exports.default = KeyvStore;\n`,
);
writeFileSync(`${root}/dist/keyv.d.cts`, classModuleTypes("KeyvStore", []));

await build({ ...common, entryPoints: [`${root}/cli.ts`], bundle: true, format: "esm", outfile: `${root}/dist/cli.js` });
chmodSync(`${root}/dist/cli.js`, 0o755);
