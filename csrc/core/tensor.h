/* minisd: tensors.
 *
 * A tensor is float32, contiguous, row-major, with 0 to MSD_MAX_DIMS dims
 * (N,C,H,W is all the model needs). It holds one reference to a refcounted
 * storage plus an element offset, so views (reshape, narrow along the first
 * dim) share memory with their base. Tensors are refcounted themselves:
 * every function that returns a new msd_tensor* hands the caller one
 * reference, to be dropped with msd_tensor_release. */
#ifndef MSD_TENSOR_H
#define MSD_TENSOR_H

#include <stdatomic.h>
#include <stddef.h>

#include "error.h"

#define MSD_MAX_DIMS 4
/* Largest number of elements one tensor may hold (2^31 - 1): bounds every
 * allocation that a file header or a script can ask for. */
#define MSD_MAX_NUMEL 2147483647L

typedef struct msd_node msd_node;
/* Drops a reference to an autograd node (autograd.c); a tensor holds one on its grad_fn. */
void msd_node_release(msd_node *n);

typedef struct msd_storage {
    float *data;
    size_t size; /* capacity in floats */
    int refcount;
    /* A fresh msd_stamp_next() at the storage's creation and at every msd_tensor_data of a
     * tensor over it: unique over all storages and times, so a stamp seen again means that no
     * writable pointer to the storage has been handed out since (the transformed-kernel
     * cache of ops_conv.c relies on it: msd_tensor_data is the only way to a tensor's
     * floats, and every write goes through a pointer it returned). */
    _Atomic unsigned long long stamp;
} msd_storage;

/* The next value of the process's stamp counter (never 0). */
extern _Atomic unsigned long long msd_stamp_counter;
static inline unsigned long long msd_stamp_next(void)
{
    return atomic_fetch_add_explicit(&msd_stamp_counter, 1, memory_order_relaxed) + 1;
}

typedef struct msd_tensor {
    int refcount;
    msd_storage *storage;
    size_t offset; /* in elements, into storage->data */
    int ndim;
    int shape[MSD_MAX_DIMS];
    int stride[MSD_MAX_DIMS]; /* contiguous row-major, derived from shape */
    int requires_grad;        /* set on leaves by the user */
    struct msd_tensor *grad;  /* accumulated gradient of a leaf, or NULL */
    msd_node *grad_fn;        /* the node that produced it, or NULL */
} msd_tensor;

/* t's floats, to read or write; gives the storage a new stamp. */
static inline float *msd_tensor_data(const msd_tensor *t)
{
    atomic_store_explicit(&t->storage->stamp, msd_stamp_next(), memory_order_relaxed);
    return t->storage->data + t->offset;
}

/* t's floats, read only, and its storage's stamp left as it is: for a caller that reads
 * and keeps something computed from them (the conv's transformed kernels, with *stamp,
 * the stamp they were read at). */
static inline const float *msd_tensor_read(const msd_tensor *t, unsigned long long *stamp)
{
    *stamp = atomic_load_explicit(&t->storage->stamp, memory_order_relaxed);
    return t->storage->data + t->offset;
}

/* Number of elements (1 for a 0-dim tensor). */
size_t msd_tensor_numel(const msd_tensor *t);

/* Checks a shape: 0..MSD_MAX_DIMS dims, each >= 0, at most MSD_MAX_NUMEL
 * elements in all. `what` names the caller in the message. */
int msd_shape_check(const char *what, int ndim, const int *shape);

/* New tensor of the given shape. _empty leaves the values undefined,
 * _zeros sets 0, _full sets `value`. NULL on error (bad shape, memory). */
msd_tensor *msd_tensor_empty(int ndim, const int *shape);
msd_tensor *msd_tensor_zeros(int ndim, const int *shape);
msd_tensor *msd_tensor_full(int ndim, const int *shape, float value);
/* New tensor with the same shape as t (zeros / undefined values). */
msd_tensor *msd_tensor_zeros_like(const msd_tensor *t);
msd_tensor *msd_tensor_empty_like(const msd_tensor *t);
/* New tensor holding a copy of numel(shape) floats from data. */
msd_tensor *msd_tensor_from_data(int ndim, const int *shape, const float *data);

msd_tensor *msd_tensor_retain(msd_tensor *t);
/* Drops one reference; NULL is allowed. Frees the tensor (its grad, its
 * grad_fn reference and its storage reference) when none is left. */
void msd_tensor_release(msd_tensor *t);

/* A view with another shape and the same number of elements (one dim may
 * be -1, inferred). Shares storage; carries no autograd history (use
 * msd_reshape from ops.h for that). */
msd_tensor *msd_tensor_view(msd_tensor *t, int ndim, const int *shape);
/* A view of rows [start, start+len) of the first dim (0-based). */
msd_tensor *msd_tensor_narrow0(msd_tensor *t, int start, int len);
/* A new tensor with a copy of the data and no history. */
msd_tensor *msd_tensor_clone(const msd_tensor *t);
/* Copies src's values into dst: same number of elements required. */
int msd_tensor_copy_(msd_tensor *dst, const msd_tensor *src);
/* Sets every element to value. */
void msd_tensor_fill_(msd_tensor *t, float value);

int msd_tensor_same_shape(const msd_tensor *a, const msd_tensor *b);
/* Writes "[2,3,16,16]" into buf (always NUL-terminated); returns buf. */
char *msd_shape_str(char *buf, size_t n, int ndim, const int *shape);
char *msd_tensor_shape_str(char *buf, size_t n, const msd_tensor *t);

/* Storage memory: a per-thread caching allocator, so that a steady training
 * loop reuses blocks instead of calling malloc for every op. Sizes are in
 * floats; blocks are 64-byte aligned. */
msd_storage *msd_storage_new(size_t size);
void msd_storage_release(msd_storage *s);
/* Bytes currently held by live storages / by the cache, and the peak of
 * live bytes since start (for benchmarks). */
typedef struct msd_mem_stats {
    size_t live_bytes, cached_bytes, peak_bytes;
    size_t allocs, cache_hits;
} msd_mem_stats;
msd_mem_stats msd_memory_stats(void);
/* Gives every cached block back to the system. */
void msd_memory_trim(void);

#endif
