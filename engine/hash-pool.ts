/**
 * A pool of hashing workers that keeps the segment codes of many volumes
 * current in the background.
 *
 * Each worker owns every `workers`-th chunk of every attached volume, so no
 * two workers ever hash the same segment. The pool itself holds no volume
 * state beyond the attach list: the codes live in each volume's shared code
 * table, and a worker that dies takes nothing with it but its share of the
 * background work (the pool then fails every pending and later request with
 * BM_ERR_WORKER rather than pretend codes are being kept).
 *
 * `HashPool.shared()` hands out one process-wide pool, started on first use
 * and stopped when its last user releases it, so an application that opens
 * volumes never has to manage workers.
 */
import { errors, fromPlain, type BlockmirrorError } from './errors.ts';
import { coreCount } from './runtime.ts';
import type { HasherSetup } from './segment-hasher.ts';
import { spawnWorker, type WorkerHandle } from '../workers/spawn.ts';

/** Worker threads a pool starts when not told: one per core, at most this many. */
export const poolWorkersDefaultMax = 8;

export interface HashPoolOptions {
  /**
   * Worker threads. Default: one per core, at most 8. Background passes are
   * capped in all (`hashDutyMax`), so more workers do not take more of the
   * machine from the writers; they make an explicit settle (a resync with
   * codes cold, a verify, `settle()`) that many times faster.
   */
  workers?: number;
  /**
   * How long a changed segment must stay unchanged before it is rehashed, and
   * so the period of the background passes, in milliseconds. Default 5.
   * Larger values cost less under sustained writes; codes then lag longer.
   */
  rehashDelayMs?: number;
  /**
   * Largest share of one core (0 to 1) the pool's background passes may take
   * in all, shared evenly among its workers. Default 0.25. Past it a worker
   * rests, so codes lag under heavy random writes rather than slowing them;
   * `settle()` is not capped.
   */
  hashDutyMax?: number;
}

interface Pending {
  left: number;
  resolve: () => void;
  reject: (e: BlockmirrorError) => void;
}

export class HashPool {
  readonly workerCount: number;
  readonly rehashDelayMs: number;
  readonly hashDutyMax: number;
  private readonly workers: WorkerHandle[];
  /** Per worker: segments hashed, bytes hashed (each slot written by its worker only). */
  private readonly counters: Float64Array;
  private readonly pending = new Map<number, Pending>();
  private nextRequest = 1;
  private nextVolume = 1;
  private failure: BlockmirrorError | undefined;
  private closed = false;

  private constructor(workers: WorkerHandle[], rehashDelayMs: number, hashDutyMax: number) {
    this.workers = workers;
    this.workerCount = workers.length;
    this.rehashDelayMs = rehashDelayMs;
    this.hashDutyMax = hashDutyMax;
    this.counters = new Float64Array(new SharedArrayBuffer(16 * workers.length));
    workers.forEach((w, index) => w.post({ type: 'init', stats: this.counters.buffer, index }));
    for (const w of workers) {
      w.onMessage((m) => this.onMessage(m));
      w.onError((e) => this.fail(errors.WORKER(`A hashing worker died: ${e.message}`)));
    }
  }

  static async start(options: HashPoolOptions = {}): Promise<HashPool> {
    const count = options.workers ?? Math.min(poolWorkersDefaultMax, coreCount());
    if (!Number.isSafeInteger(count) || count < 1 || count > 256) {
      throw errors.INVALID_ARGUMENT(`Cannot start a hashing pool with ${String(count)} workers: use a whole number from 1 to 256`);
    }
    const delay = options.rehashDelayMs ?? 5;
    if (typeof delay !== 'number' || !(delay >= 0) || delay > 60_000) {
      throw errors.INVALID_ARGUMENT(`Cannot use rehash delay ${String(delay)} ms: use a number from 0 to 60000`);
    }
    const duty = options.hashDutyMax ?? 0.25;
    if (typeof duty !== 'number' || !(duty > 0 && duty <= 1)) {
      throw errors.INVALID_ARGUMENT(`Cannot use hash duty ${String(duty)}: use a number above 0 and at most 1`);
    }
    const workers = await Promise.all(Array.from({ length: count }, () => spawnWorker('hasher')));
    return new HashPool(workers, delay, duty);
  }

  private static sharedPool: Promise<HashPool> | undefined;
  private static sharedUsers = 0;

  /** The process-wide pool; pair every call with `releaseShared()`. */
  static async shared(): Promise<HashPool> {
    HashPool.sharedUsers++;
    HashPool.sharedPool ??= HashPool.start();
    try {
      return await HashPool.sharedPool;
    } catch (e) {
      HashPool.sharedUsers--;
      HashPool.sharedPool = undefined;
      throw e;
    }
  }

  static async releaseShared(): Promise<void> {
    if (--HashPool.sharedUsers > 0 || !HashPool.sharedPool) return;
    const pool = HashPool.sharedPool;
    HashPool.sharedPool = undefined;
    await (await pool).close();
  }

  /** Work done so far by all workers: segments and bytes hashed. */
  stats(): { segmentsHashed: number; bytesHashed: number } {
    let segmentsHashed = 0;
    let bytesHashed = 0;
    for (let i = 0; i < this.workerCount; i++) {
      segmentsHashed += this.counters[2 * i]!;
      bytesHashed += this.counters[2 * i + 1]!;
    }
    return { segmentsHashed, bytesHashed };
  }

  /** Registers a volume; its codes are kept current from now on. Returns its pool id. */
  async attach(setup: Omit<HasherSetup, 'owner' | 'owners'>): Promise<number> {
    const id = this.nextVolume++;
    await this.request((owner) => ({
      type: 'attach',
      id,
      delayMs: this.rehashDelayMs,
      // The cap is the pool's: each worker takes its share.
      dutyMax: this.hashDutyMax / this.workerCount,
      setup: { ...setup, owner, owners: this.workerCount },
    }));
    return id;
  }

  async detach(id: number): Promise<void> {
    if (this.closed || this.failure) return;
    await this.request(() => ({ type: 'detach', id }));
  }

  /** Every worker hashes every invalid segment it owns in volume `id` (or in segments [first, end)), now. */
  async settle(id: number, range?: { first: number; end: number }): Promise<void> {
    await this.request(() => ({ type: 'settle', id, range }));
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.fail(errors.CLOSED('Cannot use the hashing pool: it was closed'));
    for (const w of this.workers) w.post({ type: 'stop' });
    await Promise.all(this.workers.map((w) => w.terminate()));
  }

  private request(build: (owner: number) => Record<string, unknown>): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    const req = this.nextRequest++;
    return new Promise((resolve, reject) => {
      this.pending.set(req, { left: this.workerCount, resolve, reject });
      this.workers.forEach((w, owner) => w.post({ ...build(owner), req }));
    });
  }

  private onMessage(m: { type: string; req?: number; error?: { code: string; message: string } }): void {
    const p = m.req === undefined ? undefined : this.pending.get(m.req);
    if (!p) return;
    if (m.type === 'failed') {
      this.pending.delete(m.req!);
      p.reject(fromPlain(m.error!));
    } else if (--p.left === 0) {
      this.pending.delete(m.req!);
      p.resolve();
    }
  }

  private fail(error: BlockmirrorError): void {
    this.failure ??= error;
    for (const p of this.pending.values()) p.reject(error);
    this.pending.clear();
  }
}
