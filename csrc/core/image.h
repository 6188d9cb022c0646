/* minisd: image and dataset helpers (ops_image.c).
 *
 * Layout changes, gathers, compositing and grids for the data pipeline and
 * for saving pictures. None of these record autograd history: they prepare
 * inputs and present outputs. Each tensor-level function takes its inputs
 * first and an output slot `out` last; on success *out receives a new
 * contiguous tensor (one reference for the caller) and MSD_OK is returned;
 * on error *out is untouched and a negative code is returned with a message
 * that names the function and every shape. Indices and dims are 0-based. */
#ifndef MSD_IMAGE_H
#define MSD_IMAGE_H

#include "tensor.h"

/* Channels-last to channels-first with an affine map:
 * x (N,H,W,C) -> out (N,C,H,W), or x (H,W,C) -> out (C,H,W), where
 * out = x * scale + shift (scale 2/255, shift -1 maps bytes to [-1,1]).
 * MSD_ERR_SHAPE unless x has 3 or 4 dims. */
int msd_image_hwc_to_chw(const msd_tensor *x, float scale, float shift, msd_tensor **out);

/* out = clamp(x * scale + shift, lo, hi), any shape (NaN becomes lo). */
int msd_image_affine_clamp(const msd_tensor *x, float scale, float shift, float lo, float hi,
                           msd_tensor **out);

/* Gather along dim 0 with an optional horizontal flip per row:
 * x (M, ...) with at least 2 dims -> out (n, ...), out[i] = x[idx[i]],
 * reversed along the last dim when flip != NULL and flip[i] != 0.
 * MSD_ERR_ARG when an index is outside 0..M-1. */
int msd_image_gather(const msd_tensor *x, int n, const int *idx, const unsigned char *flip,
                     msd_tensor **out);

/* x reversed along dim (any shape with dim < ndim). */
int msd_image_flip(const msd_tensor *x, int dim, msd_tensor **out);

/* Alpha compositing over an opaque background, straight (not
 * premultiplied) alpha, values in [0,1]: x (4,H,W) or (N,4,H,W) ->
 * out (3,H,W) or (N,3,H,W), out_c = x_c * a + bg[c] * (1 - a). */
int msd_image_composite(const msd_tensor *x, const float bg[3], msd_tensor **out);

/* Cuts square tiles out of a sheet: sheet (C,H,W) -> out (n,C,tile,tile).
 * Tile k of the sheet (0-based, row-major, `columns` per row) sits at
 * row k / columns, column k % columns; out[i] is tile idx[i] (tile i when
 * idx is NULL). MSD_ERR_SHAPE when the sheet is not a whole number of tiles
 * wide and high or narrower than `columns` tiles; MSD_ERR_ARG when an index
 * is past the sheet's last tile. */
int msd_image_tiles(const msd_tensor *sheet, int tile, int columns, int n, const int *idx,
                    msd_tensor **out);

/* A grid of pictures as torchvision.utils.make_grid: x (N,C,H,W) ->
 * out (C, rows*(H+p)+p, cols*(W+p)+p) with cols = min(nrow, N),
 * rows = ceil(N / cols), p = padding; picture k goes to row k / cols,
 * column k % cols, at (p + row*(H+p), p + col*(W+p)); the rest is
 * pad_value. */
int msd_image_grid(const msd_tensor *x, int nrow, int padding, float pad_value,
                   msd_tensor **out);

/* Nearest-neighbour upscaling of the last two dims by an integer factor:
 * x (..., H, W) with at least 2 dims -> out (..., H*factor, W*factor). */
int msd_image_upscale(const msd_tensor *x, int factor, msd_tensor **out);

/* RGBA bytes, row-major, 4 per pixel: x (C,H,W) with values in [0,1]
 * (clamped, rounded to nearest) and C = 1 (grey), 3 (RGB, alpha 255) or
 * 4 (RGBA) -> out[H*W*4], which the caller provides. */
int msd_image_rgba_bytes(unsigned char *out, const msd_tensor *x);

#endif
