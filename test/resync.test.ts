// Resync by codes, failover and failback, scenario by scenario, with the
// images compared byte for byte and the bytes on the wire counted by a proxy:
// a resync after a suspension copies only the segments whose codes differ; a
// secondary holding an older copy gets only what differs; failover, writes on
// both sides, failback, and a swap back that copies nothing; split brain and
// a stale source refused, and the way out; an interrupted resync whose
// target rolls back (or resumes) to a consistent image; online verify.
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { FaultProxy } from '../bench/fault-proxy.ts';
import { loadMetadata } from '../engine/metadata.ts';
import type { PairEvent } from '../engine/pair.ts';
import { Primary, type PrimaryEvent, type PrimaryOptions } from '../engine/primary.ts';
import { demoteVolumes, promoteVolumes } from '../engine/roles.ts';
import { Secondary } from '../engine/secondary.ts';
import { until } from './group-setup.ts';
import { closed, exited, freePort, prng, randomBytes, startCli, tempDir, testSeed, throwsCode } from './helpers.ts';

const KiB = 1024;
const segment = 64 * KiB;
const common: Partial<PrimaryOptions> = { pool: 'none', journalBytes: 4 << 20, payloadBytesMax: 256 * KiB, heartbeatMs: 200, ackTimeoutMs: 2000, reconnectDelayMinMs: 10, reconnectDelayMaxMs: 100 };

function image(dir: string, name: string): Uint8Array {
  return new Uint8Array(fs.readFileSync(path.join(dir, `${name}.img`)));
}

function sameImage(a: string, b: string, name: string, label: string): void {
  const x = image(a, name);
  const y = image(b, name);
  assert.is(x.length, y.length, `${label}: sizes`);
  const differ = x.findIndex((v, i) => v !== y[i]);
  assert.is(differ, -1, `${label}: ${name}.img differs first at byte ${differ}`);
}

function resyncFinished(events: PrimaryEvent[]): Extract<PairEvent, { type: 'resync' }>[] {
  return events.filter((e): e is Extract<PairEvent, { type: 'resync' }> => e.type === 'resync' && e.event === 'finished');
}

async function pair(dirs: { p: string; s: string }, options: { volumeBytes?: number; discardMyData?: boolean; mode?: 'sync' | 'async'; rate?: number } = {}) {
  const secondary = await Secondary.start({ dir: dirs.s, listen: ['tcp://127.0.0.1:0'], discardMyData: options.discardMyData });
  const proxy = await FaultProxy.start(Number(secondary.urls[0]!.split(':').pop()));
  const primary = await Primary.start({
    ...common,
    dir: dirs.p,
    volumes: [{ name: 'v', size: options.volumeBytes ?? 2 << 20 }],
    mirror: proxy.url('tcp'),
    mode: options.mode ?? 'sync',
    resyncRateBytesPerSec: options.rate,
  });
  const events: PrimaryEvent[] = [];
  primary.onEvent((e) => events.push(e));
  return {
    primary,
    secondary,
    proxy,
    events,
    v: primary.volume('v'),
    async stop() {
      await primary.close({ drainTimeoutMs: 2000 });
      await secondary.close();
      await proxy.close();
    },
  };
}

test('a resync after a suspension compares the marked segments and copies only those whose codes differ', async () => {
  const seed = testSeed();
  const random = prng(seed);
  const { dir, cleanup } = tempDir('bm-resync-');
  const dirs = { p: path.join(dir, 'p'), s: path.join(dir, 's') };
  const x = await pair(dirs);
  try {
    await x.primary.waitDuplex(10_000);
    const data = randomBytes(random, 10 * segment);
    await x.v.write(0, data);
    const genBefore = x.v.meta.gen;
    x.proxy.refuse(true);
    x.proxy.cut();
    await until(() => x.v.state === 'suspended', 5000, () => 'suspended');
    // Segments 0-4 written again with the bytes the secondary already holds; 5 and 6 changed.
    await x.v.write(0, data.subarray(0, 5 * segment));
    await x.v.write(5 * segment, randomBytes(random, 2 * segment));
    assert.is(x.v.oos.size, 7, 'seven segments are out of sync');
    assert.is.not(x.v.meta.gen, genBefore, 'writing alone started a new generation');
    assert.is(x.v.meta.oosBase, genBefore);
    const wireBefore = x.proxy.bytesUp;
    x.proxy.refuse(false);
    await x.primary.waitDuplex(10_000);
    const wire = x.proxy.bytesUp - wireBefore;
    const done = resyncFinished(x.events).at(-1)!;
    assert.is(done.progress.segmentsCompared, 7, 'the seven marked segments were compared');
    assert.is(done.progress.segmentsDiffering, 2, `seed ${seed}: two differed`);
    assert.is(done.progress.bytesCopied, 2 * segment, 'only they were copied');
    assert.ok(wire < 2 * segment + 8 * KiB, `${wire} bytes went to the secondary for 2 differing segments`);
    assert.is(x.v.oos.size, 0);
    assert.is(x.v.meta.oosBase, x.v.meta.gen, 'the sides agree again');
    await x.stop();
    sameImage(dirs.p, dirs.s, 'v', `seed ${seed}`);
    assert.is(loadMetadata(dirs.s, 'v')!.gen, loadMetadata(dirs.p, 'v')!.gen, 'the secondary took the primary’s generation');
  } finally {
    await x.stop().catch(() => {});
    cleanup();
  }
});

test('a secondary that holds an older copy gets every code compared and only the differing segments', async () => {
  const seed = testSeed();
  const random = prng(seed);
  const { dir, cleanup } = tempDir('bm-older-');
  const dirs = { p: path.join(dir, 'p'), s: path.join(dir, 's') };
  try {
    const bytes = randomBytes(random, 2 << 20);
    fs.mkdirSync(dirs.p);
    fs.mkdirSync(dirs.s);
    fs.writeFileSync(path.join(dirs.p, 'v.img'), bytes);
    // A restored backup: the same image with three segments older, and no metadata.
    const older = bytes.slice();
    const changed = [1, 7, 30];
    for (const s of changed) older.set(randomBytes(random, segment), s * segment);
    fs.writeFileSync(path.join(dirs.s, 'v.img'), older);
    const x = await pair(dirs);
    await x.primary.waitDuplex(10_000);
    const done = resyncFinished(x.events).at(-1)!;
    assert.is(done.progress.full, true, 'a full comparison');
    assert.is(done.progress.segmentsCompared, 32);
    assert.is(done.progress.bytesCopied, changed.length * segment, 'only the three differing segments were copied');
    assert.ok(x.proxy.bytesUp < changed.length * segment + 16 * KiB, `${x.proxy.bytesUp} bytes on the wire`);
    await x.stop();
    sameImage(dirs.p, dirs.s, 'v', `seed ${seed}`);
  } finally {
    cleanup();
  }
});

test('failover, writes on both sides, failback that copies only what differs, and a swap back that copies nothing', async () => {
  const seed = testSeed();
  const random = prng(seed);
  const { dir, cleanup } = tempDir('bm-failover-');
  const a = path.join(dir, 'a');
  const b = path.join(dir, 'b');
  try {
    // A is the primary (async), B its secondary.
    const first = await pair({ p: a, s: b }, { mode: 'async' });
    await first.primary.waitDuplex(10_000);
    await first.v.write(0, randomBytes(random, 2 << 20));
    assert.ok(await first.primary.drain());
    // The link stalls: A's next writes complete but never reach B. Then A is lost.
    first.proxy.stall(true);
    const unmirrored = [3, 4];
    for (const s of unmirrored) await first.v.write(s * segment, randomBytes(random, segment));
    first.proxy.cut();
    await first.primary.close({ drainTimeoutMs: 0 });
    await first.secondary.close();
    await first.proxy.close();
    assert.is(loadMetadata(a, 'v')!.gen, loadMetadata(a, 'v')!.oosBase, 'writes in flight at the failure do not count as divergence');

    // Failover: B is promoted and written.
    const [promoted] = await promoteVolumes({ dir: b });
    assert.is(promoted!.to, 'primary');
    const second = await pair({ p: b, s: a });
    const written = [10, 11, 12];
    for (const s of written) await second.v.write(s * segment, randomBytes(random, segment));
    // Failback: A, started as B's secondary, gets only the differing segments.
    await second.primary.waitDuplex(10_000);
    const failback = resyncFinished(second.events).at(-1)!;
    assert.is(failback.progress.full, true, 'every code compared');
    const expected = new Set([...unmirrored, ...written]).size;
    assert.ok(failback.progress.segmentsDiffering <= expected && failback.progress.segmentsDiffering >= unmirrored.length, `${failback.progress.segmentsDiffering} differed`);
    assert.ok(second.proxy.bytesUp < expected * segment + 16 * KiB, `failback sent ${second.proxy.bytesUp} bytes for ${expected} differing segments of 32`);
    await second.stop();
    sameImage(b, a, 'v', `seed ${seed}: after failback`);

    // Swap back: demote B, promote A; nothing is copied.
    await demoteVolumes({ dir: b });
    await promoteVolumes({ dir: a });
    const third = await pair({ p: a, s: b });
    await third.primary.waitDuplex(10_000);
    const swap = resyncFinished(third.events).at(-1);
    assert.is(swap?.progress.bytesCopied ?? 0, 0, 'the swap back copied nothing');
    assert.ok(third.proxy.bytesUp < 16 * KiB, `${third.proxy.bytesUp} bytes on the wire`);
    await third.v.write(0, new Uint8Array(4096).fill(7));
    await third.stop();
    sameImage(a, b, 'v', `seed ${seed}: after the swap back`);
  } finally {
    cleanup();
  }
});

test('split brain and a stale source are refused and change nothing; --discard-my-data names the survivor', async () => {
  const seed = testSeed();
  const random = prng(seed);
  const { dir, cleanup } = tempDir('bm-splitbrain-');
  const a = path.join(dir, 'a');
  const b = path.join(dir, 'b');
  const a2 = path.join(dir, 'a2');
  try {
    const first = await pair({ p: a, s: b });
    await first.primary.waitDuplex(10_000);
    await first.v.write(0, randomBytes(random, 1 << 20));
    // A loses B and goes on writing alone: it diverges.
    first.proxy.refuse(true);
    first.proxy.cut();
    await until(() => first.v.state === 'suspended', 5000, () => 'suspended');
    await first.v.write(segment, randomBytes(random, segment));
    await first.stop();
    fs.cpSync(a, a2, { recursive: true });
    // B is promoted and written too.
    await promoteVolumes({ dir: b });
    const before = image(a, 'v');
    const second = await pair({ p: b, s: a });
    await second.v.write(5 * segment, randomBytes(random, segment));
    await until(() => second.events.some((e) => e.type === 'link' && e.status === 'failed'), 10_000, () => 'a refusal');
    const refusal = second.events.find((e) => e.type === 'link' && e.status === 'failed') as { code: string };
    assert.is(refusal.code, 'BM_ERR_SPLIT_BRAIN');
    await second.stop();
    assert.equal(image(a, 'v'), before, 'the refused target was not touched');
    // The way out: name B the survivor; A's own changes are discarded by the resync.
    const third = await pair({ p: b, s: a }, { discardMyData: true });
    await third.primary.waitDuplex(10_000);
    await third.stop();
    sameImage(b, a, 'v', `seed ${seed}`);

    // A stale source: A's copy from before (it did not see B's promotion) as primary toward B as secondary.
    await demoteVolumes({ dir: b }).catch(() => {}); // B is in sync with A now, so it can become a secondary again
    const stale = await pair({ p: a2, s: b });
    await until(() => stale.events.some((e) => e.type === 'link' && e.status === 'failed'), 10_000, () => 'a refusal');
    const code = (stale.events.find((e) => e.type === 'link' && e.status === 'failed') as { code: string }).code;
    assert.ok(code === 'BM_ERR_SPLIT_BRAIN' || code === 'BM_ERR_STALE_SOURCE', code);
    await stale.stop();
    // A secondary's copy cannot be served as a primary without promotion.
    await throwsCode(() => Primary.start({ ...common, dir: b, volumes: [{ name: 'v', size: 2 << 20 }], mirror: 'tcp://127.0.0.1:9' }), 'BM_ERR_ROLE');
  } finally {
    cleanup();
  }
});

test('an interrupted resync leaves a target that rolls back to its last consistent image, or resumes', async () => {
  const seed = testSeed();
  const random = prng(seed);
  const { dir, cleanup } = tempDir('bm-interrupt-');
  const dirs = { p: path.join(dir, 'p'), s: path.join(dir, 's') };
  const port = await freePort();
  const url = `tcp://127.0.0.1:${port}`;
  let s = await startCli(['secondary', '--dir', dirs.s, '--listen', url], /listening/);
  const proxy = await FaultProxy.start(port);
  const volumeBytes = 8 << 20;
  const primary = await Primary.start({ ...common, dir: dirs.p, volumes: [{ name: 'v', size: volumeBytes }], mirror: proxy.url('tcp') });
  const v = primary.volume('v');
  try {
    await primary.waitDuplex(10_000);
    await v.write(0, randomBytes(random, volumeBytes));
    await v.flush();
    const consistent = image(dirs.s, 'v');
    proxy.refuse(true);
    proxy.cut();
    await until(() => v.state === 'suspended', 5000, () => 'suspended');
    await v.write(0, randomBytes(random, volumeBytes)); // every segment differs now
    v.resyncRateBytesPerSec = 4 << 20; // slow enough to stop it half way
    proxy.refuse(false);
    await until(() => (v.progress?.bytesCopied ?? 0) > volumeBytes / 4, 15_000, () => 'the resync under way');
    s.kill('SIGKILL');
    await exited(s);
    const meta = loadMetadata(dirs.s, 'v')!;
    assert.is(meta.consistent, false, 'the target knows it is half way');
    assert.ok(fs.existsSync(path.join(dirs.s, 'v.undo')), 'with an undo log');
    // (a) The primary is gone for good: promoting the copy rolls it back to the image it had before.
    const copy = path.join(dir, 'copy');
    fs.cpSync(dirs.s, copy, { recursive: true });
    const [change] = await promoteVolumes({ dir: copy });
    assert.ok(change!.rolledBack);
    const rolled = image(copy, 'v');
    const wrong = [];
    for (let s = 0; s < volumeBytes / segment; s++) if (rolled.subarray(s * segment, (s + 1) * segment).some((b, i) => b !== consistent[s * segment + i])) wrong.push(s);
    assert.equal(wrong, [], `seed ${seed}: the rolled-back image is the last consistent one`);
    assert.not.ok(fs.existsSync(path.join(copy, 'v.undo')));
    // (b) The secondary returns: the same resync resumes and completes.
    v.resyncRateBytesPerSec = undefined;
    s = await startCli(['secondary', '--dir', dirs.s, '--listen', url], /listening/);
    await primary.waitDuplex(20_000);
    await primary.close();
    s.kill('SIGTERM');
    await closed(s);
    sameImage(dirs.p, dirs.s, 'v', `seed ${seed}: after the resumed resync`);
    assert.not.ok(fs.existsSync(path.join(dirs.s, 'v.undo')), 'the undo log is gone');
    assert.is(loadMetadata(dirs.s, 'v')!.consistent, true);
  } finally {
    s.kill('SIGKILL');
    await primary.close({ drainTimeoutMs: 0 });
    await proxy.close();
    cleanup();
  }
});

test('online verify compares only codes, finds a segment corrupted on the secondary, and resyncs it', async () => {
  const seed = testSeed();
  const random = prng(seed);
  const { dir, cleanup } = tempDir('bm-verify-');
  const dirs = { p: path.join(dir, 'p'), s: path.join(dir, 's') };
  const x = await pair(dirs);
  try {
    await x.primary.waitDuplex(10_000);
    await x.v.write(0, randomBytes(random, 2 << 20));
    // Damage one segment on the secondary behind the engine's back.
    x.secondary.volume('v')!.writeSync(17 * segment + 100, new Uint8Array([1, 2, 3]));
    const before = x.proxy.bytesUp;
    const [result] = await x.primary.verify();
    assert.equal(result!.differing, [17], `seed ${seed}`);
    assert.is(result!.segments, 32);
    assert.ok(x.proxy.bytesUp - before < 8 * KiB, `verify sent ${x.proxy.bytesUp - before} bytes: codes only`);
    await x.primary.waitDuplex(10_000);
    await throwsCode(() => x.primary.verify('nope'), 'BM_ERR_INVALID_ARGUMENT');
    await x.stop();
    sameImage(dirs.p, dirs.s, 'v', `seed ${seed}`);
  } finally {
    await x.stop().catch(() => {});
    cleanup();
  }
});

test('metadata: promote and demote refuse what they must', async () => {
  const { dir, cleanup } = tempDir('bm-roles-');
  try {
    await throwsCode(() => promoteVolumes({ dir: path.join(dir, 'none') }), 'BM_ERR_IMAGE_OPEN');
    await throwsCode(() => promoteVolumes({ dir }), 'BM_ERR_METADATA');
    const x = await pair({ p: path.join(dir, 'p'), s: path.join(dir, 's') });
    await x.primary.waitDuplex(10_000);
    x.proxy.refuse(true);
    x.proxy.cut();
    await until(() => x.v.state === 'suspended', 5000, () => 'suspended');
    await x.v.write(0, new Uint8Array(4096).fill(1));
    await x.stop();
    await throwsCode(() => promoteVolumes({ dir: path.join(dir, 'p') }), 'BM_ERR_ROLE', 'a primary is promoted');
    await throwsCode(() => demoteVolumes({ dir: path.join(dir, 'p') }), 'BM_ERR_ROLE', 'a diverged primary is demoted');
    await throwsCode(() => demoteVolumes({ dir: path.join(dir, 's') }), 'BM_ERR_ROLE', 'a secondary is demoted');
  } finally {
    cleanup();
  }
});

test.run();
