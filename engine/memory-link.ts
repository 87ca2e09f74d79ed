/**
 * Two ends of an in-process byte stream that behave like a `Link`, so that
 * the control protocol runs unchanged between a controller and primaries in
 * one process (design.md: "inside one process the same protocol runs over an
 * in-process link").
 *
 * Bytes sent on one end arrive at the other in order, one microtask later
 * (never re-entrantly, as with a socket). The sender gives up its buffer:
 * every frame encoder hands out a fresh copy, so nothing is copied again.
 * Nothing is ever queued outside the receiver's own decoder, so `buffered()`
 * is 0 and `onDrain` never needs to fire.
 */
import type { Link } from './link.ts';

export function memoryLinkPair(labels: [string, string] = ['in-process', 'in-process']): [Link, Link] {
  const a = new MemoryEnd(labels[1]);
  const b = new MemoryEnd(labels[0]);
  a.peer = b;
  b.peer = a;
  return [a, b];
}

class MemoryEnd implements Link {
  readonly scheme = 'tcp' as const;
  readonly remote: string;
  peer!: MemoryEnd;
  private dataListener: ((chunk: Uint8Array) => void) | undefined;
  private readonly closeListeners: Array<(reason: string) => void> = [];
  /** Chunks that arrived before `onData` or while paused. */
  private readonly inbox: Uint8Array[] = [];
  private paused = false;
  private closed = false;
  private closeReason = 'closed by peer';

  constructor(remote: string) {
    this.remote = remote;
  }

  send(bytes: Uint8Array): boolean {
    if (this.closed) return false;
    const peer = this.peer;
    queueMicrotask(() => peer.receive(bytes));
    return true;
  }

  buffered(): number {
    return 0;
  }

  onData(listener: (chunk: Uint8Array) => void): void {
    this.dataListener = listener;
    this.deliver();
  }

  onClose(listener: (reason: string) => void): void {
    if (this.closed) listener(this.closeReason);
    else this.closeListeners.push(listener);
  }

  onDrain(): void {}

  pause(): void {
    this.paused = true;
  }

  resume(): void {
    this.paused = false;
    this.deliver();
  }

  end(): void {
    // What was sent is already on its way (one microtask each); close after it.
    queueMicrotask(() => this.destroy('ended'));
  }

  destroy(reason = 'destroyed'): void {
    if (this.closed) return;
    this.close(reason);
    const peer = this.peer;
    queueMicrotask(() => peer.close('closed by peer'));
  }

  private receive(bytes: Uint8Array): void {
    if (this.closed) return;
    this.inbox.push(bytes);
    this.deliver();
  }

  private deliver(): void {
    while (this.dataListener && !this.paused && !this.closed && this.inbox.length) this.dataListener(this.inbox.shift()!);
  }

  private close(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.closeReason = reason;
    this.inbox.length = 0;
    for (const l of this.closeListeners) l(reason);
  }
}
