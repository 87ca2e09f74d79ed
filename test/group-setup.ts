/**
 * A consistency group for tests: two primaries in this process, each with
 * two volumes, one mirroring over tcp:// to a secondary in a child process,
 * the other over ws:// to a secondary in this process; a fault proxy in
 * front of each secondary; each primary's control endpoint on its own
 * transport (tcp:// and ws://); and a controller in this process that joins
 * both over those endpoints. With `freeze: false` there is no controller:
 * two standalone primaries, which is what the checker must catch.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { Primary, type PrimaryEvent } from '../engine/primary.ts';
import { Secondary } from '../engine/secondary.ts';
import { Controller, type ControllerOptions } from '../engine/controller.ts';
import { ControlServer } from '../engine/control-server.ts';
import type { GroupEvent } from '../engine/member.ts';
import { FaultProxy } from '../bench/fault-proxy.ts';
import { exited, freePort, startCli, tempDir } from './helpers.ts';
import { checkCut, recordBytes, type ChainTarget, type DependentChain } from '../bench/dependent-writes.ts';
import * as assert from 'uvu/assert';

export interface GroupSetup {
  dir: string;
  primaries: Primary[];
  proxies: FaultProxy[];
  controller: Controller | undefined;
  controls: ControlServer[];
  /** Chain targets in order: p1/a, p1/b, p2/c, p2/d (so the chain alternates channels). */
  targets: ChainTarget[];
  blocks: number;
  memberEvents: GroupEvent[];
  controllerEvents: GroupEvent[];
  primaryEvents: PrimaryEvent[][];
  /** The secondary images, in chain order. */
  secondaryImages(): Uint8Array[];
  killSecondaryProcess(): Promise<void>;
  restartSecondaryProcess(): Promise<void>;
  stop(): Promise<void>;
}

export async function startGroup(options: { freeze?: boolean; policy?: 'go' | 'stop'; volumeBytes?: number; processSecondary?: boolean; controller?: Partial<ControllerOptions> } = {}): Promise<GroupSetup> {
  const { dir, cleanup } = tempDir('bm-group-');
  const volumeBytes = options.volumeBytes ?? 256 * 1024;
  const blocks = volumeBytes / recordBytes;
  const s1Dir = path.join(dir, 's1');
  const s1Port = await freePort();
  const s1Url = `tcp://127.0.0.1:${s1Port}`;
  const processSecondary = options.processSecondary !== false;
  let s1Process: (ChildProcess & { output: () => string }) | undefined;
  let s1Local: Secondary | undefined;
  const startS1 = async () => {
    if (processSecondary) s1Process = await startCli(['secondary', '--dir', s1Dir, '--listen', s1Url], /listening/);
    else s1Local = await Secondary.start({ dir: s1Dir, listen: [s1Url] });
  };
  await startS1();
  const s2 = await Secondary.start({ dir: path.join(dir, 's2'), listen: ['ws://127.0.0.1:0'] });
  const proxies = [await FaultProxy.start(s1Port), await FaultProxy.start(Number(s2.urls[0]!.split(':').pop()))];
  const common = {
    mode: 'sync' as const,
    pool: 'none' as const,
    journalBytes: 1 << 20,
    payloadBytesMax: 64 * 1024,
    ackTimeoutMs: 250,
    heartbeatMs: 100,
    reconnectDelayMinMs: 10,
    reconnectDelayMaxMs: 50,
  };
  const p1 = await Primary.start({ ...common, name: 'p1', dir: path.join(dir, 'p1'), volumes: [{ name: 'a', size: volumeBytes }, { name: 'b', size: volumeBytes }], mirror: proxies[0]!.url('tcp') });
  const p2 = await Primary.start({ ...common, name: 'p2', dir: path.join(dir, 'p2'), volumes: [{ name: 'c', size: volumeBytes }, { name: 'd', size: volumeBytes }], mirror: proxies[1]!.url('ws') });
  const primaries = [p1, p2];
  const memberEvents: GroupEvent[] = [];
  const controllerEvents: GroupEvent[] = [];
  const primaryEvents: PrimaryEvent[][] = [[], []];
  primaries.forEach((p, i) =>
    p.onEvent((e) => {
      primaryEvents[i]!.push(e);
      if (e.type === 'group') memberEvents.push(e);
    }),
  );
  const controls = [await ControlServer.start('tcp://127.0.0.1:0', p1.controlEndpoint()), await ControlServer.start('ws://127.0.0.1:0', p2.controlEndpoint())];
  let controller: Controller | undefined;
  if (options.freeze !== false) {
    controller = Controller.start({
      members: controls.map((c) => c.url),
      policy: options.policy ?? 'go',
      heartbeatMs: 100,
      leaseMs: 1500,
      freezeAckTimeoutMs: 1000,
      ...options.controller,
    });
    controller.onEvent((e) => controllerEvents.push(e));
    await controller.waitJoined(10_000);
  }
  await Promise.all(primaries.map((p) => p.waitDuplex(15_000)));
  const pairs = [p1.volume('a'), p1.volume('b'), p2.volume('c'), p2.volume('d')];
  const readS1 = (name: string) => (s1Local ? s1Local.volume(name)!.read(0, volumeBytes) : new Uint8Array(fs.readFileSync(path.join(s1Dir, `${name}.img`))));
  let stopped = false;
  return {
    dir,
    primaries,
    proxies,
    controller,
    controls,
    targets: pairs,
    blocks,
    memberEvents,
    controllerEvents,
    primaryEvents,
    secondaryImages: () => [readS1('a'), readS1('b'), s2.volume('c')!.read(0, volumeBytes), s2.volume('d')!.read(0, volumeBytes)],
    killSecondaryProcess: async () => {
      if (!s1Process) throw new Error('the tcp secondary runs in this process');
      s1Process.kill('SIGKILL');
      await exited(s1Process);
    },
    restartSecondaryProcess: startS1,
    stop: async () => {
      if (stopped) return;
      stopped = true;
      await controller?.close();
      for (const p of primaries) await p.close({ drainTimeoutMs: 1000 });
      for (const c of controls) await c.close();
      if (s1Process) {
        s1Process.kill('SIGTERM');
        await exited(s1Process);
      }
      await s1Local?.close();
      await s2.close();
      for (const p of proxies) await p.close();
      cleanup();
    },
  };
}

export async function until(condition: () => boolean, timeoutMs: number, what: () => string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what()}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

const faults = ['destroy', 'mid-frame', 'stall', 'cut', 'kill'] as const;
export type Fault = (typeof faults)[number];

function inject(g: GroupSetup, fault: Fault, channel: number, random: () => number): void {
  const proxy = g.proxies[channel]!;
  proxy.refuse(true); // the link stays down until the check is done
  if (fault === 'destroy' || fault === 'cut') proxy.cut();
  else if (fault === 'mid-frame') proxy.cutAfter(1 + Math.floor(random() * 6000));
  else if (fault === 'stall') proxy.stall(true);
  else void g.killSecondaryProcess();
}

async function heal(g: GroupSetup, fault: Fault, channel: number): Promise<void> {
  const proxy = g.proxies[channel]!;
  if (fault === 'kill') await g.restartSecondaryProcess();
  proxy.stall(false);
  proxy.cut();
  proxy.cutAfter(-1);
  proxy.refuse(false);
}

/** Every member froze before any member ran, and the controller sent no RUN before every FREEZE was acknowledged or its member declared lost. */
function checkOrder(member: GroupEvent[], controller: GroupEvent[], members: number, label: string): void {
  const runs = member.filter((e) => e.event === 'run');
  assert.ok(runs.length > 0, `${label}: the members ran`);
  const firstRun = Math.min(...runs.map((e) => e.t));
  const frozen = new Map<string, number>();
  for (const e of member) if (e.event === 'frozen' && !frozen.has(e.member!)) frozen.set(e.member!, e.t);
  assert.is(frozen.size, members, `${label}: every member froze (${[...frozen.keys()].join(', ')})`);
  for (const [name, t] of frozen) assert.ok(t < firstRun, `${label}: member ${name} froze ${(t - firstRun).toFixed(3)} ms after the first RUN`);
  const runSent = controller.findIndex((e) => e.event === 'run-sent');
  const settled = controller.slice(0, runSent).filter((e) => e.event === 'freeze-acked' || e.event === 'member-declared-lost');
  assert.is(new Set(settled.map((e) => e.member)).size, members, `${label}: every FREEZE acknowledged (or its member declared lost) before the first RUN`);
}


/**
 * One fault of the seeded consistency tests: wait until the group mirrors,
 * inject `fault` (or one chosen by `random`: a socket destroyed, cut
 * mid-frame, acknowledgements stalled, the link cut; 'kill' kills the
 * secondary process) into one channel while the dependent chain runs, wait
 * until the group froze and ran, let writes go on locally, then check the
 * secondary images are a consistent cut and that every member froze before
 * any ran; heal. Returns the fault.
 */
export async function faultCycle(g: GroupSetup, chain: DependentChain, random: () => number, label: string, forced?: Fault): Promise<Fault> {
  await until(
    () => g.controller!.phase === 'mirroring' && g.primaries.every((p) => p.pairs.every((x) => x.state === 'duplex')),
    20_000,
    () => `${label}: the group mirroring again (${g.controller!.phase}, ${g.primaries.map((p) => p.pairs.map((x) => x.state).join('/')).join(' ')})`,
  );
  const fault: Fault = forced ?? faults[Math.floor(random() * 4)]!;
  const channel = fault === 'kill' ? 0 : random() < 0.5 ? 0 : 1;
  // Each cycle checks only its own events: drop the older ones, so that a long soak does not accumulate them.
  g.memberEvents.length = 0;
  g.controllerEvents.length = 0;
  for (const list of g.primaryEvents) list.length = 0;
  const memberMark = 0;
  const controllerMark = 0;
  const faultAt = chain.next + 1 + Math.floor(random() * 24);
  let injected = false;
  chain.start((seq) => {
    if (seq === faultAt && !injected) {
      injected = true;
      inject(g, fault, channel, random);
    }
  });
  await until(() => injected && g.controller!.phase === 'suspended', 20_000, () => `${label}: ${fault} on channel ${channel} froze and ran the group (phase ${g.controller!.phase})`);
  // Writes go on, completing locally, recorded.
  const resumeAt = chain.next + 4;
  await until(() => chain.next >= resumeAt, 10_000, () => `${label}: writes complete after RUN`);
  await chain.stop();
  const report = checkCut(g.secondaryImages(), chain.blocks);
  assert.equal(report.violations.slice(0, 5), [], `${label}: ${fault} on channel ${channel}: the secondaries are not a consistent cut at record ${report.newest}`);
  checkOrder(g.memberEvents.slice(memberMark), g.controllerEvents.slice(controllerMark), 2, label);
  await heal(g, fault, channel);
  return fault;
}
