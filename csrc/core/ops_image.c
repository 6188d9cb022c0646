/* Image and dataset helpers: layout changes, gathers with flips, alpha
 * compositing, tiles, grids, upscaling, RGBA bytes. No autograd: these
 * prepare inputs and present outputs.
 *
 * image.h gives each function's contract; the notes here are for whoever edits a loop.
 * Inputs are contiguous row-major; every output is written whole (=, never +=), a new
 * tensor except rgba_bytes' caller buffer; arguments are checked before anything is
 * allocated. Indices are 0-based in C (some messages print them 1-based, as Lua sees them). */
#include <math.h>
#include <string.h>

#include "image.h"

/* A new tensor, or MSD_ERR_MEM with the tensor core's message. */
static int new_out(int ndim, const int *shape, msd_tensor **t)
{
    *t = msd_tensor_empty(ndim, shape);
    return *t ? MSD_OK : MSD_ERR_MEM;
}

/* x (N, H, W, C) or (H, W, C) -> out (N, C, H, W) or (C, H, W), out = x * scale + shift.
 * The loop reads x in order and scatters to C planes of H*W floats. */
int msd_image_hwc_to_chw(const msd_tensor *x, float scale, float shift, msd_tensor **out)
{
    char b[64];
    if (x->ndim != 3 && x->ndim != 4)
        return msd_error(MSD_ERR_SHAPE, "hwc_to_chw: x %s: expected (N,H,W,C) or (H,W,C)",
                         msd_tensor_shape_str(b, sizeof b, x));
    int batched = x->ndim == 4;
    int N = batched ? x->shape[0] : 1;
    int H = x->shape[batched], W = x->shape[batched + 1], C = x->shape[batched + 2];
    int s[4] = { N, C, H, W };
    msd_tensor *o;
    int rc = new_out(x->ndim, batched ? s : s + 1, &o);
    if (rc != MSD_OK)
        return rc;
    const float *px = msd_tensor_data(x);
    float *po = msd_tensor_data(o);
    size_t hw = (size_t)H * W;
    for (int n = 0; n < N; n++) {
        const float *src = px + (size_t)n * hw * C;
        float *dst = po + (size_t)n * hw * C;
        for (size_t p = 0; p < hw; p++)
            for (int c = 0; c < C; c++)
                dst[(size_t)c * hw + p] = src[p * C + c] * scale + shift;
    }
    *out = o;
    return MSD_OK;
}

/* out (x's shape) = clamp(x * scale + shift, lo, hi). !(lo <= hi) also refuses a NaN
 * bound. */
int msd_image_affine_clamp(const msd_tensor *x, float scale, float shift, float lo, float hi,
                           msd_tensor **out)
{
    if (!(lo <= hi))
        return msd_error(MSD_ERR_ARG, "affine_clamp: lo %g > hi %g", (double)lo, (double)hi);
    msd_tensor *o;
    int rc = new_out(x->ndim, x->shape, &o);
    if (rc != MSD_OK)
        return rc;
    const float *px = msd_tensor_data(x);
    float *po = msd_tensor_data(o);
    size_t n = msd_tensor_numel(x);
    for (size_t i = 0; i < n; i++) {
        float v = px[i] * scale + shift;
        /* written so that NaN fails the first test and lands on lo */
        po[i] = v >= lo ? (v <= hi ? v : hi) : lo;
    }
    *out = o;
    return MSD_OK;
}

/* Copies `inner` floats from src to dst, reversed in runs of `w` when
 * flip is set (the last dim of an image row). */
static void copy_row(float *dst, const float *src, size_t inner, int w, int flip)
{
    if (!flip) {
        memcpy(dst, src, inner * sizeof(float));
        return;
    }
    for (size_t r = 0; r < inner; r += (size_t)w)
        for (int k = 0; k < w; k++)
            dst[r + k] = src[r + w - 1 - k];
}

/* x (M, ...) -> out (n, ...), out[i] = x[idx[i]], reversed along the last dim (width)
 * when flip[i] (flip may be NULL): the batch maker's gather plus horizontal-flip
 * augmentation in one copy. inner = the floats of one item. */
int msd_image_gather(const msd_tensor *x, int n, const int *idx, const unsigned char *flip,
                     msd_tensor **out)
{
    char b[64];
    if (x->ndim < 2)
        return msd_error(MSD_ERR_SHAPE, "gather: x %s: expected at least 2 dims",
                         msd_tensor_shape_str(b, sizeof b, x));
    if (n < 0)
        return msd_error(MSD_ERR_ARG, "gather: negative count %d", n);
    for (int i = 0; i < n; i++)
        if (idx[i] < 0 || idx[i] >= x->shape[0])
            return msd_error(MSD_ERR_ARG, "gather: index %d (entry %d) out of range 1..%d for %s",
                             idx[i] + 1, i + 1, x->shape[0],
                             msd_tensor_shape_str(b, sizeof b, x));
    int s[MSD_MAX_DIMS];
    memcpy(s, x->shape, sizeof s);
    s[0] = n;
    msd_tensor *o;
    int rc = new_out(x->ndim, s, &o);
    if (rc != MSD_OK)
        return rc;
    /* M = 0 only with n = 0 (no index can pass the check): avoid dividing by it */
    size_t inner = x->shape[0] ? msd_tensor_numel(x) / (size_t)x->shape[0] : 0;
    int w = x->shape[x->ndim - 1];
    const float *px = msd_tensor_data(x);
    float *po = msd_tensor_data(o);
    for (int i = 0; i < n; i++)
        copy_row(po + (size_t)i * inner, px + (size_t)idx[i] * inner, inner, w,
                 flip && flip[i] && w > 0);
    *out = o;
    return MSD_OK;
}

/* out (x's shape) = x reversed along dim. MSD_ERR_ARG for a dim out of range. */
int msd_image_flip(const msd_tensor *x, int dim, msd_tensor **out)
{
    char b[64];
    if (dim < 0 || dim >= x->ndim)
        return msd_error(MSD_ERR_ARG, "flip: dim %d out of range 1..%d for %s", dim + 1, x->ndim,
                         msd_tensor_shape_str(b, sizeof b, x));
    msd_tensor *o;
    int rc = new_out(x->ndim, x->shape, &o);
    if (rc != MSD_OK)
        return rc;
    /* view x as (outer, len, inner) and reverse the middle */
    size_t outer = 1, inner = 1;
    for (int d = 0; d < dim; d++)
        outer *= (size_t)x->shape[d];
    for (int d = dim + 1; d < x->ndim; d++)
        inner *= (size_t)x->shape[d];
    size_t len = (size_t)x->shape[dim];
    const float *px = msd_tensor_data(x);
    float *po = msd_tensor_data(o);
    for (size_t i = 0; i < outer; i++)
        for (size_t k = 0; k < len; k++)
            memcpy(po + (i * len + k) * inner, px + (i * len + len - 1 - k) * inner,
                   inner * sizeof(float));
    *out = o;
    return MSD_OK;
}

/* x (4, H, W) or (N, 4, H, W), straight alpha in plane 3 -> out (3, H, W) or (N, 3, H, W),
 * out_c = x_c a + bg[c] (1 - a): the "over" operator onto an opaque background. cdim is the
 * channel dim (0 or 1). Values are not clamped. */
int msd_image_composite(const msd_tensor *x, const float bg[3], msd_tensor **out)
{
    char b[64];
    int cdim = x->ndim - 3;
    if ((x->ndim != 3 && x->ndim != 4) || x->shape[cdim] != 4)
        return msd_error(MSD_ERR_SHAPE, "composite: x %s: expected (4,H,W) or (N,4,H,W)",
                         msd_tensor_shape_str(b, sizeof b, x));
    int s[MSD_MAX_DIMS];
    memcpy(s, x->shape, sizeof s);
    s[cdim] = 3;
    msd_tensor *o;
    int rc = new_out(x->ndim, s, &o);
    if (rc != MSD_OK)
        return rc;
    int N = cdim ? x->shape[0] : 1;
    size_t hw = (size_t)x->shape[cdim + 1] * x->shape[cdim + 2];
    const float *px = msd_tensor_data(x);
    float *po = msd_tensor_data(o);
    for (int n = 0; n < N; n++) {
        const float *src = px + (size_t)n * 4 * hw, *alpha = src + 3 * hw;
        float *dst = po + (size_t)n * 3 * hw;
        for (int c = 0; c < 3; c++)
            for (size_t p = 0; p < hw; p++)
                dst[c * hw + p] = src[c * hw + p] * alpha[p] + bg[c] * (1.0f - alpha[p]);
    }
    *out = o;
    return MSD_OK;
}

/* sheet (C, H, W) -> out (n, C, tile, tile), out[i] = tile idx[i] (i when idx is NULL),
 * tile k at row k / columns, column k % columns. `columns` may be fewer than the sheet's
 * width in tiles (a sheet with unused space on the right). Every index is checked against
 * (H / tile) * columns, in long, before the copy. */
int msd_image_tiles(const msd_tensor *sheet, int tile, int columns, int n, const int *idx,
                    msd_tensor **out)
{
    char b[64];
    msd_tensor_shape_str(b, sizeof b, sheet);
    if (sheet->ndim != 3)
        return msd_error(MSD_ERR_SHAPE, "tiles: sheet %s: expected (C,H,W)", b);
    if (tile < 1 || columns < 1 || n < 0)
        return msd_error(MSD_ERR_ARG, "tiles: sheet %s: tile %d, columns %d, count %d: "
                         "tile and columns must be >= 1, count >= 0", b, tile, columns, n);
    int C = sheet->shape[0], H = sheet->shape[1], W = sheet->shape[2];
    if (H % tile || W % tile)
        return msd_error(MSD_ERR_SHAPE, "tiles: sheet %s is not a whole number of %dx%d tiles",
                         b, tile, tile);
    if (W / tile < columns)
        return msd_error(MSD_ERR_SHAPE, "tiles: sheet %s is %d tiles wide, fewer than %d columns",
                         b, W / tile, columns);
    long ntiles = (long)(H / tile) * columns;
    for (int i = 0; i < n; i++) {
        long k = idx ? idx[i] : i;
        if (k < 0 || k >= ntiles)
            return msd_error(MSD_ERR_ARG, "tiles: tile %ld (entry %d) out of range 0..%ld of "
                             "sheet %s (%d columns of %dx%d tiles)", k, i + 1, ntiles - 1, b,
                             columns, tile, tile);
    }
    int s[4] = { n, C, tile, tile };
    msd_tensor *o;
    int rc = new_out(4, s, &o);
    if (rc != MSD_OK)
        return rc;
    const float *px = msd_tensor_data(sheet);
    float *po = msd_tensor_data(o);
    for (int i = 0; i < n; i++) {
        int k = idx ? idx[i] : i;
        int y0 = (k / columns) * tile, x0 = (k % columns) * tile;
        for (int c = 0; c < C; c++)
            for (int y = 0; y < tile; y++)
                memcpy(po + (((size_t)i * C + c) * tile + y) * tile,
                       px + ((size_t)c * H + y0 + y) * W + x0, (size_t)tile * sizeof(float));
    }
    *out = o;
    return MSD_OK;
}

/* x (N, C, H, W) -> out (C, gh, gw) as torchvision's make_grid: cols = min(nrow, N) (nrow
 * is the number of pictures per row, as torchvision names it), rows = ceil(N / cols),
 * gh = rows (H + p) + p, gw = cols (W + p) + p with p = padding; out starts as pad_value and
 * picture k is copied row by row to (p + (k / cols)(H + p), p + (k % cols)(W + p)). Sides
 * are capped at 65535 (GIF's 16-bit limit), checked in long. */
int msd_image_grid(const msd_tensor *x, int nrow, int padding, float pad_value,
                   msd_tensor **out)
{
    char b[64];
    if (x->ndim != 4 || x->shape[0] < 1)
        return msd_error(MSD_ERR_SHAPE, "grid: images %s: expected (N,C,H,W) with N >= 1",
                         msd_tensor_shape_str(b, sizeof b, x));
    if (nrow < 1 || padding < 0)
        return msd_error(MSD_ERR_ARG, "grid: nrow %d must be >= 1 and padding %d >= 0", nrow,
                         padding);
    int N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    int cols = nrow < N ? nrow : N, rows = (N + cols - 1) / cols;
    long gh = (long)rows * (H + padding) + padding, gw = (long)cols * (W + padding) + padding;
    if (gh > 65535 || gw > 65535)
        return msd_error(MSD_ERR_ARG, "grid: images %s, nrow %d, padding %d: grid %ldx%ld is "
                         "larger than 65535 pixels", msd_tensor_shape_str(b, sizeof b, x), nrow,
                         padding, gh, gw);
    int s[3] = { C, (int)gh, (int)gw };
    msd_tensor *o = msd_tensor_full(3, s, pad_value);
    if (!o)
        return MSD_ERR_MEM;
    const float *px = msd_tensor_data(x);
    float *po = msd_tensor_data(o);
    for (int k = 0; k < N; k++) {
        size_t y0 = (size_t)padding + (size_t)(k / cols) * (H + padding);
        size_t x0 = (size_t)padding + (size_t)(k % cols) * (W + padding);
        for (int c = 0; c < C; c++)
            for (int y = 0; y < H; y++)
                memcpy(po + ((size_t)c * gh + y0 + y) * gw + x0,
                       px + (((size_t)k * C + c) * H + y) * W, (size_t)W * sizeof(float));
    }
    *out = o;
    return MSD_OK;
}

/* x (..., H, W) -> out (..., H f, W f), nearest neighbour with f = factor: each pixel
 * becomes an f x f block. Each output row is built once and memcpy'd f - 1 times. Sides
 * capped at 65535 as for grids. */
int msd_image_upscale(const msd_tensor *x, int factor, msd_tensor **out)
{
    char b[64];
    if (x->ndim < 2)
        return msd_error(MSD_ERR_SHAPE, "upscale: x %s: expected at least 2 dims",
                         msd_tensor_shape_str(b, sizeof b, x));
    int H = x->shape[x->ndim - 2], W = x->shape[x->ndim - 1];
    if (factor < 1 || (long)H * factor > 65535 || (long)W * factor > 65535)
        return msd_error(MSD_ERR_ARG, "upscale: x %s: factor %d must be >= 1 and keep sizes "
                         "<= 65535", msd_tensor_shape_str(b, sizeof b, x), factor);
    int s[MSD_MAX_DIMS];
    memcpy(s, x->shape, sizeof s);
    s[x->ndim - 2] = H * factor;
    s[x->ndim - 1] = W * factor;
    msd_tensor *o;
    int rc = new_out(x->ndim, s, &o);
    if (rc != MSD_OK)
        return rc;
    /* an empty side (H or W 0) leaves no planes to fill: no division by 0 */
    size_t hw = (size_t)H * W, planes = hw ? msd_tensor_numel(x) / hw : 0;
    size_t ow = (size_t)W * factor;
    const float *px = msd_tensor_data(x);
    float *po = msd_tensor_data(o);
    for (size_t p = 0; p < planes; p++) {
        for (int y = 0; y < H; y++) {
            const float *src = px + (p * H + y) * W;
            float *dst = po + (p * H + y) * factor * ow;
            for (int xx = 0; xx < W; xx++)
                for (int f = 0; f < factor; f++)
                    dst[(size_t)xx * factor + f] = src[xx];
            /* the other factor-1 output rows repeat the first */
            for (int f = 1; f < factor; f++)
                memcpy(dst + f * ow, dst, ow * sizeof(float));
        }
    }
    *out = o;
    return MSD_OK;
}

/* [0, 1] -> 0..255: clamped first (written so that NaN fails the first test and gives 0),
 * then rounded to nearest by lrintf (ties to even in the default rounding mode). */
static unsigned char to_byte(float v)
{
    v = v >= 0.0f ? (v <= 1.0f ? v : 1.0f) : 0.0f; /* NaN -> 0 */
    return (unsigned char)lrintf(v * 255.0f);
}

/* x (C, H, W) -> out (H, W, 4) bytes in the caller's buffer: C = 1 copies the grey plane
 * into R, G and B; C = 3 sets alpha to 255; C = 4 converts alpha like the colours.
 * MSD_ERR_SHAPE for any other shape (nothing written then). */
int msd_image_rgba_bytes(unsigned char *out, const msd_tensor *x)
{
    char b[64];
    int C = x->ndim == 3 ? x->shape[0] : 0;
    if (C != 1 && C != 3 && C != 4)
        return msd_error(MSD_ERR_SHAPE, "rgba_bytes: image %s: expected (C,H,W) with C = 1, 3 "
                         "or 4", msd_tensor_shape_str(b, sizeof b, x));
    size_t hw = (size_t)x->shape[1] * x->shape[2];
    const float *px = msd_tensor_data(x);
    for (size_t p = 0; p < hw; p++) {
        for (int c = 0; c < 3; c++)
            out[p * 4 + c] = to_byte(px[(C == 1 ? 0 : c) * hw + p]);
        out[p * 4 + 3] = C == 4 ? to_byte(px[3 * hw + p]) : 255;
    }
    return MSD_OK;
}
