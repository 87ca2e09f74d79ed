// Two real networks. Network namespaces joined to this one by veth pairs:
// primary 1 runs in namespace 1 and reaches its secondary and its controller
// only over network 1 (ws:// control); primary 2 runs in namespace 2, over
// network 2 (tcp:// control). Network 1 is cut (`ip link set ... down`).
// Primary 1 loses its mirror and its controller at once; the controller must
// freeze primary 2 over network 2, declare primary 1 lost only after its
// lease, and only then run primary 2. Where namespaces cannot be made (not
// root, no iproute2), the test says so in one line and is skipped.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { closed, exited, runCli, startCli, tempDir } from './helpers.ts';

const tag = `bm${process.pid % 100000}`;
const nets = [1, 2].map((n) => ({
  ns: `${tag}-n${n}`,
  outer: `${tag}o${n}`,
  inner: `${tag}i${n}`,
  here: `10.${200 + (process.pid % 50)}.${n}.1`,
  there: `10.${200 + (process.pid % 50)}.${n}.2`,
}));

function ip(...args: string[]): boolean {
  return spawnSync('ip', args, { stdio: 'ignore' }).status === 0;
}

/** Makes both networks; returns why it cannot, or undefined. */
function makeNetworks(): string | undefined {
  if (spawnSync('sh', ['-c', 'command -v ip']).status !== 0) return 'the ip command is missing (apt-get install iproute2)';
  for (const n of nets) {
    const ok =
      ip('netns', 'add', n.ns) &&
      ip('link', 'add', n.outer, 'type', 'veth', 'peer', 'name', n.inner) &&
      ip('link', 'set', n.inner, 'netns', n.ns) &&
      ip('addr', 'add', `${n.here}/24`, 'dev', n.outer) &&
      ip('link', 'set', n.outer, 'up') &&
      ip('netns', 'exec', n.ns, 'ip', 'addr', 'add', `${n.there}/24`, 'dev', n.inner) &&
      ip('netns', 'exec', n.ns, 'ip', 'link', 'set', n.inner, 'up') &&
      ip('netns', 'exec', n.ns, 'ip', 'link', 'set', 'lo', 'up');
    if (!ok) {
      removeNetworks();
      return 'network namespaces cannot be created here (root and iproute2 are needed)';
    }
  }
  return undefined;
}

function removeNetworks(): void {
  for (const n of nets) {
    ip('netns', 'del', n.ns);
    ip('link', 'del', n.outer);
  }
}

const name = 'two networks: cutting network 1 freezes the member on network 2 over network 2, and runs it only after the lost member’s lease';
const problem = makeNetworks();
if (problem) {
  console.log(`skipped: "${name}": ${problem}`);
  test.skip(name);
} else {
  test(name, async () => {
    const { dir, cleanup } = tempDir('bm-netns-');
    const d = (x: string) => path.join(dir, x);
    const [n1, n2] = nets as [(typeof nets)[0], (typeof nets)[0]];
    const procs: Array<Awaited<ReturnType<typeof startCli>>> = [];
    const start = async (args: string[], ready: RegExp, prefix: string[] = []) => {
      const p = await startCli(args, ready, 30_000, prefix);
      procs.push(p);
      return p;
    };
    const events = (file: string) => (fs.existsSync(file) ? fs.readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l)) : []);
    try {
      // The secondaries live here, each listening on its own network only.
      await start(['secondary', '--dir', d('s1'), '--listen', `tcp://${n1.here}:7101`], /listening/);
      await start(['secondary', '--dir', d('s2'), '--listen', `tcp://${n2.here}:7102`], /listening/);
      const c1 = `ws://${n1.there}:7201`;
      const c2 = `tcp://${n2.there}:7202`;
      await start(['primary', '--dir', d('p1'), '--volume', 'a:256KiB', '--mirror', `tcp://${n1.here}:7101`, '--control', c1, '--events', d('p1.events')], /primary mirroring/, ['ip', 'netns', 'exec', n1.ns]);
      await start(['primary', '--dir', d('p2'), '--volume', 'b:256KiB', '--mirror', `tcp://${n2.here}:7102`, '--control', c2, '--events', d('p2.events')], /primary mirroring/, ['ip', 'netns', 'exec', n2.ns]);
      await start(['controller', '--member', c1, '--member', c2, '--lease', '2s', '--hold-timeout', '20s', '--events', d('controller.events')], /controller of group/);
      const status = async (url: string) => JSON.parse((await runCli(['status', '--control', url, '--json'])).stdout);
      const deadline = Date.now() + 30_000;
      while (!events(d('controller.events')).filter((e) => e.event === 'member-joined').length || (await status(c2)).volumes[0].state !== 'duplex' || (await status(c1)).volumes[0].state !== 'duplex') {
        if (Date.now() > deadline) throw new Error('the group did not form');
        await new Promise((r) => setTimeout(r, 100));
      }
      await new Promise((r) => setTimeout(r, 300));
      assert.ok(ip('link', 'set', n1.outer, 'down'), 'network 1 is cut');
      const cutAt = Date.now();
      // Primary 2 is frozen over network 2, then run once primary 1's lease has run out.
      let p2: any;
      while (!((p2 = await status(c2)).group?.phase === 'released')) {
        if (Date.now() - cutAt > 30_000) throw new Error(`primary 2 was not frozen and run: ${JSON.stringify(p2)}`);
        await new Promise((r) => setTimeout(r, 100));
      }
      const ce = events(d('controller.events'));
      const sent = ce.find((e) => e.event === 'freeze-sent' && e.member === c2);
      const acked = ce.find((e) => e.event === 'freeze-acked' && e.member === c2);
      const lost = ce.find((e) => e.event === 'member-declared-lost' && e.member === c1);
      const run = ce.find((e) => e.event === 'run-sent' && e.member === c2);
      assert.ok(sent && acked && lost && run, `the controller froze ${c2}, declared ${c1} lost and ran: ${ce.map((e) => `${e.event} ${e.member ?? ''}`).join(', ')}`);
      assert.ok(acked.t < run.t && lost.t < run.t, 'RUN came after the freeze was acknowledged and the lost member declared');
      assert.ok(events(d('p2.events')).some((e) => e.event === 'freeze-received'), 'primary 2 received the freeze over network 2');
      assert.ok(p2.volumes.every((v: any) => v.state === 'suspended'));
      // Network 1 returns: primary 1 (which froze itself by its lease) rejoins and the group resumes.
      assert.ok(ip('link', 'set', n1.outer, 'up'));
      let s1: any;
      while (!((s1 = await status(c1)).volumes?.[0]?.state === 'duplex' && (await status(c2)).volumes[0].state === 'duplex')) {
        if (Date.now() - cutAt > 60_000) throw new Error(`the group did not resume: ${JSON.stringify(s1)}`);
        await new Promise((r) => setTimeout(r, 200));
      }
      assert.ok(events(d('p1.events')).some((e) => e.event === 'lease-expired'), 'primary 1 froze itself when its lease ran out');
      for (const p of procs.splice(0).reverse()) {
        p.kill('SIGTERM');
        await closed(p);
      }
      for (const [p, s, v] of [['p1', 's1', 'a'], ['p2', 's2', 'b']]) {
        assert.ok(fs.readFileSync(d(`${p}/${v}.img`)).equals(fs.readFileSync(d(`${s}/${v}.img`))), `${v}.img matches its mirror`);
      }
    } finally {
      for (const p of procs) p.kill('SIGKILL');
      await Promise.all(procs.map((p) => exited(p)));
      removeNetworks();
      cleanup();
    }
  });
}

test.run();
