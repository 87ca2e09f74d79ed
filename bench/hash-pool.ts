/**
 * The hashing pool over a volume in memory, cold (first full pass) and warm
 * (median of repeated full recomputes), with 1 and 2 workers, beside native
 * XXH3 (C, libxxhash) hashing the same amount of memory with 1 and 2 threads,
 * our kernel on the main thread, and hash-wasm's xxhash64 and xxhash3 (which
 * copy each segment into their own memory). Target: the 2-worker pool at
 * least 0.8 of native with 2 threads.
 */
import { createXXHash3, createXXHash64 } from 'hash-wasm';
import { HashPool, Volume } from '../engine/index.ts';
import { fillRandom } from './fill.ts';
import { rowsOf, type BenchContext, type Row, type SuiteResult } from './harness.ts';
import { nativeXxh3 } from './native.ts';

export async function hashPool(ctx: BenchContext): Promise<SuiteResult> {
  const size = ctx.parameter('volume bytes', 32 * 2 ** 20, 1024 * 2 ** 20);
  const segment = 65536;
  const result: SuiteResult = { suite: `hashing ${size / 2 ** 20} MiB in memory, 64 KiB segments`, rows: [], checks: [], skipped: [] };
  const pools = [await HashPool.start({ workers: 1 }), await HashPool.start({ workers: 2 })];
  const volumes = [
    await Volume.create({ size, pool: 'none' }),
    await Volume.create({ size, pool: pools[0] }),
    await Volume.create({ size, pool: pools[1] }),
  ];
  const gib = (ms: number) => size / 2 ** 30 / (ms / 1000);
  try {
    for (const v of volumes) fillRandom(v);
    const labels = ['kernel, main thread', 'pool, 1 worker', 'pool, 2 workers'];
    for (const [i, v] of volumes.entries()) {
      await v.settle();
      const t0 = performance.now();
      await v.recomputeCodes();
      const ms = performance.now() - t0;
      result.rows.push({ name: `${labels[i]} (cold, first pass)`, opsPerSec: 1000 / ms, bytesPerSec: gib(ms) * 2 ** 30 });
    }
    const bench = ctx.bench('hash pool');
    for (const [i, v] of volumes.entries()) bench.add(`${labels[i]} (warm)`, () => v.recomputeCodes());
    const x3 = await createXXHash3();
    const x64 = await createXXHash64();
    const source = volumes[0]!;
    const view = (s: number) => source.read(s * segment, segment);
    // hash-wasm copies its input into its own memory; give it views it can
    // read without an extra copy on our side (read() copies, so time only the hashing).
    const scratch = Array.from({ length: 64 }, (_, s) => view(s));
    const rounds = size / segment;
    bench.add('hash-wasm xxhash3, 1 thread', () => {
      for (let s = 0; s < rounds; s++) (x3.init(), x3.update(scratch[s & 63]!), x3.digest('binary'));
    });
    bench.add('hash-wasm xxhash64, 1 thread', () => {
      for (let s = 0; s < rounds; s++) (x64.init(), x64.update(scratch[s & 63]!), x64.digest('binary'));
    });
    await bench.run();
    const rows = rowsOf(bench, 1, size);
    result.rows.push(...rows);
    const native: Row[] = [];
    for (const threads of [1, 2]) {
      const r = await nativeXxh3({ bytes: size, threads, rounds: ctx.parameter('native rounds', 3, 11) });
      if ('skipped' in r) {
        result.skipped!.push(`native XXH3 with ${threads} threads: ${r.skipped}`);
        continue;
      }
      native[threads] = { name: `native XXH3 (C), ${threads} thread${threads > 1 ? 's' : ''}`, opsPerSec: (r.gibPerSec * 2 ** 30) / size, bytesPerSec: r.gibPerSec * 2 ** 30 };
      result.rows.push(native[threads]!);
    }
    const warm = (label: string) => rows.find((r) => r.name.startsWith(label))!.bytesPerSec!;
    if (native[2]) result.checks.push({ name: 'pool 2 workers / native 2 threads', ratio: warm('pool, 2 workers') / native[2].bytesPerSec!, target: 0.8 });
    if (native[1]) result.checks.push({ name: 'pool 1 worker / native 1 thread', ratio: warm('pool, 1 worker') / native[1].bytesPerSec! });
    result.checks.push({ name: 'kernel / hash-wasm xxhash3, 1 thread', ratio: warm('kernel, main thread') / warm('hash-wasm xxhash3') });
  } finally {
    for (const v of volumes) await v.close();
    for (const p of pools) await p.close();
  }
  return result;
}
