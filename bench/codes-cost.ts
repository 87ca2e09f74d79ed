/**
 * The cost of keeping codes current: 4 KiB random writes into a volume with
 * the hashing pool running (codes rehashed once a segment has been quiet for
 * the rehash delay) against the same writes with no pool at all. Target: at
 * most 10% lower throughput with the pool.
 *
 * Each contender gets its own volume, filled alike, so that pages are
 * resident for both; the tasks run one after the other in the same run.
 */
import { HashPool, Volume } from '../engine/index.ts';
import { rowsOf, type BenchContext, type SuiteResult } from './harness.ts';

export async function codesCost(ctx: BenchContext): Promise<SuiteResult> {
  const size = ctx.parameter('volume bytes', 16 * 2 ** 20, 1024 * 2 ** 20);
  const batch = 256;
  const delays = [5, 50];
  const pools = await Promise.all(delays.map((d) => HashPool.start({ workers: 1, rehashDelayMs: d })));
  const off = await Volume.create({ size, pool: 'none' });
  const on = await Promise.all(pools.map((pool) => Volume.create({ size, pool })));
  const result: SuiteResult = { suite: `cost of keeping codes current, 4 KiB random writes, ${size / 2 ** 20} MiB volume`, rows: [], checks: [] };
  try {
    const data = new Uint8Array(4096).fill(7);
    const slots = size / 4096;
    const offsets = Float64Array.from({ length: 65536 }, (_, i) => ((i * 2654435761) % slots) * 4096);
    for (const v of [off, ...on]) v.writeZeroesSync(0, size); // commit every page before timing
    let k = 0;
    const bench = ctx.bench('codes cost');
    bench.add('pool off', () => {
      for (let i = 0; i < batch; i++) off.writeSync(offsets[k++ & 65535]!, data);
    });
    on.forEach((v, i) =>
      bench.add(`pool on (1 worker, rehash after ${delays[i]} ms quiet)`, () => {
        for (let j = 0; j < batch; j++) v.writeSync(offsets[k++ & 65535]!, data);
      }),
    );
    const before = pools.map((p) => p.stats().bytesHashed);
    await bench.run();
    const rows = rowsOf(bench, batch, 4096);
    // Show that the pool really worked while the writes ran: bytes it rehashed.
    pools.forEach((p, i) => (rows[i + 1]!.note = `pool rehashed ${((p.stats().bytesHashed - before[i]!) / 2 ** 30).toFixed(2)} GiB during the run`));
    result.rows.push(...rows);
    rows.slice(1).forEach((r, i) => {
      result.checks.push({ name: `slowdown with pool, ${delays[i]} ms delay`, ratio: 1 - r.opsPerSec / rows[0]!.opsPerSec, target: 0.1, higherIsBetter: false });
    });
  } finally {
    for (const v of [off, ...on]) await v.close();
    for (const p of pools) await p.close();
  }
  return result;
}
