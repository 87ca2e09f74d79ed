// Sync mode keeps its promise when the secondary dies: every write that
// resolved before a SIGKILL of the secondary process is in its image file.
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Primary } from '../engine/primary.ts';
import { exited, freePort, prng, randomBytes, startCli, tempDir, testSeed } from './helpers.ts';

for (const scheme of ['tcp', 'ws'] as const) {
  test(`${scheme}, sync: every write that resolved is on the secondary after it is killed with SIGKILL`, async () => {
    const seed = testSeed();
    const random = prng(seed);
    const { dir, cleanup } = tempDir('bm-crash-');
    const port = await freePort();
    const url = `${scheme}://127.0.0.1:${port}`;
    const secondary = await startCli(['secondary', '--dir', path.join(dir, 's'), '--listen', url], /listening/);
    const blocks = 512;
    const primary = await Primary.start({ dir: path.join(dir, 'p'), volumes: [{ name: 'db', size: blocks * 4096 }], mirror: url, mode: 'sync', pool: 'none', reconnectDelayMinMs: 50 });
    try {
      await primary.waitDuplex(10_000);
      const db = primary.volume('db');
      const resolved: Array<{ block: number; data: Uint8Array }> = [];
      let killed = false;
      const killAt = 50 + Math.floor(random() * 300);
      let next = 0;
      // Four writers, each to blocks never written before, so every resolved write has one expected content.
      const writer = async () => {
        while (next < blocks) {
          const block = next++;
          const data = randomBytes(random, 4096);
          await db.write(block * 4096, data);
          if (!killed) resolved.push({ block, data });
          if (resolved.length === killAt && !killed) {
            killed = true;
            secondary.kill('SIGKILL');
          }
        }
      };
      await Promise.all([writer(), writer(), writer(), writer()]);
      await exited(secondary);
      assert.ok(killed, 'the secondary was killed mid-workload');
      const image = fs.readFileSync(path.join(dir, 's', 'db.img'));
      for (const { block, data } of resolved) {
        assert.equal(new Uint8Array(image.subarray(block * 4096, (block + 1) * 4096)), data, `seed ${seed}: block ${block} resolved but is not on the secondary`);
      }
      assert.is(db.state, 'suspended');
    } finally {
      secondary.kill('SIGKILL');
      await primary.close({ drainTimeoutMs: 0 });
      cleanup();
    }
  });
}

test.run();
