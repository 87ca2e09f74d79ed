/**
 * The native XXH3 reference (bench/native/xxh3bench.c, linked against
 * libxxhash as Debian's libxxhash-dev ships it), built once into
 * build/xxh3bench and run as a child process.
 *
 * A benchmark must still run where there is no C toolchain: when the compiler
 * or xxhash.h is missing, the result says so in one line instead of a number.
 * The binary is rebuilt whenever the C source is newer than it.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const source = path.join(root, 'bench', 'native', 'xxh3bench.c');
const binary = path.join(root, 'build', 'xxh3bench');

export interface NativeOptions {
  /** Bytes hashed per round, as 64 KiB segments. */
  bytes: number;
  /** Threads sharing the segments. */
  threads: number;
  /** Rounds; the median round is reported. */
  rounds: number;
}

/** Why the reference cannot be built, or undefined once build/xxh3bench is current. */
let building: Promise<string | undefined> | undefined;

function firstLine(error: unknown): string {
  const e = error as { stderr?: string; message?: string };
  const text = (e.stderr || e.message || String(error)).trim();
  return text.split('\n').find((line) => /error/i.test(line)) ?? text.split('\n')[0] ?? '';
}

async function build(): Promise<string | undefined> {
  if (fs.existsSync(binary) && fs.statSync(binary).mtimeMs >= fs.statSync(source).mtimeMs) return undefined;
  try {
    await run('cc', ['--version']);
  } catch {
    return 'no C compiler (apt-get install gcc)';
  }
  fs.mkdirSync(path.dirname(binary), { recursive: true });
  try {
    await run('cc', ['-O3', '-march=native', '-pthread', '-o', binary, source]);
  } catch (error) {
    fs.rmSync(binary, { force: true });
    const line = firstLine(error);
    if (/xxhash\.h/.test(line)) return 'no xxhash.h (apt-get install libxxhash-dev)';
    return `cannot build bench/native/xxh3bench.c: ${line}`;
  }
  return undefined;
}

/** Median GiB/s of native XXH3-64 over `bytes` bytes of memory, or why it cannot be measured here. */
export async function nativeXxh3(options: NativeOptions): Promise<{ gibPerSec: number } | { skipped: string }> {
  building ??= build();
  const problem = await building;
  if (problem) return { skipped: problem };
  try {
    const { stdout } = await run(binary, [String(options.bytes), String(options.threads), String(options.rounds)]);
    const gibPerSec = (JSON.parse(stdout) as { gibPerSec?: unknown }).gibPerSec;
    if (typeof gibPerSec !== 'number') return { skipped: `the native reference printed no rate: ${stdout.trim()}` };
    return { gibPerSec };
  } catch (error) {
    return { skipped: `the native reference failed: ${firstLine(error)}` };
  }
}
