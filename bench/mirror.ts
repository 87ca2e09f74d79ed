/**
 * Mirrored writes, primary in this process and the secondary in its own
 * process (as a user would run them), on loopback: 4 KiB writes at queue
 * depth 1 and 32 and 1 MiB writes at queue depth 4, sync and async, over
 * tcp:// and ws://, beside iperf3 on loopback in the same run. One tinybench
 * task call is one batch of writes, and in async mode it ends when the
 * secondary has acknowledged the whole batch (no fsync: the comparison is
 * with a network stream), so a batch counts only once the secondary has it.
 *
 * One secondary serves every configuration; before each one the bench waits
 * until the secondary has rehashed what the previous one wrote, so that this
 * background work is not charged to the next configuration (without the
 * wait, Node's ws:// rows, which run last, measured 2 to 3 times lower).
 *
 * Targets: async tcp:// streaming (1 MiB) at least half of iperf3; ws:// at
 * least 0.6 of tcp:// on the same runtime.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Primary } from '../engine/primary.ts';
import { requestStatus } from '../engine/control-server.ts';
import { runtime } from '../engine/runtime.ts';
import { startCli } from './cli-process.ts';
import { iperf3Loopback } from './iperf.ts';
import { type BenchContext, type Row, type SuiteResult } from './harness.ts';

interface Shape {
  label: string;
  writeBytes: number;
  depth: number;
  batch: number;
}

export async function mirror(ctx: BenchContext): Promise<SuiteResult> {
  const shapes: Shape[] = [
    { label: '4 KiB qd1', writeBytes: 4096, depth: 1, batch: ctx.parameter('batch', 16, 256) },
    { label: '4 KiB qd32', writeBytes: 4096, depth: 32, batch: ctx.parameter('batch', 64, 2048) },
    { label: '1 MiB qd4', writeBytes: 1 << 20, depth: 4, batch: ctx.parameter('batch', 4, 64) },
  ];
  const result: SuiteResult = { suite: `mirrored writes on loopback (${runtime}; secondary in its own process)`, rows: [], checks: [], skipped: [] };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bm-bench-mirror-'));
  const secondary = await startCli(['secondary', '--dir', path.join(dir, 's'), '--listen', 'tcp://127.0.0.1:0', '--listen', 'ws://127.0.0.1:0', '--control', 'tcp://127.0.0.1:0'], /control on (\S+)/);
  const m = /listening on (\S+), (\S+),.*control on (\S+)/.exec(secondary.output())!;
  const urls = { tcp: m[1]!, ws: m[2]! };
  // One secondary serves every configuration, as it would serve many primaries. Before each one,
  // wait until it has rehashed what the previous one wrote: that work belongs to the previous one.
  const quiet = async () => {
    const deadline = performance.now() + 120_000;
    for (;;) {
      const s = (await requestStatus(m[3]!)) as { volumes: Array<{ invalidCodes: number }> };
      if (s.volumes.every((v) => v.invalidCodes === 0)) return;
      if (performance.now() > deadline) throw new Error('mirror bench: the secondary did not make its codes current within 120 s');
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  const rows = new Map<string, Row>();
  try {
    for (const scheme of ['tcp', 'ws'] as const) {
      for (const mode of ['sync', 'async'] as const) {
        const name = `${scheme}-${mode}`;
        const volumeBytes = ctx.parameter('volume', 16 << 20, 256 << 20);
        await quiet();
        // Each shape writes its own fresh volume, so that no row inherits the image files' page cache
        // from the row before it: after 4 KiB writes have spread small pages over an image, 1 MiB
        // writes into it cost the kernel more (measured: 0.70 against 0.93 GB/s for the async 1 MiB row).
        const volumeName = (shape: Shape) => `${name}-${shape.label.replace(/ /g, '-')}`;
        const primary = await Primary.start({ dir: path.join(dir, 'p'), volumes: shapes.map((shape) => ({ name: volumeName(shape), size: volumeBytes })), mirror: urls[scheme], mode, pool: 'none' });
        try {
          await primary.waitDuplex(60_000);
          for (const shape of shapes) {
            const pair = primary.volume(volumeName(shape));
            const data = new Uint8Array(shape.writeBytes).fill(0x42);
            const slots = volumeBytes / shape.writeBytes;
            let next = 0;
            const latencies: number[] = [];
            const runBatch = async () => {
              let issued = 0;
              const lane = async () => {
                while (issued < shape.batch) {
                  issued++;
                  const offset = ((next++ * 2654435761) % slots) * shape.writeBytes;
                  const t0 = performance.now();
                  await pair.write(offset, data);
                  latencies.push(performance.now() - t0);
                }
              };
              await Promise.all(Array.from({ length: shape.depth }, lane));
              if (mode === 'async' && !(await primary.drain())) throw new Error(`${name}: the link failed during the benchmark`);
            };
            const bench = ctx.bench(`${name} ${shape.label}`);
            bench.add(`${scheme}:// ${mode} ${shape.label}`, runBatch);
            await bench.run();
            const task = bench.tasks[0]!.result as { latency: { p50: number } };
            const opsPerSec = (shape.batch * 1000) / task.latency.p50;
            latencies.sort((a, b) => a - b);
            const row: Row = {
              name: `${scheme}:// ${mode} ${shape.label}`,
              opsPerSec,
              bytesPerSec: opsPerSec * shape.writeBytes,
              p50Ms: latencies[Math.floor(latencies.length * 0.5)],
              p99Ms: latencies[Math.floor(latencies.length * 0.99)],
              note: mode === 'async' ? 'latency: until the write resolved (queued); each batch ends when the secondary has acknowledged all of it' : 'latency: until the secondary applied it',
            };
            rows.set(row.name, row);
            result.rows.push(row);
            if (pair.state !== 'duplex') throw new Error(`${name} left duplex during ${shape.label}: ${pair.state}`);
          }
        } finally {
          await primary.close();
        }
      }
    }
    const iperf = await iperf3Loopback(ctx.parameter('iperf seconds', 1, 3));
    const asyncTcp = rows.get('tcp:// async 1 MiB qd4')!;
    if ('skipped' in iperf) {
      result.skipped!.push(iperf.skipped);
    } else {
      result.rows.push({ name: 'iperf3, loopback, 1 stream', opsPerSec: iperf.bytesPerSec / (1 << 20), bytesPerSec: iperf.bytesPerSec, note: 'ops = MiB' });
      result.checks.push({ name: 'async tcp:// 1 MiB / iperf3', ratio: asyncTcp.bytesPerSec! / iperf.bytesPerSec, target: 0.5 });
    }
    for (const shape of shapes) {
      for (const mode of ['sync', 'async']) {
        const ws = rows.get(`ws:// ${mode} ${shape.label}`)!;
        const tcp = rows.get(`tcp:// ${mode} ${shape.label}`)!;
        result.checks.push({ name: `ws:// / tcp://, ${mode} ${shape.label}`, ratio: ws.opsPerSec / tcp.opsPerSec, target: shape.label.startsWith('1 MiB') && mode === 'async' ? 0.6 : undefined });
      }
    }
  } finally {
    secondary.kill('SIGTERM');
    await new Promise((r) => (secondary.exitCode !== null ? r(null) : secondary.once('exit', r)));
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return result;
}
