/**
 * Authentication of a link by HMAC challenge over a pre-shared secret.
 *
 * Each side sends a fresh 32-byte nonce; each proves it holds the secret with
 * HMAC-SHA256(secret, role ‖ its peer's nonce ‖ its own nonce). The secret
 * never crosses the wire, a proof is bound to both nonces (no replay), and
 * the role label keeps one side's proof from being reflected back as the
 * other's.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import { errors } from './errors.ts';

export const nonceBytes = 32;
export const secretBytesMax = 4096;

export function newNonce(): Uint8Array {
  return new Uint8Array(crypto.randomBytes(nonceBytes));
}

export type ProofRole = 'primary' | 'secondary' | 'controller' | 'member' | 'operator';

export function proof(secret: Uint8Array, role: ProofRole, peerNonce: Uint8Array, ownNonce: Uint8Array): Uint8Array {
  return new Uint8Array(crypto.createHmac('sha256', secret).update(`blockmirror ${role}`).update(peerNonce).update(ownNonce).digest());
}

export function proofMatches(expected: Uint8Array, given: unknown): boolean {
  return given instanceof Uint8Array && given.length === expected.length && crypto.timingSafeEqual(expected, given);
}

/** Reads a secret file: its bytes, without one trailing newline. Empty or oversized files are refused. */
export function readSecretFile(path: string): Uint8Array {
  let bytes: Uint8Array;
  try {
    bytes = new Uint8Array(fs.readFileSync(path));
  } catch (e) {
    throw errors.INVALID_ARGUMENT(`Cannot read secret file '${path}': ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  let end = bytes.length;
  if (end > 0 && bytes[end - 1] === 10) end--;
  if (end > 0 && bytes[end - 1] === 13) end--;
  if (end === 0 || end > secretBytesMax) throw errors.INVALID_ARGUMENT(`Cannot use secret file '${path}': it must hold 1 to ${secretBytesMax} bytes`);
  return bytes.subarray(0, end);
}
