// A hand-rolled primary speaking raw frames to a real secondary: records out
// of order, for unknown volumes, outside their volume, before the handshake,
// or corrupted on the wire are refused with their code, the connection is
// closed, and not one byte reaches the image.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { FrameDecoder } from '../engine/frame-decoder.ts';
import { FrameEncoder } from '../engine/frame-encoder.ts';
import { FrameType } from '../engine/frame.ts';
import { Secondary } from '../engine/secondary.ts';
import { protocolVersion } from '../engine/secondary-session.ts';
import { encodeJson } from '../engine/json-payload.ts';
import { tempDir } from './helpers.ts';

const encoder = new FrameEncoder(64 * 1024);
const gen = '0123456789abcdef';
const volume = { name: 'db', size: 64 * 1024, blockSize: 4096, segmentSize: 65536, code: 'xxh3', gen, history: [], oosBase: gen, oosTrusted: true, fresh: true };

/** A hello: its fields in the header, its volume list as a JSON payload. */
function hello(fields: Record<string, unknown>, volumes: unknown): Uint8Array {
  return encoder.encode([FrameType.hello, { version: protocolVersion, nonce: new Uint8Array(32), seq: 1, mode: 'sync', ...fields }], encodeJson(volumes));
}

/** Connects, completes the handshake (unless told not to), sends `frames`, and reports the refusal code. */
async function session(url: string, frames: Uint8Array[], handshake = true): Promise<{ refused?: string; acked: number; closed: boolean }> {
  const port = Number(url.split(':').pop());
  const socket = net.connect({ host: '127.0.0.1', port });
  const out = { refused: undefined as string | undefined, acked: 0, closed: false };
  let welcomed = false;
  let challenged = false;
  const decoder = new FrameDecoder({
    payloadBytesMax: 64 * 1024,
    onError: () => {},
    onFrame: (f) => {
      if (f.type === FrameType.challenge) {
        challenged = true;
        const nonce = new Uint8Array(32);
        if (handshake) socket.write(hello({ nonce }, [volume]));
        else for (const frame of frames) socket.write(frame);
      } else if (f.type === FrameType.welcome) {
        welcomed = true;
        for (const frame of frames) socket.write(frame);
      } else if (f.type === FrameType.ack) out.acked = f.header[1] as number;
      else if (f.type === FrameType.refuse) out.refused = f.header[1] as string;
    },
  });
  socket.on('data', (d) => decoder.feed(d));
  await new Promise<void>((resolve) => {
    socket.on('close', () => resolve());
    socket.on('error', () => resolve());
    setTimeout(() => {
      socket.destroy();
      resolve();
    }, 2000);
  });
  out.closed = true;
  assert.ok(challenged, 'the secondary sent its challenge');
  if (handshake && !out.refused) assert.ok(welcomed, 'the handshake completed');
  return out;
}

const write = (seq: number, vol: number, offset: number, bytes = 16) => encoder.encode([FrameType.write, seq, vol, offset, 0], new Uint8Array(bytes).fill(0xee));

test('bad records are refused with their code and nothing reaches the image', async () => {
  const { dir, cleanup } = tempDir('bm-session-');
  const secondary = await Secondary.start({ dir, listen: ['tcp://127.0.0.1:0'] });
  try {
    const url = secondary.urls[0]!;
    const corrupt = write(1, 0, 0);
    corrupt[corrupt.length - 12]! ^= 0x40;
    const cases: Array<[string, Uint8Array[], string, boolean?]> = [
      ['a record out of order', [write(2, 0, 0)], 'BM_ERR_FRAME_ORDER'],
      ['a record for a volume not on the link', [write(1, 3, 0)], 'BM_ERR_FRAME_HEADER'],
      ['a record past the end of its volume', [write(1, 0, 64 * 1024 - 8)], 'BM_ERR_OUT_OF_RANGE'],
      ['a record corrupted on the wire', [corrupt], 'BM_ERR_FRAME_CHECKSUM'],
      ['a second hello', [hello({}, [volume])], 'BM_ERR_FRAME_TYPE'],
      ['a resync end for a volume not on the link', [encoder.encode([FrameType.syncEnd, 1, 2, gen, []])], 'BM_ERR_FRAME_HEADER'],
      ['a codes request past the end of its volume', [encoder.encode([FrameType.codesRequest, 1, 0, 0, 2, 7])], 'BM_ERR_OUT_OF_RANGE'],
      ['a resync begin with a malformed generation', [encoder.encode([FrameType.syncBegin, 1, 0, 'not-a-gen'])], 'BM_ERR_FRAME_HEADER'],
      ['an ack sent by a primary', [encoder.encode([FrameType.ack, 1])], 'BM_ERR_FRAME_TYPE'],
      ['a record before the handshake', [write(1, 0, 0)], 'BM_ERR_FRAME_TYPE', false],
      ['garbage instead of a hello', [new TextEncoder().encode('GET / HTTP/1.1\r\nHost: example\r\n\r\n')], 'BM_ERR_FRAME_MAGIC', false],
    ];
    for (const [what, frames, code, handshake] of cases) {
      const r = await session(url, frames, handshake ?? true);
      assert.is(r.refused, code, what);
      assert.is(r.acked, 0, `${what}: nothing acknowledged`);
    }
    // A good record after all that is applied, proving the volume was usable and untouched.
    assert.equal(new Uint8Array(fs.readFileSync(path.join(dir, 'db.img'))), new Uint8Array(64 * 1024), 'no byte of a refused record reached the image');
    const ok = await Promise.race([session(url, [write(1, 0, 4096)]), new Promise<never>(() => {})]);
    assert.is(ok.acked, 1);
  } finally {
    await secondary.close();
    cleanup();
  }
});

test('a hello with a bad volume list or version is refused before any image is created', async () => {
  const { dir, cleanup } = tempDir('bm-session-');
  const secondary = await Secondary.start({ dir, listen: ['tcp://127.0.0.1:0'] });
  try {
    const port = Number(secondary.urls[0]!.split(':').pop());
    for (const [fields, volumes, code] of [
      [{ version: 1 }, [volume], 'BM_ERR_MISMATCH'],
      [{}, [], 'BM_ERR_FRAME_HEADER'],
      [{}, [{ ...volume, name: '../etc' }], 'BM_ERR_FRAME_HEADER'],
      [{}, [volume, volume], 'BM_ERR_FRAME_HEADER'],
      [{ nonce: new Uint8Array(3) }, [volume], 'BM_ERR_FRAME_HEADER'],
      [{ seq: -1 }, [volume], 'BM_ERR_FRAME_HEADER'],
      [{}, [{ ...volume, gen: 'xyz' }], 'BM_ERR_FRAME_HEADER'],
      [{}, [{ ...volume, history: 'none' }], 'BM_ERR_FRAME_HEADER'],
      [{}, 'not a list', 'BM_ERR_FRAME_HEADER'],
      [{}, [{ ...volume, size: 5000 }], 'BM_ERR_BAD_GEOMETRY'],
    ] as const) {
      const socket = net.connect({ host: '127.0.0.1', port });
      const refused = await new Promise<string | undefined>((resolve) => {
        const decoder = new FrameDecoder({
          payloadBytesMax: 64 * 1024,
          onError: () => resolve(undefined),
          onFrame: (f) => {
            if (f.type === FrameType.challenge) socket.write(hello(fields, volumes));
            if (f.type === FrameType.refuse) resolve(f.header[1] as string);
            if (f.type === FrameType.welcome) resolve('welcomed');
          },
        });
        socket.on('data', (d) => decoder.feed(d));
        socket.on('close', () => resolve(undefined));
      });
      socket.destroy();
      assert.is(refused, code, JSON.stringify([fields, volumes], (_, v) => (v instanceof Uint8Array ? `bytes(${v.length})` : v)));
    }
    assert.equal(fs.readdirSync(dir), [], 'no image was created for a refused hello');
  } finally {
    await secondary.close();
    cleanup();
  }
});

test.run();
