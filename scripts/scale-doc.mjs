// docs/scale.md holds sections that `npm run simulate` and `npm run bench -- --scale` rewrite.
import { readFileSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const path = fileURLToPath(new URL("../docs/scale.md", import.meta.url));

/** Replaces what lies between `<!-- name -->` and `<!-- /name -->` in docs/scale.md with `text`. */
export function writeSection(name, text) {
  const doc = readFileSync(path, "utf8");
  const open = `<!-- ${name} -->`;
  const close = `<!-- /${name} -->`;
  const from = doc.indexOf(open);
  const to = doc.indexOf(close);
  if (from < 0 || to < from) throw new Error(`docs/scale.md has no ${open} ... ${close} section`);
  writeFileSync(path, doc.slice(0, from + open.length) + "\n" + text + "\n" + doc.slice(to));
}
