/* minisd: optimizer kernels (Adam, AdamW, SGD) and the EMA of weights.
 *
 * Each kernel updates one parameter array in place together with its state
 * arrays; the state itself (moments, momentum buffers, step counts) is owned
 * by the caller (the Lua optimizers keep it in tensors so it can be saved
 * with checkpoints). The per-element arithmetic follows PyTorch 1.13's
 * single-tensor implementations in float32, with the per-step scalars
 * (bias corrections, step size) computed in double and rounded to float the
 * way PyTorch passes Python scalars to its float kernels. */
#ifndef MSD_OPTIM_H
#define MSD_OPTIM_H

#include <stddef.h>

#include "tensor.h"

/* Hyperparameters of torch.optim.Adam / AdamW. */
typedef struct msd_adam_hparams {
    double lr;           /* >= 0 */
    double beta1, beta2; /* each in [0, 1) */
    double eps;          /* >= 0 */
    double weight_decay; /* >= 0 */
    int decoupled;       /* 0: Adam (g += wd p); 1: AdamW (p *= 1 - lr wd) */
} msd_adam_hparams;

/* One Adam/AdamW step on n elements; `step` is the new step count (1 for
 * the first step). param, exp_avg, exp_avg_sq: (n), updated in place;
 * grad: (n). With bc1 = 1 - beta1^step, bc2 = 1 - beta2^step:
 *   g = grad (+ wd * param for Adam);  param *= 1 - lr wd (AdamW)
 *   exp_avg = beta1 exp_avg + (1 - beta1) g
 *   exp_avg_sq = beta2 exp_avg_sq + (1 - beta2) g^2
 *   param -= lr / bc1 * exp_avg / (sqrt(exp_avg_sq) / sqrt(bc2) + eps)
 * Returns MSD_OK, or MSD_ERR_ARG for step < 1 or a hyperparameter out of
 * range (nothing is modified then). */
int msd_adam_step(float *param, float *exp_avg, float *exp_avg_sq, const float *grad, size_t n,
                  long step, const msd_adam_hparams *h);

/* Hyperparameters of torch.optim.SGD. */
typedef struct msd_sgd_hparams {
    double lr;           /* >= 0 */
    double momentum;     /* >= 0 */
    double dampening;    /* any value; 0 by default */
    double weight_decay; /* >= 0 */
    int nesterov;        /* needs momentum > 0 and dampening == 0 */
} msd_sgd_hparams;

/* One SGD step on n elements. param: (n), updated in place; grad: (n);
 * momentum_buf: (n) or NULL when momentum == 0. `first` is non-zero on the
 * first step of this parameter, when the buffer is initialised with the
 * gradient (as PyTorch does: no dampening on that step):
 *   d = grad (+ wd * param)
 *   buf = first ? d : momentum buf + (1 - dampening) d
 *   d = nesterov ? d + momentum buf : buf          (momentum > 0 only)
 *   param -= lr d
 * Returns MSD_OK or MSD_ERR_ARG (bad hyperparameters, missing buffer). */
int msd_sgd_step(float *param, float *momentum_buf, const float *grad, size_t n, int first,
                 const msd_sgd_hparams *h);

/* Exponential moving average of weights: ema = decay ema + (1 - decay) p
 * over n elements. decay must lie in [0, 1]: MSD_ERR_ARG otherwise. */
int msd_ema_update(float *ema, const float *p, size_t n, double decay);

#endif
