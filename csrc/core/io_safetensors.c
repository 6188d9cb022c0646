/* minisd: safetensors files.
 *
 * Layout: an 8-byte little-endian header length N, N bytes of JSON
 * {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]},
 *  ..., "__metadata__": {"key": "value", ...}}, then the data section;
 * offsets are relative to its start. The JSON is parsed by the small strict
 * parser below (RFC 8259 grammar, UTF-8 checked, depth-limited) into a
 * tree, which is then validated entry by entry. */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "io.h"

#define JSON_MAX_DEPTH 32
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

/* ---- a strict JSON parser ----------------------------------------------------- */

typedef enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ } jtype;

typedef struct jval {
    jtype type;
    int boolean;
    int is_uint;         /* J_NUM: an integer lexeme >= 0 that fits in uval */
    unsigned long long uval;
    char *str;           /* J_STR: NUL-terminated (strings holding \u0000 are rejected) */
    int n, cap;          /* J_ARR / J_OBJ: items (and keys of an object) */
    struct jval *items;
    char **keys;
} jval;

typedef struct {
    const unsigned char *s, *end, *start;
    const char *path;
    int rc;
} jparser;

static void jfree(jval *v)
{
    free(v->str);
    for (int i = 0; i < v->n; i++) {
        jfree(&v->items[i]);
        if (v->keys)
            free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    memset(v, 0, sizeof *v);
}

static int jfail(jparser *p, const char *what)
{
    if (p->rc == MSD_OK)
        p->rc = msd_error(MSD_ERR_FORMAT, "load_safetensors: '%s': bad JSON header at byte %ld: "
                          "%s", p->path, (long)(p->s - p->start), what);
    return p->rc;
}

static void jws(jparser *p)
{
    while (p->s < p->end && (*p->s == ' ' || *p->s == '\t' || *p->s == '\n' || *p->s == '\r'))
        p->s++;
}

/* Appends code point cp as UTF-8. */
static void put_utf8(unsigned char *o, size_t *n, unsigned cp)
{
    if (cp < 0x80) {
        o[(*n)++] = (unsigned char)cp;
    } else if (cp < 0x800) {
        o[(*n)++] = (unsigned char)(0xc0 | (cp >> 6));
        o[(*n)++] = (unsigned char)(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
        o[(*n)++] = (unsigned char)(0xe0 | (cp >> 12));
        o[(*n)++] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        o[(*n)++] = (unsigned char)(0x80 | (cp & 0x3f));
    } else {
        o[(*n)++] = (unsigned char)(0xf0 | (cp >> 18));
        o[(*n)++] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
        o[(*n)++] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        o[(*n)++] = (unsigned char)(0x80 | (cp & 0x3f));
    }
}

/* Length of the valid UTF-8 sequence at s (1..4), or 0 if invalid. */
static int utf8_len(const unsigned char *s, const unsigned char *end)
{
    unsigned c = s[0];
    int n;
    unsigned cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (end - s < n)
        return 0;
    for (int i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if ((n == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (n == 4 && (cp < 0x10000 || cp > 0x10ffff)))
        return 0;
    return n;
}

static int hex4(jparser *p, unsigned *out)
{
    if (p->end - p->s < 4)
        return jfail(p, "truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = p->s[i], d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return jfail(p, "bad \\u escape");
        v = v * 16 + d;
    }
    p->s += 4;
    *out = v;
    return MSD_OK;
}

/* A string starting at the opening quote, into a new malloc'd buffer. */
static int jstring(jparser *p, char **out)
{
    p->s++; /* the quote */
    const unsigned char *q = p->s;
    while (q < p->end && *q != '"') /* an upper bound of the decoded length */
        q += (*q == '\\' && q + 1 < p->end) ? 2 : 1;
    if (q >= p->end)
        return jfail(p, "unterminated string");
    unsigned char *o = malloc((size_t)(q - p->s) + 1);
    if (!o)
        return p->rc = msd_error(MSD_ERR_MEM, "load_safetensors: '%s': out of memory", p->path);
    size_t n = 0;
    while (*p->s != '"') {
        unsigned c = *p->s;
        if (c < 0x20) {
            free(o);
            return jfail(p, "control character in string");
        }
        if (c != '\\') {
            int len = utf8_len(p->s, p->end);
            if (!len) {
                free(o);
                return jfail(p, "invalid UTF-8 in string");
            }
            memcpy(o + n, p->s, (size_t)len);
            n += (size_t)len;
            p->s += len;
            continue;
        }
        p->s++;
        c = *p->s++;
        const char *simple = strchr("\"\\/bfnrt", (int)c);
        if (c && simple) {
            static const char map[] = "\"\\/\b\f\n\r\t";
            o[n++] = (unsigned char)map[simple - "\"\\/bfnrt"];
            continue;
        }
        unsigned cp = 0, lo = 0;
        if (c != 'u' || hex4(p, &cp)) {
            free(o);
            return jfail(p, "bad escape in string");
        }
        if (cp >= 0xd800 && cp <= 0xdbff) { /* a surrogate pair: 6 escaped bytes become 4 */
            if (p->end - p->s < 2 || p->s[0] != '\\' || p->s[1] != 'u') {
                free(o);
                return jfail(p, "lone surrogate in string");
            }
            p->s += 2;
            if (hex4(p, &lo) || lo < 0xdc00 || lo > 0xdfff) {
                free(o);
                return jfail(p, "bad surrogate pair in string");
            }
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        } else if (cp >= 0xdc00 && cp <= 0xdfff) {
            free(o);
            return jfail(p, "lone surrogate in string");
        } else if (cp == 0) {
            free(o);
            return jfail(p, "\\u0000 in string");
        }
        put_utf8(o, &n, cp);
    }
    p->s++;
    o[n] = 0;
    *out = (char *)o;
    return MSD_OK;
}

static int jnumber(jparser *p, jval *v)
{
    const unsigned char *s = p->s;
    int neg = 0, frac = 0;
    if (*s == '-') {
        neg = 1;
        s++;
    }
    if (s >= p->end || *s < '0' || *s > '9')
        return jfail(p, "bad number");
    unsigned long long u = 0;
    int overflow = 0;
    if (*s == '0') {
        s++;
    } else {
        while (s < p->end && *s >= '0' && *s <= '9') {
            unsigned d = *s++ - '0';
            if (u > (ULLONG_MAX - d) / 10)
                overflow = 1;
            else
                u = u * 10 + d;
        }
    }
    if (s < p->end && *s == '.') {
        frac = 1;
        s++;
        if (s >= p->end || *s < '0' || *s > '9')
            return jfail(p, "bad number");
        while (s < p->end && *s >= '0' && *s <= '9')
            s++;
    }
    if (s < p->end && (*s == 'e' || *s == 'E')) {
        frac = 1;
        s++;
        if (s < p->end && (*s == '+' || *s == '-'))
            s++;
        if (s >= p->end || *s < '0' || *s > '9')
            return jfail(p, "bad number");
        while (s < p->end && *s >= '0' && *s <= '9')
            s++;
    }
    v->type = J_NUM;
    v->is_uint = !neg && !frac && !overflow;
    v->uval = u;
    p->s = s;
    return MSD_OK;
}

static int jvalue(jparser *p, jval *v, int depth);

static int jpush(jparser *p, jval *v)
{
    if (v->n < v->cap)
        return MSD_OK;
    int cap = v->cap ? v->cap * 2 : 4;
    jval *items = realloc(v->items, (size_t)cap * sizeof *items);
    if (items)
        v->items = items;
    if (items && v->type == J_OBJ) {
        char **keys = realloc(v->keys, (size_t)cap * sizeof *keys);
        if (!keys)
            items = NULL;
        else
            v->keys = keys;
    }
    if (!items)
        return p->rc = msd_error(MSD_ERR_MEM, "load_safetensors: '%s': out of memory", p->path);
    v->cap = cap;
    return MSD_OK;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* No key twice in an object: sorted, then neighbours compared (n log n: a header with many
 * keys must not cost a quadratic check). */
static int jcheck_keys(jparser *p, const jval *v)
{
    if (v->n < 2)
        return MSD_OK;
    char **keys = malloc((size_t)v->n * sizeof *keys);
    if (!keys) {
        p->rc = msd_error(MSD_ERR_MEM, "load_safetensors: '%s': out of memory", p->path);
        return p->rc;
    }
    memcpy(keys, v->keys, (size_t)v->n * sizeof *keys);
    qsort(keys, (size_t)v->n, sizeof *keys, cmp_str);
    int dup = -1;
    for (int i = 1; i < v->n && dup < 0; i++)
        if (strcmp(keys[i - 1], keys[i]) == 0)
            dup = i;
    int rc = MSD_OK;
    if (dup >= 0)
        rc = jfail(p, "duplicate key");
    free(keys);
    return rc;
}

/* An array or object starting at its bracket. */
static int jcontainer(jparser *p, jval *v, int depth)
{
    int obj = *p->s == '{';
    char close = obj ? '}' : ']';
    v->type = obj ? J_OBJ : J_ARR;
    p->s++;
    jws(p);
    if (p->s < p->end && *p->s == close) {
        p->s++;
        return MSD_OK;
    }
    for (;;) {
        if (jpush(p, v))
            return p->rc;
        jval *item = &v->items[v->n];
        memset(item, 0, sizeof *item);
        jws(p);
        if (obj) {
            char *key = NULL;
            if (p->s >= p->end || *p->s != '"')
                return jfail(p, "expected a string key");
            if (jstring(p, &key))
                return p->rc;
            v->keys[v->n] = key; /* duplicates: checked once the object is complete */
            jws(p);
            if (p->s >= p->end || *p->s != ':') {
                v->n++; /* so that the key is freed */
                return jfail(p, "expected ':'");
            }
            p->s++;
        }
        v->n++;
        if (jvalue(p, item, depth + 1))
            return p->rc;
        jws(p);
        if (p->s < p->end && *p->s == ',') {
            p->s++;
            continue;
        }
        if (p->s < p->end && *p->s == close) {
            p->s++;
            return obj ? jcheck_keys(p, v) : MSD_OK;
        }
        return jfail(p, obj ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static int jvalue(jparser *p, jval *v, int depth)
{
    if (depth > JSON_MAX_DEPTH)
        return jfail(p, "nested too deeply");
    jws(p);
    if (p->s >= p->end)
        return jfail(p, "unexpected end");
    static const char *const words[3] = { "null", "true", "false" };
    for (int i = 0; i < 3; i++) {
        size_t n = strlen(words[i]);
        if ((size_t)(p->end - p->s) >= n && memcmp(p->s, words[i], n) == 0) {
            p->s += n;
            v->type = i == 0 ? J_NULL : J_BOOL;
            v->boolean = i == 1;
            return MSD_OK;
        }
    }
    if (*p->s == '"') {
        v->type = J_STR;
        return jstring(p, &v->str);
    }
    if (*p->s == '{' || *p->s == '[')
        return jcontainer(p, v, depth);
    if (*p->s == '-' || (*p->s >= '0' && *p->s <= '9'))
        return jnumber(p, v);
    return jfail(p, "unexpected character");
}

static const jval *jget(const jval *obj, const char *key)
{
    for (int i = 0; i < obj->n; i++)
        if (strcmp(obj->keys[i], key) == 0)
            return &obj->items[i];
    return NULL;
}

/* ---- loading --------------------------------------------------------------------- */

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
static int check_entry(const char *path, const char *name, const jval *v,
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
    const jval *dt = jget(v, "dtype"), *sh = jget(v, "shape"), *off = jget(v, "data_offsets");
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
        const jval *x = &sh->items[i];
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
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
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
static int load_entries(const char *path, const jval *root, const unsigned char *data,
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
        const jval *v = &root->items[i];
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
                    rc = msd_safetensors_set_meta(st, v->keys[k], v->items[k].str);
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
    jparser p = { buf + 8, buf + 8 + hlen, buf + 8, path, MSD_OK };
    jval root;
    memset(&root, 0, sizeof root);
    rc = jvalue(&p, &root, 0);
    if (rc == MSD_OK) {
        jws(&p);
        if (p.s != p.end)
            rc = jfail(&p, "junk after the JSON value");
    }
    if (rc == MSD_OK)
        rc = load_entries(path, &root, buf + 8 + hlen, size - 8 - hlen, st);
    jfree(&root);
    if (rc)
        msd_safetensors_free(st);
    return rc;
}

/* ---- saving -------------------------------------------------------------------- */

typedef struct {
    char *s;
    size_t n, cap;
    int oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (b->n + n + 1 > cap)
            cap *= 2;
        char *s2 = realloc(b->s, cap);
        if (!s2) {
            b->oom = 1;
            return;
        }
        b->s = s2;
        b->cap = cap;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}

static void sb_str(sbuf *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

/* A JSON string literal; s must be valid UTF-8 (checked by the caller). */
static void sb_json(sbuf *b, const char *s)
{
    sb_put(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            sb_put(b, esc, 2);
        } else if (c < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            sb_put(b, esc, 6);
        } else {
            sb_put(b, (const char *)&c, 1);
        }
    }
    sb_put(b, "\"", 1);
}

static int valid_utf8(const char *s)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + strlen(s);
    while (p < end) {
        int n = utf8_len(p, end);
        if (!n)
            return 0;
        p += n;
    }
    return 1;
}

struct st_job {
    const msd_safetensors *st;
    const char *path;
    const int *order;
    sbuf *header;
};

static int write_st(FILE *f, void *ctx)
{
    struct st_job *job = ctx;
    const msd_safetensors *st = job->st;
    unsigned char len[8];
    for (int i = 0; i < 8; i++)
        len[i] = (unsigned char)((unsigned long long)job->header->n >> (8 * i));
    fwrite(len, 1, 8, f);
    fwrite(job->header->s, 1, job->header->n, f);
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

/* The data order: 8-byte dtypes first (keeps every tensor aligned), then by name. */
static int before(const msd_safetensors *st, int i, int j)
{
    size_t si = dtypes[st->dtypes[i]].size, sj = dtypes[st->dtypes[j]].size;
    if (si != sj)
        return si > sj;
    return strcmp(st->names[i], st->names[j]) < 0;
}

int msd_safetensors_save(const char *path, const msd_safetensors *st)
{
    for (int i = 0; i < st->count; i++) {
        if (!valid_utf8(st->names[i]))
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
            for (size_t j = 0; j < n; j++)
                if (!(d[j] == floorf(d[j]) && fabsf(d[j]) < 9.2233720368547758e18f))
                    return msd_error(MSD_ERR_ARG, "save_safetensors: '%s': tensor '%s' marked "
                                     "I64 holds %.9g at element %zu, not an integer", path,
                                     st->names[i], (double)d[j], j);
        }
    }
    for (int i = 0; i < st->meta_count; i++)
        if (!valid_utf8(st->meta_keys[i]) || !valid_utf8(st->meta_values[i]))
            return msd_error(MSD_ERR_ARG, "save_safetensors: '%s': metadata '%s' is not valid "
                             "UTF-8", path, st->meta_keys[i]);
    /* tensors and metadata keys in name order: the same file for the same content, whatever
     * order the caller (a Lua table) gave them in */
    int *order = malloc(((size_t)st->count + (size_t)st->meta_count + 1) * sizeof *order);
    if (!order)
        return msd_error(MSD_ERR_MEM, "save_safetensors: '%s': out of memory", path);
    int *morder = order + st->count;
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

    sbuf h = { 0 };
    sb_str(&h, "{");
    if (st->meta_count) {
        sb_str(&h, "\"__metadata__\":{");
        for (int k = 0; k < st->meta_count; k++) {
            int i = morder[k];
            if (k)
                sb_str(&h, ",");
            sb_json(&h, st->meta_keys[i]);
            sb_str(&h, ":");
            sb_json(&h, st->meta_values[i]);
        }
        sb_str(&h, "}");
    }
    unsigned long long off = 0;
    for (int k = 0; k < st->count; k++) {
        int i = order[k];
        const msd_tensor *t = st->tensors[i];
        char num[64];
        if (k || st->meta_count)
            sb_str(&h, ",");
        sb_json(&h, st->names[i]);
        sb_str(&h, ":{\"dtype\":\"");
        sb_str(&h, dtypes[st->dtypes[i]].name);
        sb_str(&h, "\",\"shape\":[");
        for (int d = 0; d < t->ndim; d++) {
            snprintf(num, sizeof num, d ? ",%d" : "%d", t->shape[d]);
            sb_str(&h, num);
        }
        unsigned long long bytes = msd_tensor_numel(t) * dtypes[st->dtypes[i]].size;
        snprintf(num, sizeof num, "],\"data_offsets\":[%llu,%llu]}", off, off + bytes);
        sb_str(&h, num);
        off += bytes;
    }
    sb_str(&h, "}");
    while (h.n % 8)
        sb_str(&h, " ");
    int rc;
    if (h.oom) {
        rc = msd_error(MSD_ERR_MEM, "save_safetensors: '%s': out of memory", path);
    } else {
        struct st_job job = { st, path, order, &h };
        rc = msd_file_write_atomic(path, write_st, &job);
    }
    free(h.s);
    free(order);
    return rc;
}
