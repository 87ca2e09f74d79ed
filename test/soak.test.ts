// The soak: mixed load on a consistency group (a dependent-write chain over
// the first half of four volumes on two channels, and random writes, zero
// writes and flushes over the second half) with a link fault every few
// seconds, for BM_SOAK_SECONDS (default 60 on Node, 20 on Bun and Deno;
// `npm run soak` runs ten minutes). After every fault the secondary images
// must be a consistent cut and every member must have frozen before any ran;
// at the end the images match their primaries. Memory is sampled after the
// first fault and at the end: the resident set may not grow by more than
// 64 MiB (the load holds no state that should grow with time).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { checkCut, DependentChain } from '../bench/dependent-writes.ts';
import { runtime } from '../engine/runtime.ts';
import { faultCycle, startGroup, until } from './group-setup.ts';
import { prng, randomBytes, testSeed } from './helpers.ts';

const growthMaxBytes = 64 * 1024 * 1024;

test('soak: mixed load with link faults every few seconds keeps every cut consistent and memory bounded', async () => {
  const seconds = Number(process.env.BM_SOAK_SECONDS ?? (runtime === 'node' ? 60 : 20));
  const seed = testSeed();
  const random = prng(seed);
  const volumeBytes = 512 * 1024;
  const g = await startGroup({ volumeBytes });
  const half = volumeBytes / 2;
  const chain = new DependentChain(g.targets, half / 4096);
  let stopping = false;
  let background = 0;
  const load = (async () => {
    const r = prng(seed ^ 0x5bd1e995);
    const data = randomBytes(r, 64 * 1024);
    for (let n = 0; !stopping; n++) {
      const pair = g.primaries[Math.floor(r() * 2)]!.pairs[Math.floor(r() * 2)]!;
      const length = 4096 * (1 + Math.floor(r() * 16));
      const offset = half + 4096 * Math.floor(r() * ((half - length) / 4096));
      const kind = r();
      if (kind < 0.8) await pair.write(offset, data.subarray(0, length));
      else if (kind < 0.9) await pair.writeZeroes(offset, length);
      else await pair.flush();
      background++;
      if (n % 4 === 0) await new Promise((res) => setTimeout(res, 1));
    }
  })();
  const deadline = Date.now() + seconds * 1000;
  let faults = 0;
  let rssStart = 0;
  try {
    while (Date.now() < deadline) {
      const label = `soak seed ${seed}, fault ${faults + 1}`;
      await faultCycle(g, chain, random, label);
      faults++;
      if (faults === 1) rssStart = process.memoryUsage().rss;
      // A few seconds of mixed load between faults.
      chain.start();
      await new Promise((res) => setTimeout(res, 1000 + random() * 2000));
      await chain.stop();
    }
    stopping = true;
    await load;
    const rssEnd = process.memoryUsage().rss;
    await until(() => g.controller!.phase === 'mirroring' && g.primaries.every((p) => p.pairs.every((x) => x.state === 'duplex')), 20_000, () => 'duplex at the end');
    const final = checkCut(g.secondaryImages(), chain.blocks);
    assert.is(final.newest, chain.next - 1);
    assert.equal(final.violations, []);
    const growth = rssEnd - rssStart;
    console.log(`  soak: ${seconds} s, ${faults} faults, ${chain.next - 1} dependent writes, ${background} other operations; resident set ${(rssStart / 2 ** 20).toFixed(0)} → ${(rssEnd / 2 ** 20).toFixed(0)} MiB`);
    assert.ok(faults >= Math.min(3, seconds / 5), `${faults} faults in ${seconds} s`);
    assert.ok(growth < growthMaxBytes, `the resident set grew by ${(growth / 2 ** 20).toFixed(1)} MiB (bound ${growthMaxBytes / 2 ** 20} MiB)`);
  } finally {
    stopping = true;
    await chain.stop();
    await load.catch(() => {});
    await g.stop();
  }
});

test.run();
