/* minisd: noise schedules, forward noising and sampler step kernels.
 * See diffusion.h for the conventions (t = 0..T, alphas_cumprod[0] = 1).
 *
 * Schedules are double arrays of T + 1 entries; the kernels take contiguous float arrays of
 * n elements (x, eps, z, prev, pred_x0 all one shape) and do each element's maths in double,
 * rounding once on the store. Nothing here records autograd: sampling runs without it, and
 * the training loss only differentiates through the model's output. */
#include "diffusion.h"

#include <math.h>

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

/* ---- schedules ---------------------------------------------------------- */

/* MSD_ERR_ARG for a NULL table or T < 1. */
static int check_T(const char *what, const void *p, int T)
{
    if (!p)
        return msd_error(MSD_ERR_ARG, "%s: NULL output array", what);
    if (T < 1)
        return msd_error(MSD_ERR_ARG, "%s: T must be >= 1, got %d", what, T);
    return MSD_OK;
}

/* Both ends strictly inside (0, 1); written !(ok) so NaN is refused too. */
static int check_beta_range(const char *what, double beta_start, double beta_end)
{
    if (!(beta_start > 0 && beta_start < 1 && beta_end > 0 && beta_end < 1))
        return msd_error(MSD_ERR_ARG, "%s: beta_start %g and beta_end %g must lie in (0, 1)",
                         what, beta_start, beta_end);
    return MSD_OK;
}

int msd_schedule_linear(double *betas, int T, double beta_start, double beta_end)
{
    int rc = check_T("schedule_linear", betas, T);
    if (rc == MSD_OK)
        rc = check_beta_range("schedule_linear", beta_start, beta_end);
    if (rc != MSD_OK)
        return rc;
    /* The seed: (beta2 - beta1) * torch.linspace(0, 1, T + 1) + beta1. */
    for (int t = 0; t <= T; t++)
        betas[t] = (beta_end - beta_start) * ((double)t / T) + beta_start;
    return MSD_OK;
}

/* Linear in sqrt(beta), then squared (Stable Diffusion's schedule). betas (T + 1). */
int msd_schedule_scaled_linear(double *betas, int T, double beta_start, double beta_end)
{
    int rc = check_T("schedule_scaled_linear", betas, T);
    if (rc == MSD_OK)
        rc = check_beta_range("schedule_scaled_linear", beta_start, beta_end);
    if (rc != MSD_OK)
        return rc;
    double a = sqrt(beta_start), b = sqrt(beta_end);
    for (int t = 0; t <= T; t++) {
        double r = a + (b - a) * ((double)t / T);
        betas[t] = r * r;
    }
    return MSD_OK;
}

/* f(t) of Nichol & Dhariwal 2021, eq. 17. */
static double cosine_f(int t, int T, double s)
{
    double c = cos(((double)t / T + s) / (1.0 + s) * (M_PI / 2.0));
    return c * c;
}

/* betas (T + 1): betas[t] = 1 - f(t) / f(t - 1), the ratio of consecutive alpha_bar (f(0)
 * cancels), so that msd_schedule_cumprod gives back alpha_bar(t) = f(t) / f(0). */
int msd_schedule_cosine(double *betas, int T, double s, double max_beta)
{
    int rc = check_T("schedule_cosine", betas, T);
    if (rc != MSD_OK)
        return rc;
    if (!(s >= 0) || !(max_beta > 0 && max_beta < 1))
        return msd_error(MSD_ERR_ARG, "schedule_cosine: need s >= 0 and 0 < max_beta < 1, "
                         "got s %g, max_beta %g", s, max_beta);
    betas[0] = 0.0;
    /* f(T) = 0, so the last beta is 1 before clipping: max_beta keeps
     * alphas_cumprod[T] > 0 (the paper clips at 0.999 for the same reason). */
    for (int t = 1; t <= T; t++) {
        double b = 1.0 - cosine_f(t, T, s) / cosine_f(t - 1, T, s);
        betas[t] = b < max_beta ? b : max_beta;
    }
    return MSD_OK;
}

/* alphas, alphas_cumprod, betas (T + 1). Betas must lie in [0, 1): a beta of 1 makes
 * log(alpha) -inf and every later alphas_cumprod 0, which the samplers divide by. */
int msd_schedule_cumprod(double *alphas, double *alphas_cumprod, const double *betas, int T)
{
    int rc = check_T("schedule_cumprod", alphas, T);
    if (rc == MSD_OK)
        rc = check_T("schedule_cumprod", alphas_cumprod, T);
    if (rc != MSD_OK)
        return rc;
    if (!betas)
        return msd_error(MSD_ERR_ARG, "schedule_cumprod: NULL betas");
    for (int t = 0; t <= T; t++)
        if (!(betas[t] >= 0 && betas[t] < 1))
            return msd_error(MSD_ERR_ARG, "schedule_cumprod: betas[%d] = %g is outside [0, 1)",
                             t, betas[t]);
    /* The seed's exp(cumsum(log(a_t))), summed in double; its ab_t[0] = 1
     * overwrite leaves a_t[0] inside every later product. */
    double log_sum = 0.0;
    for (int t = 0; t <= T; t++) {
        alphas[t] = 1.0 - betas[t];
        log_sum += log(alphas[t]);
        alphas_cumprod[t] = t == 0 ? 1.0 : exp(log_sum);
    }
    return MSD_OK;
}

/* ab >= 1 would divide by 1 - ab = 0 (a step from t = 0); v <= 0 (ab_prev < ab, not a
 * step towards less noise, or rounding) gives sigma 0 rather than a NaN. */
double msd_ddim_sigma(double alpha_cumprod, double alpha_cumprod_prev, double eta)
{
    if (eta == 0.0 || alpha_cumprod >= 1.0)
        return 0.0;
    /* Song et al. 2021, eq. 16; the last factor is the step's beta. */
    double v = (1.0 - alpha_cumprod_prev) / (1.0 - alpha_cumprod) *
               (1.0 - alpha_cumprod / alpha_cumprod_prev);
    return v > 0.0 ? eta * sqrt(v) : 0.0;
}

/* ---- raw kernels -------------------------------------------------------- */

/* out, x0, noise (B, per_sample); coef_a, coef_b (B): one pair per sample, since each
 * sample of a training batch has its own t. Each element of out is written (=) after its
 * inputs are read, so out may alias x0 or noise. */
void msd_add_noise_forward(float *out, const float *x0, const float *noise, const float *coef_a,
                           const float *coef_b, int B, size_t per_sample)
{
    for (int b = 0; b < B; b++) {
        double ca = coef_a[b], cb = coef_b[b];
        size_t base = (size_t)b * per_sample;
        for (size_t i = base; i < base + per_sample; i++)
            out[i] = (float)(ca * x0[i] + cb * noise[i]);
    }
}

/* prev, pred_x0 (n) written (=; pred_x0 may be NULL); x, eps, z (n) read (z NULL: no
 * noise). The per-step scalars are formed once, in double, outside the loop. */
void msd_ddpm_step_forward(float *prev, float *pred_x0, const float *x, const float *eps,
                           const float *z, double alpha, double alpha_cumprod, double sigma,
                           size_t n)
{
    double s1 = sqrt(1.0 - alpha_cumprod), inv_sab = 1.0 / sqrt(alpha_cumprod);
    /* Eq. 11 in its epsilon form, as the seed's denoise_add_noise writes it:
     * (1 - alpha) / sqrt(1 - ab) scales eps, 1 / sqrt(alpha) the result. */
    double ceps = (1.0 - alpha) / s1, inv_sa = 1.0 / sqrt(alpha);
    for (size_t i = 0; i < n; i++) {
        double xi = x[i], ei = eps[i];
        double p = (xi - ceps * ei) * inv_sa;
        if (z)
            p += sigma * z[i];
        if (pred_x0)
            pred_x0[i] = (float)((xi - s1 * ei) * inv_sab);
        prev[i] = (float)p; /* after pred_x0: prev may alias x */
    }
}

/* prev, pred_x0 (n) written (=; pred_x0 may be NULL); x, eps, z (n) read (z NULL: z = 0).
 * Each element's inputs are read before its outputs are stored, so prev may alias x. */
void msd_ddim_step_forward(float *prev, float *pred_x0, const float *x, const float *eps,
                           const float *z, double alpha_cumprod, double alpha_cumprod_prev,
                           double sigma, size_t n)
{
    double s1 = sqrt(1.0 - alpha_cumprod), inv_sab = 1.0 / sqrt(alpha_cumprod);
    double sab_prev = sqrt(alpha_cumprod_prev);
    /* "direction pointing to x_t" of eq. 12; rounding can take the radicand
     * a hair below 0 at eta = 1 on the last step (ab_prev = 1). */
    double d = 1.0 - alpha_cumprod_prev - sigma * sigma;
    double cdir = d > 0.0 ? sqrt(d) : 0.0;
    for (size_t i = 0; i < n; i++) {
        double ei = eps[i];
        double x0 = (x[i] - s1 * ei) * inv_sab;
        double p = sab_prev * x0 + cdir * ei;
        if (z)
            p += sigma * z[i];
        if (pred_x0)
            pred_x0[i] = (float)x0;
        prev[i] = (float)p;
    }
}

/* ---- tensor level ------------------------------------------------------- */

static int check_same(const char *what, const char *na, const msd_tensor *a, const char *nb,
                      const msd_tensor *b)
{
    if (msd_tensor_same_shape(a, b))
        return MSD_OK;
    char sa[64], sb[64];
    return msd_error(MSD_ERR_SHAPE, "%s: %s %s and %s %s must have the same shape", what, na,
                     msd_tensor_shape_str(sa, sizeof sa, a), nb,
                     msd_tensor_shape_str(sb, sizeof sb, b));
}

/* x0, noise (B, ...) -> out (x0's shape), no autograd node (the noised sample is an input
 * of the model, never a parameter). MSD_ERR_ARG for a NULL argument, MSD_ERR_SHAPE when
 * noise's shape differs or n_coef != B. */
int msd_add_noise(msd_tensor *x0, msd_tensor *noise, const float *coef_a, const float *coef_b,
                  int n_coef, msd_tensor **out)
{
    if (!x0 || !noise || !coef_a || !coef_b || !out)
        return msd_error(MSD_ERR_ARG, "add_noise: NULL argument");
    int rc = check_same("add_noise", "x0", x0, "noise", noise);
    if (rc != MSD_OK)
        return rc;
    int B = x0->ndim ? x0->shape[0] : 1;
    if (n_coef != B) {
        char s[64];
        return msd_error(MSD_ERR_SHAPE, "add_noise: x0 %s has %d samples but %d timesteps given",
                         msd_tensor_shape_str(s, sizeof s, x0), B, n_coef);
    }
    msd_tensor *o = msd_tensor_empty_like(x0);
    if (!o)
        return MSD_ERR_MEM;
    size_t per = B ? msd_tensor_numel(x0) / (size_t)B : 0; /* B = 0: an empty batch */
    msd_add_noise_forward(msd_tensor_data(o), msd_tensor_data(x0), msd_tensor_data(noise), coef_a,
                          coef_b, B, per);
    *out = o;
    return MSD_OK;
}

/* Shape checks shared by both steps: eps and z (if any) like x. */
static int check_step(const char *what, const msd_tensor *x, const msd_tensor *eps,
                      const msd_tensor *z, msd_tensor **prev)
{
    if (!x || !eps || !prev)
        return msd_error(MSD_ERR_ARG, "%s: NULL argument", what);
    int rc = check_same(what, "eps", eps, "x", x);
    if (rc == MSD_OK && z)
        rc = check_same(what, "noise", z, "x", x);
    return rc;
}

/* Allocates prev and, if asked, pred_x0 like x; both or neither. */
static int alloc_outputs(const msd_tensor *x, msd_tensor **p, msd_tensor **x0, int want_x0)
{
    *p = msd_tensor_empty_like(x);
    *x0 = want_x0 ? msd_tensor_empty_like(x) : NULL;
    if (!*p || (want_x0 && !*x0)) {
        msd_tensor_release(*p);
        msd_tensor_release(*x0);
        return MSD_ERR_MEM;
    }
    return MSD_OK;
}

/* x, eps, z (one shape; z may be NULL) -> *prev and, when asked, *pred_x0 (x's shape).
 * The bounds keep every sqrt and quotient of the kernel finite: ab < 1 for 1 - ab,
 * alpha > 0 and ab > 0 for the divisions. */
int msd_ddpm_step(msd_tensor *x, msd_tensor *eps, msd_tensor *z, double alpha,
                  double alpha_cumprod, double alpha_cumprod_prev, msd_ddpm_variance variance,
                  msd_tensor **prev, msd_tensor **pred_x0)
{
    int rc = check_step("ddpm_step", x, eps, z, prev);
    if (rc != MSD_OK)
        return rc;
    if (!(alpha > 0 && alpha <= 1 && alpha_cumprod > 0 && alpha_cumprod < 1 &&
          alpha_cumprod_prev > 0 && alpha_cumprod_prev <= 1))
        return msd_error(MSD_ERR_ARG, "ddpm_step: need 0 < alpha <= 1, 0 < alpha_cumprod < 1 and "
                         "0 < alpha_cumprod_prev <= 1, got %g, %g, %g", alpha, alpha_cumprod,
                         alpha_cumprod_prev);
    if (variance != MSD_DDPM_FIXED_LARGE && variance != MSD_DDPM_FIXED_SMALL)
        return msd_error(MSD_ERR_ARG, "ddpm_step: unknown variance type %d", (int)variance);
    double beta = 1.0 - alpha, var = beta;
    if (variance == MSD_DDPM_FIXED_SMALL) /* Ho et al. 2020, eq. 7 */
        var = (1.0 - alpha_cumprod_prev) / (1.0 - alpha_cumprod) * beta;
    msd_tensor *p, *o;
    if ((rc = alloc_outputs(x, &p, &o, pred_x0 != NULL)) != MSD_OK)
        return rc;
    /* var >= 0 within the checked ranges (0 on fixed_small's last step, ab_prev = 1); the
     * clamp only keeps sqrt away from a negative */
    msd_ddpm_step_forward(msd_tensor_data(p), o ? msd_tensor_data(o) : NULL, msd_tensor_data(x),
                          msd_tensor_data(eps), z ? msd_tensor_data(z) : NULL, alpha,
                          alpha_cumprod, sqrt(var > 0 ? var : 0), msd_tensor_numel(x));
    *prev = p;
    if (pred_x0)
        *pred_x0 = o;
    return MSD_OK;
}

/* x, eps, z (one shape; z may be NULL) -> *prev and, when asked, *pred_x0 (x's shape).
 * ab_prev >= ab: a step goes towards less noise (and keeps sigma's radicand >= 0). */
int msd_ddim_step(msd_tensor *x, msd_tensor *eps, msd_tensor *z, double alpha_cumprod,
                  double alpha_cumprod_prev, double eta, msd_tensor **prev,
                  msd_tensor **pred_x0)
{
    int rc = check_step("ddim_step", x, eps, z, prev);
    if (rc != MSD_OK)
        return rc;
    if (!(alpha_cumprod > 0 && alpha_cumprod < 1 && alpha_cumprod_prev >= alpha_cumprod &&
          alpha_cumprod_prev <= 1 && eta >= 0))
        return msd_error(MSD_ERR_ARG, "ddim_step: need 0 < alpha_cumprod (%g) < 1, "
                         "alpha_cumprod <= alpha_cumprod_prev (%g) <= 1 and eta (%g) >= 0",
                         alpha_cumprod, alpha_cumprod_prev, eta);
    double sigma = msd_ddim_sigma(alpha_cumprod, alpha_cumprod_prev, eta);
    /* below -1e-12 the radicand of the x_t direction is really negative (eta > 1 can do
     * it); above, it is rounding, which the kernel clamps to 0 */
    if (1.0 - alpha_cumprod_prev - sigma * sigma < -1e-12)
        return msd_error(MSD_ERR_ARG, "ddim_step: eta %g too large: sigma^2 %g exceeds "
                         "1 - alpha_cumprod_prev %g", eta, sigma * sigma,
                         1.0 - alpha_cumprod_prev);
    msd_tensor *p, *o;
    if ((rc = alloc_outputs(x, &p, &o, pred_x0 != NULL)) != MSD_OK)
        return rc;
    msd_ddim_step_forward(msd_tensor_data(p), o ? msd_tensor_data(o) : NULL, msd_tensor_data(x),
                          msd_tensor_data(eps), z ? msd_tensor_data(z) : NULL, alpha_cumprod,
                          alpha_cumprod_prev, sigma, msd_tensor_numel(x));
    *prev = p;
    if (pred_x0)
        *pred_x0 = o;
    return MSD_OK;
}
