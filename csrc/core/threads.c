/* Thread count: minisd parallelises its own loops with OpenMP (over fixed
 * chunks of work, so results do not depend on the thread count) and calls
 * OpenBLAS single-threaded from inside them. OpenBLAS's own pool is kept at
 * one thread: its workers would spin and compete with the OpenMP team. */
#include <cblas.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "minisd.h"

static int blas_single;

static void blas_single_thread(void)
{
    if (!blas_single) {
        openblas_set_num_threads(1);
        blas_single = 1;
    }
}

__attribute__((constructor)) static void threads_init(void)
{
    blas_single_thread();
}

void msd_set_threads(int n)
{
    if (n < 1)
        n = 1;
    blas_single_thread();
#ifdef _OPENMP
    omp_set_num_threads(n);
#else
    (void)n;
#endif
}

int msd_get_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}
