/* minisd: Philox 4x32-10 counter-based generator (see rng.h for the exact
 * stream layout that every function below follows).
 *
 * Every draw function follows one pattern: take() reserves the call's words of the stream
 * (advancing g->offset once, whole blocks), then the words are generated CHUNK at a time
 * into a stack buffer and mapped to values. Element i depends only on (seed, offset, i),
 * never on the chunking, so changing CHUNK or splitting the work changes no result; the
 * mappings are the stream's definition (rng.h) and checkpoints depend on them. */
#include <math.h>
#include <stdlib.h>

#include "rng.h"

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

/* Salmon et al. 2011, as Random123's philox4x32_10: ten rounds, the key bumped by the Weyl
 * constants W0, W1 before each round but the first. A round multiplies c0 and c2 by M0 and
 * M1 (32 x 32 -> 64 bits), xors the high halves with c1, c3 and the key, and swaps the
 * pairs. Random123's known-answer vectors are checked in tests/c/test_rng.c. */
void msd_philox4x32_10(uint32_t out[4], const uint32_t ctr[4], const uint32_t key[2])
{
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int r = 0; r < 10; r++) {
        if (r) {
            k0 += PHILOX_W0;
            k1 += PHILOX_W1;
        }
        uint64_t p0 = (uint64_t)PHILOX_M0 * c0, p1 = (uint64_t)PHILOX_M1 * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n1 = (uint32_t)p1;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1, n3 = (uint32_t)p0;
        c0 = n0;
        c1 = n1;
        c2 = n2;
        c3 = n3;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

void msd_rng_seed(msd_rng *g, uint64_t seed)
{
    g->seed = seed;
    g->offset = 0;
}

int msd_rng_set_state(msd_rng *g, uint64_t seed, uint64_t offset)
{
    if (offset % 4)
        return msd_error(MSD_ERR_ARG, "rng: set_state: offset %llu is not a multiple of 4",
                         (unsigned long long)offset);
    g->seed = seed;
    g->offset = offset;
    return MSD_OK;
}

/* Words [w0, w0 + n) of the stream of g into out. w0 is a multiple of 4. */
static void words(const msd_rng *g, uint64_t w0, uint32_t *out, size_t n)
{
    uint32_t key[2] = { (uint32_t)g->seed, (uint32_t)(g->seed >> 32) };
    uint64_t b = w0 / 4;
    for (size_t i = 0; i < n; i += 4, b++) {
        uint32_t ctr[4] = { (uint32_t)b, (uint32_t)(b >> 32), 0, 0 }, r[4];
        msd_philox4x32_10(r, ctr, key);
        for (size_t k = 0; k < 4 && i + k < n; k++)
            out[i + k] = r[k];
    }
}

/* Reserves n words of g's stream (rounded up to whole blocks); returns the first.
 * Rounding keeps the offset a multiple of 4, so every call starts on a fresh block and a
 * saved {seed, offset} resumes exactly. */
static uint64_t take(msd_rng *g, uint64_t n)
{
    uint64_t o = g->offset;
    g->offset += (n + 3) / 4 * 4;
    return o;
}

/* Work goes through a small buffer of words, CHUNK at a time (a multiple of 4).
 * A multiple of 4 so that each chunk starts on a block boundary, as words() requires. */
#define CHUNK 1024

void msd_rng_uniform(msd_rng *g, float *out, size_t n)
{
    uint64_t o = take(g, n);
    uint32_t w[CHUNK];
    for (size_t i = 0; i < n; i += CHUNK) {
        size_t m = n - i < CHUNK ? n - i : CHUNK;
        words(g, o + i, w, m);
        for (size_t k = 0; k < m; k++)
            /* the top 24 bits: every value k * 2^-24 is exact in a float and the largest is
             * 1 - 2^-24, so 1.0 cannot come out (32 bits would round up to 1.0) */
            out[i + k] = (float)(w[k] >> 8) * (1.0f / 16777216.0f);
    }
}

void msd_rng_normal(msd_rng *g, float *out, size_t n)
{
    size_t pairs = (n + 1) / 2;
    uint64_t o = take(g, 2 * (uint64_t)pairs);
    uint32_t w[CHUNK];
    const double two_pi = 6.283185307179586476925286766559;
    for (size_t j = 0; j < pairs; j += CHUNK / 2) {
        size_t m = pairs - j < CHUNK / 2 ? pairs - j : CHUNK / 2;
        words(g, o + 2 * j, w, 2 * m);
        for (size_t k = 0; k < m; k++) {
            /* u1 in (0, 1]: + 1 keeps log(u1) finite; cos and sin of one pair give two
             * independent normals (Box-Muller) */
            double u1 = ((double)w[2 * k] + 1.0) * (1.0 / 4294967296.0);
            double u2 = (double)w[2 * k + 1] * (1.0 / 4294967296.0);
            double r = sqrt(-2.0 * log(u1)), th = two_pi * u2;
            size_t i = 2 * (j + k);
            out[i] = (float)(r * cos(th));
            if (i + 1 < n)
                out[i + 1] = (float)(r * sin(th));
        }
    }
}

/* floor(x * range / 2^64) for a 64-bit x: the high half of the 128-bit product.
 * Schoolbook on 32-bit halves, portable C without __int128: mid gathers the carries of the
 * three lower partial products (each term < 2^32, so the sum cannot overflow). Mapping 64
 * random bits rather than 32 keeps the bias below range / 2^64. */
static uint64_t scale64(uint64_t x, uint64_t range)
{
    uint64_t xl = (uint32_t)x, xh = x >> 32, rl = (uint32_t)range, rh = range >> 32;
    uint64_t ll = xl * rl, lh = xl * rh, hl = xh * rl, hh = xh * rh;
    uint64_t mid = (ll >> 32) + (uint32_t)lh + (uint32_t)hl;
    return hh + (lh >> 32) + (hl >> 32) + (mid >> 32);
}

/* out (n): integers in [low, high] as floats, two words per element. The bounds keep
 * every value exact in a float (2^24) and high - low + 1 far from overflow. MSD_ERR_ARG
 * before anything is drawn (n = 0 is then a pure range check: take(g, 0) moves nothing). */
int msd_rng_randint(msd_rng *g, float *out, size_t n, int64_t low, int64_t high)
{
    const int64_t lim = 16777216;
    if (low > high || low < -lim || high > lim)
        return msd_error(MSD_ERR_ARG, "randint: need low <= high within [-2^24, 2^24], got "
                         "[%lld, %lld]", (long long)low, (long long)high);
    uint64_t range = (uint64_t)(high - low) + 1;
    uint64_t o = take(g, 2 * (uint64_t)n);
    uint32_t w[CHUNK];
    for (size_t i = 0; i < n; i += CHUNK / 2) {
        size_t m = n - i < CHUNK / 2 ? n - i : CHUNK / 2;
        words(g, o + 2 * i, w, 2 * m);
        for (size_t k = 0; k < m; k++) {
            uint64_t x = (uint64_t)w[2 * k] | (uint64_t)w[2 * k + 1] << 32;
            out[i + k] = (float)(low + (int64_t)scale64(x, range));
        }
    }
    return MSD_OK;
}

/* out (n) = a permutation of 0..n-1 by Fisher-Yates from the top: draw k (two words)
 * picks j in [0, i] for i = n - 1 - k, so the n - 1 draws are reserved in one take(). */
void msd_rng_randperm(msd_rng *g, int *out, int n)
{
    for (int i = 0; i < n; i++)
        out[i] = i;
    if (n < 2)
        return;
    uint64_t o = take(g, 2 * (uint64_t)(n - 1));
    uint32_t w[CHUNK];
    size_t total = (size_t)(n - 1), done = 0;
    while (done < total) {
        size_t m = total - done < CHUNK / 2 ? total - done : CHUNK / 2;
        words(g, o + 2 * done, w, 2 * m);
        for (size_t k = 0; k < m; k++) {
            int i = n - 1 - (int)(done + k);
            uint64_t x = (uint64_t)w[2 * k] | (uint64_t)w[2 * k + 1] << 32;
            int j = (int)scale64(x, (uint64_t)i + 1);
            int t = out[i];
            out[i] = out[j];
            out[j] = t;
        }
        done += m;
    }
}

/* msd_rand, msd_randn, msd_randint: a new tensor of the shape, filled by the draw of the
 * same name. The shape is checked before the tensor exists, so an error leaves *out NULL
 * and g untouched. */
int msd_rand(msd_rng *g, int ndim, const int *shape, msd_tensor **out)
{
    *out = NULL;
    int rc = msd_shape_check("rand", ndim, shape);
    if (rc)
        return rc;
    if (!(*out = msd_tensor_empty(ndim, shape)))
        return MSD_ERR_MEM;
    msd_rng_uniform(g, msd_tensor_data(*out), msd_tensor_numel(*out));
    return MSD_OK;
}

int msd_randn(msd_rng *g, int ndim, const int *shape, msd_tensor **out)
{
    *out = NULL;
    int rc = msd_shape_check("randn", ndim, shape);
    if (rc)
        return rc;
    if (!(*out = msd_tensor_empty(ndim, shape)))
        return MSD_ERR_MEM;
    msd_rng_normal(g, msd_tensor_data(*out), msd_tensor_numel(*out));
    return MSD_OK;
}

int msd_randint(msd_rng *g, int ndim, const int *shape, int64_t low, int64_t high,
                msd_tensor **out)
{
    *out = NULL;
    float probe;
    int rc = msd_rng_randint(g, &probe, 0, low, high); /* range check, draws nothing */
    if (rc)
        return rc;
    rc = msd_shape_check("randint", ndim, shape);
    if (rc)
        return rc;
    if (!(*out = msd_tensor_empty(ndim, shape)))
        return MSD_ERR_MEM;
    return msd_rng_randint(g, msd_tensor_data(*out), msd_tensor_numel(*out), low, high);
}
