/* Linear: y = x w^T + b over the last dim, through msd_sgemm. Leading
 * dims of x are flattened into M rows.
 *
 * Shapes: x (..., in), w (out, in) (PyTorch's layout), b (out) or none, y (..., out).
 * Backward needs x and w, which the node holds as its inputs: nothing else is saved. */
#include "gemm.h"
#include "ops.h"

/* y (M, out) = x (M, in) w^T + b; b may be NULL. */
void msd_linear_forward(float *y, const float *x, const float *w, const float *b, int M, int in,
                        int out)
{
    if (M == 0 || out == 0)
        return;
    for (int i = 0; i < M; i++)
        for (int o = 0; o < out; o++)
            y[(size_t)i * out + o] = b ? b[o] : 0.0f;
    if (in == 0)
        return;
    /* y (M, out) = b + x (M, in) w^T (in, out) */
    msd_sgemm(0, 1, M, out, in, 1.0f, x, in, w, in, 1.0f, y, out);
}

/* Adds the gradients into dx (M, in), dw (out, in) and db (out), each skipped when NULL
 * (an input that does not require grad); db's column sums run in double. */
void msd_linear_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                         const float *w, int M, int in, int out)
{
    if (M == 0 || out == 0)
        return;
    if (dx && in > 0) /* dx (M, in) += dy (M, out) w (out, in) */
        msd_sgemm(0, 0, M, in, out, 1.0f, dy, out, w, in, 1.0f, dx, in);
    if (dw && in > 0) /* dw (out, in) += dy^T (out, M) x (M, in) */
        msd_sgemm(1, 0, out, in, M, 1.0f, dy, out, x, in, 1.0f, dw, in);
    if (db)
        for (int o = 0; o < out; o++) {
            double acc = 0;
            for (int i = 0; i < M; i++)
                acc += dy[(size_t)i * out + o];
            db[o] += (float)acc;
        }
}

int msd_linear(msd_tensor *x, msd_tensor *w, msd_tensor *b, msd_tensor **out)
{
    char bx[64], bw[64], bb[64];
    msd_tensor_shape_str(bx, sizeof bx, x);
    msd_tensor_shape_str(bw, sizeof bw, w);
    if (x->ndim < 1)
        return msd_error(MSD_ERR_SHAPE, "linear: input %s must have at least 1 dim", bx);
    if (w->ndim != 2)
        return msd_error(MSD_ERR_SHAPE, "linear: weight %s must be 2-D (out,in)", bw);
    int in = w->shape[1], nout = w->shape[0];
    if (x->shape[x->ndim - 1] != in)
        return msd_error(MSD_ERR_SHAPE,
                         "linear: input %s has %d features, weight %s expects %d", bx,
                         x->shape[x->ndim - 1], bw, in);
    if (b && (b->ndim != 1 || b->shape[0] != nout))
        return msd_error(MSD_ERR_SHAPE, "linear: bias %s must be [%d] for weight %s",
                         msd_tensor_shape_str(bb, sizeof bb, b), nout, bw);
    int os[MSD_MAX_DIMS];
    for (int d = 0; d < x->ndim; d++)
        os[d] = x->shape[d];
    os[x->ndim - 1] = nout;
    msd_tensor *y = msd_tensor_empty(x->ndim, os);
    if (!y)
        return MSD_ERR_MEM;
    int M = 1;
    for (int d = 0; d < x->ndim - 1; d++)
        M *= x->shape[d];
    msd_linear_forward(msd_tensor_data(y), msd_tensor_data(x), msd_tensor_data(w),
                       b ? msd_tensor_data(b) : NULL, M, in, nout);
    msd_tensor *ins[3] = { x, w, b };
    return msd_autograd_finish(y, MSD_OP_LINEAR, 3, ins, NULL, out);
}

int msd_grad_linear(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx)
{
    const msd_tensor *x = n->in[0], *w = n->in[1];
    int M = 1;
    for (int d = 0; d < x->ndim - 1; d++)
        M *= x->shape[d];
    msd_linear_backward(dx[0] ? msd_tensor_data(dx[0]) : NULL,
                        dx[1] ? msd_tensor_data(dx[1]) : NULL,
                        dx[2] ? msd_tensor_data(dx[2]) : NULL, msd_tensor_data(dy),
                        msd_tensor_data(x), msd_tensor_data(w), M, w->shape[1], w->shape[0]);
    return MSD_OK;
}
