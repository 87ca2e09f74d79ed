/** `blockmirror bench`: runs the benchmark suites and prints their tables. */
import { parseArgs } from './args.ts';
import { errors } from './errors.ts';

const help = `Usage: blockmirror bench [SUITE ...]

Runs benchmark suites at full size, each beside its reference measured in the
same run, and prints one table per suite with medians and the target ratios.
Suites: volume-write, hash-pool, codes-cost, mirror, nbd, freeze, resync
(default: all). Run
nothing else meanwhile. Native XXH3 needs gcc and libxxhash-dev, the mirror
suite's ceiling needs iperf3, the nbd suite fio and nbdkit, the resync suite rsync; without them those rows say they were skipped.
`;

export async function benchCommand(argv: string[]): Promise<number> {
  const names = argv.filter((a) => !a.startsWith('-'));
  const args = parseArgs('bench', argv.filter((a) => a.startsWith('-')), {});
  if (args.help) {
    process.stdout.write(help);
    return 0;
  }
  let runBenchmarks: (names: string[]) => Promise<void>;
  try {
    ({ runBenchmarks } = await import('../bench/suites.ts'));
  } catch (e) {
    throw errors.USAGE(`bench: the benchmark suites are not available in this install (${(e as Error).message.split('\n')[0]})`);
  }
  await runBenchmarks(names);
  return 0;
}
