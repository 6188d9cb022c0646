/* Optimizer kernels: Adam/AdamW, SGD, EMA. The order of the float
 * operations mirrors PyTorch 1.13's _single_tensor_adam / _single_tensor_sgd
 * so that results agree to the last bits in most elements; the scalars that
 * PyTorch computes in Python (double) are computed in double here and then
 * rounded to float, as its kernels do with a Python scalar argument. */
#include <math.h>

#include "optim.h"

/* MSD_ERR_ARG naming adam_step or adamw_step for a step < 1 or a hyperparameter out of
 * range; every test is written !(ok) so that a NaN fails it too. */
static int check_adam(const msd_adam_hparams *h, long step)
{
    const char *op = h->decoupled ? "adamw_step" : "adam_step";
    if (step < 1)
        return msd_error(MSD_ERR_ARG, "%s: step must be >= 1, got %ld", op, step);
    if (!(h->lr >= 0))
        return msd_error(MSD_ERR_ARG, "%s: invalid learning rate %g (must be >= 0)", op, h->lr);
    if (!(h->eps >= 0))
        return msd_error(MSD_ERR_ARG, "%s: invalid eps %g (must be >= 0)", op, h->eps);
    if (!(h->beta1 >= 0 && h->beta1 < 1) || !(h->beta2 >= 0 && h->beta2 < 1))
        return msd_error(MSD_ERR_ARG, "%s: invalid betas (%g, %g) (each must be in [0, 1))", op,
                         h->beta1, h->beta2);
    if (!(h->weight_decay >= 0))
        return msd_error(MSD_ERR_ARG, "%s: invalid weight_decay %g (must be >= 0)", op,
                         h->weight_decay);
    return MSD_OK;
}

/* param, exp_avg, exp_avg_sq (n): updated in place (=); grad (n): read only. step: the new
 * step count (1 on the first step), which sets the bias corrections. Errors are checked
 * first, so a refused call modifies nothing. */
int msd_adam_step(float *param, float *exp_avg, float *exp_avg_sq, const float *grad, size_t n,
                  long step, const msd_adam_hparams *h)
{
    int rc = check_adam(h, step);
    if (rc != MSD_OK)
        return rc;
    double bc1 = 1.0 - pow(h->beta1, (double)step);
    double bc2 = 1.0 - pow(h->beta2, (double)step);
    /* Each float below is one Python scalar of torch's update. */
    const float b1 = (float)h->beta1, b2 = (float)h->beta2;
    const float one_m_b1 = (float)(1.0 - h->beta1), one_m_b2 = (float)(1.0 - h->beta2);
    const float wd = (float)h->weight_decay, eps = (float)h->eps;
    const float neg_step_size = (float)(-(h->lr / bc1));
    const float bc2_sqrt = (float)sqrt(bc2);
    const float shrink = (float)(1.0 - h->lr * h->weight_decay); /* AdamW's decay */
    const int coupled_wd = !h->decoupled && h->weight_decay != 0;
    const int decoupled_wd = h->decoupled && h->weight_decay != 0;

    /* Each statement is one line of torch's _single_tensor_adam (param.mul_, grad.add,
     * exp_avg.mul_.add_, exp_avg_sq.mul_.addcmul_, the denominator, param.addcdiv_), its
     * operands in torch's order: regrouping them, or a compiler fusing them into FMAs,
     * changes the last bits. */
    for (size_t i = 0; i < n; i++) {
        float p = param[i], g = grad[i];
        if (decoupled_wd)
            p = p * shrink;
        if (coupled_wd)
            g = g + wd * p;
        float m = exp_avg[i] * b1 + one_m_b1 * g;
        float v = exp_avg_sq[i] * b2 + one_m_b2 * g * g;
        /* eps is added after the bias-corrected square root, as torch does */
        float denom = sqrtf(v) / bc2_sqrt + eps;
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
        param[i] = p + neg_step_size * m / denom;
    }
    return MSD_OK;
}

/* param (n): updated in place; momentum_buf (n): updated in place, and required when
 * momentum != 0 (NULL is fine without momentum); grad (n): read only. first: this
 * parameter's first step, when the buffer is set to d itself (no dampening), as torch
 * does. MSD_ERR_ARG before anything is modified: lr, momentum or weight_decay < 0 or NaN,
 * nesterov without momentum > 0 and dampening 0, momentum without a buffer. */
int msd_sgd_step(float *param, float *momentum_buf, const float *grad, size_t n, int first,
                 const msd_sgd_hparams *h)
{
    if (!(h->lr >= 0))
        return msd_error(MSD_ERR_ARG, "sgd_step: invalid learning rate %g (must be >= 0)", h->lr);
    if (!(h->momentum >= 0))
        return msd_error(MSD_ERR_ARG, "sgd_step: invalid momentum %g (must be >= 0)",
                         h->momentum);
    if (!(h->weight_decay >= 0))
        return msd_error(MSD_ERR_ARG, "sgd_step: invalid weight_decay %g (must be >= 0)",
                         h->weight_decay);
    if (h->nesterov && (h->momentum <= 0 || h->dampening != 0))
        return msd_error(MSD_ERR_ARG,
                         "sgd_step: nesterov needs momentum > 0 and dampening 0 (got momentum "
                         "%g, dampening %g)",
                         h->momentum, h->dampening);
    const int use_momentum = h->momentum != 0;
    if (use_momentum && !momentum_buf)
        return msd_error(MSD_ERR_ARG, "sgd_step: momentum %g needs a momentum buffer",
                         h->momentum);
    const float wd = (float)h->weight_decay, mom = (float)h->momentum;
    const float one_m_damp = (float)(1.0 - h->dampening), neg_lr = (float)(-h->lr);

    for (size_t i = 0; i < n; i++) {
        float p = param[i], d = grad[i];
        if (h->weight_decay != 0)
            d = d + wd * p;
        if (use_momentum) {
            float buf = first ? d : momentum_buf[i] * mom + one_m_damp * d;
            momentum_buf[i] = buf;
            d = h->nesterov ? d + mom * buf : buf;
        }
        param[i] = p + neg_lr * d;
    }
    return MSD_OK;
}

/* ema (n) = decay ema + (1 - decay) p, in place; p (n) read only. 1 - decay is formed in
 * double and rounded once: from decay already rounded to float it would carry that rounding
 * error, 1.7e-4 relative at decay 0.9999. MSD_ERR_ARG unless 0 <= decay <= 1. */
int msd_ema_update(float *ema, const float *p, size_t n, double decay)
{
    if (!(decay >= 0 && decay <= 1))
        return msd_error(MSD_ERR_ARG, "ema_update: decay %g must be in [0, 1]", decay);
    const float a = (float)decay, b = (float)(1.0 - decay);
    for (size_t i = 0; i < n; i++)
        ema[i] = a * ema[i] + b * p[i];
    return MSD_OK;
}
