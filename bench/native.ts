/**
 * Builds and runs the native XXH3 reference (bench/native/xxh3bench.c)
 * against Debian's libxxhash-dev. Where gcc or the header is missing, says so
 * in one line instead of a number.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const source = path.join(root, 'bench', 'native', 'xxh3bench.c');
const binary = path.join(root, 'build', 'xxh3bench');

function build(): string | undefined {
  if (fs.existsSync(binary) && fs.statSync(binary).mtimeMs >= fs.statSync(source).mtimeMs) return undefined;
  if (spawnSync('cc', ['--version']).status !== 0) return 'no C compiler (apt-get install gcc)';
  if (!fs.existsSync('/usr/include/xxhash.h')) return 'no xxhash.h (apt-get install libxxhash-dev)';
  fs.mkdirSync(path.dirname(binary), { recursive: true });
  try {
    execFileSync('cc', ['-O3', '-march=native', '-pthread', '-o', binary, source], { stdio: 'pipe' });
  } catch (e) {
    return `cannot build the native reference: ${String((e as { stderr?: Buffer }).stderr ?? e).split('\n')[0]}`;
  }
  return undefined;
}

export async function nativeXxh3(options: { bytes: number; threads: number; rounds: number }): Promise<{ gibPerSec: number } | { skipped: string }> {
  const problem = build();
  if (problem) return { skipped: problem };
  const run = spawnSync(binary, [String(options.bytes), String(options.threads), String(options.rounds)], { encoding: 'utf8' });
  if (run.status !== 0) return { skipped: `native reference failed: ${run.stderr.trim().split('\n')[0]}` };
  return { gibPerSec: JSON.parse(run.stdout).gibPerSec };
}
