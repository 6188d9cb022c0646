/* minisd: the whole C core in one include. */
#ifndef MSD_MINISD_H
#define MSD_MINISD_H

#include "autograd.h"
#include "conv_wino.h"
#include "cpu.h"
#include "diffusion.h"
#include "error.h"
#include "gemm.h"
#include "gif.h"
#include "image.h"
#include "io.h"
#include "ops.h"
#include "optim.h"
#include "rng.h"
#include "tensor.h"
#include "threads.h"

#endif
