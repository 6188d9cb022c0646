/* SCAFFOLD: replaced by the real header. */
#ifndef MSD_RNG_H
#define MSD_RNG_H
#include "tensor.h"
#endif
