// Crash safety, the deterministic cases: a clean stop and start copies and
// compares nothing; metadata that is truncated, zeroed, bit-flipped or
// foreign is refused, never trusted; a corrupt saved map is ignored (every
// code is compared instead); a disk that fills up fails the write that hit it
// cleanly and loses nothing flushed; a failed sync is never taken back.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { FaultProxy } from '../bench/fault-proxy.ts';
import type { PairEvent } from '../engine/pair.ts';
import { Primary, type PrimaryEvent, type PrimaryOptions } from '../engine/primary.ts';
import { Secondary } from '../engine/secondary.ts';
import { Volume } from '../engine/volume.ts';
import { until } from './group-setup.ts';
import { prng, randomBytes, tempDir, testSeed, throwsCode } from './helpers.ts';

const KiB = 1024;
const common: Partial<PrimaryOptions> = { pool: 'none', journalBytes: 4 << 20, payloadBytesMax: 256 * KiB, heartbeatMs: 200, ackTimeoutMs: 2000, reconnectDelayMinMs: 10, reconnectDelayMaxMs: 100 };

async function start(dirs: { p: string; s: string }, volumeBytes = 2 << 20) {
  const secondary = await Secondary.start({ dir: dirs.s, listen: ['tcp://127.0.0.1:0'] });
  const proxy = await FaultProxy.start(Number(secondary.urls[0]!.split(':').pop()));
  const primary = await Primary.start({ ...common, dir: dirs.p, volumes: [{ name: 'v', size: volumeBytes }], mirror: proxy.url('tcp') });
  const events: PrimaryEvent[] = [];
  primary.onEvent((e) => events.push(e));
  return { secondary, proxy, primary, events, v: primary.volume('v') };
}

/** A clean stop of the primary, the secondary and the proxy, in that order. */
async function stop(run: Awaited<ReturnType<typeof start>>): Promise<void> {
  await run.primary.close();
  await run.secondary.close();
  await run.proxy.close();
}

function assertSameImages(dirs: { p: string; s: string }): void {
  assert.ok(fs.readFileSync(path.join(dirs.p, 'v.img')).equals(fs.readFileSync(path.join(dirs.s, 'v.img'))), 'the images are identical');
}

test('a clean stop of both sides and a start copy nothing and compare nothing', async () => {
  const seed = testSeed();
  const random = prng(seed);
  const { dir, cleanup } = tempDir('bm-clean-');
  const dirs = { p: path.join(dir, 'p'), s: path.join(dir, 's') };
  try {
    const first = await start(dirs);
    await first.primary.waitDuplex(10_000);
    await first.v.write(0, randomBytes(random, 2 << 20));
    await stop(first);
    for (const f of ['v.meta', 'v.oos', 'v.codes']) assert.ok(fs.existsSync(path.join(dirs.p, f)), `the primary saved ${f}`);
    assert.ok(fs.existsSync(path.join(dirs.s, 'v.codes')), 'the secondary saved its codes');

    const second = await start(dirs);
    assert.is(second.secondary.volume('v')!.invalidCodeCount(), 0, 'the secondary’s codes are current at start, from the saved ones');
    await second.primary.waitDuplex(10_000);
    const resyncs = second.events.filter((e): e is Extract<PairEvent, { type: 'resync' }> => e.type === 'resync');
    assert.equal(resyncs, [], 'no resync at all');
    assert.ok(second.proxy.bytesUp < 4 * KiB, `${second.proxy.bytesUp} bytes went to the secondary`);
    await stop(second);
    assertSameImages(dirs);
  } finally {
    cleanup();
  }
});

test('a corrupt saved map is never trusted: the next start compares every code instead', async () => {
  const { dir, cleanup } = tempDir('bm-badoos-');
  const dirs = { p: path.join(dir, 'p'), s: path.join(dir, 's') };
  try {
    const first = await start(dirs);
    await first.primary.waitDuplex(10_000);
    first.proxy.refuse(true);
    first.proxy.cut();
    await until(() => first.v.state === 'suspended', 5000, () => 'suspended');
    await first.v.write(3 * 65536, new Uint8Array(65536).fill(9)); // recorded in the map
    await stop(first);
    const oos = path.join(dirs.p, 'v.oos');
    const bytes = fs.readFileSync(oos);
    bytes[bytes.length - 1] ^= 0xff; // the body no longer matches its checksum
    fs.writeFileSync(oos, bytes);
    const second = await start(dirs);
    await second.primary.waitDuplex(10_000);
    const done = second.events.find((e): e is Extract<PairEvent, { type: 'resync' }> => e.type === 'resync' && e.event === 'finished')!;
    assert.is(done.progress.full, true, 'every code compared');
    assert.is(done.progress.segmentsDiffering, 1, 'and the one unmirrored segment found');
    await stop(second);
    assertSameImages(dirs);
  } finally {
    cleanup();
  }
});

test('metadata that is truncated, zeroed, bit-flipped or foreign is refused with BM_ERR_METADATA and changes nothing', async () => {
  const { dir, cleanup } = tempDir('bm-badmeta-');
  const dirs = { p: path.join(dir, 'p'), s: path.join(dir, 's') };
  try {
    const first = await start(dirs, 256 * KiB);
    await first.primary.waitDuplex(10_000);
    await first.v.write(0, new Uint8Array(4096).fill(5));
    await stop(first);
    const good = { p: fs.readFileSync(path.join(dirs.p, 'v.meta')), s: fs.readFileSync(path.join(dirs.s, 'v.meta')) };
    const images = { p: fs.readFileSync(path.join(dirs.p, 'v.img')), s: fs.readFileSync(path.join(dirs.s, 'v.img')) };
    const damage: Record<string, (b: Buffer) => Buffer> = {
      truncated: (b) => b.subarray(0, Math.floor(b.length / 2)),
      zeroed: (b) => Buffer.alloc(b.length),
      'bit-flipped': (b) => {
        const c = Buffer.from(b);
        c[c.length - 10] ^= 0x04;
        return c;
      },
      foreign: () => Buffer.from('{"name":"v","size":262144}\n'),
      'of another volume': (b) => Buffer.from(b.toString().replace(/"name": "v"/, '"name": "w"')),
    };
    for (const [how, change] of Object.entries(damage)) {
      fs.writeFileSync(path.join(dirs.p, 'v.meta'), change(good.p));
      await throwsCode(() => Primary.start({ ...common, dir: dirs.p, volumes: [{ name: 'v', size: 256 * KiB }], mirror: 'tcp://127.0.0.1:9' }), 'BM_ERR_METADATA', `primary, ${how}`);
      fs.writeFileSync(path.join(dirs.p, 'v.meta'), good.p);
      fs.writeFileSync(path.join(dirs.s, 'v.meta'), change(good.s));
      await throwsCode(() => Secondary.start({ dir: dirs.s, listen: ['tcp://127.0.0.1:0'] }), 'BM_ERR_METADATA', `secondary, ${how}`);
      fs.writeFileSync(path.join(dirs.s, 'v.meta'), good.s);
    }
    assert.ok(fs.readFileSync(path.join(dirs.p, 'v.img')).equals(images.p), 'the primary image is untouched');
    assert.ok(fs.readFileSync(path.join(dirs.s, 'v.img')).equals(images.s), 'the secondary image is untouched');
  } finally {
    cleanup();
  }
});

test('a failed sync is final: a later sync that succeeds is not taken as proof', async () => {
  const { dir, cleanup } = tempDir('bm-fsync-');
  try {
    const volume = await Volume.create({ name: 'v', size: 64 * KiB, dir, pool: 'none' });
    await volume.write(0, new Uint8Array(4096).fill(1));
    // The seam: the image's file descriptor, swapped for a closed one for one sync.
    const image = (volume as unknown as { image: { fd: number } }).image;
    const fd = image.fd;
    const closed = fs.openSync(path.join(dir, 'other'), 'w');
    fs.closeSync(closed);
    image.fd = closed;
    await throwsCode(() => volume.flush(), 'BM_ERR_IO', 'the sync that fails');
    image.fd = fd;
    await throwsCode(() => volume.flush(), 'BM_ERR_IO', 'a later sync, which would succeed');
    await throwsCode(() => volume.write(4096, new Uint8Array(4096)), 'BM_ERR_IO', 'a later write');
    assert.equal(volume.read(0, 4096), new Uint8Array(4096).fill(1), 'what was written before stays readable');
    await volume.close().catch(() => {});
  } finally {
    cleanup();
  }
});

const canMount = process.getuid?.() === 0 && spawnSync('sh', ['-c', 'command -v mount']).status === 0;

function tmpfs(dir: string, bytes: number): boolean {
  fs.mkdirSync(dir, { recursive: true });
  return spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${bytes}`, 'tmpfs', dir]).status === 0;
}

const diskName = 'a disk that fills up: the write that hits it fails cleanly, the pair is suspended, and nothing flushed is lost';
if (!canMount) {
  console.log(`skipped: "${diskName}": mounting a tmpfs needs root and mount`);
  test.skip(diskName);
} else {
  test(diskName, async () => {
    const { dir, cleanup } = tempDir('bm-enospc-');
    const mounts: string[] = [];
    try {
      // The secondary's disk fills first: the link fails with the secondary's BM_ERR_IO; writes go on, recorded.
      const sdir = path.join(dir, 's');
      if (!tmpfs(sdir, 1 << 20)) throw new Error('cannot mount a tmpfs');
      mounts.push(sdir);
      const x = await start({ p: path.join(dir, 'p'), s: sdir }, 4 << 20);
      await x.primary.waitDuplex(10_000);
      const flushed: Array<[number, Uint8Array]> = [];
      for (let i = 0; i < 48; i++) {
        const data = new Uint8Array(64 * KiB).fill(i + 1);
        await x.v.write(i * 64 * KiB, data);
        if (i % 4 === 3) await x.v.flush();
        flushed.push([i * 64 * KiB, data]);
      }
      const failed = x.events.find((e) => e.type === 'link' && e.status === 'failed') as { code: string } | undefined;
      assert.is(failed?.code, 'BM_ERR_IO', 'the secondary refused with its disk error');
      assert.is(x.v.state, 'suspended');
      for (const [at, data] of flushed) assert.equal(x.v.read(at, data.length), data, `block at ${at} is on the primary`);
      await x.primary.close({ drainTimeoutMs: 0 });
      await x.secondary.close().catch(() => {});
      await x.proxy.close();
      const pimage = fs.readFileSync(path.join(dir, 'p', 'v.img'));
      for (const [at, data] of flushed) assert.ok(pimage.subarray(at, at + data.length).equals(data), `block at ${at} is in the primary's image`);

      // The primary's own disk fills: the write fails with BM_ERR_IO, memory is untouched, the flushed data stays.
      const pdir = path.join(dir, 'p2');
      if (!tmpfs(pdir, 512 * KiB)) throw new Error('cannot mount a tmpfs');
      mounts.push(pdir);
      const y = await start({ p: pdir, s: path.join(dir, 's2') }, 4 << 20);
      await y.primary.waitDuplex(10_000);
      let i = 0;
      let error: { code?: string } | undefined;
      const ok: Array<[number, Uint8Array]> = [];
      for (; i < 64 && !error; i++) {
        const data = new Uint8Array(64 * KiB).fill(100 + i);
        try {
          await y.v.write(i * 64 * KiB, data);
          await y.v.flush();
          ok.push([i * 64 * KiB, data]);
        } catch (e) {
          error = e as { code?: string };
          assert.equal(y.v.read(i * 64 * KiB, data.length), new Uint8Array(data.length), 'the failed write left memory as it was');
        }
      }
      assert.is(error?.code, 'BM_ERR_IO', 'the write that hit the full disk failed with BM_ERR_IO');
      assert.is(y.v.state, 'suspended', 'and the pair stopped mirroring');
      assert.ok(y.events.some((e) => e.type === 'state' && e.to === 'suspended' && e.reason === 'BM_ERR_IO'));
      await throwsCode(() => y.v.write(60 * 64 * KiB, new Uint8Array(64 * KiB).fill(1)), 'BM_ERR_IO', 'a later write that needs new space');
      for (const [at, data] of ok) assert.equal(y.v.read(at, data.length), data);
      await y.primary.close({ drainTimeoutMs: 0 }).catch(() => {});
      await y.secondary.close();
      await y.proxy.close();
      const simage = fs.readFileSync(path.join(dir, 's2', 'v.img'));
      for (const [at, data] of ok) assert.ok(simage.subarray(at, at + data.length).equals(data), `flushed block at ${at} is on the secondary`);
    } finally {
      for (const m of mounts) spawnSync('umount', ['-l', m]);
      cleanup();
    }
  });
}

test.run();
