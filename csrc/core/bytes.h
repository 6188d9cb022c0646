/* minisd internal: what the file formats share at the byte level: a growing byte
 * buffer for writers (the safetensors header, the GIF stream) and little-endian loads for
 * readers (npy, safetensors). Not part of the public API (minisd.h). */
#ifndef MSD_BYTES_H
#define MSD_BYTES_H

#include <stddef.h>
#include <stdint.h>

/* A byte buffer that grows as it is written. An allocation failure sets `oom` and makes
 * every later write a no-op, so a writer checks once at the end. The data is always
 * followed by a NUL (not counted in n), so a text buffer is a C string. */
typedef struct msd_buf {
    unsigned char *data;
    size_t n, cap;
    int oom;
} msd_buf;

void msd_buf_put(msd_buf *b, const void *p, size_t n);
void msd_buf_str(msd_buf *b, const char *s);
void msd_buf_byte(msd_buf *b, int v);
void msd_buf_u16le(msd_buf *b, int v); /* the low 16 bits of v, little-endian */
void msd_buf_free(msd_buf *b);

/* The n-byte (1..8) little-endian unsigned integer at p. */
static inline uint64_t msd_le(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

#endif
