// What the three example servers share: a slow upstream, and the options of the cache in front
// of it. Plain JavaScript, so that Node.js 20 runs it as it is.
import process from "node:process";

/** The upstream the cache saves us from: 200 ms per lookup. */
export function slowUpstream(key) {
  return new Promise((resolve) => setTimeout(() => resolve({ key, fetchedAt: new Date().toISOString() }), 200));
}

/** Options of a cache node in front of `upstream`, joining KOSYAK_MASTER (host:port) when it is set. */
export function cacheOptions(upstream) {
  const [host, port] = (process.env.KOSYAK_MASTER ?? "").split(":");
  return {
    master: port ? { host, port: Number(port) } : undefined,
    ttl: 60_000,
    maxEntries: 10_000,
    fetch: (key, done) => upstream(key).then((value) => done(null, value), done),
  };
}
