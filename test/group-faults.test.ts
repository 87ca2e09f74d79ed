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
import { faultCycle, startGroup, until } from './group-setup.ts';
import { prng, testSeed } from './helpers.ts';

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
      const fault = await faultCycle(g, chain, random, label, n % 10 === 9 ? 'kill' : undefined);
      counts[fault] = (counts[fault] ?? 0) + 1;
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
