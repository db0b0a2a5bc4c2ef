/**
 * A throwaway test network made of Linux network namespaces, for tests that cut real links
 * between nodes in separate processes. A hub namespace holds a bridge; each node namespace is
 * joined to it by a veth pair and gets 10.77.0.(10 + i)/24. Cutting node i disables its port on
 * the bridge: its frames go nowhere, both ways, and its sockets stay open, as when a switch
 * port dies. The veth itself stays up: setting it down drops the carrier, and after a heal the
 * link then stayed silent for longer than the cut (a 100 ms down and up took peers down after a
 * 600 ms peerTimeout), so that a short cut could not be tested.
 *
 * Everything lives inside namespaces this module creates: no link, address or route is added to
 * the machine's own network. Needs root and iproute2 (`ip`, `bridge`). No test runner is imported here.
 *
 * @module
 */
import { execFileSync } from "node:child_process";
import process from "node:process";

/** A network of `size` node namespaces joined by a bridge; see {@link createNetwork}. */
export interface TestNetwork {
  /** Node i's address, 10.77.0.(10 + i). */
  readonly hosts: string[];
  /** The command prefix that runs a program inside node i's namespace. */
  exec(i: number): string[];
  /** Takes node i off the network: its port on the bridge (its veth's hub end) is disabled. */
  cut(i: number): void;
  /** Puts node i back on the network at once: its bridge port forwards again. */
  heal(i: number): void;
  /** Removes every link and namespace of this network; calling it again does nothing. */
  destroy(): void;
}

/** Runs `ip` with `args`; throws with its standard error when it fails. */
function ip(...args: string[]): void {
  try {
    execFileSync("ip", args, { stdio: ["ignore", "ignore", "pipe"] });
  } catch (error) {
    const stderr = String((error as { stderr?: unknown }).stderr ?? "").trim();
    throw new Error(`ip ${args.join(" ")} failed: ${stderr || (error as Error).message}`);
  }
}

/** Runs `ip` with `args` and returns its standard output. */
function ipOutput(...args: string[]): string {
  return execFileSync("ip", args, { stdio: ["ignore", "pipe", "pipe"] }).toString();
}

const PORT_STATES = { disabled: "0", forwarding: "3" } as const;

/**
 * Sets the state of a bridge port with iproute2's `bridge`, and reads it back: `ip link set ...
 * type bridge_slave state` exits 0 without changing it, and a cut that cuts nothing would let a
 * test pass for the wrong reason.
 */
function setPortState(ns: string, port: string, state: keyof typeof PORT_STATES): void {
  const run = (...args: string[]) => {
    try {
      return execFileSync("bridge", ["-n", ns, ...args], { stdio: ["ignore", "pipe", "pipe"] }).toString();
    } catch (error) {
      const stderr = String((error as { stderr?: unknown }).stderr ?? "").trim();
      throw new Error(`bridge -n ${ns} ${args.join(" ")} failed: ${stderr || (error as Error).message}`);
    }
  };
  run("link", "set", "dev", port, "state", PORT_STATES[state]);
  const shown = JSON.parse(run("-j", "link", "show", "dev", port)) as Array<{ state?: string }>;
  if (shown[0]?.state !== state) {
    throw new Error(`Bridge port ${port} in ${ns} is ${shown[0]?.state ?? "missing"} after setting it ${state}`);
  }
}

/** Namespaces made by this process so far, to keep names unique within a run. */
let made = 0;

/** A namespace name: the prefix, this process's id, a counter, and a role. */
function names(prefix: string): { base: string; hub: string; node(i: number): string } {
  const base = `${prefix}-${process.pid}-${made++}`;
  return { base, hub: `${base}-hub`, node: (i) => `${base}-n${i}` };
}

/**
 * Removes the namespaces of earlier runs with the same prefix whose process is gone (a run
 * killed before it could clean up), so that they do not pile up on a CI machine.
 */
function sweepStale(prefix: string): void {
  let listed: string;
  try {
    listed = ipOutput("netns", "list");
  } catch {
    return;
  }
  const pattern = new RegExp(`^${prefix.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}-(\\d+)-\\d+-(hub|n\\d+)$`);
  for (const line of listed.split("\n")) {
    const name = line.split(" ")[0];
    const match = pattern.exec(name);
    if (match === null || Number(match[1]) === process.pid || alive(Number(match[1]))) continue;
    try {
      ip("netns", "delete", name);
    } catch {
      // Another run may be sweeping it at the same moment.
    }
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as { code?: string }).code === "EPERM";
  }
}

/**
 * Builds a hub namespace with a bridge and `size` node namespaces, each with `lo` up and one
 * veth (`eth0`) joined to the bridge. Names start with `prefix` and this process's id, so runs
 * never collide. If any step fails, what was made is removed and the error is thrown.
 */
export function createNetwork(size: number, prefix = "kosyak"): TestNetwork {
  if (!Number.isInteger(size) || size < 1 || size > 200) {
    throw new RangeError(`Cannot create a test network: size must be an integer from 1 to 200: received ${size}`);
  }
  if (!/^[a-z][a-z0-9]{0,15}$/.test(prefix)) {
    throw new RangeError(`Cannot create a test network: prefix must be up to 16 lowercase letters and digits: received "${prefix}"`);
  }
  sweepStale(prefix);
  const name = names(prefix);
  const created: string[] = [];
  const hosts = Array.from({ length: size }, (_, i) => `10.77.0.${10 + i}`);
  // Link names are per namespace: hub-side veths are h0, h1, ... inside the hub only.
  const hubSide = (i: number) => `h${i}`;
  let destroyed = false;

  const destroy = () => {
    if (destroyed) return;
    destroyed = true;
    const problems: string[] = [];
    // Deleting the hub-side veths first destroys each pair even if a process still runs inside
    // a node namespace (which would keep that namespace, and its links, alive after its name goes).
    if (created.includes(name.hub)) {
      for (let i = 0; i < size; i++) {
        try {
          ip("-n", name.hub, "link", "delete", hubSide(i));
        } catch {
          // Not made, or already gone with its peer.
        }
      }
    }
    for (const ns of created.reverse()) {
      try {
        ip("netns", "delete", ns);
      } catch (error) {
        problems.push((error as Error).message);
      }
    }
    if (problems.length > 0) throw new Error(`Could not remove the test network: ${problems.join("; ")}`);
  };

  const addNamespace = (ns: string) => {
    ip("netns", "add", ns);
    created.push(ns);
    ip("-n", ns, "link", "set", "lo", "up");
  };

  try {
    addNamespace(name.hub);
    ip("-n", name.hub, "link", "add", "br0", "type", "bridge");
    ip("-n", name.hub, "link", "set", "br0", "up");
    for (let i = 0; i < size; i++) {
      const ns = name.node(i);
      addNamespace(ns);
      ip("-n", name.hub, "link", "add", hubSide(i), "type", "veth", "peer", "name", "eth0", "netns", ns);
      ip("-n", name.hub, "link", "set", hubSide(i), "master", "br0");
      ip("-n", name.hub, "link", "set", hubSide(i), "up");
      ip("-n", ns, "address", "add", `${hosts[i]}/24`, "dev", "eth0");
      ip("-n", ns, "link", "set", "eth0", "up");
    }
  } catch (error) {
    try {
      destroy();
    } catch (cleanup) {
      throw new Error(`${(error as Error).message} (and cleaning up failed: ${(cleanup as Error).message})`, { cause: error });
    }
    throw error;
  }

  const check = (i: number) => {
    if (destroyed) throw new Error("The test network was destroyed");
    if (!Number.isInteger(i) || i < 0 || i >= size) throw new RangeError(`No node ${i} in a network of ${size}`);
  };
  return {
    hosts,
    exec(i) {
      check(i);
      return ["ip", "netns", "exec", name.node(i)];
    },
    cut(i) {
      check(i);
      setPortState(name.hub, hubSide(i), "disabled");
    },
    heal(i) {
      check(i);
      setPortState(name.hub, hubSide(i), "forwarding");
    },
    destroy,
  };
}

let probed: { ok: boolean; why?: string } | undefined;

/**
 * Whether this machine can run {@link createNetwork}: the process is root and a namespace with a
 * bridge in it can be made. The answer is worked out once per process.
 */
export function netnsAvailable(): { ok: boolean; why?: string } {
  if (probed !== undefined) return probed;
  if (process.platform !== "linux") return (probed = { ok: false, why: `network namespaces need Linux, not ${process.platform}` });
  const uid = process.getuid?.();
  if (uid !== 0) return (probed = { ok: false, why: `network namespaces need root; this process runs as uid ${uid}` });
  const ns = `kosyakprobe-${process.pid}`;
  try {
    ip("netns", "add", ns);
  } catch (error) {
    return (probed = { ok: false, why: `cannot create a network namespace: ${(error as Error).message}` });
  }
  try {
    ip("-n", ns, "link", "add", "br0", "type", "bridge");
    ip("-n", ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1");
    ip("-n", ns, "link", "set", "v0", "master", "br0");
    for (const link of ["br0", "v0", "v1"]) ip("-n", ns, "link", "set", link, "up");
    setPortState(ns, "v0", "disabled");
    setPortState(ns, "v0", "forwarding");
    probed = { ok: true };
  } catch (error) {
    probed = { ok: false, why: `cannot build a bridge with a port that can be disabled in a namespace: ${(error as Error).message}` };
  } finally {
    try {
      ip("netns", "delete", ns);
    } catch {
      // Nothing more to do; the probe's answer stands.
    }
  }
  return probed;
}
