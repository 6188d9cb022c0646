/* minisd: tensor files: .npy, safetensors and PNG.
 *
 * Every reader loads the whole file, then bounds-checks every length and
 * offset of its header against the file size before it allocates anything,
 * so a corrupt or lying file gives MSD_ERR_FORMAT with a message that names
 * the file and the problem, never a crash or a huge allocation. A missing or
 * unreadable file gives MSD_ERR_IO. Values are converted to float32.
 *
 * Every writer is atomic (msd_file_write_atomic): the data goes to a
 * temporary file in the target's directory, is flushed and fsync'ed, then
 * renamed over the target, so the target is never half-written; on failure
 * the temporary file is removed and an existing target is left untouched. */
#ifndef MSD_IO_H
#define MSD_IO_H

#include <stdint.h>
#include <stdio.h>

#include "tensor.h"

/* ---- atomic writes ------------------------------------------------------ */

/* Writes the whole file through f; returns MSD_OK or a negative code (with
 * msd_error set). Need not flush or close f. */
typedef int (*msd_write_fn)(FILE *f, void *ctx);

/* Creates "<path>.tmp.<pid>.<n>", calls fn on it, flushes, fsyncs, closes
 * and renames it to path. On any failure (fn's, or the system's) the
 * temporary file is removed, path is not touched, and the error is
 * returned (MSD_ERR_IO for system failures, naming path). */
int msd_file_write_atomic(const char *path, msd_write_fn fn, void *ctx);

/* Reads a whole file into a new malloc'd buffer (*data, free() it) of
 * *size bytes. MSD_ERR_IO naming `what` and path when it cannot be read. */
int msd_file_read_all(const char *what, const char *path, unsigned char **data, size_t *size);

/* IEEE 754 binary16 (exact, incl. subnormals, inf, NaN) and bfloat16 bit
 * patterns to float32. */
float msd_half_to_float(uint16_t h);
float msd_bf16_to_float(uint16_t b);

/* float32 to binary16 and to bfloat16, rounding to nearest with ties to even; the
 * subnormals of each kept, NaN kept (quiet), binary16 overflow to inf from 65520 up.
 * (msd_bf16_from_float in conv_amx.h flushes subnormals, as the AMX conversion does;
 * files use this one, as PyTorch does.) */
uint16_t msd_half_from_float(float f);
uint16_t msd_bf16_round(float f);

/* ---- .npy --------------------------------------------------------------- */

/* Loads a NumPy .npy file (format versions 1.0, 2.0 and 3.0) into a new
 * float32 tensor *out of the array's shape (0 to MSD_MAX_DIMS dims).
 * dtypes: |b1 |u1 |i1 <u2 <i2 <u4 <i4 <u8 <i8 <f2 <f4 <f8 (1-byte types
 * with any byte-order character). Errors (MSD_ERR_FORMAT, naming the
 * file): big-endian data, Fortran order ("save it with
 * np.ascontiguousarray"), structured or other dtypes, more than
 * MSD_MAX_DIMS dims, a malformed header, data shorter than the header
 * says. Bytes after the data are ignored, as NumPy does. */
int msd_npy_load(const char *path, msd_tensor **out);
/* The same from a file's bytes in memory; name (or "(npy bytes)") stands for the path in
 * messages. */
int msd_npy_load_mem(const char *name, const unsigned char *data, size_t size, msd_tensor **out);

/* Saves t as a little-endian float32 ('<f4'), C-order .npy file: format
 * 1.0, or 2.0 if the header does not fit in 65535 bytes; the header is
 * padded with spaces and ends in '\n' so the data starts at a multiple of
 * 64 bytes, as NumPy writes it. Atomic. */
int msd_npy_save(const char *path, const msd_tensor *t);

/* ---- safetensors ---------------------------------------------------------- */

/* Element types of a safetensors file. Loading accepts all of them;
 * saving writes MSD_DTYPE_F32, MSD_DTYPE_F16, MSD_DTYPE_BF16 or MSD_DTYPE_I64. */
typedef enum msd_dtype {
    MSD_DTYPE_F32,
    MSD_DTYPE_F64,
    MSD_DTYPE_F16,
    MSD_DTYPE_BF16,
    MSD_DTYPE_I64,
    MSD_DTYPE_I32,
    MSD_DTYPE_U8,
    MSD_DTYPE_COUNT
} msd_dtype;

/* The file's spelling ("F32", "BF16"...), or "?" out of range. */
const char *msd_dtype_name(msd_dtype d);
/* Bytes per element. */
size_t msd_dtype_size(msd_dtype d);

/* An in-memory safetensors file: named tensors (each with its file dtype)
 * and the string map of "__metadata__". The struct owns its strings and one
 * reference of each tensor. Order of the arrays: insertion order (load:
 * sorted by name). */
typedef struct msd_safetensors {
    int count, cap;
    char **names;
    msd_tensor **tensors;
    msd_dtype *dtypes; /* load: the dtype in the file; save: F32, F16, BF16 or I64 */
    int meta_count, meta_cap;
    char **meta_keys, **meta_values;
} msd_safetensors;

/* An empty set (also what msd_safetensors_free leaves). */
void msd_safetensors_init(msd_safetensors *st);
/* Releases everything held and re-initialises st. */
void msd_safetensors_free(msd_safetensors *st);

/* Adds a tensor under a copy of name and retains t. dtype is what save
 * writes: MSD_DTYPE_F32; MSD_DTYPE_F16 or MSD_DTYPE_BF16 (rounded to
 * nearest even; save refuses a finite value that would round to infinity);
 * or MSD_DTYPE_I64 for integer data (save checks that every value is
 * integral). Errors: MSD_ERR_ARG for an empty or duplicate name,
 * "__metadata__", or another dtype; MSD_ERR_MEM. */
int msd_safetensors_add(msd_safetensors *st, const char *name, msd_tensor *t, msd_dtype dtype);
/* Sets (or replaces) a metadata entry; key and value are copied. */
int msd_safetensors_set_meta(msd_safetensors *st, const char *key, const char *value);
/* Index of the tensor called name, or -1. */
int msd_safetensors_find(const msd_safetensors *st, const char *name);
/* The metadata value of key, or NULL. */
const char *msd_safetensors_get_meta(const msd_safetensors *st, const char *key);

/* Loads a safetensors file into st (which it initialises first; on error
 * st is left empty). Accepts F32, F64, F16, BF16, I64, I32, U8, converting
 * to float32 (I64 and F64 round to the nearest float). The header is
 * parsed with a strict JSON parser (depth limit 32) and validated: header
 * length within the file, each entry {dtype, shape, data_offsets} with a
 * known dtype, a sane shape (at most MSD_MAX_DIMS dims, MSD_MAX_NUMEL
 * elements), offsets inside the data section with end - begin ==
 * numel * dtype size, no two ranges overlapping, "__metadata__" a map of
 * strings. MSD_ERR_FORMAT (naming the file and, where there is one, the
 * tensor) otherwise. */
int msd_safetensors_load(const char *path, msd_safetensors *st);
/* The same from the size bytes at buf (the caller's; not kept), e.g. a file
 * a game read from its archive; name stands for the file in messages. */
int msd_safetensors_load_mem(const char *name, const unsigned char *buf, size_t size,
                             msd_safetensors *st);

/* Saves st: compact JSON header with "__metadata__" first (when non-empty),
 * then the tensors in data order: by element size, largest first (I64, then
 * F32, then F16 and BF16), each group sorted by name (so every tensor's data
 * is aligned to its element size, as the reference writer orders by
 * alignment then name); the header is
 * padded with spaces to a multiple of 8 bytes, as the reference writer does.
 * MSD_ERR_ARG (naming the tensor) when an I64 tensor holds a value that is
 * not an integer or out of int64 range, or an F16/BF16 one a finite value
 * that rounds to infinity. Atomic. */
int msd_safetensors_save(const char *path, const msd_safetensors *st);

/* ---- PNG (libpng's simplified API) ---------------------------------------- */

/* Loads an 8-bit (or 16-bit, reduced to 8) PNG into a new tensor (C, H, W)
 * with values in [0, 1] (byte / 255). C follows the file: 1 for gray, 3 for
 * RGB, 4 for anything with alpha (gray + alpha is expanded to RGBA, gray
 * copied into R, G and B); palette images become 3 or 4. MSD_ERR_IO /
 * MSD_ERR_FORMAT naming the file (missing, not a PNG, corrupt, or a header
 * claiming more pixels than the file could plausibly hold). */
int msd_png_load(const char *path, msd_tensor **out);
/* The same from a file's bytes in memory; name (or "(PNG bytes)") stands for the path. */
int msd_png_load_mem(const char *name, const unsigned char *data, size_t size, msd_tensor **out);

/* Saves t (C, H, W) with C = 1 (gray), 3 (RGB) or 4 (RGBA) as an 8-bit PNG;
 * each value is clamped to [0, 1] and stored as round(v * 255) (NaN -> 0).
 * MSD_ERR_SHAPE for other shapes. Atomic. */
int msd_png_save(const char *path, const msd_tensor *t);

#endif
