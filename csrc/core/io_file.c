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
        int rc = msd_error(MSD_ERR_IO, "write '%s': cannot create '%s': %s", path, tmp,
                           strerror(errno));
        free(tmp);
        return rc;
    }
    int rc = fn(f, ctx);
    if (rc == MSD_OK && (fflush(f) != 0 || ferror(f)))
        rc = msd_error(MSD_ERR_IO, "write '%s': %s", path, strerror(errno));
    if (rc == MSD_OK && fsync(fileno(f)) != 0)
        rc = msd_error(MSD_ERR_IO, "write '%s': fsync: %s", path, strerror(errno));
    if (fclose(f) != 0 && rc == MSD_OK)
        rc = msd_error(MSD_ERR_IO, "write '%s': close: %s", path, strerror(errno));
    if (rc == MSD_OK && rename(tmp, path) != 0)
        rc = msd_error(MSD_ERR_IO, "write '%s': cannot rename '%s' over it: %s", path, tmp,
                       strerror(errno));
    if (rc != MSD_OK)
        remove(tmp);
    free(tmp);
    return rc;
}
