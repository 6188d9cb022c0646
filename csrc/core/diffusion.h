/* SCAFFOLD: replaced by the real header. */
#ifndef MSD_DIFFUSION_H
#define MSD_DIFFUSION_H
#include "tensor.h"
#endif
