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

/**
 * Calls `listener` once on the first SIGTERM or SIGINT, instead of the
 * default of dying. Deno delivers signals through its own API; Node and Bun
 * through `process`.
 */
export function onStopSignal(listener: (signal: 'SIGTERM' | 'SIGINT') => void): void {
  const deno = (globalThis as { Deno?: { addSignalListener(s: string, l: () => void): void; removeSignalListener(s: string, l: () => void): void } }).Deno;
  let done = false;
  const handlers = (['SIGTERM', 'SIGINT'] as const).map((signal) => {
    const handler = () => {
      if (done) return;
      done = true;
      for (const [s, h] of handlers) (deno ? deno.removeSignalListener(s, h) : process.off(s, h));
      listener(signal);
    };
    return [signal, handler] as const;
  });
  for (const [s, h] of handlers) (deno ? deno.addSignalListener(s, h) : process.on(s, h));
}
