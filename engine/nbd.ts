/**
 * NBD protocol constants and the small byte-level helpers the export uses
 * (the protocol is `doc/proto.md` of the NetworkBlockDevice/nbd project).
 * All NBD integers are big-endian.
 */

export const NBD = {
  initMagic: 0x4e42444d41474943n, // 'NBDMAGIC'
  optMagic: 0x49484156454f5054n, // 'IHAVEOPT'
  optReplyMagic: 0x3e889045565a9n,
  requestMagic: 0x25609513,
  simpleReplyMagic: 0x67446698,

  flagFixedNewstyle: 1,
  flagNoZeroes: 2,

  optExportName: 1,
  optAbort: 2,
  optList: 3,
  optInfo: 6,
  optGo: 7,

  repAck: 1,
  repServer: 2,
  repInfo: 3,
  repErrUnsup: 0x80000001,
  repErrInvalid: 0x80000003,
  repErrUnknown: 0x80000006,

  infoExport: 0,
  infoBlockSize: 3,

  // Transmission flags.
  tHasFlags: 1,
  tReadOnly: 2,
  tSendFlush: 4,
  tSendFua: 8,
  tSendTrim: 32,
  tSendWriteZeroes: 64,
  tCanMultiConn: 256,

  cmdRead: 0,
  cmdWrite: 1,
  cmdDisc: 2,
  cmdFlush: 3,
  cmdTrim: 4,
  cmdWriteZeroes: 6,

  cmdFlagFua: 1,
  cmdFlagNoHole: 2,

  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;

/** Largest option payload accepted during the handshake. */
export const optionBytesMax = 64 * 1024;
/** Largest read or write one request may carry (announced as the maximum block size). */
export const requestBytesMax = 32 * 1024 * 1024;
/** Requests one connection may have in flight before the server stops reading from it. */
export const requestsInFlightMax = 256;

/** What an export serves: a mirrored pair or a plain volume. */
export interface NbdTarget {
  readonly name: string;
  readonly size: number;
  readonly blockSize?: number;
  read(offset: number, length: number): Uint8Array;
  /** Reads `data` before it returns (the caller may reuse the buffer); resolves when the write is complete. */
  write(offset: number, data: Uint8Array, options?: { fua?: boolean }): Promise<void>;
  /**
   * For a target whose writes complete at once (a plain volume): the write,
   * done before it returns, `data` not kept. A mirrored pair has none: its
   * writes complete when the secondary has them.
   */
  writeSync?(offset: number, data: Uint8Array): void;
  writeZeroes(offset: number, length: number, options?: { fua?: boolean }): Promise<void>;
  trim(offset: number, length: number): Promise<void>;
  flush(): Promise<void>;
}

/** A growable byte queue for parsing a stream: append chunks, take exact lengths. */
export class ByteQueue {
  private buffer = new Uint8Array(64 * 1024);
  private start = 0;
  private end = 0;
  /** Where `takeAligned` copies bytes that do not lie on a multiple of 8. */
  private aligned = new Uint8Array(0);

  get length(): number {
    return this.end - this.start;
  }

  push(chunk: Uint8Array): void {
    if (this.end + chunk.length > this.buffer.length) {
      const live = this.end - this.start;
      if (live + chunk.length > this.buffer.length) {
        const grown = new Uint8Array(Math.max(this.buffer.length * 2, live + chunk.length));
        grown.set(this.buffer.subarray(this.start, this.end));
        this.buffer = grown;
      } else {
        this.buffer.copyWithin(0, this.start, this.end);
      }
      this.start = 0;
      this.end = live;
    }
    this.buffer.set(chunk, this.end);
    this.end += chunk.length;
  }

  /** A view of the next `n` bytes without consuming them (valid until the next push). */
  peek(n: number): Uint8Array {
    return this.buffer.subarray(this.start, this.start + n);
  }

  /** Consumes `n` bytes and returns a view of them (valid until the next push). */
  take(n: number): Uint8Array {
    const view = this.buffer.subarray(this.start, this.start + n);
    this.start += n;
    if (this.start === this.end) this.start = this.end = 0;
    return view;
  }

  /**
   * Like `take`, but the view starts on a multiple of 8 bytes in memory:
   * bytes that lie elsewhere are first copied into an area this queue
   * reuses (valid until the next `takeAligned`). For write payloads: an NBD
   * request header is 28 bytes, so a payload usually lies 4 bytes off, and
   * V8 copies into shared memory (the volume, the journal ring) byte by byte
   * from a source whose address differs from the destination's modulo 8,
   * 4 times slower than one plain copy first and an aligned copy after.
   */
  takeAligned(n: number): Uint8Array {
    const view = this.take(n);
    if ((view.byteOffset & 7) === 0) return view;
    if (this.aligned.length < n) this.aligned = new Uint8Array(Math.max(n, 64 * 1024));
    const out = this.aligned.subarray(0, n);
    out.set(view);
    return out;
  }
}
