/* minisd: whole-file reads and atomic writes shared by the file formats. */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io.h"

int msd_file_read_all(const char *what, const char *path, unsigned char **data, size_t *size)
{
    *data = NULL;
    *size = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return msd_error(MSD_ERR_IO, "%s: cannot open '%s': %s", what, path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fclose(f);
        return msd_error(MSD_ERR_IO, "%s: '%s' is not a regular file", what, path);
    }
    size_t n = (size_t)sb.st_size;
    /* +1 so that an empty file still gets a valid, distinct buffer */
    unsigned char *buf = malloc(n + 1);
    if (!buf) {
        fclose(f);
        return msd_error(MSD_ERR_MEM, "%s: '%s': out of memory for %zu bytes", what, path, n);
    }
    size_t got = fread(buf, 1, n, f);
    int err = ferror(f);
    fclose(f);
    if (err || got != n) {
        free(buf);
        return msd_error(MSD_ERR_IO, "%s: error reading '%s' (%zu of %zu bytes)", what, path, got,
                         n);
    }
    *data = buf;
    *size = n;
    return MSD_OK;
}

/* IEEE 754 binary16 -> float32, exact for every value (subnormals, inf, NaN). */
float msd_half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else { /* subnormal: normalise the mantissa */
        int e = -1;
        do {
            e++;
            man <<= 1;
        } while (!(man & 0x400u));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

float msd_bf16_to_float(uint16_t b)
{
    uint32_t bits = (uint32_t)b << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* float32 -> binary16, rounding to nearest, ties to even (as numpy and PyTorch do):
 * values from 65520 up (the midpoint above 65504, the largest half) become inf, those
 * below 2^-14 subnormals, a NaN stays a (quiet) NaN. */
uint16_t msd_half_from_float(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)(u >> 16 & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u)
        return (uint16_t)(sign | 0x7e00u | (a >> 13 & 0x1ffu));
    if (a >= 0x477ff000u) /* 65520 and up, inf included */
        return (uint16_t)(sign | 0x7c00u);
    if (a < 0x38800000u) { /* below 2^-14: m 2^-24 with m = a 2^24 rounded to even */
        float v;
        memcpy(&v, &a, 4);
        v *= 16777216.0f; /* exact: a power of two, and v < 1024 */
        /* adding and taking away 2^23 rounds v (< 2^23) to an integer, ties to even, in
         * the default rounding mode; m = 1024 is the bit pattern of 2^-14, also right */
        uint32_t m = (uint32_t)((v + 8388608.0f) - 8388608.0f);
        return (uint16_t)(sign | m);
    }
    uint32_t h = ((a >> 23) - 112u) << 10 | (a >> 13 & 0x3ffu);
    uint32_t rest = a & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u)))
        h++; /* a carry into the exponent is the right rounding too */
    return (uint16_t)(sign | h);
}

/* float32 -> bfloat16, rounding to nearest, ties to even, subnormals kept (as PyTorch's
 * tensor.to(torch.bfloat16)); a NaN stays a (quiet) NaN. */
uint16_t msd_bf16_round(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)(u >> 16 | 0x0040u);
    u += 0x7fffu + (u >> 16 & 1u);
    return (uint16_t)(u >> 16);
}

/* Distinguishes temporary names of concurrent writers in one process. */
static atomic_uint tmp_counter;

int msd_file_write_atomic(const char *path, msd_write_fn fn, void *ctx)
{
    size_t n = strlen(path) + 64;
    char *tmp = malloc(n);
    if (!tmp)
        return msd_error(MSD_ERR_MEM, "write '%s': out of memory", path);
    snprintf(tmp, n, "%s.tmp.%ld.%u", path, (long)getpid(), atomic_fetch_add(&tmp_counter, 1));
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        /* the message names the user's file: the temporary name is ours */
        int rc = msd_error(MSD_ERR_IO, "cannot write '%s': %s", path,
                           errno == ENOENT ? "its folder does not exist" : strerror(errno));
        free(tmp);
        return rc;
    }
    int rc = fn(f, ctx);
    if (rc == MSD_OK && (fflush(f) != 0 || ferror(f)))
        rc = msd_error(MSD_ERR_IO, "cannot write '%s': %s", path, strerror(errno));
    if (rc == MSD_OK && fsync(fileno(f)) != 0)
        rc = msd_error(MSD_ERR_IO, "cannot write '%s': fsync: %s", path, strerror(errno));
    if (fclose(f) != 0 && rc == MSD_OK)
        rc = msd_error(MSD_ERR_IO, "cannot write '%s': close: %s", path, strerror(errno));
    if (rc == MSD_OK && rename(tmp, path) != 0)
        rc = msd_error(MSD_ERR_IO, "cannot write '%s' (putting the new file in its place): %s",
                       path, strerror(errno));
    if (rc != MSD_OK)
        remove(tmp);
    free(tmp);
    return rc;
}
