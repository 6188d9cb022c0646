/* Activations: GELU (the exact erf form, PyTorch's default, to float
 * accuracy) and ReLU, each with its grad function. Backward recomputes from
 * the input, so nothing but the input is kept. */
#include <math.h>
#include <stddef.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define ACT_X86 1
#endif

#include "cpu.h"
#include "reduce.h" /* MSD_MULTIVERSION */
#include "ops.h"
#include "threads.h"

#define INV_SQRT2 0.70710678118654752440f
#define INV_SQRT_2PI 0.39894228040143267794f

/* ---- normal CDF -----------------------------------------------------------
 * glibc's erff/expf are scalar calls; these are branch-free forms, written
 * here in scalar C (the generic kernel level) and below once per vector
 * level with intrinsics. The CDF is computed from erfc of |x|, so that its
 * negative tail keeps its relative accuracy (1 + erf(x) would cancel).
 * Checked against erf and exp in double over a wide range in
 * test_act_loss.c: a few 1e-7 relative error, like a float erff. */

/* e^a for a <= 0 (a below -87, or NaN, gives about 1.6e-38: the callers'
 * other factor carries a NaN through): a = k ln2 + r with |r| <= ln2/2, e^r
 * by its degree-7 Taylor polynomial (truncation < 1e-8 relative), 2^k put
 * straight into the exponent bits. The clamp is written so that NaN fails
 * the comparison and becomes -87: k stays in [-126, 0], and the conversion
 * to int and the shift below are always defined. */
/* e^r's Taylor coefficients 1/7! .. 1/0!, highest first (Horner), for every level */
static const float EXP_P[8] = { 1.0f / 5040.0f, 1.0f / 720.0f, 1.0f / 120.0f, 1.0f / 24.0f,
                                1.0f / 6.0f, 0.5f, 1.0f, 1.0f };

static inline float exp_neg(float a)
{
    a = a > -87.0f ? a : -87.0f;
    float fk = (a * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round(a / ln2) */
    float r = a - fk * 0.693145751953125f - fk * 1.428606765330187e-06f;
    float p = EXP_P[0];
    for (int i = 1; i < 8; i++)
        p = p * r + EXP_P[i];
    union { float f; int i; } sc;
    sc.i = ((int)fk + 127) << 23;
    return p * sc.f;
}

/* erfc(a) for a >= 0 is t e^(-a^2) Q(t) with t = 1 / (1 + a/2) (Numerical
 * Recipes' erfcc variable) and Q(t) = e^(a^2) erfc(a) / t, a smooth function
 * of t on [0, 1], from 1 / (2 sqrt pi) at t = 0 to 1 at t = 1. Q here is its
 * degree-11 Chebyshev interpolant on [0, 1] (mpmath: chebyfit(Q, [0, 1], 12),
 * a = 2/t - 2; 5.1e-9 absolute error), its coefficients rounded to float and
 * halved (exactly) so that it returns Q / 2: relative error 5.2e-8 with the
 * rounded coefficients, under erfcc's 1.2e-7. Unlike erfcc's form
 * t e^(P(t) - a^2), the exponential is e^(-a^2) = e^(-v^2/2) for a = |v| /
 * sqrt 2: the normal density's own, so the GELU gradient Phi(v) + v phi(v)
 * takes one exponential instead of two, and the exponential no longer waits
 * for the division and the polynomial (the vector loops are bound by that
 * latency chain more than by their operation count). */
static const float HALF_Q[12] = {
    -0.00404958054f * 0.5f, 0.0653706789f * 0.5f, -0.287119657f * 0.5f, 0.563545823f * 0.5f,
    -0.512718678f * 0.5f,   0.162782565f * 0.5f,  -0.0696027204f * 0.5f, 0.0956547484f * 0.5f,
    0.175047323f * 0.5f,    0.246901363f * 0.5f,  0.282093346f * 0.5f,   0.282094806f * 0.5f,
};

static inline float half_q(float t)
{
    float q = HALF_Q[0];
    for (int i = 1; i < 12; i++)
        q = q * t + HALF_Q[i];
    return q;
}

/* Phi(v), the standard normal CDF: 0.5 erfc(|v| / sqrt 2), mirrored for
 * v >= 0; *e = e^(-v^2/2), rounded once (-0.5 v is exact). 1 + 0.5 a rounds
 * once too (0.5 a is exact), as the vector code's FMA. */
static inline float normal_cdf(float v, float *e)
{
    *e = exp_neg((-0.5f * v) * v);
    float t = 1.0f / (1.0f + 0.5f * ((v < 0.0f ? -v : v) * INV_SQRT2));
    float c = t * half_q(t) * *e;
    return v < 0.0f ? c : 1.0f - c;
}

/* ---- the loops, one per kernel level ------------------------------------
 * Each level computes every element with the same code whatever its position
 * (the vector levels do the last, partial vector with masked loads and
 * stores), so a fused caller working plane by plane (msd_gelu_forward_inplace
 * from the conv and BatchNorm epilogues) gets the bits of msd_gelu_forward on
 * the whole tensor. The levels differ from one another by rounding only, like
 * gemm.c's: the generic loops are the scalar code above, which the build never
 * contracts into FMAs; the AVX2 and AVX-512 loops evaluate the same formulas
 * with explicit FMAs (one rounding where the generic code has two), and give
 * each other's bits (same operations in the same order; see exp_neg16).
 *
 * 1 / (1 + a/2) stays a true division: vrcp14ps and one Newton step (2^-14
 * relative error squared: 2^-28, under the final rounding) measured no faster
 * on an AMX Xeon (Sapphire Rapids class), where the divider is not the
 * bottleneck; the division is correctly rounded, so the AVX2 and AVX-512 bits
 * agree and do not depend on the CPU's vendor (the approximate reciprocals'
 * bits are not specified).
 *
 * Backward computes the term dy * gelu'(x) with one product and then either
 * adds it to dx (msd_gelu_backward) or writes it (msd_gelu_backward_inplace,
 * out == x), so the two write the same term. gelu'(v) = Phi(v) + v phi(v),
 * phi(v) = e^(-v^2/2) / sqrt(2 pi). */

typedef void (*gelu_fwd_fn)(float *y, const float *x, size_t n);
typedef void (*gelu_bwd_fn)(float *out, const float *dy, const float *x, size_t n, int add);

static void gelu_fwd_generic(float *y, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float v = x[i], e;
        y[i] = v * normal_cdf(v, &e);
    }
}

static void gelu_bwd_generic(float *out, const float *dy, const float *x, size_t n, int add)
{
    for (size_t i = 0; i < n; i++) {
        float v = x[i], e, cdf = normal_cdf(v, &e);
        float d = dy[i] * (cdf + v * INV_SQRT_2PI * e);
        out[i] = add ? out[i] + d : d;
    }
}

#ifdef ACT_X86
#define TARGET_AVX512 __attribute__((target("avx512f,fma")))
#define TARGET_AVX2 __attribute__((target("avx2,fma")))
#define INLINE static inline __attribute__((always_inline))

/* ---- AVX-512: 16 lanes --------------------------------------------------- */

/* e^a for a <= 0, exp_neg's method: the same clamp (vmaxps returns its second
 * operand when the first is NaN, as exp_neg's comparison does), round(a / ln2)
 * by the 1.5 * 2^23 trick with one rounding, r by two FMAs (exact, then one
 * rounding), the degree-7 Taylor polynomial by FMAs, and 2^k by vscalefps,
 * which multiplies by 2^k exactly (rounding once if the result is subnormal,
 * as a product by 2^k does: the AVX2 code's bits). */
TARGET_AVX512 INLINE __m512 exp_neg16(__m512 a)
{
    const __m512 shift = _mm512_set1_ps(12582912.0f);
    a = _mm512_max_ps(a, _mm512_set1_ps(-87.0f));
    __m512 fk = _mm512_sub_ps(_mm512_fmadd_ps(a, _mm512_set1_ps(1.44269504088896341f), shift),
                              shift);
    __m512 r = _mm512_fnmadd_ps(fk, _mm512_set1_ps(0.693145751953125f), a);
    r = _mm512_fnmadd_ps(fk, _mm512_set1_ps(1.428606765330187e-06f), r);
    __m512 p = _mm512_set1_ps(EXP_P[0]);
    for (int i = 1; i < 8; i++)
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P[i]));
    return _mm512_scalef_ps(p, fk);
}

/* normal_cdf's method */
TARGET_AVX512 INLINE __m512 normal_cdf16(__m512 v, __m512 *e_out)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    __m512 e = exp_neg16(_mm512_mul_ps(_mm512_mul_ps(v, _mm512_set1_ps(-0.5f)), v));
    __m512 a = _mm512_mul_ps(_mm512_abs_ps(v), _mm512_set1_ps(INV_SQRT2));
    __m512 t = _mm512_div_ps(one, _mm512_fmadd_ps(a, _mm512_set1_ps(0.5f), one));
    __m512 q = _mm512_set1_ps(HALF_Q[0]);
    for (int i = 1; i < 12; i++)
        q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(HALF_Q[i]));
    __m512 c = _mm512_mul_ps(_mm512_mul_ps(t, q), e);
    __mmask16 neg = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ);
    *e_out = e;
    return _mm512_mask_sub_ps(c, (__mmask16)~neg, one, c); /* 1 - c where v >= 0 */
}

/* the lanes [0, n - i) of the vector at element i: all when n - i >= 16 */
TARGET_AVX512 INLINE __mmask16 lanes16(size_t n, size_t i)
{
    return n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
}

TARGET_AVX512 static void gelu_fwd_avx512(float *y, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = lanes16(n, i);
        __m512 v = _mm512_maskz_loadu_ps(m, x + i), e;
        _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(v, normal_cdf16(v, &e)));
    }
}

TARGET_AVX512 static void gelu_bwd_avx512(float *out, const float *dy, const float *x,
                                          size_t n, int add)
{
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = lanes16(n, i);
        __m512 v = _mm512_maskz_loadu_ps(m, x + i), e, cdf = normal_cdf16(v, &e);
        __m512 g = _mm512_fmadd_ps(_mm512_mul_ps(v, _mm512_set1_ps(INV_SQRT_2PI)), e, cdf);
        __m512 d = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, dy + i), g);
        if (add)
            d = _mm512_add_ps(_mm512_maskz_loadu_ps(m, out + i), d);
        _mm512_mask_storeu_ps(out + i, m, d);
    }
}

/* ---- AVX2: 8 lanes, the AVX-512 code's operations ------------------------- */

/* exp_neg16 with 2^k put into the exponent bits as exp_neg does (k in
 * [-126, 0]: 2^k is a normal float and the product rounds as vscalefps). */
TARGET_AVX2 INLINE __m256 exp_neg8(__m256 a)
{
    const __m256 shift = _mm256_set1_ps(12582912.0f);
    a = _mm256_max_ps(a, _mm256_set1_ps(-87.0f));
    __m256 fk = _mm256_sub_ps(_mm256_fmadd_ps(a, _mm256_set1_ps(1.44269504088896341f), shift),
                              shift);
    __m256 r = _mm256_fnmadd_ps(fk, _mm256_set1_ps(0.693145751953125f), a);
    r = _mm256_fnmadd_ps(fk, _mm256_set1_ps(1.428606765330187e-06f), r);
    __m256 p = _mm256_set1_ps(EXP_P[0]);
    for (int i = 1; i < 8; i++)
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P[i]));
    __m256i k = _mm256_add_epi32(_mm256_cvtps_epi32(fk), _mm256_set1_epi32(127));
    return _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(k, 23)));
}

TARGET_AVX2 INLINE __m256 normal_cdf8(__m256 v, __m256 *e_out)
{
    const __m256 one = _mm256_set1_ps(1.0f);
    __m256 e = exp_neg8(_mm256_mul_ps(_mm256_mul_ps(v, _mm256_set1_ps(-0.5f)), v));
    __m256 a = _mm256_mul_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), v),
                             _mm256_set1_ps(INV_SQRT2));
    __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(a, _mm256_set1_ps(0.5f), one));
    __m256 q = _mm256_set1_ps(HALF_Q[0]);
    for (int i = 1; i < 12; i++)
        q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(HALF_Q[i]));
    __m256 c = _mm256_mul_ps(_mm256_mul_ps(t, q), e);
    __m256 neg = _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_LT_OQ);
    *e_out = e;
    return _mm256_blendv_ps(_mm256_sub_ps(one, c), c, neg);
}

/* the lanes [0, n - i) of the vector at element i: all when n - i >= 8 */
TARGET_AVX2 INLINE __m256i lanes8(size_t n, size_t i)
{
    int k = n - i >= 8 ? 8 : (int)(n - i);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* Whole vectors by plain loads and stores, the last partial one masked: vmaskmovps
 * stores are slow on AMD's cores (Zen 3: the masked forms made the loops 1.9 and 2.9 ns an
 * element forward and backward, bench_act), and the lanes computed are the same. */
TARGET_AVX2 static void gelu_fwd_avx2(float *y, const float *x, size_t n)
{
    size_t i = 0, e8 = n / 8 * 8;
    for (; i + 16 <= e8; i += 16) { /* two independent chains */
        __m256 v0 = _mm256_loadu_ps(x + i), v1 = _mm256_loadu_ps(x + i + 8), e0, e1;
        __m256 c0 = normal_cdf8(v0, &e0), c1 = normal_cdf8(v1, &e1);
        _mm256_storeu_ps(y + i, _mm256_mul_ps(v0, c0));
        _mm256_storeu_ps(y + i + 8, _mm256_mul_ps(v1, c1));
    }
    for (; i < e8; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i), e;
        _mm256_storeu_ps(y + i, _mm256_mul_ps(v, normal_cdf8(v, &e)));
    }
    if (i < n) {
        __m256i m = lanes8(n, i);
        __m256 v = _mm256_maskload_ps(x + i, m), e;
        _mm256_maskstore_ps(y + i, m, _mm256_mul_ps(v, normal_cdf8(v, &e)));
    }
}

/* the backward's term dy gelu'(v) */
TARGET_AVX2 INLINE __m256 gelu_term8(__m256 v, __m256 dyv)
{
    __m256 e, cdf = normal_cdf8(v, &e);
    __m256 g = _mm256_fmadd_ps(_mm256_mul_ps(v, _mm256_set1_ps(INV_SQRT_2PI)), e, cdf);
    return _mm256_mul_ps(dyv, g);
}

TARGET_AVX2 static void gelu_bwd_avx2(float *out, const float *dy, const float *x, size_t n,
                                      int add)
{
    size_t i = 0, e8 = n / 8 * 8;
    for (; i < e8; i += 8) {
        __m256 d = gelu_term8(_mm256_loadu_ps(x + i), _mm256_loadu_ps(dy + i));
        if (add)
            d = _mm256_add_ps(_mm256_loadu_ps(out + i), d);
        _mm256_storeu_ps(out + i, d);
    }
    if (i < n) {
        __m256i m = lanes8(n, i);
        __m256 d = gelu_term8(_mm256_maskload_ps(x + i, m), _mm256_maskload_ps(dy + i, m));
        if (add)
            d = _mm256_add_ps(_mm256_maskload_ps(out + i, m), d);
        _mm256_maskstore_ps(out + i, m, d);
    }
}
#endif

static const struct gelu_impl {
    gelu_fwd_fn fwd;
    gelu_bwd_fn bwd;
} gelu_impls[MSD_ISA_COUNT] = {
    [MSD_ISA_GENERIC] = { gelu_fwd_generic, gelu_bwd_generic },
#ifdef ACT_X86
    [MSD_ISA_AVX2] = { gelu_fwd_avx2, gelu_bwd_avx2 },
    [MSD_ISA_AVX512] = { gelu_fwd_avx512, gelu_bwd_avx512 },
    [MSD_ISA_AVX512_BF16] = { gelu_fwd_avx512, gelu_bwd_avx512 },
    [MSD_ISA_AMX] = { gelu_fwd_avx512, gelu_bwd_avx512 },
#endif
};

/* Elements per block (one msd_parallel_for chunk): blocks are fixed, so
 * results do not depend on the thread count (they could not anyway: every
 * element is independent). */
#define ACT_BLOCK 16384

/* A GELU loop over n elements: out is y (forward) or dx (backward); dy is
 * NULL in forward. Chunk k covers block k. */
typedef struct gelu_job {
    const struct gelu_impl *im;
    float *out;
    const float *dy, *x;
    size_t n;
} gelu_job;

static int act_blocks(size_t n)
{
    return (int)((n + ACT_BLOCK - 1) / ACT_BLOCK);
}

static void gelu_fwd_chunk(void *ctx, int k, int tid)
{
    const gelu_job *j = ctx;
    size_t lo = (size_t)k * ACT_BLOCK, m = j->n - lo < ACT_BLOCK ? j->n - lo : ACT_BLOCK;
    (void)tid;
    j->im->fwd(j->out + lo, j->x + lo, m);
}

static void gelu_bwd_chunk(void *ctx, int k, int tid)
{
    const gelu_job *j = ctx;
    size_t lo = (size_t)k * ACT_BLOCK, m = j->n - lo < ACT_BLOCK ? j->n - lo : ACT_BLOCK;
    (void)tid;
    j->im->bwd(j->out + lo, j->dy + lo, j->x + lo, m, 1);
}

void msd_gelu_forward(float *y, const float *x, size_t n)
{
    gelu_job j = { &gelu_impls[msd_isa_get()], y, NULL, x, n };
    msd_parallel_for(act_blocks(n), MSD_ALL_THREADS, gelu_fwd_chunk, &j);
}

/* d/dx [x Phi(x)] = Phi(x) + x phi(x), Phi the normal CDF, phi its density */
void msd_gelu_backward(float *dx, const float *dy, const float *x, size_t n)
{
    gelu_job j = { &gelu_impls[msd_isa_get()], dx, dy, x, n };
    msd_parallel_for(act_blocks(n), MSD_ALL_THREADS, gelu_bwd_chunk, &j);
}

/* the fused epilogues' entry points: the level's loop on the calling thread */
void msd_gelu_forward_inplace(float *y, size_t n)
{
    gelu_impls[msd_isa_get()].fwd(y, y, n);
}

void msd_gelu_backward_inplace(float *t, const float *dy, size_t n)
{
    gelu_impls[msd_isa_get()].bwd(t, dy, t, n, 0);
}

/* NaN passes through, as in PyTorch. */
void msd_relu_forward(float *y, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        y[i] = x[i] <= 0.0f ? 0.0f : x[i];
}

/* The gradient is 0 at x = 0 exactly, as PyTorch's. In ACT_BLOCK blocks over the threads. */
typedef struct relu_job {
    float *dx;
    const float *dy, *x;
    size_t n;
} relu_job;

/* A select, not a branch (a branch on the sign of noise-like activations mispredicts half
 * the time); dx keeps its own bits where x <= 0 (a -0 stays -0). */
MSD_MULTIVERSION
static void relu_bwd_chunk(void *ctx, int k, int tid)
{
    const relu_job *j = ctx;
    size_t lo = (size_t)k * ACT_BLOCK, hi = j->n - lo < ACT_BLOCK ? j->n : lo + ACT_BLOCK;
    float *restrict dx = j->dx;
    const float *restrict dy = j->dy, *restrict x = j->x;
    (void)tid;
    for (size_t i = lo; i < hi; i++)
        dx[i] = x[i] > 0.0f ? dx[i] + dy[i] : dx[i];
}

void msd_relu_backward(float *dx, const float *dy, const float *x, size_t n)
{
    relu_job j = { dx, dy, x, n };
    msd_parallel_for(act_blocks(n), MSD_ALL_THREADS, relu_bwd_chunk, &j);
}

typedef void (*act_kernel)(float *y, const float *x, size_t n);

static int activation(msd_tensor *x, msd_op op, act_kernel f, msd_tensor **out)
{
    msd_tensor *o = msd_tensor_empty_like(x);
    if (!o)
        return MSD_ERR_MEM;
    f(msd_tensor_data(o), msd_tensor_data(x), msd_tensor_numel(x));
    return msd_autograd_finish(o, op, 1, &x, NULL, out);
}

int msd_gelu(msd_tensor *x, msd_tensor **out)
{
    return activation(x, MSD_OP_GELU, msd_gelu_forward, out);
}

int msd_relu(msd_tensor *x, msd_tensor **out)
{
    return activation(x, MSD_OP_RELU, msd_relu_forward, out);
}

int msd_grad_gelu(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx)
{
    msd_gelu_backward(msd_tensor_data(dx[0]), msd_tensor_data(dy), msd_tensor_data(n->in[0]),
                      msd_tensor_numel(dy));
    return MSD_OK;
}

int msd_grad_relu(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx)
{
    msd_relu_backward(msd_tensor_data(dx[0]), msd_tensor_data(dy), msd_tensor_data(n->in[0]),
                      msd_tensor_numel(dy));
    return MSD_OK;
}
