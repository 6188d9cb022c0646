/* Philox 4x32-10 generator: published known-answer vectors, the stream
 * layout of rng.h (values recomputed by the pure-Python Philox in
 * tests/fixtures/gen_files.py), statistics, split invariance, state
 * save/restore. */
#include <stdlib.h>
#include <string.h>

#include "minisd.h"
#include "test.h"

/* Random123's kat_vectors for philox4x32_10; also recomputed and asserted
 * by the independent Python implementation in gen_files.py. */
static void test_philox_kat(void)
{
    static const uint32_t v[3][10] = {
        { 0, 0, 0, 0, 0, 0, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8 },
        { 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0x408f276d,
          0x41c83b0e, 0xa20bc7c6, 0x6d5451fd },
        { 0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0, 0xd16cfe09,
          0x94fdcceb, 0x5001e420, 0x24126ea1 },
    };
    for (int k = 0; k < 3; k++) {
        uint32_t out[4];
        msd_philox4x32_10(out, v[k], v[k] + 4);
        for (int i = 0; i < 4; i++)
            CHECK(out[i] == v[k][6 + i]);
    }
}

/* seed 42: values from gen_files.py's Python Philox (tests/fixtures/rng_philox.lua) */
static void test_stream_layout(void)
{
    static const double u[10] = { 0.612959862, 0.468586504, 0.0732316971, 0.340861499,
                                  0.987718642, 0.327063322, 0.513906121, 0.454315543,
                                  0.825866818, 0.65831548 };
    static const double z[10] = { -0.379737254, -0.697365983, -0.749276358, 0.711400039,
                                  0.794208332, -1.26822129, 0.134758841, 1.49787776,
                                  -0.41007838, 1.46395685 };
    msd_rng g;
    msd_rng_seed(&g, 42);
    float out[10];
    msd_rng_uniform(&g, out, 10);
    for (int i = 0; i < 10; i++)
        CHECK_CLOSE(out[i], u[i], 0, 1e-7);
    CHECK(g.offset == 12);
    msd_rng_normal(&g, out, 10);
    for (int i = 0; i < 10; i++)
        CHECK_CLOSE(out[i], z[i], 1e-7, 1e-6);
    CHECK(g.offset == 24);
    CHECK_OK(msd_rng_randint(&g, out, 4, -3, 5));
    CHECK(out[0] == 3 && out[1] == -2 && out[2] == 0 && out[3] == -2);
    int perm[5];
    msd_rng_randperm(&g, perm, 5);
    int want[5] = { 2, 4, 3, 1, 0 };
    CHECK(memcmp(perm, want, sizeof want) == 0);
    CHECK(g.offset == 40);
    /* a seed above 2^32 uses both key words */
    msd_rng_seed(&g, 0x123456789ABCDEFull);
    msd_rng_uniform(&g, out, 4);
    static const double ub[4] = { 0.71997273, 0.771677971, 0.0806827545, 0.478591859 };
    for (int i = 0; i < 4; i++)
        CHECK_CLOSE(out[i], ub[i], 0, 1e-7);
}

static void moments(const float *x, size_t n, double *mean, double *sd)
{
    double s = 0, s2 = 0;
    for (size_t i = 0; i < n; i++)
        s += x[i];
    *mean = s / (double)n;
    for (size_t i = 0; i < n; i++)
        s2 += (x[i] - *mean) * (x[i] - *mean);
    *sd = sqrt(s2 / (double)(n - 1));
}

static void test_statistics(void)
{
    enum { N = 100000 };
    float *x = malloc(N * sizeof *x);
    msd_rng g;
    msd_rng_seed(&g, 7);
    double m, s;
    msd_rng_uniform(&g, x, N);
    float lo = 1, hi = 0;
    for (int i = 0; i < N; i++) {
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
    }
    moments(x, N, &m, &s);
    printf("  uniform: mean %.5f sd %.5f min %.2e max %.7f\n", m, s, lo, hi);
    CHECK(lo >= 0.0f && hi < 1.0f && lo < 1e-3 && hi > 0.999f);
    CHECK_CLOSE(m, 0.5, 0.005, 0);
    CHECK_CLOSE(s, sqrt(1.0 / 12.0), 0.003, 0);
    msd_rng_normal(&g, x, N);
    moments(x, N, &m, &s);
    int tails = 0;
    double m3 = 0;
    for (int i = 0; i < N; i++) {
        tails += fabs(x[i]) > 1.959964;
        m3 += x[i] * x[i] * x[i];
    }
    printf("  normal: mean %.5f sd %.5f P(|z|>1.96) %.4f skew %.4f\n", m, s, tails / (double)N,
           m3 / N);
    CHECK_CLOSE(m, 0.0, 0.012, 0);
    CHECK_CLOSE(s, 1.0, 0.012, 0);
    CHECK_CLOSE(tails / (double)N, 0.05, 0.004, 0);
    CHECK_CLOSE(m3 / N, 0.0, 0.05, 0);
    /* randint: every value of [-3, 5] about equally often, both ends included */
    CHECK_OK(msd_rng_randint(&g, x, 90000, -3, 5));
    int count[9] = { 0 };
    for (int i = 0; i < 90000; i++) {
        CHECK(x[i] >= -3 && x[i] <= 5 && x[i] == floorf(x[i]));
        count[(int)x[i] + 3]++;
    }
    for (int k = 0; k < 9; k++)
        CHECK(abs(count[k] - 10000) < 450);
    CHECK(msd_rng_randint(&g, x, 1, 5, 4) == MSD_ERR_ARG);
    CHECK(msd_rng_randint(&g, x, 1, 0, 1 << 25) == MSD_ERR_ARG);
    free(x);
}

/* Results do not depend on how a request is split into calls (block-aligned) */
static void test_split_and_resume(void)
{
    enum { N = 4000 };
    float a[N], b[N];
    msd_rng g;
    msd_rng_seed(&g, 123);
    msd_rng_normal(&g, a, N);
    msd_rng_seed(&g, 123);
    msd_rng_normal(&g, b, 1000);
    msd_rng_normal(&g, b + 1000, N - 1000);
    CHECK(memcmp(a, b, sizeof a) == 0);
    /* save, draw, restore, draw again: the same continuation */
    msd_rng_uniform(&g, a, 5);
    msd_rng saved = g;
    msd_rng_uniform(&g, a, N);
    msd_rng_normal(&g, a + 100, 33);
    msd_rng h;
    msd_rng_seed(&h, 999);
    CHECK_OK(msd_rng_set_state(&h, saved.seed, saved.offset));
    msd_rng_uniform(&h, b, N);
    msd_rng_normal(&h, b + 100, 33);
    CHECK(memcmp(a, b, sizeof a) == 0 && h.offset == g.offset);
    CHECK(msd_rng_set_state(&h, 1, 3) == MSD_ERR_ARG);
    /* different seeds differ; perm is a permutation */
    msd_rng_seed(&g, 1);
    msd_rng_seed(&h, 2);
    msd_rng_uniform(&g, a, 8);
    msd_rng_uniform(&h, b, 8);
    CHECK(memcmp(a, b, 8 * sizeof *a) != 0);
    int perm[1000], seen[1000] = { 0 };
    msd_rng_randperm(&g, perm, 1000);
    int fixed = 0;
    for (int i = 0; i < 1000; i++) {
        CHECK(perm[i] >= 0 && perm[i] < 1000 && !seen[perm[i]]);
        seen[perm[i]] = 1;
        fixed += perm[i] == i;
    }
    CHECK(fixed < 10);
    msd_rng_randperm(&g, perm, 0);
    msd_rng_randperm(&g, perm, 1);
    CHECK(perm[0] == 0);
}

static void test_tensor_helpers(void)
{
    msd_rng g;
    msd_rng_seed(&g, 5);
    int s[2] = { 3, 4 };
    msd_tensor *t = NULL;
    CHECK_OK(msd_randn(&g, 2, s, &t));
    float ref[12];
    msd_rng h;
    msd_rng_seed(&h, 5);
    msd_rng_normal(&h, ref, 12);
    CHECK(t->ndim == 2 && memcmp(msd_tensor_data(t), ref, sizeof ref) == 0);
    msd_tensor_release(t);
    int bad[2] = { 3, -1 };
    CHECK(msd_rand(&g, 2, bad, &t) == MSD_ERR_SHAPE && t == NULL);
    CHECK(msd_randint(&g, 2, s, 3, 1, &t) == MSD_ERR_ARG && t == NULL);
    CHECK_OK(msd_randint(&g, 2, s, 0, 1, &t));
    msd_tensor_release(t);
}

int main(void)
{
    RUN(test_philox_kat);
    RUN(test_stream_layout);
    RUN(test_statistics);
    RUN(test_split_and_resume);
    RUN(test_tensor_helpers);
    return TEST_SUMMARY();
}
