/**
 * A primary's membership in a consistency group (design.md, invariants 2
 * and 4; WO2009010532): the gate every write of the primary passes, and the
 * primary's side of the control protocol with its controller.
 *
 * Phases:
 *
 * - `mirroring`: writes are mirrored (pairs `syncing` or `duplex`).
 * - `holding`: writes are held, neither completed nor failed (pairs
 *   `frozen`). Entered when this primary's own mirror fails (and a failure
 *   notice goes to the controller), when the controller sends FREEZE, when
 *   the controller's lease runs out, or on an operator's freeze.
 * - `released`: after RUN with policy `go`: held and new writes complete
 *   locally and are recorded in the out-of-sync map (pairs `suspended`),
 *   even when this primary's own link is healthy, until the controller
 *   sends RESUME for the whole group.
 * - `fenced`: after RUN with policy `stop`: held and new writes fail with
 *   BM_ERR_FROZEN until an operator's RUN.
 *
 * A hold never outlasts `holdTimeoutMs`: the policy then applies here and an
 * event says the hold timed out.
 *
 * The lease. A member that has heard nothing from its controller for
 * `leaseMs` freezes itself, because it cannot know whether the rest of the
 * group froze. The controller, in turn, declares an unreachable member lost
 * (and lets the others run) only after the last frame it sent that member
 * plus `leaseMs` and a margin: by then the member has frozen itself, so no
 * write can complete unmirrored anywhere while another member still mirrors.
 * A controller that stops cleanly sends LEAVE and nobody freezes.
 *
 * Without a controller (never joined, or after LEAVE) the primary is
 * standalone: a failed link suspends its pairs and they resync on their own
 * when it returns.
 */
import { errors, type BlockmirrorError } from './errors.ts';
import type { ControlPeer } from './control-peer.ts';
import { FrameType } from './frame.ts';
import type { PairState } from './pair.ts';

export type GroupPhase = 'mirroring' | 'holding' | 'fenced' | 'released';
export type GroupPolicy = 'go' | 'stop';

export interface GroupSettings {
  group: string;
  policy: GroupPolicy;
  holdTimeoutMs: number;
  leaseMs: number;
}

/** Default hold timeout, as IBM's freeze automation uses a bounded "extended long busy". */
export const holdTimeoutMsDefault = 30_000;

export interface MemberVolume {
  name: string;
  state: PairState;
  outOfSyncBytes: number;
  /** False while the secondary image is not a usable point-in-time copy (a resync is copying into it). */
  consistent: boolean;
}

/** What a member reports to its controller. */
export interface MemberSummary {
  name: string;
  mode: 'sync' | 'async';
  phase: GroupPhase;
  epoch: number;
  linkUp: boolean;
  volumes: MemberVolume[];
}

export interface GroupEvent {
  type: 'group';
  event: string;
  group?: string;
  epoch?: number;
  member?: string;
  reason?: string;
  action?: GroupPolicy;
  at: string;
  /** High-resolution wall time in milliseconds (performance.timeOrigin + performance.now()), comparable across threads. */
  t: number;
}

/** What the member needs from its primary. */
export interface MemberHost {
  readonly name: string;
  readonly mode: 'sync' | 'async';
  linkUp(): boolean;
  /** Every pair to `frozen`. */
  freezePairs(reason: string): void;
  /** Every pair to `suspended`: writes complete locally, recorded. */
  releasePairs(reason: string): void;
  /** Every pair resyncs its out-of-sync segments (now if the link is up, else when it returns). */
  resumePairs(reason: string): void;
  volumes(): MemberVolume[];
  emit(event: GroupEvent): void;
}

const textEncoder = new TextEncoder();

export function eventTime(): { at: string; t: number } {
  const t = performance.timeOrigin + performance.now();
  return { at: new Date(t).toISOString(), t };
}

export class GroupMember {
  phase: GroupPhase = 'mirroring';
  /** Set once a controller joined this primary to a group; kept when the controller is lost, cleared by LEAVE. */
  settings: GroupSettings | undefined;
  /** True while writes must wait or fail (holding, fenced). Read on every write, so it is a plain field. */
  blocked = false;
  /** The newest freeze epoch this member has seen. */
  epoch = 0;
  private readonly host: MemberHost;
  private session: ControlPeer | undefined;
  /** When the member last heard its controller, for the lease, once the session is gone. */
  private lastHeard = 0;
  private waiters: Array<{ resolve: () => void; reject: (e: BlockmirrorError) => void }> = [];
  private holdTimer: ReturnType<typeof setTimeout> | undefined;
  private leaseTimer: ReturnType<typeof setInterval> | undefined;
  private stateQueued = false;
  private lastReported = '';
  private leaseTicks = 0;
  private closed = false;

  constructor(host: MemberHost) {
    this.host = host;
  }

  get mode(): 'sync' | 'async' {
    return this.host.mode;
  }

  get active(): boolean {
    return this.settings !== undefined;
  }

  get controllerConnected(): boolean {
    return this.session !== undefined && !this.session.closed;
  }

  // ---------------------------------------------------------------- the gate

  /** Resolves once writes may go on; rejects with BM_ERR_FROZEN while fenced (or BM_ERR_CLOSED). */
  wait(): Promise<void> {
    if (this.closed) return Promise.reject(errors.CLOSED(`Cannot write to primary ${this.host.name}: it is closed`));
    if (this.phase === 'fenced') return Promise.reject(this.frozenError());
    if (!this.blocked) return Promise.resolve();
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  /**
   * May a write that cannot be mirrored complete locally, recorded in the
   * out-of-sync map, now? Standalone: yes. In a group: only once the group
   * has released its writes; asked while the group is still mirroring, it
   * is this member noticing a failure, so it holds and tells the controller.
   */
  mayRecord(): boolean {
    if (this.phase === 'released') return true;
    if (this.phase !== 'mirroring') return false;
    if (!this.active) return true;
    this.hold('a write could not be mirrored', true);
    return false;
  }

  // ------------------------------------------------------ this primary's link

  /** The primary's mirror link failed (its pairs have recorded what the secondary may lack). */
  onLinkFailure(error: BlockmirrorError): void {
    if (!this.active && this.phase === 'mirroring') {
      this.host.releasePairs(error.code);
      return;
    }
    this.emit('failure-noticed', { reason: error.code });
    if (this.phase === 'mirroring') this.hold(error.code, true);
    else if (this.phase === 'released') this.host.releasePairs(error.code);
    else this.host.freezePairs(error.code);
    this.queueState();
  }

  /** The primary's mirror link is up again. */
  onLinkUp(): void {
    if (this.phase === 'mirroring') this.host.resumePairs('connected');
    this.queueState();
  }

  /** A pair changed state: the controller follows the resync. */
  onPairState(): void {
    this.queueState();
  }

  // -------------------------------------------------------- controller side

  /**
   * A controller joined: `peer` is its authenticated session. A member
   * belongs to one group at a time; a controller of the same group replaces
   * an earlier session (a restarted controller).
   */
  attach(peer: ControlPeer, settings: GroupSettings): MemberSummary {
    if (this.closed) throw errors.CLOSED(`Cannot join primary ${this.host.name} to a group: it is closed`);
    if (this.settings && this.settings.group !== settings.group && this.controllerConnected) {
      throw errors.BUSY(`Cannot join group '${settings.group}': this primary belongs to group '${this.settings.group}', whose controller is connected`);
    }
    const previous = this.session;
    this.session = peer;
    if (previous && previous !== peer) previous.close(errors.BUSY('Another controller of the group took over'));
    this.settings = settings;
    this.lastHeard = performance.now();
    this.lastReported = '';
    this.emit('joined');
    this.startLease();
    return this.summary();
  }

  /**
   * The controller's session ended (not by LEAVE): the lease runs on from
   * the last frame heard. A controller that refused this member (`refusal`)
   * does not count it in its group: the member leaves at once.
   */
  detach(peer: ControlPeer, refusal?: BlockmirrorError): void {
    if (peer !== this.session) return;
    this.lastHeard = peer.lastHeard;
    this.session = undefined;
    if (!this.active) return;
    if (!refusal) return this.emit('controller-lost');
    this.emit('left', { reason: `the controller refused this member: ${refusal.code}` });
    this.settings = undefined;
    this.stopLease();
    this.becomeStandalone('refused by the controller');
  }

  onFreeze(peer: ControlPeer, epoch: number): void {
    this.checkSession(peer);
    this.epoch = Math.max(this.epoch, epoch);
    this.emit('freeze-received', { epoch });
    if (this.phase === 'mirroring') this.hold('freeze from the controller', false);
    peer.send([FrameType.frozen, { epoch, phase: this.phase }]);
  }

  onRun(peer: ControlPeer, epoch: number, action: GroupPolicy): void {
    this.checkSession(peer);
    this.emit('run', { epoch, action });
    if (action === 'go' && this.phase !== 'mirroring') this.release('run');
    else if (action === 'stop' && (this.phase === 'holding' || this.phase === 'released')) this.fence('run with policy stop');
    this.queueState();
  }

  onResume(peer: ControlPeer, epoch: number): void {
    this.checkSession(peer);
    if (this.phase !== 'released') return this.queueState();
    this.phase = 'mirroring';
    this.emit('resume', { epoch });
    this.host.resumePairs('the group resumes');
    this.queueState();
  }

  onLeave(peer: ControlPeer): void {
    this.checkSession(peer);
    this.emit('left');
    this.settings = undefined;
    this.session = undefined;
    this.stopLease();
    this.becomeStandalone('the controller left');
  }

  // ---------------------------------------------------------------- operator

  /** An operator's freeze: the whole group, through the controller if there is one. */
  freezeByOperator(): void {
    if (this.phase === 'mirroring') this.hold('freeze by an operator', true);
  }

  /**
   * An operator's run. In a group with its controller connected the
   * controller decides (run it there). Otherwise the operator takes this
   * primary out of its group: held and fenced writes complete, and the
   * pairs resync on their own, as a standalone primary's do.
   */
  runByOperator(): void {
    if (this.active && this.controllerConnected) {
      throw errors.BUSY(`Cannot run primary ${this.host.name} alone: its group '${this.settings!.group}' has a controller; run the group there`);
    }
    if (this.active) {
      this.emit('left', { reason: 'run by an operator without a controller' });
      this.settings = undefined;
      this.stopLease();
    }
    if (this.phase !== 'mirroring') this.becomeStandalone('run by an operator');
  }

  summary(): MemberSummary {
    return { name: this.host.name, mode: this.host.mode, phase: this.phase, epoch: this.epoch, linkUp: this.host.linkUp(), volumes: this.host.volumes() };
  }

  /** Rejects every held write with BM_ERR_CLOSED and stops the timers. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.stopLease();
    clearTimeout(this.holdTimer);
    const error = errors.CLOSED(`Cannot complete a held write on primary ${this.host.name}: it is closing`);
    for (const w of this.waiters.splice(0)) w.reject(error);
    this.session?.close();
  }

  // ---------------------------------------------------------------- phases

  private hold(reason: string, notice: boolean): void {
    if (this.phase !== 'mirroring' || this.closed) return;
    this.phase = 'holding';
    this.blocked = true;
    this.host.freezePairs(reason);
    this.emit('frozen', { reason });
    clearTimeout(this.holdTimer);
    this.holdTimer = setTimeout(() => this.holdTimedOut(), this.settings?.holdTimeoutMs ?? holdTimeoutMsDefault);
    (this.holdTimer as { unref?: () => void }).unref?.();
    if (notice) this.session?.send([FrameType.notice, { group: this.settings?.group ?? '', reason }]);
    this.queueState();
  }

  private holdTimedOut(): void {
    if (this.phase !== 'holding') return;
    const policy = this.settings?.policy ?? 'go';
    this.emit('hold-timeout', { action: policy });
    if (policy === 'go') this.release('hold timeout');
    else this.fence('hold timeout with policy stop');
  }

  private release(reason: string): void {
    clearTimeout(this.holdTimer);
    this.phase = 'released';
    this.blocked = false;
    this.host.releasePairs(reason);
    this.emit('released', { reason });
    for (const w of this.waiters.splice(0)) w.resolve();
    this.queueState();
  }

  private fence(reason: string): void {
    clearTimeout(this.holdTimer);
    this.phase = 'fenced';
    this.blocked = true;
    this.host.freezePairs(reason);
    this.emit('fenced', { reason });
    const error = this.frozenError();
    for (const w of this.waiters.splice(0)) w.reject(error);
    this.queueState();
  }

  private becomeStandalone(reason: string): void {
    clearTimeout(this.holdTimer);
    const wasMirroring = this.phase === 'mirroring';
    this.phase = 'mirroring';
    this.blocked = false;
    for (const w of this.waiters.splice(0)) w.resolve();
    if (!wasMirroring) this.host.resumePairs(reason);
  }

  private frozenError(): BlockmirrorError {
    return errors.FROZEN(`Cannot write to primary ${this.host.name}: its consistency group '${this.settings?.group ?? ''}' is frozen with policy stop until an operator runs it`);
  }

  // ---------------------------------------------------------------- plumbing

  private checkSession(peer: ControlPeer): void {
    if (peer !== this.session || !this.settings) throw errors.UNKNOWN_GROUP('Cannot accept a group command before join');
  }

  private startLease(): void {
    if (this.leaseTimer) return;
    this.leaseTimer = setInterval(() => this.checkLease(), 50);
    (this.leaseTimer as { unref?: () => void }).unref?.();
  }

  private stopLease(): void {
    if (this.leaseTimer) clearInterval(this.leaseTimer);
    this.leaseTimer = undefined;
  }

  private checkLease(): void {
    if (!this.settings) return;
    // Out-of-sync bytes change without a state change: report them now and then.
    if (++this.leaseTicks % 10 === 0) this.queueState();
    const heard = this.session && !this.session.closed ? this.session.lastHeard : this.lastHeard;
    const silent = performance.now() - heard;
    if (silent <= this.settings.leaseMs) return;
    if (this.session && !this.session.closed) this.session.close(errors.HEARTBEAT(`The controller was silent for ${Math.round(silent)} ms`));
    if (this.phase === 'mirroring') {
      this.emit('lease-expired', { reason: `nothing heard from the controller for ${Math.round(silent)} ms` });
      this.hold('the controller lease expired', false);
    }
  }

  private queueState(): void {
    if (this.stateQueued || !this.controllerConnected) return;
    this.stateQueued = true;
    // A macrotask, not a microtask: reports are for following the group, and
    // must not delay what is on the critical path of a freeze (this
    // member's acknowledgement, other members' handling in one process).
    setTimeout(() => {
      this.stateQueued = false;
      if (!this.controllerConnected) return;
      const { volumes, ...rest } = this.summary();
      const volumesJson = JSON.stringify(volumes);
      const text = JSON.stringify(rest) + volumesJson;
      // Skip a report identical to the last one (the periodic report, mostly).
      if (text === this.lastReported) return;
      this.lastReported = text;
      try {
        this.session?.send([FrameType.memberState, rest], textEncoder.encode(volumesJson));
      } catch (e) {
        // A report too large for a frame must not take the primary down; the controller then sees stale states.
        this.session?.close(e as BlockmirrorError);
      }
    }, 0);
  }

  private emit(event: string, extra: Partial<GroupEvent> = {}): void {
    this.host.emit({ type: 'group', event, group: this.settings?.group, member: this.host.name, epoch: this.epoch, ...extra, ...eventTime() });
  }
}
