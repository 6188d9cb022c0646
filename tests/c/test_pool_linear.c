/* max_pool2d, avg_pool2d and linear: forward against naive loops and hand
 * values, gradients against finite differences, and shape errors. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "gradcheck.h"
#include "test.h"

typedef struct pool_ctx {
    int is_max, k, s;
} pool_ctx;

static int call_pool(msd_tensor *const *in, void *ctx, msd_tensor **out)
{
    const pool_ctx *c = ctx;
    return c->is_max ? msd_max_pool2d(in[0], c->k, c->s, out)
                     : msd_avg_pool2d(in[0], c->k, c->s, out);
}

/* Window max / mean of x (N,C,H,W), in double. */
static double naive_pool(const float *x, int H, int W, int plane, int oy, int ox, const pool_ctx *c)
{
    const float *p = x + (size_t)plane * H * W;
    double m = p[oy * c->s * W + ox * c->s], acc = 0;
    for (int i = 0; i < c->k; i++)
        for (int j = 0; j < c->k; j++) {
            double v = p[(oy * c->s + i) * W + ox * c->s + j];
            m = v > m ? v : m;
            acc += v;
        }
    return c->is_max ? m : acc / (c->k * c->k);
}

static void test_pool_vs_naive(void)
{
    /* the last shape, 135168 elements in 33 plane blocks, runs on the thread pool */
    const int shapes[][4] = { { 2, 3, 8, 8 }, { 1, 2, 5, 7 }, { 3, 1, 16, 16 },
                              { 4, 132, 16, 16 } };
    const pool_ctx ctxs[] = { { 1, 2, 2 }, { 1, 4, 4 }, { 1, 3, 2 }, { 0, 2, 2 }, { 0, 4, 4 },
                              { 0, 3, 1 } };
    for (size_t a = 0; a < 4; a++)
        for (size_t b = 0; b < sizeof ctxs / sizeof *ctxs; b++) {
            const int *s = shapes[a];
            const pool_ctx *c = &ctxs[b];
            msd_tensor *x = gc_randn_like(4, s, 50 + (unsigned)(a * 10 + b)), *y;
            CHECK_OK(call_pool(&x, (void *)c, &y));
            int Ho = (s[2] - c->k) / c->s + 1, Wo = (s[3] - c->k) / c->s + 1;
            CHECK(y->shape[0] == s[0] && y->shape[1] == s[1] && y->shape[2] == Ho &&
                  y->shape[3] == Wo);
            const float *py = msd_tensor_data(y);
            for (int p = 0; p < s[0] * s[1]; p++)
                for (int oy = 0; oy < Ho; oy++)
                    for (int ox = 0; ox < Wo; ox++)
                        CHECK_CLOSE(py[(p * Ho + oy) * Wo + ox],
                                    naive_pool(msd_tensor_data(x), s[2], s[3], p, oy, ox, c),
                                    1e-6, 1e-6);
            msd_tensor_release(y);
            msd_tensor_release(x);
        }
}

static void test_pool_gradcheck(void)
{
    const pool_ctx ctxs[] = { { 1, 2, 2 }, { 1, 4, 4 }, { 1, 3, 2 }, { 0, 2, 2 }, { 0, 4, 4 },
                              { 0, 3, 2 } };
    int s[4] = { 2, 2, 8, 7 };
    for (size_t b = 0; b < sizeof ctxs / sizeof *ctxs; b++) {
        msd_tensor *x = gc_randn_like(4, s, 60 + (unsigned)b);
        x->requires_grad = 1;
        int bad = gradcheck(ctxs[b].is_max ? "max_pool2d" : "avg_pool2d", call_pool,
                            (void *)&ctxs[b], 1, &x, 1e-3, 1e-2, 1e-3);
        msd_tensor_release(x);
        CHECK(!bad);
    }
}

/* Ties: the gradient goes to the first maximum of the window (row-major),
 * as PyTorch; overlapping windows accumulate. */
static void test_max_pool_ties(void)
{
    int s[4] = { 1, 1, 3, 3 };
    float v[9] = { 1, 5, 5, 5, 0, 5, 2, 2, 2 };
    msd_tensor *x = msd_tensor_from_data(4, s, v), *y, *l;
    x->requires_grad = 1;
    CHECK_OK(msd_max_pool2d(x, 2, 1, &y)); /* windows at (0,0) (0,1) (1,0) (1,1) */
    const float *py = msd_tensor_data(y);
    CHECK(py[0] == 5 && py[1] == 5 && py[2] == 5 && py[3] == 5);
    CHECK_OK(msd_sum(y, &l));
    CHECK_OK(msd_backward(l, NULL, 0));
    const float *g = msd_tensor_data(x->grad);
    /* (0,0) -> element 1; (0,1) -> element 1; (1,0) -> 3; (1,1) -> 5 */
    float expect[9] = { 0, 2, 0, 1, 0, 1, 0, 0, 0 };
    for (int i = 0; i < 9; i++)
        CHECK(g[i] == expect[i]);
    msd_tensor_release(l);
    msd_tensor_release(y);
    msd_tensor_release(x);
}

/* The 2x2, stride-2 max (written as selects), with and without indices, against the
 * rule written out as a branchy loop here: random values, ties, zeros of both signs,
 * infinities and NaNs with distinct payloads, odd sizes (the last row and column unused). */
static void test_max_pool_2x2_no_index(void)
{
    enum { NC = 37, H = 9, W = 11, HO = H / 2, WO = W / 2 };
    static float x[NC * H * W], y_fast[NC * HO * WO], y_loop[NC * HO * WO], idx[NC * HO * WO];
    unsigned st = 5;
    for (int i = 0; i < NC * H * W; i++) {
        unsigned r = (st = st * 1103515245u + 12345u) >> 16;
        switch (r % 16) {
        case 0: x[i] = 0.0f; break;
        case 1: x[i] = -0.0f; break;
        case 2: x[i] = INFINITY; break;
        case 3: x[i] = -INFINITY; break;
        case 4: { /* a NaN whose payload tells which one it is */
            uint32_t b = 0x7fc00000u | (uint32_t)i;
            memcpy(&x[i], &b, sizeof b);
            break;
        }
        case 5: x[i] = 1.0f; break; /* ties */
        default: x[i] = (float)((int)(r % 2001) - 1000) / 100.0f;
        }
    }
    memset(y_fast, 0xff, sizeof y_fast);
    msd_max_pool2d_forward(y_fast, NULL, x, NC, H, W, 2, 2);
    msd_max_pool2d_forward(y_loop, idx, x, NC, H, W, 2, 2);
    CHECK(memcmp(y_fast, y_loop, sizeof y_fast) == 0);
    /* both against the rule written out here, indices included */
    int bad = 0;
    for (int p = 0; p < NC; p++)
        for (int oy = 0; oy < HO; oy++)
            for (int ox = 0; ox < WO; ox++) {
                int best = 2 * oy * W + 2 * ox;
                float m = x[p * H * W + best];
                for (int k = 1; k < 4; k++) {
                    int at = (2 * oy + k / 2) * W + 2 * ox + k % 2;
                    float v = x[p * H * W + at];
                    if (v > m || v != v) {
                        m = v;
                        best = at;
                    }
                }
                int o = (p * HO + oy) * WO + ox;
                bad += memcmp(&m, &y_loop[o], sizeof m) != 0 || idx[o] != (float)best;
            }
    CHECK(bad == 0);
    int nans = 0, zeros = 0;
    for (int i = 0; i < NC * HO * WO; i++) {
        nans += y_loop[i] != y_loop[i];
        zeros += y_loop[i] == 0.0f;
    }
    CHECK(nans > 10 && zeros > 0); /* the cases above occur */
}

static void test_pool_errors(void)
{
    int s[4] = { 2, 3, 3, 3 }, s3[3] = { 3, 8, 8 };
    msd_tensor *x = msd_tensor_zeros(4, s), *x3 = msd_tensor_zeros(3, s3), *y = NULL;
    CHECK(msd_max_pool2d(x, 4, 4, &y) == MSD_ERR_SHAPE);
    CHECK(strstr(msd_last_error(), "max_pool2d") && strstr(msd_last_error(), "[2,3,3,3]"));
    CHECK(msd_avg_pool2d(x3, 2, 2, &y) == MSD_ERR_SHAPE);
    CHECK(strstr(msd_last_error(), "avg_pool2d") && strstr(msd_last_error(), "[3,8,8]"));
    CHECK(msd_avg_pool2d(x, 0, 1, &y) == MSD_ERR_ARG);
    CHECK(msd_max_pool2d(x, 2, 0, &y) == MSD_ERR_ARG);
    CHECK(strstr(msd_last_error(), "stride"));
    CHECK(y == NULL);
    msd_tensor_release(x);
    msd_tensor_release(x3);
}

/* ---- linear ----------------------------------------------------------- */

static int call_linear(msd_tensor *const *in, void *ctx, msd_tensor **out)
{
    (void)ctx;
    return msd_linear(in[0], in[1], in[2], out);
}

static void test_linear_vs_naive(void)
{
    const int xs[][3] = { { 4, 5, 0 }, { 2, 3, 5 }, { 1, 7, 0 } };
    const int xnd[] = { 2, 3, 2 };
    for (int c = 0; c < 3; c++)
        for (int with_bias = 0; with_bias < 2; with_bias++) {
            int nd = xnd[c], in = xs[c][nd - 1], nout = 6;
            int sw[2] = { nout, in }, sb[1] = { nout };
            msd_tensor *x = gc_randn_like(nd, xs[c], 70 + c), *w = gc_randn_like(2, sw, 80 + c);
            msd_tensor *b = with_bias ? gc_randn_like(1, sb, 90 + c) : NULL, *y;
            CHECK_OK(msd_linear(x, w, b, &y));
            CHECK(y->ndim == nd && y->shape[nd - 1] == nout && y->shape[0] == xs[c][0]);
            int M = (int)(msd_tensor_numel(x) / in);
            const float *px = msd_tensor_data(x), *pw = msd_tensor_data(w);
            for (int i = 0; i < M; i++)
                for (int o = 0; o < nout; o++) {
                    double acc = b ? msd_tensor_data(b)[o] : 0;
                    for (int k = 0; k < in; k++)
                        acc += (double)px[i * in + k] * pw[o * in + k];
                    CHECK_CLOSE(msd_tensor_data(y)[i * nout + o], acc, 1e-5, 1e-5);
                }
            msd_tensor_release(y);
            msd_tensor_release(x);
            msd_tensor_release(w);
            msd_tensor_release(b);
        }
}

static void test_linear_gradcheck(void)
{
    int sx2[2] = { 4, 5 }, sx3[3] = { 2, 3, 5 }, sw[2] = { 3, 5 }, sb[1] = { 3 };
    for (int v = 0; v < 3; v++) {
        msd_tensor *in[3] = { v == 1 ? gc_randn_like(3, sx3, 1) : gc_randn_like(2, sx2, 1),
                              gc_randn_like(2, sw, 2), v == 2 ? NULL : gc_randn_like(1, sb, 3) };
        for (int i = 0; i < 3; i++)
            if (in[i])
                in[i]->requires_grad = 1;
        int bad = gradcheck("linear", call_linear, NULL, 3, in, 1e-3, 1e-2, 1e-3);
        for (int i = 0; i < 3; i++)
            msd_tensor_release(in[i]);
        CHECK(!bad);
    }
}

static void test_linear_errors(void)
{
    int sx[2] = { 4, 5 }, sw[2] = { 3, 6 }, sw3[3] = { 3, 5, 1 }, sb[1] = { 4 }, sw2[2] = { 3, 5 };
    msd_tensor *x = msd_tensor_zeros(2, sx), *w = msd_tensor_zeros(2, sw), *y = NULL;
    msd_tensor *w3 = msd_tensor_zeros(3, sw3), *b = msd_tensor_zeros(1, sb);
    msd_tensor *w2 = msd_tensor_zeros(2, sw2);
    CHECK(msd_linear(x, w, NULL, &y) == MSD_ERR_SHAPE);
    CHECK(strstr(msd_last_error(), "linear") && strstr(msd_last_error(), "[4,5]") &&
          strstr(msd_last_error(), "[3,6]"));
    CHECK(msd_linear(x, w3, NULL, &y) == MSD_ERR_SHAPE);
    CHECK(strstr(msd_last_error(), "[3,5,1]"));
    CHECK(msd_linear(x, w2, b, &y) == MSD_ERR_SHAPE);
    CHECK(strstr(msd_last_error(), "bias") && strstr(msd_last_error(), "[4]"));
    CHECK(y == NULL);
    msd_tensor_release(x);
    msd_tensor_release(w);
    msd_tensor_release(w2);
    msd_tensor_release(w3);
    msd_tensor_release(b);
}

int main(void)
{
    RUN(test_pool_vs_naive);
    RUN(test_pool_gradcheck);
    RUN(test_max_pool_ties);
    RUN(test_max_pool_2x2_no_index);
    RUN(test_pool_errors);
    RUN(test_linear_vs_naive);
    RUN(test_linear_gradcheck);
    RUN(test_linear_errors);
    return TEST_SUMMARY();
}
