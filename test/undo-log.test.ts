// The undo log: entries replay oldest first and stop at a torn one; a log
// syncs in the background as it grows and still closes cleanly; a finished
// log deleted in the background never takes the next resync's log with it;
// a stop during the end of a resync waits for it.
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createXXHash3 } from 'hash-wasm';
import { UndoLog, undoLogReady, undoSyncEveryBytes } from '../engine/undo-log.ts';
import { ResyncTarget } from '../engine/resync-target.ts';
import { loadMetadata } from '../engine/metadata.ts';
import { Volume } from '../engine/volume.ts';
import { prng, randomBytes, tempDir, testSeed, throwsCode } from './helpers.ts';

const segment = 64 * 1024;
const xxh3 = await createXXHash3();
const sum = (bytes: Uint8Array) => {
  xxh3.init();
  xxh3.update(bytes);
  return BigInt('0x' + xxh3.digest('hex'));
};

await undoLogReady();

function replayed(file: string, segments: number): Array<{ offset: number; bytes: Uint8Array }> {
  const log = UndoLog.open(file, segments, segment);
  const out: Array<{ offset: number; bytes: Uint8Array }> = [];
  log.replay((offset, bytes) => out.push({ offset, bytes: bytes.slice() }));
  log.close();
  return out;
}

test('entries replay oldest first, each segment once, and reading stops at a torn entry', () => {
  const { dir, cleanup } = tempDir('bm-undo-');
  try {
    const seed = testSeed();
    const random = prng(seed);
    const file = path.join(dir, 'v.undo');
    const log = UndoLog.open(file, 8, segment);
    const saved = [3, 0, 5].map((s) => ({ s, bytes: randomBytes(random, segment) }));
    for (const { s, bytes } of saved) log.save(s, s * segment, bytes, sum(bytes));
    log.save(3, 3 * segment, new Uint8Array(segment), sum(new Uint8Array(segment)));
    assert.is(log.entries, 3, 'a segment already saved is not saved again');
    log.sync();
    log.close();
    const back = replayed(file, 8);
    assert.equal(back.map((e) => e.offset), [3 * segment, 0, 5 * segment], `seed ${seed}`);
    back.forEach((e, i) => assert.equal(e.bytes, saved[i]!.bytes));
    // A crash in the middle of the last append: its bytes are cut short.
    fs.truncateSync(file, fs.statSync(file).size - 1000);
    assert.equal(replayed(file, 8).map((e) => e.offset), [3 * segment, 0]);
  } finally {
    cleanup();
  }
});

test('a growing log syncs in the background and still closes and reopens whole', async () => {
  const { dir, cleanup } = tempDir('bm-undo-');
  try {
    const file = path.join(dir, 'v.undo');
    const segments = Math.ceil((3 * undoSyncEveryBytes) / segment);
    const log = UndoLog.open(file, segments, segment);
    const bytes = new Uint8Array(segment).fill(7);
    const check = sum(bytes);
    // Past the threshold several times over: a background sync is running when the log is closed.
    for (let s = 0; s < segments; s++) log.save(s, s * segment, bytes, check);
    log.close();
    // The descriptor closes once that sync is done; the file is whole meanwhile and after.
    await new Promise((r) => setTimeout(r, 50));
    assert.is(replayed(file, segments).length, segments);
  } finally {
    cleanup();
  }
});

test('a background sync that failed fails every later sync of the log', async () => {
  const { dir, cleanup } = tempDir('bm-undo-');
  const real = fs.fdatasync;
  try {
    const log = UndoLog.open(path.join(dir, 'v.undo'), 64, segment);
    const bytes = new Uint8Array(segment).fill(3);
    // The seam: the background sync's system call, failing as a disk would.
    let failed = 0;
    (fs as { fdatasync: unknown }).fdatasync = (_fd: number, callback: (e: NodeJS.ErrnoException | null) => void) => {
      failed++;
      setTimeout(() => callback(Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' })), 1);
    };
    for (let s = 0; s * segment <= undoSyncEveryBytes; s++) log.save(s, s * segment, bytes, sum(bytes));
    (fs as { fdatasync: unknown }).fdatasync = real;
    assert.is(failed, 1, 'the log synced in the background once it passed the threshold');
    await new Promise((r) => setTimeout(r, 20));
    await throwsCode(() => log.sync(), 'BM_ERR_IO', 'the next sync, which would succeed by itself');
    await throwsCode(() => log.sync(), 'BM_ERR_IO', 'and every one after');
    log.close();
  } finally {
    (fs as { fdatasync: unknown }).fdatasync = real;
    cleanup();
  }
});

test('a finished log deleted in the background never takes the next log with it', async () => {
  const { dir, cleanup } = tempDir('bm-undo-');
  try {
    const file = path.join(dir, 'v.undo');
    const bytes = new Uint8Array(segment).fill(1);
    for (let round = 0; round < 20; round++) {
      const done = UndoLog.open(file, 64, segment);
      for (let s = 0; s < 32; s++) done.save(s, s * segment, bytes, sum(bytes));
      done.removeLater();
      assert.not.ok(fs.existsSync(file), 'the finished log is gone from its name at once');
      // The next resync begins at once and starts its own log under the same name.
      const next = UndoLog.open(file, 64, segment);
      next.save(9, 9 * segment, bytes, sum(bytes));
      await new Promise((r) => setTimeout(r, 5));
      next.close();
      assert.ok(fs.existsSync(file), `round ${round}: the new log survived the deletion of the old one`);
      assert.equal(replayed(file, 64).map((e) => e.offset), [9 * segment]);
      fs.rmSync(file);
    }
    await new Promise((r) => setTimeout(r, 50));
    assert.not.ok(fs.existsSync(`${file}.done`), 'the finished logs were deleted');
  } finally {
    cleanup();
  }
});

test('a stop that comes while a resync ends waits for the end: nothing touches the directory after it', async () => {
  const { dir, cleanup } = tempDir('bm-undo-');
  try {
    // An image that held a consistent copy, so the resync keeps an undo log.
    const volume = await Volume.create({ name: 'v', size: 16 * segment, dir, pool: 'none' });
    const target = new ResyncTarget(volume, dir, false);
    target.begin('0123456789abcdef');
    for (let s = 0; s < 16; s++) target.write(s * segment, new Uint8Array(segment).fill(s));
    assert.ok(fs.existsSync(path.join(dir, 'v.undo')));
    const ending = target.end('0123456789abcdef', []);
    await target.stop();
    const after = fs.readdirSync(dir).sort();
    await ending;
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(fs.readdirSync(dir).sort(), after, 'the directory did not change after the stop');
    assert.not.ok(after.includes('v.undo') || after.includes('v.undo.done'), 'the finished log is gone');
    const meta = loadMetadata(dir, 'v')!;
    assert.ok(meta.consistent && meta.clean, 'the stop saved last: consistent and clean');
  } finally {
    cleanup();
  }
});

test.run();
