// `npm start`: three kosyak nodes, each in its own process on loopback. A value set on the first
// is read from the other two, every node's stats are printed, and everything stops cleanly.
// With `--child` the script is one of those node processes, driven over IPC by the parent.
import { fork } from "node:child_process";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { Node } from "kosyak";

if (process.argv[2] === "--child") runChild(JSON.parse(process.argv[3]));
else await runDemo();

/** One node process: starts a node, then answers the parent's requests until told to stop. */
async function runChild(options) {
  const node = await new Node(options).init().ready();
  process.send({ ready: node.address });
  process.on("message", async ({ seq, op, key, value }) => {
    const operations = {
      set: () => node.set(key, value),
      get: () => node.get(key),
      stats: () => node.stats(),
      stop: () => node.stop(),
    };
    const result = await operations[op]();
    process.send({ seq, result: result ?? null });
    if (op === "stop") process.disconnect();
  });
}

async function runDemo() {
  const children = [];
  const giveUp = setTimeout(() => {
    console.error("The demo did not finish within 30 s; stopping it.");
    for (const child of children) child.kill("SIGKILL");
    process.exit(1);
  }, 30_000);

  const start = async (options) => {
    const child = fork(fileURLToPath(import.meta.url), ["--child", JSON.stringify(options)]);
    children.push(child);
    const { ready } = await new Promise((resolve) => child.once("message", resolve));
    let seq = 0;
    const call = (op, key, value) => {
      const id = ++seq;
      return new Promise((resolve) => {
        const onMessage = (message) => {
          if (message.seq !== id) return;
          child.off("message", onMessage);
          resolve(message.result);
        };
        child.on("message", onMessage);
        child.send({ seq: id, op, key, value });
      });
    };
    return { address: ready, call, exited: new Promise((resolve) => child.once("exit", resolve)) };
  };

  const first = await start({ host: "127.0.0.1", port: 0 });
  const second = await start({ master: first.address });
  const third = await start({ master: second.address });
  const nodes = [first, second, third];
  console.log(`Three nodes, one process each: ${nodes.map((n) => `127.0.0.1:${n.address.port}`).join(", ")}`);

  const value = { says: "Kosyak is a crazy cat", at: new Date().toISOString() };
  await first.call("set", "greeting", value);
  console.log(`set   greeting on node 1 = ${JSON.stringify(value)}`);
  for (const [i, node] of [[2, second], [3, third]]) {
    console.log(`get   greeting on node ${i} = ${JSON.stringify(await node.call("get", "greeting"))}`);
  }

  console.log("\nnode  port   entries  peers  remoteKeys  hits  remoteHits  misses  served");
  for (const [i, node] of nodes.entries()) {
    const s = await node.call("stats");
    const cells = [i + 1, s.port, s.entries, s.peers, s.remoteKeys, s.hits, s.remoteHits, s.misses, s.served];
    const widths = [4, 6, 8, 6, 11, 5, 11, 7, 6];
    console.log(cells.map((cell, c) => String(cell).padEnd(widths[c])).join(" ").trimEnd());
  }

  for (const node of nodes) await node.call("stop");
  await Promise.all(nodes.map((node) => node.exited));
  clearTimeout(giveUp);
  console.log("\nAll three nodes stopped.");
}
