// The blockmirror command: --help, one-line errors with a stable code and a
// non-zero exit on bad arguments, and the codes subcommand against an
// independent hash of the image.
import fs from 'node:fs';
import path from 'node:path';
import { xxhash3 } from 'hash-wasm';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { assertStoppedCleanly, closed, freePort, runCli, startCli, tempDir } from './helpers.ts';

test('blockmirror --help and codes --help print usage and exit 0', async () => {
  const top = await runCli(['--help']);
  assert.is(top.code, 0);
  assert.match(top.stdout, /Usage: blockmirror/);
  const codes = await runCli(['codes', '--help']);
  assert.is(codes.code, 0);
  assert.match(codes.stdout, /--image/);
});

test('bad arguments exit non-zero with one line naming the code', async () => {
  for (const args of [['--bogus'], ['frobnicate'], ['codes'], ['codes', '--image'], ['codes', '--image', 'x.img', '--nope', '1'], ['codes', '--image', 'x.raw']]) {
    const r = await runCli(args);
    assert.is(r.code, 2, args.join(' '));
    assert.is(r.stderr.trim().split('\n').length, 1, `one line for ${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, /\[BM_ERR_USAGE\]/);
  }
  const missing = await runCli(['codes', '--image', '/nonexistent/x.img']);
  assert.is(missing.code, 1);
  assert.match(missing.stderr, /\[BM_ERR_IMAGE_OPEN\]/);
});

test('codes prints the XXH3 of every segment of an image', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const image = path.join(dir, 'disk.img');
    const bytes = new Uint8Array(3 * 65536 + 4096);
    for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 13 + (i >> 9)) & 255;
    fs.writeFileSync(image, bytes);
    const r = await runCli(['codes', '--image', image, '--json']);
    assert.is(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout);
    const want = [];
    for (let s = 0; s < 4; s++) want.push(await xxhash3(bytes.subarray(s * 65536, Math.min(bytes.length, (s + 1) * 65536))));
    assert.equal(out.codes, want);
  } finally {
    cleanup();
  }
});

test('blockmirror demo runs a local mirror pair and exits 0 with byte-identical images', async () => {
  const r = await runCli(['demo', '--seconds', '1'], { timeoutMs: 60_000 });
  assert.is(r.code, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /db\.img: .* byte-identical/);
  assert.match(r.stdout, /log\.img: .* byte-identical/);
  assert.match(r.stdout, /idx\.img: .* byte-identical/);
  assert.match(r.stdout, /every check passed/);
  assert.not.match(r.stdout, /FAIL/);
  // The freeze step: both members frozen, the cut consistent, the group resynced.
  assert.match(r.stdout, /both members frozen [\d.]+ ms after the failure was detected/);
  assert.match(r.stdout, /ok +the secondary images are a consistent cut/);
  assert.match(r.stdout, /the group resynced to duplex/);
  // Failover, failback that copies only what differs, and a swap back that copies nothing.
  assert.match(r.stdout, /ok +the failback copied only the 20 segments written on fo-b/);
  assert.match(r.stdout, /ok +the swap back copied nothing/);
  assert.match(r.stdout, /ok +fo\.img is byte-identical/);
  // With qemu-img or nbdcopy installed (CI installs both), a real tool writes through the NBD export.
  if (!/skipped: the NBD step/.test(r.stdout)) assert.match(r.stdout, /ok +what \S+ wrote through NBD is on the secondary/);
});

/** Waits until the child has exited and its output streams are drained. */
test('secondary, primary and status as processes: status --json, then SIGTERM stops both cleanly', async () => {
  const { dir, cleanup } = tempDir();
  const [data, control] = [await freePort(), await freePort()];
  const secondary = await startCli(['secondary', '--dir', path.join(dir, 's'), '--listen', `ws://127.0.0.1:${data}`], /listening/);
  const primary = await startCli(
    ['primary', '--dir', path.join(dir, 'p'), '--volume', 'db:1MiB', '--volume', 'log:256KiB', '--mirror', `ws://127.0.0.1:${data}`, '--control', `tcp://127.0.0.1:${control}`],
    /control on/,
  );
  try {
    let status: any;
    for (let i = 0; i < 100; i++) {
      const r = await runCli(['status', '--control', `tcp://127.0.0.1:${control}`, '--json']);
      assert.is(r.code, 0, r.stderr);
      status = JSON.parse(r.stdout);
      if (status.volumes.every((v: any) => v.state === 'duplex')) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.is(status.role, 'primary');
    assert.equal(status.volumes.map((v: any) => [v.name, v.state, v.outOfSyncBytes]), [['db', 'duplex', 0], ['log', 'duplex', 0]]);
    const table = await runCli(['status', '--control', `tcp://127.0.0.1:${control}`]);
    assert.match(table.stdout, /db\s+1 MiB\s+duplex/);
    primary.kill('SIGTERM');
    await closed(primary);
    assertStoppedCleanly(primary, 'SIGTERM');
    assert.match(primary.output(), /"to":"duplex"/, 'events are printed as JSON lines');
    secondary.kill('SIGINT');
    await closed(secondary);
    assertStoppedCleanly(secondary, 'SIGINT');
    for (const name of ['db', 'log']) {
      assert.ok(fs.readFileSync(path.join(dir, 'p', `${name}.img`)).equals(fs.readFileSync(path.join(dir, 's', `${name}.img`))), name);
    }
    const down = await runCli(['status', '--control', `tcp://127.0.0.1:${control}`]);
    assert.is(down.code, 1);
    assert.match(down.stderr, /\[BM_ERR_CONNECT\]/);
  } finally {
    primary.kill('SIGKILL');
    secondary.kill('SIGKILL');
    cleanup();
  }
});

test.run();
