// Consistency groups, scenario by scenario: policy stop fails writes until an
// operator runs; a hold never outlasts its timeout when the controller is
// gone; a member cut off from its controller freezes itself when its lease
// runs out, and the controller lets the others run only after that; async
// members on different channels are refused; bad control input is refused
// with stable codes and changes nothing.
import net from 'node:net';
import path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Controller } from '../engine/controller.ts';
import { ControlServer, controlConnectionsMax, requestStatus, sendCommand } from '../engine/control-server.ts';
import { FrameDecoder } from '../engine/frame-decoder.ts';
import { FrameEncoder } from '../engine/frame-encoder.ts';
import { FrameType } from '../engine/frame.ts';
import type { GroupEvent } from '../engine/member.ts';
import { Primary } from '../engine/primary.ts';
import { Secondary } from '../engine/secondary.ts';
import { protocolVersion } from '../engine/secondary-session.ts';
import { checkCut, DependentChain } from '../bench/dependent-writes.ts';
import { startGroup, until } from './group-setup.ts';
import { tempDir, throwsCode } from './helpers.ts';
import { FaultProxy } from '../bench/fault-proxy.ts';

const KiB = 1024;

test('policy stop: held and new writes fail with BM_ERR_FROZEN until an operator runs the group; then it resyncs', async () => {
  const g = await startGroup({ policy: 'stop', processSecondary: false });
  const chain = new DependentChain(g.targets, g.blocks);
  const controller = g.controller!;
  try {
    await chain.writeSome(10);
    g.proxies[1]!.refuse(true);
    g.proxies[1]!.cut();
    await until(() => controller.phase === 'stopped', 10_000, () => `stopped (is ${controller.phase})`);
    await throwsCode(() => g.targets[0]!.write(0, new Uint8Array(4096)), 'BM_ERR_FROZEN', 'a new write on the healthy member');
    await throwsCode(() => g.targets[2]!.write(0, new Uint8Array(4096)), 'BM_ERR_FROZEN', 'a new write on the failed member');
    assert.equal(checkCut(g.secondaryImages(), g.blocks).violations, [], 'the secondaries are a consistent cut');
    assert.ok(g.primaries.every((p) => p.pairs.every((x) => x.state === 'frozen')), 'every pair is frozen');
    // The operator runs the group through the controller's endpoint.
    const control = await ControlServer.start('tcp://127.0.0.1:0', { role: 'controller', status: () => controller.status(), command: (v) => (v === 'run' ? controller.run() : controller.freeze()) });
    try {
      const said = await sendCommand(control.url, 'run');
      assert.match(said, /runs/);
    } finally {
      await control.close();
    }
    await until(() => controller.phase === 'suspended', 5000, () => 'suspended after run');
    await chain.writeSome(6); // complete locally now, recorded
    assert.ok(g.primaries.every((p) => p.pairs.every((x) => x.state === 'suspended')));
    g.proxies[1]!.refuse(false);
    await until(() => controller.phase === 'mirroring' && g.primaries.every((p) => p.pairs.every((x) => x.state === 'duplex')), 15_000, () => `mirroring again (${controller.phase})`);
    const final = checkCut(g.secondaryImages(), g.blocks);
    assert.is(final.newest, chain.next - 1);
    assert.equal(final.violations, []);
    assert.ok(g.memberEvents.some((e) => e.event === 'fenced'), 'a fenced event');
  } finally {
    await chain.stop();
    await g.stop();
  }
});

test('a hold never outlasts the hold timeout when the controller is gone; the policy then applies with an event', async () => {
  const { dir, cleanup } = tempDir('bm-hold-');
  const secondary = await Secondary.start({ dir: path.join(dir, 's'), listen: ['tcp://127.0.0.1:0'] });
  const mirrorProxy = await FaultProxy.start(Number(secondary.urls[0]!.split(':').pop()));
  const primary = await Primary.start({ dir: path.join(dir, 'p'), volumes: [{ name: 'v', size: 256 * KiB }], mirror: mirrorProxy.url('tcp'), pool: 'none', heartbeatMs: 100, reconnectDelayMinMs: 10 });
  const control = await ControlServer.start('tcp://127.0.0.1:0', primary.controlEndpoint());
  const controlProxy = await FaultProxy.start(Number(control.url.split(':').pop()));
  const events: GroupEvent[] = [];
  primary.onEvent((e) => e.type === 'group' && events.push(e));
  const controller = Controller.start({ members: [controlProxy.url('tcp')], holdTimeoutMs: 1500, leaseMs: 300, heartbeatMs: 100 });
  try {
    await controller.waitJoined(10_000);
    await primary.waitDuplex(10_000);
    // The controller vanishes without LEAVE (as if it crashed): the member holds once its lease runs out.
    controlProxy.refuse(true);
    controlProxy.cut();
    await until(() => primary.member.phase === 'holding', 5000, () => 'holding by the lease');
    const heldSince = performance.now();
    mirrorProxy.refuse(true);
    mirrorProxy.cut();
    await primary.volume('v').write(0, new Uint8Array(4096).fill(9));
    const held = performance.now() - heldSince;
    assert.ok(held >= 1200 && held < 5000, `writes were held ${held.toFixed(0)} ms, about the 1500 ms hold timeout`);
    assert.ok(events.some((e) => e.event === 'hold-timeout' && e.action === 'go'), 'a hold-timeout event');
    assert.is(primary.member.phase, 'released');
    assert.is(primary.volume('v').state, 'suspended');
    assert.ok(primary.volume('v').oos.bytes > 0, 'the write is recorded as out of sync');
  } finally {
    await controller.close();
    await primary.close({ drainTimeoutMs: 0 });
    await control.close();
    await controlProxy.close();
    await mirrorProxy.close();
    await secondary.close();
    cleanup();
  }
});

test('a member cut off from its controller freezes itself when its lease runs out; the others run only after that', async () => {
  const g = await startGroup({ processSecondary: false, freeze: false });
  // A controller that reaches p2's control endpoint through a proxy, so its link can go silent.
  const controlProxy = await FaultProxy.start(Number(g.controls[1]!.url.split(':').pop()));
  const events: GroupEvent[] = [];
  const controller = Controller.start({ members: [g.controls[0]!.url, controlProxy.url('ws')], heartbeatMs: 100, leaseMs: 600, holdTimeoutMs: 30_000 });
  controller.onEvent((e) => events.push(e));
  const memberEvents: GroupEvent[] = [];
  g.primaries.forEach((p) => p.onEvent((e) => e.type === 'group' && memberEvents.push(e)));
  try {
    await controller.waitJoined(10_000);
    await until(() => g.primaries.every((p) => p.pairs.every((x) => x.state === 'duplex')), 10_000, () => 'duplex');
    controlProxy.stall(true);
    await until(() => memberEvents.some((e) => e.event === 'run' && e.member === 'p1'), 10_000, () => `p1 runs (${controller.phase})`);
    const expired = memberEvents.find((e) => e.event === 'lease-expired' && e.member === 'p2');
    const p2Frozen = memberEvents.find((e) => e.event === 'frozen' && e.member === 'p2');
    const p1Run = memberEvents.find((e) => e.event === 'run' && e.member === 'p1');
    assert.ok(expired && p2Frozen && p1Run, `p2 froze by its lease and p1 ran: ${memberEvents.map((e) => `${e.member} ${e.event}`).join(', ')}`);
    assert.ok(p2Frozen!.t < p1Run!.t, `p2 froze ${(p1Run!.t - p2Frozen!.t).toFixed(1)} ms before p1 ran`);
    assert.ok(events.some((e) => e.event === 'member-declared-lost'), 'the controller declared p2 lost');
    // p2 holds writes (its controller is gone, its hold has 30 s to run); p1 completes them locally.
    await g.targets[0]!.write(0, new Uint8Array(4096).fill(1));
    assert.is(g.primaries[1]!.member.phase, 'holding');
    // The control link returns: p2 joins again, runs, and the group resumes.
    controlProxy.stall(false);
    controlProxy.cut();
    await until(() => controller.phase === 'mirroring' && g.primaries.every((p) => p.pairs.every((x) => x.state === 'duplex')), 15_000, () => `mirroring again (${controller.phase})`);
  } finally {
    await controller.close();
    await controlProxy.close();
    await g.stop();
  }
});

test('async members on different channels are refused with BM_ERR_GROUP_ASYNC', async () => {
  const { dir, cleanup } = tempDir('bm-async-');
  const secondary = await Secondary.start({ dir: path.join(dir, 's'), listen: ['tcp://127.0.0.1:0'] });
  const make = (name: string) => Primary.start({ dir: path.join(dir, name), volumes: [{ name, size: 64 * KiB }], mirror: secondary.urls[0]!, mode: 'async', pool: 'none' });
  const a = await make('a');
  const b = await make('b');
  try {
    await throwsCode(() => Controller.start({ members: [a, b] }), 'BM_ERR_GROUP_ASYNC', 'in process');
    // Over the network the refusal comes at join time, as an event; the member stays standalone.
    const control = await ControlServer.start('tcp://127.0.0.1:0', b.controlEndpoint());
    const controller = Controller.start({ members: [control.url, 'tcp://127.0.0.1:9'] });
    const events: GroupEvent[] = [];
    controller.onEvent((e) => events.push(e));
    try {
      await until(() => events.some((e) => e.event === 'group-error'), 5000, () => 'group-error');
      assert.match(events.find((e) => e.event === 'group-error')!.reason!, /async/);
      assert.is(b.member.active, false);
    } finally {
      await controller.close();
      await control.close();
    }
    // One async primary alone is a group of one channel: accepted.
    const alone = Controller.start({ members: [a] });
    await alone.waitJoined(5000);
    await alone.close();
  } finally {
    await a.close();
    await b.close();
    await secondary.close();
    cleanup();
  }
});

/** Sends raw frames (or bytes) to a control endpoint; returns the code of the refusal, or 'closed'. */
async function rawControl(url: string, send: (encoder: FrameEncoder, challenge: Record<string, unknown>) => Uint8Array[]): Promise<string> {
  const port = Number(url.split(':').pop());
  const socket = net.connect({ host: '127.0.0.1', port });
  const encoder = new FrameEncoder(64 * KiB);
  return new Promise((resolve) => {
    const timer = setTimeout(() => finish('no answer'), 5000);
    const finish = (what: string) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(what);
    };
    const decoder = new FrameDecoder({
      payloadBytesMax: 1 << 20,
      onError: (e) => finish(`undecodable: ${e.code}`),
      onFrame: (frame) => {
        if (frame.type === FrameType.challenge) for (const bytes of send(encoder, frame.header[1] as Record<string, unknown>)) socket.write(bytes);
        else if (frame.type === FrameType.refuse) finish(String(frame.header[1]));
      },
    });
    socket.on('data', (d) => decoder.feed(d));
    socket.on('close', () => finish('closed'));
    socket.on('error', () => {});
  });
}

test('bad control input is refused with stable codes and changes nothing', async () => {
  const { dir, cleanup } = tempDir('bm-badctl-');
  const secret = new TextEncoder().encode('group secret');
  const secondary = await Secondary.start({ dir: path.join(dir, 's'), listen: ['tcp://127.0.0.1:0'], secret });
  const primary = await Primary.start({ dir: path.join(dir, 'p'), volumes: [{ name: 'v', size: 64 * KiB }], mirror: secondary.urls[0]!, secret, pool: 'none' });
  const control = await ControlServer.start('tcp://127.0.0.1:0', primary.controlEndpoint(secret));
  try {
    await primary.waitDuplex(10_000);
    const join = (fields: Record<string, unknown>) => [FrameType.join, { version: protocolVersion, group: 'g', members: 1, policy: 'go', holdTimeoutMs: 1000, leaseMs: 1000, ...fields }];
    const cases: Array<[string, (e: FrameEncoder, c: Record<string, unknown>) => Uint8Array[], string]> = [
      ['an unknown frame type', (e) => [e.encode([99, {}])], 'BM_ERR_FRAME_TYPE'],
      ['a known type not allowed here', (e) => [e.encode([FrameType.ack, 1])], 'BM_ERR_FRAME_TYPE'],
      ['bad magic', () => [new Uint8Array(32).fill(0x41)], 'BM_ERR_FRAME_MAGIC'],
      ['an oversized header length', () => { const b = new Uint8Array(24); new DataView(b.buffer).setUint32(0, 0x31464d42, true); new DataView(b.buffer).setUint32(4, 1 << 20, true); return [b]; }, 'BM_ERR_FRAME_TOO_LARGE'],
      ['a request with a payload', (e) => [e.encode([FrameType.status], new Uint8Array(10))], 'BM_ERR_FRAME_TOO_LARGE'],
      ['a corrupted frame', (e) => { const b = e.encode([FrameType.status]); b[b.length - 9] ^= 1; return [b]; }, 'BM_ERR_FRAME_CHECKSUM'],
      ['a malformed join', (e) => [e.encode([FrameType.join, 'nope'])], 'BM_ERR_FRAME_HEADER'],
      ['a join without the secret', (e) => [e.encode(join({ nonce: new Uint8Array(32) }))], 'BM_ERR_AUTH'],
      ['a join with a wrong proof', (e) => [e.encode(join({ nonce: new Uint8Array(32), proof: new Uint8Array(32) }))], 'BM_ERR_AUTH'],
      ['a freeze before any join', (e) => [e.encode([FrameType.freeze, { group: 'g', epoch: 1 }])], 'BM_ERR_FRAME_TYPE'],
      ['an operator without the secret', (e) => [e.encode([FrameType.command, { verb: 'freeze', nonce: new Uint8Array(32) }])], 'BM_ERR_AUTH'],
    ];
    for (const [label, frames, code] of cases) {
      assert.is(await rawControl(control.url, frames), code, label);
      assert.is(primary.member.phase, 'mirroring', `${label}: the member did not change phase`);
      assert.is(primary.member.active, false, `${label}: the member joined nothing`);
      assert.is(primary.volume('v').state, 'duplex', `${label}: the pair is still duplex`);
    }
    // A controller with the secret joins; then a FREEZE for another group is refused and freezes nothing.
    const controller = Controller.start({ members: [control.url], group: 'g', secret });
    try {
      await controller.waitJoined(5000);
      assert.is(primary.member.active, true);
      await throwsCode(() => sendCommand(control.url, 'run', { secret }), 'BM_ERR_BUSY', 'a run on a member whose controller is connected');
      assert.is(primary.member.phase, 'mirroring');
    } finally {
      await controller.close();
    }
  } finally {
    await control.close();
    await primary.close();
    await secondary.close();
    cleanup();
  }
});

test('a FREEZE naming another group is refused with BM_ERR_UNKNOWN_GROUP and freezes nothing', async () => {
  const { dir, cleanup } = tempDir('bm-ungroup-');
  const secondary = await Secondary.start({ dir: path.join(dir, 's'), listen: ['tcp://127.0.0.1:0'] });
  const primary = await Primary.start({ dir: path.join(dir, 'p'), volumes: [{ name: 'v', size: 64 * KiB }], mirror: secondary.urls[0]!, pool: 'none' });
  const control = await ControlServer.start('tcp://127.0.0.1:0', primary.controlEndpoint());
  try {
    await primary.waitDuplex(10_000);
    const code = await rawControl(control.url, (e, challenge) => [
      e.encode([FrameType.join, { version: protocolVersion, group: 'g', members: 1, policy: 'go', holdTimeoutMs: 1000, leaseMs: 60_000, nonce: challenge.nonce }]),
      e.encode([FrameType.freeze, { group: 'other', epoch: 1 }]),
    ]);
    assert.is(code, 'BM_ERR_UNKNOWN_GROUP');
    assert.is(primary.member.phase, 'mirroring');
    assert.is(primary.volume('v').state, 'duplex');
  } finally {
    await control.close();
    await primary.close();
    await secondary.close();
    cleanup();
  }
});

test('a control endpoint frees the place of every connection that ends: more status requests in turn than it holds at once', async () => {
  // Each `blockmirror status` is one short connection; a monitor polling a long-running primary
  // makes thousands. They must not count against the limit once closed (they once did, for good).
  for (const scheme of ['tcp', 'ws']) {
    let asked = 0;
    const control = await ControlServer.start(`${scheme}://127.0.0.1:0`, { role: 'secondary', status: () => ({ role: 'secondary', asked: ++asked }), command: () => 'nothing' });
    try {
      for (let i = 0; i < controlConnectionsMax + 20; i++) {
        const status = await requestStatus(control.url);
        assert.is(status.asked, i + 1, `${scheme}: status request ${i + 1}`);
      }
    } finally {
      await control.close();
    }
  }
});

test.run();
