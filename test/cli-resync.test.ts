// Resync, failover and verify from the command line: `verify` against a
// running primary process, `status` of a secondary process, and `promote`,
// `demote` and `swap` refusing what they must with one line and a code.
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { assertStoppedCleanly, closed, freePort, runCli, startCli, tempDir } from './helpers.ts';

test('verify and status as processes: verify compares every code of a live pair; a secondary answers status', async () => {
  const { dir, cleanup } = tempDir('bm-cli-verify-');
  const [data, sc, pc] = [await freePort(), await freePort(), await freePort()];
  const secondary = await startCli(['secondary', '--dir', path.join(dir, 's'), '--listen', `tcp://127.0.0.1:${data}`, '--control', `tcp://127.0.0.1:${sc}`], /control on/);
  const primary = await startCli(
    ['primary', '--dir', path.join(dir, 'p'), '--volume', 'db:2MiB', '--mirror', `tcp://127.0.0.1:${data}`, '--control', `tcp://127.0.0.1:${pc}`, '--resync-rate', '64MiB'],
    /control on/,
  );
  try {
    let status: any;
    for (let i = 0; i < 100; i++) {
      status = JSON.parse((await runCli(['status', '--control', `tcp://127.0.0.1:${pc}`, '--json'])).stdout);
      if (status.volumes[0].state === 'duplex') break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.is(status.volumes[0].state, 'duplex');
    const v = await runCli(['verify', '--control', `tcp://127.0.0.1:${pc}`]);
    assert.is(v.code, 0, v.stderr);
    assert.match(v.stdout, /volume 'db': 32 segments compared, 0 differ/);
    const bad = await runCli(['verify', '--control', `tcp://127.0.0.1:${pc}`, '--volume', 'nope']);
    assert.is(bad.code, 1);
    assert.match(bad.stderr, /BM_ERR_INVALID_ARGUMENT/);
    const s = await runCli(['status', '--control', `tcp://127.0.0.1:${sc}`, '--json']);
    const ss = JSON.parse(s.stdout);
    assert.is(ss.role, 'secondary');
    assert.is(ss.volumes[0].name, 'db');
    assert.is(ss.volumes[0].consistent, true);
    assert.is(ss.volumes[0].gen, status.volumes[0].gen, 'the secondary holds the primary’s generation');
    const table = await runCli(['status', '--control', `tcp://127.0.0.1:${sc}`]);
    assert.match(table.stdout, /role: secondary/);
    primary.kill('SIGTERM');
    await closed(primary);
    assertStoppedCleanly(primary, 'SIGTERM');
    secondary.kill('SIGTERM');
    await closed(secondary);
    assertStoppedCleanly(secondary, 'SIGTERM');
    assert.ok(fs.readFileSync(path.join(dir, 'p', 'db.img')).equals(fs.readFileSync(path.join(dir, 's', 'db.img'))));
  } finally {
    primary.kill('SIGKILL');
    secondary.kill('SIGKILL');
    cleanup();
  }
});

test('promote, demote and swap: help, and one-line errors with codes for what they refuse', async () => {
  const { dir, cleanup } = tempDir('bm-cli-roles-');
  try {
    for (const verb of ['promote', 'demote', 'swap', 'verify']) {
      const h = await runCli([verb, '--help']);
      assert.is(h.code, 0, verb);
      assert.match(h.stdout, new RegExp(`Usage: blockmirror ${verb}`));
    }
    const cases: Array<[string[], string]> = [
      [['promote', '--dir', path.join(dir, 'none')], 'BM_ERR_IMAGE_OPEN'],
      [['promote', '--dir', dir], 'BM_ERR_METADATA'],
      [['demote'], 'BM_ERR_USAGE'],
      [['swap', '--primary-dir', dir, '--secondary-dir', dir], 'BM_ERR_USAGE'],
    ];
    fs.writeFileSync(path.join(dir, 'x.img'), new Uint8Array(4096));
    fs.writeFileSync(path.join(dir, 'x.meta'), 'blockmirror-meta 1 sha256=00\n{}');
    cases.push([['promote', '--dir', dir], 'BM_ERR_METADATA']);
    for (const [args, code] of cases) {
      const r = await runCli(args);
      assert.is.not(r.code, 0, args.join(' '));
      assert.match(r.stderr, new RegExp(code), args.join(' '));
      assert.is(r.stderr.trim().split('\n').length, 1, `${args.join(' ')}: one line`);
    }
  } finally {
    cleanup();
  }
});

test.run();
