/**
 * `blockmirror demo`: a local mirror pair, end to end, with no set-up. A
 * secondary listens on tcp:// and ws://; one primary mirrors `db` over
 * tcp:// in sync mode, another mirrors `log` over ws:// in async mode. A
 * write workload runs with progress, then everything stops cleanly and
 * every image is compared byte for byte with its mirror. Exits 0 only if
 * every check passed.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from './args.ts';
import { errors } from './errors.ts';
import { formatSize, MiB } from './geometry.ts';
import { Primary } from './primary.ts';
import { Secondary } from './secondary.ts';
import { NbdServer } from './nbd-server.ts';
import { spawn, spawnSync } from 'node:child_process';

const help = `Usage: blockmirror demo [--seconds N] [--dir DIR]

Runs a local mirror pair on this machine: a secondary on tcp:// and ws://, a
primary mirroring volume 'db' (64 MiB, sync) over tcp:// and one mirroring
'log' (16 MiB, async) over ws://, a random write workload for N seconds
(default 3), then qemu-img (or nbdcopy) writing 'db' through the NBD export,
a clean stop and a byte-for-byte comparison of every image with its mirror. Files go to a temporary directory (removed afterwards)
unless --dir is given. Exits 0 only if every check passed.
`;

export async function demoCommand(argv: string[]): Promise<number> {
  const args = parseArgs('demo', argv, { seconds: {}, dir: {} });
  if (args.help) {
    process.stdout.write(help);
    return 0;
  }
  const seconds = args.seconds === undefined ? 3 : Number(args.seconds);
  if (!(seconds > 0 && seconds <= 3600)) throw errors.USAGE(`demo: --seconds must be a number from 0 to 3600, not '${args.seconds}'`);
  const keep = args.dir !== undefined;
  const dir = keep ? path.resolve(args.dir as string) : fs.mkdtempSync(path.join(os.tmpdir(), 'blockmirror-demo-'));
  const say = (line: string) => process.stdout.write(line + '\n');
  say(`blockmirror demo: files in ${dir}`);

  const secondary = await Secondary.start({ dir: path.join(dir, 'secondary'), listen: ['tcp://127.0.0.1:0', 'ws://127.0.0.1:0'] });
  const [tcpUrl, wsUrl] = secondary.urls;
  say(`secondary listening on ${tcpUrl} and ${wsUrl}`);
  const overTcp = await Primary.start({ dir: path.join(dir, 'primary-tcp'), volumes: [{ name: 'db', size: 64 * MiB }], mirror: tcpUrl!, mode: 'sync' });
  const overWs = await Primary.start({ dir: path.join(dir, 'primary-ws'), volumes: [{ name: 'log', size: 16 * MiB }], mirror: wsUrl!, mode: 'async' });
  await Promise.all([overTcp.waitDuplex(), overWs.waitDuplex()]);
  say(`primary 'db' (64 MiB) mirrored over tcp:// in sync mode, primary 'log' (16 MiB) over ws:// in async mode: both duplex`);

  const db = overTcp.volume('db');
  const log = overWs.volume('log');
  const latencies: number[] = [];
  let bytes = 0;
  let ops = 0;
  let seed = 0x9e3779b9;
  const random = () => {
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    return (seed >>> 0) / 4294967296;
  };
  const block = new Uint8Array(256 * 1024);
  for (let i = 0; i < block.length; i++) block[i] = (random() * 256) | 0;
  const started = performance.now();
  const deadline = started + seconds * 1000;
  const tty = process.stdout.isTTY === true;
  let lastReport = started;
  const report = (final = false) => {
    const elapsed = (performance.now() - started) / 1000;
    const line = `  ${elapsed.toFixed(1)} s  ${ops} writes  ${formatSize(bytes)}  ${(bytes / 1e6 / Math.max(elapsed, 1e-3)).toFixed(1)} MB/s`;
    if (tty) process.stdout.write(`\r${line}${final ? '\n' : ''}`);
    else say(line);
  };
  // Four sync writers on db (4 KiB to 64 KiB) and two async writers on log (sequential 256 KiB appends).
  const dbWriter = async () => {
    while (performance.now() < deadline) {
      const length = 4096 * (1 + Math.floor(random() * 16));
      const offset = 4096 * Math.floor(random() * ((db.size - length) / 4096));
      const t0 = performance.now();
      await db.write(offset, block.subarray(0, length));
      latencies.push(performance.now() - t0);
      bytes += length;
      ops++;
    }
  };
  let logOffset = 0;
  const logWriter = async () => {
    while (performance.now() < deadline) {
      const at = logOffset;
      logOffset = (logOffset + block.length) % log.size;
      await log.write(at, block);
      bytes += block.length;
      ops++;
    }
  };
  const progress = setInterval(() => {
    if (performance.now() - lastReport >= (tty ? 200 : 1000)) {
      lastReport = performance.now();
      report();
    }
  }, 100);
  await Promise.all([dbWriter(), dbWriter(), dbWriter(), dbWriter(), logWriter(), logWriter()]);
  await Promise.all([db.flush(), log.flush()]);
  clearInterval(progress);
  report(true);
  const elapsed = (performance.now() - started) / 1000;

  // A real block tool writes through the NBD export of the mirrored 'db'.
  let nbdSource: string | undefined;
  const tool = ['qemu-img', 'nbdcopy'].find((t) => spawnSync('sh', ['-c', `command -v ${t}`]).status === 0);
  if (!tool) {
    say('skipped: the NBD step (neither qemu-img nor nbdcopy is installed: apt-get install qemu-utils libnbd-bin)');
  } else {
    const sock = path.join(dir, 'nbd.sock');
    const nbd = await NbdServer.start({ listen: `unix:${sock}`, exports: overTcp.pairs });
    nbdSource = path.join(dir, 'nbd-source.raw');
    const image = new Uint8Array(db.size);
    for (let i = 0; i < image.length; i += block.length) image.set(block.subarray(0, Math.min(block.length, image.length - i)), i);
    for (let i = 0; i < image.length; i += 4096) image[i] = (i >>> 12) & 255;
    fs.writeFileSync(nbdSource, image);
    const uri = `nbd+unix:///db?socket=${sock}`;
    const argv = tool === 'qemu-img' ? ['convert', '-n', '-f', 'raw', '-O', 'raw', nbdSource, uri] : [nbdSource, uri];
    const t0 = performance.now();
    const code = await new Promise<number | null>((resolve) => spawn(tool, argv, { stdio: 'ignore' }).on('close', resolve));
    const s = (performance.now() - t0) / 1000;
    await nbd.close();
    say(`${tool} wrote ${formatSize(image.length)} into 'db' through the NBD export in ${s.toFixed(2)} s (${(image.length / 1e6 / s).toFixed(0)} MB/s, sync-mirrored): ${code === 0 ? 'ok' : `FAILED (exit ${code})`}`);
    if (code !== 0) nbdSource = undefined;
  }

  say('stopping cleanly (SIGTERM does the same)...');
  await overTcp.close();
  await overWs.close();
  await secondary.close();

  let ok = true;
  for (const [side, name] of [['primary-tcp', 'db'], ['primary-ws', 'log']] as const) {
    const a = fs.readFileSync(path.join(dir, side, `${name}.img`));
    const b = fs.readFileSync(path.join(dir, 'secondary', `${name}.img`));
    const same = a.length === b.length && a.equals(b);
    say(`  ${name}.img: ${formatSize(a.length)} on the primary, ${formatSize(b.length)} on the secondary: ${same ? 'byte-identical' : 'DIFFERENT'}`);
    ok &&= same;
  }
  if (nbdSource) {
    const same = fs.readFileSync(nbdSource).equals(fs.readFileSync(path.join(dir, 'secondary', 'db.img')));
    say(`  what ${tool} wrote through NBD is on the secondary: ${same ? 'byte-identical' : 'DIFFERENT'}`);
    ok &&= same;
  }
  latencies.sort((x, y) => x - y);
  const pct = (p: number) => (latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))]!.toFixed(3) : 'n/a');
  say('');
  say(`summary: ${ops} writes, ${formatSize(bytes)} in ${elapsed.toFixed(1)} s = ${(bytes / 1e6 / elapsed).toFixed(1)} MB/s, ${(ops / elapsed).toFixed(0)} writes/s`);
  say(`sync write latency over tcp:// (db, 4-64 KiB, 4 in flight): p50 ${pct(0.5)} ms, p99 ${pct(0.99)} ms, max ${pct(1)} ms`);
  say(ok ? 'every check passed' : 'CHECK FAILED: an image differs from its mirror');
  if (!keep) fs.rmSync(dir, { recursive: true, force: true });
  return ok ? 0 : 1;
}
