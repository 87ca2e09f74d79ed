/**
 * Operating errors of blockmirror.
 *
 * Every error a caller can meet carries a stable string `code` (listed in
 * docs/errors.md) and a one-line message naming what was refused and why.
 * Tests and callers branch on `code`, never on the message text. Errors cross
 * worker boundaries as plain `{ code, message }` objects (a class does not
 * survive `postMessage`) and are rebuilt with `fromPlain`.
 */

export class BlockmirrorError extends Error {
  readonly code: string;

  constructor(code: string, message: string) {
    super(message);
    this.name = 'BlockmirrorError';
    this.code = code;
  }

  toPlain(): PlainError {
    return { code: this.code, message: this.message };
  }
}

export interface PlainError {
  code: string;
  message: string;
}

/** Rebuilds an error that crossed a worker or process boundary. */
export function fromPlain(plain: PlainError): BlockmirrorError {
  return new BlockmirrorError(plain.code, plain.message);
}

const make = (code: string) => (message: string) => new BlockmirrorError(code, message);

/** One factory per code; docs/errors.md lists them all with their meaning. */
export const errors = {
  /** An argument has the wrong type or is not a usable number. */
  INVALID_ARGUMENT: make('BM_ERR_INVALID_ARGUMENT'),
  /** An offset or length reaches outside the volume. */
  OUT_OF_RANGE: make('BM_ERR_OUT_OF_RANGE'),
  /** A block, segment or volume size that cannot be used. */
  BAD_GEOMETRY: make('BM_ERR_BAD_GEOMETRY'),
  /** The volume (or pool) was closed. */
  CLOSED: make('BM_ERR_CLOSED'),
  /** An image file could not be opened or created. */
  IMAGE_OPEN: make('BM_ERR_IMAGE_OPEN'),
  /** An image file exists but its size differs from the volume's. */
  IMAGE_SIZE: make('BM_ERR_IMAGE_SIZE'),
  /** Creating an image that is already there. */
  IMAGE_EXISTS: make('BM_ERR_IMAGE_EXISTS'),
  /** A read, write or sync of an image file failed. */
  IO: make('BM_ERR_IO'),
  /** A code algorithm this build does not know. */
  UNKNOWN_ALGORITHM: make('BM_ERR_UNKNOWN_ALGORITHM'),
  /** A bounded wait ended before what it waited for happened. */
  TIMEOUT: make('BM_ERR_TIMEOUT'),
  /** A worker failed to start or died. */
  WORKER: make('BM_ERR_WORKER'),
  /** A frame whose magic is not 'BMF1' or whose reserved field is not 0. */
  FRAME_MAGIC: make('BM_ERR_FRAME_MAGIC'),
  /** A frame whose header or payload length is over its limit (refused before buffering). */
  FRAME_TOO_LARGE: make('BM_ERR_FRAME_TOO_LARGE'),
  /** A frame whose checksum does not match its bytes. */
  FRAME_CHECKSUM: make('BM_ERR_FRAME_CHECKSUM'),
  /** A frame header that is not valid msgpack or has the wrong shape for its type. */
  FRAME_HEADER: make('BM_ERR_FRAME_HEADER'),
  /** A frame type that is unknown, or not allowed at this point of the exchange. */
  FRAME_TYPE: make('BM_ERR_FRAME_TYPE'),
  /** A record whose sequence number is not the next one expected. */
  FRAME_ORDER: make('BM_ERR_FRAME_ORDER'),
  /** A WebSocket client broke RFC 6455 (an unmasked or text frame, reserved bits, a frame over the limit...); closed with the RFC's status code. */
  WEBSOCKET: make('BM_ERR_WEBSOCKET'),
  /** A connection to a peer could not be made. */
  CONNECT: make('BM_ERR_CONNECT'),
  /** A listening socket could not be opened. */
  LISTEN: make('BM_ERR_LISTEN'),
  /** The peer failed authentication, or asked for it without our having a secret. */
  AUTH: make('BM_ERR_AUTH'),
  /** The peers disagree on protocol version or on a volume (size, block size, segment size, code). */
  MISMATCH: make('BM_ERR_MISMATCH'),
  /** The peer refused the link; the message carries its code and reason. */
  REFUSED: make('BM_ERR_REFUSED'),
  /** A resource is held by someone else (a volume by another primary's session). */
  BUSY: make('BM_ERR_BUSY'),
  /** A mirror link closed or failed. */
  LINK_LOST: make('BM_ERR_LINK_LOST'),
  /** The peer did not acknowledge a record within the acknowledgement deadline. */
  ACK_TIMEOUT: make('BM_ERR_ACK_TIMEOUT'),
  /** The peer sent nothing for several heartbeat intervals. */
  HEARTBEAT: make('BM_ERR_HEARTBEAT'),
  /** Writes are fenced: the consistency group froze with policy `stop` and no RUN has come yet. */
  FROZEN: make('BM_ERR_FROZEN'),
  /** A control request names a group this member does not belong to, or needs a group it has not joined. */
  UNKNOWN_GROUP: make('BM_ERR_UNKNOWN_GROUP'),
  /** A consistency group that cannot keep its promise: async members on more than one channel. */
  GROUP_ASYNC: make('BM_ERR_GROUP_ASYNC'),
  /** A metadata file that is missing fields, corrupt, truncated, foreign or of another volume: never trusted. */
  METADATA: make('BM_ERR_METADATA'),
  /** Both sides were written since they last agreed (generation ids): refused until an operator names the survivor. */
  SPLIT_BRAIN: make('BM_ERR_SPLIT_BRAIN'),
  /** The target holds a newer generation than the source (it was promoted and written since): the source must become the target. */
  STALE_SOURCE: make('BM_ERR_STALE_SOURCE'),
  /** A volume whose role does not allow the operation (a secondary's copy started as a primary without promote, ...). */
  ROLE: make('BM_ERR_ROLE'),
  /** Bad command-line usage. */
  USAGE: make('BM_ERR_USAGE'),
  /** A broken internal invariant: a bug, never an operating condition. */
  ASSERTION: make('BM_ERR_ASSERTION'),
} as const;

export type ErrorCode = ReturnType<(typeof errors)[keyof typeof errors]>['code'];

/**
 * Checks an invariant and stays on in production: continuing in an incorrect
 * state is worse than stopping (for a replicated store, stopping means
 * freezing the group).
 */
export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw errors.ASSERTION(`Invariant broken: ${message}`);
}
