// Measurement only (benchmarks/study_key_sets.py): a query over small sets whose 64-bit keys
// are the probe's only metadata, no digests. A set of STUDY_WAYS ways keeps its keys
// contiguous (STUDY_WAYS * 8 bytes: 4 ways one 32-byte sector, 8 ways one 64-byte L2 fetch),
// so a probe is one dependent read that proves the hit exactly, with no second key read and
// no wrong guesses. Compiled with the production -D flags plus:
//   STUDY_WAYS   4, 8 or 16
//   STUDY_COUNT  0 no hit counting, 1 sampled hits into a byte per slot (atomic),
//                2 sampled hits into the 32-bit score (atomic), 3 every hit sets a byte
//                (plain store, CLOCK-like)
//   STUDY_SEQUENTIAL  1: read the set sector by sector, the next only when the previous one is
//                full and has no match (fewer bytes, more round trips)
#include "hps_common.cuh"

#ifndef STUDY_WAYS
#define STUDY_WAYS 8
#endif
#ifndef STUDY_COUNT
#define STUDY_COUNT 1
#endif
#ifndef STUDY_SEQUENTIAL
#define STUDY_SEQUENTIAL 0
#endif
#if HPS_WAYS != STUDY_WAYS
#error "compile with HPS_WAYS = STUDY_WAYS (benchmarks/study_key_sets.py does)"
#endif

namespace {

// The way of `key` among the STUDY_WAYS keys at `set_keys`, or -1: all at once, the production
// probe (hps::find_in_set; the driver compiles this file with HPS_WAYS = STUDY_WAYS), or one
// 32-byte sector at a time.
__device__ __forceinline__ int find_in_set(const int64_t* set_keys, int64_t key,
                                           uint64_t policy) {
#if STUDY_SEQUENTIAL
  const uint4* q = reinterpret_cast<const uint4*>(set_keys);
  for (int s = 0; s < STUDY_WAYS / 2; s += 2) {  // two 16-byte loads: four keys
    const uint4 a = hps::load_meta16(q + s, policy), b = hps::load_meta16(q + s + 1, policy);
    const int64_t k[4] = {(int64_t)(((uint64_t)a.y << 32) | a.x),
                          (int64_t)(((uint64_t)a.w << 32) | a.z),
                          (int64_t)(((uint64_t)b.y << 32) | b.x),
                          (int64_t)(((uint64_t)b.w << 32) | b.z)};
    bool full = true;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (k[j] == key) return 2 * s + j;
      full &= k[j] != HPS_EMPTY_KEY;
    }
    if (!full) return -1;  // ways fill in order: an empty way ends the set
  }
  return -1;
#else
  return hps::find_in_set(set_keys, key, policy);
#endif
}

}  // namespace

extern "C" __global__ void study_query(const int64_t* __restrict__ keys, int64_t n,
                                       const int64_t* __restrict__ cache_keys,
                                       unsigned* __restrict__ scores,
                                       unsigned* __restrict__ hits,
                                       const float* __restrict__ values, uint32_t num_sets,
                                       int dim, float default_value, float* __restrict__ out,
                                       int64_t* __restrict__ miss_keys,
                                       int64_t* __restrict__ miss_pos,
                                       unsigned* __restrict__ miss_count, int64_t seed) {
  auto warp = cg::tiled_partition<32>(cg::this_thread_block());
  const int lane = warp.thread_rank();
  const int64_t warps = ((int64_t)gridDim.x * blockDim.x) / 32;
  const uint64_t policy = hps::meta_policy();
  for (int64_t base = (((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32) * 32; base < n;
       base += warps * 32) {
    const int64_t i = base + lane;
    const int64_t key = i < n ? keys[i] : HPS_EMPTY_KEY;
    int way = -1;
    size_t slot = 0;
    if (key != HPS_EMPTY_KEY) {
      const uint32_t set = hps::set_of(hps::mix64(key), num_sets);
      way = find_in_set(cache_keys + (size_t)set * STUDY_WAYS, key, policy);
      slot = (size_t)set * STUDY_WAYS + way;
    }
    const float* src = way >= 0 ? values + slot * dim : nullptr;
    const int rows = (int)min((int64_t)32, n - base);
    hps::warp_copy_rows(warp, src, out + base * dim, rows, dim, default_value);
#if STUDY_COUNT == 1 || STUDY_COUNT == 2
    const bool sampled = (hps::mix64(key ^ seed) & (HPS_HIT_SAMPLE - 1)) == 0;
    if (way >= 0 && sampled) {
#if STUDY_COUNT == 1
      atomicAdd(hits + (slot >> 2), 1u << ((slot & 3) * 8));
#else
      atomicAdd(scores + slot, HPS_HIT_SAMPLE);
#endif
    }
#elif STUDY_COUNT == 3
    if (way >= 0) reinterpret_cast<uint8_t*>(hits)[slot] = 1;
#endif
    hps::warp_append_misses(warp, i < n && way < 0, key, i, miss_keys, miss_pos, miss_count);
  }
}
