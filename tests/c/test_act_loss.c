/* GELU, ReLU, mse_loss and cross_entropy: forward against double-precision
 * formulas, gradients against finite differences, the error messages. */
#include "gradcheck.h"
#include "test.h"

static msd_tensor *leaf(int ndim, const int *shape, unsigned seed)
{
    msd_tensor *t = gc_randn_like(ndim, shape, seed);
    t->requires_grad = 1;
    return t;
}

static int call_gelu(msd_tensor *const *in, void *ctx, msd_tensor **out)
{
    (void)ctx;
    return msd_gelu(in[0], out);
}

static int call_relu(msd_tensor *const *in, void *ctx, msd_tensor **out)
{
    (void)ctx;
    return msd_relu(in[0], out);
}

static void test_gelu(void)
{
    int s[3] = { 2, 3, 7 };
    msd_tensor *x = leaf(3, s, 1), *o;
    float *px = msd_tensor_data(x);
    for (int i = 0; i < 42; i++)
        px[i] *= 4.0f; /* cover the tails too: [-4, 4) */
    CHECK_OK(msd_gelu(x, &o));
    const float *po = msd_tensor_data(o);
    for (int i = 0; i < 42; i++) {
        double v = px[i];
        CHECK_CLOSE(po[i], 0.5 * v * (1.0 + erf(v / sqrt(2.0))), 1e-6, 1e-5);
    }
    msd_tensor_release(o);
    int bad = gradcheck("gelu", call_gelu, NULL, 1, &x, 1e-3, 1e-2, 1e-3);
    msd_tensor_release(x);
    CHECK(!bad);
}

/* The vectorised erfc/exp inside GELU against erf and exp in double over a
 * wide range: forward within 5e-7 relative error (a few float roundings;
 * plus 1.5e-7 v^2 in the far negative tail, where the float rounding of
 * v^2 / 2 inside an exp shows, and 1e-37 absolute where results underflow),
 * the derivative within 5e-7 of the terms it adds. The negative tail, where
 * GELU is tiny and 1 + erf would cancel, is included. NaN propagates. */
static void test_gelu_accuracy(void)
{
    enum { N = 2 * 16 * 1024 + 1 + 8 };
    static float x[N], y[N], dx[N], dy[N];
    for (int i = 0; i <= 2 * 16 * 1024; i++)
        x[i] = (float)(i - 16 * 1024) / 1024.0f; /* [-16, 16] in steps of 2^-10 */
    const float extra[8] = { 1e-30f, -1e-30f, 1e-7f, -3e-5f, 40.0f, -40.0f, 1e4f, -1e4f };
    for (int i = 0; i < 8; i++)
        x[N - 8 + i] = extra[i];
    for (int i = 0; i < N; i++) {
        dy[i] = 1.0f;
        dx[i] = 0.25f; /* backward adds into dx */
    }
    msd_gelu_forward(y, x, N);
    msd_gelu_backward(dx, dy, x, N);
    double worst_f = 0, worst_b = 0;
    for (int i = 0; i < N; i++) {
        double v = x[i], cdf = 0.5 * erfc(-v / sqrt(2.0)); /* no cancellation in the tail */
        double ref = v * cdf, dref = cdf + v * exp(-0.5 * v * v) / sqrt(6.283185307179586);
        double pdf = exp(-0.5 * v * v) / sqrt(6.283185307179586);
        double rel = 5e-7 + 1.5e-7 * v * v; /* v^2 / 2 rounded in float feeds an exp */
        double ef = fabs(y[i] - ref) / (rel * fabs(ref) + 1e-37);
        double eb = fabs(((double)dx[i] - 0.25) - dref) / (5e-7 * (cdf + fabs(v) * pdf) + 1e-7);
        worst_f = ef > worst_f ? ef : worst_f;
        worst_b = eb > worst_b ? eb : worst_b;
    }
    CHECK(worst_f <= 1.0);
    CHECK(worst_b <= 1.0);
    float nan_in = NAN, nan_out = 0.0f, nan_dx = 0.0f, one = 1.0f;
    msd_gelu_forward(&nan_out, &nan_in, 1);
    msd_gelu_backward(&nan_dx, &one, &nan_in, 1);
    CHECK(isnan(nan_out));
    CHECK(isnan(nan_dx));
}

/* Every kernel level (each has its own GELU loop, ops_act.c): the accuracy
 * test above at each, the AVX2 and AVX-512 loops giving each other's bits,
 * and at each level the in-place entry points of the fused epilogues giving
 * the bits of msd_gelu_forward / msd_gelu_backward on every length (the last,
 * partial vector included) and at every offset. */
static void test_gelu_every_level(void)
{
    enum { N = 16 * 1024 + 77 };
    static float x[N], y[N], dx[N], dy[N], t[N], ref_y[N], ref_dx[N];
    unsigned s = 7;
    for (int i = 0; i < N; i++) {
        s = s * 1664525u + 1013904223u;
        x[i] = ((float)(s >> 8) / 16777216.0f - 0.5f) * 24.0f; /* [-12, 12) */
        s = s * 1664525u + 1013904223u;
        dy[i] = (float)(s >> 8) / 16777216.0f - 0.5f;
    }
    int best = msd_isa_best();
    for (int isa = 0; isa <= best; isa++) {
        CHECK_OK(msd_isa_set(isa));
        test_gelu_accuracy();
        if (test_failed_flag) {
            fprintf(stderr, "  at level %s\n", msd_isa_name(isa));
            break;
        }
        memset(dx, 0, sizeof dx);
        msd_gelu_forward(y, x, N);
        msd_gelu_backward(dx, dy, x, N);
        if (isa == MSD_ISA_AVX2) {
            memcpy(ref_y, y, sizeof y);
            memcpy(ref_dx, dx, sizeof dx);
        }
        if (isa >= MSD_ISA_AVX512 && best >= MSD_ISA_AVX2) {
            CHECK(memcmp(y, ref_y, sizeof y) == 0);
            CHECK(memcmp(dx, ref_dx, sizeof dx) == 0);
        }
        int bad = 0;
        for (int n = 1, off = 0; off + n <= N; off += n, n = n % 37 + 1) {
            memcpy(t, x + off, (size_t)n * sizeof *t);
            msd_gelu_forward_inplace(t, (size_t)n);
            bad |= memcmp(t, y + off, (size_t)n * sizeof *t) != 0;
            memcpy(t, x + off, (size_t)n * sizeof *t);
            msd_gelu_backward_inplace(t, dy + off, (size_t)n);
            for (int i = 0; i < n; i++)
                bad |= t[i] != dx[off + i]; /* dx = 0 + term: +0 where the term is -0 */
        }
        if (bad)
            fprintf(stderr, "  in-place GELU differs at level %s\n", msd_isa_name(isa));
        CHECK(!bad);
    }
    CHECK_OK(msd_isa_set(best));
}

static void test_relu(void)
{
    int s[2] = { 4, 5 };
    msd_tensor *x = leaf(2, s, 2), *o, *l;
    float *px = msd_tensor_data(x);
    for (int i = 0; i < 20; i++) /* keep finite differences off the kink */
        px[i] += px[i] > 0 ? 0.01f : -0.01f;
    CHECK_OK(msd_relu(x, &o));
    const float *po = msd_tensor_data(o);
    for (int i = 0; i < 20; i++)
        CHECK(po[i] == (px[i] > 0 ? px[i] : 0.0f));
    msd_tensor_release(o);
    int bad = gradcheck("relu", call_relu, NULL, 1, &x, 1e-3, 1e-2, 1e-3);
    CHECK(!bad);
    /* exactly 0: output 0 and gradient 0, as PyTorch */
    msd_tensor_release(x->grad);
    x->grad = NULL;
    px[0] = 0.0f;
    px[1] = 1.0f;
    px[2] = -1.0f;
    CHECK_OK(msd_relu(x, &o));
    CHECK(msd_tensor_data(o)[0] == 0.0f);
    CHECK_OK(msd_sum(o, &l));
    CHECK_OK(msd_backward(l, NULL, 0));
    const float *g = msd_tensor_data(x->grad);
    CHECK(g[0] == 0.0f && g[1] == 1.0f && g[2] == 0.0f);
    msd_tensor_release(l);
    msd_tensor_release(o);
    msd_tensor_release(x);
}

static int call_mse(msd_tensor *const *in, void *ctx, msd_tensor **out)
{
    (void)ctx;
    return msd_mse_loss(in[0], in[1], out);
}

static void test_mse_loss(void)
{
    int s[4] = { 2, 3, 2, 2 };
    msd_tensor *in[2] = { leaf(4, s, 3), leaf(4, s, 4) }, *o;
    const float *a = msd_tensor_data(in[0]), *b = msd_tensor_data(in[1]);
    double acc = 0;
    for (int i = 0; i < 24; i++)
        acc += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    CHECK_OK(msd_mse_loss(in[0], in[1], &o));
    CHECK(o->ndim == 0);
    CHECK_CLOSE(msd_tensor_data(o)[0], acc / 24, 1e-7, 1e-6);
    msd_tensor_release(o);
    int bad = gradcheck("mse_loss", call_mse, NULL, 2, in, 1e-3, 1e-2, 1e-4);
    CHECK(!bad);
    int s2[2] = { 4, 6 };
    msd_tensor *c = msd_tensor_zeros(2, s2);
    o = NULL;
    CHECK(msd_mse_loss(in[0], c, &o) == MSD_ERR_SHAPE && o == NULL);
    CHECK(strstr(msd_last_error(), "mse_loss") && strstr(msd_last_error(), "[2,3,2,2]") &&
          strstr(msd_last_error(), "[4,6]"));
    msd_tensor_release(c);
    msd_tensor_release(in[0]);
    msd_tensor_release(in[1]);
}

/* -mean_n log softmax(x)[n, t_n] (idx) or -mean_n sum_c t log softmax (probs). */
static double naive_ce(const float *x, const float *t, int probs, int N, int C)
{
    double total = 0;
    for (int n = 0; n < N; n++) {
        double s = 0;
        for (int c = 0; c < C; c++)
            s += exp((double)x[n * C + c]);
        double lse = log(s);
        if (probs)
            for (int c = 0; c < C; c++)
                total -= t[n * C + c] * (x[n * C + c] - lse);
        else
            total -= x[n * C + (int)t[n]] - lse;
    }
    return total / N;
}

static int call_ce(msd_tensor *const *in, void *ctx, msd_tensor **out)
{
    (void)ctx;
    return msd_cross_entropy(in[0], in[1], out);
}

static void test_cross_entropy_indices(void)
{
    int s[2] = { 5, 4 }, n5 = 5;
    float idx[5] = { 0, 3, 1, 3, 2 };
    msd_tensor *in[2] = { leaf(2, s, 5), msd_tensor_from_data(1, &n5, idx) }, *o;
    float *x = msd_tensor_data(in[0]);
    for (int i = 0; i < 20; i++)
        x[i] *= 3.0f;
    CHECK_OK(msd_cross_entropy(in[0], in[1], &o));
    CHECK(o->ndim == 0);
    CHECK_CLOSE(msd_tensor_data(o)[0], naive_ce(x, idx, 0, 5, 4), 1e-6, 1e-5);
    msd_tensor_release(o);
    int bad = gradcheck("cross_entropy idx", call_ce, NULL, 2, in, 1e-3, 1e-2, 1e-4);
    CHECK(!bad);
    /* class indices are not differentiable: a target that requires grad gets none */
    msd_tensor_release(in[0]->grad);
    in[0]->grad = NULL;
    in[1]->requires_grad = 1;
    msd_tensor *l;
    CHECK_OK(msd_cross_entropy(in[0], in[1], &l));
    CHECK_OK(msd_backward(l, NULL, 0));
    CHECK(in[1]->grad == NULL && in[0]->grad != NULL);
    /* each row of d/dlogits is (softmax - onehot) / N: it sums to 0 */
    const float *g = msd_tensor_data(in[0]->grad);
    for (int n = 0; n < 5; n++)
        CHECK_CLOSE(g[n * 4] + g[n * 4 + 1] + g[n * 4 + 2] + g[n * 4 + 3], 0.0, 1e-6, 0);
    msd_tensor_release(l);
    msd_tensor_release(in[0]);
    msd_tensor_release(in[1]);
}

static void test_cross_entropy_probs(void)
{
    int s[2] = { 3, 5 };
    msd_tensor *in[2] = { leaf(2, s, 6), leaf(2, s, 7) }, *o;
    float *t = msd_tensor_data(in[1]);
    for (int i = 0; i < 15; i++) /* positive, not normalised: rows need not sum to 1 */
        t[i] = 0.5f * (t[i] + 1.0f);
    CHECK_OK(msd_cross_entropy(in[0], in[1], &o));
    CHECK_CLOSE(msd_tensor_data(o)[0], naive_ce(msd_tensor_data(in[0]), t, 1, 3, 5), 1e-6, 1e-5);
    msd_tensor_release(o);
    int bad = gradcheck("cross_entropy probs", call_ce, NULL, 2, in, 1e-3, 1e-2, 1e-4);
    CHECK(!bad);
    msd_tensor_release(in[0]);
    msd_tensor_release(in[1]);
}

/* Logits of 1000 would overflow a naive exp: the loss must stay finite. */
static void test_cross_entropy_large_logits(void)
{
    int s[2] = { 1, 2 }, n1 = 1;
    float xs[2] = { 1000.0f, 1001.0f }, t0 = 0.0f;
    msd_tensor *x = msd_tensor_from_data(2, s, xs), *t = msd_tensor_from_data(1, &n1, &t0), *o;
    CHECK_OK(msd_cross_entropy(x, t, &o));
    CHECK_CLOSE(msd_tensor_data(o)[0], log(1.0 + exp(1.0)), 1e-6, 1e-5);
    msd_tensor_release(o);
    msd_tensor_release(x);
    msd_tensor_release(t);
}

static void test_cross_entropy_errors(void)
{
    int s[2] = { 3, 4 }, n3 = 3, n2 = 2, s3[3] = { 3, 4, 1 };
    float bad_range[3] = { 0, 4, 1 }, bad_neg[3] = { 0, -1, 1 }, bad_frac[3] = { 0, 1.5f, 2 };
    msd_tensor *x = msd_tensor_zeros(2, s), *o = NULL, *t;
    t = msd_tensor_from_data(1, &n3, bad_range);
    CHECK(msd_cross_entropy(x, t, &o) == MSD_ERR_ARG);
    CHECK(strstr(msd_last_error(), "cross_entropy: target 1 holds 4, not a class index in 0..3"));
    msd_tensor_release(t);
    t = msd_tensor_from_data(1, &n3, bad_neg);
    CHECK(msd_cross_entropy(x, t, &o) == MSD_ERR_ARG);
    CHECK(strstr(msd_last_error(), "holds -1"));
    msd_tensor_release(t);
    t = msd_tensor_from_data(1, &n3, bad_frac);
    CHECK(msd_cross_entropy(x, t, &o) == MSD_ERR_ARG);
    CHECK(strstr(msd_last_error(), "holds 1.5"));
    msd_tensor_release(t);
    t = msd_tensor_zeros(1, &n2);
    CHECK(msd_cross_entropy(x, t, &o) == MSD_ERR_SHAPE);
    CHECK(strstr(msd_last_error(), "[3,4]") && strstr(msd_last_error(), "[2]"));
    msd_tensor_release(t);
    t = msd_tensor_zeros(3, s3);
    CHECK(msd_cross_entropy(t, x, &o) == MSD_ERR_SHAPE);
    CHECK(strstr(msd_last_error(), "expected logits (N,C)") &&
          strstr(msd_last_error(), "[3,4,1]"));
    msd_tensor_release(t);
    CHECK(o == NULL);
    msd_tensor_release(x);
}

int main(void)
{
    RUN(test_gelu);
    RUN(test_gelu_accuracy);
    RUN(test_gelu_every_level);
    RUN(test_relu);
    RUN(test_mse_loss);
    RUN(test_cross_entropy_indices);
    RUN(test_cross_entropy_probs);
    RUN(test_cross_entropy_large_logits);
    RUN(test_cross_entropy_errors);
    return TEST_SUMMARY();
}
