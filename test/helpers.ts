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
  return { dir, cleanup: () => fs.rmSync(dir, { recursive: true, force: true }) };
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
