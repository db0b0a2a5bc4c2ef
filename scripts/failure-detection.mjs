// `npm run detect`: how long a node takes to notice that a peer died (SIGKILL) or froze
// (SIGSTOP), with the default heartbeatInterval and peerTimeout. Each peer is a separate Node.js
// process on loopback; the observer runs here. Prints one line per trial and the medians.
import { spawn } from "node:child_process";
import process from "node:process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { DEFAULTS, Node } from "kosyak";

const TRIALS = 5;
const fixture = fileURLToPath(new URL("../test/fixtures/cluster-node.mjs", import.meta.url));

async function startPeer() {
  const child = spawn(process.execPath, [fixture, JSON.stringify({ host: "127.0.0.1", port: 0 })], {
    stdio: ["pipe", "pipe", "inherit"],
  });
  const ready = await new Promise((resolve, reject) => {
    createInterface({ input: child.stdout }).once("line", (line) => resolve(JSON.parse(line).ready));
    child.once("exit", () => reject(new Error("the peer process exited before it was ready")));
  });
  return { child, ...ready };
}

async function trial(signal) {
  const peer = await startPeer();
  const observer = await new Node({ master: peer.address }).init().ready();
  try {
    const down = new Promise((resolve) => observer.on("peerDown", (event) => resolve(event)));
    const started = performance.now();
    process.kill(peer.child.pid, signal);
    const event = await Promise.race([
      down,
      new Promise((_, reject) => setTimeout(() => reject(new Error("not detected within 30 s")), 30_000)),
    ]);
    return { ms: performance.now() - started, reason: event.reason };
  } finally {
    await observer.stop();
    if (peer.child.exitCode === null && peer.child.signalCode === null) peer.child.kill("SIGKILL");
  }
}

const median = (values) => values.slice().sort((a, b) => a - b)[Math.floor(values.length / 2)];
console.log(`heartbeatInterval ${DEFAULTS.heartbeatInterval} ms, peerTimeout ${DEFAULTS.peerTimeout} ms, ${TRIALS} trials each`);
for (const signal of ["SIGKILL", "SIGSTOP"]) {
  const times = [];
  for (let i = 0; i < TRIALS; i++) {
    const { ms, reason } = await trial(signal);
    times.push(ms);
    console.log(`${signal} trial ${i + 1}: detected in ${ms.toFixed(1)} ms (reason: ${reason})`);
  }
  console.log(`${signal}: median ${median(times).toFixed(1)} ms, max ${Math.max(...times).toFixed(1)} ms`);
}
