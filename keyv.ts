/**
 * kosyak as a [Keyv](https://keyv.org) storage adapter, for cache-manager v7, NestJS caching and
 * `cacheable`: `kosyak/keyv` on npm, `@kosyak/core/keyv` on JSR. The class itself is
 * {@linkcode KeyvStore} of mod.ts, where the whole library lives; this module only names it.
 *
 * @example
 * ```ts
 * import Keyv from "keyv";
 * import KeyvStore from "./keyv.ts";
 * import { Node } from "./mod.ts";
 *
 * const keyv = new Keyv({ store: new KeyvStore(await Node.start()) });
 * await keyv.set("answer", 42);
 * console.log(await keyv.get("answer")); // 42
 * await keyv.disconnect();
 * ```
 *
 * @module
 */
export { KeyvStore, KeyvStore as default } from "./mod.ts";
