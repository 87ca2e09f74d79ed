/**
 * Role changes of the volumes in a directory, made while no process serves
 * them: failover (promote a secondary's copy), and the planned role swap
 * (demote an in-sync primary, promote its secondary).
 *
 * - promote: a secondary's copy becomes a primary's volume with a new
 *   generation id (the old one first in its history), so that when the old
 *   primary returns as the target, the generations say which side is newer
 *   and every code is compared (failback). A copy caught in the middle of a
 *   resync is first rolled back to its last consistent image with its undo
 *   log; one that never held a complete copy is refused unless forced.
 * - demote: a primary's volume that holds nothing its secondary lacks
 *   (consistent, not diverged: generation equal to the map's base) becomes a
 *   secondary's copy at the same generation, so attaching it to the new
 *   primary copies nothing. Only a volume stopped cleanly with an empty
 *   saved out-of-sync map qualifies; one that diverged or may hold
 *   unmirrored writes is refused: its own writes would be discarded; start
 *   it as a secondary with --discard-my-data to say so.
 */
import fs from 'node:fs';
import path from 'node:path';
import { errors } from './errors.ts';
import { loadMetadata, nextGeneration, saveMetadata, type Role } from './metadata.ts';
import { ResyncTarget } from './resync-target.ts';
import { undoLogReady } from './undo-log.ts';
import { Volume } from './volume.ts';
import { OutOfSyncMap } from './out-of-sync.ts';
import { loadState, saveState } from './saved-state.ts';
import { undoPath } from './undo-log.ts';
import type { VolumeMetadata } from './metadata.ts';

export interface RoleChange {
  name: string;
  from: Role;
  to: Role;
  /** The generation after the change. */
  gen: string;
  /** A resync was interrupted and the image was rolled back to its last consistent state first. */
  rolledBack: boolean;
}

export interface RoleOptions {
  dir: string;
  /** Only these volumes (default: every volume with metadata in `dir`). */
  names?: string[];
  /** promote: accept a copy that never held a complete image (its bytes are whatever the interrupted first copy left). */
  force?: boolean;
}

function volumesIn(options: RoleOptions, verb: string): string[] {
  if (!options || typeof options.dir !== 'string') throw errors.INVALID_ARGUMENT(`Cannot ${verb}: give the directory of the volumes`);
  if (!fs.existsSync(options.dir)) throw errors.IMAGE_OPEN(`Cannot ${verb} the volumes of '${options.dir}': no such directory`);
  const names = options.names?.length ? options.names : fs.readdirSync(options.dir).filter((f) => f.endsWith('.meta')).map((f) => f.slice(0, -5));
  if (names.length === 0) throw errors.METADATA(`Cannot ${verb} the volumes of '${options.dir}': it holds no volume metadata`);
  for (const name of names) {
    if (!fs.existsSync(path.join(options.dir, `${name}.img`))) throw errors.IMAGE_OPEN(`Cannot ${verb} volume '${name}': ${options.dir} has no image ${name}.img`);
  }
  return names;
}

/** Checks that every volume can be promoted; throws what `promoteVolumes` would, changing nothing. */
export function checkPromotable(options: RoleOptions): { names: string[]; metas: VolumeMetadata[] } {
  const names = volumesIn(options, 'promote');
  const metas = names.map((name) => {
    const meta = loadMetadata(options.dir, name);
    if (!meta) throw errors.METADATA(`Cannot promote volume '${name}': it has no metadata`);
    if (meta.role === 'primary') throw errors.ROLE(`Cannot promote volume '${name}': it is already a primary's volume`);
    if (!meta.consistent && !fs.existsSync(undoPath(options.dir, name)) && !options.force) {
      throw errors.ROLE(`Cannot promote volume '${name}': its first copy never finished, so it never held a complete image (--force promotes it as it is)`);
    }
    return meta;
  });
  return { names, metas };
}

/** Failover: the secondary's copies in `dir` become primary volumes. Every check passes before anything changes. */
export async function promoteVolumes(options: RoleOptions): Promise<RoleChange[]> {
  const { names, metas } = checkPromotable(options);
  await undoLogReady();
  const changes: RoleChange[] = [];
  for (const [i, name] of names.entries()) {
    let meta = metas[i]!;
    let rolledBack = false;
    if (!meta.consistent) {
      // Roll the interrupted resync back (or refuse) before the copy is served.
      const volume = await Volume.open({ name, dir: options.dir, size: meta.size, blockSize: meta.blockSize, segmentSize: meta.segmentSize, code: meta.code, pool: 'none' });
      try {
        const target = new ResyncTarget(volume, options.dir, false);
        rolledBack = target.rollback();
        if (!rolledBack && !options.force) {
          throw errors.ROLE(`Cannot promote volume '${name}': its first copy never finished, so it never held a complete image (--force promotes it as it is)`);
        }
        meta = loadMetadata(options.dir, name)!;
      } finally {
        await volume.close();
      }
    }
    const promoted = { ...nextGeneration(meta), role: 'primary' as const, oosBase: meta.gen, consistent: true, syncingTo: undefined };
    if (meta.clean && !rolledBack) {
      // Nothing has been written since the promotion: an empty out-of-sync map, complete since the
      // old generation, lets the old primary return with no comparison at all when it was in sync.
      const size = fs.statSync(path.join(options.dir, `${name}.img`)).size;
      const map = new OutOfSyncMap(meta.size, meta.segmentSize);
      saveState(options.dir, name, 'oos', { segmentCount: map.segmentCount, imageSize: size, imageMtimeMs: 0, body: map.toBytes() });
    }
    saveMetadata(options.dir, promoted);
    changes.push({ name, from: 'secondary', to: 'primary', gen: promoted.gen, rolledBack });
  }
  return changes;
}

/**
 * Checks that every volume can be demoted: stopped cleanly, not diverged,
 * and its saved out-of-sync map empty (nothing its secondary lacks, not even
 * records that were in flight). Throws what `demoteVolumes` would.
 */
export function checkDemotable(options: RoleOptions): { names: string[]; metas: VolumeMetadata[] } {
  const names = volumesIn(options, 'demote');
  const metas = names.map((name) => {
    const meta = loadMetadata(options.dir, name);
    if (!meta) throw errors.METADATA(`Cannot demote volume '${name}': it has no metadata`);
    if (meta.role !== 'primary') throw errors.ROLE(`Cannot demote volume '${name}': it is already a secondary's copy`);
    const lacking = `to discard them, start it as a secondary with --discard-my-data instead`;
    if (!meta.consistent || meta.gen !== meta.oosBase) {
      throw errors.ROLE(`Cannot demote volume '${name}': it holds writes its secondary lacks (generation ${meta.gen}, last in sync at ${meta.oosBase}); ${lacking}`);
    }
    const map = new OutOfSyncMap(meta.size, meta.segmentSize);
    const saved = meta.clean ? loadState(options.dir, name, 'oos', { segmentCount: map.segmentCount, bodyBytes: map.byteLength }) : undefined;
    if (!saved) {
      throw errors.ROLE(`Cannot demote volume '${name}': what its secondary lacks is not known (it was not stopped cleanly, or its map had a gap since a crash); ${lacking}`);
    }
    map.addBytes(saved.body);
    if (map.size > 0) throw errors.ROLE(`Cannot demote volume '${name}': ${map.size} of its segments were not mirrored before it stopped; ${lacking}`);
    return meta;
  });
  return { names, metas };
}

/** Planned swap, first half: in-sync primary volumes in `dir` become secondaries' copies at the same generation. */
export async function demoteVolumes(options: RoleOptions): Promise<RoleChange[]> {
  const { names, metas } = checkDemotable(options);
  return names.map((name, i) => {
    const meta = { ...metas[i]!, role: 'secondary' as const };
    saveMetadata(options.dir, meta);
    return { name, from: 'primary' as const, to: 'secondary' as const, gen: meta.gen, rolledBack: false };
  });
}
