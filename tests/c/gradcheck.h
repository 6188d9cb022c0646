/* Finite-difference gradient checks for the C tests (STYLE.md, Tests):
 * loss = sum(out * R) with fixed pseudo-random weights R; each input that
 * requires grad is checked element by element against central differences
 * (sums in double); an input the op does not use may get no gradient at all,
 * which counts as zero and must match differences that are all zero; a leaf
 * outside the graph (requiring grad) must get no gradient; then a second
 * forward + backward must double the accumulated gradients. */
#ifndef MSD_GRADCHECK_H
#define MSD_GRADCHECK_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "minisd.h"

/* Builds the op's output from the inputs. */
typedef int (*gc_fn)(msd_tensor *const *in, void *ctx, msd_tensor **out);

/* Deterministic values in [-1, 1) from a 32-bit LCG. */
static inline float gc_rand(unsigned *state)
{
    *state = *state * 1664525u + 1013904223u;
    return (float)((*state >> 8) * (2.0 / 16777216.0) - 1.0);
}

static inline msd_tensor *gc_randn_like(int ndim, const int *shape, unsigned seed)
{
    msd_tensor *t = msd_tensor_empty(ndim, shape);
    float *p = msd_tensor_data(t);
    for (size_t i = 0, n = msd_tensor_numel(t); i < n; i++)
        p[i] = gc_rand(&seed);
    return t;
}

/* sum(out * R) in double. */
static inline double gc_weighted_sum(const msd_tensor *out, const msd_tensor *r)
{
    const float *a = msd_tensor_data(out), *b = msd_tensor_data(r);
    double s = 0;
    for (size_t i = 0, n = msd_tensor_numel(out); i < n; i++)
        s += (double)a[i] * b[i];
    return s;
}

/* Returns 0 when every gradient matches; prints the worst mismatch. */
static inline int gradcheck(const char *name, gc_fn f, void *ctx, int n_in, msd_tensor **in,
                            double eps, double rtol, double atol)
{
    msd_tensor *out = NULL, *prod = NULL, *loss = NULL;
    int bad = 0;
    for (int i = 0; i < n_in; i++) {
        if (in[i] && in[i]->requires_grad) {
            msd_tensor_release(in[i]->grad);
            in[i]->grad = NULL;
        }
    }
    if (f(in, ctx, &out) != MSD_OK) {
        fprintf(stderr, "  %s: forward failed: %s\n", name, msd_last_error());
        return 1;
    }
    msd_tensor *r = gc_randn_like(out->ndim, out->shape, 12345u);
    /* a leaf that is not part of the op's graph */
    int one = 1;
    msd_tensor *outside = msd_tensor_empty(1, &one);
    outside->requires_grad = 1;
    if (msd_mul(out, r, &prod) || msd_sum(prod, &loss) || msd_backward(loss, NULL, 0)) {
        fprintf(stderr, "  %s: backward failed: %s\n", name, msd_last_error());
        return 1;
    }
    if (outside->grad) {
        fprintf(stderr, "  %s: a tensor outside the graph got a gradient\n", name);
        bad = 1;
    }
    msd_tensor_release(outside);
    msd_tensor_release(loss);
    msd_tensor_release(prod);
    msd_tensor_release(out);
    int prev = msd_set_grad_enabled(0);
    for (int i = 0; i < n_in && !bad; i++) {
        if (!in[i] || !in[i]->requires_grad)
            continue;
        float *x = msd_tensor_data(in[i]);
        /* no gradient at all: the op did not use the input, so zero (checked below) */
        const float *g = in[i]->grad ? msd_tensor_data(in[i]->grad) : NULL;
        double worst = 0;
        size_t worst_j = 0;
        double worst_num = 0;
        for (size_t j = 0, n = msd_tensor_numel(in[i]); j < n; j++) {
            float v = x[j];
            double fp, fm;
            x[j] = v + (float)eps;
            f(in, ctx, &out);
            fp = gc_weighted_sum(out, r);
            msd_tensor_release(out);
            x[j] = v - (float)eps;
            f(in, ctx, &out);
            fm = gc_weighted_sum(out, r);
            msd_tensor_release(out);
            x[j] = v;
            double num = (fp - fm) / (2 * eps);
            double gj = g ? g[j] : 0.0;
            double err = fabs(num - gj) - (atol + rtol * fabs(num));
            if (err > worst) {
                worst = err;
                worst_j = j;
                worst_num = num;
            }
        }
        if (worst > 0) {
            fprintf(stderr, "  %s: input %d element %zu: autograd %.7g%s, finite differences "
                    "%.7g\n", name, i, worst_j, g ? g[worst_j] : 0.0, g ? "" : " (no gradient)",
                    worst_num);
            bad = 1;
        }
    }
    msd_set_grad_enabled(prev);
    /* a second forward + backward doubles the accumulated gradients */
    msd_tensor *first[16] = { 0 };
    for (int i = 0; i < n_in && i < 16 && !bad; i++)
        if (in[i] && in[i]->requires_grad && in[i]->grad)
            first[i] = msd_tensor_clone(in[i]->grad);
    if (!bad && (f(in, ctx, &out) || msd_mul(out, r, &prod) || msd_sum(prod, &loss) ||
                 msd_backward(loss, NULL, 0))) {
        fprintf(stderr, "  %s: second backward failed: %s\n", name, msd_last_error());
        bad = 1;
    } else if (!bad) {
        msd_tensor_release(loss);
        msd_tensor_release(prod);
        msd_tensor_release(out);
    }
    for (int i = 0; i < n_in && i < 16; i++) {
        if (!first[i])
            continue;
        const float *a = msd_tensor_data(first[i]), *b = msd_tensor_data(in[i]->grad);
        for (size_t j = 0, n = msd_tensor_numel(first[i]); j < n && !bad; j++)
            if (fabs(b[j] - 2.0 * a[j]) > 1e-5 + 1e-4 * fabs(2.0 * a[j])) {
                fprintf(stderr, "  %s: input %d element %zu: second backward gave %.7g, "
                                "expected twice %.7g\n", name, i, j, b[j], a[j]);
                bad = 1;
            }
        msd_tensor_release(first[i]);
    }
    msd_tensor_release(r);
    return bad;
}

#endif
