/* Normalisation: BatchNorm2d (PyTorch's training and eval semantics, with
 * the running-stat update) and GroupNorm, each with its grad function.
 *
 * Both normalise x to xhat = (x - mean) * rstd with rstd = 1/sqrt(var + eps)
 * and apply the per-channel affine y = xhat * gamma + beta. Backward saves
 * mean and rstd (never the output, which would hold its own node) and
 * recomputes xhat from the input. */
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>

#include "ops.h"
#include "reduce.h"
#include "threads.h"

/* ---- BatchNorm2d kernels ---------------------------------------------- */

/* Loops below this many elements run on the calling thread alone: waking
 * workers would cost more than the work. Each loop's arguments travel to
 * its chunks in a struct named after it. */
#define BN_SERIAL_MAX 32768

typedef struct bn_stats_job {
    float *mean, *var;
    const float *x;
    int N, C, HW;
} bn_stats_job;

/* Chunk c: channel c's mean and var. Channels are independent: each is
 * summed by one thread, in a fixed order (reduce.h). */
MSD_MULTIVERSION
static void bn_stats_chunk(void *ctx, int c, int tid)
{
    const bn_stats_job *j = ctx;
    int N = j->N, C = j->C, HW = j->HW;
    size_t count = (size_t)N * HW;
    (void)tid;
    /* two passes in double: the one-pass E[x^2]-E[x]^2 loses digits */
    double s[MSD_LANES] = { 0 }, q[MSD_LANES] = { 0 };
    for (int n = 0; n < N; n++)
        msd_sum_lanes(s, j->x + ((size_t)n * C + c) * HW, (size_t)HW);
    double m = count ? msd_lanes_total(s) / (double)count : 0.0;
    for (int n = 0; n < N; n++)
        msd_sumsq_dev_lanes(q, j->x + ((size_t)n * C + c) * HW, (size_t)HW, m);
    j->mean[c] = (float)m;
    j->var[c] = count ? (float)(msd_lanes_total(q) / (double)count) : 0.0f;
}

void msd_batchnorm_stats(float *mean, float *var, const float *x, int N, int C, int HW)
{
    bn_stats_job j = {mean, var, x, N, C, HW};
    msd_parallel_for(C, (size_t)N * HW * C > BN_SERIAL_MAX ? MSD_ALL_THREADS : 1,
                     bn_stats_chunk, &j);
}

/* Synchronised statistics (msd_batch_norm2d_sync): the two passes of
 * bn_stats_chunk with a job-wide sum after each. Chunk c writes channel
 * c's local sum of x (mean NULL), or of (x - mean[c])^2, in the lanes'
 * order of bn_stats_chunk, so that one process gets its bits. */
typedef struct bn_sums_job {
    double *out;
    const double *mean;
    const float *x;
    int N, C, HW;
} bn_sums_job;

MSD_MULTIVERSION
static void bn_sums_chunk(void *ctx, int c, int tid)
{
    const bn_sums_job *j = ctx;
    int N = j->N, C = j->C, HW = j->HW;
    double a[MSD_LANES] = { 0 };
    (void)tid;
    for (int n = 0; n < N; n++) {
        const float *p = j->x + ((size_t)n * C + c) * HW;
        if (j->mean)
            msd_sumsq_dev_lanes(a, p, (size_t)HW, j->mean[c]);
        else
            msd_sum_lanes(a, p, (size_t)HW);
    }
    j->out[c] = msd_lanes_total(a);
}

/* mean and biased var (C) of x over every process, and the global count of
 * values per channel. buf: 2C + 1 doubles of scratch. */
static int bn_sync_stats(float *mean, float *var, double *count, double *buf, const float *x,
                         int N, int C, int HW, const msd_reducer *sync)
{
    int nthr = (size_t)N * HW * C > BN_SERIAL_MAX ? MSD_ALL_THREADS : 1, rc;
    double *m = buf, *q = buf + C + 1;
    bn_sums_job j = {m, NULL, x, N, C, HW};
    msd_parallel_for(C, nthr, bn_sums_chunk, &j);
    m[C] = (double)N * HW;
    if ((rc = sync->sum(m, C + 1, sync->ud)) != MSD_OK)
        return rc;
    *count = m[C];
    if (!(*count > 1 && *count <= INT_MAX))
        return msd_error(MSD_ERR_SHAPE, "batch_norm2d (synchronised): training needs 2 to %d "
                                        "values per channel over the processes, got %.0f",
                         INT_MAX, *count);
    for (int c = 0; c < C; c++)
        m[c] /= *count;
    j.out = q;
    j.mean = m;
    msd_parallel_for(C, nthr, bn_sums_chunk, &j);
    if ((rc = sync->sum(q, C, sync->ud)) != MSD_OK)
        return rc;
    for (int c = 0; c < C; c++) {
        mean[c] = (float)m[c];
        var[c] = (float)(q[c] / *count);
    }
    return MSD_OK;
}

typedef struct bn_forward_job {
    float *y;
    const float *x, *mean, *rstd, *gamma, *beta;
    int C, HW, gelu;
} bn_forward_job;

/* The normalisation and the affine folded into y = x a + b for channel c. */
static inline void fold_channel(float *a, float *b, const float *mean, const float *rstd,
                                const float *gamma, const float *beta, int c)
{
    *a = rstd[c] * (gamma ? gamma[c] : 1.0f);
    *b = (beta ? beta[c] : 0.0f) - mean[c] * *a;
}

void msd_batchnorm_fold(float *a, float *b, const float *mean, const float *rstd,
                        const float *gamma, const float *beta, int C)
{
    for (int c = 0; c < C; c++)
        fold_channel(a + c, b + c, mean, rstd, gamma, beta, c);
}

void msd_batchnorm_rstd(float *rstd, const float *var, int C, float eps)
{
    for (int c = 0; c < C; c++)
        rstd[c] = (float)(1.0 / sqrt((double)var[c] + eps));
}

/* Chunk n: image n, every channel; with gelu, GELU applied to the image while it is in
 * cache (the bits of msd_gelu on the BatchNorm output), in one call: its vector loop runs
 * best on long arrays (per plane of 64 floats it took 1.9 ns an element against 1.0 on
 * long ones, Zen 3). */
static void bn_forward_chunk(void *ctx, int n, int tid)
{
    const bn_forward_job *j = ctx;
    int C = j->C, HW = j->HW;
    (void)tid;
    for (int c = 0; c < C; c++) {
        float a, b;
        fold_channel(&a, &b, j->mean, j->rstd, j->gamma, j->beta, c);
        size_t off = ((size_t)n * C + c) * HW;
        for (int i = 0; i < HW; i++)
            j->y[off + i] = j->x[off + i] * a + b;
    }
    if (j->gelu)
        msd_gelu_forward_inplace(j->y + (size_t)n * C * HW, (size_t)C * HW);
}

static void bn_forward(float *y, const float *x, const float *mean, const float *rstd,
                       const float *gamma, const float *beta, int N, int C, int HW, int gelu)
{
    bn_forward_job j = {y, x, mean, rstd, gamma, beta, C, HW, gelu};
    msd_parallel_for(N, (size_t)N * C * HW > BN_SERIAL_MAX ? MSD_ALL_THREADS : 1,
                     bn_forward_chunk, &j);
}

void msd_batchnorm_forward(float *y, const float *x, const float *mean, const float *rstd,
                           const float *gamma, const float *beta, int N, int C, int HW)
{
    bn_forward(y, x, mean, rstd, gamma, beta, N, C, HW, 0);
}

typedef struct bn_backward_job {
    float *dx, *dgamma, *dbeta;
    const float *dy, *x, *gamma, *beta, *mean, *rstd;
    int training, N, C, HW;
    float *scratch; /* with GELU: N*HW floats per thread (per channel when synchronised) */
    double count;   /* values per channel in the statistics: N*HW, or the job's */
    /* synchronised: the first pass writes each channel's sums of dy and
     * dy (x - mean) to lsum[c], lsum[C + c] and stops; the second reads the
     * job-wide ones from gsum and computes dx */
    double *lsum;
    const double *gsum;
    int dx_assign; /* dx written (0.0f + the term: the bits of adding it to zeros) */
} bn_backward_job;

/* Chunk c: channel c's dgamma, dbeta and dx. With GELU (scratch set), dy is
 * the gradient of the GELU's output: the BatchNorm's output is recomputed
 * with the forward's bits, and its gradient dy * gelu'(y) is kept in the
 * scratch and used as dy below (synchronised: the first pass writes it
 * to the channel's own scratch and the second reads it there). */
MSD_MULTIVERSION
static void bn_backward_chunk(void *ctx, int c, int tid)
{
    const bn_backward_job *j = ctx;
    int N = j->N, C = j->C, HW = j->HW;
    const float *x = j->x, *dy = j->dy + (size_t)c * HW;
    size_t dys = (size_t)C * HW; /* from image n to n+1 in dy */
    double count = j->count;
    double m = j->mean[c], r = j->rstd[c], g = j->gamma ? j->gamma[c] : 1.0;
    double a_dy[MSD_LANES] = { 0 }, a_dyx[MSD_LANES] = { 0 };
    int synced = j->lsum || j->gsum;
    float *t = j->scratch ? j->scratch + (size_t)(synced ? c : tid) * N * HW : NULL;
    double sdy, sdy_xhat;
    if (j->gsum) {
        sdy = j->gsum[c];
        sdy_xhat = j->gsum[C + c] * r;
    } else {
        float fa = 0.0f, fb = 0.0f;
        if (t)
            fold_channel(&fa, &fb, j->mean, j->rstd, j->gamma, j->beta, c);
        /* image by image, each plane summed while it is in L1 (with GELU right after its
         * gradient is formed): the order of the sums is the planes' either way */
        for (int n = 0; n < N; n++) {
            size_t off = ((size_t)n * C + c) * HW;
            const float *pd = dy + n * dys, *px = x + off;
            if (t) {
                float *tn = t + (size_t)n * HW;
                for (int i = 0; i < HW; i++)
                    tn[i] = px[i] * fa + fb;
                msd_gelu_backward_inplace(tn, pd, (size_t)HW);
                pd = tn;
            }
            msd_sum_lanes(a_dy, pd, (size_t)HW);
            msd_dot_dev_lanes(a_dyx, pd, px, (size_t)HW, m);
        }
        sdy = msd_lanes_total(a_dy);
        sdy_xhat = msd_lanes_total(a_dyx) * r;
        if (j->dgamma)
            j->dgamma[c] += (float)sdy_xhat;
        if (j->dbeta)
            j->dbeta[c] += (float)sdy;
        if (j->lsum) {
            j->lsum[c] = sdy;
            j->lsum[C + c] = msd_lanes_total(a_dyx);
            return;
        }
    }
    if (t) { /* the BatchNorm's output gradient, formed above (synchronised: by the first pass) */
        dy = t;
        dys = (size_t)HW;
    }
    if (!j->dx)
        return;
    /* Training: mean and var depend on x, so
     * dx = g r (dy - mean(dy) - xhat mean(dy xhat)); eval: dx = g r dy.
     * Folded in double into dx += a dy + b x + e, applied in float. */
    double k1 = j->training ? sdy / count : 0.0, k2 = j->training ? sdy_xhat / count : 0.0;
    float a = (float)(g * r), b = (float)(-g * r * r * k2), e = (float)(g * r * (m * r * k2 - k1));
    for (int n = 0; n < N; n++) {
        size_t off = ((size_t)n * C + c) * HW;
        float *d = j->dx + off;
        const float *pd = dy + n * dys, *px = x + off;
        if (j->dx_assign)
            for (int i = 0; i < HW; i++)
                d[i] = 0.0f + (a * pd[i] + b * px[i] + e);
        else
            for (int i = 0; i < HW; i++)
                d[i] += a * pd[i] + b * px[i] + e;
    }
}

void msd_batchnorm_backward(float *dx, float *dgamma, float *dbeta, const float *dy,
                            const float *x, const float *gamma, const float *mean,
                            const float *rstd, int training, int N, int C, int HW)
{
    bn_backward_job j = {dx, dgamma, dbeta, dy, x, gamma, NULL, mean, rstd, training, N, C, HW,
                         NULL, (double)N * HW, NULL, NULL, 0};
    msd_parallel_for(C, (size_t)N * HW * C > BN_SERIAL_MAX ? MSD_ALL_THREADS : 1,
                     bn_backward_chunk, &j);
}

/* ---- GroupNorm kernels ------------------------------------------------ */

/* GroupNorm forward. x, y: (N, C, HW); gamma, beta: (C), or NULL for 1 and 0;
 * mean, rstd: (N, G), written for backward (the group's mean and 1/sqrt(var +
 * eps), var biased, as PyTorch). C is a multiple of G (the op checks), so the
 * cpg = C / G channels of a group are one contiguous run of cpg * HW floats.
 * Two passes over the group in double (mean, then the squared deviations:
 * steadier than E[x^2] - mean^2 when the mean is large); then gamma and the
 * normalisation fold into y = x a + b per channel. One image per chunk over
 * the threads (each value computed by one thread: the same bits on any
 * count). */
typedef struct gn_job {
    float *y, *mean, *rstd, *dx, *dgamma, *dbeta; /* written */
    const float *x, *dy, *gamma, *beta, *bmean, *brstd; /* read (b: backward's) */
    int N, C, HW, G;
    float eps;
} gn_job;

static void gn_forward_chunk(void *ctx, int n, int tid)
{
    const gn_job *j = ctx;
    int C = j->C, HW = j->HW, G = j->G, cpg = C / G;
    size_t len = (size_t)cpg * HW; /* a group is contiguous: cpg channels x HW */
    (void)tid;
    for (int g = 0; g < G; g++) {
        size_t off = ((size_t)n * C + (size_t)g * cpg) * HW;
        const float *p = j->x + off;
        double s = 0, q = 0;
        for (size_t i = 0; i < len; i++)
            s += p[i];
        double m = len ? s / (double)len : 0.0;
        for (size_t i = 0; i < len; i++) {
            double d = p[i] - m;
            q += d * d;
        }
        double var = len ? q / (double)len : 0.0;
        float r = (float)(1.0 / sqrt(var + j->eps));
        j->mean[n * G + g] = (float)m;
        j->rstd[n * G + g] = r;
        for (int c = 0; c < cpg; c++) {
            int ch = g * cpg + c;
            float a = r * (j->gamma ? j->gamma[ch] : 1.0f);
            float b = (j->beta ? j->beta[ch] : 0.0f) - (float)m * a;
            for (int i = 0; i < HW; i++)
                j->y[off + (size_t)c * HW + i] = p[(size_t)c * HW + i] * a + b;
        }
    }
}

static int gn_threads(int N, int C, int HW)
{
    return (size_t)N * C * HW > BN_SERIAL_MAX ? MSD_ALL_THREADS : 1;
}

void msd_groupnorm_forward(float *y, float *mean, float *rstd, const float *x,
                           const float *gamma, const float *beta, int N, int C, int HW, int G,
                           float eps)
{
    gn_job j = { .y = y, .mean = mean, .rstd = rstd, .x = x, .gamma = gamma, .beta = beta,
                 .N = N, .C = C, .HW = HW, .G = G, .eps = eps };
    msd_parallel_for(N, gn_threads(N, C, HW), gn_forward_chunk, &j);
}

/* GroupNorm backward from forward's mean and rstd (N, G); x is the forward's
 * input, recomputed into xhat = (x - mean) rstd rather than kept. ADDS to dx
 * (N, C, HW), dgamma and dbeta (C) where they are not NULL: dgamma = sum of dy
 * xhat and dbeta = sum of dy over n and HW, in double (one channel per chunk);
 * dx by the closed form below, its two group sums in double (one image per
 * chunk). */
static void gn_params_chunk(void *ctx, int c, int tid)
{
    const gn_job *j = ctx;
    int C = j->C, HW = j->HW, G = j->G, cpg = C / G;
    double sg = 0, sb = 0;
    (void)tid;
    for (int n = 0; n < j->N; n++) {
        double m = j->bmean[n * G + c / cpg], r = j->brstd[n * G + c / cpg];
        size_t off = ((size_t)n * C + c) * HW;
        for (int i = 0; i < HW; i++) {
            sg += j->dy[off + i] * ((j->x[off + i] - m) * r);
            sb += j->dy[off + i];
        }
    }
    if (j->dgamma)
        j->dgamma[c] += (float)sg;
    if (j->dbeta)
        j->dbeta[c] += (float)sb;
}

static void gn_dx_chunk(void *ctx, int n, int tid)
{
    const gn_job *j = ctx;
    int C = j->C, HW = j->HW, G = j->G, cpg = C / G;
    const float *x = j->x, *dy = j->dy, *gamma = j->gamma;
    double len = (double)cpg * HW;
    (void)tid;
    for (int g = 0; g < G; g++) {
        double m = j->bmean[n * G + g], r = j->brstd[n * G + g];
        size_t off = ((size_t)n * C + (size_t)g * cpg) * HW;
        /* with u = dy * gamma (the gradient of xhat):
         * dx = r (u - mean(u) - xhat mean(u xhat)) over the group */
        double su = 0, sux = 0;
        for (int c = 0; c < cpg; c++) {
            double gm = gamma ? gamma[g * cpg + c] : 1.0;
            for (int i = 0; i < HW; i++) {
                size_t k = off + (size_t)c * HW + i;
                double u = dy[k] * gm;
                su += u;
                sux += u * ((x[k] - m) * r);
            }
        }
        double k1 = su / len, k2 = sux / len;
        for (int c = 0; c < cpg; c++) {
            double gm = gamma ? gamma[g * cpg + c] : 1.0;
            for (int i = 0; i < HW; i++) {
                size_t k = off + (size_t)c * HW + i;
                double xhat = (x[k] - m) * r;
                j->dx[k] += (float)(r * (dy[k] * gm - k1 - xhat * k2));
            }
        }
    }
}

void msd_groupnorm_backward(float *dx, float *dgamma, float *dbeta, const float *dy,
                            const float *x, const float *gamma, const float *mean,
                            const float *rstd, int N, int C, int HW, int G)
{
    gn_job j = { .dx = dx, .dgamma = dgamma, .dbeta = dbeta, .x = x, .dy = dy, .gamma = gamma,
                 .bmean = mean, .brstd = rstd, .N = N, .C = C, .HW = HW, .G = G };
    if (dgamma || dbeta)
        msd_parallel_for(C, gn_threads(N, C, HW), gn_params_chunk, &j);
    if (dx)
        msd_parallel_for(N, gn_threads(N, C, HW), gn_dx_chunk, &j);
}

/* ---- tensor-level ops ------------------------------------------------- */

/* A per-channel parameter must be a (C) vector. */
static int check_param(const char *op, const msd_tensor *x, const msd_tensor *p,
                       const char *what)
{
    if (!p)
        return MSD_OK;
    if (p->ndim != 1 || p->shape[0] != x->shape[1]) {
        char b1[64], b2[64];
        return msd_error(MSD_ERR_SHAPE, "%s: input %s has %d channels, %s has %zu (shape %s)",
                         op, msd_tensor_shape_str(b1, sizeof b1, x), x->shape[1], what,
                         msd_tensor_numel(p), msd_tensor_shape_str(b2, sizeof b2, p));
    }
    return MSD_OK;
}

static const float *data_or_null(const msd_tensor *t)
{
    return t ? msd_tensor_data(t) : NULL;
}

/* The common end of batch_norm2d and group_norm: records the node (inputs
 * x, weight, bias; saved mean and rstd; iarg[0] = arg, iarg[1] = arg2; a
 * synchronised BatchNorm's reducer in parg and global count in iarg[2]) and
 * hands o to *out. Drops the caller's references to mean and rstd, and to o
 * on failure. */
static int finish(msd_op op, msd_tensor *x, msd_tensor *weight, msd_tensor *bias, int arg,
                  int arg2, const msd_reducer *sync, int count, msd_tensor *o,
                  msd_tensor *mean, msd_tensor *rstd, msd_tensor **out)
{
    msd_tensor *in[3] = { x, weight, bias };
    msd_node *node;
    int rc = msd_autograd_record(o, op, 3, in, &node);
    if (rc == MSD_OK && node) {
        msd_node_save(node, 0, mean);
        msd_node_save(node, 1, rstd);
        node->iarg[0] = arg;
        node->iarg[1] = arg2;
        node->parg = sync;
        node->iarg[2] = count;
    }
    if (rc == MSD_OK)
        *out = o;
    else
        msd_tensor_release(o);
    msd_tensor_release(mean);
    msd_tensor_release(rstd);
    return rc;
}

/* batch_norm2d, then GELU when gelu; with sync (training only), the
 * statistics of every process. */
static int batch_norm(msd_tensor *x, msd_tensor *weight, msd_tensor *bias,
                      msd_tensor *running_mean, msd_tensor *running_var, int training,
                      float momentum, float eps, int gelu, const msd_reducer *sync,
                      msd_tensor **out)
{
    char b1[64];
    int rc;
    if (x->ndim != 4)
        return msd_error(MSD_ERR_SHAPE, "batch_norm2d: expected a 4-D input (N,C,H,W), got %s",
                         msd_tensor_shape_str(b1, sizeof b1, x));
    if ((rc = check_param("batch_norm2d", x, weight, "weight")) != MSD_OK ||
        (rc = check_param("batch_norm2d", x, bias, "bias")) != MSD_OK ||
        (rc = check_param("batch_norm2d", x, running_mean, "running_mean")) != MSD_OK ||
        (rc = check_param("batch_norm2d", x, running_var, "running_var")) != MSD_OK)
        return rc;
    if (!(eps >= 0))
        return msd_error(MSD_ERR_ARG, "batch_norm2d: eps must be >= 0, got %g", eps);
    int N = x->shape[0], C = x->shape[1], HW = x->shape[2] * x->shape[3];
    size_t count = (size_t)N * HW;
    if (training) {
        if ((running_mean == NULL) != (running_var == NULL))
            return msd_error(MSD_ERR_ARG, "batch_norm2d: give both running_mean and "
                                          "running_var, or neither");
        if (count <= 1 && !sync) /* synchronised: the job's count is checked */
            return msd_error(MSD_ERR_SHAPE, "batch_norm2d: training needs more than 1 value "
                                            "per channel, input %s has %zu",
                             msd_tensor_shape_str(b1, sizeof b1, x), count);
    } else if (!running_mean || !running_var) {
        return msd_error(MSD_ERR_ARG, "batch_norm2d: eval mode needs running_mean and "
                                      "running_var (input %s)",
                         msd_tensor_shape_str(b1, sizeof b1, x));
    }
    int cshape[1] = { C };
    double total = (double)count; /* values per channel in the statistics */
    msd_tensor *o = msd_tensor_empty_like(x);
    msd_tensor *mean = msd_tensor_empty(1, cshape), *rstd = msd_tensor_empty(1, cshape);
    double *buf = sync ? malloc((2 * (size_t)C + 1) * sizeof *buf) : NULL;
    if (!o || !mean || !rstd || (sync && !buf)) {
        rc = msd_error(MSD_ERR_MEM, "batch_norm2d: out of memory for an input %s",
                       msd_tensor_shape_str(b1, sizeof b1, x));
        goto fail;
    }
    float *pm = msd_tensor_data(mean), *pr = msd_tensor_data(rstd);
    if (training) {
        /* rstd holds the biased batch variance until it is inverted below */
        if (sync) {
            rc = bn_sync_stats(pm, pr, &total, buf, msd_tensor_data(x), N, C, HW, sync);
            free(buf);
            buf = NULL;
            if (rc != MSD_OK)
                goto fail;
        } else {
            msd_batchnorm_stats(pm, pr, msd_tensor_data(x), N, C, HW);
        }
        if (running_mean) {
            float *rm = msd_tensor_data(running_mean), *rv = msd_tensor_data(running_var);
            double unbias = total / (total - 1);
            for (int c = 0; c < C; c++) {
                rm[c] = (1.0f - momentum) * rm[c] + momentum * pm[c];
                rv[c] = (1.0f - momentum) * rv[c] + momentum * (float)(pr[c] * unbias);
            }
        }
        msd_batchnorm_rstd(pr, pr, C, eps);
    } else {
        const float *rm = msd_tensor_data(running_mean), *rv = msd_tensor_data(running_var);
        for (int c = 0; c < C; c++)
            pm[c] = rm[c];
        msd_batchnorm_rstd(pr, rv, C, eps);
    }
    bn_forward(msd_tensor_data(o), msd_tensor_data(x), pm, pr, data_or_null(weight),
               data_or_null(bias), N, C, HW, gelu);
    return finish(MSD_OP_BATCH_NORM2D, x, weight, bias, training != 0, gelu, sync, (int)total, o,
                  mean, rstd, out);
fail:
    free(buf);
    msd_tensor_release(o);
    msd_tensor_release(mean);
    msd_tensor_release(rstd);
    return rc;
}

int msd_batch_norm2d(msd_tensor *x, msd_tensor *weight, msd_tensor *bias,
                     msd_tensor *running_mean, msd_tensor *running_var, int training,
                     float momentum, float eps, msd_tensor **out)
{
    return batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps, 0,
                      NULL, out);
}

int msd_batch_norm2d_gelu(msd_tensor *x, msd_tensor *weight, msd_tensor *bias,
                          msd_tensor *running_mean, msd_tensor *running_var, int training,
                          float momentum, float eps, msd_tensor **out)
{
    return batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps, 1,
                      NULL, out);
}

int msd_batch_norm2d_sync(msd_tensor *x, msd_tensor *weight, msd_tensor *bias,
                          msd_tensor *running_mean, msd_tensor *running_var, float momentum,
                          float eps, int gelu, const msd_reducer *sync, msd_tensor **out)
{
    if (!sync || !sync->sum)
        return msd_error(MSD_ERR_ARG, "batch_norm2d_sync: no reducer given");
    return batch_norm(x, weight, bias, running_mean, running_var, 1, momentum, eps, gelu != 0,
                      sync, out);
}

/* Synchronised (a reducer in parg): a first pass for the local sums and
 * dgamma, dbeta; the job-wide sums; a second pass for dx (with GELU, the
 * first keeps every channel's dy * gelu' for the second: C scratch
 * channels instead of one per thread). */
int msd_grad_batch_norm2d(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx)
{
    const msd_tensor *x = n->in[0];
    const msd_reducer *sync = n->parg;
    int N = x->shape[0], C = x->shape[1], HW = x->shape[2] * x->shape[3], rc = MSD_OK;
    int nthr = (size_t)N * HW * C > BN_SERIAL_MAX ? msd_get_threads() : 1;
    msd_storage *scratch = NULL;
    double *sums = NULL;
    msd_grad_zero_fresh(n, dx, 1u); /* dx written when fresh (autograd.h), the others added to */
    if (n->iarg[1] && !(scratch = msd_storage_new((size_t)(sync ? C : nthr) * N * HW)))
        return msd_error(MSD_ERR_MEM, "batch_norm2d_gelu backward: out of memory for %d "
                         "scratch channels of %d floats", sync ? C : nthr, N * HW);
    if (sync && !(sums = malloc(2 * (size_t)C * sizeof *sums))) {
        msd_storage_release(scratch);
        return msd_error(MSD_ERR_MEM, "batch_norm2d backward: out of memory for %d sums", 2 * C);
    }
    bn_backward_job j = { dx[0] ? msd_tensor_data(dx[0]) : NULL,
                          dx[1] ? msd_tensor_data(dx[1]) : NULL,
                          dx[2] ? msd_tensor_data(dx[2]) : NULL,
                          msd_tensor_data(dy), msd_tensor_data(x), data_or_null(n->in[1]),
                          data_or_null(n->in[2]), msd_tensor_data(n->saved[0]),
                          msd_tensor_data(n->saved[1]), n->iarg[0], N, C, HW,
                          scratch ? scratch->data : NULL,
                          sync ? (double)n->iarg[2] : (double)N * HW, sums, NULL,
                          (int)(n->fresh & 1u) };
    msd_parallel_for(C, nthr, bn_backward_chunk, &j); /* tid < nthr: scratch for each */
    if (sync && dx[0]) { /* the same graph on every process: all of them reduce, or none */
        rc = sync->sum(sums, 2 * C, sync->ud);
        if (rc == MSD_OK) {
            j.lsum = NULL;
            j.gsum = sums;
            msd_parallel_for(C, nthr, bn_backward_chunk, &j);
        }
    }
    free(sums);
    msd_storage_release(scratch);
    return rc;
}

int msd_group_norm(msd_tensor *x, int groups, msd_tensor *weight, msd_tensor *bias, float eps,
                   msd_tensor **out)
{
    char b1[64];
    int rc;
    if (x->ndim < 2)
        return msd_error(MSD_ERR_SHAPE, "group_norm: expected an input (N,C,...) with 2 to 4 "
                                        "dims, got %s",
                         msd_tensor_shape_str(b1, sizeof b1, x));
    if (groups < 1)
        return msd_error(MSD_ERR_ARG, "group_norm: groups must be >= 1, got %d", groups);
    if (x->shape[1] % groups != 0)
        return msd_error(MSD_ERR_SHAPE, "group_norm: input %s has %d channels, not divisible "
                                        "by %d groups",
                         msd_tensor_shape_str(b1, sizeof b1, x), x->shape[1], groups);
    if ((rc = check_param("group_norm", x, weight, "weight")) != MSD_OK ||
        (rc = check_param("group_norm", x, bias, "bias")) != MSD_OK)
        return rc;
    if (!(eps >= 0))
        return msd_error(MSD_ERR_ARG, "group_norm: eps must be >= 0, got %g", eps);
    int N = x->shape[0], C = x->shape[1], HW = 1;
    for (int d = 2; d < x->ndim; d++)
        HW *= x->shape[d];
    int sshape[2] = { N, groups };
    msd_tensor *o = msd_tensor_empty_like(x);
    msd_tensor *mean = msd_tensor_empty(2, sshape), *rstd = msd_tensor_empty(2, sshape);
    if (!o || !mean || !rstd) {
        rc = MSD_ERR_MEM;
        goto fail;
    }
    msd_groupnorm_forward(msd_tensor_data(o), msd_tensor_data(mean), msd_tensor_data(rstd),
                          msd_tensor_data(x), data_or_null(weight), data_or_null(bias), N, C, HW,
                          groups, eps);
    return finish(MSD_OP_GROUP_NORM, x, weight, bias, groups, 0, NULL, 0, o, mean, rstd, out);
fail:
    msd_tensor_release(o);
    msd_tensor_release(mean);
    msd_tensor_release(rstd);
    return rc;
}

int msd_grad_group_norm(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx)
{
    const msd_tensor *x = n->in[0];
    int HW = 1;
    for (int d = 2; d < x->ndim; d++)
        HW *= x->shape[d];
    msd_groupnorm_backward(dx[0] ? msd_tensor_data(dx[0]) : NULL,
                           dx[1] ? msd_tensor_data(dx[1]) : NULL,
                           dx[2] ? msd_tensor_data(dx[2]) : NULL, msd_tensor_data(dy),
                           msd_tensor_data(x), data_or_null(n->in[1]),
                           msd_tensor_data(n->saved[0]), msd_tensor_data(n->saved[1]),
                           x->shape[0], x->shape[1], HW, n->iarg[0]);
    return MSD_OK;
}
