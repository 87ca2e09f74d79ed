/**
 * The controller of one consistency group (WO2009010532): it keeps the
 * membership, receives failure notices, sends FREEZE to every member over
 * that member's own network and protocol (tcp://, ws://, or in process),
 * waits until every member has acknowledged the freeze or has been declared
 * lost, and only then sends RUN. When every member can mirror again it sends
 * RESUME, and the group resyncs together.
 *
 * Phases: `mirroring` → (notice, member lost, operator) → `freezing` →
 * every member frozen or lost → RUN go → `suspended` (or RUN stop →
 * `stopped`, until an operator's run) → every member released with its link
 * up → RESUME → `resyncing` → every pair duplex → `mirroring`. A failure in
 * `resyncing` freezes again with a new epoch.
 *
 * Declaring a member lost. A member that does not acknowledge a freeze
 * within `freezeAckTimeoutMs` has its session closed. A member without a
 * session is declared lost once `leaseMs` plus a margin have passed since
 * the last frame the controller sent it: by then it has frozen itself
 * (member.ts, the lease), so RUN cannot let another member complete a write
 * unmirrored while it still mirrors. A member that never joined has no lease
 * and nothing to wait for.
 *
 * Every FREEZE of an epoch is acknowledged (or its member declared lost)
 * before any RUN of that epoch is sent (invariant 4); the events show it.
 */
import { newNonce, proof, proofMatches } from './auth.ts';
import { ControlPeer, controlPayloadBytesMax, field } from './control-peer.ts';
import { errors, type BlockmirrorError } from './errors.ts';
import type { Frame } from './frame-decoder.ts';
import { FrameType } from './frame.ts';
import { connect, parseEndpoint, type Link } from './link.ts';
import { decodeJson } from './json-payload.ts';
import { eventTime, holdTimeoutMsDefault, type GroupEvent, type GroupPolicy, type MemberSummary, type MemberVolume } from './member.ts';
import type { Primary } from './primary.ts';
import { protocolVersion } from './secondary-session.ts';

export interface ControllerOptions {
  /** Control URLs of member primaries (tcp:// or ws://), or primaries in this process. */
  members: Array<string | Primary>;
  /** Name of the group. Default 'group'. */
  group?: string;
  /** After every member froze: `go` (default) lets writes complete locally; `stop` fails them until `run()`. */
  policy?: GroupPolicy;
  /** Longest a member holds writes without hearing RUN. Default 30000. */
  holdTimeoutMs?: number;
  /** A member that hears nothing from the controller this long freezes itself. Default 3000. */
  leaseMs?: number;
  /** The controller pings each member this often; three silent periods close the session. Default 500. */
  heartbeatMs?: number;
  /** A joined member that has not acknowledged a freeze after this long has its session closed. Default 2000. */
  freezeAckTimeoutMs?: number;
  secret?: Uint8Array;
  connectTimeoutMs?: number;
}

export const leaseMsDefault = 3000;
export const heartbeatMsDefault = 500;
/** Most members in one group (a join carries the count, and members check it). */
export const membersMax = 4096;

/** What the controller adds to a lease before declaring a silent member lost: timer lateness and clock reading on both sides. */
export function leaseMarginMs(heartbeatMs: number): number {
  return Math.max(500, heartbeatMs);
}

export type ControllerPhase = 'mirroring' | 'freezing' | 'stopped' | 'suspended' | 'resyncing';

export interface ControllerMemberStatus {
  member: string;
  connected: boolean;
  phase?: string;
  mode?: string;
  linkUp?: boolean;
  epoch?: number;
}

export interface ControllerStatus {
  role: 'controller';
  group: string;
  policy: GroupPolicy;
  phase: ControllerPhase;
  epoch: number;
  /**
   * Whether the secondary images together are a usable point-in-time copy.
   * A freeze keeps them so (that is its purpose); they are not from RESUME
   * until the group's resync ends, nor while any member's pairs report an
   * inconsistent secondary (an initial copy).
   */
  consistent: boolean;
  members: ControllerMemberStatus[];
  volumes: Array<MemberVolume & { member: string }>;
}

/** The controller's view of one member. */
class MemberLink {
  readonly target: string | Primary;
  readonly label: string;
  peer: ControlPeer | undefined;
  joined = false;
  everJoined = false;
  summary: MemberSummary | undefined;
  ackedEpoch = 0;
  declaredLostEpoch = 0;
  sentFreezeAt = 0;
  /** performance.now() of the last frame sent to this member on any session: its lease runs from there. */
  lastSent = 0;
  reconnectDelayMs = 100;
  reconnectTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(target: string | Primary) {
    this.target = target;
    this.label = typeof target === 'string' ? target : `in-process:${target.name}`;
  }

  send(header: unknown[]): void {
    if (!this.peer || this.peer.closed) return;
    this.peer.send(header);
    this.lastSent = this.peer.lastSent;
  }
}

export class Controller {
  readonly group: string;
  readonly policy: GroupPolicy;
  readonly holdTimeoutMs: number;
  readonly leaseMs: number;
  readonly heartbeatMs: number;
  readonly freezeAckTimeoutMs: number;
  private readonly secret: Uint8Array | undefined;
  private readonly connectTimeoutMs: number;
  private readonly members: MemberLink[];
  private readonly listeners: Array<(e: GroupEvent) => void> = [];
  private readonly startedAt = performance.now();
  private phaseNow: ControllerPhase = 'mirroring';
  private epochNow = 0;
  private consistentNow = true;
  private readonly ticker: ReturnType<typeof setInterval>;
  private closed = false;

  private constructor(options: ControllerOptions) {
    this.group = options.group ?? 'group';
    this.policy = options.policy ?? 'go';
    this.holdTimeoutMs = options.holdTimeoutMs ?? holdTimeoutMsDefault;
    this.leaseMs = options.leaseMs ?? leaseMsDefault;
    this.heartbeatMs = options.heartbeatMs ?? heartbeatMsDefault;
    this.freezeAckTimeoutMs = options.freezeAckTimeoutMs ?? 2000;
    this.secret = options.secret;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 3000;
    this.members = options.members.map((m) => new MemberLink(m));
    this.ticker = setInterval(() => this.tick(), 25);
    (this.ticker as { unref?: () => void }).unref?.();
  }

  /** Starts the controller; members are joined in the background (see `waitJoined`). */
  static start(options: ControllerOptions): Controller {
    if (!options || !Array.isArray(options.members) || options.members.length === 0) {
      throw errors.INVALID_ARGUMENT('Cannot start a controller: give at least one member');
    }
    if (options.group !== undefined && !/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(options.group)) {
      throw errors.INVALID_ARGUMENT(`Cannot use group name ${JSON.stringify(options.group)}: 1 to 64 letters, digits, '.', '_' or '-'`);
    }
    if (options.policy !== undefined && options.policy !== 'go' && options.policy !== 'stop') {
      throw errors.INVALID_ARGUMENT(`Cannot use policy ${JSON.stringify(options.policy)}: choose go or stop`);
    }
    for (const [name, value, min] of [
      ['holdTimeoutMs', options.holdTimeoutMs, 1],
      ['leaseMs', options.leaseMs, 100],
      ['heartbeatMs', options.heartbeatMs, 10],
      ['freezeAckTimeoutMs', options.freezeAckTimeoutMs, 1],
    ] as const) {
      if (value !== undefined && !(Number.isSafeInteger(value) && value >= min && value <= 24 * 3600 * 1000)) {
        throw errors.INVALID_ARGUMENT(`Cannot use ${name} ${String(value)}: a whole number of milliseconds from ${min}`);
      }
    }
    const lease = options.leaseMs ?? leaseMsDefault;
    const hold = options.holdTimeoutMs ?? holdTimeoutMsDefault;
    const margin = leaseMarginMs(options.heartbeatMs ?? heartbeatMsDefault);
    if (hold <= lease + margin) {
      throw errors.INVALID_ARGUMENT(
        `Cannot use a hold timeout of ${hold} ms with a lease of ${lease} ms: a member must hold longer than the lease plus ${margin} ms, or it could complete writes before the controller has frozen the others`,
      );
    }
    if (options.members.length > membersMax) throw errors.INVALID_ARGUMENT(`Cannot start a controller of ${options.members.length} members: at most ${membersMax}`);
    const seen = new Set<string | Primary>();
    for (const m of options.members) {
      if (typeof m === 'string') parseEndpoint(m, 'member URL');
      if (seen.has(m)) throw errors.INVALID_ARGUMENT(`Cannot start a controller: member ${typeof m === 'string' ? m : m.name} is listed twice`);
      seen.add(m);
    }
    const local = options.members.filter((m): m is Primary => typeof m !== 'string');
    if (options.members.length > 1 && local.some((p) => p.mode === 'async')) throw asyncGroupError(options.members.length);
    const controller = new Controller(options);
    for (const m of controller.members) controller.open(m);
    return controller;
  }

  get phase(): ControllerPhase {
    return this.phaseNow;
  }

  get epoch(): number {
    return this.epochNow;
  }

  onEvent(listener: (event: GroupEvent) => void): void {
    this.listeners.push(listener);
  }

  /** Resolves once every member has joined (or rejects with BM_ERR_TIMEOUT). */
  async waitJoined(timeoutMs = 30_000): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    while (!this.members.every((m) => m.joined)) {
      if (performance.now() > deadline) {
        throw errors.TIMEOUT(`Cannot join every member within ${timeoutMs} ms: ${this.members.filter((m) => !m.joined).map((m) => m.label).join(', ')} not joined`);
      }
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  /** Resolves once the group is in `phase` (or rejects with BM_ERR_TIMEOUT). */
  async waitPhase(phase: ControllerPhase, timeoutMs = 30_000): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    while (this.phaseNow !== phase) {
      if (performance.now() > deadline) throw errors.TIMEOUT(`Cannot reach phase ${phase} within ${timeoutMs} ms: the group is ${this.phaseNow}`);
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  /** An operator's freeze of the whole group. */
  freeze(reason = 'freeze by an operator'): string {
    if (this.phaseNow !== 'mirroring' && this.phaseNow !== 'resyncing') return `group '${this.group}' is already ${this.phaseNow} (epoch ${this.epochNow})`;
    this.startFreeze(reason, undefined);
    return `group '${this.group}' is freezing (epoch ${this.epochNow})`;
  }

  /** An operator's run: releases writes fenced by policy `stop`. Refused while a freeze still waits for members. */
  run(): string {
    if (this.phaseNow === 'freezing') {
      throw errors.BUSY(`Cannot run group '${this.group}': the freeze of epoch ${this.epochNow} is still waiting for members`);
    }
    if (this.phaseNow !== 'stopped') return `group '${this.group}' is ${this.phaseNow}; nothing to run`;
    this.sendRun('go');
    return `group '${this.group}' runs (epoch ${this.epochNow}); it resumes mirroring once every member can`;
  }

  status(): ControllerStatus {
    return {
      role: 'controller',
      group: this.group,
      policy: this.policy,
      phase: this.phaseNow,
      epoch: this.epochNow,
      consistent: this.consistentNow && this.members.every((m) => m.summary !== undefined && m.summary.volumes.every((v) => v.consistent !== false)),
      members: this.members.map((m) => ({
        member: m.label,
        connected: m.joined,
        phase: m.summary?.phase,
        mode: m.summary?.mode,
        linkUp: m.summary?.linkUp,
        epoch: m.summary?.epoch,
      })),
      volumes: this.members.flatMap((m) => (m.summary?.volumes ?? []).map((v) => ({ ...v, member: m.label }))),
    };
  }

  /** Sends LEAVE to every member (so none freezes for want of its controller) and closes. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.ticker);
    for (const m of this.members) {
      clearTimeout(m.reconnectTimer);
      if (m.joined) m.send([FrameType.leave, { group: this.group }]);
      const peer = m.peer;
      if (peer) setTimeout(() => peer.close(), 20);
    }
    await new Promise((r) => setTimeout(r, 30));
  }

  // --------------------------------------------------------------- sessions

  private open(m: MemberLink): void {
    if (this.closed) return;
    if (typeof m.target !== 'string') {
      let link: Link;
      try {
        link = m.target.controlLink();
      } catch (e) {
        return this.retry(m, e as BlockmirrorError);
      }
      return this.handshake(m, link);
    }
    connect(m.target, this.connectTimeoutMs).then(
      (link) => (this.closed ? link.destroy('controller closed') : this.handshake(m, link)),
      (e: BlockmirrorError) => this.retry(m, e),
    );
  }

  private handshake(m: MemberLink, link: Link): void {
    const nonce = newNonce();
    let memberNonce: Uint8Array | undefined;
    const peer = new ControlPeer({
      link,
      payloadBytesMax: controlPayloadBytesMax,
      heartbeatMs: this.heartbeatMs,
      onFrame: (frame) => this.onFrame(m, peer, frame, nonce, (n) => (memberNonce = n), () => memberNonce),
      onClose: (reason, error) => this.onClosed(m, peer, error ?? errors.LINK_LOST(`Lost the control link to ${m.label}: ${reason}`)),
    });
    m.peer = peer;
    const timer = setTimeout(() => {
      if (m.peer === peer && !m.joined) peer.close(errors.CONNECT(`Cannot join ${m.label}: no answer to the handshake within ${this.connectTimeoutMs} ms`));
    }, this.connectTimeoutMs);
    (timer as { unref?: () => void }).unref?.();
  }

  private onFrame(m: MemberLink, peer: ControlPeer, frame: Frame, nonce: Uint8Array, setMemberNonce: (n: Uint8Array) => void, memberNonce: () => Uint8Array | undefined): void {
    const fields = frame.header[1] as Record<string, unknown>;
    if (m.peer !== peer) return;
    switch (frame.type) {
      case FrameType.challenge: {
        if (fields.role !== 'primary') throw errors.FRAME_TYPE(`Cannot join ${m.label}: it is a ${String(fields.role)} control endpoint, not a primary's`);
        const theirs = fields.nonce;
        if (!(theirs instanceof Uint8Array)) throw errors.FRAME_HEADER(`Cannot join ${m.label}: its challenge has no nonce`);
        if (fields.auth === true && !this.secret && typeof m.target === 'string') throw errors.AUTH(`Cannot join ${m.label}: it asks for a secret and this controller has none`);
        // Copy: header bytes are views of the decoder's buffer, reused by the next frame.
        setMemberNonce(new Uint8Array(theirs));
        return m.send([
          FrameType.join,
          {
            version: protocolVersion,
            group: this.group,
            members: this.members.length,
            policy: this.policy,
            holdTimeoutMs: this.holdTimeoutMs,
            leaseMs: this.leaseMs,
            nonce,
            proof: this.secret ? proof(this.secret, 'controller', theirs, nonce) : undefined,
          },
        ]);
      }
      case FrameType.joined: {
        if (this.secret && typeof m.target === 'string' && !proofMatches(proof(this.secret, 'member', nonce, memberNonce()!), fields.proof)) {
          throw errors.AUTH(`Cannot join ${m.label}: it could not prove it holds the secret`);
        }
        return this.onJoined(m, readSummary(fields, frame.payload));
      }
      case FrameType.memberState:
        if (!m.joined) break;
        m.summary = readSummary(fields, frame.payload);
        return this.afterMemberState(m);
      case FrameType.notice:
        if (!m.joined) break;
        this.emit('notice', { member: m.label, reason: String(fields.reason ?? '') });
        return this.startFreeze(`failure notice from ${m.label}: ${String(fields.reason ?? '')}`, m);
      case FrameType.frozen:
        if (!m.joined) break;
        return this.onFrozen(m, field<number>(fields, 'epoch', (v) => typeof v === 'number' && Number.isSafeInteger(v), 'a whole number'));
    }
    throw errors.FRAME_TYPE(`Cannot accept frame type ${frame.type} from member ${m.label} here`);
  }

  private onJoined(m: MemberLink, summary: MemberSummary): void {
    if (this.members.length > 1 && summary.mode === 'async') {
      // The member refuses such a join itself; this is the controller's own check. The close reports it.
      m.peer?.refuse(asyncGroupError(this.members.length));
      return;
    }
    m.joined = true;
    m.everJoined = true;
    m.summary = summary;
    m.reconnectDelayMs = 100;
    this.epochNow = Math.max(this.epochNow, summary.epoch);
    this.emit('member-joined', { member: m.label, reason: `phase ${summary.phase}` });
    switch (this.phaseNow) {
      case 'mirroring':
      case 'resyncing':
        if (summary.phase !== 'mirroring') this.startFreeze(`member ${m.label} joined ${summary.phase}`, m);
        else this.afterMemberState(m);
        return;
      default:
        // The group is frozen or freezing: this member freezes too, and runs as the others did once it acknowledged.
        return this.sendFreeze(m);
    }
  }

  private onClosed(m: MemberLink, peer: ControlPeer, error: BlockmirrorError): void {
    if (m.peer !== peer) return;
    // Heartbeat pings renew the member's lease too: it runs from the last frame of any kind.
    m.lastSent = Math.max(m.lastSent, peer.lastSent);
    m.peer = undefined;
    const wasJoined = m.joined;
    m.joined = false;
    if (this.closed) return;
    if (error.code === 'BM_ERR_GROUP_ASYNC' || error.code === 'BM_ERR_AUTH' || error.code === 'BM_ERR_MISMATCH' || error.code === 'BM_ERR_BUSY') {
      this.emit('group-error', { member: m.label, reason: `${error.message} [${error.code}]` });
    }
    if (wasJoined) {
      this.emit('member-lost', { member: m.label, reason: error.code });
      if (this.phaseNow === 'mirroring' || this.phaseNow === 'resyncing') this.startFreeze(`lost member ${m.label} (${error.code})`, m);
    }
    this.retry(m, error);
  }

  private retry(m: MemberLink, _error: BlockmirrorError): void {
    if (this.closed) return;
    if (typeof m.target !== 'string' && m.target.closed) return;
    const delay = m.reconnectDelayMs;
    m.reconnectDelayMs = Math.min(delay * 2, 5000);
    m.reconnectTimer = setTimeout(() => this.open(m), delay);
    (m.reconnectTimer as { unref?: () => void }).unref?.();
  }

  // ----------------------------------------------------------------- phases

  private startFreeze(reason: string, origin: MemberLink | undefined): void {
    if (this.closed) return;
    if (this.phaseNow !== 'mirroring' && this.phaseNow !== 'resyncing') return;
    this.epochNow++;
    this.phaseNow = 'freezing';
    this.emit('freeze', { reason, member: origin?.label });
    for (const m of this.members) if (m.joined) this.sendFreeze(m);
    this.check();
  }

  private sendFreeze(m: MemberLink): void {
    m.sentFreezeAt = performance.now();
    m.send([FrameType.freeze, { group: this.group, epoch: this.epochNow }]);
    this.emit('freeze-sent', { member: m.label });
  }

  private onFrozen(m: MemberLink, epoch: number): void {
    if (epoch !== this.epochNow) return;
    if (m.ackedEpoch !== epoch) {
      m.ackedEpoch = epoch;
      this.emit('freeze-acked', { member: m.label });
    }
    if (this.phaseNow === 'freezing') return this.check();
    // A member that joined a frozen group: it runs as the others did.
    if (this.phaseNow === 'suspended') this.sendRunTo(m, 'go');
    else if (this.phaseNow === 'stopped') this.sendRunTo(m, 'stop');
  }

  /** While freezing: RUN once every member acknowledged the freeze or was declared lost. */
  private check(): void {
    if (this.phaseNow !== 'freezing') return;
    const now = performance.now();
    const margin = leaseMarginMs(this.heartbeatMs);
    let waiting = false;
    for (const m of this.members) {
      if (m.ackedEpoch === this.epochNow) continue;
      if (m.joined) {
        if (now - m.sentFreezeAt > this.freezeAckTimeoutMs) {
          m.peer?.close(errors.TIMEOUT(`Member ${m.label} did not acknowledge the freeze of epoch ${this.epochNow} within ${this.freezeAckTimeoutMs} ms`));
        }
        waiting = true;
        continue;
      }
      // A member is lost once its lease has surely run out: from the last frame this controller sent it,
      // or, if it never joined this controller, from this controller's start (it may still hold the
      // lease of an earlier controller of the group that crashed).
      const leaseFrom = m.everJoined ? m.peer ? Math.max(m.lastSent, m.peer.lastSent) : m.lastSent : this.startedAt;
      if (now >= leaseFrom + this.leaseMs + margin) {
        if (m.declaredLostEpoch !== this.epochNow) {
          m.declaredLostEpoch = this.epochNow;
          this.emit('member-declared-lost', { member: m.label, reason: `${m.everJoined ? 'its' : 'any earlier controller’s'} lease ran out ${Math.round(now - leaseFrom - this.leaseMs)} ms ago` });
        }
        continue;
      }
      waiting = true;
    }
    if (waiting) return;
    this.sendRun(this.policy);
  }

  private sendRun(action: GroupPolicy): void {
    this.phaseNow = action === 'go' ? 'suspended' : 'stopped';
    for (const m of this.members) if (m.joined) this.sendRunTo(m, action);
    this.tryResume();
  }

  private sendRunTo(m: MemberLink, action: GroupPolicy): void {
    m.send([FrameType.run, { group: this.group, epoch: this.epochNow, action }]);
    this.emit('run-sent', { member: m.label, action });
  }

  private afterMemberState(m: MemberLink): void {
    const s = m.summary!;
    if ((this.phaseNow === 'mirroring' || this.phaseNow === 'resyncing') && s.phase === 'holding') {
      // It held on its own (a failure whose notice crossed our freeze, or its lease): freeze the rest.
      this.startFreeze(`member ${m.label} is holding`, m);
      return;
    }
    this.tryResume();
    if (this.phaseNow === 'resyncing' && this.members.every((x) => x.joined && x.summary?.phase === 'mirroring' && x.summary.volumes.every((v) => v.state === 'duplex'))) {
      this.phaseNow = 'mirroring';
      this.consistentNow = true;
      this.emit('resync-finished');
    }
  }

  /** Suspended: once every member is joined, released and has its link up, the group resumes together. */
  private tryResume(): void {
    if (this.phaseNow !== 'suspended') return;
    if (!this.members.every((m) => m.joined && m.summary?.phase === 'released' && m.summary.linkUp)) return;
    this.phaseNow = 'resyncing';
    this.consistentNow = false;
    for (const m of this.members) {
      m.send([FrameType.resume, { group: this.group, epoch: this.epochNow }]);
      this.emit('resume-sent', { member: m.label });
    }
  }

  private tick(): void {
    this.check();
    this.tryResume();
  }

  private emit(event: string, extra: Partial<GroupEvent> = {}): void {
    const e: GroupEvent = { type: 'group', event, group: this.group, epoch: this.epochNow, ...extra, ...eventTime() };
    for (const l of this.listeners) l(e);
  }
}

function asyncGroupError(members: number): BlockmirrorError {
  return errors.GROUP_ASYNC(
    `Cannot form a consistency group of ${members} primaries with an async member: async mode keeps dependent writes in order only within one channel; use sync mode, or one primary for every volume of the group`,
  );
}

function readSummary(fields: Record<string, unknown>, payload: Uint8Array): MemberSummary {
  const volumes = decodeJson(payload);
  const phase = field<MemberSummary['phase']>(fields, 'phase', (v) => v === 'mirroring' || v === 'holding' || v === 'fenced' || v === 'released', 'a group phase');
  if (!Array.isArray(volumes) || volumes.some((v) => !v || typeof v.name !== 'string' || typeof v.state !== 'string' || typeof v.outOfSyncBytes !== 'number')) {
    throw errors.FRAME_HEADER('Cannot read a member state: malformed volume list');
  }
  return {
    name: String(fields.name ?? ''),
    mode: fields.mode === 'async' ? 'async' : 'sync',
    phase,
    epoch: field<number>(fields, 'epoch', (v) => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0, 'a whole number'),
    linkUp: fields.linkUp === true,
    volumes: volumes as MemberVolume[],
  };
}
