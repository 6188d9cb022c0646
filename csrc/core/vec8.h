/* minisd: 8 floats as one GCC vector, and the 8 x 8 transpose in vector
 * registers: vec16.h's interface at AVX2's width (one ymm register), for the
 * code conv_wino_tf.h compiles at AVX2 (conv_wino_avx2.c). GCC 12 and later or
 * Clang (__builtin_shufflevector). */
#ifndef MSD_VEC8_H
#define MSD_VEC8_H

#include <string.h>

typedef float vf __attribute__((vector_size(32)));
#define VL 8
#define INLINE static inline __attribute__((always_inline))
/* v = p[0 .. k), the rest zero; p[0 .. k) = v (vec16.h's, at 8 lanes). A whole
 * vector is one unaligned ymm load or store through vfu: a 32-byte memcpy would
 * be two 16-byte moves and a trip through the stack (GCC moves memcpy's pieces
 * 16 bytes at a time at generic tuning), which perf showed as half of
 * to_channels_last's time. */
typedef float vfu __attribute__((vector_size(32), aligned(4), may_alias));
#define LD(v, p, k)                                                                      \
    ((k) == VL ? (void)((v) = *(const vfu *)(const void *)(p))                           \
               : (void)(memset(&(v), 0, sizeof(v)),                                      \
                        memcpy(&(v), (p), (size_t)(k) * sizeof(float))))
#define ST(p, v, k)                                                                      \
    ((k) == VL ? (void)(*(vfu *)(void *)(p) = (v))                                       \
               : (void)memcpy((p), &(v), (size_t)(k) * sizeof(float)))

/* After it r[j][i] is the old r[i][j]: three rounds that each swap the
 * off-diagonal blocks of size b = 4, 2, 1 between rows i and i + b (two-source
 * shuffles with constant indices, 0-7 from row i and 8-15 from row i + b:
 * vperm2f128, vshufps and blends at AVX2). */
#define SWAP8_4(i)                                                                       \
    do {                                                                                 \
        vf x_ = r[i], y_ = r[(i) + 4];                                                   \
        r[i] = __builtin_shufflevector(x_, y_, 0, 1, 2, 3, 8, 9, 10, 11);                \
        r[(i) + 4] = __builtin_shufflevector(x_, y_, 4, 5, 6, 7, 12, 13, 14, 15);        \
    } while (0)
#define SWAP8_2(i)                                                                       \
    do {                                                                                 \
        vf x_ = r[i], y_ = r[(i) + 2];                                                   \
        r[i] = __builtin_shufflevector(x_, y_, 0, 1, 8, 9, 4, 5, 12, 13);                \
        r[(i) + 2] = __builtin_shufflevector(x_, y_, 2, 3, 10, 11, 6, 7, 14, 15);        \
    } while (0)
#define SWAP8_1(i)                                                                       \
    do {                                                                                 \
        vf x_ = r[i], y_ = r[(i) + 1];                                                   \
        r[i] = __builtin_shufflevector(x_, y_, 0, 8, 2, 10, 4, 12, 6, 14);               \
        r[(i) + 1] = __builtin_shufflevector(x_, y_, 1, 9, 3, 11, 5, 13, 7, 15);         \
    } while (0)

INLINE void transpose8(vf r[8])
{
    for (int i = 0; i < 4; i++)
        SWAP8_4(i);
    for (int i = 0; i < 8; i += 4)
        for (int j = 0; j < 2; j++)
            SWAP8_2(i + j);
    for (int i = 0; i < 8; i += 2)
        SWAP8_1(i);
}
#define VTRANSPOSE(r) transpose8(r)

#endif
