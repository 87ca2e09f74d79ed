// The soak: mixed load on a consistency group (a dependent-write chain over
// the first half of four volumes on two channels, and random writes, zero
// writes and flushes over the second half) with a link fault every few
// seconds, for BM_SOAK_SECONDS (default 60 on Node, 20 on Bun and Deno;
// `npm run soak` runs ten minutes). After every fault the secondary images
// must be a consistent cut and every member must have frozen before any ran;
// at the end the images match their primaries. Memory is sampled after the
// every fault, after a forced garbage collection where the runtime allows
// one; the lowest sample of the first third is compared with the lowest of
// the last third (a single sample may catch a large buffer not yet freed; on
// Bun the heap swings by 16 MiB between collections): the JavaScript heap may
// not grow by more than 24 MiB
// (nothing the load does should accumulate), the resident set by more than
// 128 MiB (it swings by tens of MiB with the allocator and with the frame
// buffers of closed connections, which are freed lazily).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { checkCut, DependentChain } from '../bench/dependent-writes.ts';
import { runtime } from '../engine/runtime.ts';
import { faultCycle, startGroup, until } from './group-setup.ts';
import { prng, randomBytes, testSeed } from './helpers.ts';

const heapGrowthMaxBytes = 24 * 1024 * 1024;
const rssGrowthMaxBytes = 128 * 1024 * 1024;

/** A full garbage collection, where the runtime offers one. */
async function collect(): Promise<boolean> {
  const g = globalThis as { Bun?: { gc(force: boolean): void }; Deno?: unknown; gc?: () => void };
  if (g.Bun) {
    g.Bun.gc(true);
    return true;
  }
  if (g.Deno) return false;
  const v8 = await import('node:v8');
  const vm = await import('node:vm');
  v8.setFlagsFromString('--expose_gc');
  (vm.runInNewContext('gc') as () => void)();
  return true;
}

async function sample(): Promise<{ rss: number; heap: number; collected: boolean }> {
  const collected = await collect();
  const m = process.memoryUsage();
  return { rss: m.rss, heap: m.heapUsed, collected };
}

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
  const samples: Array<{ rss: number; heap: number; collected: boolean }> = [];
  try {
    while (Date.now() < deadline) {
      const label = `soak seed ${seed}, fault ${faults + 1}`;
      await faultCycle(g, chain, random, label);
      faults++;
      samples.push(await sample());
      // A few seconds of mixed load between faults.
      chain.start();
      await new Promise((res) => setTimeout(res, 1000 + random() * 2000));
      await chain.stop();
    }
    stopping = true;
    await load;
    samples.push(await sample());
    const low = (list: typeof samples) => ({
      heap: Math.min(...list.map((x) => x.heap)),
      rss: Math.min(...list.map((x) => x.rss)),
      collected: list[0]!.collected,
    });
    const third = Math.max(3, Math.floor(samples.length / 3));
    const start = low(samples.slice(0, third));
    const end = low(samples.slice(-third));
    await until(() => g.controller!.phase === 'mirroring' && g.primaries.every((p) => p.pairs.every((x) => x.state === 'duplex')), 20_000, () => 'duplex at the end');
    const final = checkCut(g.secondaryImages(), chain.blocks);
    assert.is(final.newest, chain.next - 1);
    assert.equal(final.violations, []);
    const mib = (n: number) => (n / 2 ** 20).toFixed(1);
    console.log(
      `  soak: ${seconds} s, ${faults} faults, ${chain.next - 1} dependent writes, ${background} other operations; ` +
        `heap ${mib(start.heap)} → ${mib(end.heap)} MiB${start.collected ? ' (after a forced collection)' : ''}, resident set ${mib(start.rss)} → ${mib(end.rss)} MiB`,
    );
    assert.ok(faults >= Math.min(3, seconds / 5), `${faults} faults in ${seconds} s`);
    if (start.collected) assert.ok(end.heap - start.heap < heapGrowthMaxBytes, `the heap grew by ${mib(end.heap - start.heap)} MiB (bound ${heapGrowthMaxBytes / 2 ** 20} MiB)`);
    assert.ok(end.rss - start.rss < rssGrowthMaxBytes, `the resident set grew by ${mib(end.rss - start.rss)} MiB (bound ${rssGrowthMaxBytes / 2 ** 20} MiB)`);
  } finally {
    stopping = true;
    await chain.stop();
    await load.catch(() => {});
    await g.stop();
  }
});

test.run();
