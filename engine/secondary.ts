/**
 * The secondary node: listens on tcp:// and ws:// URLs, authenticates each
 * primary, applies its records in sequence order to volumes in DIR, and
 * acknowledges them.
 *
 * One session per connection (secondary-session.ts does the protocol). The
 * secondary owns its volumes for as long as it runs: a session borrows them,
 * and a volume is used by at most one session at a time (a second primary
 * for the same volume is refused with BM_ERR_BUSY).
 */
import fs from 'node:fs';
import { errors } from './errors.ts';
import { listen, type Listener } from './link.ts';
import { SecondarySession, type VolumeRequest } from './secondary-session.ts';
import { Volume } from './volume.ts';
import type { CodeAlgorithm } from './codes.ts';

export interface SecondaryOptions {
  /** Directory of the volume images (created if missing). */
  dir: string;
  /** One or more tcp:// or ws:// URLs to listen on (port 0 picks a free port). */
  listen: string[];
  /** Pre-shared secret; when set, every primary must prove it holds it. */
  secret?: Uint8Array;
  /** Largest record payload accepted, bytes. Default 4 MiB. */
  payloadBytesMax?: number;
}

export interface SecondaryVolumeStatus {
  name: string;
  size: number;
  state: 'duplex' | 'syncing' | 'standalone';
  connected: boolean;
  appliedSeq: number;
}

export class Secondary {
  readonly dir: string;
  readonly listeners: Listener[] = [];
  private readonly secret: Uint8Array | undefined;
  private readonly payloadBytesMax: number | undefined;
  private readonly volumes = new Map<string, Volume>();
  private readonly inUse = new Map<string, SecondarySession>();
  private readonly sessions = new Set<SecondarySession>();
  private closed = false;

  private constructor(options: SecondaryOptions) {
    this.dir = options.dir;
    this.secret = options.secret;
    this.payloadBytesMax = options.payloadBytesMax;
  }

  static async start(options: SecondaryOptions): Promise<Secondary> {
    if (!options || typeof options.dir !== 'string') throw errors.INVALID_ARGUMENT('Cannot start a secondary: dir must be a string');
    if (!Array.isArray(options.listen) || options.listen.length === 0) throw errors.INVALID_ARGUMENT('Cannot start a secondary: give at least one listen URL');
    fs.mkdirSync(options.dir, { recursive: true });
    const secondary = new Secondary(options);
    try {
      for (const url of options.listen) {
        secondary.listeners.push(await listen(url, (link) => secondary.accept(link), { payloadBytesMax: options.payloadBytesMax }));
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

  private accept(link: import('./link.ts').Link): void {
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

  /** Opens or creates the volumes a primary asks for, and reserves them for its session. */
  private async claim(session: SecondarySession, requests: VolumeRequest[]): Promise<{ volumes: Volume[]; created: boolean[] }> {
    for (const r of requests) {
      const holder = this.inUse.get(r.name);
      if (holder && holder !== session) throw errors.BUSY(`Cannot mirror volume '${r.name}': another primary is connected for it`);
    }
    const out: Volume[] = [];
    const created: boolean[] = [];
    for (const r of requests) {
      let volume = this.volumes.get(r.name);
      let fresh = false;
      if (!volume) {
        const exists = fs.existsSync(`${this.dir}/${r.name}.img`);
        const options = { name: r.name, dir: this.dir, size: r.size, blockSize: r.blockSize, segmentSize: r.segmentSize, code: r.code as CodeAlgorithm };
        try {
          volume = exists ? await Volume.open(options) : await Volume.create(options);
        } catch (e) {
          const code = (e as { code?: string }).code;
          if (code === 'BM_ERR_IMAGE_SIZE') throw errors.MISMATCH(`Cannot mirror volume '${r.name}': ${(e as Error).message}`);
          throw e;
        }
        this.volumes.set(r.name, volume);
        fresh = !exists;
      }
      if (volume.size !== r.size || volume.blockSize !== r.blockSize || volume.segmentSize !== r.segmentSize || volume.algorithm !== r.code) {
        throw errors.MISMATCH(
          `Cannot mirror volume '${r.name}': the secondary has ${volume.size} bytes, blocks of ${volume.blockSize}, segments of ${volume.segmentSize}, code ${volume.algorithm}; the primary asked for ${r.size}, ${r.blockSize}, ${r.segmentSize}, ${r.code}`,
        );
      }
      out.push(volume);
      created.push(fresh);
    }
    for (const r of requests) this.inUse.set(r.name, session);
    return { volumes: out, created };
  }

  private release(session: SecondarySession): void {
    for (const [name, holder] of this.inUse) if (holder === session) this.inUse.delete(name);
  }

  status(): { role: 'secondary'; volumes: SecondaryVolumeStatus[] } {
    return {
      role: 'secondary',
      volumes: [...this.volumes.values()].map((v) => {
        const session = this.inUse.get(v.name);
        return { name: v.name, size: v.size, state: session ? 'duplex' : 'standalone', connected: !!session, appliedSeq: session?.appliedSeq ?? 0 };
      }),
    };
  }

  /** A volume this secondary holds, for reading (tests, verification). */
  volume(name: string): Volume | undefined {
    return this.volumes.get(name);
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
    for (const v of this.volumes.values()) await v.close();
    this.volumes.clear();
  }
}
