// Every benchmark suite runs here at a tiny size, so that none of them can
// rot unnoticed. Timings at this size mean nothing; only that each suite
// completes and reports numbers is checked.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { context } from '../bench/harness.ts';
import { volumeWrite } from '../bench/volume-write.ts';
import { hashPool } from '../bench/hash-pool.ts';
import { codesCost } from '../bench/codes-cost.ts';
import { mirror } from '../bench/mirror.ts';
import { nbd } from '../bench/nbd.ts';
import { freeze } from '../bench/freeze.ts';
import { resync } from '../bench/resync.ts';

import { spawnSync } from 'node:child_process';

const needs: Record<string, string[]> = { nbd: ['fio', 'nbdkit'] };
const missing = (tools: string[]) => tools.filter((t) => spawnSync('sh', ['-c', `command -v ${t}`]).status !== 0);

for (const [name, suite] of Object.entries({ volumeWrite, hashPool, codesCost, mirror, nbd, freeze, resync })) {
  const absent = missing(needs[name] ?? []);
  if (absent.length) {
    console.log(`skipped: benchmark suite ${name}: ${absent.join(', ')} not installed (apt-get install ${absent.join(' ')})`);
    test.skip(name);
    continue;
  }
  test(`benchmark suite ${name} runs at tiny size and reports numbers`, async () => {
    const result = await suite(context('tiny', () => {}));
    assert.ok(result.rows.length > 0);
    for (const row of result.rows) assert.ok(Number.isFinite(row.opsPerSec) && row.opsPerSec > 0, `${row.name}: ${row.opsPerSec}`);
    for (const check of result.checks) assert.ok(Number.isFinite(check.ratio), check.name);
  });
}

test.run();
