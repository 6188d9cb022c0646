/* GEMM benchmark: minisd's msd_sgemm at every kernel level this CPU runs,
 * against OpenBLAS's cblas_sgemm (single-threaded, the core as OpenBLAS
 * detected it), on the matrix shapes of the sprite model's convolutions; and
 * msd_sgemm_bf16 (bf16 products) where the CPU has vdpbf16ps.
 * Built as build/bench_gemm; prints GFLOPS, asserts nothing.
 * Usage: build/bench_gemm [seconds per measurement, default 0.3; the best of
 * 10 windows is shown]
 * Try OPENBLAS_CORETYPE=SkylakeX to see OpenBLAS with its AVX-512 kernel
 * where it does not recognise the CPU. */
#define _POSIX_C_SOURCE 200809L
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "gemm.h"
#include "minisd.h"

char *openblas_get_corename(void);

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* M, N, K, transa, transb and what the product is in the model */
static const struct {
    int M, N, K, ta, tb;
    const char *what;
} shapes[] = {
    { 1024, 64, 576, 0, 1, "conv 64->64 3x3, 4 images of 16x16 (pixels x Cout)" },
    { 1024, 128, 1152, 0, 1, "conv 128->128 3x3, 16 images of 8x8" },
    { 576, 64, 1024, 0, 1, "weight gradient of conv 64->64 (taps x Cout)" },
    { 64, 1024, 576, 0, 0, "conv as Cout x pixels (the im2col layout)" },
    { 256, 64, 576, 0, 1, "conv 64->64, one 16x16 image" },
    { 128, 64, 64, 0, 0, "Winograd: one of 16 products, 128 tiles, 64 -> 64 channels" },
    { 128, 128, 128, 0, 0, "Winograd: 128 tiles, 128 -> 128 channels" },
    { 64, 64, 128, 1, 0, "Winograd weight gradient: (Cin x tiles) (tiles x Cout)" },
};

int main(int argc, char **argv)
{
    double budget = argc > 1 ? atof(argv[1]) : 0.3;
    openblas_set_num_threads(1);
    float *A = malloc(sizeof(float) << 22), *B = malloc(sizeof(float) << 22);
    float *C = malloc(sizeof(float) << 22);
    if (!A || !B || !C)
        return 1;
    for (int i = 0; i < 1 << 22; i++) {
        A[i] = (float)rand() / (float)RAND_MAX - 0.5f;
        B[i] = (float)rand() / (float)RAND_MAX - 0.5f;
    }
    printf("best kernel level: %s; OpenBLAS core: %s\n", msd_isa_name(msd_isa_best()),
           openblas_get_corename());
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int M = shapes[s].M, N = shapes[s].N, K = shapes[s].K, ta = shapes[s].ta,
            tb = shapes[s].tb;
        int lda = ta ? M : K, ldb = tb ? K : N;
        double flop = 2.0 * M * N * K;
        printf("%4d x %4d x %4d  %s\n", M, N, K, shapes[s].what);
        int bf16 = msd_gemm_bf16_native(); /* one more row: msd_sgemm_bf16 */
        for (int lib = 0; lib <= msd_isa_best() + 1 + bf16; lib++) {
            /* the best of 10 windows: other tenants of a shared machine
             * only ever slow a window down */
            double best = 0;
            for (int win = 0; win < 10; win++) {
                int reps = 0;
                double t0 = now(), t;
                do {
                    if (lib <= msd_isa_best()) {
                        msd_isa_set(lib);
                        msd_sgemm(ta, tb, M, N, K, 1.0f, A, lda, B, ldb, 0.0f, C, N);
                    } else if (lib == msd_isa_best() + 2) {
                        msd_isa_set(msd_isa_best());
                        msd_sgemm_bf16(ta, tb, M, N, K, 1.0f, A, lda, B, ldb, 0.0f, C, N);
                    } else {
                        cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans,
                                    tb ? CblasTrans : CblasNoTrans, M, N, K, 1.0f, A, lda, B,
                                    ldb, 0.0f, C, N);
                    }
                    reps++;
                    t = now() - t0;
                } while (t < budget / 10);
                if (flop * reps / t / 1e9 > best)
                    best = flop * reps / t / 1e9;
            }
            printf("    %-10s %7.1f GFLOPS\n",
                   lib <= msd_isa_best()       ? msd_isa_name(lib)
                   : lib == msd_isa_best() + 1 ? "openblas"
                                               : "bf16",
                   best);
        }
    }
    msd_isa_set(msd_isa_best());
    free(A);
    free(B);
    free(C);
    return 0;
}
