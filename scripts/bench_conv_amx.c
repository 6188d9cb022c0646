/* build/bench_conv_amx: the AMX tiles on this CPU (a benchmark, not a test).
 * Prints the tiles' rate in a tight loop of tdpbf16ps with no loads (the peak), then
 * minisd's bf16 convolution of one group of images (conv_amx.h), forward and weight
 * gradient, in useful multiply-adds per second of this thread's CPU time.
 * Usage: build/bench_conv_amx [NB CIN H COUT]   (default 4 64 16 64: a 16x16 layer) */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "conv_amx.h"
#include "cpu.h"

static double cpu_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
struct cfg {
    uint8_t palette, start, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

/* GMAC/s of 4 independent accumulator tiles, operands already in tiles */
__attribute__((target("amx-tile,amx-bf16"))) static double tile_peak(void)
{
    struct cfg c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int i = 0; i < 8; i++) {
        c.rows[i] = 16;
        c.colsb[i] = 64;
    }
    _tile_loadconfig(&c);
    static uint16_t a[16 * 32] __attribute__((aligned(64)));
    for (int i = 0; i < 16 * 32; i++)
        a[i] = 0x3f80; /* 1.0 */
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    _tile_loadd(4, a, 64);
    _tile_loadd(5, a, 64);
    _tile_loadd(6, a, 64);
    _tile_loadd(7, a, 64);
    long n = 2000000;
    double t0 = cpu_now();
    for (long i = 0; i < n; i++) {
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    double t = cpu_now() - t0;
    _tile_release();
    return 4.0 * (double)n * 16 * 16 * 32 / t / 1e9;
}
#endif

int main(int argc, char **argv)
{
    int nb = argc > 4 ? atoi(argv[1]) : 4, C = argc > 4 ? atoi(argv[2]) : 64;
    int H = argc > 4 ? atoi(argv[3]) : 16, Co = argc > 4 ? atoi(argv[4]) : 64;
    if (msd_isa_best() < MSD_ISA_AMX) {
        printf("this CPU (or its kernel) offers no AMX tiles: best level %s\n",
               msd_isa_name(msd_isa_best()));
        return 0;
    }
    if (!msd_amx_conv_ok(C, Co, 1)) {
        fprintf(stderr, "bench_conv_amx: channels must be multiples of 32\n");
        return 2;
    }
#if defined(__GNUC__) && defined(__x86_64__)
    printf("tight loop of tdpbf16ps: %.0f GMAC/s\n", tile_peak());
#endif
    msd_amx_conv c = { nb, C, H, H, Co, 3, 3, 1 };
    size_t nx = (size_t)nb * C * H * H, ny = (size_t)nb * Co * H * H, nw = (size_t)Co * C * 9;
    float *x = malloc(nx * sizeof *x), *y = malloc(ny * sizeof *y);
    float *w = malloc(nw * sizeof *w), *dw = malloc(nw * sizeof *dw);
    uint16_t *wa = malloc(nw * sizeof *wa);
    void *sc = aligned_alloc(64, (msd_amx_conv_scratch(&c) + 63) / 64 * 64);
    if (!x || !y || !w || !dw || !wa || !sc)
        return 1;
    for (size_t i = 0; i < nx; i++)
        x[i] = (float)rand() / RAND_MAX - 0.5f;
    for (size_t i = 0; i < nw; i++)
        w[i] = (float)rand() / RAND_MAX - 0.5f;
    for (size_t i = 0; i < ny; i++)
        y[i] = (float)rand() / RAND_MAX - 0.5f;
    msd_amx_pack_weights(wa, w, Co, C, 9);
    double macs = (double)nb * H * H * Co * C * 9;
    int it = 200;
    double t0 = cpu_now();
    for (int i = 0; i < it; i++)
        msd_amx_conv_forward(&c, y, 0, NULL, x, wa, sc);
    double tf = (cpu_now() - t0) / it;
    t0 = cpu_now();
    for (int i = 0; i < it; i++)
        msd_amx_conv_dw(&c, dw, x, y, sc);
    double tw = (cpu_now() - t0) / it;
    printf("conv3x3 %d images %dx%d, %d -> %d channels: forward %.1f us (%.0f GMAC/s), "
           "weight gradient %.1f us (%.0f GMAC/s)\n", nb, H, H, C, Co, tf * 1e6,
           macs / tf / 1e9, tw * 1e6, macs / tw / 1e9);
    free(x), free(y), free(w), free(dw), free(wa), free(sc);
    return 0;
}
