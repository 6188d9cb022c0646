/* Elementwise arithmetic with broadcasting, reductions, and shape ops
 * (reshape, narrow, cat), each with its grad function.
 *
 * Shapes: a binary op broadcasts a and b (aligned at the right, up to 4 dims, each pair of
 * sizes equal or one of them 1) to out's shape; unary ops keep x's shape; sum and mean give
 * a 0-dim tensor. Nothing in this file is saved for backward: every gradient is recomputed
 * from the node's inputs (which it holds) and its integer arguments, never from the
 * output, which would then hold its own node (a reference cycle). Backward ADDS into dx[i],
 * which has input i's own shape (not the broadcast one) and is NULL when input i does not
 * require grad. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"
#include "threads.h"

/* ---- broadcasting ------------------------------------------------------
 * Both operands are padded on the left to 4 dims; a broadcast dim gets
 * stride 0, so one 4-deep loop serves every case. */
typedef struct bcast {
    int ndim;
    int shape[4];
    long sa[4], sb[4];
} bcast;

/* st (4): t's strides once t is padded on the left to 4 dims: 0 along a dim where t has
 * size 1 and out_shape does not (every output index there reads the same elements), the
 * contiguous stride elsewhere. */
static void padded_strides(const msd_tensor *t, const int *out_shape, long *st)
{
    int pad = 4 - t->ndim;
    long s = 1;
    for (int d = 3; d >= 0; d--) {
        int size = d < pad ? 1 : t->shape[d - pad];
        st[d] = (size == 1 && out_shape[d] != 1) ? 0 : s;
        s *= size;
    }
}

/* Fills bc: the output shape padded to 4 dims (bc->ndim: its real dim count, the larger of
 * a's and b's) and both operands' padded strides. MSD_ERR_SHAPE names both shapes and the
 * dim that disagrees, 1-based among the output's dims. */
static int broadcast(const char *op, const msd_tensor *a, const msd_tensor *b, bcast *bc)
{
    int nd = a->ndim > b->ndim ? a->ndim : b->ndim;
    bc->ndim = nd;
    for (int d = 0; d < 4; d++) {
        int ia = d - (4 - a->ndim), ib = d - (4 - b->ndim);
        int sa = ia >= 0 ? a->shape[ia] : 1, sb = ib >= 0 ? b->shape[ib] : 1;
        if (sa != sb && sa != 1 && sb != 1) {
            char b1[64], b2[64];
            return msd_error(MSD_ERR_SHAPE,
                             "%s: shapes %s and %s do not broadcast (size %d vs %d in dim %d)",
                             op, msd_tensor_shape_str(b1, sizeof b1, a),
                             msd_tensor_shape_str(b2, sizeof b2, b), sa, sb, d - (4 - nd) + 1);
        }
        bc->shape[d] = sa == 1 ? sb : sa;
    }
    padded_strides(a, bc->shape, bc->sa);
    padded_strides(b, bc->shape, bc->sb);
    return MSD_OK;
}

enum binop { OP_ADD, OP_SUB, OP_MUL, OP_DIV };

/* o[i] = a[i*sa] op b[i*sb], i < n: one row of the innermost dim (sa or sb is 0 where that
 * operand is broadcast along it). The switch is outside the loops: one branch per row. */
static void binary_row(enum binop op, float *o, const float *a, long sa, const float *b, long sb,
                       int n)
{
    switch (op) {
    case OP_ADD:
        for (int i = 0; i < n; i++)
            o[i] = a[i * sa] + b[i * sb];
        break;
    case OP_SUB:
        for (int i = 0; i < n; i++)
            o[i] = a[i * sa] - b[i * sb];
        break;
    case OP_MUL:
        for (int i = 0; i < n; i++)
            o[i] = a[i * sa] * b[i * sb];
        break;
    case OP_DIV:
        for (int i = 0; i < n; i++)
            o[i] = a[i * sa] / b[i * sb];
        break;
    }
}

/* Elements per chunk of the elementwise loops spread over the threads; smaller loops run
 * inline. Every element is computed once, so the bits do not depend on the threads. */
#define EW_CHUNK ((size_t)1 << 15)

static int ew_chunks(size_t n)
{
    return n > 2 * EW_CHUNK ? (int)((n + EW_CHUNK - 1) / EW_CHUNK) : 1;
}

typedef struct binary_job {
    enum binop op;
    float *o;
    const float *a, *b;
    const bcast *bc;
    size_t rows;
    int nch;
} binary_job;

/* Rows [chunk * rows / nch, (chunk + 1) * rows / nch) of the broadcast shape (a row: the
 * innermost dim, row r = (i0, i1, i2) in row-major order). */
static void binary_chunk(void *ctx, int k, int tid)
{
    const binary_job *j = ctx;
    const bcast *bc = j->bc;
    const int *s = bc->shape;
    (void)tid;
    for (size_t r = k * j->rows / j->nch; r < (k + 1) * j->rows / j->nch; r++) {
        long i2 = (long)(r % (size_t)s[2]), i1 = (long)(r / (size_t)s[2] % (size_t)s[1]);
        long i0 = (long)(r / ((size_t)s[2] * s[1]));
        long oa = i0 * bc->sa[0] + i1 * bc->sa[1] + i2 * bc->sa[2];
        long ob = i0 * bc->sb[0] + i1 * bc->sb[1] + i2 * bc->sb[2];
        binary_row(j->op, j->o + r * (size_t)s[3], j->a + oa, bc->sa[3], j->b + ob, bc->sb[3],
                   s[3]);
    }
}

/* o[i] = a[ia] op b[ib] over the broadcast shape bc->shape: o is written contiguously in
 * row-major order, a and b are read through their padded strides. */
static void binary_loop(enum binop op, float *o, const float *a, const float *b, const bcast *bc)
{
    const int *s = bc->shape;
    size_t rows = (size_t)s[0] * s[1] * s[2];
    int nch = ew_chunks(rows * (size_t)s[3]);
    binary_job j = { op, o, a, b, bc, rows, nch < (int)rows ? nch : (int)(rows ? rows : 1) };
    msd_parallel_for(j.nch, MSD_ALL_THREADS, binary_chunk, &j);
}

typedef struct add_job {
    float *d;
    const float *g;
    size_t n;
    int nch;
} add_job;

/* d[i] += g[i] for i in [chunk * n / nch, (chunk + 1) * n / nch) */
static void add_chunk(void *ctx, int k, int tid)
{
    const add_job *j = ctx;
    (void)tid;
    for (size_t i = k * j->n / j->nch; i < (k + 1) * j->n / j->nch; i++)
        j->d[i] += j->g[i];
}

/* dx += g reduced (summed in double) over the dims where dx is broadcast;
 * st are dx's padded strides against the full shape s of g.
 * g: the full (broadcast) shape s, contiguous; dx: its own shape. A broadcast dim folds
 * many terms (a (1, C, 1, 1) bias gets N*H*W) into each element of dx: they are summed in
 * a double scratch array and added to dx rounded once. MSD_ERR_MEM if the scratch fails. */
static int reduce_into(msd_tensor *dx, const float *g, const int *s, const long *st)
{
    size_t n = msd_tensor_numel(dx);
    float *d = msd_tensor_data(dx);
    size_t full = (size_t)s[0] * s[1] * s[2] * s[3];
    /* as many elements as g: no dim of dx is broadcast, and both have the same layout */
    if (n == full) {
        add_job j = { d, g, n, ew_chunks(n) };
        msd_parallel_for(j.nch, MSD_ALL_THREADS, add_chunk, &j);
        return MSD_OK;
    }
    double *acc = calloc(n ? n : 1, sizeof *acc); /* n ? n : 1: calloc(0) may give NULL */
    if (!acc)
        return msd_error(MSD_ERR_MEM, "out of memory in backward");
    /* a stride of 0 sends every index of a broadcast dim to the same accumulator */
    for (int i0 = 0; i0 < s[0]; i0++)
        for (int i1 = 0; i1 < s[1]; i1++)
            for (int i2 = 0; i2 < s[2]; i2++) {
                double *a = acc + i0 * st[0] + i1 * st[1] + i2 * st[2];
                for (int i3 = 0; i3 < s[3]; i3++)
                    a[i3 * st[3]] += *g++;
            }
    for (size_t i = 0; i < n; i++)
        d[i] += (float)acc[i];
    free(acc);
    return MSD_OK;
}

static const char *binop_name[] = { "add", "sub", "mul", "div" };
static const msd_op binop_code[] = { MSD_OP_ADD, MSD_OP_SUB, MSD_OP_MUL, MSD_OP_DIV };

/* Forward of add, sub, mul, div: out (broadcast shape) = a op b. Nothing is saved: the
 * node holds a and b, all that the backward of mul and div needs. MSD_ERR_SHAPE when the
 * shapes do not broadcast, MSD_ERR_MEM. */
static int binary(enum binop op, msd_tensor *a, msd_tensor *b, msd_tensor **out)
{
    bcast bc;
    int rc = broadcast(binop_name[op], a, b, &bc);
    if (rc != MSD_OK)
        return rc;
    msd_tensor *o = msd_tensor_empty(bc.ndim, bc.shape + (4 - bc.ndim));
    if (!o)
        return MSD_ERR_MEM;
    binary_loop(op, msd_tensor_data(o), msd_tensor_data(a), msd_tensor_data(b), &bc);
    msd_tensor *in[2] = { a, b };
    return msd_autograd_finish(o, binop_code[op], 2, in, NULL, out);
}

int msd_add(msd_tensor *a, msd_tensor *b, msd_tensor **out) { return binary(OP_ADD, a, b, out); }
int msd_sub(msd_tensor *a, msd_tensor *b, msd_tensor **out) { return binary(OP_SUB, a, b, out); }
int msd_mul(msd_tensor *a, msd_tensor *b, msd_tensor **out) { return binary(OP_MUL, a, b, out); }
int msd_div(msd_tensor *a, msd_tensor *b, msd_tensor **out) { return binary(OP_DIV, a, b, out); }

/* The broadcast of a full-shape contiguous operand (dy) with one whose
 * padded strides are `other`. */
static bcast against_full(const bcast *bc, const long *other)
{
    bcast r = *bc;
    long s = 1;
    for (int d = 3; d >= 0; d--) {
        r.sa[d] = s;
        r.sb[d] = other[d];
        s *= bc->shape[d];
    }
    return r;
}

/* Gradient of a binary op for operand `which` (0 = a, 1 = b): the
 * full-shape term g (dy times the local derivative), then reduced.
 * dy: the broadcast shape; dx[0], dx[1]: a's and b's shapes (or NULL), each ADDED to by
 * reduce_into. The term is dy itself for add and for sub's a (no copy); otherwise it is
 * built in tmp, one full-shape buffer shared by both operands. The derivatives read a and
 * b, the node's inputs. MSD_ERR_MEM when a scratch buffer cannot be had. */
static int binary_grad(enum binop op, msd_node *n, const msd_tensor *dy, msd_tensor *const *dx)
{
    msd_tensor *a = n->in[0], *b = n->in[1];
    bcast bc;
    /* the node keeps no bcast: redone from the inputs' shapes (forward already checked them,
     * so this cannot fail) */
    int rc = broadcast(binop_name[op], a, b, &bc);
    if (rc != MSD_OK)
        return rc;
    size_t full = msd_tensor_numel(dy);
    const float *g = msd_tensor_data(dy);
    float *tmp = NULL;
    for (int which = 0; which < 2 && rc == MSD_OK; which++) {
        if (!dx[which])
            continue;
        const float *term = g;
        if (op == OP_MUL || op == OP_DIV || (op == OP_SUB && which == 1)) {
            if (!tmp && !(tmp = malloc((full ? full : 1) * sizeof *tmp)))
                return msd_error(MSD_ERR_MEM, "out of memory in backward");
            const float *pa = msd_tensor_data(a), *pb = msd_tensor_data(b);
            if (op == OP_SUB) {
                for (size_t i = 0; i < full; i++)
                    tmp[i] = -g[i];
            } else if (op == OP_MUL) {
                /* d(a*b)/da = b, d(a*b)/db = a */
                bcast gb = against_full(&bc, which == 0 ? bc.sb : bc.sa);
                binary_loop(OP_MUL, tmp, g, which == 0 ? pb : pa, &gb);
            } else if (which == 0) {
                /* d(a/b)/da = 1/b */
                bcast gb = against_full(&bc, bc.sb);
                binary_loop(OP_DIV, tmp, g, pb, &gb);
            } else {
                /* d(a/b)/db = -a/b^2: it reads both operands, so an explicit loop over the
                 * broadcast shape instead of binary_loop */
                const int *s = bc.shape;
                size_t k = 0;
                for (int i0 = 0; i0 < s[0]; i0++)
                    for (int i1 = 0; i1 < s[1]; i1++)
                        for (int i2 = 0; i2 < s[2]; i2++)
                            for (int i3 = 0; i3 < s[3]; i3++, k++) {
                                float va = pa[i0 * bc.sa[0] + i1 * bc.sa[1] + i2 * bc.sa[2] +
                                              i3 * bc.sa[3]];
                                float vb = pb[i0 * bc.sb[0] + i1 * bc.sb[1] + i2 * bc.sb[2] +
                                              i3 * bc.sb[3]];
                                tmp[k] = -g[k] * va / (vb * vb);
                            }
            }
            term = tmp;
        }
        rc = reduce_into(dx[which], term, bc.shape, which == 0 ? bc.sa : bc.sb);
    }
    free(tmp);
    return rc;
}

int msd_grad_add(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx)
{
    return binary_grad(OP_ADD, n, dy, dx);
}
int msd_grad_sub(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx)
{
    return binary_grad(OP_SUB, n, dy, dx);
}
int msd_grad_mul(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx)
{
    return binary_grad(OP_MUL, n, dy, dx);
}
int msd_grad_div(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx)
{
    return binary_grad(OP_DIV, n, dy, dx);
}

/* ---- unary ops -------------------------------------------------------- */

/* y = f(x) elementwise for the unary ops (s: the scalar of add/mul_scalar),
 * recorded as op with x as the only input.
 * x, out: the same shape. The node keeps s in farg[0] for the scalar ops' backward and
 * nothing else (backward recomputes f'(x) from x, its input). MSD_ERR_MEM. */
static int unary(msd_tensor *x, msd_op op, float s, msd_tensor **out)
{
    msd_tensor *o = msd_tensor_empty_like(x);
    if (!o)
        return MSD_ERR_MEM;
    msd_node *node;
    int rc = msd_autograd_record(o, op, 1, &x, &node);
    if (rc != MSD_OK) {
        msd_tensor_release(o);
        return rc;
    }
    if (node)
        node->farg[0] = s;
    const float *px = msd_tensor_data(x);
    float *po = msd_tensor_data(o);
    size_t n = msd_tensor_numel(x);
    switch (op) {
    case MSD_OP_ADD_SCALAR:
        for (size_t i = 0; i < n; i++)
            po[i] = px[i] + s;
        break;
    case MSD_OP_MUL_SCALAR:
        for (size_t i = 0; i < n; i++)
            po[i] = px[i] * s;
        break;
    case MSD_OP_ABS:
        for (size_t i = 0; i < n; i++)
            po[i] = fabsf(px[i]);
        break;
    case MSD_OP_SQRT:
        for (size_t i = 0; i < n; i++)
            po[i] = sqrtf(px[i]);
        break;
    default: /* MSD_OP_EXP */
        for (size_t i = 0; i < n; i++)
            po[i] = expf(px[i]);
        break;
    }
    *out = o;
    return MSD_OK;
}

int msd_add_scalar(msd_tensor *x, float s, msd_tensor **out)
{
    return unary(x, MSD_OP_ADD_SCALAR, s, out);
}

/* The backward of every elementwise unary op: dx[i] += dy[i] * f'(x[i]), one loop, the
 * derivative chosen by the node's op (s: the scalar argument of the scalar ops).
 * dx, dy, x: x's shape. dx[0] is never NULL here: x is the only input, and a node exists
 * only when it requires grad. */
static int unary_grad(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx)
{
    const float *x = msd_tensor_data(n->in[0]), *g = msd_tensor_data(dy);
    float *d = msd_tensor_data(dx[0]), s = n->farg[0];
    msd_op op = n->op;
    for (size_t i = 0, k = msd_tensor_numel(dy); i < k; i++) {
        float gi = g[i];
        switch (op) {
        case MSD_OP_ADD_SCALAR:
            d[i] += gi;
            break;
        case MSD_OP_MUL_SCALAR:
            d[i] += gi * s;
            break;
        case MSD_OP_ABS: /* sign(x), 0 at 0 as PyTorch */
            d[i] += x[i] > 0 ? gi : x[i] < 0 ? -gi : 0.0f;
            break;
        case MSD_OP_SQRT: /* the output is not saved (it would hold its own node) */
            d[i] += gi * 0.5f / sqrtf(x[i]);
            break;
        default: /* MSD_OP_EXP: exp(x) again, for the same reason as sqrt */
            d[i] += gi * expf(x[i]);
            break;
        }
    }
    return MSD_OK;
}

int msd_grad_add_scalar(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx)
{
    return unary_grad(n, dy, dx);
}

int msd_mul_scalar(msd_tensor *x, float s, msd_tensor **out)
{
    return unary(x, MSD_OP_MUL_SCALAR, s, out);
}

int msd_grad_mul_scalar(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx)
{
    return unary_grad(n, dy, dx);
}

int msd_abs(msd_tensor *x, msd_tensor **out)
{
    return unary(x, MSD_OP_ABS, 0.0f, out);
}

int msd_grad_abs(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx)
{
    return unary_grad(n, dy, dx);
}

int msd_sqrt(msd_tensor *x, msd_tensor **out)
{
    return unary(x, MSD_OP_SQRT, 0.0f, out);
}

int msd_grad_sqrt(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx)
{
    return unary_grad(n, dy, dx);
}

int msd_exp(msd_tensor *x, msd_tensor **out)
{
    return unary(x, MSD_OP_EXP, 0.0f, out);
}

int msd_grad_exp(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx)
{
    return unary_grad(n, dy, dx);
}

/* ---- reductions ------------------------------------------------------- */

/* Sum or mean of all of x into a 0-dim tensor, accumulated in double (x may hold
 * millions of floats). Nothing is saved: backward needs only x's element count, which
 * dx[0] carries. MSD_ERR_SHAPE for the mean of an empty tensor (the sum of one is 0). */
static int reduce_all(msd_tensor *x, msd_op op, msd_tensor **out)
{
    size_t n = msd_tensor_numel(x);
    double acc = 0;
    const float *p = msd_tensor_data(x);
    for (size_t i = 0; i < n; i++)
        acc += p[i];
    if (op == MSD_OP_MEAN) {
        if (n == 0)
            return msd_error(MSD_ERR_SHAPE, "mean: the tensor is empty");
        acc /= (double)n;
    }
    msd_tensor *o = msd_tensor_full(0, NULL, (float)acc);
    if (!o)
        return MSD_ERR_MEM;
    return msd_autograd_finish(o, op, 1, &x, NULL, out);
}

int msd_sum(msd_tensor *x, msd_tensor **out) { return reduce_all(x, MSD_OP_SUM, out); }
int msd_mean(msd_tensor *x, msd_tensor **out) { return reduce_all(x, MSD_OP_MEAN, out); }

/* dx (x's shape) += dy (0-dim) at every element. */
int msd_grad_sum(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx)
{
    (void)n;
    float g = msd_tensor_data(dy)[0], *d = msd_tensor_data(dx[0]);
    for (size_t i = 0, k = msd_tensor_numel(dx[0]); i < k; i++)
        d[i] += g;
    return MSD_OK;
}

/* dx (x's shape) += dy / numel(x) at every element; the quotient in double, rounded once
 * (numel > 0: forward refused an empty x). */
int msd_grad_mean(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx)
{
    (void)n;
    size_t k = msd_tensor_numel(dx[0]);
    float g = (float)(msd_tensor_data(dy)[0] / (double)k), *d = msd_tensor_data(dx[0]);
    for (size_t i = 0; i < k; i++)
        d[i] += g;
    return MSD_OK;
}

/* Min or max of all of x into *value; no autograd. A comparison with NaN is false, so a NaN
 * is the result only when it is x's first element, and is skipped anywhere else.
 * MSD_ERR_SHAPE for an empty tensor. */
static int extreme(const char *what, const msd_tensor *x, float *value, int want_max)
{
    size_t n = msd_tensor_numel(x);
    if (n == 0)
        return msd_error(MSD_ERR_SHAPE, "%s: the tensor is empty", what);
    const float *p = msd_tensor_data(x);
    float v = p[0];
    for (size_t i = 1; i < n; i++)
        if (want_max ? p[i] > v : p[i] < v)
            v = p[i];
    *value = v;
    return MSD_OK;
}

int msd_min(const msd_tensor *x, float *value) { return extreme("min", x, value, 0); }
int msd_max(const msd_tensor *x, float *value) { return extreme("max", x, value, 1); }

/* ---- shape ops -------------------------------------------------------- */

/* A view of x with another shape, sharing its storage (all tensors are contiguous, so any
 * shape of the same element count is a view). msd_tensor_view infers a -1 size and sets the
 * message when the count differs (or, rarely, memory runs out); MSD_ERR_SHAPE either way. */
int msd_reshape(msd_tensor *x, int ndim, const int *shape, msd_tensor **out)
{
    msd_tensor *o = msd_tensor_view(x, ndim, shape);
    if (!o)
        return MSD_ERR_SHAPE;
    return msd_autograd_finish(o, MSD_OP_RESHAPE, 1, &x, NULL, out);
}

/* dx (x's shape) += dy (the new shape) element by element: the same row-major order, only
 * the shapes differ. */
int msd_grad_reshape(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx)
{
    (void)n;
    float *d = msd_tensor_data(dx[0]);
    const float *g = msd_tensor_data(dy);
    for (size_t i = 0, k = msd_tensor_numel(dy); i < k; i++)
        d[i] += g[i];
    return MSD_OK;
}

/* Sizes of x around dim: outer (product before), inner (product after). */
static void split_at(const msd_tensor *x, int dim, size_t *outer, size_t *inner)
{
    *outer = 1;
    *inner = 1;
    for (int d = 0; d < dim; d++)
        *outer *= (size_t)x->shape[d];
    for (int d = dim + 1; d < x->ndim; d++)
        *inner *= (size_t)x->shape[d];
}

/* out: x's shape with len at dim, the elements [start, start + len) along dim (0-based;
 * the messages say 1-based, as the Lua API). Along dim 0 it is a view sharing x's storage
 * (rows are outermost, so the range stays contiguous); along another dim a copy, x seen as
 * (outer, size, inner) blocks. The node keeps dim, start, len in iarg[0..2]; nothing is
 * saved. MSD_ERR_ARG for a dim or range out of bounds, MSD_ERR_MEM. */
int msd_narrow(msd_tensor *x, int dim, int start, int len, msd_tensor **out)
{
    char b[64];
    if (dim < 0 || dim >= x->ndim)
        return msd_error(MSD_ERR_ARG, "narrow: dim %d out of range for %s (1..%d)", dim + 1,
                         msd_tensor_shape_str(b, sizeof b, x), x->ndim);
    if (start < 0 || len < 0 || start > x->shape[dim] - len)
        return msd_error(MSD_ERR_ARG,
                         "narrow: start %d, length %d out of range for dim %d of size %d in %s",
                         start + 1, len, dim + 1, x->shape[dim],
                         msd_tensor_shape_str(b, sizeof b, x));
    msd_tensor *o;
    if (dim == 0) {
        o = msd_tensor_narrow0(x, start, len);
    } else {
        int s[MSD_MAX_DIMS];
        memcpy(s, x->shape, sizeof s);
        s[dim] = len;
        o = msd_tensor_empty(x->ndim, s);
        if (o) {
            size_t outer, inner;
            split_at(x, dim, &outer, &inner);
            const float *px = msd_tensor_data(x);
            float *po = msd_tensor_data(o);
            for (size_t i = 0; i < outer; i++)
                memcpy(po + i * len * inner, px + (i * x->shape[dim] + start) * inner,
                       len * inner * sizeof(float));
        }
    }
    if (!o)
        return MSD_ERR_MEM;
    msd_node *node;
    int rc = msd_autograd_finish(o, MSD_OP_NARROW, 1, &x, &node, out);
    if (rc == MSD_OK && node) {
        node->iarg[0] = dim;
        node->iarg[1] = start;
        node->iarg[2] = len;
    }
    return rc;
}

/* dx (x's shape) += dy in the slab [start, start + len) along dim; the rest of dx gets
 * nothing. dy: x's shape with len at dim. */
int msd_grad_narrow(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx)
{
    int dim = n->iarg[0], start = n->iarg[1], len = n->iarg[2];
    size_t outer, inner;
    split_at(dx[0], dim, &outer, &inner);
    int size = dx[0]->shape[dim];
    const float *g = msd_tensor_data(dy);
    float *d = msd_tensor_data(dx[0]);
    for (size_t i = 0; i < outer; i++) {
        float *row = d + (i * size + start) * inner;
        const float *src = g + i * len * inner;
        for (size_t j = 0; j < len * inner; j++)
            row[j] += src[j];
    }
    return MSD_OK;
}

/* out: the inputs' common shape with the sizes along dim summed (total). Seen as
 * (outer, size_k, inner), input k's block of size_k * inner floats per outer index goes at
 * offset `at` of the output's rows of total * inner floats. The node keeps dim in iarg[0]
 * and holds every input (backward reads their sizes along dim). MSD_ERR_ARG for no tensor
 * or a bad dim, MSD_ERR_SHAPE naming the first input whose other sizes differ. */
int msd_cat(int n, msd_tensor *const *xs, int dim, msd_tensor **out)
{
    char b1[64], b2[64];
    if (n < 1)
        return msd_error(MSD_ERR_ARG, "cat: expected at least one tensor");
    const msd_tensor *x0 = xs[0];
    if (dim < 0 || dim >= x0->ndim)
        return msd_error(MSD_ERR_ARG, "cat: dim %d out of range for %s (1..%d)", dim + 1,
                         msd_tensor_shape_str(b1, sizeof b1, x0), x0->ndim);
    long total = 0;
    for (int k = 0; k < n; k++) {
        const msd_tensor *x = xs[k];
        int ok = x->ndim == x0->ndim;
        for (int d = 0; ok && d < x0->ndim; d++)
            ok = d == dim || x->shape[d] == x0->shape[d];
        if (!ok)
            return msd_error(MSD_ERR_SHAPE,
                             "cat: tensor %d has shape %s, tensor 1 has %s; all sizes but dim %d "
                             "must agree",
                             k + 1, msd_tensor_shape_str(b1, sizeof b1, x),
                             msd_tensor_shape_str(b2, sizeof b2, x0), dim + 1);
        total += x->shape[dim];
    }
    int s[MSD_MAX_DIMS];
    memcpy(s, x0->shape, sizeof s);
    /* total was summed in a long: check it before it narrows to an int size (the whole
     * shape is checked again by msd_tensor_empty) */
    if (total > MSD_MAX_NUMEL)
        return msd_error(MSD_ERR_MEM, "cat: result too large");
    s[dim] = (int)total;
    msd_tensor *o = msd_tensor_empty(x0->ndim, s);
    if (!o)
        return MSD_ERR_MEM;
    size_t outer, inner;
    split_at(o, dim, &outer, &inner);
    float *po = msd_tensor_data(o);
    size_t at = 0; /* offset of the current input's block within a row */
    for (int k = 0; k < n; k++) {
        size_t w = (size_t)xs[k]->shape[dim] * inner;
        const float *px = msd_tensor_data(xs[k]);
        for (size_t i = 0; i < outer; i++)
            memcpy(po + i * total * inner + at, px + i * w, w * sizeof(float));
        at += w;
    }
    msd_node *node;
    int rc = msd_autograd_finish(o, MSD_OP_CAT, n, xs, &node, out);
    if (rc == MSD_OK && node)
        node->iarg[0] = dim;
    return rc;
}

/* dx[k] (input k's shape) += input k's block of dy (out's shape); an input that does not
 * require grad (dx[k] NULL) is skipped, its block still counted in `at`. */
int msd_grad_cat(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx)
{
    int dim = n->iarg[0];
    size_t outer, inner;
    split_at(dy, dim, &outer, &inner);
    size_t total = (size_t)dy->shape[dim], at = 0;
    const float *g = msd_tensor_data(dy);
    for (int k = 0; k < n->n_in; k++) {
        size_t w = (size_t)n->in[k]->shape[dim] * inner;
        if (dx[k]) {
            float *d = msd_tensor_data(dx[k]);
            for (size_t i = 0; i < outer; i++)
                for (size_t j = 0; j < w; j++)
                    d[i * w + j] += g[i * total * inner + at + j];
        }
        at += w;
    }
    return MSD_OK;
}
