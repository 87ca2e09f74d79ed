/**
 * blockmirror's public surface. Everything not exported here is internal.
 *
 * @example
 * ```ts
 * import { Volume } from 'blockmirror';
 * const volume = await Volume.create({ name: 'db', size: 64 * 1024 * 1024, dir: '/var/lib/bm' });
 * await volume.write(0, new TextEncoder().encode('hello'), { fua: true });
 * await volume.settle();                  // every segment code current
 * const { codes, valid } = volume.codes(); // one code and valid flag per segment
 * await volume.close();
 * ```
 */
export { Volume, type VolumeOptions, type WriteOptions, type SettleOptions } from './volume.ts';
export { HashPool, type HashPoolOptions } from './hash-pool.ts';
export { codeAlgorithms, codeBytes, type CodeAlgorithm, type CodeSnapshot } from './codes.ts';
export { BlockmirrorError, errors, type ErrorCode, type PlainError } from './errors.ts';
export { KiB, MiB, GiB, parseSize, formatSize, defaultBlockBytes, defaultSegmentBytes } from './geometry.ts';
export { Primary, type PrimaryOptions, type PrimaryVolumeOptions, type PrimaryStatus, type PrimaryEvent, type VolumeStatus } from './primary.ts';
export { Secondary, type SecondaryOptions } from './secondary.ts';
export { type Pair, type PairState, type PairEvent } from './pair.ts';
export { Controller, type ControllerOptions, type ControllerStatus, type ControllerPhase } from './controller.ts';
export { type GroupEvent, type GroupPhase, type GroupPolicy } from './member.ts';
export { ControlServer, requestStatus, sendCommand, type ControlEndpoint } from './control-server.ts';
export { promoteVolumes, demoteVolumes, type RoleChange, type RoleOptions } from './roles.ts';
export { type VerifyResult } from './pair.ts';
export { type ResyncProgress } from './resync.ts';
