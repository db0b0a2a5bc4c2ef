// Coherence under concurrency and faults: nodes in separate processes run seeded random
// workloads on the same few keys, and test/history.ts checks the merged histories for reads of
// replaced values; afterwards every node must read the same value for every key.
import { afterEach, assert, clusterIt, describe, mixedIt, runtime, spawnWorkloadNode, stopAll, waitFor } from "../deps.ts";
import { agreement, assertCoherent, check, cluster, FAST, fullMesh, KEYS, lossDuring, now, peersAre, recordedSet, workload } from "./workloads.ts";

afterEach(stopAll);

describe("Coherence of concurrent reads and writes across processes", () => {
  clusterIt(`four ${runtime} processes writing and reading the same keys never read a replaced value, and then agree on every key`, async () => {
    const nodes = await cluster("a", [runtime, runtime, runtime, runtime]);
    const histories = await Promise.all(nodes.map((node, i) => node.run(workload(100 + i, 3_000))));
    const divergent = await agreement(nodes, 5_000);
    const violations = check(`four ${runtime} processes`, histories.flat(), divergent);
    assertCoherent(violations, divergent);
  }, 40_000);

  mixedIt("a cluster of Node.js, Deno and Bun processes writing and reading the same keys never reads a replaced value, and then agrees", async () => {
    const nodes = await cluster("b", ["node", "deno", "bun", runtime]);
    const histories = await Promise.all(nodes.map((node, i) => node.run(workload(200 + i, 3_000))));
    const divergent = await agreement(nodes, 5_000);
    const violations = check("node, deno, bun and " + runtime, histories.flat(), divergent);
    assertCoherent(violations, divergent);
  }, 40_000);

  // With near caches too: a frozen node's kept values must not outlive the writes it missed. With
  // hash placement, the frozen node owns keys that get new owners meanwhile.
  for (const [nearCache, placement, prefix] of [[false, "local", "c"], [true, "local", "cn"], [false, "hash", "ch"]] as const) {
    clusterIt(`a node frozen past peerTimeout while the others overwrite its keys serves no replaced value once it runs again, and all agree${nearCache ? " (near caches)" : ""}${placement === "hash" ? " (hash placement)" : ""}`, async () => {
      const nodes = await cluster(prefix, [runtime, runtime, runtime, runtime], { ...FAST, nearCache, placement });
      const frozen = nodes[3];
      const others = nodes.slice(0, 3);
      const seeded = [];
      for (const key of KEYS) seeded.push(await recordedSet(frozen, key, `${frozen.name}:seed-${key}`));

      const pausedAt = now();
      frozen.pause();
      const whileFrozen = Promise.all(others.map((node, i) => node.run(workload(300 + i, 2_500))));
      await peersAre(others, 2, 5_000);
      const frozenHistories = await whileFrozen;
      frozen.resume();
      await fullMesh(nodes, 8_000);
      const afterResume = await agreement(nodes, 5_000);
      const convergedAt = now();

      const window = { from: pausedAt, to: convergedAt };
      const afterwards = await Promise.all(nodes.map((node, i) => node.run(workload(310 + i, 2_000))));
      const divergent = await agreement(nodes, 5_000);
      const history = [...seeded, ...frozenHistories.flat(), ...afterwards.flat(), ...lossDuring(frozen.name, window)];
      const violations = check(
        `frozen for ${Math.round(window.to - pausedAt)} ms (divergent right after the resume: [${afterResume.join(", ")}])`,
        history,
        divergent,
        [window],
      );
      assert.deepEqual(afterResume, [], "every node reads the same value for every key within 5 s of the resume");
      assertCoherent(violations, divergent);
      if (nearCache) {
        const stats = (await Promise.all(nodes.map((node) => node.call({ cmd: "stats" })))) as Array<{ nearHits: number }>;
        assert.ok(stats.some((s) => s.nearHits > 0), "the near caches served reads");
      }
    }, 40_000);
  }

  for (const [placement, prefix] of [["local", "d"], ["hash", "dh"]] as const) {
    clusterIt(`a node killed mid-workload and replaced by a fresh process joining through a survivor leaves no replaced value readable, and all agree${placement === "hash" ? " (hash placement)" : ""}`, async () => {
      const nodes = await cluster(prefix, [runtime, runtime, runtime, runtime], { ...FAST, placement });
      const victim = nodes[3];
      const survivors = nodes.slice(0, 3);
      const running = survivors.map((node, i) => node.run(workload(400 + i, 4_000)));
      const doomed = victim.run({ ...workload(403, 4_000), stream: true }).catch(() => []);
      await waitFor("the victim to complete 100 ops", () => victim.recorded().filter((op) => op.ok).length >= 100, 5_000);

      const killedAt = now();
      await victim.kill();
      await doomed;
      await peersAre(survivors, 2, 5_000);
      const fresh = await spawnWorkloadNode(`${prefix}4-fresh`, { ...FAST, placement, master: survivors[1].address });
      const members = [...survivors, fresh];
      await fullMesh(members, 8_000);
      const window = { from: killedAt, to: now() };

      const freshHistory = await fresh.run(workload(404, 1_500));
      const histories = await Promise.all(running);
      const divergent = await agreement(members, 5_000);
      const history = [...histories.flat(), ...victim.recorded(), ...freshHistory, ...lossDuring(victim.name, window)];
      const violations = check(`${placement} placement, killed, replaced after ${Math.round(window.to - window.from)} ms`, history, divergent, [window]);
      assertCoherent(violations, divergent);
    }, 40_000);
  }
});
