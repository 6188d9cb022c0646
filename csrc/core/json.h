/* minisd internal: a small strict JSON parser (json.c), for the safetensors header, and
 * the JSON string writer. Not part of the public API (minisd.h). */
#ifndef MSD_JSON_H
#define MSD_JSON_H

#include <stddef.h>

#include "bytes.h"

#define MSD_JSON_MAX_DEPTH 32

typedef enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ } msd_jtype;

/* A parsed value. Objects keep their keys in file order, each key at most once. */
typedef struct msd_jval {
    msd_jtype type;
    int boolean;              /* J_BOOL */
    int is_uint;              /* J_NUM: an integer lexeme >= 0 that fits in uval */
    unsigned long long uval;
    char *str;                /* J_STR: NUL-terminated (strings holding \u0000 are rejected) */
    int n, cap;               /* J_ARR / J_OBJ: items (and keys of an object) */
    struct msd_jval *items;
    char **keys;
} msd_jval;

/* Parses the n bytes at s as one JSON value (whitespace around it allowed) into *root
 * (free it with msd_json_free). MSD_ERR_FORMAT, "<context> at byte B: what", on bad JSON;
 * MSD_ERR_MEM when out of memory; *root is empty then. */
int msd_json_parse(const char *context, const unsigned char *s, size_t n, msd_jval *root);
void msd_json_free(msd_jval *v);
/* The value of key in an object, or NULL. */
const msd_jval *msd_json_get(const msd_jval *obj, const char *key);

/* Length of the valid UTF-8 sequence at s (1..4), or 0 if invalid. */
int msd_utf8_len(const unsigned char *s, const unsigned char *end);
/* Whether the C string s is valid UTF-8. */
int msd_utf8_valid(const char *s);
/* Appends s (valid UTF-8) as a JSON string literal, escaping quotes, backslashes and
 * control characters. */
void msd_json_put_string(msd_buf *b, const char *s);

#endif
