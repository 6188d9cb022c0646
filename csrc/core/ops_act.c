/* Activations: GELU (the exact erf form, PyTorch's default, to float
 * accuracy) and ReLU, each with its grad function. Backward recomputes from
 * the input, so nothing but the input is kept. */
#include <math.h>
#include <stddef.h>

#include "ops.h"
#include "reduce.h"
#include "threads.h"

#define INV_SQRT2 0.70710678118654752440f
#define INV_SQRT_2PI 0.39894228040143267794f

/* ---- vectorisable normal CDF ---------------------------------------------
 * glibc's erff/expf are scalar calls; these branch-free forms let the
 * compiler vectorise the GELU loops. The CDF is computed from erfc of |x|,
 * so that its negative tail keeps its relative accuracy (1 + erf(x) would
 * cancel). Checked against erf and exp in double over a wide range in
 * test_act_loss.c: a few 1e-7 relative error, like a float erff. */

/* e^a for a <= 0 (a below -87, or NaN, gives about 1.6e-38: the callers'
 * other factor carries a NaN through): a = k ln2 + r with |r| <= ln2/2, e^r
 * by its degree-7 Taylor polynomial (truncation < 1e-8 relative), 2^k put
 * straight into the exponent bits. The clamp is written so that NaN fails
 * the comparison and becomes -87: k stays in [-126, 0], and the conversion
 * to int and the shift below are always defined. */
static inline float exp_neg(float a)
{
    a = a > -87.0f ? a : -87.0f;
    float fk = (a * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round(a / ln2) */
    float r = a - fk * 0.693145751953125f - fk * 1.428606765330187e-06f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union { float f; int i; } sc;
    sc.i = ((int)fk + 127) << 23;
    return p * sc.f;
}

/* erfc(a) for a >= 0 with relative error about 1.2e-7: the classical
 * Chebyshev-fitted form t exp(-a^2 + P(t)), t = 1 / (1 + a / 2)
 * (Numerical Recipes' erfcc). */
static inline float erfc_pos(float a)
{
    float t = 1.0f / (1.0f + 0.5f * a);
    float p = 0.17087277f;
    p = p * t - 0.82215223f;
    p = p * t + 1.48851587f;
    p = p * t - 1.13520398f;
    p = p * t + 0.27886807f;
    p = p * t - 0.18628806f;
    p = p * t + 0.09678418f;
    p = p * t + 0.37409196f;
    p = p * t + 1.00002368f;
    p = p * t - 1.26551223f;
    return t * exp_neg(p - a * a);
}

/* Phi(v), the standard normal CDF: 0.5 erfc(|v| / sqrt 2), mirrored for v > 0. */
static inline float normal_cdf(float v)
{
    float c = 0.5f * erfc_pos((v < 0.0f ? -v : v) * INV_SQRT2);
    return v < 0.0f ? c : 1.0f - c;
}

/* Elements per block (one msd_parallel_for chunk): blocks are fixed, so
 * results do not depend on the thread count (they could not anyway: every
 * element is independent). */
#define ACT_BLOCK 16384

MSD_MULTIVERSION
static void gelu_fwd_range(float *y, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        y[i] = v * normal_cdf(v);
    }
}

MSD_MULTIVERSION
void msd_gelu_forward_inplace(float *y, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float v = y[i];
        y[i] = v * normal_cdf(v);
    }
}

MSD_MULTIVERSION
static void gelu_bwd_range(float *dx, const float *dy, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        dx[i] += dy[i] * (normal_cdf(v) + v * INV_SQRT_2PI * exp_neg(-0.5f * v * v));
    }
}

MSD_MULTIVERSION
void msd_gelu_backward_inplace(float *t, const float *dy, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float v = t[i];
        t[i] = dy[i] * (normal_cdf(v) + v * INV_SQRT_2PI * exp_neg(-0.5f * v * v));
    }
}

/* A GELU loop over n elements: out is y (forward) or dx (backward); dy is
 * NULL in forward. Chunk k covers block k. */
typedef struct gelu_job {
    float *out;
    const float *dy, *x;
    size_t n;
} gelu_job;

static int gelu_blocks(size_t n)
{
    return (int)((n + ACT_BLOCK - 1) / ACT_BLOCK);
}

static void gelu_fwd_chunk(void *ctx, int k, int tid)
{
    const gelu_job *j = ctx;
    size_t lo = (size_t)k * ACT_BLOCK, m = j->n - lo < ACT_BLOCK ? j->n - lo : ACT_BLOCK;
    (void)tid;
    gelu_fwd_range(j->out + lo, j->x + lo, m);
}

static void gelu_bwd_chunk(void *ctx, int k, int tid)
{
    const gelu_job *j = ctx;
    size_t lo = (size_t)k * ACT_BLOCK, m = j->n - lo < ACT_BLOCK ? j->n - lo : ACT_BLOCK;
    (void)tid;
    gelu_bwd_range(j->out + lo, j->dy + lo, j->x + lo, m);
}

void msd_gelu_forward(float *y, const float *x, size_t n)
{
    gelu_job j = {y, NULL, x, n};
    msd_parallel_for(gelu_blocks(n), MSD_ALL_THREADS, gelu_fwd_chunk, &j);
}

/* d/dx [x Phi(x)] = Phi(x) + x phi(x), Phi the normal CDF, phi its density */
void msd_gelu_backward(float *dx, const float *dy, const float *x, size_t n)
{
    gelu_job j = {dx, dy, x, n};
    msd_parallel_for(gelu_blocks(n), MSD_ALL_THREADS, gelu_bwd_chunk, &j);
}

/* NaN passes through, as in PyTorch. */
void msd_relu_forward(float *y, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        y[i] = x[i] <= 0.0f ? 0.0f : x[i];
}

/* The gradient is 0 at x = 0 exactly, as PyTorch's. */
void msd_relu_backward(float *dx, const float *dy, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (x[i] > 0.0f)
            dx[i] += dy[i];
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
