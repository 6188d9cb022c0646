/* bf16 rounding and the AMX convolution (conv_amx.h).
 *
 * The tiles: tdpbf16ps C += A B, with C 16 x 16 fp32, A 16 rows of 32 bf16
 * (64 bytes each) and B 16 rows of 16 bf16 pairs, "VNNI" order: B's row r
 * holds (B[2r][j], B[2r+1][j]) for j = 0..15, so that K runs over 32 values.
 * One instruction is 8192 multiply-adds; this machine's core does about 400
 * G of them a second on the tiles against 43 G with AVX-512 FMA.
 *
 * Convolution without im2col: the padded image is laid out flat, position
 * q = n*Hp*Wp + y*Wp + x over the group (Hp = H + 2 pad, Wp = W + 2 pad).
 * Output pixel (oy, ox) of image n sits at q = n*Hp*Wp + oy*Wp + ox, and its
 * input for tap (ki, kj) is at q + ki*Wp + kj: one shift per tap for every
 * pixel, so a tile of 16 consecutive q is a plain strided load. The price:
 * the q where ox >= Wo or oy >= Ho are computed and thrown away (27% more
 * work at 16x16 with pad 1, 56% at 8x8), small next to the tiles' speed.
 *
 * Forward: y[q, co] = sum over taps t and channels ci of
 * xl[q + off(t), ci] * w[co, ci, t], with A = the image channels last (xl:
 * (Pbuf, Cin), one position a row: a tap's shift moves a tile by whole rows,
 * so every tile row is one aligned 64-byte line; shifting the positions
 * within a row instead, as the first version did with the image channel-major,
 * made most rows straddle two lines and cost a third of the forward) and B =
 * the packed weights (msd_amx_pack_weights). The 32 x 32 result blocks come
 * out position-major and are transposed on their way to y.
 * Weight gradient, tap by tap: dwt[(ci, t), co] = sum over q of dy[co, q] *
 * xl[q + off(t), ci], with A = dy channel-major (dyc: (Cout, Pc), zero at the
 * thrown-away q) and B = the image channels last with pairs of positions
 * interleaved, as the tiles' K runs over pairs: q + off(t) starts a pair at an
 * even position when off(t) is even and an odd one when it is odd, so the
 * image is paired both ways (xe: positions 2p, 2p+1; xo: 2p+1, 2p+2), and a
 * tap's shift again moves a tile by whole rows. The blocks come out (co, ci)
 * and are transposed on their way to dwt. */
#include <string.h>

#include "conv_amx.h"
#include "cpu.h"
#include "reduce.h"

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>

#include "bf16_x86.h"
#include "vec16.h"
#define MSD_AMX 1
#endif

uint16_t msd_bf16_from_float(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7f800000u) == 0)
        return (uint16_t)(u >> 16 & 0x8000u);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)(u >> 16 | 0x0040u);
    u += 0x7fffu + (u >> 16 & 1u);
    return (uint16_t)(u >> 16);
}

/* msd_bf16_from_float's three cases as selects, so that the loop
 * vectorises (it rounds every input of the bf16 paths without tiles). */
MSD_MULTIVERSION
void msd_round_bf16(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, x + i, sizeof u);
        uint32_t rounded = (u + 0x7fffu + (u >> 16 & 1u)) & 0xffff0000u;
        uint32_t nan = (u | 0x00400000u) & 0xffff0000u;
        uint32_t r = (u & 0x7fffffffu) > 0x7f800000u ? nan : rounded;
        r = (u & 0x7f800000u) == 0 ? u & 0x80000000u : r;
        memcpy(x + i, &r, sizeof r);
    }
}

int msd_amx_conv_ok(int Cin, int Cout, int stride)
{
    return msd_isa_get() == MSD_ISA_AMX && stride == 1 && Cin > 0 && Cout > 0 &&
           Cin % 32 == 0 && Cout % 32 == 0;
}

/* The flat layout of a group (see the top of the file). */
typedef struct grid {
    int Hp, Wp, Ho, Wo, taps;
    size_t plane; /* Hp*Wp */
    size_t Pc;    /* positions computed: nb*plane rounded up to 32 */
    size_t Pbuf;  /* positions stored: Pc plus the largest tap shift, rounded up to 32 */
} grid;

static grid make_grid(const msd_amx_conv *c)
{
    grid g;
    g.Hp = c->H + 2 * c->pad;
    g.Wp = c->W + 2 * c->pad;
    g.Ho = g.Hp - c->kh + 1;
    g.Wo = g.Wp - c->kw + 1;
    g.taps = c->kh * c->kw;
    g.plane = (size_t)g.Hp * g.Wp;
    g.Pc = ((size_t)c->nb * g.plane + 31) / 32 * 32;
    size_t shift = (size_t)(c->kh - 1) * g.Wp + (size_t)(c->kw - 1);
    g.Pbuf = (g.Pc + shift + 31) / 32 * 32;
    return g;
}

static size_t align64(size_t n)
{
    return (n + 63) / 64 * 64;
}

/* In one channel row of a flat layout (total positions of sz bytes, at
 * row), zeroes every position outside the rows x cols block that the image
 * copies write in each of nb images (image n's block starts at position
 * n*plane + y0*Wp + x0): the padding frames and the tail. */
static void zero_outside(char *row, size_t sz, const grid *g, int nb, int y0, int x0, int rows,
                         int cols, size_t total)
{
    size_t at = 0;
    for (int n = 0; n < nb; n++)
        for (int r = 0; r < rows; r++) {
            size_t first = (size_t)n * g->plane + (size_t)(y0 + r) * g->Wp + (size_t)x0;
            memset(row + at * sz, 0, (first - at) * sz);
            at = first + (size_t)cols;
        }
    memset(row + at * sz, 0, (total - at) * sz);
}

size_t msd_amx_conv_scratch(const msd_amx_conv *c)
{
    grid g = make_grid(c);
    size_t xl = align64((size_t)c->Cin * g.Pbuf * 2);
    /* forward: xl, then the output offset of each q */
    size_t fwd = xl + g.Pc * sizeof(long);
    /* weight gradient: xl, its two pairings, then dy channel-major */
    size_t dw = 3 * xl + align64(g.Pc * (size_t)c->Cout * 2);
    return fwd > dw ? fwd : dw;
}

#ifdef MSD_AMX
static void pack_weights_avx512(uint16_t *wa, const float *w, int Cout, int Cin, int taps,
                                size_t sco, size_t sci);
#endif

/* Offset in wa of the pair (channels ci & ~1, ci | 1) for output channel co and tap t: the
 * 16 x 16 block of 32-bit words of (t, ci / 32, co / 16), row (ci % 32) / 2, column co % 16,
 * low half the even channel. */
static size_t packed_at(int co, int ci, int t, int Cin, int Cout)
{
    size_t blk = ((size_t)t * (Cin / 32) + (size_t)ci / 32) * (size_t)(Cout / 16) + co / 16;
    return blk * 512 + (size_t)(ci % 32 / 2) * 32 + (size_t)(co % 16) * 2 + ci % 2;
}

void msd_amx_pack_weights_strided(uint16_t *wa, const float *w, int Cout, int Cin, int taps,
                                  size_t sco, size_t sci)
{
#ifdef MSD_AMX
    /* every call of a bf16 convolution packs its weights: vectorised, so that a batch of
     * one image does not spend its time here */
    if (msd_isa_get() >= MSD_ISA_AVX512) {
        pack_weights_avx512(wa, w, Cout, Cin, taps, sco, sci);
        return;
    }
#endif
    for (int co = 0; co < Cout; co++)
        for (int ci = 0; ci < Cin; ci++)
            for (int t = 0; t < taps; t++)
                wa[packed_at(co, ci, t, Cin, Cout)] =
                    msd_bf16_from_float(w[co * sco + ci * sci + (size_t)t]);
}

void msd_amx_pack_weights(uint16_t *wa, const float *w, int Cout, int Cin, int taps)
{
    msd_amx_pack_weights_strided(wa, w, Cout, Cin, taps, (size_t)Cin * taps, (size_t)taps);
}

#ifdef MSD_AMX

#define AVX512 "avx512f,avx512bw,avx512vl"
#define AMX AVX512 ",avx512bf16,amx-tile,amx-bf16"

/* msd_amx_pack_weights_strided, one 64-byte row of a block at a time (written in order):
 * the even and the odd channel of a pair for 16 output channels, each gathered at the
 * stride of the output channels (two plain loads where that is 1) */
__attribute__((target(AVX512))) static void pack_weights_avx512(uint16_t *wa, const float *w,
                                                                int Cout, int Cin, int taps,
                                                                size_t sco, size_t sci)
{
    __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11,
                                                       12, 13, 14, 15),
                                     _mm512_set1_epi32((int)sco));
    uint16_t *d = wa;
    for (int t = 0; t < taps; t++)
        for (int c0 = 0; c0 < Cin; c0 += 32)
            for (int j0 = 0; j0 < Cout; j0 += 16)
                for (int r = 0; r < 16; r++, d += 32) {
                    const float *src = w + j0 * sco + (size_t)(c0 + 2 * r) * sci + (size_t)t;
                    __m512 even = sco == 1 ? _mm512_loadu_ps(src)
                                           : _mm512_i32gather_ps(idx, src, 4);
                    __m512 odd = sco == 1 ? _mm512_loadu_ps(src + sci)
                                          : _mm512_i32gather_ps(idx, src + sci, 4);
                    __m512i lo = msd_bf16_hi512(even), hi = msd_bf16_hi512(odd);
                    __m512i word = _mm512_or_si512(_mm512_srli_epi32(lo, 16),
                                                   _mm512_andnot_si512(_mm512_set1_epi32(0xffff),
                                                                       hi));
                    _mm512_storeu_si512(d, word);
                }
}

/* Every tile 16 rows of 64 bytes: C tiles 0-3, A tiles 4-5, B tiles 6-7. */
typedef struct tile_config {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

__attribute__((target("amx-tile"))) static void tiles_on(void)
{
    tile_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int i = 0; i < 8; i++) {
        cfg.rows[i] = 16;
        cfg.colsb[i] = 64;
    }
    _tile_loadconfig(&cfg);
}

/* Writes the block t[r][qi] = y[channel m0 + r, position qi of the block]
 * (32 x 32) into y at the kept positions: runs of consecutive output
 * offsets (an image row's pixels), each with masked vector stores. */
__attribute__((target(AVX512))) static void store_block(float *y, size_t L, int m0, int add,
                                                        const float *b, float t[32][32],
                                                        const long *opos)
{
    for (int s = 0; s < 32;) {
        if (opos[s] < 0) {
            s++;
            continue;
        }
        int e = s + 1;
        while (e < 32 && opos[e] == opos[e - 1] + 1)
            e++;
        for (int k = s; k < e; k += 16) {
            __mmask16 m = e - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (e - k)) - 1);
            float *dst = y + opos[k] + (size_t)m0 * L;
            for (int r = 0; r < 32; r++, dst += L) {
                __m512 v = _mm512_maskz_loadu_ps(m, &t[r][k]);
                v = _mm512_add_ps(v, add ? _mm512_maskz_loadu_ps(m, dst)
                                         : _mm512_set1_ps(b ? b[m0 + r] : 0.0f));
                _mm512_mask_storeu_ps(dst, m, v);
            }
        }
        s = e;
    }
}

/* xl (Pbuf, Cin) bf16: the group's images channels last at their flat positions, zero in the
 * padding and the tail; 16 pixels x 16 channels at a time, transposed in registers. */
__attribute__((target(AMX))) static void channels_last_bf16(uint16_t *xl, const float *x,
                                                           const msd_amx_conv *c, const grid *g)
{
    int Cin = c->Cin, W = c->W, L = c->H * c->W, pad = c->pad;
    zero_outside((char *)xl, (size_t)Cin * 2, g, c->nb, pad, pad, c->H, W, g->Pbuf);
    for (int n = 0; n < c->nb; n++)
        for (int l0 = 0; l0 < L; l0 += 16) {
            int kl = L - l0 < 16 ? L - l0 : 16;
            size_t row[16];
            for (int j = 0; j < kl; j++) {
                int l = l0 + j;
                row[j] = ((size_t)n * g->plane + (size_t)(l / W + pad) * g->Wp + l % W + pad) *
                         Cin;
            }
            for (int c0 = 0; c0 < Cin; c0 += 16) {
                const float *src = x + ((size_t)n * Cin + c0) * L + l0;
                vf r[16];
                for (int i = 0; i < 16; i++)
                    if (kl == 16)
                        LD(r[i], src + (size_t)i * L, 16);
                    else
                        LD(r[i], src + (size_t)i * L, kl);
                transpose16(r);
                for (int j = 0; j < kl; j++)
                    _mm256_storeu_si256((__m256i *)(xl + row[j] + c0),
                                        (__m256i)_mm512_cvtneps_pbh((__m512)r[j]));
            }
        }
}

/* u = t transposed: a 32 x 32 block of floats, each row two vectors (four 16 x 16 transposes
 * in registers) */
INLINE void transpose_block(vf u[32][2], vf t[32][2])
{
    for (int bi = 0; bi < 2; bi++)
        for (int bj = 0; bj < 2; bj++) {
            vf r[16];
            for (int i = 0; i < 16; i++)
                r[i] = t[16 * bi + i][bj];
            transpose16(r);
            for (int i = 0; i < 16; i++)
                u[16 * bj + i][bi] = r[i];
        }
}

__attribute__((target(AMX))) void msd_amx_conv_forward(const msd_amx_conv *c, float *y,
                                                          int add, const float *b,
                                                          const float *x, const uint16_t *wa,
                                                          void *scratch)
{
    grid g = make_grid(c);
    int Cin = c->Cin, Cout = c->Cout;
    size_t L = (size_t)g.Ho * g.Wo, nblk = (size_t)Cout / 16, kb = (size_t)Cin / 32;
    uint16_t *xl = scratch;
    long *opos = (long *)((char *)scratch + align64((size_t)Cin * g.Pbuf * 2));
    channels_last_bf16(xl, x, c, &g);
    /* where each computed q lands in y (pixel offset of channel 0), or -1 */
    size_t q = 0;
    for (int n = 0; n < c->nb; n++)
        for (int r = 0; r < g.Hp; r++)
            for (int col = 0; col < g.Wp; col++, q++)
                opos[q] = r < g.Ho && col < g.Wo
                              ? (long)((size_t)n * Cout * L + (size_t)r * g.Wo + col)
                              : -1;
    for (; q < g.Pc; q++)
        opos[q] = -1;
    tiles_on();
    vf t[32][2], u[32][2]; /* a block position-major, then channel-major */
    long lda = (long)Cin * 2;
    for (int m0 = 0; m0 < Cout; m0 += 32)
        for (size_t q0 = 0; q0 < g.Pc; q0 += 32) {
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            for (int tap = 0; tap < g.taps; tap++) {
                size_t off = (size_t)(tap / c->kw) * g.Wp + (size_t)(tap % c->kw);
                const uint16_t *a = xl + (q0 + off) * Cin;
                const uint16_t *bw = wa + ((size_t)tap * kb * nblk + (size_t)m0 / 16) * 512;
                for (size_t cb = 0; cb < kb; cb++, a += 32, bw += nblk * 512) {
                    _tile_loadd(4, a, lda);
                    _tile_loadd(6, bw, 64);
                    _tile_dpbf16ps(0, 4, 6);
                    _tile_loadd(7, bw + 512, 64);
                    _tile_dpbf16ps(1, 4, 7);
                    _tile_loadd(5, a + 16 * (size_t)Cin, lda);
                    _tile_dpbf16ps(2, 5, 6);
                    _tile_dpbf16ps(3, 5, 7);
                }
            }
            /* t[q - q0][co - m0] */
            _tile_stored(0, &t[0][0], 128);
            _tile_stored(1, &t[0][1], 128);
            _tile_stored(2, &t[16][0], 128);
            _tile_stored(3, &t[16][1], 128);
            transpose_block(u, t);
            store_block(y, L, m0, add, b, (float(*)[32])u, opos + q0);
        }
    _tile_release();
}

/* d[p][ci] = the 32-bit word (xl[first + 2p][ci], xl[first + 2p + 1][ci]) for p < np; xl
 * rows of Cin values */
__attribute__((target(AVX512))) static void pair_rows(uint16_t *d, const uint16_t *xl, int Cin,
                                                      size_t first, size_t np)
{
    for (size_t p = 0; p < np; p++) {
        const uint16_t *r0 = xl + (first + 2 * p) * Cin, *r1 = r0 + Cin;
        for (int c0 = 0; c0 < Cin; c0 += 32, d += 64) {
            __m512i a = _mm512_loadu_si512(r0 + c0), b = _mm512_loadu_si512(r1 + c0);
            /* unpack works in 128-bit lanes: lane k of lo holds channels 8k .. 8k+3, of hi
             * 8k+4 .. 8k+7; put them back in order */
            __m512i lo = _mm512_unpacklo_epi16(a, b), hi = _mm512_unpackhi_epi16(a, b);
            __m512i i0 = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11);
            __m512i i1 = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15);
            _mm512_storeu_si512(d, _mm512_permutex2var_epi64(lo, i0, hi));
            _mm512_storeu_si512(d + 32, _mm512_permutex2var_epi64(lo, i1, hi));
        }
    }
}

__attribute__((target(AMX))) void msd_amx_conv_dw(const msd_amx_conv *c, float *dwt,
                                                     const float *x, const float *dy,
                                                     void *scratch)
{
    grid g = make_grid(c);
    int Cin = c->Cin, Cout = c->Cout;
    size_t L = (size_t)g.Ho * g.Wo, xlb = align64((size_t)Cin * g.Pbuf * 2), np = g.Pbuf / 2;
    uint16_t *xl = scratch;
    uint16_t *xe = (uint16_t *)((char *)scratch + xlb), *xo = (uint16_t *)((char *)xe + xlb);
    uint16_t *dyc = (uint16_t *)((char *)xo + xlb);
    channels_last_bf16(xl, x, c, &g);
    pair_rows(xe, xl, Cin, 0, np);
    pair_rows(xo, xl, Cin, 1, np - 1);
    memset(xo + (np - 1) * 2 * Cin, 0, (size_t)Cin * 4);
    /* dy channel-major at the output positions q, zero at the others */
    for (int co = 0; co < Cout; co++)
        zero_outside((char *)(dyc + (size_t)co * g.Pc), 2, &g, c->nb, 0, 0, g.Ho, g.Wo, g.Pc);
    for (int n = 0; n < c->nb; n++)
        for (int co = 0; co < Cout; co++) {
            const float *src = dy + ((size_t)n * Cout + co) * L;
            uint16_t *d = dyc + (size_t)co * g.Pc + n * g.plane;
            for (int oy = 0; oy < g.Ho; oy++)
                msd_bf16_row512(d + (size_t)oy * g.Wp, src + (size_t)oy * g.Wo, g.Wo);
        }
    tiles_on();
    long lda = (long)g.Pc * 2, ldb = (long)Cin * 4;
    vf t[32][2], u[32][2]; /* a block (co - n0, ci - c0), then (ci - c0, co - n0) */
    for (int tap = 0; tap < g.taps; tap++) {
        size_t off = (size_t)(tap / c->kw) * g.Wp + (size_t)(tap % c->kw);
        const uint16_t *xp = (off & 1 ? xo : xe) + off / 2 * 2 * (size_t)Cin;
        for (int n0 = 0; n0 < Cout; n0 += 32)
            for (int c0 = 0; c0 < Cin; c0 += 32) {
                _tile_zero(0);
                _tile_zero(1);
                _tile_zero(2);
                _tile_zero(3);
                const uint16_t *a = dyc + (size_t)n0 * g.Pc;
                const uint16_t *bb = xp + 2 * (size_t)c0;
                for (size_t q0 = 0; q0 < g.Pc; q0 += 32, a += 32, bb += 32 * (size_t)Cin) {
                    _tile_loadd(4, a, lda);
                    _tile_loadd(5, a + 16 * g.Pc, lda);
                    _tile_loadd(6, bb, ldb);
                    _tile_loadd(7, bb + 32, ldb);
                    _tile_dpbf16ps(0, 4, 6);
                    _tile_dpbf16ps(1, 4, 7);
                    _tile_dpbf16ps(2, 5, 6);
                    _tile_dpbf16ps(3, 5, 7);
                }
                _tile_stored(0, &t[0][0], 128);
                _tile_stored(1, &t[0][1], 128);
                _tile_stored(2, &t[16][0], 128);
                _tile_stored(3, &t[16][1], 128);
                transpose_block(u, t);
                for (int i = 0; i < 32; i++)
                    memcpy(dwt + ((size_t)(c0 + i) * g.taps + tap) * Cout + n0, &u[i],
                           sizeof u[i]);
            }
    }
    _tile_release();
}

#else /* not x86-64: msd_amx_conv_ok is 0, so these are never called */

void msd_amx_conv_forward(const msd_amx_conv *c, float *y, int add, const float *b,
                          const float *x, const uint16_t *wa, void *scratch)
{
    (void)c, (void)y, (void)add, (void)b, (void)x, (void)wa, (void)scratch;
}

void msd_amx_conv_dw(const msd_amx_conv *c, float *dwt, const float *x, const float *dy,
                     void *scratch)
{
    (void)c, (void)dwt, (void)x, (void)dy, (void)scratch;
}

#endif
