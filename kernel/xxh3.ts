// XXH3-64 (seed 0) for blockmirror, in AssemblyScript with 128-bit SIMD.
//
// The module imports the volume's shared memory and hashes bytes where they
// lie. It has no data segment and no start function, so instantiating it
// against a live volume writes nothing. The 192-byte secret is read from the
// address the caller passes (the memory's reserved header page).

const PRIME32_1: u64 = 0x9e3779b1;
const PRIME64_1: u64 = 0x9e3779b185ebca87;
const PRIME64_2: u64 = 0xc2b2ae3d27d4eb4f;
const PRIME64_3: u64 = 0x165667b19e3779f9;
const PRIME64_4: u64 = 0x85ebca77c2b2ae63;
const PRIME64_5: u64 = 0x27d4eb2f165667c5;
const PRIME32_2: u64 = 0x85ebca77;
const PRIME32_3: u64 = 0xc2b2ae3d;
const PRIME_MX1: u64 = 0x165667919e3779f9;
const PRIME_MX2: u64 = 0x9fb21c651e98df25;

const STRIPE: usize = 64;
const SECRET_BYTES: usize = 192;
const STRIPES_PER_BLOCK: usize = (SECRET_BYTES - STRIPE) / 8; // 16
const BLOCK: usize = STRIPE * STRIPES_PER_BLOCK; // 1024

// @ts-ignore: decorator
@inline
function fold64(lhs: u64, rhs: u64): u64 {
  // The 128-bit product of lhs and rhs, with its halves xor-ed together.
  const loLo = (lhs & 0xffffffff) * (rhs & 0xffffffff);
  const hiLo = (lhs >> 32) * (rhs & 0xffffffff);
  const loHi = (lhs & 0xffffffff) * (rhs >> 32);
  const hiHi = (lhs >> 32) * (rhs >> 32);
  const cross = (loLo >> 32) + (hiLo & 0xffffffff) + loHi;
  const upper = (hiLo >> 32) + (cross >> 32) + hiHi;
  const lower = (cross << 32) | (loLo & 0xffffffff);
  return lower ^ upper;
}

// @ts-ignore: decorator
@inline
function avalanche(h: u64): u64 {
  h ^= h >> 37;
  h *= PRIME_MX1;
  return h ^ (h >> 32);
}

// @ts-ignore: decorator
@inline
function avalanche64(h: u64): u64 {
  h ^= h >> 33;
  h *= PRIME64_2;
  h ^= h >> 29;
  h *= PRIME64_3;
  return h ^ (h >> 32);
}

// @ts-ignore: decorator
@inline
function mix16(p: usize, s: usize): u64 {
  return fold64(load<u64>(p) ^ load<u64>(s), load<u64>(p, 8) ^ load<u64>(s, 8));
}

function short(p: usize, len: usize, s: usize): u64 {
  if (len > 8) {
    const lo = load<u64>(p) ^ (load<u64>(s, 24) ^ load<u64>(s, 32));
    const hi = load<u64>(p + len - 8) ^ (load<u64>(s, 40) ^ load<u64>(s, 48));
    return avalanche(<u64>len + bswap<u64>(lo) + hi + fold64(lo, hi));
  }
  if (len >= 4) {
    const in1 = <u64>load<u32>(p);
    const in2 = <u64>load<u32>(p + len - 4);
    let h = (in2 + (in1 << 32)) ^ (load<u64>(s, 8) ^ load<u64>(s, 16));
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
    return avalanche64(<u64>combined ^ <u64>(load<u32>(s) ^ load<u32>(s, 4)));
  }
  return avalanche64(load<u64>(s, 56) ^ load<u64>(s, 64));
}

function medium(p: usize, len: usize, s: usize): u64 {
  let acc = <u64>len * PRIME64_1;
  if (len <= 128) {
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
  for (let i: usize = 0; i < 8; i++) acc += mix16(p + 16 * i, s + 16 * i);
  acc = avalanche(acc);
  const rounds = len / 16;
  for (let i: usize = 8; i < rounds; i++) acc += mix16(p + 16 * i, s + 16 * (i - 8) + 3);
  acc += mix16(p + len - 16, s + 136 - 17);
  return avalanche(acc);
}

// One 64-byte stripe into the four accumulator vectors: for each 64-bit
// lane, acc[i ^ 1] += data[i] and acc[i] += lo32(data ^ key) * hi32(data ^ key).
// @ts-ignore: decorator
@inline
function lane(acc: v128, p: usize, k: usize): v128 {
  const data = v128.load(p);
  const dk = v128.xor(data, v128.load(k));
  const product = i64x2.extmul_low_i32x4_u(i32x4.shuffle(dk, dk, 0, 2, 1, 3), i32x4.shuffle(dk, dk, 1, 3, 0, 2));
  return i64x2.add(acc, i64x2.add(i64x2.shuffle(data, data, 1, 0), product));
}

function long(p: usize, len: usize, s: usize): u64 {
  let a0 = i64x2(<i64>PRIME32_3, <i64>PRIME64_1);
  let a1 = i64x2(<i64>PRIME64_2, <i64>PRIME64_3);
  let a2 = i64x2(<i64>PRIME64_4, <i64>PRIME32_2);
  let a3 = i64x2(<i64>PRIME64_5, <i64>PRIME32_1);
  const prime = i64x2.splat(<i64>PRIME32_1);
  const blocks = (len - 1) / BLOCK;
  const scrambleKey = s + SECRET_BYTES - STRIPE;
  for (let b: usize = 0; b < blocks; b++) {
    const base = p + b * BLOCK;
    for (let n: usize = 0; n < STRIPES_PER_BLOCK; n++) {
      const q = base + n * STRIPE;
      const k = s + n * 8;
      a0 = lane(a0, q, k);
      a1 = lane(a1, q + 16, k + 16);
      a2 = lane(a2, q + 32, k + 32);
      a3 = lane(a3, q + 48, k + 48);
    }
    // Scramble: acc = (acc ^ (acc >> 47) ^ key) * PRIME32_1.
    a0 = i64x2.mul(v128.xor(v128.xor(a0, i64x2.shr_u(a0, 47)), v128.load(scrambleKey)), prime);
    a1 = i64x2.mul(v128.xor(v128.xor(a1, i64x2.shr_u(a1, 47)), v128.load(scrambleKey, 16)), prime);
    a2 = i64x2.mul(v128.xor(v128.xor(a2, i64x2.shr_u(a2, 47)), v128.load(scrambleKey, 32)), prime);
    a3 = i64x2.mul(v128.xor(v128.xor(a3, i64x2.shr_u(a3, 47)), v128.load(scrambleKey, 48)), prime);
  }
  const base = p + blocks * BLOCK;
  const stripes = (len - 1 - blocks * BLOCK) / STRIPE;
  for (let n: usize = 0; n < stripes; n++) {
    const q = base + n * STRIPE;
    const k = s + n * 8;
    a0 = lane(a0, q, k);
    a1 = lane(a1, q + 16, k + 16);
    a2 = lane(a2, q + 32, k + 32);
    a3 = lane(a3, q + 48, k + 48);
  }
  const q = p + len - STRIPE;
  const k = s + SECRET_BYTES - STRIPE - 7;
  a0 = lane(a0, q, k);
  a1 = lane(a1, q + 16, k + 16);
  a2 = lane(a2, q + 32, k + 32);
  a3 = lane(a3, q + 48, k + 48);
  // Merge the eight accumulators.
  const m = s + 11;
  let result = <u64>len * PRIME64_1;
  result += fold64(<u64>i64x2.extract_lane(a0, 0) ^ load<u64>(m), <u64>i64x2.extract_lane(a0, 1) ^ load<u64>(m, 8));
  result += fold64(<u64>i64x2.extract_lane(a1, 0) ^ load<u64>(m, 16), <u64>i64x2.extract_lane(a1, 1) ^ load<u64>(m, 24));
  result += fold64(<u64>i64x2.extract_lane(a2, 0) ^ load<u64>(m, 32), <u64>i64x2.extract_lane(a2, 1) ^ load<u64>(m, 40));
  result += fold64(<u64>i64x2.extract_lane(a3, 0) ^ load<u64>(m, 48), <u64>i64x2.extract_lane(a3, 1) ^ load<u64>(m, 56));
  return avalanche(result);
}

/** XXH3-64 with seed 0 of `len` bytes at `ptr`, with the default secret stored at `secret`. */
export function xxh3(ptr: usize, len: usize, secret: usize): u64 {
  if (len <= 16) return short(ptr, len, secret);
  if (len <= 240) return medium(ptr, len, secret);
  return long(ptr, len, secret);
}
