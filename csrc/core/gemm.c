/* msd_sgemm (gemm.h): packed, blocked GEMM in the manner of Goto and BLIS.
 *
 * Loops, outermost first: columns of C in blocks of NC, K in blocks of KC
 * (op(B)'s KC x NC block is packed once, into NR-wide panels), rows of C in
 * blocks of MC (op(A)'s MC x KC block packed into MR-tall panels), then NR
 * columns and MR rows, where a micro-kernel keeps the MR x NR tile of C in
 * registers for the whole KC-long dot products. One B micro-panel (KC x NR)
 * stays in L1 while the A micro-panels stream past it from L2.
 *
 * Packed layouts (k-major, zero-padded to full panels so the kernels never
 * test bounds inside the k loop):
 *   A panel: ap[k*MR + i] = op(A)[ic+ir+i, pc+k]
 *   B panel: bp[k*NR + j] = op(B)[pc+k, jc+jr+j]
 * Each kernel sums over k in the same order, so a level's result does not
 * depend on the blocking of M or N, nor on the thread that runs it. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MSD_X86 1
#endif

#include "cpu.h"
#include "error.h"
#include "gemm.h"

#define KC 192
#define MC 96
#define NC 1920 /* a multiple of every NR below */

/* kc x (MR x NR) tile: C = alpha * (a panel . b panel) + beta * C, on an
 * m x n corner (m <= MR, n <= NR); with beta == 0, C is not read. */
typedef void (*kernel_fn)(int kc, const float *a, const float *b, float *c, size_t ldc, int m,
                          int n, float alpha, float beta);

struct impl {
    int mr, nr;
    kernel_fn kernel;
};

/* Writes a finished tile held in t (MR x NR, row stride nr) into C: the
 * path for partial tiles at the right and bottom edges. */
static void store_tile(float *c, size_t ldc, const float *t, int nr, int m, int n, float alpha,
                       float beta)
{
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            float v = alpha * t[i * nr + j];
            c[i * ldc + j] = beta == 0.0f ? v : v + beta * c[i * ldc + j];
        }
}

/* ---- generic: 4 x 16, plain C the compiler may vectorise --------------- */

#define G_MR 4
#define G_NR 16

static void kernel_generic(int kc, const float *a, const float *b, float *c, size_t ldc, int m,
                           int n, float alpha, float beta)
{
    float t[G_MR * G_NR] = { 0 };
    for (int k = 0; k < kc; k++, a += G_MR, b += G_NR)
        for (int i = 0; i < G_MR; i++)
            for (int j = 0; j < G_NR; j++)
                t[i * G_NR + j] += a[i] * b[j];
    store_tile(c, ldc, t, G_NR, m, n, alpha, beta);
}

#ifdef MSD_X86
/* ---- AVX2 + FMA: 6 x 16, 12 ymm accumulators --------------------------- */

#define A2_MR 6
#define A2_NR 16

__attribute__((target("avx2,fma"))) static void
kernel_avx2(int kc, const float *a, const float *b, float *c, size_t ldc, int m, int n,
            float alpha, float beta)
{
    __m256 acc[A2_MR][2];
#pragma GCC unroll 6
    for (int i = 0; i < A2_MR; i++)
        acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    for (int k = 0; k < kc; k++, a += A2_MR, b += A2_NR) {
        __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
#pragma GCC unroll 6
        for (int i = 0; i < A2_MR; i++) {
            __m256 ai = _mm256_broadcast_ss(a + i);
            acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(ai, b1, acc[i][1]);
        }
    }
    __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
    if (m == A2_MR && n == A2_NR) {
#pragma GCC unroll 6
        for (int i = 0; i < A2_MR; i++)
            for (int j = 0; j < 2; j++) {
                float *p = c + i * ldc + 8 * j;
                __m256 v = _mm256_mul_ps(acc[i][j], va);
                if (beta != 0.0f)
                    v = _mm256_fmadd_ps(vb, _mm256_loadu_ps(p), v);
                _mm256_storeu_ps(p, v);
            }
        return;
    }
    float t[A2_MR * A2_NR];
#pragma GCC unroll 6
    for (int i = 0; i < A2_MR; i++) {
        _mm256_storeu_ps(t + i * A2_NR, acc[i][0]);
        _mm256_storeu_ps(t + i * A2_NR + 8, acc[i][1]);
    }
    store_tile(c, ldc, t, A2_NR, m, n, alpha, beta);
}

/* ---- AVX-512: 8 x 48, 24 zmm accumulators -------------------------------
 * Per k: 3 loads of B and 8 broadcasts of A feed 24 FMAs, so the two FMA
 * ports, not the loads, set the pace. */

#define A5_MR 8
#define A5_NR 48

__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,fma"))) static void
kernel_avx512(int kc, const float *a, const float *b, float *c, size_t ldc, int m, int n,
              float alpha, float beta)
{
    __m512 acc[A5_MR][3];
#pragma GCC unroll 8
    for (int i = 0; i < A5_MR; i++)
        acc[i][0] = acc[i][1] = acc[i][2] = _mm512_setzero_ps();
    for (int k = 0; k < kc; k++, a += A5_MR, b += A5_NR) {
        __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16), b2 = _mm512_load_ps(b + 32);
#pragma GCC unroll 8
        for (int i = 0; i < A5_MR; i++) {
            __m512 ai = _mm512_set1_ps(a[i]);
            acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
            acc[i][2] = _mm512_fmadd_ps(ai, b2, acc[i][2]);
        }
    }
    /* masks for the columns < n of each 16-wide vector */
    __mmask16 mk[3];
    for (int j = 0; j < 3; j++) {
        int r = n - 16 * j;
        r = r < 0 ? 0 : r > 16 ? 16 : r;
        mk[j] = (__mmask16)((1u << r) - 1u);
    }
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
#pragma GCC unroll 8
    for (int i = 0; i < A5_MR; i++) {
        if (i >= m)
            break;
        for (int j = 0; j < 3; j++) {
            float *p = c + i * ldc + 16 * j;
            __m512 v = _mm512_mul_ps(acc[i][j], va);
            if (beta != 0.0f)
                v = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(mk[j], p), v);
            _mm512_mask_storeu_ps(p, mk[j], v);
        }
    }
}
#endif

static const struct impl impls[MSD_ISA_COUNT] = {
    [MSD_ISA_GENERIC] = { G_MR, G_NR, kernel_generic },
#ifdef MSD_X86
    [MSD_ISA_AVX2] = { A2_MR, A2_NR, kernel_avx2 },
    [MSD_ISA_AVX512] = { A5_MR, A5_NR, kernel_avx512 },
#endif
};

/* ---- packing ------------------------------------------------------------ */

/* op(A)[i0 .. i0+mc, p0 .. p0+kc] into ceil(mc/mr) panels of kc x mr */
static void pack_a(float *ap, const float *A, int lda, int transa, int i0, int mc, int p0, int kc,
                   int mr)
{
    for (int ir = 0; ir < mc; ir += mr) {
        int m = mc - ir < mr ? mc - ir : mr;
        if (transa) {
            /* op(A)[i, k] = A[k*lda + i]: mr contiguous values per k */
            const float *src = A + (size_t)p0 * lda + i0 + ir;
            for (int k = 0; k < kc; k++, ap += mr, src += lda) {
                for (int i = 0; i < m; i++)
                    ap[i] = src[i];
                for (int i = m; i < mr; i++)
                    ap[i] = 0.0f;
            }
        } else {
            const float *src = A + (size_t)(i0 + ir) * lda + p0;
            for (int i = 0; i < mr; i++) {
                if (i < m)
                    for (int k = 0; k < kc; k++)
                        ap[k * mr + i] = src[(size_t)i * lda + k];
                else
                    for (int k = 0; k < kc; k++)
                        ap[k * mr + i] = 0.0f;
            }
            ap += (size_t)kc * mr;
        }
    }
}

struct matrix_b {
    const float *B;
    int ldb, transb;
};

/* msd_pack_b_fn for a matrix B (struct matrix_b) */
static void pack_b(void *ctx, float *bp, int p0, int kc, int j0, int nc, int nr)
{
    const struct matrix_b *mb = ctx;
    const float *B = mb->B;
    int ldb = mb->ldb, transb = mb->transb;
    for (int jr = 0; jr < nc; jr += nr) {
        int n = nc - jr < nr ? nc - jr : nr;
        if (!transb) {
            /* op(B)[k, j] = B[k*ldb + j]: n contiguous values per k */
            const float *src = B + (size_t)p0 * ldb + j0 + jr;
            for (int k = 0; k < kc; k++, bp += nr, src += ldb) {
                memcpy(bp, src, (size_t)n * sizeof *bp);
                for (int j = n; j < nr; j++)
                    bp[j] = 0.0f;
            }
        } else {
            const float *src = B + (size_t)(j0 + jr) * ldb + p0;
            for (int j = 0; j < nr; j++) {
                if (j < n)
                    for (int k = 0; k < kc; k++)
                        bp[k * nr + j] = src[(size_t)j * ldb + k];
                else
                    for (int k = 0; k < kc; k++)
                        bp[k * nr + j] = 0.0f;
            }
            bp += (size_t)kc * nr;
        }
    }
}

/* ---- per-thread packing buffers ----------------------------------------- */

#define BUF_FLOATS ((size_t)MC * KC + (size_t)KC * NC)

static pthread_key_t buf_key;
static pthread_once_t buf_once = PTHREAD_ONCE_INIT;
static int buf_key_ok;

static void buf_key_init(void)
{
    buf_key_ok = pthread_key_create(&buf_key, free) == 0;
}

/* This thread's buffer of BUF_FLOATS floats (64-byte aligned), freed when
 * the thread exits; NULL when it cannot be had. */
static float *thread_buffer(void)
{
    pthread_once(&buf_once, buf_key_init);
    if (!buf_key_ok)
        return NULL;
    float *p = pthread_getspecific(buf_key);
    if (!p) {
        p = aligned_alloc(64, BUF_FLOATS * sizeof *p);
        if (p && pthread_setspecific(buf_key, p) != 0) {
            free(p);
            p = NULL;
        }
    }
    return p;
}

/* ---- the product ---------------------------------------------------------- */

static void scale_c(float *C, int ldc, int M, int N, float beta)
{
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++)
            C[(size_t)i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[(size_t)i * ldc + j];
}

/* The fallback without buffers: plain dot products. */
static void gemm_unblocked(int transa, int transb, int M, int N, int K, float alpha,
                           const float *A, int lda, const float *B, int ldb, float beta, float *C,
                           int ldc)
{
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float s = 0.0f;
            for (int k = 0; k < K; k++)
                s += (transa ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k]) *
                     (transb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j]);
            float *p = C + (size_t)i * ldc + j;
            *p = beta == 0.0f ? alpha * s : alpha * s + beta * *p;
        }
}

/* The product through packed blocks; buf holds BUF_FLOATS floats. */
static void gemm_blocked(float *buf, int transa, int M, int N, int K, float alpha, const float *A,
                         int lda, msd_pack_b_fn pack, void *ctx, float beta, float *C, int ldc)
{
    const struct impl *im = &impls[msd_isa_get()];
    int mr = im->mr, nr = im->nr, mcb = MC / mr * mr;
    float *ap = buf, *bp = buf + (size_t)MC * KC;
    for (int jc = 0; jc < N; jc += NC) {
        int nc = N - jc < NC ? N - jc : NC;
        for (int pc = 0; pc < K; pc += KC) {
            int kc = K - pc < KC ? K - pc : KC;
            /* the first K block applies beta, the later ones accumulate */
            float bet = pc == 0 ? beta : 1.0f;
            pack(ctx, bp, pc, kc, jc, nc, nr);
            for (int ic = 0; ic < M; ic += mcb) {
                int mc = M - ic < mcb ? M - ic : mcb;
                pack_a(ap, A, lda, transa, ic, mc, pc, kc, mr);
                for (int jr = 0; jr < nc; jr += nr)
                    for (int ir = 0; ir < mc; ir += mr)
                        im->kernel(kc, ap + (size_t)ir * kc, bp + (size_t)jr * kc,
                                   C + (size_t)(ic + ir) * ldc + jc + jr, (size_t)ldc,
                                   mc - ir < mr ? mc - ir : mr, nc - jr < nr ? nc - jr : nr,
                                   alpha, bet);
            }
        }
    }
}

void msd_sgemm(int transa, int transb, int M, int N, int K, float alpha, const float *A,
               int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    if (M <= 0 || N <= 0)
        return;
    if (K <= 0 || alpha == 0.0f) {
        scale_c(C, ldc, M, N, beta);
        return;
    }
    float *buf = thread_buffer();
    if (!buf) {
        gemm_unblocked(transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    struct matrix_b mb = { B, ldb, transb };
    gemm_blocked(buf, transa, M, N, K, alpha, A, lda, pack_b, &mb, beta, C, ldc);
}

int msd_sgemm_pack(int transa, int M, int N, int K, float alpha, const float *A, int lda,
                   msd_pack_b_fn pack, void *ctx, float beta, float *C, int ldc)
{
    if (M <= 0 || N <= 0)
        return MSD_OK;
    if (K <= 0 || alpha == 0.0f) {
        scale_c(C, ldc, M, N, beta);
        return MSD_OK;
    }
    float *buf = thread_buffer();
    if (!buf)
        return msd_error(MSD_ERR_MEM, "gemm: out of memory for a packing buffer of %zu floats",
                         BUF_FLOATS);
    gemm_blocked(buf, transa, M, N, K, alpha, A, lda, pack, ctx, beta, C, ldc);
    return MSD_OK;
}
