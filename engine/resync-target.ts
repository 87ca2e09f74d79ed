/**
 * One volume on the receiving side of a mirror: its image, its metadata
 * and, while a resync copies into it, its undo log.
 *
 * A resync runs between `begin(gen)` and `end(gen)`, both records of the
 * source's stream. From `begin` the metadata says the image is not
 * consistent (`syncingTo` names the source's generation) and every write
 * first saves the old bytes of each segment it is the first to touch; at
 * `end` the image is synced, takes the source's generation, is consistent
 * again, and the undo log is deleted. An image that was created in this run
 * (zeroes) has nothing worth keeping and gets no undo log.
 *
 * An interrupted resync resumes when the same source returns (same target
 * generation); for any other source, or on promotion, the image is first
 * rolled back to the consistent image it held when the resync began.
 */
import fs from 'node:fs';
import { errors } from './errors.ts';
import { adoptGeneration, freshMetadata, loadMetadata, newGen, saveMetadata, type VolumeMetadata } from './metadata.ts';
import { planResync, type ResyncPlan, type SourceGeneration } from './resync-plan.ts';
import { UndoLog, undoLogsSettled, undoPath } from './undo-log.ts';
import { removeState } from './saved-state.ts';
import type { Volume } from './volume.ts';

export class ResyncTarget {
  readonly volume: Volume;
  readonly dir: string | undefined;
  /** Undefined while the image has no metadata (an image of unknown history, until a resync begins). */
  meta: VolumeMetadata | undefined;
  /** The image was created in this run and holds zeroes. */
  readonly created: boolean;
  private undo: UndoLog | undefined;
  /** The end of a resync, while it makes the image durable and saves the metadata. */
  private ending: Promise<void> | undefined;

  constructor(volume: Volume, dir: string | undefined, created: boolean) {
    this.volume = volume;
    this.dir = dir;
    this.created = created;
    if (dir && created) {
      // A new image: whatever metadata, undo log or saved state is left beside it belongs to an image that is gone.
      for (const ext of ['meta', 'undo', 'undo.done', 'oos', 'codes']) fs.rmSync(`${dir}/${volume.name}.${ext}`, { force: true });
    }
    this.meta = dir ? loadMetadata(dir, volume.name) : undefined;
    if (this.meta && (this.meta.size !== volume.size || this.meta.blockSize !== volume.blockSize || this.meta.segmentSize !== volume.segmentSize)) {
      throw errors.METADATA(`Cannot trust the metadata of volume '${volume.name}': it describes ${this.meta.size} bytes in blocks of ${this.meta.blockSize}, the image has ${volume.size}`);
    }
  }

  get consistent(): boolean {
    return this.meta ? this.meta.consistent : !this.created;
  }

  get resyncing(): boolean {
    return this.meta?.syncingTo !== undefined;
  }

  /**
   * The handshake: how this image catches up with `source`. An interrupted
   * resync toward another generation is rolled back first.
   */
  plan(source: SourceGeneration, discardMyData: boolean): ResyncPlan {
    let known = this.meta;
    let rolledBack = false;
    if (this.meta && !this.meta.consistent && this.meta.syncingTo !== source.gen) {
      // Rolled back, the image holds again what it held when that resync began, which no map of
      // this source describes; not rolled back (it never held a complete copy), it holds nothing
      // worth keeping. Either way every code is compared.
      rolledBack = this.rollback();
      known = rolledBack ? this.meta : undefined;
    }
    const plan = planResync(this.volume.name, source, known, this.created && !this.meta, discardMyData);
    if (rolledBack && !plan.full) return { full: true, reason: 'an interrupted resync was rolled back first: every code is compared' };
    if (this.created && !this.meta && source.fresh) {
      // Both images are new and hold zeroes: in sync at once, at the source's generation.
      this.save({ ...this.geometryMeta(), gen: source.gen, history: source.history.slice(), oosBase: source.gen, consistent: true });
    }
    return plan;
  }

  /** A resync toward generation `gen` starts. */
  begin(gen: string): void {
    const meta = this.meta ?? this.geometryMeta();
    if (meta.syncingTo === gen && !meta.consistent) {
      // Resuming: keep adding to the log the interrupted resync started, if it kept one.
      if (this.dir && fs.existsSync(undoPath(this.dir, this.volume.name))) this.openUndo();
      return;
    }
    // Only an image that holds a complete copy of something (consistent, or of unknown history: a
    // restored backup) is worth keeping; one whose first copy never finished gets no undo log.
    const worthKeeping = this.meta ? this.meta.consistent : !this.created;
    // From now on this image is a target (an old primary returning is one too), and a log left by
    // an earlier, finished or abandoned resync must not be taken for this one's.
    this.undo?.remove();
    this.undo = undefined;
    if (this.dir) fs.rmSync(undoPath(this.dir, this.volume.name), { force: true });
    this.save({ ...meta, role: 'secondary', consistent: false, syncingTo: gen });
    if (worthKeeping) this.openUndo();
  }

  write(offset: number, data: Uint8Array): void {
    this.volume.checkWrite(offset, data);
    this.protect(offset, data.length);
    this.volume.writeSync(offset, data);
  }

  writeZeroes(offset: number, length: number): void {
    this.volume.checkZeroes(offset, length);
    this.protect(offset, length);
    this.volume.writeZeroesSync(offset, length);
  }

  /** Makes every applied write durable; the undo log first, so what is durable can be rolled back. */
  async flush(): Promise<void> {
    this.undo?.sync();
    await this.volume.flush();
  }

  /** The resync toward `gen` ended: the image is consistent at the source's generation. */
  end(gen: string, history: string[]): Promise<void> {
    // Kept so that a stop that comes meanwhile waits for it: it must not write after the stop.
    const ending = this.finish(gen, history);
    this.ending = ending;
    return ending;
  }

  private async finish(gen: string, history: string[]): Promise<void> {
    await this.flush();
    const meta = this.meta ?? this.geometryMeta();
    this.save(adoptGeneration({ ...meta, role: 'secondary', consistent: true, syncingTo: undefined, oosBase: gen }, gen, history));
    this.undo?.removeLater();
    this.undo = undefined;
  }

  /**
   * Restores the bytes the running resync overwrote, so the image is again
   * the consistent one its metadata's generation names. False when there is
   * nothing to restore from (a new image, or one whose log is gone).
   */
  rollback(): boolean {
    if (!this.meta || this.meta.consistent) return true;
    const file = this.dir ? undoPath(this.dir, this.volume.name) : undefined;
    if (!file || !fs.existsSync(file)) return false;
    const log = this.undo ?? UndoLog.open(file, this.volume.segmentCount, this.volume.segmentSize);
    this.undo = undefined;
    log.replay((offset, bytes) => this.volume.writeSync(offset, bytes));
    this.volume.flushSync();
    this.save({ ...this.meta, consistent: true, syncingTo: undefined });
    log.remove();
    return true;
  }

  /** Served from now on: the saved codes were taken (or not) at open; a crash must not leave them trusted. */
  startServing(): void {
    if (!this.dir || !this.meta) return;
    removeState(this.dir, this.volume.name);
    if (this.meta.clean) this.save({ ...this.meta, clean: false });
  }

  /** A clean stop: the image flushed and closed, the codes saved, the metadata marked clean. */
  async stop(): Promise<void> {
    await this.ending?.catch(() => {});
    this.undo?.sync();
    this.undo?.close();
    this.undo = undefined;
    await this.volume.close({ saveCodes: this.dir !== undefined && this.meta !== undefined });
    if (this.meta) this.save({ ...this.meta, clean: true });
    // An undo log still syncing or being deleted in the background: nothing may touch the directory after the stop.
    await undoLogsSettled();
  }

  private protect(offset: number, length: number): void {
    const undo = this.undo;
    if (!undo || length === 0) return;
    const size = this.volume.segmentSize;
    const last = Math.floor((offset + length - 1) / size);
    for (let s = Math.floor(offset / size); s <= last; s++) {
      if (undo.has(s)) continue;
      const at = s * size;
      const length = Math.min(size, this.volume.size - at);
      undo.save(s, at, this.volume.view(at, length), this.volume.checksum(at, length));
    }
  }

  private openUndo(): void {
    if (this.undo || !this.dir) return;
    this.undo = UndoLog.open(undoPath(this.dir, this.volume.name), this.volume.segmentCount, this.volume.segmentSize);
  }

  private geometryMeta(): VolumeMetadata {
    const v = this.volume;
    // An image of unknown history gets a generation of its own, related to nothing.
    return { ...freshMetadata({ name: v.name, size: v.size, blockSize: v.blockSize, segmentSize: v.segmentSize, code: v.algorithm }, 'secondary'), gen: newGen() };
  }

  /** Saves `meta`, and only once it is durable takes it as current. */
  private save(meta: VolumeMetadata): void {
    if (this.dir) saveMetadata(this.dir, meta);
    this.meta = meta;
  }
}
