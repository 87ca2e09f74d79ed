// Crash safety under SIGKILL, seeded. The primary and the secondary run as
// processes (`blockmirror primary --nbd`, `blockmirror secondary`); a sync
// workload writes versioned blocks through NBD, with flushes and FUA writes,
// and logs every write the primary acknowledged. At a moment chosen by the
// seed, the primary, the secondary or both are killed with SIGKILL; then:
//
// - every acknowledged write is on the surviving images (sync mode: on both);
// - the killed processes start again, the pair agrees on direction from its
//   generation ids, finds what differs (after a primary crash its map cannot
//   be trusted: every code is compared) and returns to duplex;
// - at the end, after a clean stop, both images are identical and hold, for
//   every block, a version no older than the last one acknowledged.
//
// BM_CRASH_SEEDS sets the number of kills (default 24 on Node, whose
// processes start slowly under tsx, 120 on Bun, 80 on Deno: 224 in a run of
// the suite, about 70 s on each runtime; `npm run soak:crash` runs 300 on
// Bun); BM_SEED replays a run from its first seed.
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { closed, exited, freePort, prng, runCli, startCli, tempDir, testSeed } from './helpers.ts';
import { NbdClient } from './nbd-client.ts';
import { runtime } from '../engine/runtime.ts';

const blockBytes = 4096;
const blocks = 256; // a 1 MiB volume: 16 segments
const magic = 0x4b4c4231;

function blockData(block: number, version: number): Uint8Array {
  const out = new Uint8Array(blockBytes);
  const view = new DataView(out.buffer);
  view.setUint32(0, magic, true);
  view.setUint32(4, block, true);
  view.setUint32(8, version, true);
  let x = (version * 2654435761 + block) >>> 0 || 1;
  for (let at = 12; at < blockBytes; at += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    view.setUint32(at, x >>> 0, true);
  }
  return out;
}

/** The version a block of an image holds: 0 for zeroes, -1 for anything that is not a whole block of ours. */
function versionOf(image: Uint8Array, block: number): number {
  const b = image.subarray(block * blockBytes, (block + 1) * blockBytes);
  if (b.every((x) => x === 0)) return 0;
  const view = new DataView(b.buffer, b.byteOffset, b.byteLength);
  if (view.getUint32(0, true) !== magic || view.getUint32(4, true) !== block) return -1;
  const v = view.getUint32(8, true);
  const want = blockData(block, v);
  for (let i = 0; i < blockBytes; i++) if (want[i] !== b[i]) return -1;
  return v;
}

function checkImage(file: string, acked: Int32Array, issued: Int32Array, label: string): void {
  const image = new Uint8Array(fs.readFileSync(file));
  for (let b = 0; b < blocks; b++) {
    const v = versionOf(image, b);
    assert.ok(v >= 0, `${label}: block ${b} of ${path.basename(path.dirname(file))} is torn or foreign`);
    assert.ok(v >= acked[b]!, `${label}: block ${b} of ${path.basename(path.dirname(file))} holds version ${v}, older than the acknowledged ${acked[b]}`);
    assert.ok(v <= issued[b]!, `${label}: block ${b} holds version ${v}, never written (last issued ${issued[b]})`);
  }
}

test('SIGKILL of the primary, the secondary or both at seeded moments loses no acknowledged write, and the pair converges', async () => {
  const seeds = Number(process.env.BM_CRASH_SEEDS ?? { node: 24, bun: 120, deno: 80 }[runtime]);
  const base = testSeed();
  const { dir, cleanup } = tempDir('bm-crash-seeds-');
  const d = (x: string) => path.join(dir, x);
  const [dataPort, controlPort] = [await freePort(), await freePort()];
  const control = `tcp://127.0.0.1:${controlPort}`;
  const sock = d('nbd.sock');
  const startSecondary = () => startCli(['secondary', '--dir', d('s'), '--listen', `tcp://127.0.0.1:${dataPort}`], /listening/, 30_000);
  const startPrimary = () =>
    startCli(['primary', '--dir', d('p'), '--volume', `v:${(blocks * blockBytes) / 1024}KiB`, '--mirror', `tcp://127.0.0.1:${dataPort}`, '--control', control, '--nbd', `unix:${sock}`], /primary mirroring/, 30_000);
  let secondary = await startSecondary();
  let primary = await startPrimary();
  const acked = new Int32Array(blocks);
  const issued = new Int32Array(blocks);
  let version = 0;
  const kills: Record<string, number> = {};
  const waitDuplex = async (label: string) => {
    const deadline = Date.now() + 60_000;
    for (;;) {
      const r = await runCli(['status', '--control', control, '--json'], { timeoutMs: 10_000 });
      if (r.code === 0 && JSON.parse(r.stdout).volumes[0].state === 'duplex') return;
      if (Date.now() > deadline) throw new Error(`${label}: the pair did not return to duplex: ${r.stdout}${r.stderr}`);
      await new Promise((res) => setTimeout(res, 50));
    }
  };
  try {
    await waitDuplex('start');
    let client = await NbdClient.connect(`unix:${sock}`, 'v');
    for (let n = 0; n < seeds; n++) {
      const seed = (base + n) >>> 0;
      const random = prng(seed);
      const label = `seed ${seed} (replay: BM_SEED=${seed} BM_CRASH_SEEDS=1)`;
      const target = (['primary', 'secondary', 'both'] as const)[Math.floor(random() * 3)]!;
      kills[target] = (kills[target] ?? 0) + 1;
      const writes = 10 + Math.floor(random() * 60);
      const killAt = Math.floor(random() * writes);
      let primaryDown = false;
      // Acknowledged before the kill: on both sides. After a kill of the secondary alone, writes go
      // on completing on the primary (recorded as out of sync), so only this snapshot binds the secondary.
      let mirrored = acked.slice();
      for (let i = 0; i < writes && !primaryDown; i++) {
        if (i === killAt) {
          mirrored = acked.slice();
          if (target !== 'secondary') primary.kill('SIGKILL');
          if (target !== 'primary') secondary.kill('SIGKILL');
          primaryDown = target !== 'secondary';
        }
        const block = Math.floor(random() * blocks);
        const v = ++version;
        issued[block] = v;
        const kind = random();
        try {
          const error = kind < 0.1 ? await client.flush() : await client.write(block * blockBytes, blockData(block, v), { fua: kind > 0.9 });
          if (error === 0 && kind >= 0.1) acked[block] = v;
        } catch {
          primaryDown = true; // the connection died with the primary
        }
      }
      if (target !== 'secondary') await exited(primary);
      if (target !== 'primary') await exited(secondary);
      // What survived the kill: sync mode acknowledged a write only once the secondary applied it.
      checkImage(d('s/v.img'), mirrored, issued, `${label}, ${target} killed, secondary image`);
      checkImage(d('p/v.img'), acked, issued, `${label}, ${target} killed, primary image`);
      if (target !== 'primary') secondary = await startSecondary();
      if (target !== 'secondary') {
        client.close();
        primary = await startPrimary();
        client = await NbdClient.connect(`unix:${sock}`, 'v');
      }
      await waitDuplex(label);
    }
    client.close();
    primary.kill('SIGTERM');
    await closed(primary);
    secondary.kill('SIGTERM');
    await closed(secondary);
    checkImage(d('p/v.img'), acked, issued, 'after a clean stop');
    assert.ok(fs.readFileSync(d('p/v.img')).equals(fs.readFileSync(d('s/v.img'))), 'the images are identical');
    console.log(`  crash seeds: ${seeds} kills from ${base}: ${Object.entries(kills).map(([k, v]) => `${v} ${k}`).join(', ')}; ${version} writes`);
  } finally {
    primary.kill('SIGKILL');
    secondary.kill('SIGKILL');
    cleanup();
  }
});

test.run();
