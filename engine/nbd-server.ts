/**
 * The NBD export: serves volumes (mirrored pairs or plain volumes) to
 * standard clients (qemu-img, nbdcopy, nbdinfo, fio, the kernel) over a unix
 * socket or tcp://.
 *
 * Per connection: fixed-newstyle handshake (EXPORT_NAME, GO, INFO, LIST,
 * ABORT; anything else is answered NBD_REP_ERR_UNSUP), then transmission
 * with simple replies. Many requests may be in flight: each is started as
 * it arrives (writes in arrival order, since a pair applies and journals a
 * write in the order its calls began) and answered when the engine completes
 * it, so in sync mode a WRITE's reply means the secondary has it. FLUSH and
 * FUA reach both sites through the pair.
 *
 * Bad input never writes outside a request: magic and lengths are checked
 * before anything is applied; an offset or length past the end is answered
 * EINVAL (reads) or ENOSPC (writes) with the payload consumed and dropped;
 * an unknown command EINVAL; a write to a read-only export EPERM; a request
 * larger than 32 MiB or a bad magic closes the connection.
 */
import fs from 'node:fs';
import net from 'node:net';
import { errors } from './errors.ts';
import { adoptReadBuffer, parseEndpoint } from './link.ts';
import { runtime } from './runtime.ts';
import { ByteQueue, NBD, optionBytesMax, requestBytesMax, requestsInFlightMax, type NbdTarget } from './nbd.ts';

export interface NbdServerOptions {
  /** `unix:/path/to.sock` or `tcp://HOST:PORT`. */
  listen: string;
  exports: NbdTarget[];
  readOnly?: boolean;
}

export class NbdServer {
  readonly address: string;
  private readonly server: net.Server;
  private readonly sockets = new Set<net.Socket>();

  private constructor(server: net.Server, address: string) {
    this.server = server;
    this.address = address;
  }

  static async start(options: NbdServerOptions): Promise<NbdServer> {
    const exports = new Map(options.exports.map((e) => [e.name, e]));
    let nbd!: NbdServer;
    // On Node each connection reads into one reused buffer (see adoptReadBuffer); the parser copies
    // what it keeps into its own queue before the next read.
    const reuse = runtime === 'node';
    const server = net.createServer({ pauseOnConnect: reuse }, (accepted) => {
      let onData: (chunk: Uint8Array) => void = () => {};
      const adopted = reuse ? adoptReadBuffer(server, accepted, new Uint8Array(readBufferBytes), (chunk) => onData(chunk)) : undefined;
      const socket = adopted?.socket ?? accepted;
      nbd.sockets.add(socket);
      socket.on('close', () => nbd.sockets.delete(socket));
      // Reads reach `onData` from the next turn of the event loop on, after serve() has set it.
      serve(socket, exports, options.readOnly === true, {
        onData: (l) => {
          if (adopted) onData = l;
          else socket.on('data', l);
        },
        end: adopted?.end ?? (() => socket.end()),
      });
      if (!adopted) socket.resume();
    });
    let address: string;
    if (options.listen.startsWith('unix:')) {
      const path = options.listen.slice(5);
      if (!path) throw errors.INVALID_ARGUMENT(`Cannot listen for NBD on '${options.listen}': write unix:/path/to.sock`);
      fs.rmSync(path, { force: true });
      await listenOn(server, options.listen, () => server.listen(path));
      address = `unix:${path}`;
    } else {
      const endpoint = parseEndpoint(options.listen, 'NBD URL');
      if (endpoint.scheme !== 'tcp') throw errors.INVALID_ARGUMENT(`Cannot listen for NBD on '${options.listen}': use unix:PATH or tcp://HOST:PORT`);
      await listenOn(server, options.listen, () => server.listen(endpoint.port, endpoint.host));
      address = `tcp://${endpoint.host}:${(server.address() as net.AddressInfo).port}`;
    }
    nbd = new NbdServer(server, address);
    return nbd;
  }

  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const s of this.sockets) s.destroy();
    await closed;
  }
}

/** Bytes of each connection's reused read buffer (Node): one read never returns more. */
export const readBufferBytes = 256 * 1024;

function listenOn(server: net.Server, what: string, start: () => void): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) => reject(errors.LISTEN(`Cannot listen for NBD on ${what}: ${e.code ?? e.message}`)));
    server.once('listening', () => resolve());
    start();
  });
}

function serve(socket: net.Socket, exports: Map<string, NbdTarget>, readOnly: boolean, io: { onData: (listener: (chunk: Uint8Array) => void) => void; end: () => void }): void {
  if (socket.setNoDelay) socket.setNoDelay(true);
  const input = new ByteQueue();
  let phase: 'flags' | 'options' | 'transmission' | 'closed' = 'flags';
  let noZeroes = false;
  let target: NbdTarget | undefined;
  let inFlight = 0;
  let paused = false;
  /** A request whose write payload is still arriving. */
  let pending: { handle: Uint8Array; flags: number; type: number; offset: number; length: number } | undefined;

  const hello = new Uint8Array(18);
  const hv = new DataView(hello.buffer);
  hv.setBigUint64(0, NBD.initMagic);
  hv.setBigUint64(8, NBD.optMagic);
  hv.setUint16(16, NBD.flagFixedNewstyle | NBD.flagNoZeroes);
  socket.write(hello);

  const close = () => {
    phase = 'closed';
    socket.destroy();
  };

  const optionReply = (option: number, type: number, data: Uint8Array = new Uint8Array(0)) => {
    const out = new Uint8Array(20 + data.length);
    const v = new DataView(out.buffer);
    v.setBigUint64(0, NBD.optReplyMagic);
    v.setUint32(8, option);
    v.setUint32(12, type);
    v.setUint32(16, data.length);
    out.set(data, 20);
    socket.write(out);
  };

  const transmissionFlags = () =>
    NBD.tHasFlags | NBD.tSendFlush | NBD.tSendFua | NBD.tSendTrim | NBD.tSendWriteZeroes | NBD.tCanMultiConn | (readOnly ? NBD.tReadOnly : 0);

  // Replies completed in the same turn of the event loop are gathered in one
  // buffer and leave in one write on the next tick (one socket write per
  // turn, not one per reply). A reply carrying much data goes on its own,
  // after those gathered before it.
  const gatherBytes = 64 * 1024;
  const gathered = new Uint8Array(gatherBytes);
  const gatheredView = new DataView(gathered.buffer);
  let gatheredLength = 0;
  let sendScheduled = false;
  const sendGathered = () => {
    sendScheduled = false;
    if (gatheredLength === 0 || phase === 'closed') return;
    socket.write(gathered.slice(0, gatheredLength));
    gatheredLength = 0;
  };
  const reply = (handle: Uint8Array, error: number, data?: Uint8Array) => {
    if (phase === 'closed') return;
    const bytes = 16 + (data ? data.length : 0);
    if (bytes > gatherBytes - gatheredLength) sendGathered();
    if (bytes > gatherBytes) {
      const out = new Uint8Array(bytes);
      const v = new DataView(out.buffer);
      v.setUint32(0, NBD.simpleReplyMagic);
      v.setUint32(4, error);
      out.set(handle, 8);
      out.set(data!, 16);
      socket.write(out);
      return;
    }
    const at = gatheredLength;
    gatheredView.setUint32(at, NBD.simpleReplyMagic);
    gatheredView.setUint32(at + 4, error);
    gathered.set(handle, at + 8);
    if (data) gathered.set(data, at + 16);
    gatheredLength += bytes;
    if (!sendScheduled) {
      sendScheduled = true;
      process.nextTick(sendGathered);
    }
  };

  const handleOption = (option: number, data: Uint8Array): void => {
    const dv = new DataView(data.buffer, data.byteOffset, data.length);
    switch (option) {
      case NBD.optExportName: {
        const name = new TextDecoder().decode(data);
        const found = exports.get(name);
        if (!found) return close(); // EXPORT_NAME has no error reply: the spec says close.
        target = found;
        const out = new Uint8Array(noZeroes ? 10 : 134);
        const v = new DataView(out.buffer);
        v.setBigUint64(0, BigInt(found.size));
        v.setUint16(8, transmissionFlags());
        socket.write(out);
        phase = 'transmission';
        return;
      }
      case NBD.optAbort:
        optionReply(option, NBD.repAck);
        io.end();
        phase = 'closed';
        return;
      case NBD.optList: {
        if (data.length !== 0) return optionReply(option, NBD.repErrInvalid);
        for (const name of exports.keys()) {
          const bytes = new TextEncoder().encode(name);
          const entry = new Uint8Array(4 + bytes.length);
          new DataView(entry.buffer).setUint32(0, bytes.length);
          entry.set(bytes, 4);
          optionReply(option, NBD.repServer, entry);
        }
        return optionReply(option, NBD.repAck);
      }
      case NBD.optInfo:
      case NBD.optGo: {
        if (data.length < 6) return optionReply(option, NBD.repErrInvalid);
        const nameLength = dv.getUint32(0);
        if (4 + nameLength + 2 > data.length) return optionReply(option, NBD.repErrInvalid);
        const requests = dv.getUint16(4 + nameLength);
        if (4 + nameLength + 2 + 2 * requests !== data.length) return optionReply(option, NBD.repErrInvalid);
        const name = new TextDecoder().decode(data.subarray(4, 4 + nameLength));
        const found = exports.get(name);
        if (!found) return optionReply(option, NBD.repErrUnknown);
        const info = new Uint8Array(12);
        const iv = new DataView(info.buffer);
        iv.setUint16(0, NBD.infoExport);
        iv.setBigUint64(2, BigInt(found.size));
        iv.setUint16(10, transmissionFlags());
        optionReply(option, NBD.repInfo, info);
        const block = new Uint8Array(14);
        const bv = new DataView(block.buffer);
        bv.setUint16(0, NBD.infoBlockSize);
        bv.setUint32(2, 1);
        bv.setUint32(6, found.blockSize ?? 4096);
        bv.setUint32(10, requestBytesMax);
        optionReply(option, NBD.repInfo, block);
        optionReply(option, NBD.repAck);
        if (option === NBD.optGo) {
          target = found;
          phase = 'transmission';
        }
        return;
      }
      default:
        return optionReply(option, NBD.repErrUnsup);
    }
  };

  const settled = () => {
    inFlight--;
    if (paused && inFlight < requestsInFlightMax / 2) {
      paused = false;
      socket.resume();
    }
  };
  /** Replies to `handle` once `p` settles; the socket pauses while too many requests are in flight. */
  const finishLater = (handle: Uint8Array, p: Promise<unknown>) => {
    inFlight++;
    p.then(
      () => {
        settled();
        reply(handle, 0);
      },
      (e) => {
        settled();
        reply(handle, errnoOf(e));
      },
    );
    if (inFlight >= requestsInFlightMax && !paused) {
      paused = true;
      socket.pause();
    }
  };

  const start = (type: number, flags: number, handle: Uint8Array, offset: number, length: number, payload?: Uint8Array) => {
    const t = target!;
    const fua = (flags & NBD.cmdFlagFua) !== 0;
    const past = offset + length > t.size;
    switch (type) {
      case NBD.cmdRead:
        if (past) return reply(handle, NBD.EINVAL);
        return reply(handle, 0, t.read(offset, length));
      case NBD.cmdWrite:
        if (readOnly) return reply(handle, NBD.EPERM);
        if (past) return reply(handle, NBD.ENOSPC);
        if (t.writeSync && !fua) {
          // Complete at once (a plain volume): applied from the input queue's view, no copy.
          try {
            t.writeSync(offset, payload!);
          } catch (e) {
            return reply(handle, errnoOf(e));
          }
          return reply(handle, 0);
        }
        // The payload view aliases the input queue; write() has read it (or copied it) by the time it returns.
        return finishLater(handle, t.write(offset, payload!, { fua }));
      case NBD.cmdWriteZeroes:
        if (readOnly) return reply(handle, NBD.EPERM);
        if (past) return reply(handle, NBD.ENOSPC);
        return finishLater(handle, t.writeZeroes(offset, length, { fua }));
      case NBD.cmdTrim:
        if (readOnly) return reply(handle, NBD.EPERM);
        if (past) return reply(handle, NBD.EINVAL);
        return finishLater(handle, fua ? t.trim(offset, length).then(() => t.flush()) : t.trim(offset, length));
      case NBD.cmdFlush:
        return finishLater(handle, t.flush());
      default:
        return reply(handle, NBD.EINVAL);
    }
  };

  const pump = () => {
    for (;;) {
      if (phase === 'closed') return;
      if (phase === 'flags') {
        if (input.length < 4) return;
        const flags = new DataView(input.take(4).slice().buffer).getUint32(0);
        if ((flags & NBD.flagFixedNewstyle) === 0 || (flags & ~(NBD.flagFixedNewstyle | NBD.flagNoZeroes)) !== 0) return close();
        noZeroes = (flags & NBD.flagNoZeroes) !== 0;
        phase = 'options';
        continue;
      }
      if (phase === 'options') {
        if (input.length < 16) return;
        const head = new DataView(input.peek(16).slice().buffer);
        if (head.getBigUint64(0) !== NBD.optMagic) return close();
        const length = head.getUint32(12);
        if (length > optionBytesMax) return close();
        if (input.length < 16 + length) return;
        input.take(16);
        handleOption(head.getUint32(8), input.take(length).slice());
        continue;
      }
      // Transmission.
      if (pending) {
        if (input.length < pending.length) return;
        const p = pending;
        pending = undefined;
        const payload = input.takeAligned(p.length);
        start(p.type, p.flags, p.handle, p.offset, p.length, payload);
        continue;
      }
      if (input.length < 28) return;
      const raw = input.peek(28);
      const h = new DataView(raw.buffer, raw.byteOffset, 28);
      if (h.getUint32(0) !== NBD.requestMagic) return close();
      const flags = h.getUint16(4);
      const type = h.getUint16(6);
      const handle = raw.slice(8, 16);
      const offset = Number(h.getBigUint64(16));
      const length = h.getUint32(24);
      input.take(28);
      if (type === NBD.cmdDisc) {
        phase = 'closed';
        io.end();
        return;
      }
      if (length > requestBytesMax && (type === NBD.cmdWrite || type === NBD.cmdRead)) return close();
      if (type === NBD.cmdWrite) {
        pending = { handle, flags, type, offset, length };
        continue;
      }
      start(type, flags, handle, offset, length);
    }
  };

  io.onData((chunk) => {
    input.push(chunk);
    try {
      pump();
    } catch {
      close();
    }
  });
  socket.on('error', () => close());
}

/** The NBD error number for an engine error. */
function errnoOf(e: unknown): number {
  switch ((e as { code?: string })?.code) {
    case 'BM_ERR_OUT_OF_RANGE':
      return NBD.ENOSPC;
    case 'BM_ERR_INVALID_ARGUMENT':
      return NBD.EINVAL;
    case 'BM_ERR_CLOSED':
      return NBD.ESHUTDOWN;
    default:
      return NBD.EIO;
  }
}
