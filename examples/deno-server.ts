// A Deno.serve HTTP server with kosyak as its cache in front of a slow upstream.
// Run: deno run -A examples/deno-server.ts   (PORT and KOSYAK_MASTER=host:port are optional)
import { Node } from "../mod.ts";
import { cacheOptions, slowUpstream } from "./shared.mjs";

const cache = await new Node(cacheOptions(slowUpstream)).init().ready();

const server = Deno.serve({
  hostname: "127.0.0.1",
  port: Number(Deno.env.get("PORT") ?? 0),
  onListen: ({ port }) => console.log(`listening on http://127.0.0.1:${port} (cache node on port ${cache.address.port})`),
}, async (request) => {
  const key = new URL(request.url).pathname;
  const hit = cache.has(key);
  return Response.json(await cache.get(key), { headers: { "x-cache": hit ? "hit" : "miss" } });
});

Deno.addSignalListener("SIGTERM", async () => {
  await server.shutdown();
  await cache.stop();
  console.log("stopped");
  Deno.exit(0);
});
