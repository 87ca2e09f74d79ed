/**
 * Geometry of a volume: its size, block size and segment size, checked once
 * when a volume is created or opened, plus the argument checks every data
 * call makes before it touches a byte.
 *
 * A block is the unit a volume is addressed in (default 4 KiB); a segment is
 * the unit of codes and change tracking (default 64 KiB), a whole number of
 * blocks. Both are powers of two. The size is a whole number of blocks; the
 * last segment may be shorter than the others.
 */
import { errors } from './errors.ts';

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;

export const defaultBlockBytes = 4 * KiB;
export const defaultSegmentBytes = 64 * KiB;
/** Smallest block: one disk sector. */
export const blockBytesMin = 512;
/** Largest segment: 16 MiB keeps one segment's rehash well under a millisecond. */
export const segmentBytesMax = 16 * MiB;
/** Largest volume: 2^48 bytes keeps every byte offset an exact JavaScript number. */
export const volumeBytesMax = 2 ** 48;

export interface Geometry {
  size: number;
  blockSize: number;
  segmentSize: number;
  segmentCount: number;
}

const isPowerOfTwo = (n: number) => Number.isSafeInteger(n) && n > 0 && (n & (n - 1)) === 0;

export function makeGeometry(size: unknown, blockSize: unknown = defaultBlockBytes, segmentSize: unknown = defaultSegmentBytes): Geometry {
  if (typeof blockSize !== 'number' || !isPowerOfTwo(blockSize) || blockSize < blockBytesMin) {
    throw errors.BAD_GEOMETRY(`Cannot use block size ${String(blockSize)}: it must be a power of two of at least ${blockBytesMin} bytes`);
  }
  if (typeof segmentSize !== 'number' || !isPowerOfTwo(segmentSize) || segmentSize > segmentBytesMax) {
    throw errors.BAD_GEOMETRY(`Cannot use segment size ${String(segmentSize)}: it must be a power of two of at most ${segmentBytesMax} bytes`);
  }
  if (segmentSize < blockSize) {
    throw errors.BAD_GEOMETRY(`Cannot use segment size ${segmentSize}: it must be a whole number of ${blockSize}-byte blocks`);
  }
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size <= 0 || size > volumeBytesMax) {
    throw errors.BAD_GEOMETRY(`Cannot use volume size ${String(size)}: it must be a whole number of bytes from 1 to 2^48`);
  }
  if (size % blockSize !== 0) {
    throw errors.BAD_GEOMETRY(`Cannot use volume size ${size}: it is not a whole number of ${blockSize}-byte blocks`);
  }
  return { size, blockSize, segmentSize, segmentCount: Math.ceil(size / segmentSize) };
}

/** Parses `256MiB`, `1GiB`, `4096`, `64KiB` (binary units only). */
export function parseSize(text: string): number {
  const m = /^(\d+)(B|KiB|MiB|GiB|TiB)?$/.exec(text.trim());
  if (!m) throw errors.INVALID_ARGUMENT(`Cannot read size '${text}': use a whole number with an optional KiB, MiB, GiB or TiB suffix`);
  const unit = { B: 1, KiB, MiB, GiB, TiB: 1024 * GiB }[(m[2] ?? 'B') as 'B'];
  const n = Number(m[1]) * unit;
  if (!Number.isSafeInteger(n)) throw errors.INVALID_ARGUMENT(`Cannot read size '${text}': it is too large`);
  return n;
}

/** Formats bytes with the largest binary unit that keeps it readable. */
export function formatSize(bytes: number): string {
  for (const [unit, n] of [['TiB', 1024 * GiB], ['GiB', GiB], ['MiB', MiB], ['KiB', KiB]] as const) {
    if (bytes >= n) return `${+(bytes / n).toFixed(2)} ${unit}`;
  }
  return `${bytes} B`;
}

/**
 * Checks an (offset, length) pair for a data call on a volume of `size`
 * bytes. `what` names the call for the message, e.g. "write".
 */
export function checkRange(name: string, what: string, size: number, offset: unknown, length: unknown): void {
  if (typeof offset !== 'number' || !Number.isSafeInteger(offset) || offset < 0) {
    throw errors.INVALID_ARGUMENT(`Cannot ${what} volume '${name}' at offset ${describe(offset)}: the offset must be a whole number of bytes, 0 or more`);
  }
  if (typeof length !== 'number' || !Number.isSafeInteger(length) || length < 0) {
    throw errors.INVALID_ARGUMENT(`Cannot ${what} volume '${name}' with length ${describe(length)}: the length must be a whole number of bytes, 0 or more`);
  }
  if (offset + length > size) {
    throw errors.OUT_OF_RANGE(`Cannot ${what} ${length} bytes at offset ${offset} of volume '${name}': the volume ends at ${size}`);
  }
}

/** Checks that a data argument is a Uint8Array (Node's Buffer is one). */
export function checkBytes(name: string, what: string, data: unknown): asserts data is Uint8Array {
  if (!(data instanceof Uint8Array)) {
    throw errors.INVALID_ARGUMENT(`Cannot ${what} volume '${name}': data must be a Uint8Array, not ${describe(data)}`);
  }
}

export function describe(value: unknown): string {
  if (value === null) return 'null';
  if (typeof value === 'number' || typeof value === 'bigint' || typeof value === 'boolean') return String(value);
  if (typeof value === 'string') return JSON.stringify(value.length > 20 ? value.slice(0, 20) + '…' : value);
  if (typeof value === 'object') return (value as object).constructor?.name ?? 'object';
  return typeof value;
}
