// The NBD export against real clients (nbdinfo, nbdcopy, qemu-img, fio) on a
// sync-mirrored volume, and against a hand-rolled client sending bad input.
// A test whose outside tool is absent says so in one line and is skipped.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { NbdServer } from '../engine/nbd-server.ts';
import { ByteQueue, NBD } from '../engine/nbd.ts';
import { Primary } from '../engine/primary.ts';
import { Secondary } from '../engine/secondary.ts';
import { Volume } from '../engine/volume.ts';
import { prng, randomBytes, tempDir, testSeed } from './helpers.ts';

const MiB = 1024 * 1024;
const has = (tool: string) => spawnSync('sh', ['-c', `command -v ${tool}`]).status === 0;

/** Runs a tool without blocking this process's event loop (the server lives here). */
function run(command: string, args: string[], timeoutMs = 60_000): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, out });
    });
  });
}

async function mirroredExport(): Promise<{ dir: string; sock: string; uri: (name: string) => string; primary: Primary; secondary: Secondary; nbd: NbdServer; stop(): Promise<void>; dispose(): Promise<void> }> {
  const { dir, cleanup } = tempDir('bm-nbd-');
  const secondary = await Secondary.start({ dir: path.join(dir, 's'), listen: ['tcp://127.0.0.1:0'] });
  const primary = await Primary.start({
    dir: path.join(dir, 'p'),
    volumes: [{ name: 'db', size: 16 * MiB }, { name: 'log', size: 4 * MiB }],
    mirror: secondary.urls[0]!,
    mode: 'sync',
    pool: 'none',
  });
  await primary.waitDuplex(10_000);
  const sock = path.join(dir, 'bm.sock');
  const nbd = await NbdServer.start({ listen: `unix:${sock}`, exports: primary.pairs });
  let stopped = false;
  return {
    dir,
    sock,
    uri: (name) => `nbd+unix:///${name}?socket=${sock}`,
    primary,
    secondary,
    nbd,
    /** A clean stop: the images stay for inspection. */
    stop: async () => {
      if (stopped) return;
      stopped = true;
      await nbd.close();
      await primary.close();
      await secondary.close();
    },
    dispose: async function () {
      await this.stop();
      cleanup();
    },
  };
}

function toolTest(name: string, tools: string[], fn: () => Promise<void>): void {
  const missing = tools.filter((t) => !has(t));
  if (missing.length) {
    console.log(`skipped: "${name}": ${missing.join(', ')} not installed (apt-get install libnbd-bin qemu-utils fio)`);
    test.skip(name);
  } else {
    test(name, fn);
  }
}

toolTest('nbdinfo lists the exports with their sizes and block size constraints', ['nbdinfo'], async () => {
  const setup = await mirroredExport();
  try {
    const list = await run('nbdinfo', ['--list', '--json', `nbd+unix:///?socket=${setup.sock}`]);
    assert.is(list.code, 0, list.out);
    const exports = JSON.parse(list.out).exports as Array<{ 'export-name': string; 'export-size': number; block_size_maximum: number }>;
    assert.equal(exports.map((e) => [e['export-name'], e['export-size']]), [['db', 16 * MiB], ['log', 4 * MiB]]);
    assert.is(exports[0]!.block_size_maximum, 32 * MiB);
    const one = await run('nbdinfo', ['--size', setup.uri('log')]);
    assert.is(one.out.trim(), String(4 * MiB));
    const missing = await run('nbdinfo', [setup.uri('nope')]);
    assert.is.not(missing.code, 0, 'an unknown export is refused');
  } finally {
    await setup.dispose();
  }
});

toolTest('qemu-img convert writes a volume, nbdcopy reads it back identical, and the secondary image matches', ['qemu-img', 'nbdcopy'], async () => {
  const setup = await mirroredExport();
  try {
    const seed = testSeed();
    const source = path.join(setup.dir, 'source.raw');
    fs.writeFileSync(source, randomBytes(prng(seed), 16 * MiB));
    const convert = await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', source, setup.uri('db')]);
    assert.is(convert.code, 0, convert.out);
    const back = path.join(setup.dir, 'back.raw');
    const copy = await run('nbdcopy', [setup.uri('db'), back]);
    assert.is(copy.code, 0, copy.out);
    assert.ok(fs.readFileSync(source).equals(fs.readFileSync(back)), `seed ${seed}: nbdcopy read back what qemu-img wrote`);
    await setup.stop();
    assert.ok(fs.readFileSync(source).equals(fs.readFileSync(path.join(setup.dir, 's', 'db.img'))), `seed ${seed}: the secondary image is what was written`);
  } finally {
    await setup.dispose();
  }
});

toolTest('fio with --ioengine=nbd and verify=crc32c completes with no error', ['fio'], async () => {
  const setup = await mirroredExport();
  try {
    const r = await run('fio', [
      '--name=verify', '--ioengine=nbd', `--uri=${setup.uri('log')}`, '--rw=randwrite', '--bs=4k', '--iodepth=16',
      '--size=4M', '--verify=crc32c', '--do_verify=1', '--verify_state_save=0', '--output-format=json',
    ]);
    assert.is(r.code, 0, r.out);
    const job = JSON.parse(r.out.slice(r.out.indexOf('{'))).jobs[0];
    assert.is(job.error, 0);
    assert.ok(job.write.io_bytes >= 4 * MiB, 'fio wrote the whole range');
    await setup.stop();
    assert.ok(fs.readFileSync(path.join(setup.dir, 'p', 'log.img')).equals(fs.readFileSync(path.join(setup.dir, 's', 'log.img'))), 'mirrored');
  } finally {
    await setup.dispose();
  }
});

/** A raw NBD client for bad input: sends bytes, collects what comes back, notices the close. */
async function rawClient(sock: string): Promise<{ send(b: Uint8Array): void; read(n: number, timeoutMs?: number): Promise<Uint8Array | undefined>; closed(): Promise<boolean>; socket: net.Socket }> {
  const socket = net.connect(sock);
  let buffered = Buffer.alloc(0);
  let waiters: Array<() => void> = [];
  let isClosed = false;
  socket.on('data', (d) => {
    buffered = Buffer.concat([buffered, d]);
    for (const w of waiters.splice(0)) w();
  });
  socket.on('close', () => {
    isClosed = true;
    for (const w of waiters.splice(0)) w();
  });
  socket.on('error', () => {});
  await new Promise((r) => socket.once('connect', r));
  const read = async (n: number, timeoutMs = 2000): Promise<Uint8Array | undefined> => {
    const deadline = Date.now() + timeoutMs;
    while (buffered.length < n && !isClosed && Date.now() < deadline) await new Promise<void>((r) => (waiters.push(r), setTimeout(r, 50)));
    if (buffered.length < n) return undefined;
    const out = new Uint8Array(buffered.subarray(0, n));
    buffered = buffered.subarray(n);
    return out;
  };
  return {
    socket,
    send: (b) => socket.write(b),
    read,
    closed: async () => {
      const deadline = Date.now() + 2000;
      while (!isClosed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      return isClosed;
    },
  };
}

const be = (size: number, fill: (v: DataView) => void) => {
  const b = new Uint8Array(size);
  fill(new DataView(b.buffer));
  return b;
};
const option = (opt: number, data: Uint8Array = new Uint8Array(0)) => {
  const b = be(16 + data.length, (v) => (v.setBigUint64(0, NBD.optMagic), v.setUint32(8, opt), v.setUint32(12, data.length)));
  b.set(data, 16);
  return b;
};
const goData = (name: string) => {
  const n = new TextEncoder().encode(name);
  const b = be(4 + n.length + 2, (v) => (v.setUint32(0, n.length), v.setUint16(4 + n.length, 0)));
  b.set(n, 4);
  return b;
};
const request = (type: number, offset: number, length: number, handle = 7, flags = 0) =>
  be(28, (v) => (v.setUint32(0, NBD.requestMagic), v.setUint16(4, flags), v.setUint16(6, type), v.setBigUint64(8, BigInt(handle)), v.setBigUint64(16, BigInt(offset)), v.setUint32(24, length)));

/** Completes the handshake with GO for `name`; returns the client in transmission. */
async function transmission(sock: string, name: string) {
  const c = await rawClient(sock);
  await c.read(18);
  c.send(be(4, (v) => v.setUint32(0, NBD.flagFixedNewstyle | NBD.flagNoZeroes)));
  c.send(option(NBD.optGo, goData(name)));
  for (;;) {
    const head = await c.read(20);
    assert.ok(head, 'an option reply');
    const v = new DataView(head!.buffer);
    const type = v.getUint32(12);
    await c.read(v.getUint32(16), 500);
    if (type === NBD.repAck) return c;
    assert.ok(type === NBD.repInfo, `reply type ${type}`);
  }
}

async function simpleReply(c: Awaited<ReturnType<typeof rawClient>>): Promise<{ error: number; handle: number }> {
  const r = await c.read(16);
  assert.ok(r, 'a reply');
  const v = new DataView(r!.buffer);
  assert.is(v.getUint32(0), NBD.simpleReplyMagic);
  return { error: v.getUint32(4), handle: Number(v.getBigUint64(8)) };
}

test('bad handshakes and requests get the error the spec prescribes or a clean close, and write nothing', async () => {
  const { dir, cleanup } = tempDir('bm-nbd-bad-');
  const volume = await Volume.create({ name: 'v', size: 1 * MiB, dir, pool: 'none' });
  const sock = path.join(dir, 'bm.sock');
  const nbd = await NbdServer.start({ listen: `unix:${sock}`, exports: [volume] });
  const ro = await NbdServer.start({ listen: `unix:${sock}.ro`, exports: [volume], readOnly: true });
  try {
    // Client flags without FIXED_NEWSTYLE: closed.
    let c = await rawClient(sock);
    await c.read(18);
    c.send(be(4, (v) => v.setUint32(0, 0)));
    assert.ok(await c.closed(), 'no fixed newstyle: closed');
    // Bad option magic: closed.
    c = await rawClient(sock);
    await c.read(18);
    c.send(be(4, (v) => v.setUint32(0, 1)));
    c.send(be(16, (v) => v.setBigUint64(0, 0x1234n)));
    assert.ok(await c.closed(), 'bad option magic: closed');
    // Unknown option: ERR_UNSUP; GO for an unknown export: ERR_UNKNOWN; malformed GO: ERR_INVALID.
    c = await rawClient(sock);
    await c.read(18);
    c.send(be(4, (v) => v.setUint32(0, 1)));
    for (const [data, want] of [
      [option(99), NBD.repErrUnsup],
      [option(NBD.optGo, goData('nope')), NBD.repErrUnknown],
      [option(NBD.optGo, new Uint8Array([0, 0, 0, 9, 1])), NBD.repErrInvalid],
    ] as const) {
      c.send(data);
      const head = await c.read(20);
      assert.is(new DataView(head!.buffer).getUint32(12), want);
      await c.read(new DataView(head!.buffer).getUint32(16), 300);
    }
    c.socket.destroy();
    // Transmission: read past the end EINVAL, write past the end ENOSPC (payload consumed), unknown command EINVAL.
    c = await transmission(sock, 'v');
    c.send(request(NBD.cmdRead, MiB - 10, 20, 1));
    assert.equal(await simpleReply(c), { error: NBD.EINVAL, handle: 1 });
    const payload = new Uint8Array(4096).fill(0xab);
    const write = new Uint8Array(28 + 4096);
    write.set(request(NBD.cmdWrite, MiB - 100, 4096, 2));
    write.set(payload, 28);
    c.send(write);
    assert.equal(await simpleReply(c), { error: NBD.ENOSPC, handle: 2 });
    c.send(request(42, 0, 0, 3));
    assert.equal(await simpleReply(c), { error: NBD.EINVAL, handle: 3 });
    c.send(request(NBD.cmdWriteZeroes, MiB, 1, 4));
    assert.equal(await simpleReply(c), { error: NBD.ENOSPC, handle: 4 });
    // A good read still works on the same connection: the bad requests broke nothing.
    c.send(request(NBD.cmdRead, 0, 8, 5));
    assert.equal(await simpleReply(c), { error: 0, handle: 5 });
    assert.equal(await c.read(8), new Uint8Array(8));
    // Bad request magic: closed.
    c.send(be(28, (v) => v.setUint32(0, 0xdeadbeef)));
    assert.ok(await c.closed(), 'bad request magic: closed');
    // Oversized write: closed before its payload is taken.
    c = await transmission(sock, 'v');
    c.send(request(NBD.cmdWrite, 0, 64 * MiB, 6));
    assert.ok(await c.closed(), 'oversized write: closed');
    // A client that disconnects mid-request: the server carries on.
    c = await transmission(sock, 'v');
    c.send(write.subarray(0, 28 + 1000));
    c.socket.destroy();
    // Read-only export: EPERM for writes, zeroes and trims.
    c = await transmission(`${sock}.ro`, 'v');
    const okWrite = new Uint8Array(28 + 16);
    okWrite.set(request(NBD.cmdWrite, 0, 16, 7));
    c.send(okWrite);
    assert.equal(await simpleReply(c), { error: NBD.EPERM, handle: 7 });
    c.send(request(NBD.cmdTrim, 0, 16, 8));
    assert.equal(await simpleReply(c), { error: NBD.EPERM, handle: 8 });
    c.socket.destroy();
    // Nothing of any refused or cut request reached the volume.
    assert.equal(volume.read(0, MiB), new Uint8Array(MiB));
    // And a normal client still gets served.
    c = await transmission(sock, 'v');
    const good = new Uint8Array(28 + 4);
    good.set(request(NBD.cmdWrite, 100, 4, 9, NBD.cmdFlagFua));
    good.set([1, 2, 3, 4], 28);
    c.send(good);
    assert.equal(await simpleReply(c), { error: 0, handle: 9 });
    assert.equal(volume.read(100, 4), new Uint8Array([1, 2, 3, 4]));
    // Without FUA a write to a plain volume is applied at once; two in one send get two replies.
    const twice = new Uint8Array(2 * (28 + 4));
    twice.set(request(NBD.cmdWrite, 200, 4, 10));
    twice.set([5, 6, 7, 8], 28);
    twice.set(request(NBD.cmdWrite, 204, 4, 11), 32);
    twice.set([9, 10, 11, 12], 60);
    c.send(twice);
    assert.equal(await simpleReply(c), { error: 0, handle: 10 });
    assert.equal(await simpleReply(c), { error: 0, handle: 11 });
    assert.equal(volume.read(200, 8), new Uint8Array([5, 6, 7, 8, 9, 10, 11, 12]));
    // A write the volume refuses (it was closed under the export) gets ESHUTDOWN, not a crash.
    await volume.close();
    c.send(twice);
    assert.equal(await simpleReply(c), { error: NBD.ESHUTDOWN, handle: 10 });
    assert.equal(await simpleReply(c), { error: NBD.ESHUTDOWN, handle: 11 });
    c.send(request(NBD.cmdDisc, 0, 0, 12));
    assert.ok(await c.closed(), 'DISC closes');
  } finally {
    await nbd.close();
    await ro.close();
    await volume.close();
    cleanup();
  }
});

test('ByteQueue.takeAligned: write payloads come out 8-byte aligned and byte-exact, whatever the chunking', () => {
  const seed = testSeed();
  const random = prng(seed);
  for (let round = 0; round < 200; round++) {
    const queue = new ByteQueue();
    // A stream of 28-byte request heads, each followed by a payload, cut into random chunks.
    const payloads = Array.from({ length: 1 + Math.floor(random() * 12) }, () => randomBytes(random, 1 + Math.floor(random() * 9000)));
    const stream = new Uint8Array(payloads.reduce((n, p) => n + 28 + p.length, 0));
    let at = 0;
    for (const p of payloads) {
      stream.fill(0xee, at, at + 28);
      stream.set(p, at + 28);
      at += 28 + p.length;
    }
    const taken: Uint8Array[] = [];
    let next = 0;
    let want = 28;
    let head = true;
    for (let fed = 0; fed < stream.length; ) {
      const n = Math.min(stream.length - fed, 1 + Math.floor(random() * 20000));
      queue.push(stream.slice(fed, fed + n));
      fed += n;
      while (queue.length >= want) {
        if (head) {
          queue.take(28);
          head = false;
          want = payloads[next]!.length;
        } else {
          const view = queue.takeAligned(want);
          assert.is(view.byteOffset & 7, 0, `seed ${seed}: aligned`);
          taken.push(view.slice());
          next++;
          head = true;
          want = 28;
          if (next === payloads.length) break;
        }
      }
    }
    assert.is(taken.length, payloads.length, `seed ${seed}`);
    taken.forEach((t, i) => assert.equal(t, payloads[i], `seed ${seed}, payload ${i}`));
  }
});

test.run();
