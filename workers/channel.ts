/**
 * Channel worker: carries one journal to one secondary over tcp:// or ws://.
 *
 * It connects, runs the primary's side of the handshake, then drains the
 * journal: frames are sealed (checksummed) in place in the ring and handed to
 * the socket in batches straight from ring memory, and acknowledgements
 * release ring space and publish the highest acknowledged sequence number in
 * the journal's control words, waking the main thread.
 *
 * Failure detection runs here, never waiting for the main thread: the link
 * closing or erring, a refusal from the peer, a record unacknowledged past
 * `ackTimeoutMs`, or nothing heard for `heartbeatsMissedMax` heartbeat
 * intervals. A failure is published at once (state `failed` in shared memory)
 * and posted; the worker then stops sending until told to connect again.
 *
 * Messages in:  start {config}, connect {firstSeq, volumes}, stop.
 * Messages out: ready, connected {welcome}, codes {volume, first, count, tag, bytes},
 *               failed {error}, stopped.
 *
 * `volumes` is the hello's volume list (geometry and generation ids), sent
 * with every connect because a primary's generation can change between two.
 */
import { parentPort } from './port.ts';
import { Control, Journal, paddingMagic } from '../engine/journal.ts';
import { ChannelState, type ChannelConfig } from '../engine/channel-config.ts';
import { BlockmirrorError, errors } from '../engine/errors.ts';
import { newNonce, proof, proofMatches } from '../engine/auth.ts';
import { FrameDecoder, type Frame } from '../engine/frame-decoder.ts';
import { FrameEncoder } from '../engine/frame-encoder.ts';
import { alignedFrameBytes, FrameType, sealFrame } from '../engine/frame.ts';
import { instantiateKernel, type Kernel } from '../engine/kernel.ts';
import { connect, type Link } from '../engine/link.ts';
import { protocolVersion } from '../engine/secondary-session.ts';
import { decodeJson, encodeJson } from '../engine/json-payload.ts';

parentPort.onMessage((msg) => handle(msg));

/** Bytes handed to the socket in one call at most. */
const sendBatchBytesMax = 1024 * 1024;
/**
 * Bytes the socket may hold queued before the worker waits for it to drain.
 * Node's own threshold (16 KiB) would stall the drain loop after every
 * large frame; the queued bytes live in the ring anyway, so the queue costs
 * no extra memory.
 */
const socketQueuedBytesMax = 8 * 1024 * 1024;

let config: ChannelConfig;
let journal: Journal;
let kernel: Kernel;
let encoder: FrameEncoder;
let link: Link | undefined;
let state: number = ChannelState.idle;
/** Position in the ring of the next frame to send. */
let sendPos = 0;
/** Sequence number of the next record to send. */
let sendSeq = 0;
/** Sent, unacknowledged records: sequence number, ring position after it, time sent. FIFO. */
let sentSeq: Uint32Array;
let sentEnd: Int32Array;
let sentAt: Float64Array;
let sentHead = 0;
let sentCount = 0;
let blocked = false;
let waiting = false;
let lastHeard = 0;
let ticker: ReturnType<typeof setInterval> | undefined;
let attempt = 0;

function handle(msg: any): void {
  switch (msg.type) {
    case 'start':
      config = msg.config;
      journal = Journal.fromShared(config.journal);
      // Touch every page of the ring now, before the first connection (no record can be appended
      // until this worker reports connected, after this message): the first write to a page the
      // process never touched costs a page fault, on this kind of VM 15 to 20 us per 4 KiB, which
      // otherwise lands on the first pass of records through the ring (a resync's copies, say).
      journal.ring.fill(0);
      kernel = instantiateKernel(journal.memory);
      encoder = new FrameEncoder(config.payloadBytesMax);
      // One slot per 64 bytes of ring bounds the records in flight.
      const slots = Math.max(1024, journal.capacity / 64);
      sentSeq = new Uint32Array(slots);
      sentEnd = new Int32Array(slots);
      sentAt = new Float64Array(slots);
      parentPort.post({ type: 'started' });
      break;
    case 'connect':
      void open(msg.firstSeq, msg.volumes);
      break;
    case 'stop':
      state = ChannelState.stopped;
      publish();
      stopTimers();
      link?.destroy('channel stopped');
      parentPort.post({ type: 'stopped' });
      break;
  }
}

function publish(): void {
  const c = journal.control;
  Atomics.store(c, Control.state, state);
  Atomics.add(c, Control.changes, 1);
  Atomics.notify(c, Control.changes);
}

async function open(firstSeq: number, volumes: unknown[]): Promise<void> {
  if (state === ChannelState.stopped) return;
  const my = ++attempt;
  state = ChannelState.connecting;
  publish();
  sendPos = Atomics.load(journal.control, Control.tail);
  sendSeq = firstSeq >>> 0;
  sentCount = 0;
  sentHead = 0;
  blocked = false;
  let l: Link;
  try {
    l = await connect(config.url, config.connectTimeoutMs);
  } catch (e) {
    return fail(e as BlockmirrorError, my);
  }
  if (my !== attempt || state === ChannelState.stopped) return l.destroy('superseded');
  link = l;
  lastHeard = performance.now();
  const handshakeTimer = setTimeout(() => {
    if (handshake !== 'done') fail(errors.CONNECT(`Cannot mirror to ${config.url}: no handshake within ${config.connectTimeoutMs} ms`), my);
  }, config.connectTimeoutMs);
  const nonce = newNonce();
  let handshake: 'challenge' | 'welcome' | 'done' = 'challenge';
  let serverNonce: Uint8Array | undefined;
  const decoder = new FrameDecoder({
    payloadBytesMax: config.payloadBytesMax,
    onError: (e) => fail(e, my),
    onFrame: (frame: Frame) => {
      lastHeard = performance.now();
      const h = frame.header;
      if (frame.type === FrameType.refuse) {
        // Keep the peer's own code (BM_ERR_AUTH, BM_ERR_MISMATCH, ...): it says why.
        const code = /^BM_ERR_[A-Z_]+$/.test(String(h[1])) ? String(h[1]) : 'BM_ERR_REFUSED';
        return fail(new BlockmirrorError(code, `The secondary at ${config.url} refused: ${h[2]}`), my);
      }
      if (frame.type === FrameType.ping) return void l.send(encoder.encode([FrameType.pong, h[1]]));
      if (handshake === 'done' && frame.type === FrameType.codesReply) {
        // The payload is a view of the decoder's buffer: posting copies it.
        return parentPort.post({ type: 'codes', volume: h[1], first: h[2], count: h[3], tag: h[4], bytes: frame.payload.slice() });
      }
      if (frame.type === FrameType.pong) return;
      if (handshake === 'challenge' && frame.type === FrameType.challenge) {
        const c = h[1] as Record<string, unknown>;
        if (c.version !== protocolVersion) return fail(errors.MISMATCH(`Cannot mirror to ${config.url}: it speaks protocol ${String(c.version)}, this primary ${protocolVersion}`), my);
        if (!(c.nonce instanceof Uint8Array) || c.nonce.length !== nonce.length) return fail(errors.FRAME_HEADER('Cannot read challenge: bad nonce'), my);
        if (c.auth && !config.secret) return fail(errors.AUTH(`Cannot mirror to ${config.url}: it asks for a secret and this primary has none`), my);
        serverNonce = new Uint8Array(c.nonce);
        handshake = 'welcome';
        l.send(
          encoder.encode(
            [
              FrameType.hello,
              {
                version: protocolVersion,
                nonce,
                proof: config.secret ? proof(config.secret, 'primary', serverNonce, nonce) : undefined,
                seq: sendSeq,
                mode: config.mode,
              },
            ],
            encodeJson(volumes),
          ),
        );
        return;
      }
      if (handshake === 'welcome' && frame.type === FrameType.welcome) {
        const w = h[1] as Record<string, unknown>;
        if (config.secret && !proofMatches(proof(config.secret, 'secondary', nonce, serverNonce!), w.proof)) {
          return fail(errors.AUTH(`Cannot mirror to ${config.url}: the secondary could not prove it holds the secret`), my);
        }
        handshake = 'done';
        clearTimeout(handshakeTimer);
        state = ChannelState.connected;
        publish();
        let welcome: unknown;
        try {
          welcome = decodeJson(frame.payload);
        } catch (e) {
          return fail(e as BlockmirrorError, my);
        }
        if (!Array.isArray(welcome) || welcome.length !== volumes.length) {
          return fail(errors.FRAME_HEADER(`Cannot read the welcome of ${config.url}: its volume list does not match the hello`), my);
        }
        parentPort.post({ type: 'connected', welcome });
        startTimers(my);
        drain();
        return;
      }
      if (handshake === 'done' && frame.type === FrameType.ack) return onAck(h[1] as number);
      fail(errors.FRAME_TYPE(`Cannot accept frame type ${frame.type} from the secondary here`), my);
    },
  });
  l.onData((chunk) => decoder.feed(chunk));
  l.onClose((reason) => {
    clearTimeout(handshakeTimer);
    fail(errors.LINK_LOST(`Lost the link to ${config.url}: ${reason}`), my);
  });
  l.onDrain(() => {
    blocked = false;
    drain();
  });
}

function onAck(seq: number): void {
  let end = -1;
  while (sentCount > 0 && ((seq - sentSeq[sentHead]!) | 0) >= 0) {
    end = sentEnd[sentHead]!;
    sentHead = (sentHead + 1) % sentSeq.length;
    sentCount--;
  }
  if (end === -1) return;
  journal.release(end);
  Atomics.store(journal.control, Control.ackedSeq, seq | 0);
  Atomics.add(journal.control, Control.changes, 1);
  Atomics.notify(journal.control, Control.changes);
}

/** Sends every committed frame not yet sent, then sleeps on the doorbell. */
function drain(): void {
  if (state !== ChannelState.connected || blocked || !link) return;
  const c = journal.control;
  const view = journal.ringView;
  const mask = journal.capacity - 1;
  for (;;) {
    const head = Atomics.load(c, Control.head);
    let batchStart = -1;
    let batchEnd = 0;
    while (sendPos !== head && sentCount < sentSeq.length) {
      const at = sendPos & mask;
      if (view.getUint32(at, true) === paddingMagic) {
        if (batchStart >= 0 && !send(batchStart, batchEnd)) return;
        batchStart = -1;
        sendPos = (sendPos + (journal.capacity - at)) | 0;
        continue;
      }
      // A record that ended exactly at the end of the ring is followed by one at 0, with no padding
      // between: the open batch ends there (one send is one contiguous range of the ring).
      if (batchStart >= 0 && at !== batchEnd) {
        if (!send(batchStart, batchEnd)) return;
        batchStart = -1;
      }
      const length = alignedFrameBytes(view.getUint32(at + 4, true), view.getUint32(at + 8, true));
      sealFrame(view, at, (from, n) => kernel.xxh3(journal.base + from, n));
      const slot = (sentHead + sentCount) % sentSeq.length;
      sentSeq[slot] = sendSeq;
      sentEnd[slot] = (sendPos + length) | 0;
      sentAt[slot] = performance.now();
      sentCount++;
      sendSeq = (sendSeq + 1) >>> 0;
      if (batchStart < 0) batchStart = at;
      batchEnd = at + length;
      sendPos = (sendPos + length) | 0;
      if (batchEnd - batchStart >= sendBatchBytesMax) {
        if (!send(batchStart, batchEnd)) return;
        batchStart = -1;
      }
    }
    if (batchStart >= 0 && !send(batchStart, batchEnd)) return;
    if (sentCount >= sentSeq.length) return; // resumes on the next acknowledgement
    // Sleep on the doorbell; the producer notifies only while `sleeping` is set.
    Atomics.store(c, Control.sleeping, 1);
    const bell = Atomics.load(c, Control.doorbell);
    if (Atomics.load(c, Control.head) !== sendPos) {
      Atomics.store(c, Control.sleeping, 0);
      continue;
    }
    if (waiting) return;
    waiting = true;
    const result = Atomics.waitAsync(c, Control.doorbell, bell);
    const wake = () => {
      waiting = false;
      Atomics.store(c, Control.sleeping, 0);
      drain();
    };
    if (result.async) result.value.then(wake);
    else queueMicrotask(wake);
    return;
  }
}

/** Hands ring bytes [from, to) to the socket. False when it asked us to wait for drain. */
function send(from: number, to: number): boolean {
  link!.send(journal.ring.subarray(from, to));
  if (link!.buffered() > socketQueuedBytesMax) blocked = true;
  return !blocked;
}

function startTimers(my: number): void {
  stopTimers();
  ticker = setInterval(() => {
    if (my !== attempt || state !== ChannelState.connected) return;
    const now = performance.now();
    if (now - lastHeard > config.heartbeatMs * config.heartbeatsMissedMax) {
      return fail(errors.HEARTBEAT(`Lost the link to ${config.url}: nothing heard for ${Math.round(now - lastHeard)} ms`), my);
    }
    if (sentCount > 0 && now - sentAt[sentHead]! > config.ackTimeoutMs) {
      return fail(errors.ACK_TIMEOUT(`Lost the link to ${config.url}: record ${sentSeq[sentHead]} unacknowledged after ${config.ackTimeoutMs} ms`), my);
    }
    link?.send(encoder.encode([FrameType.ping, Math.round(now)]));
  }, config.heartbeatMs);
}

function stopTimers(): void {
  if (ticker) clearInterval(ticker);
  ticker = undefined;
}

function fail(error: BlockmirrorError, my: number): void {
  if (my !== attempt || state === ChannelState.failed || state === ChannelState.stopped) return;
  state = ChannelState.failed;
  stopTimers();
  link?.destroy(error.code);
  link = undefined;
  sentCount = 0;
  publish();
  parentPort.post({ type: 'failed', error: { code: error.code, message: error.message } });
}

parentPort.post({ type: 'ready' });
