import fs from 'node:fs';
import path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Volume } from '../engine/index.ts';
import { spanBytes } from '../engine/memory.ts';
import { prng, randomBytes, tempDir, testSeed, throwsCode } from './helpers.ts';

const KiB = 1024;

test('read after write at random offsets matches a plain reference model', async () => {
  const seed = testSeed();
  const random = prng(seed);
  const size = 1024 * KiB;
  const volume = await Volume.create({ size, pool: 'none', segmentSize: 16 * KiB });
  const model = new Uint8Array(size);
  try {
    for (let i = 0; i < 2000; i++) {
      // Lengths from 0 to a few segments, so writes straddle blocks and segments.
      const length = Math.floor(random() ** 3 * 50 * KiB);
      const offset = Math.floor(random() * (size - length + 1));
      if (random() < 0.1) {
        volume.writeZeroesSync(offset, length);
        model.fill(0, offset, offset + length);
      } else {
        const data = randomBytes(random, length);
        volume.writeSync(offset, data);
        model.set(data, offset);
      }
      const at = Math.floor(random() * size);
      const n = Math.min(size - at, Math.floor(random() * 70 * KiB));
      assert.equal(volume.read(at, n), model.subarray(at, at + n), `seed ${seed} step ${i}`);
    }
    assert.equal(volume.read(0, size), model, `seed ${seed}: whole volume`);
  } finally {
    await volume.close();
  }
});

test('a write through the promise API is visible at once and in the image file before flush', async () => {
  const { dir, cleanup } = tempDir();
  const volume = await Volume.create({ name: 'db', size: 256 * KiB, dir, pool: 'none' });
  try {
    const data = new TextEncoder().encode('hello, mirror');
    await volume.write(5000, data);
    assert.equal(volume.read(5000, data.length), data);
    // No flush: the bytes must already be in the file (through the OS cache),
    // so a process killed now loses nothing it completed.
    const file = fs.readFileSync(path.join(dir, 'db.img'));
    assert.equal(new Uint8Array(file.subarray(5000, 5000 + data.length)), data);
    await volume.write(0, data, { fua: true });
    assert.equal(new Uint8Array(fs.readFileSync(path.join(dir, 'db.img')).subarray(0, data.length)), data);
  } finally {
    await volume.close();
    cleanup();
  }
});

test('persistence round trip: write, flush, close, reopen, read', async () => {
  const seed = testSeed();
  const random = prng(seed);
  const { dir, cleanup } = tempDir();
  try {
    const size = 512 * KiB;
    const model = new Uint8Array(size);
    const volume = await Volume.create({ name: 'data', size, dir, pool: 'none' });
    assert.is(fs.statSync(path.join(dir, 'data.img')).size, size, 'image is exactly SIZE bytes');
    for (let i = 0; i < 200; i++) {
      const length = 1 + Math.floor(random() * 20 * KiB);
      const offset = Math.floor(random() * (size - length));
      const data = randomBytes(random, length);
      await volume.write(offset, data);
      model.set(data, offset);
    }
    await volume.trim(4096, 8192);
    model.fill(0, 4096, 4096 + 8192);
    await volume.flush();
    await volume.close();
    assert.equal(new Uint8Array(fs.readFileSync(path.join(dir, 'data.img'))), model, `seed ${seed}: file`);
    const again = await Volume.open({ name: 'data', dir, size, pool: 'none' });
    try {
      assert.is(again.size, size);
      assert.equal(again.read(0, size), model, `seed ${seed}: reopened`);
    } finally {
      await again.close();
    }
    // Size taken from the file when not given.
    const third = await Volume.open({ name: 'data', dir, pool: 'none' });
    assert.is(third.size, size);
    await third.close();
  } finally {
    cleanup();
  }
});

test('image errors: wrong size, missing, already there, not a whole number of blocks', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const volume = await Volume.create({ name: 'a', size: 64 * KiB, dir, pool: 'none' });
    await volume.close();
    await throwsCode(() => Volume.open({ name: 'a', dir, size: 128 * KiB, pool: 'none' }), 'BM_ERR_IMAGE_SIZE', 'size mismatch');
    assert.is(fs.statSync(path.join(dir, 'a.img')).size, 64 * KiB, 'a refused open never truncates');
    await throwsCode(() => Volume.open({ name: 'missing', dir, pool: 'none' }), 'BM_ERR_IMAGE_OPEN', 'missing');
    await throwsCode(() => Volume.create({ name: 'a', size: 64 * KiB, dir, pool: 'none' }), 'BM_ERR_IMAGE_EXISTS', 'exists');
    await throwsCode(() => Volume.create({ name: 'x', size: 64 * KiB, dir: path.join(dir, 'nope'), pool: 'none' }), 'BM_ERR_IMAGE_OPEN', 'no dir');
    fs.writeFileSync(path.join(dir, 'odd.img'), new Uint8Array(5000));
    await throwsCode(() => Volume.open({ name: 'odd', dir, pool: 'none' }), 'BM_ERR_BAD_GEOMETRY', 'odd image size');
    fs.mkdirSync(path.join(dir, 'd.img'));
    await throwsCode(() => Volume.open({ name: 'd', dir, pool: 'none' }), 'BM_ERR_IMAGE_OPEN', 'a directory');
    await throwsCode(() => Volume.open({ name: 'a' } as never), 'BM_ERR_INVALID_ARGUMENT', 'open without dir');
  } finally {
    cleanup();
  }
});

test('geometry errors: sizes that are not powers of two or not whole blocks', async () => {
  const bad: Array<[Record<string, unknown>, string]> = [
    [{ size: 64 * KiB, blockSize: 3000 }, 'block not a power of two'],
    [{ size: 64 * KiB, blockSize: 256 }, 'block under 512'],
    [{ size: 64 * KiB, segmentSize: 100_000 }, 'segment not a power of two'],
    [{ size: 64 * KiB, blockSize: 8192, segmentSize: 4096 }, 'segment smaller than a block'],
    [{ size: 64 * KiB, segmentSize: 32 * 1024 * KiB }, 'segment too large'],
    [{ size: 5000 }, 'size not whole blocks'],
    [{ size: 0 }, 'zero size'],
    [{ size: -4096 }, 'negative size'],
    [{ size: '4096' }, 'size as string'],
    [{}, 'no size'],
  ];
  for (const [options, what] of bad) {
    await throwsCode(() => Volume.create({ pool: 'none', ...options } as never), 'BM_ERR_BAD_GEOMETRY', what);
  }
  await throwsCode(() => Volume.create({ size: 4096, code: 'md5' as never, pool: 'none' }), 'BM_ERR_UNKNOWN_ALGORITHM', 'algorithm');
  await throwsCode(() => Volume.create({ size: 4096, name: '../x', pool: 'none' }), 'BM_ERR_INVALID_ARGUMENT', 'name');
  await throwsCode(() => Volume.create({ size: 4096, pool: 'mine' as never }), 'BM_ERR_INVALID_ARGUMENT', 'pool');
  await throwsCode(() => Volume.create(null as never), 'BM_ERR_INVALID_ARGUMENT', 'options');
});

test('bad offsets, lengths and buffers are refused and change nothing', async () => {
  const volume = await Volume.create({ size: 64 * KiB, pool: 'none' });
  try {
    volume.writeSync(0, new Uint8Array(64 * KiB).fill(0xab));
    const before = volume.read(0, 64 * KiB);
    const data = new Uint8Array(16).fill(1);
    const offsets: unknown[] = [-1, 1.5, NaN, Infinity, '8', null, undefined, 2 ** 53, 10n];
    for (const offset of offsets) {
      await throwsCode(() => volume.write(offset as number, data), 'BM_ERR_INVALID_ARGUMENT', `write at ${String(offset)}`);
      await throwsCode(() => volume.read(offset as number, 4), 'BM_ERR_INVALID_ARGUMENT', `read at ${String(offset)}`);
      await throwsCode(() => volume.trim(offset as number, 4), 'BM_ERR_INVALID_ARGUMENT', `trim at ${String(offset)}`);
    }
    for (const length of [-1, 0.5, NaN, '4', null]) {
      await throwsCode(() => volume.read(0, length as number), 'BM_ERR_INVALID_ARGUMENT', `read length ${String(length)}`);
      await throwsCode(() => volume.writeZeroes(0, length as number), 'BM_ERR_INVALID_ARGUMENT', `zeroes length ${String(length)}`);
    }
    await throwsCode(() => volume.write(64 * KiB - 8, data), 'BM_ERR_OUT_OF_RANGE', 'write past the end');
    await throwsCode(() => volume.read(64 * KiB, 1), 'BM_ERR_OUT_OF_RANGE', 'read past the end');
    await throwsCode(() => volume.writeZeroes(1, 64 * KiB), 'BM_ERR_OUT_OF_RANGE', 'zeroes past the end');
    await throwsCode(() => volume.trim(60 * KiB, 8 * KiB), 'BM_ERR_OUT_OF_RANGE', 'trim past the end');
    const buffers: unknown[] = ['abc', [1, 2, 3], new Uint16Array(4), new DataView(new ArrayBuffer(4)), new ArrayBuffer(4), null, 42];
    for (const buffer of buffers) {
      await throwsCode(() => volume.write(0, buffer as Uint8Array), 'BM_ERR_INVALID_ARGUMENT', `buffer ${String(buffer)}`);
    }
    await throwsCode(() => volume.readInto(0, new Float64Array(2) as never), 'BM_ERR_INVALID_ARGUMENT', 'readInto target');
    assert.equal(volume.read(0, 64 * KiB), before, 'no refused call changed a byte');
    // Edge cases that are legal: zero length anywhere inside, last byte.
    volume.writeSync(64 * KiB, new Uint8Array(0));
    volume.writeSync(64 * KiB - 1, new Uint8Array([7]));
    assert.is(volume.read(64 * KiB - 1, 1)[0], 7);
  } finally {
    await volume.close();
  }
});

test('a closed volume refuses every call with BM_ERR_CLOSED', async () => {
  const { dir, cleanup } = tempDir();
  const volume = await Volume.create({ name: 'c', size: 64 * KiB, dir, pool: 'none' });
  await volume.close();
  await volume.close(); // idempotent
  assert.ok(volume.closed);
  const calls: Array<[string, () => unknown]> = [
    ['read', () => volume.read(0, 1)],
    ['readInto', () => volume.readInto(0, new Uint8Array(1))],
    ['write', () => volume.write(0, new Uint8Array(1))],
    ['writeSync', () => volume.writeSync(0, new Uint8Array(1))],
    ['writeZeroes', () => volume.writeZeroes(0, 1)],
    ['trim', () => volume.trim(0, 1)],
    ['flush', () => volume.flush()],
    ['codes', () => volume.codes()],
    ['settle', () => volume.settle()],
    ['recomputeCodes', () => volume.recomputeCodes()],
  ];
  for (const [name, call] of calls) await throwsCode(call, 'BM_ERR_CLOSED', name);
  cleanup();
});

test('a volume larger than one memory span reads and writes across the boundary', async () => {
  // 2 GiB + 1 MiB: two shared memories. Only touched pages are ever committed.
  const size = spanBytes + 1024 * KiB;
  const volume = await Volume.create({ size, pool: 'none' });
  try {
    const data = new Uint8Array(256 * KiB);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7 + 3) & 255;
    const at = spanBytes - 100 * KiB;
    volume.writeSync(at, data);
    assert.equal(volume.read(at, data.length), data);
    assert.equal(volume.read(spanBytes - 1, 2), data.subarray(100 * KiB - 1, 100 * KiB + 1));
    volume.writeZeroesSync(spanBytes - 10, 20);
    assert.equal(volume.read(spanBytes - 10, 20), new Uint8Array(20));
    volume.writeSync(size - 3, new Uint8Array([1, 2, 3]));
    assert.equal(volume.read(size - 3, 3), new Uint8Array([1, 2, 3]));
  } finally {
    await volume.close();
  }
});

test.run();
