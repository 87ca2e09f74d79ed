/**
 * What every benchmark suite shares: the size switch (a tiny size inside the
 * test suite so benchmarks cannot rot, the real size from `npm run bench`),
 * tinybench with a fixed budget, and one table format for results.
 *
 * Only ratios measured side by side in one run are meaningful on a shared
 * two-core machine, so every suite reports its reference in the same table
 * and quotes medians.
 */
import { Bench } from 'tinybench';

export type BenchSize = 'tiny' | 'full';

export interface BenchContext {
  size: BenchSize;
  /** `tiny` in the test suite, `full` from bench/run.ts. */
  parameter<T>(name: string, tiny: T, full: T): T;
  /** A tinybench instance with this size's time budget. */
  bench(name: string): Bench;
  log(line: string): void;
}

export interface Row {
  name: string;
  /** Median operations per second (an operation is what the suite says it is). */
  opsPerSec: number;
  /** Median bytes per second, where the operation moves bytes. */
  bytesPerSec?: number;
  p50Ms?: number;
  p99Ms?: number;
  note?: string;
}

export interface SuiteResult {
  suite: string;
  rows: Row[];
  /** Ratios against the suite's reference, with the target each one must reach. */
  checks: Array<{ name: string; ratio: number; target?: number; higherIsBetter?: boolean }>;
  skipped?: string[];
}

export type Suite = (ctx: BenchContext) => Promise<SuiteResult>;

export function context(size: BenchSize, log: (line: string) => void = (l) => console.log(l)): BenchContext {
  return {
    size,
    parameter: (_name, tiny, full) => (size === 'tiny' ? tiny : full),
    bench: (name) =>
      size === 'tiny'
        ? new Bench({ name, time: 20, iterations: 3, warmupTime: 5, warmupIterations: 1 })
        : new Bench({ name, time: 1500, iterations: 10, warmupTime: 300 }),
    log,
  };
}

/** Median rows from a finished tinybench run; `unitsPerOp` turns one task call into operations. */
export function rowsOf(bench: Bench, unitsPerOp = 1, bytesPerUnit?: number): Row[] {
  return bench.tasks.map((task) => {
    const r = task.result as { state: string; latency?: { p50: number; p99: number }; throughput?: { p50: number }; error?: Error };
    if (r.state !== 'completed' || !r.latency || !r.throughput) {
      throw new Error(`benchmark task '${task.name}' did not complete: ${r.state} ${r.error?.message ?? ''}`);
    }
    const opsPerSec = r.throughput.p50 * unitsPerOp;
    return {
      name: task.name,
      opsPerSec,
      bytesPerSec: bytesPerUnit === undefined ? undefined : opsPerSec * bytesPerUnit,
      p50Ms: r.latency.p50,
      p99Ms: r.latency.p99,
    };
  });
}

export function formatResult(result: SuiteResult): string {
  const lines = [`## ${result.suite}`, '', '| what | ops/s (median) | GB/s | p50 ms | p99 ms | note |', '| --- | ---: | ---: | ---: | ---: | --- |'];
  for (const r of result.rows) {
    lines.push(
      `| ${r.name} | ${fmt(r.opsPerSec)} | ${r.bytesPerSec === undefined ? '' : (r.bytesPerSec / 1e9).toFixed(2)} | ${r.p50Ms === undefined ? '' : r.p50Ms.toFixed(3)} | ${r.p99Ms === undefined ? '' : r.p99Ms.toFixed(3)} | ${r.note ?? ''} |`,
    );
  }
  if (result.checks.length) {
    lines.push('', '| ratio | measured | target | met |', '| --- | ---: | ---: | --- |');
    for (const c of result.checks) {
      if (c.target === undefined) {
        lines.push(`| ${c.name} | ${c.ratio.toFixed(3)} | (for information) | |`);
        continue;
      }
      const met = c.higherIsBetter === false ? c.ratio <= c.target : c.ratio >= c.target;
      lines.push(`| ${c.name} | ${c.ratio.toFixed(3)} | ${c.higherIsBetter === false ? '≤' : '≥'} ${c.target} | ${met ? 'yes' : 'NO'} |`);
    }
  }
  for (const s of result.skipped ?? []) lines.push('', `skipped: ${s}`);
  return lines.join('\n') + '\n';
}

function fmt(n: number): string {
  return n >= 1e6 ? `${(n / 1e6).toFixed(2)} M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)} k` : n.toFixed(1);
}
