/* The Winograd transforms and layout changes of conv_wino_tf.h at AVX2's width: 8
 * channels per vector, one ymm register (conv_wino.c calls them when the kernel level
 * in use is MSD_ISA_AVX2). x86-64 builds with GCC or Clang only; elsewhere the file is
 * empty and conv_wino.c keeps its own. */
#if defined(__x86_64__) && defined(__GNUC__)
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF /* the bits of every level: no fused multiply-adds */
#endif
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "conv_wino.h"
#include "ops.h" /* msd_gelu_forward_inplace */
#include "vec8.h"

#define WTF(name) msd_wino_avx2_##name
#define WTF_ATTR __attribute__((target("avx2,fma")))
#include "conv_wino_tf.h"

#else
typedef int msd_conv_wino_avx2_empty; /* ISO C wants a declaration in every file */
#endif
