/* minisd: float -> bfloat16 with AVX-512, for the bf16 kernels (conv_amx.c,
 * gemm.c). The rules are msd_bf16_from_float's (conv_amx.h): round to nearest
 * even, subnormals to a signed zero, NaN stays a quiet NaN, so every path
 * rounds its inputs to the same bits. Static inline: each file compiles them
 * into its own AVX-512 functions; include only on x86-64 with GCC or Clang. */
#ifndef MSD_BF16_X86_H
#define MSD_BF16_X86_H

#include <immintrin.h>
#include <stdint.h>

#define MSD_BF16_AVX512 "avx512f,avx512bw,avx512vl"

/* 16 floats to their bf16 bits, each in the high half of its 32-bit lane;
 * the low half is garbage. */
__attribute__((target(MSD_BF16_AVX512))) static inline __m512i msd_bf16_hi512(__m512 v)
{
    __m512i u = _mm512_castps_si512(v);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
    __m512i mag = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
    __mmask16 nan = _mm512_cmpgt_epu32_mask(mag, _mm512_set1_epi32(0x7f800000));
    __mmask16 sub = _mm512_testn_epi32_mask(u, _mm512_set1_epi32(0x7f800000));
    r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(u, _mm512_set1_epi32(0x00400000)));
    return _mm512_mask_mov_epi32(r, sub, _mm512_and_si512(u, _mm512_set1_epi32((int)0x80000000)));
}

/* The mask of the first n (< 16) or all 16 lanes. */
static inline __mmask16 msd_bf16_lanes(int n)
{
    return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
}

/* dst[i] = bf16(src[i]) for i < n */
__attribute__((target(MSD_BF16_AVX512))) static inline void
msd_bf16_row512(uint16_t *dst, const float *src, int n)
{
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = msd_bf16_lanes(n - i);
        __m512i h = _mm512_srli_epi32(msd_bf16_hi512(_mm512_maskz_loadu_ps(m, src + i)), 16);
        _mm256_mask_storeu_epi16(dst + i, m, _mm512_cvtepi32_epi16(h));
    }
}

/* The same conversions with AVX512-BF16's vcvtne2ps2bf16 / vcvtneps2bf16 (round to nearest
 * even, subnormal inputs to zero, NaN quieted by its top bits: msd_bf16_from_float's
 * rules, so the same bits), a few instructions per 32 floats where the emulation above
 * takes a dozen per 16. Only where the CPU has AVX512-BF16. */
#define MSD_BF16_NATIVE MSD_BF16_AVX512 ",avx512bf16"

/* dst[2i], dst[2i+1] = bf16(a[i]), bf16(b[i]) for i < n: the 32-bit word i holds a[i] in
 * its low half, b[i] in its high half */
__attribute__((target(MSD_BF16_NATIVE))) static inline void
msd_bf16_pairs_native(uint16_t *dst, const float *a, const float *b, int n)
{
    /* word i of the result = halfwords i (a[i]) and 16 + i (b[i]) of the conversion */
    static const uint16_t interleave[32] = { 0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,
                                             21, 6, 22, 7, 23, 8,  24, 9,  25, 10, 26,
                                             11, 27, 12, 28, 13, 29, 14, 30, 15, 31 };
    __m512i idx = _mm512_loadu_si512(interleave);
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = msd_bf16_lanes(n - i);
        __m512 va = _mm512_maskz_loadu_ps(m, a + i), vb = _mm512_maskz_loadu_ps(m, b + i);
        __m512i h = (__m512i)_mm512_cvtne2ps_pbh(vb, va); /* a in the low half */
        _mm512_mask_storeu_epi32(dst + 2 * i, m, _mm512_permutexvar_epi16(idx, h));
    }
}

/* msd_bf16_row512 */
__attribute__((target(MSD_BF16_NATIVE))) static inline void
msd_bf16_row_native(uint16_t *dst, const float *src, int n)
{
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = msd_bf16_lanes(n - i);
        __m256i h = (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, src + i));
        _mm256_mask_storeu_epi16(dst + i, m, h);
    }
}

#endif
