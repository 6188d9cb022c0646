/* minisd: 3x3 convolutions by Winograd's minimal filtering, F(2x2, 3x3) and
 * F(4x4, 3x3).
 *
 * A 3x3 convolution computes each 2x2 block of its output from the 4x4 block
 * of (padded) input around it. Done directly that is 36 multiplies per input
 * and output channel pair; transformed, it is 16: with the input tile D, the
 * kernel g and the output tile Y (Lavin and Gray, "Fast Algorithms for
 * Convolutional Neural Networks", 2015),
 *   Y = A^T [ (G g G^T) . (B^T D B) ] A,   . elementwise,
 *   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],
 *   G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1],   A^T = [1 1 1 0; 0 1 -1 -1].
 * Summed over the input channels, each of the 16 elementwise positions is a
 * matrix product (tiles x Cin) (Cin x Cout): 16 GEMMs on the fp32 kernels of
 * gemm.h, with 2.25 times fewer multiplies than the direct convolution. The
 * transforms use only additions and halvings.
 *
 * F(4x4, 3x3) computes 4x4 output blocks from 6x6 input blocks: 36 products
 * for 16 outputs, 4 times fewer multiplies than direct (Lavin and Gray's
 * points 0, +-1, +-2 and infinity; the matrices are in conv_wino.c). Its
 * transforms multiply by up to 8 and by 1/6, 1/12, 1/24, so rounding errors
 * grow: measured in float64 with bf16-rounded transforms, 13 times the error
 * of rounding the inputs against 1.7 times for F(2x2, 3x3). So it is fp32's
 * (maps whose height and width are multiples of 4), and bf16 stays on
 * F(2x2, 3x3); its fp32 results are within 1e-5 of the direct convolution's
 * largest value (tests/c/test_conv.c).
 *
 * The weight gradient is the same algorithm differentiated with respect to
 * g: for each tile, dW = G^T [ (A dY A^T) . (B^T D B) ] G, where dY is the
 * tile's 2x2 output gradient; the sum over tiles moves inside the brackets,
 * so again 16 GEMMs (Cin x tiles) (tiles x Cout), and one transform at the
 * end. The input gradient of a stride-1 convolution is a convolution of dy
 * with the flipped kernel (ops_conv.c), so it runs the forward.
 *
 * Used for fp32 convolutions with a 3x3 kernel, stride 1, padding 1, an even
 * height and width, and 16 or more channels in and out (msd_wino_ok: the
 * inner convolutions of the seed's ContextUnet, for any batch: with the
 * transforms vectorised and the kernels transformed in parallel, even one
 * 16x16 image, 64 tiles, measured faster than direct, 45 against 52 ms for a
 * 25-step one-sprite sampling); msd_wino_set(0) or the
 * environment variable MINISD_WINOGRAD=0 turns it off. Its results differ
 * from the direct convolution's by rounding (a few float ulps of the
 * largest terms, tested against float64 loops in tests/c/test_conv.c).
 *
 * The functions below work on one group of nb images, single-threaded (the
 * caller spreads groups over its threads), and never fail. */
#ifndef MSD_CONV_WINO_H
#define MSD_CONV_WINO_H

#include <stddef.h>
#include <stdint.h>

/* One group: nb images (Cin, H, W) in, (Cout, H, W) out, in m x m output
 * tiles (m = 2 or 4: msd_wino_tile); bf16 (m = 2 only): the 16 products on
 * msd_sgemm_bf16 (the bf16 precision: the transformed tiles and kernels
 * rounded to bf16), else on msd_sgemm. */
typedef struct msd_wino_conv {
    int nb, Cin, H, W, Cout, bf16, m;
} msd_wino_conv;

/* The Winograd path's mode: off, on (F(4x4, 3x3) where msd_wino_tile allows
 * it, else F(2x2, 3x3); the default), or F(2x2, 3x3) only. */
enum { MSD_WINO_OFF = 0, MSD_WINO_ON = 1, MSD_WINO_F2 = 2 };

/* The mode (nonzero when the path is on); MINISD_WINOGRAD=0 (off) or 2
 * (F(2x2, 3x3) only) in the environment, read once, or msd_wino_set change
 * it. */
int msd_wino_get(void);
void msd_wino_set(int mode);

/* The fp32 transforms' vector width (conv_wino_tf.h): 0, the kernel level's (8 lanes at
 * MSD_ISA_AVX2, else 16; the default), or 8 or 16 forced (8 only where the CPU has AVX2),
 * for the tests, which check that both widths give the same bits. */
void msd_wino_width_set(int lanes);

/* The output tile of a Winograd convolution of H x W maps: 4 in fp32 when
 * the mode is MSD_WINO_ON, H and W are multiples of 4 and a map has at least
 * 16 tiles of 4x4 (16x16 and larger), else 2. By shape alone, so that an
 * image's bits do not depend on the batch it is in. */
int msd_wino_tile(int H, int W, int bf16);
/* (m + 2)^2: the transformed tiles' positions, one product each. */
int msd_wino_planes(int m);

/* 1 when a conv2d of N images of this shape runs here now: the path is on,
 * N > 0, the kernel is 3x3, stride 1, padding 1, H and W are even, and both
 * channel counts are at least 16 (narrower products waste the GEMM tile). */
int msd_wino_ok(int N, int Cin, int Cout, int H, int W, int kh, int kw, int stride, int pad);

/* Images per group for a batch of N images of H x W in m x m tiles: about
 * 128 tiles (64 for m = 4: 36 planes). */
int msd_wino_group_images(int N, int H, int W, int m);

/* Floats of scratch that msd_wino_forward needs for group c. */
size_t msd_wino_scratch(const msd_wino_conv *c);

/* Floats from one of U's or dwt's planes (Cin, Cout) to the next (a cache
 * line more than Cin Cout, so that the streams of a transform do not all
 * fall in the same L1 sets): U and dwt hold msd_wino_planes(m) of them. */
size_t msd_wino_plane(int Cout, int Cin);
/* U ((m + 2)^2 planes, Cin, Cout) = G g G^T for each kernel g = w[o, i] of w
 * (Cout, Cin, 3, 3): the B operand of the forward's products; the rows of
 * input channels [i0, i1) (the caller spreads them over its threads). */
void msd_wino_weights(float *U, const float *w, int Cout, int Cin, int m, int i0, int i1);

/* 32-bit words of U packed for the forward's products (msd_sgemm_packed's
 * floats, or with bf16 msd_sgemm_bf16_packed's words; gemm.h): msd_wino_pack
 * writes U's planes [xi0, xi1), once per convolution rather than once per
 * group and product (and kept across calls for inference, ops_conv.c); Up
 * 64-byte aligned. The fp32 form is the kernel level's: pack and multiply at
 * the same one. */
size_t msd_wino_packed_words(int Cout, int Cin, int m, int bf16);
void msd_wino_pack(uint32_t *Up, const float *U, int Cout, int Cin, int bf16, int xi0, int xi1);
/* An epilogue on a forward's output: y = y a + b per channel (a and b Cout
 * values, or a NULL), then GELU when gelu. */
typedef struct msd_wino_post {
    const float *a, *b;
    int gelu;
} msd_wino_post;

/* y (nb, Cout, H, W) = (or += with add, b ignored) conv2d of x (nb, Cin, H,
 * W) with the kernels transformed into U and packed into Up (msd_wino_pack),
 * plus b (Cout, or NULL); then post (or NULL), on each block of rows while it
 * is in L1: the bits of applying it after. */
void msd_wino_forward(const msd_wino_conv *c, float *y, int add, const float *b,
                      const msd_wino_post *post, const float *x, const uint32_t *Up,
                      float *scratch);

/* The backward of one group, dy (nb, Cout, H, W) read once (into one padded
 * channels-last copy, the only pass over it): with dx, dx (nb, Cin, H, W) +=
 * (or = without dx_add) the input gradient, the convolution of dy with the flipped kernels
 * (ops_conv.c) transformed and packed into Upx by msd_wino_weights and
 * msd_wino_pack as a convolution of Cout channels into Cin; with dwt,
 * dwt ((m + 2)^2 planes, Cin, Cout) += the weight gradient in the
 * transformed domain, from x (nb, Cin, H, W); with db, db (Cout) += dy's
 * sums per channel (image by image, 16 pixels at a time). Scratch:
 * msd_wino_backward_scratch(c) floats. */
size_t msd_wino_backward_scratch(const msd_wino_conv *c);
void msd_wino_backward(const msd_wino_conv *c, float *dx, int dx_add, const uint32_t *Upx,
                       float *dwt, float *db, const float *x, const float *dy, float *scratch);

/* dw (Cout, Cin, 3, 3) += G^T dwt G: the gradient back from the
 * transformed domain, for output channels [o0, o1) (the caller spreads them
 * over its threads). */
void msd_wino_dw_finish(float *dw, const float *dwt, int Cout, int Cin, int m, int o0, int o1);

#if defined(__x86_64__) && defined(__GNUC__)
/* conv_wino.c's transforms and layout changes (conv_wino_tf.h) at 8 lanes, compiled for
 * AVX2 + FMA in conv_wino_avx2.c: to be called only where the CPU has them. */
void msd_wino_avx2_to_channels_last(float *restrict dc, const float *restrict x, int nb, int C,
                                    int H, int W, int p, float *restrict sum);
void msd_wino_avx2_input_transform(float *restrict V, const float *restrict xc, int nb, int C,
                                   int H, int W, int m);
void msd_wino_avx2_output_transform(float *restrict y, const float *restrict M, size_t T, int C,
                                    size_t t0, int H, int W, int m, int add, const float *b,
                                    const msd_wino_post *post, float *restrict buf);
void msd_wino_avx2_grad_transform(float *restrict E, const float *restrict dyc, int nb, int C,
                                  int H, int W, int m);
#endif

#endif
