// The mirror link's frame decoder, fed exact bytes: every error has its
// code, oversized lengths are refused from the prefix alone, and a fuzz of
// random and mutated streams never crashes it and never lets a damaged frame
// through.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { FrameDecoder, type Frame } from '../engine/frame-decoder.ts';
import { FrameEncoder } from '../engine/frame-encoder.ts';
import { FrameType, headerPackr, payloadStart, prefixBytes, sealFrame, writeFrame } from '../engine/frame.ts';
import { instantiateKernel, KERNEL_HEADER_BYTES, kernelArea, writeKernelHeader } from '../engine/kernel.ts';
import { prng, randomBytes, testSeed } from './helpers.ts';

const payloadBytesMax = 4096;
const encoder = new FrameEncoder(payloadBytesMax);

/** A socket's reused read buffer (Node): every chunk lands at its start, and frames are checked in place. */
const readArea = kernelArea(64 * 1024);

/** Each chunk as the socket would hand it on: copied into the read area, valid only during `feed`. */
function fromReadArea(chunk: Uint8Array): Uint8Array {
  readArea.set(chunk);
  return readArea.subarray(0, chunk.length);
}

/** Feeds `chunks` as fresh buffers, or (`inPlace`) through the reused read area; the area is scribbled over after each. */
function collect(chunks: Uint8Array[], inPlace = false): { frames: Array<{ header: unknown[]; payload: Uint8Array }>; error?: string } {
  const frames: Array<{ header: unknown[]; payload: Uint8Array }> = [];
  let error: string | undefined;
  const decoder = new FrameDecoder({
    payloadBytesMax,
    onFrame: (f: Frame) => frames.push({ header: JSON.parse(JSON.stringify(f.header)), payload: f.payload.slice() }),
    onError: (e) => (error = e.code),
  });
  for (const c of chunks) {
    decoder.feed(inPlace ? fromReadArea(c) : c);
    // The next read overwrites the buffer: a decoder that kept a view of it would now see garbage.
    if (inPlace) readArea.fill(0xa5, 0, c.length);
  }
  return { frames, error };
}

const both = [false, true];

const concat = (parts: Uint8Array[]) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) (out.set(p, at), (at += p.length));
  return out;
};

function sampleFrames(random: () => number): Array<{ header: unknown[]; payload?: Uint8Array }> {
  return [
    { header: [FrameType.write, 7, 0, 4096, 0], payload: randomBytes(random, 1 + Math.floor(random() * 3000)) },
    { header: [FrameType.zeroes, 8, 1, 65536, 8192] },
    { header: [FrameType.flush, 9] },
    { header: [FrameType.ack, 9] },
    { header: [FrameType.ping, 12345] },
    { header: [FrameType.hello, { version: 1, volumes: [{ name: 'db', size: 4096 }] }] },
    { header: [FrameType.refuse, 'BM_ERR_AUTH', 'wrong secret'] },
  ];
}

test('frames survive any chunking: whole, byte by byte, random cuts', () => {
  const seed = testSeed();
  const random = prng(seed);
  const frames = sampleFrames(random);
  const stream = concat(frames.map((f) => encoder.encode(f.header, f.payload)));
  const cuts: Uint8Array[][] = [[stream], Array.from(stream, (b) => new Uint8Array([b]))];
  const random3: Uint8Array[] = [];
  for (let at = 0; at < stream.length; ) {
    const n = 1 + Math.floor(random() * 300);
    random3.push(stream.subarray(at, at + n));
    at += n;
  }
  cuts.push(random3);
  for (const [chunks, inPlace] of cuts.flatMap((c) => both.map((b) => [c, b] as const))) {
    const { frames: got, error } = collect(chunks, inPlace);
    assert.is(error, undefined, `seed ${seed}`);
    assert.is(got.length, frames.length);
    got.forEach((g, i) => {
      assert.equal(JSON.parse(JSON.stringify(g.header)), JSON.parse(JSON.stringify(frames[i]!.header)));
      assert.equal(g.payload, frames[i]!.payload ?? new Uint8Array(0));
    });
  }
});

function prefix(magic: number, headerBytes: number, payloadBytes: number, reserved = 0): Uint8Array {
  const b = new Uint8Array(prefixBytes);
  const v = new DataView(b.buffer);
  v.setUint32(0, magic, true);
  v.setUint32(4, headerBytes, true);
  v.setUint32(8, payloadBytes, true);
  v.setUint32(12, reserved, true);
  return b;
}

test('bad magic and a non-zero reserved field: BM_ERR_FRAME_MAGIC', () => {
  for (const inPlace of both) {
    assert.is(collect([prefix(0xdeadbeef, 4, 0)], inPlace).error, 'BM_ERR_FRAME_MAGIC');
    assert.is(collect([prefix(0x31464d42, 4, 0, 1)], inPlace).error, 'BM_ERR_FRAME_MAGIC');
    assert.is(collect([new TextEncoder().encode('GET / HTTP/1.1\r\nHost: x\r\n\r\n')], inPlace).error, 'BM_ERR_FRAME_MAGIC');
  }
});

test('oversized lengths are refused from the 24-byte prefix alone', () => {
  // Only the prefix is fed: the decoder must refuse before waiting for (or buffering) a body.
  for (const inPlace of both) {
    assert.is(collect([prefix(0x31464d42, 4097, 0)], inPlace).error, 'BM_ERR_FRAME_TOO_LARGE');
    assert.is(collect([prefix(0x31464d42, 0, 0)], inPlace).error, 'BM_ERR_FRAME_TOO_LARGE');
    assert.is(collect([prefix(0x31464d42, 10, payloadBytesMax + 1)], inPlace).error, 'BM_ERR_FRAME_TOO_LARGE');
    assert.is(collect([prefix(0x31464d42, 10, 0xffffffff)], inPlace).error, 'BM_ERR_FRAME_TOO_LARGE');
  }
});

test('a flipped bit in header or payload: BM_ERR_FRAME_CHECKSUM, and the frame is not handed on', () => {
  const frame = encoder.encode([FrameType.write, 1, 0, 0, 0], new Uint8Array(100).fill(9));
  const good = encoder.encode([FrameType.flush, 0]);
  for (const at of [prefixBytes, prefixBytes + 3, frame.length - 10, 16, 23]) {
    const bad = frame.slice();
    bad[at]! ^= 0x10;
    for (const inPlace of both) {
      // A good frame first, then the bad one, in one chunk: the good one is handed on, the bad one never.
      const { frames, error } = collect([concat([good, bad])], inPlace);
      assert.is(error, 'BM_ERR_FRAME_CHECKSUM', `byte ${at}`);
      assert.is(frames.length, 1);
    }
  }
});

test('in place: whole frames are handed on as views of the read buffer, a frame cut by the chunk end is staged', () => {
  const payload = new Uint8Array(1000).map((_, i) => i & 0xff);
  const frame = encoder.encode([FrameType.write, 1, 0, 0, 0], payload);
  const views: Uint8Array[] = [];
  const decoder = new FrameDecoder({ payloadBytesMax, onFrame: (f) => views.push(f.payload), onError: (e) => assert.unreachable(e.code) });
  // Two whole frames and the head of a third in one read.
  const cut = 100;
  decoder.feed(fromReadArea(concat([frame, frame, frame.subarray(0, cut)])));
  assert.is(views.length, 2);
  assert.is(views[0]!.buffer, readArea.buffer, 'a whole frame is not copied');
  const headerBytes = new DataView(frame.buffer, frame.byteOffset).getUint32(4, true);
  assert.is(views[0]!.byteOffset, readArea.byteOffset + payloadStart(headerBytes), 'the payload view starts where the payload lies in the read');
  assert.is(views[1]!.byteOffset, readArea.byteOffset + frame.length + payloadStart(headerBytes));
  assert.equal(views[1]!.slice(), payload);
  // The rest of the third frame arrives in the next read, over the same buffer.
  decoder.feed(fromReadArea(frame.subarray(cut)));
  assert.is(views.length, 3);
  assert.is.not(views[2]!.buffer, readArea.buffer, 'a cut frame is gathered in the staging area');
  assert.equal(views[2]!.slice(), payload);
});

/**
 * Feeds `stream` as a socket with a steerable read buffer would (Node's
 * tcp:// on the secondary): before each read it asks `readTarget(readArea)`
 * and reads into what that returns (the staging area, or the reused read
 * area from a few bytes in), else into the read area from its start. Each
 * read takes a random length up to what its target holds. Counts the
 * payloads handed on at an address that is not a multiple of 8.
 */
function collectSteered(stream: Uint8Array, random: () => number, bytesMax: number) {
  const frames: Uint8Array[] = [];
  let error: string | undefined;
  let steered = 0;
  let misaligned = 0;
  const decoder = new FrameDecoder({
    payloadBytesMax: bytesMax,
    onFrame: (f) => {
      if (f.payload.byteOffset & 7) misaligned++;
      frames.push(f.payload.slice());
    },
    onError: (e) => (error = e.code),
  });
  for (let at = 0; at < stream.length && !error; ) {
    const target = decoder.readTarget(readArea) ?? readArea;
    const intoArea = target.buffer === readArea.buffer;
    if (!intoArea) steered++;
    const n = Math.min(target.length, stream.length - at, 1 + Math.floor(random() * 96 * 1024));
    target.set(stream.subarray(at, at + n));
    decoder.feed(target.subarray(0, n));
    if (intoArea) target.fill(0xa5, 0, n);
    at += n;
  }
  return { frames, error, steered, misaligned };
}

test('steered reads: the rest of a long frame read straight into the staging area gives the same frames, and a damaged one is still refused', () => {
  const seed = testSeed();
  const random = prng(seed);
  const bytesMax = 256 * 1024;
  const big = new FrameEncoder(bytesMax);
  for (let round = 0; round < 20; round++) {
    const payloads = Array.from({ length: 12 }, () => randomBytes(random, random() < 0.3 ? 1 + Math.floor(random() * 100) : 1 + Math.floor(random() * bytesMax)));
    // One frame of the largest size in each round: reads of at most 96 KiB always cut it with more
    // than 32 KiB to come, so that every round steers (random sizes alone sometimes never did).
    payloads[Math.floor(random() * payloads.length)] = randomBytes(random, bytesMax);
    const encoded = payloads.map((p, i) => big.encode([FrameType.write, i, 0, 0, 0], p));
    const stream = concat(encoded);
    const { frames, error, steered, misaligned } = collectSteered(stream, random, bytesMax);
    assert.is(error, undefined, `seed ${seed}`);
    assert.ok(steered > 0, `seed ${seed}: some reads were steered`);
    assert.is(misaligned, 0, `seed ${seed}: every payload was handed on 8-byte aligned, in place or staged`);
    assert.is(frames.length, payloads.length);
    frames.forEach((f, i) => assert.equal(f, payloads[i], `seed ${seed}, frame ${i}`));
    // A bit flipped near the end of the longest frame, in the part most likely to arrive by a steered read.
    const longest = payloads.reduce((m, p, i) => (p.length > payloads[m]!.length ? i : m), 0);
    const start = encoded.slice(0, longest).reduce((n, e) => n + e.length, 0);
    const frame = encoded[longest]!;
    // The payload's end, not the frame's: the zero padding after it is not checked.
    const payloadEnd = start + payloadStart(new DataView(frame.buffer, frame.byteOffset).getUint32(4, true)) + payloads[longest]!.length;
    const bad = stream.slice();
    bad[payloadEnd - 1 - Math.floor(random() * Math.min(64, payloads[longest]!.length))]! ^= 0x04;
    const damaged = collectSteered(bad, random, bytesMax);
    assert.is(damaged.error, 'BM_ERR_FRAME_CHECKSUM', `seed ${seed}`);
    assert.is(damaged.frames.length, longest, `seed ${seed}: the frames before the damaged one, and none after`);
  }
});

/**
 * A frame with a correct checksum around an arbitrary header byte string;
 * with `lastPadByte`, the last byte of the header's padding is set to it
 * before the checksum is taken.
 */
function sealed(headerBytes: Uint8Array, payload = new Uint8Array(0), lastPadByte?: number): Uint8Array {
  const memory = new WebAssembly.Memory({ initial: 2, maximum: 2, shared: true });
  writeKernelHeader(memory);
  const kernel = instantiateKernel(memory);
  const bytes = new Uint8Array(memory.buffer, KERNEL_HEADER_BYTES);
  const view = new DataView(memory.buffer, KERNEL_HEADER_BYTES);
  const n = writeFrame(bytes, view, 0, headerBytes, payload);
  if (lastPadByte !== undefined) bytes[payloadStart(headerBytes.length) - 1] = lastPadByte;
  sealFrame(view, 0, (from, length) => kernel.xxh3(KERNEL_HEADER_BYTES + from, length));
  return bytes.slice(0, n);
}

test('headers that are not msgpack or have the wrong shape: BM_ERR_FRAME_HEADER; unknown types: BM_ERR_FRAME_TYPE', () => {
  const pack = (v: unknown) => headerPackr.pack(v) as Uint8Array;
  const cases: Array<[Uint8Array, string, Uint8Array?]> = [
    [new Uint8Array([0xc1]), 'BM_ERR_FRAME_HEADER'], // never-used msgpack byte
    [new Uint8Array([0x92, 0x05]), 'BM_ERR_FRAME_HEADER'], // truncated array
    [pack({ a: 1 }), 'BM_ERR_FRAME_HEADER'],
    [pack([]), 'BM_ERR_FRAME_HEADER'],
    [pack([FrameType.write, 1, 0, -5, 0]), 'BM_ERR_FRAME_HEADER', new Uint8Array(4)],
    [pack([FrameType.write, 1, 0, 1.5, 0]), 'BM_ERR_FRAME_HEADER', new Uint8Array(4)],
    [pack([FrameType.write, 1, 70000, 0, 0]), 'BM_ERR_FRAME_HEADER', new Uint8Array(4)],
    [pack([FrameType.write, 1, 0, 0, 0]), 'BM_ERR_FRAME_HEADER'], // write without payload
    [pack([FrameType.ack, 1]), 'BM_ERR_FRAME_HEADER', new Uint8Array(4)], // ack with payload
    [pack([FrameType.ack, 'x']), 'BM_ERR_FRAME_HEADER'],
    [pack([FrameType.hello, 'x']), 'BM_ERR_FRAME_HEADER'],
    [pack([99, 1]), 'BM_ERR_FRAME_TYPE'],
    [pack(['write', 1]), 'BM_ERR_FRAME_TYPE'],
  ];
  for (const [header, code, payload] of cases) {
    const { frames, error } = collect([sealed(header, payload)]);
    assert.is(error, code, Array.from(header.subarray(0, 8)).join(','));
    assert.is(frames.length, 0);
  }
});

test('payloads start 8-byte aligned in the frame for every header length; header padding that is not zero is refused', () => {
  // Framing does not look at the header's shape: msgpack strings of 0 to 39 characters give headers of 1 to 41
  // bytes, every remainder modulo 8, and write headers whose offset grows give the lengths records really have.
  const headers: Uint8Array[] = [];
  for (const offset of [0, 200, 70_000, 2 ** 33]) headers.push(headerPackr.pack([FrameType.write, 1, 0, offset, 0]) as Uint8Array);
  for (let n = 0; n < 40; n++) headers.push(headerPackr.pack('x'.repeat(n)) as Uint8Array);
  assert.is(new Set(headers.map((h) => h.length % 8)).size, 8, 'every remainder modulo 8');
  for (const header of headers) {
    const payload = new Uint8Array(13).map((_, i) => i + 1);
    const frame = sealed(header, payload);
    const at = payloadStart(header.length);
    assert.is(at % 8, 0, `header of ${header.length} bytes`);
    assert.ok(at >= prefixBytes + header.length && at < prefixBytes + header.length + 8);
    assert.equal(frame.subarray(at, at + payload.length), payload, `the payload lies at ${at}`);
    assert.is(frame.length % 8, 0);
    for (let i = prefixBytes + header.length; i < at; i++) assert.is(frame[i], 0, 'header padding is zero');
  }
  // A well-formed write whose header leaves padding; a byte of that padding set, and the checksum made to match.
  const header = headerPackr.pack([FrameType.write, 1, 0, 0, 0]) as Uint8Array;
  assert.ok(header.length % 8 !== 0, 'this header leaves padding');
  for (const inPlace of both) {
    const good = sealed(header, new Uint8Array(64).fill(5));
    const { frames } = collect([good], inPlace);
    assert.is(frames.length, 1);
    const bad = sealed(header, new Uint8Array(64).fill(5), 0x7f);
    const got = collect([concat([good, bad])], inPlace);
    assert.is(got.error, 'BM_ERR_FRAME_HEADER');
    assert.is(got.frames.length, 1, 'only the good frame is handed on');
  }
});

test('fuzz: 100k random and mutated streams never crash the decoder and never pass a damaged frame', () => {
  const seed = testSeed();
  const random = prng(seed);
  const originals = sampleFrames(random).map((f) => ({ ...f, bytes: encoder.encode(f.header, f.payload) }));
  const decoder = new FrameDecoder({ payloadBytesMax, onFrame: (f) => got.push(f.payload.slice()), onError: (e) => (error = e.code) });
  let got: Uint8Array[] = [];
  let error: string | undefined;
  const codes = new Set(['BM_ERR_FRAME_MAGIC', 'BM_ERR_FRAME_TOO_LARGE', 'BM_ERR_FRAME_CHECKSUM', 'BM_ERR_FRAME_HEADER', 'BM_ERR_FRAME_TYPE']);
  const cases = Number(process.env.BM_FUZZ_CASES ?? 100_000);
  for (let i = 0; i < cases; i++) {
    decoder.reset();
    got = [];
    error = undefined;
    const picked = Array.from({ length: 1 + Math.floor(random() * 3) }, () => originals[Math.floor(random() * originals.length)]!);
    let stream = concat(picked.map((p) => p.bytes));
    const mode = random();
    if (mode < 0.1) {
      stream = randomBytes(random, Math.floor(random() * 200));
    } else if (mode < 0.8) {
      for (let m = 1 + Math.floor(random() * 3); m > 0; m--) stream[Math.floor(random() * stream.length)] ^= 1 << Math.floor(random() * 8);
    } else {
      stream = stream.subarray(0, Math.floor(random() * stream.length));
    }
    let at = 0;
    // Half the cases read through the reused read area in chunks large enough to hold whole frames.
    const inPlace = i % 2 === 1;
    try {
      while (at < stream.length) {
        const n = 1 + Math.floor(random() * (inPlace ? 8192 : 64));
        decoder.feed(inPlace ? fromReadArea(stream.subarray(at, at + n)) : stream.subarray(at, at + n));
        if (inPlace) readArea.fill(0xa5, 0, n);
        at += n;
      }
    } catch (e) {
      assert.unreachable(`seed ${seed} case ${i}: the decoder threw ${(e as Error).message}`);
    }
    if (error !== undefined) assert.ok(codes.has(error), `seed ${seed} case ${i}: unexpected code ${error}`);
    // Every frame handed on is byte-identical to the frame at the same place in the original stream.
    got.forEach((payload, k) => {
      const original = picked[k];
      assert.ok(original, `seed ${seed} case ${i}: a frame was invented`);
      assert.equal(payload, original!.payload ?? new Uint8Array(0), `seed ${seed} case ${i}: frame ${k} was altered`);
    });
  }
});

test.run();
