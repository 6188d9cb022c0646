/* minisd: NumPy .npy files.
 *
 * Layout: "\x93NUMPY", major, minor, header length (2 bytes LE in 1.0, 4
 * bytes LE in 2.0 and 3.0), then a Python dict literal such as
 * {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), } padded with
 * spaces and '\n', then the raw array data.
 *
 * The rules followed (numpy.lib.format, the NEP 1 format description): version 2.0 exists
 * only for headers over 65535 bytes, 3.0 only changes the header's encoding from latin-1
 * to UTF-8 (irrelevant to the ASCII keys and values read here); the header is a dict
 * literal with exactly the keys descr, fortran_order and shape; descr is a type string,
 * byte order ('<' little, '>' big, '|' not applicable, '=' native) + kind + item size;
 * the data follows the header immediately, in C order unless fortran_order. The reader
 * loads the whole file and checks the header length, every shape entry and the data size
 * against the file before it allocates the tensor. */
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bytes.h"
#include "io.h"

enum npy_kind { K_BOOL, K_U8, K_I8, K_U16, K_I16, K_U32, K_I32, K_U64, K_I64, K_F16, K_F32, K_F64 };

static const struct {
    char code;
    int size;
    enum npy_kind kind;
} npy_types[] = {
    { 'b', 1, K_BOOL }, { 'u', 1, K_U8 }, { 'i', 1, K_I8 },   { 'u', 2, K_U16 },
    { 'i', 2, K_I16 },  { 'u', 4, K_U32 }, { 'i', 4, K_I32 }, { 'u', 8, K_U64 },
    { 'i', 8, K_I64 },  { 'f', 2, K_F16 }, { 'f', 4, K_F32 }, { 'f', 8, K_F64 },
};

/* Little-endian loads from possibly unaligned bytes. */
static uint64_t le(const unsigned char *p, int n)
{
    return msd_le(p, n);
}

/* One element at p (possibly unaligned, little-endian) as a float: integers and doubles
 * round to the nearest float (integers beyond 2^24 in magnitude lose low bits), bool is 0
 * or 1, float16 widens exactly. */
static float convert(const unsigned char *p, enum npy_kind k)
{
    switch (k) {
    case K_BOOL: return p[0] ? 1.0f : 0.0f;
    case K_U8: return (float)p[0];
    case K_I8: return (float)(int8_t)p[0];
    case K_U16: return (float)(uint16_t)le(p, 2);
    case K_I16: return (float)(int16_t)(uint16_t)le(p, 2);
    case K_U32: return (float)(uint32_t)le(p, 4);
    case K_I32: return (float)(int32_t)(uint32_t)le(p, 4);
    case K_U64: return (float)le(p, 8);
    case K_I64: return (float)(int64_t)le(p, 8);
    case K_F16: return msd_half_to_float((uint16_t)le(p, 2));
    case K_F32: {
        uint32_t b = (uint32_t)le(p, 4);
        float f;
        memcpy(&f, &b, 4);
        return f;
    }
    case K_F64: {
        uint64_t b = le(p, 8);
        double d;
        memcpy(&d, &b, 8);
        return (float)d;
    }
    }
    return 0.0f;
}

/* ---- header dict parser ----------------------------------------------------
 * Only the subset of Python literal syntax that NumPy writes: a dict of three known keys
 * whose values are a string, True or False, and a tuple of non-negative integers. Every
 * read checks s < end: the header is not NUL-terminated. */

typedef struct {
    const char *s, *end, *path;
} hdr;

static void skip_ws(hdr *h)
{
    while (h->s < h->end && (*h->s == ' ' || *h->s == '\t' || *h->s == '\n' || *h->s == '\r'))
        h->s++;
}

static int expect(hdr *h, char c)
{
    skip_ws(h);
    if (h->s >= h->end || *h->s != c)
        return msd_error(MSD_ERR_FORMAT, "load_npy: '%s': malformed header: expected '%c'",
                         h->path, c);
    h->s++;
    return MSD_OK;
}

/* A quoted Python string (no escapes needed in npy headers) into buf.
 * buf holds n bytes including the NUL: a longer string (or any backslash) is refused
 * rather than truncated. */
static int parse_str(hdr *h, char *buf, size_t n)
{
    skip_ws(h);
    if (h->s >= h->end || (*h->s != '\'' && *h->s != '"'))
        return msd_error(MSD_ERR_FORMAT, "load_npy: '%s': malformed header: expected a string",
                         h->path);
    char q = *h->s++;
    size_t len = 0;
    while (h->s < h->end && *h->s != q) {
        if (*h->s == '\\' || len + 1 >= n)
            return msd_error(MSD_ERR_FORMAT, "load_npy: '%s': unsupported header string",
                             h->path);
        buf[len++] = *h->s++;
    }
    if (h->s >= h->end)
        return msd_error(MSD_ERR_FORMAT, "load_npy: '%s': unterminated string in header",
                         h->path);
    h->s++;
    buf[len] = 0;
    return MSD_OK;
}

static int starts(hdr *h, const char *word)
{
    skip_ws(h);
    size_t n = strlen(word);
    if ((size_t)(h->end - h->s) >= n && memcmp(h->s, word, n) == 0) {
        h->s += n;
        return 1;
    }
    return 0;
}

/* (d0, d1, ...) with an optional trailing comma; dims as int64.
 * dims holds 32 entries (NumPy's own limit for a long time); () is a 0-dim array and a
 * 1-dim tuple is written (n,). Overflow is refused digit by digit, before it happens. */
static int parse_shape(hdr *h, int *ndim, long long *dims)
{
    int rc = expect(h, '(');
    if (rc)
        return rc;
    *ndim = 0;
    for (;;) {
        skip_ws(h);
        if (h->s < h->end && *h->s == ')') {
            h->s++;
            return MSD_OK;
        }
        if (h->s >= h->end || *h->s < '0' || *h->s > '9')
            return msd_error(MSD_ERR_FORMAT, "load_npy: '%s': malformed shape in header",
                             h->path);
        long long v = 0;
        while (h->s < h->end && *h->s >= '0' && *h->s <= '9') {
            if (v > (LLONG_MAX - 9) / 10)
                return msd_error(MSD_ERR_FORMAT, "load_npy: '%s': shape entry too large",
                                 h->path);
            v = v * 10 + (*h->s++ - '0');
        }
        if (h->s < h->end && *h->s == 'L') /* Python 2 long */
            h->s++;
        if (*ndim >= 32)
            return msd_error(MSD_ERR_FORMAT, "load_npy: '%s': shape has too many dims",
                             h->path);
        dims[(*ndim)++] = v;
        skip_ws(h);
        if (h->s < h->end && *h->s == ',') {
            h->s++;
        } else if (h->s >= h->end || *h->s != ')') {
            return msd_error(MSD_ERR_FORMAT, "load_npy: '%s': malformed shape in header",
                             h->path);
        }
    }
}

typedef struct {
    char descr[32];
    int fortran;
    int ndim;
    long long dims[32];
} npy_header;

/* Fills out from the dict; keys in any order, each required, an unknown key an error, and
 * nothing but padding after the closing brace. MSD_ERR_FORMAT naming the file. */
static int parse_header(hdr *h, npy_header *out)
{
    int seen_descr = 0, seen_fortran = 0, seen_shape = 0, rc;
    if ((rc = expect(h, '{')))
        return rc;
    for (;;) {
        skip_ws(h);
        if (h->s < h->end && *h->s == '}') {
            h->s++;
            break;
        }
        char key[32];
        if ((rc = parse_str(h, key, sizeof key)) || (rc = expect(h, ':')))
            return rc;
        if (strcmp(key, "descr") == 0) {
            skip_ws(h);
            if (h->s < h->end && *h->s == '[')
                return msd_error(MSD_ERR_FORMAT, "load_npy: '%s': structured dtypes are not "
                                 "supported", h->path);
            if ((rc = parse_str(h, out->descr, sizeof out->descr)))
                return rc;
            seen_descr = 1;
        } else if (strcmp(key, "fortran_order") == 0) {
            if (starts(h, "True"))
                out->fortran = 1;
            else if (starts(h, "False"))
                out->fortran = 0;
            else
                return msd_error(MSD_ERR_FORMAT, "load_npy: '%s': fortran_order is not True or "
                                 "False", h->path);
            seen_fortran = 1;
        } else if (strcmp(key, "shape") == 0) {
            if ((rc = parse_shape(h, &out->ndim, out->dims)))
                return rc;
            seen_shape = 1;
        } else {
            return msd_error(MSD_ERR_FORMAT, "load_npy: '%s': unexpected header key '%s'",
                             h->path, key);
        }
        skip_ws(h);
        if (h->s < h->end && *h->s == ',')
            h->s++;
        else if (h->s >= h->end || *h->s != '}')
            return msd_error(MSD_ERR_FORMAT, "load_npy: '%s': malformed header dict", h->path);
    }
    skip_ws(h);
    if (h->s != h->end)
        return msd_error(MSD_ERR_FORMAT, "load_npy: '%s': junk after the header dict", h->path);
    if (!seen_descr || !seen_fortran || !seen_shape)
        return msd_error(MSD_ERR_FORMAT, "load_npy: '%s': header lacks '%s'", h->path,
                         !seen_descr ? "descr" : !seen_fortran ? "fortran_order" : "shape");
    return MSD_OK;
}

/* Decodes a .npy file held in memory; path names it in messages.
 * buf: size bytes, the caller's. *out: a new tensor of the array's shape (0 to
 * MSD_MAX_DIMS dims). MSD_ERR_FORMAT for anything the file gets wrong, MSD_ERR_SHAPE or
 * MSD_ERR_MEM from msd_shape_check for a shape beyond the tensor limits. */
static int npy_decode(const unsigned char *buf, size_t size, const char *path, msd_tensor **out)
{
    int rc;
    if (size < 10 || memcmp(buf, "\x93NUMPY", 6) != 0) {
        return msd_error(MSD_ERR_FORMAT, "load_npy: '%s': not a .npy file (bad magic)", path);
    }
    /* buf[6], buf[7]: major, minor version; the minor only appears in the version error */
    int major = buf[6];
    size_t hlen, hstart;
    if (major == 1) {
        hlen = (size_t)le(buf + 8, 2);
        hstart = 10;
    } else if (major == 2 || major == 3) {
        if (size < 12) {
            return msd_error(MSD_ERR_FORMAT, "load_npy: '%s': truncated header", path);
        }
        hlen = (size_t)le(buf + 8, 4);
        hstart = 12;
    } else {
        int minor = buf[7];
        return msd_error(MSD_ERR_FORMAT, "load_npy: '%s': unsupported format version %d.%d",
                         path, major, minor);
    }
    if (hlen > size - hstart) {
        return msd_error(MSD_ERR_FORMAT, "load_npy: '%s': header length %zu runs past the end "
                         "of the %zu-byte file", path, hlen, size);
    }
    npy_header nh;
    memset(&nh, 0, sizeof nh);
    hdr h = { (const char *)buf + hstart, (const char *)buf + hstart + hlen, path };
    if ((rc = parse_header(&h, &nh))) {
        return rc;
    }
    /* dtype: byte-order character, kind character, item size in bytes ("<f4", "|u1") */
    const char *d = nh.descr;
    int n = (int)strlen(d), found = -1;
    if (n >= 3 && strchr("<>|=", d[0])) {
        char *endp;
        long sz = strtol(d + 2, &endp, 10);
        if (*endp == 0)
            for (int i = 0; i < (int)(sizeof npy_types / sizeof npy_types[0]); i++)
                if (npy_types[i].code == d[1] && npy_types[i].size == sz)
                    found = i;
        /* byte order matters only past one byte; '=' (native) is read as little-endian,
         * the order of the x86-64 and ARM64 hosts minisd targets */
        if (found >= 0 && d[0] == '>' && sz > 1) {
            return msd_error(MSD_ERR_FORMAT, "load_npy: '%s': big-endian dtype '%s' is not "
                             "supported; save it with arr.astype('<%c%ld')", path, d, d[1], sz);
        }
    }
    if (found < 0) {
        return msd_error(MSD_ERR_FORMAT, "load_npy: '%s': unsupported dtype '%s' (supported: "
                         "b1 u1 i1 u2 i2 u4 i4 u8 i8 f2 f4 f8, little-endian)", path, d);
    }
    if (nh.ndim > MSD_MAX_DIMS) {
        return msd_error(MSD_ERR_FORMAT, "load_npy: '%s': array has %d dims, at most %d "
                         "supported", path, nh.ndim, MSD_MAX_DIMS);
    }
    /* numel saturates at ULLONG_MAX instead of wrapping (numel > 0 guards the division;
     * after a zero dim numel stays 0), so an overflow cannot pass the data-size check */
    int shape[MSD_MAX_DIMS];
    unsigned long long numel = 1;
    for (int i = 0; i < nh.ndim; i++) {
        if (nh.dims[i] > INT_MAX) {
            return msd_error(MSD_ERR_FORMAT, "load_npy: '%s': shape entry %d (%lld) too large",
                             path, i, nh.dims[i]);
        }
        shape[i] = (int)nh.dims[i];
        numel = numel > 0 && (unsigned long long)shape[i] > ULLONG_MAX / numel
                    ? ULLONG_MAX : numel * (unsigned long long)shape[i];
    }
    char what[512];
    snprintf(what, sizeof what, "load_npy: '%s'", path);
    if ((rc = msd_shape_check(what, nh.ndim, shape))) {
        return rc;
    }
    /* Fortran and C order are the same bytes for 0 and 1 dims */
    if (nh.fortran && nh.ndim > 1) {
        return msd_error(MSD_ERR_FORMAT, "load_npy: '%s' is Fortran-ordered; save it with "
                         "np.ascontiguousarray", path);
    }
    /* the data starts right after the header; bytes after the data are ignored, as
     * NumPy does. Divided rather than multiplied, so numel * isz cannot overflow */
    size_t isz = (size_t)npy_types[found].size, dstart = hstart + hlen;
    if (numel > (size - dstart) / isz) {
        return msd_error(MSD_ERR_FORMAT, "load_npy: '%s': truncated: the header says %llu "
                         "elements of %zu bytes, the file holds %zu bytes of data", path, numel,
                         isz, size - dstart);
    }
    msd_tensor *t = msd_tensor_empty(nh.ndim, shape);
    if (!t) {
        return MSD_ERR_MEM;
    }
    float *o = msd_tensor_data(t);
    const unsigned char *p = buf + dstart;
    enum npy_kind kind = npy_types[found].kind;
    for (size_t i = 0; i < (size_t)numel; i++)
        o[i] = convert(p + i * isz, kind);
    *out = t;
    return MSD_OK;
}

int msd_npy_load(const char *path, msd_tensor **out)
{
    *out = NULL;
    unsigned char *buf;
    size_t size;
    int rc = msd_file_read_all("load_npy", path, &buf, &size);
    if (rc)
        return rc;
    rc = npy_decode(buf, size, path, out);
    free(buf);
    return rc;
}

int msd_npy_load_mem(const char *name, const unsigned char *data, size_t size, msd_tensor **out)
{
    *out = NULL;
    return npy_decode(data, size, name ? name : "(npy bytes)", out);
}

/* ---- writer ------------------------------------------------------------------ */

struct npy_job {
    const msd_tensor *t;
    const char *path;
};

/* Writes t as '<f4' in C order: the 10-byte preamble (magic, version 1.0, 2-byte header
 * length; 2.0 and a 4-byte length only if the padded header passed 65535 bytes, which a
 * 4-dim shape never does), the dict, padding, then the floats. Write errors are collected
 * by ferror at the end (MSD_ERR_IO); msd_file_write_atomic removes the partial file. */
static int write_npy(FILE *f, void *ctx)
{
    struct npy_job *job = ctx;
    const msd_tensor *t = job->t;
    char dict[256];
    int n = snprintf(dict, sizeof dict, "{'descr': '<f4', 'fortran_order': False, 'shape': (");
    for (int i = 0; i < t->ndim; i++)
        n += snprintf(dict + n, sizeof dict - (size_t)n, i ? ", %d" : "%d", t->shape[i]);
    /* a 1-tuple needs its comma in Python: (3,) not (3) */
    n += snprintf(dict + n, sizeof dict - (size_t)n, t->ndim == 1 ? ",), }" : "), }");
    /* pad with spaces + '\n' so that magic + version + length + header is a multiple of 64
     * (NumPy's ARRAY_ALIGN, so the data can be memory-mapped aligned); hl counts the
     * dict, the padding and the final '\n' */
    size_t pre = 10, hl = (size_t)n + 1;
    int major = 1;
    if ((pre + hl + 63) / 64 * 64 - pre > 65535) {
        major = 2;
        pre = 12;
    }
    size_t total = (pre + hl + 63) / 64 * 64;
    hl = total - pre;
    unsigned char head[16] = { 0x93, 'N', 'U', 'M', 'P', 'Y', (unsigned char)major, 0 };
    for (int i = 0; i < (major == 1 ? 2 : 4); i++)
        head[8 + i] = (unsigned char)(hl >> (8 * i));
    fwrite(head, 1, pre, f);
    fwrite(dict, 1, (size_t)n, f);
    for (size_t i = (size_t)n; i + 1 < hl; i++)
        fputc(' ', f);
    fputc('\n', f);
    /* each float's bits stored byte by byte, least significant first: the file says '<f4'
     * on any host; 1024 floats per fwrite */
    const float *d = msd_tensor_data(t);
    size_t numel = msd_tensor_numel(t);
    unsigned char tmp[4096];
    for (size_t i = 0; i < numel;) {
        size_t k = 0;
        for (; k < sizeof tmp / 4 && i < numel; k++, i++) {
            uint32_t b;
            memcpy(&b, &d[i], 4);
            for (int j = 0; j < 4; j++)
                tmp[k * 4 + (size_t)j] = (unsigned char)(b >> (8 * j));
        }
        if (fwrite(tmp, 4, k, f) != k)
            break;
    }
    if (ferror(f))
        return msd_error(MSD_ERR_IO, "save_npy: '%s': write error", job->path);
    return MSD_OK;
}

int msd_npy_save(const char *path, const msd_tensor *t)
{
    struct npy_job job = { t, path };
    return msd_file_write_atomic(path, write_npy, &job);
}
