/* minisd: animated GIF writer (io_gif.c), for denoising animations.
 *
 * GIF89a with one global colour table of at most 256 entries, a NETSCAPE2.0
 * loop extension and one graphic control extension (delay, transparency,
 * disposal) plus one full-canvas image per frame, LZW-compressed with
 * variable-length codes (minimum code size + 1 up to 12 bits) and a clear
 * code each time the 4096-entry table fills.
 *
 * Palette: the distinct opaque RGB colours of all frames together. When
 * they fit (at most 256, or 255 when some pixel is transparent) they are
 * used exactly, in order of first appearance (frame by frame, row-major).
 * Otherwise they are quantised by median cut: starting from one box
 * holding every distinct colour (weighted by its pixel count), the box
 * with the widest channel range is split at the weighted median of that
 * channel until there are 256 (255) boxes or none can be split; each box's
 * colour is its weighted mean, and every pixel gets the nearest palette
 * colour (squared RGB distance, lowest index on ties).
 * Transparency: a pixel with alpha byte < 128 (alpha < 0.5) is
 * transparent; when any pixel is, the index after the colours is the
 * transparent index (its table entry is black) and every frame uses
 * disposal 2 (restore to background) so transparent pixels do not show the
 * previous frame; otherwise disposal 1 (leave in place). */
#ifndef MSD_GIF_H
#define MSD_GIF_H

#include <stddef.h>

#include "tensor.h"

typedef struct msd_gif_options {
    int scale;      /* nearest-neighbour upscaling factor, >= 1 */
    int delay;      /* centiseconds per frame, 0..65535 */
    int last_delay; /* centiseconds the last frame is held, 0..65535 */
    int loop;       /* NETSCAPE2.0 loop count, 0 = forever, 0..65535 */
} msd_gif_options;

/* The defaults: scale 1, delay 10, last_delay 100, loop 0. */
msd_gif_options msd_gif_defaults(void);

/* Encodes n >= 1 frames, each width*height RGBA bytes (row-major, 4 per
 * pixel), into a new malloc'd buffer *out of *size bytes (free() it).
 * The canvas is (width*scale) x (height*scale), at most 65535 each way.
 * MSD_ERR_ARG for bad sizes or options, MSD_ERR_MEM. */
int msd_gif_encode(unsigned char **out, size_t *size, const unsigned char *const *rgba, int n,
                   int width, int height, const msd_gif_options *opt);

/* Saves n >= 1 frames (C,H,W) with values in [0,1] (clamped) and C = 1,
 * 3 or 4, all of the same H and W, as an animated GIF (opt NULL: the
 * defaults). Atomic (msd_file_write_atomic). Errors name the file:
 * MSD_ERR_SHAPE for a bad or mismatched frame (naming it and its shape),
 * MSD_ERR_ARG for bad options, MSD_ERR_IO when it cannot be written. */
int msd_gif_save(const char *path, const msd_tensor *const *frames, int n,
                 const msd_gif_options *opt);

#endif
