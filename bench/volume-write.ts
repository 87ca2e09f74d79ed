/**
 * Writes into a volume against a plain `TypedArray.set` into a
 * SharedArrayBuffer of the same size, in the same run. Target: the volume
 * reaches at least half of the plain copy, for 4 KiB and 64 KiB writes at
 * random block-aligned offsets (in memory, codes kept by the pool).
 *
 * One tinybench call performs `batch` writes, so the timer's own cost does
 * not swamp a sub-microsecond operation.
 */
import { HashPool, Volume } from '../engine/index.ts';
import { rowsOf, type BenchContext, type SuiteResult } from './harness.ts';

export async function volumeWrite(ctx: BenchContext): Promise<SuiteResult> {
  const size = ctx.parameter('volume bytes', 16 * 2 ** 20, 1024 * 2 ** 20);
  const batch = 256;
  const pool = await HashPool.start({ workers: 1 });
  const volume = await Volume.create({ size, pool });
  const plain = new Uint8Array(new SharedArrayBuffer(size));
  const result: SuiteResult = { suite: 'volume writes vs TypedArray.set', rows: [], checks: [] };
  try {
    for (const writeBytes of [4096, 65536]) {
      const data = new Uint8Array(writeBytes).fill(0x5a);
      const slots = size / writeBytes;
      // A fixed pseudo-random offset sequence, the same for both contenders.
      const offsets = Float64Array.from({ length: 4096 }, (_, i) => ((i * 2654435761) % slots) * writeBytes);
      let k = 0;
      const bench = ctx.bench(`${writeBytes} B writes`);
      bench.add(`TypedArray.set ${writeBytes / 1024} KiB`, () => {
        for (let i = 0; i < batch; i++) plain.set(data, offsets[k++ & 4095]!);
      });
      bench.add(`Volume.writeSync ${writeBytes / 1024} KiB`, () => {
        for (let i = 0; i < batch; i++) volume.writeSync(offsets[k++ & 4095]!, data);
      });
      bench.add(`await Volume.write ${writeBytes / 1024} KiB`, async () => {
        for (let i = 0; i < batch; i++) await volume.write(offsets[k++ & 4095]!, data);
      });
      await bench.run();
      const [set, sync, promised] = rowsOf(bench, batch, writeBytes);
      result.rows.push(set!, sync!, promised!);
      result.checks.push({ name: `writeSync / set, ${writeBytes / 1024} KiB`, ratio: sync!.opsPerSec / set!.opsPerSec, target: 0.5 });
      result.checks.push({ name: `await write / set, ${writeBytes / 1024} KiB`, ratio: promised!.opsPerSec / set!.opsPerSec, target: 0.5 });
    }
  } finally {
    await volume.close();
    await pool.close();
  }
  return result;
}
