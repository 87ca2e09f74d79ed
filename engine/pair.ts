/**
 * A pair: a primary volume and its secondary, as the application sees it.
 *
 * States (design.md): `syncing` (copying out-of-sync segments; the
 * secondary is not yet consistent), `duplex` (every completed write is on
 * both sides), `suspended` (the link is down: writes complete locally and
 * are recorded in the out-of-sync map), `frozen` and `standalone`.
 *
 * Every write is applied locally and appended to the channel's journal in
 * one synchronous step, after room in the ring was granted in turn, so the
 * secondary receives records in exactly the order they were applied here
 * (invariant 1). In sync mode a write resolves when the secondary has
 * acknowledged it; in async mode at once. When the link fails, the channel
 * hands back every unacknowledged record and their segments are marked out
 * of sync before any waiting write resolves (invariant 6).
 *
 * Resync copies each marked segment as a record with the resync flag and
 * clears its bit only when that record is acknowledged. Codes are not
 * compared yet (the resync issue adds that): this is the seam.
 */
import type { Channel } from './channel.ts';
import { WriteFlag } from './frame.ts';
import { OutOfSyncMap } from './out-of-sync.ts';
import type { Volume, WriteOptions } from './volume.ts';
import { Fifo } from './fifo.ts';

export type PairState = 'syncing' | 'duplex' | 'frozen' | 'suspended' | 'standalone';

export interface PairEvent {
  type: 'state';
  volume: string;
  from: PairState;
  to: PairState;
  reason?: string;
  at: string;
}

/** Most resync bytes sent and not yet acknowledged. */
export const resyncWindowBytes = 8 * 1024 * 1024;

export class Pair {
  readonly volume: Volume;
  readonly name: string;
  readonly index: number;
  readonly oos: OutOfSyncMap;
  readonly mode: 'sync' | 'async';
  private readonly channel: Channel;
  private readonly emit: (event: PairEvent) => void;
  private current: PairState = 'suspended';
  /** Bumped on every failure; a resync pass from an older epoch stops. */
  private epoch = 0;
  private resyncing = false;
  /** Bytes mirrored (acknowledged or queued) since start, for throughput. */
  bytesMirrored = 0;
  writes = 0;

  constructor(options: { volume: Volume; index: number; channel: Channel; mode: 'sync' | 'async'; emit: (event: PairEvent) => void }) {
    this.volume = options.volume;
    this.name = options.volume.name;
    this.index = options.index;
    this.channel = options.channel;
    this.mode = options.mode;
    this.emit = options.emit;
    this.oos = new OutOfSyncMap(this.volume.size, this.volume.segmentSize);
  }

  get state(): PairState {
    return this.current;
  }

  get size(): number {
    return this.volume.size;
  }

  /** True while writes are sent to the secondary. */
  private get mirroring(): boolean {
    return (this.current === 'duplex' || this.current === 'syncing') && this.channel.connected;
  }

  read(offset: number, length: number): Uint8Array {
    return this.volume.read(offset, length);
  }

  async write(offset: number, data: Uint8Array, options: WriteOptions = {}): Promise<void> {
    this.volume.checkWrite(offset, data);
    if (data.length === 0) return;
    this.writes++;
    const flags = options.fua ? WriteFlag.fua : 0;
    let last = -1;
    for (let done = 0; done < data.length; ) {
      const n = Math.min(this.channel.payloadBytesMax, data.length - done);
      if (!(await this.admit(n))) {
        // Not mirrored: apply locally and record what the secondary now lacks.
        const rest = data.subarray(done);
        this.volume.writeSync(offset + done, rest);
        this.oos.markRange(offset + done, rest.length);
        last = -1;
        break;
      }
      const chunk = data.subarray(done, done + n);
      this.volume.writeSync(offset + done, chunk);
      last = this.channel.appendWrite(this.index, offset + done, chunk, flags);
      this.bytesMirrored += n;
      done += n;
    }
    if (last >= 0 && (this.mode === 'sync' || options.fua)) await this.channel.waitAck(last);
    if (options.fua) await this.volume.flush();
  }

  /**
   * Waits for room for one record in the journal, in turn. True when the
   * caller must now apply and append it (synchronously); false when the pair
   * is not mirroring.
   */
  private async admit(payloadBytes: number): Promise<boolean> {
    if (!this.mirroring) return false;
    const bytes = this.channel.recordBytes(payloadBytes);
    const room = this.channel.room(bytes);
    if (room === false) return false;
    if (room !== true && !(await room)) return false;
    if (this.mirroring) return true;
    this.channel.unreserve(bytes);
    return false;
  }

  async writeZeroes(offset: number, length: number, options: WriteOptions = {}): Promise<void> {
    this.volume.checkZeroes(offset, length);
    if (length === 0) return;
    this.writes++;
    const granted = await this.admit(0);
    this.volume.writeZeroesSync(offset, length);
    if (!granted) {
      this.oos.markRange(offset, length);
    } else {
      const seq = this.channel.appendZeroes(this.index, offset, length);
      if (this.mode === 'sync' || options.fua) await this.channel.waitAck(seq);
    }
    if (options.fua) await this.volume.flush();
  }

  /** Trimmed bytes read back as zeroes, on both sides. */
  trim(offset: number, length: number): Promise<void> {
    this.volume.checkZeroes(offset, length, 'trim');
    return this.writeZeroes(offset, length);
  }

  /** Makes every completed write durable here and, while mirroring, on the secondary. */
  async flush(): Promise<void> {
    await this.volume.flush();
    if (!(await this.admit(0))) return;
    await this.channel.waitAck(this.channel.appendFlush());
  }

  /** The link failed: record what the secondary may lack, stop mirroring. */
  failed(lost: Array<{ offset: number; length: number }>, reason: string): void {
    this.epoch++;
    for (const r of lost) this.oos.markRange(r.offset, r.length);
    this.setState('suspended', reason);
  }

  /** The link is up. `fresh`: both images are known to hold zeroes only. */
  connected(firstContact: boolean, fresh: boolean): void {
    if (firstContact && !fresh) this.oos.markAll();
    if (this.oos.size === 0) return this.setState('duplex', 'connected');
    this.setState('syncing', firstContact ? 'initial copy' : 'resync after reconnect');
    void this.resync();
  }

  setState(to: PairState, reason?: string): void {
    if (to === this.current) return;
    const from = this.current;
    this.current = to;
    this.emit({ type: 'state', volume: this.name, from, to, reason, at: new Date().toISOString() });
  }

  private async resync(): Promise<void> {
    if (this.resyncing) return;
    this.resyncing = true;
    const epoch = this.epoch;
    const segment = this.volume.segmentSize;
    const inflight = new Fifo<{ seq: number; segment: number; bytes: number }>();
    let inflightBytes = 0;
    const settle = async (upTo: number) => {
      while (inflight.length && inflightBytes > upTo) {
        const head = inflight.peek()!;
        const acked = await this.channel.waitAck(head.seq);
        if (!acked || epoch !== this.epoch) return false;
        inflight.shift();
        inflightBytes -= head.bytes;
        this.oos.clear(head.segment);
      }
      return true;
    };
    try {
      for (let s = this.oos.next(0); s >= 0; s = this.oos.next(s + 1)) {
        if (!(await settle(resyncWindowBytes))) return;
        const bytes = Math.min(segment, this.volume.size - s * segment);
        if (!(await this.admit(bytes)) || epoch !== this.epoch) return;
        const seq = this.channel.appendWrite(this.index, s * segment, this.volume.read(s * segment, bytes), WriteFlag.resync);
        inflight.push({ seq, segment: s, bytes });
        inflightBytes += bytes;
      }
      if (!(await settle(0))) return;
      if (epoch === this.epoch && this.oos.size === 0 && this.current === 'syncing') this.setState('duplex', 'resync done');
    } finally {
      this.resyncing = false;
      // Marks that arrived while this pass ran (none while mirroring) get a new pass.
      if (epoch === this.epoch && this.current === 'syncing' && this.oos.size > 0) void this.resync();
    }
  }
}
