/* The rounds of a GPU cache insert (runtime/gpu/reference.py: replace_rounds), compiled: a
 * sequential pass that NumPy can only do as one pass per round over the whole batch (a
 * 270 K-key insert into a 1 M-slot cache: 24 rounds, 160 ms in NumPy on the 2-core test VM).
 * Loaded with ctypes (loader.py): calls no Python API, runs with the GIL released.
 *
 * Key i goes into the round after the latest round of the earlier keys that share one of its
 * two sets, so every set sees its keys in batch order and the keys of one round touch
 * disjoint sets. Since the rounds of one set's keys rise along the batch, "the latest round
 * of a set" is the round of its latest key: one array of num_sets entries holds it.
 */
#include <stdint.h>

/* last: int32 scratch indexed by set (any content; entries of this batch's sets are reset here,
 * so the caller may keep one array of the cache's num_sets entries); round: n int32 scratch; order: n int64 out (batch
 * positions by round, batch order inside a round); offsets: n + 2 int64 out (round r is
 * order[offsets[r]:offsets[r + 1]]). Returns the number of rounds. */
int64_t hps_replace_rounds(const int64_t *primary, const int64_t *second, int64_t n,
                           int32_t *last, int32_t *round, int64_t *order, int64_t *offsets) {
    if (n <= 0) {
        offsets[0] = 0;
        return 0;
    }
    for (int64_t i = 0; i < n; i++) { /* reset only the sets of this batch */
        last[primary[i]] = -1;
        last[second[i]] = -1;
    }
    int32_t rounds = 0;
    for (int64_t i = 0; i < n; i++) {
        int32_t a = last[primary[i]], b = last[second[i]];
        int32_t r = (a > b ? a : b) + 1;
        round[i] = r;
        last[primary[i]] = r;
        last[second[i]] = r;
        if (r + 1 > rounds) rounds = r + 1;
    }
    for (int32_t r = 0; r <= rounds; r++) offsets[r] = 0;
    for (int64_t i = 0; i < n; i++) offsets[round[i] + 1]++;
    for (int32_t r = 0; r < rounds; r++) offsets[r + 1] += offsets[r];
    /* a stable counting sort: offsets[r] serves as round r's cursor, then is restored */
    for (int64_t i = 0; i < n; i++) order[offsets[round[i]]++] = i;
    for (int32_t r = rounds; r > 0; r--) offsets[r] = offsets[r - 1];
    offsets[0] = 0;
    return rounds;
}
