/* Diffusion core: schedule tables against direct formulas, the step
 * kernels against hand computation in double, and the shape errors. */
#include <stdlib.h>
#include <string.h>

#include "minisd.h"
#include "test.h"

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

#define T_SEED 500

static void test_linear_schedule(void)
{
    double b[T_SEED + 1], a[T_SEED + 1], ab[T_SEED + 1];
    CHECK_OK(msd_schedule_linear(b, T_SEED, 1e-4, 0.02));
    CHECK_OK(msd_schedule_cumprod(a, ab, b, T_SEED));
    CHECK_CLOSE(b[0], 1e-4, 1e-15, 0);
    CHECK_CLOSE(b[T_SEED], 0.02, 1e-15, 0);
    CHECK_CLOSE(b[250], 1e-4 + (0.02 - 1e-4) * 0.5, 1e-15, 0);
    CHECK(ab[0] == 1.0);
    /* the seed's product keeps a_t[0]: ab[1] = (1 - b0)(1 - b1) */
    CHECK_CLOSE(ab[1], (1 - b[0]) * (1 - b[1]), 1e-15, 1e-13);
    double prod = 1.0;
    for (int t = 0; t <= T_SEED; t++)
        prod *= 1.0 - b[t];
    CHECK_CLOSE(ab[T_SEED], prod, 0, 1e-12);
    /* float32 value of the seed's torch table (tests/fixtures/sched.lua) */
    CHECK_CLOSE((float)ab[T_SEED], 0.00628876127, 0, 1e-6);
    for (int t = 1; t <= T_SEED; t++) {
        CHECK(ab[t] < ab[t - 1]);
        CHECK_CLOSE(a[t], 1 - b[t], 0, 1e-15);
    }
}

static void test_other_schedules(void)
{
    double b[101], a[101], ab[101];
    CHECK_OK(msd_schedule_scaled_linear(b, 100, 1e-4, 0.02));
    CHECK_CLOSE(b[0], 1e-4, 1e-15, 0);
    CHECK_CLOSE(b[100], 0.02, 1e-15, 0);
    double r = (0.01 + sqrt(0.02)) / 2; /* midpoint of sqrt(1e-4) and sqrt(0.02) */
    CHECK_CLOSE(b[50], r * r, 1e-15, 0);
    CHECK_OK(msd_schedule_cosine(b, 100, 0.008, 0.999));
    CHECK_OK(msd_schedule_cumprod(a, ab, b, 100));
    CHECK(b[0] == 0.0 && b[100] == 0.999);
    double f0 = pow(cos(0.008 / 1.008 * M_PI / 2), 2);
    for (int t = 1; t < 100; t++) { /* unclipped before the last step */
        double ft = pow(cos((t / 100.0 + 0.008) / 1.008 * M_PI / 2), 2);
        CHECK_CLOSE(ab[t], ft / f0, 1e-12, 1e-9);
    }
}

static void test_schedule_errors(void)
{
    double b[11], a[11], ab[11];
    CHECK(msd_schedule_linear(b, 0, 1e-4, 0.02) == MSD_ERR_ARG);
    CHECK(strstr(msd_last_error(), "T must be >= 1"));
    CHECK(msd_schedule_linear(b, 10, 1e-4, 1.5) == MSD_ERR_ARG);
    CHECK(strstr(msd_last_error(), "beta_end 1.5"));
    CHECK(msd_schedule_cosine(b, 10, 0.008, 1.0) == MSD_ERR_ARG);
    CHECK_OK(msd_schedule_linear(b, 10, 1e-4, 0.02));
    b[3] = 1.0;
    CHECK(msd_schedule_cumprod(a, ab, b, 10) == MSD_ERR_ARG);
    CHECK(strstr(msd_last_error(), "betas[3]"));
}

static void fill(float *p, size_t n, double phase)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (float)sin(0.9 * (double)i + phase);
}

static void test_add_noise_kernel(void)
{
    float x0[12], nz[12], out[12];
    float ca[3] = { 0.9f, 0.5f, 1.0f }, cb[3] = { 0.1f, 0.8f, 0.0f };
    fill(x0, 12, 0.1);
    fill(nz, 12, 2.0);
    msd_add_noise_forward(out, x0, nz, ca, cb, 3, 4);
    for (int i = 0; i < 12; i++) {
        int b = i / 4;
        CHECK_CLOSE(out[i], (double)ca[b] * x0[i] + (double)cb[b] * nz[i], 1e-7, 1e-6);
    }
}

static void test_ddpm_kernel(void)
{
    float x[8], e[8], z[8], prev[8], x0[8];
    fill(x, 8, 0.3);
    fill(e, 8, 1.1);
    fill(z, 8, 2.7);
    double alpha = 0.98, ab = 0.3, sigma = 0.14;
    msd_ddpm_step_forward(prev, x0, x, e, z, alpha, ab, sigma, 8);
    for (int i = 0; i < 8; i++) {
        double want = (x[i] - e[i] * (1 - alpha) / sqrt(1 - ab)) / sqrt(alpha) + sigma * z[i];
        CHECK_CLOSE(prev[i], want, 1e-6, 1e-6);
        CHECK_CLOSE(x0[i], (x[i] - sqrt(1 - ab) * e[i]) / sqrt(ab), 1e-6, 1e-6);
    }
    msd_ddpm_step_forward(prev, NULL, x, e, NULL, alpha, ab, sigma, 8); /* z = 0 */
    for (int i = 0; i < 8; i++)
        CHECK_CLOSE(prev[i], (x[i] - e[i] * (1 - alpha) / sqrt(1 - ab)) / sqrt(alpha), 1e-6,
                    1e-6);
}

static void test_ddim_kernel(void)
{
    float x[8], e[8], z[8], prev[8], x0[8];
    fill(x, 8, 0.5);
    fill(e, 8, 1.9);
    fill(z, 8, 3.3);
    double ab = 0.4, abp = 0.55, eta = 0.7;
    double sigma = msd_ddim_sigma(ab, abp, eta);
    CHECK_CLOSE(sigma, eta * sqrt((1 - abp) / (1 - ab) * (1 - ab / abp)), 1e-15, 1e-12);
    CHECK(msd_ddim_sigma(ab, abp, 0.0) == 0.0);
    msd_ddim_step_forward(prev, x0, x, e, z, ab, abp, sigma, 8);
    for (int i = 0; i < 8; i++) {
        double p0 = (x[i] - sqrt(1 - ab) * e[i]) / sqrt(ab);
        double want = sqrt(abp) * p0 + sqrt(1 - abp - sigma * sigma) * e[i] + sigma * z[i];
        CHECK_CLOSE(prev[i], want, 1e-6, 1e-6);
        CHECK_CLOSE(x0[i], p0, 1e-6, 1e-6);
    }
    /* eta = 0 to ab_prev = 1: the prediction of x0 itself */
    msd_ddim_step_forward(prev, NULL, x, e, NULL, ab, 1.0, 0.0, 8);
    for (int i = 0; i < 8; i++)
        CHECK_CLOSE(prev[i], (x[i] - sqrt(1 - ab) * e[i]) / sqrt(ab), 1e-6, 1e-6);
}

static void test_tensor_wrappers(void)
{
    int s[4] = { 2, 3, 2, 2 }, sbad[4] = { 2, 3, 2, 1 };
    msd_tensor *x = msd_tensor_empty(4, s), *e = msd_tensor_empty(4, s);
    msd_tensor *bad = msd_tensor_zeros(4, sbad), *p = NULL, *x0 = NULL;
    fill(msd_tensor_data(x), 24, 0.2);
    fill(msd_tensor_data(e), 24, 1.4);
    /* the fixed_small variance is 0 with ab_prev = 1, so z has no effect */
    CHECK_OK(msd_ddpm_step(x, e, e, 0.99, 0.5, 1.0, MSD_DDPM_FIXED_SMALL, &p, &x0));
    for (int i = 0; i < 24; i++) {
        double xi = msd_tensor_data(x)[i], ei = msd_tensor_data(e)[i];
        CHECK_CLOSE(msd_tensor_data(p)[i], (xi - ei * 0.01 / sqrt(0.5)) / sqrt(0.99), 1e-6,
                    1e-6);
    }
    msd_tensor_release(p);
    msd_tensor_release(x0);
    p = NULL;
    CHECK(msd_ddim_step(x, bad, NULL, 0.5, 0.6, 0.0, &p, NULL) == MSD_ERR_SHAPE);
    CHECK(p == NULL);
    CHECK(strstr(msd_last_error(), "ddim_step") && strstr(msd_last_error(), "[2,3,2,1]") &&
          strstr(msd_last_error(), "[2,3,2,2]"));
    CHECK(msd_ddpm_step(x, e, bad, 0.99, 0.5, 0.6, MSD_DDPM_FIXED_LARGE, &p, NULL) ==
          MSD_ERR_SHAPE);
    CHECK(strstr(msd_last_error(), "noise [2,3,2,1]"));
    CHECK(msd_ddim_step(x, e, NULL, 0.5, 0.4, 0.0, &p, NULL) == MSD_ERR_ARG);
    CHECK(msd_ddim_step(x, e, NULL, 0.5, 0.9, 5.0, &p, NULL) == MSD_ERR_ARG);
    CHECK(strstr(msd_last_error(), "eta 5 too large"));
    float ca[2] = { 0.5f, 0.25f }, cb[2] = { 0.1f, 0.2f };
    CHECK(msd_add_noise(x, e, ca, cb, 3, &p) == MSD_ERR_SHAPE);
    CHECK(strstr(msd_last_error(), "[2,3,2,2] has 2 samples but 3"));
    CHECK(msd_add_noise(x, bad, ca, cb, 2, &p) == MSD_ERR_SHAPE);
    CHECK_OK(msd_add_noise(x, e, ca, cb, 2, &p));
    CHECK(p->ndim == 4 && p->shape[0] == 2 && p->grad_fn == NULL);
    for (int i = 0; i < 24; i++)
        CHECK_CLOSE(msd_tensor_data(p)[i],
                    ca[i / 12] * msd_tensor_data(x)[i] + cb[i / 12] * msd_tensor_data(e)[i],
                    1e-7, 1e-6);
    msd_tensor_release(p);
    msd_tensor_release(x);
    msd_tensor_release(e);
    msd_tensor_release(bad);
}

int main(void)
{
    RUN(test_linear_schedule);
    RUN(test_other_schedules);
    RUN(test_schedule_errors);
    RUN(test_add_noise_kernel);
    RUN(test_ddpm_kernel);
    RUN(test_ddim_kernel);
    RUN(test_tensor_wrappers);
    return TEST_SUMMARY();
}
