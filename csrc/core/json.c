/* minisd internal: a small strict JSON parser (RFC 8259: UTF-8 checked, \u escapes and
 * surrogate pairs decoded, no NUL in strings, nesting limited, no key twice in an object)
 * into a tree of msd_jval, and the JSON string writer; see json.h.
 *
 * A recursive-descent parser over a byte range that is not NUL-terminated: every read
 * checks s < end. Where RFC 8259 leaves a choice to the parser, this one takes the strict
 * side, since its input (a safetensors header) may be hostile: duplicate names are an
 * error (sec. 4 only says they SHOULD be unique), lone surrogates are an error (sec. 8.2
 * allows them), nesting depth is capped at MSD_JSON_MAX_DEPTH (sec. 9 allows a limit).
 * Numbers are validated against the grammar but only a non-negative integer's value is
 * kept (all the header needs: shapes and offsets). The first error wins: jfail records it
 * once and every caller returns p->rc. */
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

/* Frees what v owns, recursively, and zeroes it; safe on a partly built value: only the
 * first v->n items (and keys) are freed, and an item is zeroed before it is counted. */
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

/* Records the first error (MSD_ERR_FORMAT with the byte offset from the start of the
 * text) and returns the recorded code, so a parse reports where it first went wrong. */
static int jfail(jparser *p, const char *what)
{
    if (p->rc == MSD_OK)
        p->rc = msd_error(MSD_ERR_FORMAT, "%s at byte %ld: %s", p->context,
                          (long)(p->s - p->start), what);
    return p->rc;
}

/* Skips insignificant whitespace: exactly space, tab, LF, CR (RFC 8259 sec. 2). */
static void jws(jparser *p)
{
    while (p->s < p->end && (*p->s == ' ' || *p->s == '\t' || *p->s == '\n' || *p->s == '\r'))
        p->s++;
}

/* Appends code point cp as UTF-8. cp <= 0x10FFFF and not a surrogate, as jstring ensures;
 * o has room (the caller sized it). */
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

/* Length of the valid UTF-8 sequence at s (1..4), or 0 if invalid.
 * RFC 3629's well-formed sequences: 80..BF cannot lead, C0, C1 and F5..FF never occur,
 * overlong forms are refused (a 2-byte form by its C2 floor, 3- and 4-byte forms by their
 * code point), and so are the surrogates D800..DFFF and code points past 10FFFF. */
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

/* The four hex digits after "\u" (either case) into *out. */
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

/* A string starting at the opening quote, into a new malloc'd buffer.
 * RFC 8259 sec. 7: control characters (below 0x20) must be escaped; the escapes are the
 * eight of "\"\\/bfnrt" and \uXXXX, a character outside the BMP being a surrogate pair
 * \uD8xx\uDCxx. A first pass finds the closing quote, stepping over escapes in pairs;
 * its length bounds the decoded one (no escape decodes longer than it is written: 2 bytes
 * to 1, 6 to at most 3, 12 to 4), so the buffer is allocated once. The second pass runs to
 * that quote without testing for the end: it cannot step over it, since escapes come in
 * the same pairs and hex digits and UTF-8 continuation bytes are never '"'. \u0000 is
 * refused, as the result is a C string. */
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
        /* c != 0: strchr also finds the string's terminating NUL */
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

/* A number by the grammar of RFC 8259 sec. 6: -? (0 | [1-9][0-9]*) (.[0-9]+)?
 * ([eE][+-]?[0-9]+)?; no leading '+', no leading zeros ("01" stops after the 0, and the
 * caller then fails on the '1'), at least one digit after '.' and after the exponent.
 * v->is_uint marks a lexeme without '-', fraction or exponent whose value fits in 64
 * bits; only then is v->uval the value. */
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
            /* keep scanning past an overflow: the lexeme is valid JSON, only not a uint */
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

/* Room for one more item (and key, in an object): capacity doubles from 4. Each grown
 * array is stored as soon as it exists, so a failure between the two reallocs leaks
 * nothing; cap only grows once both have. */
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

/* An array or object starting at its bracket.
 * RFC 8259 sec. 4, 5: members separated by ',', no trailing comma (after ',' a value or a
 * key must follow), an object's names are strings. v->n counts every item begun, so that
 * on an error msd_json_free of the root releases the partial item and its key too. */
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

/* One value of any type (RFC 8259 sec. 3: the literals are lower case only). depth
 * counts the containers around it; the limit bounds the recursion, so a hostile header
 * of nested brackets cannot exhaust the C stack. */
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

/* A linear search: objects here are small (a header entry has three keys), and the big
 * one, the header's top level, is walked in order instead. */
const msd_jval *msd_json_get(const msd_jval *obj, const char *key)
{
    for (int i = 0; i < obj->n; i++)
        if (strcmp(obj->keys[i], key) == 0)
            return &obj->items[i];
    return NULL;
}

/* s: n bytes of JSON text (need not be NUL-terminated); exactly one value, with only
 * whitespace around it (RFC 8259 sec. 2). On error root is freed and left empty. */
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

/* A JSON string literal; s must be valid UTF-8 (checked by the caller).
 * Escapes only what RFC 8259 sec. 7 requires: '"', '\\' and the control characters below
 * 0x20 (as \u00XX); every other byte, UTF-8 sequences included, is copied as is. */
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

/* Whether the C string s is a sequence of well-formed UTF-8 characters (msd_utf8_len). */
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
