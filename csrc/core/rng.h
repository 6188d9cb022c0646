/* minisd: a counter-based random number generator (Philox 4x32-10).
 *
 * A generator is just {seed, offset}. Philox 4x32-10 (Salmon et al., "Parallel
 * random numbers: as easy as 1, 2, 3", SC 2011) maps a 128-bit counter and a
 * 64-bit key to 128 random bits. Here:
 *
 *   key     = (k0, k1) = (seed & 0xffffffff, seed >> 32)
 *   block b = philox4x32_10(counter = (b & 0xffffffff, b >> 32, 0, 0), key)
 *             gives the 32-bit words w[4b], w[4b+1], w[4b+2], w[4b+3]
 *
 * so the generator defines one infinite stream of words w[0], w[1], ...;
 * `offset` is the index of the next unused word and is always a multiple of 4
 * (every call starts on a fresh block and rounds its consumption up to whole
 * blocks). One round maps (c0,c1,c2,c3) with key (k0,k1) to
 *
 *   (hi(M1*c2) ^ c1 ^ k0,  lo(M1*c2),  hi(M0*c0) ^ c3 ^ k1,  lo(M0*c0))
 *
 * with M0 = 0xD2511F53, M1 = 0xCD9E8D57 (hi/lo: the halves of the 64-bit
 * product); between rounds the key is bumped by (0x9E3779B9, 0xBB67AE85);
 * 10 rounds. Element i of a call starting at word o uses:
 *
 *   uniform:  w = w[o + i];            u = (w >> 8) * 2^-24          in [0, 1)
 *   normal:   pair j = i / 2 uses a = w[o + 2j], b = w[o + 2j + 1]:
 *             u1 = (a + 1) * 2^-32 in (0, 1], u2 = b * 2^-32 in [0, 1),
 *             r = sqrt(-2 ln u1), out[2j] = r cos(2 pi u2),
 *             out[2j+1] = r sin(2 pi u2) (Box-Muller, in double, then
 *             rounded to float; an odd n drops the last sine)
 *   integer:  x = w[o + 2i] | w[o + 2i + 1] << 32 (64 bits);
 *             k = low + floor(x * range / 2^64) for range = high - low + 1
 *             (bias below range / 2^64, i.e. none visible)
 *
 * Each element depends only on (seed, o, i), so results do not depend on
 * how the work is split among threads, and saving {seed, offset} and
 * restoring it later continues the exact same sequence (resumable
 * training). Uses per call: uniform n words, normal 2*ceil(n/2), integer
 * 2n, randperm 2(n-1), each rounded up to a multiple of 4. */
#ifndef MSD_RNG_H
#define MSD_RNG_H

#include <stdint.h>

#include "tensor.h"

typedef struct msd_rng {
    uint64_t seed;
    uint64_t offset; /* next unused 32-bit word; a multiple of 4 */
} msd_rng;

/* One Philox 4x32-10 block: out = philox(ctr, key). Exposed for tests. */
void msd_philox4x32_10(uint32_t out[4], const uint32_t ctr[4], const uint32_t key[2]);

/* Sets seed and resets the offset to 0. */
void msd_rng_seed(msd_rng *g, uint64_t seed);
/* Restores a saved state; MSD_ERR_ARG if offset is not a multiple of 4. */
int msd_rng_set_state(msd_rng *g, uint64_t seed, uint64_t offset);

/* n floats in [0, 1) / standard normal floats, as documented above; each
 * call advances g->offset. */
void msd_rng_uniform(msd_rng *g, float *out, size_t n);
void msd_rng_normal(msd_rng *g, float *out, size_t n);
/* n integers uniform in [low, high] (inclusive) stored as floats.
 * MSD_ERR_ARG (and nothing drawn) unless low <= high and both lie in
 * [-2^24, 2^24], where floats hold every integer exactly. */
int msd_rng_randint(msd_rng *g, float *out, size_t n, int64_t low, int64_t high);
/* A uniform random permutation of 0..n-1 into out (Fisher-Yates: for
 * i = n-1 down to 1, j = integer draw in [0, i], swap out[i], out[j]). */
void msd_rng_randperm(msd_rng *g, int *out, int n);

/* New tensors of the given shape filled by msd_rng_uniform / _normal /
 * _randint. Errors: those of msd_tensor_empty (bad shape: MSD_ERR_SHAPE,
 * memory) and randint's range check; *out is NULL on error. */
int msd_rand(msd_rng *g, int ndim, const int *shape, msd_tensor **out);
int msd_randn(msd_rng *g, int ndim, const int *shape, msd_tensor **out);
int msd_randint(msd_rng *g, int ndim, const int *shape, int64_t low, int64_t high,
                msd_tensor **out);

#endif
