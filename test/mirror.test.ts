// The mirror data path end to end, on tcp:// and ws://: random workloads
// compared byte for byte after a clean stop, a socket destroyed mid-frame, a
// secondary restarted, stalled acknowledgements, refused secrets and
// mismatched volumes.
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Primary, type PrimaryEvent } from '../engine/primary.ts';
import { Secondary } from '../engine/secondary.ts';
import { FrameDecoder } from '../engine/frame-decoder.ts';
import { FaultProxy } from '../bench/fault-proxy.ts';
import { alignedFrameBytes, FrameType, headerPackr, payloadStart } from '../engine/frame.ts';
import { Control, type Journal } from '../engine/journal.ts';
import { prng, randomBytes, tempDir, testSeed } from './helpers.ts';

const KiB = 1024;
type Scheme = 'tcp' | 'ws';

interface Setup {
  primary: Primary;
  secondary: Secondary;
  proxy?: FaultProxy;
  dir: string;
  events: PrimaryEvent[];
  stop(): Promise<void>;
}

async function mirrorPair(options: {
  scheme: Scheme;
  mode?: 'sync' | 'async';
  proxy?: boolean;
  secret?: Uint8Array;
  primarySecret?: Uint8Array;
  volumes?: Array<{ name: string; size: number }>;
  ackTimeoutMs?: number;
  heartbeatMs?: number;
  waitDuplex?: boolean;
}): Promise<Setup> {
  const { dir, cleanup } = tempDir('bm-mirror-');
  const secondary = await Secondary.start({ dir: path.join(dir, 's'), listen: [`${options.scheme}://127.0.0.1:0`], secret: options.secret });
  const port = Number(secondary.urls[0]!.split(':').pop());
  const proxy = options.proxy ? await FaultProxy.start(port) : undefined;
  const primary = await Primary.start({
    dir: path.join(dir, 'p'),
    volumes: options.volumes ?? [{ name: 'db', size: 512 * KiB }, { name: 'log', size: 128 * KiB }],
    mirror: proxy ? proxy.url(options.scheme) : secondary.urls[0]!,
    mode: options.mode ?? 'sync',
    secret: options.primarySecret ?? options.secret,
    journalBytes: 1 << 20,
    payloadBytesMax: 64 * KiB,
    ackTimeoutMs: options.ackTimeoutMs ?? 2000,
    heartbeatMs: options.heartbeatMs ?? 200,
    reconnectDelayMinMs: 20,
    reconnectDelayMaxMs: 200,
    pool: 'none',
  });
  const events: PrimaryEvent[] = [];
  primary.onEvent((e) => events.push(e));
  if (options.waitDuplex !== false) await primary.waitDuplex(10_000);
  let stopped = false;
  return {
    primary,
    secondary,
    proxy,
    dir,
    events,
    stop: async () => {
      if (stopped) return;
      stopped = true;
      await primary.close();
      await secondary.close();
      await proxy?.close();
      cleanup();
    },
  };
}

function sameImages(dir: string, names: string[], label: string): void {
  for (const name of names) {
    const a = fs.readFileSync(path.join(dir, 'p', `${name}.img`));
    const b = fs.readFileSync(path.join(dir, 's', `${name}.img`));
    assert.is(a.length, b.length, `${label}: ${name} sizes`);
    const differ = a.findIndex((byte, i) => byte !== b[i]);
    assert.is(differ, -1, `${label}: ${name}.img differs first at byte ${differ}`);
  }
}

/** A random workload of overlapping writes, zeroes, trims and flushes over both volumes. */
async function workload(setup: Setup, random: () => number, count: number, concurrency = 8): Promise<void> {
  const pairs = setup.primary.pairs;
  let issued = 0;
  const worker = async () => {
    while (issued < count) {
      issued++;
      const pair = pairs[Math.floor(random() * pairs.length)]!;
      const r = random();
      const length = 1 + Math.floor(random() ** 2 * 40 * KiB);
      const offset = Math.floor(random() * (pair.size - length));
      if (r < 0.8) await pair.write(offset, randomBytes(random, length), { fua: random() < 0.05 });
      else if (r < 0.9) await pair.writeZeroes(offset, length);
      else if (r < 0.97) await pair.trim(offset, length);
      else await pair.flush();
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
}

async function until(condition: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) assert.unreachable(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

for (const scheme of ['tcp', 'ws'] as const) {
  for (const mode of ['sync', 'async'] as const) {
    test(`${scheme}, ${mode}: a random workload, a clean stop, and both images are byte-identical`, async () => {
      const seed = testSeed();
      const setup = await mirrorPair({ scheme, mode });
      try {
        await workload(setup, prng(seed), 600);
        assert.ok(setup.primary.pairs.every((p) => p.state === 'duplex'), `seed ${seed}: stayed duplex`);
        await setup.primary.close();
        await setup.secondary.close();
        sameImages(setup.dir, ['db', 'log'], `seed ${seed}`);
      } finally {
        await setup.stop();
      }
    });
  }

  test(`${scheme}: a socket destroyed mid-frame suspends the pairs, which reconnect, resync and match`, async () => {
    const seed = testSeed();
    const random = prng(seed);
    const setup = await mirrorPair({ scheme, mode: 'sync', proxy: true });
    try {
      await workload(setup, random, 100);
      for (let round = 0; round < 3; round++) {
        setup.proxy!.cutAfter(1 + Math.floor(random() * 50 * KiB));
        await workload(setup, random, 200);
        await until(() => setup.primary.pairs.every((p) => p.state === 'duplex'), 10_000, `seed ${seed}: duplex again (round ${round})`);
      }
      assert.ok(setup.proxy!.cuts >= 1, 'the proxy cut at least one connection');
      const states = setup.events.filter((e) => e.type === 'state').map((e) => (e as { to: string }).to);
      assert.ok(states.includes('suspended') && states.includes('syncing'), `seed ${seed}: went through suspended and syncing: ${states.join(',')}`);
      await setup.primary.close();
      await setup.secondary.close();
      sameImages(setup.dir, ['db', 'log'], `seed ${seed}`);
    } finally {
      await setup.stop();
    }
  });
}

for (const scheme of ['tcp', 'ws'] as const) {
  test(`${scheme}: the secondary restarts; the primary reconnects, resyncs what it missed, and the images match`, async () => {
    const seed = testSeed();
    const random = prng(seed);
    const setup = await mirrorPair({ scheme, mode: 'sync', proxy: true });
    try {
      await workload(setup, random, 100);
      const port = Number(setup.secondary.urls[0]!.split(':').pop());
      await setup.secondary.close();
      await until(() => setup.primary.pairs.every((p) => p.state === 'suspended'), 10_000, 'suspended');
      await workload(setup, random, 100); // completes locally, recorded as out of sync
      assert.ok(setup.primary.pairs.some((p) => p.oos.bytes > 0), 'writes while suspended are recorded');
      const again = await Secondary.start({ dir: path.join(setup.dir, 's'), listen: [`${scheme}://127.0.0.1:${port}`] });
      await until(() => setup.primary.pairs.every((p) => p.state === 'duplex'), 15_000, 'duplex after restart');
      await setup.primary.close();
      await again.close();
      sameImages(setup.dir, ['db', 'log'], `seed ${seed}`);
    } finally {
      await setup.stop();
    }
  });
}

for (const scheme of ['tcp', 'ws'] as const) {
  test(`${scheme}, async: records that end exactly at the end of the journal ring, each followed by more at its start, all arrive in order`, async () => {
    // A record that fills the ring to its very end leaves no padding frame before the next one at
    // offset 0; a send batch must not span that wrap (it once did, and the records were skipped).
    // Each round writes until the ring is nearly full, then one record sized to end exactly at the
    // end (its frame size computed as the channel computes it), then a burst that starts at 0.
    const seed = testSeed();
    const random = prng(seed);
    const setup = await mirrorPair({ scheme, mode: 'async', volumes: [{ name: 'db', size: 512 * KiB }] });
    try {
      const pair = setup.primary.pairs[0]!;
      type Append = (volume: number, offset: number, payload: Uint8Array, flags: number) => number;
      const channel = (setup.primary as unknown as { channel: { journal: Journal; nextSeq: number; appendWrite: Append } }).channel;
      const capacity = channel.journal.capacity;
      const place = () => (Atomics.load(channel.journal.control, Control.head) >>> 0) & (capacity - 1);
      // Counts the records that left the head exactly at the end of the ring (a record placed after
      // a padding frame leaves it past 0).
      let exact = 0;
      const appendWrite = channel.appendWrite.bind(channel);
      channel.appendWrite = (...args) => {
        const seq = appendWrite(...args);
        if (place() === 0) exact++;
        return seq;
      };
      const write = (length: number) => pair.write(Math.floor(random() * (pair.size - length)), randomBytes(random, length));
      for (let round = 0; round < 12; round++) {
        // Bounded: a pair that stopped mirroring appends nothing more (the assertions below say why).
        for (let i = 0; i < 1000 && pair.state === 'duplex' && capacity - place() > 60 * KiB; i++) await write(1 + Math.floor(random() * 16 * KiB));
        if (pair.state !== 'duplex') break;
        const offset = Math.floor(random() * (pair.size - 64 * KiB));
        const header = headerPackr.pack([FrameType.write, channel.nextSeq, 0, offset, 0]) as Uint8Array;
        const length = capacity - place() - payloadStart(header.length);
        assert.is(alignedFrameBytes(header.length, length), capacity - place(), 'the crafted record fills the ring exactly');
        // The exact record and a burst after it in one turn, so the worker finds them together.
        const burst = [pair.write(offset, randomBytes(random, length))];
        for (let i = 0; i < 4; i++) burst.push(write(1 + Math.floor(random() * 4 * KiB)));
        await Promise.all(burst);
      }
      await pair.flush();
      const states = setup.events.filter((e) => e.type === 'state').map((e) => (e as { to: string }).to);
      assert.equal(states.filter((s) => s !== 'duplex' && s !== 'syncing'), [], `seed ${seed}: the pair never left duplex (${states.join(',')})`);
      assert.is(pair.state, 'duplex', `seed ${seed}: duplex at the end`);
      assert.is(exact, 12, 'every round ended a record exactly at the end of the ring');
      await setup.primary.close();
      await setup.secondary.close();
      sameImages(setup.dir, ['db'], `seed ${seed}`);
    } finally {
      await setup.stop();
    }
  });
}

test('tcp: stalled acknowledgements fail the link by deadline; writes complete locally and resync later', async () => {
  const seed = testSeed();
  const random = prng(seed);
  const setup = await mirrorPair({ scheme: 'tcp', mode: 'sync', proxy: true, ackTimeoutMs: 300, heartbeatMs: 100 });
  try {
    setup.proxy!.stall(true);
    const t0 = Date.now();
    await workload(setup, random, 20, 2);
    assert.ok(Date.now() - t0 < 5000, 'held writes were released within the deadline');
    const failed = setup.events.find((e) => e.type === 'link' && e.status === 'failed') as { code: string } | undefined;
    assert.ok(failed && ['BM_ERR_ACK_TIMEOUT', 'BM_ERR_HEARTBEAT'].includes(failed.code), `failed with ${failed?.code}`);
    setup.proxy!.cut();
    setup.proxy!.stall(false);
    await until(() => setup.primary.pairs.every((p) => p.state === 'duplex'), 15_000, 'duplex after the stall');
    await setup.primary.close();
    await setup.secondary.close();
    sameImages(setup.dir, ['db', 'log'], `seed ${seed}`);
  } finally {
    await setup.stop();
  }
});

test('tcp: large async writes cut across reads arrive intact (on Node the rest of a long frame is read straight into the staging area)', async () => {
  const seed = testSeed();
  const random = prng(seed);
  const { dir, cleanup } = tempDir('bm-mirror-');
  // Count the reads the secondary steered: Node's tcp:// link steers, the other runtimes' links do not.
  const readTarget = FrameDecoder.prototype.readTarget;
  let steered = 0;
  FrameDecoder.prototype.readTarget = function (this: FrameDecoder, readArea?: Uint8Array) {
    const target = readTarget.call(this, readArea);
    if (target && target.buffer !== readArea?.buffer) steered++;
    return target;
  };
  const secondary = await Secondary.start({ dir: path.join(dir, 's'), listen: ['tcp://127.0.0.1:0'] });
  const primary = await Primary.start({ dir: path.join(dir, 'p'), volumes: [{ name: 'db', size: 8 << 20 }], mirror: secondary.urls[0]!, mode: 'async', pool: 'none' });
  try {
    await primary.waitDuplex(10_000);
    const pair = primary.volume('db');
    let issued = 0;
    const lane = async () => {
      while (issued++ < 48) {
        const length = 1 + Math.floor(random() * (1 << 20));
        await pair.write(Math.floor(random() * (pair.size - length)), randomBytes(random, length));
      }
    };
    await Promise.all([lane(), lane(), lane(), lane()]);
    assert.ok(await primary.drain(), `seed ${seed}: drained`);
    await primary.close();
    await secondary.close();
    sameImages(dir, ['db'], `seed ${seed}`);
    const g = globalThis as { Bun?: unknown; Deno?: unknown };
    if (!g.Bun && !g.Deno) assert.ok(steered > 0, `seed ${seed}: no read was steered on Node`);
  } finally {
    FrameDecoder.prototype.readTarget = readTarget;
    await primary.close();
    await secondary.close();
    cleanup();
  }
});

for (const scheme of ['tcp', 'ws'] as const) {
  test(`${scheme}: a write's buffer may be reused as soon as write() returns, whether admitted at once or after waiting for room`, async () => {
    const seed = testSeed();
    const random = prng(seed);
    // 64 writes of 64 KiB against a 1 MiB journal: the first few are admitted at once, the rest wait for room.
    const setup = await mirrorPair({ scheme, mode: 'async', volumes: [{ name: 'db', size: 4 << 20 }] });
    try {
      const pair = setup.primary.volume('db');
      const expected = new Uint8Array(pair.size);
      const pending: Promise<void>[] = [];
      for (let slot = 0; slot < 64; slot++) {
        const data = randomBytes(random, 64 * KiB);
        expected.set(data, slot * 64 * KiB);
        pending.push(pair.write(slot * 64 * KiB, data));
        data.fill(0xee); // the caller reuses its buffer at once
      }
      await Promise.all(pending);
      assert.ok(await setup.primary.drain(), `seed ${seed}: drained`);
      const here = pair.read(0, pair.size);
      assert.is(here.findIndex((b, i) => b !== expected[i]), -1, `seed ${seed}: the primary holds what was written`);
      await setup.primary.close();
      await setup.secondary.close();
      sameImages(setup.dir, ['db'], `seed ${seed}`);
    } finally {
      await setup.stop();
    }
  });
}

test('a missing or wrong secret is refused with BM_ERR_AUTH, and nothing is mirrored', async () => {
  const secret = new TextEncoder().encode('correct horse battery staple');
  for (const [label, primarySecret] of [
    ['missing', undefined],
    ['wrong', new TextEncoder().encode('wrong')],
  ] as const) {
    const setup = await mirrorPair({ scheme: 'tcp', secret, primarySecret: primarySecret ?? new Uint8Array(0), waitDuplex: false });
    try {
      await until(() => setup.events.some((e) => e.type === 'link' && e.status === 'failed'), 10_000, `${label}: a failure`);
      const failed = setup.events.find((e) => e.type === 'link' && e.status === 'failed') as { code: string };
      assert.is(failed.code, 'BM_ERR_AUTH', label);
      await setup.primary.volume('db').write(0, new Uint8Array([1, 2, 3]));
      assert.is(setup.primary.volume('db').state, 'suspended');
      assert.is(setup.secondary.volume('db'), undefined, `${label}: the secondary opened nothing`);
    } finally {
      await setup.stop();
    }
  }
  // A primary with a secret refuses a secondary that cannot prove it holds one.
  const setup = await mirrorPair({ scheme: 'tcp', primarySecret: secret, waitDuplex: false });
  try {
    await until(() => setup.events.some((e) => e.type === 'link' && e.status === 'failed'), 10_000, 'primary-side refusal');
    const failed = setup.events.find((e) => e.type === 'link' && e.status === 'failed') as { code: string };
    assert.is(failed.code, 'BM_ERR_AUTH');
  } finally {
    await setup.stop();
  }
});

test('a secondary image of another size is refused with BM_ERR_MISMATCH and left untouched', async () => {
  const { dir, cleanup } = tempDir('bm-mismatch-');
  try {
    fs.mkdirSync(path.join(dir, 's'));
    fs.writeFileSync(path.join(dir, 's', 'db.img'), new Uint8Array(64 * KiB).fill(7));
    const secondary = await Secondary.start({ dir: path.join(dir, 's'), listen: ['ws://127.0.0.1:0'] });
    const primary = await Primary.start({ dir: path.join(dir, 'p'), volumes: [{ name: 'db', size: 128 * KiB }], mirror: secondary.urls[0]!, pool: 'none', reconnectDelayMinMs: 50 });
    const events: PrimaryEvent[] = [];
    primary.onEvent((e) => events.push(e));
    await until(() => events.some((e) => e.type === 'link' && e.status === 'failed'), 10_000, 'refusal');
    assert.is((events.find((e) => e.type === 'link') as { code: string }).code, 'BM_ERR_MISMATCH');
    await primary.close();
    await secondary.close();
    assert.equal(new Uint8Array(fs.readFileSync(path.join(dir, 's', 'db.img'))), new Uint8Array(64 * KiB).fill(7));
  } finally {
    cleanup();
  }
});

test('a primary started with connect: false writes locally and mirrors nothing until connect(); then it resyncs to duplex', async () => {
  const { dir, cleanup } = tempDir('bm-deferred-');
  try {
    const secondary = await Secondary.start({ dir: path.join(dir, 's'), listen: ['tcp://127.0.0.1:0'] });
    const primary = await Primary.start({ dir: path.join(dir, 'p'), volumes: [{ name: 'db', size: 256 * KiB }], mirror: secondary.urls[0]!, pool: 'none', connect: false });
    const events: PrimaryEvent[] = [];
    primary.onEvent((e) => events.push(e));
    const db = primary.volume('db');
    const data = randomBytes(prng(testSeed()), 64 * KiB);
    await db.write(4 * KiB, data);
    await new Promise((r) => setTimeout(r, 200));
    assert.is(db.state, 'suspended', 'not mirroring before connect()');
    assert.is(primary.status().connected, false);
    assert.ok(primary.status().volumes[0]!.outOfSyncBytes > 0, 'the local write is recorded as out of sync');
    assert.is(secondary.volume('db'), undefined, 'the secondary never heard of the volume');
    assert.not.ok(events.some((e) => e.type === 'link'), 'no connection attempt');
    const duplex = primary.waitDuplex(10_000);
    primary.connect();
    primary.connect(); // a second call changes nothing
    await duplex;
    assert.is(db.state, 'duplex');
    assert.is(events.filter((e) => e.type === 'link' && e.status === 'connected').length, 1, 'one connection');
    assert.ok(primary.status().recordBytes >= data.length, 'the copy was counted as record bytes sent');
    // A write while duplex is mirrored before the clean stop.
    await db.write(0, new Uint8Array(4 * KiB).fill(9));
    await primary.close();
    await secondary.close();
    assert.equal(new Uint8Array(fs.readFileSync(path.join(dir, 's', 'db.img'))), new Uint8Array(fs.readFileSync(path.join(dir, 'p', 'db.img'))));
    try {
      primary.connect();
      assert.unreachable('connect() on a closed primary must throw');
    } catch (e) {
      assert.is((e as { code?: string }).code, 'BM_ERR_CLOSED');
    }
  } finally {
    cleanup();
  }
});

test('waitDuplex is rejected with BM_ERR_CLOSED when the primary closes while it waits', async () => {
  const { dir, cleanup } = tempDir('bm-waitclose-');
  try {
    const primary = await Primary.start({ dir: path.join(dir, 'p'), volumes: [{ name: 'db', size: 64 * KiB }], mirror: 'tcp://127.0.0.1:9', pool: 'none', connect: false });
    const waiting = primary.waitDuplex(60_000).then(
      () => 'resolved',
      (e: { code?: string }) => e.code,
    );
    await primary.close();
    assert.is(await waiting, 'BM_ERR_CLOSED');
    // And at once when it is called after the close.
    await primary.waitDuplex(60_000).then(
      () => assert.unreachable('waitDuplex on a closed primary must be rejected'),
      (e: { code?: string }) => assert.is(e.code, 'BM_ERR_CLOSED'),
    );
  } finally {
    cleanup();
  }
});

test.run();
