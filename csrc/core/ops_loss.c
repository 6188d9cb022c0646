/* SCAFFOLD: replaced by the real implementation. */
#include "ops.h"
int msd_grad_mse_loss(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx) { (void)n; (void)dy; (void)dx; return msd_error(MSD_ERR_STATE, "mse_loss: not implemented"); }
int msd_grad_cross_entropy(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx) { (void)n; (void)dy; (void)dx; return msd_error(MSD_ERR_STATE, "cross_entropy: not implemented"); }
int msd_mse_loss(msd_tensor *a, msd_tensor *b, msd_tensor **out) { (void)a; (void)b; (void)out; return msd_error(MSD_ERR_STATE, "not implemented"); }
int msd_cross_entropy(msd_tensor *a, msd_tensor *b, msd_tensor **out) { (void)a; (void)b; (void)out; return msd_error(MSD_ERR_STATE, "not implemented"); }
