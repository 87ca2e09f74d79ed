/**
 * `blockmirror demo`: a local mirror pair, end to end, with no set-up. A
 * secondary listens on tcp:// and ws://. Primary `db` mirrors over tcp://
 * in sync mode (through a proxy whose link the demo can cut), primary `idx`
 * over ws:// in sync mode, and primary `log` over ws:// in async mode. A
 * controller joins `db` and `idx` into one consistency group, each over its
 * own control link (tcp:// and ws://).
 *
 * Steps: a write workload with progress; a real block tool (qemu-img or
 * nbdcopy) writing `db` through the NBD export; the freeze: a dependent
 * write stream across `db` and `idx` while `db`'s link is cut, both members
 * frozen, the time it took, the secondary images checked to be a
 * consistent cut, then the link back and the group resyncing; a clean stop
 * and a byte-for-byte comparison of every image with its mirror. Exits 0
 * only if every check passed.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { parseArgs } from './args.ts';
import { errors } from './errors.ts';
import { formatSize, MiB } from './geometry.ts';
import { Primary } from './primary.ts';
import { Secondary } from './secondary.ts';
import { NbdServer } from './nbd-server.ts';
import { Controller } from './controller.ts';
import { ControlServer } from './control-server.ts';
import type { GroupEvent } from './member.ts';
import { FaultProxy } from '../bench/fault-proxy.ts';
import { checkCut, DependentChain } from '../bench/dependent-writes.ts';
import { demoteVolumes, promoteVolumes } from './roles.ts';
import net from 'node:net';

/** A free loopback TCP port (bound and released). */
function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as net.AddressInfo).port;
      server.close(() => resolve(port));
    });
  });
}

const help = `Usage: blockmirror demo [--seconds N] [--dir DIR]

Runs a local mirror pair on this machine: a secondary on tcp:// and ws://;
primary 'db' (64 MiB, sync) over tcp://, primary 'idx' (16 MiB, sync) over
ws://, both in one consistency group run by a controller, and primary 'log'
(16 MiB, async) over ws://. A random write workload runs for N seconds
(default 3), then qemu-img (or nbdcopy) writes 'db' through the NBD export.
Then the freeze: dependent writes alternate between 'db' and 'idx' while the
link of 'db' is cut; both members freeze, the secondary images are checked to
be a consistent cut, the link returns and the group resyncs by comparing codes.
Then failover and failback on a pair of its own: the secondary is promoted and
written, the old primary returns as its secondary and gets only the differing
segments, and a swap back copies nothing. Finally a clean
stop and a byte-for-byte comparison of every image with its mirror. Files go
to a temporary directory (removed afterwards) unless --dir is given. Exits 0
only if every check passed.
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
  let ok = true;
  const check = (passed: boolean, line: string) => {
    say(`  ${passed ? 'ok  ' : 'FAIL'} ${line}`);
    ok &&= passed;
  };

  const secondary = await Secondary.start({ dir: path.join(dir, 'secondary'), listen: ['tcp://127.0.0.1:0', 'ws://127.0.0.1:0'] });
  const [tcpUrl, wsUrl] = secondary.urls;
  const dbLink = await FaultProxy.start(Number(tcpUrl!.split(':').pop()));
  say(`secondary listening on ${tcpUrl} and ${wsUrl}`);
  const fast = { reconnectDelayMinMs: 20, reconnectDelayMaxMs: 500, heartbeatMs: 250 };
  const db = await Primary.start({ ...fast, name: 'db', dir: path.join(dir, 'primary-db'), volumes: [{ name: 'db', size: 64 * MiB }], mirror: dbLink.url('tcp'), mode: 'sync' });
  const idx = await Primary.start({ ...fast, name: 'idx', dir: path.join(dir, 'primary-idx'), volumes: [{ name: 'idx', size: 16 * MiB }], mirror: wsUrl!, mode: 'sync' });
  const log = await Primary.start({ name: 'log', dir: path.join(dir, 'primary-log'), volumes: [{ name: 'log', size: 16 * MiB }], mirror: wsUrl!, mode: 'async' });
  const dbControl = await ControlServer.start('tcp://127.0.0.1:0', db.controlEndpoint());
  const idxControl = await ControlServer.start('ws://127.0.0.1:0', idx.controlEndpoint());
  const controller = Controller.start({ members: [dbControl.url, idxControl.url], group: 'demo', heartbeatMs: 250, leaseMs: 3000 });
  const groupEvents: GroupEvent[] = [];
  const memberEvents: GroupEvent[] = [];
  controller.onEvent((e) => groupEvents.push(e));
  for (const p of [db, idx]) p.onEvent((e) => e.type === 'group' && memberEvents.push(e));
  await Promise.all([db.waitDuplex(), idx.waitDuplex(), log.waitDuplex(), controller.waitJoined()]);
  say(`primary 'db' (64 MiB, sync) over tcp://, 'idx' (16 MiB, sync) over ws://: duplex, in consistency group 'demo' (control over ${dbControl.url} and ${idxControl.url})`);
  say(`primary 'log' (16 MiB, async) over ws://: duplex`);

  // 1. A random workload with progress.
  const dbPair = db.volume('db');
  const idxPair = idx.volume('idx');
  const logPair = log.volume('log');
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
  // Sync writers on db and idx (4 KiB to 64 KiB), async sequential 256 KiB appends on log.
  const syncWriter = (pair: typeof dbPair) => async () => {
    while (performance.now() < deadline) {
      const length = 4096 * (1 + Math.floor(random() * 16));
      const offset = 4096 * Math.floor(random() * ((pair.size - length) / 4096));
      const t0 = performance.now();
      await pair.write(offset, block.subarray(0, length));
      if (pair === dbPair) latencies.push(performance.now() - t0);
      bytes += length;
      ops++;
    }
  };
  let logOffset = 0;
  const logWriter = async () => {
    while (performance.now() < deadline) {
      const at = logOffset;
      logOffset = (logOffset + block.length) % logPair.size;
      await logPair.write(at, block);
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
  say('1. random writes on all three primaries:');
  await Promise.all([syncWriter(dbPair)(), syncWriter(dbPair)(), syncWriter(dbPair)(), syncWriter(idxPair)(), logWriter(), logWriter()]);
  await Promise.all([dbPair.flush(), idxPair.flush(), logPair.flush()]);
  clearInterval(progress);
  report(true);
  const elapsed = (performance.now() - started) / 1000;

  // 2. A real block tool writes through the NBD export of the mirrored 'db'.
  let nbdSource: string | undefined;
  const tool = ['qemu-img', 'nbdcopy'].find((t) => spawnSync('sh', ['-c', `command -v ${t}`]).status === 0);
  if (!tool) {
    say('2. skipped: the NBD step (neither qemu-img nor nbdcopy is installed: apt-get install qemu-utils libnbd-bin)');
  } else {
    const sock = path.join(dir, 'nbd.sock');
    const nbd = await NbdServer.start({ listen: `unix:${sock}`, exports: db.pairs });
    nbdSource = path.join(dir, 'nbd-source.raw');
    const image = new Uint8Array(dbPair.size);
    for (let i = 0; i < image.length; i += block.length) image.set(block.subarray(0, Math.min(block.length, image.length - i)), i);
    for (let i = 0; i < image.length; i += 4096) image[i] = (i >>> 12) & 255;
    fs.writeFileSync(nbdSource, image);
    const uri = `nbd+unix:///db?socket=${sock}`;
    const argv = tool === 'qemu-img' ? ['convert', '-n', '-f', 'raw', '-O', 'raw', nbdSource, uri] : [nbdSource, uri];
    const t0 = performance.now();
    const code = await new Promise<number | null>((resolve) => spawn(tool, argv, { stdio: 'ignore' }).on('close', resolve));
    const s = (performance.now() - t0) / 1000;
    await nbd.close();
    say(`2. ${tool} wrote ${formatSize(image.length)} into 'db' through the NBD export in ${s.toFixed(2)} s (${(image.length / 1e6 / s).toFixed(0)} MB/s, sync-mirrored)`);
    check(code === 0, `${tool} exited ${code}`);
    if (code !== 0) nbdSource = undefined;
  }

  // 3. The freeze: dependent writes across db and idx while db's link is cut.
  say(`3. the freeze: dependent writes alternate between 'db' (tcp://) and 'idx' (ws://); the link of 'db' is cut`);
  const blocks = 256; // the first MiB of each volume
  const chainBase = 48 * MiB;
  const chain = new DependentChain(
    [
      { write: (offset, data) => dbPair.write(chainBase + offset, data) },
      { write: (offset, data) => idxPair.write(offset, data) },
    ],
    blocks,
  );
  // The chain's regions start as zeroes on both sides, so the checker sees only its records.
  await Promise.all([dbPair.writeZeroes(chainBase, blocks * 4096), idxPair.writeZeroes(0, blocks * 4096)]);
  await chain.writeSome(100);
  const memberMark = memberEvents.length;
  const groupMark = groupEvents.length;
  const cutAt = chain.next + 20;
  chain.start((seq) => {
    if (seq === cutAt) {
      dbLink.refuse(true);
      dbLink.cut();
    }
  });
  await controller.waitPhase('suspended', 30_000);
  const afterRun = chain.next + 50;
  while (chain.next < afterRun) await new Promise((r) => setTimeout(r, 5));
  await chain.stop();
  const window = memberEvents.slice(memberMark);
  const noticed = window.find((e) => e.event === 'failure-noticed');
  const frozen = window.filter((e) => e.event === 'frozen');
  const runs = window.filter((e) => e.event === 'run');
  const idxFrozen = window.find((e) => e.event === 'freeze-received' && e.member === 'idx');
  if (noticed && frozen.length === 2 && runs.length) {
    say(`   'db' noticed ${noticed.reason}; 'idx' got FREEZE over ws:// ${(idxFrozen!.t - noticed.t).toFixed(2)} ms later; both members frozen ${(Math.max(...frozen.map((e) => e.t)) - noticed.t).toFixed(2)} ms after the failure was detected`);
    check(Math.max(...frozen.map((e) => e.t)) < Math.min(...runs.map((e) => e.t)), 'every member froze before any member ran (RUN, policy go, followed)');
  } else {
    check(false, `the freeze events are incomplete: ${window.map((e) => `${e.member} ${e.event}`).join(', ')}`);
  }
  say(`   writes go on locally: out of sync now ${formatSize(dbPair.oos.bytes)} on 'db' and ${formatSize(idxPair.oos.bytes)} on 'idx' (states ${dbPair.state}, ${idxPair.state})`);
  const cut = checkCut([secondary.volume('db')!.read(chainBase, blocks * 4096), secondary.volume('idx')!.read(0, blocks * 4096)], blocks);
  check(cut.violations.length === 0, `the secondary images are a consistent cut: they hold dependent writes 1 to ${cut.newest} of ${chain.next - 1}, none after a missing one`);
  dbLink.refuse(false);
  const resyncStart = performance.now();
  await controller.waitPhase('mirroring', 30_000);
  await Promise.all([db.waitDuplex(), idx.waitDuplex()]);
  const sent = groupEvents.slice(groupMark).filter((e) => e.event === 'resume-sent').length;
  say(`   the link is back: RESUME to ${sent} members, the group resynced to duplex in ${((performance.now() - resyncStart) / 1000).toFixed(2)} s`);
  const dbResync = dbPair.progress;
  if (dbResync) {
    say(`   'db' resync: compared the codes of ${dbResync.segmentsCompared} out-of-sync segments, copied ${dbResync.segmentsDiffering} (${formatSize(dbResync.bytesCopied)} of a ${formatSize(dbPair.size)} volume)`);
  }
  const healed = checkCut([secondary.volume('db')!.read(chainBase, blocks * 4096), secondary.volume('idx')!.read(0, blocks * 4096)], blocks);
  check(healed.newest === chain.next - 1 && healed.violations.length === 0, `after the resync the secondaries hold every dependent write (${healed.newest})`);

  // 4. Failover, failback and a swap back, on a pair of its own.
  say(`4. failover and failback: primary 'fo' (16 MiB) in fo-a mirrors to fo-b; fo-a is lost, fo-b is promoted and written`);
  const foA = path.join(dir, 'fo-a');
  const foB = path.join(dir, 'fo-b');
  const foBytes = 16 * MiB;
  {
    const b = await Secondary.start({ dir: foB, listen: ['tcp://127.0.0.1:0'] });
    const a = await Primary.start({ ...fast, dir: foA, volumes: [{ name: 'fo', size: foBytes }], mirror: b.urls[0]!, pool: 'none' });
    await a.waitDuplex();
    await a.volume('fo').write(0, block.subarray(0, 256 * 1024));
    for (let at = 0; at < foBytes; at += block.length) await a.volume('fo').write(at, block);
    await a.close();
    await b.close();
  }
  const promoted = await promoteVolumes({ dir: foB });
  say(`   blockmirror promote --dir fo-b: 'fo' is now a primary's volume, generation ${promoted[0]!.gen}`);
  {
    const port = await freePort();
    const b = await Primary.start({ ...fast, dir: foB, volumes: [{ name: 'fo', size: foBytes }], mirror: `tcp://127.0.0.1:${port}`, pool: 'none' });
    const changed = 20;
    for (let i = 0; i < changed; i++) await b.volume('fo').write(i * 13 * 65536, block.subarray(0, 65536).reverse());
    const a = await Secondary.start({ dir: foA, listen: [`tcp://127.0.0.1:${port}`] });
    await b.waitDuplex(60_000);
    const p = b.volume('fo').progress!;
    say(`   fo-a returns as the secondary of fo-b (failback): ${p.segmentsCompared} codes compared, ${p.segmentsDiffering} segments copied (${formatSize(p.bytesCopied)} of ${formatSize(foBytes)})`);
    check(p.full && p.segmentsDiffering === changed, `the failback copied only the ${changed} segments written on fo-b`);
    await b.close();
    await a.close();
  }
  await demoteVolumes({ dir: foB });
  await promoteVolumes({ dir: foA });
  {
    const b = await Secondary.start({ dir: foB, listen: ['tcp://127.0.0.1:0'] });
    const a = await Primary.start({ ...fast, dir: foA, volumes: [{ name: 'fo', size: foBytes }], mirror: b.urls[0]!, pool: 'none' });
    await a.waitDuplex(60_000);
    const copied = a.volume('fo').progress?.bytesCopied ?? 0;
    say(`   swap back (blockmirror swap: demote fo-b, promote fo-a): fo-a is the primary again; ${formatSize(copied)} copied`);
    check(copied === 0, 'the swap back copied nothing');
    await a.close();
    await b.close();
  }
  check(fs.readFileSync(path.join(foA, 'fo.img')).equals(fs.readFileSync(path.join(foB, 'fo.img'))), 'fo.img is byte-identical on both sides after failover, failback and swap');

  say('5. stopping cleanly (SIGTERM does the same)...');
  await controller.close();
  await dbControl.close();
  await idxControl.close();
  for (const p of [db, idx, log]) await p.close();
  await secondary.close();
  await dbLink.close();

  for (const [side, name] of [['primary-db', 'db'], ['primary-idx', 'idx'], ['primary-log', 'log']] as const) {
    const a = fs.readFileSync(path.join(dir, side, `${name}.img`));
    const b = fs.readFileSync(path.join(dir, 'secondary', `${name}.img`));
    check(a.length === b.length && a.equals(b), `${name}.img: ${formatSize(a.length)} on the primary and on the secondary, byte-identical`);
  }
  if (nbdSource) {
    const written = fs.readFileSync(nbdSource);
    const mirrored = fs.readFileSync(path.join(dir, 'secondary', 'db.img')).subarray(0, chainBase);
    check(written.subarray(0, chainBase).equals(mirrored), `what ${tool} wrote through NBD is on the secondary`);
  }
  latencies.sort((x, y) => x - y);
  const pct = (p: number) => (latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))]!.toFixed(3) : 'n/a');
  say('');
  say(`summary: ${ops} writes, ${formatSize(bytes)} in ${elapsed.toFixed(1)} s = ${(bytes / 1e6 / elapsed).toFixed(1)} MB/s, ${(ops / elapsed).toFixed(0)} writes/s`);
  say(`sync write latency over tcp:// (db, 4-64 KiB, 3 in flight): p50 ${pct(0.5)} ms, p99 ${pct(0.99)} ms, max ${pct(1)} ms`);
  say(ok ? 'every check passed' : 'CHECK FAILED (see FAIL above)');
  if (!keep) fs.rmSync(dir, { recursive: true, force: true });
  return ok ? 0 : 1;
}
