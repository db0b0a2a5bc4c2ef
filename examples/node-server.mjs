// A node:http server with kosyak as its cache in front of a slow upstream, on Node.js 20 with
// the npm build. Run: node examples/node-server.mjs   (PORT and KOSYAK_MASTER=host:port are optional)
import { createServer } from "node:http";
import { Node } from "kosyak";
import { cacheOptions, slowUpstream } from "./shared.mjs";

const cache = await new Node(cacheOptions(slowUpstream)).init().ready();

const server = createServer(async (request, response) => {
  const key = new URL(request.url, "http://localhost").pathname;
  const hit = cache.has(key);
  const body = JSON.stringify(await cache.get(key));
  response.writeHead(200, { "content-type": "application/json", "x-cache": hit ? "hit" : "miss" }).end(body);
});
server.listen(Number(process.env.PORT ?? 0), "127.0.0.1", () => {
  console.log(`listening on http://127.0.0.1:${server.address().port} (cache node on port ${cache.address.port})`);
});

process.once("SIGTERM", async () => {
  server.close();
  await cache.stop();
  console.log("stopped");
});
