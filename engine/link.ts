/**
 * One byte stream between two nodes, over tcp:// (node:net) or ws://,
 * behind one small interface so that the mirror and control protocols never
 * care which.
 *
 * TCP sockets get `setNoDelay(true)` (a frame is always written whole, in one
 * call, so Nagle would only add delay). A ws:// server is our own WebSocket
 * server side on node:net (ws-server.ts), which reads like tcp:// does; a
 * ws:// client is the `ws` library (Bun's own WebSocket on Bun), with
 * per-message deflate off and an all-zero mask: peers are trusted (and
 * authenticated by the handshake), and masking in JavaScript caps a Node
 * client far below the link's speed. A `ws` client has no drain event, so
 * `onDrain` is emulated there by polling `bufferedAmount`.
 */
import net from 'node:net';
import WebSocket from 'ws';
import { serveWebSocket } from './ws-server.ts';
import { errors } from './errors.ts';
import { runtime } from './runtime.ts';

export type Scheme = 'tcp' | 'ws';

export interface Endpoint {
  scheme: Scheme;
  host: string;
  port: number;
  url: string;
}

export function parseEndpoint(url: unknown, what = 'URL'): Endpoint {
  const m = typeof url === 'string' ? /^(tcp|ws):\/\/(\[[^\]]+\]|[^:/\s]+):(\d{1,5})\/?$/.exec(url) : null;
  const port = m ? Number(m[3]) : 0;
  if (!m || port < 0 || port > 65535) {
    throw errors.INVALID_ARGUMENT(`Cannot use ${what} ${JSON.stringify(url)}: write tcp://HOST:PORT or ws://HOST:PORT`);
  }
  const host = m[2]!.replace(/^\[|\]$/g, '');
  return { scheme: m[1] as Scheme, host, port, url: url as string };
}

export interface Link {
  readonly scheme: Scheme;
  readonly remote: string;
  /** Queues bytes whole. Returns false when the caller should wait for `onDrain`. */
  send(bytes: Uint8Array): boolean;
  /** Bytes queued but not yet handed to the OS. */
  buffered(): number;
  onData(listener: (chunk: Uint8Array) => void): void;
  /**
   * Where the next reads land, on a link that reads into a reused buffer
   * (`ListenOptions.readBuffer`, Node's tcp:// and ws://): `next` is asked before each
   * read, with the link's own buffer, and returns the bytes to read into
   * (the read fills at most all of them: a view of that buffer, or other
   * memory), or undefined for all of the link's own buffer. The chunk handed
   * to `onData` is then a view of what `next` returned. Other links have no
   * `steer`: their reads land where the runtime puts them.
   */
  steer?(next: (readArea: Uint8Array) => Uint8Array | undefined): void;
  /** Adds a listener called once, however the link ended (at once if it already has). Every listener added is called. */
  onClose(listener: (reason: string) => void): void;
  onDrain(listener: () => void): void;
  pause(): void;
  resume(): void;
  /** Ends the link after what is queued has been sent. */
  end(): void;
  /** Ends the link now, dropping anything queued. */
  destroy(reason?: string): void;
}

/** Bytes a WebSocket may queue before `send` reports backpressure. */
export const wsBufferedBytesMax = 8 * 1024 * 1024;
const wsDrainPollMs = 1;

export interface Listener {
  readonly endpoint: Endpoint;
  /** The port actually bound (useful with port 0). */
  readonly port: number;
  close(): Promise<void>;
}

export interface ListenOptions {
  payloadBytesMax?: number;
  /**
   * Makes one reused read buffer for each accepted tcp:// or ws:// connection, on
   * Node (elsewhere, and without it, the runtime gives a fresh buffer per
   * read). A chunk handed to `onData` is then a view of that buffer, valid
   * only during the call: only a consumer that copies what it keeps before
   * returning may ask for it.
   */
  readBuffer?: () => Uint8Array;
}

export async function listen(url: string, onLink: (link: Link) => void, options: ListenOptions = {}): Promise<Listener> {
  const endpoint = parseEndpoint(url, 'listen URL');
  if (endpoint.scheme === 'tcp') {
    const readBuffer = runtime === 'node' ? options.readBuffer : undefined;
    const server = net.createServer({ pauseOnConnect: readBuffer !== undefined }, (socket) => {
      let area: Uint8Array | undefined;
      try {
        area = readBuffer?.();
      } catch {
        // No memory for this connection's read buffer (a flood of connections): drop it, not the process.
        socket.destroy();
        return;
      }
      onLink(area ? readerLink(server, socket, area) : tcpLink(socket));
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (e: NodeJS.ErrnoException) => reject(errors.LISTEN(`Cannot listen on ${url}: ${e.code ?? e.message}`)));
      server.listen(endpoint.port, endpoint.host, () => resolve());
    });
    return {
      endpoint,
      port: (server.address() as net.AddressInfo).port,
      close: () => new Promise((resolve) => server.close(() => resolve())),
    };
  }
  // ws://: our own WebSocket server side (ws-server.ts), reading like tcp:// does.
  const readBuffer = runtime === 'node' ? options.readBuffer : undefined;
  const frameBytesMax = (options.payloadBytesMax ?? 64 * 1024 * 1024) + 8192;
  const sockets = new Set<net.Socket>();
  const server = net.createServer({ pauseOnConnect: readBuffer !== undefined }, (accepted) => {
    const socket = serveWebSocket(accepted, { frameBytesMax, readBuffer, adopt: readBuffer && ((next, deliver) => adoptReadBuffer(server, accepted, next, deliver)) }, onLink);
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) => reject(errors.LISTEN(`Cannot listen on ${url}: ${e.code ?? e.message}`)));
    server.listen(endpoint.port, endpoint.host, () => resolve());
  });
  return {
    endpoint,
    port: (server.address() as net.AddressInfo).port,
    close: () =>
      new Promise((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

/** Connects to `url`; rejects with BM_ERR_CONNECT after `timeoutMs`. */
export function connect(url: string, timeoutMs = 5000): Promise<Link> {
  const endpoint = parseEndpoint(url, 'mirror URL');
  return new Promise((resolve, reject) => {
    let done = false;
    const finish = (error: Error | undefined, link?: Link) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (error) reject(error);
      else resolve(link!);
    };
    const timer = setTimeout(() => {
      finish(errors.CONNECT(`Cannot connect to ${url}: no answer within ${timeoutMs} ms`));
      cancel();
    }, timeoutMs);
    let cancel = () => {};
    if (endpoint.scheme === 'tcp') {
      const socket = net.connect({ host: endpoint.host, port: endpoint.port });
      cancel = () => socket.destroy();
      socket.once('connect', () => finish(undefined, tcpLink(socket)));
      socket.once('error', (e: NodeJS.ErrnoException) => finish(errors.CONNECT(`Cannot connect to ${url}: ${e.code ?? e.message}`)));
    } else {
      const socket = new WebSocket(`ws://${endpoint.host.includes(':') ? `[${endpoint.host}]` : endpoint.host}:${endpoint.port}/`, {
        perMessageDeflate: false,
        // Trusted peers: an all-zero mask spares the per-byte masking work.
        generateMask: (mask: Buffer) => mask.fill(0),
      } as WebSocket.ClientOptions);
      cancel = () => socket.terminate();
      socket.once('open', () => finish(undefined, wsLink(socket, url)));
      socket.once('error', (e: NodeJS.ErrnoException) => finish(errors.CONNECT(`Cannot connect to ${url}: ${e.code ?? e.message}`)));
    }
  });
}

/**
 * An accepted socket (from a server made with `pauseOnConnect`, before its
 * first read) re-wrapped to read into one reused `buffer` (Node's `onread`),
 * so that a busy connection does not allocate, fault in and collect a fresh
 * 64 KiB buffer for every read. Node offers `onread` only when a socket is
 * constructed, so the accepted one hands its handle to a new socket, which
 * keeps the server's connection count. `deliver` gets each read as a view of
 * `buffer`, valid only during the call. `buffer` may be a function: it is
 * then asked for the buffer of each read, just before the read.
 *
 * With its own buffer a paused socket really stops reading (a plain one reads
 * on into its queue), so it would not see the peer's close: the returned
 * `end` reads again before ending. Node only; undefined (use `accepted` as
 * it is, resumed) where the socket has no handle to hand over.
 */
export function adoptReadBuffer(server: net.Server, accepted: net.Socket, buffer: Uint8Array | (() => Uint8Array), deliver: (chunk: Uint8Array) => void): { socket: net.Socket; end: () => void } | undefined {
  const internal = accepted as unknown as { _handle: unknown };
  const handle = internal._handle;
  if (!handle) return undefined;
  internal._handle = null;
  const socket = new net.Socket({
    handle,
    readable: true,
    writable: true,
    onread: {
      buffer,
      callback: (n: number, buf: Uint8Array) => {
        deliver(buf.subarray(0, n));
        return true;
      },
    },
  } as net.SocketConstructorOpts);
  (socket as unknown as { _server: unknown; server: unknown })._server = server;
  (socket as unknown as { server: unknown }).server = server;
  return {
    socket,
    end: () => {
      socket.resume();
      socket.end();
    },
  };
}

function readerLink(server: net.Server, accepted: net.Socket, buffer: Uint8Array): Link {
  let listener: ((chunk: Uint8Array) => void) | undefined;
  let steer: ((readArea: Uint8Array) => Uint8Array | undefined) | undefined;
  const early: Uint8Array[] = [];
  // Node asks for the buffer of each read just before it (a function `onread.buffer`), so a
  // consumer can have the rest of a long frame read straight to where it gathers frames.
  const next = () => (steer && steer(buffer)) || buffer;
  // Before onData is called (never in practice: the session listens at once) keep a copy.
  const adopted = adoptReadBuffer(server, accepted, next, (chunk) => (listener ? listener(chunk) : early.push(chunk.slice())));
  if (!adopted) {
    accepted.resume();
    return tcpLink(accepted);
  }
  const { socket, end } = adopted;
  const link = tcpLink(socket, (l) => {
    listener = l;
    for (const chunk of early.splice(0)) l(chunk);
  });
  socket.resume();
  return { ...link, end, steer: (f) => void (steer = f) };
}

function tcpLink(socket: net.Socket, onData: (listener: (chunk: Uint8Array) => void) => void = (l) => void socket.on('data', l)): Link {
  socket.setNoDelay(true);
  const remote = `${socket.remoteAddress}:${socket.remotePort}`;
  const closeListeners: Array<(reason: string) => void> = [];
  let closed = false;
  let reason = 'closed by peer';
  const close = () => {
    if (closed) return;
    closed = true;
    for (const l of closeListeners) l(reason);
  };
  socket.on('error', (e: NodeJS.ErrnoException) => {
    reason = e.code ?? e.message;
  });
  socket.on('close', close);
  return {
    scheme: 'tcp',
    remote,
    send: (bytes) => !closed && socket.write(bytes),
    buffered: () => socket.writableLength,
    onData,
    onClose: (l) => {
      if (closed) l(reason);
      else closeListeners.push(l);
    },
    onDrain: (l) => void socket.on('drain', l),
    pause: () => void socket.pause(),
    resume: () => void socket.resume(),
    end: () => void socket.end(),
    destroy: (why) => {
      if (why) reason = why;
      socket.destroy();
    },
  };
}

function wsLink(socket: WebSocket, remote: string): Link {
  socket.binaryType = 'nodebuffer';
  // ws emits messages as soon as it parses them, possibly in the same tick
  // as 'open': listen at once and keep what comes before onData is called.
  const early: Uint8Array[] = [];
  let dataListener: ((chunk: Uint8Array) => void) | undefined;
  const deliver = (chunk: Uint8Array) => (dataListener ? dataListener(chunk) : early.push(chunk));
  socket.on('message', (data: Buffer | ArrayBuffer | Buffer[]) => {
    if (Array.isArray(data)) for (const d of data) deliver(d);
    else deliver(data instanceof ArrayBuffer ? new Uint8Array(data) : data);
  });
  const closeListeners: Array<(reason: string) => void> = [];
  let closed = false;
  let reason = 'closed by peer';
  let drainTimer: ReturnType<typeof setInterval> | undefined;
  const drainListeners: Array<() => void> = [];
  const close = () => {
    if (closed) return;
    closed = true;
    if (drainTimer) clearInterval(drainTimer);
    for (const l of closeListeners) l(reason);
  };
  socket.on('error', (e: NodeJS.ErrnoException) => {
    reason = e.code ?? e.message;
  });
  socket.on('close', close);
  const watchDrain = () => {
    if (drainTimer || closed) return;
    drainTimer = setInterval(() => {
      if (socket.bufferedAmount > wsBufferedBytesMax / 2) return;
      clearInterval(drainTimer);
      drainTimer = undefined;
      for (const l of drainListeners) l();
    }, wsDrainPollMs);
  };
  return {
    scheme: 'ws',
    remote,
    send: (bytes) => {
      if (closed) return false;
      socket.send(bytes, { binary: true });
      if (socket.bufferedAmount < wsBufferedBytesMax) return true;
      watchDrain();
      return false;
    },
    buffered: () => socket.bufferedAmount,
    onData: (l) => {
      dataListener = l;
      for (const chunk of early.splice(0)) l(chunk);
    },
    onClose: (l) => {
      if (closed) l(reason);
      else closeListeners.push(l);
    },
    onDrain: (l) => void drainListeners.push(l),
    pause: () => socket.pause(),
    resume: () => socket.resume(),
    end: () => socket.close(),
    destroy: (why) => {
      if (why) reason = why;
      socket.terminate();
    },
  };
}
