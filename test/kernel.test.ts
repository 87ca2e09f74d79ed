// Our XXH3-64 SIMD kernel against hash-wasm's xxhash3, bit for bit: every
// length up to 512 at several alignments, the edges of each length class and
// of 1 KiB blocks, thousands of random lengths and offsets, and hashes that
// end at the very last byte of a memory. Data and random choices come from a
// seed printed in every failure message; rerun with BM_SEED=<seed> to replay.
import { createXXHash3 } from 'hash-wasm';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { instantiateKernel, KERNEL_HEADER_BYTES, writeKernelHeader, type Kernel } from '../engine/kernel.ts';
import { prng, testSeed } from './helpers.ts';

const seed = testSeed();
const SEGMENT_BYTES = 65536;
const LENGTH_MAX = 3 * SEGMENT_BYTES + 17;

// Header page plus 448 KiB of data: room for the longest random length at
// many different offsets.
const pages = 8;
const memory = new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true });
writeKernelHeader(memory);
const bytes = new Uint8Array(memory.buffer);
const dataStart = KERNEL_HEADER_BYTES;
const dataEnd = bytes.length;
{
  const random = prng(seed);
  for (let i = dataStart; i < dataEnd; i++) bytes[i] = (random() * 256) | 0;
}
const kernel = instantiateKernel(memory);
const reference = await createXXHash3();

function expected(view: Uint8Array): string {
  reference.init();
  reference.update(view);
  return reference.digest('hex');
}

/** Checks `length` bytes at absolute `offset`; `view` is where the test wrote them. */
function check(target: Kernel, view: Uint8Array, offset: number, length: number, label: string): void {
  const start = offset - view.byteOffset;
  const want = expected(view.subarray(start, start + length));
  const got = target.xxh3(offset, length).toString(16).padStart(16, '0');
  if (got !== want) assert.is(got, want, `${label}: length ${length} at offset ${offset} (seed ${seed})`);
}

const at = (offset: number, length: number, label: string) => check(kernel, bytes, offset, length, label);

test('every length from 0 to 512 at several alignments', () => {
  for (const shift of [0, 1, 3, 7, 8, 13, 4093]) {
    for (let length = 0; length <= 512; length++) at(dataStart + shift, length, 'short');
  }
});

test('the edges of every length class and of 1 KiB blocks', () => {
  const edges = [0, 1, 2, 3, 4, 8, 9, 15, 16, 17, 32, 33, 64, 65, 96, 97, 127, 128, 129, 239, 240, 241, 255, 256, 257];
  for (let k = 1; k <= 3 * 64 + 1; k++) edges.push(1024 * k - 1, 1024 * k, 1024 * k + 1);
  for (const e of [1024, 1025, 1024 + 63, 1024 + 64, 1024 + 65]) edges.push(e);
  for (const shift of [0, 5]) {
    for (const length of edges) if (length <= LENGTH_MAX) at(dataStart + shift, length, 'edge');
  }
});

test('thousands of random lengths up to three segments, at random offsets', () => {
  const random = prng(seed ^ 0x9e3779b9);
  for (let i = 0; i < 3000; i++) {
    // Half uniform over the whole range; half skewed towards short inputs,
    // where the length classes are.
    const u = random();
    const length = Math.floor((i & 1 ? u : u ** 3) * (LENGTH_MAX + 1));
    const offset = dataStart + Math.floor(random() * (dataEnd - dataStart - length + 1));
    at(offset, length, 'random');
  }
});

test('hashes that end exactly at the last byte of the memory', () => {
  for (const length of [0, 1, 3, 4, 8, 9, 16, 17, 128, 129, 240, 241, 1024, 1025, 4095, SEGMENT_BYTES, SEGMENT_BYTES + 1]) {
    at(dataEnd - length, length, 'memory end');
  }
});

test('hashes that end at the last byte of a 4 GiB memory, where addresses wrap', () => {
  // A volume memory may grow to 65536 pages; then `offset + length` is 2^32,
  // which is 0 in the kernel's u32 arithmetic. Only the last MiB is touched.
  let big: WebAssembly.Memory;
  try {
    big = new WebAssembly.Memory({ initial: 65536, maximum: 65536, shared: true });
  } catch (e) {
    console.log(`kernel test: a 4 GiB memory cannot be allocated here, end-of-range check skipped (${e})`);
    return;
  }
  writeKernelHeader(big);
  const tailBytes = 2 ** 20;
  const tail = new Uint8Array(big.buffer, 2 ** 32 - tailBytes, tailBytes);
  const random = prng(seed ^ 0x85ebca77);
  for (let i = 0; i < tail.length; i++) tail[i] = (random() * 256) | 0;
  const bigKernel = instantiateKernel(big);
  for (const length of [0, 1, 3, 4, 8, 9, 16, 17, 128, 129, 240, 241, 1024, 1025, 2047, SEGMENT_BYTES, SEGMENT_BYTES + 1, tailBytes]) {
    check(bigKernel, tail, 2 ** 32 - length, length, '4 GiB memory end');
  }
});

test('instantiating the kernel writes nothing to the memory it is given', () => {
  const m = new WebAssembly.Memory({ initial: 3, maximum: 3, shared: true });
  const view = new Uint8Array(m.buffer);
  for (let i = 0; i < view.length; i++) view[i] = (i * 31 + 7) & 255;
  const before = view.slice();
  const k = instantiateKernel(m);
  k.xxh3(KERNEL_HEADER_BYTES, SEGMENT_BYTES);
  k.xxh3(KERNEL_HEADER_BYTES + 3, 100);
  // Compared by hand: a failure should name the first changed byte, not
  // print two 192 KiB arrays.
  const changed = view.findIndex((b, i) => b !== before[i]);
  assert.is(changed, -1, `byte ${changed} of the memory changed`);
});

test('a range that is not inside the data of the memory is refused', () => {
  for (const [offset, length] of [
    [0, 16],
    [KERNEL_HEADER_BYTES - 1, 16],
    [KERNEL_HEADER_BYTES, -1],
    [2 ** 32 - 8, 16],
    [KERNEL_HEADER_BYTES + 0.5, 16],
  ]) {
    let error: unknown;
    try {
      kernel.xxh3(offset!, length!);
    } catch (e) {
      error = e;
    }
    assert.is((error as { code?: string } | undefined)?.code, 'BM_ERR_ASSERTION', `${length} bytes at ${offset}: ${error}`);
  }
});

test.run();
