/**
 * One control connection, seen from either end: a controller talking to a
 * member, a member answering its controller, an operator's command or a
 * status request. It frames and checks bytes (the mirror link's framing,
 * docs/protocol.md), answers pings, keeps the times of the last frame heard
 * and sent (the controller's lease arithmetic needs both), and fails the
 * connection when the peer goes silent for `heartbeatsMissedMax` heartbeat
 * periods.
 *
 * Every bad frame closes the connection with a refusal naming a stable code;
 * a refusal from the peer closes it too, with the peer's code. `onClose` is
 * called exactly once, with the error when there was one.
 */
import { BlockmirrorError, errors } from './errors.ts';
import { FrameDecoder, type Frame } from './frame-decoder.ts';
import { FrameEncoder } from './frame-encoder.ts';
import { FrameType } from './frame.ts';
import type { Link } from './link.ts';

/** Largest payload on a control connection: a status reply's JSON. */
export const controlPayloadBytesMax = 1024 * 1024;

export interface ControlPeerOptions {
  link: Link;
  /** Largest payload this end accepts (status replies only; 0 elsewhere). */
  payloadBytesMax?: number;
  onFrame(frame: Frame, peer: ControlPeer): void;
  /** `byPeer`: the peer refused (the error is its refusal), rather than this end or the link. */
  onClose?(reason: string, error: BlockmirrorError | undefined, byPeer: boolean): void;
  /** Ping the peer this often, and fail the connection after `heartbeatsMissedMax` silent periods. */
  heartbeatMs?: number;
  heartbeatsMissedMax?: number;
}

let encoder: FrameEncoder | undefined;

/** One encoder per thread serves every control connection: frames are copied out as they are sealed. */
function sharedEncoder(): FrameEncoder {
  return (encoder ??= new FrameEncoder(controlPayloadBytesMax));
}

export class ControlPeer {
  readonly link: Link;
  /** performance.now() of the last frame heard from the peer, and of the last one sent to it. */
  lastHeard = performance.now();
  lastSent = 0;
  private readonly onFrameListener: ControlPeerOptions['onFrame'];
  private readonly onCloseListener: ControlPeerOptions['onClose'];
  private readonly decoder: FrameDecoder;
  private timer: ReturnType<typeof setInterval> | undefined;
  private isClosed = false;

  constructor(options: ControlPeerOptions) {
    this.link = options.link;
    this.onFrameListener = options.onFrame;
    this.onCloseListener = options.onClose;
    this.decoder = new FrameDecoder({
      payloadBytesMax: options.payloadBytesMax ?? 0,
      onError: (e) => this.refuse(e),
      onFrame: (frame) => this.receive(frame),
    });
    // Listen from the next microtask: a link may hand over bytes it already
    // holds at once, and the owner's handlers must see a constructed peer.
    queueMicrotask(() => {
      this.link.onData((chunk) => this.decoder.feed(chunk));
      this.link.onClose((reason) => this.finish(reason, undefined));
    });
    const period = options.heartbeatMs;
    if (period !== undefined && period > 0) {
      const silentMaxMs = period * (options.heartbeatsMissedMax ?? 3);
      this.timer = setInterval(() => {
        const silent = performance.now() - this.lastHeard;
        if (silent > silentMaxMs) return this.close(errors.HEARTBEAT(`Lost the control link to ${this.link.remote}: nothing heard for ${Math.round(silent)} ms`));
        this.send([FrameType.ping, Math.round(performance.now())]);
      }, period);
      (this.timer as { unref?: () => void }).unref?.();
    }
  }

  get closed(): boolean {
    return this.isClosed;
  }

  send(header: unknown[], payload?: Uint8Array): void {
    if (this.isClosed) return;
    this.lastSent = performance.now();
    this.link.send(sharedEncoder().encode(header, payload));
  }

  /** Sends a refusal naming `error`'s code, then closes. */
  refuse(error: BlockmirrorError): void {
    if (this.isClosed) return;
    this.send([FrameType.refuse, error.code, error.message]);
    this.link.end();
    // A peer that does not close its end is cut after a moment.
    setTimeout(() => this.link.destroy(error.code), 200).unref?.();
    this.finish(error.message, error);
  }

  /** Closes now; `error` (if any) is what `onClose` reports. */
  close(error?: BlockmirrorError): void {
    if (this.isClosed) return;
    this.link.destroy(error?.code ?? 'closed');
    this.finish(error?.message ?? 'closed', error);
  }

  private receive(frame: Frame): void {
    if (this.isClosed) return;
    this.lastHeard = performance.now();
    if (frame.type === FrameType.ping) return this.send([FrameType.pong, frame.header[1]]);
    if (frame.type === FrameType.pong) return;
    if (frame.type === FrameType.refuse) {
      const code = /^BM_ERR_[A-Z_]+$/.test(String(frame.header[1])) ? String(frame.header[1]) : 'BM_ERR_REFUSED';
      const error = new BlockmirrorError(code, `${this.link.remote} refused: ${String(frame.header[2])}`);
      this.link.destroy(code);
      return this.finish(error.message, error, true);
    }
    try {
      this.onFrameListener(frame, this);
    } catch (e) {
      // A handler that throws a BlockmirrorError is refusing the frame; anything else is a bug, reported the same way.
      this.refuse(e instanceof BlockmirrorError ? e : errors.ASSERTION(`Invariant broken: control frame handler failed: ${String(e)}`));
    }
  }

  private finish(reason: string, error: BlockmirrorError | undefined, byPeer = false): void {
    if (this.isClosed) return;
    this.isClosed = true;
    if (this.timer) clearInterval(this.timer);
    this.onCloseListener?.(reason, error, byPeer);
  }
}

/** Reads a field of a control frame's object, or refuses the frame with BM_ERR_FRAME_HEADER. */
export function field<T>(fields: Record<string, unknown>, name: string, check: (v: unknown) => boolean, what: string): T {
  const value = fields[name];
  if (!check(value)) throw errors.FRAME_HEADER(`Cannot read control frame: '${name}' must be ${what}`);
  return value as T;
}

export const isCount = (v: unknown): boolean => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
export const isMs = (v: unknown): boolean => typeof v === 'number' && Number.isSafeInteger(v) && v >= 1 && v <= 24 * 3600 * 1000;
export const isName = (v: unknown): boolean => typeof v === 'string' && /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(v);
export const isBytes = (v: unknown): boolean => v instanceof Uint8Array;
