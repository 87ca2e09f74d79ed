import fs from 'node:fs';
import path from 'node:path';
import { createBLAKE3, createXXHash128, xxhash3 } from 'hash-wasm';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { HashPool, Volume, codeBytes, type CodeAlgorithm } from '../engine/index.ts';
import { poolWorkersDefaultMax } from '../engine/hash-pool.ts';
import { coreCount } from '../engine/runtime.ts';
import { hex, prng, randomBytes, tempDir, testSeed } from './helpers.ts';

const KiB = 1024;

/** The reference: hash-wasm, computed here, independently of the engine. */
async function referenceHasher(algorithm: CodeAlgorithm): Promise<(bytes: Uint8Array) => string> {
  if (algorithm === 'xxh3') {
    const { createXXHash3 } = await import('hash-wasm');
    const h = await createXXHash3();
    return (b) => (h.init(), h.update(b), h.digest('hex'));
  }
  const h = algorithm === 'xxh128' ? await createXXHash128() : await createBLAKE3();
  return (b) => (h.init(), h.update(b), h.digest('hex'));
}

/** Every valid code equals the reference hash of its segment's present bytes. Returns how many were checked. */
async function checkValidCodes(volume: Volume, label: string): Promise<number> {
  const reference = await referenceHasher(volume.algorithm);
  const { codes, valid } = volume.codes();
  const size = codeBytes[volume.algorithm];
  let checked = 0;
  for (let s = 0; s < volume.segmentCount; s++) {
    if (!valid[s]) continue;
    const offset = s * volume.segmentSize;
    const bytes = volume.read(offset, Math.min(volume.segmentSize, volume.size - offset));
    assert.is(hex(codes.subarray(s * size, (s + 1) * size)), reference(bytes), `${label}: segment ${s}`);
    checked++;
  }
  return checked;
}

let pool: HashPool;
test.before(async () => {
  pool = await HashPool.start({ workers: 2, rehashDelayMs: 1 });
});
test.after(async () => {
  await pool.close();
});

test('a pool started without options has one worker per core, at most 8, and a recompute on it hashes every segment once', async () => {
  const own = await HashPool.start();
  const volume = await Volume.create({ size: 64 * 64 * 1024 * 4, pool: own });
  try {
    assert.is(poolWorkersDefaultMax, 8);
    assert.is(own.workerCount, Math.min(8, coreCount()));
    const before = own.stats().segmentsHashed;
    await volume.recomputeCodes();
    assert.is(own.stats().segmentsHashed - before, volume.segmentCount);
  } finally {
    await volume.close();
    await own.close();
  }
});

test('a new volume has every code valid, equal to the hash of zeroes', async () => {
  const volume = await Volume.create({ size: 200 * KiB, segmentSize: 64 * KiB, pool: 'none' });
  try {
    const { codes, valid } = volume.codes();
    assert.equal(Array.from(valid), [1, 1, 1, 1]);
    assert.is(hex(codes.subarray(0, 8)), await xxhash3(new Uint8Array(64 * KiB)));
    assert.is(hex(codes.subarray(24, 32)), await xxhash3(new Uint8Array(8 * KiB)), 'shorter last segment');
  } finally {
    await volume.close();
  }
});

test('a write marks exactly the codes of the segments it touches invalid', async () => {
  const volume = await Volume.create({ size: 1024 * KiB, segmentSize: 64 * KiB, pool: 'none' });
  try {
    volume.writeSync(64 * KiB - 1, new Uint8Array(2)); // segments 0 and 1
    volume.writeSync(5 * 64 * KiB, new Uint8Array(1)); // segment 5
    const { valid } = volume.codes();
    assert.equal(Array.from(valid), [0, 0, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
    assert.is(volume.invalidCodeCount(), 3);
    await volume.settle();
    assert.is(volume.invalidCodeCount(), 0);
  } finally {
    await volume.close();
  }
});

for (const algorithm of ['xxh3', 'xxh128', 'blake3'] as const) {
  test(`after quiescence every ${algorithm} code is valid and equals hash-wasm's hash of the segment`, async () => {
    const seed = testSeed();
    const random = prng(seed);
    const volume = await Volume.create({ size: 4096 * KiB + 12 * KiB, segmentSize: 32 * KiB, code: algorithm, pool });
    try {
      for (let i = 0; i < 300; i++) {
        const length = 1 + Math.floor(random() * 40 * KiB);
        volume.writeSync(Math.floor(random() * (volume.size - length)), randomBytes(random, length));
      }
      await volume.settle();
      assert.is(volume.invalidCodeCount(), 0);
      assert.is(await checkValidCodes(volume, `seed ${seed} ${algorithm}`), volume.segmentCount);
    } finally {
      await volume.close();
    }
  });
}

test('the pool brings codes current in the background, without being asked', async () => {
  const seed = testSeed();
  const random = prng(seed);
  const volume = await Volume.create({ size: 2048 * KiB, pool });
  try {
    for (let i = 0; i < 100; i++) volume.writeSync(Math.floor(random() * (volume.size - 4096)), randomBytes(random, 4096));
    assert.ok(volume.invalidCodeCount() > 0);
    const deadline = Date.now() + 10_000;
    while (volume.invalidCodeCount() > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    assert.is(volume.invalidCodeCount(), 0, 'background hashing finished within 10 s');
    assert.is(await checkValidCodes(volume, `seed ${seed}`), volume.segmentCount);
  } finally {
    await volume.close();
  }
});

test('an opened image starts with codes invalid; recomputing from cold gives the same codes', async () => {
  const seed = testSeed();
  const random = prng(seed);
  const { dir, cleanup } = tempDir();
  try {
    fs.writeFileSync(path.join(dir, 'img.img'), randomBytes(random, 1024 * KiB));
    const volume = await Volume.open({ name: 'img', dir, pool: 'none' });
    try {
      assert.is(volume.invalidCodeCount(), volume.segmentCount);
      await volume.settle();
      const first = volume.codes();
      await volume.recomputeCodes();
      assert.equal(volume.codes(), first);
      assert.is(await checkValidCodes(volume, `seed ${seed}`), volume.segmentCount);
    } finally {
      await volume.close();
    }
  } finally {
    cleanup();
  }
});

test('stress: a writer hammers segments while the pool hashes; no valid code ever disagrees with the bytes', async () => {
  // The main thread writes in bursts while two workers hash the same
  // segments concurrently, with no quiet delay. After a burst (and a random
  // pause, so that some segments settle and some do not) nothing writes, so
  // every code the snapshot calls valid must equal the bytes now. A hasher
  // that publishes a code for bytes that changed under it (a broken
  // generation check) is caught here.
  const seed = testSeed();
  const random = prng(seed);
  const volume = await Volume.create({ size: 1024 * KiB, segmentSize: 16 * KiB, pool });
  const reference = await referenceHasher('xxh3');
  const data = randomBytes(random, 64 * KiB);
  let checked = 0;
  let rounds = 0;
  try {
    const deadline = Date.now() + 2500;
    for (; rounds < 2000 && Date.now() < deadline; rounds++) {
      const writes = 1 + Math.floor(random() * 200);
      for (let i = 0; i < writes; i++) {
        const length = 1 + Math.floor(random() * 8 * KiB);
        const offset = Math.floor(random() * (volume.size - length));
        data[0] = (data[0]! + 1) & 255;
        volume.writeSync(offset, data.subarray(0, length));
      }
      await new Promise((r) => setTimeout(r, random() * 3));
      const { codes, valid } = volume.codes();
      for (let s = 0; s < volume.segmentCount; s++) {
        if (!valid[s]) continue;
        const want = reference(volume.read(s * volume.segmentSize, volume.segmentSize));
        assert.is(hex(codes.subarray(s * 8, s * 8 + 8)), want, `seed ${seed} round ${rounds}: segment ${s} is marked valid with a stale code`);
        checked++;
      }
    }
    assert.ok(checked > 100, `only ${checked} valid codes were checked in ${rounds} rounds: the test exercised nothing`);
  } finally {
    await volume.close();
  }
});

test.run();
