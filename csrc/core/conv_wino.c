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
 * The transforms are written as loops over channels that GCC vectorises;
 * MSD_MULTIVERSION builds them for AVX-512, AVX2 and the baseline. Fixed
 * operations in a fixed order, and no fused multiply-adds (-std=c11), so every
 * clone computes the same bits; the products follow the GEMM's kernel level. */
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
#include "reduce.h"
#include "vec16.h"

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

/* Floats from one of V's, M's or E's 16 planes (T, C) to the next: a cache line more than
 * T C, so that the transforms' 16 streams, one per plane, do not all fall in the same L1
 * sets (T C floats is a multiple of 4 KiB at every shape the model has: the loads and stores
 * of one tile then evicted each other; measured 14% of a bf16 sampling step in the input
 * transform before, by perf). */
static size_t plane_of(size_t T, int C)
{
    return T * C + 16;
}

/* The same for U's and dwt's planes (Cin, Cout): Cin Cout floats is 16 KiB at the model's
 * 64 channels. */
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

/* ---- vectors ----------------------------------------------------------------
 * The transforms and layout changes work on 16 channels at a time in a GCC vector (one zmm
 * register at AVX-512, two at AVX2, four SSE registers at the baseline): the
 * body of a tile, always inlined, runs with k = 16 on whole blocks (fixed-size
 * copies: plain vector loads and stores) and once with k < 16 on the last
 * channels, on zero-filled vectors (vec16.h: the vector type, its loads and stores, and
 * the 16 x 16 transpose). */

/* ---- layout changes -------------------------------------------------------- */

/* One block of to_channels_last: channels [c0, c0+kc) of pixels [l0,
 * l0+kl) of src (C, L) to their places in d; with sum, their sums over the
 * block's pixels added to sum[c0 ..] (pixel by pixel, in order). */
INLINE void cl_block(float *d, const float *src, int L, int W, int C, size_t rs, int p, int l0,
                     int c0, int kl, int kc, float *sum)
{
    vf r[16];
    for (int i = 0; i < VL; i++) {
        if (i < kc)
            LD(r[i], src + (size_t)(c0 + i) * L + l0, kl);
        else
            memset(&r[i], 0, sizeof r[i]);
    }
    transpose16(r);
    for (int j = 0; j < kl; j++) {
        int l = l0 + j, yy = l / W + p, xx = l % W + p;
        ST(d + yy * rs + (size_t)xx * C + c0, r[j], kc);
    }
    if (sum) {
        vf acc;
        LD(acc, sum + c0, kc);
        for (int j = 0; j < kl; j++)
            acc += r[j];
        ST(sum + c0, acc, kc);
    }
}

/* dc (nb, H+p+p, W+p+p, C): x (nb, C, H, W) channels last, padded by p zeros
 * on every side (p = 0 or 1), in blocks of 16 channels x 16 pixels; with sum
 * (C floats), x's sums over images and pixels added to it (a fixed order:
 * image by image, 16 pixels at a time). */
MSD_MULTIVERSION
static void to_channels_last(float *restrict dc, const float *restrict x, int nb, int C, int H,
                             int W, int p, float *restrict sum)
{
    int Wp = W + 2 * p, L = H * W;
    size_t plane = (size_t)(H + 2 * p) * Wp * C, rs = (size_t)Wp * C;
    for (int n = 0; n < nb; n++) {
        float *d = dc + (size_t)n * plane;
        const float *src = x + (size_t)n * C * L;
        if (p) {
            memset(d, 0, rs * sizeof *d);
            memset(d + (size_t)(H + 1) * rs, 0, rs * sizeof *d);
            for (int yy = 1; yy <= H; yy++) {
                memset(d + yy * rs, 0, (size_t)C * sizeof *d);
                memset(d + yy * rs + (size_t)(W + 1) * C, 0, (size_t)C * sizeof *d);
            }
        }
        for (int l0 = 0; l0 < L; l0 += VL) {
            int kl = L - l0 < VL ? L - l0 : VL;
            for (int c0 = 0; c0 < C; c0 += VL) {
                int kc = C - c0 < VL ? C - c0 : VL;
                if (kl == VL && kc == VL)
                    cl_block(d, src, L, W, C, rs, p, l0, c0, VL, VL, sum);
                else
                    cl_block(d, src, L, W, C, rs, p, l0, c0, kl, kc, sum);
            }
        }
    }
}

/* One block of from_channels_last: pixels [l0, l0+kl) of channels [c0,
 * c0+kc). */
INLINE void ncl_block(float *y, const float *yc, int C, int L, int add, const float *b, int l0,
                      int c0, int kl, int kc)
{
    vf r[16];
    for (int i = 0; i < VL; i++) {
        if (i < kl)
            LD(r[i], yc + (size_t)(l0 + i) * C + c0, kc);
        else
            memset(&r[i], 0, sizeof r[i]);
    }
    transpose16(r);
    for (int j = 0; j < kc; j++) {
        float *dst = y + (size_t)(c0 + j) * L + l0;
        vf o;
        if (add) {
            LD(o, dst, kl);
            o += r[j];
        } else {
            o = r[j] + (b ? b[c0 + j] : 0.0f);
        }
        ST(dst, o, kl);
    }
}

/* ---- transforms ------------------------------------------------------------ */

/* The input of tile t (m x m outputs) in xc (nb, H+2, W+2, C). */
static const float *tile_in(const float *xc, size_t t, int H, int W, int C, int m)
{
    size_t tw = (size_t)W / m, th = (size_t)H / m, n = t / (th * tw), ty = t / tw % th;
    size_t tx = t % tw;
    return xc + ((n * (H + 2) + m * ty) * (W + 2) + m * tx) * C;
}

/* One tile, channels [c, c+k): d its 4x4 input (row stride rs), v its 16
 * outputs (lanes k and up zero). */
INLINE void input_tile(vf v[16], const float *d, size_t rs, int C, int k)
{
    vf r[4][4];
    for (int b = 0; b < 4; b++) {
        vf d0, d1, d2, d3;
        const float *p = d + (size_t)b * C;
        LD(d0, p, k);
        LD(d1, p + rs, k);
        LD(d2, p + 2 * rs, k);
        LD(d3, p + 3 * rs, k);
        r[0][b] = d0 - d2;
        r[1][b] = d1 + d2;
        r[2][b] = d2 - d1;
        r[3][b] = d1 - d3;
    }
    for (int a = 0; a < 4; a++) {
        v[4 * a] = r[a][0] - r[a][2];
        v[4 * a + 1] = r[a][1] + r[a][2];
        v[4 * a + 2] = r[a][2] - r[a][1];
        v[4 * a + 3] = r[a][1] - r[a][3];
    }
}

/* F(4x4, 3x3) on the points 0, 1, -1, 1/2, -2 and infinity: half the rounding error of
 * Lavin and Gray's 0, +-1, +-2 (measured in float32 against float64, forward and weight
 * gradient, 64 channels), with
 *   B^T = [1 -3/2 -2 3/2 1 0; 0 -1 1/2 5/2 1 0; 0 1 -5/2 1/2 1 0;
 *          0 -2 -1 2 1 0; 0 1/2 -1 -1/2 1 0; 0 1 -3/2 -2 3/2 1],
 *   G = [1 0 0; 1/3 1/3 1/3; -1/3 1/3 -1/3; -16/15 -8/15 -4/15; 1/15 -2/15 4/15; 0 0 1],
 *   A^T = [1 1 1 1 1 0; 0 1 -1 1/2 -2 0; 0 1 1 1/4 4 0; 0 1 -1 1/8 -8 1].
 * The builds compile with -std=c11, which fuses no multiply-add, so every clone computes
 * the same bits. bt6: o = B^T d for one column (or row) of six. */
INLINE void bt6(vf o[6], const vf d[6])
{
    vf u = d[3] - d[1], v = d[4] - d[2];
    o[0] = (d[0] - d[2]) + v + 1.5f * u;
    o[1] = (u + v) + 1.5f * (d[2] + d[3]);
    o[2] = (v - u) + 1.5f * (d[3] - d[2]);
    o[3] = v + 2.0f * u;
    o[4] = v - 0.5f * u;
    o[5] = ((d[5] - d[3]) - u) + 1.5f * v;
}

/* F(4x4, 3x3): one 6x6 tile, channels [c, c+k): d its input (row stride rs), v its 36
 * outputs B^T D B (position 6a + b: row a, column b). */
INLINE void input_tile4(vf v[36], const float *d, size_t rs, int C, int k)
{
    vf r[6][6];
    for (int b = 0; b < 6; b++) {
        vf col[6], o[6];
        for (int a = 0; a < 6; a++)
            LD(col[a], d + a * rs + (size_t)b * C, k);
        bt6(o, col);
        for (int a = 0; a < 6; a++)
            r[a][b] = o[a];
    }
    for (int a = 0; a < 6; a++)
        bt6(v + 6 * a, r[a]);
}

/* One tile's channels [c, c+k) into V ((m + 2)^2 planes step floats apart). */
INLINE void input_tile_f32(float *v, const float *d, size_t rs, size_t step, int C, int k, int m)
{
    vf o[36];
    if (m == 4)
        input_tile4(o, d, rs, C, k);
    else
        input_tile(o, d, rs, C, k);
    for (int xi = 0; xi < (m + 2) * (m + 2); xi++)
        ST(v + xi * step, o[xi], k);
}

/* V ((m + 2)^2, T, C) = B^T D B for every tile of xc (nb, H+2, W+2, C). */
MSD_MULTIVERSION
static void input_transform(float *restrict V, const float *restrict xc, int nb, int C, int H,
                            int W, int m)
{
    int cv = C / VL * VL;
    size_t T = (size_t)nb * (H / m) * (W / m), step = plane_of(T, C), rs = (size_t)(W + 2) * C;
    for (size_t t = 0; t < T; t++) {
        const float *d = tile_in(xc, t, H, W, C, m);
        float *v = V + t * C;
        for (int c = 0; c < cv; c += VL)
            input_tile_f32(v + c, d + c, rs, step, C, VL, m);
        if (cv < C)
            input_tile_f32(v + cv, d + cv, rs, step, C, C - cv, m);
    }
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

/* One tile, channels [c, c+k): m its 16 products (stride step), o0 and o1
 * its two output rows (two pixels, ps floats apart). */
INLINE void output_tile(float *o0, float *o1, const float *m, size_t step, int ps, int k)
{
    vf s[2][4], o;
    for (int b = 0; b < 4; b++) {
        vf m0, m1, m2, m3;
        const float *p = m + b * step;
        LD(m0, p, k);
        LD(m1, p + 4 * step, k);
        LD(m2, p + 8 * step, k);
        LD(m3, p + 12 * step, k);
        s[0][b] = m0 + m1 + m2;
        s[1][b] = m1 - m2 - m3;
    }
    o = s[0][0] + s[0][1] + s[0][2];
    ST(o0, o, k);
    o = s[0][1] - s[0][2] - s[0][3];
    ST(o0 + ps, o, k);
    o = s[1][0] + s[1][1] + s[1][2];
    ST(o1, o, k);
    o = s[1][1] - s[1][2] - s[1][3];
    ST(o1 + ps, o, k);
}

/* F(4x4, 3x3) (bt6): o = A^T m for one column (or row) of six. */
INLINE void at6(vf o[4], const vf m[6])
{
    vf a = m[1] + m[2], b = m[1] - m[2];
    o[0] = ((m[0] + a) + m[3]) + m[4];
    o[1] = (b + 0.5f * m[3]) - 2.0f * m[4];
    o[2] = (a + 0.25f * m[3]) + 4.0f * m[4];
    o[3] = ((b + 0.125f * m[3]) - 8.0f * m[4]) + m[5];
}

/* F(4x4, 3x3): one tile, channels [c, c+k): m its 36 products (stride step), o its first
 * output row; rows rs floats apart, pixels ps floats apart. */
INLINE void output_tile4(float *o, const float *m, size_t step, size_t rs, int ps, int k)
{
    vf s[4][6];
    for (int b = 0; b < 6; b++) {
        vf col[6], t[4];
        for (int a = 0; a < 6; a++)
            LD(col[a], m + (size_t)(6 * a + b) * step, k);
        at6(t, col);
        for (int i = 0; i < 4; i++)
            s[i][b] = t[i];
    }
    for (int i = 0; i < 4; i++) {
        vf t[4];
        at6(t, s[i]);
        for (int j = 0; j < 4; j++)
            ST(o + i * rs + (size_t)j * ps, t[j], k);
    }
}

/* One row of tiles, channels [c0, c0+kc): their m output rows into buf (m W pixels of 16
 * floats), = A^T M A of tiles t0 .. t0 + W/m - 1 of M ((m + 2)^2, T, C). */
INLINE void output_row(float *buf, const float *M, size_t step, int C, size_t t0, int W, int c0,
                       int kc, int m)
{
    for (int tx = 0; tx < W / m; tx++) {
        const float *mt = M + (t0 + tx) * C + c0;
        if (m == 4)
            output_tile4(buf + (size_t)4 * tx * VL, mt, step, (size_t)W * VL, VL, kc);
        else
            output_tile(buf + (size_t)2 * tx * VL, buf + ((size_t)W + 2 * tx) * VL, mt, step,
                        VL, kc);
    }
}

/* y (C, H, W) = (or += with add) the image of tiles t0 .. of M ((m + 2)^2, T, C) + b (C, or
 * NULL; ignored with add): per row of tiles and 16 channels, the m output rows (m W floats in
 * a row of each channel's plane) formed channels last in buf (m W x 16 floats, in L1), then
 * transposed into place 16 pixels at a time: the image never goes through memory channels
 * last. With post, its epilogue on those rows while they are in L1 (the bits of doing it
 * after). */
MSD_MULTIVERSION
static void output_transform(float *restrict y, const float *restrict M, size_t T, int C,
                             size_t t0, int H, int W, int m, int add, const float *b,
                             const msd_wino_post *post, float *restrict buf)
{
    size_t step = plane_of(T, C), L = (size_t)H * W;
    for (int ty = 0; ty < H / m; ty++) {
        size_t tr = t0 + (size_t)ty * (W / m);
        float *yr = y + (size_t)m * ty * W;
        for (int c0 = 0; c0 < C; c0 += VL) {
            int kc = C - c0 < VL ? C - c0 : VL;
            const float *bc = b ? b + c0 : NULL;
            if (kc == VL)
                output_row(buf, M, step, C, tr, W, c0, VL, m);
            else
                output_row(buf, M, step, C, tr, W, c0, kc, m);
            for (int l0 = 0; l0 < m * W; l0 += VL) {
                int kl = m * W - l0 < VL ? m * W - l0 : VL;
                if (kl == VL && kc == VL)
                    ncl_block(yr + c0 * L, buf, VL, (int)L, add, bc, l0, 0, VL, VL);
                else
                    ncl_block(yr + c0 * L, buf, VL, (int)L, add, bc, l0, 0, kl, kc);
            }
            for (int k = 0; post && k < kc; k++) {
                float *row = yr + (size_t)(c0 + k) * L;
                if (post->a)
                    for (int l = 0; l < m * W; l++)
                        row[l] = row[l] * post->a[c0 + k] + post->b[c0 + k];
                if (post->gelu)
                    msd_gelu_forward_inplace(row, (size_t)m * W);
            }
        }
    }
}

/* One 2x2 tile of dy, channels [c, c+k): d its first row (row stride rs),
 * e its 16 outputs (lanes k and up zero). */
INLINE void grad_tile(vf e[16], const float *d, size_t rs, int C, int k)
{
    vf r[4][2];
    for (int b = 0; b < 2; b++) {
        vf e0, e1;
        LD(e0, d + (size_t)b * C, k);
        LD(e1, d + rs + (size_t)b * C, k);
        r[0][b] = e0;
        r[1][b] = e0 + e1;
        r[2][b] = e0 - e1;
        r[3][b] = -e1;
    }
    for (int a = 0; a < 4; a++) {
        e[4 * a] = r[a][0];
        e[4 * a + 1] = r[a][0] + r[a][1];
        e[4 * a + 2] = r[a][0] - r[a][1];
        e[4 * a + 3] = -r[a][1];
    }
}

/* F(4x4, 3x3) (bt6): o = A e for one column (or row) of four (A = (A^T)^T, 6 x 4). */
INLINE void a4(vf o[6], const vf e[4])
{
    vf p = e[0] + e[2], q = e[1] + e[3];
    o[0] = e[0];
    o[1] = p + q;
    o[2] = p - q;
    o[3] = ((e[0] + 0.5f * e[1]) + 0.25f * e[2]) + 0.125f * e[3];
    o[4] = ((e[0] - 2.0f * e[1]) + 4.0f * e[2]) - 8.0f * e[3];
    o[5] = e[3];
}

/* F(4x4, 3x3): one 4x4 tile of dy, channels [c, c+k): d its first row (row stride rs), e its
 * 36 outputs A dY A^T. */
INLINE void grad_tile4(vf e[36], const float *d, size_t rs, int C, int k)
{
    vf r[6][4];
    for (int b = 0; b < 4; b++) {
        vf col[4], o[6];
        for (int a = 0; a < 4; a++)
            LD(col[a], d + a * rs + (size_t)b * C, k);
        a4(o, col);
        for (int a = 0; a < 6; a++)
            r[a][b] = o[a];
    }
    for (int a = 0; a < 6; a++)
        a4(e + 6 * a, r[a]);
}

INLINE void grad_tile_f32(float *e, const float *d, size_t rs, size_t step, int C, int k, int m)
{
    vf o[36];
    if (m == 4)
        grad_tile4(o, d, rs, C, k);
    else
        grad_tile(o, d, rs, C, k);
    for (int xi = 0; xi < (m + 2) * (m + 2); xi++)
        ST(e + xi * step, o[xi], k);
}

/* The first dy value of tile t (m x m outputs) in dyc (nb, H+2, W+2, C), dy padded by one
 * zero on every side (as the input gradient's convolution reads it). */
static const float *grad_in(const float *dyc, size_t t, int H, int W, int C, int m)
{
    return tile_in(dyc, t, H, W, C, m) + (size_t)(W + 3) * C;
}

/* E ((m + 2)^2, T, C) = A dY A^T for every m x m tile of dyc (nb, H+2, W+2, C). */
MSD_MULTIVERSION
static void grad_transform(float *restrict E, const float *restrict dyc, int nb, int C, int H,
                           int W, int m)
{
    int cv = C / VL * VL;
    size_t T = (size_t)nb * (H / m) * (W / m), step = plane_of(T, C), rs = (size_t)(W + 2) * C;
    for (size_t t = 0; t < T; t++) {
        const float *d = grad_in(dyc, t, H, W, C, m);
        float *e = E + t * C;
        for (int c = 0; c < cv; c += VL)
            grad_tile_f32(e + c, d + c, rs, step, C, VL, m);
        if (cv < C)
            grad_tile_f32(e + cv, d + cv, rs, step, C, C - cv, m);
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
