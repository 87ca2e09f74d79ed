// The server side of ws:// (engine/ws-server.ts): a third-party client (the
// `ws` library, or Bun's own WebSocket) talks to it both ways, with zero and
// random masks, fragmented messages, ping and close; bad handshakes get an
// HTTP error and no link; each frame violation closes with its RFC status
// code; a fuzz of random and mutated frame streams never crashes the reader
// and never hands on a byte that was not a data payload; and a steered read
// never runs past the end of the frame it belongs to.
import net from 'node:net';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import WebSocket from 'ws';
import { listen, type Link } from '../engine/link.ts';
import { runtime } from '../engine/runtime.ts';
import { acceptKey, closeReply, CloseCode, FrameReader, frameHead, Opcode, parseHandshake, readTarget } from '../engine/ws-server.ts';
import { prng, randomBytes, testSeed } from './helpers.ts';

/** A client frame: FIN unless `more`, masked with `mask` (all zero if omitted). */
function clientFrame(opcode: number, payload: Uint8Array, options: { mask?: Uint8Array; more?: boolean; rsv?: number; unmasked?: boolean } = {}): Uint8Array {
  const n = payload.length;
  const ext = n < 126 ? 0 : n < 65536 ? 2 : 8;
  const maskBytes = options.unmasked ? 0 : 4;
  const out = new Uint8Array(2 + ext + maskBytes + n);
  out[0] = (options.more ? 0 : 0x80) | (options.rsv ?? 0) | opcode;
  out[1] = (options.unmasked ? 0 : 0x80) | (n < 126 ? n : n < 65536 ? 126 : 127);
  const view = new DataView(out.buffer);
  if (ext === 2) view.setUint16(2, n);
  if (ext === 8) view.setBigUint64(2, BigInt(n));
  const mask = options.mask ?? new Uint8Array(4);
  if (maskBytes) out.set(mask, 2 + ext);
  for (let i = 0; i < n; i++) out[2 + ext + maskBytes + i] = payload[i]! ^ (maskBytes ? mask[i & 3]! : 0);
  return out;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let at = 0;
  for (const p of parts) (out.set(p, at), (at += p.length));
  return out;
}

interface Read {
  data: Uint8Array;
  controls: Array<[number, number[]]>;
  error?: [number, string];
}

function read(stream: Uint8Array, cuts: number[] = [], frameBytesMax = 1 << 20): Read {
  const data: Uint8Array[] = [];
  const controls: Array<[number, number[]]> = [];
  let error: [number, string] | undefined;
  const reader = new FrameReader({
    frameBytesMax,
    onData: (c) => data.push(c.slice()),
    onControl: (op, p) => controls.push([op, [...p]]),
    onError: (code, message) => {
      assert.not.ok(error, 'one error at most');
      error = [code, message];
    },
  });
  let at = 0;
  for (const cut of [...cuts.filter((c) => c > 0 && c < stream.length).sort((a, b) => a - b), stream.length]) {
    // Each chunk is a copy, as a socket read is: the reader may unmask it in place.
    reader.feed(stream.slice(at, cut));
    at = cut;
  }
  return { data: concat(data), controls, error };
}

test('frame reader: data frames, continuations, control frames, zero and random masks, any chunking', () => {
  const random = prng(testSeed());
  const a = randomBytes(random, 70_000);
  const b = randomBytes(random, 300);
  const mask = Uint8Array.of(0x12, 0x34, 0x56, 0x78);
  const stream = concat([
    clientFrame(Opcode.binary, a.subarray(0, 100), { more: true }),
    clientFrame(Opcode.ping, Uint8Array.of(1, 2, 3), { mask }),
    clientFrame(Opcode.continuation, a.subarray(100), { mask }),
    clientFrame(Opcode.binary, new Uint8Array(0)),
    clientFrame(Opcode.binary, b, { mask }),
    clientFrame(Opcode.pong, new Uint8Array(0)),
    clientFrame(Opcode.close, Uint8Array.of(0x03, 0xe8)),
  ]);
  for (let round = 0; round < 50; round++) {
    const cuts = Array.from({ length: Math.floor(random() * 20) }, () => Math.floor(random() * stream.length));
    const r = read(stream, cuts);
    assert.is(r.error, undefined);
    assert.ok(Buffer.from(r.data).equals(Buffer.from(concat([a, b]))), `round ${round}: the data is the payloads in order`);
    assert.equal(r.controls, [
      [Opcode.ping, [1, 2, 3]],
      [Opcode.pong, []],
      [Opcode.close, [0x03, 0xe8]],
    ]);
  }
});

test('frame reader: each violation closes with its status code, from the header alone', () => {
  const p = Uint8Array.of(1, 2, 3);
  const cases: Array<[string, Uint8Array, number]> = [
    ['unmasked', clientFrame(Opcode.binary, p, { unmasked: true }), CloseCode.protocol],
    ['text', clientFrame(Opcode.text, p), CloseCode.unsupported],
    ['reserved bit', clientFrame(Opcode.binary, p, { rsv: 0x40 }), CloseCode.protocol],
    ['unknown data opcode', clientFrame(3, p), CloseCode.protocol],
    ['unknown control opcode', clientFrame(0xb, p), CloseCode.protocol],
    ['continuation with no message', clientFrame(Opcode.continuation, p), CloseCode.protocol],
    ['new message inside one', concat([clientFrame(Opcode.binary, p, { more: true }), clientFrame(Opcode.binary, p)]), CloseCode.protocol],
    ['fragmented ping', clientFrame(Opcode.ping, p, { more: true }), CloseCode.protocol],
    ['long ping', clientFrame(Opcode.ping, new Uint8Array(126)), CloseCode.protocol],
  ];
  for (const [name, stream, code] of cases) {
    const r = read(stream);
    assert.is(r.error?.[0], code, name);
    assert.ok(r.error![1].length > 0, name);
  }
  // Over the limit: refused from the 14-byte header, though no payload byte follows.
  const big = clientFrame(Opcode.binary, new Uint8Array(70_000)).subarray(0, 14);
  assert.is(read(big, [], 65_536).error?.[0], CloseCode.tooBig);
  const huge = Uint8Array.of(0x82, 0xff, 0x7f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  assert.is(read(huge).error?.[0], CloseCode.tooBig);
  const topBit = Uint8Array.of(0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0);
  assert.is(read(topBit).error?.[0], CloseCode.protocol, 'a 64-bit length with its top bit set');
  // Nothing of a frame after the violation is handed on.
  const after = read(concat([clientFrame(Opcode.binary, p), clientFrame(Opcode.text, p), clientFrame(Opcode.binary, Uint8Array.of(9))]));
  assert.equal([...after.data], [1, 2, 3]);
});

test('frame reader fuzz: random and mutated streams never throw, and only payload bytes are handed on', () => {
  const seed = testSeed();
  const random = prng(seed);
  const cases = Number(process.env.BM_FUZZ_CASES ?? 20_000);
  for (let n = 0; n < cases; n++) {
    const label = `seed ${seed}, case ${n}`;
    // A valid stream of data frames whose payloads are all 0x5a, then damaged in a few places or replaced by noise.
    const frames: Uint8Array[] = [];
    let payloadBytes = 0;
    for (let f = 0; f < 1 + Math.floor(random() * 4); f++) {
      const length = Math.floor(random() * (random() < 0.2 ? 70_000 : 200));
      payloadBytes += length;
      const mask = random() < 0.5 ? undefined : randomBytes(random, 4);
      frames.push(clientFrame(random() < 0.2 ? Opcode.ping : Opcode.binary, new Uint8Array(Math.min(length, random() < 0.2 ? 125 : length)).fill(0x5a), { mask }));
    }
    let stream = concat(frames);
    const noise = random() < 0.2;
    if (noise) stream = randomBytes(random, Math.floor(random() * 400));
    else for (let m = 0; m < 1 + Math.floor(random() * 3); m++) stream[Math.floor(random() * stream.length)] = Math.floor(random() * 256);
    const cuts = Array.from({ length: Math.floor(random() * 5) }, () => Math.floor(random() * stream.length));
    let r: Read;
    try {
      r = read(stream, cuts, 65_536 + Math.floor(random() * 10_000));
    } catch (e) {
      throw new Error(`${label}: the reader threw: ${(e as Error).message}`);
    }
    if (r.error) assert.ok([CloseCode.protocol, CloseCode.unsupported, CloseCode.tooBig].includes(r.error[0] as 1002), `${label}: status ${r.error[0]}`);
    if (!noise) assert.ok(r.data.length <= payloadBytes + 256, `${label}: more bytes out than payload in`);
  }
});

test('close frames: a valid close is answered with 1000; a malformed one with 1002 or 1007', () => {
  assert.equal(closeReply(new Uint8Array(0)), { code: 1000 });
  assert.equal(closeReply(Uint8Array.of(0x0f, 0xa0, 0x68, 0x69)), { code: 1000 }, '4000 "hi"');
  assert.equal(closeReply(Uint8Array.of(0x03, 0xf3)), { code: 1000 }, '1011');
  assert.is(closeReply(Uint8Array.of(0x03)).code, 1002, 'one byte');
  for (const status of [0, 999, 1004, 1005, 1006, 1015, 2999, 5000]) assert.is(closeReply(Uint8Array.of(status >> 8, status & 0xff)).code, 1002, `status ${status}`);
  assert.is(closeReply(Uint8Array.of(0x03, 0xe8, 0xff, 0xfe)).code, 1007, 'a reason that is not UTF-8');
});

test('handshake: what is accepted and what is refused, with which status', () => {
  const good = ['GET /x HTTP/1.1', 'Host: h', 'Upgrade: websocket', 'Connection: keep-alive, Upgrade', 'Sec-WebSocket-Version: 13', 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=='];
  assert.equal(parseHandshake(good.join('\r\n')), { key: 'dGhlIHNhbXBsZSBub25jZQ==' });
  // The RFC's own example pair.
  assert.is(acceptKey('dGhlIHNhbXBsZSBub25jZQ=='), 's3pPLMBiTxaQ9kYGzzhZRbK+xOo=');
  const without = (name: string) => good.filter((l) => !l.startsWith(name)).join('\r\n');
  const cases: Array<[string, string, number]> = [
    ['POST', good.join('\r\n').replace('GET', 'POST'), 400],
    ['HTTP/1.0', good.join('\r\n').replace('HTTP/1.1', 'HTTP/1.0'), 400],
    ['no Host', without('Host'), 400],
    ['no Upgrade', without('Upgrade'), 400],
    ['no Connection', without('Connection'), 400],
    ['version 8', good.join('\r\n').replace('Version: 13', 'Version: 8'), 426],
    ['short key', good.join('\r\n').replace('dGhlIHNhbXBsZSBub25jZQ==', 'abc='), 400],
    ['bad header line', good.join('\r\n') + '\r\nnot a header', 400],
    ['garbage', '\u0000\u0001 hello', 400],
  ];
  for (const [name, text, status] of cases) {
    const r = parseHandshake(text);
    assert.ok('status' in r && r.status === status, `${name}: ${JSON.stringify(r)}`);
  }
});

test('server frames: header sizes at the length boundaries', () => {
  assert.equal([...frameHead(Opcode.binary, 125)], [0x82, 125]);
  assert.equal([...frameHead(Opcode.binary, 126)], [0x82, 126, 0, 126]);
  assert.equal([...frameHead(Opcode.binary, 65535)], [0x82, 126, 0xff, 0xff]);
  assert.equal([...frameHead(Opcode.binary, 65536)], [0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
  assert.equal([...frameHead(Opcode.close, 2)], [0x88, 2]);
});

test('readTarget: a read into other memory stops at the end of the frame; one in the link buffer may run on', () => {
  const buffer = new Uint8Array(1024);
  const elsewhere = new Uint8Array(4096);
  assert.is(readTarget(buffer, 0, () => elsewhere), buffer, 'between frames: always the link buffer');
  assert.is(readTarget(buffer, 100, undefined), buffer);
  assert.is(readTarget(buffer, 100, () => undefined), buffer);
  const cut = readTarget(buffer, 100, () => elsewhere);
  assert.is(cut.buffer, elsewhere.buffer);
  assert.is(cut.length, 100);
  assert.is(readTarget(buffer, 5000, () => elsewhere).length, 4096);
  assert.is(readTarget(buffer, 10, () => buffer.subarray(3)).length, 1021, 'a skewed view of the link buffer is not cut');
});

async function server(readBuffer?: () => Uint8Array): Promise<{ url: string; links: Link[]; data: Uint8Array[]; closed: string[]; close: () => Promise<void> }> {
  const links: Link[] = [];
  const data: Uint8Array[] = [];
  const closed: string[] = [];
  const listener = await listen(
    'ws://127.0.0.1:0',
    (link) => {
      links.push(link);
      link.onData((c) => data.push(c.slice()));
      link.onClose((r) => closed.push(r));
    },
    { readBuffer },
  );
  return { url: `ws://127.0.0.1:${listener.port}/`, links, data, closed, close: () => listener.close() };
}

async function until(condition: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

const total = (chunks: Uint8Array[]) => chunks.reduce((s, c) => s + c.length, 0);

test(`a third-party client (${runtime === 'bun' ? "Bun's WebSocket" : 'the ws library'}) both ways: random masks, fragments, ping, close`, async () => {
  const random = prng(testSeed());
  const s = await server(() => new Uint8Array(64 * 1024));
  try {
    // The library's default: a random mask on every frame.
    const client = new WebSocket(s.url, { perMessageDeflate: false });
    const got: Uint8Array[] = [];
    client.binaryType = 'nodebuffer';
    client.on('message', (m: Buffer) => got.push(new Uint8Array(m)));
    let pong = false;
    client.on('pong', () => (pong = true));
    await new Promise((r, j) => (client.once('open', r), client.once('error', j)));
    const sent = [randomBytes(random, 10), randomBytes(random, 200_000), randomBytes(random, 70_000), randomBytes(random, 126)];
    for (const m of sent) client.send(m);
    client.send(new Uint8Array(0));
    client.ping();
    await until(() => total(s.data) === total(sent), 'the server to receive every byte');
    assert.ok(Buffer.from(concat(s.data)).equals(Buffer.from(concat(sent))), 'the server got the bytes in order');
    await until(() => pong, 'a pong');
    const back = [randomBytes(random, 5), randomBytes(random, 20_000), randomBytes(random, 300_000)];
    for (const m of back) s.links[0]!.send(m);
    await until(() => total(got) === total(back), 'the client to receive every byte');
    assert.ok(Buffer.from(concat(got)).equals(Buffer.from(concat(back))), 'the client got the bytes in order');
    const code = new Promise<number>((r) => client.once('close', (c: number) => r(c)));
    client.close(4000);
    assert.is(await code, 1000, 'the close is answered with status 1000');
    await until(() => s.closed.length === 1, 'the link to close');
    assert.is(s.closed[0], 'closed by peer');
  } finally {
    await s.close();
  }
});

/** A raw TCP client: sends `bytes`, returns what the server answered until it closed. */
async function raw(url: string, parts: Uint8Array[], waitMs = 5000): Promise<Uint8Array> {
  const port = Number(new URL(url).port);
  const socket = net.connect({ host: '127.0.0.1', port });
  const got: Uint8Array[] = [];
  socket.on('data', (c: Buffer) => got.push(new Uint8Array(c)));
  socket.on('error', () => {});
  await new Promise((r) => socket.once('connect', r));
  for (const p of parts) socket.write(p);
  await Promise.race([new Promise((r) => socket.once('close', r)), new Promise((r) => setTimeout(r, waitMs))]);
  socket.destroy();
  return concat(got);
}

const upgrade = (extra = '') =>
  new TextEncoder().encode(`GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n${extra}\r\n`);

test('over a socket: a refused handshake gets an HTTP status and makes no link; a violation gets its close code', async () => {
  const s = await server();
  try {
    const plain = new TextDecoder().decode(await raw(s.url, [new TextEncoder().encode('GET / HTTP/1.1\r\nHost: x\r\n\r\n')]));
    assert.match(plain, /^HTTP\/1\.1 400 /);
    assert.match(plain, /not a WebSocket upgrade/);
    const old = new TextDecoder().decode(await raw(s.url, [new TextEncoder().encode('GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n')]));
    assert.match(old, /^HTTP\/1\.1 426 [^]*Sec-WebSocket-Version: 13/);
    const long = new TextDecoder().decode(await raw(s.url, [new TextEncoder().encode('GET / HTTP/1.1\r\n' + 'X-Pad: y\r\n'.repeat(1000))]));
    assert.match(long, /^HTTP\/1\.1 400 [^]*longer than 8192/);
    assert.is(s.links.length, 0, 'no link from a refused handshake');

    // Accepted, then an unmasked frame: close frame 1002, the link closes with BM_ERR_WEBSOCKET.
    const answer = await raw(s.url, [upgrade(), clientFrame(Opcode.binary, Uint8Array.of(7, 7), { unmasked: true })]);
    const text = new TextDecoder('latin1').decode(answer);
    assert.match(text, /^HTTP\/1\.1 101 Switching Protocols\r\n/);
    assert.match(text, /Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK\+xOo=\r\n/);
    const frame = answer.subarray(text.indexOf('\r\n\r\n') + 4);
    assert.equal([...frame], [0x88, 2, 0x03, 0xea], 'a close frame with status 1002');
    await until(() => s.closed.length === 1, 'the link to close');
    assert.match(s.closed[0]!, /^BM_ERR_WEBSOCKET: an unmasked frame/);
    assert.is(total(s.data), 0, 'nothing handed on from the bad frame');

    // A frame over the limit: refused from its header (1009).
    const over = await raw(s.url, [upgrade(), Uint8Array.of(0x82, 0xff, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0)]);
    const overText = new TextDecoder('latin1').decode(over);
    assert.equal([...over.subarray(overText.indexOf('\r\n\r\n') + 4)], [0x88, 2, 0x03, 0xf1], 'a close frame with status 1009');
    await until(() => s.closed.length === 2, 'the second link to close');
    assert.match(s.closed[1]!, /^BM_ERR_WEBSOCKET: a frame of 4294967296 bytes, over the limit/);
  } finally {
    await s.close();
  }
});

test('steered reads: the rest of a long frame lands where the consumer asked, and the next header is still read', async () => {
  const t = await server(() => new Uint8Array(64 * 1024));
  const link = await new Promise<Link>((resolve) => {
    const port = Number(new URL(t.url).port);
    const socket = net.connect({ host: '127.0.0.1', port });
    socket.on('error', () => {});
    socket.once('connect', async () => {
      socket.write(upgrade());
      await until(() => t.links.length === 1, 'the link');
      resolve(Object.assign(t.links[0]!, { client: socket }));
    });
  });
  const client = (link as unknown as { client: net.Socket }).client;
  try {
    if (runtime !== 'node') {
      // Only Node lets a socket read into memory it chooses.
      assert.is(link.steer, undefined);
      return;
    }
    // The consumer asks for 300,000 bytes elsewhere whenever a frame's payload is under way.
    const elsewhere = new Uint8Array(300_000);
    let steered = 0;
    link.steer!(() => {
      steered++;
      return elsewhere;
    });
    // Like the mirror decoder, this consumer takes a chunk that lies in its own memory as the
    // bytes it asked for there: it must start where the read started and hold payload only.
    const misplaced: number[] = [];
    link.onData((c) => {
      if (c.buffer === elsewhere.buffer && c.byteOffset !== 0) misplaced.push(c.byteOffset);
      t.data.push(c.slice());
    });
    const random = prng(testSeed());
    const a = randomBytes(random, 200_000);
    const b = randomBytes(random, 50_000);
    // Two frames sent together: a read steered into `elsewhere` while the first is under way must
    // stop at its end, or the second frame's header would be taken for payload.
    client.write(concat([clientFrame(Opcode.binary, a), clientFrame(Opcode.binary, b)]));
    await until(() => total(t.data) === a.length + b.length, 'every byte');
    assert.ok(Buffer.from(concat(t.data)).equals(Buffer.from(concat([a, b]))), 'the bytes in order, headers taken out');
    assert.ok(steered > 0, 'the consumer was asked where reads should go');
    assert.equal(misplaced, [], 'no frame header was read into the consumer\'s memory');
  } finally {
    client.destroy();
    await t.close();
  }
});

test('a connection whose read buffer cannot be made is dropped, not the process; the next one is served', async () => {
  for (const scheme of ['tcp', 'ws'] as const) {
    let fail = true;
    let made = 0;
    const links: Link[] = [];
    const listener = await listen(`${scheme}://127.0.0.1:0`, (link) => links.push(link), {
      readBuffer: () => {
        if (fail) throw new RangeError('WebAssembly.Memory(): could not allocate memory');
        made++;
        return new Uint8Array(64 * 1024);
      },
    });
    const url = `ws://127.0.0.1:${listener.port}/`;
    try {
      // Node asks for the buffer (at accept on tcp://, after the handshake on ws://); elsewhere it is not used.
      const answer = await raw(url, scheme === 'ws' ? [upgrade()] : [Uint8Array.of(1, 2, 3)], 2000);
      if (runtime === 'node') {
        assert.is(links.length, 0, `${scheme}: no link without a read buffer`);
        if (scheme === 'ws') assert.match(new TextDecoder().decode(answer), /^HTTP\/1\.1 503 [^]*no memory for a read buffer/);
      } else {
        assert.is(links.length, 1, `${scheme}: ${runtime} reads without one`);
      }
      fail = false;
      await raw(url, scheme === 'ws' ? [upgrade()] : [Uint8Array.of(1, 2, 3)], 300);
      await until(() => links.length === (runtime === 'node' ? 1 : 2), `${scheme}: the next connection served`);
      assert.is(made, runtime === 'node' ? 1 : 0);
    } finally {
      // A tcp:// listener's close waits for its connections to end.
      for (const link of links) link.destroy();
      await listener.close();
    }
  }
});

test.run();
