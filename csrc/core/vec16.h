/* minisd: 16 floats as one GCC vector, and the 16 x 16 transpose in vector
 * registers, for the layout changes of conv_wino.c and gemm.c's packing.
 * Included by files that compile their loops with MSD_MULTIVERSION (one zmm
 * register at AVX-512, two ymm at AVX2, four SSE registers at the baseline);
 * GCC 12 and later or Clang (__builtin_shufflevector). */
#ifndef MSD_VEC16_H
#define MSD_VEC16_H

#include <string.h>

typedef float vf __attribute__((vector_size(64)));
#define VL 16
#define INLINE static inline __attribute__((always_inline))
/* v = p[0 .. k), the rest zero; p[0 .. k) = v. A whole vector (k = 16) is
 * one fixed-size copy (a vector load or store); a partial one a short loop. */
#define LD(v, p, k)                                                                      \
    ((k) == VL ? (void)memcpy(&(v), (p), sizeof(v))                                      \
               : (void)(memset(&(v), 0, sizeof(v)),                                      \
                        memcpy(&(v), (p), (size_t)(k) * sizeof(float))))
#define ST(p, v, k)                                                                      \
    ((k) == VL ? (void)memcpy((p), &(v), sizeof(v))                                      \
               : (void)memcpy((p), &(v), (size_t)(k) * sizeof(float)))

/* After it r[j][i] is the old r[i][j]: four rounds that each swap the
 * off-diagonal blocks of size b = 8, 4, 2, 1 between rows i and i + b (two-source
 * shuffles with constant indices, 0-15 from row i and 16-31 from row i + b: one
 * vpermt2ps each at AVX-512). __builtin_shufflevector is GCC's (12 and later) and
 * Clang's. */
#define SWAP8(i)                                                                         \
    do {                                                                                 \
        vf x_ = r[i], y_ = r[(i) + 8];                                                   \
        r[i] = __builtin_shufflevector(x_, y_, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20,  \
                                       21, 22, 23);                                      \
        r[(i) + 8] = __builtin_shufflevector(x_, y_, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, \
                                             26, 27, 28, 29, 30, 31);                    \
    } while (0)
#define SWAP4(i)                                                                         \
    do {                                                                                 \
        vf x_ = r[i], y_ = r[(i) + 4];                                                   \
        r[i] = __builtin_shufflevector(x_, y_, 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, \
                                       25, 26, 27);                                      \
        r[(i) + 4] = __builtin_shufflevector(x_, y_, 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, \
                                             15, 28, 29, 30, 31);                        \
    } while (0)
#define SWAP2(i)                                                                         \
    do {                                                                                 \
        vf x_ = r[i], y_ = r[(i) + 2];                                                   \
        r[i] = __builtin_shufflevector(x_, y_, 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, \
                                       13, 28, 29);                                      \
        r[(i) + 2] = __builtin_shufflevector(x_, y_, 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, \
                                             27, 14, 15, 30, 31);                        \
    } while (0)
#define SWAP1(i)                                                                         \
    do {                                                                                 \
        vf x_ = r[i], y_ = r[(i) + 1];                                                   \
        r[i] = __builtin_shufflevector(x_, y_, 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, \
                                       28, 14, 30);                                      \
        r[(i) + 1] = __builtin_shufflevector(x_, y_, 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, \
                                             27, 13, 29, 15, 31);                        \
    } while (0)

INLINE void transpose16(vf r[16])
{
    for (int i = 0; i < 8; i++)
        SWAP8(i);
    for (int i = 0; i < 16; i += 8)
        for (int j = 0; j < 4; j++)
            SWAP4(i + j);
    for (int i = 0; i < 16; i += 4)
        for (int j = 0; j < 2; j++)
            SWAP2(i + j);
    for (int i = 0; i < 16; i += 2)
        SWAP1(i);
}
#define VTRANSPOSE(r) transpose16(r)

#endif
