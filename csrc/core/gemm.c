/* msd_sgemm (gemm.h): blocked GEMM in the manner of Goto and BLIS, with the
 * A operand read in place through offset tables.
 *
 * Loops, outermost first: columns of C in blocks of NC, K in blocks of kc
 * (op(B)'s kc x NC block is packed once, into NR-wide panels, zero-padded),
 * then MR rows and NR columns, where a micro-kernel keeps the MR x NR tile of
 * C in registers for the whole kc-long dot products (kc <= KC = 128, so that
 * a B micro-panel, 32 KiB for NR = 64, stays in L1 across all the rows; a
 * whole-K panel from L2 measured 20-30% slower). A is never packed: the
 * kernel broadcasts A[i, k] = base[rowoff[i] + koff[k]] from MR row pointers
 * and the koff table, so the same kernels serve plain matrices (rowoff =
 * i*lda, koff = k, or transposed) and convolution patches read from a padded
 * image (ops_conv.c), without an im2col matrix. The A rows of one tile
 * (MR x kc) and the B micro-panel stay in L1.
 *
 * Packed B layout: bp[k*NR + j] = op(B)[pc+k, jc+jr+j], k-major panels.
 * Each kernel sums over k in the same order (KC blocks, then k), so a
 * level's result does not depend on M, N, the blocking or the thread. */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MSD_X86 1
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#include "bf16_x86.h"
#define MSD_BF16_KERNEL 1
#endif

#include "conv_amx.h" /* msd_bf16_from_float */
#include "cpu.h"
#include "gemm.h"
#include "reduce.h" /* MSD_MULTIVERSION */
#include "vec16.h"

#define KC 128
#define NC 1920 /* a multiple of every NR below */
#define MAX_MR 8 /* at least every MR below */

/* One MR x NR tile over kc: C = alpha * sum_k A[i, k] b[k, j] + beta * C on
 * its m x n corner (m <= MR, n <= NR), where A[i, k] = a[i][koff[k]] (rows
 * i >= m point at a valid row and are not stored); with beta == 0, C is not
 * read. */
typedef void (*kernel_fn)(int kc, const float *const *a, const int *koff, const float *b,
                          float *c, size_t ldc, int m, int n, float alpha, float beta);

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

/* ---- generic: 4 x 8 in 4-float vectors ------------------------------------
 * GCC's and Clang's vector extension: SSE2 on any x86-64, NEON on ARM64 (a
 * LÖVE game on an ARM Mac), scalar code elsewhere; 8 accumulators fit the
 * 16 registers of SSE2. The products are not fused (the build does not
 * contract), so the sums match the scalar order of the other kernels' tiles
 * only to rounding, like every level. */

#define G_MR 4
#define G_NR 8

typedef float v4f __attribute__((vector_size(16)));

static void kernel_generic(int kc, const float *const *a, const int *koff, const float *b,
                           float *c, size_t ldc, int m, int n, float alpha, float beta)
{
    v4f acc[G_MR][2] = { { { 0 } } };
    const float *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3];
    for (int k = 0; k < kc; k++, b += G_NR) {
        v4f b0, b1;
        memcpy(&b0, b, sizeof b0);
        memcpy(&b1, b + 4, sizeof b1);
        int o = koff[k];
        float av[G_MR] = { a0[o], a1[o], a2[o], a3[o] };
        for (int i = 0; i < G_MR; i++) {
            v4f ai = { av[i], av[i], av[i], av[i] };
            acc[i][0] += ai * b0;
            acc[i][1] += ai * b1;
        }
    }
    float t[G_MR * G_NR];
    memcpy(t, acc, sizeof t);
    store_tile(c, ldc, t, G_NR, m, n, alpha, beta);
}

#ifdef MSD_X86
/* ---- AVX2 + FMA: 6 x 16, 12 ymm accumulators --------------------------- */

#define A2_MR 6
#define A2_NR 16

__attribute__((target("avx2,fma"))) static void
kernel_avx2(int kc, const float *const *a, const int *koff, const float *b, float *c, size_t ldc,
            int m, int n, float alpha, float beta)
{
    __m256 acc[A2_MR][2];
#pragma GCC unroll 6
    for (int i = 0; i < A2_MR; i++)
        acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    for (int k = 0; k < kc; k++, b += A2_NR) {
        __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
        int o = koff[k];
#pragma GCC unroll 6
        for (int i = 0; i < A2_MR; i++) {
            __m256 ai = _mm256_broadcast_ss(a[i] + o);
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

/* ---- AVX-512: 6 x 64, 24 zmm accumulators -------------------------------
 * Per k: 4 loads of B and 6 broadcasts of A feed 24 FMAs, so the two FMA
 * ports, not the loads, set the pace. NR = 64 fits the model's 64 and 128
 * output channels exactly. */

#define A5_MR 6
#define A5_NR 64
#define A5_TARGET "avx512f,avx512bw,avx512dq,avx512vl,fma"

/* C = alpha acc + beta C on the m x n corner of an A5_MR x A5_NR tile; with
 * beta == 0, C is not read */
__attribute__((target(A5_TARGET), always_inline)) static inline void
store_acc512(__m512 acc[A5_MR][4], float *c, size_t ldc, int m, int n, float alpha, float beta)
{
    /* masks for the columns < n of each 16-wide vector */
    __mmask16 mk[4];
    for (int j = 0; j < 4; j++) {
        int r = n - 16 * j;
        r = r < 0 ? 0 : r > 16 ? 16 : r;
        mk[j] = (__mmask16)((1u << r) - 1u);
    }
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
#pragma GCC unroll 6
    for (int i = 0; i < A5_MR; i++) {
        if (i >= m)
            break;
        for (int j = 0; j < 4; j++) {
            float *p = c + i * ldc + 16 * j;
            __m512 v = _mm512_mul_ps(acc[i][j], va);
            if (beta != 0.0f)
                v = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(mk[j], p), v);
            _mm512_mask_storeu_ps(p, mk[j], v);
        }
    }
}

__attribute__((target(A5_TARGET))) static void
kernel_avx512(int kc, const float *const *a, const int *koff, const float *b, float *c,
              size_t ldc, int m, int n, float alpha, float beta)
{
    __m512 acc[A5_MR][4];
    const float *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3], *a4 = a[4], *a5 = a[5];
#pragma GCC unroll 6
    for (int i = 0; i < A5_MR; i++)
        acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = _mm512_setzero_ps();
    for (int k = 0; k < kc; k++, b += A5_NR) {
        __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
        __m512 b2 = _mm512_load_ps(b + 32), b3 = _mm512_load_ps(b + 48);
        int o = koff[k];
        const float *ar[A5_MR] = { a0, a1, a2, a3, a4, a5 };
        /* one broadcast at a time: 24 accumulators, 4 B vectors and one
         * broadcast fit the 32 registers (six live broadcasts spilled two
         * accumulators to the stack, a chain through memory every k) */
#pragma GCC unroll 6
        for (int i = 0; i < A5_MR; i++) {
            __m512 ai = _mm512_set1_ps(ar[i][o]);
            acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
            acc[i][2] = _mm512_fmadd_ps(ai, b2, acc[i][2]);
            acc[i][3] = _mm512_fmadd_ps(ai, b3, acc[i][3]);
        }
    }
    store_acc512(acc, c, ldc, m, n, alpha, beta);
}

#ifdef MSD_BF16_KERNEL
/* ---- AVX512-BF16: 6 x 64 over pairs of k ----------------------------------
 * The AVX-512 kernel's tile with vdpbf16ps in place of the FMA: each lane
 * adds the products of two bf16 pairs, so one instruction does the work of
 * two FMAs (this machine's Zen 4 core issues one 512-bit vdpbf16ps per cycle,
 * as it does FMAs: twice the multiply-adds). Operands in 32-bit words, each
 * holding k = 2p in its low half and 2p + 1 in its high half: A's word
 * (i, p) at a[i][p * ks], B's panel NR words per p. */
__attribute__((target(A5_TARGET ",avx512bf16"))) static void
kernel_bf16(int kp, const uint32_t *const *a, size_t ks, const uint32_t *b, float *c, size_t ldc,
            int m, int n, float alpha, float beta)
{
    __m512 acc[A5_MR][4];
#pragma GCC unroll 6
    for (int i = 0; i < A5_MR; i++)
        acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = _mm512_setzero_ps();
    const uint32_t *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3], *a4 = a[4], *a5 = a[5];
    for (int p = 0; p < kp; p++, b += A5_NR) {
        __m512bh b0 = (__m512bh)_mm512_load_si512(b), b1 = (__m512bh)_mm512_load_si512(b + 16);
        __m512bh b2 = (__m512bh)_mm512_load_si512(b + 32);
        __m512bh b3 = (__m512bh)_mm512_load_si512(b + 48);
        size_t o = (size_t)p * ks;
        const uint32_t *ar[A5_MR] = { a0, a1, a2, a3, a4, a5 };
#pragma GCC unroll 6
        for (int i = 0; i < A5_MR; i++) {
            __m512bh ai = (__m512bh)_mm512_set1_epi32((int)ar[i][o]);
            acc[i][0] = _mm512_dpbf16_ps(acc[i][0], ai, b0);
            acc[i][1] = _mm512_dpbf16_ps(acc[i][1], ai, b1);
            acc[i][2] = _mm512_dpbf16_ps(acc[i][2], ai, b2);
            acc[i][3] = _mm512_dpbf16_ps(acc[i][3], ai, b3);
        }
    }
    store_acc512(acc, c, ldc, m, n, alpha, beta);
}
#endif /* MSD_BF16_KERNEL */
#endif

static const struct impl impls[MSD_ISA_COUNT] = {
    [MSD_ISA_GENERIC] = { G_MR, G_NR, kernel_generic },
#ifdef MSD_X86
    [MSD_ISA_AVX2] = { A2_MR, A2_NR, kernel_avx2 },
    [MSD_ISA_AVX512] = { A5_MR, A5_NR, kernel_avx512 },
    [MSD_ISA_AVX512_BF16] = { A5_MR, A5_NR, kernel_avx512 },
    [MSD_ISA_AMX] = { A5_MR, A5_NR, kernel_avx512 },
#endif
};

/* ---- packing ------------------------------------------------------------ */

/* pack_b's transposed case for nr a multiple of 16: op(B)[k, j] = B[j*ldb + k], 16 j by
 * 16 k at a time through a transpose in vector registers (as scalar copies, a
 * one-image sampling step spent a third of its time here, packing the weights) */
MSD_MULTIVERSION
static void pack_bt16(float *restrict bp, const float *restrict B, int ldb, int p0, int kc,
                      int j0, int nc, int nr)
{
    for (int jr = 0; jr < nc; jr += nr) {
        int n = nc - jr < nr ? nc - jr : nr;
        const float *src = B + (size_t)(j0 + jr) * ldb + p0;
        for (int k0 = 0; k0 < kc; k0 += VL) {
            int kk = kc - k0 < VL ? kc - k0 : VL;
            for (int jb = 0; jb < nr; jb += VL) {
                vf r[VL];
                for (int i = 0; i < VL; i++) {
                    if (jb + i < n)
                        LD(r[i], src + (size_t)(jb + i) * ldb + k0, kk);
                    else
                        memset(&r[i], 0, sizeof r[i]);
                }
                transpose16(r);
                for (int k = 0; k < kk; k++)
                    memcpy(bp + (size_t)(k0 + k) * nr + jb, &r[k], sizeof r[k]);
            }
        }
        bp += (size_t)kc * nr;
    }
}

/* op(B)[p0 .. p0+kc, j0 .. j0+nc] into ceil(nc/nr) panels of kc x nr */
static void pack_b(float *bp, const float *B, int ldb, int transb, int p0, int kc, int j0, int nc,
                   int nr)
{
    if (transb && nr % VL == 0) {
        pack_bt16(bp, B, ldb, p0, kc, j0, nc, nr);
        return;
    }
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
            /* op(B)[k, j] = B[j*ldb + k]: a transpose, in blocks of 16 k
             * so that the nr rows being read and the 16 panel rows being
             * written stay in L1 */
            const float *src = B + (size_t)(j0 + jr) * ldb + p0;
            for (int k0 = 0; k0 < kc; k0 += 16) {
                int k1 = kc - k0 < 16 ? kc : k0 + 16;
                for (int j = 0; j < nr; j++)
                    if (j < n)
                        for (int k = k0; k < k1; k++)
                            bp[k * nr + j] = src[(size_t)j * ldb + k];
                    else
                        for (int k = k0; k < k1; k++)
                            bp[k * nr + j] = 0.0f;
            }
            bp += (size_t)kc * nr;
        }
    }
}

/* ---- per-thread packing buffers ----------------------------------------- */

#define BUF_FLOATS ((size_t)KC * NC)

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

/* A, addressed as A[i, k] = base[row(i) + col(k)], row(i) = rowoff[i] or
 * i*rs, col(k) = koff[k] or k*ks (when the table is NULL). */
typedef struct operand_a {
    const float *base;
    const int *rowoff, *koff;
    size_t rs, ks;
} operand_a;

static const float *a_row(const operand_a *a, int i)
{
    return a->base + (a->rowoff ? (size_t)a->rowoff[i] : (size_t)i * a->rs);
}

static size_t a_col(const operand_a *a, int k)
{
    return a->koff ? (size_t)a->koff[k] : (size_t)k * a->ks;
}

static void scale_c(float *C, int ldc, int M, int N, float beta)
{
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++)
            C[(size_t)i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[(size_t)i * ldc + j];
}

/* The fallback without a buffer: plain dot products. */
static void gemm_unblocked(const operand_a *a, int transb, int M, int N, int K, float alpha,
                           const float *B, int ldb, float beta, float *C, int ldc)
{
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            const float *ar = a_row(a, i);
            float s = 0.0f;
            for (int k = 0; k < K; k++)
                s += ar[a_col(a, k)] * (transb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j]);
            float *p = C + (size_t)i * ldc + j;
            *p = beta == 0.0f ? alpha * s : alpha * s + beta * *p;
        }
}

static void gemm(const operand_a *a, int transb, int M, int N, int K, float alpha,
                 const float *B, int ldb, float beta, float *C, int ldc)
{
    if (M <= 0 || N <= 0)
        return;
    if (K <= 0 || alpha == 0.0f) {
        scale_c(C, ldc, M, N, beta);
        return;
    }
    float *bp = thread_buffer();
    if (!bp) {
        gemm_unblocked(a, transb, M, N, K, alpha, B, ldb, beta, C, ldc);
        return;
    }
    const struct impl *im = &impls[msd_isa_get()];
    int mr = im->mr, nr = im->nr;
    int koff[KC];
    const float *rows[MAX_MR];
    for (int jc = 0; jc < N; jc += NC) {
        int nc = N - jc < NC ? N - jc : NC;
        for (int pc = 0; pc < K; pc += KC) {
            int kc = K - pc < KC ? K - pc : KC;
            /* the first K block applies beta, the later ones accumulate */
            float bet = pc == 0 ? beta : 1.0f;
            pack_b(bp, B, ldb, transb, pc, kc, jc, nc, nr);
            for (int k = 0; k < kc; k++)
                koff[k] = (int)a_col(a, pc + k);
            for (int ir = 0; ir < M; ir += mr) {
                int m = M - ir < mr ? M - ir : mr;
                /* rows past m repeat the last one: computed, never stored */
                for (int i = 0; i < mr; i++)
                    rows[i] = a_row(a, ir + (i < m ? i : m - 1));
                for (int jr = 0; jr < nc; jr += nr)
                    im->kernel(kc, rows, koff, bp + (size_t)jr * kc,
                               C + (size_t)ir * ldc + jc + jr, (size_t)ldc, m,
                               nc - jr < nr ? nc - jr : nr, alpha, bet);
            }
        }
    }
}

void msd_sgemm(int transa, int transb, int M, int N, int K, float alpha, const float *A,
               int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    operand_a a = { A, NULL, NULL, transa ? 1 : (size_t)lda, transa ? (size_t)lda : 1 };
    gemm(&a, transb, M, N, K, alpha, B, ldb, beta, C, ldc);
}

void msd_sgemm_offsets(int M, int N, int K, float alpha, const float *base, const int *rowoff,
                       const int *koff, int transb, const float *B, int ldb, float beta,
                       float *C, int ldc)
{
    operand_a a = { base, rowoff, koff, 0, 0 };
    gemm(&a, transb, M, N, K, alpha, B, ldb, beta, C, ldc);
}

/* ---- fp32 products on B packed beforehand -------------------------------------
 * The same blocks and panels as gemm's pack_b (the kernel level's NR columns, KC rows), for
 * every block in the loops' order, written once for a B shared by many products (each of
 * conv_wino.c's transformed kernels, by every group of tiles; kept across calls for
 * inference). The layout depends on the kernel level: pack and multiply at the same one. */
#define BLOCK_LOOP(K, N)                                                                   \
    for (int jc = 0, nc; jc < (N) && (nc = (N) - jc < NC ? (N) - jc : NC); jc += NC)       \
        for (int pc = 0, kc; pc < (K) && (kc = (K) - pc < KC ? (K) - pc : KC); pc += KC)

static size_t packed_block_floats(int kc, int nc, int nr)
{
    return (size_t)(nc + nr - 1) / nr * nr * (size_t)kc;
}

size_t msd_packed_b_floats(int K, int N)
{
    int nr = impls[msd_isa_get()].nr;
    size_t f = 0;
    BLOCK_LOOP(K, N)
    f += packed_block_floats(kc, nc, nr);
    return f;
}

void msd_pack_b(float *bp, const float *B, int ldb, int K, int N)
{
    int nr = impls[msd_isa_get()].nr;
    BLOCK_LOOP(K, N)
    {
        pack_b(bp, B, ldb, 0, pc, kc, jc, nc, nr);
        bp += packed_block_floats(kc, nc, nr);
    }
}

void msd_sgemm_packed(int M, int N, int K, const float *A, int lda, const float *bp, float beta,
                      float *C, int ldc)
{
    if (M <= 0 || N <= 0)
        return;
    if (K <= 0) {
        scale_c(C, ldc, M, N, beta);
        return;
    }
    const struct impl *im = &impls[msd_isa_get()];
    int mr = im->mr, nr = im->nr, koff[KC];
    const float *rows[MAX_MR];
    BLOCK_LOOP(K, N)
    {
        float bet = pc == 0 ? beta : 1.0f;
        for (int k = 0; k < kc; k++)
            koff[k] = pc + k;
        for (int ir = 0; ir < M; ir += mr) {
            int m = M - ir < mr ? M - ir : mr;
            for (int i = 0; i < mr; i++)
                rows[i] = A + (size_t)(ir + (i < m ? i : m - 1)) * lda;
            for (int jr = 0; jr < nc; jr += nr)
                im->kernel(kc, rows, koff, bp + (size_t)jr * kc, C + (size_t)ir * ldc + jc + jr,
                           (size_t)ldc, m, nc - jr < nr ? nc - jr : nr, 1.0f, bet);
        }
        bp += packed_block_floats(kc, nc, nr);
    }
}

/* ---- bf16 products ---------------------------------------------------------
 * msd_sgemm_bf16 at MSD_ISA_AVX512_BF16 and above: the Goto loops of gemm()
 * with both operands packed to bf16 words (32 bits: k = 2p low, 2p + 1 high;
 * an odd K's last word is completed with zeros), A too this time, since its
 * words must be pairs along k whatever its layout:
 *   B's kc x nc block: ceil(nc/NR) panels, per p NR words (bp[p*NR + j]);
 *   A's mc x kc block: rows of ceil(kc/2) words when A's rows run along k
 *   (transa == 0), else per p a row of mc words (A's columns run along i).
 * Both come from the per-thread buffer, half each (KC/2 x NC words of B,
 * NC x KC/2 words of A). */

/* bf16 of a float, as the upper half of a word (the lower is zero) */
static uint32_t bf16_word_hi(float f)
{
    return (uint32_t)msd_bf16_from_float(f) << 16;
}

/* Below the bf16 level: the products of the rounded inputs, summed in fp32
 * in the order of k (slow; only for forced lower levels and other CPUs). */
static void gemm_bf16_unblocked(int transa, int transb, int M, int N, int K, float alpha,
                                const float *A, int lda, const float *B, int ldb, float beta,
                                float *C, int ldc)
{
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float s = 0.0f;
            for (int k = 0; k < K; k++) {
                float a = transa ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                float b = transb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
                uint32_t ua = bf16_word_hi(a), ub = bf16_word_hi(b);
                float fa, fb;
                memcpy(&fa, &ua, sizeof fa);
                memcpy(&fb, &ub, sizeof fb);
                s += fa * fb;
            }
            float *p = C + (size_t)i * ldc + j;
            *p = beta == 0.0f ? alpha * s : alpha * s + beta * *p;
        }
}

#ifdef MSD_BF16_KERNEL
#define BF_MC NC /* rows of A per packed block */

static const float zeros[A5_NR > 16 ? A5_NR : 16];

/* op(B)[p0 .. p0+kc, j0 .. j0+nc] as bf16 word panels of A5_NR columns */
__attribute__((target(MSD_BF16_NATIVE))) static void
pack_b_bf16(uint32_t *bp, const float *B, int ldb, int transb, int p0, int kc, int j0, int nc)
{
    int kp = (kc + 1) / 2;
    for (int jr = 0; jr < nc; jr += A5_NR) {
        int n = nc - jr < A5_NR ? nc - jr : A5_NR;
        for (int p = 0; p < kp; p++, bp += A5_NR) {
            int k = p0 + 2 * p, two = 2 * p + 1 < kc;
            if (!transb) {
                const float *r0 = B + (size_t)k * ldb + j0 + jr;
                msd_bf16_pairs_native((uint16_t *)bp, r0, two ? r0 + ldb : zeros, n);
            } else {
                for (int j = 0; j < n; j++) {
                    const float *r = B + (size_t)(j0 + jr + j) * ldb + k;
                    bp[j] = bf16_word_hi(r[0]) >> 16 | (two ? bf16_word_hi(r[1]) : 0u);
                }
            }
            for (int j = n; j < A5_NR; j++)
                bp[j] = 0;
        }
    }
}

/* A's rows i0 .. i0+mc, columns p0 .. p0+kc as words: word p of row i at
 * ap + i * *rs + p * *ks: with transa == 0 rows of kp words (*rs = kp, *ks =
 * 1), else rows of mc words per p (*rs = 1, *ks = mc) */
__attribute__((target(MSD_BF16_NATIVE))) static void
pack_a_bf16(uint32_t *ap, const float *A, int lda, int transa, int i0, int mc, int p0, int kc,
            size_t *rs, size_t *ks)
{
    int kp = (kc + 1) / 2;
    if (!transa) {
        for (int i = 0; i < mc; i++) {
            uint32_t *dst = ap + (size_t)i * kp;
            msd_bf16_row_native((uint16_t *)dst, A + (size_t)(i0 + i) * lda + p0, kc);
            if (kc % 2)
                ((uint16_t *)dst)[kc] = 0;
        }
        *rs = (size_t)kp;
        *ks = 1;
    } else {
        size_t ldp = (size_t)mc;
        for (int p = 0; p < kp; p++) {
            const float *r0 = A + (size_t)(p0 + 2 * p) * lda + i0;
            /* the zero row is only as long as a panel: an odd K's last pair goes in
             * pieces */
            if (2 * p + 1 < kc)
                msd_bf16_pairs_native((uint16_t *)(ap + p * ldp), r0, r0 + lda, mc);
            else
                for (int i = 0; i < mc; i += 16)
                    msd_bf16_pairs_native((uint16_t *)(ap + p * ldp + i), r0 + i, zeros,
                                          mc - i < 16 ? mc - i : 16);
        }
        *rs = 1;
        *ks = ldp;
    }
}

/* msd_sgemm_bf16 on the bf16 kernel; 0 when the buffer cannot be had */
static int gemm_bf16_blocked(int transa, int transb, int M, int N, int K, float alpha,
                             const float *A, int lda, const float *B, int ldb, float beta,
                             float *C, int ldc)
{
    float *buf = thread_buffer();
    if (!buf)
        return 0;
    uint32_t *bp = (uint32_t *)buf, *ap = bp + (size_t)(KC / 2) * NC;
    const uint32_t *rows[A5_MR];
    for (int jc = 0; jc < N; jc += NC) {
        int nc = N - jc < NC ? N - jc : NC;
        for (int pc = 0; pc < K; pc += KC) {
            int kc = K - pc < KC ? K - pc : KC, kp = (kc + 1) / 2;
            float bet = pc == 0 ? beta : 1.0f;
            pack_b_bf16(bp, B, ldb, transb, pc, kc, jc, nc);
            for (int ic = 0; ic < M; ic += BF_MC) {
                int mc = M - ic < BF_MC ? M - ic : BF_MC;
                size_t rs, ks;
                pack_a_bf16(ap, A, lda, transa, ic, mc, pc, kc, &rs, &ks);
                for (int ir = 0; ir < mc; ir += A5_MR) {
                    int m = mc - ir < A5_MR ? mc - ir : A5_MR;
                    for (int i = 0; i < A5_MR; i++)
                        rows[i] = ap + (size_t)(ir + (i < m ? i : m - 1)) * rs;
                    for (int jr = 0; jr < nc; jr += A5_NR)
                        kernel_bf16(kp, rows, ks, bp + (size_t)jr * kp,
                                    C + (size_t)(ic + ir) * ldc + jc + jr, (size_t)ldc, m,
                                    nc - jr < A5_NR ? nc - jr : A5_NR, alpha, bet);
                }
            }
        }
    }
    return 1;
}
#endif

/* ---- bf16 products on operands packed beforehand ---------------------------
 * For a B shared by many products (conv_wino.c: each transformed kernel by every group of
 * tiles): msd_bf16_pack_b writes what gemm_bf16_blocked's pack_b_bf16 would, for every
 * (NC, KC) block in the loops' order, once; A comes as the words pack_a_bf16 would make
 * (rows of bf16, or pairs along k in the transposed layout), read in place (BLOCK_LOOP:
 * above, the fp32 packed product's). */
/* Words of one packed block: whole panels of NR (the AVX-512 kernel's 64) columns. */
static size_t packed_block_words(int kc, int nc)
{
    return (size_t)(nc + 63) / 64 * 64 * (size_t)((kc + 1) / 2);
}

size_t msd_bf16_packed_b_words(int K, int N)
{
    size_t w = 0;
    BLOCK_LOOP(K, N)
    w += packed_block_words(kc, nc);
    return w;
}

void msd_bf16_pack_b(uint32_t *bp, const float *B, int ldb, int K, int N)
{
#ifdef MSD_BF16_KERNEL
    if (msd_gemm_bf16_native()) {
        BLOCK_LOOP(K, N)
        {
            pack_b_bf16(bp, B, ldb, 0, pc, kc, jc, nc);
            bp += packed_block_words(kc, nc);
        }
        return;
    }
#endif
    /* the same layout by plain loops */
    BLOCK_LOOP(K, N)
    {
        int kp = (kc + 1) / 2;
        for (int jr = 0; jr < nc; jr += 64)
            for (int p = 0; p < kp; p++, bp += 64)
                for (int j = 0; j < 64; j++) {
                    int k = pc + 2 * p, col = jc + jr + j, in = jr + j < nc;
                    uint32_t lo = in ? bf16_word_hi(B[(size_t)k * ldb + col]) >> 16 : 0u;
                    uint32_t hi = in && 2 * p + 1 < kc ? bf16_word_hi(B[(size_t)(k + 1) * ldb +
                                                                         col])
                                                       : 0u;
                    bp[j] = lo | hi;
                }
    }
}

/* The float of a word's low (k even) or high (k odd) bf16 */
static float word_half(uint32_t u, int k)
{
    u = k % 2 ? u & 0xffff0000u : u << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

void msd_sgemm_bf16_packed(int M, int N, int K, const uint32_t *A, size_t rs, size_t ks,
                           const uint32_t *bp, float beta, float *C, int ldc)
{
    if (M <= 0 || N <= 0)
        return;
    if (K <= 0) {
        scale_c(C, ldc, M, N, beta);
        return;
    }
#ifdef MSD_BF16_KERNEL
    if (msd_gemm_bf16_native()) {
        const uint32_t *rows[A5_MR];
        BLOCK_LOOP(K, N)
        {
            int kp = (kc + 1) / 2;
            float bet = pc == 0 ? beta : 1.0f;
            for (int ir = 0; ir < M; ir += A5_MR) {
                int m = M - ir < A5_MR ? M - ir : A5_MR;
                for (int i = 0; i < A5_MR; i++)
                    rows[i] = A + (size_t)(ir + (i < m ? i : m - 1)) * rs + (size_t)(pc / 2) * ks;
                for (int jr = 0; jr < nc; jr += A5_NR)
                    kernel_bf16(kp, rows, ks, bp + (size_t)jr * kp,
                                C + (size_t)ir * ldc + jc + jr, (size_t)ldc, m,
                                nc - jr < A5_NR ? nc - jr : A5_NR, 1.0f, bet);
            }
            bp += packed_block_words(kc, nc);
        }
        return;
    }
#endif
    /* plain loops over the same operands: the products in fp32, summed in the order of k */
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float s = 0.0f;
            const uint32_t *blk = bp;
            BLOCK_LOOP(K, N)
            {
                if (j >= jc && j < jc + nc) {
                    int kp = (kc + 1) / 2, jj = j - jc;
                    const uint32_t *pan = blk + (size_t)(jj / 64) * 64 * kp;
                    for (int k = 0; k < kc; k++) {
                        float a = word_half(A[(size_t)i * rs + (size_t)((pc + k) / 2) * ks], k);
                        s += a * word_half(pan[(size_t)(k / 2) * 64 + jj % 64], k);
                    }
                }
                blk += packed_block_words(kc, nc);
            }
            float *p = C + (size_t)i * ldc + j;
            *p = beta == 0.0f ? s : s + beta * *p;
        }
}

int msd_gemm_bf16_native(void)
{
#ifdef MSD_BF16_KERNEL
    return msd_isa_get() >= MSD_ISA_AVX512_BF16;
#else
    return 0;
#endif
}

void msd_sgemm_bf16(int transa, int transb, int M, int N, int K, float alpha, const float *A,
                    int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    if (M <= 0 || N <= 0)
        return;
    if (K <= 0 || alpha == 0.0f) {
        scale_c(C, ldc, M, N, beta);
        return;
    }
#ifdef MSD_BF16_KERNEL
    if (msd_gemm_bf16_native() &&
        gemm_bf16_blocked(transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc))
        return;
#endif
    gemm_bf16_unblocked(transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
