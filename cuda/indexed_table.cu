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

// Look up n keys: found keys copy their row (from device or host memory), others get the
// default value; hit_count counts the found ones (published and reset as dc_query's miss count). Each lane probes its own key (linear probing
// from mix64(key)); the warp then copies its 32 rows together.
extern "C" __global__ void HPS_COPY_BOUNDS it_query(const int64_t* __restrict__ keys, int64_t n,
                                    const int64_t* __restrict__ index_keys,
                                    const int64_t* __restrict__ index_rows, uint64_t mask,
                                    const float* __restrict__ device_values, int64_t device_rows,
                                    const float* __restrict__ host_values, int dim,
                                    float default_value, float* __restrict__ out,
                                    unsigned* __restrict__ hit_count,
                                    unsigned* __restrict__ ticket,
                                    unsigned* __restrict__ publish) {
  auto warp = cg::tiled_partition<32>(cg::this_thread_block());
  const int64_t warps = ((int64_t)gridDim.x * blockDim.x) / 32;
  for (int64_t base = (((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32) * 32; base < n;
       base += warps * 32) {
    const int64_t i = base + warp.thread_rank();
    const float* src = nullptr;
    if (i < n) {
      const int64_t key = keys[i];
      if (key != HPS_EMPTY_KEY) {
        uint64_t slot = hps::mix64(key) & mask;
        while (true) {
          const int64_t k = index_keys[slot];
          if (k == key) {
            const int64_t row = index_rows[slot];
            src = row < device_rows ? device_values + row * (int64_t)dim
                                    : host_values + (row - device_rows) * (int64_t)dim;
            break;
          }
          if (k == HPS_EMPTY_KEY) break;
          slot = (slot + 1) & mask;
        }
      }
    }
    const uint32_t hits = warp.ballot(src != nullptr);
    if (warp.thread_rank() == 0 && hits) atomicAdd(hit_count, (unsigned)__popc(hits));
    hps::warp_copy_rows(warp, src, out + base * dim, (int)min((int64_t)32, n - base), dim,
                        default_value);
  }
  hps::publish_total(hit_count, ticket, publish);
}
