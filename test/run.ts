/**
 * Test entry for every runtime: loads each `test/**\/*.test.ts` file into
 * uvu's deferred queue, runs them, and prints one closing line
 * `RUNTIME: N passed, N failed, N skipped`. Exit code is uvu's.
 *
 *   node --import tsx test/run.ts [filter]
 *   bun run test/run.ts [filter]
 *   deno run --allow-all test/run.ts [filter]
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { runtime } from '../engine/runtime.ts';

const g = globalThis as any;
g.UVU_DEFER = 1;
g.UVU_QUEUE = [];

const root = path.dirname(fileURLToPath(import.meta.url));
const filter = process.argv.slice(2).find((a) => !a.startsWith('-'));

function list(dir: string): string[] {
  return fs
    .readdirSync(dir, { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? list(path.join(dir, e.name)) : e.name.endsWith('.test.ts') ? [path.join(dir, e.name)] : []));
}

const files = list(root)
  .sort()
  .filter((f) => !filter || f.includes(filter));

const uvu = await import('uvu');
for (const [index, file] of files.entries()) {
  g.UVU_INDEX = index;
  g.UVU_QUEUE.push([path.relative(root, file)]);
  await import(pathToFileURL(file).href);
}

// uvu prints its own totals; capture them to print the one line CI reads.
let captured = '';
const stdout = process.stdout as unknown as { write: (chunk: unknown, ...rest: unknown[]) => boolean };
const write = stdout.write.bind(stdout);
stdout.write = (chunk: unknown, ...rest: unknown[]) => {
  captured += String(chunk);
  return write(chunk, ...rest);
};
await uvu.exec();
stdout.write = write;

const plain = captured.replace(/\x1b\[[0-9;]*m/g, '');
const count = (label: string) => Number(new RegExp(`${label}:\\s+(\\d+)`).exec(plain)?.[1] ?? 0);
const total = count('Total');
const passed = count('Passed');
const skipped = count('Skipped');
const failed = Math.max(total - passed, process.exitCode ? 1 : 0);
console.log(`${runtime}: ${passed} passed, ${failed} failed, ${skipped} skipped`);
// Workers or sockets left behind by a broken test must not hang the run.
setTimeout(() => process.exit(), 200).unref?.();
