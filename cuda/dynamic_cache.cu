// The dynamic GPU embedding cache: a set-associative cache of HPS_WAYS ways per set.
//
// Layout (all arrays in device memory, num_sets × HPS_WAYS slots, slot = set * HPS_WAYS + way):
//   cache_keys  int64[slots]        HPS_EMPTY_KEY in empty ways
//   digests     digest_t[slots]     HPS_DIGEST_BITS-bit hash digest of the key, 0 in empty ways
//   scores      uint32[slots]       LFU score with dynamic aging (LFU-DA)
//   hits        uint8[slots]        sampled hits of large queries not yet added to the scores
//                                   (read and written as uint32 words of 4 slots)
//   floors      uint32[num_sets]    per set: score of the last victim (the aging floor)
//   values      float[slots * dim]  one row per slot
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
// DRAM, whereas score atomics missed L2 and cost about 5 % of a 1 M-key query (benchmarks.md).
// dc_fold_hits adds the bytes into the scores (× HPS_HIT_SAMPLE) and clears them; the driver runs
// it before anything reads or rewrites scores, and often enough that no byte can overflow.
//
// Every entry point is `extern "C"` so the driver (runtime/gpu/kernels.py) can look it up by
// name; tile widths T (lanes cooperating on one key) are instantiated explicitly.
#include "hps_common.cuh"

// Measurement only (benchmarks/gpu_query_variants.py): take the first digest match as the hit
// without comparing keys, to measure what the compare costs. Wrong on digest collisions; never
// set by the driver.
#ifndef HPS_STUDY_TRUST_DIGEST
#define HPS_STUDY_TRUST_DIGEST 0
#endif
// Measurement only (16-bit digests): the probe reads a 128-byte line per half set (built by
// dc_study_build_lines; passed as `digests`): 16 digests, the low 32 bits of the 16 keys, 16 hit
// bytes. The first half is read, the second only when the first has no digest match; the guess
// is confirmed by the 32-bit tag in the same line (then by the full key on a mismatch), and hits
// count into the line's bytes: what a 16-way set in one line with 32-bit tags would cost.
#ifndef HPS_STUDY_LINE
#define HPS_STUDY_LINE 0
#endif
#if HPS_STUDY_LINE && HPS_DIGEST_BITS != 16
#error "HPS_STUDY_LINE needs 16-bit digests"
#endif

namespace hps {

// Overwrite the values of keys already cached (absent keys are ignored; scores unchanged).
template <int T>
__device__ void update(const int64_t* __restrict__ keys, const float* __restrict__ rows,
                       int64_t n, const int64_t* __restrict__ cache_keys,
                       const digest_t* __restrict__ digests, float* __restrict__ values,
                       uint32_t num_sets, int dim, unsigned* __restrict__ updated) {
  auto tile = cg::tiled_partition<T>(cg::this_thread_block());
  const int64_t tiles = ((int64_t)gridDim.x * blockDim.x) / T;
  const int64_t first = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / T;
  const bool vec4 = (dim & 3) == 0;
  for (int64_t i = first; i < n; i += tiles) {
    const int64_t key = keys[i];
    const uint64_t h = mix64(key);
    const uint32_t set = set_of(h, num_sets);
    const int way = find_way<T>(tile, cache_keys, digests, set, digest_of(h), key);
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
                           int64_t* __restrict__ cache_keys, digest_t* __restrict__ digests,
                           unsigned* __restrict__ scores, uint8_t* __restrict__ hits,
                           uint32_t num_sets, unsigned* __restrict__ removed) {
  auto tile = cg::tiled_partition<T>(cg::this_thread_block());
  const int64_t tiles = ((int64_t)gridDim.x * blockDim.x) / T;
  const int64_t first = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / T;
  for (int64_t i = first; i < n; i += tiles) {
    const int64_t key = keys[i];
    const uint64_t h = mix64(key);
    const uint32_t set = set_of(h, num_sets);
    const int way = find_way<T>(tile, cache_keys, digests, set, digest_of(h), key);
    if (way >= 0 && tile.thread_rank() == 0) {
      const size_t slot = (size_t)set * HPS_WAYS + way;
      cache_keys[slot] = HPS_EMPTY_KEY;
      digests[slot] = 0;
      scores[slot] = 0;
      hits[slot] = 0;  // uncounted hits of the old key must not reach a later one
      atomicAdd(removed, 1u);
    }
  }
}

// The probe of one key: its set, digest candidates and the guessed way (the first candidate),
// whose key is loaded but not yet compared.
struct Probe {
  int64_t key = HPS_EMPTY_KEY, guessed_key = HPS_EMPTY_KEY;
  uint32_t set = 0, candidates = 0;
  int way = -1;
  const float* src = nullptr;
};

__device__ __forceinline__ void probe_start(Probe& p, const int64_t* __restrict__ cache_keys,
                                            const digest_t* __restrict__ digests,
                                            const float* __restrict__ values, uint32_t num_sets,
                                            int dim, uint64_t policy) {
  if (p.key == HPS_EMPTY_KEY) return;
  const uint64_t h = mix64(p.key);
  p.set = set_of(h, num_sets);
#if HPS_STUDY_LINE
  {
    const uint8_t* lines = reinterpret_cast<const uint8_t*>(digests);
    const uint32_t dd = digest_of(h) * 0x00010001u;
    const uint4* l0 = reinterpret_cast<const uint4*>(lines + (size_t)p.set * 256);
    p.candidates = match8(load_meta16(l0, policy), dd) |
                   (match8(load_meta16(l0 + 1, policy), dd) << 8);
    if (!p.candidates) {
      const uint4* l1 = reinterpret_cast<const uint4*>(lines + (size_t)p.set * 256 + 128);
      p.candidates = (match8(load_meta16(l1, policy), dd) |
                      (match8(load_meta16(l1 + 1, policy), dd) << 8)) << 16;
    }
    if (p.candidates) {
      p.way = __ffs(p.candidates) - 1;
      const uint32_t* tag = reinterpret_cast<const uint32_t*>(
          lines + (size_t)p.set * 256 + (p.way >> 4) * 128 + 32 + 4 * (p.way & 15));
      uint32_t t;
      asm("ld.global.L2::cache_hint.u32 %0, [%1], %2;" : "=r"(t) : "l"(tag), "l"(policy));
      p.guessed_key = t == (uint32_t)p.key ? p.key : HPS_EMPTY_KEY;
      p.candidates = ~0u << p.way;  // a mismatch compares every later way by key
      p.src = values + ((size_t)p.set * HPS_WAYS + p.way) * dim;
    }
    return;
  }
#endif
  p.candidates = match_set(digests, p.set, digest_of(h), policy);
  if (p.candidates) {
    p.way = __ffs(p.candidates) - 1;
    // checked after the copy, so its latency hides behind the row loads
#if HPS_STUDY_TRUST_DIGEST  // measurement only: what the key compare costs (wrong on collisions)
    p.guessed_key = p.key;
#else
    p.guessed_key = load_meta8(cache_keys + (size_t)p.set * HPS_WAYS + p.way, policy);
#endif
    p.src = values + ((size_t)p.set * HPS_WAYS + p.way) * dim;
  }
}

// After the copy: confirm the guessed way; if it held another key, look at the other candidates.
// Returns whether the row that was copied is wrong and must be rewritten from p.src.
__device__ __forceinline__ bool probe_finish(Probe& p, const int64_t* __restrict__ cache_keys,
                                             const float* __restrict__ values, int dim) {
  if (p.way < 0 || p.guessed_key == p.key) return false;
  p.way = -1;
  uint32_t candidates = p.candidates & (p.candidates - 1);
  const int64_t* set_keys = cache_keys + (size_t)p.set * HPS_WAYS;
  while (candidates) {
    const int w = __ffs(candidates) - 1;
    if (set_keys[w] == p.key) {
      p.way = w;
      break;
    }
    candidates &= candidates - 1;
  }
  p.src = p.way >= 0 ? values + ((size_t)p.set * HPS_WAYS + p.way) * dim : nullptr;
  return true;
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
// (warp_copy_rows_k). The probe takes the first way whose digest matches and starts copying its
// row while the key compare that confirms it is still in flight; a wrong guess (another key with
// the same digest earlier in the set: ≈ 0.02 % of hits with 16-bit digests, ≈ 5 % with 8-bit)
// is found afterwards and its row rewritten.
namespace hps {
template <bool kPublish>
__device__ __forceinline__ void query(const int64_t* __restrict__ keys,
                                      const unsigned* __restrict__ weights, int64_t n,
                                      const int64_t* __restrict__ cache_keys,
                                      const digest_t* __restrict__ digests,
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
  const uint64_t policy = hps::meta_policy();
  for (int64_t base = (((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32) * (32 * K);
       base < n; base += warps * (32 * K)) {
    hps::Probe p[K];
    const float* src[K];
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t i = base + k * 32 + lane;
      if (i < n) p[k].key = keys[i];
    }
#pragma unroll
    for (int k = 0; k < K; ++k) {
      hps::probe_start(p[k], cache_keys, digests, values, num_sets, dim, policy);
      src[k] = p[k].src;
    }
    const int rows = (int)min((int64_t)(32 * K), n - base);
    float* block_out = out + base * dim;
    hps::warp_copy_rows_k<K>(warp, src, block_out, rows, dim, default_value);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t i = base + k * 32 + lane;
      uint32_t fixes = warp.ballot(hps::probe_finish(p[k], cache_keys, values, dim));
      if (fixes) {
        warp.sync();  // order the rewrites after every lane's first writes
        while (fixes) {
          const int r = __ffs(fixes) - 1;
          fixes &= fixes - 1;
          hps::warp_copy_one_row(warp, warp.shfl(p[k].src, r),
                                 block_out + (int64_t)(k * 32 + r) * dim, dim, default_value);
        }
      }
      const bool sampled = (hps::mix64(p[k].key ^ seed) & (HPS_HIT_SAMPLE - 1)) == 0;
      if (p[k].way >= 0 && count_hits && sampled) {
        const size_t slot = (size_t)p[k].set * HPS_WAYS + p[k].way;
        const unsigned weight = weights ? weights[i] : 1u;
#if HPS_STUDY_LINE
        if (count_hits == 2) {
          unsigned* line_hits = reinterpret_cast<unsigned*>(
              const_cast<uint8_t*>(reinterpret_cast<const uint8_t*>(digests)) +
              (size_t)p[k].set * 256 + (p[k].way >> 4) * 128 + 96);
          atomicAdd(line_hits + ((p[k].way & 15) >> 2),
                    min(weight, (unsigned)HPS_HIT_WEIGHT_CAP) << ((p[k].way & 3) * 8));
        } else
#endif
        if (count_hits == 2) {  // byte (slot & 3) of word slot / 4 (little-endian)
          atomicAdd(hits + (slot >> 2), min(weight, (unsigned)HPS_HIT_WEIGHT_CAP)
                                            << ((slot & 3) * 8));
        } else {
          atomicAdd(scores + slot, weight << HPS_HIT_SAMPLE_SHIFT);
        }
      }
      hps::warp_append_misses(warp, i < n && p[k].way < 0, p[k].key, i, miss_keys, miss_pos,
                              miss_count);
    }
  }
  if (kPublish) hps::publish_total(miss_count, ticket, publish);
}
}  // namespace hps

// Large lookups: the count stays in miss_count (the caller zeroes and reads it).
extern "C" __global__ void HPS_COPY_BOUNDS dc_query(
    const int64_t* __restrict__ keys, const unsigned* __restrict__ weights, int64_t n,
    const int64_t* __restrict__ cache_keys, const hps::digest_t* __restrict__ digests,
    unsigned* __restrict__ scores, unsigned* __restrict__ hits, const float* __restrict__ values,
    uint32_t num_sets, int dim, float default_value, float* __restrict__ out,
    int64_t* __restrict__ miss_keys, int64_t* __restrict__ miss_pos,
    unsigned* __restrict__ miss_count, int count_hits, int64_t seed) {
  hps::query<false>(keys, weights, n, cache_keys, digests, scores, hits, values, num_sets, dim,
                    default_value, out, miss_keys, miss_pos, miss_count, count_hits, seed,
                    nullptr, nullptr);
}

// Small lookups (the mapped route): the count is published to `publish` and the counter and
// `ticket` reset by the last block (hps::publish_total). A kernel of its own, so that the
// large lookups' code carries neither the barrier nor the registers it adds.
extern "C" __global__ void HPS_COPY_BOUNDS dc_query_published(
    const int64_t* __restrict__ keys, const unsigned* __restrict__ weights, int64_t n,
    const int64_t* __restrict__ cache_keys, const hps::digest_t* __restrict__ digests,
    unsigned* __restrict__ scores, unsigned* __restrict__ hits, const float* __restrict__ values,
    uint32_t num_sets, int dim, float default_value, float* __restrict__ out,
    int64_t* __restrict__ miss_keys, int64_t* __restrict__ miss_pos,
    unsigned* __restrict__ miss_count, int count_hits, int64_t seed,
    unsigned* __restrict__ ticket, unsigned* __restrict__ publish) {
  hps::query<true>(keys, weights, n, cache_keys, digests, scores, hits, values, num_sets, dim,
                   default_value, out, miss_keys, miss_pos, miss_count, count_hits, seed, ticket,
                   publish);
}

// Insert keys with their rows, evicting by LFU-DA when a set is full. Keys already cached only
// gain 1 score (their value is not overwritten, as in HPS's Replace).
//
// The batch is grouped by set on the host: segment s holds the keys of set seg_sets[s] at
// [seg_offsets[s], seg_offsets[s+1]) of seg_keys / seg_rows, in insertion order. One warp owns
// one set and walks its keys in order, so the outcome is deterministic and needs no locks; the
// NumPy reference reproduces it exactly. Lane l holds way l of the set in registers.
extern "C" __global__ void dc_replace(const int64_t* __restrict__ seg_keys,
                                      const float* __restrict__ seg_rows,
                                      const uint32_t* __restrict__ seg_sets,
                                      const int64_t* __restrict__ seg_offsets, int num_segments,
                                      int64_t* __restrict__ cache_keys,
                                      hps::digest_t* __restrict__ digests, unsigned* __restrict__ scores,
                                      uint8_t* __restrict__ hits, unsigned* __restrict__ floors,
                                      float* __restrict__ values, int dim,
                                      unsigned* __restrict__ inserted) {
  auto warp = cg::tiled_partition<32>(cg::this_thread_block());
  const int segment = (int)(((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32);
  if (segment >= num_segments) return;
  const int lane = warp.thread_rank();
  const uint32_t set = seg_sets[segment];
  const size_t base = (size_t)set * HPS_WAYS;
  int64_t my_key = cache_keys[base + lane];
  unsigned my_score = scores[base + lane];
  unsigned floor_score = floors[set];
  unsigned new_keys = 0;
  const bool vec4 = (dim & 3) == 0;
  for (int64_t j = seg_offsets[segment]; j < seg_offsets[segment + 1]; ++j) {
    const int64_t key = seg_keys[j];
    const uint32_t present = warp.ballot(my_key == key);
    if (present) {
      if (lane == __ffs(present) - 1) my_score += 1u;
      continue;
    }
    int way;
    const uint32_t empty = warp.ballot(my_key == HPS_EMPTY_KEY);
    if (empty) {
      way = __ffs(empty) - 1;
    } else {
      // Victim: the smallest score, ties to the lowest way (pack score and lane, take the min).
      uint64_t packed = ((uint64_t)my_score << 5) | (uint64_t)lane;
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
      digests[base + way] = (hps::digest_t)hps::digest_of(hps::mix64(key));
      hits[base + way] = 0;  // hits still uncounted belonged to the evicted key
    }
    hps::copy_row<32>(warp, seg_rows + j * (int64_t)dim, values + (base + way) * dim, dim, vec4);
    ++new_keys;
  }
  cache_keys[base + lane] = my_key;
  scores[base + lane] = my_score;
  if (lane == 0) {
    floors[set] = floor_score;
    if (new_keys) atomicAdd(inserted, new_keys);
  }
}

// Add the hit bytes into the scores and clear them: thread t takes slots [16t, 16t + 16) (the
// slot count is a multiple of 32) with 16-byte loads and stores. Only words with hits are
// written back.
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
// driver sorts them); one warp per set.
extern "C" __global__ void dc_dump(const int64_t* __restrict__ cache_keys, uint32_t set_begin,
                                   uint32_t set_end, int64_t* __restrict__ out_keys,
                                   unsigned* __restrict__ count) {
  auto warp = cg::tiled_partition<32>(cg::this_thread_block());
  const int64_t set = set_begin + ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
  if (set >= set_end) return;
  const int lane = warp.thread_rank();
  const int64_t key = cache_keys[(size_t)set * HPS_WAYS + lane];
  const uint32_t used = warp.ballot(key != HPS_EMPTY_KEY);
  if (!used) return;
  unsigned at = 0;
  if (lane == 0) at = atomicAdd(count, (unsigned)__popc(used));
  at = warp.shfl(at, 0);
  if (key != HPS_EMPTY_KEY) out_keys[at + __popc(used & ((1u << lane) - 1u))] = key;
}

#define HPS_TILED(T)                                                                            \
  extern "C" __global__ void dc_update_t##T(                                                    \
      const int64_t* keys, const float* rows, int64_t n, const int64_t* cache_keys,             \
      const hps::digest_t* digests, float* values, uint32_t num_sets, int dim,                  \
      unsigned* updated) {                                                                      \
    hps::update<T>(keys, rows, n, cache_keys, digests, values, num_sets, dim, updated);         \
  }                                                                                             \
  extern "C" __global__ void dc_invalidate_t##T(                                                \
      const int64_t* keys, int64_t n, int64_t* cache_keys, hps::digest_t* digests,              \
      unsigned* scores, uint8_t* hits, uint32_t num_sets, unsigned* removed) {                  \
    hps::invalidate<T>(keys, n, cache_keys, digests, scores, hits, num_sets, removed);          \
  }

HPS_TILED(2)
HPS_TILED(4)
HPS_TILED(8)
HPS_TILED(16)
HPS_TILED(32)

#if HPS_STUDY_LINE
// Measurement only: the half-set lines of HPS_STUDY_LINE from the cache's keys and digests.
extern "C" __global__ void dc_study_build_lines(const int64_t* __restrict__ cache_keys,
                                                const uint16_t* __restrict__ digests,
                                                int64_t halves, uint8_t* __restrict__ lines) {
  for (int64_t h = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; h < halves;
       h += (int64_t)gridDim.x * blockDim.x) {
    uint8_t* line = lines + h * 128;
    for (int w = 0; w < 16; ++w) {
      reinterpret_cast<uint16_t*>(line)[w] = digests[h * 16 + w];
      reinterpret_cast<uint32_t*>(line + 32)[w] = (uint32_t)cache_keys[h * 16 + w];
      line[96 + w] = 0;
    }
    for (int b = 112; b < 128; ++b) line[b] = 0;
  }
}
#endif
