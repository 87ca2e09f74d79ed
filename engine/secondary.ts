/**
 * The secondary node: listens on tcp:// and ws:// URLs, authenticates each
 * primary, applies its records in sequence order to volumes in DIR, and
 * acknowledges them.
 *
 * One session per connection (secondary-session.ts does the protocol). The
 * secondary owns its volumes for as long as it runs: a session borrows them,
 * and a volume is used by at most one session at a time (a second primary
 * for the same volume is refused with BM_ERR_BUSY). Volumes whose metadata
 * is in DIR are opened at start, so their codes are current by the time a
 * primary compares them; an image without metadata is opened when a primary
 * first names it. Each volume is a resync target (resync-target.ts): its
 * metadata, and an undo log while a resync copies into it.
 */
import fs from 'node:fs';
import path from 'node:path';
import { errors } from './errors.ts';
import { listen, type Listener, type Link } from './link.ts';
import { loadMetadata } from './metadata.ts';
import { kernelArea } from './kernel.ts';
import { ResyncTarget } from './resync-target.ts';
import { SecondarySession, type VolumeHello, type VolumeWelcome } from './secondary-session.ts';
import { undoLogReady } from './undo-log.ts';
import { Volume } from './volume.ts';
import type { CodeAlgorithm } from './codes.ts';
import type { HashPool } from './hash-pool.ts';

/**
 * Bytes of each tcp:// connection's reused read buffer (on Node; Bun and Deno
 * hand over fresh buffers). A read never returns more; the frames it holds
 * whole are checked and applied where they lie, and only a frame cut by the
 * end of a read is gathered in the decoder's staging area. Reusing one warm
 * buffer instead of a fresh 64 KiB one per read took async 1 MiB streaming
 * on Node from 0.43 to 0.61 GB/s in one run of the mirror benchmark.
 */
export const readBufferBytes = 1 << 20;

export interface SecondaryOptions {
  /** Directory of the volume images (created if missing). */
  dir: string;
  /** One or more tcp:// or ws:// URLs to listen on (port 0 picks a free port). */
  listen: string[];
  /** Pre-shared secret; when set, every primary must prove it holds it. */
  secret?: Uint8Array;
  /** Largest record payload accepted, bytes. Default 4 MiB. */
  payloadBytesMax?: number;
  /**
   * Split brain, or an image newer than its primary's: accept the primary's
   * resync anyway, which overwrites this side's own changes (the operator
   * names the primary as the survivor). Default false: refused.
   */
  discardMyData?: boolean;
  pool?: HashPool | 'shared' | 'none';
}

export interface SecondaryVolumeStatus {
  name: string;
  size: number;
  state: 'duplex' | 'syncing' | 'standalone';
  connected: boolean;
  appliedSeq: number;
  /** The image is a point-in-time copy (false while a resync into it is unfinished). */
  consistent: boolean;
  role: string;
  gen: string | undefined;
  /** Segments whose code is not current yet. */
  invalidCodes: number;
  /** The state of the resync into this image, when one is unfinished. */
  syncingTo?: string;
}

export class Secondary {
  readonly dir: string;
  readonly listeners: Listener[] = [];
  private readonly secret: Uint8Array | undefined;
  private readonly payloadBytesMax: number | undefined;
  private readonly discardMyData: boolean;
  private readonly pool: HashPool | 'shared' | 'none' | undefined;
  private readonly targets = new Map<string, ResyncTarget>();
  private readonly inUse = new Map<string, SecondarySession>();
  private readonly sessions = new Set<SecondarySession>();
  private closed = false;

  private constructor(options: SecondaryOptions) {
    this.dir = options.dir;
    this.secret = options.secret;
    this.payloadBytesMax = options.payloadBytesMax;
    this.discardMyData = options.discardMyData === true;
    this.pool = options.pool;
  }

  static async start(options: SecondaryOptions): Promise<Secondary> {
    if (!options || typeof options.dir !== 'string') throw errors.INVALID_ARGUMENT('Cannot start a secondary: dir must be a string');
    if (!Array.isArray(options.listen) || options.listen.length === 0) throw errors.INVALID_ARGUMENT('Cannot start a secondary: give at least one listen URL');
    fs.mkdirSync(options.dir, { recursive: true });
    await undoLogReady();
    const secondary = new Secondary(options);
    try {
      await secondary.openKnownVolumes();
      for (const url of options.listen) {
        secondary.listeners.push(await listen(url, (link) => secondary.accept(link), { payloadBytesMax: options.payloadBytesMax, readBuffer: () => kernelArea(readBufferBytes) }));
      }
    } catch (e) {
      await secondary.close();
      throw e;
    }
    return secondary;
  }

  /** The URLs actually listened on (with the bound port when 0 was asked). */
  get urls(): string[] {
    return this.listeners.map((l) => `${l.endpoint.scheme}://${l.endpoint.host}:${l.port}`);
  }

  /** Opens every volume of DIR that has metadata, so its codes are kept current from now on. */
  private async openKnownVolumes(): Promise<void> {
    for (const file of fs.readdirSync(this.dir)) {
      if (!file.endsWith('.meta')) continue;
      const name = file.slice(0, -'.meta'.length);
      if (!fs.existsSync(path.join(this.dir, `${name}.img`))) continue;
      const meta = loadMetadata(this.dir, name)!;
      const volume = await Volume.open({ name, dir: this.dir, size: meta.size, blockSize: meta.blockSize, segmentSize: meta.segmentSize, code: meta.code, pool: this.pool, trustSavedCodes: meta.clean === true });
      const target = new ResyncTarget(volume, this.dir, false);
      target.startServing();
      this.targets.set(name, target);
    }
  }

  private accept(link: Link): void {
    if (this.closed) return link.destroy('secondary closing');
    const session = new SecondarySession(link, {
      secret: this.secret,
      payloadBytesMax: this.payloadBytesMax,
      claim: (requests) => this.claim(session, requests),
      release: () => this.release(session),
    });
    this.sessions.add(session);
    session.closed.then(() => this.sessions.delete(session));
  }

  /** Opens or creates the volumes a primary asks for, plans their resync, and reserves them for its session. */
  private async claim(session: SecondarySession, requests: VolumeHello[]): Promise<{ targets: ResyncTarget[]; welcome: VolumeWelcome[] }> {
    for (const r of requests) {
      const holder = this.inUse.get(r.name);
      if (holder && holder !== session) throw errors.BUSY(`Cannot mirror volume '${r.name}': another primary is connected for it`);
    }
    const targets: ResyncTarget[] = [];
    for (const r of requests) {
      let target = this.targets.get(r.name);
      if (!target) {
        const exists = fs.existsSync(path.join(this.dir, `${r.name}.img`));
        const options = { name: r.name, dir: this.dir, size: r.size, blockSize: r.blockSize, segmentSize: r.segmentSize, code: r.code as CodeAlgorithm, pool: this.pool };
        let volume: Volume;
        try {
          volume = exists ? await Volume.open(options) : await Volume.create(options);
        } catch (e) {
          const code = (e as { code?: string }).code;
          if (code === 'BM_ERR_IMAGE_SIZE') throw errors.MISMATCH(`Cannot mirror volume '${r.name}': ${(e as Error).message}`);
          throw e;
        }
        try {
          target = new ResyncTarget(volume, this.dir, !exists);
        } catch (e) {
          await volume.close();
          throw e;
        }
        this.targets.set(r.name, target);
      }
      const v = target.volume;
      if (v.size !== r.size || v.blockSize !== r.blockSize || v.segmentSize !== r.segmentSize || v.algorithm !== r.code) {
        throw errors.MISMATCH(
          `Cannot mirror volume '${r.name}': the secondary has ${v.size} bytes, blocks of ${v.blockSize}, segments of ${v.segmentSize}, code ${v.algorithm}; the primary asked for ${r.size}, ${r.blockSize}, ${r.segmentSize}, ${r.code}`,
        );
      }
      targets.push(target);
    }
    // Plans last, once every volume is open: one refused volume (split brain) refuses the whole link.
    const plans = requests.map((r, i) => targets[i]!.plan(r, this.discardMyData));
    const welcome = targets.map((t, i) => ({ ...plans[i]!, created: t.created, consistent: t.consistent, gen: t.meta?.gen }));
    for (const r of requests) this.inUse.set(r.name, session);
    return { targets, welcome };
  }

  private release(session: SecondarySession): void {
    for (const [name, holder] of this.inUse) if (holder === session) this.inUse.delete(name);
  }

  status(): { role: 'secondary'; volumes: SecondaryVolumeStatus[] } {
    return {
      role: 'secondary',
      volumes: [...this.targets.values()].map((t) => {
        const v = t.volume;
        const session = this.inUse.get(v.name);
        return {
          name: v.name,
          size: v.size,
          state: !session ? 'standalone' : t.resyncing ? 'syncing' : 'duplex',
          connected: !!session,
          appliedSeq: session?.appliedSeq ?? 0,
          consistent: t.consistent,
          role: t.meta?.role ?? 'secondary',
          gen: t.meta?.gen,
          invalidCodes: v.invalidCodeCount(),
          syncingTo: t.meta?.syncingTo,
        };
      }),
    };
  }

  /** What `--control URL` serves: status only (commands are for primaries and controllers). */
  controlEndpoint(): import('./control-server.ts').ControlEndpoint {
    return {
      role: 'secondary',
      status: () => this.status(),
      command: (verb) => {
        throw errors.ROLE(`Cannot ${verb} through a secondary: send it to the primary or to the controller`);
      },
    };
  }

  /** A volume this secondary holds, for reading (tests, verification). */
  volume(name: string): Volume | undefined {
    return this.targets.get(name)?.volume;
  }

  /** Stops listening, ends every session, flushes and closes the volumes. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // A TCP server closes only once its connections have: stop listening,
    // end the sessions, then wait for both.
    const listening = Promise.all(this.listeners.map((l) => l.close()));
    for (const s of this.sessions) s.end('secondary closing');
    await Promise.all([...this.sessions].map((s) => s.closed));
    await listening;
    // One volume failing to stop (its disk) must not leave the others unsynced.
    let failure: unknown;
    for (const t of this.targets.values()) {
      try {
        await t.stop();
      } catch (e) {
        failure ??= e;
      }
    }
    this.targets.clear();
    if (failure) throw failure;
  }
}
