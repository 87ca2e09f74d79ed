/** How to start the blockmirror CLI from source on the runtime running this code. */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export function cliCommand(): { command: string; args: string[] } {
  const g = globalThis as { Bun?: unknown; Deno?: unknown };
  const fromSource = import.meta.url.endsWith('.ts');
  const entry = fileURLToPath(new URL(`../engine/cli.${fromSource ? 'ts' : 'js'}`, import.meta.url));
  if (g.Bun) return { command: process.execPath, args: ['run', entry] };
  if (g.Deno) return { command: process.execPath, args: ['run', '--allow-all', entry] };
  return { command: process.execPath, args: fromSource ? ['--import', 'tsx', entry] : [entry] };
}

/**
 * Starts a long-running CLI command; resolves once its stderr matches
 * `ready`. `prefix` runs it under another command (e.g. `ip netns exec NS`).
 */
export async function startCli(args: string[], ready: RegExp, timeoutMs = 20_000, prefix: string[] = []): Promise<ChildProcess & { output: () => string }> {
  const { command, args: base } = cliCommand();
  const argv = [...prefix, command, ...base, ...args];
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  exits.set(child, new Promise((resolve) => child.once('exit', () => resolve())));
  let output = '';
  child.stdout!.on('data', (d) => (output += d));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`CLI ${args[0]} did not start: ${output}`));
    }, timeoutMs);
    child.stderr!.on('data', (d) => {
      output += d;
      if (ready.test(output)) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`CLI ${args[0]} exited with ${code}: ${output}`));
    });
  });
  return Object.assign(child, { output: () => output });
}

const exits = new WeakMap<ChildProcess, Promise<void>>();

/**
 * Resolves when `child` has exited (at once if it already has). A child
 * started by `startCli` is watched from its spawn, because its fields cannot
 * tell: Deno sets `signalCode` as soon as `kill()` is called, before the
 * child has exited (a secondary stopped by SIGTERM was still saving its
 * codes when a test removed its directory).
 */
export function exitOf(child: ChildProcess): Promise<void> {
  const watched = exits.get(child);
  if (watched) return watched;
  if (child.exitCode !== null || (child.signalCode !== null && !('Deno' in globalThis))) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}
