/** Fills a volume with pseudo-random bytes quickly (a 4 MiB random block, rotated per copy). */
import type { Volume } from '../engine/index.ts';

export function fillRandom(volume: Volume, seed = 1): void {
  const block = new Uint8Array(4 * 2 ** 20);
  const words = new Uint32Array(block.buffer);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x >>> 0;
  }
  for (let offset = 0, n = 0; offset < volume.size; offset += block.length, n++) {
    words[n % words.length] = n; // no two copies alike
    volume.writeSync(offset, block.subarray(0, Math.min(block.length, volume.size - offset)));
  }
}
