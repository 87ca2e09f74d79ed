/**
 * The undo log of a resync target: `DIR/NAME.undo`, the bytes each segment
 * held before the running resync first changed it.
 *
 * While a secondary image is being resynced it is half old, half new. Before
 * any write lands in a segment for the first time in that resync, the
 * segment's old bytes are appended here; so the image can always be rolled
 * back to the consistent image it held when the resync began (the
 * generation in its metadata), whatever stopped the resync. When the resync
 * ends, the image is consistent again and the log is deleted.
 *
 * Entry: magic 'BMUE' (u32 LE), length (u32), offset in the volume (u64),
 * XXH3-64 of the bytes (u64), then the bytes. The writer hashes the old
 * bytes in place in volume memory with our kernel and writes them from there
 * (no copy); a reader checks them with hash-wasm's XXH3, the same function. Each entry is written with one
 * positioned write before the image write it protects, so after a process
 * crash the log is a run of whole entries, possibly followed by a torn one
 * whose image write never started; reading stops at the first entry that
 * does not check. The log is synced before every sync of the image (flush,
 * FUA, end of resync), so every image state that was made durable can be
 * rolled back after a power loss too.
 */
import fs from 'node:fs';
import path from 'node:path';
import { createXXHash3, type IHasher } from 'hash-wasm';
import { errors } from './errors.ts';

const entryMagic = 0x45554d42; // 'BMUE'
const headerBytes = 24;
/**
 * Bytes appended since the last sync after which a sync starts in the
 * background (the runtime's thread pool), so that the sync before the
 * image's (at flush, FUA and the end of a resync) finds little left to write.
 * Syncing the log early is always safe: it only makes entries durable sooner.
 */
export const undoSyncEveryBytes = 2 * 1024 * 1024;

let hasher: IHasher | undefined;

/** Loads the checksum (one hash-wasm instance per thread). Await it once before `UndoLog.open`. */
export async function undoLogReady(): Promise<void> {
  hasher ??= await createXXHash3();
}

function checksum(h: IHasher, bytes: Uint8Array): bigint {
  h.init();
  h.update(bytes);
  return BigInt('0x' + h.digest('hex'));
}

export function undoPath(dir: string, name: string): string {
  return path.join(dir, `${name}.undo`);
}

/** Background syncs and deletions still running, in this thread. */
const backgroundWork = new Set<Promise<unknown>>();

function inBackground(work: Promise<unknown>): void {
  const tracked = work.catch(() => {}).finally(() => backgroundWork.delete(tracked));
  backgroundWork.add(tracked);
}

/**
 * Resolves once every background sync and deletion of an undo log started
 * so far is done: a resync target's stop waits for it, so that nothing
 * touches the directory after the stop.
 */
export async function undoLogsSettled(): Promise<void> {
  while (backgroundWork.size) await Promise.all([...backgroundWork]);
}

export class UndoLog {
  readonly path: string;
  private readonly segmentSize: number;
  private readonly saved: Uint32Array;
  private readonly hash: IHasher;
  private fd: number;
  private end: number;
  private readonly headerBytes = new Uint8Array(headerBytes);
  private readonly header = new DataView(this.headerBytes.buffer);
  /** True when entries were appended since the last sync. */
  private unsynced = false;
  /** Bytes appended since the last sync started. */
  private unsyncedBytes = 0;
  /** A background sync is running: the descriptor is closed only once it is done. */
  private syncing = false;
  private closeWhenSynced = false;
  /** Why a background sync failed; every later `sync()` fails with it. */
  private syncFailure: string | undefined;
  /** Entries in the log. */
  entries = 0;

  private constructor(file: string, fd: number, segmentCount: number, segmentSize: number, hash: IHasher) {
    this.path = file;
    this.fd = fd;
    this.end = 0;
    this.segmentSize = segmentSize;
    this.saved = new Uint32Array(Math.ceil(segmentCount / 32));
    this.hash = hash;
  }

  /** Opens (or creates) the log, and learns which segments it already holds. */
  static open(file: string, segmentCount: number, segmentSize: number): UndoLog {
    if (!hasher) throw errors.ASSERTION('Invariant broken: undoLogReady() was not awaited before UndoLog.open');
    const hash = hasher;
    let fd: number;
    try {
      fd = fs.openSync(file, fs.existsSync(file) ? 'r+' : 'w+');
    } catch (e) {
      throw errors.IO(`Cannot open undo log '${file}': ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    const log = new UndoLog(file, fd, segmentCount, segmentSize, hash);
    log.scan(() => {});
    return log;
  }

  has(segment: number): boolean {
    return (this.saved[segment >>> 5]! & (1 << (segment & 31))) !== 0;
  }

  /**
   * Appends the old bytes of `segment` (at `offset`), unless the log already
   * holds them. `bytes` may alias volume memory: it is written, not kept.
   * `sum` is their XXH3-64.
   */
  save(segment: number, offset: number, bytes: Uint8Array, sum: bigint): void {
    if (this.has(segment)) return;
    const view = this.header;
    view.setUint32(0, entryMagic, true);
    view.setUint32(4, bytes.length, true);
    view.setBigUint64(8, BigInt(offset), true);
    view.setBigUint64(16, sum, true);
    this.write([this.headerBytes, bytes], this.end);
    this.end += headerBytes + bytes.length;
    this.saved[segment >>> 5]! |= 1 << (segment & 31);
    this.entries++;
    this.unsynced = true;
    this.unsyncedBytes += headerBytes + bytes.length;
    if (this.unsyncedBytes >= undoSyncEveryBytes && !this.syncing) this.syncInBackground();
  }

  /**
   * Starts a sync that the caller does not wait for. Its failure is kept and
   * reported by the next `sync()`: the kernel reports a failed write-back only
   * once, so a later sync could otherwise seem to succeed.
   */
  private syncInBackground(): void {
    this.syncing = true;
    this.unsyncedBytes = 0;
    inBackground(
      new Promise<void>((resolve) =>
        fs.fdatasync(this.fd, (e) => {
          if (e) this.syncFailure ??= e.code ?? e.message;
          this.syncing = false;
          if (this.closeWhenSynced) this.close();
          resolve();
        }),
      ),
    );
  }

  /** Makes every appended entry durable (before the image is synced). */
  sync(): void {
    if (this.syncFailure) throw errors.IO(`Cannot sync undo log '${this.path}': ${this.syncFailure}`);
    if (!this.unsynced) return;
    try {
      fs.fdatasyncSync(this.fd);
    } catch (e) {
      // Final: the kernel may have dropped the pages it could not write, so a retry could seem to succeed.
      this.syncFailure = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
      throw errors.IO(`Cannot sync undo log '${this.path}': ${this.syncFailure}`);
    }
    this.unsynced = false;
    this.unsyncedBytes = 0;
  }

  /** Calls `restore(offset, bytes)` for every whole entry, oldest first. Returns how many. */
  replay(restore: (offset: number, bytes: Uint8Array) => void): number {
    return this.scan(restore);
  }

  close(): void {
    if (this.fd < 0) return;
    // The background sync still holds the descriptor: closing it now could let a new file take its number.
    if (this.syncing) {
      this.closeWhenSynced = true;
      return;
    }
    fs.closeSync(this.fd);
    this.fd = -1;
  }

  /** Closes and deletes the log: the image it protected is consistent again. */
  remove(): void {
    this.close();
    fs.rmSync(this.path, { force: true });
  }

  /**
   * `remove`, with the deletion left to the thread pool: freeing a large
   * file takes milliseconds. The log is first renamed to `NAME.undo.done`
   * (at once), so that the next resync's log never meets the deletion; what
   * is found under that name is always garbage. Only once the image is
   * consistent again.
   */
  removeLater(): void {
    this.close();
    const done = `${this.path}.done`;
    try {
      fs.renameSync(this.path, done);
    } catch {
      return this.remove();
    }
    inBackground(new Promise<void>((resolve) => fs.rm(done, { force: true }, () => resolve())));
  }

  private scan(visit: (offset: number, bytes: Uint8Array) => void): number {
    const size = fs.fstatSync(this.fd).size;
    const header = new Uint8Array(headerBytes);
    const view = new DataView(header.buffer);
    let at = 0;
    let count = 0;
    this.saved.fill(0);
    while (at + headerBytes <= size) {
      if (fs.readSync(this.fd, header, 0, headerBytes, at) !== headerBytes || view.getUint32(0, true) !== entryMagic) break;
      const length = view.getUint32(4, true);
      const offset = Number(view.getBigUint64(8, true));
      if (length === 0 || length > this.segmentSize || at + headerBytes + length > size) break;
      const bytes = new Uint8Array(length);
      if (fs.readSync(this.fd, bytes, 0, length, at + headerBytes) !== length) break;
      if (checksum(this.hash, bytes) !== view.getBigUint64(16, true)) break;
      visit(offset, bytes);
      const segment = Math.floor(offset / this.segmentSize);
      this.saved[segment >>> 5]! |= 1 << (segment & 31);
      count++;
      at += headerBytes + length;
    }
    // Whatever follows the last whole entry is a torn write: its image write never started.
    this.end = at;
    this.entries = count;
    if (at < size) fs.ftruncateSync(this.fd, at);
    return count;
  }

  private write(parts: Uint8Array[], at: number): void {
    try {
      const total = parts.reduce((n, p) => n + p.length, 0);
      const done = fs.writevSync(this.fd, parts, at);
      // A short write (rare): write the rest piece by piece.
      if (done < total) {
        const whole = new Uint8Array(total);
        let o = 0;
        for (const p of parts) whole.set(p, (o += p.length) - p.length);
        for (let d = done; d < total; ) d += fs.writeSync(this.fd, whole, d, total - d, at + d);
      }
    } catch (e) {
      throw errors.IO(`Cannot append to undo log '${this.path}': ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
  }
}
