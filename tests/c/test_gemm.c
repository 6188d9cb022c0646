/* msd_sgemm, msd_sgemm_bf16 (and its prepacked form) against a double-precision triple loop, for
 * every transpose combination, edge sizes around each kernel's tile, alpha/beta
 * cases, and every kernel level this CPU can run. */
#include <float.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "conv_amx.h" /* msd_bf16_from_float */
#include "gemm.h"
#include "minisd.h"
#include "test.h"

static unsigned rng_state = 12345;

static float frand(void)
{
    rng_state = rng_state * 1664525u + 1013904223u;
    return (float)((rng_state >> 8) & 0xffff) / 32768.0f - 1.0f;
}

/* v, or with bf16 the float that v rounds to in bf16 (written out here: the
 * bf16 bits are the top half, rounded to nearest even, subnormals to zero) */
static double input(float v, int bf16)
{
    if (!bf16)
        return v;
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    if ((u & 0x7f800000u) == 0)
        return (u >> 31) ? -0.0 : 0.0;
    uint32_t low = u & 0xffffu, r = u & 0xffff0000u;
    if (low > 0x8000u || (low == 0x8000u && (u & 0x10000u)))
        r += 0x10000u;
    float f;
    memcpy(&f, &r, sizeof f);
    return f;
}

/* C (M,N) = alpha op(A) op(B) + beta C0, in double; with bf16, of the inputs
 * rounded to bf16 */
static void ref_gemm(int ta, int tb, int M, int N, int K, double alpha, const float *A, int lda,
                     const float *B, int ldb, double beta, const float *C0, double *C, int ldc,
                     int bf16)
{
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0;
            for (int k = 0; k < K; k++)
                s += input(ta ? A[k * lda + i] : A[i * lda + k], bf16) *
                     input(tb ? B[j * ldb + k] : B[k * ldb + j], bf16);
            C[i * ldc + j] = alpha * s + (beta == 0 ? 0 : beta * C0[i * ldc + j]);
        }
}

/* One case; returns 0 when msd_sgemm (msd_sgemm_bf16 with bf16) matches to
 * float rounding. Leading dims are padded by 3 so that strides differ from
 * widths. */
static int one_case(int ta, int tb, int M, int N, int K, float alpha, float beta, int bf16)
{
    int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 3, ldc = N + 3;
    size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb, nc = (size_t)M * ldc;
    float *A = malloc(na * sizeof *A), *B = malloc(nb * sizeof *B), *C = malloc(nc * sizeof *C);
    float *C0 = malloc(nc * sizeof *C0);
    double *R = malloc(nc * sizeof *R);
    for (size_t i = 0; i < na; i++)
        A[i] = frand();
    for (size_t i = 0; i < nb; i++)
        B[i] = frand();
    for (size_t i = 0; i < nc; i++)
        C0[i] = frand();
    memcpy(C, C0, nc * sizeof *C);
    if (beta == 0.0f) /* C must not be read: NaN would show */
        for (size_t i = 0; i < nc; i++)
            C[i] = NAN;
    for (int i = 0; i < M; i++) /* the padding columns must stay untouched */
        for (int j = N; j < ldc; j++)
            C[(size_t)i * ldc + j] = 7.0f;
    ref_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C0, R, ldc, bf16);
    (bf16 ? msd_sgemm_bf16 : msd_sgemm)(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    int bad = 0;
    double worst = 0;
    for (int i = 0; i < M && !bad; i++) {
        for (int j = 0; j < N; j++) {
            double got = C[(size_t)i * ldc + j], want = R[(size_t)i * ldc + j];
            double err = fabs(got - want), tol = 1e-5 * (K + 1) + 1e-5 * fabs(want);
            if (err > worst)
                worst = err;
            if (!(err <= tol)) {
                fprintf(stderr, "  %s%s ta=%d tb=%d M=%d N=%d K=%d alpha=%g beta=%g: C[%d,%d] = "
                        "%.9g, expected %.9g\n", msd_isa_name(msd_isa_get()),
                        bf16 ? " bf16" : "", ta, tb, M, N, K, alpha, beta, i, j, got, want);
                bad = 1;
                break;
            }
        }
        for (int j = N; j < ldc; j++)
            if (C[(size_t)i * ldc + j] != 7.0f) {
                fprintf(stderr, "  wrote past column N at row %d\n", i);
                bad = 1;
            }
    }
    free(A);
    free(B);
    free(C);
    free(C0);
    free(R);
    return bad;
}

/* Every shape of dims with every transpose, beta 0 and 1, and two other alpha/beta
 * pairs, at every level this CPU runs; msd_sgemm_bf16 with bf16 */
static void sweep(const int (*dims)[3], size_t nd, int bf16)
{
    int best = msd_isa_best();
    for (int isa = 0; isa <= best; isa++) {
        CHECK_OK(msd_isa_set(isa));
        for (size_t d = 0; d < nd; d++)
            for (int ta = 0; ta < 2; ta++)
                for (int tb = 0; tb < 2; tb++) {
                    const int *m = dims[d];
                    CHECK(one_case(ta, tb, m[0], m[1], m[2], 1.0f, 0.0f, bf16) == 0);
                    CHECK(one_case(ta, tb, m[0], m[1], m[2], 1.0f, 1.0f, bf16) == 0);
                }
        CHECK(one_case(0, 1, 20, 50, 30, -2.0f, 0.5f, bf16) == 0);
        CHECK(one_case(1, 0, 20, 50, 30, 0.5f, -1.0f, bf16) == 0);
    }
    CHECK_OK(msd_isa_set(best));
}

static void test_all_levels(void)
{
    /* around the tiles (4x8, 6x16, 6x64), the blocks (NC 1920; K split in
     * blocks when N is wide) and the model's conv shapes (64 x 576...) */
    static const int dims[][3] = {
        { 1, 1, 1 },    { 3, 5, 7 },     { 6, 64, 16 },   { 7, 65, 129 }, { 7, 47, 257 },
        { 6, 16, 5 },   { 13, 33, 2 },   { 64, 256, 576 }, { 97, 100, 385 },
        { 5, 1921, 3 }, { 128, 64, 200 }, { 3, 256, 64 }, { 9, 1930, 300 },
    };
    sweep(dims, sizeof dims / sizeof dims[0], 0);
}

/* msd_sgemm_bf16: the products of the rounded inputs, at every level (plain loops below
 * avx512bf16), odd K (a half-empty last pair) and K, M, N across the blocks */
static void test_bf16(void)
{
    static const int dims[][3] = {
        { 1, 1, 1 },    { 3, 5, 7 },     { 6, 64, 16 },  { 7, 65, 129 }, { 17, 47, 257 },
        { 13, 33, 2 },  { 128, 64, 128 }, { 97, 100, 385 }, { 5, 1921, 3 }, { 9, 1930, 131 },
        { 2000, 20, 5 },
    };
    sweep(dims, sizeof dims / sizeof dims[0], 1);
    /* the rounding is real: these inputs are not bf16 numbers, and fp32 products differ */
    float a[2] = { 1.00390625f * 1.001f, 3.0f }, b[2] = { 1.0f, 1.0f / 3.0f }, c32, c16;
    msd_sgemm(0, 0, 1, 1, 2, 1.0f, a, 2, b, 1, 0.0f, &c32, 1);
    msd_sgemm_bf16(0, 0, 1, 1, 2, 1.0f, a, 2, b, 1, 0.0f, &c16, 1);
    CHECK(c32 != c16);
    CHECK(fabs(c16 - (input(a[0], 1) + 3.0 * input(b[1], 1))) < 1e-6);
}

/* The bf16 packing rounds exactly as msd_bf16_from_float, specials included (ties to even,
 * subnormals to zero, overflow to infinity, NaN): each value times 1 through A's rows
 * (either layout) and through B's pairs, at every level */
static void test_bf16_specials(void)
{
    enum { NV = 19 };
    const float v[NV] = { 1.0f + 1.0f / 256, 1.0f + 3.0f / 256, 1.00390625f * 1.001f, -2.5e-39f,
                          1e-40f, FLT_MAX, -FLT_MAX, INFINITY, -INFINITY, NAN, 0.0f, -0.0f,
                          3.0e38f, 1.17549435e-38f, 65504.0f, -1.0f / 3, 1234.5678f,
                          -0.1f, 7.0e-10f };
    float A[NV * 2], At[2 * NV], B[2 * NV], one[2] = { 1.0f, 0.0f }, C[NV];
    for (int i = 0; i < NV; i++) {
        A[2 * i] = At[i] = B[i] = v[i];
        A[2 * i + 1] = At[NV + i] = B[NV + i] = 0.0f;
    }
    int best = msd_isa_best();
    for (int isa = 0; isa <= best; isa++) {
        CHECK_OK(msd_isa_set(isa));
        for (int path = 0; path < 3; path++) {
            if (path == 0) /* A (NV, 2) rows */
                msd_sgemm_bf16(0, 0, NV, 1, 2, 1.0f, A, 2, one, 1, 0.0f, C, 1);
            else if (path == 1) /* A as the transpose of (2, NV) */
                msd_sgemm_bf16(1, 0, NV, 1, 2, 1.0f, At, NV, one, 1, 0.0f, C, 1);
            else /* B (2, NV) pairs */
                msd_sgemm_bf16(0, 0, 1, NV, 2, 1.0f, one, 2, B, NV, 0.0f, C, NV);
            for (int i = 0; i < NV; i++) {
                uint32_t got, want = (uint32_t)msd_bf16_from_float(v[i]) << 16;
                memcpy(&got, &C[i], sizeof got);
                /* a zero's sign is the sum's: -0 + 0 = +0 */
                int ok = isnan(v[i]) ? isnan(C[i])
                                     : got == want || ((want << 1) == 0 && (got << 1) == 0);
                if (!ok)
                    fprintf(stderr, "  %s path %d: bf16(%.9g) gave %08x, expected %08x\n",
                            msd_isa_name(isa), path, v[i], got, want);
                CHECK(ok);
            }
        }
    }
    CHECK_OK(msd_isa_set(best));
}

/* msd_sgemm_bf16_packed on A's bf16 rows (and the same words transposed) and B packed by
 * msd_bf16_pack_b: the same bits as msd_sgemm_bf16 on the floats, at every level, for shapes
 * around the kernel's tile (6 x 64) and the K block (128), an odd K (its padding element),
 * beta 0 and not. */
static void test_bf16_packed(void)
{
    static const int dims[][3] = { { 1, 1, 1 }, { 7, 65, 3 }, { 13, 64, 16 }, { 6, 130, 129 },
                                   { 20, 3, 300 }, { 37, 100, 64 } };
    int best = msd_isa_best();
    for (int isa = 0; isa <= best; isa++) {
        CHECK_OK(msd_isa_set(isa));
        for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++) {
            int M = dims[d][0], N = dims[d][1], K = dims[d][2], lda = K + (K & 1) + 4;
            int ldc = N + 3;
            float *A = malloc(sizeof(float) * M * K), *B = malloc(sizeof(float) * K * N);
            float *C1 = malloc(sizeof(float) * M * ldc), *C2 = malloc(sizeof(float) * M * ldc);
            uint16_t *Ah = calloc((size_t)M * lda, sizeof *Ah);
            uint32_t *At = malloc(sizeof *At * (size_t)M * ((K + 1) / 2));
            /* 64-byte aligned, as the conv's storage */
            size_t words = msd_bf16_packed_b_words(K, N);
            uint32_t *bp = aligned_alloc(64, (words * 4 + 63) / 64 * 64);
            for (int i = 0; i < M * K; i++)
                A[i] = frand();
            for (int i = 0; i < K * N; i++)
                B[i] = frand();
            for (int i = 0; i < M; i++)
                for (int k = 0; k < K; k++)
                    Ah[(size_t)i * lda + k] = msd_bf16_from_float(A[i * K + k]);
            msd_bf16_pack_b(bp, B, N, K, N);
            for (int b = 0; b < 2; b++) {
                float beta = b ? 0.75f : 0.0f;
                for (int i = 0; i < M * ldc; i++)
                    C1[i] = C2[i] = frand();
                msd_sgemm_bf16(0, 0, M, N, K, 1.0f, A, K, B, N, beta, C1, ldc);
                msd_sgemm_bf16_packed(M, N, K, (const uint32_t *)Ah, (size_t)lda / 2, 1, bp, beta,
                                      C2, ldc);
                int same = memcmp(C1, C2, sizeof(float) * M * ldc) == 0;
                /* A's words transposed: (p, i) at p * M + i, tiles paired along k */
                for (int i = 0; i < M * ldc; i++)
                    C1[i] = C2[i] = frand();
                for (int p = 0; p < (K + 1) / 2; p++)
                    for (int i = 0; i < M; i++)
                        At[(size_t)p * M + i] = (uint32_t)Ah[(size_t)i * lda + 2 * p] |
                                                (uint32_t)Ah[(size_t)i * lda + 2 * p + 1] << 16;
                msd_sgemm_bf16(0, 0, M, N, K, 1.0f, A, K, B, N, beta, C1, ldc);
                msd_sgemm_bf16_packed(M, N, K, At, 1, (size_t)M, bp, beta, C2, ldc);
                same &= memcmp(C1, C2, sizeof(float) * M * ldc) == 0;
                if (!same)
                    fprintf(stderr, "  %s: %d x %d x %d beta %g differs\n", msd_isa_name(isa), M,
                            N, K, beta);
                CHECK(same);
            }
            free(A);
            free(B);
            free(C1);
            free(C2);
            free(Ah);
            free(At);
            free(bp);
        }
    }
    CHECK_OK(msd_isa_set(best));
}

/* msd_sgemm_packed on B packed by msd_pack_b: the bits of msd_sgemm, at every level, with K
 * past a block (KC = 128), N past a panel and not a multiple of it, A with a wider row
 * stride, beta 0 (C not read) and not. */
static void test_packed(void)
{
    static const int dims[][3] = { { 1, 1, 1 }, { 7, 65, 3 }, { 13, 64, 16 }, { 6, 130, 129 },
                                   { 20, 3, 300 }, { 37, 100, 64 } };
    int best = msd_isa_best();
    for (int isa = 0; isa <= best; isa++) {
        CHECK_OK(msd_isa_set(isa));
        for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++) {
            int M = dims[d][0], N = dims[d][1], K = dims[d][2], lda = K + 5, ldc = N + 3;
            float *A = malloc(sizeof(float) * M * lda), *B = malloc(sizeof(float) * K * N);
            float *C1 = malloc(sizeof(float) * M * ldc), *C2 = malloc(sizeof(float) * M * ldc);
            size_t nf = msd_packed_b_floats(K, N);
            float *bp = aligned_alloc(64, (nf * 4 + 63) / 64 * 64);
            for (int i = 0; i < M * lda; i++)
                A[i] = frand();
            for (int i = 0; i < K * N; i++)
                B[i] = frand();
            msd_pack_b(bp, B, N, K, N);
            for (int b = 0; b < 2; b++) {
                float beta = b ? 0.75f : 0.0f;
                for (int i = 0; i < M * ldc; i++)
                    C1[i] = C2[i] = b ? frand() : NAN;
                msd_sgemm(0, 0, M, N, K, 1.0f, A, lda, B, N, beta, C1, ldc);
                msd_sgemm_packed(M, N, K, A, lda, bp, beta, C2, ldc);
                int same = 1;
                for (int i = 0; i < M; i++) /* the columns past N are left alone (NaN) */
                    same &= memcmp(C1 + (size_t)i * ldc, C2 + (size_t)i * ldc,
                                   sizeof(float) * N) == 0;
                if (!same)
                    fprintf(stderr, "  %s: %d x %d x %d beta %g differs\n", msd_isa_name(isa), M,
                            N, K, beta);
                CHECK(same);
            }
            free(A);
            free(B);
            free(C1);
            free(C2);
            free(bp);
        }
    }
    CHECK_OK(msd_isa_set(best));
}

static void test_degenerate(void)
{
    float C[4] = { 1, 2, 3, 4 }, A[1] = { 5 }, B[1] = { 6 };
    msd_sgemm(0, 0, 2, 2, 0, 1.0f, A, 1, B, 1, 2.0f, C, 2); /* K = 0: C = beta C */
    CHECK(C[0] == 2 && C[3] == 8);
    msd_sgemm(0, 0, 2, 2, 0, 1.0f, A, 1, B, 1, 0.0f, C, 2);
    CHECK(C[0] == 0 && C[3] == 0);
    C[0] = 9;
    msd_sgemm(0, 0, 0, 2, 1, 1.0f, A, 1, B, 1, 0.0f, C, 2); /* M = 0: nothing */
    CHECK(C[0] == 9);
}

/* msd_sgemm_offsets: A given by offset tables (here a transposed matrix,
 * read with lda 2000, and a gathered one) matches msd_sgemm on the same
 * values, bit for bit: the same kernel sums in the same order. */
static void test_offsets(void)
{
    enum { M = 70, N = 130, K = 400, LDA = 2000 };
    float *A = malloc(sizeof(float) * K * LDA), *B = malloc(sizeof(float) * K * N);
    float *G = malloc(sizeof(float) * M * K);
    float *C1 = malloc(sizeof(float) * M * N), *C2 = malloc(sizeof(float) * M * N);
    int rowoff[M], koff[K];
    for (int i = 0; i < K * LDA; i++)
        A[i] = frand();
    for (int i = 0; i < K * N; i++)
        B[i] = frand();
    /* A^T[i, k] = A[k*LDA + i*3]: rows 3 apart, columns LDA apart */
    for (int i = 0; i < M; i++)
        rowoff[i] = 3 * i;
    for (int k = 0; k < K; k++)
        koff[k] = k * LDA;
    for (int i = 0; i < M; i++)
        for (int k = 0; k < K; k++)
            G[i * K + k] = A[k * LDA + 3 * i];
    for (int isa = 0; isa <= msd_isa_best(); isa++) {
        CHECK_OK(msd_isa_set(isa));
        for (int tb = 0; tb < 2; tb++) {
            /* tb: the same B read as its own transpose (N, K) */
            msd_sgemm(0, tb, M, N, K, 1.0f, G, K, B, tb ? K : N, 0.0f, C1, N);
            msd_sgemm_offsets(M, N, K, 1.0f, A, rowoff, koff, tb, B, tb ? K : N, 0.0f, C2, N);
            CHECK(memcmp(C1, C2, sizeof(float) * M * N) == 0);
        }
    }
    CHECK_OK(msd_isa_set(msd_isa_best()));
    free(A);
    free(B);
    free(G);
    free(C1);
    free(C2);
}

/* Levels: names round-trip, a level past the CPU's best is refused. */
static void test_levels(void)
{
    int best = msd_isa_best();
    CHECK(best >= MSD_ISA_GENERIC && best < MSD_ISA_COUNT);
    for (int i = 0; i < MSD_ISA_COUNT; i++)
        CHECK(msd_isa_from_name(msd_isa_name(i)) == i);
    CHECK(msd_isa_from_name("sse9") == -1);
    CHECK(msd_isa_set(MSD_ISA_COUNT) == MSD_ERR_ARG);
    CHECK(strstr(msd_last_error(), "set_isa") != NULL);
    if (best < MSD_ISA_COUNT - 1) {
        CHECK(msd_isa_set(best + 1) == MSD_ERR_ARG);
        CHECK(strstr(msd_last_error(), "cannot run") != NULL);
    }
    CHECK_OK(msd_isa_set(MSD_ISA_GENERIC));
    CHECK(msd_isa_get() == MSD_ISA_GENERIC);
    CHECK_OK(msd_isa_set(best));
    CHECK(msd_isa_get() == best);
}

int main(void)
{
    printf("kernel level: %s (best %s)\n", msd_isa_name(msd_isa_get()),
           msd_isa_name(msd_isa_best()));
    RUN(test_levels);
    RUN(test_degenerate);
    RUN(test_all_levels);
    RUN(test_bf16);
    RUN(test_bf16_specials);
    RUN(test_bf16_packed);
    RUN(test_packed);
    RUN(test_offsets);
    return TEST_SUMMARY();
}
