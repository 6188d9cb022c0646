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
 * (W-1)s-2p+kw). Both go through msd_sgemm (gemm.h) over groups of images. */
int msd_conv2d(msd_tensor *x, msd_tensor *w, msd_tensor *b, int stride, int padding,
               msd_tensor **out);
int msd_conv_transpose2d(msd_tensor *x, msd_tensor *w, msd_tensor *b, int stride, int padding,
                         msd_tensor **out);
/* Inference only (records no node; MSD_ERR_STATE when grad mode is on and
 * an input requires grad): gelu(batch_norm2d(conv2d(x, w, b), eval)) when
 * gelu, else without the GELU, in one pass over the output: the BatchNorm's
 * per-channel scale and shift and the GELU are applied while each image's
 * output is in cache. The same bits as the three ops one after another.
 * running_mean and running_var are required; bn_weight, bn_bias may be NULL. */
int msd_conv2d_bn_act(msd_tensor *x, msd_tensor *w, msd_tensor *b, int stride, int padding,
                      msd_tensor *bn_weight, msd_tensor *bn_bias, msd_tensor *running_mean,
                      msd_tensor *running_var, float eps, int gelu, msd_tensor **out);
/* The calling thread's cache of transformed kernels (ops_conv.c): a conv2d
 * forward that records no gradient keeps its Winograd kernels there, checked
 * against a copy of the weights at every use. Its size and use counts, and a
 * way to free it (it is freed when the thread exits). */
typedef struct msd_conv_cache_stats {
    int entries;
    size_t bytes;
    unsigned long long hits, misses;
} msd_conv_cache_stats;
msd_conv_cache_stats msd_conv_cache_get_stats(void);
void msd_conv_cache_clear(void);
/* Raw kernels. x (N,Cin,H,W); b (Cout) or NULL. conv2d: w (Cout,Cin,kh,kw),
 * y (N,Cout,Ho,Wo) with Ho = (H+2pad-kh)/stride+1. conv_transpose2d:
 * w (Cin,Cout,kh,kw), y (N,Cout,(H-1)stride-2pad+kh, ...). Backward ADDS
 * into dx (x's shape), dw (w's shape), db (Cout); any of them may be NULL.
 * Scratch comes from the caching allocator: MSD_OK or MSD_ERR_MEM. */
int msd_conv2d_forward(float *y, const float *x, const float *w, const float *b, int N, int Cin,
                       int H, int W, int Cout, int kh, int kw, int stride, int pad);
int msd_conv2d_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                        const float *w, int N, int Cin, int H, int W, int Cout, int kh, int kw,
                        int stride, int pad);
int msd_conv_transpose2d_forward(float *y, const float *x, const float *w, const float *b, int N,
                                 int Cin, int H, int W, int Cout, int kh, int kw, int stride,
                                 int pad);
int msd_conv_transpose2d_backward(float *dx, float *dw, float *db, const float *dy,
                                  const float *x, const float *w, int N, int Cin, int H, int W,
                                  int Cout, int kh, int kw, int stride, int pad);

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
/* gelu(batch_norm2d(...)) as one op, for training: the same bits as the two
 * ops, with one pass over the output instead of two, and the BatchNorm's
 * output neither kept for the backward (it is recomputed from x there) nor
 * written to memory. */
int msd_batch_norm2d_gelu(msd_tensor *x, msd_tensor *weight, msd_tensor *bias,
                          msd_tensor *running_mean, msd_tensor *running_var, int training,
                          float momentum, float eps, msd_tensor **out);
/* A sum over the processes of a data-parallel job, for synchronised BatchNorm: sum
 * replaces buf[0..n) by the element-wise sum of every process's buf (the same n on all; the
 * same result on all, bit for bit) and returns MSD_OK, or an error code after msd_error
 * (a peer that died or timed out). Every process must make the same calls in the same
 * order. The core calls it on the thread that called the op or msd_backward, and knows
 * nothing of how the sum is made (minisd.dist's binding uses MPI); ud is passed through. */
typedef struct msd_reducer {
    int (*sum)(double *buf, int n, void *ud);
    void *ud;
} msd_reducer;
/* batch_norm2d in training mode with the statistics of the whole job (SyncBatchNorm): x is
 * this process's share of a global batch; the per-channel mean and biased variance are
 * those of every process's x together (the sums of x, then of (x - mean)^2, reduced with
 * sync: the same two passes in double as msd_batch_norm2d, whose bits it gives when sync
 * sums over one process), the running variance is unbiased with the global count, and the
 * backward reduces the per-channel sums of dy and dy * xhat, so that dx is the gradient of
 * a loss summed over the processes. dweight and dbias get this process's part (a
 * data-parallel job sums the gradients). With gelu, GELU is applied as in
 * msd_batch_norm2d_gelu. sync must stay valid until the graph is freed (the backward uses
 * it); it is called twice in forward (C + 1, then C values) and once in backward (2C),
 * unless no input needs a gradient. */
int msd_batch_norm2d_sync(msd_tensor *x, msd_tensor *weight, msd_tensor *bias,
                          msd_tensor *running_mean, msd_tensor *running_var, float momentum,
                          float eps, int gelu, const msd_reducer *sync, msd_tensor **out);
int msd_group_norm(msd_tensor *x, int groups, msd_tensor *weight, msd_tensor *bias, float eps,
                   msd_tensor **out);
/* Kernels. BatchNorm2d: x, y, dx, dy (N,C,HW); gamma, beta, dgamma, dbeta
 * (C) or NULL (no affine / no gradient wanted); mean, rstd (C), rstd =
 * 1/sqrt(var + eps). stats writes the batch mean and BIASED variance (C).
 * backward with training=1 treats mean and rstd as functions of x (batch
 * stats); with training=0 as constants (running stats). */
void msd_batchnorm_stats(float *mean, float *var, const float *x, int N, int C, int HW);
/* rstd[c] = 1/sqrt(var[c] + eps), computed in double (rstd may be var). */
void msd_batchnorm_rstd(float *rstd, const float *var, int C, float eps);
/* The forward's per-channel y = x a + b: a = rstd gamma, b = beta - mean a.
 * Exported so that a fused op (msd_conv2d_bn_act) applies the same bits. */
void msd_batchnorm_fold(float *a, float *b, const float *mean, const float *rstd,
                        const float *gamma, const float *beta, int C);
void msd_batchnorm_forward(float *y, const float *x, const float *mean, const float *rstd,
                           const float *gamma, const float *beta, int N, int C, int HW);
void msd_batchnorm_backward(float *dx, float *dgamma, float *dbeta, const float *dy,
                            const float *x, const float *gamma, const float *mean,
                            const float *rstd, int training, int N, int C, int HW);
/* GroupNorm. x, y, dx, dy: (N, C, HW); gamma, beta, dgamma, dbeta: (C) or
 * NULL; mean, rstd: (N, G), written by forward for backward. Backward ADDS
 * to dx, dgamma, dbeta (each may be NULL). */
void msd_groupnorm_forward(float *y, float *mean, float *rstd, const float *x,
                           const float *gamma, const float *beta, int N, int C, int HW, int G,
                           float eps);
void msd_groupnorm_backward(float *dx, float *dgamma, float *dbeta, const float *dy,
                            const float *x, const float *gamma, const float *mean,
                            const float *rstd, int N, int C, int HW, int G);

/* ---- pooling (ops_pool.c): x (N,C,H,W), window k, stride s, no padding;
 * out (N,C,(H-k)/s+1,(W-k)/s+1). */
int msd_max_pool2d(msd_tensor *x, int k, int stride, msd_tensor **out);
int msd_avg_pool2d(msd_tensor *x, int k, int stride, msd_tensor **out);
/* Raw kernels over NC = N*C planes of H x W; y and idx (NC,Ho,Wo). idx
 * receives each window's argmax as a float index into its H*W plane (the
 * first maximum; NULL to skip). Backward ADDS into dx (NC,H,W). */
void msd_max_pool2d_forward(float *y, float *idx, const float *x, int NC, int H, int W,
                            int k, int s);
void msd_max_pool2d_backward(float *dx, const float *dy, const float *idx, int NC, int H, int W,
                             int k, int s);
void msd_avg_pool2d_forward(float *y, const float *x, int NC, int H, int W, int k, int s);
void msd_avg_pool2d_backward(float *dx, const float *dy, int NC, int H, int W, int k, int s);

/* ---- activations (ops_act.c): GELU is the exact erf form. */
int msd_gelu(msd_tensor *x, msd_tensor **out);
int msd_relu(msd_tensor *x, msd_tensor **out);
/* Kernels: y, x, dx, dy of n elements; backward ADDS to dx. */
void msd_gelu_forward(float *y, const float *x, size_t n);
/* y = gelu(y) in place, on the calling thread (for fused epilogues). */
void msd_gelu_forward_inplace(float *y, size_t n);
/* t[i] = dy[i] * gelu'(t[i]): the GELU's input gradient over its input
 * values t, in place (msd_gelu_backward's bits, written instead of added). */
void msd_gelu_backward_inplace(float *t, const float *dy, size_t n);
void msd_gelu_backward(float *dx, const float *dy, const float *x, size_t n);
void msd_relu_forward(float *y, const float *x, size_t n);
void msd_relu_backward(float *dx, const float *dy, const float *x, size_t n);

/* ---- linear (ops_linear.c): x (..., in), w (out, in), b (out) or NULL;
 * y = x w^T + b, shape (..., out). */
int msd_linear(msd_tensor *x, msd_tensor *w, msd_tensor *b, msd_tensor **out);
/* Raw kernels: x (M,in), w (out,in), b (out) or NULL, y (M,out). Backward
 * ADDS into dx (M,in), dw (out,in), db (out); any may be NULL. */
void msd_linear_forward(float *y, const float *x, const float *w, const float *b, int M, int in,
                        int out);
void msd_linear_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                         const float *w, int M, int in, int out);

/* ---- losses (ops_loss.c), mean reduction, 0-dim results.
 * mse_loss: a and b of the same shape.
 * cross_entropy: logits (N,C); target (N) holding 0-based class indices
 * (as floats), or (N,C) class probabilities. */
int msd_mse_loss(msd_tensor *a, msd_tensor *b, msd_tensor **out);
int msd_cross_entropy(msd_tensor *logits, msd_tensor *target, msd_tensor **out);
/* Kernels. mse: a, b, da, db of n > 0 elements; *loss = mean (a-b)^2;
 * backward ADDS dloss * d/da, d/db into da, db (either may be NULL).
 * cross_entropy: logits, dlogits (N,C); target (N) of valid 0-based indices
 * (probs = 0) or (N,C) probabilities (probs = 1), dtarget (N,C) or NULL;
 * lse (N), the row log-sum-exp, written by forward for backward. */
void msd_mse_forward(float *loss, const float *a, const float *b, size_t n);
void msd_mse_backward(float *da, float *db, float dloss, const float *a, const float *b,
                      size_t n);
void msd_cross_entropy_forward(float *loss, float *lse, const float *logits,
                               const float *target, int probs, int N, int C);
void msd_cross_entropy_backward(float *dlogits, float *dtarget, float dloss,
                                const float *logits, const float *target, const float *lse,
                                int probs, int N, int C);

#endif
