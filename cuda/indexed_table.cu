// Whole-table GPU lookups: the `static` and `uvm` cache types.
//
// An open-addressing index (keys int64[cap], rows int64[cap], cap a power of two ≥ 2 × rows,
// linear probing from mix64(key)) maps every key of the table to its row in file order. Rows
// [0, device_rows) live in device memory; rows [device_rows, total) in pinned, mapped host
// memory read over PCIe (uvm: the first gpucacheper of the file in HBM, the rest in host memory;
// static with enable_pagelock: everything in host memory). Read-only: no inserts after build.
#include "hps_common.cuh"

// Insert keys[i] → row first_row + i. Keys must be unique (tables are verified); a repeated key
// keeps one of its rows.
extern "C" __global__ void it_build(const int64_t* __restrict__ keys, int64_t n, int64_t first_row,
                                    unsigned long long* __restrict__ index_keys,
                                    int64_t* __restrict__ index_rows, uint64_t mask) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t key = keys[i];
    if (key == HPS_EMPTY_KEY) continue;
    uint64_t slot = hps::mix64(key) & mask;
    while (true) {
      const unsigned long long prev =
          atomicCAS(index_keys + slot, (unsigned long long)HPS_EMPTY_KEY, (unsigned long long)key);
      if (prev == (unsigned long long)HPS_EMPTY_KEY || prev == (unsigned long long)key) {
        index_rows[slot] = first_row + i;
        break;
      }
      slot = (slot + 1) & mask;
    }
  }
}

namespace hps {

// Look up n keys: found keys copy their row (from device or host memory), others get the
// default value; hit_count counts the found ones.
template <int T>
__device__ void indexed_query(const int64_t* __restrict__ keys, int64_t n,
                              const int64_t* __restrict__ index_keys,
                              const int64_t* __restrict__ index_rows, uint64_t mask,
                              const float* __restrict__ device_values, int64_t device_rows,
                              const float* __restrict__ host_values, int dim, float default_value,
                              float* __restrict__ out, unsigned* __restrict__ hit_count) {
  auto tile = cg::tiled_partition<T>(cg::this_thread_block());
  const int64_t tiles = ((int64_t)gridDim.x * blockDim.x) / T;
  const int64_t first = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / T;
  const int lane = tile.thread_rank();
  const bool vec4 = (dim & 3) == 0;
  for (int64_t i = first; i < n; i += tiles) {
    const int64_t key = keys[i];
    int64_t row = -1;
    if (key != HPS_EMPTY_KEY) {
      // Probe T consecutive slots per step: the first slot holding the key or empty decides.
      uint64_t start = mix64(key) & mask;
      while (true) {
        const uint64_t slot = (start + lane) & mask;
        const int64_t k = index_keys[slot];
        const uint32_t found = tile.ballot(k == key);
        const uint32_t empty = tile.ballot(k == HPS_EMPTY_KEY);
        const uint32_t stop = found | empty;
        if (stop) {
          const int at = __ffs(stop) - 1;
          if (found & (1u << at)) row = index_rows[(start + at) & mask];
          break;
        }
        start = (start + T) & mask;
      }
    }
    float* dst = out + i * (int64_t)dim;
    if (row >= 0) {
      const float* src = row < device_rows ? device_values + row * (int64_t)dim
                                           : host_values + (row - device_rows) * (int64_t)dim;
      copy_row<T>(tile, src, dst, dim, vec4);
      if (lane == 0) atomicAdd(hit_count, 1u);
    } else {
      fill_row<T>(tile, dst, dim, default_value, vec4);
    }
  }
}

}  // namespace hps

#define HPS_TILED(T)                                                                         \
  extern "C" __global__ void it_query_t##T(                                                  \
      const int64_t* keys, int64_t n, const int64_t* index_keys, const int64_t* index_rows,  \
      uint64_t mask, const float* device_values, int64_t device_rows,                        \
      const float* host_values, int dim, float default_value, float* out,                    \
      unsigned* hit_count) {                                                                 \
    hps::indexed_query<T>(keys, n, index_keys, index_rows, mask, device_values, device_rows, \
                          host_values, dim, default_value, out, hit_count);                  \
  }

HPS_TILED(2)
HPS_TILED(4)
HPS_TILED(8)
HPS_TILED(16)
HPS_TILED(32)
