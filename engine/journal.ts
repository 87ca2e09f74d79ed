/**
 * The journal of one channel: a bounded ring of frames in shared memory,
 * written by the main thread and drained by the channel worker.
 *
 * Each record is stored exactly as it goes on the wire (see
 * docs/protocol.md), so the worker checksums it in place and hands the ring
 * bytes to the socket with no copy. The ring lives in a shared
 * `WebAssembly.Memory` for that reason: the hashing kernel reads it in place.
 *
 * Positions are byte counters that wrap at 2^32; the ring's capacity is a
 * power of two, so `position & (capacity - 1)` is the place in the ring and
 * `(head - tail) >>> 0` the bytes in use. A frame never wraps: when it does
 * not fit before the end of the ring, a padding frame fills the rest.
 *
 * - head: advanced by the producer after a frame is complete.
 * - tail: advanced by the worker when the peer has acknowledged frames (not
 *   when they are sent: until then they are the record of what may still be
 *   missing on the secondary, scanned into the out-of-sync map on failure).
 *
 * Bound: `capacity` bytes. When full, `reserve` returns -1 and the caller
 * waits on `tail` (async mode) or the write waits for acknowledgements.
 */
import { KERNEL_HEADER_BYTES, kernelMemory } from './kernel.ts';
import { errors } from './errors.ts';

/** Control words (Int32 indexes) shared between the main thread and the worker. */
export const Control = {
  head: 0,
  tail: 1,
  /** Bumped by the producer on every commit; the worker waits on it. */
  doorbell: 2,
  /** 1 while the worker is (about to be) asleep on the doorbell. */
  sleeping: 3,
  /** Highest sequence number the peer acknowledged (wraps at 2^32). */
  ackedSeq: 4,
  /** Channel state, see ChannelState. */
  state: 5,
  /** Bumped whenever state or ackedSeq changes; the main thread waits on it. */
  changes: 6,
  words: 8,
} as const;

export const journalBytesMin = 1 << 20;
export const journalBytesMax = 1 << 30;
export const defaultJournalBytes = 64 << 20;
/** Frames are aligned to 8 bytes in the ring. */
export const frameAlign = 8;

export interface SharedJournal {
  memory: WebAssembly.Memory;
  control: SharedArrayBuffer;
  capacity: number;
}

export class Journal {
  readonly capacity: number;
  readonly memory: WebAssembly.Memory;
  /** The ring bytes (after the kernel's header page). */
  readonly ring: Uint8Array;
  readonly ringView: DataView;
  readonly control: Int32Array;
  /** Absolute address of ring byte 0 in `memory`, for the kernel. */
  readonly base = KERNEL_HEADER_BYTES;
  private readonly mask: number;

  private constructor(shared: SharedJournal) {
    this.capacity = shared.capacity;
    this.memory = shared.memory;
    this.ring = new Uint8Array(shared.memory.buffer, KERNEL_HEADER_BYTES, shared.capacity);
    this.ringView = new DataView(shared.memory.buffer, KERNEL_HEADER_BYTES, shared.capacity);
    this.control = new Int32Array(shared.control);
    this.mask = shared.capacity - 1;
  }

  static create(capacity = defaultJournalBytes): Journal {
    if (!Number.isSafeInteger(capacity) || capacity < journalBytesMin || capacity > journalBytesMax || (capacity & (capacity - 1)) !== 0) {
      throw errors.INVALID_ARGUMENT(`Cannot use journal size ${capacity}: it must be a power of two from ${journalBytesMin} to ${journalBytesMax} bytes`);
    }
    const memory = kernelMemory(capacity);
    return new Journal({ memory, control: new SharedArrayBuffer(Control.words * 4), capacity });
  }

  static fromShared(shared: SharedJournal): Journal {
    return new Journal(shared);
  }

  toShared(): SharedJournal {
    return { memory: this.memory, control: this.control.buffer as SharedArrayBuffer, capacity: this.capacity };
  }

  /** Largest frame the ring accepts: half of it, so a frame always fits after a wrap. */
  get frameBytesMax(): number {
    return this.capacity / 2;
  }

  used(): number {
    return (Atomics.load(this.control, Control.head) - Atomics.load(this.control, Control.tail)) >>> 0;
  }

  /**
   * Producer: finds room for a frame of `bytes` (already aligned) and returns
   * its index in `ring`, or -1 when the ring is too full. Writes a padding
   * frame first when the frame would cross the end of the ring.
   */
  reserve(bytes: number): number {
    const head = Atomics.load(this.control, Control.head);
    const at = head & this.mask;
    const toEnd = this.capacity - at;
    const need = bytes <= toEnd ? bytes : toEnd + bytes;
    if (this.capacity - this.used() < need) return -1;
    if (bytes > toEnd) {
      writePadding(this.ringView, at, toEnd);
      Atomics.store(this.control, Control.head, (head + toEnd) | 0);
      return 0;
    }
    return at;
  }

  /** Producer: publishes a frame of `bytes` written at the reserved place, and wakes the worker. */
  commit(bytes: number): void {
    const c = this.control;
    Atomics.store(c, Control.head, (Atomics.load(c, Control.head) + bytes) | 0);
    Atomics.add(c, Control.doorbell, 1);
    if (Atomics.load(c, Control.sleeping) === 1) Atomics.notify(c, Control.doorbell);
  }

  /** Consumer: releases everything up to position `position` (acknowledged by the peer). */
  release(position: number): void {
    Atomics.store(this.control, Control.tail, position | 0);
  }

  /** Drops every frame not yet released (after a failure has been recorded elsewhere). */
  reset(): void {
    Atomics.store(this.control, Control.tail, Atomics.load(this.control, Control.head));
  }
}

/** Frame magic of a padding frame: the consumer skips `length` bytes. */
export const paddingMagic = 0x44415042; // 'BPAD'

function writePadding(view: DataView, at: number, length: number): void {
  view.setUint32(at, paddingMagic, true);
  if (length >= 8) view.setUint32(at + 4, length, true);
}

export function align(bytes: number): number {
  return (bytes + frameAlign - 1) & ~(frameAlign - 1);
}
