#!/usr/bin/env node
/**
 * The `kosyak` command: runs a standalone node until SIGINT or SIGTERM, or asks a running
 * cluster for its stats. Runs on Node.js (`npx kosyak`, from the npm build), Deno
 * (`deno run -A cli.ts`) and Bun (`bun cli.ts`). It uses nothing but mod.ts and built-in modules.
 *
 * @example
 * ```sh
 * kosyak --port 7000
 * kosyak --port 7001 --master 127.0.0.1:7000
 * kosyak stats 127.0.0.1:7000
 * ```
 *
 * @module
 */
import { readFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import process from "node:process";
import { parseArgs } from "node:util";
import { type Address, Node, type NodeOptions, type NodeStats } from "./mod.ts";

const HELP = `Usage:
  kosyak [serve] [options]        run a node until SIGINT or SIGTERM, then stop it gracefully,
                                  handing its entries to the other members
  kosyak stats <host:port> [options]
                                  join the cluster of that node for a moment, print every
                                  node's stats as a table, and leave

Options:
  --host <host>                   address to bind to (default 127.0.0.1)
  --port <port>                   port to bind to; 0 lets the OS pick (default 0)
  --master <host:port>            a node to join through; repeat it, or separate with commas,
                                  to give several seeds tried in turn
  --secret <text>                 shared secret every member must prove it knows
                                  (or set KOSYAK_SECRET, which keeps it out of the process list)
  --tls-cert <file>               PEM certificate chain of this node (TLS on every connection)
  --tls-key <file>                PEM private key of this node
  --tls-ca <file>                 PEM CA of the other members; given, each end checks the other
  --stringify                     store values as JSON strings
  --ttl <ms>                      default time to live of entries; 0 keeps them (default 0)
  --max-entries <n>               most entries this node holds (default unbounded)
  --max-bytes <n>                 most bytes of entries this node holds (default unbounded)
  --replicas <n>                  other members that keep a copy of every entry (default 0)
  --placement <local|hash>        where keys live: on the node that wrote them, or on the
                                  member that hashing picks (default local; same on every member)
  --connect-delay <ms>            delay before the second attempt to connect (default 2000)
  --connect-attempts <n>          attempts to connect to a node (default 3)
  --request-timeout <ms>          time a peer has to answer (default 5000)
  --heartbeat-interval <ms>       heartbeat period on idle connections (default 1000)
  --peer-timeout <ms>             silence after which a peer is declared down (default 3000)
  --metrics <port>                serve: also serve this node's stats in the Prometheus text
                                  format at http://<host>:<port>/metrics (0: a free port)
  --quiet                         print nothing but errors
  -h, --help                      show this help
`;

/** Thrown for a command line that cannot be run; its message is printed with the usage hint. */
class UsageError extends Error {}

/** Runs the command line `args`; resolves with the exit code. */
async function main(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseCommandLine(args);
  } catch (error) {
    if (!(error instanceof UsageError || error instanceof TypeError || error instanceof RangeError)) throw error;
    process.stderr.write(`kosyak: ${error.message}\nRun "kosyak --help" for usage.\n`);
    return 2;
  }
  if (parsed.help) {
    process.stdout.write(HELP);
    return 0;
  }
  return parsed.command === "stats" ? await printStats(parsed.options) : await serve(parsed.options, parsed.metricsPort, parsed.quiet);
}

interface CommandLine {
  command: "serve" | "stats";
  options: NodeOptions;
  /** Where to serve /metrics (serve only). */
  metricsPort: number | undefined;
  quiet: boolean;
  help: boolean;
}

function parseCommandLine(args: string[]): CommandLine {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      host: { type: "string" },
      port: { type: "string" },
      master: { type: "string", multiple: true },
      secret: { type: "string" },
      "tls-cert": { type: "string" },
      "tls-key": { type: "string" },
      "tls-ca": { type: "string" },
      stringify: { type: "boolean" },
      ttl: { type: "string" },
      "max-entries": { type: "string" },
      "max-bytes": { type: "string" },
      replicas: { type: "string" },
      placement: { type: "string" },
      "connect-delay": { type: "string" },
      "connect-attempts": { type: "string" },
      "request-timeout": { type: "string" },
      "heartbeat-interval": { type: "string" },
      "peer-timeout": { type: "string" },
      metrics: { type: "string" },
      quiet: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
  const [command = "serve", ...rest] = positionals;
  if (command !== "serve" && command !== "stats") throw new UsageError(`unknown command "${command}"`);
  const seeds = [...(values.master ?? []).flatMap((list) => list.split(",")), ...(command === "stats" ? rest : [])].map(parseAddress);
  if (command === "stats" && seeds.length === 0) throw new UsageError("stats needs the address of a node: kosyak stats <host:port>");
  if (command === "serve" && rest.length > 0) throw new UsageError(`unexpected argument "${rest[0]}"`);
  if (command === "stats" && values.metrics !== undefined) throw new UsageError("--metrics goes with serve");

  const number = (flag: string, text: string | undefined) => {
    if (text === undefined) return undefined;
    const value = Number(text);
    if (text.trim() === "" || Number.isNaN(value)) throw new UsageError(`--${flag} must be a number: received "${text}"`);
    return value;
  };
  const options: NodeOptions = {
    host: values.host,
    port: number("port", values.port),
    master: seeds.length === 0 ? undefined : seeds,
    secret: values.secret ?? (process.env.KOSYAK_SECRET || undefined),
    stringify: values.stringify,
    ttl: number("ttl", values.ttl),
    maxEntries: number("max-entries", values["max-entries"]),
    maxBytes: number("max-bytes", values["max-bytes"]),
    replicas: number("replicas", values.replicas),
    placement: values.placement as NodeOptions["placement"],
    connectDelay: number("connect-delay", values["connect-delay"]),
    connectAttempts: number("connect-attempts", values["connect-attempts"]),
    requestTimeout: number("request-timeout", values["request-timeout"]),
    heartbeatInterval: number("heartbeat-interval", values["heartbeat-interval"]),
    peerTimeout: number("peer-timeout", values["peer-timeout"]),
  };
  const tlsFiles = [values["tls-cert"], values["tls-key"]];
  if (tlsFiles.some((file) => file !== undefined)) {
    if (tlsFiles.some((file) => file === undefined)) throw new UsageError("--tls-cert and --tls-key go together");
    const read = (file: string) => readFileSync(file, "utf8");
    options.tls = { cert: read(values["tls-cert"]!), key: read(values["tls-key"]!), ca: values["tls-ca"] && read(values["tls-ca"]) };
  }
  // Options left out stay out, so that the node's own defaults apply; the constructor checks the rest.
  for (const name of Object.keys(options) as Array<keyof NodeOptions>) {
    if (options[name] === undefined) delete options[name];
  }
  new Node(options);
  const metricsPort = number("metrics", values.metrics);
  if (metricsPort !== undefined && !(Number.isInteger(metricsPort) && metricsPort >= 0 && metricsPort <= 65535)) {
    throw new UsageError(`--metrics must be a port from 0 to 65535: received "${values.metrics}"`);
  }
  return { command, options, metricsPort, quiet: values.quiet ?? false, help: values.help ?? false };
}

function parseAddress(text: string): Address {
  const match = /^(.*):(\d+)$/.exec(text.trim());
  if (match === null) throw new UsageError(`an address must look like host:port: received "${text}"`);
  return { host: match[1].replace(/^\[(.*)\]$/, "$1") || "127.0.0.1", port: Number(match[2]) };
}

/** Runs a node, and its /metrics endpoint if asked, until SIGINT or SIGTERM; then stops both and resolves with 0. */
async function serve(options: NodeOptions, metricsPort: number | undefined, quiet: boolean): Promise<number> {
  const say = (line: string) => quiet || process.stdout.write(`${line}\n`);
  const node = new Node(options)
    .on("peerUp", (peer) => say(`peer up: ${peer.id} at ${peer.address.host}:${peer.address.port}`))
    .on("peerDown", (peer) => say(`peer down: ${peer.id} (${peer.reason})`))
    .on("error", (error) => process.stderr.write(`kosyak: ${error.message}\n`));
  // With a callback, a failed start is reported here only, not also as an error event.
  const failed = await new Promise<Error | null>((resolve) => node.init(resolve));
  if (failed) {
    process.stderr.write(`kosyak: ${failed.message}\n`);
    return 1;
  }
  say(`kosyak node ${node.id} listening on ${node.address.host}:${node.address.port}`);
  let metrics: Server | undefined;
  if (metricsPort !== undefined) {
    try {
      metrics = await serveMetrics(node, metricsPort);
    } catch (error) {
      process.stderr.write(`kosyak: cannot serve metrics on ${node.address.host}:${metricsPort}: ${(error as Error).message}\n`);
      await node.stop();
      return 1;
    }
    say(`metrics at http://${node.address.host}:${(metrics.address() as { port: number }).port}/metrics`);
  }
  const signal = await new Promise<string>((resolve) => {
    process.once("SIGINT", () => resolve("SIGINT"));
    process.once("SIGTERM", () => resolve("SIGTERM"));
  });
  say(`${signal}: stopping`);
  await new Promise((resolve) => metrics ? metrics.close(resolve) : resolve(undefined));
  await node.stop();
  say("stopped");
  return 0;
}

/** An HTTP server on the node's host that answers GET /metrics with `node.metrics()`. */
function serveMetrics(node: Node, port: number): Promise<Server> {
  const server = createServer((request, response) => {
    if (request.method === "GET" && request.url?.split("?")[0] === "/metrics") {
      response.writeHead(200, { "content-type": "text/plain; version=0.0.4; charset=utf-8" }).end(node.metrics());
    } else {
      response.writeHead(404, { "content-type": "text/plain; charset=utf-8" }).end("Not found: try /metrics\n");
    }
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, node.address.host, () => resolve(server));
  });
}

/** Joins the cluster for as long as it takes to gather every node's stats, and prints them. */
async function printStats(options: NodeOptions): Promise<number> {
  const node = new Node({ ...options, port: 0, connectAttempts: options.connectAttempts ?? 1 });
  try {
    await node.init().ready();
    const all = await node.clusterStats();
    process.stdout.write(formatTable(all.filter((stats) => stats.id !== node.id)));
    return 0;
  } catch (error) {
    process.stderr.write(`kosyak: ${(error as Error).message}\n`);
    return 1;
  } finally {
    await node.stop();
  }
}

const COLUMNS: Array<[string, (stats: NodeStats) => string | number]> = [
  ["node", (s) => s.id],
  ["address", (s) => `${s.host}:${s.port}`],
  ["entries", (s) => s.entries],
  ["bytes", (s) => s.bytes],
  ["peers", (s) => s.peers],
  ["hits", (s) => s.hits],
  ["remoteHits", (s) => s.remoteHits],
  ["misses", (s) => s.misses],
  ["fetches", (s) => s.fetches],
  ["evictions", (s) => s.evictions],
  ["expirations", (s) => s.expirations],
  ["served", (s) => s.served],
  ["uptime(s)", (s) => Math.round(s.uptime / 1000)],
];

/** Stats as an aligned text table, one row per node. */
function formatTable(all: NodeStats[]): string {
  const rows = [COLUMNS.map(([title]) => title), ...all.map((stats) => COLUMNS.map(([, cell]) => String(cell(stats))))];
  const widths = COLUMNS.map((_, column) => Math.max(...rows.map((row) => row[column].length)));
  return rows.map((row) => row.map((cell, column) => cell.padEnd(widths[column])).join("  ").trimEnd()).join("\n") + "\n";
}

process.exitCode = await main(process.argv.slice(2));
