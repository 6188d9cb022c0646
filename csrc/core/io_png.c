/* minisd: PNG files through libpng's simplified API (png_image).
 *
 * libpng does the decoding, the CRC checks (every chunk's CRC-32 over its type and data),
 * the unfiltering and the conversions; this file only guards libpng against hostile
 * sizes, then converts between its interleaved 8-bit pixels, (H, W, C) bytes, and minisd's
 * planar (C, H, W) floats in [0, 1]. 8-bit formats of the simplified API are sRGB with
 * straight (not premultiplied) alpha, in both directions. */
#include <math.h>
#include <png.h>
#include <stdlib.h>
#include <string.h>

#include "io.h"

/* Deflate cannot compress better than about 1032:1, so a file of n bytes
 * holds at most about 1032 n bytes of pixels; a header that claims more is
 * lying and is rejected before any allocation. */
#define PNG_MAX_RATIO 1100u

/* The largest picture read: a sprite sheet of 256 x 256 sprites of 16 x 16 is 4096 x 4096. */
#define PNG_MAX_SIDE 8192u
#define PNG_MAX_PIXELS (4096u * 4096u)

/* PNG stores every integer big-endian (network order). */
static unsigned long be32(const unsigned char *p)
{
    return (unsigned long)p[0] << 24 | (unsigned long)p[1] << 16 | (unsigned long)p[2] << 8 | p[3];
}

/* Walks the chunks before libpng sees the file: libpng reserves what a chunk declares, so
 * a chunk whose length runs past the end of the file is refused here (a 43-byte file could
 * otherwise cost gigabytes), and so is a picture larger than a sprite library needs. */
/* PNG layout (PNG spec, sec. 5): the 8-byte signature, then chunks of length (4 bytes, the
 * data only), type (4 letters), data, CRC (4); IHDR must come first and starts with width
 * and height (4 bytes each), and IEND ends the stream. The walk stops at IEND (what
 * follows is not examined) or at the end of the file. MSD_ERR_FORMAT naming the file and
 * the chunk's byte offset. */
static int png_precheck(const unsigned char *file, size_t size, const char *path)
{
    static const unsigned char sig[8] = { 0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n' };
    if (size < 8 || memcmp(file, sig, 8) != 0)
        return msd_error(MSD_ERR_FORMAT, "load_png: '%s': not a PNG file (bad signature)", path);
    size_t at = 8;
    int first = 1;
    while (at < size) {
        if (size - at < 8)
            return msd_error(MSD_ERR_FORMAT, "load_png: '%s': truncated chunk at byte %zu", path,
                             at);
        unsigned long len = be32(file + at);
        /* the type for messages and comparisons; a non-letter (never valid in a chunk type)
         * shows as '?' so a corrupt file cannot put control bytes in the message */
        char type[5] = { 0 };
        for (int i = 0; i < 4; i++) {
            unsigned char c = file[at + 4 + (size_t)i];
            type[i] = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ? (char)c : '?';
        }
        if (size - at < 12 || len > size - at - 12) /* data and CRC must fit */
            return msd_error(MSD_ERR_FORMAT, "load_png: '%s': chunk '%s' at byte %zu declares %lu "
                             "bytes, past the end of the %zu-byte file", path, type, at, len,
                             size);
        if (first) {
            if (strcmp(type, "IHDR") != 0 || len < 8)
                return msd_error(MSD_ERR_FORMAT, "load_png: '%s': the first chunk is not IHDR",
                                 path);
            unsigned long w = be32(file + at + 8), h = be32(file + at + 12);
            if (w == 0 || h == 0 || w > PNG_MAX_SIDE || h > PNG_MAX_SIDE ||
                (unsigned long long)w * h > PNG_MAX_PIXELS)
                return msd_error(MSD_ERR_FORMAT, "load_png: '%s': %lux%lu pixels; minisd reads "
                                 "pictures of at most %u pixels a side and %u pixels in all",
                                 path, w, h, PNG_MAX_SIDE, PNG_MAX_PIXELS);
            first = 0;
        }
        at += 12 + (size_t)len;
        if (strcmp(type, "IEND") == 0)
            break;
    }
    return MSD_OK;
}

/* Decodes a PNG held in memory; path names it in messages.
 * file: size bytes, the caller's. *out: a new (C, H, W) tensor, values byte / 255, C chosen
 * from the file's format as io.h says. MSD_ERR_FORMAT with libpng's message for a corrupt
 * file, MSD_ERR_MEM. libpng's state is released on every path (png_image_finish_read
 * releases it itself). */
static int png_decode(const unsigned char *file, size_t size, const char *path, msd_tensor **out)
{
    int rc = png_precheck(file, size, path);
    if (rc != MSD_OK)
        return rc;
    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_memory(&img, file, size)) {
        rc = msd_error(MSD_ERR_FORMAT, "load_png: '%s': %s", path, img.message);
        png_image_free(&img);
        return rc;
    }
    /* the output format asked of libpng: keep alpha when the file has any (a tRNS chunk
     * counts), colour when it has colour, else grey; 8 bits per channel */
    int c;
    if (img.format & PNG_FORMAT_FLAG_ALPHA) {
        c = 4;
        img.format = PNG_FORMAT_RGBA;
    } else if (img.format & PNG_FORMAT_FLAG_COLOR) {
        c = 3;
        img.format = PNG_FORMAT_RGB;
    } else {
        c = 1;
        img.format = PNG_FORMAT_GRAY;
    }
    /* a second guard on libpng's own reading of the header (png_precheck already bounded
     * the sides): the pixels must fit the compression ratio, and each side an int */
    unsigned long long w = img.width, h = img.height;
    unsigned long long raw = w * h * (unsigned long long)c;
    if (raw > (unsigned long long)size * PNG_MAX_RATIO + (1u << 20) || h > 2147483647ull ||
        w > 2147483647ull) {
        rc = msd_error(MSD_ERR_FORMAT,
                       "load_png: '%s': header claims %llux%llu pixels, more than a %zu-byte "
                       "file can hold",
                       path, w, h, size);
        png_image_free(&img);
        return rc;
    }
    int shape[3] = { c, (int)h, (int)w };
    rc = msd_shape_check("load_png", 3, shape);
    unsigned char *pix = rc == MSD_OK ? malloc(raw ? raw : 1) : NULL;
    if (rc == MSD_OK && !pix)
        rc = msd_error(MSD_ERR_MEM, "load_png: '%s': out of memory for %llu bytes", path, raw);
    if (rc != MSD_OK) {
        png_image_free(&img);
        return rc;
    }
    /* background NULL: alpha is never removed here; row stride 0: packed rows of w * c
     * bytes, top row first */
    if (!png_image_finish_read(&img, NULL, pix, 0, NULL)) {
        rc = msd_error(MSD_ERR_FORMAT, "load_png: '%s': %s", path, img.message);
        png_image_free(&img);
        free(pix);
        return rc;
    }
    msd_tensor *t = msd_tensor_empty(3, shape);
    if (!t) {
        free(pix);
        return MSD_ERR_MEM;
    }
    /* interleaved HWC bytes -> planar CHW floats */
    float *d = msd_tensor_data(t);
    size_t hw = (size_t)w * (size_t)h;
    for (size_t i = 0; i < hw; i++)
        for (int k = 0; k < c; k++)
            d[(size_t)k * hw + i] = (float)pix[i * (size_t)c + (size_t)k] / 255.0f;
    free(pix);
    *out = t;
    return MSD_OK;
}

int msd_png_load(const char *path, msd_tensor **out)
{
    *out = NULL;
    unsigned char *file;
    size_t size;
    int rc = msd_file_read_all("load_png", path, &file, &size);
    if (rc != MSD_OK)
        return rc;
    rc = png_decode(file, size, path, out);
    free(file);
    return rc;
}

int msd_png_load_mem(const char *name, const unsigned char *data, size_t size, msd_tensor **out)
{
    *out = NULL;
    return png_decode(data, size, name ? name : "(PNG bytes)", out);
}

struct png_job {
    png_image *img;
    const unsigned char *pix;
    const char *path;
};

/* Encodes job->pix (H, W, C bytes, packed rows) into f. png_image_write_to_stdio releases
 * libpng's state itself on return (pngwrite.c), so the png_image_free after a failure is a
 * harmless repeat. MSD_ERR_IO with libpng's message. */
static int write_png(FILE *f, void *ctx)
{
    struct png_job *job = ctx;
    /* convert_to_8bit 0 (the data is already 8-bit), row stride 0 (packed), no colormap */
    if (!png_image_write_to_stdio(job->img, f, 0, job->pix, 0, NULL)) {
        int rc = msd_error(MSD_ERR_IO, "save_png: '%s': %s", job->path, job->img->message);
        png_image_free(job->img);
        return rc;
    }
    return MSD_OK;
}

/* t (C, H, W), C = 1, 3 or 4 -> an 8-bit grey, RGB or RGBA PNG: the planes are
 * interleaved into (H, W, C) bytes, round(clamp(v, 0, 1) * 255) (lroundf: halves away from
 * zero). MSD_ERR_SHAPE for other shapes, MSD_ERR_MEM, MSD_ERR_IO from the write. */
int msd_png_save(const char *path, const msd_tensor *t)
{
    char sb[64];
    if (t->ndim != 3 || (t->shape[0] != 1 && t->shape[0] != 3 && t->shape[0] != 4) ||
        t->shape[1] < 1 || t->shape[2] < 1)
        return msd_error(MSD_ERR_SHAPE,
                         "save_png: '%s': tensor %s: expected (C,H,W) with C = 1, 3 or 4 and "
                         "H, W >= 1",
                         path, msd_tensor_shape_str(sb, sizeof sb, t));
    int c = t->shape[0], h = t->shape[1], w = t->shape[2];
    size_t hw = (size_t)h * (size_t)w;
    unsigned char *pix = malloc(hw * (size_t)c);
    if (!pix)
        return msd_error(MSD_ERR_MEM, "save_png: '%s': out of memory", path);
    const float *d = msd_tensor_data(t);
    for (size_t i = 0; i < hw; i++)
        for (int k = 0; k < c; k++) {
            float v = d[(size_t)k * hw + i];
            v = v > 0.0f ? (v < 1.0f ? v : 1.0f) : 0.0f; /* also maps NaN to 0 */
            pix[i * (size_t)c + (size_t)k] = (unsigned char)lroundf(v * 255.0f);
        }
    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    img.width = (png_uint_32)w;
    img.height = (png_uint_32)h;
    img.format = c == 1 ? PNG_FORMAT_GRAY : c == 3 ? PNG_FORMAT_RGB : PNG_FORMAT_RGBA;
    struct png_job job = { &img, pix, path };
    int rc = msd_file_write_atomic(path, write_png, &job);
    free(pix);
    return rc;
}
