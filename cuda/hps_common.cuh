// Shared definitions of the hps GPU kernels: key sentinel, key hash, tiles and row copies.
//
// The NumPy reference (runtime/gpu/reference.py) implements the same hash and set placement bit
// for bit, so the GPU and the CPU fallback put every key in the same cache set.
#pragma once

#include <stdint.h>
#include <cooperative_groups.h>

namespace cg = cooperative_groups;

// Constants come from the driver as -D flags (runtime/gpu/kernels.py `kernel_defines`), so the
// Python side (placement.py) and the kernels cannot disagree:
//   HPS_EMPTY_KEY  the empty-slot marker of the int64 key space (INT64_MAX, as in HPS's cache;
//                  tables must not contain it, `hps table verify` reports it)
//   HPS_WAYS       ways per set of the dynamic cache (placement.py WAYS, 8; the kernels also
//                  build with 4, 16 or 32 for studies); a set's keys are contiguous and a probe
//                  reads them all
//   HPS_HIT_SAMPLE_SHIFT  a hit counts in its slot's score 1 time in 2^shift (then adds 2^shift)
//   HPS_HIT_WEIGHT_CAP  most hits one key adds to its slot's hit byte in one query
#if !defined(HPS_EMPTY_KEY) || !defined(HPS_WAYS) || !defined(HPS_HIT_SAMPLE_SHIFT) || \
    !defined(HPS_HIT_WEIGHT_CAP)
#error "compile with -DHPS_EMPTY_KEY=... -DHPS_WAYS=... -DHPS_HIT_SAMPLE_SHIFT=... -DHPS_HIT_WEIGHT_CAP=... (runtime/gpu/kernels.py)"
#endif
static_assert(HPS_HIT_WEIGHT_CAP >= 1 && HPS_HIT_WEIGHT_CAP <= 255, "a hit byte holds 0..255");
#define HPS_HIT_SAMPLE (1u << HPS_HIT_SAMPLE_SHIFT)
static_assert(HPS_WAYS == 4 || HPS_WAYS == 8 || HPS_WAYS == 16 || HPS_WAYS == 32,
              "HPS_WAYS is 4, 8, 16 or 32 (a set's keys are read with 16-byte loads, and the "
              "warp that inserts into a set holds one way per lane)");

// Tuning knobs (defaults measured on an H100, see docs/benchmarks.md): loads each lane keeps in
// flight when copying rows, and the blocks per SM the row-copying kernels are built for (0: no
// register cap).
#ifndef HPS_COPY_UNROLL
#define HPS_COPY_UNROLL 4
#endif
#ifndef HPS_COPY_MIN_BLOCKS
#define HPS_COPY_MIN_BLOCKS 0
#endif
// Streaming hints on row copies (evict-first loads and stores): the rows pass through once, so
// they should not push the cache's probe metadata (the sets' keys, scores, hit bytes) out of L2.
#ifndef HPS_COPY_STREAMING
#define HPS_COPY_STREAMING 1
#endif
// Keep the probe metadata (the sets' keys) in L2 against the stream of rows: loads with an
// evict-last cache policy.
#ifndef HPS_META_EVICT_LAST
#define HPS_META_EVICT_LAST 1
#endif
// Keys each lane of a query (and of the gather it is measured against) takes per block: a warp
// probes and copies 32·K keys at a time, so the probe's latency is paid once per 32·K rows.
#ifndef HPS_KEYS_PER_LANE
#define HPS_KEYS_PER_LANE 1
#endif
#if HPS_COPY_MIN_BLOCKS > 0
#define HPS_COPY_BOUNDS __launch_bounds__(256, HPS_COPY_MIN_BLOCKS)
#else
#define HPS_COPY_BOUNDS
#endif

namespace hps {

__device__ __forceinline__ uint64_t rotr64(uint64_t x, int r) {
  return (x >> r) | (x << (64 - r));
}

// rrxmrrxmsx_0 (Pelle Evensen): HPS's partition mixer, also a good set hash.
__device__ __forceinline__ uint64_t mix64(int64_t key) {
  uint64_t x = (uint64_t)key;
  x ^= rotr64(x, 25) ^ rotr64(x, 50);
  x *= 0xA24BAED4963EE407ULL;
  x ^= rotr64(x, 24) ^ rotr64(x, 49);
  x *= 0x9FB21C651E98DF25ULL;
  return x ^ (x >> 28);
}

// The primary set of a key: a multiply-shift of the hash's high half onto [0, num_sets) (no
// division).
__device__ __forceinline__ uint32_t set_of(uint64_t hash, uint32_t num_sets) {
  return (uint32_t)(((hash >> 32) * (uint64_t)num_sets) >> 32);
}

// The second set of a key (two-choice hashing): the same multiply-shift of the hash's low half,
// the next set when that equals the primary `s1`, so the two differ whenever there are two sets
// (placement.py sets_of computes the same).
__device__ __forceinline__ uint32_t set2_of(uint64_t hash, uint32_t num_sets, uint32_t s1) {
  uint32_t s2 = (uint32_t)(((hash & 0xFFFFFFFFull) * (uint64_t)num_sets) >> 32);
  if (s2 == s1 && num_sets > 1) s2 = (s1 + 1 == num_sets) ? 0u : s1 + 1;
  return s2;
}

// Copy one row of `dim` floats with the T lanes of a tile: 16-byte accesses when both rows are
// 16-byte aligned (dim % 4 == 0 and aligned bases), 4-byte ones otherwise.
template <int T>
__device__ __forceinline__ void copy_row(const cg::thread_block_tile<T>& tile,
                                         const float* __restrict__ src, float* __restrict__ dst,
                                         int dim, bool vec4) {
  const int lane = tile.thread_rank();
  if (vec4) {
    const float4* s = reinterpret_cast<const float4*>(src);
    float4* d = reinterpret_cast<float4*>(dst);
    for (int i = lane; i < (dim >> 2); i += T) d[i] = s[i];
  } else {
    for (int i = lane; i < dim; i += T) dst[i] = src[i];
  }
}

template <int T>
__device__ __forceinline__ void fill_row(const cg::thread_block_tile<T>& tile,
                                         float* __restrict__ dst, int dim, float value,
                                         bool vec4) {
  const int lane = tile.thread_rank();
  if (vec4) {
    float4* d = reinterpret_cast<float4*>(dst);
    const float4 v = make_float4(value, value, value, value);
    for (int i = lane; i < (dim >> 2); i += T) d[i] = v;
  } else {
    for (int i = lane; i < dim; i += T) dst[i] = value;
  }
}

__device__ __forceinline__ uint64_t meta_policy() {
  uint64_t policy = 0;
#if HPS_META_EVICT_LAST
  asm("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(policy));
#endif
  return policy;
}

__device__ __forceinline__ uint4 load_meta16(const uint4* p, uint64_t policy) {
#if HPS_META_EVICT_LAST
  uint4 v;
  asm("ld.global.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p), "l"(policy));
  return v;
#else
  return *p;
#endif
}

// The way of `key` among the HPS_WAYS keys of a set already read (`v`, two keys per 16-byte
// word), or -1. A key is in at most one way.
__device__ __forceinline__ int match_way(const uint4 (&v)[HPS_WAYS / 2], int64_t key) {
  int way = -1;
#pragma unroll
  for (int s = 0; s < HPS_WAYS / 2; ++s) {
    if ((int64_t)(((uint64_t)v[s].y << 32) | v[s].x) == key) way = 2 * s;
    if ((int64_t)(((uint64_t)v[s].w << 32) | v[s].z) == key) way = 2 * s + 1;
  }
  return way;
}

// The way of `key` among the HPS_WAYS keys of one set (`set_keys`, 16-byte aligned), or -1:
// every key of the set is read at once and compared (benchmarks/study_key_sets.cu times it).
__device__ __forceinline__ int find_in_set(const int64_t* __restrict__ set_keys, int64_t key,
                                           uint64_t policy) {
  const uint4* q = reinterpret_cast<const uint4*>(set_keys);
  uint4 v[HPS_WAYS / 2];
#pragma unroll
  for (int s = 0; s < HPS_WAYS / 2; ++s) v[s] = load_meta16(q + s, policy);  // all in flight
  return match_way(v, key);
}

// Where `key` is cached: its way, -1 when absent, and in `set` the set that holds it (the
// primary when absent). A key lives in its primary set or its second set, never in both, so the
// keys of both sets are read at once (8 ways: two 64-byte fetches, all loads in flight before
// any compare) and one round trip proves a hit or a miss.
__device__ __forceinline__ int find_in_sets(const int64_t* __restrict__ cache_keys, int64_t key,
                                            uint64_t hash, uint32_t num_sets, uint64_t policy,
                                            uint32_t& set) {
  constexpr int kLoads = HPS_WAYS / 2;  // two keys per 16-byte load
  const uint32_t s1 = set_of(hash, num_sets);
  const uint32_t s2 = set2_of(hash, num_sets, s1);
  const uint4* q1 = reinterpret_cast<const uint4*>(cache_keys + (size_t)s1 * HPS_WAYS);
  const uint4* q2 = reinterpret_cast<const uint4*>(cache_keys + (size_t)s2 * HPS_WAYS);
  uint4 a[kLoads], b[kLoads];
#pragma unroll
  for (int s = 0; s < kLoads; ++s) a[s] = load_meta16(q1 + s, policy);
#pragma unroll
  for (int s = 0; s < kLoads; ++s) b[s] = load_meta16(q2 + s, policy);
  const int w1 = match_way(a, key);
  const int w2 = match_way(b, key);
  set = w1 >= 0 ? s1 : (w2 >= 0 ? s2 : s1);
  return w1 >= 0 ? w1 : w2;
}

// The slot of `key` (set * HPS_WAYS + way) for the T lanes of a tile, -1 when absent (lane 0
// probes, every lane learns it).
template <int T>
__device__ __forceinline__ int64_t find_slot(const cg::thread_block_tile<T>& tile,
                                             const int64_t* __restrict__ cache_keys,
                                             uint32_t num_sets, int64_t key) {
  int64_t slot = -1;
  if (tile.thread_rank() == 0 && key != HPS_EMPTY_KEY) {
    uint32_t set;
    const int way = find_in_sets(cache_keys, key, mix64(key), num_sets, meta_policy(), set);
    if (way >= 0) slot = (int64_t)set * HPS_WAYS + way;
  }
  return tile.shfl(slot, 0);
}

__device__ __forceinline__ float4 load_row4(const float4* p) {
#if HPS_COPY_STREAMING
  return __ldcs(p);
#else
  return *p;
#endif
}

__device__ __forceinline__ void store_row4(float4* p, float4 v) {
#if HPS_COPY_STREAMING
  __stcs(p, v);
#else
  *p = v;
#endif
}

// Copy the rows of a warp's block of (up to) 32·K keys: row r comes from src[r / 32] of lane
// r % 32 (nullptr: fill with `fill`); the output rows are contiguous at `out` (rows × dim floats).
// Lanes walk the output block flat — consecutive lanes write consecutive 16-byte words, so
// stores are fully coalesced — and each lane issues U loads before its U stores, keeping many
// independent loads in flight (the kernel is bound by memory latency, not arithmetic).
template <int K, int U = HPS_COPY_UNROLL>
__device__ __forceinline__ void warp_copy_rows_k(const cg::thread_block_tile<32>& warp,
                                                 const float* const (&src)[K],
                                                 float* __restrict__ out, int rows, int dim,
                                                 float fill) {
  const int lane = warp.thread_rank();
  // The source of row `row`: every lane takes part in every shuffle.
  auto source = [&](int row) {
    const float* s = warp.shfl(src[0], row & 31);
#pragma unroll
    for (int k = 1; k < K; ++k) {
      const float* t = warp.shfl(src[k], row & 31);
      if ((row >> 5) == k) s = t;
    }
    return s;
  };
  if ((dim & 3) == 0) {
    const int dpr = dim >> 2;  // 16-byte words per row
    const int total = rows * dpr;
    const float4 dv = make_float4(fill, fill, fill, fill);
    float4* o = reinterpret_cast<float4*>(out);
    // Row of word g: a shift when dpr is a power of two (the usual dims), else a division.
    const int shift = (dpr & (dpr - 1)) == 0 ? __ffs(dpr) - 1 : -1;
    for (int g0 = 0; g0 < total; g0 += 32 * U) {
      float4 v[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int g = g0 + u * 32 + lane;
        const int row = min(shift >= 0 ? g >> shift : g / dpr, 32 * K - 1);
        const float* s = source(row);
        if (g < total) v[u] = s ? load_row4(reinterpret_cast<const float4*>(s) + g - row * dpr) : dv;
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int g = g0 + u * 32 + lane;
        if (g < total) store_row4(o + g, v[u]);
      }
    }
  } else {
    const int total = rows * dim;
    for (int g0 = 0; g0 < total; g0 += 32 * U) {
      float v[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int g = g0 + u * 32 + lane;
        const int row = min(g / dim, 32 * K - 1);
        const float* s = source(row);
        if (g < total) v[u] = s ? s[g - row * dim] : fill;
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int g = g0 + u * 32 + lane;
        if (g < total) out[g] = v[u];
      }
    }
  }
}

// The rows of a warp's 32 keys: lane r holds the source of output row r.
__device__ __forceinline__ void warp_copy_rows(const cg::thread_block_tile<32>& warp,
                                               const float* src, float* __restrict__ out,
                                               int rows, int dim, float fill) {
  const float* const sources[1] = {src};
  warp_copy_rows_k<1>(warp, sources, out, rows, dim, fill);
}

// Hand a grid-wide counter to the host without a memset before the launch or a copy after it:
// the last block to finish writes the total to `publish` (host-mapped or device memory) and
// zeroes the counter and the arrival ticket, so the next launch starts from 0. With `publish`
// null the counter is left as it is (the caller resets and reads it). Every thread of the block
// must call it: it synchronizes the block. (The threadFenceReduction pattern: each block fences
// its counter atomics before taking a ticket, the last ticket sees them all.)
__device__ __forceinline__ void publish_total(unsigned* __restrict__ counter,
                                              unsigned* __restrict__ ticket,
                                              unsigned* __restrict__ publish) {
  if (publish == nullptr) return;
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    if (atomicAdd(ticket, 1u) == gridDim.x - 1) {
      __threadfence();
      *publish = atomicExch(counter, 0u);
      *ticket = 0u;
    }
  }
}

// Append the keys of lanes with `miss` to a list (one atomic per warp).
__device__ __forceinline__ void warp_append_misses(const cg::thread_block_tile<32>& warp,
                                                   bool miss, int64_t key, int64_t pos,
                                                   int64_t* __restrict__ miss_keys,
                                                   int64_t* __restrict__ miss_pos,
                                                   unsigned* __restrict__ miss_count) {
  const uint32_t mask = warp.ballot(miss);
  if (!mask) return;
  unsigned at = 0;
  if (warp.thread_rank() == 0) at = atomicAdd(miss_count, (unsigned)__popc(mask));
  at = warp.shfl(at, 0);
  if (miss) {
    const unsigned off = at + __popc(mask & ((1u << warp.thread_rank()) - 1u));
    miss_keys[off] = key;
    miss_pos[off] = pos;
  }
}

}  // namespace hps
