/* Optimizer kernels against the update rules written out in double. */
#include <string.h>

#include "minisd.h"
#include "test.h"

#define N 5
static const float P0[N] = { 0.5f, -1.25f, 2.0f, 0.0f, -0.3f };
static const float G1[N] = { 0.1f, -0.2f, 0.3f, 1.5f, -0.05f };
static const float G2[N] = { -0.4f, 0.25f, 0.3f, -1.0f, 0.6f };

/* Two Adam steps in double, written from the paper's update with
 * PyTorch's placement of eps and of the two kinds of weight decay. */
static void adam_reference(double *p, int decoupled, double lr, double b1, double b2, double eps,
                           double wd)
{
    double m[N] = { 0 }, v[N] = { 0 };
    const float *gs[2] = { G1, G2 };
    for (int i = 0; i < N; i++)
        p[i] = P0[i];
    for (int t = 1; t <= 2; t++) {
        for (int i = 0; i < N; i++) {
            double g = gs[t - 1][i];
            if (decoupled)
                p[i] -= lr * wd * p[i];
            else
                g += wd * p[i];
            m[i] = b1 * m[i] + (1 - b1) * g;
            v[i] = b2 * v[i] + (1 - b2) * g * g;
            double mhat_scale = 1.0 / (1 - pow(b1, t));
            double denom = sqrt(v[i]) / sqrt(1 - pow(b2, t)) + eps;
            p[i] -= lr * mhat_scale * m[i] / denom;
        }
    }
}

static void run_adam(int decoupled, double wd)
{
    float p[N], m[N] = { 0 }, v[N] = { 0 };
    double ref[N];
    memcpy(p, P0, sizeof p);
    msd_adam_hparams h = { 0.01, 0.9, 0.999, 1e-3, wd, decoupled };
    CHECK_OK(msd_adam_step(p, m, v, G1, N, 1, &h));
    /* first step of Adam moves every coordinate with a non-zero gradient by
     * about lr (the normalised step), whatever the gradient's size */
    if (wd == 0)
        for (int i = 0; i < N; i++)
            CHECK(fabs(fabs(p[i] - P0[i]) - 0.01 * fabs(G1[i]) / (fabs(G1[i]) + 1e-3)) < 1e-6);
    CHECK_OK(msd_adam_step(p, m, v, G2, N, 2, &h));
    adam_reference(ref, decoupled, 0.01, 0.9, 0.999, 1e-3, wd);
    for (int i = 0; i < N; i++)
        CHECK_CLOSE(p[i], ref[i], 1e-6, 1e-5);
}

static void test_adam_two_steps(void) { run_adam(0, 0.0); }
static void test_adam_weight_decay(void) { run_adam(0, 0.1); }
static void test_adamw_two_steps(void) { run_adam(1, 0.1); }

static void test_adam_errors(void)
{
    float p[1] = { 1 }, m[1] = { 0 }, v[1] = { 0 }, g[1] = { 1 };
    msd_adam_hparams h = { 0.01, 0.9, 0.999, 1e-8, 0, 0 };
    CHECK(msd_adam_step(p, m, v, g, 1, 0, &h) == MSD_ERR_ARG);
    CHECK(strstr(msd_last_error(), "step") != NULL);
    h.beta2 = 1.0;
    CHECK(msd_adam_step(p, m, v, g, 1, 1, &h) == MSD_ERR_ARG);
    CHECK(strstr(msd_last_error(), "betas") != NULL);
    h.beta2 = 0.999;
    h.lr = -1;
    CHECK(msd_adam_step(p, m, v, g, 1, 1, &h) == MSD_ERR_ARG);
    CHECK(p[0] == 1 && m[0] == 0 && v[0] == 0); /* nothing touched */
}

/* SGD in double: d = g + wd p; buf = d (first) or mom buf + (1-damp) d;
 * nesterov: d + mom buf, else buf; p -= lr d. */
static void sgd_reference(double *p, double lr, double mom, double damp, double wd, int nesterov)
{
    double buf[N];
    const float *gs[2] = { G1, G2 };
    for (int i = 0; i < N; i++)
        p[i] = P0[i];
    for (int t = 0; t < 2; t++)
        for (int i = 0; i < N; i++) {
            double d = gs[t][i] + wd * p[i];
            if (mom != 0) {
                buf[i] = t == 0 ? d : mom * buf[i] + (1 - damp) * d;
                d = nesterov ? d + mom * buf[i] : buf[i];
            }
            p[i] -= lr * d;
        }
}

static void run_sgd(double mom, double damp, double wd, int nesterov)
{
    float p[N], buf[N];
    double ref[N];
    memcpy(p, P0, sizeof p);
    msd_sgd_hparams h = { 0.1, mom, damp, wd, nesterov };
    CHECK_OK(msd_sgd_step(p, mom != 0 ? buf : NULL, G1, N, 1, &h));
    CHECK_OK(msd_sgd_step(p, mom != 0 ? buf : NULL, G2, N, 0, &h));
    sgd_reference(ref, 0.1, mom, damp, wd, nesterov);
    for (int i = 0; i < N; i++)
        CHECK_CLOSE(p[i], ref[i], 1e-6, 1e-5);
}

static void test_sgd_plain(void)
{
    run_sgd(0, 0, 0, 0);
    /* plain SGD: p - lr (g1 + g2), checked by hand for one element */
    float p[1] = { 1.0f }, g[1] = { 0.5f };
    msd_sgd_hparams h = { 0.1, 0, 0, 0, 0 };
    CHECK_OK(msd_sgd_step(p, NULL, g, 1, 1, &h));
    CHECK_CLOSE(p[0], 0.95, 1e-7, 0);
}
static void test_sgd_momentum_dampening(void) { run_sgd(0.9, 0.3, 0.01, 0); }
static void test_sgd_nesterov(void) { run_sgd(0.9, 0, 0.01, 1); }

static void test_sgd_errors(void)
{
    float p[1] = { 1 }, g[1] = { 1 };
    msd_sgd_hparams h = { 0.1, 0.9, 0, 0, 0 };
    CHECK(msd_sgd_step(p, NULL, g, 1, 1, &h) == MSD_ERR_ARG);
    h.nesterov = 1;
    h.dampening = 0.5;
    float buf[1];
    CHECK(msd_sgd_step(p, buf, g, 1, 1, &h) == MSD_ERR_ARG);
    CHECK(strstr(msd_last_error(), "nesterov") != NULL);
    CHECK(p[0] == 1);
}

static void test_ema(void)
{
    float ema[3] = { 1, 2, 3 };
    const float p[3] = { 3, 2, -1 };
    CHECK_OK(msd_ema_update(ema, p, 3, 0.75));
    CHECK_CLOSE(ema[0], 1.5, 1e-7, 0);
    CHECK_CLOSE(ema[1], 2.0, 1e-7, 0);
    CHECK_CLOSE(ema[2], 2.0, 1e-7, 0);
    CHECK_OK(msd_ema_update(ema, p, 3, 0.0)); /* decay 0 copies */
    CHECK(ema[0] == 3 && ema[2] == -1);
    CHECK(msd_ema_update(ema, p, 3, 1.5) == MSD_ERR_ARG);
}

int main(void)
{
    RUN(test_adam_two_steps);
    RUN(test_adam_weight_decay);
    RUN(test_adamw_two_steps);
    RUN(test_adam_errors);
    RUN(test_sgd_plain);
    RUN(test_sgd_momentum_dampening);
    RUN(test_sgd_nesterov);
    RUN(test_sgd_errors);
    RUN(test_ema);
    return TEST_SUMMARY();
}
