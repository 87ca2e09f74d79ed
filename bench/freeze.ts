/**
 * Freeze latency of a consistency group of 64 volumes in two groups: half
 * the primaries mirror and take control over ws://, half over tcp://, eight
 * volumes each, with the secondaries in their own process and the
 * controller in this one, talking to every member over that member's own
 * control link. Each iteration cuts one member's mirror link (a proxy drops
 * the connection and refuses new ones) and ends when every member has
 * frozen; the link then returns and the group resyncs before the next.
 *
 * Reported: from the failure being detected (the failing member's
 * `failure-noticed` event) to every member frozen (the last member's
 * `frozen` event), p50 and p99 over every iteration; the same measured
 * from the cut by tinybench; and how long a write held on the failing
 * member and one on a healthy member waited for RUN.
 *
 * Target (design.md): p99 under 5 ms on loopback.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Controller } from '../engine/controller.ts';
import { ControlServer } from '../engine/control-server.ts';
import type { GroupEvent } from '../engine/member.ts';
import { Primary } from '../engine/primary.ts';
import { runtime } from '../engine/runtime.ts';
import { FaultProxy } from './fault-proxy.ts';
import { startCli } from './cli-process.ts';
import { rowsOf, type BenchContext, type SuiteResult } from './harness.ts';

function percentile(sorted: number[], p: number): number {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]! : NaN;
}

async function until(condition: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!condition()) {
    if (performance.now() > deadline) throw new Error(`freeze bench: timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 1));
  }
}

export async function freeze(ctx: BenchContext): Promise<SuiteResult> {
  const perGroup = ctx.parameter('primaries per group', 1, 4);
  const volumesEach = ctx.parameter('volumes per primary', 2, 8);
  const iterations = ctx.parameter('iterations', 4, 200);
  const volumeBytes = 256 * 1024;
  const result: SuiteResult = {
    suite: `freeze of ${2 * perGroup * volumesEach} volumes in two groups, ws:// and tcp:// (${runtime}; ${iterations} freezes)`,
    rows: [],
    checks: [],
  };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bm-bench-freeze-'));
  const secondary = await startCli(['secondary', '--dir', path.join(dir, 's'), '--listen', 'tcp://127.0.0.1:0', '--listen', 'ws://127.0.0.1:0'], /listening on (\S+), (\S+),/);
  const m = /listening on (\S+), (\S+),/.exec(secondary.output())!;
  const ports = { tcp: Number(m[1]!.split(':').pop()), ws: Number(m[2]!.split(':').pop()) };
  const primaries: Primary[] = [];
  const proxies: FaultProxy[] = [];
  const controls: ControlServer[] = [];
  let controller: Controller | undefined;
  const events: GroupEvent[] = [];
  try {
    for (const scheme of ['ws', 'tcp'] as const) {
      for (let i = 0; i < perGroup; i++) {
        const proxy = await FaultProxy.start(ports[scheme]);
        const name = `${scheme}${i}`;
        const primary = await Primary.start({
          name,
          dir: path.join(dir, name),
          volumes: Array.from({ length: volumesEach }, (_, v) => ({ name: `${name}v${v}`, size: volumeBytes })),
          mirror: proxy.url(scheme),
          mode: 'sync',
          pool: 'none',
          journalBytes: 1 << 20,
          payloadBytesMax: 64 * 1024,
          heartbeatMs: 200,
          reconnectDelayMinMs: 5,
          reconnectDelayMaxMs: 20,
        });
        primary.onEvent((e) => e.type === 'group' && events.push(e));
        primaries.push(primary);
        proxies.push(proxy);
        controls.push(await ControlServer.start(`${scheme}://127.0.0.1:0`, primary.controlEndpoint()));
      }
    }
    controller = Controller.start({ members: controls.map((c) => c.url), heartbeatMs: 200, leaseMs: 5000 });
    await controller.waitJoined(30_000);
    const c = controller;
    const allDuplex = () => c.phase === 'mirroring' && primaries.every((p) => p.pairs.every((x) => x.state === 'duplex'));
    await until(allDuplex, 60_000, 'the group duplex');

    const detectedToFrozen: number[] = [];
    const heldWaits: number[] = [];
    let victim = 0;
    let mark = 0;
    let held: Array<Promise<number>> = [];
    const bench = ctx.bench('freeze');
    bench.add(
      'cut one member’s link → every member frozen',
      async () => {
        mark = events.length;
        proxies[victim]!.refuse(true);
        proxies[victim]!.cut();
        const issue = (p: Primary) => {
          const t0 = performance.now();
          return p.pairs[0]!.write(0, new Uint8Array(4096).fill(1)).then(() => performance.now() - t0);
        };
        // A write to the failing member and one to a member on the other network: both wait for RUN.
        held = [issue(primaries[victim]!), issue(primaries[(victim + perGroup) % primaries.length]!)];
        await until(() => new Set(events.slice(mark).filter((e) => e.event === 'frozen').map((e) => e.member)).size === primaries.length, 10_000, 'every member frozen');
      },
      {
        afterEach: async (mode) => {
          const waits = await Promise.all(held);
          const window = events.slice(mark);
          const noticed = window.find((e) => e.event === 'failure-noticed' && e.member === primaries[victim]!.name);
          const frozen = window.filter((e) => e.event === 'frozen').map((e) => e.t);
          // Warm-up iterations (tinybench's own) are not counted.
          if (mode === 'run') {
            heldWaits.push(...waits);
            if (noticed && frozen.length === primaries.length) detectedToFrozen.push(Math.max(...frozen) - noticed.t);
          }
          proxies[victim]!.refuse(false);
          victim = (victim + 1) % primaries.length;
          await until(allDuplex, 30_000, 'the group duplex again');
        },
      },
    );
    // tinybench decides how often to call the task from its time budget. Its first run gives the
    // tinybench row; further runs (each after a reset: a finished bench runs nothing again) add
    // samples until there are enough, stopping at the first failed iteration (rowsOf throws) and
    // after a bounded number of rounds.
    await bench.run();
    const tinyRows = rowsOf(bench);
    for (let round = 2; detectedToFrozen.length < iterations; round++) {
      if (round > 50) throw new Error(`freeze bench: only ${detectedToFrozen.length} of ${iterations} freezes measured in ${round - 1} rounds`);
      bench.reset();
      await bench.run();
      rowsOf(bench);
    }
    detectedToFrozen.sort((a, b) => a - b);
    heldWaits.sort((a, b) => a - b);
    const p50 = percentile(detectedToFrozen, 0.5);
    const p99 = percentile(detectedToFrozen, 0.99);
    result.rows.push(
      { name: 'failure detected → every member frozen', opsPerSec: 1000 / p50, p50Ms: p50, p99Ms: p99, note: `${detectedToFrozen.length} freezes, max ${detectedToFrozen.at(-1)!.toFixed(3)} ms` },
      { ...tinyRows[0]!, name: 'link cut → every member frozen (tinybench)' },
      { name: 'a held write waits for RUN', opsPerSec: 1000 / percentile(heldWaits, 0.5), p50Ms: percentile(heldWaits, 0.5), p99Ms: percentile(heldWaits, 0.99), note: 'one on the failing member, one on the other network' },
    );
    result.checks.push({ name: 'p99 ms from failure detected to every member frozen', ratio: p99, target: 5, higherIsBetter: false });
    return result;
  } finally {
    await controller?.close();
    for (const p of primaries) await p.close({ drainTimeoutMs: 500 });
    for (const c of controls) await c.close();
    for (const p of proxies) await p.close();
    secondary.kill('SIGTERM');
    await new Promise((r) => secondary.once('exit', r));
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
