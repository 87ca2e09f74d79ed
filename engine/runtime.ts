/**
 * The one place that tells Node, Bun and Deno apart.
 *
 * The engine itself uses web APIs, typed arrays and `node:` built-ins that
 * all three runtimes provide; the differences that remain (how a worker is
 * started, how many cores there are) are decided here, once.
 */
import os from 'node:os';

export type RuntimeName = 'node' | 'bun' | 'deno';

const g = globalThis as { Bun?: unknown; Deno?: unknown };

export const runtime: RuntimeName = g.Bun ? 'bun' : g.Deno ? 'deno' : 'node';

/** Logical cores available to this process (at least 1). */
export function coreCount(): number {
  const n = typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
  return Math.max(1, n || 1);
}

/**
 * True when this module was loaded from TypeScript source (tests under tsx,
 * Bun, Deno) rather than from the tsc build in dist/. Worker entries are
 * resolved with the same extension as the module that starts them.
 */
export const sourceExtension: '.ts' | '.js' = import.meta.url.endsWith('.ts') ? '.ts' : '.js';
