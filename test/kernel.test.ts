// Our XXH3-64 SIMD kernel against hash-wasm's xxhash3, bit for bit, on every
// short length, thousands of random lengths and offsets, and the edges of
// each length class and of the memory itself.
import { createXXHash3 } from 'hash-wasm';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { instantiateKernel, KERNEL_HEADER_BYTES, writeKernelHeader } from '../engine/kernel.ts';
import { prng, testSeed } from './helpers.ts';

const pages = 8; // 512 KiB: header page + 448 KiB of data
const memory = new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true });
writeKernelHeader(memory);
const bytes = new Uint8Array(memory.buffer);
const dataStart = KERNEL_HEADER_BYTES;
const dataEnd = bytes.length;
const fillSeed = testSeed();
{
  const random = prng(fillSeed);
  for (let i = dataStart; i < dataEnd; i++) bytes[i] = (random() * 256) | 0;
}
const kernel = instantiateKernel(memory);
const reference = await createXXHash3();

function check(offset: number, length: number, label: string): void {
  reference.init();
  reference.update(bytes.slice(offset, offset + length));
  const want = reference.digest('hex');
  const got = kernel.xxh3(offset, length).toString(16).padStart(16, '0');
  assert.is(got, want, `${label}: length ${length} at offset ${offset} (fill seed ${fillSeed})`);
}

test('every length from 0 to 512 at several offsets', () => {
  for (const base of [dataStart, dataStart + 1, dataStart + 7, dataStart + 4093]) {
    for (let length = 0; length <= 512; length++) check(base, length, 'short');
  }
});

test('the edges of every length class and of 1 KiB blocks', () => {
  const edges = [0, 1, 3, 4, 8, 9, 16, 17, 32, 33, 64, 65, 96, 97, 128, 129, 240, 241, 1023, 1024, 1025, 2047, 2048, 2049, 65535, 65536, 65537];
  for (let k = 1; k <= 64; k++) edges.push(1024 * k - 1, 1024 * k, 1024 * k + 1, 1024 * k + 64, 1024 * k + 63);
  for (const length of edges) check(dataStart + 3, length, 'edge');
});

test('thousands of random lengths (up to three segments) at random offsets', () => {
  const seed = testSeed();
  const random = prng(seed);
  const max = 3 * 65536 + 17;
  for (let i = 0; i < 3000; i++) {
    const length = Math.floor(random() ** 2 * max);
    const offset = dataStart + Math.floor(random() * (dataEnd - dataStart - length));
    check(offset, length, `random (seed ${seed})`);
  }
});

test('a hash that ends exactly at the last byte of the memory', () => {
  for (const length of [1, 15, 200, 241, 4096, 65536]) check(dataEnd - length, length, 'memory end');
});

test('instantiating the kernel writes nothing to the memory it is given', () => {
  const m = new WebAssembly.Memory({ initial: 2, maximum: 2, shared: true });
  const view = new Uint8Array(m.buffer);
  for (let i = 0; i < view.length; i++) view[i] = (i * 31 + 7) & 255;
  const before = view.slice();
  const k = instantiateKernel(m);
  k.xxh3(100, 5000);
  assert.equal(view, before);
});

test.run();
