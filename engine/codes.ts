/**
 * The code table of one volume (the WO2007141125 mechanism): for every
 * segment a code, a generation counter and a valid flag, in shared memory so
 * that hashing workers fill it in place.
 *
 * Model. `generation[s]` counts the changes to segment s. `validGeneration[s]`
 * is the generation the stored code was computed for. The code is valid
 * exactly when the two are equal, so the valid flag needs no word of its own
 * and can never be set by mistake:
 *
 * - A writer copies its bytes first and only then adds 1 to the generation of
 *   every segment it touched (and marks the segment's chunk dirty).
 * - A hasher reads the generation g, hashes the bytes, stores the code, and
 *   then publishes validGeneration = g. If any write landed while it hashed,
 *   the generation has moved past g and the code stays invalid; if a write
 *   lands after, it moves the generation again. This is the seqlock of
 *   design.md: a code marked valid always equals the hash of the present
 *   bytes (invariant 5).
 * - A reader takes a snapshot with the same check before and after copying
 *   each code.
 *
 * Only one hasher ever works on a given segment at a time: segments are
 * grouped in chunks of `chunkSegments`, and each chunk belongs to one worker.
 * `dirty[c]` tells the workers which chunks may hold invalid codes, so a
 * pass skips clean chunks without reading their generations.
 */
import { errors } from './errors.ts';

export type CodeAlgorithm = 'xxh3' | 'xxh128' | 'blake3';

export const codeAlgorithms: readonly CodeAlgorithm[] = ['xxh3', 'xxh128', 'blake3'];

/** Bytes of one code, per algorithm. */
export const codeBytes: Record<CodeAlgorithm, number> = { xxh3: 8, xxh128: 16, blake3: 32 };

/** Segments per chunk: the unit of dirty tracking and of worker ownership. */
export const chunkSegments = 64;

export function checkAlgorithm(name: unknown): CodeAlgorithm {
  if (typeof name === 'string' && (codeAlgorithms as readonly string[]).includes(name)) return name as CodeAlgorithm;
  throw errors.UNKNOWN_ALGORITHM(`Cannot use code algorithm ${JSON.stringify(name)}: choose one of ${codeAlgorithms.join(', ')}`);
}

export interface SharedCodeTable {
  algorithm: CodeAlgorithm;
  segmentCount: number;
  generation: SharedArrayBuffer;
  validGeneration: SharedArrayBuffer;
  codes: SharedArrayBuffer;
  dirty: SharedArrayBuffer;
}

/** A consistent copy of the code table at one moment. */
export interface CodeSnapshot {
  algorithm: CodeAlgorithm;
  /** `codeBytes[algorithm]` bytes per segment, canonical (big-endian) byte order. */
  codes: Uint8Array;
  /** 1 where the code is valid, 0 where it is not. */
  valid: Uint8Array;
}

export class CodeTable {
  readonly algorithm: CodeAlgorithm;
  readonly segmentCount: number;
  readonly codeBytes: number;
  readonly chunkCount: number;
  readonly generation: Int32Array;
  readonly validGeneration: Int32Array;
  readonly codes: Uint8Array;
  readonly dirty: Int32Array;
  private readonly codeView: DataView;
  /** The codes as 32-bit words (every code size is a multiple of 4): copied a word at a time, not by subarray. */
  private readonly codeWords: Uint32Array;
  private readonly shared: SharedCodeTable;

  private constructor(shared: SharedCodeTable) {
    this.shared = shared;
    this.algorithm = shared.algorithm;
    this.segmentCount = shared.segmentCount;
    this.codeBytes = codeBytes[shared.algorithm];
    this.chunkCount = Math.ceil(shared.segmentCount / chunkSegments);
    this.generation = new Int32Array(shared.generation);
    this.validGeneration = new Int32Array(shared.validGeneration);
    this.codes = new Uint8Array(shared.codes);
    this.dirty = new Int32Array(shared.dirty);
    this.codeView = new DataView(shared.codes);
    this.codeWords = new Uint32Array(shared.codes);
  }

  /** A table with every code invalid: generation 1, validGeneration 0. */
  static create(segmentCount: number, algorithm: CodeAlgorithm): CodeTable {
    const chunks = Math.ceil(segmentCount / chunkSegments);
    const table = new CodeTable({
      algorithm,
      segmentCount,
      generation: new SharedArrayBuffer(segmentCount * 4),
      validGeneration: new SharedArrayBuffer(segmentCount * 4),
      codes: new SharedArrayBuffer(segmentCount * codeBytes[algorithm]),
      dirty: new SharedArrayBuffer(chunks * 4),
    });
    table.generation.fill(1);
    table.dirty.fill(1);
    return table;
  }

  static fromShared(shared: SharedCodeTable): CodeTable {
    return new CodeTable(shared);
  }

  toShared(): SharedCodeTable {
    return this.shared;
  }

  /**
   * Writer side: segments `first..last` (inclusive) changed. Call after the
   * bytes are in place, never before (see the model above).
   */
  invalidate(first: number, last: number): void {
    const generation = this.generation;
    for (let s = first; s <= last; s++) Atomics.add(generation, s, 1);
    const lastChunk = Math.floor(last / chunkSegments);
    for (let c = Math.floor(first / chunkSegments); c <= lastChunk; c++) Atomics.store(this.dirty, c, 1);
  }

  /** Marks every code invalid, e.g. to recompute all of them from cold. */
  invalidateAll(): void {
    if (this.segmentCount > 0) this.invalidate(0, this.segmentCount - 1);
  }

  /**
   * Sets every code to `code` and valid, for a volume known to hold the same
   * bytes in every segment (a new, zeroed volume). Only before any hasher or
   * writer runs.
   */
  fillAll(code: Uint8Array, lastCode: Uint8Array = code): void {
    for (let s = 0; s < this.segmentCount; s++) {
      this.codes.set(s === this.segmentCount - 1 ? lastCode : code, s * this.codeBytes);
    }
    this.validGeneration.set(this.generation);
    this.dirty.fill(0);
  }

  /**
   * Takes saved codes as current where `valid` says so. Only before any
   * hasher or writer runs (at open), like `fillAll`.
   */
  restore(codes: Uint8Array, valid: Uint8Array): void {
    this.codes.set(codes);
    for (let s = 0; s < this.segmentCount; s++) if (valid[s]) this.validGeneration[s] = this.generation[s]!;
    for (let c = 0; c < this.chunkCount; c++) {
      let all = true;
      for (let s = c * chunkSegments; s < Math.min(this.segmentCount, (c + 1) * chunkSegments); s++) if (!valid[s]) all = false;
      if (all) this.dirty[c] = 0;
    }
  }

  /** Hasher side: stores the code computed for generation `generation`. */
  publish(segment: number, generation: number, code: bigint | Uint8Array): void {
    if (typeof code === 'bigint') this.codeView.setBigUint64(segment * 8, code);
    else this.codes.set(code, segment * this.codeBytes);
    Atomics.store(this.validGeneration, segment, generation);
  }

  isValid(segment: number): boolean {
    return Atomics.load(this.validGeneration, segment) === Atomics.load(this.generation, segment);
  }

  invalidCount(): number {
    let n = 0;
    for (let s = 0; s < this.segmentCount; s++) if (!this.isValid(s)) n++;
    return n;
  }

  /** The code of one segment if it is valid now, else undefined. */
  codeOf(segment: number): Uint8Array | undefined {
    const g = Atomics.load(this.generation, segment);
    if (Atomics.load(this.validGeneration, segment) !== g) return undefined;
    const code = this.codes.slice(segment * this.codeBytes, (segment + 1) * this.codeBytes);
    return this.isValid(segment) && Atomics.load(this.generation, segment) === g ? code : undefined;
  }

  /**
   * Copies the codes of segments first..first+count into `codes` and their
   * valid flags into `valid` (as `snapshot` does for all). True when every
   * one of them is valid.
   */
  copyRange(first: number, count: number, codes: Uint8Array, valid: Uint8Array): boolean {
    const out = new Uint32Array((count * this.codeBytes) >>> 2);
    let all = true;
    for (let i = 0; i < count; i++) {
      const s = first + i;
      const g = Atomics.load(this.generation, s);
      valid[i] = 0;
      if (Atomics.load(this.validGeneration, s) !== g) {
        all = false;
        continue;
      }
      this.copyCode(s, out, i);
      if (Atomics.load(this.validGeneration, s) === g && Atomics.load(this.generation, s) === g) valid[i] = 1;
      else all = false;
    }
    codes.set(new Uint8Array(out.buffer));
    return all;
  }

  snapshot(): CodeSnapshot {
    const out = new Uint32Array((this.segmentCount * this.codeBytes) >>> 2);
    const valid = new Uint8Array(this.segmentCount);
    for (let s = 0; s < this.segmentCount; s++) {
      const g = Atomics.load(this.generation, s);
      if (Atomics.load(this.validGeneration, s) !== g) continue;
      this.copyCode(s, out, s);
      if (Atomics.load(this.validGeneration, s) === g && Atomics.load(this.generation, s) === g) valid[s] = 1;
    }
    return { algorithm: this.algorithm, codes: new Uint8Array(out.buffer), valid };
  }

  /** Copies the code of segment `s` into slot `i` of `out`, a word at a time (every code size is a multiple of 4 bytes). */
  private copyCode(s: number, out: Uint32Array, i: number): void {
    const n = this.codeBytes >>> 2;
    for (let k = 0; k < n; k++) out[i * n + k] = this.codeWords[s * n + k]!;
  }
}
