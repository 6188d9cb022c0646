/* Elementwise ops, reductions and shape ops: forward against hand values
 * and naive loops, gradients against finite differences. */
#include "gradcheck.h"
#include "test.h"
#include "threads.h"

static msd_tensor *leaf(int ndim, const int *shape, unsigned seed)
{
    msd_tensor *t = gc_randn_like(ndim, shape, seed);
    t->requires_grad = 1;
    return t;
}

typedef int (*bin_fn)(msd_tensor *, msd_tensor *, msd_tensor **);

static int call_bin(msd_tensor *const *in, void *ctx, msd_tensor **out)
{
    return (*(bin_fn *)ctx)(in[0], in[1], out);
}

static void test_broadcast_forward(void)
{
    int sa[4] = { 2, 3, 2, 2 }, sb[4] = { 2, 3, 1, 1 };
    msd_tensor *a = gc_randn_like(4, sa, 1), *b = gc_randn_like(4, sb, 2), *o;
    CHECK_OK(msd_mul(a, b, &o));
    CHECK(o->ndim == 4 && o->shape[2] == 2);
    const float *pa = msd_tensor_data(a), *pb = msd_tensor_data(b), *po = msd_tensor_data(o);
    for (int n = 0; n < 6; n++)
        for (int k = 0; k < 4; k++)
            CHECK(po[n * 4 + k] == pa[n * 4 + k] * pb[n]);
    msd_tensor_release(o);
    int sc[1] = { 2 };
    msd_tensor *c = gc_randn_like(1, sc, 3);
    CHECK_OK(msd_sub(a, c, &o)); /* (2,3,2,2) - (2): the last dim */
    po = msd_tensor_data(o);
    const float *pc = msd_tensor_data(c);
    for (int i = 0; i < 24; i++)
        CHECK(po[i] == pa[i] - pc[i % 2]);
    msd_tensor_release(o);
    msd_tensor_release(a);
    msd_tensor_release(b);
    msd_tensor_release(c);
}

/* Large enough to be cut into chunks over the threads (ops_elementwise.c): a broadcast
 * product, a sum with a broadcast over dims 0, 2 and 3, and the same-shape gradient of an
 * addition, against naive loops, on 1 and 2 threads. */
static void test_binary_over_threads(void)
{
    enum { N = 33, C = 37, H = 9, W = 7 };
    int sa[4] = { N, C, H, W }, sb[4] = { N, C, 1, 1 }, sc[4] = { 1, C, 1, 1 };
    msd_tensor *a = gc_randn_like(4, sa, 21), *b = gc_randn_like(4, sb, 22);
    msd_tensor *c = gc_randn_like(4, sc, 23);
    const float *pa = msd_tensor_data(a), *pb = msd_tensor_data(b), *pc = msd_tensor_data(c);
    int saved = msd_get_threads();
    for (int threads = 1; threads <= 2; threads++) {
        msd_set_threads(threads);
        msd_tensor *o, *s;
        CHECK_OK(msd_mul(a, b, &o));
        CHECK_OK(msd_add(c, o, &s));
        const float *po = msd_tensor_data(o), *ps = msd_tensor_data(s);
        int bad = 0;
        for (int i = 0; i < N * C * H * W; i++) {
            int n = i / (C * H * W), ch = i / (H * W) % C;
            bad |= po[i] != pa[i] * pb[n * C + ch];
            bad |= ps[i] != pc[ch] + po[i];
        }
        CHECK(!bad);
        msd_tensor_release(s);
        msd_tensor_release(o);
        msd_tensor *x = leaf(4, sa, 24), *y = leaf(4, sa, 25), *z, *l;
        CHECK_OK(msd_add(x, y, &z));
        CHECK_OK(msd_mul(z, a, &l)); /* d/dz = a: the add's gradient is a, to x and y alike */
        CHECK_OK(msd_backward(l, a, 0));
        CHECK(x->grad && y->grad);
        const float *gx = msd_tensor_data(x->grad), *gy = msd_tensor_data(y->grad);
        bad = 0;
        for (int i = 0; i < N * C * H * W; i++)
            bad |= gx[i] != pa[i] * pa[i] || gy[i] != pa[i] * pa[i];
        CHECK(!bad);
        msd_tensor_release(l);
        msd_tensor_release(z);
        msd_tensor_release(x);
        msd_tensor_release(y);
    }
    msd_set_threads(saved);
    msd_tensor_release(a);
    msd_tensor_release(b);
    msd_tensor_release(c);
}

static void test_broadcast_error_names_shapes(void)
{
    int sa[2] = { 2, 3 }, sb[2] = { 3, 2 };
    msd_tensor *a = msd_tensor_zeros(2, sa), *b = msd_tensor_zeros(2, sb), *o = NULL;
    CHECK(msd_add(a, b, &o) == MSD_ERR_SHAPE);
    CHECK(o == NULL);
    CHECK(strstr(msd_last_error(), "[2,3]") && strstr(msd_last_error(), "[3,2]"));
    msd_tensor_release(a);
    msd_tensor_release(b);
}

static void test_binary_grads(void)
{
    bin_fn fns[4] = { msd_add, msd_sub, msd_mul, msd_div };
    const char *names[4] = { "add", "sub", "mul", "div" };
    int sa[4] = { 2, 3, 2, 2 }, sb[4] = { 1, 3, 1, 1 };
    for (int k = 0; k < 4; k++) {
        msd_tensor *in[2] = { leaf(4, sa, 10 + k), leaf(4, sb, 20 + k) };
        if (k == 3) { /* keep the divisor away from 0 */
            float *p = msd_tensor_data(in[1]);
            for (int i = 0; i < 3; i++)
                p[i] = p[i] > 0 ? p[i] + 1 : p[i] - 1;
        }
        int bad = gradcheck(names[k], call_bin, &fns[k], 2, in, 1e-3, 1e-2, 1e-3);
        msd_tensor_release(in[0]);
        msd_tensor_release(in[1]);
        CHECK(!bad);
    }
}

static int call_unary_chain(msd_tensor *const *in, void *ctx, msd_tensor **out)
{
    (void)ctx;
    msd_tensor *a = NULL, *b = NULL, *c = NULL, *d = NULL;
    int s[2] = { 4, -1 };
    int rc = msd_abs(in[0], &a);
    if (!rc) rc = msd_add_scalar(a, 0.5f, &b);
    if (!rc) rc = msd_sqrt(b, &c);
    if (!rc) rc = msd_mul_scalar(c, -1.5f, &d);
    msd_tensor *e = NULL, *g = NULL;
    if (!rc) rc = msd_exp(d, &e);
    if (!rc) rc = msd_reshape(e, 2, s, &g);
    msd_tensor_release(a);
    msd_tensor_release(b);
    msd_tensor_release(c);
    msd_tensor_release(d);
    msd_tensor_release(e);
    *out = g;
    return rc;
}

static void test_unary_grads(void)
{
    int s[3] = { 2, 3, 4 };
    msd_tensor *x = leaf(3, s, 7);
    int bad = gradcheck("abs/sqrt/exp/scalar/reshape", call_unary_chain, NULL, 1, &x, 1e-3,
                        1e-2, 1e-3);
    msd_tensor_release(x);
    CHECK(!bad);
}

/* uses in[0] only: in[1] requires grad but takes no part */
static int call_first_only(msd_tensor *const *in, void *ctx, msd_tensor **out)
{
    (void)ctx;
    return msd_exp(in[0], out);
}

/* An input the op does not use gets no gradient, which gradcheck counts as zero against
 * all-zero differences; a used input without its gradient would fail. */
static void test_unused_input_zero_grad(void)
{
    int shape[2] = { 2, 3 };
    msd_tensor *in[2] = { gc_randn_like(2, shape, 5u), gc_randn_like(2, shape, 6u) };
    in[0]->requires_grad = in[1]->requires_grad = 1;
    CHECK(gradcheck("exp(x), y unused", call_first_only, NULL, 2, in, 1e-3, 1e-3, 1e-4) == 0);
    CHECK(in[1]->grad == NULL);
    msd_tensor_release(in[0]);
    msd_tensor_release(in[1]);
}

static int call_shape_ops(msd_tensor *const *in, void *ctx, msd_tensor **out)
{
    (void)ctx;
    msd_tensor *a = NULL, *b = NULL, *c = NULL;
    int rc = msd_narrow(in[0], 1, 1, 2, &a);      /* dim 1: a copy */
    if (!rc) rc = msd_narrow(a, 0, 1, 1, &b);     /* dim 0: a view */
    msd_tensor *xs[3] = { a, b, in[1] };
    if (!rc) rc = msd_cat(3, xs, 0, &c);
    msd_tensor_release(a);
    msd_tensor_release(b);
    *out = c;
    return rc;
}

static void test_shape_grads(void)
{
    int sa[3] = { 2, 4, 3 }, sb[3] = { 3, 2, 3 };
    msd_tensor *in[3] = { leaf(3, sa, 5), leaf(3, sb, 6), leaf(3, sb, 8) };
    /* in[2] requires grad but is not used: it must get no gradient */
    int bad = gradcheck("narrow/cat", call_shape_ops, NULL, 2, in, 1e-3, 1e-2, 1e-3);
    CHECK(!bad);
    CHECK(in[2]->grad == NULL);
    for (int i = 0; i < 3; i++)
        msd_tensor_release(in[i]);
}

static void test_reductions(void)
{
    int s[2] = { 3, 4 };
    msd_tensor *x = gc_randn_like(2, s, 9), *o;
    const float *p = msd_tensor_data(x);
    double acc = 0;
    float mn = p[0], mx = p[0], v;
    for (int i = 0; i < 12; i++) {
        acc += p[i];
        mn = p[i] < mn ? p[i] : mn;
        mx = p[i] > mx ? p[i] : mx;
    }
    CHECK_OK(msd_sum(x, &o));
    CHECK(o->ndim == 0);
    CHECK_CLOSE(msd_tensor_data(o)[0], acc, 1e-6, 1e-6);
    msd_tensor_release(o);
    CHECK_OK(msd_mean(x, &o));
    CHECK_CLOSE(msd_tensor_data(o)[0], acc / 12, 1e-6, 1e-6);
    msd_tensor_release(o);
    CHECK_OK(msd_min(x, &v));
    CHECK(v == mn);
    CHECK_OK(msd_max(x, &v));
    CHECK(v == mx);
    msd_tensor_release(x);
}

static void test_backward_errors(void)
{
    int s[1] = { 3 };
    msd_tensor *x = leaf(1, s, 1), *y;
    CHECK_OK(msd_mul_scalar(x, 2.0f, &y));
    CHECK(msd_backward(y, NULL, 0) == MSD_ERR_SHAPE);
    CHECK(strstr(msd_last_error(), "scalar") && strstr(msd_last_error(), "[3]"));
    msd_tensor *l;
    CHECK_OK(msd_sum(y, &l));
    CHECK_OK(msd_backward(l, NULL, 0));
    CHECK(msd_backward(l, NULL, 0) == MSD_ERR_STATE); /* the graph was freed */
    msd_tensor_release(l);
    msd_tensor_release(y);
    msd_tensor_release(x);
}

static void test_no_grad_records_nothing(void)
{
    int s[1] = { 3 };
    msd_tensor *x = leaf(1, s, 1), *y;
    int prev = msd_set_grad_enabled(0);
    CHECK_OK(msd_mul_scalar(x, 2.0f, &y));
    msd_set_grad_enabled(prev);
    CHECK(y->grad_fn == NULL && !msd_requires_grad(y));
    msd_tensor_release(y);
    msd_tensor_release(x);
}

static void test_allocator_reuses_blocks(void)
{
    int s[2] = { 100, 100 };
    msd_tensor *t = msd_tensor_zeros(2, s);
    msd_tensor_release(t);
    msd_mem_stats before = msd_memory_stats();
    for (int i = 0; i < 1000; i++)
        msd_tensor_release(msd_tensor_zeros(2, s));
    msd_mem_stats after = msd_memory_stats();
    CHECK(after.cache_hits - before.cache_hits == 1000);
    CHECK(after.live_bytes == before.live_bytes);
}

static void test_bad_shapes(void)
{
    int neg[2] = { 2, -3 }, huge[4] = { 65536, 65536, 65536, 2 };
    CHECK(msd_tensor_zeros(2, neg) == NULL);
    CHECK(strstr(msd_last_error(), "negative"));
    CHECK(msd_tensor_zeros(4, huge) == NULL);
    CHECK(strstr(msd_last_error(), "limit"));
}

int main(void)
{
    RUN(test_broadcast_forward);
    RUN(test_binary_over_threads);
    RUN(test_broadcast_error_names_shapes);
    RUN(test_binary_grads);
    RUN(test_unary_grads);
    RUN(test_unused_input_zero_grad);
    RUN(test_shape_grads);
    RUN(test_reductions);
    RUN(test_backward_errors);
    RUN(test_no_grad_records_nothing);
    RUN(test_allocator_reuses_blocks);
    RUN(test_bad_shapes);
    return TEST_SUMMARY();
}
