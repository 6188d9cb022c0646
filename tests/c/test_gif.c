/* Animated GIF writer: files are decoded by an independent, minimal GIF
 * parser and LZW decoder written here, and every pixel's colour index,
 * the palette, transparency, delays, disposal and loop count are checked
 * against the source pixels. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "minisd.h"
#include "test.h"

/* ---- an independent decoder ------------------------------------------------ */

#define MAXF 16

typedef struct decoded {
    int w, h, ncol, bg;
    unsigned char pal[768];
    int loop; /* -1: no NETSCAPE2.0 block */
    int nframes;
    int delay[MAXF], disposal[MAXF], transparent[MAXF]; /* -1: none */
    int clears[MAXF], max_width[MAXF];
    unsigned char *idx[MAXF];
} decoded;

static void decoded_free(decoded *d)
{
    for (int f = 0; f < d->nframes; f++)
        free(d->idx[f]);
}

/* LZW-decodes data into exactly npix indices; 0 on success. */
static int lzw_decode(const unsigned char *data, size_t len, int mcs, unsigned char *out,
                      size_t npix, int *clears, int *max_width)
{
    static int prefix[4096];
    static unsigned char suffix[4096], stack[4097];
    const int clear = 1 << mcs, eoi = clear + 1;
    int size = mcs + 1, next = clear + 2, prev = -1;
    size_t bit = 0, n = 0;
    *clears = 0;
    *max_width = size;
    for (int i = 0; i < clear; i++) {
        prefix[i] = -1;
        suffix[i] = (unsigned char)i;
    }
    for (;;) {
        if (bit + (size_t)size > len * 8)
            return 1; /* ran out of data before the end code */
        int code = 0;
        for (int k = 0; k < size; k++, bit++)
            code |= ((data[bit / 8] >> (bit % 8)) & 1) << k;
        if (code == clear) {
            size = mcs + 1;
            next = clear + 2;
            prev = -1;
            (*clears)++;
            continue;
        }
        if (code == eoi)
            break;
        if (code > next || (prev < 0 && code >= clear) || (code == next && prev < 0))
            return 2; /* a code the table does not hold */
        int first_of_prev = 0;
        if (prev >= 0) {
            int c = prev;
            while (prefix[c] >= 0)
                c = prefix[c];
            first_of_prev = suffix[c];
        }
        /* the string of code (or of prev + its first byte when code == next) */
        int sp = 0, c = code == next ? prev : code;
        if (code == next)
            stack[sp++] = (unsigned char)first_of_prev;
        while (c >= 0) {
            stack[sp++] = suffix[c];
            c = prefix[c];
        }
        if (n + (size_t)sp > npix)
            return 3; /* more pixels than the image has */
        int first = stack[sp - 1]; /* the string's first byte */
        while (sp > 0)
            out[n++] = stack[--sp];
        if (prev >= 0 && next < 4096) {
            int f = code == next ? first_of_prev : first;
            prefix[next] = prev;
            suffix[next] = (unsigned char)f;
            next++;
            if (next == (1 << size) && size < 12)
                size++;
            if (size > *max_width)
                *max_width = size;
        }
        prev = code;
    }
    return n == npix ? 0 : 4;
}

static int u16(const unsigned char *p)
{
    return p[0] | p[1] << 8;
}

/* Parses a whole GIF file; 0 on success, else the step that failed. */
static int gif_decode(const unsigned char *p, size_t size, decoded *d)
{
    memset(d, 0, sizeof *d);
    d->loop = -1;
    if (size < 13 || memcmp(p, "GIF89a", 6) != 0)
        return 10;
    d->w = u16(p + 6);
    d->h = u16(p + 8);
    int flags = p[10];
    d->bg = p[11];
    if (!(flags & 0x80))
        return 11;
    d->ncol = 2 << (flags & 7);
    size_t at = 13;
    if (at + 3 * (size_t)d->ncol > size)
        return 12;
    memcpy(d->pal, p + at, 3 * (size_t)d->ncol);
    at += 3 * (size_t)d->ncol;
    int delay = -1, disposal = -1, transparent = -1;
    while (at < size) {
        int b = p[at++];
        if (b == 0x3b)
            return 0;
        if (b == 0x21) {
            int label = p[at++];
            if (label == 0xff && p[at] == 11 && memcmp(p + at + 1, "NETSCAPE2.0", 11) == 0) {
                at += 12;
                if (p[at] != 3 || p[at + 1] != 1)
                    return 13;
                d->loop = u16(p + at + 2);
                at += 4;
            } else if (label == 0xf9) {
                if (p[at] != 4)
                    return 14;
                disposal = (p[at + 1] >> 2) & 7;
                delay = u16(p + at + 2);
                transparent = (p[at + 1] & 1) ? p[at + 4] : -1;
                at += 5;
            }
            while (at < size && p[at] != 0) /* remaining sub-blocks */
                at += 1 + (size_t)p[at];
            at++;
        } else if (b == 0x2c) {
            if (d->nframes == MAXF || at + 10 > size)
                return 15;
            int x = u16(p + at), y = u16(p + at + 2), w = u16(p + at + 4), h = u16(p + at + 6);
            if (x != 0 || y != 0 || w != d->w || h != d->h || p[at + 8] != 0)
                return 16; /* this writer always draws the whole canvas */
            at += 9;
            int mcs = p[at++];
            size_t cap = size, len = 0;
            unsigned char *data = malloc(cap);
            while (at < size && p[at] != 0) {
                size_t k = p[at];
                if (at + 1 + k > size) {
                    free(data);
                    return 17;
                }
                memcpy(data + len, p + at + 1, k);
                len += k;
                at += 1 + k;
            }
            at++;
            int f = d->nframes++;
            d->idx[f] = malloc((size_t)w * h);
            d->delay[f] = delay;
            d->disposal[f] = disposal;
            d->transparent[f] = transparent;
            int rc = lzw_decode(data, len, mcs, d->idx[f], (size_t)w * h, &d->clears[f],
                                &d->max_width[f]);
            free(data);
            if (rc)
                return 20 + rc;
            delay = disposal = transparent = -1;
        } else {
            return 18;
        }
    }
    return 19; /* no trailer */
}

/* ---- tests --------------------------------------------------------------- */

/* The RGB of index k in the decoded palette. */
static uint32_t pal_rgb(const decoded *d, int k)
{
    return (uint32_t)d->pal[3 * k] << 16 | (uint32_t)d->pal[3 * k + 1] << 8 | d->pal[3 * k + 2];
}

/* Checks that every decoded pixel (scaled canvas) shows its source colour,
 * or the transparent index where the source alpha is < 128. */
static int pixels_match(const decoded *d, const unsigned char *const *rgba, int n, int w, int h,
                        int scale)
{
    if (d->nframes != n || d->w != w * scale || d->h != h * scale)
        return 0;
    for (int f = 0; f < n; f++)
        for (int y = 0; y < d->h; y++)
            for (int x = 0; x < d->w; x++) {
                const unsigned char *s = rgba[f] + ((size_t)(y / scale) * w + x / scale) * 4;
                int k = d->idx[f][(size_t)y * d->w + x];
                if (s[3] < 128) {
                    if (k != d->transparent[f])
                        return 0;
                } else if (k == d->transparent[f] || k >= d->ncol ||
                           pal_rgb(d, k) != ((uint32_t)s[0] << 16 | (uint32_t)s[1] << 8 | s[2])) {
                    return 0;
                }
            }
    return 1;
}

static uint32_t lcg = 12345;
static int rnd(int n)
{
    lcg = lcg * 1103515245u + 12345u;
    return (int)((lcg >> 8) % (uint32_t)n);
}

static void test_small_transparent_scaled(void)
{
    /* 3 frames of 5x3 with 4 colours and transparent pixels */
    const int w = 5, h = 3, n = 3;
    static unsigned char fr[3][5 * 3 * 4];
    const unsigned char cols[4][3] = {{255, 0, 0}, {0, 255, 0}, {10, 20, 30}, {255, 255, 255}};
    for (int f = 0; f < n; f++)
        for (int p = 0; p < w * h; p++) {
            int c = (p + f) % 5;
            unsigned char *px = fr[f] + p * 4;
            if (c == 4) {
                px[0] = 99; px[1] = 99; px[2] = 99; px[3] = (unsigned char)(p % 2 ? 0 : 127);
            } else {
                memcpy(px, cols[c], 3);
                px[3] = (unsigned char)(c == 0 ? 128 : 255);
            }
        }
    const unsigned char *rgba[3] = {fr[0], fr[1], fr[2]};
    for (int scale = 1; scale <= 3; scale += 2) {
        msd_gif_options o = msd_gif_defaults();
        o.scale = scale;
        o.delay = 7;
        o.last_delay = 250;
        o.loop = 3;
        unsigned char *gif;
        size_t size;
        CHECK_OK(msd_gif_encode(&gif, &size, rgba, n, w, h, &o));
        decoded d;
        int rc = gif_decode(gif, size, &d);
        free(gif);
        if (rc)
            fprintf(stderr, "  decode failed at step %d\n", rc);
        CHECK(rc == 0);
        int ok = pixels_match(&d, rgba, n, w, h, scale);
        CHECK(d.ncol == 8); /* 4 colours + transparent, in a table of 8 */
        CHECK(d.loop == 3);
        for (int f = 0; f < n; f++) {
            CHECK(d.delay[f] == (f == n - 1 ? 250 : 7));
            CHECK(d.disposal[f] == 2);
            CHECK(d.transparent[f] == 4);
        }
        /* exact palette in order of first appearance */
        CHECK(pal_rgb(&d, 0) == 0xff0000 && pal_rgb(&d, 1) == 0x00ff00);
        CHECK(pal_rgb(&d, 2) == 0x0a141e && pal_rgb(&d, 3) == 0xffffff);
        decoded_free(&d);
        CHECK(ok);
    }
}

/* Random indices over a large frame fill the 4096-entry table many times:
 * clear codes and 12-bit codes must round-trip. Also 1, 2 and 256 colours
 * (the smallest table and the full table, without transparency). */
static void test_lzw_table_full_and_sizes(void)
{
    const int cases[][3] = {{1, 7, 5}, {2, 16, 16}, {200, 150, 130}, {256, 64, 64},
                            {3, 300, 200}};
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        int ncol = cases[t][0], w = cases[t][1], h = cases[t][2];
        unsigned char *fr = malloc((size_t)w * h * 4 * 2);
        for (int p = 0; p < w * h * 2; p++) {
            /* the first frame visits every colour once, then random runs */
            int c = p < ncol ? p : (p % 97 < 40 ? (p / 50) % ncol : rnd(ncol));
            fr[p * 4] = (unsigned char)c;
            fr[p * 4 + 1] = (unsigned char)(255 - c);
            fr[p * 4 + 2] = (unsigned char)(c * 7);
            fr[p * 4 + 3] = 255;
        }
        const unsigned char *rgba[2] = {fr, fr + (size_t)w * h * 4};
        unsigned char *gif;
        size_t size;
        int rc = msd_gif_encode(&gif, &size, rgba, 2, w, h, NULL);
        if (rc) {
            free(fr);
            CHECK_OK(rc);
        }
        decoded d;
        rc = gif_decode(gif, size, &d);
        free(gif);
        int ok = rc == 0 && pixels_match(&d, rgba, 2, w, h, 1);
        int want_ncol = ncol <= 2 ? 2 : ncol <= 4 ? 4 : 256;
        int clears = rc == 0 ? d.clears[0] + d.clears[1] : 0;
        int width = rc == 0 ? d.max_width[0] : 0;
        int tr = rc == 0 ? d.transparent[0] : 0, disp = rc == 0 ? d.disposal[0] : 0;
        int loop = d.loop, delay0 = d.delay[0], delay1 = d.delay[1], got_ncol = d.ncol;
        if (rc == 0)
            decoded_free(&d);
        free(fr);
        if (rc)
            fprintf(stderr, "  case %zu: decode failed at step %d\n", t, rc);
        CHECK(rc == 0);
        CHECK(ok);
        CHECK(got_ncol == want_ncol);
        CHECK(tr == -1 && disp == 1);
        CHECK(loop == 0 && delay0 == 10 && delay1 == 100);
        if (w * h >= 19500 && ncol >= 200) {
            CHECK(clears > 2); /* the table filled at least once per frame */
            CHECK(width == 12);
        }
    }
}

/* More than 256 colours: a median-cut palette of at most 256 entries; each
 * pixel must show the nearest palette colour to its source, and a smooth
 * gradient must stay close. */
static void test_quantised(void)
{
    const int w = 64, h = 48;
    unsigned char *fr = malloc((size_t)w * h * 4);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            unsigned char *px = fr + ((size_t)y * w + x) * 4;
            px[0] = (unsigned char)(x * 4);
            px[1] = (unsigned char)(y * 5);
            px[2] = (unsigned char)((x + y) * 2);
            px[3] = (x + y) % 17 == 0 ? 0 : 255;
        }
    const unsigned char *rgba[1] = {fr};
    unsigned char *gif;
    size_t size;
    int rc = msd_gif_encode(&gif, &size, rgba, 1, w, h, NULL);
    if (rc)
        free(fr);
    CHECK_OK(rc);
    decoded d;
    rc = gif_decode(gif, size, &d);
    free(gif);
    if (rc)
        free(fr);
    CHECK(rc == 0);
    int bad = 0, worst = 0, tr = d.transparent[0];
    for (int p = 0; p < w * h; p++) {
        const unsigned char *s = fr + (size_t)p * 4;
        int k = d.idx[0][p];
        if (s[3] < 128) {
            bad += k != tr;
            continue;
        }
        if (k == tr) {
            bad++;
            continue;
        }
        long best = -1;
        for (int j = 0; j < d.ncol; j++) {
            if (j == tr)
                continue;
            long e = 0;
            for (int c = 0; c < 3; c++)
                e += (long)(s[c] - d.pal[3 * j + c]) * (s[c] - d.pal[3 * j + c]);
            if (best < 0 || e < best)
                best = e;
        }
        long e = 0;
        for (int c = 0; c < 3; c++) {
            int diff = abs(s[c] - d.pal[3 * k + c]);
            e += (long)diff * diff;
            if (diff > worst)
                worst = diff;
        }
        bad += e != best;
    }
    int ncol = d.ncol;
    decoded_free(&d);
    free(fr);
    CHECK(tr == 255 && ncol == 256);
    CHECK(bad == 0);
    CHECK(worst <= 24);
}

static char tmpdir[256];

static int tmp_leftovers(void)
{
    DIR *dir = opendir(tmpdir);
    int n = 0;
    struct dirent *e;
    while (dir && (e = readdir(dir)))
        n += strstr(e->d_name, ".tmp.") != NULL;
    if (dir)
        closedir(dir);
    return n;
}

/* Tensors to a file: values in [0,1] become round(v * 255); RGB and RGBA. */
static void test_save_tensors(void)
{
    char path[512];
    snprintf(path, sizeof path, "%s/anim.gif", tmpdir);
    int shape4[3] = {4, 3, 2}, shape3[3] = {3, 3, 2};
    msd_tensor *a = msd_tensor_empty(3, shape4), *b = msd_tensor_empty(3, shape4);
    msd_tensor *c = msd_tensor_empty(3, shape3);
    CHECK(a && b && c);
    float *pa = msd_tensor_data(a), *pb = msd_tensor_data(b), *pc = msd_tensor_data(c);
    for (int i = 0; i < 24; i++) {
        pa[i] = (float)(i % 5) / 4.0f;
        pb[i] = (float)((i * 3) % 5) / 4.0f;
    }
    pa[18] = 0.49f; /* alpha of pixel 0 of a: transparent */
    pa[19] = 0.5f;  /* opaque */
    for (int i = 0; i < 18; i++)
        pc[i] = i % 2 ? 1.5f : -0.25f; /* clamped */
    const msd_tensor *frames[2] = {a, b};
    msd_gif_options o = msd_gif_defaults();
    o.scale = 2;
    CHECK_OK(msd_gif_save(path, frames, 2, &o));
    unsigned char *gif;
    size_t size;
    CHECK_OK(msd_file_read_all("test", path, &gif, &size));
    decoded d;
    int rc = gif_decode(gif, size, &d);
    free(gif);
    CHECK(rc == 0);
    unsigned char fa[24], fb[24];
    for (int p = 0; p < 6; p++)
        for (int ch = 0; ch < 4; ch++) {
            fa[p * 4 + ch] = (unsigned char)(pa[ch * 6 + p] * 255.0f + 0.5f);
            fb[p * 4 + ch] = (unsigned char)(pb[ch * 6 + p] * 255.0f + 0.5f);
        }
    const unsigned char *rgba[2] = {fa, fb};
    int ok = pixels_match(&d, rgba, 2, 2, 3, 2);
    int t0 = d.idx[0][0] == d.transparent[0], t1 = d.idx[0][2] != d.transparent[0];
    decoded_free(&d);
    CHECK(ok);
    CHECK(t0 && t1);

    /* mismatched frames: an error naming the file and the frame */
    const msd_tensor *bad[2] = {a, c};
    int shape_other[3] = {3, 2, 2};
    msd_tensor *e = msd_tensor_empty(3, shape_other);
    const msd_tensor *bad2[2] = {c, e};
    CHECK(msd_gif_save(path, bad2, 2, NULL) == MSD_ERR_SHAPE);
    CHECK(strstr(msd_last_error(), "anim.gif") && strstr(msd_last_error(), "frame 2"));
    CHECK_OK(msd_gif_save(path, bad, 2, NULL)); /* RGBA and RGB frames mix */
    o.scale = 0;
    CHECK(msd_gif_save(path, frames, 2, &o) == MSD_ERR_ARG);
    CHECK(strstr(msd_last_error(), "anim.gif") && strstr(msd_last_error(), "scale"));
    /* a directory that does not exist: MSD_ERR_IO naming it, nothing left */
    char nodir[600];
    snprintf(nodir, sizeof nodir, "%s/missing/x.gif", tmpdir);
    CHECK(msd_gif_save(nodir, frames, 2, NULL) == MSD_ERR_IO);
    CHECK(strstr(msd_last_error(), "missing/x.gif") != NULL);
    CHECK(tmp_leftovers() == 0);
    msd_tensor_release(a);
    msd_tensor_release(b);
    msd_tensor_release(c);
    msd_tensor_release(e);
    remove(path);
}

int main(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/msd_test_gif_XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_small_transparent_scaled);
    RUN(test_lzw_table_full_and_sizes);
    RUN(test_quantised);
    RUN(test_save_tensors);
    rmdir(tmpdir);
    return TEST_SUMMARY();
}
