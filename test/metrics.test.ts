// Node.metrics and `kosyak serve --metrics`: the stats in the Prometheus text format, read back
// with a real parser (parse-prometheus-text-format) and, where it is installed, Prometheus's own
// `promtool check metrics`.
import { execFileSync } from "node:child_process";
import parsePrometheusTextFormat from "parse-prometheus-text-format";
import { afterEach, assert, commandFor, describe, it, runtime, skip, startNode, startProcess, stopAll } from "../deps.ts";
import type { NodeStats } from "../mod.ts";

afterEach(stopAll);

/** A metric family as parse-prometheus-text-format gives it. */
interface MetricFamily {
  name: string;
  help: string;
  type: string;
  metrics: Array<{ value: string; labels?: Record<string, string> }>;
}

const parse = (text: string) => parsePrometheusTextFormat(text) as MetricFamily[];

/** Whether Prometheus's promtool is installed (Debian: apt-get install prometheus). */
const hasPromtool = (() => {
  try {
    execFileSync("promtool", ["--version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
})();
if (!hasPromtool) console.log("promtool is not installed (apt-get install prometheus): its check of the metrics is skipped");

/** promtool's verdict on `text`. */
function promtool(text: string): { ok: boolean; output: string } {
  try {
    return { ok: true, output: execFileSync("promtool", ["check", "metrics"], { input: text, encoding: "utf8", stdio: "pipe" }) };
  } catch (error) {
    const { stdout = "", stderr = "" } = error as { stdout?: string; stderr?: string };
    return { ok: false, output: `${stdout}${stderr}` };
  }
}

describe("Metrics", () => {
  it("Node.metrics gives every stat as a Prometheus metric labelled with the node's id, with the stat's value", async () => {
    const holder = await startNode();
    const reader = await startNode({ master: holder.address, nearCache: true });
    await holder.mset([["a", 1], ["b", 2]]);
    for (let i = 0; i < 3; i++) await reader.get("a");
    await reader.get("missing");
    const stats: NodeStats = reader.stats();
    const families = parse(reader.metrics());
    const byName = new Map(families.map((family) => [family.name, family]));
    const expect: Array<[string, string, number]> = [
      ["kosyak_remote_hits_total", "counter", stats.remoteHits],
      ["kosyak_near_hits_total", "counter", stats.nearHits],
      ["kosyak_near_entries", "gauge", stats.nearEntries],
      ["kosyak_misses_total", "counter", stats.misses],
      ["kosyak_remote_keys", "gauge", stats.remoteKeys],
      ["kosyak_peers", "gauge", 1],
    ];
    for (const [name, type, value] of expect) {
      const family = byName.get(name);
      assert.ok(family, `${name} is there`);
      assert.equal(family.type, type.toUpperCase(), `${name} is a ${type}`);
      assert.ok(family.help.length > 0, `${name} has help`);
      assert.deepEqual(family.metrics.map((sample) => [sample.labels?.node, Number(sample.value)]), [[reader.id, value]]);
    }
    assert.deepEqual([stats.remoteHits, stats.nearHits, stats.misses], [1, 2, 1]);
    // One metric for every stat but the node's identity.
    const identity = ["id", "host", "port"];
    assert.equal(families.length, Object.keys(stats).length - identity.length);
    for (const family of families) assert.match(family.name, /^kosyak_[a-z_]+$/);
  });

  (hasPromtool ? it : skip)("Node.metrics passes promtool check metrics", async () => {
    const node = await startNode();
    await node.set("k", 1);
    const verdict = promtool(node.metrics());
    assert.ok(verdict.ok, verdict.output);
  });

  it("kosyak serve --metrics serves the node's metrics at /metrics and nothing elsewhere", async () => {
    const [command, base] = commandFor(runtime, runtime === "node" ? "dist/cli.js" : "cli.ts");
    const cli = startProcess(command, [...base, "--port", "0", "--metrics", "0"]);
    const [, url] = await cli.line(/metrics at (http:\/\/\S+\/metrics)/);
    const [, id] = await cli.line(/kosyak node (\w+) listening/);
    const response = await fetch(url);
    assert.equal(response.status, 200);
    assert.match(response.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
    const families = parse(await response.text());
    assert.deepEqual(families.find((family) => family.name === "kosyak_entries")?.metrics, [{ value: "0", labels: { node: id } }]);
    const elsewhere = await fetch(url.replace(/\/metrics$/, "/other"));
    assert.equal(elsewhere.status, 404);
    await elsewhere.body?.cancel();
    cli.signal("SIGTERM");
    assert.equal(await cli.exit, 0);
  }, 30_000);
});
