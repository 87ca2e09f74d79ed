/**
 * The frame layout of the mirror link (docs/protocol.md has the diagram).
 *
 *   0  u32 magic 'BMF1'      8  u32 payload length P   16 u64 checksum
 *   4  u32 header length H  12  u32 reserved, 0        24 header (H bytes, msgpack) | payload (P bytes) | 0-7 pad
 *
 * The checksum is XXH3-64 of the header and payload bytes, so corruption on
 * the link is detected before anything is applied. The header is a msgpack
 * array whose first element is the frame type. Frames are padded to 8 bytes
 * so that a journal ring can hold them back to back and send them as they
 * are.
 *
 * This module only lays bytes out; frame-decoder.ts parses and checks them.
 */
import { Packr } from 'msgpackr';

export const frameMagic = 0x31464d42; // 'BMF1' little-endian
export const prefixBytes = 24;
/** Largest msgpack header accepted; a larger length field closes the link before anything is buffered. */
export const headerBytesMax = 4096;
/** Default largest payload per frame (one record); larger writes are split. */
export const payloadBytesMaxDefault = 4 * 1024 * 1024;

export const FrameType = {
  /** first frame of a secondary (to a primary) and of a control endpoint: [type, {version, nonce, auth, role?}] */
  challenge: 1,
  /** primary → secondary: [type, {version, nonce, proof?, seq, mode}] + JSON volumes (with generations) */
  hello: 2,
  /** secondary → primary: [type, {version, proof?}] + JSON per volume: created, resync plan, consistent */
  welcome: 3,
  /** either way, then close: [type, code, message] */
  refuse: 4,
  /** primary → secondary: [type, seq, volume, offset, flags] + payload bytes */
  write: 5,
  /** primary → secondary: [type, seq, volume, offset, length] */
  zeroes: 6,
  /** primary → secondary: [type, seq]; acknowledged once every volume is durable */
  flush: 7,
  /** secondary → primary: [type, seq] = every record up to seq is applied */
  ack: 8,
  /** either way: [type, stamp] */
  ping: 9,
  /** either way: [type, stamp] */
  pong: 10,
  /** status client → control endpoint: [type] */
  status: 11,
  /** control endpoint → status client: [type] + JSON payload */
  statusReply: 12,
  // Consistency-group control (docs/protocol.md, "Control"). Each is [type, {fields}].
  /** controller → member, after the member's challenge: joins it to a group */
  join: 13,
  /** member → controller: the join is accepted; the member's phase, link and volumes */
  joined: 14,
  /** member → controller: a mirror failed here; writes are held */
  notice: 15,
  /** controller → member: hold writes and stop mirroring */
  freeze: 16,
  /** member → controller: frozen for this epoch */
  frozen: 17,
  /** controller → member: release held writes: go (complete locally) or stop (fail them) */
  run: 18,
  /** member → controller: phase, link and volume states changed */
  memberState: 19,
  /** controller → member: every member can mirror again: resync together */
  resume: 20,
  /** controller → member: the controller stops cleanly; the member leaves the group */
  leave: 21,
  /** operator → control endpoint: freeze or run */
  command: 22,
  /** control endpoint → operator: the command's outcome */
  reply: 23,
  // Resync by codes (docs/protocol.md, "Resync"). Records carry a sequence number like writes.
  /** primary → secondary record: [type, seq, volume, gen]: a resync toward generation gen starts */
  syncBegin: 24,
  /** primary → secondary record: [type, seq, volume, first, count, tag]: send the codes of segments first..first+count */
  codesRequest: 25,
  /** secondary → primary: [type, volume, first, count, tag] + codes (count × code bytes) */
  codesReply: 26,
  /** primary → secondary record: [type, seq, volume, gen, history]: the resync ended; acknowledged once the image is consistent and durable */
  syncEnd: 27,
} as const;

/** Frame types whose header is exactly [type, {fields}]. */
export const objectFrameTypes: ReadonlySet<number> = new Set([1, 2, 3, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23]);
/** Of those, the ones that may carry a payload: volume lists as JSON (hello, welcome, joined, memberState), which may outgrow a header. */
export const objectPayloadFrameTypes: ReadonlySet<number> = new Set([2, 3, 14, 19]);

export type FrameTypeValue = (typeof FrameType)[keyof typeof FrameType];

export const WriteFlag = {
  /** The write is part of a resync, not of the application's stream. */
  resync: 1,
  /** Force unit access: apply durably before acknowledging. */
  fua: 2,
} as const;

/** One msgpack encoder for frame headers: plain arrays, no records, no extension types. */
export const headerPackr = new Packr({ useRecords: false, moreTypes: false, variableMapSize: true, encodeUndefinedAsNil: true });

/**
 * Where a frame's payload starts, from the frame's start: after the prefix
 * and the header, the header padded with zeroes to a multiple of 8 bytes.
 * Frames start on multiples of 8, so a payload lies 8-byte aligned wherever
 * its frame does. That matters for speed on V8 (Node, Deno): copying into
 * shared memory (a volume, the journal ring) from a source whose address
 * differs from the destination's modulo 8 goes byte by byte, about 4 GB/s
 * here instead of 15 to 18.
 */
export function payloadStart(headerBytes: number): number {
  return prefixBytes + ((headerBytes + 7) & ~7);
}

/** A frame's whole length: prefix, padded header, payload, padded to a multiple of 8. */
export function alignedFrameBytes(headerBytes: number, payloadBytes: number): number {
  return (payloadStart(headerBytes) + payloadBytes + 7) & ~7;
}

/**
 * Lays out a frame at `at` in `target`: prefix, header, payload. The
 * checksum field is left 0 for the sender to fill in place (see
 * `sealFrame`). Returns the aligned frame length.
 */
export function writeFrame(target: Uint8Array, view: DataView, at: number, header: Uint8Array, payload?: Uint8Array): number {
  const p = payload ? payload.length : 0;
  view.setUint32(at, frameMagic, true);
  view.setUint32(at + 4, header.length, true);
  view.setUint32(at + 8, p, true);
  view.setUint32(at + 12, 0, true);
  view.setBigUint64(at + 16, 0n, true);
  target.set(header, at + prefixBytes);
  const payloadAt = at + payloadStart(header.length);
  target.fill(0, at + prefixBytes + header.length, payloadAt);
  if (payload) target.set(payload, payloadAt);
  const bytes = alignedFrameBytes(header.length, p);
  target.fill(0, payloadAt + p, at + bytes);
  return bytes;
}

/** Fills the checksum of the frame at `at` from its header, header padding and payload bytes. */
export function sealFrame(view: DataView, at: number, checksum: (from: number, length: number) => bigint): void {
  const length = payloadStart(view.getUint32(at + 4, true)) - prefixBytes + view.getUint32(at + 8, true);
  view.setBigUint64(at + 16, checksum(at + prefixBytes, length), true);
}
