/**
 * Runs the benchmark suites at full size and prints their tables.
 *
 *   npm run bench                  every suite
 *   npm run bench -- hash-pool     one suite (volume-write, hash-pool, codes-cost)
 *
 * Run nothing else on the machine meanwhile: it has two cores, and only the
 * ratios measured side by side in one run are meaningful.
 */
import { context, formatResult, type Suite } from './harness.ts';
import { volumeWrite } from './volume-write.ts';
import { hashPool } from './hash-pool.ts';
import { codesCost } from './codes-cost.ts';
import { runtime } from '../engine/runtime.ts';

export const suites: Record<string, Suite> = {
  'volume-write': volumeWrite,
  'hash-pool': hashPool,
  'codes-cost': codesCost,
};

const wanted = process.argv.slice(2).filter((a) => !a.startsWith('-'));
for (const name of wanted) {
  if (!suites[name]) {
    console.error(`bench: unknown suite '${name}' (one of: ${Object.keys(suites).join(', ')})`);
    process.exit(2);
  }
}
console.log(`# blockmirror benchmarks (${runtime}, ${new Date().toISOString()})\n`);
for (const name of wanted.length ? wanted : Object.keys(suites)) {
  console.log(formatResult(await suites[name]!(context('full'))));
}
process.exit(0);
