/**
 * Builds whole, sealed frames outside a journal: handshake, acknowledgement,
 * heartbeat and refusal frames, and the frames of links that do not drain a
 * journal. Bytes are laid out in a scratch area of a shared WebAssembly
 * memory so the kernel computes the checksum in place, then copied out once
 * (the socket keeps a reference to what it is given).
 */
import { headerBytesMax, headerPackr, payloadBytesMaxDefault, prefixBytes, sealFrame, writeFrame } from './frame.ts';
import { instantiateKernel, KERNEL_HEADER_BYTES, kernelMemory, type Kernel } from './kernel.ts';
import { errors } from './errors.ts';

export class FrameEncoder {
  private readonly scratch: Uint8Array;
  private readonly view: DataView;
  private readonly kernel: Kernel;
  readonly payloadBytesMax: number;

  constructor(payloadBytesMax = payloadBytesMaxDefault) {
    this.payloadBytesMax = payloadBytesMax;
    const memory = kernelMemory(prefixBytes + headerBytesMax + payloadBytesMax + 8);
    this.kernel = instantiateKernel(memory);
    this.scratch = new Uint8Array(memory.buffer, KERNEL_HEADER_BYTES);
    this.view = new DataView(memory.buffer, KERNEL_HEADER_BYTES);
  }

  /** A sealed frame with `header` (a msgpack array) and an optional payload, as a fresh copy. */
  encode(header: unknown[], payload?: Uint8Array): Uint8Array {
    const packed = headerPackr.pack(header) as Uint8Array;
    if (packed.length > headerBytesMax) throw errors.INVALID_ARGUMENT(`Cannot send frame: header of ${packed.length} bytes is over ${headerBytesMax}`);
    if (payload && payload.length > this.payloadBytesMax) throw errors.INVALID_ARGUMENT(`Cannot send frame: payload of ${payload.length} bytes is over ${this.payloadBytesMax}`);
    const bytes = writeFrame(this.scratch, this.view, 0, packed, payload);
    sealFrame(this.view, 0, (from, length) => this.kernel.xxh3(KERNEL_HEADER_BYTES + from, length));
    return this.scratch.slice(0, bytes);
  }
}
