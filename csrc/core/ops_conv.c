/* Convolutions: conv2d and conv_transpose2d, forward and backward, through
 * im2col / col2im and msd_sgemm over chunks of the batch.
 *
 * Column layout: a "col" matrix is (C*kh*kw, nb*Ho*Wo) row-major, row
 * (c, ki, kj), column (n, oy, ox), so that one GEMM covers nb images at
 * once; small maps (4x4, 1x1) would give GEMMs too thin to be fast if done
 * image by image. GEMM results come out channel-major (Cout, nb*L) and are
 * moved to NCHW with a copy, which costs little next to the GEMM. */
#include <stdatomic.h>
#include <string.h>

#include "gemm.h"
#include "ops.h"
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

/* Chunk c: db[c] += the sum of channel c of dy, in double. */
static void bias_grad_chunk(void *ctx, int c, int tid)
{
    const bias_grad_job *j = ctx;
    double acc = 0;
    (void)tid;
    for (int n = 0; n < j->N; n++) {
        const float *p = j->dy + ((size_t)n * j->C + c) * j->L;
        for (size_t l = 0; l < j->L; l++)
            acc += p[l];
    }
    j->db[c] += (float)acc;
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

/* Elements of dw per reduce_partials chunk. */
#define REDUCE_BLOCK 4096

typedef struct reduce_job {
    float *dw;
    const float *part;
    int G;
    size_t n;
} reduce_job;

static void reduce_chunk(void *ctx, int k, int tid)
{
    const reduce_job *j = ctx;
    size_t lo = (size_t)k * REDUCE_BLOCK, hi = lo + REDUCE_BLOCK < j->n ? lo + REDUCE_BLOCK : j->n;
    (void)tid;
    for (size_t i = lo; i < hi; i++) {
        double acc = 0;
        for (int g = 0; g < j->G; g++)
            acc += j->part[(size_t)g * j->n + i];
        j->dw[i] += (float)acc;
    }
}

/* dw (rows, cols) += the sum of G partial (rows, cols) matrices in group
 * order, in double: the same result for any thread count. */
static void reduce_partials(float *dw, const float *part, int G, size_t n)
{
    reduce_job j = {dw, part, G, n};
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
} conv_job;

/* ---- patches packed straight into GEMM panels ----------------------------
 * The GEMMs of a convolution read image patches: row (c, ki, kj), column
 * (n, oy, ox) holds x[n, c, oy*s - p + ki, ox*s - p + kj] (0 in the
 * padding). Instead of an im2col matrix, these packers write the patches
 * directly into msd_sgemm_pack's panels (gemm.h), once per use. */
typedef struct patches {
    const float *x; /* (nb, C, H, W): the group's first image */
    int C, H, W, kh, kw, s, p, Ho, Wo;
} patches;

/* Writes n values of patch row (c, ki, kj) for the columns starting at
 * (img, oy, ox) into dst, walking along output rows. */
static void patch_row(float *dst, const patches *q, int c, int ki, int kj, int img, int oy,
                      int ox, int n)
{
    int lo, hi, s = q->s;
    valid_range(kj, s, q->p, q->W, q->Wo, &lo, &hi);
    for (int jj = 0; jj < n;) {
        int run = q->Wo - ox < n - jj ? q->Wo - ox : n - jj;
        int iy = oy * s - q->p + ki;
        float *d = dst + jj - ox; /* d[o] for output column o */
        if (iy < 0 || iy >= q->H) {
            for (int o = ox; o < ox + run; o++)
                d[o] = 0.0f;
        } else {
            const float *src =
                q->x + ((size_t)img * q->C + c) * q->H * q->W + (size_t)iy * q->W + kj - q->p;
            int a = lo > ox ? lo : ox, b = hi < ox + run ? hi : ox + run;
            int o = ox;
            for (; o < a && o < ox + run; o++)
                d[o] = 0.0f;
            if (s == 1)
                for (; o < b; o++)
                    d[o] = src[o];
            else
                for (; o < b; o++)
                    d[o] = src[o * s];
            for (; o < ox + run; o++)
                d[o] = 0.0f;
        }
        jj += run;
        ox += run;
        if (ox == q->Wo) {
            ox = 0;
            if (++oy == q->Ho) {
                oy = 0;
                img++;
            }
        }
    }
}

/* msd_pack_b_fn for op(B) = the patch matrix (C*kh*kw, nb*Ho*Wo): conv2d's
 * forward, and its input gradient written as a convolution. */
static void pack_patches(void *ctx, float *bp, int p0, int kc, int j0, int nc, int nr)
{
    const patches *q = ctx;
    int L = q->Ho * q->Wo, taps = q->kh * q->kw;
    for (int jr = 0; jr < nc; jr += nr, bp += (size_t)kc * nr) {
        int n = nc - jr < nr ? nc - jr : nr, j = j0 + jr;
        int img = j / L, oy = j % L / q->Wo, ox = j % q->Wo;
        for (int k = 0; k < kc; k++) {
            int r = p0 + k, c = r / taps, t = r % taps;
            patch_row(bp + (size_t)k * nr, q, c, t / q->kw, t % q->kw, img, oy, ox, n);
            for (int jj = n; jj < nr; jj++)
                bp[(size_t)k * nr + jj] = 0.0f;
        }
    }
}

/* msd_pack_b_fn for op(B) = the patch matrix transposed (nb*Ho*Wo,
 * C*kh*kw): conv2d's weight gradient dy . patches^T. */
static void pack_patches_t(void *ctx, float *bp, int p0, int kc, int j0, int nc, int nr)
{
    const patches *q = ctx;
    int L = q->Ho * q->Wo, taps = q->kh * q->kw;
    float row[256];
    for (int jr = 0; jr < nc; jr += nr, bp += (size_t)kc * nr) {
        int n = nc - jr < nr ? nc - jr : nr;
        for (int jj = 0; jj < nr; jj++) {
            if (jj >= n) {
                for (int k = 0; k < kc; k++)
                    bp[(size_t)k * nr + jj] = 0.0f;
                continue;
            }
            int r = j0 + jr + jj, c = r / taps, t = r % taps;
            /* one patch row over the kc columns, in pieces of 256 */
            for (int k0 = 0; k0 < kc; k0 += 256) {
                int m = kc - k0 < 256 ? kc - k0 : 256, pix = p0 + k0;
                patch_row(row, q, c, t / q->kw, t % q->kw, pix / L, pix % L / q->Wo,
                          pix % q->Wo, m);
                for (int k = 0; k < m; k++)
                    bp[(size_t)(k0 + k) * nr + jj] = row[k];
            }
        }
    }
}

/* Images per group of a conv2d loop: about GROUP_COLS output columns, so
 * that small maps (8x8) still give GEMMs wide enough to be fast. */
#define GROUP_COLS 1024

static int group_images(int N, size_t L)
{
    size_t nb = L >= GROUP_COLS ? 1 : GROUP_COLS / L;
    return nb > (size_t)N ? N : (int)nb;
}

/* One conv2d GEMM pass per group: y (N, Cout, Ho, Wo) (=, or += with add)
 * conv of x (N, Cin, H, W) with w (Cout, Cin, kh, kw) plus b. Thread tid's
 * scratch: sc->data + per*tid, Cout x nb*L for the GEMM's channel-major
 * result (also dy's channel-major copy in the weight-gradient pass, whose
 * group g partial dw goes to sp->data + nw*g). failed is set when a GEMM
 * could not get its packing buffer. */
typedef struct conv2d_job {
    float *y;
    const float *x, *w, *b, *dy;
    const msd_storage *sc, *sp;
    size_t per, nw;
    int N, Cin, H, W, Cout, kh, kw, stride, pad, Ho, Wo, nbmax, add;
    atomic_int failed;
} conv2d_job;

static void conv2d_gemm_chunk(void *ctx, int g, int tid)
{
    conv2d_job *j = ctx;
    int n0 = g * j->nbmax, nb = j->N - n0 < j->nbmax ? j->N - n0 : j->nbmax, Cout = j->Cout;
    size_t L = (size_t)j->Ho * j->Wo, ncols = (size_t)nb * L;
    int K = j->Cin * j->kh * j->kw;
    patches q = { j->x + (size_t)n0 * j->Cin * j->H * j->W, j->Cin, j->H, j->W, j->kh, j->kw,
                  j->stride, j->pad, j->Ho, j->Wo };
    float *tmp = j->sc->data + j->per * (size_t)tid;
    /* tmp (Cout, nb*L) = w (Cout, K) patches (K, nb*L) */
    if (msd_sgemm_pack(0, Cout, (int)ncols, K, 1.0f, j->w, K, pack_patches, &q, 0.0f, tmp,
                       (int)ncols) != MSD_OK) {
        atomic_store(&j->failed, 1);
        return;
    }
    for (int n = 0; n < nb; n++)
        for (int c = 0; c < Cout; c++) {
            float *dst = j->y + ((size_t)(n0 + n) * Cout + c) * L;
            const float *src = tmp + (size_t)c * ncols + (size_t)n * L;
            float bc = j->b ? j->b[c] : 0.0f;
            if (j->add)
                for (size_t l = 0; l < L; l++)
                    dst[l] += src[l];
            else
                for (size_t l = 0; l < L; l++)
                    dst[l] = src[l] + bc;
        }
}

/* Runs conv2d_gemm_chunk over the batch; add = 1 adds into y (no bias). */
static int conv2d_gemm(const char *op, float *y, const float *x, const float *w, const float *b,
                       int N, int Cin, int H, int W, int Cout, int kh, int kw, int stride,
                       int pad, int add)
{
    int Ho = (H + 2 * pad - kh) / stride + 1, Wo = (W + 2 * pad - kw) / stride + 1;
    size_t L = (size_t)Ho * Wo;
    int nbmax = group_images(N, L), G = (N + nbmax - 1) / nbmax, nthr;
    size_t per = (size_t)Cout * nbmax * L;
    msd_storage *sc;
    int rc = scratch(op, per, G, &nthr, &sc);
    if (rc != MSD_OK)
        return rc;
    conv2d_job j = { .y = y, .x = x, .w = w, .b = b, .sc = sc, .per = per, .N = N, .Cin = Cin,
                     .H = H, .W = W, .Cout = Cout, .kh = kh, .kw = kw, .stride = stride,
                     .pad = pad, .Ho = Ho, .Wo = Wo, .nbmax = nbmax, .add = add };
    atomic_init(&j.failed, 0);
    msd_parallel_for(G, nthr, conv2d_gemm_chunk, &j);
    msd_storage_release(sc);
    if (atomic_load(&j.failed))
        return msd_error(MSD_ERR_MEM, "%s: out of memory for the GEMM's packing buffers", op);
    return MSD_OK;
}

int msd_conv2d_forward(float *y, const float *x, const float *w, const float *b, int N, int Cin,
                       int H, int W, int Cout, int kh, int kw, int stride, int pad)
{
    int Ho = (H + 2 * pad - kh) / stride + 1, Wo = (W + 2 * pad - kw) / stride + 1;
    if (N == 0 || Ho <= 0 || Wo <= 0)
        return MSD_OK;
    return conv2d_gemm("conv2d", y, x, w, b, N, Cin, H, W, Cout, kh, kw, stride, pad, 0);
}

/* Weight-gradient pass, group g: partial g (Cout, K) = dy (Cout, nb*L)
 * patches^T (nb*L, K), dy first copied channel-major into the scratch. */
static void conv2d_dw_chunk(void *ctx, int g, int tid)
{
    conv2d_job *j = ctx;
    int n0 = g * j->nbmax, nb = j->N - n0 < j->nbmax ? j->N - n0 : j->nbmax, Cout = j->Cout;
    size_t L = (size_t)j->Ho * j->Wo;
    int K = j->Cin * j->kh * j->kw, ncols = (int)((size_t)nb * L);
    patches q = { j->x + (size_t)n0 * j->Cin * j->H * j->W, j->Cin, j->H, j->W, j->kh, j->kw,
                  j->stride, j->pad, j->Ho, j->Wo };
    float *dyt = j->sc->data + j->per * (size_t)tid;
    to_channel_major(dyt, j->dy + (size_t)n0 * Cout * L, nb, Cout, L);
    if (msd_sgemm_pack(0, Cout, K, ncols, 1.0f, dyt, ncols, pack_patches_t, &q, 0.0f,
                       j->sp->data + j->nw * g, K) != MSD_OK)
        atomic_store(&j->failed, 1);
}

/* Input-gradient pass otherwise (stride > 1, kh != kw or pad >= kh): dcol (K, nb*L) =
 * w^T (K, Cout) dy (Cout, nb*L), scattered into dx by col2im. Scratch:
 * dyt (Cout x nb*L) then dcol (K x nb*L). */
static void conv2d_dx_col_chunk(void *ctx, int g, int tid)
{
    conv2d_job *j = ctx;
    int n0 = g * j->nbmax, nb = j->N - n0 < j->nbmax ? j->N - n0 : j->nbmax, Cout = j->Cout;
    size_t L = (size_t)j->Ho * j->Wo;
    int K = j->Cin * j->kh * j->kw, ncols = (int)((size_t)nb * L);
    float *dyt = j->sc->data + j->per * (size_t)tid, *col = dyt + (size_t)Cout * j->nbmax * L;
    to_channel_major(dyt, j->dy + (size_t)n0 * Cout * L, nb, Cout, L);
    msd_sgemm(1, 0, K, ncols, Cout, 1.0f, j->w, K, dyt, ncols, 0.0f, col, ncols);
    col2im_add(j->y + (size_t)n0 * j->Cin * j->H * j->W, col, nb, j->Cin, j->H, j->W, j->kh,
               j->kw, j->stride, j->pad, j->Ho, j->Wo);
}

int msd_conv2d_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                        const float *w, int N, int Cin, int H, int W, int Cout, int kh, int kw,
                        int stride, int pad)
{
    int Ho = (H + 2 * pad - kh) / stride + 1, Wo = (W + 2 * pad - kw) / stride + 1;
    size_t L = (size_t)Ho * Wo, K = (size_t)Cin * kh * kw;
    if (N == 0 || Ho <= 0 || Wo <= 0)
        return MSD_OK;
    if (db)
        bias_grad(db, dy, N, Cout, L);
    int rc = MSD_OK;
    if (dx && stride == 1 && kh == kw && pad < kh) {
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
        rc = conv2d_gemm("conv2d backward", dx, dy, wf->data, NULL, N, Cout, Ho, Wo, Cin, kh, kw,
                         1, kh - 1 - pad, 1);
        msd_storage_release(wf);
        if (rc != MSD_OK)
            return rc;
        dx = NULL;
    }
    if (!dx && !dw)
        return MSD_OK;
    int nbmax = group_images(N, L), G = (N + nbmax - 1) / nbmax, nthr;
    size_t per = (size_t)Cout * nbmax * L + (dx ? K * nbmax * L : 0), nw = (size_t)Cout * K;
    msd_storage *sc, *sp = NULL;
    rc = scratch("conv2d backward", per, G, &nthr, &sc);
    if (rc != MSD_OK)
        return rc;
    if (dw && !(sp = msd_storage_new(nw * G))) {
        msd_storage_release(sc);
        return msd_error(MSD_ERR_MEM, "conv2d backward: out of memory for %d partial weight "
                                      "gradients of %zu floats", G, nw);
    }
    conv2d_job j = { .y = dx, .x = x, .w = w, .dy = dy, .sc = sc, .sp = sp, .per = per,
                     .nw = nw, .N = N, .Cin = Cin, .H = H, .W = W, .Cout = Cout, .kh = kh,
                     .kw = kw, .stride = stride, .pad = pad, .Ho = Ho, .Wo = Wo,
                     .nbmax = nbmax };
    atomic_init(&j.failed, 0);
    if (dw) {
        msd_parallel_for(G, nthr, conv2d_dw_chunk, &j);
        if (!atomic_load(&j.failed))
            reduce_partials(dw, sp->data, G, nw);
    }
    if (dx)
        msd_parallel_for(G, nthr, conv2d_dx_col_chunk, &j);
    msd_storage_release(sp);
    msd_storage_release(sc);
    if (atomic_load(&j.failed))
        return msd_error(MSD_ERR_MEM, "conv2d backward: out of memory for the GEMM's packing "
                                      "buffers");
    return MSD_OK;
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
    to_channel_major(xt, j->x + (size_t)n0 * Cin * L, nb, Cin, L);
    msd_sgemm(1, 0, (int)K, ncols, Cin, 1.0f, w, (int)K,
                xt, ncols, 0.0f, col, ncols);
    for (int n = 0; n < nb; n++)
        for (int c = 0; c < Cout; c++) {
            float bc = j->b ? j->b[c] : 0.0f;
            float *dst = yg + ((size_t)n * Cout + c) * Lo;
            for (size_t l = 0; l < Lo; l++)
                dst[l] = bc;
        }
    col2im_add(yg, col, nb, Cout, Ho, Wo, j->kh, j->kw, j->stride, j->pad, H, W);
}

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
    int G = (N + nbmax - 1) / nbmax, nthr;
    size_t per = (K + Cin) * nbmax * L;
    msd_storage *sc;
    int rc = scratch("conv_transpose2d", per, G, &nthr, &sc);
    if (rc != MSD_OK)
        return rc;
    conv_job j = {.y = y, .x = x, .w = w, .b = b, .sc = sc, .per = per, .K = K, .N = N,
                  .Cin = Cin, .H = H, .W = W, .Cout = Cout, .kh = kh, .kw = kw,
                  .stride = stride, .pad = pad, .Ho = Ho, .Wo = Wo, .nbmax = nbmax};
    msd_parallel_for(G, nthr, conv_transpose2d_forward_chunk, &j);
    msd_storage_release(sc);
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
    if (sp) {
        /* partial g (Cin, K) = x (Cin, nb*L) dcol^T (nb*L, K) */
        to_channel_major(t, j->x + (size_t)n0 * Cin * L, nb, Cin, L);
        msd_sgemm(0, 1, Cin, (int)K, ncols, 1.0f, t,
                    ncols, dcol, ncols, 0.0f, sp->data + nw * g, (int)K);
    }
    if (j->dx) {
        /* dx (Cin, nb*L) = w (Cin, K) dcol (K, nb*L), added back in NCHW order */
        msd_sgemm(0, 0, Cin, ncols, (int)K, 1.0f, w,
                    (int)K, dcol, ncols, 0.0f, t, ncols);
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
    msd_storage *sc, *sp = NULL;
    int rc = scratch("conv_transpose2d backward", per, G, &nthr, &sc);
    if (rc != MSD_OK)
        return rc;
    if (dw && !(sp = msd_storage_new(nw * G))) {
        msd_storage_release(sc);
        return msd_error(MSD_ERR_MEM, "conv_transpose2d backward: out of memory for %d partial "
                                      "weight gradients of %zu floats", G, nw);
    }
    conv_job j = {.dx = dx, .x = x, .w = w, .dy = dy, .sc = sc, .sp = sp, .per = per, .nw = nw,
                  .K = K, .N = N, .Cin = Cin, .H = H, .W = W, .Cout = Cout, .kh = kh, .kw = kw,
                  .stride = stride, .pad = pad, .Ho = Ho, .Wo = Wo, .nbmax = nbmax};
    msd_parallel_for(G, nthr, conv_transpose2d_backward_chunk, &j);
    if (dw)
        reduce_partials(dw, sp->data, G, nw);
    msd_storage_release(sp);
    msd_storage_release(sc);
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
    else
        rc = msd_conv2d_forward(msd_tensor_data(y), msd_tensor_data(x), msd_tensor_data(w), pb,
                                x->shape[0], x->shape[1], x->shape[2], x->shape[3], os[1],
                                w->shape[2], w->shape[3], stride, pad);
    msd_tensor *in[3] = { x, w, b };
    msd_node *node = NULL;
    if (rc == MSD_OK)
        rc = msd_autograd_record(y, transposed ? MSD_OP_CONV_TRANSPOSE2D : MSD_OP_CONV2D, 3, in,
                                 &node);
    if (rc != MSD_OK) {
        msd_tensor_release(y);
        return rc;
    }
    if (node) {
        node->iarg[0] = stride;
        node->iarg[1] = pad;
    }
    *out = y;
    return MSD_OK;
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

static float *data_or_null(msd_tensor *t)
{
    return t ? msd_tensor_data(t) : NULL;
}

int msd_grad_conv2d(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx)
{
    const msd_tensor *x = n->in[0], *w = n->in[1];
    return msd_conv2d_backward(data_or_null(dx[0]), data_or_null(dx[1]), data_or_null(dx[2]),
                               msd_tensor_data(dy), msd_tensor_data(x), msd_tensor_data(w),
                               x->shape[0], x->shape[1], x->shape[2], x->shape[3], w->shape[0],
                               w->shape[2], w->shape[3], n->iarg[0], n->iarg[1]);
}

int msd_grad_conv_transpose2d(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx)
{
    const msd_tensor *x = n->in[0], *w = n->in[1];
    return msd_conv_transpose2d_backward(
        data_or_null(dx[0]), data_or_null(dx[1]), data_or_null(dx[2]), msd_tensor_data(dy),
        msd_tensor_data(x), msd_tensor_data(w), x->shape[0], x->shape[1], x->shape[2],
        x->shape[3], w->shape[1], w->shape[2], w->shape[3], n->iarg[0], n->iarg[1]);
}
