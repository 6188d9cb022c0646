/* build/bench_act: msd_gelu_forward and msd_gelu_backward on one thread at each kernel
 * level (a benchmark, not a test). Inputs are N(0, 1)-like, as after a normalisation.
 * Prints the best of REPS runs in ns per element and in ms per call.
 * Usage: build/bench_act [N REPS]   (default 524288 = 32*64*16*16, 50) */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "cpu.h"
#include "ops.h"
#include "threads.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* a sum of 4 uniforms on [-sqrt 3, sqrt 3], scaled: mean 0, variance 1 */
static float noise(unsigned long long *s)
{
    float a = 0.0f;
    for (int i = 0; i < 4; i++) {
        *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
        a += ((float)(*s >> 40) / 16777216.0f - 0.5f) * 3.4641016f;
    }
    return 0.5f * a;
}

int main(int argc, char **argv)
{
    size_t n = argc > 1 ? (size_t)atol(argv[1]) : 524288;
    int reps = argc > 2 ? atoi(argv[2]) : 50;
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
    float *dy = malloc(n * sizeof *dy), *dx = malloc(n * sizeof *dx);
    if (!x || !y || !dy || !dx || reps < 1)
        return 1;
    unsigned long long s = 1;
    for (size_t i = 0; i < n; i++) {
        x[i] = noise(&s);
        dy[i] = noise(&s);
        dx[i] = 0.0f;
    }
    msd_set_threads(1);
    int best = msd_isa_best();
    for (int isa = best; isa >= 0; isa--) {
        if (msd_isa_set(isa) != MSD_OK)
            continue;
        double tf = 1e30, tb = 1e30;
        for (int r = 0; r < reps; r++) {
            double t0 = now();
            msd_gelu_forward(y, x, n);
            double t1 = now();
            msd_gelu_backward(dx, dy, x, n);
            double t2 = now();
            tf = t1 - t0 < tf ? t1 - t0 : tf;
            tb = t2 - t1 < tb ? t2 - t1 : tb;
        }
        printf("%-8s n %zu  forward %.3f ms (%.3f ns/elt)  backward %.3f ms (%.3f ns/elt)\n",
               msd_isa_name(isa), n, tf * 1e3, tf * 1e9 / (double)n, tb * 1e3,
               tb * 1e9 / (double)n);
    }
    msd_isa_set(best);
    free(x);
    free(y);
    free(dy);
    free(dx);
    return 0;
}
