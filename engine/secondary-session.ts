/**
 * One primary's connection to the secondary: handshake, then records
 * applied strictly in sequence order, then acknowledgements.
 *
 * States: hello (challenge sent, waiting for the primary's hello) →
 * claiming → streaming → closed. Any bad frame, a record out of order, a
 * record for an unknown volume or outside its volume, or a failed
 * authentication sends a refusal with a stable code and closes the
 * connection; nothing of the bad frame is applied (the decoder checks a
 * frame whole before handing it on, and a volume checks a range before
 * writing a byte).
 *
 * The hello names each volume with its generation ids; the secondary
 * answers with a resync plan per volume (resync-plan.ts), or refuses a
 * split brain. Resync records (begin, codes request, end) arrive in the
 * same ordered stream as writes: a codes request is answered with the
 * codes of the segments it names once every record before it is applied
 * (and the codes are current); an end is acknowledged only once the image
 * is consistent and durable.
 *
 * Acknowledgements are batched: one per chunk of input, for the last record
 * applied. A flush, a write with FUA and a resync end are barriers: no
 * acknowledgement reaches past them until they are done.
 */
import { setImmediate } from 'node:timers';
import { errors, type BlockmirrorError } from './errors.ts';
import { newNonce, proof, proofMatches } from './auth.ts';
import { FrameDecoder, type Frame } from './frame-decoder.ts';
import { FrameEncoder } from './frame-encoder.ts';
import { FrameType, WriteFlag } from './frame.ts';
import type { Link } from './link.ts';
import type { ResyncTarget } from './resync-target.ts';
import type { SourceGeneration, ResyncPlan } from './resync-plan.ts';
import { decodeJson, encodeJson } from './json-payload.ts';

export const protocolVersion = 3;
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

/** A volume as a primary's hello names it: geometry and generations. */
export interface VolumeHello extends VolumeRequest, SourceGeneration {}

/** What the secondary answers for each volume. */
export interface VolumeWelcome extends ResyncPlan {
  created: boolean;
  /** The secondary image's generation (after the plan; undefined for an image of unknown history). */
  gen?: string;
  /** The secondary image is a point-in-time copy (false while a resync into it is unfinished). */
  consistent: boolean;
}

export interface SessionHooks {
  secret: Uint8Array | undefined;
  payloadBytesMax: number | undefined;
  /** Opens the volumes asked for and plans their resync; throws a BlockmirrorError to refuse. */
  claim(requests: VolumeHello[]): Promise<{ targets: ResyncTarget[]; welcome: VolumeWelcome[] }>;
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
  private targets: ResyncTarget[] = [];
  private expectedSeq = 0;
  private ackedSeq = 0;
  private ackScheduled = false;
  /** Sequence numbers of barriers not yet done, in order. */
  private readonly barriers: number[] = [];
  /** Codes requests are answered one after another, in order. */
  private replies: Promise<void> = Promise.resolve();
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
    link.steer?.((readArea) => this.decoder.readTarget(readArea));
    link.onData((chunk) => {
      this.decoder.feed(chunk);
      // One acknowledgement for every chunk read in this turn of the event loop, not one per chunk:
      // when records arrive faster than they are applied, the socket delivers several chunks per turn.
      if (this.ackScheduled) return;
      this.ackScheduled = true;
      setImmediate(() => {
        this.ackScheduled = false;
        this.maybeAck();
      });
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
        return void this.onHello(h[1] as Record<string, unknown>, frame.payload.length ? decodeJsonSafe(frame.payload) : undefined);
      case FrameType.write:
      case FrameType.zeroes:
      case FrameType.flush:
      case FrameType.syncBegin:
      case FrameType.codesRequest:
      case FrameType.syncEnd:
        if (this.state !== 'streaming') return this.refuse(errors.FRAME_TYPE(`Cannot accept a record before the handshake is done`));
        return this.onRecord(frame);
      default:
        return this.refuse(errors.FRAME_TYPE(`Cannot accept frame type ${frame.type} from a primary`));
    }
  }

  private async onHello(hello: Record<string, unknown>, volumes: unknown): Promise<void> {
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
      if (volumes instanceof Error) throw volumes;
      const requests = checkVolumes(volumes);
      const proofBack = secret ? proof(secret, 'secondary', new Uint8Array(peerNonce), this.nonce) : undefined;
      const claimed = await this.hooks.claim(requests);
      this.targets = claimed.targets;
      if ((this.state as string) === 'closed') return this.hooks.release();
      this.expectedSeq = hello.seq as number;
      this.ackedSeq = this.appliedSeq = (this.expectedSeq - 1) >>> 0;
      clearTimeout(this.handshakeTimer);
      this.link.send(this.encoder.encode([FrameType.welcome, { version: protocolVersion, proof: proofBack }], encodeJson(claimed.welcome)));
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
        this.barrier(seq, Promise.all(this.targets.map((t) => t.flush())));
      } else {
        const target = this.targets[h[2] as number];
        if (!target) return this.refuse(errors.FRAME_HEADER(`Cannot apply record ${seq}: no volume ${h[2]} on this link`));
        switch (frame.type) {
          case FrameType.write:
            target.write(h[3] as number, frame.payload);
            if (((h[4] as number) & WriteFlag.fua) !== 0) this.barrier(seq, target.flush());
            break;
          case FrameType.zeroes:
            target.writeZeroes(h[3] as number, h[4] as number);
            break;
          case FrameType.syncBegin:
            target.begin(h[3] as string);
            break;
          case FrameType.syncEnd:
            this.barrier(seq, target.end(h[3] as string, h[4] as string[]));
            break;
          case FrameType.codesRequest:
            this.answerCodes(target, h[2] as number, h[3] as number, h[4] as number, h[5] as number);
            break;
        }
      }
    } catch (e) {
      return this.refuse(e as BlockmirrorError);
    }
    this.appliedSeq = seq;
    this.expectedSeq = (seq + 1) >>> 0;
  }

  /**
   * Sends the codes of segments first..first+count of a volume, computing
   * any that are not current, after every record before the request was
   * applied. Writes that arrive meanwhile may be in the codes too; the
   * primary's comparison stays correct (engine/resync.ts explains why).
   */
  private answerCodes(target: ResyncTarget, index: number, first: number, count: number, tag: number): void {
    const volume = target.volume;
    if (first + count > volume.segmentCount) throw errors.OUT_OF_RANGE(`Cannot send codes of segments ${first}..${first + count} of volume '${volume.name}': it has ${volume.segmentCount}`);
    this.replies = this.replies.then(async () => {
      if (this.isClosed()) return;
      try {
        const codes = await volume.currentCodes(first, count);
        if (this.isClosed()) return;
        this.link.send(this.encoder.encode([FrameType.codesReply, index, first, count, tag], codes));
      } catch (e) {
        this.refuse(e as BlockmirrorError);
      }
    });
  }

  private isClosed(): boolean {
    return this.state === 'closed';
  }

  private barrier(seq: number, done: Promise<unknown>): void {
    this.barriers.push(seq);
    done.then(
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

function decodeJsonSafe(bytes: Uint8Array): unknown {
  try {
    return decodeJson(bytes);
  } catch (e) {
    return e;
  }
}

const volumeNamePattern = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const genPattern = /^[0-9a-f]{16}$/;

function checkVolumes(value: unknown): VolumeHello[] {
  if (!Array.isArray(value) || value.length === 0 || value.length > volumesPerLinkMax) {
    throw errors.FRAME_HEADER(`Cannot accept hello: volumes must be a list of 1 to ${volumesPerLinkMax}`);
  }
  const names = new Set<string>();
  const isGen = (g: unknown) => typeof g === 'string' && genPattern.test(g);
  return value.map((v: any) => {
    const ok =
      v && typeof v.name === 'string' && volumeNamePattern.test(v.name) && Number.isSafeInteger(v.size) && v.size > 0 &&
      Number.isSafeInteger(v.blockSize) && Number.isSafeInteger(v.segmentSize) && typeof v.code === 'string' &&
      isGen(v.gen) && isGen(v.oosBase) && Array.isArray(v.history) && v.history.length <= 16 && v.history.every(isGen) &&
      typeof v.oosTrusted === 'boolean' && typeof v.fresh === 'boolean';
    if (!ok) throw errors.FRAME_HEADER(`Cannot accept hello: malformed volume entry`);
    if (names.has(v.name)) throw errors.FRAME_HEADER(`Cannot accept hello: volume '${v.name}' listed twice`);
    names.add(v.name);
    return {
      name: v.name, size: v.size, blockSize: v.blockSize, segmentSize: v.segmentSize, code: v.code,
      gen: v.gen, history: v.history, oosBase: v.oosBase, oosTrusted: v.oosTrusted, fresh: v.fresh,
    };
  });
}
