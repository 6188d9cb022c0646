/* minisd: safetensors files.
 *
 * Layout: an 8-byte little-endian header length N, N bytes of JSON
 * {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]},
 *  ..., "__metadata__": {"key": "value", ...}}, then the data section;
 * offsets are relative to its start. The JSON is parsed by the small strict
 * parser of json.c into a tree, which is then validated entry by entry. */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bytes.h"
#include "io.h"
#include "json.h"

/* The largest header read: a sprite model's is about 15 KB, a training checkpoint's 60 KB.
 * (The reference implementation allows 100 MB, whose parse would take gigabytes.) */
#define HEADER_MAX (4u << 20)

static const struct {
    const char *name;
    size_t size;
} dtypes[MSD_DTYPE_COUNT] = {
    [MSD_DTYPE_F32] = { "F32", 4 }, [MSD_DTYPE_F64] = { "F64", 8 },
    [MSD_DTYPE_F16] = { "F16", 2 }, [MSD_DTYPE_BF16] = { "BF16", 2 },
    [MSD_DTYPE_I64] = { "I64", 8 }, [MSD_DTYPE_I32] = { "I32", 4 },
    [MSD_DTYPE_U8] = { "U8", 1 },
};

const char *msd_dtype_name(msd_dtype d)
{
    return (unsigned)d < MSD_DTYPE_COUNT ? dtypes[d].name : "?";
}

size_t msd_dtype_size(msd_dtype d)
{
    return (unsigned)d < MSD_DTYPE_COUNT ? dtypes[d].size : 0;
}

/* ---- the in-memory set ------------------------------------------------------ */

void msd_safetensors_init(msd_safetensors *st)
{
    memset(st, 0, sizeof *st);
}

void msd_safetensors_free(msd_safetensors *st)
{
    for (int i = 0; i < st->count; i++) {
        free(st->names[i]);
        msd_tensor_release(st->tensors[i]);
    }
    for (int i = 0; i < st->meta_count; i++) {
        free(st->meta_keys[i]);
        free(st->meta_values[i]);
    }
    free(st->names);
    free(st->tensors);
    free(st->dtypes);
    free(st->meta_keys);
    free(st->meta_values);
    msd_safetensors_init(st);
}

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

int msd_safetensors_find(const msd_safetensors *st, const char *name)
{
    for (int i = 0; i < st->count; i++)
        if (strcmp(st->names[i], name) == 0)
            return i;
    return -1;
}

const char *msd_safetensors_get_meta(const msd_safetensors *st, const char *key)
{
    for (int i = 0; i < st->meta_count; i++)
        if (strcmp(st->meta_keys[i], key) == 0)
            return st->meta_values[i];
    return NULL;
}

/* Grows the three tensor arrays to hold one more entry. */
static int grow_tensors(msd_safetensors *st)
{
    if (st->count < st->cap)
        return MSD_OK;
    int cap = st->cap ? st->cap * 2 : 16;
    char **n = realloc(st->names, (size_t)cap * sizeof *n);
    if (n)
        st->names = n;
    msd_tensor **t = realloc(st->tensors, (size_t)cap * sizeof *t);
    if (t)
        st->tensors = t;
    msd_dtype *d = realloc(st->dtypes, (size_t)cap * sizeof *d);
    if (d)
        st->dtypes = d;
    if (!n || !t || !d)
        return msd_error(MSD_ERR_MEM, "safetensors: out of memory");
    st->cap = cap;
    return MSD_OK;
}

/* Appends without checks; takes over t's reference on success. */
static int push_tensor(msd_safetensors *st, const char *name, msd_tensor *t, msd_dtype dtype)
{
    int rc = grow_tensors(st);
    if (rc)
        return rc;
    char *copy = dup_str(name);
    if (!copy)
        return msd_error(MSD_ERR_MEM, "safetensors: out of memory");
    st->names[st->count] = copy;
    st->tensors[st->count] = t;
    st->dtypes[st->count] = dtype;
    st->count++;
    return MSD_OK;
}

int msd_safetensors_add(msd_safetensors *st, const char *name, msd_tensor *t, msd_dtype dtype)
{
    if (!name[0] || strcmp(name, "__metadata__") == 0)
        return msd_error(MSD_ERR_ARG, "safetensors: invalid tensor name '%s'", name);
    if (msd_safetensors_find(st, name) >= 0)
        return msd_error(MSD_ERR_ARG, "safetensors: duplicate tensor name '%s'", name);
    if (dtype != MSD_DTYPE_F32 && dtype != MSD_DTYPE_I64 && dtype != MSD_DTYPE_F16 &&
        dtype != MSD_DTYPE_BF16)
        return msd_error(MSD_ERR_ARG, "safetensors: tensor '%s': can save as F32, F16, BF16 or "
                         "I64, not %s", name, msd_dtype_name(dtype));
    int rc = push_tensor(st, name, t, dtype);
    if (rc == MSD_OK)
        msd_tensor_retain(t);
    return rc;
}

/* Appends key = value (the key must not be there yet). */
static int meta_push(msd_safetensors *st, const char *key, char *v)
{
    if (st->meta_count == st->meta_cap) {
        int cap = st->meta_cap ? st->meta_cap * 2 : 8;
        char **k = realloc(st->meta_keys, (size_t)cap * sizeof *k);
        if (k)
            st->meta_keys = k;
        char **vv = realloc(st->meta_values, (size_t)cap * sizeof *vv);
        if (vv)
            st->meta_values = vv;
        if (!k || !vv) {
            free(v);
            return msd_error(MSD_ERR_MEM, "safetensors: out of memory");
        }
        st->meta_cap = cap;
    }
    char *k = dup_str(key);
    if (!k) {
        free(v);
        return msd_error(MSD_ERR_MEM, "safetensors: out of memory");
    }
    st->meta_keys[st->meta_count] = k;
    st->meta_values[st->meta_count] = v;
    st->meta_count++;
    return MSD_OK;
}

int msd_safetensors_set_meta(msd_safetensors *st, const char *key, const char *value)
{
    char *v = dup_str(value);
    if (!v)
        return msd_error(MSD_ERR_MEM, "safetensors: out of memory");
    for (int i = 0; i < st->meta_count; i++)
        if (strcmp(st->meta_keys[i], key) == 0) {
            free(st->meta_values[i]);
            st->meta_values[i] = v;
            return MSD_OK;
        }
    return meta_push(st, key, v);
}

/* Loading: the header's keys are known to be distinct (the JSON parser refuses a key
 * twice), so each is appended without the lookup that would make many keys quadratic. */
static int meta_add_new(msd_safetensors *st, const char *key, const char *value)
{
    char *v = dup_str(value);
    if (!v)
        return msd_error(MSD_ERR_MEM, "safetensors: out of memory");
    return meta_push(st, key, v);
}

/* ---- loading ---------------------------------------------------------------------
 * Nothing is allocated for a tensor until the whole header has been checked: every entry's
 * dtype, shape (within MSD_MAX_NUMEL) and offsets (inside the data section, end - begin
 * equal to numel * the dtype's size), then the entries sorted by offset so that two
 * tensors can not share bytes. Only then are the tensors made and the values converted to
 * float32, so a file that lies about its sizes costs no more memory than the file. */

typedef struct {
    const char *name;
    msd_dtype dtype;
    int ndim, shape[MSD_MAX_DIMS];
    unsigned long long begin, end;
} entry;

static int cmp_begin(const void *a, const void *b)
{
    const entry *x = *(const entry *const *)a, *y = *(const entry *const *)b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return (x->end > y->end) - (x->end < y->end);
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(((const entry *)a)->name, ((const entry *)b)->name);
}

/* Checks one tensor entry of the header against the data size. */
static int check_entry(const char *path, const char *name, const msd_jval *v,
                       unsigned long long data_size, entry *e)
{
    e->name = name;
    if (v->type != J_OBJ)
        return msd_error(MSD_ERR_FORMAT, "load_safetensors: '%s': tensor '%s': entry is not an "
                         "object", path, name);
    for (int i = 0; i < v->n; i++)
        if (strcmp(v->keys[i], "dtype") && strcmp(v->keys[i], "shape") &&
            strcmp(v->keys[i], "data_offsets"))
            return msd_error(MSD_ERR_FORMAT, "load_safetensors: '%s': tensor '%s': unexpected "
                             "key '%s'", path, name, v->keys[i]);
    const msd_jval *dt = msd_json_get(v, "dtype"), *sh = msd_json_get(v, "shape");
    const msd_jval *off = msd_json_get(v, "data_offsets");
    if (!dt || !sh || !off)
        return msd_error(MSD_ERR_FORMAT, "load_safetensors: '%s': tensor '%s': missing '%s'",
                         path, name, !dt ? "dtype" : !sh ? "shape" : "data_offsets");
    if (dt->type != J_STR)
        return msd_error(MSD_ERR_FORMAT, "load_safetensors: '%s': tensor '%s': dtype is not a "
                         "string", path, name);
    int d = -1;
    for (int i = 0; i < MSD_DTYPE_COUNT; i++)
        if (strcmp(dt->str, dtypes[i].name) == 0)
            d = i;
    if (d < 0)
        return msd_error(MSD_ERR_FORMAT, "load_safetensors: '%s': tensor '%s': unsupported dtype "
                         "'%s' (supported: F32 F64 F16 BF16 I64 I32 U8)", path, name, dt->str);
    e->dtype = (msd_dtype)d;
    if (sh->type != J_ARR)
        return msd_error(MSD_ERR_FORMAT, "load_safetensors: '%s': tensor '%s': shape is not an "
                         "array", path, name);
    if (sh->n > MSD_MAX_DIMS)
        return msd_error(MSD_ERR_FORMAT, "load_safetensors: '%s': tensor '%s': %d dims, at "
                         "most %d supported", path, name, sh->n, MSD_MAX_DIMS);
    e->ndim = sh->n;
    for (int i = 0; i < sh->n; i++) {
        const msd_jval *x = &sh->items[i];
        if (x->type != J_NUM || !x->is_uint || x->uval > INT_MAX)
            return msd_error(MSD_ERR_FORMAT, "load_safetensors: '%s': tensor '%s': shape entry "
                             "%d is not an integer in [0, %d]", path, name, i, INT_MAX);
        e->shape[i] = (int)x->uval;
    }
    char what[512];
    snprintf(what, sizeof what, "load_safetensors: '%s': tensor '%s'", path, name);
    int rc = msd_shape_check(what, e->ndim, e->shape);
    if (rc)
        return rc;
    if (off->type != J_ARR || off->n != 2 || off->items[0].type != J_NUM ||
        off->items[1].type != J_NUM || !off->items[0].is_uint || !off->items[1].is_uint)
        return msd_error(MSD_ERR_FORMAT, "load_safetensors: '%s': tensor '%s': data_offsets is "
                         "not [begin, end] of two non-negative integers", path, name);
    e->begin = off->items[0].uval;
    e->end = off->items[1].uval;
    if (e->begin > e->end || e->end > data_size)
        return msd_error(MSD_ERR_FORMAT, "load_safetensors: '%s': tensor '%s': data_offsets "
                         "[%llu, %llu] outside the %llu-byte data section", path, name, e->begin,
                         e->end, data_size);
    unsigned long long numel = 1; /* <= MSD_MAX_NUMEL after msd_shape_check */
    for (int i = 0; i < e->ndim; i++)
        numel *= (unsigned long long)e->shape[i];
    if (e->end - e->begin != numel * dtypes[d].size)
        return msd_error(MSD_ERR_FORMAT, "load_safetensors: '%s': tensor '%s': %llu bytes of "
                         "data for %llu elements of %s (%llu bytes expected)", path, name,
                         e->end - e->begin, numel, dtypes[d].name, numel * dtypes[d].size);
    return MSD_OK;
}

static uint64_t le64(const unsigned char *p)
{
    return msd_le(p, 8);
}

static void convert(float *o, const unsigned char *p, size_t n, msd_dtype d)
{
    for (size_t i = 0; i < n; i++) {
        switch (d) {
        case MSD_DTYPE_F32: {
            uint32_t b = (uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 |
                         (uint32_t)p[4 * i + 2] << 16 | (uint32_t)p[4 * i + 3] << 24;
            memcpy(&o[i], &b, 4);
            break;
        }
        case MSD_DTYPE_F64: {
            uint64_t b = le64(p + 8 * i);
            double x;
            memcpy(&x, &b, 8);
            o[i] = (float)x;
            break;
        }
        case MSD_DTYPE_F16:
            o[i] = msd_half_to_float((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
            break;
        case MSD_DTYPE_BF16:
            o[i] = msd_bf16_to_float((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
            break;
        case MSD_DTYPE_I64:
            o[i] = (float)(int64_t)le64(p + 8 * i);
            break;
        case MSD_DTYPE_I32: {
            uint32_t b = (uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 |
                         (uint32_t)p[4 * i + 2] << 16 | (uint32_t)p[4 * i + 3] << 24;
            o[i] = (float)(int32_t)b;
            break;
        }
        case MSD_DTYPE_U8:
            o[i] = (float)p[i];
            break;
        default:
            break;
        }
    }
}

/* Validates the parsed header and fills st; buf/size is the whole file. */
static int load_entries(const char *path, const msd_jval *root, const unsigned char *data,
                        unsigned long long data_size, msd_safetensors *st)
{
    if (root->type != J_OBJ)
        return msd_error(MSD_ERR_FORMAT, "load_safetensors: '%s': header is not a JSON object",
                         path);
    entry *es = calloc((size_t)root->n + 1, sizeof *es);
    entry **by_begin = calloc((size_t)root->n + 1, sizeof *by_begin);
    int rc = MSD_OK, n = 0;
    if (!es || !by_begin)
        rc = msd_error(MSD_ERR_MEM, "load_safetensors: '%s': out of memory", path);
    for (int i = 0; rc == MSD_OK && i < root->n; i++) {
        const char *key = root->keys[i];
        const msd_jval *v = &root->items[i];
        if (strcmp(key, "__metadata__") == 0) {
            if (v->type == J_NULL)
                continue;
            if (v->type != J_OBJ) {
                rc = msd_error(MSD_ERR_FORMAT, "load_safetensors: '%s': __metadata__ is not an "
                               "object", path);
                break;
            }
            for (int k = 0; rc == MSD_OK && k < v->n; k++) {
                if (v->items[k].type != J_STR)
                    rc = msd_error(MSD_ERR_FORMAT, "load_safetensors: '%s': __metadata__ value "
                                   "of '%s' is not a string", path, v->keys[k]);
                else
                    rc = meta_add_new(st, v->keys[k], v->items[k].str);
            }
            continue;
        }
        if (!key[0]) {
            rc = msd_error(MSD_ERR_FORMAT, "load_safetensors: '%s': empty tensor name", path);
            break;
        }
        rc = check_entry(path, key, v, data_size, &es[n]);
        if (rc == MSD_OK) {
            by_begin[n] = &es[n];
            n++;
        }
    }
    if (rc == MSD_OK && n > 1) {
        qsort(by_begin, (size_t)n, sizeof *by_begin, cmp_begin);
        for (int i = 1; i < n; i++)
            if (by_begin[i]->begin < by_begin[i - 1]->end) {
                rc = msd_error(MSD_ERR_FORMAT, "load_safetensors: '%s': tensors '%s' [%llu, %llu] "
                               "and '%s' [%llu, %llu] overlap", path, by_begin[i - 1]->name,
                               by_begin[i - 1]->begin, by_begin[i - 1]->end, by_begin[i]->name,
                               by_begin[i]->begin, by_begin[i]->end);
                break;
            }
    }
    if (rc == MSD_OK)
        qsort(es, (size_t)n, sizeof *es, cmp_name);
    for (int i = 0; rc == MSD_OK && i < n; i++) {
        msd_tensor *t = msd_tensor_empty(es[i].ndim, es[i].shape);
        if (!t) {
            rc = MSD_ERR_MEM;
            break;
        }
        convert(msd_tensor_data(t), data + es[i].begin, msd_tensor_numel(t), es[i].dtype);
        rc = push_tensor(st, es[i].name, t, es[i].dtype);
        if (rc)
            msd_tensor_release(t);
    }
    free(es);
    free(by_begin);
    return rc;
}

int msd_safetensors_load(const char *path, msd_safetensors *st)
{
    msd_safetensors_init(st);
    unsigned char *buf;
    size_t size;
    int rc = msd_file_read_all("load_safetensors", path, &buf, &size);
    if (rc)
        return rc;
    rc = msd_safetensors_load_mem(path, buf, size, st);
    free(buf);
    return rc;
}

int msd_safetensors_load_mem(const char *path, const unsigned char *buf, size_t size,
                             msd_safetensors *st)
{
    msd_safetensors_init(st);
    int rc;
    if (size < 8)
        return msd_error(MSD_ERR_FORMAT, "load_safetensors: '%s': truncated: %zu bytes, no "
                         "header length", path, size);
    unsigned long long hlen = le64(buf);
    if (hlen > size - 8)
        return msd_error(MSD_ERR_FORMAT, "load_safetensors: '%s': header length %llu runs past "
                         "the end of the %zu-byte file", path, hlen, size);
    if (hlen > HEADER_MAX)
        return msd_error(MSD_ERR_FORMAT, "load_safetensors: '%s': a %llu-byte header is more "
                         "than minisd reads (%u bytes; a sprite model's is about 15 KB)", path,
                         hlen, HEADER_MAX);
    char context[600];
    snprintf(context, sizeof context, "load_safetensors: '%.512s': bad JSON header", path);
    msd_jval root;
    rc = msd_json_parse(context, buf + 8, (size_t)hlen, &root);
    if (rc == MSD_OK) {
        rc = load_entries(path, &root, buf + 8 + hlen, size - 8 - hlen, st);
        msd_json_free(&root);
    }
    if (rc)
        msd_safetensors_free(st);
    return rc;
}

/* ---- saving --------------------------------------------------------------------
 * The file, as the safetensors format defines it: N (8 bytes, unsigned little-endian), N
 * bytes of UTF-8 JSON beginning with '{' and padded at the end with spaces (0x20), then
 * the data section, each tensor's bytes at data_offsets [begin, end) relative to its
 * start, little-endian, C order, contiguous and without gaps or overlap. minisd writes the
 * header compact (no spaces), "__metadata__" first and every key in a fixed order, so the
 * same content always gives the same bytes. */

struct st_job {
    const msd_safetensors *st;
    const char *path;
    const int *order;
    msd_buf *header;
};

/* Writes the length N, the header job->header (already padded) and then the tensors in
 * job->order, the order their data_offsets were assigned in. Values are converted per
 * dtype and stored byte by byte, least significant first, so the file is little-endian on
 * any host: I64 by a cast of the float (exact: save checked it is integral), F16 and BF16
 * rounded to nearest even, F32 as its bits. 4 KiB per fwrite; write errors are collected
 * by ferror at the end (MSD_ERR_IO). */
static int write_st(FILE *f, void *ctx)
{
    struct st_job *job = ctx;
    const msd_safetensors *st = job->st;
    unsigned char len[8];
    for (int i = 0; i < 8; i++)
        len[i] = (unsigned char)((unsigned long long)job->header->n >> (8 * i));
    fwrite(len, 1, 8, f);
    fwrite(job->header->data, 1, job->header->n, f);
    unsigned char tmp[4096];
    for (int k = 0; k < st->count; k++) {
        int i = job->order[k];
        const float *d = msd_tensor_data(st->tensors[i]);
        size_t numel = msd_tensor_numel(st->tensors[i]);
        msd_dtype dt = st->dtypes[i];
        int w = (int)dtypes[dt].size;
        for (size_t j = 0; j < numel;) {
            size_t m = 0;
            for (; m + (size_t)w <= sizeof tmp && j < numel; j++, m += (size_t)w) {
                uint64_t bits;
                if (dt == MSD_DTYPE_I64) {
                    bits = (uint64_t)(int64_t)d[j];
                } else if (dt == MSD_DTYPE_F16) {
                    bits = msd_half_from_float(d[j]);
                } else if (dt == MSD_DTYPE_BF16) {
                    bits = msd_bf16_round(d[j]);
                } else {
                    uint32_t b32;
                    memcpy(&b32, &d[j], 4);
                    bits = b32;
                }
                for (int q = 0; q < w; q++)
                    tmp[m + (size_t)q] = (unsigned char)(bits >> (8 * q));
            }
            fwrite(tmp, 1, m, f);
        }
    }
    if (ferror(f))
        return msd_error(MSD_ERR_IO, "save_safetensors: '%s': write error", job->path);
    return MSD_OK;
}

/* The data order: 8-byte dtypes first (keeps every tensor aligned), then by name.
 * Element sizes are powers of two, so with the larger ones first every tensor starts at a
 * multiple of its own element size (the byte length of every tensor before it is a
 * multiple of that size); the data section itself starts at 8 + N, a multiple of 8. The
 * reference writer orders the same way (by alignment, then name). Returns whether tensor
 * i goes before tensor j. */
static int before(const msd_safetensors *st, int i, int j)
{
    size_t si = dtypes[st->dtypes[i]].size, sj = dtypes[st->dtypes[j]].size;
    if (si != sj)
        return si > sj;
    return strcmp(st->names[i], st->names[j]) < 0;
}

/* Every check runs before the file is opened, so a refused save leaves the target as it
 * was: names and metadata must be valid UTF-8 (RFC 8259 requires it of JSON text); a
 * tensor's dtype must be one the writer converts to; F16 and BF16 values must not round a
 * finite value to infinity; I64 values must be integers within int64. MSD_ERR_ARG naming
 * the tensor (and the element), MSD_ERR_MEM, or the atomic write's MSD_ERR_IO. */
int msd_safetensors_save(const char *path, const msd_safetensors *st)
{
    for (int i = 0; i < st->count; i++) {
        if (!msd_utf8_valid(st->names[i]))
            return msd_error(MSD_ERR_ARG, "save_safetensors: '%s': tensor name is not valid "
                             "UTF-8", path);
        msd_dtype dt = st->dtypes[i];
        if (dt != MSD_DTYPE_F32 && dt != MSD_DTYPE_I64 && dt != MSD_DTYPE_F16 &&
            dt != MSD_DTYPE_BF16)
            return msd_error(MSD_ERR_ARG, "save_safetensors: '%s': tensor '%s': can save as F32, "
                             "F16, BF16 or I64, not %s", path, st->names[i], msd_dtype_name(dt));
        if (dt == MSD_DTYPE_F16 || dt == MSD_DTYPE_BF16) {
            /* a finite value must stay finite: binary16 ends at 65504, bfloat16 near 3.4e38 */
            const float *d = msd_tensor_data(st->tensors[i]);
            size_t n = msd_tensor_numel(st->tensors[i]);
            for (size_t j = 0; j < n; j++) {
                uint16_t b = dt == MSD_DTYPE_F16 ? msd_half_from_float(d[j])
                                                 : msd_bf16_round(d[j]);
                int inf = dt == MSD_DTYPE_F16 ? (b & 0x7fffu) == 0x7c00u
                                              : (b & 0x7fffu) == 0x7f80u;
                if (inf && isfinite(d[j]))
                    return msd_error(MSD_ERR_ARG, "save_safetensors: '%s': tensor '%s' holds "
                                     "%.9g at element %zu, beyond the range of %s", path,
                                     st->names[i], (double)d[j], j, msd_dtype_name(dt));
            }
        }
        if (st->dtypes[i] == MSD_DTYPE_I64) {
            const float *d = msd_tensor_data(st->tensors[i]);
            size_t n = msd_tensor_numel(st->tensors[i]);
            /* integral and |v| < 2^63 (the float literal is exactly 2^63), so the cast in
             * write_st is defined; written !(ok), so NaN and infinities fail too */
            for (size_t j = 0; j < n; j++)
                if (!(d[j] == floorf(d[j]) && fabsf(d[j]) < 9.2233720368547758e18f))
                    return msd_error(MSD_ERR_ARG, "save_safetensors: '%s': tensor '%s' marked "
                                     "I64 holds %.9g at element %zu, not an integer", path,
                                     st->names[i], (double)d[j], j);
        }
    }
    for (int i = 0; i < st->meta_count; i++)
        if (!msd_utf8_valid(st->meta_keys[i]) || !msd_utf8_valid(st->meta_values[i]))
            return msd_error(MSD_ERR_ARG, "save_safetensors: '%s': metadata '%s' is not valid "
                             "UTF-8", path, st->meta_keys[i]);
    /* tensors and metadata keys in name order: the same file for the same content, whatever
     * order the caller (a Lua table) gave them in */
    int *order = malloc(((size_t)st->count + (size_t)st->meta_count + 1) * sizeof *order);
    if (!order)
        return msd_error(MSD_ERR_MEM, "save_safetensors: '%s': out of memory", path);
    int *morder = order + st->count;
    /* insertion sorts: quadratic in the number of entries, which stays small */
    for (int i = 0; i < st->count; i++) { /* insertion sort: qsort has no context in C11 */
        int k = i;
        for (; k > 0 && before(st, i, order[k - 1]); k--)
            order[k] = order[k - 1];
        order[k] = i;
    }
    for (int i = 0; i < st->meta_count; i++) {
        int k = i;
        for (; k > 0 && strcmp(st->meta_keys[i], st->meta_keys[morder[k - 1]]) < 0; k--)
            morder[k] = morder[k - 1];
        morder[k] = i;
    }

    /* the header: {"__metadata__":{...},"name":{"dtype":..,"shape":[..],
     * "data_offsets":[begin,end]},...}, strings escaped by msd_json_put_string; the offsets
     * run on without gaps in data order. An allocation failure is checked once, via h.oom */
    msd_buf h = { 0 };
    msd_buf_str(&h, "{");
    if (st->meta_count) {
        msd_buf_str(&h, "\"__metadata__\":{");
        for (int k = 0; k < st->meta_count; k++) {
            int i = morder[k];
            if (k)
                msd_buf_str(&h, ",");
            msd_json_put_string(&h, st->meta_keys[i]);
            msd_buf_str(&h, ":");
            msd_json_put_string(&h, st->meta_values[i]);
        }
        msd_buf_str(&h, "}");
    }
    unsigned long long off = 0;
    for (int k = 0; k < st->count; k++) {
        int i = order[k];
        const msd_tensor *t = st->tensors[i];
        char num[64];
        if (k || st->meta_count)
            msd_buf_str(&h, ",");
        msd_json_put_string(&h, st->names[i]);
        msd_buf_str(&h, ":{\"dtype\":\"");
        msd_buf_str(&h, dtypes[st->dtypes[i]].name);
        msd_buf_str(&h, "\",\"shape\":[");
        for (int d = 0; d < t->ndim; d++) {
            snprintf(num, sizeof num, d ? ",%d" : "%d", t->shape[d]);
            msd_buf_str(&h, num);
        }
        unsigned long long bytes = msd_tensor_numel(t) * dtypes[st->dtypes[i]].size;
        snprintf(num, sizeof num, "],\"data_offsets\":[%llu,%llu]}", off, off + bytes);
        msd_buf_str(&h, num);
        off += bytes;
    }
    msd_buf_str(&h, "}");
    /* spaces up to a multiple of 8 bytes, as the reference writer pads: with the 8-byte
     * length before it, the data section starts 8-aligned */
    while (h.n % 8)
        msd_buf_str(&h, " ");
    int rc;
    if (h.oom) {
        rc = msd_error(MSD_ERR_MEM, "save_safetensors: '%s': out of memory", path);
    } else {
        struct st_job job = { st, path, order, &h };
        rc = msd_file_write_atomic(path, write_st, &job);
    }
    msd_buf_free(&h);
    free(order);
    return rc;
}
