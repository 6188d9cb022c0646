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
 * Forward: y[co, q] = sum over taps t and channels ci of
 * wa[co, t*Cin + ci] * xv[ci, q + off(t)], with A = the packed weights and
 * B = the image with channel pairs interleaved (xv: (Cin/2, Pbuf, 2)).
 * Weight gradient: dwt[(ci, t), co] = sum over q of xc[ci, q + off(t)] *
 * dy[co, q], with A = the image channel-major (xc: (Cin, Pbuf)) and B = dy
 * with position pairs interleaved (dyv: (Pc/2, Cout, 2)), zero at the
 * thrown-away q. */
#include <string.h>

#include "conv_amx.h"
#include "cpu.h"
#include "reduce.h"

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>

#include "bf16_x86.h"
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
    /* forward: xv, then the output offset of each q */
    size_t fwd = align64((size_t)c->Cin * g.Pbuf * 2) + g.Pc * sizeof(long);
    /* weight gradient: xc, then dy channel-major, then dyv */
    size_t dw = align64((size_t)c->Cin * g.Pbuf * 2) + 2 * align64(g.Pc * (size_t)c->Cout * 2);
    return fwd > dw ? fwd : dw;
}

#ifdef MSD_AMX
static void pack_weights_avx512(uint16_t *wa, const float *w, int Cout, int Cin, int taps);
#endif

void msd_amx_pack_weights(uint16_t *wa, const float *w, int Cout, int Cin, int taps)
{
#ifdef MSD_AMX
    /* every call of a bf16 convolution packs its weights: vectorised, so that a batch of
     * one image does not spend its time here */
    if (msd_isa_get() >= MSD_ISA_AVX512 && Cin % 16 == 0) {
        pack_weights_avx512(wa, w, Cout, Cin, taps);
        return;
    }
#endif
    size_t kt = (size_t)taps * Cin;
    for (int co = 0; co < Cout; co++)
        for (int ci = 0; ci < Cin; ci++)
            for (int t = 0; t < taps; t++)
                wa[co * kt + (size_t)t * Cin + ci] =
                    msd_bf16_from_float(w[((size_t)co * Cin + ci) * taps + t]);
}

#ifdef MSD_AMX

#define AVX512 "avx512f,avx512bw,avx512vl"
#define AMX AVX512 ",amx-tile,amx-bf16"

/* msd_amx_pack_weights for Cin a multiple of 16: 16 input channels of one output channel
 * and tap at a time, gathered at the stride of the taps */
__attribute__((target(AVX512))) static void pack_weights_avx512(uint16_t *wa, const float *w,
                                                                int Cout, int Cin, int taps)
{
    size_t kt = (size_t)taps * Cin;
    __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11,
                                                       12, 13, 14, 15),
                                     _mm512_set1_epi32(taps));
    for (int co = 0; co < Cout; co++)
        for (int t = 0; t < taps; t++)
            for (int ci = 0; ci < Cin; ci += 16) {
                const float *src = w + ((size_t)co * Cin + ci) * taps + t;
                __m512 v = _mm512_i32gather_ps(idx, src, 4);
                __m512i h = _mm512_srli_epi32(msd_bf16_hi512(v), 16);
                _mm256_storeu_si256((__m256i *)(wa + co * kt + (size_t)t * Cin + ci),
                                    _mm512_cvtepi32_epi16(h));
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

__attribute__((target(AMX))) void msd_amx_conv_forward(const msd_amx_conv *c, float *y,
                                                          int add, const float *b,
                                                          const float *x, const uint16_t *wa,
                                                          void *scratch)
{
    grid g = make_grid(c);
    int Cin = c->Cin, Cout = c->Cout, H = c->H, W = c->W, pad = c->pad;
    size_t L = (size_t)g.Ho * g.Wo, kt = (size_t)g.taps * Cin;
    uint16_t *xv = scratch;
    long *opos = (long *)((char *)scratch + align64((size_t)Cin * g.Pbuf * 2));
    /* xv: channel pairs interleaved, zero in the padding and the tail */
    for (int cp = 0; cp < Cin / 2; cp++)
        zero_outside((char *)(xv + 2 * (size_t)cp * g.Pbuf), 4, &g, c->nb, pad, pad, H, W,
                     g.Pbuf);
    for (int n = 0; n < c->nb; n++)
        for (int cp = 0; cp < Cin / 2; cp++) {
            const float *x0 = x + ((size_t)n * Cin + 2 * cp) * H * W, *x1 = x0 + (size_t)H * W;
            uint16_t *d = xv + 2 * ((size_t)cp * g.Pbuf + n * g.plane + (size_t)pad * g.Wp + pad);
            for (int iy = 0; iy < H; iy++)
                msd_bf16_pairs512(d + 2 * (size_t)iy * g.Wp, x0 + (size_t)iy * W,
                              x1 + (size_t)iy * W, W);
        }
    /* where each computed q lands in y (pixel offset of channel 0), or -1 */
    for (size_t q = 0; q < g.Pc; q++) {
        size_t n = q / g.plane, r = q % g.plane;
        int oy = (int)(r / (size_t)g.Wp), ox = (int)(r % (size_t)g.Wp);
        opos[q] = n < (size_t)c->nb && oy < g.Ho && ox < g.Wo
                      ? (long)(n * Cout * L + (size_t)oy * g.Wo + ox)
                      : -1;
    }
    tiles_on();
    float t[32][32];
    for (int m0 = 0; m0 < Cout; m0 += 32)
        for (size_t q0 = 0; q0 < g.Pc; q0 += 32) {
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            for (int tap = 0; tap < g.taps; tap++) {
                size_t off = (size_t)(tap / c->kw) * g.Wp + (size_t)(tap % c->kw);
                const uint16_t *a = wa + (size_t)m0 * kt + (size_t)tap * Cin;
                const uint16_t *bb = xv + 2 * (q0 + off);
                for (int c0 = 0; c0 < Cin; c0 += 32, a += 32, bb += 32 * g.Pbuf) {
                    _tile_loadd(4, a, (long)(kt * 2));
                    _tile_loadd(6, bb, (long)(g.Pbuf * 4));
                    _tile_dpbf16ps(0, 4, 6);
                    _tile_loadd(7, bb + 32, (long)(g.Pbuf * 4));
                    _tile_dpbf16ps(1, 4, 7);
                    _tile_loadd(5, a + 16 * kt, (long)(kt * 2));
                    _tile_dpbf16ps(2, 5, 6);
                    _tile_dpbf16ps(3, 5, 7);
                }
            }
            /* t[co - m0][q - q0] */
            _tile_stored(0, &t[0][0], 128);
            _tile_stored(1, &t[0][16], 128);
            _tile_stored(2, &t[16][0], 128);
            _tile_stored(3, &t[16][16], 128);
            store_block(y, L, m0, add, b, t, opos + q0);
        }
    _tile_release();
}

/* dst (rows, cols) 32-bit = src (cols, rows) transposed, in 16 x 16 blocks */
static void transpose32(uint32_t *dst, const uint32_t *src, size_t rows, size_t cols)
{
    for (size_t c0 = 0; c0 < cols; c0 += 16)
        for (size_t r0 = 0; r0 < rows; r0 += 16) {
            size_t c1 = c0 + 16 < cols ? c0 + 16 : cols, r1 = r0 + 16 < rows ? r0 + 16 : rows;
            for (size_t c = c0; c < c1; c++)
                for (size_t r = r0; r < r1; r++)
                    dst[r * cols + c] = src[c * rows + r];
        }
}

__attribute__((target(AMX))) void msd_amx_conv_dw(const msd_amx_conv *c, float *dwt,
                                                     const float *x, const float *dy,
                                                     void *scratch)
{
    grid g = make_grid(c);
    int Cin = c->Cin, Cout = c->Cout, H = c->H, W = c->W, pad = c->pad;
    size_t L = (size_t)g.Ho * g.Wo;
    uint16_t *xc = scratch;
    uint16_t *dyc = (uint16_t *)((char *)scratch + align64((size_t)Cin * g.Pbuf * 2));
    uint16_t *dyv = (uint16_t *)((char *)dyc + align64(g.Pc * (size_t)Cout * 2));
    /* xc: channel-major, zero in the padding and the tail */
    for (int ci = 0; ci < Cin; ci++)
        zero_outside((char *)(xc + (size_t)ci * g.Pbuf), 2, &g, c->nb, pad, pad, H, W, g.Pbuf);
    for (int n = 0; n < c->nb; n++)
        for (int ci = 0; ci < Cin; ci++) {
            const float *src = x + ((size_t)n * Cin + ci) * H * W;
            uint16_t *d = xc + (size_t)ci * g.Pbuf + n * g.plane + (size_t)pad * g.Wp + pad;
            for (int iy = 0; iy < H; iy++)
                msd_bf16_row512(d + (size_t)iy * g.Wp, src + (size_t)iy * W, W);
        }
    /* dy channel-major at the output positions q, zero at the others; then
     * each pair of positions (a 32-bit word) transposed: dyv (Pc/2, Cout) */
    for (int co = 0; co < Cout; co++)
        zero_outside((char *)(dyc + (size_t)co * g.Pc), 2, &g, c->nb, 0, 0, g.Ho, g.Wo, g.Pc);
    for (int n = 0; n < c->nb; n++)
        for (int co = 0; co < Cout; co++) {
            const float *src = dy + ((size_t)n * Cout + co) * L;
            uint16_t *d = dyc + (size_t)co * g.Pc + n * g.plane;
            for (int oy = 0; oy < g.Ho; oy++)
                msd_bf16_row512(d + (size_t)oy * g.Wp, src + (size_t)oy * g.Wo, g.Wo);
        }
    transpose32((uint32_t *)dyv, (const uint32_t *)dyc, g.Pc / 2, (size_t)Cout);
    tiles_on();
    size_t ldw = (size_t)g.taps * Cout; /* floats between rows ci and ci+1 of dwt */
    for (int tap = 0; tap < g.taps; tap++) {
        size_t off = (size_t)(tap / c->kw) * g.Wp + (size_t)(tap % c->kw);
        for (int c0 = 0; c0 < Cin; c0 += 32)
            for (int n0 = 0; n0 < Cout; n0 += 32) {
                _tile_zero(0);
                _tile_zero(1);
                _tile_zero(2);
                _tile_zero(3);
                const uint16_t *a = xc + (size_t)c0 * g.Pbuf + off;
                const uint16_t *bb = dyv + 2 * (size_t)n0;
                for (size_t q0 = 0; q0 < g.Pc; q0 += 32, a += 32, bb += 32 * (size_t)Cout) {
                    _tile_loadd(4, a, (long)(g.Pbuf * 2));
                    _tile_loadd(5, a + 16 * g.Pbuf, (long)(g.Pbuf * 2));
                    _tile_loadd(6, bb, (long)Cout * 4);
                    _tile_loadd(7, bb + 32, (long)Cout * 4);
                    _tile_dpbf16ps(0, 4, 6);
                    _tile_dpbf16ps(1, 4, 7);
                    _tile_dpbf16ps(2, 5, 6);
                    _tile_dpbf16ps(3, 5, 7);
                }
                float *d = dwt + ((size_t)c0 * g.taps + tap) * Cout + n0;
                _tile_stored(0, d, (long)(ldw * 4));
                _tile_stored(1, d + 16, (long)(ldw * 4));
                _tile_stored(2, d + 16 * ldw, (long)(ldw * 4));
                _tile_stored(3, d + 16 * ldw + 16, (long)(ldw * 4));
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
