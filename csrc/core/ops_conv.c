/* Convolutions: conv2d and conv_transpose2d, forward and backward, through
 * msd_sgemm (gemm.h) over groups of images of the batch.
 *
 * conv2d reads its image patches in place from a zero-padded copy of each
 * group (see "conv2d: patches read in place" below); its input gradient is
 * a convolution too when the stride is 1. conv_transpose2d, and conv2d's
 * input gradient otherwise, go through a "col" matrix: (C*kh*kw, nb*Ho*Wo)
 * row-major, row (c, ki, kj), column (n, oy, ox), so that one GEMM covers
 * nb images at once; small maps (4x4, 1x1) would give GEMMs too thin to be
 * fast if done image by image.
 *
 * With the bf16 precision (cpu.h), conv2d's products take bf16-rounded
 * inputs: on the AMX tiles when msd_amx_conv_ok (conv_amx.h), else by
 * Winograd on msd_sgemm_bf16 where wino_path says so (vdpbf16ps), else
 * through the paths below after rounding the weights and each group's copies
 * of the image and of dy. conv_transpose2d's products take them too: its
 * forward as a 1x1 convolution to Cout*kh*kw channels on the tiles where they
 * take the shape, else (and its backward always) on rounded copies. */
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "autograd.h"
#include "conv_amx.h"
#include "conv_wino.h"
#include "cpu.h"
#include "gemm.h"
#include "ops.h"
#include "reduce.h"
#include "threads.h"

/* Target size in floats of one group's column matrix (2 MiB): the batch is
 * cut into groups of a fixed number of images (independent of the thread
 * count, so results are too), and the pool's threads take whole groups
 * (one msd_parallel_for chunk each), each with its own scratch and a
 * single-threaded GEMM. */
#ifndef COL_CHUNK_FLOATS
#define COL_CHUNK_FLOATS (1L << 19)
#endif

/* Outputs o in [lo, hi) are those whose input o*s - p + k lies in [0, in). */
static void valid_range(int k, int s, int p, int in, int out, int *lo, int *hi)
{
    int a = p - k, b = in - 1 + p - k;
    int l = a <= 0 ? 0 : (a + s - 1) / s;
    int h = b < 0 ? 0 : b / s + 1;
    if (h > out)
        h = out;
    if (l > h)
        l = h;
    *lo = l;
    *hi = h;
}

/* col (C*kh*kw, nb*Ho*Wo) from x (nb, C, H, W); zero padding p. */
static void im2col(float *col, const float *x, int nb, int C, int H, int W, int kh, int kw, int s,
                   int p, int Ho, int Wo)
{
    size_t L = (size_t)Ho * Wo, ncols = (size_t)nb * L;
    for (int c = 0; c < C; c++)
        for (int ki = 0; ki < kh; ki++)
            for (int kj = 0; kj < kw; kj++) {
                float *row = col + ((size_t)(c * kh + ki) * kw + kj) * ncols;
                int lo, hi;
                valid_range(kj, s, p, W, Wo, &lo, &hi);
                int off = kj - p;
                for (int n = 0; n < nb; n++) {
                    const float *plane = x + ((size_t)n * C + c) * H * W;
                    float *dst = row + n * L;
                    for (int oy = 0; oy < Ho; oy++, dst += Wo) {
                        int iy = oy * s - p + ki;
                        if (iy < 0 || iy >= H) {
                            for (int ox = 0; ox < Wo; ox++)
                                dst[ox] = 0.0f;
                            continue;
                        }
                        const float *src = plane + (size_t)iy * W + off;
                        for (int ox = 0; ox < lo; ox++)
                            dst[ox] = 0.0f;
                        /* rows are short (4..16): plain loops beat memcpy calls */
                        if (s == 1)
                            for (int ox = lo; ox < hi; ox++)
                                dst[ox] = src[ox];
                        else
                            for (int ox = lo; ox < hi; ox++)
                                dst[ox] = src[ox * s];
                        for (int ox = hi; ox < Wo; ox++)
                            dst[ox] = 0.0f;
                    }
                }
            }
}

/* The adjoint of im2col: x (nb, C, H, W) += col scattered back. */
static void col2im_add(float *x, const float *col, int nb, int C, int H, int W, int kh, int kw,
                       int s, int p, int Ho, int Wo)
{
    size_t L = (size_t)Ho * Wo, ncols = (size_t)nb * L;
    for (int c = 0; c < C; c++)
        for (int ki = 0; ki < kh; ki++)
            for (int kj = 0; kj < kw; kj++) {
                const float *row = col + ((size_t)(c * kh + ki) * kw + kj) * ncols;
                int lo, hi;
                valid_range(kj, s, p, W, Wo, &lo, &hi);
                int off = kj - p;
                for (int n = 0; n < nb; n++) {
                    float *plane = x + ((size_t)n * C + c) * H * W;
                    const float *src = row + n * L;
                    for (int oy = 0; oy < Ho; oy++, src += Wo) {
                        int iy = oy * s - p + ki;
                        if (iy < 0 || iy >= H)
                            continue;
                        float *dst = plane + (size_t)iy * W + off;
                        if (s == 1)
                            for (int ox = lo; ox < hi; ox++)
                                dst[ox] += src[ox];
                        else
                            for (int ox = lo; ox < hi; ox++)
                                dst[ox * s] += src[ox];
                    }
                }
            }
}

/* t (C, nb*L) from a (nb, C, L): channel-major for the GEMMs. */
static void to_channel_major(float *t, const float *a, int nb, int C, size_t L)
{
    for (int n = 0; n < nb; n++)
        for (int c = 0; c < C; c++)
            memcpy(t + ((size_t)c * nb + n) * L, a + ((size_t)n * C + c) * L, L * sizeof *t);
}

/* Loops below this many elements run on the calling thread alone: waking
 * workers would cost more than the work. */
#define CONV_SERIAL_MAX 32768

typedef struct bias_grad_job {
    float *db;
    const float *dy;
    int N, C;
    size_t L;
} bias_grad_job;

/* Chunk c: db[c] += the sum of channel c of dy, in double (reduce.h). */
MSD_MULTIVERSION
static void bias_grad_chunk(void *ctx, int c, int tid)
{
    const bias_grad_job *j = ctx;
    double acc[MSD_LANES] = { 0 };
    (void)tid;
    for (int n = 0; n < j->N; n++)
        msd_sum_lanes(acc, j->dy + ((size_t)n * j->C + c) * j->L, j->L);
    j->db[c] += (float)msd_lanes_total(acc);
}

/* db[c] += sum of dy (N, C, L) over n and l. */
static void bias_grad(float *db, const float *dy, int N, int C, size_t L)
{
    bias_grad_job j = {db, dy, N, C, L};
    msd_parallel_for(C, (size_t)N * C * L > CONV_SERIAL_MAX ? MSD_ALL_THREADS : 1,
                     bias_grad_chunk, &j);
}

/* Images per chunk so that a (rows, nb*L) matrix stays near COL_CHUNK_FLOATS. */
static int chunk_images(int N, size_t rows, size_t L)
{
    size_t per = rows * L > 0 ? rows * L : 1;
    long nb = COL_CHUNK_FLOATS / (long)per;
    if (nb < 1)
        nb = 1;
    return nb > N ? N : (int)nb;
}

/* Per-thread scratch: n_per floats for each thread that can run one of G
 * groups at once; *nthr, their number, caps msd_parallel_for's threads. */
static int scratch(const char *op, size_t n_per, int G, int *nthr, msd_storage **s)
{
    *nthr = msd_get_threads() < G ? msd_get_threads() : G;
    if (*nthr < 1)
        *nthr = 1;
    size_t total = n_per * (size_t)*nthr;
    *s = msd_storage_new(total > 0 ? total : 1);
    if (!*s)
        return msd_error(MSD_ERR_MEM, "%s: out of memory for %d scratch buffers of %zu floats",
                         op, *nthr, n_per);
    return MSD_OK;
}

/* Elements per reduce_partials chunk. */
#define REDUCE_BLOCK 4096

/* dw (rows, cols) += the sum of G partials, each (rows, cols) or, with
 * transposed, (cols, rows); summed in group order, in double. Each chunk
 * walks a block of the partials' own layout, so the G streams it reads are
 * sequential. */
typedef struct reduce_job {
    float *dw;
    const float *part;
    int G, rows, cols, transposed;
} reduce_job;

/* Elements summed at once: the partials row by row into these double sums (vector loops), the
 * same order per element as one element at a time. */
#define REDUCE_RUN 256

MSD_MULTIVERSION
static void reduce_chunk(void *ctx, int k, int tid)
{
    const reduce_job *j = ctx;
    size_t n = (size_t)j->rows * j->cols, lo = (size_t)k * REDUCE_BLOCK;
    size_t hi = lo + REDUCE_BLOCK < n ? lo + REDUCE_BLOCK : n;
    double acc[REDUCE_RUN];
    (void)tid;
    for (size_t a0 = lo; a0 < hi; a0 += REDUCE_RUN) {
        size_t m = hi - a0 < REDUCE_RUN ? hi - a0 : REDUCE_RUN;
        for (size_t i = 0; i < m; i++)
            acc[i] = 0;
        for (int g = 0; g < j->G; g++) {
            const float *p = j->part + (size_t)g * n + a0;
            for (size_t i = 0; i < m; i++)
                acc[i] += p[i];
        }
        for (size_t i = 0; i < m; i++) {
            /* at is (r, c) of the partial: (c, r) of dw when transposed */
            size_t at = a0 + i, to = j->transposed ? at % j->rows * j->cols + at / j->rows : at;
            j->dw[to] += (float)acc[i];
        }
    }
}

/* The same result for any thread count: each element is summed by one
 * thread, in group order. */
static void reduce_partials(float *dw, const float *part, int G, int rows, int cols,
                            int transposed)
{
    reduce_job j = { dw, part, G, rows, cols, transposed };
    size_t n = (size_t)rows * cols;
    msd_parallel_for((int)((n + REDUCE_BLOCK - 1) / REDUCE_BLOCK),
                     n * (size_t)G > 2 * CONV_SERIAL_MAX ? MSD_ALL_THREADS : 1, reduce_chunk, &j);
}

/* One conv loop over groups of images, for its chunks: chunk g covers
 * images [g*nbmax, min(N, (g+1)*nbmax)). Geometry as in the kernel that
 * runs it (conv2d: input H x W, output Ho x Wo; conv_transpose2d the other
 * way round); K is the rows of the column matrix. Thread tid uses the per
 * floats at sc->data + per * tid; a backward writes group g's weight
 * gradient to sp->data + nw * g (sp NULL: no dw wanted). */
typedef struct conv_job {
    float *y, *dx;
    const float *x, *w, *b, *dy;
    const msd_storage *sc, *sp;
    size_t per, nw, K;
    int N, Cin, H, W, Cout, kh, kw, stride, pad, Ho, Wo, nbmax;
    const uint16_t *wa; /* conv_transpose2d in bf16 on the AMX tiles: w packed for them */
    int round;          /* bf16 elsewhere: round the copies of x and dy (w comes rounded) */
} conv_job;

/* ---- conv2d: patches read in place from a padded copy ---------------------
 * A group of nb images is copied once into xp (nb, C, Hp, Wp) with its zero
 * padding (Hp = H + 2p, Wp = W + 2p). The patch matrix, row (c, ki, kj) and
 * column (n, oy, ox), is then xp[pix(n, oy, ox) + tap(c, ki, kj)] with
 *   pix = (n*C*Hp + oy*s)*Wp + ox*s,   tap = (c*Hp + ki)*Wp + kj,
 * so msd_sgemm_offsets reads it through two offset tables with no im2col
 * matrix and no bounds tests. Forward computes y^T (pixels x Cout) =
 * patches^T w^T, whose 64 or 128 columns fit the kernel's tile, and
 * transposes the result into NCHW; the weight gradient computes dw^T (taps x
 * Cout) = patches dy^T. */

/* Images per group: about GROUP_COLS output pixels, so that small maps (8x8)
 * still give GEMMs tall enough to be fast. Fixed for a shape: results do not
 * depend on the thread count. */
#define GROUP_COLS 1024

static int group_images(int N, size_t L)
{
    size_t nb = L >= GROUP_COLS ? 1 : GROUP_COLS / L;
    return nb > (size_t)N ? N : (int)nb;
}

/* Geometry of one conv2d (input H x W, output Ho x Wo) and of its padded
 * group copy. */
typedef struct conv_geom {
    int N, Cin, H, W, Cout, kh, kw, s, p, Ho, Wo, Hp, Wp, nbmax;
} conv_geom;

static conv_geom make_geom(int N, int Cin, int H, int W, int Cout, int kh, int kw, int s, int p)
{
    conv_geom g = { N, Cin, H, W, Cout, kh, kw, s, p, (H + 2 * p - kh) / s + 1,
                    (W + 2 * p - kw) / s + 1, H + 2 * p, W + 2 * p, 0 };
    g.nbmax = group_images(N, (size_t)g.Ho * g.Wo);
    return g;
}

/* Floats of per-thread scratch for one group: xp, then the two offset
 * tables (ints, stored in float-sized slots), then extra floats. */
static size_t group_scratch(const conv_geom *g, size_t extra)
{
    size_t L = (size_t)g->Ho * g->Wo;
    return (size_t)g->nbmax * g->Cin * g->Hp * g->Wp + (size_t)g->nbmax * L +
           (size_t)g->Cin * g->kh * g->kw + extra;
}

/* Fills sc (group_scratch floats) for images [n0, n0+nb) of x: xp, pix
 * offsets (nb*L) and tap offsets (Cin*kh*kw); returns xp and the tables. */
static const float *group_patches(float *sc, const conv_geom *g, const float *x, int n0, int nb,
                                  int **pix, int **tap, float **extra)
{
    int C = g->Cin, H = g->H, W = g->W, Hp = g->Hp, Wp = g->Wp, p = g->p;
    size_t L = (size_t)g->Ho * g->Wo, plane = (size_t)Hp * Wp;
    float *xp = sc;
    for (int n = 0; n < nb; n++)
        for (int c = 0; c < C; c++) {
            float *d = xp + ((size_t)n * C + c) * plane;
            const float *src = x + ((size_t)(n0 + n) * C + c) * H * W;
            memset(d, 0, (size_t)p * Wp * sizeof *d);
            for (int iy = 0; iy < H; iy++) {
                float *row = d + (size_t)(iy + p) * Wp;
                for (int i = 0; i < p; i++)
                    row[i] = row[p + W + i] = 0.0f;
                memcpy(row + p, src + (size_t)iy * W, (size_t)W * sizeof *row);
            }
            memset(d + (size_t)(H + p) * Wp, 0, (size_t)p * Wp * sizeof *d);
        }
    int *pt = (int *)(xp + (size_t)g->nbmax * C * plane), *tt = pt + (size_t)g->nbmax * L;
    for (int n = 0, j = 0; n < nb; n++)
        for (int oy = 0; oy < g->Ho; oy++)
            for (int ox = 0; ox < g->Wo; ox++, j++)
                pt[j] = (int)(((size_t)n * C * Hp + (size_t)oy * g->s) * Wp + (size_t)ox * g->s);
    for (int c = 0, r = 0; c < C; c++)
        for (int ki = 0; ki < g->kh; ki++)
            for (int kj = 0; kj < g->kw; kj++, r++)
                tt[r] = (int)(((size_t)c * Hp + ki) * Wp + kj);
    *pix = pt;
    *tap = tt;
    if (extra)
        *extra = (float *)(tt + (size_t)C * g->kh * g->kw);
    return xp;
}

/* One conv2d pass: thread tid's scratch is sc->data + per*tid; a
 * weight-gradient pass writes group g's dw^T to sp->data + nw*g. */
typedef struct conv2d_job {
    conv_geom g;
    float *y; /* forward: y (=, or += with add); backward: dx */
    const float *x, *w, *b, *dy;
    const msd_storage *sc, *sp;
    size_t per, nw;
    int add;
    const float *post_a, *post_b; /* forward epilogue y = y a + b per channel, or NULL */
    int gelu;                     /* then y = gelu(y) */
    int amx;                      /* bf16 on the AMX tiles ... */
    const uint16_t *wa;           /* ... with these packed weights (forward) */
    int round;                    /* bf16 without the tiles: round the group's copies */
    int wino;                     /* by Winograd (conv_wino.h), in m x m output tiles ... */
    int wino_m, wino_bf16;        /* ... with bf16 products or not ... */
    const uint32_t *wup;          /* ... on these packed kernels (msd_wino_pack) */
} conv2d_job;

/* The AMX geometry of a group of nb images. */
static msd_amx_conv amx_group(const conv_geom *g, int nb)
{
    msd_amx_conv c = { nb, g->Cin, g->H, g->W, g->Cout, g->kh, g->kw, g->p };
    return c;
}

/* Floats of scratch for one group on the tiles: a multiple of 16, so that
 * each thread's part of the (64-byte aligned) storage is 64-byte aligned
 * too, as msd_amx_conv_scratch asks. */
static size_t amx_scratch_floats(const conv_geom *g)
{
    msd_amx_conv c = amx_group(g, g->nbmax);
    return (msd_amx_conv_scratch(&c) + 63) / 64 * 16;
}

/* The weights for a bf16 pass, in *ws: packed for the tiles when amx, else
 * a copy rounded to bf16 (which the pass then uses instead of w). transposed:
 * w is a transposed convolution's (Cin, Cout) with taps 1 (Cout = its K), packed
 * as a 1x1 convolution from Cin to Cout channels. */
static int bf16_weights(const char *op, const float *w, int Cout, int Cin, int taps, int amx,
                        int transposed, msd_storage **ws)
{
    size_t n = (size_t)Cout * Cin * taps;
    *ws = msd_storage_new(amx ? (n + 1) / 2 : n);
    if (!*ws)
        return msd_error(MSD_ERR_MEM, "%s: out of memory for %zu bf16 weights", op, n);
    if (amx && transposed) {
        msd_amx_pack_weights_strided((uint16_t *)(*ws)->data, w, Cout, Cin, 1, 1,
                                     (size_t)Cout);
    } else if (amx) {
        msd_amx_pack_weights((uint16_t *)(*ws)->data, w, Cout, Cin, taps);
    } else {
        memcpy((*ws)->data, w, n * sizeof *w);
        msd_round_bf16((*ws)->data, n);
    }
    return MSD_OK;
}

/* The fused BatchNorm (eval) and GELU on image yn (Cout, L), while it is in
 * cache: the same float operations as msd_batchnorm_forward and GELU. */
static void conv2d_epilogue(const conv2d_job *j, float *yn, size_t L)
{
    if (j->post_a)
        for (int c = 0; c < j->g.Cout; c++) {
            float *row = yn + (size_t)c * L, a = j->post_a[c], b = j->post_b[c];
            for (size_t l = 0; l < L; l++)
                row[l] = row[l] * a + b;
        }
    if (j->gelu)
        msd_gelu_forward_inplace(yn, (size_t)j->g.Cout * L);
}

/* Convolutions with at most SMALL_COUT output channels (the model's last
 * conv has 3) waste most of the GEMM's 64-wide column tiles; for stride 1
 * they run directly instead, reading rows of the padded input xpn (Cin, Hp,
 * Wp) in place. Each output is a sum over k = (ci, ki, kj) in that order,
 * to which the bias is added, or which is added to y (add), as in the GEMM
 * path; every output takes the same steps whichever loop below computes
 * it. Blocks of SC_ROWS rows x SC_COLS columns of every output channel are
 * summed in registers (3 channels x 4 rows: 12 vector accumulators sharing
 * each tap's 4 row loads); the edges that do not fill a block are summed
 * tap by tap in memory. */
#define SMALL_COUT 4
#define SC_ROWS 4
#define SC_COLS 16

/* One block at (oy0, ox0) for CO output channels (a constant where it is
 * inlined, so that the accumulators can live in registers), into the
 * output planes acc (CO, Ho, Wo). */
static inline __attribute__((always_inline)) void
small_cout_block(float *acc, const float *xpn, const float *w, const conv_geom *g, int oy0,
                 int ox0, const int CO)
{
    int kh = g->kh, kw = g->kw, Hp = g->Hp, Wp = g->Wp;
    size_t K = (size_t)g->Cin * kh * kw, L = (size_t)g->Ho * g->Wo;
    float a[SMALL_COUT][SC_ROWS][SC_COLS] = { { { 0 } } };
    for (int ci = 0; ci < g->Cin; ci++)
        for (int ki = 0; ki < kh; ki++)
            for (int kj = 0; kj < kw; kj++) {
                size_t k = ((size_t)ci * kh + ki) * kw + kj;
                const float *s0 = xpn + ((size_t)ci * Hp + oy0 + ki) * Wp + ox0 + kj;
                for (int r = 0; r < SC_ROWS; r++) {
                    const float *sr = s0 + (size_t)r * Wp;
                    for (int co = 0; co < CO; co++) {
                        float wv = w[co * K + k];
                        for (int v = 0; v < SC_COLS; v++)
                            a[co][r][v] += wv * sr[v];
                    }
                }
            }
    for (int co = 0; co < CO; co++)
        for (int r = 0; r < SC_ROWS; r++)
            memcpy(acc + co * L + (size_t)(oy0 + r) * g->Wo + ox0, a[co][r], sizeof a[co][r]);
}

/* Output (oy, ox .. ox + n - 1) of every channel, summed tap by tap in acc. */
static void small_cout_row(float *acc, const float *xpn, const float *w, const conv_geom *g,
                           int oy, int ox, int n)
{
    int kh = g->kh, kw = g->kw, Hp = g->Hp, Wp = g->Wp;
    size_t K = (size_t)g->Cin * kh * kw, L = (size_t)g->Ho * g->Wo;
    for (int co = 0; co < g->Cout; co++) {
        float *d = acc + co * L + (size_t)oy * g->Wo + ox;
        for (int i = 0; i < n; i++)
            d[i] = 0.0f;
        for (int ci = 0; ci < g->Cin; ci++)
            for (int ki = 0; ki < kh; ki++)
                for (int kj = 0; kj < kw; kj++) {
                    float wv = w[co * K + ((size_t)ci * kh + ki) * kw + kj];
                    const float *sr = xpn + ((size_t)ci * Hp + oy + ki) * Wp + ox + kj;
                    for (int i = 0; i < n; i++)
                        d[i] += wv * sr[i];
                }
    }
}

/* Image yn (Cout, Ho, Wo) of a small-Cout conv; acc holds Cout * Ho * Wo floats. */
MSD_MULTIVERSION
static void conv2d_small_cout(float *yn, float *acc, const float *xpn, const float *w,
                              const float *b, int add, const conv_geom *g)
{
    int Ho = g->Ho, Wo = g->Wo, Cout = g->Cout;
    size_t L = (size_t)Ho * Wo;
    int hb = Ho / SC_ROWS * SC_ROWS, wb = Wo / SC_COLS * SC_COLS;
    for (int oy = 0; oy < hb; oy += SC_ROWS)
        for (int ox = 0; ox < wb; ox += SC_COLS)
            switch (Cout) {
            case 1: small_cout_block(acc, xpn, w, g, oy, ox, 1); break;
            case 2: small_cout_block(acc, xpn, w, g, oy, ox, 2); break;
            case 3: small_cout_block(acc, xpn, w, g, oy, ox, 3); break;
            default: small_cout_block(acc, xpn, w, g, oy, ox, 4); break;
            }
    for (int oy = 0; oy < Ho; oy++) {
        if (wb < Wo && oy < hb)
            small_cout_row(acc, xpn, w, g, oy, wb, Wo - wb);
        if (oy >= hb)
            small_cout_row(acc, xpn, w, g, oy, 0, Wo);
    }
    for (int c = 0; c < Cout; c++) {
        float *dst = yn + (size_t)c * L;
        const float *ac = acc + (size_t)c * L;
        if (add) {
            for (size_t l = 0; l < L; l++)
                dst[l] += ac[l];
        } else {
            float bc = b ? b[c] : 0.0f;
            for (size_t l = 0; l < L; l++)
                dst[l] = ac[l] + bc;
        }
    }
}

static void conv2d_gemm_chunk(void *ctx, int gi, int tid)
{
    const conv2d_job *j = ctx;
    const conv_geom *g = &j->g;
    int n0 = gi * g->nbmax, nb = g->N - n0 < g->nbmax ? g->N - n0 : g->nbmax, Cout = g->Cout;
    int K = g->Cin * g->kh * g->kw;
    size_t L = (size_t)g->Ho * g->Wo, ncols = (size_t)nb * L;
    float *sc = j->sc->data + j->per * (size_t)tid;
    if (j->wino) { /* the epilogue inside, on rows still in L1 */
        msd_wino_conv c = { nb, g->Cin, g->H, g->W, Cout, j->wino_bf16, j->wino_m };
        msd_wino_post post = { j->post_a, j->post_b, j->gelu };
        msd_wino_forward(&c, j->y + (size_t)n0 * Cout * L, j->add, j->b,
                         j->post_a || j->gelu ? &post : NULL,
                         j->x + (size_t)n0 * g->Cin * g->H * g->W, j->wup, sc);
        return;
    }
    if (j->amx) {
        msd_amx_conv c = amx_group(g, nb);
        msd_amx_conv_forward(&c, j->y + (size_t)n0 * Cout * L, j->add, j->b,
                             j->x + (size_t)n0 * g->Cin * g->H * g->W, j->wa, sc);
        for (int n = 0; n < nb; n++)
            conv2d_epilogue(j, j->y + (size_t)(n0 + n) * Cout * L, L);
        return;
    }
    int *pix, *tap;
    float *yt;
    const float *xp = group_patches(sc, g, j->x, n0, nb, &pix, &tap, &yt);
    if (j->round)
        msd_round_bf16((float *)xp, (size_t)nb * g->Cin * g->Hp * g->Wp);
    if (Cout <= SMALL_COUT && g->s == 1) {
        for (int n = 0; n < nb; n++) {
            float *yn = j->y + (size_t)(n0 + n) * Cout * L;
            conv2d_small_cout(yn, yt, xp + (size_t)n * g->Cin * g->Hp * g->Wp, j->w, j->b,
                              j->add, g);
            conv2d_epilogue(j, yn, L);
        }
        return;
    }
    /* yt (nb*L, Cout) = patches^T (nb*L, K) w^T (K, Cout) */
    msd_sgemm_offsets((int)ncols, Cout, K, 1.0f, xp, pix, tap, 1, j->w, K, 0.0f, yt, Cout);
    /* into NCHW, 16 pixels at a time: their Cout values stay in L1 */
    for (int n = 0; n < nb; n++) {
        float *yn = j->y + (size_t)(n0 + n) * Cout * L;
        for (size_t l0 = 0; l0 < L; l0 += 16) {
            size_t l1 = l0 + 16 < L ? l0 + 16 : L;
            for (int c = 0; c < Cout; c++) {
                float *dst = yn + (size_t)c * L;
                const float *src = yt + (size_t)n * L * Cout + c;
                float bc = j->b ? j->b[c] : 0.0f;
                if (j->add)
                    for (size_t l = l0; l < l1; l++)
                        dst[l] += src[l * Cout];
                else
                    for (size_t l = l0; l < l1; l++)
                        dst[l] = src[l * Cout] + bc;
            }
        }
        conv2d_epilogue(j, yn, L);
    }
}

/* 1 when a conv2d of this shape runs by Winograd now (its forward, and its weight
 * gradient when dw): where msd_wino_ok says so in fp32; in bf16 too when msd_sgemm_bf16
 * runs on vdpbf16ps and the AMX tiles do not take the shape (they take it whole, in
 * direct form, faster). Elsewhere bf16 stays direct: the fp32 kernels on rounded inputs
 * would gain nothing from the transforms' rounding. */
static int wino_path(const conv_geom *g, int bf16)
{
    if (!msd_wino_ok(g->N, g->Cin, g->Cout, g->H, g->W, g->kh, g->kw, g->s, g->p))
        return 0;
    return !bf16 || (msd_gemm_bf16_native() && !msd_amx_conv_ok(g->Cin, g->Cout, g->s));
}

/* A Winograd convolution's kernels, transformed in parallel: U by blocks of WW_BLOCK input
 * channels, then (bf16) U's 16 planes packed, one chunk each. Every value is computed
 * once, so the bits do not depend on the threads. */
#define WW_BLOCK 16

typedef struct wino_w_job {
    float *u;
    uint32_t *up;
    const float *w;
    int Cout, Cin, m, bf16;
} wino_w_job;

static void wino_u_chunk(void *ctx, int k, int tid)
{
    const wino_w_job *j = ctx;
    int i0 = k * WW_BLOCK, i1 = i0 + WW_BLOCK < j->Cin ? i0 + WW_BLOCK : j->Cin;
    (void)tid;
    msd_wino_weights(j->u, j->w, j->Cout, j->Cin, j->m, i0, i1);
}

static void wino_pack_chunk(void *ctx, int xi, int tid)
{
    const wino_w_job *j = ctx;
    (void)tid;
    msd_wino_pack(j->up, j->u, j->Cout, j->Cin, j->bf16, xi, xi + 1);
}

/* ---- transformed kernels kept for inference ----------------------------------
 * Sampling runs the same weights through every step; transforming and packing them at every
 * call was a fifth of a one-sprite bf16 step, and packing F(4x4)'s 36 planes a third of an
 * fp32 one (perf). A forward that records no gradient
 * (grad mode off, or weights that do not require it) keeps its transformed kernels in this
 * thread's cache, keyed by the weights' address and shape, with the stamp of the weights'
 * storage they were made at (tensor.h): the same stamp means that nothing has had a pointer
 * to write to the weights since, so weights changed in place (an optimizer step, copy_, a
 * load) are transformed again, never used stale. (Until the eleventh session a memcmp
 * against a copy of the weights said so: 8% of a one-sprite sampling step, perf, Zen 3.) At
 * most WCACHE_N entries, the least recently used replaced; freed when the thread exits. */
#define WCACHE_N 32

typedef struct wcache_entry {
    const float *w;
    int Cout, Cin, m, bf16, isa; /* isa: the kernel level the fp32 packing is for */
    unsigned long long stamp;    /* w's storage's stamp when u was made */
    float *u; /* the transformed kernels, packed (msd_wino_pack), 64-byte aligned */
    size_t nu;
    unsigned long long used;
} wcache_entry;

typedef struct wcache {
    wcache_entry e[WCACHE_N];
    unsigned long long clock, hits, misses;
} wcache;

static pthread_key_t wc_key;
static pthread_once_t wc_once = PTHREAD_ONCE_INIT;
static int wc_key_ok;

static void wc_clear(wcache *c)
{
    for (int i = 0; i < WCACHE_N; i++)
        free(c->e[i].u);
    memset(c, 0, sizeof *c);
}

static void wc_free(void *p)
{
    wc_clear(p);
    free(p);
}

static void wc_key_init(void)
{
    wc_key_ok = pthread_key_create(&wc_key, wc_free) == 0;
}

static wcache *wc_get(int create)
{
    pthread_once(&wc_once, wc_key_init);
    if (!wc_key_ok)
        return NULL;
    wcache *c = pthread_getspecific(wc_key);
    if (!c && create && (c = calloc(1, sizeof *c)) && pthread_setspecific(wc_key, c) != 0) {
        free(c);
        c = NULL;
    }
    return c;
}

void msd_conv_cache_clear(void)
{
    wcache *c = wc_get(0);
    if (c)
        wc_clear(c);
}

msd_conv_cache_stats msd_conv_cache_get_stats(void)
{
    msd_conv_cache_stats st = { 0, 0, 0, 0 };
    wcache *c = wc_get(0);
    for (int i = 0; c && i < WCACHE_N; i++)
        if (c->e[i].u) {
            st.entries++;
            st.bytes += c->e[i].nu * sizeof(float);
        }
    if (c) {
        st.hits = c->hits;
        st.misses = c->misses;
    }
    return st;
}

/* The cached room (nu floats) for the transformed kernels of w (read at stamp): *valid = 1
 * when they are there already, 0 when the caller must (re)compute them into it; NULL when
 * no room could be had (the caller transforms into its own). */
static float *wc_lookup(const float *w, unsigned long long stamp, int Cout, int Cin, int m,
                        int bf16, size_t nu, int *valid)
{
    wcache *c = wc_get(1);
    if (!c)
        return NULL;
    int isa = msd_isa_get();
    wcache_entry *e = NULL, *victim = &c->e[0];
    for (int i = 0; i < WCACHE_N && !e; i++) {
        wcache_entry *t = &c->e[i];
        if (t->u && t->w == w && t->Cout == Cout && t->Cin == Cin && t->m == m &&
            t->bf16 == bf16 && t->isa == isa)
            e = t;
        else if (t->used < victim->used)
            victim = t;
    }
    c->clock++;
    if (e) {
        e->used = c->clock;
        *valid = e->stamp == stamp;
        e->stamp = stamp;
        c->hits += *valid;
        c->misses += !*valid;
        return e->u;
    }
    c->misses++;
    free(victim->u);
    memset(victim, 0, sizeof *victim);
    float *u = aligned_alloc(64, (nu + 15) / 16 * 16 * sizeof(float));
    if (!u)
        return NULL;
    *victim = (wcache_entry){ w, Cout, Cin, m, bf16, isa, stamp, u, nu, c->clock };
    *valid = 0;
    return u;
}

/* conv2d_gemm by Winograd (conv_wino.h): groups of msd_wino_group_images
 * images, halved while the batch makes fewer than two groups a thread (a few sprites
 * sampled on two threads: one or two groups a layer left a thread idle, or, with a core busy
 * elsewhere, nothing for the free thread to take over); the kernels transformed once (or
 * taken from the cache with wstamp). A forward's bits do not depend on its groups (every
 * tile's products are its own rows of the GEMMs); the weight gradient's sums do, and it
 * keeps msd_wino_group_images's. */
static int conv2d_wino(const char *op, float *y, const float *x, const float *w, const float *b,
                       const conv_geom *g, int add, const float *post_a, const float *post_b,
                       int gelu, int bf16, unsigned long long wstamp)
{
    conv_geom gw = *g;
    int m = msd_wino_tile(g->H, g->W, bf16);
    gw.nbmax = msd_wino_group_images(g->N, g->H, g->W, m);
    while (gw.nbmax > 1 && (g->N + gw.nbmax - 1) / gw.nbmax < 2 * msd_get_threads())
        gw.nbmax = (gw.nbmax + 1) / 2;
    msd_wino_conv c = { gw.nbmax, g->Cin, g->H, g->W, g->Cout, bf16, m };
    int G = (g->N + gw.nbmax - 1) / gw.nbmax, nthr, rc;
    /* the transformed kernels, then (bf16) the same packed: floats enough for the words */
    size_t per = msd_wino_scratch(&c), P = (size_t)msd_wino_planes(m);
    size_t nu = P * msd_wino_plane(g->Cout, g->Cin);
    size_t np = msd_wino_packed_words(g->Cout, g->Cin, m, bf16);
    int valid = 0;
    /* the packed kernels: cached, or in pk; U, what they are packed from, in u */
    float *ud = wstamp ? wc_lookup(w, wstamp, g->Cout, g->Cin, m, bf16, np, &valid) : NULL;
    msd_storage *sc = NULL, *pk = ud ? NULL : msd_storage_new(np);
    msd_storage *u = valid ? NULL : msd_storage_new(nu);
    if ((!ud && !pk) || (!valid && !u)) {
        msd_storage_release(pk);
        msd_storage_release(u);
        return msd_error(MSD_ERR_MEM, "%s: out of memory for %zu transformed weights", op,
                         nu + np);
    }
    if ((rc = scratch(op, per, G, &nthr, &sc)) != MSD_OK) {
        msd_storage_release(pk);
        msd_storage_release(u);
        return rc;
    }
    uint32_t *up = (uint32_t *)(ud ? ud : pk->data);
    if (!valid) {
        wino_w_job wj = { u->data, up, w, g->Cout, g->Cin, m, bf16 };
        msd_parallel_for((g->Cin + WW_BLOCK - 1) / WW_BLOCK, MSD_ALL_THREADS, wino_u_chunk,
                         &wj);
        msd_parallel_for((int)P, MSD_ALL_THREADS, wino_pack_chunk, &wj);
        msd_storage_release(u);
    }
    conv2d_job j = { .g = gw, .y = y, .x = x, .b = b, .sc = sc, .per = per,
                     .add = add, .post_a = post_a, .post_b = post_b, .gelu = gelu,
                     .wino = 1, .wino_bf16 = bf16, .wino_m = m, .wup = up };
    msd_parallel_for(G, nthr, conv2d_gemm_chunk, &j);
    msd_storage_release(sc);
    msd_storage_release(pk);
    return MSD_OK;
}

/* y (N, Cout, Ho, Wo) = (or += with add, bias ignored) conv2d of x with w;
 * then, when post_a is given, y = y post_a + post_b per channel, and GELU.
 * wstamp: nonzero when w is a model's weights in a forward that records no gradient, read at
 * that stamp of their storage (msd_tensor_read; the
 * transformed-kernel cache may serve it). */
static int conv2d_gemm(const char *op, float *y, const float *x, const float *w, const float *b,
                       const conv_geom *g, int add, const float *post_a, const float *post_b,
                       int gelu, unsigned long long wstamp)
{
    int bf16 = msd_precision_get() == MSD_PREC_BF16;
    if (wino_path(g, bf16))
        return conv2d_wino(op, y, x, w, b, g, add, post_a, post_b, gelu, bf16, wstamp);
    int G = (g->N + g->nbmax - 1) / g->nbmax, nthr;
    int amx = bf16 && msd_amx_conv_ok(g->Cin, g->Cout, g->s);
    size_t per = amx ? amx_scratch_floats(g)
                     : group_scratch(g, (size_t)g->nbmax * g->Ho * g->Wo * g->Cout);
    msd_storage *sc, *ws = NULL;
    int rc = bf16 ? bf16_weights(op, w, g->Cout, g->Cin, g->kh * g->kw, amx, 0, &ws) : MSD_OK;
    if (rc != MSD_OK)
        return rc;
    if ((rc = scratch(op, per, G, &nthr, &sc)) != MSD_OK) {
        msd_storage_release(ws);
        return rc;
    }
    conv2d_job j = { .g = *g, .y = y, .x = x, .w = bf16 && !amx ? ws->data : w, .b = b,
                     .sc = sc, .per = per, .add = add, .post_a = post_a, .post_b = post_b,
                     .gelu = gelu, .amx = amx,
                     .wa = amx ? (const uint16_t *)ws->data : NULL, .round = bf16 && !amx };
    msd_parallel_for(G, nthr, conv2d_gemm_chunk, &j);
    msd_storage_release(sc);
    msd_storage_release(ws);
    return MSD_OK;
}

static int conv2d_forward(float *y, const float *x, const float *w, const float *b, int N,
                          int Cin, int H, int W, int Cout, int kh, int kw, int stride, int pad,
                          unsigned long long wstamp)
{
    conv_geom g = make_geom(N, Cin, H, W, Cout, kh, kw, stride, pad);
    if (N == 0 || g.Ho <= 0 || g.Wo <= 0)
        return MSD_OK;
    return conv2d_gemm("conv2d", y, x, w, b, &g, 0, NULL, NULL, 0, wstamp);
}

int msd_conv2d_forward(float *y, const float *x, const float *w, const float *b, int N, int Cin,
                       int H, int W, int Cout, int kh, int kw, int stride, int pad)
{
    return conv2d_forward(y, x, w, b, N, Cin, H, W, Cout, kh, kw, stride, pad, 0);
}

/* dw^T (K, CO) of one group for CO output channels (a constant where it is
 * inlined): dwt[k, co] = sum over the group's images and output pixels of
 * dy[co, pixel] * xp[the pixel's input for tap k], k = (ci, ki, kj). Each
 * sum runs image by image, row by row, in SC_COLS lanes (one per column
 * modulo SC_COLS) that are added in lane order at the end, then the
 * columns past the last full lane block one by one: a fixed order. dyt is
 * (CO, nb*L), channel-major; xp the padded group (nb, Cin, Hp, Wp). */
static inline __attribute__((always_inline)) void
dw_small_cout_k(float *dwt, const float *xp, const float *dyt, int nb, const conv_geom *g, int k,
                const int CO)
{
    int kh = g->kh, kw = g->kw, Ho = g->Ho, Wo = g->Wo, Hp = g->Hp, Wp = g->Wp, Cin = g->Cin;
    int ci = k / (kh * kw), ki = k / kw % kh, kj = k % kw, wb = Wo / SC_COLS * SC_COLS;
    size_t L = (size_t)Ho * Wo, ncols = (size_t)nb * L;
    float a[SMALL_COUT][SC_COLS] = { { 0 } }, t[SMALL_COUT] = { 0 };
    for (int n = 0; n < nb; n++)
        for (int oy = 0; oy < Ho; oy++) {
            const float *xr = xp + (((size_t)n * Cin + ci) * Hp + oy + ki) * Wp + kj;
            const float *dr = dyt + (size_t)n * L + (size_t)oy * Wo;
            for (int co = 0; co < CO; co++) {
                const float *d = dr + co * ncols;
                for (int ox = 0; ox < wb; ox += SC_COLS)
                    for (int v = 0; v < SC_COLS; v++)
                        a[co][v] += d[ox + v] * xr[ox + v];
                for (int ox = wb; ox < Wo; ox++)
                    t[co] += d[ox] * xr[ox];
            }
        }
    for (int co = 0; co < CO; co++) {
        float s = 0.0f;
        for (int v = 0; v < SC_COLS; v++)
            s += a[co][v];
        dwt[(size_t)k * CO + co] = s + t[co];
    }
}

/* dw_small_cout_k for the nine taps of input channel ci of a 3x3 kernel at
 * once: 9 x CO lane accumulators, so each row of dy is loaded once for the
 * nine taps, and each input row once for three. The same sums in the same
 * order as dw_small_cout_k. */
static inline __attribute__((always_inline)) void
dw_small_cout_3x3(float *dwt, const float *xp, const float *dyt, int nb, const conv_geom *g,
                  int ci, const int CO)
{
    int Ho = g->Ho, Wo = g->Wo, Hp = g->Hp, Wp = g->Wp, Cin = g->Cin;
    int wb = Wo / SC_COLS * SC_COLS;
    size_t L = (size_t)Ho * Wo, ncols = (size_t)nb * L;
    float a[9][SMALL_COUT][SC_COLS] = { { { 0 } } }, t[9][SMALL_COUT] = { { 0 } };
    for (int n = 0; n < nb; n++)
        for (int oy = 0; oy < Ho; oy++) {
            const float *xr = xp + (((size_t)n * Cin + ci) * Hp + oy) * Wp;
            const float *dr = dyt + (size_t)n * L + (size_t)oy * Wo;
            for (int ox = 0; ox < wb; ox += SC_COLS)
                for (int tap = 0; tap < 9; tap++) {
                    const float *xt = xr + (size_t)(tap / 3) * Wp + tap % 3 + ox;
                    for (int co = 0; co < CO; co++)
                        for (int v = 0; v < SC_COLS; v++)
                            a[tap][co][v] += dr[co * ncols + ox + v] * xt[v];
                }
            for (int ox = wb; ox < Wo; ox++)
                for (int tap = 0; tap < 9; tap++) {
                    float xv = xr[(size_t)(tap / 3) * Wp + tap % 3 + ox];
                    for (int co = 0; co < CO; co++)
                        t[tap][co] += dr[co * ncols + ox] * xv;
                }
        }
    for (int tap = 0; tap < 9; tap++)
        for (int co = 0; co < CO; co++) {
            float s = 0.0f;
            for (int v = 0; v < SC_COLS; v++)
                s += a[tap][co][v];
            dwt[((size_t)ci * 9 + tap) * CO + co] = s + t[tap][co];
        }
}

/* The weight gradient of a small-Cout conv (see conv2d_small_cout) for one
 * group, into dwt (K, Cout), without the GEMM's mostly empty tiles. */
MSD_MULTIVERSION
static void conv2d_dw_small_cout(float *dwt, const float *xp, const float *dyt, int nb,
                                 const conv_geom *g)
{
    int K = g->Cin * g->kh * g->kw;
    if (g->kh == 3 && g->kw == 3) {
        for (int ci = 0; ci < g->Cin; ci++)
            switch (g->Cout) {
            case 1: dw_small_cout_3x3(dwt, xp, dyt, nb, g, ci, 1); break;
            case 2: dw_small_cout_3x3(dwt, xp, dyt, nb, g, ci, 2); break;
            case 3: dw_small_cout_3x3(dwt, xp, dyt, nb, g, ci, 3); break;
            default: dw_small_cout_3x3(dwt, xp, dyt, nb, g, ci, 4); break;
            }
        return;
    }
    for (int k = 0; k < K; k++)
        switch (g->Cout) {
        case 1: dw_small_cout_k(dwt, xp, dyt, nb, g, k, 1); break;
        case 2: dw_small_cout_k(dwt, xp, dyt, nb, g, k, 2); break;
        case 3: dw_small_cout_k(dwt, xp, dyt, nb, g, k, 3); break;
        default: dw_small_cout_k(dwt, xp, dyt, nb, g, k, 4); break;
        }
}

/* Weight-gradient pass, group gi: dw^T partial (K, Cout) = patches (K,
 * nb*L) dy^T (nb*L, Cout), dy first copied channel-major (Cout, nb*L). */
static void conv2d_dw_chunk(void *ctx, int gi, int tid)
{
    const conv2d_job *j = ctx;
    const conv_geom *g = &j->g;
    int n0 = gi * g->nbmax, nb = g->N - n0 < g->nbmax ? g->N - n0 : g->nbmax, Cout = g->Cout;
    int K = g->Cin * g->kh * g->kw;
    size_t L = (size_t)g->Ho * g->Wo;
    int ncols = (int)((size_t)nb * L);
    float *sc = j->sc->data + j->per * (size_t)tid;
    if (j->amx) {
        msd_amx_conv c = amx_group(g, nb);
        msd_amx_conv_dw(&c, j->sp->data + j->nw * gi, j->x + (size_t)n0 * g->Cin * g->H * g->W,
                        j->dy + (size_t)n0 * Cout * L, sc);
        return;
    }
    int *pix, *tap;
    float *dyt;
    const float *xp = group_patches(sc, g, j->x, n0, nb, &pix, &tap, &dyt);
    to_channel_major(dyt, j->dy + (size_t)n0 * Cout * L, nb, Cout, L);
    if (j->round) {
        msd_round_bf16((float *)xp, (size_t)nb * g->Cin * g->Hp * g->Wp);
        msd_round_bf16(dyt, (size_t)Cout * ncols);
    }
    if (Cout <= SMALL_COUT && g->s == 1) {
        conv2d_dw_small_cout(j->sp->data + j->nw * gi, xp, dyt, nb, g);
        return;
    }
    msd_sgemm_offsets(K, Cout, ncols, 1.0f, xp, tap, pix, 1, dyt, ncols, 0.0f,
                      j->sp->data + j->nw * gi, Cout);
}

/* Input-gradient pass when it is not a convolution of dy (stride > 1,
 * kh != kw or pad >= kh): dcol (K, nb*L) = w^T (K, Cout) dy (Cout, nb*L),
 * scattered into dx by col2im. Scratch: dyt (Cout, nb*L), dcol (K, nb*L). */
static void conv2d_dx_col_chunk(void *ctx, int gi, int tid)
{
    const conv2d_job *j = ctx;
    const conv_geom *g = &j->g;
    int n0 = gi * g->nbmax, nb = g->N - n0 < g->nbmax ? g->N - n0 : g->nbmax, Cout = g->Cout;
    int K = g->Cin * g->kh * g->kw;
    size_t L = (size_t)g->Ho * g->Wo;
    int ncols = (int)((size_t)nb * L);
    float *dyt = j->sc->data + j->per * (size_t)tid, *col = dyt + (size_t)Cout * g->nbmax * L;
    to_channel_major(dyt, j->dy + (size_t)n0 * Cout * L, nb, Cout, L);
    if (j->round)
        msd_round_bf16(dyt, (size_t)Cout * ncols);
    msd_sgemm(1, 0, K, ncols, Cout, 1.0f, j->w, K, dyt, ncols, 0.0f, col, ncols);
    col2im_add(j->y + (size_t)n0 * g->Cin * g->H * g->W, col, nb, g->Cin, g->H, g->W, g->kh,
               g->kw, g->s, g->p, g->Ho, g->Wo);
}

/* The backward by Winograd (msd_wino_backward): chunk k takes groups [k G / nch,
 * (k+1) G / nch): their input gradients, and its own partials of the transformed weight
 * gradient ((m + 2)^2, Cin, Cout) and of the bias gradient (Cout); the partials are summed in
 * chunk order (the weight gradient's then transformed back). nch depends on the shape only,
 * so the result does not depend on the thread count. */
#define WINO_DW_CHUNKS 8

typedef struct wino_back_job {
    msd_wino_conv c;
    int N, G, nch;
    float *dx;
    const uint32_t *upx;
    const float *x, *dy;
    const msd_storage *sc, *sp;
    size_t per, nw; /* partials: nch of dwt (nw floats each), then nch of db (Cout) */
    int dw, db, dx_add;
} wino_back_job;

static void wino_back_chunk(void *ctx, int k, int tid)
{
    const wino_back_job *j = ctx;
    float *part = j->sp->data + j->nw * k;
    float *pdb = j->sp->data + j->nw * j->nch + (size_t)j->c.Cout * k;
    float *sc = j->sc->data + j->per * (size_t)tid;
    size_t L = (size_t)j->c.H * j->c.W;
    if (j->dw)
        memset(part, 0, j->nw * sizeof *part);
    memset(pdb, 0, (size_t)j->c.Cout * sizeof *pdb);
    for (int g = k * j->G / j->nch; g < (k + 1) * j->G / j->nch; g++) {
        msd_wino_conv c = j->c;
        int n0 = g * c.nb;
        c.nb = j->N - n0 < c.nb ? j->N - n0 : c.nb;
        msd_wino_backward(&c, j->dx ? j->dx + (size_t)n0 * c.Cin * L : NULL, j->dx_add, j->upx,
                          j->dw ? part : NULL, j->db ? pdb : NULL,
                          j->x + (size_t)n0 * c.Cin * L, j->dy + (size_t)n0 * c.Cout * L, sc);
    }
}

typedef struct wino_finish_job {
    float *dw;
    const float *dwt;
    int Cout, Cin, m;
} wino_finish_job;

/* Output channels [4k, 4k + 4) back from the transformed domain. */
static void wino_finish_chunk(void *ctx, int k, int tid)
{
    const wino_finish_job *j = ctx;
    (void)tid;
    msd_wino_dw_finish(j->dw, j->dwt, j->Cout, j->Cin, j->m, 4 * k,
                       4 * k + 4 < j->Cout ? 4 * k + 4 : j->Cout);
}

/* The flipped kernels of the input gradient (the kernel flipped, its in and out channels
 * swapped: wf[i][o][a][b] = w[o][i][2-a][2-b]) transformed and packed for msd_wino_backward,
 * in a new storage (*out). */
static int wino_flipped(const float *w, int Cout, int Cin, int m, int bf16, msd_storage **out)
{
    size_t nf = (size_t)Cout * Cin * 9, P = (size_t)msd_wino_planes(m);
    size_t nu = P * msd_wino_plane(Cin, Cout), np = msd_wino_packed_words(Cin, Cout, m, bf16);
    msd_storage *wf = msd_storage_new(nf + nu), *pk = msd_storage_new(np);
    if (!wf || !pk) {
        msd_storage_release(wf);
        msd_storage_release(pk);
        return msd_error(MSD_ERR_MEM, "conv2d backward: out of memory for %zu flipped and "
                                      "transformed weights", nf + nu + np);
    }
    for (int o = 0; o < Cout; o++)
        for (int i = 0; i < Cin; i++)
            for (int t = 0; t < 9; t++)
                wf->data[((size_t)i * Cout + o) * 9 + 8 - t] = w[((size_t)o * Cin + i) * 9 + t];
    wino_w_job wj = { wf->data + nf, (uint32_t *)pk->data, wf->data, Cin, Cout, m, bf16 };
    msd_parallel_for((Cout + WW_BLOCK - 1) / WW_BLOCK, MSD_ALL_THREADS, wino_u_chunk, &wj);
    msd_parallel_for((int)P, MSD_ALL_THREADS, wino_pack_chunk, &wj);
    msd_storage_release(wf);
    *out = pk;
    return MSD_OK;
}

static int conv2d_wino_backward(float *dx, int dx_add, float *dw, float *db, const float *dy,
                                const float *x, const float *w, int N, int Cin, int H, int W,
                                int Cout, int bf16)
{
    const char *op = "conv2d backward";
    int m = msd_wino_tile(H, W, bf16);
    msd_wino_conv c = { msd_wino_group_images(N, H, W, m), Cin, H, W, Cout, bf16, m };
    int G = (N + c.nb - 1) / c.nb, nch = G < WINO_DW_CHUNKS ? G : WINO_DW_CHUNKS, nthr, rc;
    int P = msd_wino_planes(m);
    size_t per = msd_wino_backward_scratch(&c), nw = (size_t)P * msd_wino_plane(Cout, Cin);
    size_t npart = (nw + (size_t)Cout) * nch;
    msd_storage *sc, *upx = NULL, *sp;
    if (dx && (rc = wino_flipped(w, Cout, Cin, m, bf16, &upx)) != MSD_OK)
        return rc;
    if (!(sp = msd_storage_new(npart + nw))) {
        msd_storage_release(upx);
        return msd_error(MSD_ERR_MEM, "%s: out of memory for %d partial weight gradients of "
                                      "%zu floats", op, nch + 1, nw);
    }
    if ((rc = scratch(op, per, nch, &nthr, &sc)) != MSD_OK) {
        msd_storage_release(upx);
        msd_storage_release(sp);
        return rc;
    }
    wino_back_job j = { c, N, G, nch, dx, upx ? (const uint32_t *)upx->data : NULL, x, dy,
                        sc, sp, per, nw, dw != NULL, db != NULL, dx_add };
    msd_parallel_for(nch, nthr, wino_back_chunk, &j);
    if (db) /* the chunks' sums, in chunk order */
        for (int k = 0; k < nch; k++) {
            const float *pb = sp->data + nw * nch + (size_t)Cout * k;
            for (int o = 0; o < Cout; o++)
                db[o] += pb[o];
        }
    if (dw) {
        float *acc = sp->data + npart; /* after the partials */
        memset(acc, 0, nw * sizeof *acc);
        reduce_partials(acc, sp->data, nch, P, (int)msd_wino_plane(Cout, Cin), 0);
        wino_finish_job fj = { dw, acc, Cout, Cin, m };
        msd_parallel_for((Cout + 3) / 4, MSD_ALL_THREADS, wino_finish_chunk, &fj);
    }
    msd_storage_release(sc);
    msd_storage_release(sp);
    msd_storage_release(upx);
    return MSD_OK;
}

/* msd_conv2d_backward; with dx_assign, dx is written (its contents ignored) rather than
 * added to. */
static int conv2d_backward(float *dx, int dx_assign, float *dw, float *db, const float *dy,
                           const float *x, const float *w, int N, int Cin, int H, int W,
                           int Cout, int kh, int kw, int stride, int pad)
{
    conv_geom g = make_geom(N, Cin, H, W, Cout, kh, kw, stride, pad);
    size_t L = (size_t)g.Ho * g.Wo, K = (size_t)Cin * kh * kw;
    if (N == 0 || g.Ho <= 0 || g.Wo <= 0) {
        if (dx && dx_assign)
            memset(dx, 0, (size_t)N * Cin * H * W * sizeof *dx);
        return MSD_OK;
    }
    int bf16 = msd_precision_get() == MSD_PREC_BF16;
    if ((dx || dw) && wino_path(&g, bf16)) /* its input gradient's convolution is one too */
        return conv2d_wino_backward(dx, !dx_assign, dw, db, dy, x, w, N, Cin, H, W, Cout, bf16);
    int dx_conv = dx && stride == 1 && kh == kw && pad < kh;
    if (dx && dx_assign && !dx_conv) /* the col path adds */
        memset(dx, 0, (size_t)N * Cin * H * W * sizeof *dx);
    if (db)
        bias_grad(db, dy, N, Cout, L);
    int rc = MSD_OK;
    if (dx_conv) {
        /* with stride 1, dx is the convolution of dy, padded by k-1-p, with
         * the kernel flipped and its in/out channels swapped: wf (Cin, Cout,
         * kh, kw), wf[i][o][a][b] = w[o][i][kh-1-a][kw-1-b] */
        msd_storage *wf = msd_storage_new(K * Cout);
        if (!wf)
            return msd_error(MSD_ERR_MEM, "conv2d backward: out of memory for a flipped "
                                          "kernel of %zu floats", K * Cout);
        int taps = kh * kw;
        for (int o = 0; o < Cout; o++)
            for (int i = 0; i < Cin; i++)
                for (int t = 0; t < taps; t++)
                    wf->data[((size_t)i * Cout + o) * taps + taps - 1 - t] =
                        w[((size_t)o * Cin + i) * taps + t];
        conv_geom gx = make_geom(N, Cout, g.Ho, g.Wo, Cin, kh, kw, 1, kh - 1 - pad);
        rc = conv2d_gemm("conv2d backward", dx, dy, wf->data, NULL, &gx, !dx_assign, NULL, NULL,
                         0, 0);
        msd_storage_release(wf);
        if (rc != MSD_OK)
            return rc;
        dx = NULL;
    }
    if (!dx && !dw)
        return MSD_OK;
    int G = (N + g.nbmax - 1) / g.nbmax, nthr;
    int amx = bf16 && dw && msd_amx_conv_ok(Cin, Cout, stride);
    size_t slab = (size_t)Cout * g.nbmax * L, nw = (size_t)Cout * K;
    size_t per = dx ? slab + K * g.nbmax * L : 0;
    size_t per_dw = amx ? amx_scratch_floats(&g) : group_scratch(&g, slab);
    if (dw && per_dw > per)
        per = per_dw;
    msd_storage *sc, *sp = NULL, *ws = NULL;
    /* the col path of dx uses w: rounded when bf16 */
    if (bf16 && dx && (rc = bf16_weights("conv2d backward", w, Cout, Cin, kh * kw, 0, 0, &ws)))
        return rc;
    rc = scratch("conv2d backward", per, G, &nthr, &sc);
    if (rc != MSD_OK) {
        msd_storage_release(ws);
        return rc;
    }
    if (dw && !(sp = msd_storage_new(nw * G))) {
        msd_storage_release(sc);
        msd_storage_release(ws);
        return msd_error(MSD_ERR_MEM, "conv2d backward: out of memory for %d partial weight "
                                      "gradients of %zu floats", G, nw);
    }
    conv2d_job j = { .g = g, .y = dx, .x = x, .w = ws ? ws->data : w, .dy = dy, .sc = sc,
                     .sp = sp, .per = per, .nw = nw, .round = bf16 && !amx };
    if (dw) {
        j.amx = amx;
        msd_parallel_for(G, nthr, conv2d_dw_chunk, &j);
        reduce_partials(dw, sp->data, G, Cout, (int)K, 1);
    }
    if (dx) {
        j.amx = 0;
        j.round = bf16;
        msd_parallel_for(G, nthr, conv2d_dx_col_chunk, &j);
    }
    msd_storage_release(sp);
    msd_storage_release(sc);
    msd_storage_release(ws);
    return MSD_OK;
}

int msd_conv2d_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                        const float *w, int N, int Cin, int H, int W, int Cout, int kh, int kw,
                        int stride, int pad)
{
    return conv2d_backward(dx, 0, dw, db, dy, x, w, N, Cin, H, W, Cout, kh, kw, stride, pad);
}

/* In the transposed kernels the job's H, W are the input's and Ho, Wo
 * the output's, as in their code. */
static void conv_transpose2d_forward_chunk(void *ctx, int g, int tid)
{
    const conv_job *j = ctx;
    int N = j->N, Cin = j->Cin, H = j->H, W = j->W, Cout = j->Cout, nbmax = j->nbmax;
    int Ho = j->Ho, Wo = j->Wo;
    size_t K = j->K, L = (size_t)H * W, Lo = (size_t)Ho * Wo;
    const float *w = j->w;
    int n0 = g * nbmax, nb = N - n0 < nbmax ? N - n0 : nbmax;
    int ncols = (int)((size_t)nb * L);
    float *col = j->sc->data + j->per * (size_t)tid, *xt = col + K * nbmax * L;
    float *yg = j->y + (size_t)n0 * Cout * Lo;
    if (!j->wa) {
        to_channel_major(xt, j->x + (size_t)n0 * Cin * L, nb, Cin, L);
        if (j->round)
            msd_round_bf16(xt, (size_t)Cin * ncols);
        msd_sgemm(1, 0, (int)K, ncols, Cin, 1.0f, w, (int)K, xt, ncols, 0.0f, col, ncols);
    } else { /* a 1x1 convolution to K channels: col image by image, (nb, K, L) */
        msd_amx_conv c = { nb, Cin, H, W, (int)K, 1, 1, 0 };
        msd_amx_conv_forward(&c, col, 0, NULL, j->x + (size_t)n0 * Cin * L, j->wa, xt);
    }
    for (int n = 0; n < nb; n++)
        for (int c = 0; c < Cout; c++) {
            float bc = j->b ? j->b[c] : 0.0f;
            float *dst = yg + ((size_t)n * Cout + c) * Lo;
            for (size_t l = 0; l < Lo; l++)
                dst[l] = bc;
        }
    if (!j->wa)
        col2im_add(yg, col, nb, Cout, Ho, Wo, j->kh, j->kw, j->stride, j->pad, H, W);
    else
        for (int n = 0; n < nb; n++)
            col2im_add(yg + (size_t)n * Cout * Lo, col + (size_t)n * K * L, 1, Cout, Ho, Wo,
                       j->kh, j->kw, j->stride, j->pad, H, W);
}

/* Groups a transposed conv's forward cuts the batch into, at least (when it has as many
 * images): the model's are small enough for one group of the whole batch (a 1x1, 4x4 or
 * 8x8 input), which ran on one thread. Each output is computed once whatever the groups
 * (the GEMM's result does not depend on its N), so the bits do not change. */
#define CT_MIN_GROUPS 8

/* A transposed conv is the adjoint of a conv mapping (Ho, Wo) to (H, W):
 * col (Cout*kh*kw, nb*H*W) = w^T x, then col2im into y. */
int msd_conv_transpose2d_forward(float *y, const float *x, const float *w, const float *b, int N,
                                 int Cin, int H, int W, int Cout, int kh, int kw, int stride,
                                 int pad)
{
    int Ho = (H - 1) * stride - 2 * pad + kh, Wo = (W - 1) * stride - 2 * pad + kw;
    size_t L = (size_t)H * W, K = (size_t)Cout * kh * kw;
    if (N == 0)
        return MSD_OK;
    int nbmax = chunk_images(N, K > (size_t)Cin ? K : (size_t)Cin, L);
    if (nbmax > (N + CT_MIN_GROUPS - 1) / CT_MIN_GROUPS)
        nbmax = (N + CT_MIN_GROUPS - 1) / CT_MIN_GROUPS;
    int G = (N + nbmax - 1) / nbmax, nthr;
    int bf16 = msd_precision_get() == MSD_PREC_BF16;
    int amx = bf16 && K <= INT_MAX && msd_amx_conv_ok(Cin, (int)K, 1);
    size_t per = (K + Cin) * nbmax * L;
    if (amx) {
        /* the tiles' scratch after col; per a multiple of 16 floats, so that with K a multiple
         * of 32 every thread's tile scratch is 64-byte aligned, as conv_amx.h asks */
        msd_amx_conv c = { nbmax, Cin, H, W, (int)K, 1, 1, 0 };
        size_t need = K * nbmax * L + (msd_amx_conv_scratch(&c) + 63) / 64 * 16;
        per = (per > need ? per : need) + 15;
        per -= per % 16;
    }
    msd_storage *sc, *ws = NULL;
    int rc = bf16 ? bf16_weights("conv_transpose2d", w, (int)K, Cin, 1, amx, 1, &ws) : MSD_OK;
    if (rc != MSD_OK)
        return rc;
    rc = scratch("conv_transpose2d", per, G, &nthr, &sc);
    if (rc != MSD_OK) {
        msd_storage_release(ws);
        return rc;
    }
    conv_job j = {.y = y, .x = x, .w = bf16 && !amx ? ws->data : w, .b = b, .sc = sc,
                  .per = per, .K = K, .N = N, .Cin = Cin, .H = H, .W = W, .Cout = Cout,
                  .kh = kh, .kw = kw, .stride = stride, .pad = pad, .Ho = Ho, .Wo = Wo,
                  .nbmax = nbmax, .wa = amx ? (const uint16_t *)ws->data : NULL,
                  .round = bf16 && !amx};
    msd_parallel_for(G, nthr, conv_transpose2d_forward_chunk, &j);
    msd_storage_release(sc);
    msd_storage_release(ws);
    return MSD_OK;
}

static void conv_transpose2d_backward_chunk(void *ctx, int g, int tid)
{
    const conv_job *j = ctx;
    int N = j->N, Cin = j->Cin, H = j->H, W = j->W, Cout = j->Cout, nbmax = j->nbmax;
    int Ho = j->Ho, Wo = j->Wo;
    size_t K = j->K, L = (size_t)H * W, Lo = (size_t)Ho * Wo, nw = j->nw;
    const float *w = j->w;
    const msd_storage *sp = j->sp;
    int n0 = g * nbmax, nb = N - n0 < nbmax ? N - n0 : nbmax;
    int ncols = (int)((size_t)nb * L);
    float *dcol = j->sc->data + j->per * (size_t)tid, *t = dcol + K * nbmax * L;
    im2col(dcol, j->dy + (size_t)n0 * Cout * Lo, nb, Cout, Ho, Wo, j->kh, j->kw, j->stride,
           j->pad, H, W);
    if (j->round)
        msd_round_bf16(dcol, K * (size_t)ncols);
    if (sp) {
        /* partial g (Cin, K) = x (Cin, nb*L) dcol^T (nb*L, K) */
        to_channel_major(t, j->x + (size_t)n0 * Cin * L, nb, Cin, L);
        if (j->round)
            msd_round_bf16(t, (size_t)Cin * ncols);
        msd_sgemm(0, 1, Cin, (int)K, ncols, 1.0f, t, ncols, dcol, ncols, 0.0f,
                  sp->data + nw * g, (int)K);
    }
    if (j->dx) {
        /* dx (Cin, nb*L) = w (Cin, K) dcol (K, nb*L), added back in NCHW order */
        msd_sgemm(0, 0, Cin, ncols, (int)K, 1.0f, w, (int)K, dcol, ncols, 0.0f, t, ncols);
        for (int n = 0; n < nb; n++)
            for (int c = 0; c < Cin; c++) {
                float *dst = j->dx + ((size_t)(n0 + n) * Cin + c) * L;
                const float *src = t + ((size_t)c * nb + n) * L;
                for (size_t l = 0; l < L; l++)
                    dst[l] += src[l];
            }
    }
}

int msd_conv_transpose2d_backward(float *dx, float *dw, float *db, const float *dy,
                                  const float *x, const float *w, int N, int Cin, int H, int W,
                                  int Cout, int kh, int kw, int stride, int pad)
{
    int Ho = (H - 1) * stride - 2 * pad + kh, Wo = (W - 1) * stride - 2 * pad + kw;
    size_t L = (size_t)H * W, Lo = (size_t)Ho * Wo, K = (size_t)Cout * kh * kw;
    if (N == 0)
        return MSD_OK;
    if (db)
        bias_grad(db, dy, N, Cout, Lo);
    if (!dx && !dw)
        return MSD_OK;
    int nbmax = chunk_images(N, K > (size_t)Cin ? K : (size_t)Cin, L);
    int G = (N + nbmax - 1) / nbmax, nthr;
    size_t per = (K + Cin) * nbmax * L, nw = (size_t)Cin * K;
    int bf16 = msd_precision_get() == MSD_PREC_BF16;
    msd_storage *sc, *sp = NULL, *ws = NULL;
    /* bf16: the fp32 kernels on rounded copies of w, x and dy */
    int rc = bf16 && dx ? bf16_weights("conv_transpose2d backward", w, (int)K, Cin, 1, 0, 1, &ws)
                        : MSD_OK;
    if (rc != MSD_OK)
        return rc;
    rc = scratch("conv_transpose2d backward", per, G, &nthr, &sc);
    if (rc != MSD_OK) {
        msd_storage_release(ws);
        return rc;
    }
    if (dw && !(sp = msd_storage_new(nw * G))) {
        msd_storage_release(sc);
        msd_storage_release(ws);
        return msd_error(MSD_ERR_MEM, "conv_transpose2d backward: out of memory for %d partial "
                                      "weight gradients of %zu floats", G, nw);
    }
    conv_job j = {.dx = dx, .x = x, .w = ws ? ws->data : w, .dy = dy, .sc = sc, .sp = sp,
                  .per = per, .nw = nw, .K = K, .N = N, .Cin = Cin, .H = H, .W = W,
                  .Cout = Cout, .kh = kh, .kw = kw, .stride = stride, .pad = pad, .Ho = Ho,
                  .Wo = Wo, .nbmax = nbmax, .round = bf16};
    msd_parallel_for(G, nthr, conv_transpose2d_backward_chunk, &j);
    if (dw)
        reduce_partials(dw, sp->data, G, Cin, (int)K, 0);
    msd_storage_release(sp);
    msd_storage_release(sc);
    msd_storage_release(ws);
    return MSD_OK;
}

/* ---- tensor-level ops ------------------------------------------------- */

/* Checks x, w, b, stride and padding, and writes the output shape into os.
 * w holds the input channels in dim wc (0 when transposed, 1 for conv2d)
 * and the output channels in dim oc. */
static int conv_check(const char *op, const msd_tensor *x, const msd_tensor *w,
                      const msd_tensor *b, int stride, int pad, int transposed, int *os)
{
    char bx[64], bw[64], bb[64];
    msd_tensor_shape_str(bx, sizeof bx, x);
    msd_tensor_shape_str(bw, sizeof bw, w);
    if (x->ndim != 4)
        return msd_error(MSD_ERR_SHAPE, "%s: input %s must be 4-D (N,C,H,W)", op, bx);
    if (w->ndim != 4)
        return msd_error(MSD_ERR_SHAPE, "%s: weight %s must be 4-D (%s,kh,kw)", op, bw,
                         transposed ? "in,out" : "out,in");
    int wc = transposed ? 0 : 1, oc = transposed ? 1 : 0;
    if (w->shape[2] <= 0 || w->shape[3] <= 0 || w->shape[oc] <= 0)
        return msd_error(MSD_ERR_SHAPE, "%s: weight %s has an empty kernel or no channels", op,
                         bw);
    if (x->shape[1] != w->shape[wc])
        return msd_error(MSD_ERR_SHAPE, "%s: input %s has %d channels, weight %s expects %d", op,
                         bx, x->shape[1], bw, w->shape[wc]);
    if (stride <= 0)
        return msd_error(MSD_ERR_ARG, "%s: stride must be >= 1, got %d (input %s, weight %s)", op,
                         stride, bx, bw);
    if (pad < 0)
        return msd_error(MSD_ERR_ARG, "%s: padding must be >= 0, got %d (input %s, weight %s)",
                         op, pad, bx, bw);
    if (b && (b->ndim != 1 || b->shape[0] != w->shape[oc]))
        return msd_error(MSD_ERR_SHAPE, "%s: bias %s must be [%d] for weight %s", op,
                         msd_tensor_shape_str(bb, sizeof bb, b), w->shape[oc], bw);
    int kh = w->shape[2], kw = w->shape[3], H = x->shape[2], W = x->shape[3];
    long Ho, Wo;
    if (transposed) {
        Ho = (long)(H - 1) * stride - 2L * pad + kh;
        Wo = (long)(W - 1) * stride - 2L * pad + kw;
    } else {
        Ho = H + 2L * pad - kh < 0 ? 0 : (H + 2L * pad - kh) / stride + 1;
        Wo = W + 2L * pad - kw < 0 ? 0 : (W + 2L * pad - kw) / stride + 1;
    }
    if (H <= 0 || W <= 0)
        return msd_error(MSD_ERR_SHAPE, "%s: input %s has an empty image (weight %s)", op, bx,
                         bw);
    if (Ho <= 0 || Wo <= 0)
        return msd_error(MSD_ERR_SHAPE,
                         "%s: input %s with weight %s, stride %d, padding %d gives an output of "
                         "%ldx%ld",
                         op, bx, bw, stride, pad, Ho, Wo);
    if (Ho > 65536 || Wo > 65536)
        return msd_error(MSD_ERR_SHAPE, "%s: output %ldx%ld too large (input %s, weight %s)", op,
                         Ho, Wo, bx, bw);
    os[0] = x->shape[0];
    os[1] = w->shape[oc];
    os[2] = (int)Ho;
    os[3] = (int)Wo;
    return MSD_OK;
}

static int conv_any(int transposed, msd_tensor *x, msd_tensor *w, msd_tensor *b, int stride,
                    int pad, msd_tensor **out)
{
    const char *op = transposed ? "conv_transpose2d" : "conv2d";
    int os[4];
    int rc = conv_check(op, x, w, b, stride, pad, transposed, os);
    if (rc != MSD_OK)
        return rc;
    msd_tensor *y = msd_tensor_empty(4, os);
    if (!y)
        return MSD_ERR_MEM;
    const float *pb = b ? msd_tensor_data(b) : NULL;
    if (transposed)
        rc = msd_conv_transpose2d_forward(msd_tensor_data(y), msd_tensor_data(x),
                                          msd_tensor_data(w), pb, x->shape[0], x->shape[1],
                                          x->shape[2], x->shape[3], os[1], w->shape[2],
                                          w->shape[3], stride, pad);
    else {
        /* weights that no gradient will follow: read at their stamp, which the
         * transformed-kernel cache checks */
        unsigned long long stamp = 0;
        int keep = !(msd_grad_enabled() && msd_requires_grad(w));
        const float *pw = keep ? msd_tensor_read(w, &stamp) : msd_tensor_data(w);
        rc = conv2d_forward(msd_tensor_data(y), msd_tensor_data(x), pw, pb, x->shape[0],
                            x->shape[1], x->shape[2], x->shape[3], os[1], w->shape[2],
                            w->shape[3], stride, pad, stamp);
    }
    msd_tensor *in[3] = { x, w, b };
    msd_node *node = NULL;
    if (rc != MSD_OK) {
        msd_tensor_release(y);
        return rc;
    }
    rc = msd_autograd_finish(y, transposed ? MSD_OP_CONV_TRANSPOSE2D : MSD_OP_CONV2D, 3, in,
                             &node, out);
    if (rc == MSD_OK && node) {
        node->iarg[0] = stride;
        node->iarg[1] = pad;
    }
    return rc;
}

int msd_conv2d(msd_tensor *x, msd_tensor *w, msd_tensor *b, int stride, int padding,
               msd_tensor **out)
{
    return conv_any(0, x, w, b, stride, padding, out);
}

int msd_conv_transpose2d(msd_tensor *x, msd_tensor *w, msd_tensor *b, int stride, int padding,
                         msd_tensor **out)
{
    return conv_any(1, x, w, b, stride, padding, out);
}

int msd_conv2d_bn_act(msd_tensor *x, msd_tensor *w, msd_tensor *b, int stride, int padding,
                      msd_tensor *bn_weight, msd_tensor *bn_bias, msd_tensor *running_mean,
                      msd_tensor *running_var, float eps, int gelu, msd_tensor **out)
{
    const char *op = "conv2d_bn_act";
    int os[4];
    int rc = conv_check(op, x, w, b, stride, padding, 0, os);
    if (rc != MSD_OK)
        return rc;
    msd_tensor *bn[4] = { running_mean, running_var, bn_weight, bn_bias };
    static const char *const bn_names[4] = { "running_mean", "running_var", "weight", "bias" };
    for (int i = 0; i < 4; i++) {
        if (!bn[i] && i < 2)
            return msd_error(MSD_ERR_ARG, "%s: %s is required", op, bn_names[i]);
        if (bn[i] && (bn[i]->ndim != 1 || bn[i]->shape[0] != os[1])) {
            char bs[64];
            return msd_error(MSD_ERR_SHAPE, "%s: BatchNorm %s %s must be [%d], the conv's "
                             "output channels", op, bn_names[i],
                             msd_tensor_shape_str(bs, sizeof bs, bn[i]), os[1]);
        }
    }
    if (!(eps >= 0))
        return msd_error(MSD_ERR_ARG, "%s: eps must be >= 0, got %g", op, eps);
    msd_tensor *in[7] = { x, w, b, bn_weight, bn_bias, running_mean, running_var };
    for (int i = 0; i < 7; i++)
        if (in[i] && msd_grad_enabled() && msd_requires_grad(in[i]))
            return msd_error(MSD_ERR_STATE, "%s: inference only (it records no gradient), but "
                             "grad mode is on and an input requires grad", op);
    int C = os[1];
    msd_storage *ab = msd_storage_new(3 * (size_t)C);
    msd_tensor *y = ab ? msd_tensor_empty(4, os) : NULL;
    if (!y) {
        msd_storage_release(ab);
        return MSD_ERR_MEM;
    }
    /* y = conv * a + b with BatchNorm's eval rstd, a and b, computed by
     * the kernels msd_batch_norm2d uses: the same bits */
    float *a = ab->data, *sh = a + C, *rstd = sh + C;
    msd_batchnorm_rstd(rstd, msd_tensor_data(running_var), C, eps);
    msd_batchnorm_fold(a, sh, msd_tensor_data(running_mean), rstd,
                       bn_weight ? msd_tensor_data(bn_weight) : NULL,
                       bn_bias ? msd_tensor_data(bn_bias) : NULL, C);
    conv_geom g = make_geom(x->shape[0], x->shape[1], x->shape[2], x->shape[3], C, w->shape[2],
                            w->shape[3], stride, padding);
    unsigned long long stamp;
    const float *pw = msd_tensor_read(w, &stamp); /* inference: the cache may serve w */
    rc = conv2d_gemm(op, msd_tensor_data(y), msd_tensor_data(x), pw,
                     b ? msd_tensor_data(b) : NULL, &g, 0, a, sh, gelu, stamp);
    msd_storage_release(ab);
    if (rc != MSD_OK) {
        msd_tensor_release(y);
        return rc;
    }
    *out = y;
    return MSD_OK;
}

static float *data_or_null(msd_tensor *t)
{
    return t ? msd_tensor_data(t) : NULL;
}

/* dx written when fresh (autograd.h), the others added to */
int msd_grad_conv2d(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx)
{
    const msd_tensor *x = n->in[0], *w = n->in[1];
    msd_grad_zero_fresh(n, dx, 1u);
    return conv2d_backward(data_or_null(dx[0]), (int)(n->fresh & 1u), data_or_null(dx[1]),
                           data_or_null(dx[2]), msd_tensor_data(dy), msd_tensor_data(x),
                           msd_tensor_data(w), x->shape[0], x->shape[1], x->shape[2],
                           x->shape[3], w->shape[0], w->shape[2], w->shape[3], n->iarg[0],
                           n->iarg[1]);
}

int msd_grad_conv_transpose2d(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx)
{
    const msd_tensor *x = n->in[0], *w = n->in[1];
    return msd_conv_transpose2d_backward(
        data_or_null(dx[0]), data_or_null(dx[1]), data_or_null(dx[2]), msd_tensor_data(dy),
        msd_tensor_data(x), msd_tensor_data(w), x->shape[0], x->shape[1], x->shape[2],
        x->shape[3], w->shape[1], w->shape[2], w->shape[3], n->iarg[0], n->iarg[1]);
}
