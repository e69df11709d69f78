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
#include <stdlib.h>
#include <string.h>

#define HPS_EMPTY (-1)
#define HPS_RETRY (-2) /* a probe that went a full lap without an empty slot */
#define BLOCK 16       /* keys whose memory accesses are started together (see hps_get) */

#if defined(__GNUC__) || defined(__clang__)
#define PREFETCH(address) __builtin_prefetch((const void *)(address))
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

/* Partition and home slot of `size` keys, their home slots prefetched: the first step of a
 * block of hps_find and hps_get. */
static inline void locate_block(const volatile int64_t *slots, int64_t num_partitions,
                                int64_t segment, const int64_t *keys, int64_t size, int64_t *part,
                                int64_t *home) {
    for (int64_t j = 0; j < size; j++) {
        const uint64_t h = mix64((uint64_t)keys[j]);
        part[j] = partition_of(h, (uint64_t)num_partitions);
        home[j] = home_of(h, part[j], segment);
        PREFETCH((const void *)(slots + 2 * home[j]));
    }
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
        locate_block(slots, num_partitions, segment, keys + first, size, part, home);
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
        locate_block(slots, num_partitions, segment, keys + first, size, part, home);
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

/* ------------------------------------------------------------------ the shared-memory map */

#define SHM_ROW_HEADER 4   /* float32 words of a row before its vector (shm_layout.ROW_HEADER) */
#define SHM_STACK_FLOATS 1024 /* vectors up to this many floats are checked on the stack */

#if defined(__GNUC__) || defined(__clang__)
#define ACQUIRE() __atomic_thread_fence(__ATOMIC_ACQUIRE)
static inline void copy_row(float *to, const volatile int64_t *row, size_t bytes) {
    memcpy(to, (const float *)row + SHM_ROW_HEADER, bytes);
}
#else /* no fence to name: copy through a volatile pointer, in order with the stamp reads */
#define ACQUIRE() ((void)0)
static inline void copy_row(float *to, const volatile int64_t *row, size_t bytes) {
    const volatile float *from = (const volatile float *)row + SHM_ROW_HEADER;
    for (size_t i = 0; i < bytes / sizeof(float); i++) to[i] = from[i];
}
#endif

/* A table of the shared-memory map, as SharedHashMapTable._native_table fills it (ctypes
 * Structure ShmTable in hash_probe.py: the same fields, in this order). */
typedef struct {
    const volatile int64_t *slots; /* the index: (key, row) pairs, `segment` slots a partition */
    int64_t segment;
    int64_t num_partitions;
    const volatile int64_t *epochs; /* partition p's index epoch: epochs[p * epoch_stride] */
    int64_t epoch_stride;
    const volatile int64_t *words; /* the rows as int64 words, `half` a row: stamp, key, then */
    int64_t half;                  /* (from float32 word SHM_ROW_HEADER) the vector */
    int64_t total_rows;
    int64_t dim;
} hps_shm_table;

/* One lock-free read of the shared-memory map (shm_table.py: SharedHashMapTable.
 * _read_optimistic), key by key: the keys at positions pending[0 .. n) of keys (0 .. n when
 * pending is NULL), in partitions part[] from home slots home[] (computed here when part is
 * NULL). `out` ((n_keys, dim) float32, or NULL for contains): a hit's vector goes to its row.
 *
 * A hit counts when its row's stamp, read before and after the copy of the row's key and
 * vector, is the same and > 0 and the copied key is the one asked for: a live row is never
 * rewritten, a freed one gets stamp 0 first and a reused one a larger stamp, so the copy is
 * that key's committed vector. A miss counts when the partition's epoch, read before and
 * after the probe, is the same and even: only a rebuild empties slots. Every other key (a
 * failed check, a probe that went a full lap) is listed in `retry` and its row of `out` is
 * left as it was: the copy goes to a scratch row and on to `out` only once checked.
 *
 * Memory ordering. Writers (other processes, under the partition's lock) write a row's
 * vector and key, then its stamp; they free a row by zeroing its stamp before the row is
 * reused. The reader must load, in this order: the stamp, the key and vector, the stamp
 * again. x86-64 does not reorder loads with other loads (shm_table.py reads lock-free only
 * there), so only the compiler could: the stamps, slots and epochs are read through volatile
 * pointers (each read happens, once, in program order with the other volatile reads), and an
 * acquire fence (a compiler barrier on x86-64; it orders loads on other architectures too)
 * sits between the first stamp and the copy and between the copy and the second stamp, so
 * that the copy, a plain memcpy, is neither hoisted above the first read nor sunk below the
 * second (without GCC/Clang's fence, copy_row copies through a volatile pointer instead).
 *
 * Writes `hit[pos] = 1` for the hits, the hits' rows (batch order) to hit_rows and the
 * retried positions to retry. counts[0]: hits, counts[1]: retries, counts[2]: keys whose
 * probe ended on a slot (hits and failed checks). Returns 0, or -1 when the scratch row could
 * not be allocated (nothing written: the caller reads another way). */
int64_t hps_shm_read(const hps_shm_table *table, const int64_t *keys, const int64_t *part,
                     const int64_t *home, const int64_t *pending, int64_t n, float *out,
                     uint8_t *hit, int64_t *hit_rows, int64_t *retry, int64_t *counts) {
    const volatile int64_t *slots = table->slots, *epochs = table->epochs, *words = table->words;
    const int64_t segment = table->segment, half = table->half, dim = table->dim;
    float stack[SHM_STACK_FLOATS];
    float *scratch = stack;
    const size_t bytes = (size_t)dim * sizeof(float);
    if (out != NULL && dim > SHM_STACK_FLOATS) {
        scratch = malloc(bytes);
        if (scratch == NULL) return -1;
    }
    int64_t hits = 0, retries = 0, ended = 0;
    int64_t at[BLOCK], p[BLOCK], slot[BLOCK], row[BLOCK];
    for (int64_t first = 0; first < n; first += BLOCK) {
        const int64_t size = n - first < BLOCK ? n - first : BLOCK;
        for (int64_t j = 0; j < size; j++) {
            const int64_t pos = pending != NULL ? pending[first + j] : first + j;
            int64_t s;
            if (part != NULL) {
                p[j] = part[pos];
                s = home[pos];
            } else {
                const uint64_t h = mix64((uint64_t)keys[pos]);
                p[j] = partition_of(h, (uint64_t)table->num_partitions);
                s = home_of(h, p[j], segment);
            }
            at[j] = pos;
            slot[j] = s;
            PREFETCH(slots + 2 * s);
        }
        for (int64_t j = 0; j < size; j++) {
            const int64_t pos = at[j];
            const volatile int64_t *epoch = epochs + p[j] * table->epoch_stride;
            const int64_t before = *epoch;
            slot[j] = probe(slots, segment, keys[pos], slot[j], p[j], &row[j]);
            if (slot[j] == -1) {
                if (*epoch != before || (before & 1)) retry[retries++] = pos;
            } else if (slot[j] < 0) {
                retry[retries++] = pos; /* a full lap: the index changed under the probe */
            } else {
                ended++;
                if (row[j] >= table->total_rows) { /* cannot happen: the index holds rows */
                    slot[j] = -1;
                    retry[retries++] = pos;
                    continue;
                }
                const char *line = (const char *)(words + row[j] * half);
                for (size_t b = 0; b < 16 + bytes; b += 64) PREFETCH(line + b);
            }
        }
        for (int64_t j = 0; j < size; j++) {
            if (slot[j] < 0) continue;
            const int64_t pos = at[j];
            const volatile int64_t *words_of_row = words + row[j] * half;
            const int64_t stamp = words_of_row[0];
            ACQUIRE(); /* the copy after the first stamp read */
            const int64_t held = words_of_row[1];
            if (out != NULL) copy_row(scratch, words_of_row, bytes);
            ACQUIRE(); /* the second stamp read after the copy */
            const int64_t again = words_of_row[0];
            if (held != keys[pos] || again != stamp || stamp <= 0) {
                retry[retries++] = pos;
                continue;
            }
            if (out != NULL) memcpy(out + pos * dim, scratch, bytes);
            hit[pos] = 1;
            hit_rows[hits++] = row[j];
        }
    }
    if (scratch != stack) free(scratch);
    counts[0] = hits;
    counts[1] = retries;
    counts[2] = ended;
    return 0;
}
