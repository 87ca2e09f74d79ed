// XXH3-64 with seed 0, in AssemblyScript, compiled to WebAssembly SIMD.
//
// The module imports the memory it reads: a volume's shared memory, a journal
// ring or a frame staging area. It hashes bytes where they lie and never
// writes to memory. It has no data segment and no start function (the build
// checks both), so instantiating it against a live volume leaves every byte
// as it was; that is why the 192-byte secret is not carried by the module but
// read at the address the caller passes, in the memory's reserved header page.
//
// Inputs are routed by length as the XXH3 specification does: 0 to 16 bytes,
// 17 to 240 bytes, and the long loop over 1 KiB blocks, which is the one that
// matters for throughput and runs on 128-bit vectors.
//
// Addresses are u32 and may be anywhere in a 4 GiB memory, so an input can
// end at its very last byte. Intermediate sums such as `p + len` may then
// wrap to zero; every address computed from them still comes out right in
// modular arithmetic, and no loop is bounded by a comparison with such a sum.

const PRIME32_1: u64 = 0x9e3779b1;
const PRIME32_2: u64 = 0x85ebca77;
const PRIME32_3: u64 = 0xc2b2ae3d;
const PRIME64_1: u64 = 0x9e3779b185ebca87;
const PRIME64_2: u64 = 0xc2b2ae3d27d4eb4f;
const PRIME64_3: u64 = 0x165667b19e3779f9;
const PRIME64_4: u64 = 0x85ebca77c2b2ae63;
const PRIME64_5: u64 = 0x27d4eb2f165667c5;
const PRIME_MX1: u64 = 0x165667919e3779f9;
const PRIME_MX2: u64 = 0x9fb21c651e98df25;

const SECRET_BYTES: usize = 192;
const STRIPE: usize = 64;
// Each stripe of a block uses the secret 8 bytes further on, so a block holds
// as many stripes as fit in the secret minus one stripe: 16, or 1 KiB.
const STRIPES_PER_BLOCK: usize = (SECRET_BYTES - STRIPE) / 8;

// The 128-bit product of a and b, its two halves xor-ed together. WebAssembly
// has no 64x64->128 multiply, so it is built from four 32x32->64 products.
// @ts-ignore: decorator
@inline
function fold64(a: u64, b: u64): u64 {
  const aLo = a & 0xffffffff;
  const aHi = a >> 32;
  const bLo = b & 0xffffffff;
  const bHi = b >> 32;
  const loLo = aLo * bLo;
  const hiLo = aHi * bLo;
  const loHi = aLo * bHi;
  const hiHi = aHi * bHi;
  const middle = (loLo >> 32) + (hiLo & 0xffffffff) + loHi;
  const upper = (hiLo >> 32) + (middle >> 32) + hiHi;
  const lower = (middle << 32) | (loLo & 0xffffffff);
  return lower ^ upper;
}

// The final mix of every XXH3 path except the shortest ones.
// @ts-ignore: decorator
@inline
function avalanche(h: u64): u64 {
  h ^= h >> 37;
  h *= PRIME_MX1;
  return h ^ (h >> 32);
}

// XXH64's final mix, which XXH3 reuses for inputs of 0 to 3 bytes.
// @ts-ignore: decorator
@inline
function avalanche64(h: u64): u64 {
  h ^= h >> 33;
  h *= PRIME64_2;
  h ^= h >> 29;
  h *= PRIME64_3;
  return h ^ (h >> 32);
}

// 16 input bytes against 16 secret bytes, the step of the 17-240 byte path.
// @ts-ignore: decorator
@inline
function mix16(p: usize, s: usize): u64 {
  return fold64(load<u64>(p) ^ load<u64>(s), load<u64>(p, 8) ^ load<u64>(s, 8));
}

function upTo16(p: usize, len: usize, s: usize): u64 {
  if (len > 8) {
    const lo = load<u64>(p) ^ (load<u64>(s, 24) ^ load<u64>(s, 32));
    const hi = load<u64>(p + len - 8) ^ (load<u64>(s, 40) ^ load<u64>(s, 48));
    return avalanche(<u64>len + bswap<u64>(lo) + hi + fold64(lo, hi));
  }
  if (len >= 4) {
    const first = <u64>load<u32>(p);
    const last = <u64>load<u32>(p + len - 4);
    let h = (last + (first << 32)) ^ (load<u64>(s, 8) ^ load<u64>(s, 16));
    h ^= rotl<u64>(h, 49) ^ rotl<u64>(h, 24);
    h *= PRIME_MX2;
    h ^= (h >> 35) + <u64>len;
    h *= PRIME_MX2;
    return h ^ (h >> 28);
  }
  if (len > 0) {
    const c1 = <u32>load<u8>(p);
    const c2 = <u32>load<u8>(p + (len >> 1));
    const c3 = <u32>load<u8>(p + len - 1);
    const combined = (c1 << 16) | (c2 << 24) | c3 | (<u32>len << 8);
    return avalanche64(<u64>(combined ^ (load<u32>(s) ^ load<u32>(s, 4))));
  }
  return avalanche64(load<u64>(s, 56) ^ load<u64>(s, 64));
}

function upTo240(p: usize, len: usize, s: usize): u64 {
  let acc = <u64>len * PRIME64_1;
  if (len <= 128) {
    // Pairs of 16-byte pieces taken from both ends, working inwards.
    if (len > 32) {
      if (len > 64) {
        if (len > 96) {
          acc += mix16(p + 48, s + 96);
          acc += mix16(p + len - 64, s + 112);
        }
        acc += mix16(p + 32, s + 64);
        acc += mix16(p + len - 48, s + 80);
      }
      acc += mix16(p + 16, s + 32);
      acc += mix16(p + len - 32, s + 48);
    }
    acc += mix16(p, s);
    acc += mix16(p + len - 16, s + 16);
    return avalanche(acc);
  }
  // 129 to 240 bytes: the first eight pieces, a mix, then the rest against
  // the secret from offset 3, and the last 16 bytes against offset 119.
  for (let i: usize = 0; i < 8; i++) acc += mix16(p + 16 * i, s + 16 * i);
  acc = avalanche(acc);
  const pieces = len / 16;
  for (let i: usize = 8; i < pieces; i++) acc += mix16(p + 16 * i, s + 16 * (i - 8) + 3);
  acc += mix16(p + len - 16, s + 136 - 17);
  return avalanche(acc);
}

// lo32(x) * hi32(x) for both 64-bit lanes of x: the multiply of the long
// loop. WebAssembly has no direct equivalent of x86's pmuludq (which reads
// only the low half of each lane); i64x2.extmul_low_i32x4_u multiplies the
// first two 32-bit lanes of its operands, so one shuffle gathers the low
// halves there and another the high halves.
//
// Measured alternatives (64 KiB segments, 256 MiB, one thread, GiB/s for
// Node 20 / Bun / Deno): this form 18.2 / 16.0 / 16.6; one two-input shuffle
// per pair of vectors, then extmul_low and extmul_high, 20.0 / 12.9 / 15.0
// (JavaScriptCore lowers a two-input shuffle to two byte shuffles and an or);
// i64x2.mul of the masked and the shifted halves, about 11 on Node (it
// becomes three multiplies).
// @ts-ignore: decorator
@inline
function lowTimesHigh(x: v128): v128 {
  return i64x2.extmul_low_i32x4_u(i32x4.shuffle(x, x, 0, 2, 1, 3), i32x4.shuffle(x, x, 1, 3, 0, 2));
}

// More than 240 bytes. Eight 64-bit accumulators live in four i64x2 vectors.
// For each 64-byte stripe and each lane i, with x = data ^ secret:
//   acc[i] += lo32(x[i]) * hi32(x[i]);  acc[i ^ 1] += data[i].
// After every block of 16 stripes the accumulators are scrambled. Then come
// the remaining whole stripes, a last stripe that ends exactly at the end of
// the input, and the merge of the eight lanes into one 64-bit result.
//
// data[i] goes into a separate sum per vector (s0..s3), whose lanes are
// swapped into the accumulators once per block rather than once per stripe:
// addition commutes, so the result is the same, and each stripe saves four
// shuffles (up to 10% faster). Unrolling the stripe loop by 2, 4 or 16 was
// slower on Node and on Bun.
function long(p: usize, len: usize, s: usize): u64 {
  let a0 = i64x2(<i64>PRIME32_3, <i64>PRIME64_1);
  let a1 = i64x2(<i64>PRIME64_2, <i64>PRIME64_3);
  let a2 = i64x2(<i64>PRIME64_4, <i64>PRIME32_2);
  let a3 = i64x2(<i64>PRIME64_5, <i64>PRIME32_1);
  let s0 = i64x2.splat(0);
  let s1 = i64x2.splat(0);
  let s2 = i64x2.splat(0);
  let s3 = i64x2.splat(0);
  const prime = i64x2.splat(<i64>PRIME32_1);

  // Whole stripes before the last one; the last may overlap them.
  let stripes = (len - 1) / STRIPE;
  let run = min<usize>(stripes, STRIPES_PER_BLOCK);
  let last = false;
  let q = p;
  let k = s;
  while (true) {
    for (let n = run; n > 0; n--) {
      const d0 = v128.load(q);
      s0 = i64x2.add(s0, d0);
      a0 = i64x2.add(a0, lowTimesHigh(v128.xor(d0, v128.load(k))));
      const d1 = v128.load(q, 16);
      s1 = i64x2.add(s1, d1);
      a1 = i64x2.add(a1, lowTimesHigh(v128.xor(d1, v128.load(k, 16))));
      const d2 = v128.load(q, 32);
      s2 = i64x2.add(s2, d2);
      a2 = i64x2.add(a2, lowTimesHigh(v128.xor(d2, v128.load(k, 32))));
      const d3 = v128.load(q, 48);
      s3 = i64x2.add(s3, d3);
      a3 = i64x2.add(a3, lowTimesHigh(v128.xor(d3, v128.load(k, 48))));
      q += STRIPE;
      k += 8;
    }
    a0 = i64x2.add(a0, i64x2.shuffle(s0, s0, 1, 0));
    a1 = i64x2.add(a1, i64x2.shuffle(s1, s1, 1, 0));
    a2 = i64x2.add(a2, i64x2.shuffle(s2, s2, 1, 0));
    a3 = i64x2.add(a3, i64x2.shuffle(s3, s3, 1, 0));
    s0 = i64x2.splat(0);
    s1 = i64x2.splat(0);
    s2 = i64x2.splat(0);
    s3 = i64x2.splat(0);
    if (last) break;
    if (run == STRIPES_PER_BLOCK) {
      // A whole block: scramble with the secret's last 64 bytes, then go on.
      const key = s + SECRET_BYTES - STRIPE;
      a0 = i64x2.mul(v128.xor(v128.xor(a0, i64x2.shr_u(a0, 47)), v128.load(key)), prime);
      a1 = i64x2.mul(v128.xor(v128.xor(a1, i64x2.shr_u(a1, 47)), v128.load(key, 16)), prime);
      a2 = i64x2.mul(v128.xor(v128.xor(a2, i64x2.shr_u(a2, 47)), v128.load(key, 32)), prime);
      a3 = i64x2.mul(v128.xor(v128.xor(a3, i64x2.shr_u(a3, 47)), v128.load(key, 48)), prime);
      stripes -= run;
      run = min<usize>(stripes, STRIPES_PER_BLOCK);
      k = s;
    } else {
      // The whole stripes are done (a partial block is not scrambled): one
      // more stripe, the input's last 64 bytes, against the secret 7 bytes
      // before its last stripe.
      last = true;
      run = 1;
      q = p + len - STRIPE;
      k = s + SECRET_BYTES - STRIPE - 7;
    }
  }

  const m = s + 11;
  let result = <u64>len * PRIME64_1;
  result += fold64(<u64>i64x2.extract_lane(a0, 0) ^ load<u64>(m), <u64>i64x2.extract_lane(a0, 1) ^ load<u64>(m, 8));
  result += fold64(<u64>i64x2.extract_lane(a1, 0) ^ load<u64>(m, 16), <u64>i64x2.extract_lane(a1, 1) ^ load<u64>(m, 24));
  result += fold64(<u64>i64x2.extract_lane(a2, 0) ^ load<u64>(m, 32), <u64>i64x2.extract_lane(a2, 1) ^ load<u64>(m, 40));
  result += fold64(<u64>i64x2.extract_lane(a3, 0) ^ load<u64>(m, 48), <u64>i64x2.extract_lane(a3, 1) ^ load<u64>(m, 56));
  return avalanche(result);
}

/**
 * XXH3-64 with seed 0 of `len` bytes at `ptr`, with the 192-byte default
 * secret found at `secret`. Reads memory only.
 */
export function xxh3(ptr: usize, len: usize, secret: usize): u64 {
  if (len <= 16) return upTo16(ptr, len, secret);
  if (len <= 240) return upTo240(ptr, len, secret);
  return long(ptr, len, secret);
}
