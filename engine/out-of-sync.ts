/**
 * The out-of-sync map of one volume: one bit per segment, set when the
 * segment may differ from the peer (design.md, invariant 6). A bit is set by
 * a write that could not be mirrored, or by a record that was not
 * acknowledged when its link failed; it is cleared only when the segment is
 * known to be equal on both sides (its resync copy was acknowledged).
 *
 * Main thread only. Keeps a count so `outOfSyncBytes` costs nothing.
 */
export class OutOfSyncMap {
  readonly segmentCount: number;
  readonly segmentSize: number;
  readonly volumeSize: number;
  private readonly bits: Uint32Array;
  private count = 0;
  private lastSegmentSet = false;

  constructor(volumeSize: number, segmentSize: number) {
    this.volumeSize = volumeSize;
    this.segmentSize = segmentSize;
    this.segmentCount = Math.ceil(volumeSize / segmentSize);
    this.bits = new Uint32Array(Math.ceil(this.segmentCount / 32));
  }

  /** Marks the segments covering `length` bytes at `offset`. */
  markRange(offset: number, length: number): void {
    if (length <= 0) return;
    const last = Math.floor((offset + length - 1) / this.segmentSize);
    for (let s = Math.floor(offset / this.segmentSize); s <= last; s++) this.mark(s);
  }

  mark(segment: number): void {
    const word = segment >>> 5;
    const bit = 1 << (segment & 31);
    if ((this.bits[word]! & bit) !== 0) return;
    this.bits[word]! |= bit;
    this.count++;
    if (segment === this.segmentCount - 1) this.lastSegmentSet = true;
  }

  markAll(): void {
    for (let s = 0; s < this.segmentCount; s++) this.mark(s);
  }

  clear(segment: number): void {
    const word = segment >>> 5;
    const bit = 1 << (segment & 31);
    if ((this.bits[word]! & bit) === 0) return;
    this.bits[word]! &= ~bit;
    this.count--;
    if (segment === this.segmentCount - 1) this.lastSegmentSet = false;
  }

  has(segment: number): boolean {
    return (this.bits[segment >>> 5]! & (1 << (segment & 31))) !== 0;
  }

  /** Segments marked. */
  get size(): number {
    return this.count;
  }

  /** Bytes covered by marked segments (the last segment may be short). */
  get bytes(): number {
    if (this.count === 0) return 0;
    const lastBytes = this.volumeSize - (this.segmentCount - 1) * this.segmentSize;
    return this.lastSegmentSet ? (this.count - 1) * this.segmentSize + lastBytes : this.count * this.segmentSize;
  }

  /** The marks as bytes (little-endian words), to save them. */
  toBytes(): Uint8Array {
    return new Uint8Array(this.bits.slice().buffer);
  }

  /** Sets the marks saved by `toBytes` (on top of any already set). */
  addBytes(bytes: Uint8Array): void {
    const words = new Uint32Array(bytes.slice().buffer);
    for (let w = 0; w < Math.min(words.length, this.bits.length); w++) {
      for (let bit = 0; bit < 32; bit++) {
        const s = w * 32 + bit;
        if (s < this.segmentCount && (words[w]! & (1 << bit)) !== 0) this.mark(s);
      }
    }
  }

  /** Bytes `toBytes` returns for this map. */
  get byteLength(): number {
    return this.bits.byteLength;
  }

  /** A copy of the marks, for a resync to remember its candidates. */
  copy(): OutOfSyncMap {
    const other = new OutOfSyncMap(this.volumeSize, this.segmentSize);
    other.bits.set(this.bits);
    other.count = this.count;
    other.lastSegmentSet = this.lastSegmentSet;
    return other;
  }

  /** The first marked segment at or after `from`, or -1. */
  next(from: number): number {
    for (let word = from >>> 5; word < this.bits.length; word++) {
      let w = this.bits[word]!;
      if (word === from >>> 5) w &= ~((1 << (from & 31)) - 1);
      if (w === 0) continue;
      const s = word * 32 + (31 - Math.clz32(w & -w));
      return s < this.segmentCount ? s : -1;
    }
    return -1;
  }
}
