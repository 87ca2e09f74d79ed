/**
 * One primary's connection to the secondary: handshake, then records
 * applied strictly in sequence order, then acknowledgements.
 *
 * States: hello (challenge sent, waiting for the primary's hello) →
 * streaming → closed. Any bad frame, a record out of order, a record for an
 * unknown volume or outside its volume, or a failed authentication sends a
 * refusal with a stable code and closes the connection; nothing of the bad
 * frame is applied (the decoder checks a frame whole before handing it on,
 * and a volume checks a range before writing a byte).
 *
 * Acknowledgements are batched: one per chunk of input, for the last record
 * applied. A flush, or a write with FUA, is a durability barrier: no
 * acknowledgement reaches past it until the volumes are synced.
 */
import { errors, type BlockmirrorError } from './errors.ts';
import { newNonce, proof, proofMatches } from './auth.ts';
import { FrameDecoder, type Frame } from './frame-decoder.ts';
import { FrameEncoder } from './frame-encoder.ts';
import { FrameType, WriteFlag } from './frame.ts';
import type { Link } from './link.ts';
import type { Volume } from './volume.ts';

export const protocolVersion = 1;
/** A primary must complete the handshake within this time. */
export const handshakeTimeoutMs = 10_000;
/** Most volumes one link may carry. */
export const volumesPerLinkMax = 4096;

export interface VolumeRequest {
  name: string;
  size: number;
  blockSize: number;
  segmentSize: number;
  code: string;
}

export interface SessionHooks {
  secret: Uint8Array | undefined;
  payloadBytesMax: number | undefined;
  /** Opens the volumes asked for; throws a BlockmirrorError to refuse. */
  claim(requests: VolumeRequest[]): Promise<{ volumes: Volume[]; created: boolean[] }>;
  release(): void;
}

export class SecondarySession {
  readonly closed: Promise<void>;
  appliedSeq = 0;
  /** Why the session ended, when a refusal ended it. */
  error: BlockmirrorError | undefined;
  private readonly link: Link;
  private readonly hooks: SessionHooks;
  private readonly encoder: FrameEncoder;
  private readonly decoder: FrameDecoder;
  private readonly nonce = newNonce();
  private state: 'hello' | 'claiming' | 'streaming' | 'closed' = 'hello';
  private volumes: Volume[] = [];
  private expectedSeq = 0;
  private ackedSeq = 0;
  /** Sequence numbers of durability barriers not yet synced, in order. */
  private readonly barriers: number[] = [];
  private resolveClosed!: () => void;
  private readonly handshakeTimer: ReturnType<typeof setTimeout>;

  constructor(link: Link, hooks: SessionHooks) {
    this.link = link;
    this.hooks = hooks;
    this.closed = new Promise((r) => (this.resolveClosed = r));
    this.encoder = new FrameEncoder(hooks.payloadBytesMax);
    this.decoder = new FrameDecoder({
      payloadBytesMax: hooks.payloadBytesMax,
      onFrame: (frame) => this.onFrame(frame),
      onError: (error) => this.refuse(error),
    });
    link.onData((chunk) => {
      this.decoder.feed(chunk);
      this.maybeAck();
    });
    link.onClose(() => this.finish());
    this.handshakeTimer = setTimeout(() => this.refuse(errors.AUTH(`Cannot accept primary ${link.remote}: no hello within ${handshakeTimeoutMs} ms`)), handshakeTimeoutMs);
    link.send(this.encoder.encode([FrameType.challenge, { version: protocolVersion, nonce: this.nonce, auth: !!hooks.secret }]));
  }

  /** Ends the session (secondary shutting down). */
  end(reason: string): void {
    this.link.destroy(reason);
    this.finish();
  }

  private onFrame(frame: Frame): void {
    if (this.state === 'closed') return;
    const h = frame.header;
    switch (frame.type) {
      case FrameType.ping:
        this.link.send(this.encoder.encode([FrameType.pong, h[1]]));
        return;
      case FrameType.pong:
        return;
      case FrameType.hello:
        if (this.state !== 'hello') return this.refuse(errors.FRAME_TYPE('Cannot accept hello: the handshake is already done'));
        return void this.onHello(h[1] as Record<string, unknown>);
      case FrameType.write:
      case FrameType.zeroes:
      case FrameType.flush:
        if (this.state !== 'streaming') return this.refuse(errors.FRAME_TYPE(`Cannot accept a record before the handshake is done`));
        return this.onRecord(frame);
      default:
        return this.refuse(errors.FRAME_TYPE(`Cannot accept frame type ${frame.type} from a primary`));
    }
  }

  private async onHello(hello: Record<string, unknown>): Promise<void> {
    this.state = 'claiming';
    this.link.pause();
    try {
      if (hello.version !== protocolVersion) throw errors.MISMATCH(`Cannot accept primary: it speaks protocol ${String(hello.version)}, this secondary ${protocolVersion}`);
      const secret = this.hooks.secret;
      const peerNonce = hello.nonce;
      if (!(peerNonce instanceof Uint8Array) || peerNonce.length !== this.nonce.length) throw errors.FRAME_HEADER('Cannot accept hello: nonce missing or malformed');
      if (secret && !proofMatches(proof(secret, 'primary', this.nonce, peerNonce), hello.proof)) {
        throw errors.AUTH(`Cannot accept primary ${this.link.remote}: ${hello.proof === undefined ? 'it gave no proof of the secret' : 'wrong secret'}`);
      }
      if (!Number.isInteger(hello.seq) || (hello.seq as number) < 0 || (hello.seq as number) > 0xffffffff) throw errors.FRAME_HEADER('Cannot accept hello: bad first sequence number');
      const requests = checkVolumes(hello.volumes);
      const claimed = await this.hooks.claim(requests);
      this.volumes = claimed.volumes;
      if ((this.state as string) === 'closed') return this.hooks.release();
      this.expectedSeq = hello.seq as number;
      this.ackedSeq = this.appliedSeq = (this.expectedSeq - 1) >>> 0;
      clearTimeout(this.handshakeTimer);
      this.link.send(
        this.encoder.encode([
          FrameType.welcome,
          { version: protocolVersion, proof: secret ? proof(secret, 'secondary', peerNonce, this.nonce) : undefined, created: claimed.created },
        ]),
      );
      this.state = 'streaming';
      this.link.resume();
    } catch (e) {
      this.refuse(e as BlockmirrorError);
    }
  }

  private onRecord(frame: Frame): void {
    const h = frame.header;
    const seq = h[1] as number;
    if (seq !== this.expectedSeq) {
      return this.refuse(errors.FRAME_ORDER(`Cannot apply record ${seq}: expected record ${this.expectedSeq}`));
    }
    try {
      if (frame.type === FrameType.flush) {
        this.barrier(seq, this.volumes);
      } else {
        const volume = this.volumes[h[2] as number];
        if (!volume) return this.refuse(errors.FRAME_HEADER(`Cannot apply record ${seq}: no volume ${h[2]} on this link`));
        if (frame.type === FrameType.write) volume.writeSync(h[3] as number, frame.payload);
        else volume.writeZeroesSync(h[3] as number, h[4] as number);
        if (frame.type === FrameType.write && ((h[4] as number) & WriteFlag.fua) !== 0) this.barrier(seq, [volume]);
      }
    } catch (e) {
      return this.refuse(e as BlockmirrorError);
    }
    this.appliedSeq = seq;
    this.expectedSeq = (seq + 1) >>> 0;
  }

  private barrier(seq: number, volumes: Volume[]): void {
    this.barriers.push(seq);
    Promise.all(volumes.map((v) => v.flush())).then(
      () => {
        this.barriers.splice(this.barriers.indexOf(seq), 1);
        this.maybeAck();
      },
      (e) => this.refuse(e as BlockmirrorError),
    );
  }

  private maybeAck(): void {
    if (this.state !== 'streaming') return;
    const limit = this.barriers.length ? (this.barriers[0]! - 1) >>> 0 : this.appliedSeq;
    if (limit === this.ackedSeq || ((limit - this.ackedSeq) | 0) < 0) return;
    this.ackedSeq = limit;
    this.link.send(this.encoder.encode([FrameType.ack, limit]));
  }

  private refuse(error: BlockmirrorError): void {
    if (this.state === 'closed') return;
    this.error = error;
    const code = typeof error?.code === 'string' ? error.code : 'BM_ERR_ASSERTION';
    const message = String(error?.message ?? error);
    try {
      this.link.send(this.encoder.encode([FrameType.refuse, code, message]));
    } catch {
      // The refusal is a courtesy; the close below is what matters.
    }
    this.link.end();
    setTimeout(() => this.link.destroy(code), 100).unref?.();
    this.finish();
  }

  private finish(): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    clearTimeout(this.handshakeTimer);
    this.hooks.release();
    this.resolveClosed();
  }
}

const volumeNamePattern = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

function checkVolumes(value: unknown): VolumeRequest[] {
  if (!Array.isArray(value) || value.length === 0 || value.length > volumesPerLinkMax) {
    throw errors.FRAME_HEADER(`Cannot accept hello: volumes must be a list of 1 to ${volumesPerLinkMax}`);
  }
  const names = new Set<string>();
  return value.map((v: any) => {
    const ok =
      v && typeof v.name === 'string' && volumeNamePattern.test(v.name) && Number.isSafeInteger(v.size) && v.size > 0 &&
      Number.isSafeInteger(v.blockSize) && Number.isSafeInteger(v.segmentSize) && typeof v.code === 'string';
    if (!ok) throw errors.FRAME_HEADER(`Cannot accept hello: malformed volume entry`);
    if (names.has(v.name)) throw errors.FRAME_HEADER(`Cannot accept hello: volume '${v.name}' listed twice`);
    names.add(v.name);
    return { name: v.name, size: v.size, blockSize: v.blockSize, segmentSize: v.segmentSize, code: v.code };
  });
}
