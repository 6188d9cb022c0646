/* SCAFFOLD: replaced by the real header. */
#ifndef MSD_OPTIM_H
#define MSD_OPTIM_H
#include "tensor.h"
#endif
