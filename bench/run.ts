/**
 * Runs the benchmark suites at full size and prints their tables.
 *
 *   npm run bench                  every suite
 *   npm run bench -- hash-pool     one suite (volume-write, hash-pool, codes-cost, mirror)
 *   bun run bench/run.ts mirror    the same on Bun (deno run -A bench/run.ts on Deno)
 *
 * Run nothing else on the machine meanwhile: it has two cores, and only the
 * ratios measured side by side in one run are meaningful.
 */
import { runBenchmarks } from './suites.ts';

try {
  await runBenchmarks(process.argv.slice(2).filter((a) => !a.startsWith('-')));
  process.exit(0);
} catch (e) {
  console.error(`bench: ${(e as Error).message}`);
  process.exit(2);
}
