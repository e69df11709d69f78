// The dynamic GPU embedding cache: a set-associative cache of HPS_WAYS ways per set.
//
// Layout (all arrays in device memory, num_sets × HPS_WAYS slots, slot = set * HPS_WAYS + way):
//   cache_keys  int64[slots]        HPS_EMPTY_KEY in empty ways. A set's keys are contiguous
//                                   and are the probe's only metadata: a lookup reads its set's
//                                   keys at once (8 ways: 64 bytes, one L2 fetch) and compares
//                                   them, so the read that finds a key also proves the hit.
//   scores      uint32[slots]       LFU score with dynamic aging (LFU-DA)
//   hits        uint8[slots]        sampled hits of large queries not yet added to the scores
//                                   (read and written as uint32 words of 4 slots; the driver
//                                   pads the array to a multiple of 16 slots for dc_fold_hits)
//   floors      uint32[num_sets]    per set: score of the last victim (the aging floor)
//   values      float[slots * dim]  one row per slot
//
// Why no digests: with 32-way sets a probe reads the set's 32 digests (two sectors), then the
// key of the first digest match (a third sector, rarely in L2) to prove the hit, and rewrites
// the row when the guess is wrong. Sets small enough that their keys fit one L2 fetch need one
// read and lose almost nothing in hit rate. Measured on an H100 80GB HBM3, 1 M-key query at dim
// 32 on a full cache: 0.96 of a plain gather with 8-way sets, 0.90 with 32-way sets and 16-bit
// digests; Zipf hit rate 0.9631 of ideal with 8 ways, 0.9652 with 32.
//
// Replacement is LFU with dynamic aging in units of HPS_HIT_SAMPLE: a hit adds HPS_HIT_SAMPLE to
// the slot's score when the key's sampling hash for this query picks it (1 time in
// HPS_HIT_SAMPLE, so most hits write nothing); a new key takes an empty way, else evicts the way
// with the smallest score (ties: lowest way), and starts at the victim's score + 1, so
// long-idle popular keys eventually age out while a new key stays cheap to evict until hit.
//
// Where a hit is counted: small queries add to the 32-bit score directly. Large (de-duplicated)
// queries add the key's occurrences, capped at HPS_HIT_WEIGHT_CAP, to the slot's hit byte
// instead: a 1-byte-per-slot array is small enough to stay in L2, so these atomics never go to
// DRAM, whereas score atomics miss L2 and cost about 5 % of a 1 M-key query (docs/benchmarks.md).
// dc_fold_hits adds the bytes into the scores (× HPS_HIT_SAMPLE) and clears them; the driver runs
// it before anything reads or rewrites scores, and often enough that no byte can overflow.
//
// Every entry point is `extern "C"` so the driver (runtime/gpu/kernels.py) can look it up by
// name; tile widths T (lanes cooperating on one key) are instantiated explicitly.
#include "hps_common.cuh"

namespace hps {

// Overwrite the values of keys already cached (absent keys are ignored; scores unchanged).
template <int T>
__device__ void update(const int64_t* __restrict__ keys, const float* __restrict__ rows,
                       int64_t n, const int64_t* __restrict__ cache_keys,
                       float* __restrict__ values, uint32_t num_sets, int dim,
                       unsigned* __restrict__ updated) {
  auto tile = cg::tiled_partition<T>(cg::this_thread_block());
  const int64_t tiles = ((int64_t)gridDim.x * blockDim.x) / T;
  const int64_t first = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / T;
  const bool vec4 = (dim & 3) == 0;
  for (int64_t i = first; i < n; i += tiles) {
    const int64_t key = keys[i];
    const uint32_t set = set_of(mix64(key), num_sets);
    const int way = find_way<T>(tile, cache_keys, set, key);
    if (way >= 0) {
      const size_t slot = (size_t)set * HPS_WAYS + way;
      copy_row<T>(tile, rows + i * (int64_t)dim, values + slot * dim, dim, vec4);
      if (tile.thread_rank() == 0) atomicAdd(updated, 1u);
    }
  }
}

// Remove keys from the cache (absent keys are ignored).
template <int T>
__device__ void invalidate(const int64_t* __restrict__ keys, int64_t n,
                           int64_t* __restrict__ cache_keys, unsigned* __restrict__ scores,
                           uint8_t* __restrict__ hits, uint32_t num_sets,
                           unsigned* __restrict__ removed) {
  auto tile = cg::tiled_partition<T>(cg::this_thread_block());
  const int64_t tiles = ((int64_t)gridDim.x * blockDim.x) / T;
  const int64_t first = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / T;
  for (int64_t i = first; i < n; i += tiles) {
    const int64_t key = keys[i];
    const uint32_t set = set_of(mix64(key), num_sets);
    const int way = find_way<T>(tile, cache_keys, set, key);
    if (way >= 0 && tile.thread_rank() == 0) {
      const size_t slot = (size_t)set * HPS_WAYS + way;
      cache_keys[slot] = HPS_EMPTY_KEY;
      scores[slot] = 0;
      hits[slot] = 0;  // uncounted hits of the old key must not reach a later one
      atomicAdd(removed, 1u);
    }
  }
}

}  // namespace hps

// Look up n keys: hits copy their row to out[i] and, when sampled (seed: the query's sampling
// seed), count weights[i] hits (weights null: 1; a de-duplicated batch passes each key's
// occurrence count): count_hits 0 counts nothing, 1 adds HPS_HIT_SAMPLE × weight to the slot's
// score, 2 adds min(weight, HPS_HIT_WEIGHT_CAP) to the slot's hit byte. Misses write the default
// value to out[i] and append (key, i) to the miss list; with `publish`, the miss count is
// published there and the counter reset for the next launch (hps::publish_total). `keys` and
// `out` may be host-mapped memory: a small lookup then needs no copy before or after it.
// Read-only except scores and hits, so several queries may run at once; replace/update/
// invalidate must not run concurrently (one stream per cache orders them).
//
// One warp takes 32·K consecutive keys (K = HPS_KEYS_PER_LANE): each lane probes its K keys,
// so a warp has 32·K independent probes in flight; then the warp copies the rows together
// (warp_copy_rows_k). A probe is one read of the set's keys (find_in_set), so the row's address
// is known, and exact, as soon as that read returns.
namespace hps {
template <bool kPublish>
__device__ __forceinline__ void query(const int64_t* __restrict__ keys,
                                      const unsigned* __restrict__ weights, int64_t n,
                                      const int64_t* __restrict__ cache_keys,
                                      unsigned* __restrict__ scores, unsigned* __restrict__ hits,
                                      const float* __restrict__ values, uint32_t num_sets,
                                      int dim, float default_value, float* __restrict__ out,
                                      int64_t* __restrict__ miss_keys,
                                      int64_t* __restrict__ miss_pos,
                                      unsigned* __restrict__ miss_count, int count_hits,
                                      int64_t seed, unsigned* __restrict__ ticket,
                                      unsigned* __restrict__ publish) {
  constexpr int K = HPS_KEYS_PER_LANE;
  auto warp = cg::tiled_partition<32>(cg::this_thread_block());
  const int lane = warp.thread_rank();
  const int64_t warps = ((int64_t)gridDim.x * blockDim.x) / 32;
  const uint64_t policy = meta_policy();
  for (int64_t base = (((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32) * (32 * K);
       base < n; base += warps * (32 * K)) {
    int64_t key[K];
    size_t slot[K];
    int way[K];
    const float* src[K];
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t i = base + k * 32 + lane;
      key[k] = i < n ? keys[i] : HPS_EMPTY_KEY;
    }
#pragma unroll
    for (int k = 0; k < K; ++k) {
      way[k] = -1;
      slot[k] = 0;
      if (key[k] != HPS_EMPTY_KEY) {
        const uint32_t set = set_of(mix64(key[k]), num_sets);
        way[k] = find_in_set(cache_keys + (size_t)set * HPS_WAYS, key[k], policy);
        slot[k] = (size_t)set * HPS_WAYS + way[k];
      }
      src[k] = way[k] >= 0 ? values + slot[k] * dim : nullptr;
    }
    const int rows = (int)min((int64_t)(32 * K), n - base);
    warp_copy_rows_k<K>(warp, src, out + base * dim, rows, dim, default_value);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t i = base + k * 32 + lane;
      const bool sampled = (mix64(key[k] ^ seed) & (HPS_HIT_SAMPLE - 1)) == 0;
      if (way[k] >= 0 && count_hits && sampled) {
        const unsigned weight = weights ? weights[i] : 1u;
        if (count_hits == 2) {  // byte (slot & 3) of word slot / 4 (little-endian)
          atomicAdd(hits + (slot[k] >> 2), min(weight, (unsigned)HPS_HIT_WEIGHT_CAP)
                                               << ((slot[k] & 3) * 8));
        } else {
          atomicAdd(scores + slot[k], weight << HPS_HIT_SAMPLE_SHIFT);
        }
      }
      warp_append_misses(warp, i < n && way[k] < 0, key[k], i, miss_keys, miss_pos,
                         miss_count);
    }
  }
  if (kPublish) publish_total(miss_count, ticket, publish);
}
}  // namespace hps

// Large lookups: the count stays in miss_count (the caller zeroes and reads it).
extern "C" __global__ void HPS_COPY_BOUNDS dc_query(
    const int64_t* __restrict__ keys, const unsigned* __restrict__ weights, int64_t n,
    const int64_t* __restrict__ cache_keys, unsigned* __restrict__ scores,
    unsigned* __restrict__ hits, const float* __restrict__ values, uint32_t num_sets, int dim,
    float default_value, float* __restrict__ out, int64_t* __restrict__ miss_keys,
    int64_t* __restrict__ miss_pos, unsigned* __restrict__ miss_count, int count_hits,
    int64_t seed) {
  hps::query<false>(keys, weights, n, cache_keys, scores, hits, values, num_sets, dim,
                    default_value, out, miss_keys, miss_pos, miss_count, count_hits, seed,
                    nullptr, nullptr);
}

// Small lookups (the mapped route): the count is published to `publish` and the counter and
// `ticket` reset by the last block (hps::publish_total). A kernel of its own, so that the
// large lookups' code carries neither the barrier nor the registers it adds.
extern "C" __global__ void HPS_COPY_BOUNDS dc_query_published(
    const int64_t* __restrict__ keys, const unsigned* __restrict__ weights, int64_t n,
    const int64_t* __restrict__ cache_keys, unsigned* __restrict__ scores,
    unsigned* __restrict__ hits, const float* __restrict__ values, uint32_t num_sets, int dim,
    float default_value, float* __restrict__ out, int64_t* __restrict__ miss_keys,
    int64_t* __restrict__ miss_pos, unsigned* __restrict__ miss_count, int count_hits,
    int64_t seed, unsigned* __restrict__ ticket, unsigned* __restrict__ publish) {
  hps::query<true>(keys, weights, n, cache_keys, scores, hits, values, num_sets, dim,
                   default_value, out, miss_keys, miss_pos, miss_count, count_hits, seed, ticket,
                   publish);
}

// Insert keys with their rows, evicting by LFU-DA when a set is full. Keys already cached only
// gain 1 score (their value is not overwritten, as in HPS's Replace).
//
// The batch is grouped by set on the host: segment s holds the keys of set seg_sets[s] at
// [seg_offsets[s], seg_offsets[s+1]) of seg_keys / seg_rows, in insertion order. One warp owns
// one set and walks its keys in order, so the outcome is deterministic and needs no locks; the
// NumPy reference reproduces it exactly. Lane l < HPS_WAYS holds way l of the set in registers;
// every lane of the warp copies the rows.
extern "C" __global__ void dc_replace(const int64_t* __restrict__ seg_keys,
                                      const float* __restrict__ seg_rows,
                                      const uint32_t* __restrict__ seg_sets,
                                      const int64_t* __restrict__ seg_offsets, int num_segments,
                                      int64_t* __restrict__ cache_keys,
                                      unsigned* __restrict__ scores, uint8_t* __restrict__ hits,
                                      unsigned* __restrict__ floors, float* __restrict__ values,
                                      int dim, unsigned* __restrict__ inserted) {
  auto warp = cg::tiled_partition<32>(cg::this_thread_block());
  const int segment = (int)(((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32);
  if (segment >= num_segments) return;
  const int lane = warp.thread_rank();
  const bool holds_way = lane < HPS_WAYS;
  const uint32_t set = seg_sets[segment];
  const size_t base = (size_t)set * HPS_WAYS;
  int64_t my_key = holds_way ? cache_keys[base + lane] : HPS_EMPTY_KEY;
  unsigned my_score = holds_way ? scores[base + lane] : 0u;
  unsigned floor_score = floors[set];
  unsigned new_keys = 0;
  const bool vec4 = (dim & 3) == 0;
  for (int64_t j = seg_offsets[segment]; j < seg_offsets[segment + 1]; ++j) {
    const int64_t key = seg_keys[j];
    const uint32_t present = warp.ballot(holds_way && my_key == key);
    if (present) {
      if (lane == __ffs(present) - 1) my_score += 1u;
      continue;
    }
    int way;
    const uint32_t empty = warp.ballot(holds_way && my_key == HPS_EMPTY_KEY);
    if (empty) {
      way = __ffs(empty) - 1;
    } else {
      // Victim: the smallest score, ties to the lowest way (pack score and lane, take the min;
      // lanes without a way never win).
      uint64_t packed = holds_way ? ((uint64_t)my_score << 5) | (uint64_t)lane : ~0ull;
      for (int offset = 16; offset > 0; offset >>= 1) {
        const uint64_t other = warp.shfl_xor(packed, offset);
        packed = other < packed ? other : packed;
      }
      way = (int)(packed & 31u);
      floor_score = (unsigned)(packed >> 5);
    }
    if (lane == way) {
      my_key = key;
      my_score = floor_score + 1u;
      hits[base + way] = 0;  // hits still uncounted belonged to the evicted key
    }
    hps::copy_row<32>(warp, seg_rows + j * (int64_t)dim, values + (base + way) * dim, dim, vec4);
    ++new_keys;
  }
  if (holds_way) {
    cache_keys[base + lane] = my_key;
    scores[base + lane] = my_score;
  }
  if (lane == 0) {
    floors[set] = floor_score;
    if (new_keys) atomicAdd(inserted, new_keys);
  }
}

// Add the hit bytes into the scores and clear them: thread t takes slots [16t, 16t + 16) (both
// arrays are padded to a multiple of 16 slots) with 16-byte loads and stores. Only words with
// hits are written back.
extern "C" __global__ void dc_fold_hits(uint4* __restrict__ hits, uint4* __restrict__ scores,
                                        int64_t groups) {
  for (int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups;
       g += (int64_t)gridDim.x * blockDim.x) {
    const uint4 h = hits[g];
    if (!(h.x | h.y | h.z | h.w)) continue;
    const uint32_t w[4] = {h.x, h.y, h.z, h.w};
#pragma unroll
    for (int q = 0; q < 4; ++q) {  // scores of slots 16g + 4q .. 16g + 4q + 3
      if (!w[q]) continue;
      uint4 s = scores[g * 4 + q];
      s.x += (w[q] & 0xFFu) << HPS_HIT_SAMPLE_SHIFT;
      s.y += ((w[q] >> 8) & 0xFFu) << HPS_HIT_SAMPLE_SHIFT;
      s.z += ((w[q] >> 16) & 0xFFu) << HPS_HIT_SAMPLE_SHIFT;
      s.w += (w[q] >> 24) << HPS_HIT_SAMPLE_SHIFT;
      scores[g * 4 + q] = s;
    }
    hits[g] = make_uint4(0, 0, 0, 0);
  }
}

// Emit the keys of sets [set_begin, set_end): appended to out_keys in arbitrary order (the
// driver sorts them); one thread per slot, one atomic per warp.
extern "C" __global__ void dc_dump(const int64_t* __restrict__ cache_keys, uint32_t set_begin,
                                   uint32_t set_end, int64_t* __restrict__ out_keys,
                                   unsigned* __restrict__ count) {
  auto warp = cg::tiled_partition<32>(cg::this_thread_block());
  const int64_t first = (int64_t)set_begin * HPS_WAYS, end = (int64_t)set_end * HPS_WAYS;
  const int64_t slot = first + (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int lane = warp.thread_rank();
  const int64_t key = slot < end ? cache_keys[slot] : HPS_EMPTY_KEY;
  const uint32_t used = warp.ballot(key != HPS_EMPTY_KEY);
  if (!used) return;
  unsigned at = 0;
  if (lane == 0) at = atomicAdd(count, (unsigned)__popc(used));
  at = warp.shfl(at, 0);
  if (key != HPS_EMPTY_KEY) out_keys[at + __popc(used & ((1u << lane) - 1u))] = key;
}

#define HPS_TILED(T)                                                                            \
  extern "C" __global__ void dc_update_t##T(const int64_t* keys, const float* rows, int64_t n,  \
                                            const int64_t* cache_keys, float* values,           \
                                            uint32_t num_sets, int dim, unsigned* updated) {    \
    hps::update<T>(keys, rows, n, cache_keys, values, num_sets, dim, updated);                  \
  }                                                                                             \
  extern "C" __global__ void dc_invalidate_t##T(const int64_t* keys, int64_t n,                 \
                                                int64_t* cache_keys, unsigned* scores,          \
                                                uint8_t* hits, uint32_t num_sets,               \
                                                unsigned* removed) {                            \
    hps::invalidate<T>(keys, n, cache_keys, scores, hits, num_sets, removed);                   \
  }

HPS_TILED(2)
HPS_TILED(4)
HPS_TILED(8)
HPS_TILED(16)
HPS_TILED(32)
