/**
 * A plain NBD server in Node over one Buffer: the reference the NBD
 * target's premise names ("a plain Node NBD server measured 1.12 to 1.21
 * times nbdkit here"). It serves what fio needs and nothing more: the fixed
 * newstyle handshake (EXPORT_NAME and GO), then WRITE, READ, FLUSH and DISC
 * with simple replies, the replies of one tick gathered into one write.
 * No shared memory, no codes, no image, no checks beyond what keeps it
 * from writing outside its buffer: it measures what Node's sockets allow,
 * not what blockmirror does. Never use it to hold data.
 */
import { Buffer } from 'node:buffer';
import fs from 'node:fs';
import net from 'node:net';
import { NBD } from '../engine/nbd.ts';

/** What the export offers besides reads and writes: flush and FUA. */
const transmissionFlags = NBD.tHasFlags | NBD.tSendFlush | NBD.tSendFua;

export class PlainNbdServer {
  private constructor(
    private readonly server: net.Server,
    private readonly sockets: Set<net.Socket>,
  ) {}

  /** Serves `size` bytes of memory on the unix socket `socketPath`, under any export name. */
  static async start(socketPath: string, size: number): Promise<PlainNbdServer> {
    // Every page written up front, as a volume's are: no first-touch faults inside the measurement.
    const memory = Buffer.alloc(size).fill(0);
    const sockets = new Set<net.Socket>();
    const server = net.createServer((socket) => {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
      serve(socket, memory);
    });
    fs.rmSync(socketPath, { force: true });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socketPath, () => resolve());
    });
    return new PlainNbdServer(server, sockets);
  }

  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const s of this.sockets) s.destroy();
    await closed;
  }
}

function serve(socket: net.Socket, memory: Buffer): void {
  socket.setNoDelay(true);
  const hello = Buffer.alloc(18);
  hello.writeBigUInt64BE(NBD.initMagic, 0);
  hello.writeBigUInt64BE(NBD.optMagic, 8);
  hello.writeUInt16BE(NBD.flagFixedNewstyle | NBD.flagNoZeroes, 16);
  socket.write(hello);

  let phase: 'flags' | 'options' | 'transmission' = 'flags';
  /** Bytes received and not yet parsed: kept as chunks until the next step has all it needs. */
  let chunks: Buffer[] = [];
  let buffered = 0;
  let need = 4;
  let replies: Buffer[] = [];
  let sendScheduled = false;
  const sendReplies = () => {
    sendScheduled = false;
    socket.write(replies.length === 1 ? replies[0]! : Buffer.concat(replies));
    replies = [];
  };
  const reply = (handle: Buffer, error: number, data?: Buffer) => {
    const head = Buffer.allocUnsafe(16);
    head.writeUInt32BE(NBD.simpleReplyMagic, 0);
    head.writeUInt32BE(error, 4);
    handle.copy(head, 8);
    replies.push(head);
    if (data) replies.push(data);
    if (!sendScheduled) {
      sendScheduled = true;
      process.nextTick(sendReplies);
    }
  };
  const optionReply = (option: number, type: number, data = Buffer.alloc(0)) => {
    const head = Buffer.alloc(20);
    head.writeBigUInt64BE(NBD.optReplyMagic, 0);
    head.writeUInt32BE(option, 8);
    head.writeUInt32BE(type, 12);
    head.writeUInt32BE(data.length, 16);
    socket.write(Buffer.concat([head, data]));
  };

  socket.on('data', (chunk: Buffer) => {
    chunks.push(chunk);
    buffered += chunk.length;
    // A large write arrives in many chunks: join them once, when the whole request is here.
    if (buffered < need) return;
    const input = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, buffered);
    let at = 0;
    for (;;) {
      const left = input.length - at;
      need = at + 28;
      if (phase === 'flags') {
        need = at + 4;
        if (left < 4) break;
        at += 4;
        phase = 'options';
      } else if (phase === 'options') {
        need = at + 16;
        if (left < 16) break;
        if (input.readBigUInt64BE(at) !== NBD.optMagic) return void socket.destroy();
        const option = input.readUInt32BE(at + 8);
        const length = input.readUInt32BE(at + 12);
        need = at + 16 + length;
        if (left < 16 + length) break;
        at += 16 + length;
        if (option === NBD.optExportName) {
          const out = Buffer.alloc(10);
          out.writeBigUInt64BE(BigInt(memory.length), 0);
          out.writeUInt16BE(transmissionFlags, 8);
          socket.write(out);
          phase = 'transmission';
        } else if (option === NBD.optGo) {
          const info = Buffer.alloc(12);
          info.writeUInt16BE(NBD.infoExport, 0);
          info.writeBigUInt64BE(BigInt(memory.length), 2);
          info.writeUInt16BE(transmissionFlags, 10);
          optionReply(option, NBD.repInfo, info);
          optionReply(option, NBD.repAck);
          phase = 'transmission';
        } else {
          optionReply(option, NBD.repErrUnsup);
        }
      } else {
        if (left < 28) break;
        if (input.readUInt32BE(at) !== NBD.requestMagic) return void socket.destroy();
        const type = input.readUInt16BE(at + 6);
        const handle = input.subarray(at + 8, at + 16);
        const offset = Number(input.readBigUInt64BE(at + 16));
        const length = input.readUInt32BE(at + 24);
        const inside = offset + length <= memory.length;
        if (type === NBD.cmdWrite) {
          need = at + 28 + length;
          if (left < 28 + length) break;
          if (inside) input.copy(memory, offset, at + 28, at + 28 + length);
          reply(handle, inside ? 0 : NBD.EINVAL);
          at += 28 + length;
        } else if (type === NBD.cmdDisc) {
          socket.end();
          return;
        } else {
          at += 28;
          if (type === NBD.cmdRead && inside) reply(handle, 0, memory.subarray(offset, offset + length));
          else reply(handle, type === NBD.cmdRead ? NBD.EINVAL : 0);
        }
      }
    }
    // Keep only the unread rest, in a buffer of its own: the chunk it came from is not ours to hold.
    const rest = input.length - at;
    chunks = rest ? [Buffer.from(input.subarray(at))] : [];
    buffered = rest;
    need -= at;
  });
}
