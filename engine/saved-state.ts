/**
 * What a clean stop saves beside a volume's image, so that the next start
 * needs neither a comparison of every code nor a full rehash:
 *
 * - `DIR/NAME.oos`: a primary's out-of-sync map (one bit per segment);
 * - `DIR/NAME.codes`: the code table (a code and a valid flag per segment),
 *   with the image's size and modification time when it was saved.
 *
 * Both are trusted only when the metadata says the stop was clean (a crash
 * leaves `clean: false`, and the files are then ignored: a primary compares
 * every code, codes are recomputed from the image), and only if they check:
 * magic, version, sizes, and a SHA-256 of the body. A codes file whose image
 * was changed since (size or modification time) is ignored too. Each file is
 * written whole to a temporary name, synced and renamed, like the metadata.
 *
 * Layout: magic (4 bytes: 'BMOS' or 'BMCD'), version (u32 LE), segment count
 * (u32), image size (f64), image mtime in ms (f64), body length (u32),
 * SHA-256 of the body (32 bytes), body.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { errors } from './errors.ts';
import { writeFileAtomic } from './metadata.ts';

const version = 1;
const headerBytes = 4 + 4 + 4 + 8 + 8 + 4 + 32;

export type SavedKind = 'oos' | 'codes';
const magic: Record<SavedKind, string> = { oos: 'BMOS', codes: 'BMCD' };

export function savedPath(dir: string, name: string, kind: SavedKind): string {
  return path.join(dir, `${name}.${kind}`);
}

export interface SavedBody {
  segmentCount: number;
  imageSize: number;
  imageMtimeMs: number;
  body: Uint8Array;
}

export function saveState(dir: string, name: string, kind: SavedKind, state: SavedBody): void {
  const file = savedPath(dir, name, kind);
  const out = new Uint8Array(headerBytes + state.body.length);
  const view = new DataView(out.buffer);
  out.set(new TextEncoder().encode(magic[kind]), 0);
  view.setUint32(4, version, true);
  view.setUint32(8, state.segmentCount, true);
  view.setFloat64(12, state.imageSize, true);
  view.setFloat64(20, state.imageMtimeMs, true);
  view.setUint32(28, state.body.length, true);
  out.set(crypto.createHash('sha256').update(state.body).digest(), 32);
  out.set(state.body, headerBytes);
  writeFileAtomic(dir, file, out, kind === 'oos' ? 'out-of-sync map' : 'codes');
}

/**
 * Reads a saved file; undefined when it is missing or does not check (it is
 * then ignored: what it would have saved is rebuilt the slow way).
 */
export function loadState(dir: string, name: string, kind: SavedKind, expected: { segmentCount: number; bodyBytes: number }): SavedBody | undefined {
  const file = savedPath(dir, name, kind);
  let bytes: Uint8Array;
  try {
    bytes = new Uint8Array(fs.readFileSync(file));
  } catch {
    return undefined;
  }
  if (bytes.length !== headerBytes + expected.bodyBytes) return undefined;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (new TextDecoder().decode(bytes.subarray(0, 4)) !== magic[kind] || view.getUint32(4, true) !== version) return undefined;
  if (view.getUint32(8, true) !== expected.segmentCount || view.getUint32(28, true) !== expected.bodyBytes) return undefined;
  const body = bytes.subarray(headerBytes);
  const sum = crypto.createHash('sha256').update(body).digest();
  if (!Buffer.from(bytes.subarray(32, 64)).equals(sum)) return undefined;
  return { segmentCount: expected.segmentCount, imageSize: view.getFloat64(12, true), imageMtimeMs: view.getFloat64(20, true), body };
}

/** Deletes saved files that a crash would make stale (called once a volume is served again). */
export function removeState(dir: string, name: string): void {
  for (const kind of ['oos', 'codes'] as const) fs.rmSync(savedPath(dir, name, kind), { force: true });
}
