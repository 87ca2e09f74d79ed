/**
 * The headline: differential resync by codes beside rsync, on the same data
 * in the same run.
 *
 * A volume (1 GiB at full size) is attached to a secondary that holds an
 * older copy of it (a previous secondary: an older generation) in which 1%,
 * 10% or 100% of the 64 KiB segments differ. Every code is compared and only
 * the differing segments are copied. Measured from the moment the primary,
 * started with `connect: false`, is told to connect until the pair is
 * duplex (connection and handshake included):
 *
 * - codes current: both sides' codes computed beforehand (the secondary's
 *   pool keeps them current while it runs, the primary settles its own);
 * - codes cold: both sides have just opened their images and must hash
 *   every segment during the comparison.
 *
 * The reference: `rsync --inplace --no-whole-file -B 65536` from the
 * primary's image onto a fresh copy of the same older image, both in the
 * page cache. The secondary runs in its own process, as a user runs it.
 *
 * Both start from a clean page cache (dirty pages flushed). Our time
 * includes making the target durable at the end (the undo log and the
 * image synced, the metadata saved); rsync's does not sync anything.
 *
 * Targets (design.md): codes current at least 25 times faster than rsync at
 * 1%; codes cold at least 3 times faster.
 */
import { spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Bench } from 'tinybench';
import { Primary } from '../engine/primary.ts';
import { newGen, saveMetadata, type VolumeMetadata } from '../engine/metadata.ts';
import { requestStatus } from '../engine/control-server.ts';
import { runtime } from '../engine/runtime.ts';
import { startCli } from './cli-process.ts';
import { rowsOf, type BenchContext, type Row, type SuiteResult } from './harness.ts';

const segment = 64 * 1024;

function fillRandom(file: string, bytes: number): void {
  const fd = fs.openSync(file, 'w');
  const chunk = new Uint8Array(8 << 20);
  for (let at = 0; at < bytes; at += chunk.length) {
    crypto.randomFillSync(chunk);
    fs.writeSync(fd, chunk, 0, Math.min(chunk.length, bytes - at), at);
  }
  fs.closeSync(fd);
}

/** A copy of `source` in which `fraction` of the segments (spread evenly) hold other bytes. */
function olderCopy(source: string, target: string, bytes: number, fraction: number): number {
  fs.copyFileSync(source, target);
  const segments = bytes / segment;
  const changed = Math.max(1, Math.round(segments * fraction));
  const fd = fs.openSync(target, 'r+');
  const data = new Uint8Array(segment);
  for (let i = 0; i < changed; i++) {
    crypto.randomFillSync(data);
    fs.writeSync(fd, data, 0, segment, Math.floor((i * segments) / changed) * segment);
  }
  fs.closeSync(fd);
  return changed;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted.length ? sorted[Math.floor(sorted.length / 2)]! : NaN;
}

function run(command: string, args: string[]): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    child.on('close', (code) => resolve({ code, out }));
  });
}

export async function resync(ctx: BenchContext): Promise<SuiteResult> {
  const volumeBytes = ctx.parameter('volume', 32 << 20, 1 << 30);
  const rounds = ctx.parameter('rounds', 1, 3);
  const fractions = ctx.parameter('fractions', [0.01], [0.01, 0.1, 1]);
  const result: SuiteResult = { suite: `differential resync of a ${volumeBytes >> 20} MiB volume beside rsync (${runtime}; secondary in its own process; median of ${rounds})`, rows: [], checks: [], skipped: [] };
  const hasRsync = spawnSync('sh', ['-c', 'command -v rsync']).status === 0;
  if (!hasRsync) result.skipped!.push('rsync: not installed (apt-get install rsync); no reference row');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bm-bench-resync-'));
  const d = (x: string) => path.join(dir, x);
  try {
    fs.mkdirSync(d('p'));
    fillRandom(d('p/v.img'), volumeBytes);
    // The primary's volume is one generation on from the older copies.
    const g0 = newGen();
    const g1 = newGen();
    const geometry = { name: 'v', size: volumeBytes, blockSize: 4096, segmentSize: segment, code: 'xxh3' as const };
    const primaryMeta: VolumeMetadata = { ...geometry, role: 'primary', gen: g1, history: [g0], oosBase: g1, consistent: true };
    const secondaryMeta: VolumeMetadata = { ...geometry, role: 'secondary', gen: g0, history: [], oosBase: g0, consistent: true };
    for (const fraction of fractions) {
      const label = `${fraction * 100}%`;
      const template = d(`older-${fraction}.img`);
      const changed = olderCopy(d('p/v.img'), template, volumeBytes, fraction);
      const medians: Record<string, Row> = {};
      for (const codes of ['current', 'cold'] as const) {
        let secondary: Awaited<ReturnType<typeof startCli>> | undefined;
        let primary: Primary | undefined;
        let copied = 0;
        let wire = 0;
        // Where the time goes, per round: from connect() to the link being up (connection and
        // handshake), and from then to the end of the resync (comparison, copies, the durable end).
        let startedAt = 0;
        const handshakeMs: number[] = [];
        const resyncMs: number[] = [];
        const bench = new Bench({ name: `resync ${label} ${codes}`, iterations: rounds, time: 0, warmup: false });
        bench.add(
          `blockmirror, ${label} differ, codes ${codes}`,
          async () => {
            startedAt = performance.now();
            primary!.connect();
            await primary!.waitDuplex(600_000);
          },
          {
            beforeEach: async () => {
              fs.rmSync(d('s'), { recursive: true, force: true });
              fs.mkdirSync(d('s'));
              fs.copyFileSync(template, d('s/v.img'));
              saveMetadata(d('s'), secondaryMeta);
              saveMetadata(d('p'), primaryMeta);
              // Start clean: the copy just made must not be written back while the resync runs.
              spawnSync('sync');
              secondary = await startCli(['secondary', '--dir', d('s'), '--listen', 'tcp://127.0.0.1:0', '--control', 'tcp://127.0.0.1:0'], /control on (\S+)/, 120_000);
              const m = /listening on (\S+),.*control on (\S+)/.exec(secondary.output())!;
              primary = await Primary.start({ dir: d('p'), volumes: [{ name: 'v', size: volumeBytes }], mirror: m[1]!, connect: false });
              let linkUpAt = 0;
              primary.onEvent((e) => {
                if (e.type === 'link' && e.status === 'connected') linkUpAt = performance.now();
                if (e.type === 'resync' && e.event === 'finished') {
                  handshakeMs.push(linkUpAt - startedAt);
                  resyncMs.push(performance.now() - linkUpAt);
                }
              });
              if (codes === 'current') {
                await primary.pairs[0]!.volume.settle({ timeoutMs: 600_000 });
                const deadline = performance.now() + 600_000;
                for (;;) {
                  const s = (await requestStatus(m[2]!)) as { volumes: Array<{ invalidCodes: number }> };
                  if (s.volumes[0]?.invalidCodes === 0) break;
                  if (performance.now() > deadline) throw new Error('resync bench: the secondary did not make its codes current within 600 s');
                  await new Promise((r) => setTimeout(r, 20));
                }
              }
            },
            afterEach: async () => {
              copied = primary!.pairs[0]!.progress?.bytesCopied ?? -1;
              wire = primary!.status().recordBytes;
              await primary!.close();
              secondary!.kill('SIGTERM');
              await new Promise((r) => secondary!.once('exit', r));
            },
          },
        );
        await bench.run();
        const row = rowsOf(bench)[0]!;
        row.note = `${changed} of ${volumeBytes / segment} segments differ; copied ${(copied / 2 ** 20).toFixed(1)} MiB, ${(wire / 2 ** 20).toFixed(1)} MiB of records sent; median ${median(handshakeMs).toFixed(1)} ms to connect and shake hands, ${median(resyncMs).toFixed(1)} ms from then to the durable end`;
        medians[codes] = row;
        result.rows.push(row);
      }
      if (hasRsync) {
        const bench = new Bench({ name: `rsync ${label}`, iterations: rounds, time: 0, warmup: false });
        let sent = '';
        bench.add(
          `rsync --inplace --no-whole-file -B 65536, ${label} differ`,
          async () => {
            const r = await run('rsync', ['--inplace', '--no-whole-file', '-B', '65536', '--stats', d('p/v.img'), d('r/v.img')]);
            if (r.code !== 0) throw new Error(`rsync failed: ${r.out}`);
            sent = /Total bytes sent: ([\d,]+)/.exec(r.out)?.[1] ?? '?';
          },
          {
            beforeEach: () => {
              fs.mkdirSync(d('r'), { recursive: true });
              fs.copyFileSync(template, d('r/v.img'));
              spawnSync('sync');
            },
          },
        );
        await bench.run();
        const row = rowsOf(bench)[0]!;
        row.note = `${sent} bytes sent`;
        result.rows.push(row);
        const rsyncMs = row.p50Ms!;
        result.checks.push({ name: `rsync time / blockmirror time, ${label} differ, codes current`, ratio: rsyncMs / medians.current!.p50Ms!, target: fraction === 0.01 ? 25 : undefined });
        result.checks.push({ name: `rsync time / blockmirror time, ${label} differ, codes cold`, ratio: rsyncMs / medians.cold!.p50Ms!, target: fraction === 0.01 ? 3 : undefined });
      }
      fs.rmSync(template, { force: true });
    }
    return result;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
