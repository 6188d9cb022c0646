/* minisd internal: the growing byte buffer of bytes.h.
 *
 * A writer appends freely and checks b->oom once at the end: after a failed allocation
 * every write is a no-op, and the bytes already written stay valid until msd_buf_free. */
#include <stdlib.h>
#include <string.h>

#include "bytes.h"

/* Appends the n bytes at p. The capacity starts at 256 and doubles (appends cost O(1)
 * amortised), and always keeps one byte past the data for the NUL. */
void msd_buf_put(msd_buf *b, const void *p, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n + 1 > b->cap) { /* + 1: the NUL after the data */
        size_t cap = b->cap ? b->cap : 256;
        while (b->n + n + 1 > cap)
            cap *= 2;
        /* on failure realloc leaves b->data allocated and unchanged: keep it for free */
        unsigned char *d = realloc(b->data, cap);
        if (!d) {
            b->oom = 1;
            return;
        }
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->n, p, n);
    b->n += n;
    b->data[b->n] = 0;
}

void msd_buf_str(msd_buf *b, const char *s)
{
    msd_buf_put(b, s, strlen(s));
}

void msd_buf_byte(msd_buf *b, int v)
{
    unsigned char c = (unsigned char)v;
    msd_buf_put(b, &c, 1);
}

/* Low byte first, as GIF stores its 16-bit integers. */
void msd_buf_u16le(msd_buf *b, int v)
{
    msd_buf_byte(b, v & 0xff);
    msd_buf_byte(b, (v >> 8) & 0xff);
}

/* Frees the data and leaves b empty ({0}), ready to be written again. */
void msd_buf_free(msd_buf *b)
{
    free(b->data);
    memset(b, 0, sizeof *b);
}
