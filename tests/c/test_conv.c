/* conv2d and conv_transpose2d: forward and backward against naive direct
 * loops (including batches large enough to be split into GEMM chunks),
 * gradients against finite differences, and shape errors. */
#include <float.h>
#include <string.h>

#include "conv_amx.h"
#include "conv_wino.h"
#include "cpu.h"
#include "gradcheck.h"
#include "test.h"

typedef struct geom {
    int N, Cin, H, W, Cout, k, s, p;
} geom;

static int conv_out(const geom *g, int H) { return (H + 2 * g->p - g->k) / g->s + 1; }
static int convt_out(const geom *g, int H) { return (H - 1) * g->s - 2 * g->p + g->k; }

/* y[n,co,oy,ox] = b[co] + sum x[n,ci,oy*s-p+i,ox*s-p+j] w[co,ci,i,j], in double. */
static void naive_conv2d(double *y, const float *x, const float *w, const float *b, const geom *g)
{
    int Ho = conv_out(g, g->H), Wo = conv_out(g, g->W), k = g->k;
    for (int n = 0; n < g->N; n++)
        for (int co = 0; co < g->Cout; co++)
            for (int oy = 0; oy < Ho; oy++)
                for (int ox = 0; ox < Wo; ox++) {
                    double acc = b ? b[co] : 0.0;
                    for (int ci = 0; ci < g->Cin; ci++)
                        for (int i = 0; i < k; i++)
                            for (int j = 0; j < k; j++) {
                                int iy = oy * g->s - g->p + i, ix = ox * g->s - g->p + j;
                                if (iy < 0 || iy >= g->H || ix < 0 || ix >= g->W)
                                    continue;
                                acc += (double)x[((n * g->Cin + ci) * g->H + iy) * g->W + ix] *
                                       w[((co * g->Cin + ci) * k + i) * k + j];
                            }
                    *y++ = acc;
                }
}

/* The gradients of sum(y * dy) for the direct conv2d loop above. */
static void naive_conv2d_grad(double *dx, double *dw, double *db, const float *dy, const float *x,
                              const float *w, const geom *g)
{
    int Ho = conv_out(g, g->H), Wo = conv_out(g, g->W), k = g->k;
    for (int n = 0; n < g->N; n++)
        for (int co = 0; co < g->Cout; co++)
            for (int oy = 0; oy < Ho; oy++)
                for (int ox = 0; ox < Wo; ox++) {
                    double d = *dy++;
                    db[co] += d;
                    for (int ci = 0; ci < g->Cin; ci++)
                        for (int i = 0; i < k; i++)
                            for (int j = 0; j < k; j++) {
                                int iy = oy * g->s - g->p + i, ix = ox * g->s - g->p + j;
                                if (iy < 0 || iy >= g->H || ix < 0 || ix >= g->W)
                                    continue;
                                size_t xi = ((size_t)(n * g->Cin + ci) * g->H + iy) * g->W + ix;
                                size_t wi = ((size_t)(co * g->Cin + ci) * k + i) * k + j;
                                dx[xi] += d * w[wi];
                                dw[wi] += d * x[xi];
                            }
                }
}

/* Transposed conv by its definition: every input pixel scatters w[ci,co]
 * into y at (iy*s-p+i, ix*s-p+j). */
static void naive_convt(double *y, const float *x, const float *w, const float *b, const geom *g)
{
    int Ho = convt_out(g, g->H), Wo = convt_out(g, g->W), k = g->k;
    for (int n = 0; n < g->N; n++)
        for (int co = 0; co < g->Cout; co++)
            for (int l = 0; l < Ho * Wo; l++)
                y[(size_t)(n * g->Cout + co) * Ho * Wo + l] = b ? b[co] : 0.0;
    for (int n = 0; n < g->N; n++)
        for (int ci = 0; ci < g->Cin; ci++)
            for (int iy = 0; iy < g->H; iy++)
                for (int ix = 0; ix < g->W; ix++) {
                    double v = x[((n * g->Cin + ci) * g->H + iy) * g->W + ix];
                    for (int co = 0; co < g->Cout; co++)
                        for (int i = 0; i < k; i++)
                            for (int j = 0; j < k; j++) {
                                int oy = iy * g->s - g->p + i, ox = ix * g->s - g->p + j;
                                if (oy < 0 || oy >= Ho || ox < 0 || ox >= Wo)
                                    continue;
                                y[((size_t)(n * g->Cout + co) * Ho + oy) * Wo + ox] +=
                                    v * w[((ci * g->Cout + co) * k + i) * k + j];
                            }
                }
}

static void naive_convt_grad(double *dx, double *dw, double *db, const float *dy, const float *x,
                             const float *w, const geom *g)
{
    int Ho = convt_out(g, g->H), Wo = convt_out(g, g->W), k = g->k;
    for (int n = 0; n < g->N; n++)
        for (int co = 0; co < g->Cout; co++)
            for (int l = 0; l < Ho * Wo; l++)
                db[co] += dy[(size_t)(n * g->Cout + co) * Ho * Wo + l];
    for (int n = 0; n < g->N; n++)
        for (int ci = 0; ci < g->Cin; ci++)
            for (int iy = 0; iy < g->H; iy++)
                for (int ix = 0; ix < g->W; ix++) {
                    size_t xi = ((size_t)(n * g->Cin + ci) * g->H + iy) * g->W + ix;
                    for (int co = 0; co < g->Cout; co++)
                        for (int i = 0; i < k; i++)
                            for (int j = 0; j < k; j++) {
                                int oy = iy * g->s - g->p + i, ox = ix * g->s - g->p + j;
                                if (oy < 0 || oy >= Ho || ox < 0 || ox >= Wo)
                                    continue;
                                double d = dy[((size_t)(n * g->Cout + co) * Ho + oy) * Wo + ox];
                                size_t wi = ((size_t)(ci * g->Cout + co) * k + i) * k + j;
                                dx[xi] += d * w[wi];
                                dw[wi] += d * x[xi];
                            }
                }
}

/* max |a - b| / (1 + |b|) */
static double max_rel(const float *a, const double *b, size_t n)
{
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs(a[i] - b[i]) / (1.0 + fabs(b[i]));
        worst = e > worst ? e : worst;
    }
    return worst;
}

/* bf16 of v by arithmetic, independent of the library's bit tricks: the
 * 8-bit significand rounded to nearest even (the default rounding mode of
 * nearbyint), subnormals flushed to zero. */
static float bf16_value(float v)
{
    if (!(fabsf(v) >= FLT_MIN))
        return v != v ? v : copysignf(0.0f, v);
    int e;
    double m = frexp(v, &e); /* v = m 2^e, 0.5 <= |m| < 1 */
    return (float)ldexp(nearbyint(m * 256.0) / 256.0, e);
}

/* A copy of n floats, rounded by bf16_value when bf16. */
static float *copy_rounded(const float *a, size_t n, int bf16)
{
    float *c = malloc(n * sizeof *c);
    for (size_t i = 0; i < n; i++)
        c[i] = bf16 ? bf16_value(a[i]) : a[i];
    return c;
}

/* Runs the op on random x, w, b (or no bias), compares y with the naive
 * loop, then runs backward with a random dy through the tape and compares
 * dx, dw, db with the naive gradients. In bf16 precision the naive loops
 * take x, w and dy rounded to bf16 (the bias and its gradient stay fp32). */
static int check_against_naive(int transposed, const geom *g, int with_bias, unsigned seed)
{
    int bf16 = msd_precision_get() == MSD_PREC_BF16;
    int sx[4] = { g->N, g->Cin, g->H, g->W };
    int sw[4] = { transposed ? g->Cin : g->Cout, transposed ? g->Cout : g->Cin, g->k, g->k };
    int sb[1] = { g->Cout };
    msd_tensor *x = gc_randn_like(4, sx, seed), *w = gc_randn_like(4, sw, seed + 1);
    msd_tensor *b = with_bias ? gc_randn_like(1, sb, seed + 2) : NULL, *y = NULL;
    x->requires_grad = w->requires_grad = 1;
    if (b)
        b->requires_grad = 1;
    int bad = 0;
    int rc = transposed ? msd_conv_transpose2d(x, w, b, g->s, g->p, &y)
                        : msd_conv2d(x, w, b, g->s, g->p, &y);
    if (rc != MSD_OK) {
        fprintf(stderr, "  forward failed: %s\n", msd_last_error());
        return 1;
    }
    int Ho = transposed ? convt_out(g, g->H) : conv_out(g, g->H);
    int Wo = transposed ? convt_out(g, g->W) : conv_out(g, g->W);
    if (y->ndim != 4 || y->shape[0] != g->N || y->shape[1] != g->Cout || y->shape[2] != Ho ||
        y->shape[3] != Wo) {
        fprintf(stderr, "  wrong output shape\n");
        return 1;
    }
    size_t ny = msd_tensor_numel(y), nx = msd_tensor_numel(x), nw = msd_tensor_numel(w);
    double *ref = calloc(ny + nx + nw + g->Cout, sizeof *ref);
    double *rdx = ref + ny, *rdw = rdx + nx, *rdb = rdw + nw;
    float *px = copy_rounded(msd_tensor_data(x), nx, bf16);
    float *pw = copy_rounded(msd_tensor_data(w), nw, bf16);
    const float *pb = b ? msd_tensor_data(b) : NULL;
    if (transposed)
        naive_convt(ref, px, pw, pb, g);
    else
        naive_conv2d(ref, px, pw, pb, g);
    double e = max_rel(msd_tensor_data(y), ref, ny);
    if (e > 1e-4) { /* float sums of up to 2304 products */
        fprintf(stderr, "  forward differs from the naive loop by %g\n", e);
        bad = 1;
    }
    msd_tensor *dy = gc_randn_like(4, y->shape, seed + 3);
    if (!bad && msd_backward(y, dy, 0) != MSD_OK) {
        fprintf(stderr, "  backward failed: %s\n", msd_last_error());
        bad = 1;
    }
    if (!bad) {
        float *pdy = copy_rounded(msd_tensor_data(dy), ny, bf16);
        if (transposed)
            naive_convt_grad(rdx, rdw, rdb, pdy, px, pw, g);
        else
            naive_conv2d_grad(rdx, rdw, rdb, pdy, px, pw, g);
        if (bf16) { /* db is a sum of the fp32 dy */
            int L = Ho * Wo;
            for (int c = 0; c < g->Cout; c++) {
                rdb[c] = 0;
                for (int n = 0; n < g->N; n++)
                    for (int l = 0; l < L; l++)
                        rdb[c] += msd_tensor_data(dy)[((size_t)n * g->Cout + c) * L + l];
            }
        }
        free(pdy);
        double ex = max_rel(msd_tensor_data(x->grad), rdx, nx);
        double ew = max_rel(msd_tensor_data(w->grad), rdw, nw);
        double eb = b ? max_rel(msd_tensor_data(b->grad), rdb, g->Cout) : 0;
        if (ex > 1e-4 || ew > 1e-4 || eb > 1e-4) {
            fprintf(stderr, "  gradients differ from the naive loop: dx %g, dw %g, db %g\n", ex,
                    ew, eb);
            bad = 1;
        }
    }
    free(ref);
    free(px);
    free(pw);
    msd_tensor_release(dy);
    msd_tensor_release(y);
    msd_tensor_release(x);
    msd_tensor_release(w);
    msd_tensor_release(b);
    return bad;
}

static void test_conv2d_vs_naive(void)
{
    const geom cases[] = {
        { 2, 3, 8, 8, 4, 3, 1, 1 },   /* the model's 3x3 conv */
        { 3, 2, 7, 6, 5, 3, 2, 0 },   /* stride 2, odd sizes */
        { 2, 4, 4, 4, 3, 1, 1, 0 },   /* 1x1 shortcut conv */
        { 1, 2, 5, 5, 3, 4, 2, 1 },   /* even kernel, stride and padding */
        { 2, 3, 2, 3, 2, 3, 1, 2 },   /* padding larger than the image */
        { 3, 64, 16, 16, 3, 3, 1, 1 }, /* the model's last conv: few outputs, direct */
        { 2, 5, 6, 7, 1, 2, 1, 0 },   /* one output channel, even kernel */
        { 2, 6, 9, 21, 2, 3, 1, 1 },  /* direct: 4x16 blocks, a right and a bottom edge */
    };
    for (int isa = 0; isa <= msd_isa_best(); isa++) { /* every kernel level */
        CHECK_OK(msd_isa_set(isa));
        for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
            CHECK(!check_against_naive(0, &cases[i], 1, 100 + (unsigned)i));
            CHECK(!check_against_naive(0, &cases[i], 0, 200 + (unsigned)i));
        }
    }
    CHECK_OK(msd_isa_set(msd_isa_best()));
}

/* bf16 by arithmetic against hand-worked bits, and the library's rounding
 * (used by the paths without tiles) against it. */
static void test_bf16_rounding(void)
{
    /* 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1); 1 +
     * 3*2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: to even (1 + 2^-6) */
    const float in[] = { 1.0f + 1.0f / 256, 1.0f + 3.0f / 256, 0.1f, -7.7f, 1e-40f, -1e-40f,
                         3.4e38f, -INFINITY };
    const uint16_t bits[] = { 0x3f80, 0x3f82, 0x3dcd, 0xc0f6, 0x0000, 0x8000, 0x7f80, 0xff80 };
    for (size_t i = 0; i < sizeof in / sizeof *in; i++) {
        CHECK(msd_bf16_from_float(in[i]) == bits[i]);
        float v = in[i];
        msd_round_bf16(&v, 1);
        float r = bf16_value(in[i]);
        CHECK(memcmp(&v, &r, sizeof v) == 0 || (i == 6 && isinf(v))); /* 3.4e38 rounds up to inf */
    }
    uint16_t nan = msd_bf16_from_float(NAN);
    CHECK((nan & 0x7f80) == 0x7f80 && (nan & 0x7f) != 0);
    /* the vector loop over one array: every 4093rd bit pattern (NaN payloads,
     * subnormals, infinities, both signs) against the scalar rule */
    size_t np = (size_t)(0xffffffffu / 4093u) + 1;
    uint32_t *pat = malloc(np * sizeof *pat);
    CHECK(pat != NULL);
    if (pat) {
        for (size_t i = 0; i < np; i++)
            pat[i] = (uint32_t)(i * 4093u);
        msd_round_bf16((float *)pat, np);
        size_t wrong = 0;
        for (size_t i = 0; i < np; i++) {
            uint32_t u = (uint32_t)(i * 4093u);
            float f;
            memcpy(&f, &u, sizeof f);
            wrong += pat[i] != (uint32_t)msd_bf16_from_float(f) << 16;
        }
        CHECK(wrong == 0);
        free(pat);
    }
    for (unsigned k = 0; k < 100000; k++) { /* random normal floats */
        float v = (float)ldexp((double)(k * 2654435761u % 1000003u) / 1000003.0 + 0.5,
                               (int)(k % 200) - 100) * (k & 1 ? -1.0f : 1.0f);
        float a = v;
        msd_round_bf16(&a, 1);
        if (a != bf16_value(v)) {
            fprintf(stderr, "  bf16(%.9g): library %.9g, arithmetic %.9g\n", v, a,
                    bf16_value(v));
            CHECK(0);
            break;
        }
    }
}

/* The packed weights for the tiles (vectorised at AVX-512 and above): each entry is
 * msd_bf16_from_float of the weight it moves, at every level, specials included. */
static void test_bf16_pack_weights(void)
{
    enum { CO = 32, CI = 64, TAPS = 9 };
    static float w[CO * CI * TAPS];
    static uint16_t wa[CO * CI * TAPS];
    unsigned st = 11;
    for (int i = 0; i < CO * CI * TAPS; i++)
        w[i] = gc_rand(&st) * 3.0f;
    w[5] = 1e-40f;
    w[6] = -0.0f;
    w[7] = NAN;
    w[8] = INFINITY;
    w[9] = 1.0f + 1.0f / 256;
    for (int isa = 0; isa <= msd_isa_best(); isa++) {
        CHECK_OK(msd_isa_set(isa));
        memset(wa, 0xff, sizeof wa);
        msd_amx_pack_weights(wa, w, CO, CI, TAPS);
        int bad = 0;
        for (int co = 0; co < CO; co++)
            for (int ci = 0; ci < CI; ci++)
                for (int t = 0; t < TAPS; t++)
                    bad += wa[((t * (CI / 32) + ci / 32) * (CO / 16) + co / 16) * 512 +
                              ci % 32 / 2 * 32 + co % 16 * 2 + ci % 2] !=
                           msd_bf16_from_float(w[(co * CI + ci) * TAPS + t]);
        if (bad)
            fprintf(stderr, "  level %s: %d packed weights differ\n", msd_isa_name(isa), bad);
        CHECK(bad == 0);
    }
    CHECK_OK(msd_isa_set(msd_isa_best()));
}

/* conv2d in bf16 precision at every level: on the AMX tiles where the level
 * and shape allow it (channels multiples of 32, stride 1), else the fp32
 * kernels on rounded copies; both against the naive loops on rounded
 * inputs. Winograd off: its bf16 rounds the transformed values, not the
 * inputs (test_conv2d_winograd_bf16). */
static void test_conv2d_bf16(void)
{
    const geom cases[] = {
        { 2, 64, 16, 16, 64, 3, 1, 1 },  /* the model's 16x16 layers */
        { 3, 64, 8, 8, 128, 3, 1, 1 },   /* 8x8, wider out */
        { 9, 128, 4, 4, 32, 3, 1, 1 },   /* 4x4, several groups */
        { 1, 32, 7, 5, 32, 3, 1, 0 },    /* no padding, odd sizes */
        { 2, 32, 5, 6, 64, 3, 1, 2 },    /* padding 2 */
        { 2, 32, 6, 6, 32, 1, 1, 0 },    /* 1x1 */
        { 2, 3, 8, 8, 32, 3, 1, 1 },     /* 3 channels in: no tiles */
        { 2, 32, 8, 8, 32, 3, 2, 1 },    /* stride 2: no tiles, dx through col2im */
        { 2, 64, 16, 16, 3, 3, 1, 1 },   /* 3 channels out: direct, inputs rounded */
    };
    /* conv_transpose2d (weights (Cin, Cout, k, k)): on the tiles as a 1x1 convolution to
     * Cout*k*k channels where Cin and that are multiples of 32, else rounded copies */
    const geom tcases[] = {
        { 17, 64, 8, 8, 16, 2, 2, 0 },   /* UnetUp, 8x8 -> 16x16; 3 images a group */
        { 5, 128, 1, 1, 8, 4, 4, 0 },    /* up0: 1x1 -> 4x4 */
        { 2, 32, 4, 4, 8, 2, 2, 0 },     /* 32 channels out: tiles */
        { 2, 6, 4, 5, 3, 3, 2, 1 },      /* 6 channels in, overlapping windows: rounded */
    };
    CHECK_OK(msd_precision_set(MSD_PREC_BF16));
    msd_wino_set(MSD_WINO_OFF);
    for (int isa = 0; isa <= msd_isa_best(); isa++) {
        CHECK_OK(msd_isa_set(isa));
        for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
            if (check_against_naive(0, &cases[i], (int)(i & 1), 500 + (unsigned)i)) {
                fprintf(stderr, "  bf16 case %zu at level %s\n", i, msd_isa_name(isa));
                CHECK(0);
            }
        }
        for (size_t i = 0; i < sizeof tcases / sizeof *tcases; i++) {
            if (check_against_naive(1, &tcases[i], (int)(i & 1), 600 + (unsigned)i)) {
                fprintf(stderr, "  bf16 transposed case %zu at level %s\n", i,
                        msd_isa_name(isa));
                CHECK(0);
            }
        }
    }
    CHECK_OK(msd_isa_set(msd_isa_best()));
    CHECK_OK(msd_precision_set(MSD_PREC_FP32));
    msd_wino_set(MSD_WINO_ON);
    CHECK(msd_precision_set(MSD_PREC_COUNT) == MSD_ERR_ARG);
    CHECK(msd_precision_from_name("bf16") == MSD_PREC_BF16);
    CHECK(msd_precision_from_name("fp16") == -1);
}

static void test_conv2d_chunked_batch(void)
{
    /* 2304 x 256 columns per image: the batch is split into several GEMM
     * chunks with a remainder */
    const geom g = { 9, 256, 16, 16, 4, 3, 1, 1 };
    /* 8x8 maps: 16 images per group, two groups */
    const geom g8 = { 20, 5, 8, 8, 7, 3, 1, 1 };
    for (int isa = 0; isa <= msd_isa_best(); isa++) {
        CHECK_OK(msd_isa_set(isa));
        CHECK(!check_against_naive(0, &g, 1, 7));
        CHECK(!check_against_naive(0, &g8, 1, 8));
    }
    CHECK_OK(msd_isa_set(msd_isa_best()));
}

/* fp32 3x3 convolutions by Winograd F(4x4, 3x3) and F(2x2, 3x3)
 * (conv_wino.c): forward, input and weight gradients against the float64
 * loops at every kernel level, in both modes (the default picks F(4x4) for
 * the maps whose sides are multiples of 4 and batches of 32 tiles or more;
 * MSD_WINO_F2 takes F(2x2) for all), with channel counts and widths that
 * leave partial 16-blocks, batches split into several groups and more groups
 * than weight-gradient chunks; then the same numbers on 1 and 2 threads, bit
 * for bit, and within rounding of the direct convolution. */
static float *copy_of(const msd_tensor *t)
{
    size_t n = msd_tensor_numel(t);
    float *p = malloc(n * sizeof *p);
    memcpy(p, msd_tensor_data(t), n * sizeof *p);
    return p;
}

static void conv_once(const geom *g, unsigned seed, float **y, float **dx, float **dw)
{
    int sx[4] = { g->N, g->Cin, g->H, g->W }, sw[4] = { g->Cout, g->Cin, 3, 3 };
    msd_tensor *x = gc_randn_like(4, sx, seed), *w = gc_randn_like(4, sw, seed + 1), *out = NULL;
    x->requires_grad = w->requires_grad = 1;
    CHECK_OK(msd_conv2d(x, w, NULL, 1, 1, &out));
    msd_tensor *dy = gc_randn_like(4, out->shape, seed + 2);
    CHECK_OK(msd_backward(out, dy, 0));
    *y = copy_of(out);
    *dx = copy_of(x->grad);
    *dw = copy_of(w->grad);
    msd_tensor_release(dy);
    msd_tensor_release(out);
    msd_tensor_release(x);
    msd_tensor_release(w);
}

/* Winograd (mode) against direct on case g: y, dx, dw the same on 1 and 2
 * threads, bit for bit, and within 1e-5 of the direct path's largest value
 * (*worst, unless NULL: the largest of the three) but not its bits. */
static void winograd_vs_direct(const geom *g, int mode, double *worst)
{
    float *y[3], *dx[3], *dw[3];
    int threads = msd_get_threads();
    msd_wino_set(mode);
    msd_set_threads(1);
    conv_once(g, 77, &y[0], &dx[0], &dw[0]);
    msd_set_threads(2);
    conv_once(g, 77, &y[1], &dx[1], &dw[1]);
    msd_wino_set(MSD_WINO_OFF);
    conv_once(g, 77, &y[2], &dx[2], &dw[2]);
    msd_wino_set(MSD_WINO_ON);
    msd_set_threads(threads);
    size_t ny = (size_t)g->N * g->Cout * g->H * g->W, nx = (size_t)g->N * g->Cin * g->H * g->W;
    size_t nw = (size_t)g->Cout * g->Cin * 9;
    CHECK(memcmp(y[0], y[1], ny * sizeof(float)) == 0);
    CHECK(memcmp(dx[0], dx[1], nx * sizeof(float)) == 0);
    CHECK(memcmp(dw[0], dw[1], nw * sizeof(float)) == 0);
    double ey = 0, ex = 0, ew = 0, sy = 0, sx = 0, sw = 0;
    for (size_t k = 0; k < ny; k++) {
        ey = fmax(ey, fabs(y[0][k] - y[2][k]));
        sy = fmax(sy, fabs(y[2][k]));
    }
    for (size_t k = 0; k < nx; k++) {
        ex = fmax(ex, fabs(dx[0][k] - dx[2][k]));
        sx = fmax(sx, fabs(dx[2][k]));
    }
    for (size_t k = 0; k < nw; k++) {
        ew = fmax(ew, fabs(dw[0][k] - dw[2][k]));
        sw = fmax(sw, fabs(dw[2][k]));
    }
    fprintf(stderr, "  Winograd (mode %d) - direct, relative to the largest value: y %.2g, dx %.2g, "
                    "dw %.2g\n", mode, ey / sy, ex / sx, ew / sw);
    CHECK(ey / sy < 1e-5 && ex / sx < 1e-5 && ew / sw < 1e-5);
    CHECK(ey > 0); /* a different algorithm: not the direct path's bits */
    for (int k = 0; k < 3; k++) {
        free(y[k]);
        free(dx[k]);
        free(dw[k]);
    }
    if (worst)
        *worst = fmax(ey / sy, fmax(ex / sx, ew / sw));
}

/* The Winograd backward with only some gradients wanted (an input or the weights that do not
 * require grad): the ones it computes have the bits of the full backward's. */
static void winograd_partial_grads(const geom *g, int mode)
{
    int sx[4] = { g->N, g->Cin, g->H, g->W }, sw[4] = { g->Cout, g->Cin, 3, 3 };
    int sb[1] = { g->Cout };
    float *ref[3] = { NULL, NULL, NULL };
    msd_wino_set(mode);
    for (int pass = 0; pass < 3; pass++) { /* all; no dx; no dw */
        msd_tensor *x = gc_randn_like(4, sx, 31), *w = gc_randn_like(4, sw, 32);
        msd_tensor *b = gc_randn_like(1, sb, 33), *y = NULL;
        x->requires_grad = pass != 1;
        w->requires_grad = pass != 2;
        b->requires_grad = 1;
        CHECK_OK(msd_conv2d(x, w, b, 1, 1, &y));
        msd_tensor *dy = gc_randn_like(4, y->shape, 34);
        CHECK_OK(msd_backward(y, dy, 0));
        msd_tensor *grads[3] = { x->grad, w->grad, b->grad };
        for (int k = 0; k < 3; k++) {
            if (pass == 0) {
                ref[k] = copy_of(grads[k]);
            } else if (grads[k]) {
                size_t n = msd_tensor_numel(grads[k]);
                CHECK(memcmp(ref[k], msd_tensor_data(grads[k]), n * sizeof(float)) == 0);
            } else {
                CHECK(k == pass - 1); /* only the one not wanted is missing */
            }
        }
        msd_tensor_release(dy);
        msd_tensor_release(y);
        msd_tensor_release(x);
        msd_tensor_release(w);
        msd_tensor_release(b);
    }
    for (int k = 0; k < 3; k++)
        free(ref[k]);
    msd_wino_set(MSD_WINO_ON);
}

static void test_conv2d_winograd(void)
{
    const geom cases[] = {
        /* F(4x4) by default (16x16 and larger; F(2x2) with MSD_WINO_F2) */
        { 4, 16, 16, 16, 16, 3, 1, 1 },  /* 64 tiles of 4x4 (256 of 2x2, two groups) */
        { 1, 16, 16, 16, 16, 3, 1, 1 },  /* one image, 16 tiles (64) */
        { 6, 20, 16, 16, 24, 3, 1, 1 },  /* 16 + 4 channels; 2 groups of 4 and 2 images */
        { 5, 17, 16, 32, 19, 3, 1, 1 },  /* 16 x 32, odd channels; 2 images a group */
        { 40, 16, 16, 16, 16, 3, 1, 1 }, /* 10 groups (20): more than the 8 dw chunks */
        /* F(2x2) in either mode */
        { 20, 20, 8, 8, 24, 3, 1, 1 },   /* 16 + 4 channels; 8 images a group, 3 groups */
        { 1, 16, 2, 2, 24, 3, 1, 1 },    /* one tile */
        { 70, 32, 4, 4, 48, 3, 1, 1 },   /* 4x4 maps: 32 images a group */
        { 20, 17, 6, 10, 19, 3, 1, 1 },  /* 6 x 10: 60 pixels, a partial block of 16 */
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const geom *g = &cases[i];
        CHECK(msd_wino_ok(g->N, g->Cin, g->Cout, g->H, g->W, 3, 3, 1, 1));
    }
    const geom *g0 = &cases[0];
    CHECK(!msd_wino_ok(0, 16, 16, 16, 16, 3, 3, 1, 1));
    CHECK(!msd_wino_ok(4, 15, 16, 16, 16, 3, 3, 1, 1));
    CHECK(!msd_wino_ok(4, 16, 16, 16, 15, 3, 3, 1, 1));
    CHECK(!msd_wino_ok(4, 16, 16, 16, 16, 3, 3, 2, 1));
    CHECK(!msd_wino_ok(4, 16, 16, 16, 16, 3, 3, 1, 0));
    msd_wino_set(MSD_WINO_OFF);
    CHECK(!msd_wino_ok(g0->N, g0->Cin, g0->Cout, g0->H, g0->W, 3, 3, 1, 1));
    msd_wino_set(MSD_WINO_ON);
    /* the tile: F(4x4) for maps of 16 tiles of 4x4 or more, fp32, mode on */
    CHECK(msd_wino_tile(16, 16, 0) == 4 && msd_wino_tile(8, 32, 0) == 4);
    CHECK(msd_wino_tile(8, 8, 0) == 2 && msd_wino_tile(12, 12, 0) == 2);
    CHECK(msd_wino_tile(6, 10, 0) == 2 && msd_wino_tile(16, 16, 1) == 2);
    msd_wino_set(MSD_WINO_F2);
    CHECK(msd_wino_get() == MSD_WINO_F2 && msd_wino_tile(16, 16, 0) == 2);
    CHECK(msd_wino_ok(g0->N, g0->Cin, g0->Cout, g0->H, g0->W, 3, 3, 1, 1));
    msd_wino_set(MSD_WINO_ON);
    CHECK(msd_wino_get() == MSD_WINO_ON);
    const int modes[2] = { MSD_WINO_ON, MSD_WINO_F2 };
    for (int mi = 0; mi < 2; mi++) {
        msd_wino_set(modes[mi]);
        for (int isa = 0; isa <= msd_isa_best(); isa++) {
            CHECK_OK(msd_isa_set(isa));
            for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
                if (check_against_naive(0, &cases[i], (int)(i & 1), 900 + (unsigned)i)) {
                    fprintf(stderr, "  Winograd case %zu at level %s, mode %d\n", i,
                            msd_isa_name(isa), modes[mi]);
                    CHECK(0);
                }
        }
    }
    msd_wino_set(MSD_WINO_ON);
    CHECK_OK(msd_isa_set(msd_isa_best()));
    /* Winograd against the direct convolution: rounding only; case 0 by F(4x4) and by
     * F(2x2), case 5 (8x8 maps) by F(2x2) in either mode */
    double e4 = 0, e2 = 0;
    winograd_vs_direct(&cases[0], MSD_WINO_ON, &e4);
    winograd_vs_direct(&cases[0], MSD_WINO_F2, &e2);
    winograd_vs_direct(&cases[5], MSD_WINO_ON, NULL);
    winograd_partial_grads(&cases[2], MSD_WINO_ON);
    winograd_partial_grads(&cases[2], MSD_WINO_F2);
    CHECK(e4 != e2); /* two algorithms, not one */
}

/* The largest |a - b| relative to the largest |b|. */
static double rel_to_max(const float *a, const double *b, size_t n)
{
    double e = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        e = fmax(e, fabs(a[i] - b[i]));
        m = fmax(m, fabs(b[i]));
    }
    return e / m;
}

/* bf16 by Winograd (level avx512bf16 and above, shapes the tiles do not take): the
 * transformed tiles and kernels are what is rounded, so the reference is the float64
 * convolution of the unrounded inputs. Held to bf16's accuracy: within 3x the error of
 * the direct bf16 path (the inputs rounded: level avx512) on the same case, for the
 * output and both gradients; and not the fp32 path's numbers. */
static void test_conv2d_winograd_bf16(void)
{
    if (msd_isa_best() < MSD_ISA_AVX512_BF16) {
        fprintf(stderr, "  no avx512bf16 on this CPU: nothing to test\n");
        return;
    }
    const geom cases[] = {
        { 4, 16, 16, 16, 16, 3, 1, 1 }, /* 256 tiles */
        { 20, 20, 8, 8, 24, 3, 1, 1 },  /* partial 16-blocks, odd pairs nowhere */
        { 70, 32, 4, 4, 48, 3, 1, 1 },  /* 4x4 maps, 32 images a group */
        { 9, 64, 16, 16, 64, 3, 1, 1 }, /* the model's 16x16 layers */
        { 16, 17, 8, 8, 19, 3, 1, 1 },  /* odd channels: the bf16 rows' zero padding */
        { 5, 24, 6, 10, 80, 3, 1, 1 },  /* 75 tiles: an odd count paired; two E panels */
        { 2, 16, 24, 24, 16, 3, 1, 1 }, /* 144 tiles an image: the weight gradient's float
                                           transforms, then msd_sgemm_bf16 */
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const geom *g = &cases[i];
        unsigned seed = 1300 + 10 * (unsigned)i;
        size_t ny = (size_t)g->N * g->Cout * g->H * g->W;
        size_t nx = (size_t)g->N * g->Cin * g->H * g->W, nw = (size_t)g->Cout * g->Cin * 9;
        int sx[4] = { g->N, g->Cin, g->H, g->W }, sw[4] = { g->Cout, g->Cin, 3, 3 };
        int sy[4] = { g->N, g->Cout, g->H, g->W };
        msd_tensor *x = gc_randn_like(4, sx, seed), *w = gc_randn_like(4, sw, seed + 1);
        msd_tensor *dy = gc_randn_like(4, sy, seed + 2);
        double *ref = calloc(ny + nx + nw + g->Cout, sizeof *ref);
        double *rdx = ref + ny, *rdw = rdx + nx, *rdb = rdw + nw;
        naive_conv2d(ref, msd_tensor_data(x), msd_tensor_data(w), NULL, g);
        naive_conv2d_grad(rdx, rdw, rdb, msd_tensor_data(dy), msd_tensor_data(x),
                          msd_tensor_data(w), g);
        float *y[3], *dx[3], *dw[3];
        CHECK_OK(msd_isa_set(MSD_ISA_AVX512_BF16));
        conv_once(g, seed, &y[2], &dx[2], &dw[2]); /* fp32 */
        CHECK_OK(msd_precision_set(MSD_PREC_BF16));
        conv_once(g, seed, &y[0], &dx[0], &dw[0]); /* bf16 Winograd */
        CHECK_OK(msd_isa_set(MSD_ISA_AVX512));
        conv_once(g, seed, &y[1], &dx[1], &dw[1]); /* bf16 direct */
        CHECK_OK(msd_precision_set(MSD_PREC_FP32));
        double e[2][3];
        for (int k = 0; k < 2; k++) {
            e[k][0] = rel_to_max(y[k], ref, ny);
            e[k][1] = rel_to_max(dx[k], rdx, nx);
            e[k][2] = rel_to_max(dw[k], rdw, nw);
        }
        fprintf(stderr, "  case %zu, error relative to the largest value, Winograd / direct: "
                        "y %.2g / %.2g, dx %.2g / %.2g, dw %.2g / %.2g\n", i, e[0][0], e[1][0],
                e[0][1], e[1][1], e[0][2], e[1][2]);
        for (int q = 0; q < 3; q++)
            CHECK(e[0][q] <= 3 * e[1][q] && e[1][q] < 1e-2);
        CHECK(memcmp(y[0], y[2], ny * sizeof(float)) != 0);
        CHECK(memcmp(dw[0], dw[2], nw * sizeof(float)) != 0);
        for (int k = 0; k < 3; k++) {
            free(y[k]);
            free(dx[k]);
            free(dw[k]);
        }
        free(ref);
        msd_tensor_release(x);
        msd_tensor_release(w);
        msd_tensor_release(dy);
    }
    CHECK_OK(msd_isa_set(msd_isa_best()));
}

static void test_conv_transpose2d_vs_naive(void)
{
    const geom cases[] = {
        { 2, 4, 3, 3, 3, 2, 2, 0 }, /* UnetUp: k 2, stride 2 */
        { 3, 4, 1, 1, 5, 4, 4, 0 }, /* up0: 1x1 -> 4x4 */
        { 2, 3, 4, 5, 2, 3, 2, 1 }, /* overlapping windows with padding */
        { 1, 2, 3, 3, 2, 3, 1, 1 }, /* stride 1 */
    };
    for (int isa = 0; isa <= msd_isa_best(); isa++) {
        CHECK_OK(msd_isa_set(isa));
        for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
            CHECK(!check_against_naive(1, &cases[i], 1, 300 + (unsigned)i));
            CHECK(!check_against_naive(1, &cases[i], 0, 400 + (unsigned)i));
        }
    }
    CHECK_OK(msd_isa_set(msd_isa_best()));
}

static void test_conv_transpose2d_chunked_batch(void)
{
    const geom g = { 6, 4, 16, 16, 256, 4, 2, 1 };
    CHECK(!check_against_naive(1, &g, 1, 9));
}

typedef struct conv_ctx {
    int transposed, stride, pad;
} conv_ctx;

static int call_conv(msd_tensor *const *in, void *ctx, msd_tensor **out)
{
    const conv_ctx *c = ctx;
    return c->transposed ? msd_conv_transpose2d(in[0], in[1], in[2], c->stride, c->pad, out)
                         : msd_conv2d(in[0], in[1], in[2], c->stride, c->pad, out);
}

/* Finite differences on x, w and b; grad_mask says which require grad. */
static int gradcheck_conv(int transposed, const geom *g, int with_bias, int grad_mask)
{
    int sx[4] = { g->N, g->Cin, g->H, g->W };
    int sw[4] = { transposed ? g->Cin : g->Cout, transposed ? g->Cout : g->Cin, g->k, g->k };
    int sb[1] = { g->Cout };
    msd_tensor *in[3] = { gc_randn_like(4, sx, 11), gc_randn_like(4, sw, 12),
                          with_bias ? gc_randn_like(1, sb, 13) : NULL };
    for (int i = 0; i < 3; i++)
        if (in[i])
            in[i]->requires_grad = (grad_mask >> i) & 1;
    conv_ctx ctx = { transposed, g->s, g->p };
    int bad = gradcheck(transposed ? "conv_transpose2d" : "conv2d", call_conv, &ctx, 3, in, 1e-3,
                        1e-2, 1e-3);
    for (int i = 0; i < 3; i++) {
        if (in[i] && !in[i]->requires_grad && in[i]->grad) {
            fprintf(stderr, "  input %d got a gradient without requires_grad\n", i);
            bad = 1;
        }
        msd_tensor_release(in[i]);
    }
    return bad;
}

static void test_conv2d_gradcheck(void)
{
    const geom a = { 2, 3, 5, 5, 4, 3, 1, 1 }, b = { 2, 2, 6, 5, 3, 2, 2, 0 };
    CHECK(!gradcheck_conv(0, &a, 1, 7));
    CHECK(!gradcheck_conv(0, &b, 1, 7));
    CHECK(!gradcheck_conv(0, &b, 0, 3));
    CHECK(!gradcheck_conv(0, &a, 1, 1)); /* only x */
    CHECK(!gradcheck_conv(0, &a, 1, 6)); /* only the parameters */
}

static void test_conv_transpose2d_gradcheck(void)
{
    const geom a = { 2, 3, 3, 3, 2, 2, 2, 0 }, b = { 2, 3, 1, 1, 2, 4, 4, 0 };
    const geom c = { 1, 2, 3, 4, 3, 3, 2, 1 };
    CHECK(!gradcheck_conv(1, &a, 1, 7));
    CHECK(!gradcheck_conv(1, &b, 1, 7));
    CHECK(!gradcheck_conv(1, &c, 0, 3));
    CHECK(!gradcheck_conv(1, &c, 1, 5)); /* x and b */
}

/* conv2d with fixed values: a 3x3 box filter over a 3x3 ramp, padding 1. */
static void test_conv2d_hand_values(void)
{
    int sx[4] = { 1, 1, 3, 3 }, sw[4] = { 1, 1, 3, 3 };
    float xv[9] = { 1, 2, 3, 4, 5, 6, 7, 8, 9 }, ones[9] = { 1, 1, 1, 1, 1, 1, 1, 1, 1 };
    float expect[9] = { 12, 21, 16, 27, 45, 33, 24, 39, 28 };
    msd_tensor *x = msd_tensor_from_data(4, sx, xv), *w = msd_tensor_from_data(4, sw, ones), *y;
    CHECK_OK(msd_conv2d(x, w, NULL, 1, 1, &y));
    for (int i = 0; i < 9; i++)
        CHECK(msd_tensor_data(y)[i] == expect[i]);
    msd_tensor_release(y);
    CHECK_OK(msd_conv2d(x, w, NULL, 2, 1, &y)); /* stride 2: the corners */
    CHECK(y->shape[2] == 2 && y->shape[3] == 2);
    CHECK(msd_tensor_data(y)[0] == 12 && msd_tensor_data(y)[1] == 16);
    CHECK(msd_tensor_data(y)[2] == 24 && msd_tensor_data(y)[3] == 28);
    msd_tensor_release(y);
    msd_tensor_release(x);
    msd_tensor_release(w);
}

static int has(const char *s) { return strstr(msd_last_error(), s) != NULL; }

static void test_conv_errors(void)
{
    int sx[4] = { 2, 4, 16, 16 }, sw[4] = { 8, 3, 3, 3 }, s3[3] = { 4, 16, 16 };
    int sb[1] = { 7 }, sk[4] = { 8, 4, 5, 5 };
    msd_tensor *x = msd_tensor_zeros(4, sx), *w = msd_tensor_zeros(4, sw), *y = NULL;
    msd_tensor *x3 = msd_tensor_zeros(3, s3), *b = msd_tensor_zeros(1, sb);
    CHECK(msd_conv2d(x, w, NULL, 1, 1, &y) == MSD_ERR_SHAPE);
    CHECK(y == NULL);
    CHECK(has("conv2d") && has("[2,4,16,16]") && has("[8,3,3,3]") && has("4 channels"));
    CHECK(msd_conv2d(x3, w, NULL, 1, 1, &y) == MSD_ERR_SHAPE);
    CHECK(has("[4,16,16]") && has("4-D"));
    msd_tensor *w2 = msd_tensor_zeros(4, (int[4]){ 8, 4, 3, 3 });
    CHECK(msd_conv2d(x, w2, NULL, 0, 1, &y) == MSD_ERR_ARG);
    CHECK(has("stride") && has("[2,4,16,16]"));
    CHECK(msd_conv2d(x, w2, NULL, 1, -1, &y) == MSD_ERR_ARG);
    CHECK(has("padding"));
    CHECK(msd_conv2d(x, w2, b, 1, 1, &y) == MSD_ERR_SHAPE);
    CHECK(has("bias") && has("[7]") && has("[8]"));
    msd_tensor *xs = msd_tensor_zeros(4, (int[4]){ 1, 4, 3, 3 }), *wk = msd_tensor_zeros(4, sk);
    CHECK(msd_conv2d(xs, wk, NULL, 1, 0, &y) == MSD_ERR_SHAPE);
    CHECK(has("[1,4,3,3]") && has("[8,4,5,5]") && has("output"));
    /* conv_transpose2d: weight (in, out, k, k) */
    CHECK(msd_conv_transpose2d(x, w, NULL, 2, 0, &y) == MSD_ERR_SHAPE);
    CHECK(has("conv_transpose2d") && has("[2,4,16,16]") && has("[8,3,3,3]"));
    msd_tensor *wt = msd_tensor_zeros(4, (int[4]){ 4, 2, 2, 2 });
    CHECK(msd_conv_transpose2d(xs, wt, NULL, 1, 2, &y) == MSD_ERR_SHAPE); /* 2 - 4 + 2 = 0 */
    CHECK(has("output"));
    CHECK(msd_conv_transpose2d(xs, wt, b, 2, 0, &y) == MSD_ERR_SHAPE);
    CHECK(has("bias"));
    CHECK(y == NULL);
    msd_tensor *m[] = { x, w, x3, b, w2, xs, wk, wt };
    for (size_t i = 0; i < sizeof m / sizeof *m; i++)
        msd_tensor_release(m[i]);
}

static void test_conv_no_grad_records_nothing(void)
{
    int sx[4] = { 1, 2, 4, 4 }, sw[4] = { 3, 2, 3, 3 };
    msd_tensor *x = gc_randn_like(4, sx, 1), *w = gc_randn_like(4, sw, 2), *y;
    w->requires_grad = 1;
    int prev = msd_set_grad_enabled(0);
    CHECK_OK(msd_conv2d(x, w, NULL, 1, 1, &y));
    msd_set_grad_enabled(prev);
    CHECK(y->grad_fn == NULL);
    msd_tensor_release(y);
    msd_tensor_release(x);
    msd_tensor_release(w);
}

/* The fused inference op gives the same bits as conv2d, batch_norm2d (eval)
 * and gelu one after another, at every kernel level, with or without GELU,
 * conv bias and BatchNorm affine; and refuses what it cannot do. */
/* conv2d_bn_act (fused epilogue) against conv2d, batch_norm2d (eval) and GELU, bit for bit,
 * at every level: direct (6 -> 7 channels), and by Winograd, where the epilogue runs inside
 * the output transform: F(4x4) on 16x16 maps with a partial block of 16 output channels,
 * F(2x2) on 8x8 maps; in fp32 and bf16. */
static void bn_act_case(int N, int Cin, int H, int Cout, int prec)
{
    int sx[4] = { N, Cin, H, H }, sw[4] = { Cout, Cin, 3, 3 }, sc[1] = { Cout };
    msd_tensor *x = gc_randn_like(4, sx, 21), *w = gc_randn_like(4, sw, 22);
    msd_tensor *b = gc_randn_like(1, sc, 23), *gm = gc_randn_like(1, sc, 24);
    msd_tensor *bt = gc_randn_like(1, sc, 25), *rm = gc_randn_like(1, sc, 26);
    msd_tensor *rv = gc_randn_like(1, sc, 27);
    float *pv = msd_tensor_data(rv);
    for (int c = 0; c < Cout; c++) /* a variance is positive */
        pv[c] = pv[c] * pv[c] + 0.1f;
    CHECK_OK(msd_precision_set(prec));
    for (int isa = 0; isa <= msd_isa_best(); isa++) {
        CHECK_OK(msd_isa_set(isa));
        for (int v = 0; v < 4; v++) {
            int gelu = v & 1, affine = v & 2;
            msd_tensor *c1, *n1, *ref, *fused;
            CHECK_OK(msd_conv2d(x, w, affine ? b : NULL, 1, 1, &c1));
            CHECK_OK(msd_batch_norm2d(c1, affine ? gm : NULL, affine ? bt : NULL, rm, rv, 0, 0.1f,
                                      1e-5f, &n1));
            if (gelu)
                CHECK_OK(msd_gelu(n1, &ref));
            else
                ref = msd_tensor_retain(n1);
            CHECK_OK(msd_conv2d_bn_act(x, w, affine ? b : NULL, 1, 1, affine ? gm : NULL,
                                       affine ? bt : NULL, rm, rv, 1e-5f, gelu, &fused));
            CHECK(memcmp(msd_tensor_data(ref), msd_tensor_data(fused),
                         msd_tensor_numel(ref) * sizeof(float)) == 0);
            msd_tensor_release(c1);
            msd_tensor_release(n1);
            msd_tensor_release(ref);
            msd_tensor_release(fused);
        }
    }
    CHECK_OK(msd_isa_set(msd_isa_best()));
    CHECK_OK(msd_precision_set(MSD_PREC_FP32));
    msd_tensor *tensors[7] = { x, w, b, gm, bt, rm, rv };
    for (int k = 0; k < 7; k++)
        msd_tensor_release(tensors[k]);
}

/* The gradients that backward hands to conv2d and batch_norm2d unzeroed (autograd.h: an
 * input made by another op, its gradient not yet begun) have the bits of the same gradient
 * added to zeros (the input a leaf); the block they are written into is first filled with
 * NaN and freed, so that the allocator hands it back dirty. Winograd (fp32 and bf16) and
 * direct convolutions, BatchNorm with and without GELU. */
static int fresh_op(int op, msd_tensor *in, msd_tensor *w, msd_tensor *g, msd_tensor *bt,
                    msd_tensor **out)
{
    switch (op) {
    case 0:
        return msd_conv2d(in, w, NULL, 1, 1, out);
    case 1:
        return msd_batch_norm2d(in, g, bt, NULL, NULL, 1, 0.1f, 1e-5f, out);
    default:
        return msd_batch_norm2d_gelu(in, g, bt, NULL, NULL, 1, 0.1f, 1e-5f, out);
    }
}

static void test_fresh_gradients(void)
{
    const int shapes[3][4] = { { 3, 16, 16, 16 }, { 5, 16, 8, 8 }, { 2, 5, 7, 6 } };
    for (int si = 0; si < 3; si++)
        for (int prec = 0; prec < 2; prec++)
            for (int op = 0; op < 3; op++) {
                const int *sx = shapes[si];
                int sw[4] = { 16, sx[1], 3, 3 }, sc[1] = { sx[1] };
                msd_tensor *x = gc_randn_like(4, sx, 41), *w = gc_randn_like(4, sw, 42);
                msd_tensor *gm = gc_randn_like(1, sc, 43), *bt = gc_randn_like(1, sc, 44);
                CHECK_OK(msd_precision_set(prec ? MSD_PREC_BF16 : MSD_PREC_FP32));
                x->requires_grad = w->requires_grad = gm->requires_grad = 1;
                msd_tensor *a = NULL, *y1 = NULL, *y2 = NULL, *dirty = msd_tensor_empty_like(x);
                CHECK_OK(msd_mul_scalar(x, 1.0f, &a)); /* a node: its gradient comes fresh */
                CHECK_OK(fresh_op(op, a, w, gm, bt, &y1));
                msd_tensor *dy = gc_randn_like(4, y1->shape, 45);
                msd_tensor_fill_(dirty, NAN);
                msd_tensor_release(dirty);
                CHECK_OK(msd_backward(y1, dy, 0));
                msd_tensor *leaf = msd_tensor_empty_like(x); /* the same values, a leaf */
                memcpy(msd_tensor_data(leaf), msd_tensor_data(x),
                       msd_tensor_numel(x) * sizeof(float));
                leaf->requires_grad = 1;
                CHECK_OK(fresh_op(op, leaf, w, gm, bt, &y2));
                CHECK_OK(msd_backward(y2, dy, 0));
                int same = memcmp(msd_tensor_data(x->grad), msd_tensor_data(leaf->grad),
                                  msd_tensor_numel(x) * sizeof(float)) == 0;
                if (!same)
                    fprintf(stderr, "  shape %d, %s, op %d: the fresh gradient differs\n", si,
                            prec ? "bf16" : "fp32", op);
                CHECK(same);
                msd_tensor *all[9] = { x, w, gm, bt, a, y1, y2, dy, leaf };
                for (int k = 0; k < 9; k++)
                    msd_tensor_release(all[k]);
            }
    CHECK_OK(msd_precision_set(MSD_PREC_FP32));
}

static void test_conv2d_bn_act(void)
{
    bn_act_case(5, 6, 8, 7, MSD_PREC_FP32);
    bn_act_case(3, 16, 16, 24, MSD_PREC_FP32);
    bn_act_case(3, 20, 8, 17, MSD_PREC_FP32);
    bn_act_case(3, 16, 16, 24, MSD_PREC_BF16);
    int sx[4] = { 5, 6, 8, 8 }, sw[4] = { 7, 6, 3, 3 }, sc[1] = { 7 };
    msd_tensor *x = gc_randn_like(4, sx, 21), *w = gc_randn_like(4, sw, 22);
    msd_tensor *b = gc_randn_like(1, sc, 23), *gm = gc_randn_like(1, sc, 24);
    msd_tensor *bt = gc_randn_like(1, sc, 25), *rm = gc_randn_like(1, sc, 26);
    msd_tensor *rv = gc_randn_like(1, sc, 27);
    msd_tensor *y = NULL;
    CHECK(msd_conv2d_bn_act(x, w, b, 1, 1, gm, bt, NULL, rv, 1e-5f, 1, &y) == MSD_ERR_ARG);
    CHECK(strstr(msd_last_error(), "running_mean is required") != NULL);
    CHECK(msd_conv2d_bn_act(x, w, b, 1, 1, x, bt, rm, rv, 1e-5f, 1, &y) == MSD_ERR_SHAPE);
    CHECK(strstr(msd_last_error(), "must be [7]") != NULL);
    w->requires_grad = 1;
    CHECK(msd_conv2d_bn_act(x, w, b, 1, 1, gm, bt, rm, rv, 1e-5f, 1, &y) == MSD_ERR_STATE);
    CHECK(strstr(msd_last_error(), "inference only") != NULL);
    msd_set_grad_enabled(0);
    CHECK_OK(msd_conv2d_bn_act(x, w, b, 1, 1, gm, bt, rm, rv, 1e-5f, 1, &y));
    msd_set_grad_enabled(1);
    CHECK(y != NULL && y->shape[1] == 7);
    msd_tensor_release(y);
    msd_tensor *all[7] = { x, w, b, gm, bt, rm, rv };
    for (int i = 0; i < 7; i++)
        msd_tensor_release(all[i]);
}

/* The fp32 Winograd transforms at 8 lanes (the AVX2 level's, conv_wino_avx2.c) and at 16
 * (conv_wino.c) give the same bits, the GEMM's level fixed (the CPU's best): a training
 * convolution with a bias (forward; dx, dw and the bias gradient, which the channels-last
 * copy of dy sums) and the eval conv + BatchNorm + GELU (the output transform's epilogue),
 * on shapes with partial 8- and 16-channel blocks and pixel blocks, by F(4x4) and F(2x2). */
static void test_winograd_widths(void)
{
    if (msd_isa_best() < MSD_ISA_AVX2) {
        fprintf(stderr, "  no AVX2 on this CPU: one width only\n");
        return;
    }
    const geom cases[] = {
        { 6, 20, 16, 16, 24, 3, 1, 1 }, /* F(4x4); 8 + 8 + 4 and 16 + 4 channels */
        { 5, 17, 16, 32, 19, 3, 1, 1 }, /* F(4x4), 16 x 32, odd channels */
        { 20, 20, 8, 8, 24, 3, 1, 1 },  /* F(2x2) */
        { 20, 17, 6, 10, 19, 3, 1, 1 }, /* F(2x2), 60 pixels: partial pixel blocks */
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const geom *g = &cases[i];
        int sx[4] = { g->N, g->Cin, g->H, g->W }, sw[4] = { g->Cout, g->Cin, 3, 3 };
        int sc[1] = { g->Cout };
        float *got[2][5];
        size_t n[5];
        for (int k = 0; k < 2; k++) {
            msd_wino_width_set(k ? 8 : 16);
            msd_tensor *x = gc_randn_like(4, sx, 40), *w = gc_randn_like(4, sw, 41);
            msd_tensor *b = gc_randn_like(1, sc, 42), *y = NULL, *z = NULL;
            msd_tensor *gm = gc_randn_like(1, sc, 43), *bt = gc_randn_like(1, sc, 44);
            msd_tensor *rm = gc_randn_like(1, sc, 45), *rv = msd_tensor_full(1, sc, 0.5f);
            x->requires_grad = w->requires_grad = b->requires_grad = 1;
            CHECK_OK(msd_conv2d(x, w, b, 1, 1, &y));
            msd_tensor *dy = gc_randn_like(4, y->shape, 46);
            CHECK_OK(msd_backward(y, dy, 0));
            msd_set_grad_enabled(0);
            CHECK_OK(msd_conv2d_bn_act(x, w, b, 1, 1, gm, bt, rm, rv, 1e-5f, 1, &z));
            msd_set_grad_enabled(1);
            const msd_tensor *outs[5] = { y, x->grad, w->grad, b->grad, z };
            for (int j = 0; j < 5; j++) {
                n[j] = msd_tensor_numel(outs[j]);
                got[k][j] = copy_of(outs[j]);
            }
            msd_tensor *all[9] = { x, w, b, y, z, gm, bt, rm, rv };
            for (int j = 0; j < 9; j++)
                msd_tensor_release(all[j]);
            msd_tensor_release(dy);
        }
        for (int j = 0; j < 5; j++) {
            if (memcmp(got[0][j], got[1][j], n[j] * sizeof(float)) != 0) {
                fprintf(stderr, "  case %zu, output %d: 8 and 16 lanes differ\n", i, j);
                CHECK(0);
            }
            free(got[0][j]);
            free(got[1][j]);
        }
    }
    msd_wino_width_set(0);
}

int main(void)
{
    RUN(test_conv2d_hand_values);
    RUN(test_conv2d_vs_naive);
    RUN(test_conv2d_chunked_batch);
    RUN(test_bf16_rounding);
    RUN(test_bf16_pack_weights);
    RUN(test_conv2d_bf16);
    RUN(test_conv2d_winograd);
    RUN(test_conv2d_winograd_bf16);
    RUN(test_winograd_widths);
    RUN(test_conv_transpose2d_vs_naive);
    RUN(test_conv_transpose2d_chunked_batch);
    RUN(test_conv2d_gradcheck);
    RUN(test_conv_transpose2d_gradcheck);
    RUN(test_conv_errors);
    RUN(test_conv_no_grad_records_nothing);
    RUN(test_conv2d_bn_act);
    RUN(test_fresh_gradients);
    return TEST_SUMMARY();
}
