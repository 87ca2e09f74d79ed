#!/usr/bin/env node
// Runs the test suite on Node, Bun and Deno in turn (or the runtimes named
// with --runtime=node,bun,deno) and prints one closing line
// `N passed, N failed, N skipped` summed over them. Exit code 1 if any
// runtime failed. Extra arguments are passed on as a file filter.
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const bin = (name) => path.join(root, 'node_modules', '.bin', name);
const denoFlags = ['--allow-read', '--allow-write', '--allow-env', '--allow-net', '--allow-run', '--allow-sys'];
const commands = {
  node: [process.execPath, ['--import', 'tsx', 'test/run.ts']],
  bun: [bin('bun'), ['run', 'test/run.ts']],
  deno: [bin('deno'), ['run', ...denoFlags, 'test/run.ts']],
};

const args = process.argv.slice(2);
const pick = args.find((a) => a.startsWith('--runtime='));
const runtimes = pick ? pick.slice('--runtime='.length).split(',') : Object.keys(commands);
const rest = args.filter((a) => a !== pick);

let passed = 0, failed = 0, skipped = 0, code = 0;
for (const name of runtimes) {
  const command = commands[name];
  if (!command) {
    console.error(`test: unknown runtime '${name}' (use node, bun or deno)`);
    process.exit(2);
  }
  console.log(`\n=== ${name} ===`);
  const out = await run(command[0], [...command[1], ...rest]);
  const m = /^\w+: (\d+) passed, (\d+) failed, (\d+) skipped$/m.exec(out.text);
  if (m) {
    passed += +m[1];
    failed += +m[2];
    skipped += +m[3];
  } else {
    failed += 1;
    console.log(`${name}: the run ended without its closing line (exit ${out.code})`);
  }
  if (out.code !== 0) code = 1;
}
console.log(`${passed} passed, ${failed} failed, ${skipped} skipped`);
process.exit(code || (failed ? 1 : 0));

function run(cmd, argv) {
  return new Promise((resolve) => {
    const child = spawn(cmd, argv, { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] });
    let text = '';
    child.stdout.on('data', (d) => {
      text += d;
      process.stdout.write(d);
    });
    child.on('close', (code, signal) => resolve({ code: code ?? (signal ? 1 : 0), text }));
  });
}
