/**
 * A volume: a fixed-size array of bytes in shared memory, optionally backed
 * by a raw image file, with a code for every segment kept current by a
 * hashing pool.
 *
 * Semantics are those of a disk with a volatile write cache (design.md,
 * invariant 3): a completed write is visible to every read at once and has
 * reached the image file through the operating system's cache; `flush()`, or
 * a write with `{ fua: true }`, makes it durable. A write that fails leaves
 * the volume's memory untouched (the file is written first), so no write is
 * ever half-applied in what reads return.
 *
 * States: open, then closed (every call fails with BM_ERR_CLOSED). A volume
 * owns its memory, code table and image file; it borrows a hashing pool.
 */
import fs from 'node:fs';
import path from 'node:path';
import { loadState, saveState } from './saved-state.ts';
import { checkAlgorithm, CodeTable, type CodeAlgorithm, type CodeSnapshot } from './codes.ts';
import { errors } from './errors.ts';
import { checkBytes, checkRange, describe, makeGeometry, type Geometry } from './geometry.ts';
import { HashPool } from './hash-pool.ts';
import { ImageFile } from './image.ts';
import { VolumeMemory } from './memory.ts';
import { SegmentHasher } from './segment-hasher.ts';
import { instantiateKernel, type Kernel } from './kernel.ts';

export interface VolumeOptions {
  /** Volume name: letters, digits, `.`, `_`, `-`, at most 64. Names the image `DIR/NAME.img`. */
  name?: string;
  /** Size in bytes, a whole number of blocks. Required to create; checked against the image to open. */
  size?: number;
  /** Directory of the image file. Without it the volume lives in memory only. */
  dir?: string;
  /** Block size in bytes, a power of two of at least 512. Default 4096. */
  blockSize?: number;
  /** Segment size in bytes (unit of codes), a power of two, whole blocks, at most 16 MiB. Default 65536. */
  segmentSize?: number;
  /** Code algorithm. Default `xxh3` (our SIMD kernel); `xxh128` and `blake3` come from hash-wasm. */
  code?: CodeAlgorithm;
  /**
   * Who keeps the codes current: `'shared'` (default) the process-wide pool,
   * a `HashPool` you started, or `'none'` (codes are computed on the calling
   * thread only when `settle()` or `recomputeCodes()` asks for them).
   */
  pool?: HashPool | 'shared' | 'none';
  /**
   * Open: take the codes saved at the last clean stop (`DIR/NAME.codes`) as
   * current, when that file checks and the image has not changed since.
   * Only for a caller that knows the stop was clean (its metadata says so).
   */
  trustSavedCodes?: boolean;
}

export interface CloseOptions {
  /** Save the codes beside the image (`DIR/NAME.codes`) for the next start. */
  saveCodes?: boolean;
}

export interface WriteOptions {
  /** Force unit access: the write is durable in the image file when the call completes. */
  fua?: boolean;
}

export interface SettleOptions {
  /** Give up with BM_ERR_TIMEOUT after this long. Default 60000. */
  timeoutMs?: number;
}

const namePattern = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export class Volume {
  readonly name: string;
  readonly size: number;
  readonly blockSize: number;
  readonly segmentSize: number;
  readonly segmentCount: number;
  readonly algorithm: CodeAlgorithm;
  /** The image file's path, or undefined for a volume in memory. */
  readonly imagePath: string | undefined;
  private readonly memory: VolumeMemory;
  private readonly table: CodeTable;
  private readonly image: ImageFile | undefined;
  private readonly localHasher: SegmentHasher;
  private pool: HashPool | undefined;
  private kernels: Kernel[] | undefined;
  private poolId = 0;
  private sharedPool = false;
  private isClosed = false;

  private constructor(
    geometry: Geometry,
    name: string,
    algorithm: CodeAlgorithm,
    memory: VolumeMemory,
    table: CodeTable,
    image: ImageFile | undefined,
    localHasher: SegmentHasher,
  ) {
    this.name = name;
    this.size = geometry.size;
    this.blockSize = geometry.blockSize;
    this.segmentSize = geometry.segmentSize;
    this.segmentCount = geometry.segmentCount;
    this.algorithm = algorithm;
    this.memory = memory;
    this.table = table;
    this.image = image;
    this.imagePath = image?.path;
    this.localHasher = localHasher;
  }

  /** Creates a new, zeroed volume (and its image file when `dir` is given; an existing file is refused). */
  static create(options: VolumeOptions): Promise<Volume> {
    return Volume.make(options, 'create');
  }

  /** Opens the existing image `DIR/NAME.img`. Its codes start invalid and are computed in the background. */
  static open(options: VolumeOptions & { dir: string; name: string }): Promise<Volume> {
    return Volume.make(options, 'open');
  }

  private static async make(options: VolumeOptions, how: 'create' | 'open'): Promise<Volume> {
    if (typeof options !== 'object' || options === null) {
      throw errors.INVALID_ARGUMENT(`Cannot ${how} a volume: options must be an object, not ${describe(options)}`);
    }
    const name = options.name ?? 'volume';
    if (typeof name !== 'string' || !namePattern.test(name)) {
      throw errors.INVALID_ARGUMENT(`Cannot ${how} volume ${describe(name)}: a name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit`);
    }
    if (options.dir !== undefined && typeof options.dir !== 'string') {
      throw errors.INVALID_ARGUMENT(`Cannot ${how} volume '${name}': dir must be a string, not ${describe(options.dir)}`);
    }
    if (how === 'open' && options.dir === undefined) {
      throw errors.INVALID_ARGUMENT(`Cannot open volume '${name}': open needs the dir that holds its image`);
    }
    const algorithm = checkAlgorithm(options.code ?? 'xxh3');
    const imagePath = options.dir === undefined ? undefined : path.join(options.dir, `${name}.img`);

    let image: ImageFile | undefined;
    let geometry: Geometry;
    if (how === 'create') {
      geometry = makeGeometry(options.size, options.blockSize, options.segmentSize);
      if (imagePath) image = ImageFile.create(imagePath, geometry.size);
    } else {
      if (options.size !== undefined) makeGeometry(options.size, options.blockSize, options.segmentSize);
      image = ImageFile.open(imagePath!, options.size);
      try {
        geometry = makeGeometry(image.size, options.blockSize, options.segmentSize);
      } catch (e) {
        await image.close();
        throw e;
      }
    }

    try {
      const memory = VolumeMemory.allocate(geometry.size);
      const table = CodeTable.create(geometry.segmentCount, algorithm);
      const localHasher = await SegmentHasher.create({
        layout: memory.toShared(),
        table: table.toShared(),
        segmentSize: geometry.segmentSize,
        owner: 0,
        owners: 1,
      });
      if (how === 'open') {
        image!.load(memory);
        if (options.trustSavedCodes) loadSavedCodes(table, options.dir!, name, image!);
      } else {
        // Commit every page now, as loading an image does: the first write to a page the process never
        // touched costs a page fault (on this kind of VM 15 to 20 us per 4 KiB), which would otherwise
        // land on the first writes, on the primary and again on the secondary.
        memory.fill(0, geometry.size);
        // Every segment of a new volume holds zeroes: hash one (and a shorter
        // last one) and the whole table is current at once.
        const last = geometry.segmentCount - 1;
        localHasher.hashSegment(0);
        localHasher.hashSegment(last);
        table.fillAll(table.codeOf(0)!, table.codeOf(last)!);
      }
      const volume = new Volume(geometry, name, algorithm, memory, table, image, localHasher);
      await volume.attachPool(options.pool ?? 'shared');
      return volume;
    } catch (e) {
      await image?.close().catch(() => {});
      throw e;
    }
  }

  private async attachPool(pool: HashPool | 'shared' | 'none'): Promise<void> {
    if (pool === 'none') return;
    if (pool === 'shared') {
      this.pool = await HashPool.shared();
      this.sharedPool = true;
    } else if (pool instanceof HashPool) {
      this.pool = pool;
    } else {
      throw errors.INVALID_ARGUMENT(`Cannot use pool ${describe(pool)} for volume '${this.name}': pass a HashPool, 'shared' or 'none'`);
    }
    try {
      this.poolId = await this.pool.attach({
        layout: this.memory.toShared(),
        table: this.table.toShared(),
        segmentSize: this.segmentSize,
      });
    } catch (e) {
      await this.releasePool();
      throw e;
    }
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /** Returns a copy of `length` bytes at `offset`. */
  read(offset: number, length: number): Uint8Array {
    this.check('read', offset, length);
    const target = new Uint8Array(length);
    this.memory.read(offset, target);
    return target;
  }

  private readCopy(offset: number, length: number): Uint8Array {
    const out = new Uint8Array(length);
    this.memory.read(offset, out);
    return out;
  }

  /** Reads `target.length` bytes at `offset` into `target`. */
  readInto(offset: number, target: Uint8Array): Uint8Array {
    this.checkOpen('read');
    checkBytes(this.name, 'read', target);
    checkRange(this.name, 'read', this.size, offset, target.length);
    this.memory.read(offset, target);
    return target;
  }

  /**
   * Writes `data` at `offset` and returns when it is visible and in the OS
   * cache of the image file. The synchronous core of `write()`.
   */
  writeSync(offset: number, data: Uint8Array): void {
    this.checkWrite(offset, data);
    if (data.length === 0) return;
    // The file first: if it fails, memory (what reads return) is untouched, and the file is put back from it.
    this.image?.write(offset, data, (length) => this.readCopy(offset, length));
    this.memory.write(offset, data);
    this.table.invalidate(Math.floor(offset / this.segmentSize), Math.floor((offset + data.length - 1) / this.segmentSize));
  }

  async write(offset: number, data: Uint8Array, options?: WriteOptions): Promise<void> {
    this.writeSync(offset, data);
    if (options?.fua) await this.image?.flush();
  }

  /** Writes `length` zero bytes at `offset`; the synchronous core of `writeZeroes()` and `trim()`. */
  writeZeroesSync(offset: number, length: number): void {
    this.check('write zeroes to', offset, length);
    if (length === 0) return;
    this.image?.zero(offset, length, (at, n) => this.readCopy(at, n));
    this.memory.fill(offset, length, 0);
    this.table.invalidate(Math.floor(offset / this.segmentSize), Math.floor((offset + length - 1) / this.segmentSize));
  }

  async writeZeroes(offset: number, length: number, options?: WriteOptions): Promise<void> {
    this.writeZeroesSync(offset, length);
    if (options?.fua) await this.image?.flush();
  }

  /**
   * Discards a range. Trimmed bytes read as zeroes afterwards, on this side
   * and on a mirror, so that both images stay byte-identical.
   */
  async trim(offset: number, length: number): Promise<void> {
    this.check('trim', offset, length);
    this.writeZeroesSync(offset, length);
  }

  /** Makes every completed write durable in the image file. */
  async flush(): Promise<void> {
    this.checkOpen('flush');
    await this.image?.flush();
  }

  /** `flush()`, blocking the thread until the image is durable. */
  flushSync(): void {
    this.checkOpen('flush');
    this.image?.flushSync();
  }

  /** A consistent copy of the code table: codes and valid flags. */
  codes(): CodeSnapshot {
    this.checkOpen('read the codes of');
    return this.table.snapshot();
  }

  /**
   * A view of `length` bytes at `offset`, aliasing live volume memory: valid
   * until the next write there. The range must lie in one segment.
   */
  view(offset: number, length: number): Uint8Array {
    this.check('read', offset, length);
    return this.memory.view(offset, length);
  }

  /** XXH3-64 of `length` bytes at `offset`, hashed in place by our kernel (whatever the code algorithm). The range must lie in one segment. */
  checksum(offset: number, length: number): bigint {
    this.check('read', offset, length);
    this.kernels ??= this.memory.memories.map((m) => instantiateKernel(m));
    const { memory, address } = this.memory.locate(offset);
    return this.kernels[memory]!.xxh3(address, length);
  }

  /** Bytes of one code. */
  get codeBytes(): number {
    return this.table.codeBytes;
  }

  /** The change counter of one segment (it moves on every write to it). */
  generation(segment: number): number {
    return Atomics.load(this.table.generation, segment);
  }

  /** A copy of the change counters of segments first..first+count. */
  generations(first: number, count: number): Int32Array {
    const out = new Int32Array(count);
    for (let i = 0; i < count; i++) out[i] = Atomics.load(this.table.generation, first + i);
    return out;
  }

  /** Number of segments whose code is not current. */
  invalidCodeCount(): number {
    this.checkOpen('read the codes of');
    return this.table.invalidCount();
  }

  /**
   * Waits until every code is current: asks the pool (or this thread, with
   * no pool) to hash every invalid segment now, and repeats while writes
   * keep invalidating codes, up to `timeoutMs`.
   */
  async settle(options: SettleOptions = {}): Promise<void> {
    this.checkOpen('settle the codes of');
    const timeoutMs = options.timeoutMs ?? 60_000;
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      if (this.pool) await this.pool.settle(this.poolId);
      else this.localHasher.pass('all');
      if (this.table.invalidCount() === 0) return;
      if (performance.now() > deadline) {
        throw errors.TIMEOUT(`Cannot settle the codes of volume '${this.name}': ${this.table.invalidCount()} segments still changing after ${timeoutMs} ms`);
      }
      this.checkOpen('settle the codes of');
    }
  }

  /**
   * The codes of segments first..first+count, each computed now if it was
   * not current: `count` codes of `codeBytes[algorithm]` bytes, then one
   * byte per segment, 1 where the code is valid. A segment written again
   * and again while this runs may still be reported invalid after a few
   * tries; callers treat it as differing.
   */
  async currentCodes(first: number, count: number): Promise<Uint8Array> {
    this.checkOpen('read the codes of');
    const size = this.table.codeBytes;
    const out = new Uint8Array(count * (size + 1));
    // Current already (the pool keeps them so): no round trip to the workers.
    if (this.table.copyRange(first, count, out.subarray(0, count * size), out.subarray(count * size))) return out;
    for (let attempt = 0; attempt < 4; attempt++) {
      if (this.pool) await this.pool.settle(this.poolId, { first, end: first + count });
      else this.localHasher.passRange(first, first + count);
      this.checkOpen('read the codes of');
      if (this.table.copyRange(first, count, out.subarray(0, count * size), out.subarray(count * size))) break;
    }
    return out;
  }

  /** Marks every code invalid and computes them all again from the bytes. */
  async recomputeCodes(options: SettleOptions = {}): Promise<void> {
    this.checkOpen('recompute the codes of');
    this.table.invalidateAll();
    await this.settle(options);
  }

  /** Flushes and closes the image, detaches from the pool, and saves the codes if asked. Idempotent. */
  async close(options: CloseOptions = {}): Promise<void> {
    if (this.isClosed) return;
    this.isClosed = true;
    await this.releasePool();
    await this.image?.close();
    if (options.saveCodes && this.image) {
      const { codes, valid } = this.table.snapshot();
      const body = new Uint8Array(codes.length + valid.length);
      body.set(codes);
      body.set(valid, codes.length);
      const stat = fs.statSync(this.image.path);
      saveState(path.dirname(this.image.path), this.name, 'codes', { segmentCount: this.segmentCount, imageSize: stat.size, imageMtimeMs: stat.mtimeMs, body });
    }
  }

  private async releasePool(): Promise<void> {
    const pool = this.pool;
    this.pool = undefined;
    if (!pool) return;
    if (this.poolId) await pool.detach(this.poolId).catch(() => {});
    if (this.sharedPool) await HashPool.releaseShared();
  }

  /** Throws what `writeSync` would throw for these arguments, without writing. */
  checkWrite(offset: number, data: Uint8Array): void {
    this.checkOpen('write');
    checkBytes(this.name, 'write', data);
    checkRange(this.name, 'write', this.size, offset, data.length);
  }

  /** Throws what `writeZeroesSync` would throw for these arguments, without writing. */
  checkZeroes(offset: number, length: number, what = 'write zeroes to'): void {
    this.check(what, offset, length);
  }

  private check(what: string, offset: number, length: number): void {
    this.checkOpen(what);
    checkRange(this.name, what, this.size, offset, length);
  }

  private checkOpen(what: string): void {
    if (this.isClosed) throw errors.CLOSED(`Cannot ${what} volume '${this.name}': it is closed`);
  }
}

/** Takes the codes saved at a clean stop as current, if the file checks and the image is unchanged since. */
function loadSavedCodes(table: CodeTable, dir: string, name: string, image: ImageFile): void {
  const saved = loadState(dir, name, 'codes', { segmentCount: table.segmentCount, bodyBytes: table.segmentCount * (table.codeBytes + 1) });
  if (!saved) return;
  const stat = fs.statSync(image.path);
  // Whole milliseconds: runtimes report modification times with different precision.
  if (saved.imageSize !== stat.size || Math.floor(saved.imageMtimeMs) !== Math.floor(stat.mtimeMs)) return;
  table.restore(saved.body.subarray(0, table.segmentCount * table.codeBytes), saved.body.subarray(table.segmentCount * table.codeBytes));
}
