/**
 * Decides how a resync target catches up with its source, from their
 * generation ids (metadata.ts), before any byte moves:
 *
 * - `full: false`: only the segments in the source's out-of-sync map may
 *   differ; their codes are compared and the differing ones copied.
 * - `full: true`: any segment may differ; every segment's codes are
 *   compared (WO2007141125) and only the differing ones copied. Never a
 *   blind full copy.
 * - refused: the target is newer than the source (BM_ERR_STALE_SOURCE), or
 *   both were written since they last agreed (BM_ERR_SPLIT_BRAIN). Either
 *   way nothing is copied until an operator names the survivor: a target
 *   started with `discardMyData` accepts a full comparison from the source,
 *   which then overwrites the target's own changes.
 */
import { errors } from './errors.ts';
import type { VolumeMetadata } from './metadata.ts';

/** What a source (a primary) says of one volume in its hello. */
export interface SourceGeneration {
  gen: string;
  history: string[];
  /** The target generation the source's out-of-sync map counts from. */
  oosBase: string;
  /** The out-of-sync map has been kept since `oosBase` without a gap (false after a restart that could not load it). */
  oosTrusted: boolean;
  /** The source's image was created in this run and never written. */
  fresh: boolean;
}

export interface ResyncPlan {
  full: boolean;
  reason: string;
}

/**
 * `target` is the target's metadata (undefined when its image has none),
 * `created` whether its image was created just now (zeroes).
 */
export function planResync(name: string, source: SourceGeneration, target: VolumeMetadata | undefined, created: boolean, discardMyData: boolean): ResyncPlan {
  if (created) return source.fresh ? { full: false, reason: 'both images are new' } : { full: true, reason: 'a new image on the target' };
  if (!target) return { full: true, reason: 'the target image has no metadata: its history is unknown' };
  const byMap = source.oosTrusted;
  if (target.syncingTo === source.gen) return { full: !(byMap && target.gen === source.oosBase), reason: 'resuming an interrupted resync' };
  if (target.gen === source.gen) return { full: !byMap, reason: 'same generation' };
  if (target.gen === source.oosBase && target.role === 'secondary') return { full: !byMap, reason: 'behind by what the out-of-sync map records' };
  if (source.history.includes(target.gen)) return { full: true, reason: 'an older generation of the source: every code is compared' };
  if (discardMyData) return { full: true, reason: 'the target’s own changes are discarded (discardMyData)' };
  if (target.history.includes(source.gen)) {
    throw errors.STALE_SOURCE(
      `Cannot resync volume '${name}' from this primary: the target holds generation ${target.gen}, newer than this primary's ${source.gen} (it was promoted and written since); make this side the target, or start the target with --discard-my-data to discard its changes`,
    );
  }
  throw errors.SPLIT_BRAIN(
    `Cannot resync volume '${name}': split brain, both sides were written since they last agreed (source ${source.gen}, target ${target.gen}); name the survivor: start the other side with --discard-my-data, and the survivor's resync overwrites its changes`,
  );
}
