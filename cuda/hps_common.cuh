// Shared definitions of the hps GPU kernels: key sentinels and the key hash.
//
// The NumPy reference (runtime/gpu/reference.py) implements the same hash bit for bit, so the
// GPU and the CPU fallback place every key in the same cache set.
#pragma once

#include <stdint.h>

// The empty-slot marker of the int64 key space; HPS's GPU cache uses the same value, so tables
// must not contain it (`hps table verify` reports it).
#define HPS_EMPTY_KEY ((int64_t)0x7FFFFFFFFFFFFFFFLL)

namespace hps {

__device__ __forceinline__ uint64_t rotr64(uint64_t x, int r) {
  return (x >> r) | (x << (64 - r));
}

// rrxmrrxmsx_0 (Pelle Evensen): HPS's partition mixer, also a good set/digest hash.
__device__ __forceinline__ uint64_t mix64(int64_t key) {
  uint64_t x = (uint64_t)key;
  x ^= rotr64(x, 25) ^ rotr64(x, 50);
  x *= 0xA24BAED4963EE407ULL;
  x ^= rotr64(x, 24) ^ rotr64(x, 49);
  x *= 0x9FB21C651E98DF25ULL;
  return x ^ (x >> 28);
}

// Map a hash onto [0, n) with a multiply-shift (no 64-bit division on the GPU).
__device__ __forceinline__ uint32_t fast_range(uint64_t hash, uint32_t n) {
  return (uint32_t)(((hash >> 32) * (uint64_t)n) >> 32);
}

}  // namespace hps
