/**
 * A pair: a primary volume and its secondary, as the application sees it.
 *
 * States (design.md): `syncing` (copying out-of-sync segments; the
 * secondary is not yet consistent), `duplex` (every completed write is on
 * both sides), `frozen` (the consistency group froze: writes are held, or
 * fail under policy `stop`), `suspended` (writes complete locally and are
 * recorded in the out-of-sync map) and `standalone`.
 *
 * Every write passes the primary's group gate (member.ts) first, so a
 * frozen group holds it before a byte is applied. It is then applied
 * locally and appended to the channel's journal in one synchronous step,
 * after room in the ring was granted in turn, so the secondary receives
 * records in exactly the order they were applied here (invariant 1). In sync
 * mode a write resolves when the secondary has acknowledged it; in async
 * mode at once.
 *
 * A write that cannot be mirrored completes locally only when the gate says
 * so (`mayRecord`): at once for a standalone primary, only after RUN for a
 * group member. One whose record was sent but never acknowledged waits in
 * the same way, after the failure handling has marked its segments (the
 * channel's `failureHandled`), so a write never completes unrecorded
 * (invariant 6) and never completes unmirrored while another member of its
 * group still mirrors (invariant 4).
 *
 * Resync copies each marked segment as a record with the resync flag and
 * clears its bit only when that record is acknowledged. Codes are not
 * compared yet (the resync issue adds that): this is the seam.
 */
import type { Channel } from './channel.ts';
import { errors } from './errors.ts';
import { WriteFlag } from './frame.ts';
import type { GroupMember } from './member.ts';
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
  private readonly gate: GroupMember;
  private readonly emit: (event: PairEvent) => void;
  private current: PairState = 'suspended';
  /** Bumped on every failure and freeze; a resync pass from an older epoch stops. */
  private epoch = 0;
  private resyncing = false;
  /**
   * Whether the secondary image is a point-in-time copy of this volume: not
   * before the first copy has ended (unless both images were just created),
   * nor from the start of a resync until it ends (it is then half old, half new).
   */
  private secondaryConsistent = false;
  /** Bytes mirrored (acknowledged or queued) since start, for throughput. */
  bytesMirrored = 0;
  writes = 0;

  constructor(options: { volume: Volume; index: number; channel: Channel; gate: GroupMember; mode: 'sync' | 'async'; emit: (event: PairEvent) => void }) {
    this.volume = options.volume;
    this.name = options.volume.name;
    this.index = options.index;
    this.channel = options.channel;
    this.gate = options.gate;
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

  /** False while a resync is copying into the secondary (its image is then not a point-in-time copy). */
  get consistent(): boolean {
    return this.secondaryConsistent;
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
      if ((await this.admit(n)) === 'record') {
        // Not mirrored: apply locally and record what the secondary now lacks.
        const rest = data.subarray(done);
        this.volume.writeSync(offset + done, rest);
        this.oos.markRange(offset + done, rest.length);
        break;
      }
      const chunk = data.subarray(done, done + n);
      this.volume.writeSync(offset + done, chunk);
      last = this.channel.appendWrite(this.index, offset + done, chunk, flags);
      this.bytesMirrored += n;
      done += n;
    }
    await this.complete(last, this.mode === 'sync' || options.fua === true);
    if (options.fua) await this.volume.flush();
  }

  async writeZeroes(offset: number, length: number, options: WriteOptions = {}): Promise<void> {
    this.volume.checkZeroes(offset, length);
    if (length === 0) return;
    this.writes++;
    const how = await this.admit(0);
    this.volume.writeZeroesSync(offset, length);
    let seq = -1;
    if (how === 'record') this.oos.markRange(offset, length);
    else seq = this.channel.appendZeroes(this.index, offset, length);
    await this.complete(seq, this.mode === 'sync' || options.fua === true);
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
    if ((await this.admit(0)) === 'record') return;
    await this.complete(this.channel.appendFlush(), true);
  }

  /**
   * Waits for the gate and for room for one record in the journal, in turn.
   * 'mirror': the caller must now apply and append the record
   * (synchronously). 'record': the write may complete locally, recorded.
   */
  private async admit(payloadBytes: number): Promise<'mirror' | 'record'> {
    for (;;) {
      if (this.volume.closed) throw errors.CLOSED(`Cannot write to volume '${this.name}': it is closed`);
      if (this.gate.blocked) await this.gate.wait();
      if (this.mirroring) {
        const bytes = this.channel.recordBytes(payloadBytes);
        const room = this.channel.room(bytes);
        if (room === true || (room !== false && (await room))) {
          if (this.mirroring && !this.gate.blocked) return 'mirror';
          this.channel.unreserve(bytes);
        }
        continue;
      }
      if (await this.unmirrored()) return 'record';
    }
  }

  /**
   * Resolves once a write whose record was appended as `seq` (or none, -1)
   * may complete: acknowledged (when `waitForAck`), or recorded as out of
   * sync with the gate's permission. Completions wait while the group is
   * frozen; under policy `stop` an unmirrored one fails with BM_ERR_FROZEN.
   */
  private async complete(seq: number, waitForAck: boolean): Promise<void> {
    if (seq >= 0 && waitForAck && !(await this.channel.waitAck(seq))) {
      while (!(await this.unmirrored())) {
        if (this.volume.closed) throw errors.CLOSED(`Cannot complete a write to volume '${this.name}': it was closed first`);
      }
    }
    if (this.gate.blocked && this.gate.phase === 'holding') await this.gate.wait();
  }

  /**
   * The pair cannot mirror now. True when a write may complete locally,
   * recorded; false after waiting for something that may change that.
   */
  private async unmirrored(): Promise<boolean> {
    // The worker has published a failure the main thread has not handled
    // yet: the records it will read back are not marked out of sync yet.
    if (this.current === 'duplex' || this.current === 'syncing') {
      await this.channel.failureHandled();
      if (this.current === 'duplex' || this.current === 'syncing') await new Promise((r) => setTimeout(r, 1));
      return false;
    }
    if (this.gate.mayRecord()) return true;
    await this.gate.wait();
    return false;
  }

  /** The link failed: record what the secondary may lack and stop any resync. The primary then sets the state. */
  failed(lost: Array<{ offset: number; length: number }>): void {
    this.epoch++;
    for (const r of lost) this.oos.markRange(r.offset, r.length);
  }

  /** First handshake of this run: unless both images are known to hold zeroes only, every segment may differ. */
  firstContact(fresh: boolean): void {
    if (fresh) this.secondaryConsistent = true;
    else this.oos.markAll();
  }

  /** The link is up and the group lets this pair mirror: copy what is out of sync, then `duplex`. */
  startMirroring(reason: string): void {
    if (!this.channel.connected) return this.setState('suspended', reason);
    if (this.current === 'duplex' || (this.current === 'syncing' && this.resyncing)) return;
    if (this.oos.size === 0 && this.current !== 'syncing') return this.setState('duplex', reason);
    this.setState('syncing', reason);
    void this.resync();
  }

  setState(to: PairState, reason?: string): void {
    if (to === this.current) return;
    const from = this.current;
    this.current = to;
    if (to === 'frozen' || to === 'suspended') this.epoch++;
    if (to === 'syncing') this.secondaryConsistent = false;
    if (to === 'duplex') this.secondaryConsistent = true;
    this.emit({ type: 'state', volume: this.name, from, to, reason, at: new Date().toISOString() });
  }

  /** Room for a resync record, without passing the gate (a resync never waits for it: it stops instead). */
  private async reserve(payloadBytes: number): Promise<boolean> {
    if (!this.mirroring) return false;
    const bytes = this.channel.recordBytes(payloadBytes);
    const room = this.channel.room(bytes);
    if (room === false) return false;
    if (room !== true && !(await room)) return false;
    if (this.mirroring) return true;
    this.channel.unreserve(bytes);
    return false;
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
        if (!(await this.reserve(bytes)) || epoch !== this.epoch) return;
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
