/**
 * Loads our XXH3-64 WebAssembly SIMD kernel (kernel/xxh3.ts) and binds it to
 * a shared `WebAssembly.Memory`, so that it hashes bytes where they lie.
 *
 * Volumes, journal rings and frame staging areas live in shared memories that
 * several threads read and write at once. Copying a 64 KiB segment into a
 * hasher's private memory before hashing it would cost as much memory
 * bandwidth as the hash itself, so each thread instantiates the kernel once
 * per memory, with that memory as the kernel's own, and passes it absolute
 * offsets.
 *
 * The first 64 KiB page of every such memory is a header that belongs to the
 * kernel: `writeKernelHeader` stores the 192-byte default XXH3 secret at
 * offset 0, and data starts at `KERNEL_HEADER_BYTES`. The secret is written
 * by JavaScript, once, when the memory is created, because the module itself
 * carries no data segment and no start function (scripts/build-kernel.mjs
 * refuses a binary that has either): instantiating it against a memory that
 * already holds a live volume, in any thread, must never write a byte of it.
 *
 * This module uses only web APIs, so it loads unchanged in Node, Bun and
 * Deno, on the main thread and in workers.
 */
import { assert } from './errors.ts';
import { KERNEL_WASM_BASE64 } from './kernel-wasm.ts';

/** Bytes at the start of every kernel-readable memory that belong to the kernel. */
export const KERNEL_HEADER_BYTES = 65536;

/** The largest memory a kernel can read: 65536 pages of 64 KiB, the wasm32 limit. */
const MEMORY_BYTES_MAX = 2 ** 32;

// The default secret (kSecret) of the XXH3 specification. With it and seed 0
// the kernel agrees with every other XXH3-64 implementation, hash-wasm's
// included, which the tests rely on.
const SECRET_HEX =
  'b8fe6c3923a44bbe7c01812cf721ad1cded46de9839097db7240a4a4b7b3671f' +
  'cb79e64eccc0e578825ad07dccff7221b8084674f743248ee03590e6813a264c' +
  '3c2852bb91c300cb88d0658b1b532ea371644897a20df94e3819ef46a9deacd8' +
  'a8fa763fe39c343ff9dcbbc7c70b4f1d8a51e04bcdb45931c89f7ec9d9787364' +
  'eac5ac8334d3ebc3c581a0fffa1363eb170ddd51b7f0da49d316552629d4689e' +
  '2b16be587d47a1fc8ff8b8d17ad031ce45cb3a8f95160428afd7fbcabb4b407e';

const SECRET = Uint8Array.from(SECRET_HEX.match(/../g)!, (pair) => parseInt(pair, 16));

/** Where the kernel finds the secret, as an offset in the header page. */
const SECRET_OFFSET = 0;

/**
 * Writes the kernel's secret into the header page of `memory`. Call it once,
 * when the memory is created and before any thread hashes from it.
 */
export function writeKernelHeader(memory: WebAssembly.Memory): void {
  new Uint8Array(memory.buffer, SECRET_OFFSET, SECRET.length).set(SECRET);
}

/**
 * A new shared memory with room for `dataBytes` after the kernel header, the
 * header written: what every volume span, journal and frame staging area is.
 */
export function kernelMemory(dataBytes: number): WebAssembly.Memory {
  const pages = Math.ceil((KERNEL_HEADER_BYTES + dataBytes) / 65536);
  const memory = new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true });
  writeKernelHeader(memory);
  return memory;
}

/** Buffers of the memories made by `kernelArea`, so that bytes found in one can be hashed in place. */
const areas = new WeakMap<ArrayBufferLike, WebAssembly.Memory>();
/** This thread's kernel for each such memory, bound on first use. */
const boundKernels = new WeakMap<ArrayBufferLike, Kernel>();

/**
 * `bytes` of a new kernel memory, registered so that `kernelOf` finds it: a
 * socket's reused read buffer, whose frames are then checked where they lie.
 */
export function kernelArea(bytes: number): Uint8Array {
  const memory = kernelMemory(bytes);
  areas.set(memory.buffer, memory);
  return new Uint8Array(memory.buffer, KERNEL_HEADER_BYTES, bytes);
}

/** The kernel bound to the memory behind `buffer`, if it is a `kernelArea`; offsets are then `byteOffset`s. */
export function kernelOf(buffer: ArrayBufferLike): Kernel | undefined {
  let kernel = boundKernels.get(buffer);
  if (kernel) return kernel;
  const memory = areas.get(buffer);
  if (!memory) return undefined;
  kernel = instantiateKernel(memory);
  boundKernels.set(buffer, kernel);
  return kernel;
}

let compiled: WebAssembly.Module | undefined;

/**
 * The compiled kernel. It is compiled synchronously on first use and then
 * reused by every memory this thread binds. The module is a few kilobytes,
 * so synchronous compilation is allowed even on a browser-like main thread.
 */
export function kernelModule(): WebAssembly.Module {
  if (!compiled) {
    const text = atob(KERNEL_WASM_BASE64);
    const bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
    compiled = new WebAssembly.Module(bytes);
  }
  return compiled;
}

export interface Kernel {
  /**
   * XXH3-64 (seed 0) of `length` bytes at the absolute byte `offset` of the
   * bound memory, as an unsigned 64-bit bigint. The bytes are read in place.
   */
  xxh3(offset: number, length: number): bigint;
}

type Xxh3Export = (ptr: number, len: number, secret: number) => bigint;

/**
 * Binds the kernel to `memory`, which must be shared and carry the header
 * written by `writeKernelHeader`. Instantiation writes nothing to `memory`.
 */
export function instantiateKernel(memory: WebAssembly.Memory): Kernel {
  const instance = new WebAssembly.Instance(kernelModule(), { env: { memory } });
  const xxh3 = instance.exports.xxh3 as Xxh3Export;
  return {
    xxh3(offset, length) {
      // The kernel takes u32 addresses: a range that ran past 4 GiB would wrap
      // to the header and hash the wrong bytes without trapping, and a range
      // inside the header means a caller forgot the header. Ranges past the
      // end of a smaller memory trap in the kernel itself.
      assert(
        offset >= KERNEL_HEADER_BYTES && length >= 0 && offset + length <= MEMORY_BYTES_MAX && Number.isInteger(offset) && Number.isInteger(length),
        `cannot hash ${length} bytes at offset ${offset}: outside the data of a kernel memory`,
      );
      // The export returns an i64, which JavaScript receives as a signed bigint.
      return BigInt.asUintN(64, xxh3(offset, length, SECRET_OFFSET));
    },
  };
}
