/* Tensor files: .npy, safetensors and PNG round trips; files written by numpy,
 * an independent safetensors writer and a hand-made PNG encoder
 * (tests/fixtures/gen_files.py); corrupt files; atomic writes. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "minisd.h"
#include "test.h"

#define FIX "tests/fixtures/files/"

static char tmpdir[256];

static const char *tmp(const char *name)
{
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmpdir, name);
    return buf[k];
}

static int write_bytes(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t w = fwrite(data, 1, n, f);
    fclose(f);
    return w == n ? 0 : -1;
}

static unsigned char *read_bytes(const char *path, size_t *n)
{
    unsigned char *d;
    return msd_file_read_all("test", path, &d, n) == MSD_OK ? d : NULL;
}

/* Number of entries in tmpdir whose name contains ".tmp." */
static int tmp_leftovers(void)
{
    DIR *d = opendir(tmpdir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        n += strstr(e->d_name, ".tmp.") != NULL;
    if (d)
        closedir(d);
    return n;
}

static int has(const char *needle)
{
    return strstr(msd_last_error(), needle) != NULL;
}

/* ---- npy ---------------------------------------------------------------------- */

static void test_npy_roundtrip(void)
{
    int shapes[4][4] = { { 0 }, { 5 }, { 2, 3, 4, 5 }, { 3, 0, 2 } };
    int nds[4] = { 0, 1, 4, 3 };
    for (int k = 0; k < 4; k++) {
        msd_tensor *t = msd_tensor_empty(nds[k], shapes[k]), *u = NULL;
        float *p = msd_tensor_data(t);
        for (size_t i = 0; i < msd_tensor_numel(t); i++)
            p[i] = (float)i * 0.37f - 3.0f;
        CHECK_OK(msd_npy_save(tmp("a.npy"), t));
        CHECK_OK(msd_npy_load(tmp("a.npy"), &u));
        CHECK(u->ndim == t->ndim && msd_tensor_same_shape(t, u));
        CHECK(memcmp(p, msd_tensor_data(u), msd_tensor_numel(t) * 4) == 0);
        size_t n;
        unsigned char *b = read_bytes(tmp("a.npy"), &n);
        CHECK(b && memcmp(b, "\x93NUMPY\x01\x00", 8) == 0);
        size_t hl = (size_t)b[8] | (size_t)b[9] << 8;
        CHECK((10 + hl) % 64 == 0 && b[10 + hl - 1] == '\n');
        CHECK(n == 10 + hl + msd_tensor_numel(t) * 4);
        CHECK(strstr((char *)b + 10, "'descr': '<f4'") && strstr((char *)b + 10, "False"));
        free(b);
        msd_tensor_release(t);
        msd_tensor_release(u);
    }
    CHECK(tmp_leftovers() == 0);
}

static void check_npy(const char *file, int ndim, const int *shape, const double *want)
{
    msd_tensor *t = NULL;
    CHECK_OK(msd_npy_load(file, &t));
    CHECK(t->ndim == ndim);
    for (int i = 0; i < ndim; i++)
        CHECK(t->shape[i] == shape[i]);
    const float *p = msd_tensor_data(t);
    for (size_t i = 0; i < msd_tensor_numel(t); i++)
        CHECK_CLOSE(p[i], (float)want[i], 0, 0);
    msd_tensor_release(t);
}

/* The fixture arrays, written by numpy (see gen_files.py) */
static void test_npy_numpy_files(void)
{
    int s23[2] = { 2, 3 }, s4[1] = { 4 }, s3[1] = { 3 }, s22[2] = { 2, 2 }, s2[1] = { 2 },
        s5[1] = { 5 }, s12[2] = { 1, 2 };
    check_npy(FIX "u1.npy", 2, s23, (double[]){ 0, 1, 2, 128, 254, 255 });
    check_npy(FIX "i1.npy", 1, s4, (double[]){ -128, -1, 0, 127 });
    check_npy(FIX "i2.npy", 1, s4, (double[]){ -32768, -2, 3, 32767 });
    check_npy(FIX "u2.npy", 1, s3, (double[]){ 0, 1, 65535 });
    check_npy(FIX "i4.npy", 2, s22, (double[]){ -2147483648.0, -5, 7, 2147483647.0 });
    check_npy(FIX "u4.npy", 1, s2, (double[]){ 0, 4294967295.0 });
    check_npy(FIX "i8.npy", 2, s22, (double[]){ -3, 0, 0x1p40, -0x1p50 });
    check_npy(FIX "f2.npy", 1, s5, (double[]){ 1, -2.5, 65504, 0x1p-24, 0x1.998p-4 });
    check_npy(FIX "f8.npy", 1, s3, (double[]){ 0.1, -1e30, 3.25 });
    check_npy(FIX "b1.npy", 1, s4, (double[]){ 1, 0, 0, 1 });
    check_npy(FIX "f4_0d.npy", 0, NULL, (double[]){ 3.5 });
    check_npy(FIX "f4_v2.npy", 2, s12, (double[]){ 1.5, -2 });
    check_npy(FIX "f4_v3.npy", 1, s3, (double[]){ 4, 5, 6 });
    msd_tensor *t = NULL;
    CHECK_OK(msd_npy_load(FIX "f4.npy", &t));
    CHECK(t->ndim == 3 && t->shape[0] == 2 && t->shape[1] == 3 && t->shape[2] == 4);
    for (int i = 0; i < 24; i++)
        CHECK_CLOSE(msd_tensor_data(t)[i], (float)i / 7.0f, 1e-7, 0);
    msd_tensor_release(t);
}

static void test_npy_errors(void)
{
    msd_tensor *t = NULL;
    CHECK(msd_npy_load(FIX "fortran.npy", &t) == MSD_ERR_FORMAT && !t);
    CHECK(has("fortran.npy' is Fortran-ordered; save it with np.ascontiguousarray"));
    CHECK(msd_npy_load(FIX "bigendian.npy", &t) == MSD_ERR_FORMAT && has("big-endian"));
    CHECK(msd_npy_load(FIX "f4_5d.npy", &t) == MSD_ERR_FORMAT && has("5 dims"));
    CHECK(msd_npy_load(tmp("missing.npy"), &t) == MSD_ERR_IO && has("missing.npy"));
    /* corrupt variants of a good file */
    size_t n;
    unsigned char *good = read_bytes(FIX "f4.npy", &n);
    CHECK(good);
    CHECK(write_bytes(tmp("c.npy"), good, n - 1) == 0);
    CHECK(msd_npy_load(tmp("c.npy"), &t) == MSD_ERR_FORMAT && has("truncated") && has("c.npy"));
    unsigned char *bad = malloc(n);
    memcpy(bad, good, n);
    bad[8] = 0xff;
    bad[9] = 0xff; /* header length past the end */
    CHECK(write_bytes(tmp("c.npy"), bad, n) == 0);
    CHECK(msd_npy_load(tmp("c.npy"), &t) == MSD_ERR_FORMAT && has("past the end"));
    CHECK(write_bytes(tmp("c.npy"), "\x93NUMPZ\x01\x00\x00\x00", 10) == 0);
    CHECK(msd_npy_load(tmp("c.npy"), &t) == MSD_ERR_FORMAT && has("magic"));
    /* an unknown version, named as the file gives it (the message once read the freed
     * buffer) */
    CHECK(write_bytes(tmp("c.npy"), "\x93NUMPY\x09\x07\x00\x00", 10) == 0);
    CHECK(msd_npy_load(tmp("c.npy"), &t) == MSD_ERR_FORMAT && has("unsupported format version 9.7"));
    const char *hdrs[] = {
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2147483647, 2147483647), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000,), }",
        "{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1, }",
        "{'descr': '<f4', 'fortran_order': False }",
        "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (1,), }",
    };
    const char *msgs[] = { "elements", "truncated", "unsupported dtype", "malformed",
                           "lacks 'shape'", "fortran_order" };
    for (int k = 0; k < 6; k++) {
        unsigned char buf[256] = "\x93NUMPY\x01\x00";
        size_t hl = strlen(hdrs[k]);
        buf[8] = (unsigned char)hl;
        buf[9] = 0;
        memcpy(buf + 10, hdrs[k], hl);
        memset(buf + 10 + hl, 0, 16);
        CHECK(write_bytes(tmp("c.npy"), buf, 10 + hl + 16) == 0);
        int rc = msd_npy_load(tmp("c.npy"), &t);
        if (rc == MSD_OK || !has(msgs[k]) || !has("c.npy"))
            fprintf(stderr, "  header %d: rc %d: %s\n", k, rc, msd_last_error());
        CHECK(rc != MSD_OK && !t && has(msgs[k]) && has("c.npy"));
    }
    free(bad);
    free(good);
}

/* ---- safetensors ---------------------------------------------------------------- */

static void test_half_bf16(void)
{
    CHECK(msd_half_to_float(0x3c00) == 1.0f);
    CHECK(msd_half_to_float(0xc000) == -2.0f);
    CHECK(msd_half_to_float(0x7bff) == 65504.0f);
    CHECK(msd_half_to_float(0x0001) == 0x1p-24f);
    CHECK(msd_half_to_float(0x03ff) == 0x1.ff8p-15f);
    CHECK(msd_half_to_float(0x0400) == 0x1p-14f);
    CHECK(msd_half_to_float(0x3555) == 0x1.554p-2f);
    CHECK(isinf(msd_half_to_float(0x7c00)) && msd_half_to_float(0xfc00) < 0);
    CHECK(isnan(msd_half_to_float(0x7e00)));
    CHECK(msd_half_to_float(0x8000) == 0.0f && signbit(msd_half_to_float(0x8000)));
    CHECK(msd_bf16_to_float(0x3f80) == 1.0f);
    CHECK(msd_bf16_to_float(0xc000) == -2.0f);
    CHECK(msd_bf16_to_float(0x3dcd) == 0x1.9ap-4f);
}

/* float32 -> binary16 / bfloat16, round to nearest even, checked against its definition:
 * every value of the format comes back unchanged, the midpoint between two neighbours goes
 * to the one with an even pattern, and a hair either side of it to the nearer one. */
static void check_rounding(uint16_t (*from)(float), float (*to)(uint16_t), uint16_t max_finite,
                           uint16_t inf)
{
    for (uint32_t h = 0; h <= 0xffffu; h++) {
        uint16_t a = (uint16_t)h;
        if ((a & 0x7fffu) > inf) { /* NaN stays NaN */
            CHECK(isnan(to(from(to(a)))));
            continue;
        }
        CHECK(from(to(a)) == a);
        if ((a & 0x7fffu) >= max_finite)
            continue;
        uint16_t b = (uint16_t)(a + 1); /* the next value away from zero */
        float lo = to(a), hi = to(b);
        float mid = (float)(((double)lo + (double)hi) / 2); /* exact: one bit more */
        CHECK((double)mid == ((double)lo + (double)hi) / 2);
        CHECK(from(mid) == ((a & 1u) ? b : a));
        float up = nextafterf(mid, hi), down = nextafterf(mid, lo);
        if (up != hi)
            CHECK(from(up) == b);
        if (down != lo)
            CHECK(from(down) == a);
    }
    /* past the largest finite value: the midpoint to the next power rounds to inf */
    float big = to(max_finite);
    float mid = (float)((double)big + ((double)big - (double)to((uint16_t)(max_finite - 1))) / 2);
    CHECK(from(mid) == inf && from(-mid) == (uint16_t)(inf | 0x8000u));
    CHECK(from(nextafterf(mid, 0)) == max_finite);
    CHECK(from(INFINITY) == inf);
}

static void test_half_bf16_rounding(void)
{
    check_rounding(msd_half_from_float, msd_half_to_float, 0x7bffu, 0x7c00u);
    check_rounding(msd_bf16_round, msd_bf16_to_float, 0x7f7fu, 0x7f80u);
    /* a few by hand */
    CHECK(msd_half_from_float(1.0f / 3.0f) == 0x3555);
    CHECK(msd_half_from_float(0.1f) == 0x2e66);
    CHECK(msd_half_from_float(65520.0f) == 0x7c00 && msd_half_from_float(65519.0f) == 0x7bff);
    CHECK(msd_half_from_float(0x1p-25f) == 0x0000);         /* tie to even: 0 */
    CHECK(msd_half_from_float(0x1.8p-25f) == 0x0001);
    CHECK(msd_half_from_float(0x1p-30f) == 0x0000);
    CHECK(msd_half_from_float(-0.0f) == 0x8000);
    CHECK(msd_bf16_round(0.1f) == 0x3dcd);
    CHECK(msd_bf16_round(0x1p-130f) == 0x0008); /* a subnormal is kept */
}

static void check_st(const msd_safetensors *st, const char *name, msd_dtype d, int ndim,
                     const double *want)
{
    int i = msd_safetensors_find(st, name);
    CHECK(i >= 0);
    CHECK(st->dtypes[i] == d && st->tensors[i]->ndim == ndim);
    const float *p = msd_tensor_data(st->tensors[i]);
    for (size_t k = 0; k < msd_tensor_numel(st->tensors[i]); k++)
        CHECK_CLOSE(p[k], (float)want[k], 0, 0);
}

/* ref.safetensors: written by the independent Python writer in gen_files.py */
static void test_safetensors_reference(void)
{
    msd_safetensors st;
    CHECK_OK(msd_safetensors_load(FIX "ref.safetensors", &st));
    CHECK(st.count == 8);
    for (int i = 1; i < st.count; i++)
        CHECK(strcmp(st.names[i - 1], st.names[i]) < 0);
    check_st(&st, "f32", MSD_DTYPE_F32, 2, (double[]){ -1, -0.5, 0, 0.5, 1, 1.5 });
    check_st(&st, "f64", MSD_DTYPE_F64, 2, (double[]){ 0.1, -7.25 });
    check_st(&st, "f16", MSD_DTYPE_F16, 1,
             (double[]){ 1, -2, 0x1.998p-4, 65504, 0x1p-24, 0x1.554p-2 });
    check_st(&st, "bf16", MSD_DTYPE_BF16, 1,
             (double[]){ 1, -2, 0x1.9ap-4, 0x1.c4p+127, 0x1.56p-2, -0x1.44p-100 });
    check_st(&st, "i64", MSD_DTYPE_I64, 1, (double[]){ -1, 0, 123456789 });
    check_st(&st, "i32", MSD_DTYPE_I32, 2, (double[]){ -7, 8 });
    check_st(&st, "u8", MSD_DTYPE_U8, 1, (double[]){ 0, 200, 255 });
    check_st(&st, "scalar", MSD_DTYPE_F32, 0, (double[]){ 2.5 });
    CHECK(strcmp(msd_safetensors_get_meta(&st, "format"), "pt") == 0);
    /* written as JSON \u escapes, incl. a surrogate pair */
    CHECK(strcmp(msd_safetensors_get_meta(&st, "note"),
                 "h\xc3\xa9llo \"q\"\n\xe2\x98\x83 \xf0\x9f\x98\x80") == 0);
    msd_safetensors_free(&st);
    CHECK(st.count == 0 && st.names == NULL);
}

static void test_safetensors_roundtrip(void)
{
    int sa[2] = { 2, 3 }, sb[1] = { 3 }, sc[4] = { 1, 2, 1, 1 };
    msd_tensor *a = msd_tensor_empty(2, sa), *b = msd_tensor_empty(1, sb), *c;
    c = msd_tensor_from_data(4, sc, (float[]){ 5, -6 });
    for (int i = 0; i < 6; i++)
        msd_tensor_data(a)[i] = 0.1f * (float)i - 0.3f;
    float bi[3] = { -4, 0, 16777216 };
    memcpy(msd_tensor_data(b), bi, sizeof bi);
    msd_safetensors st, back;
    msd_safetensors_init(&st);
    CHECK_OK(msd_safetensors_add(&st, "z.weight", a, MSD_DTYPE_F32));
    CHECK_OK(msd_safetensors_add(&st, "steps", b, MSD_DTYPE_I64));
    CHECK_OK(msd_safetensors_add(&st, "a.bias", c, MSD_DTYPE_F32));
    CHECK(msd_safetensors_add(&st, "steps", b, MSD_DTYPE_F32) == MSD_ERR_ARG);
    CHECK(msd_safetensors_add(&st, "__metadata__", b, MSD_DTYPE_F32) == MSD_ERR_ARG);
    CHECK(msd_safetensors_add(&st, "x", b, MSD_DTYPE_U8) == MSD_ERR_ARG);
    CHECK_OK(msd_safetensors_set_meta(&st, "arch", "ContextUnet"));
    CHECK_OK(msd_safetensors_set_meta(&st, "labels", "[\"hero\",\n\"t\\ab\"]"));
    CHECK_OK(msd_safetensors_set_meta(&st, "arch", "ContextUnet2"));
    CHECK_OK(msd_safetensors_save(tmp("m.safetensors"), &st));
    CHECK_OK(msd_safetensors_load(tmp("m.safetensors"), &back));
    CHECK(back.count == 3 && back.meta_count == 2);
    CHECK(strcmp(back.names[0], "a.bias") == 0 && strcmp(back.names[2], "z.weight") == 0);
    CHECK(strcmp(msd_safetensors_get_meta(&back, "arch"), "ContextUnet2") == 0);
    CHECK(strcmp(msd_safetensors_get_meta(&back, "labels"), "[\"hero\",\n\"t\\ab\"]") == 0);
    int i = msd_safetensors_find(&back, "steps");
    CHECK(back.dtypes[i] == MSD_DTYPE_I64 && memcmp(msd_tensor_data(back.tensors[i]), bi, 12) == 0);
    i = msd_safetensors_find(&back, "z.weight");
    CHECK(back.dtypes[i] == MSD_DTYPE_F32 && msd_tensor_same_shape(back.tensors[i], a));
    CHECK(memcmp(msd_tensor_data(back.tensors[i]), msd_tensor_data(a), 24) == 0);
    i = msd_safetensors_find(&back, "a.bias");
    CHECK(back.tensors[i]->ndim == 4 && msd_tensor_data(back.tensors[i])[1] == -6.0f);
    msd_safetensors_free(&back);
    /* layout: 8-byte length, header padded with spaces to 8, I64 data first */
    size_t n;
    unsigned char *f = read_bytes(tmp("m.safetensors"), &n);
    CHECK(f);
    uint64_t hl = 0;
    for (int k = 7; k >= 0; k--)
        hl = hl << 8 | f[k];
    CHECK(hl % 8 == 0 && n == 8 + hl + 24 + 24 + 8);
    CHECK(f[8 + hl - 1] == ' ' || f[8 + hl - 1] == '}');
    CHECK(memcmp(f + 8, "{\"__metadata__\":{", 17) == 0);
    int64_t v;
    memcpy(&v, f + 8 + hl + 16, 8);
    CHECK(v == 16777216);
    free(f);
    /* I64 with a fractional value is refused and leaves the old file */
    msd_tensor_data(b)[1] = 0.5f;
    CHECK(msd_safetensors_save(tmp("m.safetensors"), &st) == MSD_ERR_ARG);
    CHECK(has("steps") && has("not an integer"));
    CHECK_OK(msd_safetensors_load(tmp("m.safetensors"), &back));
    msd_safetensors_free(&back);
    msd_safetensors_free(&st);
    msd_tensor_release(a);
    msd_tensor_release(b);
    msd_tensor_release(c);
}

/* Writes a safetensors file with the given header text and n data bytes. */
static int write_st(const char *path, const char *header, size_t ndata)
{
    size_t hl = strlen(header);
    unsigned char *buf = calloc(8 + hl + ndata + 1, 1);
    for (int k = 0; k < 8; k++)
        buf[k] = (unsigned char)((uint64_t)hl >> (8 * k));
    memcpy(buf + 8, header, hl);
    int rc = write_bytes(path, buf, 8 + hl + ndata);
    free(buf);
    return rc;
}

static void test_safetensors_corrupt(void)
{
    static const struct {
        const char *header, *msg;
    } cases[] = {
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,16]}}", "outside" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,4]}}", "outside" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", "12 bytes expected" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
          "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", "overlap" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[2147483647,2147483647],\"data_offsets\":[0,8]}}",
          "elements" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296],\"data_offsets\":[0,8]}}", "shape" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,2],\"data_offsets\":[0,8]}}", "5 dims" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", "shape" },
        { "{\"a\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}", "dtype 'Q4'" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", "bad JSON" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],}}", "bad JSON" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"a\":1}",
          "duplicate key" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8.5]}}", "data_offsets" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", "missing 'data_offsets'" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"x\":1}}",
          "unexpected key" },
        { "{\"__metadata__\":{\"k\":1}}", "not a string" },
        { "{\"a\":\"\\ud800\"}", "surrogate" },
        { "{\"a\":\"\x01\"}", "control character" },
        { "{\"a\":\"\xc3\x28\"}", "UTF-8" },
        { "[1,2]", "not a JSON object" },
        { "{} x", "junk" },
        { "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
          "nested too deeply" },
    };
    msd_safetensors st;
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        CHECK(write_st(tmp("bad.safetensors"), cases[k].header, 8) == 0);
        int rc = msd_safetensors_load(tmp("bad.safetensors"), &st);
        if (rc == MSD_OK || !has(cases[k].msg) || !has("bad.safetensors"))
            fprintf(stderr, "  case %zu: rc %d: %s\n", k, rc, msd_last_error());
        CHECK(rc != MSD_OK && st.count == 0 && has(cases[k].msg) && has("bad.safetensors"));
    }
    /* length prefix past the end; truncated file; empty file */
    size_t n;
    unsigned char *good = read_bytes(FIX "ref.safetensors", &n);
    CHECK(good);
    CHECK(write_bytes(tmp("bad.safetensors"), good, n - 3) == 0);
    CHECK(msd_safetensors_load(tmp("bad.safetensors"), &st) == MSD_ERR_FORMAT);
    CHECK(has("outside"));
    CHECK(write_bytes(tmp("bad.safetensors"), good, 5) == 0);
    CHECK(msd_safetensors_load(tmp("bad.safetensors"), &st) == MSD_ERR_FORMAT && has("truncated"));
    good[7] = 0x7f;
    CHECK(write_bytes(tmp("bad.safetensors"), good, n) == 0);
    CHECK(msd_safetensors_load(tmp("bad.safetensors"), &st) == MSD_ERR_FORMAT);
    CHECK(has("past the end"));
    free(good);
}

/* ---- PNG ------------------------------------------------------------------------------ */

static void test_png_roundtrip(void)
{
    int cs[3] = { 1, 3, 4 };
    for (int k = 0; k < 3; k++) {
        int shape[3] = { cs[k], 3, 5 };
        msd_tensor *t = msd_tensor_empty(3, shape), *u = NULL;
        float *p = msd_tensor_data(t);
        size_t n = msd_tensor_numel(t);
        for (size_t i = 0; i < n; i++)
            p[i] = (float)((i * 37) % 256) / 255.0f;
        p[0] = -0.5f;
        p[1] = 7.0f;
        p[2] = 0.5f; /* round(127.5) = 128 */
        p[3] = NAN;
        CHECK_OK(msd_png_save(tmp("x.png"), t));
        CHECK_OK(msd_png_load(tmp("x.png"), &u));
        CHECK(msd_tensor_same_shape(t, u));
        const float *q = msd_tensor_data(u);
        CHECK(q[0] == 0.0f && q[1] == 1.0f && q[2] == 128.0f / 255.0f && q[3] == 0.0f);
        for (size_t i = 4; i < n; i++)
            CHECK_CLOSE(q[i], p[i], 1e-7, 0);
        msd_tensor_release(t);
        msd_tensor_release(u);
    }
    int bad[3] = { 2, 2, 2 };
    msd_tensor *t = msd_tensor_zeros(3, bad);
    CHECK(msd_png_save(tmp("y.png"), t) == MSD_ERR_SHAPE && has("y.png") && has("[2,2,2]"));
    msd_tensor_release(t);
    CHECK(access(tmp("y.png"), F_OK) != 0 && tmp_leftovers() == 0);
}

/* hand-made PNGs from gen_files.py */
static void test_png_files(void)
{
    msd_tensor *t = NULL;
    CHECK_OK(msd_png_load(FIX "gray.png", &t));
    CHECK(t->shape[0] == 1 && t->shape[1] == 2 && t->shape[2] == 3);
    CHECK(msd_tensor_data(t)[1] == 64.0f / 255.0f && msd_tensor_data(t)[4] == 200.0f / 255.0f);
    msd_tensor_release(t);
    CHECK_OK(msd_png_load(FIX "rgb.png", &t));
    CHECK(t->shape[0] == 3 && t->shape[1] == 2 && t->shape[2] == 2);
    /* pixel (1,1) = (17, 34, 51): planes at offsets 3, 7, 11 */
    CHECK(msd_tensor_data(t)[3] == 17.0f / 255.0f && msd_tensor_data(t)[11] == 51.0f / 255.0f);
    msd_tensor_release(t);
    CHECK_OK(msd_png_load(FIX "rgba.png", &t));
    CHECK(t->shape[0] == 4 && t->shape[1] == 2 && t->shape[2] == 3);
    CHECK(msd_tensor_data(t)[3 * 6 + 1] == 128.0f / 255.0f); /* alpha of pixel (0,1) */
    msd_tensor_release(t);
    CHECK_OK(msd_png_load(FIX "gray_alpha.png", &t));
    CHECK(t->shape[0] == 4 && t->shape[2] == 2);
    CHECK(msd_tensor_data(t)[2] == 50.0f / 255.0f && msd_tensor_data(t)[6] == 1.0f);
    msd_tensor_release(t);
    CHECK_OK(msd_png_load(FIX "palette.png", &t));
    CHECK(t->shape[0] == 3 && t->shape[2] == 4 && msd_tensor_data(t)[4 + 1] == 1.0f);
    msd_tensor_release(t);
    CHECK(msd_png_load(FIX "u1.npy", &t) == MSD_ERR_FORMAT && has("u1.npy") && !t);
    /* a header that lies about its size: 60000 x 60000 in a tiny file */
    size_t n;
    unsigned char *b = read_bytes(FIX "gray.png", &n);
    CHECK(b);
    b[16] = 0; b[17] = 0; b[18] = 0xea; b[19] = 0x60; /* width */
    b[20] = 0; b[21] = 0; b[22] = 0xea; b[23] = 0x60; /* height */
    /* fix the IHDR CRC so that libpng accepts the header */
    uint32_t crc = 0xffffffffu;
    for (int i = 12; i < 29; i++) {
        crc ^= b[i];
        for (int k = 0; k < 8; k++)
            crc = crc & 1 ? (crc >> 1) ^ 0xedb88320u : crc >> 1;
    }
    crc ^= 0xffffffffu;
    b[29] = (unsigned char)(crc >> 24); b[30] = (unsigned char)(crc >> 16);
    b[31] = (unsigned char)(crc >> 8); b[32] = (unsigned char)crc;
    CHECK(write_bytes(tmp("big.png"), b, n) == 0);
    CHECK(msd_png_load(tmp("big.png"), &t) == MSD_ERR_FORMAT && has("big.png") && !t);
    CHECK(write_bytes(tmp("trunc.png"), b, 40) == 0);
    CHECK(msd_png_load(tmp("trunc.png"), &t) == MSD_ERR_FORMAT && has("trunc.png"));
    free(b);
}

/* ---- atomic writes ------------------------------------------------------------------ */

static int write_then_fail(FILE *f, void *ctx)
{
    (void)ctx;
    fputs("half-written garbage", f);
    return msd_error(MSD_ERR_IO, "injected failure");
}

static void test_atomic_write(void)
{
    int s[1] = { 3 };
    msd_tensor *t = msd_tensor_from_data(1, s, (float[]){ 1, 2, 3 }), *u = NULL;
    CHECK_OK(msd_npy_save(tmp("keep.npy"), t));
    size_t n0, n1;
    unsigned char *before = read_bytes(tmp("keep.npy"), &n0);
    CHECK(msd_file_write_atomic(tmp("keep.npy"), write_then_fail, NULL) == MSD_ERR_IO);
    CHECK(has("injected failure"));
    unsigned char *after = read_bytes(tmp("keep.npy"), &n1);
    CHECK(before && after && n0 == n1 && memcmp(before, after, n0) == 0);
    CHECK(tmp_leftovers() == 0);
    free(before);
    free(after);
    /* rename onto a non-empty directory fails after the data was written */
    CHECK(mkdir(tmp("adir"), 0755) == 0);
    CHECK(write_bytes(tmp("adir/f"), "x", 1) == 0);
    CHECK(msd_npy_save(tmp("adir"), t) == MSD_ERR_IO && has("adir") && has("in its place"));
    CHECK(tmp_leftovers() == 0);
    CHECK(msd_png_save(tmp("nodir/x.png"), t) != MSD_OK); /* shape error first */
    int s3[3] = { 1, 1, 1 };
    msd_tensor *img = msd_tensor_zeros(3, s3);
    CHECK(msd_png_save(tmp("nodir/x.png"), img) == MSD_ERR_IO && has("nodir/x.png"));
    CHECK_OK(msd_npy_load(tmp("keep.npy"), &u));
    CHECK(msd_tensor_data(u)[2] == 3.0f);
    remove(tmp("adir/f"));
    rmdir(tmp("adir"));
    msd_tensor_release(img);
    msd_tensor_release(t);
    msd_tensor_release(u);
}

static void cleanup(void)
{
    DIR *d = opendir(tmpdir);
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (e->d_name[0] != '.')
            remove(tmp(e->d_name));
    if (d)
        closedir(d);
    rmdir(tmpdir);
}

int main(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/msd_test_io.XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_npy_roundtrip);
    RUN(test_npy_numpy_files);
    RUN(test_npy_errors);
    RUN(test_half_bf16);
    RUN(test_half_bf16_rounding);
    RUN(test_safetensors_reference);
    RUN(test_safetensors_roundtrip);
    RUN(test_safetensors_corrupt);
    RUN(test_png_roundtrip);
    RUN(test_png_files);
    RUN(test_atomic_write);
    cleanup();
    return TEST_SUMMARY();
}
