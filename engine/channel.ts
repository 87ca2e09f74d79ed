/**
 * The main-thread side of a channel: appends records to the journal, waits
 * for their acknowledgements, and turns a failure published by the channel
 * worker into the list of records that may be missing on the secondary.
 *
 * Lifecycle: connecting → connected → failed → (backoff) → connecting ... →
 * stopped. The worker detects failures; this side reacts on the main thread:
 * it reads every unacknowledged record back out of the ring (they are what
 * the out-of-sync map must now cover), empties the ring, fails the waiters,
 * tells its owner, and asks the worker to connect again after a backoff that
 * doubles from `reconnectDelayMinMs` to `reconnectDelayMaxMs`.
 *
 * Room in the ring is granted first come, first served: a caller that must
 * wait holds up the callers behind it, so records enter the journal in the
 * order their writes were issued.
 */
import { Unpackr } from 'msgpackr';
import { ChannelState, type ChannelConfig } from './channel-config.ts';
import { errors, fromPlain, type BlockmirrorError } from './errors.ts';
import { Fifo } from './fifo.ts';
import { alignedFrameBytes, FrameType, WriteFlag, headerPackr, payloadBytesMaxDefault, prefixBytes, writeFrame } from './frame.ts';
import { Control, defaultJournalBytes, Journal, paddingMagic } from './journal.ts';
import type { VolumeHello, VolumeWelcome } from './secondary-session.ts';
import { spawnWorker, type WorkerHandle } from '../workers/spawn.ts';

export interface ChannelOptions {
  url: string;
  secret?: Uint8Array;
  mode: 'sync' | 'async';
  /** The hello's volume list, asked for at every connect (generation ids change between connects). */
  hello: () => VolumeHello[];
  /** Journal ring size in bytes (power of two, 1 MiB to 1 GiB). Default 64 MiB: the most an async secondary may lag. */
  journalBytes?: number;
  /** Largest payload of one record; larger writes are split. Default 4 MiB. */
  payloadBytesMax?: number;
  /** A record unacknowledged this long fails the channel. Default 5000. */
  ackTimeoutMs?: number;
  /** Heartbeat period; `heartbeatsMissedMax` silent periods fail the channel. Default 1000 and 3. */
  heartbeatMs?: number;
  heartbeatsMissedMax?: number;
  connectTimeoutMs?: number;
  reconnectDelayMinMs?: number;
  reconnectDelayMaxMs?: number;
}

/** A record read back from the ring after a failure. */
export interface LostRecord {
  type: number;
  volume: number;
  offset: number;
  length: number;
}

export interface ChannelEvents {
  /** The handshake succeeded; `welcome[i]` is the secondary's answer for volume i (its resync plan). */
  onConnected(welcome: VolumeWelcome[]): void;
  onFailed(error: BlockmirrorError, lost: LostRecord[]): void;
}

const ringUnpackr = new Unpackr({ useRecords: false, moreTypes: false });

export class Channel {
  readonly url: string;
  readonly journal: Journal;
  readonly payloadBytesMax: number;
  /** Sequence number the next record will get. */
  nextSeq = 1;
  /** Bytes of every record queued for the secondary since the start, frame prefix and header included. */
  sentRecordBytes = 0;
  lastError: BlockmirrorError | undefined;
  private readonly worker: WorkerHandle;
  private readonly events: ChannelEvents;
  private readonly options: ChannelOptions;
  private readonly ackWaiters = new Fifo<{ seq: number; resolve: (acked: boolean) => void }>();
  private readonly roomWaiters = new Fifo<{ bytes: number; resolve: (ok: boolean) => void }>();
  /** Callers of `failureHandled` waiting for the main thread to handle a failure the worker published. */
  private failureWaiters: Array<() => void> = [];
  /** Codes requests waiting for their reply, by tag. Failed (undefined) when the link fails. */
  private readonly codesWaiters = new Map<number, (bytes: Uint8Array | undefined) => void>();
  private nextTag = 1;
  /** Ring bytes granted by `room` and not yet appended (twice each record's size). */
  private reserved = 0;
  private handledState: number = ChannelState.connecting;
  private reconnectDelayMs: number;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  /** Resolves Channel.start once the worker has taken the journal. */
  private onStarted: (() => void) | undefined;
  private watching = false;
  private stopped = false;

  private constructor(options: ChannelOptions, worker: WorkerHandle, journal: Journal, events: ChannelEvents) {
    this.url = options.url;
    this.options = options;
    this.worker = worker;
    this.journal = journal;
    this.events = events;
    this.payloadBytesMax = options.payloadBytesMax ?? payloadBytesMaxDefault;
    this.reconnectDelayMs = options.reconnectDelayMinMs ?? 100;
  }

  static async start(options: ChannelOptions, events: ChannelEvents): Promise<Channel> {
    const journal = Journal.create(options.journalBytes ?? defaultJournalBytes);
    const payloadBytesMax = options.payloadBytesMax ?? payloadBytesMaxDefault;
    if (alignedFrameBytes(4096, payloadBytesMax) > journal.frameBytesMax) {
      throw errors.INVALID_ARGUMENT(`Cannot use a ${payloadBytesMax}-byte record payload with a ${journal.capacity}-byte journal: a record may fill at most half of it`);
    }
    const worker = await spawnWorker('channel');
    const channel = new Channel(options, worker, journal, events);
    let startFailed: (e: Error) => void = () => {};
    const started = new Promise<void>((resolve, reject) => {
      channel.onStarted = resolve;
      startFailed = reject;
    });
    worker.onMessage((m) => channel.onWorkerMessage(m));
    worker.onError((e) => {
      startFailed(errors.WORKER(`The channel worker for ${options.url} died while starting: ${e.message}`));
      channel.onWorkerDied(e);
    });
    const config: ChannelConfig = {
      url: options.url,
      journal: journal.toShared(),
      secret: options.secret,
      mode: options.mode,
      payloadBytesMax,
      connectTimeoutMs: options.connectTimeoutMs ?? 3000,
      ackTimeoutMs: options.ackTimeoutMs ?? 5000,
      heartbeatMs: options.heartbeatMs ?? 1000,
      heartbeatsMissedMax: options.heartbeatsMissedMax ?? 3,
    };
    worker.post({ type: 'start', config });
    // The worker touches every page of the ring first (workers/channel.ts says why).
    await started;
    channel.watch();
    return channel;
  }

  /** Makes the first connection (once the owner can answer `hello`); later ones follow failures by themselves. */
  connect(): void {
    if (this.stopped) return;
    this.worker.post({ type: 'connect', firstSeq: this.nextSeq, volumes: this.options.hello() });
  }

  get state(): number {
    return Atomics.load(this.journal.control, Control.state);
  }

  get connected(): boolean {
    return this.state === ChannelState.connected;
  }

  get ackedSeq(): number {
    return Atomics.load(this.journal.control, Control.ackedSeq) >>> 0;
  }

  /** Bytes of the journal holding unacknowledged records. */
  get journalBytesUsed(): number {
    return this.journal.used();
  }

  /**
   * Waits until `bytes` of ring room can be had, in turn. Resolves true when
   * the caller may append now (synchronously, before any other await), false
   * when the channel failed meanwhile.
   */
  room(bytes: number): Promise<boolean> | boolean {
    if (!this.connected) return false;
    if (this.roomWaiters.length === 0 && this.fits(bytes)) {
      this.reserved += 2 * bytes;
      return true;
    }
    return new Promise((resolve) => this.roomWaiters.push({ bytes, resolve }));
  }

  /** Room for `bytes` if it can be granted at once (nobody waiting, it fits); never queues. */
  tryRoom(bytes: number): boolean {
    if (!this.connected || this.roomWaiters.length > 0 || !this.fits(bytes)) return false;
    this.reserved += 2 * bytes;
    return true;
  }

  /** Gives back room granted for a record that will not be appended after all. */
  unreserve(bytes: number): void {
    this.reserved = Math.max(0, this.reserved - 2 * bytes);
  }

  /** Appends a write record; the caller has been granted room. Returns its sequence number. */
  appendWrite(volume: number, offset: number, payload: Uint8Array, flags: number): number {
    return this.append([FrameType.write, 0, volume, offset, flags], payload);
  }

  appendZeroes(volume: number, offset: number, length: number): number {
    return this.append([FrameType.zeroes, 0, volume, offset, length]);
  }

  appendFlush(): number {
    return this.append([FrameType.flush, 0]);
  }

  /** Room a begin or end record needs (they carry generation ids): ask `room` for this payload size. */
  static readonly syncRecordPayloadBytes = 256;

  appendSyncBegin(volume: number, gen: string): number {
    return this.append([FrameType.syncBegin, 0, volume, gen], undefined, Channel.syncRecordPayloadBytes);
  }

  appendSyncEnd(volume: number, gen: string, history: string[]): number {
    return this.append([FrameType.syncEnd, 0, volume, gen, history], undefined, Channel.syncRecordPayloadBytes);
  }

  /**
   * Appends a request for the codes of segments first..first+count of
   * `volume`; the caller has been granted room. `reply` resolves with the
   * secondary's codes (then one valid byte per segment), or undefined if
   * the link fails first.
   */
  appendCodesRequest(volume: number, first: number, count: number): { seq: number; reply: Promise<Uint8Array | undefined> } {
    const tag = this.nextTag;
    this.nextTag = (this.nextTag + 1) >>> 0 || 1;
    const reply = new Promise<Uint8Array | undefined>((resolve) => this.codesWaiters.set(tag, resolve));
    return { seq: this.append([FrameType.codesRequest, 0, volume, first, count, tag]), reply };
  }

  /** Resolves true once the secondary acknowledged `seq`, false if the channel failed first. */
  waitAck(seq: number): Promise<boolean> | boolean {
    if (((this.ackedSeq - seq) | 0) >= 0 && this.ackWaiters.length === 0) return true;
    if (!this.connected) return false;
    return new Promise((resolve) => this.ackWaiters.push({ seq, resolve }));
  }

  /**
   * Resolves once a failure the worker has published (shared state
   * `failed`) has been handled here: its unacknowledged records read back
   * and reported, its waiters failed. At once when there is none pending.
   */
  failureHandled(): Promise<void> {
    if (this.stopped || this.state !== ChannelState.failed || this.handledState === ChannelState.failed) return Promise.resolve();
    return new Promise((resolve) => this.failureWaiters.push(resolve));
  }

  /** Bytes a record with this payload takes in the ring. */
  recordBytes(payloadBytes: number): number {
    return alignedFrameBytes(32, payloadBytes);
  }

  /**
   * Stops the worker and hands back every record still unacknowledged (the
   * owner must record them as out of sync before it saves anything).
   */
  async stop(): Promise<LostRecord[]> {
    if (this.stopped) return [];
    this.stopped = true;
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    const stopped = new Promise<void>((resolve) => {
      this.worker.onMessage((m) => m.type === 'stopped' && resolve());
      setTimeout(resolve, 1000);
    });
    this.worker.post({ type: 'stop' });
    await stopped;
    await this.worker.terminate();
    // A failure already handled emptied the ring; otherwise what is left was never acknowledged.
    const lost = this.handledState === ChannelState.failed ? [] : this.unacknowledged();
    this.journal.reset();
    this.failWaiters();
    for (const resolve of this.failureWaiters.splice(0)) resolve();
    return lost;
  }

  /**
   * Room is granted ahead of the append (the caller may resume a microtask
   * later), so grants are counted in `reserved` until their record is
   * appended. Each grant counts twice its size: a frame may need padding to
   * the end of the ring first.
   */
  private fits(bytes: number): boolean {
    return this.journal.capacity - this.journal.used() - this.reserved >= bytes * 2;
  }

  private append(header: unknown[], payload?: Uint8Array, reservedPayloadBytes = payload ? payload.length : 0): number {
    const seq = this.nextSeq;
    header[1] = seq;
    const packed = headerPackr.pack(header) as Uint8Array;
    const bytes = alignedFrameBytes(packed.length, payload ? payload.length : 0);
    this.unreserve(this.recordBytes(reservedPayloadBytes));
    const at = this.journal.reserve(bytes);
    if (at < 0) throw errors.ASSERTION(`Invariant broken: journal reserve of ${bytes} bytes failed after room was granted`);
    writeFrame(this.journal.ring, this.journal.ringView, at, packed, payload);
    this.journal.commit(bytes);
    this.sentRecordBytes += bytes;
    this.nextSeq = (seq + 1) >>> 0;
    return seq;
  }

  /** One waitAsync at a time on the control word that the worker bumps on every ack and state change. */
  private watch(): void {
    if (this.watching || this.stopped) return;
    this.watching = true;
    const c = this.journal.control;
    const value = Atomics.load(c, Control.changes);
    this.react();
    const result = Atomics.waitAsync(c, Control.changes, value);
    const next = () => {
      this.watching = false;
      this.react();
      this.watch();
    };
    if (result.async) result.value.then(next);
    else queueMicrotask(next);
  }

  private react(): void {
    const state = this.state;
    const acked = this.ackedSeq;
    while (this.ackWaiters.length && ((acked - this.ackWaiters.peek()!.seq) | 0) >= 0) this.ackWaiters.shift()!.resolve(true);
    while (this.roomWaiters.length && this.connected && this.fits(this.roomWaiters.peek()!.bytes)) {
      const waiter = this.roomWaiters.shift()!;
      this.reserved += 2 * waiter.bytes;
      waiter.resolve(true);
    }
    // A failure is handled when the worker's message with its error arrives
    // (onWorkerMessage); the state word only stops new grants meanwhile.
    if (state === ChannelState.connected && this.handledState !== ChannelState.connected) {
      this.handledState = state;
      this.reconnectDelayMs = this.options.reconnectDelayMinMs ?? 100;
    }
  }

  private onWorkerMessage(m: { type: string; error?: { code: string; message: string }; welcome?: VolumeWelcome[]; tag?: number; bytes?: Uint8Array }): void {
    if (m.type === 'failed') {
      this.lastError = fromPlain(m.error!);
      this.react();
      this.handleFailure();
    } else if (m.type === 'started') {
      this.onStarted?.();
    } else if (m.type === 'connected') {
      this.react();
      this.events.onConnected(m.welcome ?? []);
    } else if (m.type === 'codes') {
      const waiter = this.codesWaiters.get(m.tag!);
      this.codesWaiters.delete(m.tag!);
      waiter?.(m.bytes);
    }
  }

  private onWorkerDied(e: Error): void {
    if (this.stopped) return;
    this.lastError = errors.WORKER(`The channel worker for ${this.url} died: ${e.message}`);
    Atomics.store(this.journal.control, Control.state, ChannelState.failed);
    this.react();
    this.handleFailure();
  }

  /** Reads back every unacknowledged record, empties the ring, and reports them. */
  private handleFailure(): void {
    if (this.handledState === ChannelState.failed) return;
    this.handledState = ChannelState.failed;
    const lost = this.unacknowledged();
    this.journal.reset();
    this.reserved = 0;
    this.failWaiters();
    this.lastError ??= errors.LINK_LOST(`Lost the link to ${this.url}`);
    this.events.onFailed(this.lastError, lost);
    for (const resolve of this.failureWaiters.splice(0)) resolve();
    if (this.stopped) return;
    const delay = this.reconnectDelayMs;
    this.reconnectDelayMs = Math.min(this.reconnectDelayMs * 2, this.options.reconnectDelayMaxMs ?? 5000);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      if (this.stopped) return;
      this.handledState = ChannelState.connecting;
      this.worker.post({ type: 'connect', firstSeq: this.nextSeq, volumes: this.options.hello() });
    }, delay);
  }

  private failWaiters(): void {
    while (this.ackWaiters.length) this.ackWaiters.shift()!.resolve(false);
    while (this.roomWaiters.length) this.roomWaiters.shift()!.resolve(false);
    for (const resolve of this.codesWaiters.values()) resolve(undefined);
    this.codesWaiters.clear();
  }

  private unacknowledged(): LostRecord[] {
    const { ring, ringView: view, capacity } = this.journal;
    const mask = capacity - 1;
    const c = this.journal.control;
    const head = Atomics.load(c, Control.head);
    const lost: LostRecord[] = [];
    for (let pos = Atomics.load(c, Control.tail); pos !== head; ) {
      const at = pos & mask;
      if (view.getUint32(at, true) === paddingMagic) {
        pos = (pos + capacity - at) | 0;
        continue;
      }
      const h = view.getUint32(at + 4, true);
      const p = view.getUint32(at + 8, true);
      const header = ringUnpackr.unpack(ring.subarray(at + prefixBytes, at + prefixBytes + h)) as number[];
      if (header[0] === FrameType.write && ((header[4] ?? 0) & WriteFlag.resync) === 0) lost.push({ type: header[0], volume: header[2]!, offset: header[3]!, length: p });
      else if (header[0] === FrameType.zeroes) lost.push({ type: header[0], volume: header[2]!, offset: header[3]!, length: header[4]! });
      pos = (pos + alignedFrameBytes(h, p)) | 0;
    }
    return lost;
  }
}
