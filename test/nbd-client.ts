/**
 * A small NBD client for tests that drive a primary in another process:
 * fixed newstyle handshake with NBD_OPT_EXPORT_NAME, then one request at a
 * time (write with or without FUA, read, flush), each answered by a simple
 * reply. Real tools (qemu-img, nbdcopy, fio) are tested elsewhere; this one
 * lets a test issue dependent writes, one after another, and know exactly
 * which ones the server answered.
 */
import net from 'node:net';
import { NBD } from '../engine/nbd.ts';

export class NbdClient {
  /** Export size in bytes, known once the handshake is done. */
  size = 0;
  private readonly socket: net.Socket;
  private buffered = Buffer.alloc(0);
  private wanted: { bytes: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  private failure: Error | undefined;
  private handle = 1n;

  private constructor(socket: net.Socket) {
    this.socket = socket;
  }

  /** Connects to `unix:PATH` or `tcp://HOST:PORT` and opens export `name`. */
  static async connect(address: string, name: string, timeoutMs = 5000): Promise<NbdClient> {
    const socket = address.startsWith('unix:') ? net.connect(address.slice(5)) : net.connect({ host: new URL(address).hostname, port: Number(new URL(address).port) });
    socket.setNoDelay?.(true);
    const client = new NbdClient(socket);
    socket.on('data', (d: Buffer) => client.feed(d));
    socket.on('error', (e) => client.fail(e));
    socket.on('close', () => client.fail(new Error('NBD connection closed')));
    const timer = setTimeout(() => socket.destroy(new Error(`NBD handshake with ${address} timed out`)), timeoutMs);
    try {
      const greeting = await client.readBytes(18);
      if (greeting.readBigUInt64BE(0) !== NBD.initMagic || greeting.readBigUInt64BE(8) !== NBD.optMagic) throw new Error('not an NBD newstyle server');
      const flags = Buffer.alloc(4);
      flags.writeUInt32BE(NBD.flagFixedNewstyle | NBD.flagNoZeroes);
      const nameBytes = Buffer.from(name);
      const option = Buffer.alloc(16);
      option.writeBigUInt64BE(NBD.optMagic, 0);
      option.writeUInt32BE(NBD.optExportName, 8);
      option.writeUInt32BE(nameBytes.length, 12);
      socket.write(Buffer.concat([flags, option, nameBytes]));
      const info = await client.readBytes(10);
      client.size = Number(info.readBigUInt64BE(0));
      return client;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Writes `data` at `offset`; resolves with the reply's error number (0 = done). */
  async write(offset: number, data: Uint8Array, options: { fua?: boolean } = {}): Promise<number> {
    return (await this.request(NBD.cmdWrite, offset, data.length, options.fua ? NBD.cmdFlagFua : 0, data)).error;
  }

  async flush(): Promise<number> {
    return (await this.request(NBD.cmdFlush, 0, 0, 0)).error;
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    const reply = await this.request(NBD.cmdRead, offset, length, 0);
    if (reply.error) throw new Error(`NBD read failed with error ${reply.error}`);
    return new Uint8Array(await this.readBytes(length));
  }

  close(): void {
    const request = Buffer.alloc(28);
    request.writeUInt32BE(NBD.requestMagic, 0);
    request.writeUInt16BE(NBD.cmdDisc, 6);
    this.socket.end(request);
  }

  private async request(type: number, offset: number, length: number, flags: number, data?: Uint8Array): Promise<{ error: number }> {
    const header = Buffer.alloc(28);
    header.writeUInt32BE(NBD.requestMagic, 0);
    header.writeUInt16BE(flags, 4);
    header.writeUInt16BE(type, 6);
    const handle = this.handle++;
    header.writeBigUInt64BE(handle, 8);
    header.writeBigUInt64BE(BigInt(offset), 16);
    header.writeUInt32BE(length, 24);
    this.socket.write(data ? Buffer.concat([header, data]) : header);
    const reply = await this.readBytes(16);
    if (reply.readUInt32BE(0) !== NBD.simpleReplyMagic || reply.readBigUInt64BE(8) !== handle) throw new Error('unexpected NBD reply');
    return { error: reply.readUInt32BE(4) };
  }

  private readBytes(bytes: number): Promise<Buffer> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.wanted = { bytes, resolve, reject };
      this.deliver();
    });
  }

  private feed(chunk: Buffer): void {
    this.buffered = this.buffered.length ? Buffer.concat([this.buffered, chunk]) : chunk;
    this.deliver();
  }

  private deliver(): void {
    const w = this.wanted;
    if (!w || this.buffered.length < w.bytes) return;
    this.wanted = undefined;
    const out = this.buffered.subarray(0, w.bytes);
    this.buffered = this.buffered.subarray(w.bytes);
    w.resolve(Buffer.from(out));
  }

  private fail(error: Error): void {
    this.failure ??= error;
    const w = this.wanted;
    this.wanted = undefined;
    w?.reject(this.failure);
  }
}
