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
 * Generations (metadata.ts): the first write that completes without the
 * secondary (recorded in the out-of-sync map) gives the volume a new
 * generation id, saved before that write completes, so the sides can later
 * tell which one is newer.
 *
 * Resync (resync.ts): when the link is up and the group lets the pair
 * mirror, the segments in the out-of-sync map (every segment when the
 * secondary's plan is a full comparison) are compared by code and only the
 * differing ones copied; the bits are cleared when the secondary has
 * acknowledged the end of the resync, its image consistent and durable.
 */
import { Channel } from './channel.ts';
import { errors } from './errors.ts';
import { WriteFlag } from './frame.ts';
import type { GroupMember } from './member.ts';
import { OutOfSyncMap } from './out-of-sync.ts';
import type { Volume, WriteOptions } from './volume.ts';
import fs from 'node:fs';
import path from 'node:path';
import { nextGeneration, saveMetadata, type VolumeMetadata } from './metadata.ts';
import { loadState, removeState, saveState } from './saved-state.ts';
import { Comparison, type ResyncProgress } from './resync.ts';
import type { VolumeHello, VolumeWelcome } from './secondary-session.ts';

export type PairState = 'syncing' | 'duplex' | 'frozen' | 'suspended' | 'standalone';

export type PairEvent =
  | { type: 'state'; volume: string; from: PairState; to: PairState; reason?: string; at: string }
  | { type: 'resync'; volume: string; event: 'started' | 'progress' | 'finished' | 'stopped'; reason?: string; progress: ResyncProgress; at: string };

export interface VerifyResult {
  volume: string;
  /** Segments compared and bytes they hold. */
  segments: number;
  bytes: number;
  /** Segments whose codes differ (now marked out of sync and being resynced). */
  differing: number[];
  /** False when the link failed before every segment was compared. */
  complete: boolean;
}

export class Pair {
  readonly volume: Volume;
  readonly name: string;
  readonly index: number;
  readonly oos: OutOfSyncMap;
  readonly mode: 'sync' | 'async';
  private readonly channel: Channel;
  private readonly gate: GroupMember;
  private readonly emit: (event: PairEvent) => void;
  /** Where the metadata is saved (undefined: a volume in memory, whose metadata lives in memory). */
  private readonly dir: string | undefined;
  private metadata: VolumeMetadata;
  /** The out-of-sync map has been kept since `metadata.oosBase` without a gap. */
  private oosTrusted: boolean;
  /** Created in this run: it holds zeroes until its first write. */
  private readonly created: boolean;
  /** The secondary's plan at the last handshake asked for a full comparison. */
  private fullCompare = false;
  /** The secondary's generation, as its last welcome said (undefined before the first). */
  private targetGen: string | undefined;
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
  /** Set once the image under this volume failed; the pair then stays suspended. */
  diskError: Error | undefined;
  /** The running (or last) resync or verify. */
  progress: ResyncProgress | undefined;
  /** Largest bytes per second a resync copies (undefined: unpaced). */
  resyncRateBytesPerSec: number | undefined;
  /** Bytes mirrored (acknowledged or queued) since start, for throughput. */
  bytesMirrored = 0;
  writes = 0;

  constructor(options: {
    volume: Volume;
    index: number;
    channel: Channel;
    gate: GroupMember;
    mode: 'sync' | 'async';
    emit: (event: PairEvent) => void;
    metadata: VolumeMetadata;
    dir: string | undefined;
    created: boolean;
    resyncRateBytesPerSec?: number;
  }) {
    this.volume = options.volume;
    this.name = options.volume.name;
    this.index = options.index;
    this.channel = options.channel;
    this.gate = options.gate;
    this.mode = options.mode;
    this.emit = options.emit;
    this.metadata = options.metadata;
    this.dir = options.dir;
    this.created = options.created;
    // A map is complete only if it has been kept since the volume was created here.
    this.oosTrusted = options.created;
    this.resyncRateBytesPerSec = options.resyncRateBytesPerSec;
    this.oos = new OutOfSyncMap(this.volume.size, this.volume.segmentSize);
  }

  get meta(): VolumeMetadata {
    return this.metadata;
  }

  /**
   * The primary starts serving this volume. After a clean stop the saved
   * out-of-sync map is taken as complete; then the metadata is marked not
   * clean (durably, before any write), so a crash from now on makes the
   * next start compare every code.
   */
  startServing(): void {
    if (this.dir && this.metadata.clean) {
      const saved = loadState(this.dir, this.name, 'oos', { segmentCount: this.oos.segmentCount, bodyBytes: this.oos.byteLength });
      if (saved) {
        this.oos.addBytes(saved.body);
        this.oosTrusted = true;
      }
    }
    if (this.dir) removeState(this.dir, this.name);
    this.saveMeta({ ...this.metadata, clean: false });
  }

  /** A clean stop (the channel has stopped; lost records are marked): saves the map, the codes and the metadata. */
  async stop(): Promise<void> {
    const saving = this.dir !== undefined;
    await this.volume.close({ saveCodes: saving });
    if (!this.dir) return;
    // A map that has a gap (this run started after a crash, and no resync has completed since)
    // is not saved: the next start then compares every code, as this one had to.
    if (this.oosTrusted) {
      const size = fs.statSync(path.join(this.dir, `${this.name}.img`)).size;
      saveState(this.dir, this.name, 'oos', { segmentCount: this.oos.segmentCount, imageSize: size, imageMtimeMs: 0, body: this.oos.toBytes() });
    }
    this.saveMeta({ ...this.metadata, clean: true });
  }

  /** What the hello says of this volume: geometry and generation ids. */
  hello(): VolumeHello {
    const v = this.volume;
    const m = this.metadata;
    return {
      name: v.name, size: v.size, blockSize: v.blockSize, segmentSize: v.segmentSize, code: v.algorithm,
      gen: m.gen, history: m.history, oosBase: m.oosBase, oosTrusted: this.oosTrusted, fresh: this.created && this.writes === 0,
    };
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
    return (this.current === 'duplex' || this.current === 'syncing') && this.channel.connected && !this.diskError;
  }

  read(offset: number, length: number): Uint8Array {
    return this.volume.read(offset, length);
  }

  /**
   * Writes `data` at `offset`; resolves when the write is complete (sync
   * mode: the secondary has applied it). `data` is read before this returns:
   * the caller may reuse its buffer at once. A record admitted at once (the
   * usual case) is applied and appended from `data` itself; any other write
   * (one that waits for room in the journal or for the gate, or one made
   * while the pair is not mirroring) copies `data` first.
   */
  async write(offset: number, data: Uint8Array, options: WriteOptions = {}): Promise<void> {
    this.volume.checkWrite(offset, data);
    if (data.length === 0) return;
    this.checkDisk('write to');
    this.writes++;
    const flags = options.fua ? WriteFlag.fua : 0;
    let last = -1;
    let owned = false;
    for (let done = 0; done < data.length; ) {
      const n = Math.min(this.channel.payloadBytesMax, data.length - done);
      let how: 'mirror' | 'record' = 'mirror';
      if (!this.admitNow(n)) {
        if (!owned) (data = data.slice()), (owned = true);
        how = await this.admit(n);
      }
      if (how === 'record') {
        // Not mirrored: apply locally and record what the secondary now lacks.
        const rest = data.subarray(done);
        try {
          // The new generation is saved before a byte is applied: if that fails, nothing changed.
          this.diverge();
          this.volume.writeSync(offset + done, rest);
        } catch (e) {
          throw this.diskFailure(e);
        }
        this.oos.markRange(offset + done, rest.length);
        break;
      }
      const chunk = data.subarray(done, done + n);
      try {
        this.volume.writeSync(offset + done, chunk);
      } catch (e) {
        this.channel.unreserve(this.channel.recordBytes(n));
        throw this.diskFailure(e);
      }
      last = this.channel.appendWrite(this.index, offset + done, chunk, flags);
      this.bytesMirrored += n;
      done += n;
    }
    await this.complete(last, this.mode === 'sync' || options.fua === true);
    if (options.fua) await this.flushHere();
  }

  private async flushHere(): Promise<void> {
    try {
      await this.volume.flush();
    } catch (e) {
      throw this.diskFailure(e);
    }
  }

  /**
   * After the image failed, every write and flush fails at once: a write
   * that completed here alone could break a group's cut, and one that
   * failed half way has already been reported.
   */
  private checkDisk(what: string): void {
    if (this.diskError) throw errors.IO(`Cannot ${what} volume '${this.name}': its image failed earlier (${this.diskError.message}); restart the primary, the secondary holds the last good copy`);
  }

  /**
   * The image under this volume failed (ENOSPC, EIO): the write or flush
   * that hit it fails with BM_ERR_IO, and the pair stops mirroring
   * (`suspended`, an event says why) and fails every later write until the
   * primary is restarted: the secondary then holds the last good copy.
   */
  private diskFailure(e: unknown): unknown {
    if ((e as { code?: string }).code !== 'BM_ERR_IO') return e;
    if (!this.diskError) {
      this.diskError = e as Error;
      this.epoch++;
      this.setState('suspended', 'BM_ERR_IO');
    }
    return e;
  }

  async writeZeroes(offset: number, length: number, options: WriteOptions = {}): Promise<void> {
    this.volume.checkZeroes(offset, length);
    if (length === 0) return;
    this.checkDisk('write zeroes to');
    this.writes++;
    const how = await this.admit(0);
    try {
      if (how === 'record') this.diverge();
      this.volume.writeZeroesSync(offset, length);
    } catch (e) {
      if (how === 'mirror') this.channel.unreserve(this.channel.recordBytes(0));
      throw this.diskFailure(e);
    }
    let seq = -1;
    if (how === 'record') this.oos.markRange(offset, length);
    else seq = this.channel.appendZeroes(this.index, offset, length);
    await this.complete(seq, this.mode === 'sync' || options.fua === true);
    if (options.fua) await this.flushHere();
  }

  /** Trimmed bytes read back as zeroes, on both sides. */
  trim(offset: number, length: number): Promise<void> {
    this.volume.checkZeroes(offset, length, 'trim');
    return this.writeZeroes(offset, length);
  }

  /** Makes every completed write durable here and, while mirroring, on the secondary. */
  async flush(): Promise<void> {
    this.checkDisk('flush');
    try {
      await this.volume.flush();
    } catch (e) {
      throw this.diskFailure(e);
    }
    if ((await this.admit(0)) === 'record') return;
    await this.complete(this.channel.appendFlush(), true);
  }

  /** `admit` without waiting: true when the record may be applied and appended now (its room is reserved); false: call `admit`. */
  private admitNow(payloadBytes: number): boolean {
    return !this.volume.closed && !this.gate.blocked && this.mirroring && this.channel.tryRoom(this.channel.recordBytes(payloadBytes));
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

  /**
   * The link failed: record what the secondary may lack and stop any resync.
   * The primary then sets the state. Records lost in flight do not start a
   * new generation: they belong to the moment of the failure, and a failover
   * discards them by design. Writes this primary completes alone afterwards do.
   */
  failed(lost: Array<{ offset: number; length: number }>): void {
    this.epoch++;
    for (const r of lost) this.oos.markRange(r.offset, r.length);
  }

  /** A handshake succeeded: the secondary's plan and state for this volume. */
  attach(welcome: VolumeWelcome): void {
    this.fullCompare = welcome.full;
    this.targetGen = welcome.gen;
    this.secondaryConsistent = welcome.consistent;
    if (welcome.full) this.oos.markAll();
  }

  /** The link is up and the group lets this pair mirror: compare and copy what is out of sync, then `duplex`. */
  startMirroring(reason: string): void {
    if (!this.channel.connected || this.diskError) return this.setState('suspended', this.diskError ? 'BM_ERR_IO' : reason);
    if (this.current === 'duplex' || (this.current === 'syncing' && this.resyncing)) return;
    const inSync = this.oos.size === 0 && this.targetGen === this.metadata.gen && this.secondaryConsistent;
    if (inSync && this.current !== 'syncing') return this.setState('duplex', reason);
    this.setState('syncing', reason);
    void this.resync();
  }

  /**
   * Online verify: compares the code of every segment with the secondary's
   * (only codes cross the network), marks the differing ones out of sync
   * and resyncs them. Only a `duplex` pair can be verified.
   */
  async verify(): Promise<VerifyResult> {
    if (this.current !== 'duplex') {
      throw errors.ROLE(`Cannot verify volume '${this.name}': its pair is ${this.current}, not duplex`);
    }
    const epoch = this.epoch;
    const comparison = new Comparison(this.resyncContext(epoch), 'verify', true, this.volume.segmentCount);
    this.progress = comparison.progress;
    const differing: number[] = [];
    this.emitResync('started', 'online verify');
    const complete = await comparison.run(() => true, (s) => differing.push(s));
    this.emitResync(complete ? 'finished' : 'stopped', `online verify: ${differing.length} segments differ`);
    for (const s of differing) this.oos.mark(s);
    if (differing.length && this.current === 'duplex') {
      this.setState('syncing', `online verify found ${differing.length} differing segments`);
      void this.resync();
    }
    return { volume: this.name, segments: comparison.progress.segmentsCompared, bytes: comparison.progress.bytesCompared, differing, complete };
  }

  /**
   * A write is about to complete without the secondary: the first one since
   * the sides agreed starts a new generation, saved before the write is
   * applied (so a failure to save it fails the write with nothing changed).
   */
  private diverge(): void {
    if (this.metadata.gen === this.metadata.oosBase) this.saveMeta(nextGeneration(this.metadata));
  }

  /** Saves `meta`, and only once it is durable takes it as current (a failed save changes nothing). */
  private saveMeta(meta: VolumeMetadata): void {
    if (this.dir) saveMetadata(this.dir, meta);
    this.metadata = meta;
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

  /** `reserve`, giving the room back when the pass it was for has been stopped meanwhile. */
  private async reserveFor(payloadBytes: number, epoch: number): Promise<boolean> {
    if (!(await this.reserve(payloadBytes))) return false;
    if (epoch === this.epoch) return true;
    this.channel.unreserve(this.channel.recordBytes(payloadBytes));
    return false;
  }

  private resyncContext(epoch: number) {
    return {
      volume: this.volume,
      oos: this.oos,
      channel: this.channel,
      index: this.index,
      alive: () => epoch === this.epoch && this.mirroring,
      reserve: (bytes: number) => this.reserve(bytes),
      reserveNow: (bytes: number) => this.mirroring && this.channel.tryRoom(this.channel.recordBytes(bytes)),
      rateBytesPerSec: this.resyncRateBytesPerSec,
    };
  }

  private emitResync(event: 'started' | 'progress' | 'finished' | 'stopped', reason: string): void {
    if (!this.progress) return;
    this.emit({ type: 'resync', volume: this.name, event, reason, progress: { ...this.progress }, at: new Date().toISOString() });
  }

  private async resync(): Promise<void> {
    if (this.resyncing) return;
    this.resyncing = true;
    const epoch = this.epoch;
    const gen = this.metadata.gen;
    const candidates = this.oos.copy();
    const comparison = new Comparison(this.resyncContext(epoch), 'resync', this.fullCompare, candidates.size);
    this.progress = comparison.progress;
    const ticker = setInterval(() => this.emitResync('progress', 'resync'), 1000);
    (ticker as { unref?: () => void }).unref?.();
    let done = false;
    try {
      // Begin and end records carry generation ids: room as for a small payload.
      if (!(await this.reserveFor(Channel.syncRecordPayloadBytes, epoch))) return;
      this.channel.appendSyncBegin(this.index, gen);
      this.emitResync('started', this.fullCompare ? 'every code is compared' : 'the out-of-sync segments are compared');
      if (!(await comparison.run((s) => candidates.has(s)))) return;
      if (!(await this.reserveFor(Channel.syncRecordPayloadBytes, epoch))) return;
      const end = this.channel.appendSyncEnd(this.index, gen, this.metadata.history);
      if (!(await this.channel.waitAck(end)) || epoch !== this.epoch) return;
      // The secondary holds every candidate, consistent and durable: only now are the bits cleared.
      for (let s = candidates.next(0); s >= 0; s = candidates.next(s + 1)) this.oos.clear(s);
      this.targetGen = gen;
      this.fullCompare = false;
      this.oosTrusted = true;
      if (this.metadata.oosBase !== gen) this.saveMeta({ ...this.metadata, oosBase: gen });
      done = true;
      this.emitResync('finished', `${comparison.progress.segmentsDiffering} of ${comparison.progress.segmentsCompared} segments differed and were copied`);
      if (this.current === 'syncing' && this.oos.size === 0) this.setState('duplex', 'resync done');
    } finally {
      clearInterval(ticker);
      this.resyncing = false;
      if (!done) this.emitResync('stopped', 'the link failed or the group froze; the next resync compares again');
      // Marks that arrived while this pass ran get a new pass. Only while the link is up (a failure
      // the worker published but this thread has not handled yet restarts it on reconnect instead),
      // and from a new task: a pass that stops at once must not spin in microtasks and starve the
      // very message that would stop it.
      if (epoch === this.epoch && this.current === 'syncing' && this.mirroring && (this.oos.size > 0 || this.targetGen !== this.metadata.gen)) {
        setTimeout(() => {
          if (epoch === this.epoch && this.current === 'syncing') void this.resync();
        }, 0);
      }
    }
  }
}
