// The kosyak command: two CLI nodes as processes, their stats, and a graceful SIGTERM.
import { afterEach, assert, commandFor, describe, it, runtime, startProcess, stopAll } from "../deps.ts";

afterEach(stopAll);

/** The CLI under this suite's runtime: the npm build on Node.js, cli.ts itself elsewhere. */
function kosyak(...args: string[]) {
  const [command, base] = commandFor(runtime, runtime === "node" ? "dist/cli.js" : "cli.ts");
  return startProcess(command, [...base, ...args]);
}

const LISTENING = /listening on ([\d.]+):(\d+)/;

describe("kosyak command", () => {
  it("runs two nodes that find each other, reports their stats as a table, and stops on SIGTERM", async () => {
    const first = kosyak("--port", "0");
    const [, host, port] = await first.line(LISTENING);
    const second = kosyak("--port", "0", "--master", `${host}:${port}`);
    await second.line(LISTENING);
    await first.line(/peer up: \w+ at 127\.0\.0\.1:\d+/);

    const stats = kosyak("stats", `${host}:${port}`);
    assert.equal(await stats.exit, 0);
    const table = stats.output().split("\n");
    assert.match(table[0], /^node\s+address\s+entries\s+bytes\s+peers/);
    const ids = [first, second].map((cli) => /node (\w+) listening/.exec(cli.output())![1]);
    assert.deepEqual(table.slice(1).map((row) => row.split(/\s+/)[0]).sort(), ids.sort());

    for (const cli of [second, first]) {
      cli.signal("SIGTERM");
      assert.equal(await cli.exit, 0);
      assert.match(cli.output(), /SIGTERM: stopping\nstopped$/);
    }
  }, 40_000);

  it("--placement hash nodes form a cluster, and a node of the default placement is refused", async () => {
    const first = kosyak("--port", "0", "--placement", "hash");
    const [, host, port] = await first.line(LISTENING);
    const second = kosyak("--port", "0", "--placement", "hash", "--master", `${host}:${port}`);
    await second.line(LISTENING);
    await first.line(/peer up: \w+ at 127\.0\.0\.1:\d+/);
    const stranger = kosyak("--port", "0", "--master", `${host}:${port}`, "--connect-attempts", "1");
    // Its message, which names both placements (test/hash.test.ts checks it), goes to standard error.
    assert.notEqual(await stranger.exit, 0);
    assert.doesNotMatch(stranger.output(), LISTENING);
  }, 40_000);

  it("--help documents every flag", async () => {
    const help = kosyak("--help");
    assert.equal(await help.exit, 0);
    for (const flag of ["--host", "--port", "--master", "--secret", "--tls-cert", "--tls-key", "--tls-ca", "--ttl", "--max-entries", "--max-bytes", "--replicas", "--placement", "stats"]) {
      assert.ok(help.output().includes(flag), `--help mentions ${flag}`);
    }
  });

  it("a wrong flag or value exits with code 2 and says what was wrong", async () => {
    for (const args of [["--port", "eighty"], ["--master", "nowhere"], ["--bogus"], ["--port", "70000"], ["--placement", "ring"]]) {
      const cli = kosyak(...args);
      assert.equal(await cli.exit, 2, args.join(" "));
    }
  });
});
