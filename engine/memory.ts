/**
 * The bytes of one volume, held in shared WebAssembly memories.
 *
 * A volume lives in one or more shared `WebAssembly.Memory` objects so that
 * the hashing kernel can read segments in place, with no copy. One memory
 * holds at most 4 GiB, so a volume is cut into spans of `spanBytes` (2 GiB, a
 * power of two and so a whole number of segments: a segment never straddles
 * two memories). The first 64 KiB page of every memory belongs to the kernel
 * (its secret); volume bytes start after it.
 *
 * `VolumeMemory` knows nothing of files, codes or the network: it copies
 * bytes in and out and hands out views.
 */
import { KERNEL_HEADER_BYTES, kernelMemory } from './kernel.ts';
import { assert } from './errors.ts';

/** Volume bytes per memory: 2 GiB (with the header page, 32769 of 65536 pages). */
export const spanBytes = 2 ** 31;

/** What a worker needs to rebuild a `VolumeMemory` over the same bytes. */
export interface SharedMemoryLayout {
  size: number;
  memories: WebAssembly.Memory[];
}

export class VolumeMemory {
  readonly size: number;
  readonly memories: WebAssembly.Memory[];
  /** One view per memory over its volume bytes (after the header page). */
  readonly spans: Uint8Array[];

  private constructor(size: number, memories: WebAssembly.Memory[]) {
    this.size = size;
    this.memories = memories;
    this.spans = memories.map((m, i) => new Uint8Array(m.buffer, KERNEL_HEADER_BYTES, Math.min(spanBytes, size - i * spanBytes)));
  }

  /** Allocates zeroed shared memory for `size` bytes. */
  static allocate(size: number): VolumeMemory {
    const memories: WebAssembly.Memory[] = [];
    for (let start = 0; start < size; start += spanBytes) {
      const bytes = Math.min(spanBytes, size - start);
      memories.push(kernelMemory(bytes));
    }
    return new VolumeMemory(size, memories);
  }

  static fromShared(layout: SharedMemoryLayout): VolumeMemory {
    return new VolumeMemory(layout.size, layout.memories);
  }

  toShared(): SharedMemoryLayout {
    return { size: this.size, memories: this.memories };
  }

  /** Copies `source` into the volume at `offset` (range already checked). */
  write(offset: number, source: Uint8Array): void {
    const span = this.spans[Math.floor(offset / spanBytes)]!;
    const inSpan = offset % spanBytes;
    // The common case: the range lies in one span.
    if (inSpan + source.length <= span.length) return span.set(source, inSpan);
    this.eachSpan(offset, source.length, (view, done) => view.set(source.subarray(done, done + view.length)));
  }

  /** Sets `length` bytes at `offset` to `value` (range already checked). */
  fill(offset: number, length: number, value = 0): void {
    this.eachSpan(offset, length, (view) => view.fill(value));
  }

  /** Copies bytes at `offset` into `target` (range already checked). */
  read(offset: number, target: Uint8Array): void {
    this.eachSpan(offset, target.length, (view, done) => target.set(view, done));
  }

  /** Calls `fn` with the view of each span piece of a range, and how far into the range it starts. */
  private eachSpan(offset: number, length: number, fn: (view: Uint8Array, done: number) => void): void {
    for (let done = 0; done < length; ) {
      const at = offset + done;
      const span = this.spans[Math.floor(at / spanBytes)]!;
      const inSpan = at % spanBytes;
      const n = Math.min(length - done, span.length - inSpan);
      fn(span.subarray(inSpan, inSpan + n), done);
      done += n;
    }
  }

  /**
   * A view of `length` bytes at `offset`, which must not cross a span (true
   * of any range inside one segment). The view aliases live volume memory.
   */
  view(offset: number, length: number): Uint8Array {
    const index = Math.floor(offset / spanBytes);
    const inSpan = offset % spanBytes;
    assert(inSpan + length <= this.spans[index]!.length, `view ${offset}+${length} crosses a memory span`);
    return this.spans[index]!.subarray(inSpan, inSpan + length);
  }

  /** Which memory holds `offset`, and the offset inside that memory (header included). */
  locate(offset: number): { memory: number; address: number } {
    const memory = Math.floor(offset / spanBytes);
    return { memory, address: KERNEL_HEADER_BYTES + (offset % spanBytes) };
  }
}
