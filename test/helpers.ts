/**
 * Shared test helpers: temporary directories that clean up after themselves,
 * a seeded PRNG whose seed is printed so a failure can be replayed, and an
 * assertion that a call fails with a given error code.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as assert from 'uvu/assert';

export function tempDir(prefix = 'bm-test-'): { dir: string; cleanup: () => void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  const cleanup = () => {
    try {
      fs.rmSync(dir, { recursive: true, force: true });
    } catch (e) {
      // Something wrote into the directory after everything was stopped: name what is there, so
      // the failure says which file came late.
      if ((e as NodeJS.ErrnoException).code !== 'ENOTEMPTY') throw e;
      const left = fs.existsSync(dir) ? (fs.readdirSync(dir, { recursive: true }) as string[]).join(', ') : '(gone by now)';
      throw new Error(`Cannot remove ${dir}: something wrote into it after the stop; left: ${left}`);
    }
  };
  return { dir, cleanup };
}

/** mulberry32: small, fast, good enough to drive a test. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The seed for a randomized test: BM_SEED if set, else a fresh one. */
export function testSeed(): number {
  const env = process.env.BM_SEED;
  return env ? Number(env) >>> 0 : (Math.random() * 2 ** 32) >>> 0;
}

export function randomBytes(random: () => number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = (random() * 256) | 0;
  return out;
}

/** Asserts that `fn` throws (or rejects with) a BlockmirrorError with `code`. */
export async function throwsCode(fn: () => unknown, code: string, what = ''): Promise<void> {
  let error: any;
  try {
    await fn();
  } catch (e) {
    error = e;
  }
  assert.ok(error, `expected ${code}${what ? ` (${what})` : ''} but nothing was thrown`);
  assert.is(error.code, code, `${what}: ${error?.message}`);
  assert.not.match(String(error.message), /\n/, 'an error message is one line');
}

export function hex(bytes: Uint8Array): string {
  let s = '';
  for (const b of bytes) s += b.toString(16).padStart(2, '0');
  return s;
}

export { cliCommand, startCli } from '../bench/cli-process.ts';
import { cliCommand, exitOf } from '../bench/cli-process.ts';

/** Runs the CLI to completion and returns its exit code and output. */
export async function runCli(args: string[], options: { timeoutMs?: number } = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const { spawn } = await import('node:child_process');
  const { command, args: base } = cliCommand();
  return new Promise((resolve) => {
    const child = spawn(command, [...base, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 30_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** A free loopback TCP port (bound and released; good enough on a test machine). */
export async function freePort(): Promise<number> {
  const net = await import('node:net');
  return new Promise((resolve) => {
    const server = net.createServer();
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as { port: number }).port;
      server.close(() => resolve(port));
    });
  });
}

/** Resolves when `child` has exited (at once if it already has); see `exitOf`. */
export function exited(child: import('node:child_process').ChildProcess): Promise<void> {
  return exitOf(child);
}

/** Resolves when `child` has exited and its output streams have ended. */
export function closed(child: import('node:child_process').ChildProcess): Promise<void> {
  return new Promise((resolve) => (child.exitCode !== null && child.stdout?.readableEnded ? resolve() : child.once('close', () => resolve())));
}

/**
 * The child handled the signal and exited 0. Deno's child_process reports a
 * child sent a signal with exitCode null and that signal as signalCode even
 * when the child handled it and exited 0, so there the log line is the proof.
 */
export function assertStoppedCleanly(child: import('node:child_process').ChildProcess & { output(): string }, signal: string): void {
  assert.match(child.output(), new RegExp(`${signal}: stopping`), child.output());
  if ((globalThis as { Deno?: unknown }).Deno) assert.ok(child.exitCode === 0 || child.signalCode === signal);
  else assert.is(child.exitCode, 0, child.output());
}
