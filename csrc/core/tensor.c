/* minisd: tensors and their memory.
 *
 * A tensor is a small header (shape, strides, offset, refcount, autograd links) over a
 * reference-counted storage of floats. Every tensor is contiguous in row-major order: the
 * strides are always the shape's (set_shape), and the only views are the ones that stay
 * contiguous, a reshape of the whole tensor (msd_tensor_view) and a range of rows along
 * dim 0 (msd_tensor_narrow0), which share the storage at an offset. Kernels can therefore
 * take a plain float pointer (msd_tensor_data) and an element count.
 *
 * Storage comes from a caching allocator (below): a training loop allocates the same
 * activation sizes every step, and reusing the freed blocks keeps malloc (and the page
 * faults of fresh memory) out of the steady state. Blocks are 64-byte aligned for the
 * vector kernels. The cache and its counts are per thread, so no locks are needed. */
#include "tensor.h"
#include "threads.h"

#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>


/* ---- caching allocator -------------------------------------------------
 * Block sizes are rounded up to a size class: four classes per power of
 * two (so at most 25% is wasted), each with a free list. A released block
 * goes back to its class's list unless the cache already holds
 * CACHE_LIMIT bytes. Lists are per thread, so no locking is needed. */

#define CACHE_LIMIT ((size_t)1 << 30)
#define N_CLASSES 256

typedef struct block {
    struct block *next;
} block;

_Atomic unsigned long long msd_stamp_counter;

static _Thread_local block *free_list[N_CLASSES];
static _Thread_local msd_mem_stats stats;

/* Size class of n bytes (n >= 1) and the class's byte size. */
static int size_class(size_t n, size_t *class_bytes)
{
    if (n < 256)
        n = 256;
    int lg = 63 - __builtin_clzll((unsigned long long)(n - 1));
    size_t step = ((size_t)1 << lg) / 4;
    size_t rounded = (n + step - 1) / step * step;
    *class_bytes = rounded;
    int sub = (int)(rounded / step) - 4; /* 1..4, as n > 2^lg */
    int cls = lg * 4 + sub;
    return cls < N_CLASSES ? cls : -1;
}

msd_storage *msd_storage_new(size_t size)
{
    if (size > (size_t)MSD_MAX_NUMEL) {
        msd_error(MSD_ERR_MEM, "storage of %zu floats exceeds the limit of %ld", size,
                  MSD_MAX_NUMEL);
        return NULL;
    }
    msd_storage *s = malloc(sizeof *s);
    if (!s) {
        msd_error(MSD_ERR_MEM, "out of memory");
        return NULL;
    }
    size_t bytes;
    int cls = size_class(size * sizeof(float), &bytes);
    void *p = NULL;
    if (cls >= 0 && free_list[cls]) {
        p = free_list[cls];
        free_list[cls] = free_list[cls]->next;
        stats.cached_bytes -= bytes;
        stats.cache_hits++;
    } else {
        p = aligned_alloc(64, bytes);
    }
    if (!p) {
        free(s);
        msd_error(MSD_ERR_MEM, "out of memory allocating %zu bytes", bytes);
        return NULL;
    }
    s->data = p;
    s->size = size;
    s->refcount = 1;
    atomic_init(&s->stamp, msd_stamp_next());
    stats.allocs++;
    stats.live_bytes += bytes;
    if (stats.live_bytes > stats.peak_bytes)
        stats.peak_bytes = stats.live_bytes;
    return s;
}

void msd_storage_release(msd_storage *s)
{
    if (!s || --s->refcount > 0)
        return;
    size_t bytes;
    int cls = size_class(s->size * sizeof(float), &bytes);
    stats.live_bytes -= bytes;
    if (cls >= 0 && stats.cached_bytes + bytes <= CACHE_LIMIT) {
        block *b = (block *)s->data;
        b->next = free_list[cls];
        free_list[cls] = b;
        stats.cached_bytes += bytes;
    } else {
        free(s->data);
    }
    free(s);
}

msd_mem_stats msd_memory_stats(void)
{
    return stats;
}

void msd_memory_trim(void)
{
    for (int c = 0; c < N_CLASSES; c++) {
        while (free_list[c]) {
            block *b = free_list[c];
            free_list[c] = b->next;
            free(b);
        }
    }
    stats.cached_bytes = 0;
}

/* ---- tensors ---------------------------------------------------------- */

static size_t shape_numel(int ndim, const int *shape)
{
    size_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= (size_t)shape[i];
    return n;
}

size_t msd_tensor_numel(const msd_tensor *t)
{
    return shape_numel(t->ndim, t->shape);
}

char *msd_shape_str(char *buf, size_t n, int ndim, const int *shape)
{
    size_t k = 0;
    if (n == 0)
        return buf;
    buf[0] = '\0';
    k += (size_t)snprintf(buf + k, n - k, "[");
    for (int i = 0; i < ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, i ? ",%d" : "%d", shape[i]);
    if (k < n)
        snprintf(buf + k, n - k, "]");
    return buf;
}

char *msd_tensor_shape_str(char *buf, size_t n, const msd_tensor *t)
{
    return msd_shape_str(buf, n, t->ndim, t->shape);
}

int msd_shape_check(const char *what, int ndim, const int *shape)
{
    if (ndim < 0 || ndim > MSD_MAX_DIMS)
        return msd_error(MSD_ERR_SHAPE, "%s: %d dims given, at most %d supported", what, ndim,
                         MSD_MAX_DIMS);
    /* n: the element count; inner: the largest product of trailing sizes, which the
     * strides hold as ints (a zero size makes n 0 but not the strides of the dims after it:
     * (0, 322222, 222222, 4) must be refused too) */
    double n = 1, inner = 1, largest = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        if (shape[i] < 0) {
            char b[64];
            return msd_error(MSD_ERR_SHAPE, "%s: negative size %d in shape %s", what, shape[i],
                             msd_shape_str(b, sizeof b, ndim, shape));
        }
        n *= shape[i];
        inner *= shape[i] > 0 ? shape[i] : 1;
        if (inner > largest)
            largest = inner;
    }
    if (n > (double)MSD_MAX_NUMEL) {
        char b[64];
        return msd_error(MSD_ERR_MEM, "%s: shape %s has %.0f elements, more than the limit %ld",
                         what, msd_shape_str(b, sizeof b, ndim, shape), n, MSD_MAX_NUMEL);
    }
    if (largest > (double)MSD_MAX_NUMEL) {
        char b[64];
        return msd_error(MSD_ERR_SHAPE, "%s: shape %s: its sizes other than 0 multiply to %.0f, "
                         "more than the limit %ld", what, msd_shape_str(b, sizeof b, ndim, shape),
                         largest, MSD_MAX_NUMEL);
    }
    return MSD_OK;
}

/* Shape and the matching row-major strides (dims past ndim are 1, so loops over all
 * MSD_MAX_DIMS dims need no special case). */
static void set_shape(msd_tensor *t, int ndim, const int *shape)
{
    t->ndim = ndim;
    int s = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        t->shape[i] = shape[i];
        t->stride[i] = s;
        s *= shape[i];
    }
    for (int i = ndim; i < MSD_MAX_DIMS; i++) {
        t->shape[i] = 1;
        t->stride[i] = 1;
    }
}

/* A tensor header around storage s (the header takes over the caller's
 * reference to s). */
static msd_tensor *wrap(msd_storage *s, size_t offset, int ndim, const int *shape)
{
    msd_tensor *t = calloc(1, sizeof *t);
    if (!t) {
        msd_storage_release(s);
        msd_error(MSD_ERR_MEM, "out of memory");
        return NULL;
    }
    t->refcount = 1;
    t->storage = s;
    t->offset = offset;
    set_shape(t, ndim, shape);
    return t;
}

msd_tensor *msd_tensor_empty(int ndim, const int *shape)
{
    if (msd_shape_check("tensor", ndim, shape) != MSD_OK)
        return NULL;
    msd_storage *s = msd_storage_new(shape_numel(ndim, shape));
    return s ? wrap(s, 0, ndim, shape) : NULL;
}

/* Floats per chunk of a zero fill spread over the threads (the gradient buffers of a
 * training step: a few MiB each, zeroed on the calling thread they were 1% of the step);
 * smaller tensors are zeroed inline. */
#define ZERO_CHUNK ((size_t)1 << 16)

static void zero_chunk(void *ctx, int k, int tid)
{
    msd_tensor *t = ctx;
    size_t n = msd_tensor_numel(t), lo = (size_t)k * ZERO_CHUNK;
    (void)tid;
    memset(msd_tensor_data(t) + lo, 0, (n - lo < ZERO_CHUNK ? n - lo : ZERO_CHUNK) * sizeof(float));
}

msd_tensor *msd_tensor_zeros(int ndim, const int *shape)
{
    msd_tensor *t = msd_tensor_empty(ndim, shape);
    if (t) {
        size_t n = msd_tensor_numel(t);
        if (n > 4 * ZERO_CHUNK)
            msd_parallel_for((int)((n + ZERO_CHUNK - 1) / ZERO_CHUNK), MSD_ALL_THREADS,
                             zero_chunk, t);
        else
            memset(msd_tensor_data(t), 0, n * sizeof(float));
    }
    return t;
}

msd_tensor *msd_tensor_full(int ndim, const int *shape, float value)
{
    msd_tensor *t = msd_tensor_empty(ndim, shape);
    if (t)
        msd_tensor_fill_(t, value);
    return t;
}

msd_tensor *msd_tensor_zeros_like(const msd_tensor *t)
{
    return msd_tensor_zeros(t->ndim, t->shape);
}

msd_tensor *msd_tensor_empty_like(const msd_tensor *t)
{
    return msd_tensor_empty(t->ndim, t->shape);
}

msd_tensor *msd_tensor_from_data(int ndim, const int *shape, const float *data)
{
    msd_tensor *t = msd_tensor_empty(ndim, shape);
    if (t)
        memcpy(msd_tensor_data(t), data, msd_tensor_numel(t) * sizeof(float));
    return t;
}

msd_tensor *msd_tensor_retain(msd_tensor *t)
{
    if (t)
        t->refcount++;
    return t;
}

/* The last reference frees the header and drops what it holds: the gradient, the node
 * that made it (and through it, possibly, a whole graph), and its share of the storage. */
void msd_tensor_release(msd_tensor *t)
{
    if (!t || --t->refcount > 0)
        return;
    msd_tensor_release(t->grad);
    msd_node_release(t->grad_fn);
    msd_storage_release(t->storage);
    free(t);
}

/* The same elements under another shape (one size may be -1: inferred), sharing the
 * storage; an error names both shapes when the counts differ. */
msd_tensor *msd_tensor_view(msd_tensor *t, int ndim, const int *shape)
{
    int s[MSD_MAX_DIMS];
    char b1[64], b2[64];
    if (ndim < 0 || ndim > MSD_MAX_DIMS) {
        msd_error(MSD_ERR_SHAPE, "reshape: %d dims given, at most %d supported", ndim,
                  MSD_MAX_DIMS);
        return NULL;
    }
    size_t n = msd_tensor_numel(t), known = 1;
    int infer = -1;
    for (int i = 0; i < ndim; i++) {
        s[i] = shape[i];
        if (shape[i] == -1 && infer < 0) {
            infer = i;
            continue;
        }
        if (shape[i] < 0) {
            msd_error(MSD_ERR_SHAPE, "reshape: bad size %d in shape %s", shape[i],
                      msd_shape_str(b1, sizeof b1, ndim, shape));
            return NULL;
        }
        known *= (size_t)shape[i];
    }
    if (infer >= 0) {
        if (known == 0 || n % known != 0) {
            msd_error(MSD_ERR_SHAPE, "reshape: cannot view %s as %s",
                      msd_tensor_shape_str(b1, sizeof b1, t),
                      msd_shape_str(b2, sizeof b2, ndim, shape));
            return NULL;
        }
        s[infer] = (int)(n / known);
        known = n;
    }
    if (known != n) {
        msd_error(MSD_ERR_SHAPE, "reshape: cannot view %s (%zu elements) as %s (%zu elements)",
                  msd_tensor_shape_str(b1, sizeof b1, t), n,
                  msd_shape_str(b2, sizeof b2, ndim, shape), known);
        return NULL;
    }
    t->storage->refcount++;
    return wrap(t->storage, t->offset, ndim, s);
}

/* Rows start..start+len-1 along dim 0 (0-based), sharing the storage: still contiguous,
 * since dim 0 is the outermost. */
msd_tensor *msd_tensor_narrow0(msd_tensor *t, int start, int len)
{
    char b[64];
    if (t->ndim < 1 || start < 0 || len < 0 || start > t->shape[0] - len) {
        msd_error(MSD_ERR_ARG, "narrow: rows %d..%d (0-based, length %d) out of range for %s",
                  start, start + len - 1, len, msd_tensor_shape_str(b, sizeof b, t));
        return NULL;
    }
    int s[MSD_MAX_DIMS];
    memcpy(s, t->shape, sizeof s);
    s[0] = len;
    t->storage->refcount++;
    return wrap(t->storage, t->offset + (size_t)start * (size_t)t->stride[0], t->ndim, s);
}

msd_tensor *msd_tensor_clone(const msd_tensor *t)
{
    return msd_tensor_from_data(t->ndim, t->shape, msd_tensor_data(t));
}

int msd_tensor_copy_(msd_tensor *dst, const msd_tensor *src)
{
    if (msd_tensor_numel(dst) != msd_tensor_numel(src)) {
        char b1[64], b2[64];
        return msd_error(MSD_ERR_SHAPE, "copy_: destination %s and source %s differ in size",
                         msd_tensor_shape_str(b1, sizeof b1, dst),
                         msd_tensor_shape_str(b2, sizeof b2, src));
    }
    memmove(msd_tensor_data(dst), msd_tensor_data(src), msd_tensor_numel(src) * sizeof(float));
    return MSD_OK;
}

void msd_tensor_fill_(msd_tensor *t, float value)
{
    float *p = msd_tensor_data(t);
    size_t n = msd_tensor_numel(t);
    for (size_t i = 0; i < n; i++)
        p[i] = value;
}

int msd_tensor_same_shape(const msd_tensor *a, const msd_tensor *b)
{
    if (a->ndim != b->ndim)
        return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i])
            return 0;
    return 1;
}
