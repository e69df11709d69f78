// The dynamic GPU embedding cache: a set-associative cache of HPS_WAYS ways per set, where a key
// lives in one of two sets (two-choice hashing: hps::set_of, hps::set2_of).
//
// Layout (all arrays in device memory, num_sets × HPS_WAYS slots, slot = set * HPS_WAYS + way):
//   cache_keys  int64[slots]        HPS_EMPTY_KEY in empty ways. A set's keys are contiguous
//                                   and are the probe's only metadata: a lookup reads the keys of
//                                   both its sets at once (8 ways: two 64-byte fetches) and
//                                   compares them, so the read that finds a key also proves the
//                                   hit, and a miss costs no second round trip.
//   scores      uint32[slots]       LFU score with dynamic aging (LFU-DA)
//   hits        uint8[slots]        sampled hits of large queries not yet added to the scores
//                                   (read and written as uint32 words of 4 slots; the driver
//                                   pads the array to a multiple of 16 slots for dc_fold_hits)
//   floors      uint32[num_sets]    per set: score of the last victim (the aging floor)
//   values      float[slots * dim]  one row per slot
//
// Why two sets: with one set per key, a cache with as many slots as rows holds only about 86 %
// of them (some sets get more than 8 keys, others fewer). With two candidate sets and 3 % more
// slots than rows, start-up prefill (runtime/gpu/prefill_plan.py, cuckoo moves planned on the
// host) places every row, and the query reading both sets costs nothing measurable against one
// set on a 1 M-key query (0.936-0.952 vs 0.934-0.936 of a plain gather at dim 32, H100).
//
// Replacement is LFU with dynamic aging in units of HPS_HIT_SAMPLE over the 16 ways of a key's
// two sets: a hit adds HPS_HIT_SAMPLE to the slot's score when the key's sampling hash for this
// query picks it (1 time in HPS_HIT_SAMPLE, so most hits write nothing); a new key takes the
// first empty way of its primary, then of its second set, else evicts the way with the smallest
// score, and starts at the victim's score + 1 (the larger floor of its sets + 1 in an empty
// way), so long-idle popular keys eventually age out while a new key stays cheap to evict.
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
    const int64_t slot = find_slot<T>(tile, cache_keys, num_sets, keys[i]);
    if (slot >= 0) {
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
    const int64_t slot = find_slot<T>(tile, cache_keys, num_sets, keys[i]);
    if (slot >= 0 && tile.thread_rank() == 0) {
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
// value to out[i] and append (key, i) to the miss list; with weights, their occurrences are also
// added to miss_count[1] (the missed key occurrences of a de-duplicated batch). With `publish`,
// the miss count is published there and the counter reset for the next launch
// (hps::publish_total). `keys`, `out` and the miss list may be host-mapped memory: a small
// lookup then needs no copy before or after it.
// Read-only except scores and hits, so several queries may run at once; replace/update/
// invalidate must not run concurrently (one stream per cache orders them).
//
// One warp takes 32·K consecutive keys (K = HPS_KEYS_PER_LANE): each lane probes its K keys,
// so a warp has 32·K independent probes in flight; then the warp copies the rows together
// (warp_copy_rows_k). A probe is one read of the keys of the key's two sets (find_in_sets), so
// the row's address is known, and exact, as soon as that read returns.
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
        uint32_t set;
        way[k] = find_in_sets(cache_keys, key[k], mix64(key[k]), num_sets, policy, set);
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
      const bool missed = i < n && way[k] < 0;
      warp_append_misses(warp, missed, key[k], i, miss_keys, miss_pos, miss_count);
      if (weights != nullptr) {  // de-duplicated: the missed occurrences, one atomic per warp
        const unsigned occurrences =
            __reduce_add_sync(0xFFFFFFFFu, missed ? weights[i] : 0u);
        if (lane == 0 && occurrences) atomicAdd(miss_count + 1, occurrences);
      }
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

// Insert keys with their rows, evicting by LFU-DA over the 16 ways of each key's two sets (one
// round of an insert batch). Per key:
//   - a key already in one of its sets gains 1 score (its row is not rewritten, as in HPS's
//     Replace);
//   - else it takes the first empty way of its primary, else of its second set, and starts at
//     the larger aging floor of the two + 1;
//   - else the way with the smallest score of the 16 is evicted (ties: the primary's ways first,
//     then the lowest way); that set's floor becomes the victim's score and the new key starts
//     at it + 1.
// The host splits a batch into rounds in which no two keys share a set, each set's keys in
// batch order (reference.py replace_rounds), and launches one round after another on the
// cache's stream: the outcome is that of inserting the keys one at a time, deterministic and
// without locks, and the NumPy reference reproduces it exactly. One warp per key: lanes 0-7 hold
// the primary's ways, lanes 8-15 the second set's; every lane copies the row.
extern "C" __global__ void dc_replace_round(const int64_t* __restrict__ round_keys,
                                            const float* __restrict__ round_rows, int n,
                                            int64_t* __restrict__ cache_keys,
                                            unsigned* __restrict__ scores,
                                            uint8_t* __restrict__ hits,
                                            unsigned* __restrict__ floors,
                                            float* __restrict__ values, uint32_t num_sets, int dim,
                                            unsigned* __restrict__ inserted) {
  auto warp = cg::tiled_partition<32>(cg::this_thread_block());
  const int j = (int)(((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32);
  if (j >= n) return;  // warp-uniform
  const int lane = warp.thread_rank();
  const int64_t key = round_keys[j];
  const uint64_t h = hps::mix64(key);
  const uint32_t a = hps::set_of(h, num_sets);
  const uint32_t b = hps::set2_of(h, num_sets, a);
  const bool holds = lane < 2 * HPS_WAYS;
  const uint32_t my_set = lane < HPS_WAYS ? a : b;
  const size_t my_slot = (size_t)my_set * HPS_WAYS + (lane % HPS_WAYS);
  const int64_t my_key = holds ? cache_keys[my_slot] : HPS_EMPTY_KEY;
  const unsigned my_score = holds ? scores[my_slot] : 0u;
  const uint32_t present = warp.ballot(holds && my_key == key);
  if (present) {
    if (lane == __ffs(present) - 1) scores[my_slot] = my_score + 1u;
    return;
  }
  const uint32_t empty = warp.ballot(holds && my_key == HPS_EMPTY_KEY);
  int way;  // 0..15: the primary's ways, then the second set's
  unsigned start;
  if (empty) {
    way = __ffs(empty) - 1;
    start = max(floors[a], floors[b]);
  } else {
    // The smallest score, ties to the lowest position (pack score and lane, take the min;
    // lanes without a way never win).
    uint64_t packed = holds ? ((uint64_t)my_score << 5) | (uint64_t)lane : ~0ull;
    for (int offset = 16; offset > 0; offset >>= 1) {
      const uint64_t other = warp.shfl_xor(packed, offset);
      packed = other < packed ? other : packed;
    }
    way = (int)(packed & 31u);
    start = (unsigned)(packed >> 5);
    if (lane == 0) floors[way < HPS_WAYS ? a : b] = start;
  }
  const size_t slot = (size_t)(way < HPS_WAYS ? a : b) * HPS_WAYS + (way % HPS_WAYS);
  if (lane == way) {
    cache_keys[slot] = key;
    scores[slot] = start + 1u;
    hits[slot] = 0;  // hits still uncounted belonged to the evicted key
  }
  hps::copy_row<32>(warp, round_rows + (int64_t)j * dim, values + slot * dim, dim,
                    (dim & 3) == 0);
  if (lane == 0) atomicAdd(inserted, 1u);
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
