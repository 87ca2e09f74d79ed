/**
 * JSON carried as a frame payload: volume lists in handshakes and member
 * reports, which can outgrow a 4 KiB msgpack header, and status replies.
 */
import { errors } from './errors.ts';

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder();

export function encodeJson(value: unknown): Uint8Array {
  return textEncoder.encode(JSON.stringify(value));
}

/** Parses a JSON payload; anything else is refused with BM_ERR_FRAME_HEADER. */
export function decodeJson(bytes: Uint8Array): unknown {
  try {
    return JSON.parse(textDecoder.decode(bytes));
  } catch {
    throw errors.FRAME_HEADER('Cannot read frame: its payload is not JSON');
  }
}
