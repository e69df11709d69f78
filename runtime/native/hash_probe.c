/* The hash maps' probe, compiled: what runtime/volatile/hash_map.py does in a dozen NumPy calls
 * per batch, in one pass over the keys. Loaded with ctypes (runtime/native/loader.py), so it
 * calls no Python API and runs with the GIL released.
 *
 * Layout (hash_map.py's docstring): slots are (key, row) int64 pairs, num_partitions segments
 * of `segment` slots each; row -1 is an empty slot, -2 a deleted one. Key k lives in partition
 * mix64(k) % num_partitions, its home slot inside the segment is (hi32(mix64(k)) * segment) >> 32,
 * and collisions probe linearly, wrapping inside the segment, up to the first empty slot.
 *
 * Slots are read through volatile pointers: the shared-memory map (shm_table.py) probes without
 * a lock while other processes write, and checks what it found afterwards; each slot must be
 * read once, as the code says, not re-read or cached by the compiler.
 */
#include <stdint.h>
#include <string.h>

#define HPS_EMPTY (-1)
#define HPS_RETRY (-2) /* a probe that went a full lap without an empty slot */
#define BLOCK 16       /* keys whose memory accesses are started together (see hps_get) */

#if defined(__GNUC__) || defined(__clang__)
#define PREFETCH(address) __builtin_prefetch(address)
#else
#define PREFETCH(address) ((void)0)
#endif

static inline uint64_t rotr64(uint64_t x, unsigned r) { return (x >> r) | (x << (64 - r)); }

/* HPS's rrxmrrxmsx_0 mixer (runtime/hashing.py: mix64). */
static inline uint64_t mix64(uint64_t x) {
    x ^= rotr64(x, 25) ^ rotr64(x, 50);
    x *= 0xA24BAED4963EE407ULL;
    x ^= rotr64(x, 24) ^ rotr64(x, 49);
    x *= 0x9FB21C651E98DF25ULL;
    return x ^ (x >> 28);
}

static inline int64_t partition_of(uint64_t h, uint64_t parts) {
    return (int64_t)((parts & (parts - 1)) == 0 ? h & (parts - 1) : h % parts);
}

/* Home slot (in the whole slot array) of a key hashed to h, in partition `part`. */
static inline int64_t home_of(uint64_t h, int64_t part, int64_t segment) {
    return (int64_t)(((h >> 32) * (uint64_t)segment) >> 32) + part * segment;
}

/* Slot of `key` probing from `slot` in partition `part`, or -1 when absent, or HPS_RETRY
 * after a full lap (a sound table always has an empty slot: only a torn lock-free read can
 * get there). The key's row goes to *row. */
static inline int64_t probe(const volatile int64_t *slots, int64_t segment, int64_t key,
                            int64_t slot, int64_t part, int64_t *row) {
    const int64_t end = (part + 1) * segment;
    for (int64_t step = 0; step < segment; step++) {
        const int64_t held = slots[2 * slot];
        const int64_t r = slots[2 * slot + 1];
        if (r == HPS_EMPTY) return -1;
        if (r >= 0 && held == key) {
            *row = r;
            return slot;
        }
        if (++slot == end) slot -= segment;
    }
    return HPS_RETRY;
}

void hps_mix64(const int64_t *keys, int64_t n, uint64_t *out) {
    for (int64_t i = 0; i < n; i++) out[i] = mix64((uint64_t)keys[i]);
}

/* Partition and home slot of each key (hash_map.py: _partition_and_home). */
void hps_locate(const int64_t *keys, int64_t n, int64_t num_partitions, int64_t segment,
                int64_t *part, int64_t *home) {
    for (int64_t i = 0; i < n; i++) {
        const uint64_t h = mix64((uint64_t)keys[i]);
        part[i] = partition_of(h, (uint64_t)num_partitions);
        home[i] = home_of(h, part[i], segment);
    }
}

/* Slot and row of each key probing from the homes given (-1 when absent, HPS_RETRY after a
 * full lap); rows of keys not found are left as they are. */
void hps_probe(const int64_t *slots, int64_t segment, const int64_t *keys, const int64_t *home,
               const int64_t *part, int64_t n, int64_t *found, int64_t *rows) {
    for (int64_t first = 0; first < n; first += BLOCK) {
        const int64_t size = n - first < BLOCK ? n - first : BLOCK;
        for (int64_t i = first; i < first + size; i++) PREFETCH(slots + 2 * home[i]);
        for (int64_t i = first; i < first + size; i++)
            found[i] = probe(slots, segment, keys[i], home[i], part[i], &rows[i]);
    }
}

/* Slot of each key (-1 when absent), hashing it first (hash_map.py: _find); in blocks, as
 * hps_get. */
void hps_find(const int64_t *slots, int64_t num_partitions, int64_t segment, const int64_t *keys,
              int64_t n, int64_t *found) {
    int64_t home[BLOCK], part[BLOCK];
    for (int64_t first = 0; first < n; first += BLOCK) {
        const int64_t size = n - first < BLOCK ? n - first : BLOCK;
        for (int64_t j = 0; j < size; j++) {
            const uint64_t h = mix64((uint64_t)keys[first + j]);
            part[j] = partition_of(h, (uint64_t)num_partitions);
            home[j] = home_of(h, part[j], segment);
            PREFETCH(slots + 2 * home[j]);
        }
        for (int64_t j = 0; j < size; j++) {
            int64_t row;
            found[first + j] = probe(slots, segment, keys[first + j], home[j], part[j], &row);
        }
    }
}

/* HashMapTable.get: copy each found key's vector (rows of `dim` floats) into its row of `out`
 * (misses untouched), set `hit`, and list the rows found in batch order in `hit_rows` (for the
 * access metadata). Returns how many were found.
 *
 * Keys go in blocks of BLOCK: their home slots are prefetched before the block is probed, and
 * the vectors found before they are copied, so that a block's cache misses (a slot and a vector
 * per key in a large table) overlap instead of costing a memory latency each, one by one. */
int64_t hps_get(const int64_t *slots, int64_t num_partitions, int64_t segment,
                const int64_t *keys, int64_t n, const float *vectors, int64_t dim, float *out,
                uint8_t *hit, int64_t *hit_rows) {
    int64_t count = 0;
    const size_t bytes = (size_t)dim * sizeof(float);
    int64_t home[BLOCK], part[BLOCK], row[BLOCK];
    for (int64_t first = 0; first < n; first += BLOCK) {
        const int64_t size = n - first < BLOCK ? n - first : BLOCK;
        for (int64_t j = 0; j < size; j++) {
            const uint64_t h = mix64((uint64_t)keys[first + j]);
            part[j] = partition_of(h, (uint64_t)num_partitions);
            home[j] = home_of(h, part[j], segment);
            PREFETCH(slots + 2 * home[j]);
        }
        for (int64_t j = 0; j < size; j++) {
            const int64_t slot = probe(slots, segment, keys[first + j], home[j], part[j], &row[j]);
            if (slot < 0) {
                row[j] = -1;
                continue;
            }
            const char *vector = (const char *)(vectors + row[j] * dim);
            for (size_t line = 0; line < bytes; line += 64) PREFETCH(vector + line);
        }
        for (int64_t j = 0; j < size; j++) {
            hit[first + j] = row[j] >= 0;
            if (row[j] >= 0) {
                memcpy(out + (first + j) * dim, vectors + row[j] * dim, bytes);
                hit_rows[count++] = row[j];
            }
        }
    }
    return count;
}
