/* minisd internal: sums of float arrays in double that the compiler can
 * vectorise, for the kernels' reductions (STYLE: reductions accumulate in
 * double). A plain `s += p[i]` loop in double is a chain of dependent adds
 * (one element per 4 cycles) that the compiler may not reorder; these keep
 * LANES independent partial sums, element i going to lane i % LANES, and add
 * the lanes in a fixed tree, so the result is the same on every call, thread
 * and kernel level, and the loops become vector code.
 *
 * MSD_MULTIVERSION compiles a function for AVX-512, AVX2 and the baseline,
 * chosen at load time by the CPU (GCC's target_clones). The clones compute
 * the same bits: the build does not contract a*b+c into FMAs (-std=c11 sets
 * -ffp-contract=off) and never reassociates. */
#ifndef MSD_REDUCE_H
#define MSD_REDUCE_H

#include <stddef.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(MINISD_NATIVE)
#define MSD_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MSD_MULTIVERSION
#endif

#define MSD_LANES 8

static inline double msd_lanes_total(const double *a)
{
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

/* acc[l] += p[i] for i = l (mod MSD_LANES), i < n */
static inline void msd_sum_lanes(double *acc, const float *p, size_t n)
{
    size_t i = 0;
    for (; i + MSD_LANES <= n; i += MSD_LANES)
        for (int l = 0; l < MSD_LANES; l++)
            acc[l] += p[i + l];
    for (int l = 0; i < n; i++, l++)
        acc[l] += p[i];
}

/* acc[l] += (p[i] - m)^2 */
static inline void msd_sumsq_dev_lanes(double *acc, const float *p, size_t n, double m)
{
    size_t i = 0;
    for (; i + MSD_LANES <= n; i += MSD_LANES)
        for (int l = 0; l < MSD_LANES; l++) {
            double d = p[i + l] - m;
            acc[l] += d * d;
        }
    for (int l = 0; i < n; i++, l++) {
        double d = p[i] - m;
        acc[l] += d * d;
    }
}

/* acc[l] += dy[i] (x[i] - m) */
static inline void msd_dot_dev_lanes(double *acc, const float *dy, const float *x, size_t n,
                                     double m)
{
    size_t i = 0;
    for (; i + MSD_LANES <= n; i += MSD_LANES)
        for (int l = 0; l < MSD_LANES; l++)
            acc[l] += dy[i + l] * (x[i + l] - m);
    for (int l = 0; i < n; i++, l++)
        acc[l] += dy[i] * (x[i] - m);
}

#endif
