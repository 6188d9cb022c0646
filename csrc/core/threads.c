#include <cblas.h>

#include "minisd.h"

static int n_threads = 0; /* 0: OpenBLAS's own default */

void msd_set_threads(int n)
{
    if (n < 1)
        n = 1;
    n_threads = n;
    openblas_set_num_threads(n);
}

int msd_get_threads(void)
{
    return n_threads > 0 ? n_threads : openblas_get_num_threads();
}
