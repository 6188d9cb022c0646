/* Pooling: max_pool2d and avg_pool2d over k x k windows with stride s, no
 * padding, floor output size (PyTorch's defaults with ceil_mode off).
 * Planes are independent: each kernel runs over blocks of planes on the
 * thread pool (threads.h).
 *
 * Shapes: x (N, C, H, W), y (N, C, (H - k) / s + 1, (W - k) / s + 1).
 * Backward of max: forward saves, when a node is recorded, the index of each window's
 * maximum in its H*W plane (y's shape, as floats: exact up to 2^24 per plane), and the
 * gradient goes to that element alone (the first maximum on ties, as PyTorch). Backward
 * of avg needs nothing saved: each window's gradient is spread evenly over it. */
#include "ops.h"
#include "reduce.h"
#include "threads.h"

/* Planes per chunk, and the element count under which a loop runs inline. */
#define POOL_PLANES 16
#define POOL_SERIAL_MAX 32768

/* Planes [p0, p1) of x (NC, H, W) -> y (NC, H/2, W/2): max over 2x2 windows, stride 2,
 * and, when idx is given, the index of each maximum in its plane. The same bits as the
 * general loop below: its rule taken element by element in window order (an element
 * replaces the maximum when it is greater, so a tie keeps the first and 0 and -0 come out
 * as the loop's, or when it is a NaN, so the last NaN wins). Written as selects instead
 * of the loop's branch, which on noise-like data is a coin toss (about 85 cycles a
 * window); without idx the compiler vectorises it. */
#define MAX2_STEP(v, at)                                                                \
    do {                                                                                \
        int t_ = ((v) > m) | ((v) != (v));                                              \
        m = t_ ? (v) : m;                                                               \
        bi = t_ ? (at) : bi;                                                            \
    } while (0)

MSD_MULTIVERSION
static void max2_fwd_planes(float *restrict y, float *restrict idx, const float *restrict x,
                            int p0, int p1, int H, int W)
{
    int Ho = H / 2, Wo = W / 2;
    y += (size_t)p0 * Ho * Wo;
    if (idx)
        idx += (size_t)p0 * Ho * Wo;
    for (int p = p0; p < p1; p++) {
        const float *plane = x + (size_t)p * H * W;
        for (int oy = 0; oy < Ho; oy++, y += Wo) {
            const float *r0 = plane + (size_t)2 * oy * W, *r1 = r0 + W;
            if (!idx) {
                for (int ox = 0; ox < Wo; ox++) {
                    float a = r0[2 * ox], b = r0[2 * ox + 1], c = r1[2 * ox];
                    float d = r1[2 * ox + 1];
                    float m = b > a ? b : a;
                    m = c > m ? c : m;
                    m = d > m ? d : m;
                    float n = a != a ? a : m; /* the last NaN wins */
                    n = b != b ? b : n;
                    n = c != c ? c : n;
                    y[ox] = d != d ? d : n;
                }
                continue;
            }
            for (int ox = 0; ox < Wo; ox++, idx++) {
                int at = 2 * oy * W + 2 * ox, bi = at;
                float m = r0[2 * ox];
                MAX2_STEP(r0[2 * ox + 1], at + 1);
                MAX2_STEP(r1[2 * ox], at + W);
                MAX2_STEP(r1[2 * ox + 1], at + W + 1);
                y[ox] = m;
                *idx = (float)bi;
            }
        }
    }
}

/* y, idx: planes [p0, p1) of the output; x: the whole input */
static void max_fwd_planes(float *y, float *idx, const float *x, int p0, int p1, int H, int W,
                           int k, int s)
{
    if (k == 2 && s == 2) { /* the model's pooling */
        max2_fwd_planes(y, idx, x, p0, p1, H, W);
        return;
    }
    int Ho = (H - k) / s + 1, Wo = (W - k) / s + 1;
    y += (size_t)p0 * Ho * Wo;
    if (idx)
        idx += (size_t)p0 * Ho * Wo;
    for (int p = p0; p < p1; p++) {
        const float *plane = x + (size_t)p * H * W;
        for (int oy = 0; oy < Ho; oy++)
            for (int ox = 0; ox < Wo; ox++) {
                int best = oy * s * W + ox * s;
                float m = plane[best];
                for (int i = 0; i < k; i++) {
                    const float *row = plane + (size_t)(oy * s + i) * W + ox * s;
                    for (int j = 0; j < k; j++)
                        /* strict >: ties keep the first; a NaN wins, as PyTorch */
                        if (row[j] > m || row[j] != row[j]) {
                            m = row[j];
                            best = (oy * s + i) * W + ox * s + j;
                        }
                }
                *y++ = m;
                if (idx)
                    *idx++ = (float)best;
            }
    }
}

static void max_bwd_planes(float *dx, const float *dy, const float *idx, int p0, int p1, int H,
                           int W, int k, int s)
{
    size_t Lo = (size_t)((H - k) / s + 1) * ((W - k) / s + 1);
    dy += (size_t)p0 * Lo;
    idx += (size_t)p0 * Lo;
    for (int p = p0; p < p1; p++) {
        float *plane = dx + (size_t)p * H * W;
        for (size_t l = 0; l < Lo; l++)
            plane[(size_t)*idx++] += *dy++;
    }
}

static void avg_fwd_planes(float *y, const float *x, int p0, int p1, int H, int W, int k, int s)
{
    int Ho = (H - k) / s + 1, Wo = (W - k) / s + 1;
    double inv = 1.0 / ((double)k * k);
    y += (size_t)p0 * Ho * Wo;
    for (int p = p0; p < p1; p++) {
        const float *plane = x + (size_t)p * H * W;
        for (int oy = 0; oy < Ho; oy++)
            for (int ox = 0; ox < Wo; ox++) {
                double acc = 0;
                for (int i = 0; i < k; i++) {
                    const float *row = plane + (size_t)(oy * s + i) * W + ox * s;
                    for (int j = 0; j < k; j++)
                        acc += row[j];
                }
                *y++ = (float)(acc * inv);
            }
    }
}

static void avg_bwd_planes(float *dx, const float *dy, int p0, int p1, int H, int W, int k,
                           int s)
{
    int Ho = (H - k) / s + 1, Wo = (W - k) / s + 1;
    float inv = 1.0f / ((float)k * k);
    dy += (size_t)p0 * Ho * Wo;
    for (int p = p0; p < p1; p++) {
        float *plane = dx + (size_t)p * H * W;
        for (int oy = 0; oy < Ho; oy++)
            for (int ox = 0; ox < Wo; ox++) {
                float g = *dy++ * inv;
                for (int i = 0; i < k; i++) {
                    float *row = plane + (size_t)(oy * s + i) * W + ox * s;
                    for (int j = 0; j < k; j++)
                        row[j] += g;
                }
            }
    }
}

/* ---- the kernels: blocks of planes on the pool --------------------------- */

typedef struct pool_job {
    float *out, *idx;
    const float *in, *in2;
    int NC, H, W, k, s, max;
} pool_job;

/* chunk c: planes [c*POOL_PLANES, ...) of the job's direction and kind */
static void pool_fwd_chunk(void *ctx, int c, int tid)
{
    const pool_job *j = ctx;
    int p0 = c * POOL_PLANES, p1 = p0 + POOL_PLANES < j->NC ? p0 + POOL_PLANES : j->NC;
    (void)tid;
    if (j->max)
        max_fwd_planes(j->out, j->idx, j->in, p0, p1, j->H, j->W, j->k, j->s);
    else
        avg_fwd_planes(j->out, j->in, p0, p1, j->H, j->W, j->k, j->s);
}

static void pool_bwd_chunk(void *ctx, int c, int tid)
{
    const pool_job *j = ctx;
    int p0 = c * POOL_PLANES, p1 = p0 + POOL_PLANES < j->NC ? p0 + POOL_PLANES : j->NC;
    (void)tid;
    if (j->max)
        max_bwd_planes(j->out, j->in, j->in2, p0, p1, j->H, j->W, j->k, j->s);
    else
        avg_bwd_planes(j->out, j->in, p0, p1, j->H, j->W, j->k, j->s);
}

static void pool_run(msd_chunk_fn fn, pool_job *j)
{
    size_t n = (size_t)j->NC * j->H * j->W;
    msd_parallel_for((j->NC + POOL_PLANES - 1) / POOL_PLANES,
                     n > POOL_SERIAL_MAX ? MSD_ALL_THREADS : 1, fn, j);
}

void msd_max_pool2d_forward(float *y, float *idx, const float *x, int NC, int H, int W,
                            int k, int s)
{
    pool_job j = { y, idx, x, NULL, NC, H, W, k, s, 1 };
    pool_run(pool_fwd_chunk, &j);
}

void msd_max_pool2d_backward(float *dx, const float *dy, const float *idx, int NC, int H, int W,
                             int k, int s)
{
    pool_job j = { dx, NULL, dy, idx, NC, H, W, k, s, 1 };
    pool_run(pool_bwd_chunk, &j);
}

void msd_avg_pool2d_forward(float *y, const float *x, int NC, int H, int W, int k, int s)
{
    pool_job j = { y, NULL, x, NULL, NC, H, W, k, s, 0 };
    pool_run(pool_fwd_chunk, &j);
}

void msd_avg_pool2d_backward(float *dx, const float *dy, int NC, int H, int W, int k, int s)
{
    pool_job j = { dx, NULL, dy, NULL, NC, H, W, k, s, 0 };
    pool_run(pool_bwd_chunk, &j);
}

/* Checks x, k and stride; writes the output shape into os. */
static int pool_check(const char *op, const msd_tensor *x, int k, int s, int *os)
{
    char bx[64];
    msd_tensor_shape_str(bx, sizeof bx, x);
    if (x->ndim != 4)
        return msd_error(MSD_ERR_SHAPE, "%s: input %s must be 4-D (N,C,H,W)", op, bx);
    if (k <= 0)
        return msd_error(MSD_ERR_ARG, "%s: kernel size must be >= 1, got %d (input %s)", op, k,
                         bx);
    if (s <= 0)
        return msd_error(MSD_ERR_ARG, "%s: stride must be >= 1, got %d (input %s)", op, s, bx);
    if (x->shape[2] < k || x->shape[3] < k)
        return msd_error(MSD_ERR_SHAPE, "%s: input %s is smaller than the %dx%d window", op, bx, k,
                         k);
    os[0] = x->shape[0];
    os[1] = x->shape[1];
    os[2] = (x->shape[2] - k) / s + 1;
    os[3] = (x->shape[3] - k) / s + 1;
    return MSD_OK;
}

int msd_max_pool2d(msd_tensor *x, int k, int stride, msd_tensor **out)
{
    int os[4];
    int rc = pool_check("max_pool2d", x, k, stride, os);
    if (rc != MSD_OK)
        return rc;
    msd_tensor *y = msd_tensor_empty(4, os), *idx = NULL;
    msd_node *node = NULL;
    if (!y)
        return MSD_ERR_MEM;
    if ((rc = msd_autograd_record(y, MSD_OP_MAX_POOL2D, 1, &x, &node)) != MSD_OK) {
        msd_tensor_release(y);
        return rc;
    }
    /* backward needs the argmax of each window: its index in the H*W plane
     * (exact as a float up to 2^24 elements per plane) */
    if (node && !(idx = msd_tensor_empty(4, os))) {
        msd_tensor_release(y);
        return MSD_ERR_MEM;
    }
    msd_max_pool2d_forward(msd_tensor_data(y), idx ? msd_tensor_data(idx) : NULL,
                           msd_tensor_data(x), x->shape[0] * x->shape[1], x->shape[2],
                           x->shape[3], k, stride);
    if (node) {
        msd_node_save(node, 0, idx);
        msd_tensor_release(idx);
        node->iarg[0] = k;
        node->iarg[1] = stride;
    }
    *out = y;
    return MSD_OK;
}

int msd_grad_max_pool2d(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx)
{
    const msd_tensor *x = n->in[0];
    msd_max_pool2d_backward(msd_tensor_data(dx[0]), msd_tensor_data(dy),
                            msd_tensor_data(n->saved[0]), x->shape[0] * x->shape[1], x->shape[2],
                            x->shape[3], n->iarg[0], n->iarg[1]);
    return MSD_OK;
}

int msd_avg_pool2d(msd_tensor *x, int k, int stride, msd_tensor **out)
{
    int os[4];
    int rc = pool_check("avg_pool2d", x, k, stride, os);
    if (rc != MSD_OK)
        return rc;
    msd_tensor *y = msd_tensor_empty(4, os);
    msd_node *node = NULL;
    if (!y)
        return MSD_ERR_MEM;
    msd_avg_pool2d_forward(msd_tensor_data(y), msd_tensor_data(x), x->shape[0] * x->shape[1],
                           x->shape[2], x->shape[3], k, stride);
    if ((rc = msd_autograd_finish(y, MSD_OP_AVG_POOL2D, 1, &x, &node, out)) == MSD_OK && node) {
        node->iarg[0] = k;
        node->iarg[1] = stride;
    }
    return rc;
}

int msd_grad_avg_pool2d(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx)
{
    const msd_tensor *x = n->in[0];
    msd_avg_pool2d_backward(msd_tensor_data(dx[0]), msd_tensor_data(dy),
                            x->shape[0] * x->shape[1], x->shape[2], x->shape[3], n->iarg[0],
                            n->iarg[1]);
    return MSD_OK;
}
