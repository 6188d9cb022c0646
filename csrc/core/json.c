/* minisd internal: a small strict JSON parser (RFC 8259: UTF-8 checked, \u escapes and
 * surrogate pairs decoded, no NUL in strings, nesting limited, no key twice in an object)
 * into a tree of msd_jval, and the JSON string writer; see json.h. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "json.h"

typedef struct {
    const unsigned char *s, *end, *start;
    const char *context; /* the message prefix, e.g. "load_safetensors: 'f': bad JSON header" */
    int rc;
} jparser;

void msd_json_free(msd_jval *v)
{
    free(v->str);
    for (int i = 0; i < v->n; i++) {
        msd_json_free(&v->items[i]);
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
        p->rc = msd_error(MSD_ERR_FORMAT, "%s at byte %ld: %s", p->context,
                          (long)(p->s - p->start), what);
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
int msd_utf8_len(const unsigned char *s, const unsigned char *end)
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
        return p->rc = msd_error(MSD_ERR_MEM, "%s: out of memory", p->context);
    size_t n = 0;
    while (*p->s != '"') {
        unsigned c = *p->s;
        if (c < 0x20) {
            free(o);
            return jfail(p, "control character in string");
        }
        if (c != '\\') {
            int len = msd_utf8_len(p->s, p->end);
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

static int jnumber(jparser *p, msd_jval *v)
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

static int jvalue(jparser *p, msd_jval *v, int depth);

static int jpush(jparser *p, msd_jval *v)
{
    if (v->n < v->cap)
        return MSD_OK;
    int cap = v->cap ? v->cap * 2 : 4;
    msd_jval *items = realloc(v->items, (size_t)cap * sizeof *items);
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
        return p->rc = msd_error(MSD_ERR_MEM, "%s: out of memory", p->context);
    v->cap = cap;
    return MSD_OK;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* No key twice in an object: sorted, then neighbours compared (n log n: a header with many
 * keys must not cost a quadratic check). */
static int jcheck_keys(jparser *p, const msd_jval *v)
{
    if (v->n < 2)
        return MSD_OK;
    char **keys = malloc((size_t)v->n * sizeof *keys);
    if (!keys) {
        p->rc = msd_error(MSD_ERR_MEM, "%s: out of memory", p->context);
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
static int jcontainer(jparser *p, msd_jval *v, int depth)
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
        msd_jval *item = &v->items[v->n];
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

static int jvalue(jparser *p, msd_jval *v, int depth)
{
    if (depth > MSD_JSON_MAX_DEPTH)
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

const msd_jval *msd_json_get(const msd_jval *obj, const char *key)
{
    for (int i = 0; i < obj->n; i++)
        if (strcmp(obj->keys[i], key) == 0)
            return &obj->items[i];
    return NULL;
}

int msd_json_parse(const char *context, const unsigned char *s, size_t n, msd_jval *root)
{
    jparser p = { s, s + n, s, context, MSD_OK };
    memset(root, 0, sizeof *root);
    int rc = jvalue(&p, root, 0);
    if (rc == MSD_OK) {
        jws(&p);
        if (p.s != p.end)
            rc = jfail(&p, "junk after the JSON value");
    }
    if (rc != MSD_OK)
        msd_json_free(root);
    return rc;
}

/* ---- writing ---------------------------------------------------------------------- */

/* A JSON string literal; s must be valid UTF-8 (checked by the caller). */
void msd_json_put_string(msd_buf *b, const char *s)
{
    msd_buf_put(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            msd_buf_put(b, esc, 2);
        } else if (c < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            msd_buf_put(b, esc, 6);
        } else {
            msd_buf_put(b, &c, 1);
        }
    }
    msd_buf_put(b, "\"", 1);
}

int msd_utf8_valid(const char *s)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + strlen(s);
    while (p < end) {
        int n = msd_utf8_len(p, end);
        if (!n)
            return 0;
        p += n;
    }
    return 1;
}
