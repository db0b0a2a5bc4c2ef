// A Bun.serve HTTP server with kosyak as its cache in front of a slow upstream.
// Run: bun examples/bun-server.ts   (PORT and KOSYAK_MASTER=host:port are optional)
// Every GET /<anything> is answered from the cache; the first one for a path waits for the
// upstream, later ones (on this server, or any server of the same cluster) do not.
import { Node } from "../mod.ts";
import { cacheOptions, slowUpstream } from "./shared.mjs";

const cache = await new Node(cacheOptions(slowUpstream)).init().ready();

const server = Bun.serve({
  hostname: "127.0.0.1",
  port: Number(process.env.PORT ?? 0),
  async fetch(request) {
    const key = new URL(request.url).pathname;
    const hit = cache.has(key);
    return Response.json(await cache.get(key), { headers: { "x-cache": hit ? "hit" : "miss" } });
  },
});
console.log(`listening on http://127.0.0.1:${server.port} (cache node on port ${cache.address.port})`);

process.once("SIGTERM", async () => {
  server.stop();
  await cache.stop();
  console.log("stopped");
});
