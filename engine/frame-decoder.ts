/**
 * Parses the bytes of a mirror link into checked frames: a state machine fed
 * with whatever chunks the socket delivers.
 *
 * Bytes are gathered in a staging area inside a shared WebAssembly memory,
 * so that the checksum is computed in place by the kernel. A frame is handed
 * on only when its lengths are within bounds (checked from the 24-byte prefix,
 * before any of its body is buffered), its checksum matches, and its header
 * has the shape its type requires. The first bad frame stops the decoder for
 * good with a stable error code: the connection is then closed, and nothing
 * of that frame (or after it) was handed on.
 *
 * The payload given to `onFrame` is a view of the staging area, or of the
 * chunk itself when the chunk lies in a kernel area (`kernelArea`, a
 * socket's reused read buffer) and holds the whole frame: the frame is then
 * checked where it lies, with no copy. Either way the view is valid only
 * during the call: copy it (into the volume) before returning. A link that
 * can choose where its reads land asks `readTarget()` first, so that the
 * rest of a long frame is read into the staging area directly.
 */
import { Unpackr } from 'msgpackr';
import { errors, type BlockmirrorError } from './errors.ts';
import { alignedFrameBytes, FrameType, frameMagic, objectFrameTypes, objectPayloadFrameTypes, headerBytesMax, payloadBytesMaxDefault, payloadStart, prefixBytes, type FrameTypeValue } from './frame.ts';
import { instantiateKernel, KERNEL_HEADER_BYTES, kernelMemory, kernelOf, type Kernel } from './kernel.ts';

export interface Frame {
  type: FrameTypeValue;
  /** The msgpack header, checked for its type's shape. */
  header: unknown[];
  /** Payload bytes (write frames), a view valid only during onFrame. */
  payload: Uint8Array;
}

export interface FrameDecoderOptions {
  /** Largest payload accepted in one frame. */
  payloadBytesMax?: number;
  onFrame: (frame: Frame) => void;
  onError: (error: BlockmirrorError) => void;
}

/** Shortest rest of a frame worth reading straight into the staging area (see readTarget). */
const steerBytesMin = 32 * 1024;

const headerUnpackr = new Unpackr({ useRecords: false, moreTypes: false, mapsAsObjects: true });

export class FrameDecoder {
  readonly payloadBytesMax: number;
  private readonly staging: Uint8Array;
  private readonly view: DataView;
  private readonly kernel: Kernel;
  private readonly onFrame: (frame: Frame) => void;
  private readonly onError: (error: BlockmirrorError) => void;
  /** Bytes of the current frame gathered so far. */
  private have = 0;
  /** Bytes the current frame needs in all (prefix until the prefix is read). */
  private need = prefixBytes;
  private failed: BlockmirrorError | undefined;
  /** The buffer of the last chunk checked in place, and views of all of it (made once per buffer, not per frame). */
  private inPlaceBuffer: ArrayBufferLike | undefined;
  private inPlaceView: DataView | undefined;
  private inPlaceBytes: Uint8Array | undefined;

  constructor(options: FrameDecoderOptions) {
    this.payloadBytesMax = options.payloadBytesMax ?? payloadBytesMaxDefault;
    const memory = kernelMemory(prefixBytes + headerBytesMax + this.payloadBytesMax + 8);
    this.kernel = instantiateKernel(memory);
    this.staging = new Uint8Array(memory.buffer, KERNEL_HEADER_BYTES);
    this.view = new DataView(memory.buffer, KERNEL_HEADER_BYTES);
    this.onFrame = options.onFrame;
    this.onError = options.onError;
  }

  /** The error that stopped the decoder, if any. */
  get error(): BlockmirrorError | undefined {
    return this.failed;
  }

  /** Bytes buffered towards the next frame. */
  get buffered(): number {
    return this.have;
  }

  /** Forgets any partial frame and any failure, to decode a new stream with the same buffers. */
  reset(): void {
    this.have = 0;
    this.need = prefixBytes;
    this.failed = undefined;
  }

  feed(chunk: Uint8Array): void {
    // A chunk read into a kernel area (a socket's reused read buffer) is checked where it lies: every
    // whole frame in it is handed on without a copy, and only a frame cut by the chunk's end is staged.
    const kernel = kernelOf(chunk.buffer);
    let at = 0;
    while (at < chunk.length && !this.failed) {
      if (kernel && this.have === 0) {
        const whole = this.frameInPlace(chunk, at, kernel);
        if (whole > 0) {
          at += whole;
          continue;
        }
        if (this.failed) return;
      }
      const n = Math.min(this.need - this.have, chunk.length - at);
      // A read steered by readTarget() already lies where it belongs.
      const placed = at === 0 && chunk.buffer === this.staging.buffer && chunk.byteOffset === this.staging.byteOffset + this.have;
      if (!placed) this.staging.set(at === 0 && n === chunk.length ? chunk : chunk.subarray(at, at + n), this.have);
      this.have += n;
      at += n;
      if (this.have < this.need) return;
      if (this.have === prefixBytes && this.need === prefixBytes) {
        const need = this.checkPrefix(this.view, 0);
        if (need !== undefined) this.need = need;
      } else {
        this.have = 0;
        this.need = prefixBytes;
        this.deliver(this.staging, this.view, 0, this.kernel, KERNEL_HEADER_BYTES);
      }
    }
  }

  /**
   * Where the next read of the link should land (`Link.steer`): the rest of
   * a frame whose start is already staged, when that rest is long enough to
   * be worth a read of its own. Fed back to `feed`, such a read is taken
   * where it lies: a long frame cut by the end of a read is then copied only
   * for the part that read held. Otherwise, given the link's own buffer
   * `readArea`, a view of it that starts a few bytes in when that keeps
   * the frames of the read aligned. Undefined: read into the link's own
   * buffer from its start.
   */
  readTarget(readArea?: Uint8Array): Uint8Array | undefined {
    if (this.failed) return undefined;
    if (this.have >= prefixBytes && this.need - this.have >= steerBytesMin) return this.staging.subarray(this.have, this.need);
    // Otherwise into the link's area, `have` bytes (mod 8) in: the rest of a cut frame then ends on a multiple
    // of 8, so the frames after it, and their payloads, lie 8-byte aligned as well (see payloadStart), and so
    // does the copy of that rest into the staging area.
    const skew = this.have & 7;
    return readArea && skew !== 0 ? readArea.subarray(skew) : undefined;
  }

  /**
   * Hands on the frame at `chunk[at]` from where it lies, if the chunk holds
   * all of it. Returns its length, or 0 when it is cut (or bad: then failed).
   */
  private frameInPlace(chunk: Uint8Array, at: number, kernel: Kernel): number {
    if (chunk.length - at < prefixBytes) return 0;
    const base = chunk.byteOffset + at;
    if (this.inPlaceBuffer !== chunk.buffer) {
      this.inPlaceBuffer = chunk.buffer;
      this.inPlaceView = new DataView(chunk.buffer);
      this.inPlaceBytes = new Uint8Array(chunk.buffer);
    }
    const view = this.inPlaceView!;
    const need = this.checkPrefix(view, base);
    if (need === undefined || chunk.length - at < need) return 0;
    this.deliver(this.inPlaceBytes!, view, base, kernel, base);
    return need;
  }

  /** The whole length of the frame whose prefix is at `base`, or undefined (failed) when the prefix is bad. */
  private checkPrefix(v: DataView, base: number): number | undefined {
    const magic = v.getUint32(base, true);
    const h = v.getUint32(base + 4, true);
    const p = v.getUint32(base + 8, true);
    if (magic !== frameMagic || v.getUint32(base + 12, true) !== 0) {
      this.fail(errors.FRAME_MAGIC(`Cannot read frame: bad magic 0x${magic.toString(16).padStart(8, '0')}`));
      return undefined;
    }
    if (h === 0 || h > headerBytesMax) {
      this.fail(errors.FRAME_TOO_LARGE(`Cannot read frame: header length ${h} is outside 1..${headerBytesMax}`));
      return undefined;
    }
    if (p > this.payloadBytesMax) {
      this.fail(errors.FRAME_TOO_LARGE(`Cannot read frame: payload length ${p} is over ${this.payloadBytesMax}`));
      return undefined;
    }
    return alignedFrameBytes(h, p);
  }

  /** Checks the whole frame at `base` of `bytes` (hashed by `kernel` at `address`) and hands it on. */
  private deliver(bytes: Uint8Array, v: DataView, base: number, kernel: Kernel, address: number): void {
    const h = v.getUint32(base + 4, true);
    const p = v.getUint32(base + 8, true);
    const expected = v.getBigUint64(base + 16, true);
    // The checksum covers the header, its zero padding and the payload: everything after the prefix.
    const from = base + prefixBytes;
    const payloadAt = base + payloadStart(h);
    const actual = kernel.xxh3(address + prefixBytes, payloadAt - from + p);
    if (expected !== actual) return this.fail(errors.FRAME_CHECKSUM(`Cannot read frame: checksum mismatch (got ${actual.toString(16)}, frame says ${expected.toString(16)})`));
    for (let i = from + h; i < payloadAt; i++) if (bytes[i] !== 0) return this.fail(errors.FRAME_HEADER('Cannot read frame header: its padding is not zero'));
    let header: unknown;
    try {
      header = headerUnpackr.unpack(bytes.subarray(from, from + h));
    } catch (e) {
      return this.fail(errors.FRAME_HEADER(`Cannot read frame header: ${(e as Error).message.split('\n')[0]}`));
    }
    const problem = checkShape(header, p);
    if (problem) return this.fail(problem.startsWith('unknown') ? errors.FRAME_TYPE(`Cannot read frame: ${problem}`) : errors.FRAME_HEADER(`Cannot read frame header: ${problem}`));
    const h0 = header as unknown[];
    this.onFrame({ type: h0[0] as FrameTypeValue, header: h0, payload: bytes.subarray(payloadAt, payloadAt + p) });
  }

  private fail(error: BlockmirrorError): void {
    this.failed = error;
    this.onError(error);
  }
}

const isUint = (x: unknown, max = 0xffffffff): x is number => typeof x === 'number' && Number.isInteger(x) && x >= 0 && x <= max;
const isOffset = (x: unknown): x is number => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
const isGen = (x: unknown): boolean => typeof x === 'string' && /^[0-9a-f]{16}$/.test(x);
/** Most segments one codes request may ask for (the reply then carries at most 4096 × 33 bytes, for blake3). */
export const codesPerRequestMax = 4096;
const isObject = (x: unknown) => typeof x === 'object' && x !== null && !Array.isArray(x) && !(x instanceof Uint8Array);

/** Returns what is wrong with a header's shape, or undefined. */
function checkShape(header: unknown, payloadBytes: number): string | undefined {
  if (!Array.isArray(header) || header.length === 0) return 'not a non-empty array';
  const [type] = header;
  const noPayload = payloadBytes === 0 ? undefined : `type ${String(type)} carries no payload`;
  switch (type) {
    case FrameType.write:
      if (header.length !== 5 || !isUint(header[1]) || !isUint(header[2], 65535) || !isOffset(header[3]) || !isUint(header[4], 255)) return 'write needs [type, seq, volume, offset, flags]';
      if (payloadBytes === 0) return 'write without payload';
      return undefined;
    case FrameType.zeroes:
      if (header.length !== 5 || !isUint(header[1]) || !isUint(header[2], 65535) || !isOffset(header[3]) || !isOffset(header[4])) return 'zeroes needs [type, seq, volume, offset, length]';
      return noPayload;
    case FrameType.flush:
    case FrameType.ack:
      if (header.length !== 2 || !isUint(header[1])) return `type ${type} needs [type, seq]`;
      return noPayload;
    case FrameType.ping:
    case FrameType.pong:
      if (header.length !== 2 || typeof header[1] !== 'number') return `type ${type} needs [type, stamp]`;
      return noPayload;
    case FrameType.syncBegin:
      if (header.length !== 4 || !isUint(header[1]) || !isUint(header[2], 65535) || !isGen(header[3])) return 'sync begin needs [type, seq, volume, gen]';
      return noPayload;
    case FrameType.syncEnd:
      if (header.length !== 5 || !isUint(header[1]) || !isUint(header[2], 65535) || !isGen(header[3]) || !Array.isArray(header[4]) || header[4].length > 16 || !header[4].every(isGen)) {
        return 'sync end needs [type, seq, volume, gen, history]';
      }
      return noPayload;
    case FrameType.codesRequest:
      if (header.length !== 6 || !isUint(header[1]) || !isUint(header[2], 65535) || !isOffset(header[3]) || !isUint(header[4], codesPerRequestMax) || header[4] === 0 || !isUint(header[5])) {
        return 'codes request needs [type, seq, volume, first, count, tag]';
      }
      return noPayload;
    case FrameType.codesReply:
      if (header.length !== 5 || !isUint(header[1], 65535) || !isOffset(header[2]) || !isUint(header[3], codesPerRequestMax) || !isUint(header[4])) return 'codes reply needs [type, volume, first, count, tag]';
      return undefined;
    case FrameType.status:
      if (header.length !== 1) return 'status needs [type]';
      return noPayload;
    case FrameType.statusReply:
      if (header.length !== 1) return 'status reply needs [type] and a JSON payload';
      return undefined;
    case FrameType.refuse:
      if (header.length !== 3 || typeof header[1] !== 'string' || typeof header[2] !== 'string') return 'refuse needs [type, code, message]';
      return noPayload;
    default:
      if (objectFrameTypes.has(type as number)) {
        if (header.length !== 2 || !isObject(header[1])) return `type ${type} needs [type, {fields}]`;
        return objectPayloadFrameTypes.has(type as number) ? undefined : noPayload;
      }
      return `unknown frame type ${JSON.stringify(type)?.slice(0, 20)}`;
  }
}
