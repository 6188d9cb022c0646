/* SCAFFOLD: replaced by the real header. */
#ifndef MSD_IO_H
#define MSD_IO_H
#include "tensor.h"
#endif
