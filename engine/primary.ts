/**
 * The primary node: its volumes, one channel to the secondary, a pair per
 * volume, and its membership in a consistency group (member.ts), which every
 * write passes first. It wires storage to the mirror (the volume never sees
 * the network; the channel never touches a file).
 *
 * Events (pair state changes, link failures, group events) go to every
 * listener given to `onEvent`, as plain objects with an ISO timestamp.
 */
import fs from 'node:fs';
import path from 'node:path';
import { Channel, type ChannelOptions, type LostRecord } from './channel.ts';
import { errors, type BlockmirrorError } from './errors.ts';
import { Pair, type PairEvent, type PairState } from './pair.ts';
import { Volume } from './volume.ts';
import type { CodeAlgorithm } from './codes.ts';
import type { HashPool } from './hash-pool.ts';
import { parseEndpoint, type Link } from './link.ts';
import { freshMetadata, loadMetadata, saveMetadata, type VolumeMetadata } from './metadata.ts';
import type { VolumeWelcome } from './secondary-session.ts';
import { GroupMember, type GroupEvent } from './member.ts';
import { memoryLinkPair } from './memory-link.ts';
import { serveControl, type OperatorVerb } from './control-server.ts';

export interface PrimaryVolumeOptions {
  name: string;
  size: number;
  blockSize?: number;
  segmentSize?: number;
  code?: CodeAlgorithm;
}

export interface PrimaryOptions extends Omit<ChannelOptions, 'url' | 'hello' | 'mode'> {
  /** Directory of the images; without it the volumes live in memory. */
  dir?: string;
  volumes: PrimaryVolumeOptions[];
  /** tcp:// or ws:// URL of the secondary. */
  mirror: string;
  /** `sync` (default): a write completes when the secondary has it. `async`: at once. */
  mode?: 'sync' | 'async';
  pool?: HashPool | 'shared' | 'none';
  /** Name of this primary in group events and status. Default: its volume names joined with '+'. */
  name?: string;
  /** Largest bytes per second a resync copies, per volume. Default: unpaced. */
  resyncRateBytesPerSec?: number;
  /**
   * False: open the volumes and serve writes (recorded as out of sync, the
   * pairs `suspended`) without contacting the secondary until `connect()`
   * is called. Default true: connect at once.
   */
  connect?: boolean;
}

export type PrimaryEvent = PairEvent | GroupEvent | { type: 'link'; status: 'connected' | 'failed'; url: string; code?: string; message?: string; lostRecords?: number; at: string };

export interface VolumeStatus {
  name: string;
  size: number;
  state: PairState;
  outOfSyncBytes: number;
  writes: number;
  bytesMirrored: number;
  /** Bytes mirrored per second over the last second. */
  mirrorBytesPerSec: number;
  /** False while a resync is copying into the secondary: its image is then not a point-in-time copy. */
  consistent: boolean;
  /** This volume's generation id (metadata.ts). */
  gen: string;
  /** The running or last resync or verify: bytes done and total, rate, ETA. */
  resync?: import('./resync.ts').ResyncProgress;
}

export interface PrimaryStatus {
  role: 'primary';
  mirror: string;
  mode: 'sync' | 'async';
  connected: boolean;
  journalBytesUsed: number;
  journalBytes: number;
  ackedSeq: number;
  nextSeq: number;
  /** Bytes of every record queued for the secondary since the start, frame prefix and header included. */
  recordBytes: number;
  lastError?: { code: string; message: string };
  /** The consistency group, once a controller has joined this primary. */
  group?: { name: string; phase: string; policy: string; controllerConnected: boolean; epoch: number };
  volumes: VolumeStatus[];
}

export class Primary {
  readonly name: string;
  readonly pairs: Pair[];
  readonly mode: 'sync' | 'async';
  readonly mirror: string;
  readonly member: GroupMember;
  private readonly channel: Channel;
  private readonly listeners: Array<(e: PrimaryEvent) => void> = [];
  private readonly fresh: boolean[];
  private contacts = 0;
  private isClosed = false;
  private connecting = false;
  /** Callers of `waitDuplex`: `check` runs on every state event (true: done), `fail` on close. */
  private stateWaiters: Array<{ check: () => boolean; fail: (e: Error) => void }> = [];
  /** Throughput: bytes mirrored per pair at the last sample, and the rate since. */
  private readonly sampled: number[];
  private readonly rates: number[];
  private readonly sampler: ReturnType<typeof setInterval>;

  private constructor(name: string, mirror: string, mode: 'sync' | 'async', channel: Channel, member: GroupMember, pairs: Pair[], fresh: boolean[]) {
    this.name = name;
    this.mirror = mirror;
    this.mode = mode;
    this.channel = channel;
    this.member = member;
    this.pairs = pairs;
    this.fresh = fresh;
    this.sampled = pairs.map(() => 0);
    this.rates = pairs.map(() => 0);
    this.sampler = setInterval(() => {
      pairs.forEach((p, i) => {
        this.rates[i] = p.bytesMirrored - this.sampled[i]!;
        this.sampled[i] = p.bytesMirrored;
      });
    }, 1000);
    (this.sampler as { unref?: () => void }).unref?.();
  }

  static async start(options: PrimaryOptions): Promise<Primary> {
    if (!options || !Array.isArray(options.volumes) || options.volumes.length === 0) {
      throw errors.INVALID_ARGUMENT('Cannot start a primary: give at least one volume');
    }
    parseEndpoint(options.mirror, 'mirror URL');
    if (options.name !== undefined && (typeof options.name !== 'string' || options.name.length === 0 || options.name.length > 256)) {
      throw errors.INVALID_ARGUMENT(`Cannot start a primary named ${JSON.stringify(options.name)}: a name is 1 to 256 characters`);
    }
    const mode = options.mode ?? 'sync';
    if (mode !== 'sync' && mode !== 'async') throw errors.INVALID_ARGUMENT(`Cannot use mode ${JSON.stringify(mode)}: choose sync or async`);
    const names = new Set<string>();
    for (const v of options.volumes) {
      if (names.has(v.name)) throw errors.INVALID_ARGUMENT(`Cannot start a primary: volume '${v.name}' is listed twice`);
      names.add(v.name);
    }
    if (options.resyncRateBytesPerSec !== undefined && !(options.resyncRateBytesPerSec > 0)) {
      throw errors.INVALID_ARGUMENT(`Cannot use a resync rate of ${String(options.resyncRateBytesPerSec)} bytes per second: give a positive number`);
    }
    if (options.dir) fs.mkdirSync(options.dir, { recursive: true });
    const volumes: Volume[] = [];
    const fresh: boolean[] = [];
    const metas: VolumeMetadata[] = [];
    try {
      for (const v of options.volumes) {
        const exists = options.dir !== undefined && fs.existsSync(path.join(options.dir, `${v.name}.img`));
        const common = { ...v, dir: options.dir, pool: options.pool };
        const known = exists ? loadMetadata(options.dir!, v.name) : undefined;
        if (!exists && options.dir) {
          // A new image: metadata or saved state left beside it belongs to an image that is gone.
          for (const ext of ['meta', 'undo', 'oos', 'codes']) fs.rmSync(path.join(options.dir, `${v.name}.${ext}`), { force: true });
        }
        const volume = exists ? await Volume.open({ ...common, dir: options.dir!, trustSavedCodes: known?.clean === true && known.role === 'primary' }) : await Volume.create(common);
        volumes.push(volume);
        fresh.push(!exists);
        metas.push(primaryMetadata(options.dir, volume));
      }
    } catch (e) {
      for (const v of volumes) await v.close();
      throw e;
    }
    let primary: Primary | undefined;
    const early: Array<() => void> = [];
    const pairs: Pair[] = [];
    const channel = await Channel.start(
      {
        ...options,
        url: options.mirror,
        mode,
        hello: () => pairs.map((p) => p.hello()),
      },
      {
        onConnected: (welcome) => (primary ? primary.onConnected(welcome) : early.push(() => primary!.onConnected(welcome))),
        onFailed: (error, lost) => (primary ? primary.onFailed(error, lost) : early.push(() => primary!.onFailed(error, lost))),
      },
    );
    const name = options.name ?? (volumes.length <= 4 ? volumes.map((v) => v.name).join('+') : `${volumes[0]!.name}+${volumes.length - 1}-more`);
    const member = new GroupMember({
      name,
      mode,
      linkUp: () => channel.connected,
      freezePairs: (reason) => pairs.forEach((p) => p.setState('frozen', reason)),
      releasePairs: (reason) => pairs.forEach((p) => p.setState('suspended', reason)),
      resumePairs: (reason) => pairs.forEach((p) => p.startMirroring(reason)),
      volumes: () => pairs.map((p) => ({ name: p.name, state: p.state, outOfSyncBytes: p.oos.bytes, consistent: p.consistent })),
      emit: (e) => primary?.emit(e),
    });
    const onPairEvent = (e: PairEvent) => {
      primary!.emit(e);
      member.onPairState();
    };
    volumes.forEach((volume, index) =>
      pairs.push(
        new Pair({
          volume,
          index,
          channel,
          gate: member,
          mode,
          emit: onPairEvent,
          metadata: metas[index]!,
          dir: options.dir,
          created: fresh[index]!,
          resyncRateBytesPerSec: options.resyncRateBytesPerSec,
        }),
      ),
    );
    // Serving from now on: a crash must not leave the saved state trusted.
    try {
      for (const p of pairs) p.startServing();
    } catch (e) {
      await channel.stop();
      for (const v of volumes) await v.close().catch(() => {});
      throw e;
    }
    primary = new Primary(name, options.mirror, mode, channel, member, pairs, fresh);
    for (const f of early) f();
    if (options.connect !== false) primary.connect();
    return primary;
  }

  /** Starts mirroring, for a primary started with `connect: false`; later calls do nothing. */
  connect(): void {
    if (this.isClosed) throw errors.CLOSED(`Cannot connect primary ${this.name}: it is closed`);
    if (this.connecting) return;
    this.connecting = true;
    this.channel.connect();
  }

  /** The pair of volume `name`: read, write, writeZeroes, trim, flush. */
  volume(name: string): Pair {
    const pair = this.pairs.find((p) => p.name === name);
    if (!pair) throw errors.INVALID_ARGUMENT(`Cannot find volume '${name}' on this primary`);
    return pair;
  }

  onEvent(listener: (event: PrimaryEvent) => void): void {
    this.listeners.push(listener);
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /**
   * One end of an in-process control link to this primary (the other end is
   * served here, trusted): how a `Controller` in the same process joins it.
   */
  controlLink(): Link {
    if (this.isClosed) throw errors.CLOSED(`Cannot open a control link to primary ${this.name}: it is closed`);
    const [controllerEnd, primaryEnd] = memoryLinkPair(['controller', this.name]);
    serveControl(primaryEnd, this.controlEndpoint(), { trusted: true });
    return controllerEnd;
  }

  /** What this primary's control endpoint (`--control URL`) serves. */
  controlEndpoint(secret?: Uint8Array): import('./control-server.ts').ControlEndpoint {
    return {
      role: 'primary',
      secret,
      member: this.member,
      status: () => this.status(),
      command: async (verb: OperatorVerb, fields: Record<string, unknown>) => {
        if (verb === 'verify') {
          const volume = typeof fields.volume === 'string' ? fields.volume : undefined;
          const results = await this.verify(volume);
          return results
            .map((r) => {
              const list = r.differing.slice(0, 20).join(', ') + (r.differing.length > 20 ? ', ...' : '');
              return `volume '${r.volume}': ${r.segments} segments compared${r.complete ? '' : ' (stopped early: the link failed)'}, ${r.differing.length} differ${r.differing.length ? ` (segments ${list}), marked out of sync and resyncing` : ''}`;
            })
            .join('; ');
        }
        if (verb === 'freeze') {
          this.member.freezeByOperator();
          return `primary ${this.name} is ${this.member.phase}${this.member.controllerConnected ? '; its controller freezes the group' : ''}`;
        }
        this.member.runByOperator();
        return `primary ${this.name} is ${this.member.phase}`;
      },
    };
  }

  /** Resolves when every pair is `duplex` (or rejects with BM_ERR_TIMEOUT). */
  waitDuplex(timeoutMs = 30_000): Promise<void> {
    const all = () => this.pairs.every((p) => p.state === 'duplex');
    if (all()) return Promise.resolve();
    if (this.isClosed) return Promise.reject(errors.CLOSED(`Cannot reach duplex: primary ${this.name} is closed`));
    return new Promise((resolve, reject) => {
      let done = false;
      const timer = setTimeout(() => {
        done = true;
        reject(errors.TIMEOUT(`Cannot reach duplex within ${timeoutMs} ms: ${this.pairs.map((p) => `${p.name} ${p.state}`).join(', ')}`));
      }, timeoutMs);
      // Every state change is an event: check on each, not on a poll.
      this.stateWaiters.push({
        check: () => {
          if (done) return true;
          if (!all()) return false;
          done = true;
          clearTimeout(timer);
          resolve();
          return true;
        },
        fail: (e) => {
          if (done) return;
          done = true;
          clearTimeout(timer);
          reject(e);
        },
      });
    });
  }

  /**
   * Online verify of every duplex pair (or of volume `name`): only codes
   * cross the network; differing segments are marked out of sync and
   * resynced. Resolves with what each pair found.
   */
  async verify(name?: string): Promise<import('./pair.ts').VerifyResult[]> {
    const pairs = name === undefined ? this.pairs.filter((p) => p.state === 'duplex') : [this.volume(name)];
    const results = [];
    for (const p of pairs) results.push(await p.verify());
    return results;
  }

  /**
   * Resolves once the secondary has acknowledged every record queued so far
   * (true), or false if the link failed first. Unlike `flush()` it asks for
   * no durability: it is the point where async mode has caught up.
   */
  async drain(): Promise<boolean> {
    const last = (this.channel.nextSeq - 1) >>> 0;
    return this.channel.waitAck(last);
  }

  status(): PrimaryStatus {
    const e = this.channel.lastError;
    const g = this.member.settings;
    return {
      role: 'primary',
      mirror: this.mirror,
      mode: this.mode,
      connected: this.channel.connected,
      journalBytesUsed: this.channel.journalBytesUsed,
      journalBytes: this.channel.journal.capacity,
      ackedSeq: this.channel.ackedSeq,
      nextSeq: this.channel.nextSeq,
      recordBytes: this.channel.sentRecordBytes,
      lastError: e ? { code: e.code, message: e.message } : undefined,
      group: g ? { name: g.group, phase: this.member.phase, policy: g.policy, controllerConnected: this.member.controllerConnected, epoch: this.member.epoch } : undefined,
      volumes: this.pairs.map((p) => ({
        name: p.name,
        size: p.size,
        state: p.state,
        outOfSyncBytes: p.oos.bytes,
        writes: p.writes,
        bytesMirrored: p.bytesMirrored,
        mirrorBytesPerSec: this.rates[this.pairs.indexOf(p)]!,
        consistent: p.consistent,
        gen: p.meta.gen,
        resync: p.progress ? { ...p.progress } : undefined,
      })),
    };
  }

  /**
   * Stops cleanly: waits (up to `drainTimeoutMs`) for the secondary to
   * acknowledge everything queued, stops the channel, flushes and closes
   * every volume.
   */
  async close(options: { drainTimeoutMs?: number } = {}): Promise<void> {
    if (this.isClosed) return;
    this.isClosed = true;
    clearInterval(this.sampler);
    for (const w of this.stateWaiters.splice(0)) w.fail(errors.CLOSED(`Cannot reach duplex: primary ${this.name} was closed`));
    this.member.close();
    const deadline = performance.now() + (options.drainTimeoutMs ?? 5000);
    while (this.channel.connected && this.channel.journalBytesUsed > 0 && performance.now() < deadline) {
      await new Promise((r) => setTimeout(r, 2));
    }
    const lost = await this.channel.stop();
    const byVolume = this.pairs.map(() => [] as LostRecord[]);
    for (const r of lost) byVolume[r.volume]?.push(r);
    this.pairs.forEach((p, i) => p.failed(byVolume[i]!));
    // A clean stop: the map, the codes and the metadata are saved, so the next start copies nothing.
    // A volume whose image fails to close is left not clean (its next start compares every code).
    let failure: unknown;
    for (const p of this.pairs) {
      try {
        await p.stop();
      } catch (e) {
        failure ??= e;
      }
    }
    if (failure) throw failure;
  }

  private emit(event: PrimaryEvent): void {
    for (const l of this.listeners) l(event);
    if (event.type === 'state' && this.stateWaiters.length) this.stateWaiters = this.stateWaiters.filter((w) => !w.check());
  }

  private onConnected(welcome: VolumeWelcome[]): void {
    this.contacts++;
    this.emit({ type: 'link', status: 'connected', url: this.mirror, at: new Date().toISOString() });
    this.pairs.forEach((p, i) => p.attach(welcome[i]!));
    // The group decides whether the pairs resync now (standalone or mirroring) or wait for RESUME.
    this.member.onLinkUp();
  }

  private onFailed(error: BlockmirrorError, lost: LostRecord[]): void {
    this.emit({ type: 'link', status: 'failed', url: this.mirror, code: error.code, message: error.message, lostRecords: lost.length, at: new Date().toISOString() });
    const byVolume = this.pairs.map(() => [] as LostRecord[]);
    for (const r of lost) byVolume[r.volume]?.push(r);
    // Record what the secondary may lack first, then let the group decide: suspended, or frozen with writes held.
    this.pairs.forEach((p, i) => p.failed(byVolume[i]!));
    this.member.onLinkFailure(error);
  }
}

/**
 * The metadata of a primary's volume: loaded and checked, or made for a
 * volume (or an image) that has none. A secondary's copy is refused: it
 * becomes a primary only by promotion.
 */
function primaryMetadata(dir: string | undefined, volume: Volume): VolumeMetadata {
  const geometry = { name: volume.name, size: volume.size, blockSize: volume.blockSize, segmentSize: volume.segmentSize, code: volume.algorithm };
  const loaded = dir ? loadMetadata(dir, volume.name) : undefined;
  if (!loaded) return freshMetadata(geometry, 'primary');
  if (loaded.size !== volume.size || loaded.blockSize !== volume.blockSize || loaded.segmentSize !== volume.segmentSize || loaded.code !== volume.algorithm) {
    throw errors.METADATA(`Cannot trust the metadata of volume '${volume.name}': it describes ${loaded.size} bytes, blocks of ${loaded.blockSize}, segments of ${loaded.segmentSize}, code ${loaded.code}`);
  }
  if (loaded.role !== 'primary') {
    throw errors.ROLE(`Cannot serve volume '${volume.name}' as a primary: ${dir} holds a secondary's copy of it; promote it first (blockmirror promote --dir ${dir})`);
  }
  if (!loaded.consistent) {
    throw errors.ROLE(`Cannot serve volume '${volume.name}' as a primary: its image is in the middle of a resync; promote it first, which rolls it back (blockmirror promote --dir ${dir})`);
  }
  return loaded;
}
