/* minisd: animated GIF writer (see gif.h for the format choices).
 *
 * The file is built in memory (msd_buf), then written atomically. Its blocks in file order
 * (sections of the GIF89a specification): header "GIF89a"; logical screen descriptor (18)
 * and global colour table (19); the NETSCAPE2.0 application extension (loop count); per
 * frame a graphic control extension (23), an image descriptor (20) and the LZW-coded image
 * data (22, appendix F); the trailer 0x3B (27). All integers are 16-bit little-endian. Data
 * after the minimum code size byte travels in sub-blocks of 1..255 bytes, each preceded by
 * its length, ended by a zero-length block (15, 16). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bytes.h"
#include "error.h"
#include "gif.h"
#include "image.h"
#include "io.h"

msd_gif_options msd_gif_defaults(void)
{
    msd_gif_options o = {1, 10, 100, 0};
    return o;
}

/* ---- the colour table: distinct opaque colours with counts ----------------
 * An open-addressing hash (linear probing) from 24-bit RGB to the colour's position in
 * the order of first appearance; keys store rgb + 1 so that 0 can mean empty while black
 * (0) stays a valid colour. The caller sizes the table to at least twice the colours it
 * can hold, so a probe always ends. */

typedef struct colour_set {
    uint32_t *keys;  /* rgb + 1, 0 = empty slot */
    uint32_t *slot_index; /* per slot: position in the order list */
    size_t mask;
    uint32_t *rgb;    /* distinct colours in order of first appearance */
    uint32_t *count;  /* pixels of each */
    uint8_t *pal;     /* palette index of each */
    size_t n;
} colour_set;

/* Knuth's multiplicative hash, xored with a shift so that the low bits (the mask) also
 * see the high bytes of the colour. */
static size_t hash_slot(const colour_set *s, uint32_t rgb)
{
    return (size_t)((rgb * 2654435761u) ^ (rgb >> 13)) & s->mask;
}

/* Position of rgb in the order list, adding it when new. */
static size_t colour_find_add(colour_set *s, uint32_t rgb)
{
    size_t h = hash_slot(s, rgb);
    while (s->keys[h] != 0) {
        if (s->keys[h] == rgb + 1)
            return s->slot_index[h];
        h = (h + 1) & s->mask;
    }
    s->keys[h] = rgb + 1;
    s->slot_index[h] = (uint32_t)s->n;
    s->rgb[s->n] = rgb;
    s->count[s->n] = 0;
    return s->n++;
}

/* ---- median cut ------------------------------------------------------------
 * Heckbert's median cut over the distinct colours, each weighted by its pixel count (see
 * gif.h). The result depends only on the colours and counts, not on qsort's algorithm. */

typedef struct mc_colour {
    uint8_t c[3];
    uint32_t rgb;
    uint64_t weight;
} mc_colour;

/* Orders colours by one channel, then by the whole colour (a total order,
 * so the result does not depend on qsort's stability). */
#define MC_COMPARE(ch)                                                 \
    static int mc_compare##ch(const void *pa, const void *pb)          \
    {                                                                  \
        const mc_colour *a = pa, *b = pb;                              \
        if (a->c[ch] != b->c[ch])                                      \
            return a->c[ch] < b->c[ch] ? -1 : 1;                       \
        return a->rgb < b->rgb ? -1 : a->rgb > b->rgb;                 \
    }
MC_COMPARE(0)
MC_COMPARE(1)
MC_COMPARE(2)
static int (*const mc_compare[3])(const void *, const void *) = {mc_compare0, mc_compare1,
                                                                  mc_compare2};

typedef struct mc_box {
    size_t lo, hi; /* [lo, hi) in the colour array */
    int range, channel;
} mc_box;

/* The widest channel of the box's colours and its range (max - min); the first channel
 * wins a tie (strict >), R before G before B. */
static void mc_measure(const mc_colour *col, mc_box *b)
{
    int mn[3] = {255, 255, 255}, mx[3] = {0, 0, 0};
    for (size_t i = b->lo; i < b->hi; i++)
        for (int c = 0; c < 3; c++) {
            if (col[i].c[c] < mn[c])
                mn[c] = col[i].c[c];
            if (col[i].c[c] > mx[c])
                mx[c] = col[i].c[c];
        }
    b->range = -1;
    for (int c = 0; c < 3; c++)
        if (mx[c] - mn[c] > b->range) {
            b->range = mx[c] - mn[c];
            b->channel = c;
        }
}

/* Fills pal (at most maxc entries of 3 bytes) from the n distinct colours of
 * s; returns the palette size, or -1 when out of memory. */
static int median_cut(const colour_set *s, int maxc, unsigned char *pal)
{
    mc_colour *col = malloc(s->n * sizeof *col);
    mc_box *box = malloc((size_t)maxc * sizeof *box);
    if (!col || !box) {
        free(col);
        free(box);
        return -1;
    }
    for (size_t i = 0; i < s->n; i++) {
        uint32_t v = s->rgb[i];
        col[i].c[0] = (uint8_t)(v >> 16);
        col[i].c[1] = (uint8_t)(v >> 8);
        col[i].c[2] = (uint8_t)v;
        col[i].rgb = v;
        col[i].weight = s->count[i];
    }
    int nbox = 1;
    box[0].lo = 0;
    box[0].hi = s->n;
    mc_measure(col, &box[0]);
    /* split the box with the widest channel range (the first such box on a tie) until
     * there are maxc boxes or none can split (each left holds a single colour) */
    while (nbox < maxc) {
        int best = -1;
        for (int i = 0; i < nbox; i++)
            if (box[i].hi - box[i].lo >= 2 && box[i].range > 0 &&
                (best < 0 || box[i].range > box[best].range))
                best = i;
        if (best < 0)
            break;
        mc_box *b = &box[best];
        qsort(col + b->lo, b->hi - b->lo, sizeof *col, mc_compare[b->channel]);
        /* cut after the first colour at which the cumulative weight reaches half the box's;
         * m stays in [lo + 1, hi - 1], so both halves keep at least one colour */
        uint64_t total = 0, acc = 0;
        for (size_t i = b->lo; i < b->hi; i++)
            total += col[i].weight;
        size_t m = b->lo + 1;
        for (size_t i = b->lo; i < b->hi - 1; i++) {
            acc += col[i].weight;
            m = i + 1;
            if (2 * acc >= total)
                break;
        }
        box[nbox].lo = m;
        box[nbox].hi = b->hi;
        b->hi = m;
        mc_measure(col, b);
        mc_measure(col, &box[nbox]);
        nbox++;
    }
    /* each box's colour: the pixel-weighted mean of its colours, rounded (w > 0: every
     * distinct colour has at least one pixel) */
    for (int i = 0; i < nbox; i++) {
        double sum[3] = {0, 0, 0}, w = 0;
        for (size_t k = box[i].lo; k < box[i].hi; k++) {
            double cw = (double)col[k].weight;
            for (int c = 0; c < 3; c++)
                sum[c] += cw * col[k].c[c];
            w += cw;
        }
        for (int c = 0; c < 3; c++)
            pal[i * 3 + c] = (unsigned char)(sum[c] / w + 0.5);
    }
    free(col);
    free(box);
    return nbox;
}

/* ---- LZW -------------------------------------------------------------------
 * GIF's variable-length LZW (GIF89a appendix F): with minimum code size mcs, codes
 * 0..2^mcs - 1 are the palette indices, 2^mcs is Clear and 2^mcs + 1 End of Information;
 * new strings take codes from 2^mcs + 2 up. Codes start mcs + 1 bits wide, grow by one bit
 * as the table passes each power of two, up to 12 bits (4096 codes); a full table is
 * followed by a Clear code and a fresh start. Codes are packed least significant bit
 * first into bytes, and the bytes into sub-blocks of at most 255. The string table is a
 * hash from (prefix code, next index) to the string's code. */

#define LZW_MAX_CODES 4096
#define LZW_SLOTS 8192 /* twice the codes: the table is at most half full */

typedef struct lzw {
    msd_buf *out;
    unsigned char block[255];
    int nblock;
    uint32_t acc;
    int nacc;
    int32_t keys[LZW_SLOTS]; /* (prefix << 8 | byte) + 1, 0 = empty */
    uint16_t codes[LZW_SLOTS];
} lzw;

/* Appends one byte of coded data; a full sub-block (255 bytes) goes out with its length
 * byte first. */
static void lzw_byte(lzw *z, int v)
{
    z->block[z->nblock++] = (unsigned char)v;
    if (z->nblock == 255) {
        msd_buf_byte(z->out, 255);
        msd_buf_put(z->out, z->block, 255);
        z->nblock = 0;
    }
}

/* Appends a code of `size` bits, least significant bit first: acc holds the bits not yet
 * in a byte (fewer than 8 between calls, so 8 + 12 always fit in 32). */
static void lzw_code(lzw *z, int code, int size)
{
    z->acc |= (uint32_t)code << z->nacc;
    z->nacc += size;
    while (z->nacc >= 8) {
        lzw_byte(z, (int)(z->acc & 0xff));
        z->acc >>= 8;
        z->nacc -= 8;
    }
}

/* Multiplicative hash: the top 13 bits of the 32-bit product index the 8192 slots. */
static size_t lzw_slot(int32_t key)
{
    return ((uint32_t)key * 2654435761u >> 19) & (LZW_SLOTS - 1);
}

/* Compresses npix indices given by idx[(y / scale) * w + x / scale] over the
 * scaled canvas, as one image's data: the minimum code size byte, the
 * sub-blocks and the terminator. */
static void lzw_encode(lzw *z, msd_buf *out, const uint8_t *idx, int w, int h, int scale, int mcs)
{
    z->out = out;
    z->nblock = 0;
    z->acc = 0;
    z->nacc = 0;
    memset(z->keys, 0, sizeof z->keys);
    const int clear = 1 << mcs, eoi = clear + 1;
    int next = clear + 2, size = mcs + 1;
    msd_buf_byte(out, mcs);
    /* a Clear code first, as appendix F asks of encoders */
    lzw_code(z, clear, size);
    const int W = w * scale, H = h * scale;
    /* prefix: the code of the longest string seen so far that is in the table (-1 before
     * the first pixel); the upscaled canvas is read through idx, never materialised */
    int prefix = -1;
    for (int y = 0; y < H; y++) {
        const uint8_t *row = idx + (size_t)(y / scale) * w;
        for (int x = 0; x < W; x++) {
            int c = row[x / scale];
            if (prefix < 0) {
                prefix = c;
                continue;
            }
            /* prefix < 4096 and c < 256: the key fits in 20 bits; + 1 keeps 0 for empty */
            int32_t key = (prefix << 8 | c) + 1;
            size_t s = lzw_slot(key);
            while (z->keys[s] != 0 && z->keys[s] != key)
                s = (s + 1) & (LZW_SLOTS - 1);
            if (z->keys[s] == key) {
                prefix = z->codes[s];
                continue;
            }
            lzw_code(z, prefix, size);
            /* the decoder reads the next code one entry behind, so the width
             * grows once the next free code no longer fits, as giflib does */
            if (next >= (1 << size) && size < 12)
                size++;
            /* the string prefix + c gets the next code; with the table full (4096 codes)
             * the encoder sends Clear at the current width (12 bits) instead and restarts */
            if (next < LZW_MAX_CODES) {
                z->keys[s] = key;
                z->codes[s] = (uint16_t)next++;
            } else {
                lzw_code(z, clear, size);
                memset(z->keys, 0, sizeof z->keys);
                next = clear + 2;
                size = mcs + 1;
            }
            prefix = c;
        }
    }
    /* the last string, then End of Information at the width the decoder now expects: the
     * same growth check as after every code in the loop, since the decoder grows its width
     * after reading the last code as after any other; the last byte is padded with zero
     * bits */
    lzw_code(z, prefix, size);
    if (next >= (1 << size) && size < 12)
        size++;
    lzw_code(z, eoi, size);
    if (z->nacc > 0)
        lzw_byte(z, (int)(z->acc & 0xff));
    if (z->nblock > 0) {
        msd_buf_byte(out, z->nblock);
        msd_buf_put(out, z->block, (size_t)z->nblock);
    }
    msd_buf_byte(out, 0);
}

/* ---- the file -------------------------------------------------------------- */

/* MSD_ERR_ARG unless lo <= v <= hi; the GIF fields are 16-bit. */
static int check_opt(const char *what, int v, int lo, int hi)
{
    if (v < lo || v > hi)
        return msd_error(MSD_ERR_ARG, "gif_encode: %s must be in %d..%d, got %d", what, lo, hi,
                         v);
    return MSD_OK;
}

/* rgba[f] (height, width, 4) bytes for each of the n frames -> *out, a malloc'd GIF of
 * *size bytes (the caller frees it). Three passes: collect the distinct opaque colours of
 * all frames (one global palette keeps colours stable across the animation), build the
 * palette (exact or median cut), then per frame map pixels to indices and LZW-code them.
 * MSD_ERR_ARG for bad sizes or options (checked before any allocation), MSD_ERR_MEM;
 * nothing is returned on error. */
int msd_gif_encode(unsigned char **out, size_t *size, const unsigned char *const *rgba, int n,
                   int width, int height, const msd_gif_options *opt)
{
    msd_gif_options o = opt ? *opt : msd_gif_defaults();
    int rc;
    if (n < 1)
        return msd_error(MSD_ERR_ARG, "gif_encode: need at least one frame, got %d", n);
    if (width < 1 || height < 1)
        return msd_error(MSD_ERR_ARG, "gif_encode: frame size %dx%d is empty", width, height);
    if ((rc = check_opt("scale", o.scale, 1, 65535)) || (rc = check_opt("delay", o.delay, 0, 65535))
        || (rc = check_opt("last_delay", o.last_delay, 0, 65535))
        || (rc = check_opt("loop", o.loop, 0, 65535)))
        return rc;
    if ((long long)width * o.scale > 65535 || (long long)height * o.scale > 65535)
        return msd_error(MSD_ERR_ARG, "gif_encode: canvas %dx%d times scale %d is larger than "
                         "GIF's 65535x65535", width, height, o.scale);
    for (int f = 0; f < n; f++)
        if (!rgba[f])
            return msd_error(MSD_ERR_ARG, "gif_encode: frame %d has no pixels", f);

    /* hash slots: a power of two >= 2 * pixels, at most 2^25 = twice the 2^24 colours RGB
     * can hold, so the table is at most half full either way; maxn: the most distinct
     * colours possible */
    const size_t hw = (size_t)width * height, total = hw * (size_t)n;
    size_t cap = 1024;
    while (cap < 2 * total && cap < ((size_t)1 << 25))
        cap *= 2;
    colour_set s = {0};
    s.mask = cap - 1;
    size_t maxn = total < ((size_t)1 << 24) ? total : ((size_t)1 << 24);
    s.keys = calloc(cap, sizeof *s.keys);
    s.slot_index = malloc(cap * sizeof *s.slot_index);
    s.rgb = malloc(maxn * sizeof *s.rgb);
    s.count = malloc(maxn * sizeof *s.count);
    s.pal = malloc(maxn);
    uint32_t *pos = malloc(total * sizeof *pos); /* per pixel: colour position or UINT32_MAX */
    uint8_t *idx = malloc(hw);
    lzw *z = malloc(sizeof *z);
    msd_buf b = {0};
    rc = MSD_OK;
    if (!s.keys || !s.slot_index || !s.rgb || !s.count || !s.pal || !pos || !idx || !z) {
        rc = msd_error(MSD_ERR_MEM, "gif_encode: out of memory for %d frames of %dx%d", n, width,
                       height);
        goto done;
    }

    /* pos: per pixel of every frame, its colour's position, or UINT32_MAX when alpha is
     * below half (GIF has one transparent index, no partial alpha) */
    int transparent = 0;
    for (int f = 0; f < n; f++)
        for (size_t p = 0; p < hw; p++) {
            const unsigned char *px = rgba[f] + p * 4;
            if (px[3] < 128) {
                transparent = 1;
                pos[(size_t)f * hw + p] = UINT32_MAX;
            } else {
                uint32_t rgb = (uint32_t)px[0] << 16 | (uint32_t)px[1] << 8 | px[2];
                size_t k = colour_find_add(&s, rgb);
                s.count[k]++;
                pos[(size_t)f * hw + p] = (uint32_t)k;
            }
        }

    /* s.pal maps each distinct colour to its palette index; one slot is kept free for the
     * transparent index when any pixel is transparent */
    unsigned char pal[256 * 3];
    memset(pal, 0, sizeof pal);
    int maxc = transparent ? 255 : 256, npal;
    if (s.n <= (size_t)maxc) {
        npal = (int)s.n;
        for (size_t i = 0; i < s.n; i++) {
            pal[i * 3] = (unsigned char)(s.rgb[i] >> 16);
            pal[i * 3 + 1] = (unsigned char)(s.rgb[i] >> 8);
            pal[i * 3 + 2] = (unsigned char)s.rgb[i];
            s.pal[i] = (uint8_t)i;
        }
    } else {
        npal = median_cut(&s, maxc, pal);
        if (npal < 0) {
            rc = msd_error(MSD_ERR_MEM, "gif_encode: out of memory for the palette");
            goto done;
        }
        /* nearest palette colour per distinct colour (not per pixel): squared RGB
         * distance, the lowest index on a tie (strict <) */
        for (size_t i = 0; i < s.n; i++) {
            int r = (int)(s.rgb[i] >> 16), g = (int)(s.rgb[i] >> 8 & 0xff),
                bl = (int)(s.rgb[i] & 0xff);
            int best = 0;
            long bestd = -1;
            for (int k = 0; k < npal; k++) {
                long dr = r - pal[k * 3], dg = g - pal[k * 3 + 1], db = bl - pal[k * 3 + 2];
                long d = dr * dr + dg * dg + db * db;
                if (bestd < 0 || d < bestd) {
                    bestd = d;
                    best = k;
                }
            }
            s.pal[i] = (uint8_t)best;
        }
    }
    const int tindex = npal; /* only used when transparent */
    const int ncol = npal + transparent;
    /* the colour table holds 2^bits entries, bits >= 1 (the field stores bits - 1; the
     * unused entries are black); the LZW minimum code size is at least 2, as the
     * specification requires even of 1-bit images (appendix F) */
    int bits = 1;
    while ((1 << bits) < ncol)
        bits++;
    const int mcs = bits < 2 ? 2 : bits;

    /* header, logical screen descriptor, global colour table */
    msd_buf_put(&b, "GIF89a", 6);
    msd_buf_u16le(&b, width * o.scale);
    msd_buf_u16le(&b, height * o.scale);
    /* packed: global table present (0x80), colour resolution 8 bits (7 << 4), not sorted,
     * table size 2^(field + 1) */
    msd_buf_byte(&b, 0x80 | 0x70 | (bits - 1));
    msd_buf_byte(&b, 0); /* background colour index */
    msd_buf_byte(&b, 0); /* pixel aspect ratio: none */
    msd_buf_put(&b, pal, (size_t)3 << bits);

    /* NETSCAPE2.0 application extension: loop count
     * (0x21 0xFF, block of 11 bytes "NETSCAPE2.0", sub-block of 3: id 1 and the count) */
    msd_buf_put(&b, "\x21\xff\x0bNETSCAPE2.0\x03\x01", 16);
    msd_buf_u16le(&b, o.loop);
    msd_buf_byte(&b, 0);

    for (int f = 0; f < n; f++) {
        const uint32_t *fp = pos + (size_t)f * hw;
        for (size_t p = 0; p < hw; p++)
            idx[p] = fp[p] == UINT32_MAX ? (uint8_t)tindex : s.pal[fp[p]];
        /* graphic control extension: packed byte = disposal method << 2 | transparency
         * flag; then the delay in centiseconds, the transparent index, the terminator */
        msd_buf_put(&b, "\x21\xf9\x04", 3);
        msd_buf_byte(&b, (transparent ? 2 : 1) << 2 | transparent);
        msd_buf_u16le(&b, f == n - 1 ? o.last_delay : o.delay);
        msd_buf_byte(&b, transparent ? tindex : 0);
        msd_buf_byte(&b, 0);
        /* image descriptor: the whole canvas, no local table, not interlaced */
        msd_buf_byte(&b, 0x2c);
        msd_buf_u16le(&b, 0);
        msd_buf_u16le(&b, 0);
        msd_buf_u16le(&b, width * o.scale);
        msd_buf_u16le(&b, height * o.scale);
        msd_buf_byte(&b, 0);
        lzw_encode(z, &b, idx, width, height, o.scale, mcs);
    }
    msd_buf_byte(&b, 0x3b);
    if (b.oom)
        rc = msd_error(MSD_ERR_MEM, "gif_encode: out of memory for the file (%zu bytes so far)",
                       b.n);

done:
    free(s.keys);
    free(s.slot_index);
    free(s.rgb);
    free(s.count);
    free(s.pal);
    free(pos);
    free(idx);
    free(z);
    if (rc != MSD_OK) {
        msd_buf_free(&b);
        return rc;
    }
    *out = b.data;
    *size = b.n;
    return MSD_OK;
}

typedef struct gif_write {
    const unsigned char *data;
    size_t size;
    const char *path;
} gif_write;

/* msd_write_fn for msd_file_write_atomic: the encoded bytes in one fwrite. */
static int write_buffer(FILE *f, void *ctx)
{
    const gif_write *w = ctx;
    if (fwrite(w->data, 1, w->size, f) != w->size)
        return msd_error(MSD_ERR_IO, "save_gif '%s': write failed", w->path);
    return MSD_OK;
}

/* frames[f] (C, H, W), C = 1, 3 or 4, values in [0, 1], all of one H and W -> RGBA bytes
 * (msd_image_rgba_bytes: clamped, rounded) -> msd_gif_encode -> an atomic write. Every
 * frame's shape is checked first, naming the frame 1-based. */
int msd_gif_save(const char *path, const msd_tensor *const *frames, int n,
                 const msd_gif_options *opt)
{
    char sb[64], msg[512];
    if (n < 1)
        return msd_error(MSD_ERR_ARG, "save_gif '%s': need at least one frame, got %d", path, n);
    int H = 0, W = 0;
    for (int f = 0; f < n; f++) {
        const msd_tensor *t = frames[f];
        if (!t)
            return msd_error(MSD_ERR_ARG, "save_gif '%s': frame %d is missing", path, f + 1);
        int C = t->ndim == 3 ? t->shape[0] : 0;
        if (C != 1 && C != 3 && C != 4)
            return msd_error(MSD_ERR_SHAPE, "save_gif '%s': frame %d has shape %s, expected "
                             "(C,H,W) with C = 1, 3 or 4", path, f + 1,
                             msd_tensor_shape_str(sb, sizeof sb, t));
        if (f == 0) {
            H = t->shape[1];
            W = t->shape[2];
        } else if (t->shape[1] != H || t->shape[2] != W) {
            return msd_error(MSD_ERR_SHAPE, "save_gif '%s': frame %d has shape %s, frame 1 is "
                             "%dx%d (H x W)", path, f + 1, msd_tensor_shape_str(sb, sizeof sb, t),
                             H, W);
        }
        if (H < 1 || W < 1)
            return msd_error(MSD_ERR_SHAPE, "save_gif '%s': frame %d has shape %s: empty",
                             path, f + 1, msd_tensor_shape_str(sb, sizeof sb, t));
    }
    const size_t hw4 = (size_t)H * W * 4;
    unsigned char *bytes = malloc(hw4 * (size_t)n);
    const unsigned char **rgba = malloc((size_t)n * sizeof *rgba);
    if (!bytes || !rgba) {
        free(bytes);
        free(rgba);
        return msd_error(MSD_ERR_MEM, "save_gif '%s': out of memory for %d frames of %dx%d", path,
                         n, H, W);
    }
    int rc = MSD_OK;
    for (int f = 0; f < n && rc == MSD_OK; f++) {
        rgba[f] = bytes + hw4 * (size_t)f;
        rc = msd_image_rgba_bytes(bytes + hw4 * (size_t)f, frames[f]);
    }
    unsigned char *data = NULL;
    size_t size = 0;
    if (rc == MSD_OK)
        rc = msd_gif_encode(&data, &size, rgba, n, W, H, opt);
    free(bytes);
    free(rgba);
    if (rc != MSD_OK) {
        /* copied first: msd_error rewrites the buffer that msd_last_error returns */
        snprintf(msg, sizeof msg, "%s", msd_last_error());
        return msd_error(rc, "save_gif '%s': %s", path, msg);
    }
    gif_write w = {data, size, path};
    rc = msd_file_write_atomic(path, write_buffer, &w);
    free(data);
    return rc;
}
