// Consistency groups under seeded faults: a dependent-write workload runs
// across two primaries (tcp:// to a secondary process, ws:// to one in this
// process, each member's control on its own transport) while a fault hits
// one channel: a socket destroyed (also mid-frame), acknowledgements
// stalled, the secondary process killed, the link cut. After each fault the
// secondary images must hold a prefix of the writes, and every member must
// have frozen before any member ran. Then the fault heals and the group
// resyncs. Without the freeze, the same checker finds a broken cut.
//
// BM_GROUP_SEEDS sets the number of faults (default 100 on each runtime;
// `npm run soak:group` runs 2000); BM_SEED replays a run from its first seed.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { checkCut, DependentChain } from '../bench/dependent-writes.ts';
import { startGroup, until, type GroupSetup } from './group-setup.ts';
import { prng, testSeed } from './helpers.ts';
import type { GroupEvent } from '../engine/member.ts';

const faults = ['destroy', 'mid-frame', 'stall', 'cut', 'kill'] as const;
type Fault = (typeof faults)[number];

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

test('dependent writes stay a consistent cut on the secondaries through seeded faults, and every member freezes before any runs', async () => {
  const seeds = Number(process.env.BM_GROUP_SEEDS ?? 100);
  const base = testSeed();
  const g = await startGroup();
  const chain = new DependentChain(g.targets, g.blocks);
  const controller = g.controller!;
  const counts: Record<string, number> = {};
  try {
    for (let n = 0; n < seeds; n++) {
      const seed = (base + n) >>> 0;
      const random = prng(seed);
      const label = `seed ${seed} (replay: BM_SEED=${seed} BM_GROUP_SEEDS=1)`;
      await until(
        () => controller.phase === 'mirroring' && g.primaries.every((p) => p.pairs.every((x) => x.state === 'duplex')),
        20_000,
        () => `${label}: the group mirroring again (${controller.phase}, ${g.primaries.map((p) => p.pairs.map((x) => x.state).join('/')).join(' ')})`,
      );
      // Kill the secondary process only now and then: restarting it is slow.
      const fault: Fault = n % 10 === 9 ? 'kill' : faults[Math.floor(random() * 4)]!;
      const channel = fault === 'kill' ? 0 : random() < 0.5 ? 0 : 1;
      counts[fault] = (counts[fault] ?? 0) + 1;
      const memberMark = g.memberEvents.length;
      const controllerMark = g.controllerEvents.length;
      const faultAt = chain.next + 1 + Math.floor(random() * 24);
      let injected = false;
      chain.start((seq) => {
        if (seq === faultAt && !injected) {
          injected = true;
          inject(g, fault, channel, random);
        }
      });
      await until(() => injected && controller.phase === 'suspended', 20_000, () => `${label}: ${fault} on channel ${channel} froze and ran the group (phase ${controller.phase})`);
      // Writes go on, completing locally, recorded.
      const resumeAt = chain.next + 4;
      await until(() => chain.next >= resumeAt, 10_000, () => `${label}: writes complete after RUN`);
      await chain.stop();
      const report = checkCut(g.secondaryImages(), g.blocks);
      assert.equal(report.violations.slice(0, 5), [], `${label}: ${fault} on channel ${channel}: the secondaries are not a consistent cut at record ${report.newest}`);
      checkOrder(g.memberEvents.slice(memberMark), g.controllerEvents.slice(controllerMark), 2, label);
      await heal(g, fault, channel);
    }
    await until(() => controller.phase === 'mirroring' && g.primaries.every((p) => p.pairs.every((x) => x.state === 'duplex')), 20_000, () => 'duplex at the end');
    // After the last resync, both sides hold every record.
    const final = checkCut(g.secondaryImages(), g.blocks);
    assert.is(final.newest, chain.next - 1, 'the secondaries hold the last record written');
    assert.equal(final.violations, []);
    console.log(`  group faults: ${seeds} seeds from ${base}: ${Object.entries(counts).map(([k, v]) => `${v} ${k}`).join(', ')}; ${chain.next - 1} dependent writes`);
  } finally {
    await chain.stop();
    await g.stop();
  }
});

test('the checker catches a broken cut when the group is not frozen (standalone primaries)', async () => {
  const seed = testSeed();
  const random = prng(seed);
  const g = await startGroup({ freeze: false, processSecondary: false });
  const chain = new DependentChain(g.targets, g.blocks);
  try {
    await chain.writeSome(20);
    const channel = random() < 0.5 ? 0 : 1;
    g.proxies[channel]!.refuse(true);
    g.proxies[channel]!.cut();
    await until(() => g.primaries[channel]!.pairs.every((p) => p.state === 'suspended'), 10_000, () => 'suspended');
    await chain.writeSome(8);
    const report = checkCut(g.secondaryImages(), g.blocks);
    assert.ok(report.violations.length > 0, `seed ${seed}: without a freeze, a write after an unmirrored one reached the other secondary`);
  } finally {
    await g.stop();
  }
});

test.run();
