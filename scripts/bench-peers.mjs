// The processes that the benchmark and the profiler talk to: scripts/bench-peer.mjs under a
// runtime's command, started and stopped.
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const script = fileURLToPath(new URL("./bench-peer.mjs", import.meta.url));

/**
 * Starts scripts/bench-peer.mjs in `mode` ("node" or "bare", see there) with `command` (the
 * runtime and its arguments), adds it to `children`, and resolves with its port.
 */
export async function startPeer(command, children, mode, options = {}) {
  const child = spawn(command[0], [...command.slice(1), script, mode, JSON.stringify(options)], { stdio: ["pipe", "pipe", "inherit"] });
  children.push(child);
  const line = await new Promise((resolve, reject) => {
    createInterface({ input: child.stdout }).once("line", resolve);
    child.once("exit", () => reject(new Error(`a ${mode} peer exited early`)));
  });
  return JSON.parse(line).port;
}

/** Closes the standard input of every child, which makes a peer stop, and waits for them to exit. */
export async function stopPeers(children) {
  for (const child of children) child.stdin.end();
  await Promise.all(children.map((child) => child.exitCode === null && new Promise((resolve) => child.once("exit", resolve))));
}
