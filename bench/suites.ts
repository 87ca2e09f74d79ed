/** Every benchmark suite by name, and a runner that prints their tables. */
import { context, formatResult, type Suite } from './harness.ts';
import { volumeWrite } from './volume-write.ts';
import { hashPool } from './hash-pool.ts';
import { codesCost } from './codes-cost.ts';
import { mirror } from './mirror.ts';
import { nbd } from './nbd.ts';
import { freeze } from './freeze.ts';
import { resync } from './resync.ts';
import { runtime } from '../engine/runtime.ts';
import { errors } from '../engine/errors.ts';

export const suites: Record<string, Suite> = {
  'volume-write': volumeWrite,
  'hash-pool': hashPool,
  'codes-cost': codesCost,
  mirror,
  nbd,
  freeze,
  resync,
};

export async function runBenchmarks(names: string[], write: (text: string) => void = (t) => process.stdout.write(t)): Promise<void> {
  for (const name of names) {
    if (!suites[name]) throw errors.USAGE(`bench: unknown suite '${name}' (one of: ${Object.keys(suites).join(', ')})`);
  }
  write(`# blockmirror benchmarks (${runtime}, ${new Date().toISOString()})\n\n`);
  for (const name of names.length ? names : Object.keys(suites)) {
    write(formatResult(await suites[name]!(context('full'))) + '\n');
  }
}
