/* BatchNorm2d and GroupNorm: forward against naive double-precision loops,
 * the running-stat update against its formula, gradients against finite
 * differences in training and eval modes, the error messages, and the
 * synchronised BatchNorm: over one process it gives the plain op's bits,
 * over two processes (threads here) the full batch's values. */
#define _POSIX_C_SOURCE 200809L /* pthread barriers */
#include <pthread.h>

#include "gradcheck.h"
#include "test.h"

static msd_tensor *leaf(int ndim, const int *shape, unsigned seed)
{
    msd_tensor *t = gc_randn_like(ndim, shape, seed);
    t->requires_grad = 1;
    return t;
}

/* Values in [lo, hi): positive variances and weights away from 0. */
static msd_tensor *uniform(int n, float lo, float hi, unsigned seed)
{
    msd_tensor *t = gc_randn_like(1, &n, seed);
    float *p = msd_tensor_data(t);
    for (int i = 0; i < n; i++)
        p[i] = lo + (hi - lo) * 0.5f * (p[i] + 1.0f);
    return t;
}

/* y[n,c,i] = (x - mean) / sqrt(var + eps) * w[c] + b[c] in double, with
 * mean and var either given or the batch's (biased) per-channel stats. */
static void naive_batch_norm(double *y, double *bmean, double *bvar, const float *x,
                             const float *w, const float *b, const float *rm, const float *rv,
                             double eps, int N, int C, int HW)
{
    for (int c = 0; c < C; c++) {
        double s = 0, q = 0;
        for (int n = 0; n < N; n++)
            for (int i = 0; i < HW; i++)
                s += x[(n * C + c) * HW + i];
        double m = s / (N * HW);
        for (int n = 0; n < N; n++)
            for (int i = 0; i < HW; i++) {
                double d = x[(n * C + c) * HW + i] - m;
                q += d * d;
            }
        bmean[c] = m;
        bvar[c] = q / (N * HW);
        double um = rm ? rm[c] : m, uv = rv ? rv[c] : bvar[c];
        for (int n = 0; n < N; n++)
            for (int i = 0; i < HW; i++) {
                int k = (n * C + c) * HW + i;
                y[k] = (x[k] - um) / sqrt(uv + eps) * (w ? w[c] : 1.0) + (b ? b[c] : 0.0);
            }
    }
}

static void test_batch_norm_training_forward_and_running_stats(void)
{
    int s[4] = { 3, 4, 3, 5 }, N = 3, C = 4, HW = 15;
    msd_tensor *x = gc_randn_like(4, s, 1), *w = uniform(C, 0.5f, 1.5f, 2),
               *b = gc_randn_like(1, &C, 3), *rm = gc_randn_like(1, &C, 4),
               *rv = uniform(C, 0.5f, 2.0f, 5), *o;
    float *px = msd_tensor_data(x);
    for (int i = 0; i < N * C * HW; i++) /* a channel-dependent offset */
        px[i] = px[i] * 2.0f + (float)((i / HW) % C);
    float rm0[4], rv0[4];
    memcpy(rm0, msd_tensor_data(rm), sizeof rm0);
    memcpy(rv0, msd_tensor_data(rv), sizeof rv0);
    double y[180], bm[4], bv[4];
    naive_batch_norm(y, bm, bv, px, msd_tensor_data(w), msd_tensor_data(b), NULL, NULL, 1e-5, N,
                     C, HW);
    CHECK_OK(msd_batch_norm2d(x, w, b, rm, rv, 1, 0.1f, 1e-5f, &o));
    CHECK(msd_tensor_same_shape(o, x));
    const float *po = msd_tensor_data(o);
    for (int i = 0; i < N * C * HW; i++)
        CHECK_CLOSE(po[i], y[i], 1e-5, 1e-5);
    /* running = 0.9 running + 0.1 batch, with the unbiased variance */
    const float *prm = msd_tensor_data(rm), *prv = msd_tensor_data(rv);
    for (int c = 0; c < C; c++) {
        CHECK_CLOSE(prm[c], 0.9 * rm0[c] + 0.1 * bm[c], 1e-6, 1e-6);
        CHECK_CLOSE(prv[c], 0.9 * rv0[c] + 0.1 * bv[c] * (N * HW) / (N * HW - 1.0), 1e-6, 1e-6);
    }
    msd_tensor_release(o);
    /* without running stats and affine: plain batch normalisation */
    naive_batch_norm(y, bm, bv, px, NULL, NULL, NULL, NULL, 1e-3, N, C, HW);
    CHECK_OK(msd_batch_norm2d(x, NULL, NULL, NULL, NULL, 1, 0.1f, 1e-3f, &o));
    po = msd_tensor_data(o);
    for (int i = 0; i < N * C * HW; i++)
        CHECK_CLOSE(po[i], y[i], 1e-5, 1e-5);
    msd_tensor_release(o);
    msd_tensor *ts[5] = { x, w, b, rm, rv };
    for (int i = 0; i < 5; i++)
        msd_tensor_release(ts[i]);
}

static void test_batch_norm_eval_forward(void)
{
    int s[4] = { 2, 3, 4, 4 }, N = 2, C = 3, HW = 16;
    msd_tensor *x = gc_randn_like(4, s, 11), *w = uniform(C, 0.5f, 1.5f, 12),
               *b = gc_randn_like(1, &C, 13), *rm = gc_randn_like(1, &C, 14),
               *rv = uniform(C, 0.2f, 3.0f, 15), *o;
    float rm0[3], rv0[3];
    memcpy(rm0, msd_tensor_data(rm), sizeof rm0);
    memcpy(rv0, msd_tensor_data(rv), sizeof rv0);
    double y[96], bm[3], bv[3];
    naive_batch_norm(y, bm, bv, msd_tensor_data(x), msd_tensor_data(w), msd_tensor_data(b), rm0,
                     rv0, 1e-5, N, C, HW);
    CHECK_OK(msd_batch_norm2d(x, w, b, rm, rv, 0, 0.1f, 1e-5f, &o));
    const float *po = msd_tensor_data(o);
    for (int i = 0; i < N * C * HW; i++)
        CHECK_CLOSE(po[i], y[i], 1e-5, 1e-5);
    /* eval leaves the running stats alone */
    CHECK(memcmp(rm0, msd_tensor_data(rm), sizeof rm0) == 0);
    CHECK(memcmp(rv0, msd_tensor_data(rv), sizeof rv0) == 0);
    msd_tensor_release(o);
    msd_tensor *ts[5] = { x, w, b, rm, rv };
    for (int i = 0; i < 5; i++)
        msd_tensor_release(ts[i]);
}

typedef struct bn_ctx {
    msd_tensor *rm, *rv;
    int training;
} bn_ctx;

static int call_bn(msd_tensor *const *in, void *ctx, msd_tensor **out)
{
    bn_ctx *c = ctx;
    return msd_batch_norm2d(in[0], in[1], in[2], c->rm, c->rv, c->training, 0.1f, 1e-5f, out);
}

static void test_batch_norm_grads(void)
{
    int s[4] = { 2, 3, 3, 3 }, C = 3;
    for (int training = 0; training < 2; training++) {
        for (int affine = 0; affine < 2; affine++) {
            msd_tensor *in[3] = { leaf(4, s, 21 + training), NULL, NULL };
            if (affine) {
                in[1] = uniform(C, 0.5f, 1.5f, 22);
                in[2] = gc_randn_like(1, &C, 23);
                in[1]->requires_grad = in[2]->requires_grad = 1;
            }
            bn_ctx ctx = { uniform(C, -0.5f, 0.5f, 24), uniform(C, 0.5f, 1.5f, 25), training };
            int bad = gradcheck(training ? "batch_norm2d train" : "batch_norm2d eval", call_bn,
                                &ctx, 3, in, 1e-3, 1e-2, 2e-3);
            for (int i = 0; i < 3; i++)
                msd_tensor_release(in[i]);
            msd_tensor_release(ctx.rm);
            msd_tensor_release(ctx.rv);
            CHECK(!bad);
        }
    }
}

static int call_bn_gelu(msd_tensor *const *in, void *ctx, msd_tensor **out)
{
    bn_ctx *c = ctx;
    return msd_batch_norm2d_gelu(in[0], in[1], in[2], c->rm, c->rv, c->training, 0.1f, 1e-5f,
                                 out);
}

/* The inputs of one run of a BatchNorm comparison, from seeds seed .. seed + 4: x
 * (shape s, a leaf), weight and bias (s[1], requiring gradients), running mean
 * and variance. */
static void bn_inputs(const int *s, unsigned seed, msd_tensor **x, msd_tensor **w,
                      msd_tensor **b, msd_tensor **rm, msd_tensor **rv)
{
    int C = s[1];
    *x = leaf(4, s, seed);
    *w = uniform(C, 0.5f, 1.5f, seed + 1);
    *b = gc_randn_like(1, &C, seed + 2);
    (*w)->requires_grad = (*b)->requires_grad = 1;
    *rm = uniform(C, -0.5f, 0.5f, seed + 3);
    *rv = uniform(C, 0.5f, 1.5f, seed + 4);
}

/* Two runs (k = 0, 1) of a BatchNorm comparison gave the same bits: output,
 * input, weight and bias gradients, running stats. Releases the tensors. */
static void same_bits_and_release(const char *what, int variant, msd_tensor *x[2],
                                  msd_tensor *w[2], msd_tensor *b[2], msd_tensor *rm[2],
                                  msd_tensor *rv[2], msd_tensor *y[2])
{
    const msd_tensor *pairs[][2] = { { y[0], y[1] }, { x[0]->grad, x[1]->grad },
                                     { w[0]->grad, w[1]->grad }, { b[0]->grad, b[1]->grad },
                                     { rm[0], rm[1] }, { rv[0], rv[1] } };
    for (size_t p = 0; p < sizeof pairs / sizeof *pairs; p++) {
        size_t n = msd_tensor_numel(pairs[p][0]), diff = 0;
        const float *u = msd_tensor_data(pairs[p][0]), *v = msd_tensor_data(pairs[p][1]);
        for (size_t i = 0; i < n; i++)
            diff += u[i] != v[i];
        if (diff) {
            fprintf(stderr, "  %s %d, pair %zu: %zu of %zu values differ\n", what, variant, p,
                    diff, n);
            CHECK(0);
        }
    }
    for (int k = 0; k < 2; k++) {
        msd_tensor *ts[6] = { x[k], w[k], b[k], rm[k], rv[k], y[k] };
        for (int i = 0; i < 6; i++)
            msd_tensor_release(ts[i]);
    }
}

/* batch_norm2d_gelu: finite differences, and the same values as
 * batch_norm2d then gelu (forward, running stats and every gradient), with
 * several threads (each has its own scratch in backward). */
static void test_batch_norm_gelu(void)
{
    int s[4] = { 2, 3, 3, 3 }, C = 3;
    for (int training = 0; training < 2; training++) {
        msd_tensor *in[3] = { leaf(4, s, 31 + training), uniform(C, 0.5f, 1.5f, 32),
                              gc_randn_like(1, &C, 33) };
        in[1]->requires_grad = in[2]->requires_grad = 1;
        bn_ctx ctx = { uniform(C, -0.5f, 0.5f, 34), uniform(C, 0.5f, 1.5f, 35), training };
        CHECK(!gradcheck(training ? "batch_norm2d_gelu train" : "batch_norm2d_gelu eval",
                         call_bn_gelu, &ctx, 3, in, 1e-3, 1e-2, 2e-3));
        for (int i = 0; i < 3; i++)
            msd_tensor_release(in[i]);
        msd_tensor_release(ctx.rm);
        msd_tensor_release(ctx.rv);
    }
    int big[4] = { 5, 8, 16, 16 }, threads = msd_get_threads();
    msd_set_threads(2);
    for (int training = 0; training < 2; training++) {
        msd_tensor *x[2], *w[2], *b[2], *rm[2], *rv[2], *y[2], *dy = gc_randn_like(4, big, 40);
        for (int k = 0; k < 2; k++) { /* k = 0: fused; 1: two ops */
            bn_inputs(big, 41, &x[k], &w[k], &b[k], &rm[k], &rv[k]);
            if (k == 0) {
                CHECK_OK(msd_batch_norm2d_gelu(x[k], w[k], b[k], rm[k], rv[k], training, 0.1f,
                                               1e-5f, &y[k]));
            } else {
                msd_tensor *t;
                CHECK_OK(msd_batch_norm2d(x[k], w[k], b[k], rm[k], rv[k], training, 0.1f, 1e-5f,
                                          &t));
                CHECK_OK(msd_gelu(t, &y[k]));
                msd_tensor_release(t);
            }
            CHECK_OK(msd_backward(y[k], dy, 0));
        }
        same_bits_and_release("training", training, x, w, b, rm, rv, y);
        msd_tensor_release(dy);
    }
    msd_set_threads(threads);
}

/* In training mode the gradient w.r.t. x sums to 0 over each channel
 * (shifting a channel changes nothing); in eval mode it is w/sqrt(rv+eps). */
static void test_batch_norm_grad_structure(void)
{
    int s[4] = { 2, 2, 2, 2 }, C = 2;
    msd_tensor *x = leaf(4, s, 31), *w = uniform(C, 0.5f, 1.5f, 32), *rm = msd_tensor_zeros(1, &C),
               *rv = msd_tensor_full(1, &C, 3.0f), *o, *l;
    CHECK_OK(msd_batch_norm2d(x, w, NULL, rm, rv, 1, 0.1f, 1e-5f, &o));
    CHECK_OK(msd_sum(o, &l));
    CHECK_OK(msd_backward(l, NULL, 0));
    const float *g = msd_tensor_data(x->grad);
    for (int i = 0; i < 16; i++)
        CHECK_CLOSE(g[i], 0.0, 1e-5, 0);
    msd_tensor_release(o);
    msd_tensor_release(l);
    msd_tensor_release(x->grad);
    x->grad = NULL;
    CHECK_OK(msd_batch_norm2d(x, w, NULL, rm, rv, 0, 0.1f, 1e-5f, &o));
    CHECK_OK(msd_sum(o, &l));
    CHECK_OK(msd_backward(l, NULL, 0));
    g = msd_tensor_data(x->grad);
    const float *pw = msd_tensor_data(w), *prv = msd_tensor_data(rv);
    for (int i = 0; i < 16; i++) {
        int c = (i / 4) % 2;
        CHECK_CLOSE(g[i], pw[c] / sqrt(prv[c] + 1e-5), 1e-6, 1e-5);
    }
    msd_tensor *ts[5] = { x, w, rm, rv, o };
    for (int i = 0; i < 5; i++)
        msd_tensor_release(ts[i]);
    msd_tensor_release(l);
}

static void test_batch_norm_errors(void)
{
    int s4[4] = { 2, 3, 4, 4 }, s3[3] = { 2, 3, 4 }, one[4] = { 1, 2, 1, 1 }, c3 = 3, c5 = 5;
    msd_tensor *x = msd_tensor_zeros(4, s4), *x3 = msd_tensor_zeros(3, s3),
               *x1 = msd_tensor_zeros(4, one), *p3 = msd_tensor_full(1, &c3, 1.0f),
               *p5 = msd_tensor_full(1, &c5, 1.0f), *o = NULL;
    CHECK(msd_batch_norm2d(x, NULL, NULL, p5, p3, 1, 0.1f, 1e-5f, &o) == MSD_ERR_SHAPE);
    CHECK(strstr(msd_last_error(),
                 "batch_norm2d: input [2,3,4,4] has 3 channels, running_mean has 5"));
    CHECK(msd_batch_norm2d(x, p5, NULL, NULL, NULL, 1, 0.1f, 1e-5f, &o) == MSD_ERR_SHAPE);
    CHECK(strstr(msd_last_error(), "weight has 5") && strstr(msd_last_error(), "[5]"));
    CHECK(msd_batch_norm2d(x, NULL, p5, NULL, NULL, 1, 0.1f, 1e-5f, &o) == MSD_ERR_SHAPE);
    CHECK(strstr(msd_last_error(), "bias has 5"));
    CHECK(msd_batch_norm2d(x, NULL, NULL, p3, p5, 0, 0.1f, 1e-5f, &o) == MSD_ERR_SHAPE);
    CHECK(strstr(msd_last_error(), "running_var has 5"));
    CHECK(msd_batch_norm2d(x3, NULL, NULL, NULL, NULL, 1, 0.1f, 1e-5f, &o) == MSD_ERR_SHAPE);
    CHECK(strstr(msd_last_error(), "4-D") && strstr(msd_last_error(), "[2,3,4]"));
    CHECK(msd_batch_norm2d(x, NULL, NULL, NULL, NULL, 0, 0.1f, 1e-5f, &o) == MSD_ERR_ARG);
    CHECK(strstr(msd_last_error(), "eval mode needs running_mean"));
    CHECK(msd_batch_norm2d(x1, NULL, NULL, NULL, NULL, 1, 0.1f, 1e-5f, &o) == MSD_ERR_SHAPE);
    CHECK(strstr(msd_last_error(), "more than 1 value per channel"));
    CHECK(o == NULL);
    msd_tensor *ts[5] = { x, x3, x1, p3, p5 };
    for (int i = 0; i < 5; i++)
        msd_tensor_release(ts[i]);
}

/* ---- synchronised BatchNorm ------------------------------------------- */

/* A reducer over one process: the sum is the buffer itself. Counts calls. */
static int sum_alone(double *buf, int n, void *ud)
{
    (void)buf;
    (void)n;
    (*(int *)ud)++;
    return MSD_OK;
}

static int sum_fails(double *buf, int n, void *ud)
{
    (void)buf;
    (void)ud;
    return msd_error(MSD_ERR_STATE, "test reducer: no answer for %d values", n);
}

/* Over one process, batch_norm2d_sync gives the bits of batch_norm2d (and of
 * batch_norm2d_gelu): output, running stats, every gradient; the reducer is
 * called twice in forward and once in backward. With 2 threads. */
static void test_batch_norm_sync_alone(void)
{
    int big[4] = { 5, 8, 16, 16 }, threads = msd_get_threads();
    msd_set_threads(2);
    for (int gelu = 0; gelu < 2; gelu++) {
        msd_tensor *x[2], *w[2], *b[2], *rm[2], *rv[2], *y[2], *dy = gc_randn_like(4, big, 50);
        int calls = 0;
        msd_reducer alone = { sum_alone, &calls };
        for (int k = 0; k < 2; k++) { /* k = 0: synchronised; 1: plain */
            bn_inputs(big, 51, &x[k], &w[k], &b[k], &rm[k], &rv[k]);
            if (k == 0)
                CHECK_OK(msd_batch_norm2d_sync(x[k], w[k], b[k], rm[k], rv[k], 0.1f, 1e-5f, gelu,
                                               &alone, &y[k]));
            else
                CHECK_OK((gelu ? msd_batch_norm2d_gelu : msd_batch_norm2d)(
                    x[k], w[k], b[k], rm[k], rv[k], 1, 0.1f, 1e-5f, &y[k]));
            CHECK_OK(msd_backward(y[k], dy, 0));
        }
        CHECK(calls == 3);
        same_bits_and_release("gelu", gelu, x, w, b, rm, rv, y);
        msd_tensor_release(dy);
    }
    msd_set_threads(threads);
}

/* Two processes as two threads: each holds its slot and waits for the
 * other's at a barrier; both add the slots in the same order. */
typedef struct pair_reducer {
    pthread_barrier_t barrier;
    double *slot[2];
} pair_reducer;

typedef struct pair_member {
    pair_reducer *shared;
    int k;
} pair_member;

static int sum_pair(double *buf, int n, void *ud)
{
    pair_member *m = ud;
    pair_reducer *p = m->shared;
    p->slot[m->k] = buf;
    pthread_barrier_wait(&p->barrier);
    double *copy = malloc((size_t)n * sizeof *copy);
    for (int i = 0; i < n; i++)
        copy[i] = p->slot[0][i] + p->slot[1][i];
    pthread_barrier_wait(&p->barrier); /* both have read both slots */
    memcpy(buf, copy, (size_t)n * sizeof *copy);
    free(copy);
    return MSD_OK;
}

/* One process's share: rows [first, first + n) of the batch. */
typedef struct share {
    msd_reducer red;
    pair_member member;
    msd_tensor *x, *w, *b, *rm, *rv, *dy, *y;
    int gelu, rc;
} share;

static void *run_share(void *arg)
{
    share *s = arg;
    s->rc = msd_batch_norm2d_sync(s->x, s->w, s->b, s->rm, s->rv, 0.1f, 1e-5f, s->gelu, &s->red,
                                  &s->y);
    if (s->rc == MSD_OK)
        s->rc = msd_backward(s->y, s->dy, 0);
    msd_memory_trim(); /* the blocks this thread freed sit in its own cache */
    return NULL;
}

static msd_tensor *rows(const msd_tensor *t, int first, int n, int requires_grad)
{
    int shape[4] = { n, t->shape[1], t->shape[2], t->shape[3] };
    size_t row = msd_tensor_numel(t) / (size_t)t->shape[0];
    msd_tensor *r = msd_tensor_from_data(4, shape, msd_tensor_data(t) + (size_t)first * row);
    r->requires_grad = requires_grad;
    return r;
}

/* |a - b| <= 1e-5 + 1e-4 |b| over n values, or a message naming the worst */
static int close_all(const char *what, const float *a, const float *b, size_t n)
{
    size_t worst = 0;
    double excess = -1;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]) - (1e-5 + 1e-4 * fabs((double)b[i]));
        if (e > excess) {
            excess = e;
            worst = i;
        }
    }
    if (excess > 0)
        fprintf(stderr, "  %s: element %zu is %.9g, expected %.9g\n", what, worst, a[worst],
                b[worst]);
    return excess <= 0;
}

/* A batch of 7 split 3 + 4 over two "processes": each output row and input
 * gradient row is the full batch's, the weight gradients add up to the full
 * batch's, and both get the full batch's running stats (unbiased with the
 * count of 7 images). */
static void test_batch_norm_sync_two_shares(void)
{
    int s[4] = { 7, 4, 5, 5 }, C = 4, first[2] = { 0, 3 }, n[2] = { 3, 4 };
    for (int gelu = 0; gelu < 2; gelu++) {
        msd_tensor *x = leaf(4, s, 61), *w = uniform(C, 0.5f, 1.5f, 62),
                   *b = gc_randn_like(1, &C, 63), *rm = uniform(C, -0.5f, 0.5f, 64),
                   *rv = uniform(C, 0.5f, 1.5f, 65), *dy = gc_randn_like(4, s, 66), *y;
        float *px = msd_tensor_data(x);
        for (int i = 0; i < 7 * C * 25; i++) /* shares with different means */
            px[i] = px[i] * 2.0f + (i < 3 * C * 25 ? 1.0f : -0.5f);
        w->requires_grad = b->requires_grad = 1;
        pair_reducer pr;
        pthread_barrier_init(&pr.barrier, NULL, 2);
        share sh[2];
        pthread_t th[2];
        for (int k = 0; k < 2; k++) {
            share *p = &sh[k];
            memset(p, 0, sizeof *p);
            p->member.shared = &pr;
            p->member.k = k;
            p->red.sum = sum_pair;
            p->red.ud = &p->member;
            p->x = rows(x, first[k], n[k], 1);
            p->dy = rows(dy, first[k], n[k], 0);
            p->w = msd_tensor_clone(w);
            p->b = msd_tensor_clone(b);
            p->w->requires_grad = p->b->requires_grad = 1;
            p->rm = msd_tensor_clone(rm);
            p->rv = msd_tensor_clone(rv);
            p->gelu = gelu;
        }
        for (int k = 0; k < 2; k++)
            pthread_create(&th[k], NULL, run_share, &sh[k]);
        for (int k = 0; k < 2; k++)
            pthread_join(th[k], NULL);
        pthread_barrier_destroy(&pr.barrier);
        CHECK_OK((gelu ? msd_batch_norm2d_gelu : msd_batch_norm2d)(x, w, b, rm, rv, 1, 0.1f,
                                                                   1e-5f, &y));
        CHECK_OK(msd_backward(y, dy, 0));
        size_t row = (size_t)C * 25;
        float dw[4], db[4];
        for (int k = 0; k < 2; k++) {
            CHECK_OK(sh[k].rc);
            CHECK(close_all("y", msd_tensor_data(sh[k].y), msd_tensor_data(y) + first[k] * row,
                            n[k] * row));
            CHECK(close_all("dx", msd_tensor_data(sh[k].x->grad),
                            msd_tensor_data(x->grad) + first[k] * row, n[k] * row));
            CHECK(close_all("running_mean", msd_tensor_data(sh[k].rm), msd_tensor_data(rm), 4));
            CHECK(close_all("running_var", msd_tensor_data(sh[k].rv), msd_tensor_data(rv), 4));
        }
        for (int c = 0; c < C; c++) {
            dw[c] = msd_tensor_data(sh[0].w->grad)[c] + msd_tensor_data(sh[1].w->grad)[c];
            db[c] = msd_tensor_data(sh[0].b->grad)[c] + msd_tensor_data(sh[1].b->grad)[c];
        }
        CHECK(close_all("dweight", dw, msd_tensor_data(w->grad), 4));
        CHECK(close_all("dbias", db, msd_tensor_data(b->grad), 4));
        for (int k = 0; k < 2; k++) {
            msd_tensor *ts[7] = { sh[k].x, sh[k].w, sh[k].b, sh[k].rm, sh[k].rv, sh[k].dy,
                                  sh[k].y };
            for (int i = 0; i < 7; i++)
                msd_tensor_release(ts[i]);
        }
        msd_tensor *ts[7] = { x, w, b, rm, rv, dy, y };
        for (int i = 0; i < 7; i++)
            msd_tensor_release(ts[i]);
    }
}

/* A reducer's failure is the op's (forward) or backward's error; no reducer
 * is misuse. */
static void test_batch_norm_sync_errors(void)
{
    int s[4] = { 2, 3, 4, 4 };
    msd_tensor *x = leaf(4, s, 71), *y = NULL;
    msd_reducer fails = { sum_fails, NULL }, none = { NULL, NULL };
    CHECK(msd_batch_norm2d_sync(x, NULL, NULL, NULL, NULL, 0.1f, 1e-5f, 0, &fails, &y) ==
          MSD_ERR_STATE);
    CHECK(strstr(msd_last_error(), "test reducer: no answer for 4 values"));
    CHECK(y == NULL);
    CHECK(msd_batch_norm2d_sync(x, NULL, NULL, NULL, NULL, 0.1f, 1e-5f, 0, &none, &y) ==
          MSD_ERR_ARG);
    CHECK(strstr(msd_last_error(), "no reducer"));
    CHECK(msd_batch_norm2d_sync(x, NULL, NULL, NULL, NULL, 0.1f, 1e-5f, 0, NULL, &y) ==
          MSD_ERR_ARG);
    int calls = 0;
    msd_reducer once = { sum_alone, &calls };
    CHECK_OK(msd_batch_norm2d_sync(x, NULL, NULL, NULL, NULL, 0.1f, 1e-5f, 0, &once, &y));
    CHECK(calls == 2);
    msd_tensor *l;
    CHECK_OK(msd_sum(y, &l));
    y->grad_fn->parg = &fails; /* the backward's reduction fails */
    CHECK(msd_backward(l, NULL, 0) == MSD_ERR_STATE);
    CHECK(strstr(msd_last_error(), "test reducer: no answer for 6 values"));
    msd_tensor_release(l);
    msd_tensor_release(y);
    msd_tensor_release(x);
}

/* Stats per (n, g) over C/G channels x HW, as a naive loop in double. */
static void naive_group_norm(double *y, const float *x, const float *w, const float *b,
                             double eps, int N, int C, int HW, int G)
{
    int cpg = C / G;
    for (int n = 0; n < N; n++)
        for (int g = 0; g < G; g++) {
            double s = 0, q = 0;
            for (int c = g * cpg; c < (g + 1) * cpg; c++)
                for (int i = 0; i < HW; i++)
                    s += x[(n * C + c) * HW + i];
            double m = s / (cpg * HW);
            for (int c = g * cpg; c < (g + 1) * cpg; c++)
                for (int i = 0; i < HW; i++)
                    q += (x[(n * C + c) * HW + i] - m) * (x[(n * C + c) * HW + i] - m);
            double r = 1.0 / sqrt(q / (cpg * HW) + eps);
            for (int c = g * cpg; c < (g + 1) * cpg; c++)
                for (int i = 0; i < HW; i++) {
                    int k = (n * C + c) * HW + i;
                    y[k] = (x[k] - m) * r * (w ? w[c] : 1.0) + (b ? b[c] : 0.0);
                }
        }
}

static void test_group_norm_forward(void)
{
    int shapes[3][4] = { { 3, 8, 0, 0 }, { 2, 6, 5, 0 }, { 2, 8, 3, 4 } };
    int ndims[3] = { 2, 3, 4 }, groups[3] = { 4, 3, 2 };
    double y[192];
    for (int k = 0; k < 3; k++) {
        int N = shapes[k][0], C = shapes[k][1], HW = 1;
        for (int d = 2; d < ndims[k]; d++)
            HW *= shapes[k][d];
        msd_tensor *x = gc_randn_like(ndims[k], shapes[k], 40 + k), *o;
        msd_tensor *w = uniform(C, 0.5f, 1.5f, 50 + k), *b = gc_randn_like(1, &C, 60 + k);
        naive_group_norm(y, msd_tensor_data(x), msd_tensor_data(w), msd_tensor_data(b), 1e-5, N,
                         C, HW, groups[k]);
        CHECK_OK(msd_group_norm(x, groups[k], w, b, 1e-5f, &o));
        CHECK(msd_tensor_same_shape(o, x));
        const float *po = msd_tensor_data(o);
        for (int i = 0; i < N * C * HW; i++)
            CHECK_CLOSE(po[i], y[i], 1e-5, 1e-5);
        msd_tensor_release(o);
        naive_group_norm(y, msd_tensor_data(x), NULL, NULL, 1e-2, N, C, HW, groups[k]);
        CHECK_OK(msd_group_norm(x, groups[k], NULL, NULL, 1e-2f, &o));
        po = msd_tensor_data(o);
        for (int i = 0; i < N * C * HW; i++)
            CHECK_CLOSE(po[i], y[i], 1e-5, 1e-5);
        msd_tensor_release(o);
        msd_tensor_release(x);
        msd_tensor_release(w);
        msd_tensor_release(b);
    }
}

static int call_gn(msd_tensor *const *in, void *ctx, msd_tensor **out)
{
    return msd_group_norm(in[0], *(int *)ctx, in[1], in[2], 1e-5f, out);
}

static void test_group_norm_grads(void)
{
    int s4[4] = { 2, 6, 2, 3 }, s2[2] = { 3, 8 }, C6 = 6, C8 = 8;
    int g4 = 3, g2 = 2;
    msd_tensor *in[3] = { leaf(4, s4, 71), uniform(C6, 0.5f, 1.5f, 72), leaf(1, &C6, 73) };
    in[1]->requires_grad = 1;
    int bad = gradcheck("group_norm 4-D", call_gn, &g4, 3, in, 1e-3, 1e-2, 2e-3);
    for (int i = 0; i < 3; i++)
        msd_tensor_release(in[i]);
    CHECK(!bad);
    msd_tensor *in2[3] = { leaf(2, s2, 74), NULL, NULL };
    bad = gradcheck("group_norm 2-D, no affine", call_gn, &g2, 3, in2, 1e-3, 1e-2, 2e-3);
    msd_tensor_release(in2[0]);
    CHECK(!bad);
    /* only the parameters require grad */
    msd_tensor *in3[3] = { gc_randn_like(2, s2, 75), leaf(1, &C8, 76), leaf(1, &C8, 77) };
    bad = gradcheck("group_norm params only", call_gn, &g2, 3, in3, 1e-3, 1e-2, 2e-3);
    for (int i = 0; i < 3; i++)
        msd_tensor_release(in3[i]);
    CHECK(!bad);
}

static void test_group_norm_errors(void)
{
    int s[4] = { 2, 6, 4, 4 }, s1[1] = { 6 }, c4 = 4;
    msd_tensor *x = msd_tensor_zeros(4, s), *x1 = msd_tensor_zeros(1, s1),
               *p4 = msd_tensor_zeros(1, &c4), *o = NULL;
    CHECK(msd_group_norm(x, 4, NULL, NULL, 1e-5f, &o) == MSD_ERR_SHAPE);
    CHECK(strstr(msd_last_error(), "[2,6,4,4] has 6 channels, not divisible by 4 groups"));
    CHECK(msd_group_norm(x, 0, NULL, NULL, 1e-5f, &o) == MSD_ERR_ARG);
    CHECK(strstr(msd_last_error(), "groups must be >= 1"));
    CHECK(msd_group_norm(x, 2, p4, NULL, 1e-5f, &o) == MSD_ERR_SHAPE);
    CHECK(strstr(msd_last_error(), "group_norm: input [2,6,4,4] has 6 channels, weight has 4"));
    CHECK(msd_group_norm(x1, 2, NULL, NULL, 1e-5f, &o) == MSD_ERR_SHAPE);
    CHECK(strstr(msd_last_error(), "[6]"));
    CHECK(o == NULL);
    msd_tensor_release(x);
    msd_tensor_release(x1);
    msd_tensor_release(p4);
}

int main(void)
{
    RUN(test_batch_norm_training_forward_and_running_stats);
    RUN(test_batch_norm_eval_forward);
    RUN(test_batch_norm_grads);
    RUN(test_batch_norm_gelu);
    RUN(test_batch_norm_grad_structure);
    RUN(test_batch_norm_errors);
    RUN(test_batch_norm_sync_alone);
    RUN(test_batch_norm_sync_two_shares);
    RUN(test_batch_norm_sync_errors);
    RUN(test_group_norm_forward);
    RUN(test_group_norm_grads);
    RUN(test_group_norm_errors);
    return TEST_SUMMARY();
}
