/**
 * A TCP proxy for fault injection between a primary and a secondary, on
 * loopback. It forwards raw bytes both ways (so it carries tcp:// and ws://
 * alike) and can cut every connection now, cut the next connection after a
 * number of bytes from the primary (mid-frame, as often as not), stall
 * forwarding, or refuse new connections. Each fault is a real socket
 * destroyed or real bytes held back.
 */
import net from 'node:net';

export class FaultProxy {
  readonly port: number;
  private readonly server: net.Server;
  private readonly pairs = new Set<[net.Socket, net.Socket]>();
  private cutAfterBytes = -1;
  private stalled = false;
  private refusing = false;
  private held: Array<() => void> = [];
  /** Connections cut by the proxy so far. */
  cuts = 0;
  /** Bytes forwarded from the primary to the secondary, and back, so far (the bytes on the wire). */
  bytesUp = 0;
  bytesDown = 0;

  private constructor(server: net.Server, port: number) {
    this.server = server;
    this.port = port;
  }

  static async start(targetPort: number, targetHost = '127.0.0.1'): Promise<FaultProxy> {
    let proxy!: FaultProxy;
    const server = net.createServer((client) => proxy.accept(client, targetHost, targetPort));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    proxy = new FaultProxy(server, (server.address() as net.AddressInfo).port);
    return proxy;
  }

  url(scheme: 'tcp' | 'ws'): string {
    return `${scheme}://127.0.0.1:${this.port}`;
  }

  /** Destroys every open connection, both sides, now. */
  cut(): void {
    for (const [a, b] of this.pairs) {
      a.destroy();
      b.destroy();
      this.cuts++;
    }
    this.pairs.clear();
  }

  /** The next bytes from the primary: after `bytes` more of them, cut. */
  cutAfter(bytes: number): void {
    this.cutAfterBytes = bytes;
  }

  /** Holds every byte in both directions until `stall(false)`. */
  stall(on: boolean): void {
    this.stalled = on;
    if (!on) {
      const held = this.held;
      this.held = [];
      for (const f of held) f();
    }
  }

  /** Closes new connections at once while on. */
  refuse(on: boolean): void {
    this.refusing = on;
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private accept(client: net.Socket, host: string, port: number): void {
    if (this.refusing) return void client.destroy();
    const upstream = net.connect({ host, port });
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    const pair: [net.Socket, net.Socket] = [client, upstream];
    this.pairs.add(pair);
    const end = () => {
      client.destroy();
      upstream.destroy();
      this.pairs.delete(pair);
    };
    client.on('error', end);
    upstream.on('error', end);
    client.on('close', end);
    upstream.on('close', end);
    client.on('data', (chunk: Buffer) => {
      if (this.cutAfterBytes >= 0) {
        if (chunk.length > this.cutAfterBytes) {
          const head = chunk.subarray(0, this.cutAfterBytes);
          this.cutAfterBytes = -1;
          this.cuts++;
          upstream.write(head, () => end());
          return;
        }
        this.cutAfterBytes -= chunk.length;
      }
      this.bytesUp += chunk.length;
      this.forward(upstream, chunk);
    });
    upstream.on('data', (chunk: Buffer) => {
      this.bytesDown += chunk.length;
      this.forward(client, chunk);
    });
  }

  private forward(to: net.Socket, chunk: Buffer): void {
    if (this.stalled) this.held.push(() => to.destroyed || to.write(chunk));
    else to.write(chunk);
  }
}
