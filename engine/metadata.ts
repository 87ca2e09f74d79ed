/**
 * The metadata of one volume, beside its image: `DIR/NAME.meta`.
 *
 * It holds what must outlive the process: the volume's geometry, its role
 * (primary or secondary), its generation id and the ids before it, and the
 * state of a resync into it. Generation ids (after DRBD's data generation
 * UUIDs) name a volume's history: a primary takes a new one when it first
 * completes a write its peer does not have (it diverges), and when a
 * secondary is promoted; a resync target takes its source's id when the
 * resync ends. Comparing them tells which side is newer and detects split
 * brain; codes only say what differs, never which side wins.
 *
 * File format: one line `blockmirror-meta 1 sha256=HEX`, then the JSON body
 * whose SHA-256 that is. A file is written whole to `NAME.meta.tmp`, synced,
 * and renamed over the old one (then the directory is synced), so a crash
 * while saving leaves the previous version. A file that is truncated,
 * corrupt, foreign or of another volume is refused with BM_ERR_METADATA,
 * never trusted.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { errors } from './errors.ts';
import { codeAlgorithms, type CodeAlgorithm } from './codes.ts';

const magic = 'blockmirror-meta';
const formatVersion = 1;
/** Older generation ids kept, newest first. */
export const historyMax = 8;
/** A metadata file larger than this is not ours. */
export const metadataBytesMax = 64 * 1024;

export type Role = 'primary' | 'secondary';

export interface VolumeMetadata {
  name: string;
  size: number;
  blockSize: number;
  segmentSize: number;
  code: CodeAlgorithm;
  role: Role;
  /** The current generation id: 16 hex digits. */
  gen: string;
  /** Earlier generation ids, newest first, at most `historyMax`. */
  history: string[];
  /**
   * Primary: the generation its peer held when the out-of-sync map started
   * recording. `gen !== oosBase` means this primary has completed writes
   * its peer lacks (it diverged).
   */
  oosBase: string;
  /** False while a resync copies into this image (an undo log then exists; see undo-log.ts). */
  consistent: boolean;
  /** The generation the running resync brings this image to. */
  syncingTo?: string;
  /**
   * True only from a clean stop to the next start: the out-of-sync map and
   * the codes saved beside the image (saved-state.ts) may then be trusted.
   * A process that dies leaves it false.
   */
  clean?: boolean;
}

export function newGen(): string {
  return crypto.randomBytes(8).toString('hex');
}

const isGen = (v: unknown): v is string => typeof v === 'string' && /^[0-9a-f]{16}$/.test(v);

export function metadataPath(dir: string, name: string): string {
  return path.join(dir, `${name}.meta`);
}

/** Metadata for a volume that is new on this side. */
export function freshMetadata(geometry: { name: string; size: number; blockSize: number; segmentSize: number; code: CodeAlgorithm }, role: Role): VolumeMetadata {
  const gen = newGen();
  return { ...geometry, role, gen, history: [], oosBase: gen, consistent: true };
}

/** `meta` with a new generation id, the old one first in its history. */
export function nextGeneration(meta: VolumeMetadata): VolumeMetadata {
  return { ...meta, gen: newGen(), history: [meta.gen, ...meta.history].slice(0, historyMax) };
}

/** `meta` taking `gen` (a resync source's), keeping its own in the history if it differs. */
export function adoptGeneration(meta: VolumeMetadata, gen: string, sourceHistory: string[] = []): VolumeMetadata {
  if (meta.gen === gen) return meta;
  const history = [...sourceHistory, meta.gen, ...meta.history].filter((g, i, all) => g !== gen && all.indexOf(g) === i).slice(0, historyMax);
  return { ...meta, gen, history };
}

/** Reads and checks `DIR/NAME.meta`; undefined when there is none. */
export function loadMetadata(dir: string, name: string): VolumeMetadata | undefined {
  const file = metadataPath(dir, name);
  let bytes: Buffer;
  try {
    const stat = fs.statSync(file);
    if (stat.size > metadataBytesMax) throw errors.METADATA(`Cannot trust metadata '${file}': ${stat.size} bytes is not a blockmirror metadata file`);
    bytes = fs.readFileSync(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    if ((e as { code?: string }).code === 'BM_ERR_METADATA') throw e;
    throw errors.METADATA(`Cannot read metadata '${file}': ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  return parseMetadata(bytes, file, name);
}

/** Parses the bytes of a metadata file (exported for tests that corrupt them). */
export function parseMetadata(bytes: Uint8Array, file: string, name: string): VolumeMetadata {
  const text = Buffer.from(bytes).toString('utf8');
  const newline = text.indexOf('\n');
  const first = newline < 0 ? text : text.slice(0, newline);
  const m = /^blockmirror-meta (\d+) sha256=([0-9a-f]{64})$/.exec(first);
  if (!m) throw errors.METADATA(`Cannot trust metadata '${file}': it does not start with a '${magic}' line (foreign or corrupt)`);
  if (Number(m[1]) !== formatVersion) throw errors.METADATA(`Cannot trust metadata '${file}': format ${m[1]} is not ${formatVersion}`);
  const body = text.slice(newline + 1);
  if (crypto.createHash('sha256').update(body).digest('hex') !== m[2]) {
    throw errors.METADATA(`Cannot trust metadata '${file}': its checksum does not match (truncated or corrupt)`);
  }
  let value: any;
  try {
    value = JSON.parse(body);
  } catch {
    throw errors.METADATA(`Cannot trust metadata '${file}': its body is not JSON`);
  }
  const ok =
    value && typeof value === 'object' && value.name === name && Number.isSafeInteger(value.size) && value.size > 0 &&
    Number.isSafeInteger(value.blockSize) && Number.isSafeInteger(value.segmentSize) && codeAlgorithms.includes(value.code) &&
    (value.role === 'primary' || value.role === 'secondary') && isGen(value.gen) && isGen(value.oosBase) &&
    Array.isArray(value.history) && value.history.length <= historyMax && value.history.every(isGen) &&
    typeof value.consistent === 'boolean' && (value.syncingTo === undefined || isGen(value.syncingTo)) &&
    (value.clean === undefined || typeof value.clean === 'boolean');
  if (!ok) throw errors.METADATA(`Cannot trust metadata '${file}': it does not describe volume '${name}' (fields missing or wrong)`);
  const { name: n, size, blockSize, segmentSize, code, role, gen, history, oosBase, consistent, syncingTo, clean } = value;
  return { name: n, size, blockSize, segmentSize, code, role, gen, history, oosBase, consistent, ...(syncingTo ? { syncingTo } : {}), clean: clean === true };
}

/** Writes `meta` to `DIR/NAME.meta` so that a crash leaves the old or the new version, whole. */
export function saveMetadata(dir: string, meta: VolumeMetadata): void {
  const body = JSON.stringify(meta, null, 1) + '\n';
  const text = `${magic} ${formatVersion} sha256=${crypto.createHash('sha256').update(body).digest('hex')}\n${body}`;
  writeFileAtomic(dir, metadataPath(dir, meta.name), new TextEncoder().encode(text), 'metadata');
}

/**
 * Writes `bytes` to `file` (in `dir`) so that a crash leaves the old or the
 * new content, whole: a temporary file, synced, renamed over the old one,
 * then the directory synced.
 */
export function writeFileAtomic(dir: string, file: string, bytes: Uint8Array, what: string): void {
  const tmp = `${file}.tmp`;
  try {
    const fd = fs.openSync(tmp, 'w');
    try {
      for (let done = 0; done < bytes.length; ) done += fs.writeSync(fd, bytes, done, bytes.length - done);
      fs.fdatasyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, file);
    syncDirectory(dir);
  } catch (e) {
    throw errors.IO(`Cannot save ${what} '${file}': ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}
/** Makes a rename in `dir` durable. Not every file system lets a directory be synced; that is not an error. */
export function syncDirectory(dir: string): void {
  let fd: number | undefined;
  try {
    fd = fs.openSync(dir, 'r');
    fs.fsyncSync(fd);
  } catch {
    // EISDIR/EINVAL on some platforms: the rename is as durable as that file system makes it.
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}
