// A consistency group of processes, driven only through the command line:
// two secondaries, two primaries (one mirroring and controlled over tcp://,
// the other over ws://), and `blockmirror controller`. Dependent writes go
// through each primary's NBD export; one secondary is killed with SIGKILL.
// The group must freeze over both networks, the surviving images must hold a
// prefix of the writes, the controller's events must show every FREEZE
// acknowledged before any RUN, and after the secondary returns the group
// resyncs and every image matches its mirror after a clean stop.
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { checkCut, DependentChain, type ChainTarget } from '../bench/dependent-writes.ts';
import { until } from './group-setup.ts';
import { assertStoppedCleanly, closed, exited, freePort, prng, runCli, startCli, tempDir, testSeed } from './helpers.ts';
import { NbdClient } from './nbd-client.ts';

const volumeBytes = 256 * 1024;

async function statusJson(url: string): Promise<any> {
  const r = await runCli(['status', '--control', url, '--json']);
  if (r.code !== 0) throw new Error(`status --control ${url} failed: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

async function waitStatus(url: string, ok: (s: any) => boolean, timeoutMs: number, what: string): Promise<any> {
  const deadline = Date.now() + timeoutMs;
  let last: any;
  for (;;) {
    try {
      last = await statusJson(url);
      if (ok(last)) return last;
    } catch (e) {
      last = String(e);
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(last)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function events(file: string): any[] {
  return fs.existsSync(file) ? fs.readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l)) : [];
}

test('processes: a killed secondary freezes both primaries over tcp:// and ws://, NBD writes stay a consistent cut, then the group resyncs', async () => {
  const seed = testSeed();
  const random = prng(seed);
  const { dir, cleanup } = tempDir('bm-group-cli-');
  const [s1Port, s2Port, c1Port, c2Port, ccPort] = [await freePort(), await freePort(), await freePort(), await freePort(), await freePort()];
  const s1Url = `tcp://127.0.0.1:${s1Port}`;
  const c1 = `tcp://127.0.0.1:${c1Port}`;
  const c2 = `ws://127.0.0.1:${c2Port}`;
  const cc = `tcp://127.0.0.1:${ccPort}`;
  const d = (x: string) => path.join(dir, x);
  const procs: Array<Awaited<ReturnType<typeof startCli>>> = [];
  const start = async (args: string[], ready: RegExp) => {
    const p = await startCli(args, ready, 30_000);
    procs.push(p);
    return p;
  };
  const clients: NbdClient[] = [];
  try {
    let s1 = await start(['secondary', '--dir', d('s1'), '--listen', s1Url], /listening/);
    await start(['secondary', '--dir', d('s2'), '--listen', `ws://127.0.0.1:${s2Port}`], /listening/);
    const size = `${volumeBytes / 1024}KiB`;
    await start(['primary', '--dir', d('p1'), '--volume', `a:${size}`, '--volume', `b:${size}`, '--mirror', s1Url, '--control', c1, '--nbd', `unix:${d('p1.sock')}`, '--events', d('p1.events')], /primary mirroring/);
    await start(['primary', '--dir', d('p2'), '--volume', `c:${size}`, '--volume', `d:${size}`, '--mirror', `ws://127.0.0.1:${s2Port}`, '--control', c2, '--nbd', `unix:${d('p2.sock')}`, '--events', d('p2.events')], /primary mirroring/);
    await start(['controller', '--member', c1, '--member', c2, '--control', cc, '--events', d('controller.events'), '--hold-timeout', '20s'], /controller of group/);
    const mirroring = (s: any) => s.phase === 'mirroring' && s.members.every((m: any) => m.connected) && s.volumes.length === 4 && s.volumes.every((v: any) => v.state === 'duplex');
    await waitStatus(cc, mirroring, 30_000, 'the group mirroring');

    for (const [sock, name] of [['p1.sock', 'a'], ['p1.sock', 'b'], ['p2.sock', 'c'], ['p2.sock', 'd']] as const) clients.push(await NbdClient.connect(`unix:${d(sock)}`, name));
    const targets: ChainTarget[] = clients.map((client) => ({
      write: async (offset, data) => {
        const error = await client.write(offset, data);
        if (error !== 0) throw Object.assign(new Error(`NBD write error ${error}`), { code: `NBD_${error}` });
      },
    }));
    const blocks = volumeBytes / 4096;
    const chain = new DependentChain(targets, blocks);
    await chain.writeSome(20);
    const killAt = chain.next + 1 + Math.floor(random() * 30);
    chain.start((seq) => {
      if (seq === killAt) s1.kill('SIGKILL');
    });
    await waitStatus(cc, (s) => s.phase === 'suspended', 30_000, 'the group frozen and run');
    const afterRun = chain.next + 5;
    await until(() => chain.next >= afterRun, 20_000, () => 'writes after RUN');
    await chain.stop();
    await exited(s1);
    const images = ['s1/a', 's1/b', 's2/c', 's2/d'].map((x) => new Uint8Array(fs.readFileSync(d(`${x}.img`))));
    const report = checkCut(images, blocks);
    assert.equal(report.violations.slice(0, 5), [], `seed ${seed}: the secondaries are not a consistent cut at record ${report.newest}`);

    const member2 = await statusJson(c2);
    assert.is(member2.group.phase, 'released', 'the primary whose own link is healthy is released too');
    assert.ok(member2.volumes.every((v: any) => v.state === 'suspended'), 'and its pairs are suspended');
    const ce = events(d('controller.events'));
    const firstRun = ce.findIndex((e) => e.event === 'run-sent');
    const acked = new Set(ce.slice(0, firstRun).filter((e) => e.event === 'freeze-acked' || e.event === 'member-declared-lost').map((e) => e.member));
    assert.equal([...acked].sort(), [c1, c2].sort(), 'every FREEZE acknowledged before the first RUN');
    const ev2 = events(d('p2.events'));
    assert.ok(ev2.some((e) => e.type === 'group' && e.event === 'freeze-received'), 'the ws:// member received the freeze over its own link');

    // The secondary returns; the group resumes mirroring together.
    s1 = await start(['secondary', '--dir', d('s1'), '--listen', s1Url], /listening/);
    await waitStatus(cc, mirroring, 30_000, 'the group mirroring again');
    assert.ok(events(d('controller.events')).some((e) => e.event === 'resync-finished'));

    // An operator's freeze through the controller, then the group runs and resumes by itself (policy go).
    const frozen = await runCli(['freeze', '--control', cc]);
    assert.is(frozen.code, 0, frozen.stderr);
    assert.match(frozen.stdout, /freezing/);
    await waitStatus(cc, mirroring, 30_000, 'mirroring after the operator freeze');
    await chain.writeSome(10);

    for (const c of clients.splice(0)) c.close();
    for (const p of procs.splice(0).reverse()) {
      if (p.exitCode !== null || p.signalCode !== null) continue;
      p.kill('SIGTERM');
      await closed(p);
      assertStoppedCleanly(p, 'SIGTERM');
    }
    for (const [p, s, v] of [['p1', 's1', 'a'], ['p1', 's1', 'b'], ['p2', 's2', 'c'], ['p2', 's2', 'd']]) {
      assert.ok(fs.readFileSync(d(`${p}/${v}.img`)).equals(fs.readFileSync(d(`${s}/${v}.img`))), `${v}.img matches its mirror`);
    }
  } finally {
    for (const c of clients) c.close();
    for (const p of procs) p.kill('SIGKILL');
    await Promise.all(procs.map((p) => exited(p)));
    cleanup();
  }
});

test.run();
