/* minisd: tensor ops with autograd, and the raw kernels behind them.
 *
 * Tensor-level ops take their inputs first and an output slot `out` last:
 * on success *out receives a new tensor (one reference for the caller) and
 * MSD_OK is returned; on error *out is left untouched and a negative code is
 * returned with a message naming the op and every shape. When grad mode is
 * on and an input requires grad, the op records a node (autograd.h).
 * Dims are 0-based in C (the Lua API is 1-based).
 *
 * Raw kernels (`msd_<op>_forward` / `msd_<op>_backward`) work on contiguous
 * float arrays: outputs first, then const inputs, then sizes. Backward
 * kernels ADD into their gradient outputs. */
#ifndef MSD_OPS_H
#define MSD_OPS_H

#include "autograd.h"
#include "tensor.h"

/* ---- elementwise, reductions, shape (ops_elementwise.c) ----------------
 * a and b broadcast as in NumPy/PyTorch: shapes are aligned at the right,
 * and each pair of sizes must be equal or one of them 1. */
int msd_add(msd_tensor *a, msd_tensor *b, msd_tensor **out);
int msd_sub(msd_tensor *a, msd_tensor *b, msd_tensor **out);
int msd_mul(msd_tensor *a, msd_tensor *b, msd_tensor **out);
int msd_div(msd_tensor *a, msd_tensor *b, msd_tensor **out);
int msd_add_scalar(msd_tensor *x, float s, msd_tensor **out); /* x + s */
int msd_mul_scalar(msd_tensor *x, float s, msd_tensor **out); /* x * s */
int msd_abs(msd_tensor *x, msd_tensor **out);
int msd_sqrt(msd_tensor *x, msd_tensor **out);
int msd_exp(msd_tensor *x, msd_tensor **out);
/* Sum / mean of all elements: a 0-dim tensor. */
int msd_sum(msd_tensor *x, msd_tensor **out);
int msd_mean(msd_tensor *x, msd_tensor **out);
/* Min / max of all elements (no autograd); error on an empty tensor. */
int msd_min(const msd_tensor *x, float *value);
int msd_max(const msd_tensor *x, float *value);
/* A view with another shape (one dim may be -1); gradients flow back. */
int msd_reshape(msd_tensor *x, int ndim, const int *shape, msd_tensor **out);
/* Elements [start, start+len) along dim: a view for dim 0, a copy else. */
int msd_narrow(msd_tensor *x, int dim, int start, int len, msd_tensor **out);
/* Concatenation of n tensors along dim; all other sizes must agree. */
int msd_cat(int n, msd_tensor *const *xs, int dim, msd_tensor **out);

/* ---- convolutions (ops_conv.c) -----------------------------------------
 * x (N,Cin,H,W). conv2d: w (Cout,Cin,kh,kw), b (Cout) or NULL;
 * out (N,Cout,(H+2p-kh)/s+1,(W+2p-kw)/s+1). conv_transpose2d: w
 * (Cin,Cout,kh,kw) as PyTorch's ConvTranspose2d; out (N,Cout,(H-1)s-2p+kh,
 * (W-1)s-2p+kw). Both go through cblas_sgemm over the whole batch. */
int msd_conv2d(msd_tensor *x, msd_tensor *w, msd_tensor *b, int stride, int padding,
               msd_tensor **out);
int msd_conv_transpose2d(msd_tensor *x, msd_tensor *w, msd_tensor *b, int stride, int padding,
                         msd_tensor **out);

/* ---- normalisation (ops_norm.c) ----------------------------------------
 * batch_norm2d: x (N,C,H,W); weight, bias (C) or NULL; running_mean,
 * running_var (C) or NULL. Training: normalise with the batch mean and
 * biased variance, and update the running stats in place with momentum
 * (running = (1-m) running + m batch, unbiased variance), as PyTorch.
 * Eval: normalise with the running stats (required then).
 * group_norm: x (N,C,...) with C divisible by groups; weight, bias (C). */
int msd_batch_norm2d(msd_tensor *x, msd_tensor *weight, msd_tensor *bias,
                     msd_tensor *running_mean, msd_tensor *running_var, int training,
                     float momentum, float eps, msd_tensor **out);
int msd_group_norm(msd_tensor *x, int groups, msd_tensor *weight, msd_tensor *bias, float eps,
                   msd_tensor **out);

/* ---- pooling (ops_pool.c): x (N,C,H,W), window k, stride s, no padding;
 * out (N,C,(H-k)/s+1,(W-k)/s+1). */
int msd_max_pool2d(msd_tensor *x, int k, int stride, msd_tensor **out);
int msd_avg_pool2d(msd_tensor *x, int k, int stride, msd_tensor **out);

/* ---- activations (ops_act.c): GELU is the exact erf form. */
int msd_gelu(msd_tensor *x, msd_tensor **out);
int msd_relu(msd_tensor *x, msd_tensor **out);

/* ---- linear (ops_linear.c): x (..., in), w (out, in), b (out) or NULL;
 * y = x w^T + b, shape (..., out). */
int msd_linear(msd_tensor *x, msd_tensor *w, msd_tensor *b, msd_tensor **out);

/* ---- losses (ops_loss.c), mean reduction, 0-dim results.
 * mse_loss: a and b of the same shape.
 * cross_entropy: logits (N,C); target (N) holding 0-based class indices
 * (as floats), or (N,C) class probabilities. */
int msd_mse_loss(msd_tensor *a, msd_tensor *b, msd_tensor **out);
int msd_cross_entropy(msd_tensor *logits, msd_tensor *target, msd_tensor **out);

#endif
