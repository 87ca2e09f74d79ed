/**
 * The server side of ws:// links: the WebSocket protocol (RFC 6455) spoken
 * directly on an accepted node:net socket, so that a ws:// connection reads
 * like a tcp:// one. On Node it reads into one reused buffer, and the rest
 * of a long mirror frame is read straight into the decoder's staging area;
 * no buffer is made per read or per message. (The `ws` library, still used
 * by the client side, makes a new buffer for every 64 KiB read and another
 * to join each message: at a gigabyte a second that garbage kept V8
 * collecting about 20 times a second on the secondary.)
 *
 * What it speaks:
 * - the opening handshake: an HTTP/1.1 GET with `Upgrade: websocket`,
 *   `Connection: Upgrade`, a Host, a 16-byte `Sec-WebSocket-Key` and
 *   version 13. Anything else gets an HTTP error status and is closed. No
 *   extension or subprotocol is negotiated.
 * - binary data frames and their continuations. Their payloads form one byte
 *   stream: message boundaries mean nothing to the mirror protocol.
 * - ping (answered with pong), pong, and close (answered with a close of
 *   status 1000).
 *
 * Client frames must be masked, as the RFC requires. An all-zero mask (what
 * our client sends: see link.ts) costs nothing; any other is removed in
 * place. A violation closes the connection with the RFC's status code
 * (1002, 1003, 1007, 1009) and the link's close reason starts with
 * `BM_ERR_WEBSOCKET`.
 */
import { Buffer } from 'node:buffer';
import { createHash } from 'node:crypto';
import type net from 'node:net';
import { errors } from './errors.ts';
import type { Link } from './link.ts';

const acceptGuid = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
/** Longest opening handshake accepted. */
export const handshakeBytesMax = 8 * 1024;
const handshakeTimeoutMs = 10_000;
const controlPayloadMax = 125;

export const Opcode = { continuation: 0, text: 1, binary: 2, close: 8, ping: 9, pong: 10 } as const;

/** Close status codes this server sends (RFC 6455, section 7.4.1). */
export const CloseCode = { normal: 1000, protocol: 1002, unsupported: 1003, badData: 1007, tooBig: 1009 } as const;

/**
 * The status to answer a client's close frame with: 1000, unless its
 * payload is not a valid close (one byte; a status an endpoint may not send;
 * a reason that is not UTF-8), then 1002 or 1007 with what was wrong.
 */
export function closeReply(payload: Uint8Array): { code: number; problem?: string } {
  if (payload.length === 0) return { code: CloseCode.normal };
  if (payload.length === 1) return { code: CloseCode.protocol, problem: 'a close frame with a 1-byte payload' };
  const status = (payload[0]! << 8) | payload[1]!;
  const sendable = (status >= 1000 && status <= 1003) || (status >= 1007 && status <= 1014) || (status >= 3000 && status <= 4999);
  if (!sendable) return { code: CloseCode.protocol, problem: `a close frame with status ${status}, which no endpoint may send` };
  try {
    new TextDecoder('utf-8', { fatal: true }).decode(payload.subarray(2));
  } catch {
    return { code: CloseCode.badData, problem: 'a close reason that is not UTF-8' };
  }
  return { code: CloseCode.normal };
}

/** The `Sec-WebSocket-Accept` value answering `key`. */
export function acceptKey(key: string): string {
  return createHash('sha1').update(key + acceptGuid).digest('base64');
}

/**
 * Checks an opening handshake (the bytes before the blank line). Returns the
 * client's key, or the HTTP status and a one-line reason to refuse it with.
 */
export function parseHandshake(text: string): { key: string } | { status: number; reason: string } {
  const lines = text.split('\r\n');
  const request = /^GET (\S+) HTTP\/(\d+)\.(\d+)$/.exec(lines[0] ?? '');
  if (!request) return { status: 400, reason: 'not an HTTP GET request line' };
  if (Number(request[2]) < 1 || (Number(request[2]) === 1 && Number(request[3]) < 1)) return { status: 400, reason: 'HTTP/1.1 or later is required' };
  const headers = new Map<string, string>();
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    if (colon <= 0) return { status: 400, reason: 'a malformed header line' };
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    headers.set(name, headers.has(name) ? `${headers.get(name)}, ${value}` : value);
  }
  const tokens = (name: string) => (headers.get(name) ?? '').toLowerCase().split(',').map((t) => t.trim());
  if (!headers.get('host')) return { status: 400, reason: 'no Host header' };
  if (!tokens('upgrade').includes('websocket')) return { status: 400, reason: 'not a WebSocket upgrade (Upgrade: websocket is missing)' };
  if (!tokens('connection').includes('upgrade')) return { status: 400, reason: 'Connection: Upgrade is missing' };
  if (headers.get('sec-websocket-version') !== '13') return { status: 426, reason: 'WebSocket version 13 is required' };
  const key = headers.get('sec-websocket-key') ?? '';
  if (!/^[A-Za-z0-9+/]{22}==$/.test(key)) return { status: 400, reason: 'Sec-WebSocket-Key is not 16 bytes in base64' };
  return { key };
}

export interface FrameReaderOptions {
  /** Largest data frame accepted; a longer one is refused from its header (1009). */
  frameBytesMax: number;
  /** Payload bytes of data frames, in order: a view valid only during the call. */
  onData(chunk: Uint8Array): void;
  /** A whole control frame (close, ping or pong) and its payload, valid only during the call. */
  onControl(opcode: number, payload: Uint8Array): void;
  /** The first violation: the reader takes nothing more. */
  onError(closeCode: number, message: string): void;
}

/**
 * Parses the frames a client sends, fed with whatever chunks the socket
 * delivers. Data payloads are handed on as views of the chunk (unmasked in
 * place when the mask is not zero), never gathered.
 */
export class FrameReader {
  private readonly head = new Uint8Array(14);
  private headHave = 0;
  private headNeed = 2;
  private inPayload = false;
  /** Payload bytes the current frame still has. */
  private left = 0;
  private opcode = 0;
  private fin = false;
  private readonly mask = new Uint8Array(4);
  private maskZero = true;
  private maskAt = 0;
  /** A binary message was started by a frame without FIN: only continuations may follow. */
  private inMessage = false;
  private readonly control = new Uint8Array(controlPayloadMax);
  private controlHave = 0;
  private stopped = false;

  constructor(private readonly options: FrameReaderOptions) {}

  /** Payload bytes left in the data frame being read (0 between frames or in a control frame): the most one steered read may take. */
  get dataLeft(): number {
    return this.inPayload && this.opcode < 8 ? this.left : 0;
  }

  /** Stops for good: nothing fed later is looked at. */
  stop(): void {
    this.stopped = true;
  }

  feed(chunk: Uint8Array): void {
    let at = 0;
    while (at < chunk.length && !this.stopped) {
      if (!this.inPayload) {
        const n = Math.min(this.headNeed - this.headHave, chunk.length - at);
        this.head.set(chunk.subarray(at, at + n), this.headHave);
        this.headHave += n;
        at += n;
        if (this.headHave === this.headNeed) this.parseHead();
        continue;
      }
      const n = Math.min(this.left, chunk.length - at);
      const part = chunk.subarray(at, at + n);
      if (!this.maskZero) unmask(part, this.mask, this.maskAt);
      this.maskAt = (this.maskAt + n) & 3;
      this.left -= n;
      at += n;
      if (this.opcode >= 8) {
        this.control.set(part, this.controlHave);
        this.controlHave += n;
      } else {
        this.options.onData(part);
      }
      if (this.left === 0) this.endFrame();
    }
  }

  private fail(closeCode: number, message: string): void {
    this.stopped = true;
    this.options.onError(closeCode, message);
  }

  /** Called whenever `headNeed` bytes are in: either asks for the rest of the header or starts the payload. */
  private parseHead(): void {
    const h = this.head;
    const masked = (h[1]! & 0x80) !== 0;
    const len7 = h[1]! & 0x7f;
    const need = 2 + (len7 === 126 ? 2 : len7 === 127 ? 8 : 0) + (masked ? 4 : 0);
    if (this.headHave < need) {
      this.headNeed = need;
      return;
    }
    this.fin = (h[0]! & 0x80) !== 0;
    this.opcode = h[0]! & 0x0f;
    if ((h[0]! & 0x70) !== 0) return this.fail(CloseCode.protocol, 'a frame with reserved bits set (no extension was negotiated)');
    if (!masked) return this.fail(CloseCode.protocol, 'an unmasked frame from a client');
    let length = len7;
    if (len7 === 126) length = (h[2]! << 8) | h[3]!;
    else if (len7 === 127) {
      const high = ((h[2]! << 24) | (h[3]! << 16) | (h[4]! << 8) | h[5]!) >>> 0;
      const low = ((h[6]! << 24) | (h[7]! << 16) | (h[8]! << 8) | h[9]!) >>> 0;
      if (high & 0x80000000) return this.fail(CloseCode.protocol, 'a 64-bit frame length with its top bit set');
      if (high >= 0x200000) return this.fail(CloseCode.tooBig, 'a frame length over 2^53 bytes');
      length = high * 2 ** 32 + low;
    }
    const op = this.opcode;
    if (op >= 8) {
      if (op !== Opcode.close && op !== Opcode.ping && op !== Opcode.pong) return this.fail(CloseCode.protocol, `an unknown control opcode ${op}`);
      if (!this.fin || length > controlPayloadMax) return this.fail(CloseCode.protocol, 'a fragmented or over-long control frame');
    } else if (op === Opcode.text) {
      return this.fail(CloseCode.unsupported, 'a text frame: this endpoint takes binary frames only');
    } else if (op === Opcode.binary) {
      if (this.inMessage) return this.fail(CloseCode.protocol, 'a new message before the last one ended');
    } else if (op === Opcode.continuation) {
      if (!this.inMessage) return this.fail(CloseCode.protocol, 'a continuation frame with no message open');
    } else {
      return this.fail(CloseCode.protocol, `an unknown data opcode ${op}`);
    }
    if (op < 8) {
      if (length > this.options.frameBytesMax) return this.fail(CloseCode.tooBig, `a frame of ${length} bytes, over the limit of ${this.options.frameBytesMax}`);
      this.inMessage = !this.fin;
    }
    const m = need - 4;
    this.mask.set(h.subarray(m, m + 4));
    this.maskZero = (h[m]! | h[m + 1]! | h[m + 2]! | h[m + 3]!) === 0;
    this.maskAt = 0;
    this.left = length;
    this.controlHave = 0;
    this.inPayload = true;
    if (length === 0) this.endFrame();
  }

  private endFrame(): void {
    this.inPayload = false;
    this.headHave = 0;
    this.headNeed = 2;
    if (this.opcode >= 8) this.options.onControl(this.opcode, this.control.subarray(0, this.controlHave));
  }
}

function unmask(bytes: Uint8Array, mask: Uint8Array, from: number): void {
  for (let i = 0; i < bytes.length; i++) bytes[i]! ^= mask[(from + i) & 3]!;
}

/** A server frame (never masked) header for a payload of `length` bytes. */
export function frameHead(opcode: number, length: number): Uint8Array {
  if (length < 126) return Uint8Array.of(0x80 | opcode, length);
  if (length < 65536) return Uint8Array.of(0x80 | opcode, 126, length >>> 8, length & 0xff);
  const head = new Uint8Array(10);
  head[0] = 0x80 | opcode;
  head[1] = 127;
  new DataView(head.buffer).setUint32(2, Math.floor(length / 2 ** 32));
  new DataView(head.buffer).setUint32(6, length >>> 0);
  return head;
}

/**
 * Where the next read goes: `readBuffer`, unless the consumer's `steer`
 * (see `Link.steer`) wants it elsewhere while `dataLeft` bytes of a data
 * frame's payload are still to come. A read into other memory (the rest of
 * a long mirror frame, straight into the decoder's staging area) is cut to
 * those bytes, so that the next frame header is read here and never lands
 * among the consumer's bytes. A read within `readBuffer` may run on.
 */
export function readTarget(readBuffer: Uint8Array, dataLeft: number, steer: ((readArea: Uint8Array) => Uint8Array | undefined) | undefined): Uint8Array {
  const target = dataLeft > 0 && steer ? steer(readBuffer) : undefined;
  if (!target) return readBuffer;
  return target.buffer === readBuffer.buffer || target.length <= dataLeft ? target : target.subarray(0, dataLeft);
}

const statusText: Record<number, string> = { 400: 'Bad Request', 426: 'Upgrade Required', 503: 'Service Unavailable' };
/** Pongs are not queued while more than this is waiting to be sent. */
const pongQueuedBytesMax = 64 * 1024;

/** Payloads up to this size are sent with their frame header in one new buffer; longer ones as two writes under cork (one system call). */
const joinBytesMax = 16 * 1024;

export interface ServeOptions {
  frameBytesMax: number;
  /**
   * Adopts the accepted socket so that it reads into reused memory (see
   * `adoptReadBuffer` in link.ts): gets the function that picks each read's
   * target and the function to deliver each read to; returns the socket to
   * use and how to end it, or undefined to read the accepted socket as it is.
   */
  adopt?: (next: () => Uint8Array, deliver: (chunk: Uint8Array) => void) => { socket: net.Socket; end: () => void } | undefined;
  /**
   * Makes the reused buffer that an adopted socket reads into once its
   * handshake is accepted (until then it reads into a small one, so that a
   * connection that never completes a handshake costs little).
   */
  readBuffer?: () => Uint8Array;
}

/**
 * Serves one accepted connection: the opening handshake, then a Link whose
 * bytes travel in WebSocket frames. `onLink` is called once the handshake
 * is answered; a refused handshake never makes a link.
 */
export function serveWebSocket(accepted: net.Socket, options: ServeOptions, onLink: (link: Link) => void): net.Socket {
  let steer: ((readArea: Uint8Array) => Uint8Array | undefined) | undefined;
  let open = false;
  const handshakeArea = new Uint8Array(4096);
  let readBuffer: Uint8Array | undefined;
  // Before each read: the rest of a long mirror frame goes straight where the decoder gathers it,
  // but never past the end of the WebSocket frame it travels in (its next header must be read here).
  const next = () => (readBuffer ? readTarget(readBuffer, open ? reader.dataLeft : 0, steer) : handshakeArea);
  const adopted = options.adopt?.(next, (chunk) => onBytes(chunk));
  const socket = adopted ? adopted.socket : accepted;
  if (!adopted) socket.on('data', (chunk: Uint8Array) => onBytes(chunk));
  socket.setNoDelay(true);
  const remote = `${socket.remoteAddress}:${socket.remotePort}`;

  let handshake: Uint8Array | undefined = new Uint8Array(0);
  let listener: ((chunk: Uint8Array) => void) | undefined;
  const early: Uint8Array[] = [];
  const closeListeners: Array<(reason: string) => void> = [];
  let closed = false;
  let reason = 'closed by peer';
  let closeSent = false;
  const timer = setTimeout(() => socket.destroy(), handshakeTimeoutMs);

  const write = (opcode: number, payload: Uint8Array): boolean => {
    const head = frameHead(opcode, payload.length);
    if (payload.length <= joinBytesMax) {
      const out = new Uint8Array(head.length + payload.length);
      out.set(head);
      out.set(payload, head.length);
      return socket.write(out);
    }
    socket.cork();
    socket.write(head);
    const ok = socket.write(payload);
    socket.uncork();
    return ok;
  };
  const sendClose = (code: number) => {
    if (closeSent || socket.destroyed) return;
    closeSent = true;
    write(Opcode.close, Uint8Array.of(code >>> 8, code & 0xff));
  };
  const reader = new FrameReader({
    frameBytesMax: options.frameBytesMax,
    onData: (chunk) => (listener ? listener(chunk) : early.push(chunk.slice())),
    onControl: (opcode, payload) => {
      if (opcode === Opcode.ping) {
        // A client that sends pings but never reads gets no more pongs queued once its replies pile up.
        if (!closeSent && socket.writableLength < pongQueuedBytesMax) write(Opcode.pong, payload);
      } else if (opcode === Opcode.close) {
        reader.stop();
        const reply = closeReply(payload);
        if (reply.problem) reason = closeReason(errors.WEBSOCKET(`${reply.problem} (closed with ${reply.code})`));
        sendClose(reply.code);
        end();
      }
    },
    onError: (code, message) => {
      reason = closeReason(errors.WEBSOCKET(`${message} (closed with ${code})`));
      sendClose(code);
      end();
    },
  });
  const end = () => {
    if (adopted) adopted.end();
    else socket.end();
    setTimeout(() => socket.destroy(), 1000).unref?.();
  };

  const refuse = (status: number, why: string) => {
    clearTimeout(timer);
    handshake = undefined;
    const extra = status === 426 ? 'Sec-WebSocket-Version: 13\r\n' : '';
    socket.end(`HTTP/1.1 ${status} ${statusText[status] ?? 'Bad Request'}\r\nConnection: close\r\n${extra}Content-Type: text/plain\r\nContent-Length: ${why.length + 1}\r\n\r\n${why}\n`);
    setTimeout(() => socket.destroy(), 1000).unref?.();
  };

  function onBytes(chunk: Uint8Array): void {
    if (open) return reader.feed(chunk);
    if (!handshake) return; // refused: ignore whatever else comes
    const joined = new Uint8Array(handshake.length + chunk.length);
    joined.set(handshake);
    joined.set(chunk, handshake.length);
    const blank = indexOfBlankLine(joined);
    if (blank < 0) {
      if (joined.length > handshakeBytesMax) refuse(400, `an opening handshake longer than ${handshakeBytesMax} bytes`);
      else handshake = joined;
      return;
    }
    const parsed = parseHandshake(Buffer.from(joined.buffer, joined.byteOffset, blank).toString('latin1'));
    if ('status' in parsed) return refuse(parsed.status, parsed.reason);
    if (adopted && options.readBuffer) {
      try {
        readBuffer = options.readBuffer();
      } catch (e) {
        return refuse(503, `no memory for a read buffer: ${(e as Error).message}`);
      }
    }
    clearTimeout(timer);
    handshake = undefined;
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${acceptKey(parsed.key)}\r\n\r\n`);
    open = true;
    onLink(link);
    const rest = joined.subarray(blank + 4);
    if (rest.length) reader.feed(rest);
  }

  socket.on('error', (e: NodeJS.ErrnoException) => {
    if (!reason.startsWith('BM_ERR_WEBSOCKET')) reason = e.code ?? e.message;
  });
  socket.on('close', () => {
    clearTimeout(timer);
    if (closed) return;
    closed = true;
    if (open) for (const l of closeListeners) l(reason);
  });

  const link: Link = {
    scheme: 'ws',
    remote,
    send: (bytes) => !closed && !closeSent && write(Opcode.binary, bytes),
    buffered: () => socket.writableLength,
    onData: (l) => {
      listener = l;
      for (const chunk of early.splice(0)) l(chunk);
    },
    steer: adopted && options.readBuffer ? (f) => void (steer = f) : undefined,
    onClose: (l) => {
      if (closed) l(reason);
      else closeListeners.push(l);
    },
    onDrain: (l) => void socket.on('drain', l),
    pause: () => void socket.pause(),
    resume: () => void socket.resume(),
    end: () => {
      sendClose(CloseCode.normal);
      end();
    },
    destroy: (why) => {
      if (why) reason = why;
      socket.destroy();
    },
  };
  socket.resume();
  return socket;
}

const closeReason = (e: { code: string; message: string }) => `${e.code}: ${e.message}`;

function indexOfBlankLine(bytes: Uint8Array): number {
  for (let i = 3; i < bytes.length; i++) {
    if (bytes[i] === 10 && bytes[i - 1] === 13 && bytes[i - 2] === 10 && bytes[i - 3] === 13) return i - 3;
  }
  return -1;
}
