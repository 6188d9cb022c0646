/* minisd: the diffusion noise schedule, forward noising and the per-step
 * maths of the samplers (DDPM, DDIM). The loops over steps live in Lua
 * (lua/minisd/sched/); everything that touches every element is here.
 *
 * Timesteps follow the seed model (DeepLearning.AI "How Diffusion Models
 * Work"): tables are indexed t = 0..T (T + 1 entries), a sample is noised at
 * t in 1..T, and alphas_cumprod[0] = 1 means "no noise".
 *
 * References: DDPM, Ho et al. 2020 (arXiv:2006.11239); DDIM, Song et al.
 * 2021 (arXiv:2010.02502); cosine schedule, Nichol & Dhariwal 2021
 * (arXiv:2102.09672). */
#ifndef MSD_DIFFUSION_H
#define MSD_DIFFUSION_H

#include "tensor.h"

/* ---- schedules ----------------------------------------------------------
 * Every builder fills betas[0..T] (T + 1 doubles, caller-owned) and returns
 * MSD_OK, or MSD_ERR_ARG (T < 1, betas outside (0, 1), NULL pointer). */

/* The seed's linear schedule: betas[t] = (beta_end - beta_start) * t / T +
 * beta_start for t = 0..T (torch.linspace(0, 1, T + 1) scaled). Note that
 * betas[0] = beta_start is not 0: the seed keeps it in its cumulative
 * product (see msd_schedule_cumprod). */
int msd_schedule_linear(double *betas, int T, double beta_start, double beta_end);

/* Stable Diffusion's "scaled_linear": betas[t] = (sqrt(beta_start) +
 * (sqrt(beta_end) - sqrt(beta_start)) * t / T)^2, t = 0..T. */
int msd_schedule_scaled_linear(double *betas, int T, double beta_start, double beta_end);

/* Nichol & Dhariwal 2021, eq. 17: alpha_bar(t) = f(t) / f(0) with
 * f(t) = cos((t/T + s) / (1 + s) * pi/2)^2, and betas[t] = min(1 -
 * alpha_bar(t) / alpha_bar(t-1), max_beta) for t = 1..T; betas[0] = 0 so that
 * the cumulative product is alpha_bar itself. The paper uses s = 0.008 and
 * max_beta = 0.999. MSD_ERR_ARG unless s >= 0 and 0 < max_beta < 1. */
int msd_schedule_cosine(double *betas, int T, double s, double max_beta);

/* alphas[t] = 1 - betas[t] and alphas_cumprod[t] = exp(sum_{k=0..t}
 * log(alphas[k])) for t = 1..T, with alphas_cumprod[0] = 1: exactly the
 * seed's `ab_t = torch.cumsum(a_t.log(), 0).exp(); ab_t[0] = 1`, summed in
 * double. The product starts at k = 0, so for the linear schedule
 * alphas_cumprod[1] = (1 - betas[0]) (1 - betas[1]). Arrays hold T + 1
 * doubles; MSD_ERR_ARG if a beta is outside [0, 1). */
int msd_schedule_cumprod(double *alphas, double *alphas_cumprod, const double *betas, int T);

/* ---- step coefficients -------------------------------------------------- */

/* DDIM's sigma (Song et al. 2021, eq. 16): eta * sqrt((1 - ab_prev) /
 * (1 - ab)) * sqrt(1 - ab / ab_prev). eta = 0 is the deterministic DDIM,
 * eta = 1 the DDPM posterior's std. 0 when ab >= 1. */
double msd_ddim_sigma(double alpha_cumprod, double alpha_cumprod_prev, double eta);

/* ---- raw kernels ----------------------------------------------------------
 * Contiguous float arrays; outputs first, then const inputs, then sizes.
 * Element maths runs in double and is rounded once. No autograd: the noised
 * sample and the sampler states are inputs to the model, never parameters. */

/* Forward noising q(x_t | x_0) (Ho et al. 2020, eq. 4), one t per sample:
 * out[b, i] = coef_a[b] * x0[b, i] + coef_b[b] * noise[b, i] for b < B,
 * i < per_sample; coef_a = sqrt(alphas_cumprod[t_b]) and coef_b =
 * sqrt(1 - alphas_cumprod[t_b]). out may alias x0 or noise. */
void msd_add_noise_forward(float *out, const float *x0, const float *noise, const float *coef_a,
                           const float *coef_b, int B, size_t per_sample);

/* One DDPM ancestral step from t to prev (Ho et al. 2020, eq. 11 and
 * Algorithm 2, line 4), n elements:
 *   pred_x0 = (x - sqrt(1 - ab) eps) / sqrt(ab)                  (eq. 4 solved for x0)
 *   prev    = (x - (1 - alpha) / sqrt(1 - ab) eps) / sqrt(alpha) + sigma z
 * alpha: the step's alpha (ab / ab_prev; alphas[t] for a unit step), ab:
 * alphas_cumprod[t], sigma: the std of the added noise. z may be NULL (no
 * noise, the last step). pred_x0 may be NULL. */
void msd_ddpm_step_forward(float *prev, float *pred_x0, const float *x, const float *eps,
                           const float *z, double alpha, double alpha_cumprod, double sigma,
                           size_t n);

/* One DDIM step from t to prev (Song et al. 2021, eq. 12), n elements:
 *   pred_x0 = (x - sqrt(1 - ab) eps) / sqrt(ab)
 *   prev    = sqrt(ab_prev) pred_x0 + sqrt(1 - ab_prev - sigma^2) eps + sigma z
 * sigma from msd_ddim_sigma; z may be NULL (z = 0). pred_x0 may be NULL. */
void msd_ddim_step_forward(float *prev, float *pred_x0, const float *x, const float *eps,
                           const float *z, double alpha_cumprod, double alpha_cumprod_prev,
                           double sigma, size_t n);

/* ---- tensor level ---------------------------------------------------------
 * Inputs first, outputs last; on success each non-NULL output slot gets a
 * new tensor (one reference for the caller) with no autograd history; on
 * error nothing is written and the message names the function and every
 * shape. MSD_ERR_SHAPE for mismatched shapes, MSD_ERR_ARG for bad values. */

/* x_t for a batch x0 (B, ...) with per-sample coefficients coef_a[0..B),
 * coef_b[0..B) (see msd_add_noise_forward); noise has x0's shape and
 * n_coef must equal B (the first dim of x0; 1 for a 0-dim x0). */
int msd_add_noise(msd_tensor *x0, msd_tensor *noise, const float *coef_a, const float *coef_b,
                  int n_coef, msd_tensor **out);

/* DDPM variance choices (Ho et al. 2020, sec. 3.2): sigma_t^2 = beta_t
 * (the seed's choice) or the posterior's beta~_t = (1 - ab_prev) /
 * (1 - ab) beta_t (eq. 7; diffusers' default "fixed_small"). */
typedef enum msd_ddpm_variance {
    MSD_DDPM_FIXED_LARGE = 0,
    MSD_DDPM_FIXED_SMALL = 1
} msd_ddpm_variance;

/* A DDPM step on tensors: x, eps and z (NULL: no noise) share one shape.
 * alpha is the step's alpha (see msd_ddpm_step_forward), beta = 1 - alpha;
 * sigma^2 is beta or (1 - ab_prev) / (1 - ab) beta per `variance`.
 * MSD_ERR_ARG unless 0 < alpha <= 1 and 0 < ab < 1 and 0 < ab_prev <= 1.
 * pred_x0 may be NULL. */
int msd_ddpm_step(msd_tensor *x, msd_tensor *eps, msd_tensor *z, double alpha,
                  double alpha_cumprod, double alpha_cumprod_prev, msd_ddpm_variance variance,
                  msd_tensor **prev, msd_tensor **pred_x0);

/* A DDIM step on tensors with sigma = msd_ddim_sigma(ab, ab_prev, eta):
 * x, eps and z (NULL: z = 0) share one shape. MSD_ERR_ARG unless
 * 0 < ab < 1, ab <= ab_prev <= 1 and eta >= 0, or if sigma > 0 and
 * sigma^2 > 1 - ab_prev (eta too large). pred_x0 may be NULL. */
int msd_ddim_step(msd_tensor *x, msd_tensor *eps, msd_tensor *z, double alpha_cumprod,
                  double alpha_cumprod_prev, double eta, msd_tensor **prev,
                  msd_tensor **pred_x0);

#endif
