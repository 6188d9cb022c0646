/* minisd: bfloat16 rounding, and conv2d at stride 1 on Intel AMX tiles.
 *
 * The bf16 precision (cpu.h, msd_precision_set) rounds both inputs of every
 * conv2d product to bf16 and sums in fp32. ops_conv.c runs it here when the
 * level is MSD_ISA_AMX and the shape suits the tiles (msd_amx_conv_ok), and
 * otherwise on the fp32 kernels after rounding its inputs with
 * msd_round_bf16: the same rounding, so both give the same numbers up to the
 * order of the sums.
 *
 * The functions below work on one group of nb images, single-threaded (the
 * caller spreads groups over its threads), and never fail. */
#ifndef MSD_CONV_AMX_H
#define MSD_CONV_AMX_H

#include <stddef.h>
#include <stdint.h>

/* bf16 bits of f as vcvtneps2bf16 makes them: round to nearest even,
 * subnormal inputs to a zero of the same sign, NaN stays a (quiet) NaN. */
uint16_t msd_bf16_from_float(float f);

/* x[i] = the float whose bits are msd_bf16_from_float(x[i]) << 16. */
void msd_round_bf16(float *x, size_t n);

/* One group: nb images (Cin, H, W) in, (Cout, Ho, Wo) out, kernel kh x kw,
 * zero padding pad, stride 1. */
typedef struct msd_amx_conv {
    int nb, Cin, H, W, Cout, kh, kw, pad;
} msd_amx_conv;

/* 1 when a conv2d with these channels and stride runs on the tiles now: the
 * level in use is MSD_ISA_AMX, the stride is 1 and Cin and Cout are
 * multiples of 32 (the 3- and 4-channel layers at the model's ends are
 * not). */
int msd_amx_conv_ok(int Cin, int Cout, int stride);

/* Bytes of scratch (64-byte aligned) that msd_amx_conv_forward or
 * msd_amx_conv_dw needs for group c. */
size_t msd_amx_conv_scratch(const msd_amx_conv *c);

/* Weights for msd_amx_conv_forward, from w (Cout, Cin, taps) fp32 (taps = kh*kw; Cin a
 * multiple of 32, Cout of 16): wa holds the tiles' B operands, bf16, one block of 16 x 16
 * 32-bit words for each (tap, 32 input channels, 16 output channels), in that order
 * (blocks of 512 values); in a block, row r and column j hold the pair of input channels
 * 2r, 2r+1 (the even one in the low half) of output channel j. */
void msd_amx_pack_weights(uint16_t *wa, const float *w, int Cout, int Cin, int taps);

/* The same from weights at any strides: the weight of output channel co, input channel ci
 * and tap t at w[co*sco + ci*sci + t] (msd_amx_pack_weights: sco = Cin*taps, sci = taps; a
 * transposed convolution's (Cin, K) weights as a 1x1 convolution to K channels: sco = 1,
 * sci = K, taps = 1). */
void msd_amx_pack_weights_strided(uint16_t *wa, const float *w, int Cout, int Cin, int taps,
                                  size_t sco, size_t sci);

/* y (nb, Cout, Ho, Wo) = conv2d(x (nb, Cin, H, W), wa) + b (b may be NULL),
 * or with add, y += conv2d (b ignored). */
void msd_amx_conv_forward(const msd_amx_conv *c, float *y, int add, const float *b,
                          const float *x, const uint16_t *wa, void *scratch);

/* The group's weight gradient, transposed: dwt (Cin*kh*kw, Cout), row
 * ci*kh*kw + tap, = sum over images and pixels of x's patch values times dy
 * (nb, Cout, Ho, Wo). Written, not added. */
void msd_amx_conv_dw(const msd_amx_conv *c, float *dwt, const float *x, const float *dy,
                     void *scratch);

#endif
