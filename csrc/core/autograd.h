/* minisd: define-by-run autograd.
 *
 * An op whose inputs require grad (and while grad mode is on) records a
 * node: the op code, retained references to its inputs, tensors saved for
 * backward, and small integer/float arguments. The output tensor holds a
 * reference to its node (t->grad_fn). msd_backward walks the nodes reachable
 * from a scalar in reverse topological order, calls each op's grad function
 * from the single table in autograd.c, accumulates into leaves' ->grad, and
 * then frees the graph (drops the nodes' inputs and saved tensors) unless
 * asked to retain it. */
#ifndef MSD_AUTOGRAD_H
#define MSD_AUTOGRAD_H

#include "tensor.h"

typedef enum msd_op {
    MSD_OP_NONE = 0,
    /* ops_elementwise.c */
    MSD_OP_ADD, MSD_OP_SUB, MSD_OP_MUL, MSD_OP_DIV, /* broadcasting */
    MSD_OP_ADD_SCALAR, MSD_OP_MUL_SCALAR, MSD_OP_ABS, MSD_OP_SQRT, MSD_OP_EXP,
    MSD_OP_SUM, MSD_OP_MEAN, MSD_OP_RESHAPE, MSD_OP_NARROW, MSD_OP_CAT,
    /* ops_conv.c */
    MSD_OP_CONV2D, MSD_OP_CONV_TRANSPOSE2D,
    /* ops_norm.c */
    MSD_OP_BATCH_NORM2D, MSD_OP_GROUP_NORM,
    /* ops_pool.c */
    MSD_OP_MAX_POOL2D, MSD_OP_AVG_POOL2D,
    /* ops_act.c */
    MSD_OP_GELU, MSD_OP_RELU,
    /* ops_linear.c */
    MSD_OP_LINEAR,
    /* ops_loss.c */
    MSD_OP_MSE_LOSS, MSD_OP_CROSS_ENTROPY,
    MSD_OP_COUNT
} msd_op;

#define MSD_NODE_MAX_SAVED 4

struct msd_node {
    int refcount;
    msd_op op;
    int n_in;
    msd_tensor **in;                        /* n_in retained inputs; NULL entries allowed */
    msd_tensor *saved[MSD_NODE_MAX_SAVED];  /* retained, op-specific */
    int iarg[8];                            /* op-specific integers */
    float farg[4];                          /* op-specific floats */
    const void *parg;                       /* op-specific pointer, not owned (the reducer
                                               of a synchronised BatchNorm) */
    int out_ndim;
    int out_shape[MSD_MAX_DIMS];
    int freed;                              /* inputs/saved dropped by backward */
    /* backward bookkeeping */
    msd_tensor *out_grad;
    int visit;
    unsigned fresh; /* bit i: dx[i] is new and not zeroed; the grad function writes it */
};

/* A grad function: given the node and dy (the gradient of the node's output,
 * out_shape), ADDS the gradient of each input i into dx[i], which is NULL
 * when input i needs no gradient and otherwise has input i's shape. The ops
 * that say so in autograd.c's table get instead, for an input whose gradient
 * buffer backward has just created, that buffer uninitialised, with bit i of
 * n->fresh set: they write every element of it (as 0.0f + their sum: the
 * bits of adding it to zeros, -0 included), sparing the zero fill and the
 * read. */
typedef int (*msd_grad_fn)(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx);

/* For a grad function of those ops: zero-fills the fresh dx[i] outside the
 * mask keep (the ones it will add to after all) and clears their bits. */
void msd_grad_zero_fresh(msd_node *n, msd_tensor *const *dx, unsigned keep);

/* Grad mode (per thread, on by default). Returns the previous setting. */
int msd_set_grad_enabled(int enabled);
int msd_grad_enabled(void);

/* Whether t takes part in autograd: a leaf with requires_grad, or the
 * output of a recorded op. */
int msd_requires_grad(const msd_tensor *t);

/* Records a node for op with inputs in[0..n_in) and output out, if grad
 * mode is on and any input requires grad; otherwise sets *node = NULL.
 * On success the node is referenced by out->grad_fn (the caller gets a
 * borrowed pointer to fill saved[] and args). MSD_ERR_MEM on failure. */
int msd_autograd_record(msd_tensor *out, msd_op op, int n_in, msd_tensor *const *in,
                        msd_node **node);

/* The tail of every op: records the node (msd_autograd_record) and hands o to the
 * caller in *out, or releases o and returns the error. *node (when node is not NULL) is
 * the recorded node, or NULL when nothing was recorded, for the op to fill its saved
 * values and arguments. */
int msd_autograd_finish(msd_tensor *o, msd_op op, int n_in, msd_tensor *const *in,
                        msd_node **node, msd_tensor **out);

/* Saves t in node->saved[i] (retains it). */
void msd_node_save(msd_node *n, int i, msd_tensor *t);

/* msd_node_release(n): declared in tensor.h, which tensors need. */

/* Backpropagates from t. grad is dy for t (same shape), or NULL for a
 * scalar t (then dy = 1). Leaves with requires_grad accumulate into
 * ->grad (created as zeros when absent). Unless retain_graph, the graph's
 * inputs and saved tensors are released afterwards; a second backward
 * through a freed node is an MSD_ERR_STATE error. */
int msd_backward(msd_tensor *t, const msd_tensor *grad, int retain_graph);

/* Grad functions of each op, defined beside the op (ops_<family>.c). */
int msd_grad_add(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx);
int msd_grad_sub(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx);
int msd_grad_mul(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx);
int msd_grad_div(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx);
int msd_grad_add_scalar(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx);
int msd_grad_mul_scalar(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx);
int msd_grad_abs(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx);
int msd_grad_sqrt(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx);
int msd_grad_exp(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx);
int msd_grad_sum(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx);
int msd_grad_mean(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx);
int msd_grad_reshape(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx);
int msd_grad_narrow(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx);
int msd_grad_cat(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx);
int msd_grad_conv2d(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx);
int msd_grad_conv_transpose2d(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx);
int msd_grad_batch_norm2d(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx);
int msd_grad_group_norm(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx);
int msd_grad_max_pool2d(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx);
int msd_grad_avg_pool2d(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx);
int msd_grad_gelu(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx);
int msd_grad_relu(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx);
int msd_grad_linear(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx);
int msd_grad_mse_loss(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx);
int msd_grad_cross_entropy(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx);

#endif
