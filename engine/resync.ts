/**
 * The primary's side of a resync, and of an online verify: compare segment
 * codes with the secondary, copy only what differs (WO2007141125).
 *
 * A resync of one pair runs in the pair's ordered record stream:
 *
 *   syncBegin(gen) → codes requests for every window of candidate segments,
 *   pipelined, each answer compared as it arrives → copies of that window's
 *   differing segments, adjacent ones coalesced into one record → ... →
 *   syncEnd(gen) → acknowledged
 *
 * Every request goes out before any copy, so no answer queues behind copies
 * in the ordered stream; from then on the copies of a window start as soon
 * as it is compared, not after the last answer.
 *
 * Candidates are the segments marked in the out-of-sync map (all of them
 * for a full comparison). A bit is cleared only when syncEnd is
 * acknowledged: by then every candidate is known equal on both sides and the
 * secondary has made its image consistent and durable (invariant 6). An
 * interrupted resync therefore leaves every bit set; the next one compares
 * again and copies only what still differs.
 *
 * Why comparing while writes go on is safe. The secondary answers a codes
 * request after applying every record before it, perhaps also some after
 * it; the primary compares the answer with its own code, current when the
 * answer arrives. Every write in between is a record both sides apply, in
 * the same order, and a write replaces the bytes it covers. If the two
 * codes are equal, the secondary's segment already holds what the primary's
 * holds, including the last bytes of every write applied to either, so
 * applying the rest of the stream to both keeps them equal. If they differ
 * (or a code is not current), the segment is copied: at worst a copy too many.
 * A verify, which must not report a false difference, also skips a segment
 * whose generation moved between its request and the answer.
 *
 * Bounds: `codesWindowSegments` segments per request, `requestsInFlightMax`
 * requests and `resyncWindowBytes` of copies unacknowledged at once; copies
 * are paced by `rateBytesPerSec` when set.
 */
import type { Channel } from './channel.ts';
import { WriteFlag } from './frame.ts';
import type { OutOfSyncMap } from './out-of-sync.ts';
import type { Volume } from './volume.ts';

/** Segments one codes request covers at most (the decoder's limit; the answer is then 4096 × (code bytes + 1)). */
export const codesWindowSegments = 4096;
/** Codes requests outstanding at once. */
export const requestsInFlightMax = 8;
/** Copied bytes sent and not yet acknowledged, at most. */
export const resyncWindowBytes = 8 * 1024 * 1024;

export interface ResyncProgress {
  kind: 'resync' | 'verify';
  full: boolean;
  /** Segments to compare, and compared so far. */
  segmentsTotal: number;
  segmentsCompared: number;
  /** Segments found different (copied, for a resync). */
  segmentsDiffering: number;
  bytesTotal: number;
  bytesCompared: number;
  bytesCopied: number;
  /** Bytes compared per second since the start. */
  rateBytesPerSec: number;
  /** Seconds left at that rate. */
  etaSec: number;
  startedAt: string;
}

export interface ResyncContext {
  volume: Volume;
  oos: OutOfSyncMap;
  channel: Channel;
  index: number;
  /** False once the pass must stop (the link failed, the pair froze). */
  alive: () => boolean;
  /** Room in the journal for one record, in turn; false when the pass must stop. */
  reserve: (payloadBytes: number) => Promise<boolean>;
  /** Room for one record if it can be had at once (true: granted); false: use `reserve`. */
  reserveNow: (payloadBytes: number) => boolean;
  /** Largest copied bytes per second (undefined: unpaced). */
  rateBytesPerSec?: number;
}

/** One pass of comparison over a set of segments. */
export class Comparison {
  readonly progress: ResyncProgress;
  private readonly ctx: ResyncContext;
  private readonly started = performance.now();
  private readonly inflight: Array<{ seq: number; bytes: number }> = [];
  private inflightBytes = 0;
  private paceFrom = performance.now();
  private paced = 0;

  constructor(ctx: ResyncContext, kind: 'resync' | 'verify', full: boolean, segments: number) {
    this.ctx = ctx;
    const size = ctx.volume.segmentSize;
    this.progress = {
      kind,
      full,
      segmentsTotal: segments,
      segmentsCompared: 0,
      segmentsDiffering: 0,
      bytesTotal: Math.min(segments * size, ctx.volume.size),
      bytesCompared: 0,
      bytesCopied: 0,
      rateBytesPerSec: 0,
      etaSec: 0,
      startedAt: new Date().toISOString(),
    };
  }

  /**
   * Compares every segment for which `wanted(s)` holds. A resync then
   * copies the differing ones; a verify calls `onDiffering` for each. False
   * when the pass had to stop.
   */
  async run(wanted: (segment: number) => boolean, onDiffering?: (segment: number) => void): Promise<boolean> {
    if (this.progress.kind === 'verify') return this.compareAll(wanted, (s) => onDiffering?.(s));
    // A resync copies the differing segments of each window as soon as that window is compared, one
    // window after another, but only once every codes request has been sent: a request must never
    // wait behind copies in the ordered stream (with codes cold, each side hashes a window before
    // its request or answer, and the secondary must hash on while the copies arrive).
    const differing = new Uint8Array(this.ctx.volume.segmentCount);
    let copies: Promise<boolean> = Promise.resolve(true);
    let requested = false;
    const waiting: Array<[number, number]> = [];
    const copyWindow = (first: number, end: number) => {
      copies = copies.then((ok) => ok && this.copyAll(differing, first, end));
    };
    const compared = await this.compareAll(
      wanted,
      (s) => (differing[s] = 1),
      (first, end) => (requested ? copyWindow(first, end) : waiting.push([first, end])),
      () => {
        requested = true;
        for (const [first, end] of waiting.splice(0)) copyWindow(first, end);
      },
    );
    if (!(await copies) || !compared) return false;
    return this.settle(0);
  }

  /**
   * Phase one: every wanted segment's codes, compared as the answers arrive;
   * `onWindow(first, end)` after each window's differing segments are known,
   * `onRequested()` once the last request has been sent.
   */
  private async compareAll(
    wanted: (segment: number) => boolean,
    onDiffering: (segment: number) => void,
    onWindow?: (first: number, end: number) => void,
    onRequested?: () => void,
  ): Promise<boolean> {
    const { volume } = this.ctx;
    const copy = this.progress.kind === 'resync';
    const pending: Array<Promise<boolean>> = [];
    // A window's answer must fit in one frame of the receiver's payload limit.
    const window = Math.max(1, Math.min(codesWindowSegments, Math.floor(this.ctx.channel.payloadBytesMax / (volume.codeBytes + 1))));
    for (let first = 0; first < volume.segmentCount; first += window) {
      const end = Math.min(volume.segmentCount, first + window);
      let lo = -1;
      let hi = -1;
      for (let s = first; s < end; s++) {
        if (!wanted(s)) continue;
        if (lo < 0) lo = s;
        hi = s;
      }
      if (lo < 0) continue;
      while (pending.length >= requestsInFlightMax) if (!(await pending.shift()!)) return false;
      const request = await this.request(lo, hi + 1 - lo);
      if (!request) return false;
      const [from, to] = [lo, hi + 1];
      pending.push(
        request.reply.then(async (theirs) => {
          if (!theirs || !(await this.compare(from, to, theirs, request.generations, wanted, copy, onDiffering))) return false;
          onWindow?.(from, to);
          return true;
        }),
      );
    }
    onRequested?.();
    for (const p of pending) if (!(await p)) return false;
    return true;
  }

  /** The differing segments in [first, end), runs of adjacent ones in one record each. */
  private async copyAll(differing: Uint8Array, first: number, end: number): Promise<boolean> {
    const { volume, channel } = this.ctx;
    const size = volume.segmentSize;
    const runMax = Math.max(1, Math.floor(channel.payloadBytesMax / size));
    for (let s = first; s < end; s++) {
      if (!differing[s]) continue;
      let last = s + 1;
      while (last < end && differing[last] && last - s < runMax) last++;
      // A run of whole segments, or one segment in pieces when segments are larger than a record.
      const from = s * size;
      const to = Math.min(last * size, volume.size);
      for (let at = from; at < to; at += channel.payloadBytesMax) {
        if (!(await this.copyRange(at, Math.min(channel.payloadBytesMax, to - at)))) return false;
      }
      s = last - 1;
    }
    return true;
  }

  /** Waits until at most `upTo` copied bytes are unacknowledged. */
  async settle(upTo: number): Promise<boolean> {
    while (this.inflight.length && this.inflightBytes > upTo) {
      const head = this.inflight[0]!;
      if (!(await this.ctx.channel.waitAck(head.seq)) || !this.ctx.alive()) return false;
      this.inflight.shift();
      this.inflightBytes -= head.bytes;
    }
    return true;
  }

  /** Settles this side's codes for the range, then asks the secondary for its codes. */
  private async request(first: number, count: number): Promise<{ reply: Promise<Uint8Array | undefined>; generations: Int32Array } | undefined> {
    const { volume, channel, index } = this.ctx;
    await volume.currentCodes(first, count);
    const generations = volume.generations(first, count);
    if (!this.ctx.alive() || !(await this.ctx.reserve(0)) || !this.ctx.alive()) return undefined;
    const { reply } = channel.appendCodesRequest(index, first, count);
    return { reply: reply.then((codes) => (codes && this.ctx.alive() ? codes : undefined)), generations };
  }

  private async compare(
    first: number,
    end: number,
    theirs: Uint8Array,
    generations: Int32Array,
    wanted: (s: number) => boolean,
    copy: boolean,
    onDiffering: (segment: number) => void,
  ): Promise<boolean> {
    const { volume } = this.ctx;
    const count = end - first;
    const size = volume.codeBytes;
    const mine = await volume.currentCodes(first, count);
    if (!this.ctx.alive()) return false;
    if (theirs.length !== count * (size + 1)) return false;
    for (let s = first; s < end; s++) {
      if (!wanted(s)) continue;
      const i = s - first;
      const bytes = Math.min(volume.segmentSize, volume.size - s * volume.segmentSize);
      this.progress.segmentsCompared++;
      this.progress.bytesCompared += bytes;
      const equal = theirs[count * size + i] === 1 && mine[count * size + i] === 1 && sameBytes(mine, theirs, i * size, size);
      if (equal) continue;
      // A verify reports only what it is sure of: not a segment written since it was asked about.
      if (!copy && volume.generation(s) !== generations[i]) continue;
      this.progress.segmentsDiffering++;
      onDiffering(s);
    }
    this.updateRate();
    return true;
  }

  private async copyRange(offset: number, bytes: number): Promise<boolean> {
    const { volume, channel, index, rateBytesPerSec } = this.ctx;
    // While the window and the journal have room, append without yielding: the records of a batch
    // then reach the worker together (one wake-up), instead of one task each.
    const fast = !rateBytesPerSec && this.inflightBytes + bytes <= resyncWindowBytes && this.ctx.alive() && this.ctx.reserveNow(bytes);
    if (!fast) {
      if (!(await this.settle(Math.max(0, resyncWindowBytes - bytes)))) return false;
      if (rateBytesPerSec) await this.pace(bytes, rateBytesPerSec);
      if (!this.ctx.alive() || !(await this.ctx.reserve(bytes)) || !this.ctx.alive()) return false;
    }
    // Straight from volume memory into the journal (one copy) when the range lies in one segment.
    const inOne = Math.floor(offset / volume.segmentSize) === Math.floor((offset + bytes - 1) / volume.segmentSize);
    const seq = channel.appendWrite(index, offset, inOne ? volume.view(offset, bytes) : volume.read(offset, bytes), WriteFlag.resync);
    this.inflight.push({ seq, bytes });
    this.inflightBytes += bytes;
    this.progress.bytesCopied += bytes;
    return true;
  }

  /** Sleeps as long as copying `bytes` more would exceed `rate` bytes per second. */
  private async pace(bytes: number, rate: number): Promise<void> {
    this.paced += bytes;
    const due = this.paceFrom + (this.paced / rate) * 1000;
    const wait = due - performance.now();
    if (wait > 1) await new Promise((r) => setTimeout(r, wait));
  }

  private updateRate(): void {
    const p = this.progress;
    const seconds = (performance.now() - this.started) / 1000;
    p.rateBytesPerSec = seconds > 0 ? p.bytesCompared / seconds : 0;
    p.etaSec = p.rateBytesPerSec > 0 ? (p.bytesTotal - p.bytesCompared) / p.rateBytesPerSec : 0;
  }
}

function sameBytes(a: Uint8Array, b: Uint8Array, at: number, length: number): boolean {
  for (let i = 0; i < length; i++) if (a[at + i] !== b[at + i]) return false;
  return true;
}
