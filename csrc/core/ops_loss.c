/* Losses with mean reduction: mean squared error and cross-entropy from
 * logits (class-index or class-probability targets), each with its grad
 * function. Results are 0-dim tensors.
 *
 * Shapes: mse: a, b (any shape, the same, n > 0 elements). cross_entropy: logits (N, C),
 * target (N) of 0-based class indices stored as floats, or (N, C) of probabilities.
 * Saved for backward: mse nothing (the node holds a and b); cross_entropy each row's
 * log-sum-exp lse (N), and for index targets the target itself. Sums run in double and
 * backward ADDS into the gradients, scaled by dloss (the loss's incoming gradient). */
#include <math.h>
#include <stddef.h>

#include "ops.h"

/* ---- mse ---------------------------------------------------------------- */

/* *loss = sum_i (a[i] - b[i])^2 / n; a, b (n). Each difference and the sum in double: n may
 * be millions and the terms are all positive, so float would lose the small ones. */
void msd_mse_forward(float *loss, const float *a, const float *b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        s += d * d;
    }
    *loss = (float)(s / (double)n);
}

/* d/da = 2 (a - b) / n, d/db = -d/da; da or db may be NULL.
 * da, db, a, b (n): da += g, db -= g with g = 2 dloss (a - b) / n; the factor is formed in
 * double and rounded once, the per-element product in float. */
void msd_mse_backward(float *da, float *db, float dloss, const float *a, const float *b,
                      size_t n)
{
    float k = (float)(2.0 * dloss / (double)n);
    for (size_t i = 0; i < n; i++) {
        float g = k * (a[i] - b[i]);
        if (da)
            da[i] += g;
        if (db)
            db[i] -= g;
    }
}

/* MSD_ERR_SHAPE when a and b differ in shape or are empty (the mean of nothing). Both are
 * inputs of the node, so a target that requires grad gets its gradient too. */
int msd_mse_loss(msd_tensor *a, msd_tensor *b, msd_tensor **out)
{
    char b1[64], b2[64];
    if (!msd_tensor_same_shape(a, b))
        return msd_error(MSD_ERR_SHAPE, "mse_loss: input %s and target %s must have the same "
                                        "shape",
                         msd_tensor_shape_str(b1, sizeof b1, a),
                         msd_tensor_shape_str(b2, sizeof b2, b));
    size_t n = msd_tensor_numel(a);
    if (n == 0)
        return msd_error(MSD_ERR_SHAPE, "mse_loss: the inputs %s are empty",
                         msd_tensor_shape_str(b1, sizeof b1, a));
    msd_tensor *o = msd_tensor_empty(0, NULL);
    if (!o)
        return MSD_ERR_MEM;
    msd_mse_forward(msd_tensor_data(o), msd_tensor_data(a), msd_tensor_data(b), n);
    msd_tensor *in[2] = { a, b };
    return msd_autograd_finish(o, MSD_OP_MSE_LOSS, 2, in, NULL, out);
}

int msd_grad_mse_loss(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx)
{
    msd_mse_backward(dx[0] ? msd_tensor_data(dx[0]) : NULL, dx[1] ? msd_tensor_data(dx[1]) : NULL,
                     msd_tensor_data(dy)[0], msd_tensor_data(n->in[0]),
                     msd_tensor_data(n->in[1]), msd_tensor_numel(n->in[0]));
    return MSD_OK;
}

/* ---- cross-entropy ------------------------------------------------------ */

/* loss = mean_n (lse_n - x[n, t_n]) for class indices (probs = 0), or
 * mean_n sum_c t[n,c] (lse_n - x[n,c]) for probabilities (probs = 1), with
 * lse_n = log sum_c exp x[n,c] taken after subtracting the row's max so that
 * large logits cannot overflow. logits (N,C); target (N) or (N,C);
 * lse (N) is written for backward.
 * The mean is over the N rows in both cases (PyTorch's "mean" for probability targets
 * too), and the caller has checked every index (0 <= t < C, integral). */
void msd_cross_entropy_forward(float *loss, float *lse, const float *logits,
                               const float *target, int probs, int N, int C)
{
    double total = 0;
    for (int n = 0; n < N; n++) {
        const float *x = logits + (size_t)n * C;
        float mx = x[0];
        for (int c = 1; c < C; c++)
            mx = x[c] > mx ? x[c] : mx;
        double s = 0;
        for (int c = 0; c < C; c++)
            s += exp((double)x[c] - mx);
        double l = mx + log(s);
        lse[n] = (float)l;
        if (probs) {
            const float *t = target + (size_t)n * C;
            for (int c = 0; c < C; c++)
                total += t[c] * (l - x[c]);
        } else {
            total += l - x[(int)target[n]];
        }
    }
    *loss = (float)(total / N);
}

/* dlogits += g/N (softmax * sum_c t - t), with t one-hot for indices;
 * dtarget (probabilities only, may be NULL) += g/N (lse - x).
 * dlogits, logits (N, C); target (N) or (N, C); lse (N) from forward; g = dloss. The
 * softmax is exp(x - lse), from the saved lse instead of a second max-and-sum pass. sum_c t
 * is 1 for indices, but a probability row need not sum to 1, and the exact gradient of
 * sum_c t_c (lse - x_c) then scales the softmax by it. */
void msd_cross_entropy_backward(float *dlogits, float *dtarget, float dloss,
                                const float *logits, const float *target, const float *lse,
                                int probs, int N, int C)
{
    double k = (double)dloss / N;
    for (int n = 0; n < N; n++) {
        const float *x = logits + (size_t)n * C;
        const float *t = probs ? target + (size_t)n * C : NULL;
        double l = lse[n];
        if (dlogits) {
            float *d = dlogits + (size_t)n * C;
            double tsum = 1.0;
            if (probs) {
                tsum = 0;
                for (int c = 0; c < C; c++)
                    tsum += t[c];
            }
            for (int c = 0; c < C; c++) {
                double p = exp((double)x[c] - l);
                double tc = probs ? t[c] : (c == (int)target[n] ? 1.0 : 0.0);
                d[c] += (float)(k * (p * tsum - tc));
            }
        }
        if (dtarget && probs) {
            float *d = dtarget + (size_t)n * C;
            for (int c = 0; c < C; c++)
                d[c] += (float)(k * (l - x[c]));
        }
    }
}

/* The target's kind follows its shape: (N) holds class indices, (N, C) probabilities.
 * MSD_ERR_SHAPE for other shapes or N, C < 1; MSD_ERR_ARG (naming the row) for an index
 * that is not an integer in 0..C-1 (the negated test also catches NaN). */
int msd_cross_entropy(msd_tensor *logits, msd_tensor *target, msd_tensor **out)
{
    char b1[64], b2[64];
    if (logits->ndim != 2 || logits->shape[0] < 1 || logits->shape[1] < 1)
        return msd_error(MSD_ERR_SHAPE, "cross_entropy: expected logits (N,C) with N, C >= 1, "
                                        "got %s (target %s)",
                         msd_tensor_shape_str(b1, sizeof b1, logits),
                         msd_tensor_shape_str(b2, sizeof b2, target));
    int N = logits->shape[0], C = logits->shape[1], probs;
    if (target->ndim == 1 && target->shape[0] == N)
        probs = 0;
    else if (msd_tensor_same_shape(target, logits))
        probs = 1;
    else
        return msd_error(MSD_ERR_SHAPE, "cross_entropy: logits %s need a target (%d) of class "
                                        "indices or (%d,%d) of probabilities, got %s",
                         msd_tensor_shape_str(b1, sizeof b1, logits), N, N, C,
                         msd_tensor_shape_str(b2, sizeof b2, target));
    if (!probs) {
        const float *t = msd_tensor_data(target);
        for (int n = 0; n < N; n++)
            if (!(t[n] >= 0 && t[n] < C && t[n] == floorf(t[n])))
                return msd_error(MSD_ERR_ARG, "cross_entropy: target %d holds %g, not a class "
                                              "index in 0..%d (0-based) for logits %s",
                                 n, t[n], C - 1, msd_tensor_shape_str(b1, sizeof b1, logits));
    }
    int nshape[1] = { N };
    msd_tensor *o = msd_tensor_empty(0, NULL), *lse = msd_tensor_empty(1, nshape);
    int rc = MSD_ERR_MEM;
    if (!o || !lse)
        goto fail;
    msd_cross_entropy_forward(msd_tensor_data(o), msd_tensor_data(lse), msd_tensor_data(logits),
                              msd_tensor_data(target), probs, N, C);
    /* class indices are not differentiable: then only the logits are inputs, and the
     * indices are kept alive as saved[1] instead (saved[0]: lse) */
    msd_tensor *in[2] = { logits, target };
    msd_node *node;
    if ((rc = msd_autograd_record(o, MSD_OP_CROSS_ENTROPY, probs ? 2 : 1, in, &node)) != MSD_OK)
        goto fail;
    if (node) {
        node->iarg[0] = probs;
        msd_node_save(node, 0, lse);
        if (!probs)
            msd_node_save(node, 1, target);
    }
    msd_tensor_release(lse);
    *out = o;
    return MSD_OK;
fail:
    msd_tensor_release(o);
    msd_tensor_release(lse);
    return rc;
}

int msd_grad_cross_entropy(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx)
{
    int probs = n->iarg[0];
    const msd_tensor *logits = n->in[0];
    const msd_tensor *target = probs ? n->in[1] : n->saved[1];
    msd_cross_entropy_backward(dx[0] ? msd_tensor_data(dx[0]) : NULL,
                               probs && dx[1] ? msd_tensor_data(dx[1]) : NULL,
                               msd_tensor_data(dy)[0], msd_tensor_data(logits),
                               msd_tensor_data(target), msd_tensor_data(n->saved[0]), probs,
                               logits->shape[0], logits->shape[1]);
    return MSD_OK;
}
