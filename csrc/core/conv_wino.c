/* Winograd F(2x2, 3x3) and F(4x4, 3x3) convolutions (conv_wino.h): the
 * transforms, and the (m + 2)^2 products per group on msd_sgemm_packed (in
 * bf16, F(2x2) only, on msd_sgemm_bf16_packed, the operands written by the
 * transforms in the kernel's forms).
 *
 * Layouts, for a group of nb images in m x m output tiles (m = 2 or 4; P =
 * (m + 2)^2 positions) with T = nb (H/m) (W/m) tiles (tile t = (n, ty, tx) in
 * that order, covering output rows m ty .. m ty + m - 1 and the same columns):
 *   xc  (nb, H+2, W+2, Cin)  the input, zero-padded and channels last, so
 *                            that every transform is a loop over channels
 *                            (vector code) with unit-stride loads
 *   V   (P, T, Cin)          B^T D B of every tile: the A operand, rows t; in the
 *                            bf16 forward as bf16 (16, T, Cin rounded up to even),
 *                            the rows msd_sgemm_bf16_packed reads in place; in the
 *                            bf16 weight gradient as pairs of tiles (see there)
 *   M   (P, T, Cout)         the products; the output transform reads them
 *   dyc (nb, H+2, W+2, Cout) dy padded and channels last (backward: the input
 *                            gradient's convolution reads it as its input, the
 *                            weight gradient's transform its inner H x W)
 *   E   (P, T, Cout)         A dY A^T of every tile (weight gradient only; in bf16
 *                            the kernel's panels, pairs of tiles)
 * Each plane starts a cache line after the last one ends (plane_of). Position
 * xi = (m + 2) a + b of a transformed tile holds row a, column b.
 *
 * The fp32 transforms and layout changes are written once, in conv_wino_tf.h, as
 * loops over a GCC vector of channels, and compiled here at 16 lanes (MSD_MULTIVERSION:
 * AVX-512 and the baseline) and in conv_wino_avx2.c at 8 (the AVX2 level). Fixed
 * operations in a fixed order, and no fused multiply-adds (-std=c11), so every
 * width and clone computes the same bits; the products follow the GEMM's kernel level. */
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include "bf16_x86.h"
#define WINO_BF16_X86 1
#endif

#include "conv_amx.h" /* msd_bf16_from_float */
#include "conv_wino.h"
#include "gemm.h"
#include "ops.h" /* msd_gelu_forward_inplace */
#include "cpu.h"
#include "reduce.h"
#include "vec16.h"

/* The transforms at 16 channels a vector (AVX-512's width; the baseline's too) ... */
#define WTF(name) name##_v16
#define WTF_ATTR MSD_MULTIVERSION static
#include "conv_wino_tf.h"

#if defined(__x86_64__) && defined(__GNUC__)
/* ... and at 8 (conv_wino_avx2.c, declared in conv_wino.h), for the AVX2 level. */
#define WINO_AVX2 1
#define WINO_WIDTH(name, ...)                                                            \
    (lanes8() ? msd_wino_avx2_##name(__VA_ARGS__) : name##_v16(__VA_ARGS__))
#else
#define WINO_WIDTH(name, ...) name##_v16(__VA_ARGS__)
#endif

static atomic_int wino_width; /* msd_wino_width_set's: 0, 8 or 16 */

void msd_wino_width_set(int lanes)
{
    atomic_store(&wino_width, lanes == 8 || lanes == 16 ? lanes : 0);
}

#ifdef WINO_AVX2
/* 1: the transforms at 8 lanes */
static int lanes8(void)
{
    int w = atomic_load_explicit(&wino_width, memory_order_relaxed);
    if (w)
        return w == 8 && msd_isa_best() >= MSD_ISA_AVX2;
    return msd_isa_get() == MSD_ISA_AVX2;
}
#endif

/* The transforms at the width of the kernel level in use (the same bits at either). */
static void to_channels_last(float *dc, const float *x, int nb, int C, int H, int W, int p,
                             float *sum)
{
    WINO_WIDTH(to_channels_last, dc, x, nb, C, H, W, p, sum);
}

static void input_transform(float *V, const float *xc, int nb, int C, int H, int W, int m)
{
    WINO_WIDTH(input_transform, V, xc, nb, C, H, W, m);
}

static void output_transform(float *y, const float *M, size_t T, int C, size_t t0, int H, int W,
                             int m, int add, const float *b, const msd_wino_post *post,
                             float *buf)
{
    WINO_WIDTH(output_transform, y, M, T, C, t0, H, W, m, add, b, post, buf);
}

static void grad_transform(float *E, const float *dyc, int nb, int C, int H, int W, int m)
{
    WINO_WIDTH(grad_transform, E, dyc, nb, C, H, W, m);
}

#define WINO_MIN_CHANNELS 16
#define WINO_TILES 128 /* tiles per group: the group's V and M stay near L2's size */
#define WINO_TILES4 64 /* the same for F(4x4, 3x3), 36 planes (measured: 32 and 128 slower) */
/* F(4x4, 3x3) for maps of this many 4x4 tiles or more (16x16 and up). On 8x8 maps F(4x4)
 * was no faster in training (286-300 ms a one-thread step against 299-317 with it) and slower
 * for one sprite (the products read 36 kernel planes for 4 tiles: 38-43 ms against 43-51 for
 * 25 steps), 5% faster for 32 sprites. A choice by shape, not by batch, so that a sprite
 * sampled alone has the bits it has in a batch. */
#define WINO_F4_MIN_TILES 16

/* MSD_WINO_OFF, _ON or _F2; -1: not yet read from the environment */
static atomic_int wino_on = -1;

int msd_wino_get(void)
{
    int on = atomic_load_explicit(&wino_on, memory_order_relaxed);
    if (on < 0) {
        const char *e = getenv("MINISD_WINOGRAD");
        on = !e                                                 ? MSD_WINO_ON
             : strcmp(e, "0") == 0                              ? MSD_WINO_OFF
             : strcmp(e, "2") == 0 || strcmp(e, "2x2") == 0     ? MSD_WINO_F2
                                                                : MSD_WINO_ON;
        atomic_store(&wino_on, on);
    }
    return on;
}

void msd_wino_set(int mode)
{
    atomic_store(&wino_on, mode == MSD_WINO_F2 ? MSD_WINO_F2 : mode ? MSD_WINO_ON : MSD_WINO_OFF);
}

int msd_wino_tile(int H, int W, int bf16)
{
    return msd_wino_get() == MSD_WINO_ON && !bf16 && H % 4 == 0 && W % 4 == 0 &&
                   (H / 4) * (W / 4) >= WINO_F4_MIN_TILES
               ? 4
               : 2;
}

int msd_wino_ok(int N, int Cin, int Cout, int H, int W, int kh, int kw, int stride, int pad)
{
    return msd_wino_get() && kh == 3 && kw == 3 && stride == 1 && pad == 1 && H % 2 == 0 &&
           W % 2 == 0 && H > 0 && W > 0 && Cin >= WINO_MIN_CHANNELS &&
           Cout >= WINO_MIN_CHANNELS && N > 0;
}

int msd_wino_group_images(int N, int H, int W, int m)
{
    int per = (H / m) * (W / m), tiles = m == 4 ? WINO_TILES4 : WINO_TILES;
    int nb = per >= tiles ? 1 : tiles / per;
    return nb > N ? N : nb;
}

static size_t tiles_of(const msd_wino_conv *c)
{
    return (size_t)c->nb * (c->H / c->m) * (c->W / c->m);
}

int msd_wino_planes(int m)
{
    return (m + 2) * (m + 2);
}

/* Like plane_of (conv_wino_tf.h), for U's and dwt's planes (Cin, Cout): Cin Cout floats
 * is 16 KiB at the model's 64 channels. */
size_t msd_wino_plane(int Cout, int Cin)
{
    return (size_t)Cin * Cout + 16;
}

/* Words from one plane to the next: a cache line more than the plane (plane_of), and for E
 * a multiple of 16 words, so that every plane stays 64-byte aligned as the kernel loads it. */
static size_t pairs_plane(size_t T, int C)
{
    return (T + 1) / 2 * (size_t)C + 16;
}

static size_t panels_plane(size_t T, int C)
{
    return msd_bf16_packed_b_words((int)T, C) + 16;
}

static int pairs_ok(size_t T, int Cout)
{
    return T <= 128 && Cout <= 1920; /* gemm.c's KC and NC */
}

static size_t up16(size_t n)
{
    return (n + 15) / 16 * 16;
}

/* Scratch regions, each a multiple of 16 floats (64-byte aligned from an aligned base): xc,
 * V, M (E in the weight gradient), then dyc for the weight gradient. V's room holds every
 * form of V (float, the forward's bf16 rows, the weight gradient's pairs); M's both forms of
 * E (float, bf16 panels: wider when Cout is not a multiple of 64). */
static void regions(const msd_wino_conv *c, size_t *v, size_t *m, size_t *d, size_t *total)
{
    size_t T = tiles_of(c), P = (size_t)msd_wino_planes(c->m), e = P * plane_of(T, c->Cout);
    if (c->bf16 && pairs_ok(T, c->Cout) && 16 * panels_plane(T, c->Cout) > e)
        e = 16 * panels_plane(T, c->Cout);
    *v = up16((size_t)c->nb * (c->H + 2) * (c->W + 2) * c->Cin);
    *m = *v + up16(P * plane_of(T, c->Cin));
    *d = *m + up16(e);
    *total = *d + up16((size_t)c->nb * c->H * c->W * c->Cout);
}

size_t msd_wino_scratch(const msd_wino_conv *c)
{
    size_t v, m, d, total;
    regions(c, &v, &m, &d, &total);
    return total;
}

/* ---- the bf16 forward's V ----------------------------------------------------
 * Rows of Cp = C rounded up to even bf16 values (an odd C's last one zero), planes
 * plane_bf16 apart, written by the transform itself: no float V, no packing pass. */
static int even_up(int C)
{
    return C + (C & 1);
}

/* Elements from one bf16 plane to the next: a cache line more than T Cp (plane_of). */
static size_t plane_bf16(size_t T, int C)
{
    return T * (size_t)even_up(C) + 32;
}

#ifdef WINO_BF16_X86
#define BF16_TARGET __attribute__((target(MSD_BF16_NATIVE)))
/* p[0 .. k) = bf16 of v's lanes (vcvtneps2bf16: msd_bf16_from_float's bits) */
BF16_TARGET INLINE void st_bf16(uint16_t *p, vf v, int k)
{
    __m256i h = (__m256i)_mm512_cvtneps_pbh((__m512)v);
    _mm256_mask_storeu_epi16(p, msd_bf16_lanes(k), h);
}
#else
#define BF16_TARGET
static inline void st_bf16(uint16_t *p, vf v, int k)
{
    for (int i = 0; i < k; i++)
        p[i] = msd_bf16_from_float(v[i]);
}
#endif

BF16_TARGET INLINE void input_tile_bf16(uint16_t *v, const float *d, size_t rs, size_t step,
                                        int C, int k, int kst)
{
    vf o[16];
    input_tile(o, d, rs, C, k);
    for (int xi = 0; xi < 16; xi++)
        st_bf16(v + xi * step, o[xi], kst);
}

/* V as bf16 rows: input_transform's values, rounded once. */
BF16_TARGET static void input_transform_bf16(uint16_t *restrict V, const float *restrict xc,
                                             int nb, int C, int H, int W)
{
    int cv = C / VL * VL, Cp = even_up(C);
    size_t T = (size_t)nb * (H / 2) * (W / 2), step = plane_bf16(T, C), rs = (size_t)(W + 2) * C;
    for (size_t t = 0; t < T; t++) {
        const float *d = tile_in(xc, t, H, W, C, 2);
        uint16_t *v = V + t * Cp;
        for (int c = 0; c < cv; c += VL)
            input_tile_bf16(v + c, d + c, rs, step, C, VL, VL);
        if (cv < C) /* the zero lanes fill an odd C's padding */
            input_tile_bf16(v + cv, d + cv, rs, step, C, C - cv, Cp - cv);
    }
}


/* ---- the bf16 weight gradient's operands ------------------------------------
 * dwt_xi += V_xi^T E_xi sums over the tiles, so the bf16 pairs run along the tiles: tiles 2p
 * and 2p + 1 share a word. The transforms write both operands in the forms that
 * msd_sgemm_bf16_packed reads, two tiles at a time: V's word (p, i) at Vw + p Cin + i (its
 * transposed A: strides 1 and Cin), E in msd_bf16_pack_b's panels of 64 channels. No float V
 * or E, no packing pass. Used where a group has at most KC = 128 tiles and Cout fits one
 * column block (one packed block: every group of the model); else the float transforms and
 * msd_sgemm_bf16. */

#ifdef WINO_BF16_X86
/* p[0 .. k) = words of bf16(a[i]) (low half) and bf16(b[i]) (high half) */
BF16_TARGET INLINE void st_pairs(uint32_t *p, vf a, vf b, int k)
{
    static const uint16_t il[32] = { 0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
                                     8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31 };
    __m512i h = (__m512i)_mm512_cvtne2ps_pbh((__m512)b, (__m512)a);
    _mm512_mask_storeu_epi32(p, msd_bf16_lanes(k),
                             _mm512_permutexvar_epi16(_mm512_loadu_si512(il), h));
}
#else
static inline void st_pairs(uint32_t *p, vf a, vf b, int k)
{
    for (int i = 0; i < k; i++)
        p[i] = (uint32_t)msd_bf16_from_float(a[i]) | (uint32_t)msd_bf16_from_float(b[i]) << 16;
}
#endif

/* Vw: V's words (p, i), tiles 2p and 2p + 1 (zero past the last tile), from xc. */
BF16_TARGET static void input_pairs(uint32_t *restrict Vw, const float *restrict xc, int nb, int C,
                                    int H, int W)
{
    size_t T = (size_t)nb * (H / 2) * (W / 2), step = pairs_plane(T, C), rs = (size_t)(W + 2) * C;
    for (size_t p = 0; p < (T + 1) / 2; p++) {
        const float *d0 = tile_in(xc, 2 * p, H, W, C, 2);
        const float *d1 = 2 * p + 1 < T ? tile_in(xc, 2 * p + 1, H, W, C, 2) : NULL;
        for (int c = 0; c < C; c += VL) {
            int k = C - c < VL ? C - c : VL;
            vf a[16], b[16];
            if (k == VL)
                input_tile(a, d0 + c, rs, C, VL);
            else
                input_tile(a, d0 + c, rs, C, k);
            if (d1 && k == VL)
                input_tile(b, d1 + c, rs, C, VL);
            else if (d1)
                input_tile(b, d1 + c, rs, C, k);
            else
                memset(b, 0, sizeof b);
            for (int xi = 0; xi < 16; xi++)
                st_pairs(Vw + xi * step + p * C + c, a[xi], b[xi], k);
        }
    }
}

/* Ew: E in panels of 64 channels, (T + 1) / 2 words per channel, from dyc; the columns past C
 * in the last panel zero. */
BF16_TARGET static void grad_panels(uint32_t *restrict Ew, const float *restrict dyc, int nb, int C,
                                    int H, int W)
{
    size_t T = (size_t)nb * (H / 2) * (W / 2), kp = (T + 1) / 2, step = panels_plane(T, C);
    size_t rs = (size_t)(W + 2) * C;
    int cpad = (C + 63) / 64 * 64;
    vf zero[16];
    memset(zero, 0, sizeof zero);
    for (size_t p = 0; p < kp; p++) {
        const float *d0 = grad_in(dyc, 2 * p, H, W, C, 2);
        const float *d1 = 2 * p + 1 < T ? grad_in(dyc, 2 * p + 1, H, W, C, 2) : NULL;
        for (int c = 0; c < cpad; c += VL) {
            int k = C - c < VL ? C - c : VL; /* <= 0 past C: zeros */
            vf a[16], b[16];
            const vf *pa = a, *pb = b;
            if (k == VL)
                grad_tile(a, d0 + c, rs, C, VL);
            else if (k > 0)
                grad_tile(a, d0 + c, rs, C, k);
            else
                pa = zero;
            if (d1 && k == VL)
                grad_tile(b, d1 + c, rs, C, VL);
            else if (d1 && k > 0)
                grad_tile(b, d1 + c, rs, C, k);
            else
                pb = zero;
            uint32_t *e = Ew + (size_t)(c / 64) * kp * 64 + p * 64 + c % 64;
            for (int xi = 0; xi < 16; xi++) /* all 16 lanes: the zero ones fill the panel */
                st_pairs(e + xi * step, pa[xi], pb[xi], VL);
        }
    }
}

/* ---- weights ------------------------------------------------------------- */

/* G g G^T for 16 kernels at once: g[tap] holds tap (3a + b) of each. */
INLINE void weight_tiles(vf u[16], const vf g[9])
{
    vf t[4][3];
    for (int b = 0; b < 3; b++) {
        t[0][b] = g[b];
        t[1][b] = 0.5f * (g[b] + g[3 + b] + g[6 + b]);
        t[2][b] = 0.5f * (g[b] - g[3 + b] + g[6 + b]);
        t[3][b] = g[6 + b];
    }
    for (int a = 0; a < 4; a++) {
        u[4 * a] = t[a][0];
        u[4 * a + 1] = 0.5f * (t[a][0] + t[a][1] + t[a][2]);
        u[4 * a + 2] = 0.5f * (t[a][0] - t[a][1] + t[a][2]);
        u[4 * a + 3] = t[a][2];
    }
}

/* F(4x4, 3x3) (bt6): u = G g for one column (or row) of three. */
INLINE void g6(vf u[6], const vf g[3])
{
    vf s = g[0] + g[2];
    u[0] = g[0];
    u[1] = (s + g[1]) * (1.0f / 3);
    u[2] = (g[1] - s) * (1.0f / 3);
    u[3] = ((4.0f * g[0] + 2.0f * g[1]) + g[2]) * (-4.0f / 15);
    u[4] = ((g[0] - 2.0f * g[1]) + 4.0f * g[2]) * (1.0f / 15);
    u[5] = g[2];
}

/* G g G^T, 36 values, for 16 kernels at once: g[tap] holds tap (3a + b) of each. */
INLINE void weight_tiles4(vf u[36], const vf g[9])
{
    vf t[6][3];
    for (int b = 0; b < 3; b++) {
        vf col[3] = { g[b], g[3 + b], g[6 + b] }, o[6];
        g6(o, col);
        for (int a = 0; a < 6; a++)
            t[a][b] = o[a];
    }
    for (int a = 0; a < 6; a++)
        g6(u + 6 * a, t[a]);
}

/* Input channels [i, i+ki), output channels [o, o+ko) (both at most 16): w's rows o .. o+ko,
 * 9 ki floats each from input channel i on, transposed 16 x 16 at a time in registers into
 * columns (one per input channel and tap, across the 16 kernels), then each input
 * channel's 16 kernels transformed at once (a gather of 9 taps per kernel was a quarter
 * of a one-sprite sampling step by perf). */
INLINE void weight_block(float *U, const float *w, size_t plane, int Cout, int Cin, int m, int i,
                         int ki, int o, int ko)
{
    vf col[9 * VL];
    int ncol = 9 * ki;
    for (int cb = 0; cb < ncol; cb += VL) {
        int kc = ncol - cb < VL ? ncol - cb : VL;
        vf r[16];
        for (int j = 0; j < VL; j++) {
            if (j < ko)
                LD(r[j], w + ((size_t)(o + j) * Cin + i) * 9 + cb, kc);
            else
                memset(&r[j], 0, sizeof r[j]);
        }
        transpose16(r);
        for (int c = 0; c < kc; c++)
            col[cb + c] = r[c];
    }
    for (int ii = 0; ii < ki; ii++) {
        vf u[36];
        if (m == 4)
            weight_tiles4(u, col + 9 * ii);
        else
            weight_tiles(u, col + 9 * ii);
        for (int xi = 0; xi < (m + 2) * (m + 2); xi++)
            ST(U + xi * plane + (size_t)(i + ii) * Cout + o, u[xi], ko);
    }
}

MSD_MULTIVERSION
void msd_wino_weights(float *U, const float *w, int Cout, int Cin, int m, int i0, int i1)
{
    size_t plane = msd_wino_plane(Cout, Cin);
    for (int i = i0; i < i1; i += VL) {
        int ki = i1 - i < VL ? i1 - i : VL;
        for (int o = 0; o < Cout; o += VL) {
            int ko = Cout - o < VL ? Cout - o : VL;
            if (ki == VL && ko == VL)
                weight_block(U, w, plane, Cout, Cin, m, i, VL, o, VL);
            else
                weight_block(U, w, plane, Cout, Cin, m, i, ki, o, ko);
        }
    }
}

/* ---- the passes ------------------------------------------------------------ */

/* 32-bit words of one packed plane: a multiple of 16, so that every plane stays 64-byte
 * aligned. */
static size_t packed_plane(int Cout, int Cin, int bf16)
{
    return up16(bf16 ? msd_bf16_packed_b_words(Cin, Cout) : msd_packed_b_floats(Cin, Cout));
}

size_t msd_wino_packed_words(int Cout, int Cin, int m, int bf16)
{
    return (size_t)msd_wino_planes(m) * packed_plane(Cout, Cin, bf16);
}

void msd_wino_pack(uint32_t *Up, const float *U, int Cout, int Cin, int bf16, int xi0, int xi1)
{
    size_t words = packed_plane(Cout, Cin, bf16), plane = msd_wino_plane(Cout, Cin);
    for (int xi = xi0; xi < xi1; xi++) {
        if (bf16)
            msd_bf16_pack_b(Up + xi * words, U + xi * plane, Cout, Cin, Cout);
        else
            msd_pack_b((float *)(Up + xi * words), U + xi * plane, Cout, Cin, Cout);
    }
}

/* The products and the output transform of group c, from xc (its input, padded and
 * channels last): y (nb, Cout, H, W) = (or += with add) the convolution with the packed
 * kernels Up, + b. V and M: the regions' rooms; buf: output_transform's. */
static void forward_from(const msd_wino_conv *c, float *y, int add, const float *b,
                         const msd_wino_post *post, const float *xc, const uint32_t *Up,
                         float *V, float *M, float *buf)
{
    int nb = c->nb, Cin = c->Cin, Cout = c->Cout, H = c->H, W = c->W;
    size_t T = tiles_of(c), L = (size_t)H * W;
    size_t pi = plane_of(T, Cin), po = plane_of(T, Cout), words = packed_plane(Cout, Cin, c->bf16);
    if (c->bf16) { /* V in bf16 (it fits in the float V's room) */
        uint16_t *Vh = (uint16_t *)V;
        size_t ph = plane_bf16(T, Cin);
        input_transform_bf16(Vh, xc, nb, Cin, H, W);
        for (int xi = 0; xi < 16; xi++)
            msd_sgemm_bf16_packed((int)T, Cout, Cin, (const uint32_t *)(Vh + xi * ph),
                                  (size_t)even_up(Cin) / 2, 1, Up + xi * words, 0.0f,
                                  M + xi * po, Cout);
    } else {
        input_transform(V, xc, nb, Cin, H, W, c->m);
        /* M_xi (T, Cout) = V_xi (T, Cin) U_xi (Cin, Cout) */
        for (int xi = 0; xi < msd_wino_planes(c->m); xi++)
            msd_sgemm_packed((int)T, Cout, Cin, V + xi * pi, Cin,
                             (const float *)(Up + xi * words), 0.0f, M + xi * po, Cout);
    }
    for (int n = 0; n < nb; n++)
        output_transform(y + (size_t)n * Cout * L, M, T, Cout,
                         (size_t)n * (H / c->m) * (W / c->m), H, W, c->m, add, b, post, buf);
}

void msd_wino_forward(const msd_wino_conv *c, float *y, int add, const float *b,
                      const msd_wino_post *post, const float *x, const uint32_t *Up,
                      float *scratch)
{
    size_t rv, rm, rd, rt;
    regions(c, &rv, &rm, &rd, &rt);
    to_channels_last(scratch, x, c->nb, c->Cin, c->H, c->W, 1, NULL);
    forward_from(c, y, add, b, post, scratch, Up, scratch + rv, scratch + rm, scratch + rd);
}

/* dwt += the weight gradient of group c in the transformed domain, from xc and dyc (x and dy
 * padded and channels last); V and E: the regions' rooms. */
static void dw_from(const msd_wino_conv *c, float *dwt, const float *xc, const float *dyc,
                    float *V, float *E)
{
    int nb = c->nb, Cin = c->Cin, Cout = c->Cout, H = c->H, W = c->W;
    size_t T = tiles_of(c), plane = msd_wino_plane(Cout, Cin);
    /* dwt_xi (Cin, Cout) += V_xi^T (Cin, T) E_xi (T, Cout) */
    if (c->bf16 && pairs_ok(T, Cout)) {
        uint32_t *Vw = (uint32_t *)V, *Ew = (uint32_t *)E;
        size_t pv = pairs_plane(T, Cin), pe = panels_plane(T, Cout);
        input_pairs(Vw, xc, nb, Cin, H, W);
        grad_panels(Ew, dyc, nb, Cout, H, W);
        for (int xi = 0; xi < 16; xi++)
            msd_sgemm_bf16_packed(Cin, Cout, (int)T, Vw + xi * pv, 1, (size_t)Cin, Ew + xi * pe,
                                  1.0f, dwt + xi * plane, Cout);
        return;
    }
    size_t pi = plane_of(T, Cin), po = plane_of(T, Cout);
    input_transform(V, xc, nb, Cin, H, W, c->m);
    grad_transform(E, dyc, nb, Cout, H, W, c->m);
    for (int xi = 0; xi < msd_wino_planes(c->m); xi++)
        (c->bf16 ? msd_sgemm_bf16 : msd_sgemm)(1, 0, Cin, Cout, (int)T, 1.0f, V + xi * pi, Cin,
                                               E + xi * po, Cout, 1.0f, dwt + xi * plane, Cout);
}

/* The backward's rooms: dyc, then xc, V, M (the input gradient's products, E after them),
 * each a multiple of 16 floats. */
static void back_regions(const msd_wino_conv *c, size_t *x, size_t *v, size_t *m, size_t *total)
{
    msd_wino_conv cx = *c; /* the input gradient's convolution: Cout channels in, Cin out */
    cx.Cin = c->Cout;
    cx.Cout = c->Cin;
    size_t fv, fm, fd, ft, bv, bm, bd, bt, px = (size_t)c->nb * (c->H + 2) * (c->W + 2);
    regions(c, &bv, &bm, &bd, &bt);
    regions(&cx, &fv, &fm, &fd, &ft);
    size_t nv = bm - bv > fm - fv ? bm - bv : fm - fv; /* V's room, either way */
    size_t ne = bd - bm > fd - fm ? bd - bm : fd - fm; /* M's or E's */
    *x = up16(px * c->Cout);
    *v = *x + up16(px * c->Cin);
    *m = *v + nv;
    *total = *m + ne;
}

size_t msd_wino_backward_scratch(const msd_wino_conv *c)
{
    size_t x, v, m, total;
    back_regions(c, &x, &v, &m, &total);
    return total;
}

void msd_wino_backward(const msd_wino_conv *c, float *dx, int dx_add, const uint32_t *Upx,
                       float *dwt, float *db, const float *x, const float *dy, float *scratch)
{
    size_t rx, rv, rm, rt;
    back_regions(c, &rx, &rv, &rm, &rt);
    float *dyc = scratch, *xc = scratch + rx, *V = scratch + rv, *M = scratch + rm;
    to_channels_last(dyc, dy, c->nb, c->Cout, c->H, c->W, 1, db);
    if (dx) { /* xc's room is output_transform's buffer until x goes there */
        msd_wino_conv cx = *c;
        cx.Cin = c->Cout;
        cx.Cout = c->Cin;
        forward_from(&cx, dx, dx_add, NULL, NULL, dyc, Upx, V, M, xc);
    }
    if (dwt) {
        to_channels_last(xc, x, c->nb, c->Cin, c->H, c->W, 1, NULL);
        dw_from(c, dwt, xc, dyc, V, M);
    }
}

/* F(4x4, 3x3) (bt6): g = G^T m for one column (or row) of six. */
static void gt6(float g[3], const float m[6])
{
    float a = (m[1] + m[2]) * (1.0f / 3), b = (m[1] - m[2]) * (1.0f / 3);
    g[0] = ((m[0] + b) - (16.0f / 15) * m[3]) + (1.0f / 15) * m[4];
    g[1] = (a - (8.0f / 15) * m[3]) - (2.0f / 15) * m[4];
    g[2] = ((b - (4.0f / 15) * m[3]) + (4.0f / 15) * m[4]) + m[5];
}

static void dw_finish4(float *dw, const float *dwt, int Cout, int Cin, int o0, int o1)
{
    size_t plane = msd_wino_plane(Cout, Cin);
    for (int o = o0; o < o1; o++)
        for (int i = 0; i < Cin; i++) {
            float t[3][6], col[6], r[3];
            for (int b = 0; b < 6; b++) {
                for (int a = 0; a < 6; a++)
                    col[a] = dwt[(6 * a + b) * plane + (size_t)i * Cout + o];
                gt6(r, col);
                for (int a = 0; a < 3; a++)
                    t[a][b] = r[a];
            }
            float *g = dw + ((size_t)o * Cin + i) * 9;
            for (int a = 0; a < 3; a++) {
                gt6(r, t[a]);
                for (int b = 0; b < 3; b++)
                    g[3 * a + b] += r[b];
            }
        }
}

void msd_wino_dw_finish(float *dw, const float *dwt, int Cout, int Cin, int m, int o0, int o1)
{
    if (m == 4) {
        dw_finish4(dw, dwt, Cout, Cin, o0, o1);
        return;
    }
    size_t plane = msd_wino_plane(Cout, Cin);
    for (int o = o0; o < o1; o++)
        for (int i = 0; i < Cin; i++) {
            float m[4][4], t[3][4];
            for (int xi = 0; xi < 16; xi++)
                m[xi / 4][xi % 4] = dwt[xi * plane + (size_t)i * Cout + o];
            /* G^T m G, G^T = [1 1/2 1/2 0; 0 1/2 -1/2 0; 0 1/2 1/2 1] */
            for (int b = 0; b < 4; b++) {
                t[0][b] = m[0][b] + 0.5f * (m[1][b] + m[2][b]);
                t[1][b] = 0.5f * (m[1][b] - m[2][b]);
                t[2][b] = 0.5f * (m[1][b] + m[2][b]) + m[3][b];
            }
            float *g = dw + ((size_t)o * Cin + i) * 9;
            for (int a = 0; a < 3; a++) {
                g[3 * a] += t[a][0] + 0.5f * (t[a][1] + t[a][2]);
                g[3 * a + 1] += 0.5f * (t[a][1] - t[a][2]);
                g[3 * a + 2] += 0.5f * (t[a][1] + t[a][2]) + t[a][3];
            }
        }
}
