/* minisd: reverse-mode autograd over a graph of nodes.
 *
 * Recording (msd_autograd_record, called by every op after its forward): when grad mode
 * is on and an input requires grad, the op's output gets a node (out->grad_fn) that holds a
 * reference to each input, the output's shape, and whatever the op saved for its backward
 * (msd_node_save: BatchNorm's mean and 1/std, max-pool's argmax, ...); the op fills the
 * node's integer and float arguments. Nodes are reference-counted: a tensor holds its
 * grad_fn, a node holds its inputs, so the graph lives exactly as long as the tensors that
 * can still reach it.
 *
 * Backward (msd_backward): the nodes reachable from the root are sorted so that every node
 * comes after its inputs' nodes (topo_sort), then walked from the root down; each node's
 * gradient function turns the gradient of its output (out_grad, accumulated from all its
 * users) into contributions added to its inputs' gradients: a leaf's .grad, or the
 * producing node's out_grad (grad_slot). Gradient functions therefore always ADD into
 * dx[i] (an input used twice gets both contributions), and dx[i] is NULL for an input that
 * does not require grad. Without retain_graph, each node drops its inputs and saved
 * tensors after the walk (node_free_graph), so the activations are freed right after
 * backward even while Lua still holds the loss; a second backward through it is an error.
 *
 * Grad mode and the visit marks are per thread: a worker thread sampling under no_grad
 * does not change what the main thread records. */
#include "autograd.h"

#include <stdlib.h>
#include <string.h>

/* The gradient function of each op, in one table: every op that records a node has its
 * entry here, and the C tests check each against finite differences. */
static const msd_grad_fn backward_of[MSD_OP_COUNT] = {
    [MSD_OP_ADD] = msd_grad_add,
    [MSD_OP_SUB] = msd_grad_sub,
    [MSD_OP_MUL] = msd_grad_mul,
    [MSD_OP_DIV] = msd_grad_div,
    [MSD_OP_ADD_SCALAR] = msd_grad_add_scalar,
    [MSD_OP_MUL_SCALAR] = msd_grad_mul_scalar,
    [MSD_OP_ABS] = msd_grad_abs,
    [MSD_OP_SQRT] = msd_grad_sqrt,
    [MSD_OP_EXP] = msd_grad_exp,
    [MSD_OP_SUM] = msd_grad_sum,
    [MSD_OP_MEAN] = msd_grad_mean,
    [MSD_OP_RESHAPE] = msd_grad_reshape,
    [MSD_OP_NARROW] = msd_grad_narrow,
    [MSD_OP_CAT] = msd_grad_cat,
    [MSD_OP_CONV2D] = msd_grad_conv2d,
    [MSD_OP_CONV_TRANSPOSE2D] = msd_grad_conv_transpose2d,
    [MSD_OP_BATCH_NORM2D] = msd_grad_batch_norm2d,
    [MSD_OP_GROUP_NORM] = msd_grad_group_norm,
    [MSD_OP_MAX_POOL2D] = msd_grad_max_pool2d,
    [MSD_OP_AVG_POOL2D] = msd_grad_avg_pool2d,
    [MSD_OP_GELU] = msd_grad_gelu,
    [MSD_OP_RELU] = msd_grad_relu,
    [MSD_OP_LINEAR] = msd_grad_linear,
    [MSD_OP_MSE_LOSS] = msd_grad_mse_loss,
    [MSD_OP_CROSS_ENTROPY] = msd_grad_cross_entropy,
};

/* The ops whose grad functions write a fresh dx[i] (n->fresh) instead of adding to zeros:
 * the largest gradients of a training step. */
static const unsigned char writes_fresh[MSD_OP_COUNT] = {
    [MSD_OP_CONV2D] = 1,
    [MSD_OP_BATCH_NORM2D] = 1,
};

static _Thread_local int grad_disabled;
/* topo_sort marks the nodes it has seen with the current epoch instead of clearing a flag
 * on every node afterwards. */
static _Thread_local int visit_epoch;

int msd_set_grad_enabled(int enabled)
{
    int prev = !grad_disabled;
    grad_disabled = !enabled;
    return prev;
}

int msd_grad_enabled(void)
{
    return !grad_disabled;
}

int msd_requires_grad(const msd_tensor *t)
{
    return t && (t->requires_grad || t->grad_fn != NULL);
}

int msd_autograd_finish(msd_tensor *o, msd_op op, int n_in, msd_tensor *const *in,
                        msd_node **node, msd_tensor **out)
{
    msd_node *n = NULL;
    int rc = msd_autograd_record(o, op, n_in, in, &n);
    if (node)
        *node = n;
    if (rc != MSD_OK) {
        msd_tensor_release(o);
        return rc;
    }
    *out = o;
    return MSD_OK;
}

int msd_autograd_record(msd_tensor *out, msd_op op, int n_in, msd_tensor *const *in,
                        msd_node **node)
{
    *node = NULL;
    if (grad_disabled)
        return MSD_OK;
    int any = 0;
    for (int i = 0; i < n_in; i++)
        any |= msd_requires_grad(in[i]);
    if (!any)
        return MSD_OK;
    msd_node *n = calloc(1, sizeof *n);
    msd_tensor **ins = calloc((size_t)n_in, sizeof *ins);
    if (!n || !ins) {
        free(n);
        free(ins);
        return msd_error(MSD_ERR_MEM, "out of memory recording the autograd graph");
    }
    n->refcount = 1;
    n->op = op;
    n->n_in = n_in;
    n->in = ins;
    for (int i = 0; i < n_in; i++)
        ins[i] = msd_tensor_retain(in[i]);
    n->out_ndim = out->ndim;
    memcpy(n->out_shape, out->shape, sizeof n->out_shape);
    msd_node_release(out->grad_fn);
    out->grad_fn = n;
    *node = n;
    return MSD_OK;
}

void msd_node_save(msd_node *n, int i, msd_tensor *t)
{
    msd_tensor_release(n->saved[i]);
    n->saved[i] = msd_tensor_retain(t);
}

/* Drops what a node holds for backward (not the node itself). */
static void node_free_graph(msd_node *n)
{
    for (int i = 0; i < n->n_in; i++) {
        msd_tensor_release(n->in[i]);
        n->in[i] = NULL;
    }
    for (int i = 0; i < MSD_NODE_MAX_SAVED; i++) {
        msd_tensor_release(n->saved[i]);
        n->saved[i] = NULL;
    }
    n->freed = 1;
}

void msd_node_release(msd_node *n)
{
    if (!n || --n->refcount > 0)
        return;
    node_free_graph(n);
    msd_tensor_release(n->out_grad);
    free(n->in);
    free(n);
}

/* Collects the nodes reachable from root in post-order (inputs first),
 * iteratively so that deep graphs cannot overflow the C stack. */
static int topo_sort(msd_node *root, msd_node ***order, int *count)
{
    int cap = 64, n = 0, sp = 0, scap = 64;
    msd_node **out = malloc((size_t)cap * sizeof *out);
    struct frame { msd_node *node; int next; } *stack = malloc((size_t)scap * sizeof *stack);
    if (!out || !stack)
        goto oom;
    int epoch = ++visit_epoch;
    root->visit = epoch;
    stack[sp++] = (struct frame){ root, 0 };
    while (sp > 0) {
        struct frame *f = &stack[sp - 1];
        msd_node *nd = f->node;
        if (nd->freed) {
            free(out);
            free(stack);
            return msd_error(MSD_ERR_STATE,
                             "backward: the graph was already freed by an earlier backward "
                             "(call backward with retain_graph to go through it twice)");
        }
        if (f->next < nd->n_in) {
            msd_tensor *x = nd->in[f->next++];
            msd_node *c = x ? x->grad_fn : NULL;
            if (c && c->visit != epoch) {
                c->visit = epoch;
                if (sp == scap) {
                    void *p = realloc(stack, (size_t)(scap *= 2) * sizeof *stack);
                    if (!p)
                        goto oom;
                    stack = p;
                }
                stack[sp++] = (struct frame){ c, 0 };
            }
            continue;
        }
        if (n == cap) {
            void *p = realloc(out, (size_t)(cap *= 2) * sizeof *out);
            if (!p)
                goto oom;
            out = p;
        }
        out[n++] = nd;
        sp--;
    }
    free(stack);
    *order = out;
    *count = n;
    return MSD_OK;
oom:
    free(out);
    free(stack);
    return msd_error(MSD_ERR_MEM, "out of memory in backward");
}

void msd_grad_zero_fresh(msd_node *n, msd_tensor *const *dx, unsigned keep)
{
    for (int i = 0; i < n->n_in && i < 32; i++)
        if ((n->fresh >> i & 1u) && !(keep >> i & 1u)) {
            msd_tensor_fill_(dx[i], 0.0f);
            n->fresh &= ~(1u << i);
        }
}

/* The tensor that input x's gradient accumulates into (created as zeros
 * on first use), or NULL with an error set. */
static msd_tensor *grad_slot(msd_tensor *x)
{
    msd_tensor **slot = x->grad_fn ? &x->grad_fn->out_grad : &x->grad;
    if (!*slot)
        *slot = msd_tensor_zeros_like(x);
    return *slot;
}

int msd_backward(msd_tensor *t, const msd_tensor *grad, int retain_graph)
{
    char b1[64], b2[64];
    if (!msd_requires_grad(t))
        return msd_error(MSD_ERR_STATE, "backward: the tensor %s does not require grad (no input "
                                        "of the ops that made it has requires_grad)",
                         msd_tensor_shape_str(b1, sizeof b1, t));
    if (!grad && msd_tensor_numel(t) != 1)
        return msd_error(MSD_ERR_SHAPE, "backward: expected a scalar (1 element), got shape %s; "
                                        "pass a gradient of that shape for a non-scalar",
                         msd_tensor_shape_str(b1, sizeof b1, t));
    if (grad && msd_tensor_numel(grad) != msd_tensor_numel(t))
        return msd_error(MSD_ERR_SHAPE, "backward: gradient %s does not match tensor %s",
                         msd_tensor_shape_str(b1, sizeof b1, grad),
                         msd_tensor_shape_str(b2, sizeof b2, t));
    msd_tensor *seed = msd_tensor_empty_like(t);
    if (!seed)
        return MSD_ERR_MEM;
    if (grad)
        memcpy(msd_tensor_data(seed), msd_tensor_data(grad), msd_tensor_numel(t) * sizeof(float));
    else
        msd_tensor_fill_(seed, 1.0f);

    if (!t->grad_fn) { /* a leaf: its gradient is the seed */
        msd_tensor *g = grad_slot(t);
        int rc = g ? MSD_OK : MSD_ERR_MEM;
        if (g) {
            float *gp = msd_tensor_data(g), *sp = msd_tensor_data(seed);
            for (size_t i = 0, n = msd_tensor_numel(g); i < n; i++)
                gp[i] += sp[i];
        }
        msd_tensor_release(seed);
        return rc;
    }

    msd_node **order = NULL;
    int count = 0, rc;
    if ((rc = topo_sort(t->grad_fn, &order, &count)) != MSD_OK) {
        msd_tensor_release(seed);
        return rc;
    }
    msd_tensor_release(t->grad_fn->out_grad);
    t->grad_fn->out_grad = seed;
    /* order[] has inputs first: walk it backwards, from the root to the leaves; a node
     * whose output got no gradient (a branch not reaching the root's value) is skipped */
    msd_tensor *dx_stack[8], **dx = dx_stack;
    for (int k = count - 1; k >= 0 && rc == MSD_OK; k--) {
        msd_node *n = order[k];
        if (!n->out_grad)
            continue;
        if (n->n_in > 8 && !(dx = malloc((size_t)n->n_in * sizeof *dx))) {
            rc = msd_error(MSD_ERR_MEM, "out of memory in backward");
            break;
        }
        n->fresh = 0;
        for (int i = 0; i < n->n_in && rc == MSD_OK; i++) {
            dx[i] = NULL;
            msd_tensor *x = n->in[i];
            if (!msd_requires_grad(x))
                continue;
            if (writes_fresh[n->op] && i < 32 && x->grad_fn && !x->grad_fn->out_grad) {
                /* a node's output gradient not yet begun: the grad function writes it */
                if (!(dx[i] = x->grad_fn->out_grad = msd_tensor_empty_like(x)))
                    rc = MSD_ERR_MEM;
                n->fresh |= 1u << i;
            } else if (!(dx[i] = grad_slot(x))) {
                rc = MSD_ERR_MEM;
            }
        }
        for (int i = 0; i < n->n_in && rc == MSD_OK; i++) /* an input given twice: zeros */
            for (int k = i + 1; k < n->n_in; k++)
                if (dx[i] && dx[i] == dx[k] && (n->fresh >> i & 1u)) {
                    msd_tensor_fill_(dx[i], 0.0f);
                    n->fresh &= ~(1u << i);
                }
        if (rc == MSD_OK)
            rc = backward_of[n->op](n, n->out_grad, dx);
        if (dx != dx_stack) {
            free(dx);
            dx = dx_stack;
        }
        /* this node's output gradient has been passed on: free it now, not at the end */
        msd_tensor_release(n->out_grad);
        n->out_grad = NULL;
    }
    /* after an error some out_grad may remain: none survives the call */
    for (int k = 0; k < count; k++) {
        msd_tensor_release(order[k]->out_grad);
        order[k]->out_grad = NULL;
        if (!retain_graph)
            node_free_graph(order[k]);
    }
    free(order);
    return rc;
}
