/**
 * Loads our XXH3-64 WebAssembly SIMD kernel (kernel/xxh3.ts) and binds it to
 * a shared memory, so that it hashes bytes where they lie.
 *
 * Every memory the kernel reads (a volume's spans, a journal ring, a frame
 * staging area) reserves its first 64 KiB page for the kernel: the 192-byte
 * XXH3 secret lives at offset 0, written by `writeKernelHeader`. The module
 * has no data segment and no start function (the build checks this), so
 * instantiating it against live memory writes nothing; that is also why the
 * secret is written by JavaScript rather than carried by the module.
 *
 * The secret below is the default secret of the XXH3 specification (kSecret);
 * with it the kernel equals every other XXH3-64 implementation, with seed 0.
 */
import { KERNEL_WASM_BASE64 } from './kernel-wasm.ts';

/** Bytes at the start of every kernel-readable memory that belong to the kernel. */
export const KERNEL_HEADER_BYTES = 65536;

const secretHex =
  'b8fe6c3923a44bbe7c01812cf721ad1cded46de9839097db7240a4a4b7b3671fcb79e64eccc0e578825ad07dccff7221' +
  'b8084674f743248ee03590e6813a264c3c2852bb91c300cb88d0658b1b532ea371644897a20df94e3819ef46a9deacd8' +
  'a8fa763fe39c343ff9dcbbc7c70b4f1d8a51e04bcdb45931c89f7ec9d9787364eac5ac8334d3ebc3c581a0fffa1363eb' +
  '170ddd51b7f0da49d316552629d4689e2b16be587d47a1fc8ff8b8d17ad031ce45cb3a8f95160428afd7fbcabb4b407e';

const secret = Uint8Array.from(secretHex.match(/../g)!, (h) => parseInt(h, 16));

/** Writes the kernel's secret into the header page of `memory`. */
export function writeKernelHeader(memory: WebAssembly.Memory): void {
  new Uint8Array(memory.buffer, 0, secret.length).set(secret);
}

let compiled: WebAssembly.Module | undefined;

/** The compiled kernel, compiled once per thread. */
export function kernelModule(): WebAssembly.Module {
  if (!compiled) {
    const bytes = Uint8Array.from(atob(KERNEL_WASM_BASE64), (c) => c.charCodeAt(0));
    compiled = new WebAssembly.Module(bytes);
  }
  return compiled;
}

export interface Kernel {
  /** XXH3-64 (seed 0) of `length` bytes at absolute `offset` of the bound memory, unsigned. */
  xxh3(offset: number, length: number): bigint;
}

export function instantiateKernel(memory: WebAssembly.Memory): Kernel {
  const instance = new WebAssembly.Instance(kernelModule(), { env: { memory } });
  const xxh3 = instance.exports.xxh3 as (ptr: number, len: number, secret: number) => bigint;
  return {
    // The export returns an i64, which JavaScript sees as a signed bigint.
    xxh3: (offset, length) => BigInt.asUintN(64, xxh3(offset, length, 0)),
  };
}
