/* SCAFFOLD: replaced by the real implementation. */
#include "ops.h"
int msd_grad_gelu(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx) { (void)n; (void)dy; (void)dx; return msd_error(MSD_ERR_STATE, "gelu: not implemented"); }
int msd_grad_relu(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx) { (void)n; (void)dy; (void)dx; return msd_error(MSD_ERR_STATE, "relu: not implemented"); }
int msd_gelu(msd_tensor *x, msd_tensor **out) { (void)x; (void)out; return msd_error(MSD_ERR_STATE, "not implemented"); }
int msd_relu(msd_tensor *x, msd_tensor **out) { (void)x; (void)out; return msd_error(MSD_ERR_STATE, "not implemented"); }
