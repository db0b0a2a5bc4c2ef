// The example HTTP server of this suite's runtime (node:http, Deno.serve or Bun.serve), with
// kosyak as its cache in front of a slow upstream.
import { afterEach, assert, commandFor, describe, it, runtime, startProcess, stopAll } from "../deps.ts";

afterEach(stopAll);

const EXAMPLE = { node: "examples/node-server.mjs", deno: "examples/deno-server.ts", bun: "examples/bun-server.ts" }[runtime];

describe("Example servers", () => {
  it(`${EXAMPLE} answers the first request from the upstream and the next from the cache`, async () => {
    const server = startProcess(...commandFor(runtime, EXAMPLE));
    const [, url] = await server.line(/listening on (http:\/\/\S+)/);
    const first = await fetch(`${url}/item/42`);
    assert.equal(first.headers.get("x-cache"), "miss");
    const body = (await first.json()) as { key: string };
    assert.equal(body.key, "/item/42");
    const second = await fetch(`${url}/item/42`);
    assert.equal(second.headers.get("x-cache"), "hit");
    assert.deepEqual(await second.json(), body);

    server.signal("SIGTERM");
    assert.equal(await server.exit, 0);
    assert.match(server.output(), /stopped$/);
  }, 30_000);
});
