/* minisd internal: the Winograd convolutions' transforms and layout changes
 * (conv_wino.c), written once for a vector of VL channels and compiled at two
 * widths: 16 floats (vec16.h) in conv_wino.c, the AVX-512 zmm width, and 8
 * (vec8.h) in conv_wino_avx2.c, one ymm register, for AVX2. GCC's vectors
 * wider than the target's registers lower the transposes' shuffles to one
 * scalar move per lane, so the 16-float code at AVX2 spent a third of a
 * training step moving single floats through the stack (perf, Zen 3).
 *
 * The includer defines, before including it: vf, VL, LD, ST, VTRANSPOSE and
 * INLINE (vec16.h or vec8.h); WTF(name), the name of each of the four entry
 * points (to_channels_last, input_transform, output_transform,
 * grad_transform), and WTF_ATTR, their attributes (storage and target). The
 * lanes are channels and every lane's operations are the same at either
 * width, in the same order (no fused multiply-adds: -std=c11), so both
 * widths compute the same bits. */

/* Floats from one of V's, M's or E's 16 planes (T, C) to the next: a cache line more than
 * T C, so that the transforms' 16 streams, one per plane, do not all fall in the same L1
 * sets (T C floats is a multiple of 4 KiB at every shape the model has: the loads and stores
 * of one tile then evicted each other; measured 14% of a bf16 sampling step in the input
 * transform before, by perf). */
static inline size_t plane_of(size_t T, int C)
{
    return T * C + 16;
}

/* ---- vectors ----------------------------------------------------------------
 * The transforms and layout changes work on VL channels at a time in a GCC vector (16: one
 * zmm register at AVX-512, four SSE registers at the baseline; 8: one ymm at AVX2): the
 * body of a tile, always inlined, runs with k = VL on whole blocks (fixed-size
 * copies: plain vector loads and stores) and once with k < VL on the last
 * channels, on zero-filled vectors (vec16.h, vec8.h: the vector type, its loads and
 * stores, and the VL x VL transpose). */

/* ---- layout changes -------------------------------------------------------- */

/* One block of to_channels_last: channels [c0, c0+kc) of pixels [l0,
 * l0+kl) of src (C, L) to their places in d; with sum, their sums over the
 * block's pixels added to sum[c0 ..] (pixel by pixel, in order). */
INLINE void cl_block(float *d, const float *src, int L, int W, int C, size_t rs, int p, int l0,
                     int c0, int kl, int kc, float *sum)
{
    vf r[VL];
    for (int i = 0; i < VL; i++) {
        if (i < kc)
            LD(r[i], src + (size_t)(c0 + i) * L + l0, kl);
        else
            memset(&r[i], 0, sizeof r[i]);
    }
    VTRANSPOSE(r);
    for (int j = 0; j < kl; j++) {
        int l = l0 + j, yy = l / W + p, xx = l % W + p;
        ST(d + yy * rs + (size_t)xx * C + c0, r[j], kc);
    }
    if (sum) {
        vf acc;
        LD(acc, sum + c0, kc);
        for (int j = 0; j < kl; j++)
            acc += r[j];
        ST(sum + c0, acc, kc);
    }
}

/* dc (nb, H+p+p, W+p+p, C): x (nb, C, H, W) channels last, padded by p zeros
 * on every side (p = 0 or 1), in blocks of VL channels x VL pixels; with sum
 * (C floats), x's sums over images and pixels added to it (a fixed order:
 * image by image, pixel by pixel). */
WTF_ATTR void WTF(to_channels_last)(float *restrict dc, const float *restrict x, int nb, int C,
                                    int H, int W, int p, float *restrict sum)
{
    int Wp = W + 2 * p, L = H * W;
    size_t plane = (size_t)(H + 2 * p) * Wp * C, rs = (size_t)Wp * C;
    for (int n = 0; n < nb; n++) {
        float *d = dc + (size_t)n * plane;
        const float *src = x + (size_t)n * C * L;
        if (p) {
            memset(d, 0, rs * sizeof *d);
            memset(d + (size_t)(H + 1) * rs, 0, rs * sizeof *d);
            for (int yy = 1; yy <= H; yy++) {
                memset(d + yy * rs, 0, (size_t)C * sizeof *d);
                memset(d + yy * rs + (size_t)(W + 1) * C, 0, (size_t)C * sizeof *d);
            }
        }
        for (int l0 = 0; l0 < L; l0 += VL) {
            int kl = L - l0 < VL ? L - l0 : VL;
            for (int c0 = 0; c0 < C; c0 += VL) {
                int kc = C - c0 < VL ? C - c0 : VL;
                if (kl == VL && kc == VL)
                    cl_block(d, src, L, W, C, rs, p, l0, c0, VL, VL, sum);
                else
                    cl_block(d, src, L, W, C, rs, p, l0, c0, kl, kc, sum);
            }
        }
    }
}

/* One block of from_channels_last: pixels [l0, l0+kl) of channels [c0,
 * c0+kc). */
INLINE void ncl_block(float *y, const float *yc, int C, int L, int add, const float *b, int l0,
                      int c0, int kl, int kc)
{
    vf r[VL];
    for (int i = 0; i < VL; i++) {
        if (i < kl)
            LD(r[i], yc + (size_t)(l0 + i) * C + c0, kc);
        else
            memset(&r[i], 0, sizeof r[i]);
    }
    VTRANSPOSE(r);
    for (int j = 0; j < kc; j++) {
        float *dst = y + (size_t)(c0 + j) * L + l0;
        vf o;
        if (add) {
            LD(o, dst, kl);
            o += r[j];
        } else {
            o = r[j] + (b ? b[c0 + j] : 0.0f);
        }
        ST(dst, o, kl);
    }
}

/* ---- transforms ------------------------------------------------------------ */

/* The input of tile t (m x m outputs) in xc (nb, H+2, W+2, C). */
static inline const float *tile_in(const float *xc, size_t t, int H, int W, int C, int m)
{
    size_t tw = (size_t)W / m, th = (size_t)H / m, n = t / (th * tw), ty = t / tw % th;
    size_t tx = t % tw;
    return xc + ((n * (H + 2) + m * ty) * (W + 2) + m * tx) * C;
}

/* One tile, channels [c, c+k): d its 4x4 input (row stride rs), v its 16
 * outputs (lanes k and up zero). */
INLINE void input_tile(vf v[16], const float *d, size_t rs, int C, int k)
{
    vf r[4][4];
    for (int b = 0; b < 4; b++) {
        vf d0, d1, d2, d3;
        const float *p = d + (size_t)b * C;
        LD(d0, p, k);
        LD(d1, p + rs, k);
        LD(d2, p + 2 * rs, k);
        LD(d3, p + 3 * rs, k);
        r[0][b] = d0 - d2;
        r[1][b] = d1 + d2;
        r[2][b] = d2 - d1;
        r[3][b] = d1 - d3;
    }
    for (int a = 0; a < 4; a++) {
        v[4 * a] = r[a][0] - r[a][2];
        v[4 * a + 1] = r[a][1] + r[a][2];
        v[4 * a + 2] = r[a][2] - r[a][1];
        v[4 * a + 3] = r[a][1] - r[a][3];
    }
}

/* F(4x4, 3x3) on the points 0, 1, -1, 1/2, -2 and infinity: half the rounding error of
 * Lavin and Gray's 0, +-1, +-2 (measured in float32 against float64, forward and weight
 * gradient, 64 channels), with
 *   B^T = [1 -3/2 -2 3/2 1 0; 0 -1 1/2 5/2 1 0; 0 1 -5/2 1/2 1 0;
 *          0 -2 -1 2 1 0; 0 1/2 -1 -1/2 1 0; 0 1 -3/2 -2 3/2 1],
 *   G = [1 0 0; 1/3 1/3 1/3; -1/3 1/3 -1/3; -16/15 -8/15 -4/15; 1/15 -2/15 4/15; 0 0 1],
 *   A^T = [1 1 1 1 1 0; 0 1 -1 1/2 -2 0; 0 1 1 1/4 4 0; 0 1 -1 1/8 -8 1].
 * The builds compile with -std=c11, which fuses no multiply-add, so every clone computes
 * the same bits. bt6: o = B^T d for one column (or row) of six. */
INLINE void bt6(vf o[6], const vf d[6])
{
    vf u = d[3] - d[1], v = d[4] - d[2];
    o[0] = (d[0] - d[2]) + v + 1.5f * u;
    o[1] = (u + v) + 1.5f * (d[2] + d[3]);
    o[2] = (v - u) + 1.5f * (d[3] - d[2]);
    o[3] = v + 2.0f * u;
    o[4] = v - 0.5f * u;
    o[5] = ((d[5] - d[3]) - u) + 1.5f * v;
}

/* F(4x4, 3x3): one 6x6 tile, channels [c, c+k): d its input (row stride rs), v its 36
 * outputs B^T D B (position 6a + b: row a, column b). */
INLINE void input_tile4(vf v[36], const float *d, size_t rs, int C, int k)
{
    vf r[6][6];
    for (int b = 0; b < 6; b++) {
        vf col[6], o[6];
        for (int a = 0; a < 6; a++)
            LD(col[a], d + a * rs + (size_t)b * C, k);
        bt6(o, col);
        for (int a = 0; a < 6; a++)
            r[a][b] = o[a];
    }
    for (int a = 0; a < 6; a++)
        bt6(v + 6 * a, r[a]);
}

/* One tile's channels [c, c+k) into V ((m + 2)^2 planes step floats apart). */
INLINE void input_tile_f32(float *v, const float *d, size_t rs, size_t step, int C, int k, int m)
{
    vf o[36];
    if (m == 4)
        input_tile4(o, d, rs, C, k);
    else
        input_tile(o, d, rs, C, k);
    for (int xi = 0; xi < (m + 2) * (m + 2); xi++)
        ST(v + xi * step, o[xi], k);
}

/* V ((m + 2)^2, T, C) = B^T D B for every tile of xc (nb, H+2, W+2, C). */
WTF_ATTR void WTF(input_transform)(float *restrict V, const float *restrict xc, int nb, int C,
                                   int H, int W, int m)
{
    int cv = C / VL * VL;
    size_t T = (size_t)nb * (H / m) * (W / m), step = plane_of(T, C), rs = (size_t)(W + 2) * C;
    for (size_t t = 0; t < T; t++) {
        const float *d = tile_in(xc, t, H, W, C, m);
        float *v = V + t * C;
        for (int c = 0; c < cv; c += VL)
            input_tile_f32(v + c, d + c, rs, step, C, VL, m);
        if (cv < C)
            input_tile_f32(v + cv, d + cv, rs, step, C, C - cv, m);
    }
}

/* One tile, channels [c, c+k): m its 16 products (stride step), o0 and o1
 * its two output rows (two pixels, ps floats apart). */
INLINE void output_tile(float *o0, float *o1, const float *m, size_t step, int ps, int k)
{
    vf s[2][4], o;
    for (int b = 0; b < 4; b++) {
        vf m0, m1, m2, m3;
        const float *p = m + b * step;
        LD(m0, p, k);
        LD(m1, p + 4 * step, k);
        LD(m2, p + 8 * step, k);
        LD(m3, p + 12 * step, k);
        s[0][b] = m0 + m1 + m2;
        s[1][b] = m1 - m2 - m3;
    }
    o = s[0][0] + s[0][1] + s[0][2];
    ST(o0, o, k);
    o = s[0][1] - s[0][2] - s[0][3];
    ST(o0 + ps, o, k);
    o = s[1][0] + s[1][1] + s[1][2];
    ST(o1, o, k);
    o = s[1][1] - s[1][2] - s[1][3];
    ST(o1 + ps, o, k);
}

/* F(4x4, 3x3) (bt6): o = A^T m for one column (or row) of six. */
INLINE void at6(vf o[4], const vf m[6])
{
    vf a = m[1] + m[2], b = m[1] - m[2];
    o[0] = ((m[0] + a) + m[3]) + m[4];
    o[1] = (b + 0.5f * m[3]) - 2.0f * m[4];
    o[2] = (a + 0.25f * m[3]) + 4.0f * m[4];
    o[3] = ((b + 0.125f * m[3]) - 8.0f * m[4]) + m[5];
}

/* F(4x4, 3x3): one tile, channels [c, c+k): m its 36 products (stride step), o its first
 * output row; rows rs floats apart, pixels ps floats apart. */
INLINE void output_tile4(float *o, const float *m, size_t step, size_t rs, int ps, int k)
{
    vf s[4][6];
    for (int b = 0; b < 6; b++) {
        vf col[6], t[4];
        for (int a = 0; a < 6; a++)
            LD(col[a], m + (size_t)(6 * a + b) * step, k);
        at6(t, col);
        for (int i = 0; i < 4; i++)
            s[i][b] = t[i];
    }
    for (int i = 0; i < 4; i++) {
        vf t[4];
        at6(t, s[i]);
        for (int j = 0; j < 4; j++)
            ST(o + i * rs + (size_t)j * ps, t[j], k);
    }
}

/* One row of tiles, channels [c0, c0+kc): their m output rows into buf (m W pixels of VL
 * floats), = A^T M A of tiles t0 .. t0 + W/m - 1 of M ((m + 2)^2, T, C). */
INLINE void output_row(float *buf, const float *M, size_t step, int C, size_t t0, int W, int c0,
                       int kc, int m)
{
    for (int tx = 0; tx < W / m; tx++) {
        const float *mt = M + (t0 + tx) * C + c0;
        if (m == 4)
            output_tile4(buf + (size_t)4 * tx * VL, mt, step, (size_t)W * VL, VL, kc);
        else
            output_tile(buf + (size_t)2 * tx * VL, buf + ((size_t)W + 2 * tx) * VL, mt, step,
                        VL, kc);
    }
}

/* y (C, H, W) = (or += with add) the image of tiles t0 .. of M ((m + 2)^2, T, C) + b (C, or
 * NULL; ignored with add): per row of tiles and VL channels, the m output rows (m W floats in
 * a row of each channel's plane) formed channels last in buf (m W x VL floats, in L1), then
 * transposed into place VL pixels at a time: the image never goes through memory channels
 * last. With post, its affine on those rows while they are in L1 and its GELU on the image
 * at the end, in L2 (the bits of doing either after). */
WTF_ATTR void WTF(output_transform)(float *restrict y, const float *restrict M, size_t T, int C,
                                    size_t t0, int H, int W, int m, int add, const float *b,
                                    const msd_wino_post *post, float *restrict buf)
{
    size_t step = plane_of(T, C), L = (size_t)H * W;
    for (int ty = 0; ty < H / m; ty++) {
        size_t tr = t0 + (size_t)ty * (W / m);
        float *yr = y + (size_t)m * ty * W;
        for (int c0 = 0; c0 < C; c0 += VL) {
            int kc = C - c0 < VL ? C - c0 : VL;
            const float *bc = b ? b + c0 : NULL;
            if (kc == VL)
                output_row(buf, M, step, C, tr, W, c0, VL, m);
            else
                output_row(buf, M, step, C, tr, W, c0, kc, m);
            for (int l0 = 0; l0 < m * W; l0 += VL) {
                int kl = m * W - l0 < VL ? m * W - l0 : VL;
                if (kl == VL && kc == VL)
                    ncl_block(yr + c0 * L, buf, VL, (int)L, add, bc, l0, 0, VL, VL);
                else
                    ncl_block(yr + c0 * L, buf, VL, (int)L, add, bc, l0, 0, kl, kc);
            }
            for (int k = 0; post && post->a && k < kc; k++) {
                float *row = yr + (size_t)(c0 + k) * L;
                for (int l = 0; l < m * W; l++)
                    row[l] = row[l] * post->a[c0 + k] + post->b[c0 + k];
            }
        }
    }
    if (post && post->gelu) /* the image, in L2, in one call (bn_forward_chunk's reason) */
        msd_gelu_forward_inplace(y, (size_t)C * L);
}

/* One 2x2 tile of dy, channels [c, c+k): d its first row (row stride rs),
 * e its 16 outputs (lanes k and up zero). */
INLINE void grad_tile(vf e[16], const float *d, size_t rs, int C, int k)
{
    vf r[4][2];
    for (int b = 0; b < 2; b++) {
        vf e0, e1;
        LD(e0, d + (size_t)b * C, k);
        LD(e1, d + rs + (size_t)b * C, k);
        r[0][b] = e0;
        r[1][b] = e0 + e1;
        r[2][b] = e0 - e1;
        r[3][b] = -e1;
    }
    for (int a = 0; a < 4; a++) {
        e[4 * a] = r[a][0];
        e[4 * a + 1] = r[a][0] + r[a][1];
        e[4 * a + 2] = r[a][0] - r[a][1];
        e[4 * a + 3] = -r[a][1];
    }
}

/* F(4x4, 3x3) (bt6): o = A e for one column (or row) of four (A = (A^T)^T, 6 x 4). */
INLINE void a4(vf o[6], const vf e[4])
{
    vf p = e[0] + e[2], q = e[1] + e[3];
    o[0] = e[0];
    o[1] = p + q;
    o[2] = p - q;
    o[3] = ((e[0] + 0.5f * e[1]) + 0.25f * e[2]) + 0.125f * e[3];
    o[4] = ((e[0] - 2.0f * e[1]) + 4.0f * e[2]) - 8.0f * e[3];
    o[5] = e[3];
}

/* F(4x4, 3x3): one 4x4 tile of dy, channels [c, c+k): d its first row (row stride rs), e its
 * 36 outputs A dY A^T. */
INLINE void grad_tile4(vf e[36], const float *d, size_t rs, int C, int k)
{
    vf r[6][4];
    for (int b = 0; b < 4; b++) {
        vf col[4], o[6];
        for (int a = 0; a < 4; a++)
            LD(col[a], d + a * rs + (size_t)b * C, k);
        a4(o, col);
        for (int a = 0; a < 6; a++)
            r[a][b] = o[a];
    }
    for (int a = 0; a < 6; a++)
        a4(e + 6 * a, r[a]);
}

INLINE void grad_tile_f32(float *e, const float *d, size_t rs, size_t step, int C, int k, int m)
{
    vf o[36];
    if (m == 4)
        grad_tile4(o, d, rs, C, k);
    else
        grad_tile(o, d, rs, C, k);
    for (int xi = 0; xi < (m + 2) * (m + 2); xi++)
        ST(e + xi * step, o[xi], k);
}

/* The first dy value of tile t (m x m outputs) in dyc (nb, H+2, W+2, C), dy padded by one
 * zero on every side (as the input gradient's convolution reads it). */
static inline const float *grad_in(const float *dyc, size_t t, int H, int W, int C, int m)
{
    return tile_in(dyc, t, H, W, C, m) + (size_t)(W + 3) * C;
}

/* E ((m + 2)^2, T, C) = A dY A^T for every m x m tile of dyc (nb, H+2, W+2, C). */
WTF_ATTR void WTF(grad_transform)(float *restrict E, const float *restrict dyc, int nb, int C,
                                  int H, int W, int m)
{
    int cv = C / VL * VL;
    size_t T = (size_t)nb * (H / m) * (W / m), step = plane_of(T, C), rs = (size_t)(W + 2) * C;
    for (size_t t = 0; t < T; t++) {
        const float *d = grad_in(dyc, t, H, W, C, m);
        float *e = E + t * C;
        for (int c = 0; c < cv; c += VL)
            grad_tile_f32(e + c, d + c, rs, step, C, VL, m);
        if (cv < C)
            grad_tile_f32(e + cv, d + cv, rs, step, C, C - cv, m);
    }
}
