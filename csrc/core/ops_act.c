/* Activations: GELU (the exact erf form, PyTorch's default) and ReLU, each
 * with its grad function. Backward recomputes from the input, so nothing
 * but the input is kept. */
#include <math.h>
#include <stddef.h>

#include "ops.h"

#define INV_SQRT2 0.70710678118654752440f
#define INV_SQRT_2PI 0.39894228040143267794f

void msd_gelu_forward(float *y, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        y[i] = 0.5f * x[i] * (1.0f + erff(x[i] * INV_SQRT2));
}

/* d/dx [x Phi(x)] = Phi(x) + x phi(x), Phi the normal CDF, phi its density */
void msd_gelu_backward(float *dx, const float *dy, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        float cdf = 0.5f * (1.0f + erff(v * INV_SQRT2));
        float pdf = INV_SQRT_2PI * expf(-0.5f * v * v);
        dx[i] += dy[i] * (cdf + v * pdf);
    }
}

/* NaN passes through, as in PyTorch. */
void msd_relu_forward(float *y, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        y[i] = x[i] <= 0.0f ? 0.0f : x[i];
}

/* The gradient is 0 at x = 0 exactly, as PyTorch's. */
void msd_relu_backward(float *dx, const float *dy, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (x[i] > 0.0f)
            dx[i] += dy[i];
}

typedef void (*act_kernel)(float *y, const float *x, size_t n);

static int activation(msd_tensor *x, msd_op op, act_kernel f, msd_tensor **out)
{
    msd_tensor *o = msd_tensor_empty_like(x);
    if (!o)
        return MSD_ERR_MEM;
    f(msd_tensor_data(o), msd_tensor_data(x), msd_tensor_numel(x));
    msd_node *node;
    int rc = msd_autograd_record(o, op, 1, &x, &node);
    if (rc != MSD_OK) {
        msd_tensor_release(o);
        return rc;
    }
    *out = o;
    return MSD_OK;
}

int msd_gelu(msd_tensor *x, msd_tensor **out)
{
    return activation(x, MSD_OP_GELU, msd_gelu_forward, out);
}

int msd_relu(msd_tensor *x, msd_tensor **out)
{
    return activation(x, MSD_OP_RELU, msd_relu_forward, out);
}

int msd_grad_gelu(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx)
{
    msd_gelu_backward(msd_tensor_data(dx[0]), msd_tensor_data(dy), msd_tensor_data(n->in[0]),
                      msd_tensor_numel(dy));
    return MSD_OK;
}

int msd_grad_relu(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx)
{
    msd_relu_backward(msd_tensor_data(dx[0]), msd_tensor_data(dy), msd_tensor_data(n->in[0]),
                      msd_tensor_numel(dy));
    return MSD_OK;
}
