/**
 * A control endpoint (`--control URL`): a primary's, or a controller's. It
 * answers status requests, takes an operator's `freeze` and `run`, and, on a
 * primary, accepts a controller's JOIN and then carries that controller's
 * FREEZE, RUN, RESUME and LEAVE to the primary's group member (member.ts).
 * The framing is the mirror link's, over tcp:// or ws:// (or an in-process
 * link); docs/protocol.md has the frames.
 *
 * Every connection starts with a challenge naming a fresh nonce. Status is
 * read without proof. With a secret, a controller's JOIN and an operator's
 * command must carry an HMAC proof over both nonces, and the endpoint proves
 * itself back to the controller. A bad frame, an unknown request, a command
 * for another group or a failed proof is refused with a stable code and the
 * connection closed; nothing changes state.
 */
import { newNonce, proof, proofMatches } from './auth.ts';
import { controlPayloadBytesMax, ControlPeer, field, isBytes, isMs, isName } from './control-peer.ts';
import { BlockmirrorError, errors } from './errors.ts';
import { FrameDecoder } from './frame-decoder.ts';
import { FrameEncoder } from './frame-encoder.ts';
import { FrameType } from './frame.ts';
import { connect, listen, type Link, type Listener } from './link.ts';
import { encodeJson } from './json-payload.ts';
import type { GroupMember, GroupPolicy, GroupSettings } from './member.ts';
import { protocolVersion } from './secondary-session.ts';

/** A status reply carries JSON of at most this many bytes. */
export const statusBytesMax = controlPayloadBytesMax;

/** A connection that is not a joined controller's session is closed after this long without a frame. */
export const controlIdleMs = 30_000;
/** Connections one control endpoint serves at once; more are refused with BM_ERR_BUSY. */
export const controlConnectionsMax = 256;

/** The shortest lease a controller may ask for: below it, an ordinary pause of the event loop would freeze the group. */
export const leaseMsMin = 100;

export type OperatorVerb = 'freeze' | 'run' | 'verify';

export interface ControlEndpoint {
  role: 'primary' | 'secondary' | 'controller';
  status(): object;
  secret?: Uint8Array;
  /** A primary's group member: accepts a controller's JOIN. */
  member?: GroupMember;
  /** An operator's command; returns what happened, or throws (rejects with) a BlockmirrorError to refuse. */
  command(verb: OperatorVerb, fields: Record<string, unknown>): string | Promise<string>;
}

export class ControlServer {
  readonly listener: Listener;

  private constructor(listener: Listener) {
    this.listener = listener;
  }

  static async start(url: string, endpoint: ControlEndpoint): Promise<ControlServer> {
    let open = 0;
    const listener = await listen(
      url,
      (link) => {
        if (open >= controlConnectionsMax) {
          const peer = new ControlPeer({ link, onFrame: () => {} });
          return peer.refuse(errors.BUSY(`Cannot serve another control connection: ${controlConnectionsMax} are open`));
        }
        open++;
        link.onClose(() => open--);
        serveControl(link, endpoint);
      },
      { payloadBytesMax: controlPayloadBytesMax },
    );
    return new ControlServer(listener);
  }

  get url(): string {
    const e = this.listener.endpoint;
    return `${e.scheme}://${e.host}:${this.listener.port}`;
  }

  close(): Promise<void> {
    return this.listener.close();
  }
}

/**
 * Serves one control connection. `trusted`: an in-process link made by the
 * endpoint's own process, which needs no proof.
 */
export function serveControl(link: Link, endpoint: ControlEndpoint, options: { trusted?: boolean } = {}): ControlPeer {
  const nonce = newNonce();
  const secret = options.trusted ? undefined : endpoint.secret;
  let controller = false;
  // Status and command connections are short; a joined controller's session is watched by the member's lease instead.
  let idle: ReturnType<typeof setTimeout> | undefined;
  const watchIdle = () => {
    clearTimeout(idle);
    if (controller) return;
    idle = setTimeout(() => peer.close(errors.TIMEOUT(`Closed an idle control connection from ${link.remote}`)), controlIdleMs);
    (idle as { unref?: () => void }).unref?.();
  };
  const peer = new ControlPeer({
    link,
    payloadBytesMax: 0,
    onClose: (_reason, error, byPeer) => {
      clearTimeout(idle);
      if (controller) endpoint.member?.detach(peer, byPeer ? error : undefined);
    },
    onFrame: (frame) => {
      watchIdle();
      const h = frame.header;
      const fields = (h[1] ?? {}) as Record<string, unknown>;
      const member = endpoint.member;
      if (controller && member) {
        // The session of a joined controller.
        const epoch = () => field<number>(fields, 'epoch', (v) => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0, 'a whole number');
        checkGroup(member, fields);
        switch (frame.type) {
          case FrameType.freeze:
            return member.onFreeze(peer, epoch());
          case FrameType.run:
            return member.onRun(peer, epoch(), field<GroupPolicy>(fields, 'action', (v) => v === 'go' || v === 'stop', "'go' or 'stop'"));
          case FrameType.resume:
            return member.onResume(peer, epoch());
          case FrameType.leave:
            return member.onLeave(peer);
        }
        throw errors.FRAME_TYPE(`Cannot accept frame type ${frame.type} from a controller`);
      }
      switch (frame.type) {
        case FrameType.status:
          return peer.send([FrameType.statusReply], encodeJson(endpoint.status()));
        case FrameType.command: {
          checkProof(fields, secret, 'operator', nonce);
          const verb = field<OperatorVerb>(fields, 'verb', (v) => v === 'freeze' || v === 'run' || v === 'verify', "'freeze', 'run' or 'verify'");
          // A verify runs for as long as comparing every code takes: the idle timer must not cut it.
          clearTimeout(idle);
          Promise.resolve()
            .then(() => endpoint.command(verb, fields))
            .then(
              (message) => {
                peer.send([FrameType.reply, { ok: true, message: message.slice(0, 3000) }]);
                link.end();
              },
              (e) => peer.refuse(e instanceof BlockmirrorError ? e : errors.ASSERTION(`Invariant broken: ${String(e)}`)),
            );
          return;
        }
        case FrameType.join: {
          if (!member) throw errors.FRAME_TYPE('Cannot join a controller to a controller: join a primary');
          if (fields.version !== protocolVersion) throw errors.MISMATCH(`Cannot join: the controller speaks protocol ${String(fields.version)}, this primary ${protocolVersion}`);
          const controllerNonce = checkProof(fields, secret, 'controller', nonce);
          const settings: GroupSettings = {
            group: field<string>(fields, 'group', isName, 'a group name (letters, digits, . _ -)'),
            policy: field<GroupPolicy>(fields, 'policy', (v) => v === 'go' || v === 'stop', "'go' or 'stop'"),
            holdTimeoutMs: field<number>(fields, 'holdTimeoutMs', isMs, 'milliseconds'),
            leaseMs: field<number>(fields, 'leaseMs', (v) => isMs(v) && (v as number) >= leaseMsMin, `milliseconds, at least ${leaseMsMin}`),
          };
          const members = field<number>(fields, 'members', (v) => typeof v === 'number' && Number.isSafeInteger(v) && v >= 1 && v <= 4096, 'the number of members, 1 to 4096');
          if (members > 1 && member.mode === 'async') {
            throw errors.GROUP_ASYNC(`Cannot join a group of ${members} primaries: this primary mirrors in async mode, which keeps dependent writes in order only within its own channel`);
          }
          const { volumes, ...summary } = member.attach(peer, settings);
          controller = true;
          clearTimeout(idle);
          peer.send([FrameType.joined, { ...summary, proof: secret ? proof(secret, 'member', controllerNonce!, nonce) : undefined }], encodeJson(volumes));
          return;
        }
      }
      throw errors.FRAME_TYPE(`Cannot answer frame type ${frame.type} on a control endpoint`);
    },
  });
  peer.send([FrameType.challenge, { version: protocolVersion, nonce, auth: !!secret, role: endpoint.role }]);
  watchIdle();
  return peer;
}

/** Checks a proof of the secret over both nonces; returns the peer's nonce. */
function checkProof(fields: Record<string, unknown>, secret: Uint8Array | undefined, role: 'controller' | 'operator', ownNonce: Uint8Array): Uint8Array | undefined {
  const peerNonce = fields.nonce;
  if (!secret) return peerNonce instanceof Uint8Array ? peerNonce : undefined;
  if (!isBytes(peerNonce) || (peerNonce as Uint8Array).length !== ownNonce.length) throw errors.AUTH(`Cannot accept a ${role}: no nonce to prove the secret with`);
  if (!proofMatches(proof(secret, role, ownNonce, peerNonce as Uint8Array), fields.proof)) {
    throw errors.AUTH(`Cannot accept a ${role}: ${fields.proof === undefined ? 'it gave no proof of the secret' : 'wrong secret'}`);
  }
  return peerNonce as Uint8Array;
}

function checkGroup(member: GroupMember, fields: Record<string, unknown>): void {
  const group = fields.group;
  if (member.settings && group !== member.settings.group) {
    throw errors.UNKNOWN_GROUP(`Cannot accept a command for group ${JSON.stringify(group)}: this primary belongs to group '${member.settings.group}'`);
  }
}

/** Asks the control endpoint at `url` for its status. */
export async function requestStatus(url: string, timeoutMs = 5000): Promise<Record<string, unknown>> {
  return exchange(url, timeoutMs, 'read status from', () => [FrameType.status], (type, header, payload) => {
    if (type === FrameType.statusReply) return JSON.parse(new TextDecoder().decode(payload)) as Record<string, unknown>;
    return undefined;
  });
}

/** Sends an operator's command to the control endpoint at `url` (a controller or a primary). */
export async function sendCommand(url: string, verb: OperatorVerb, options: { secret?: Uint8Array; timeoutMs?: number; volume?: string } = {}): Promise<string> {
  const own = newNonce();
  return exchange(
    url,
    options.timeoutMs ?? 5000,
    `${verb} through`,
    (challenge) => {
      const auth = challenge?.auth === true;
      if (auth && !options.secret) throw errors.AUTH(`Cannot ${verb} through ${url}: it asks for a secret (give --secret-file)`);
      const theirs = challenge?.nonce;
      if (options.secret && !(theirs instanceof Uint8Array)) throw errors.FRAME_HEADER(`Cannot ${verb} through ${url}: its challenge has no nonce`);
      return [FrameType.command, { verb, volume: options.volume, nonce: own, proof: options.secret ? proof(options.secret, 'operator', theirs as Uint8Array, own) : undefined }];
    },
    (type, header) => (type === FrameType.reply ? String((header[1] as { message?: unknown }).message ?? 'done') : undefined),
    true,
  );
}

/**
 * One request and its answer on a fresh connection. `request` builds the
 * request (after the challenge when `afterChallenge`); `answer` returns a
 * result for the frame that answers it, or undefined for frames to skip.
 */
async function exchange<T>(
  url: string,
  timeoutMs: number,
  what: string,
  request: (challenge: Record<string, unknown> | undefined) => unknown[],
  answer: (type: number, header: unknown[], payload: Uint8Array) => T | undefined,
  afterChallenge = false,
): Promise<T> {
  const link = await connect(url, timeoutMs);
  const encoder = new FrameEncoder(0);
  return new Promise<T>((resolve, reject) => {
    let settled = false;
    const done = (error: BlockmirrorError | undefined, value?: T) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      link.destroy('done');
      if (error) reject(error);
      else resolve(value as T);
    };
    const timer = setTimeout(() => done(errors.TIMEOUT(`Cannot ${what} ${url}: no answer within ${timeoutMs} ms`)), timeoutMs);
    const send = (challenge: Record<string, unknown> | undefined) => {
      try {
        link.send(encoder.encode(request(challenge)));
      } catch (e) {
        done(e as BlockmirrorError);
      }
    };
    const decoder = new FrameDecoder({
      payloadBytesMax: statusBytesMax,
      onError: (e) => done(e),
      onFrame: (frame) => {
        if (frame.type === FrameType.refuse) {
          // Keep the endpoint's own code (BM_ERR_AUTH, BM_ERR_BUSY, ...): it says why.
          const code = /^BM_ERR_[A-Z_]+$/.test(String(frame.header[1])) ? String(frame.header[1]) : 'BM_ERR_REFUSED';
          return done(new BlockmirrorError(code, `${url} refused: ${String(frame.header[2])}`));
        }
        if (frame.type === FrameType.challenge && afterChallenge) return send(frame.header[1] as Record<string, unknown>);
        let value: T | undefined;
        try {
          value = answer(frame.type, frame.header, frame.payload);
        } catch (e) {
          return done(errors.FRAME_HEADER(`Cannot ${what} ${url}: ${(e as Error).message}`));
        }
        if (value !== undefined) done(undefined, value);
      },
    });
    link.onData((chunk) => decoder.feed(chunk));
    link.onClose((reason) => done(errors.LINK_LOST(`Cannot ${what} ${url}: ${reason}`)));
    if (!afterChallenge) send(undefined);
  });
}
