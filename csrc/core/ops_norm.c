/* SCAFFOLD: replaced by the real implementation. */
#include "ops.h"
int msd_grad_batch_norm2d(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx) { (void)n; (void)dy; (void)dx; return msd_error(MSD_ERR_STATE, "batch_norm2d: not implemented"); }
int msd_grad_group_norm(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx) { (void)n; (void)dy; (void)dx; return msd_error(MSD_ERR_STATE, "group_norm: not implemented"); }
int msd_batch_norm2d(msd_tensor *x, msd_tensor *weight, msd_tensor *bias, msd_tensor *running_mean, msd_tensor *running_var, int training, float momentum, float eps, msd_tensor **out) { (void)x; (void)weight; (void)bias; (void)running_mean; (void)running_var; (void)training; (void)momentum; (void)eps; (void)out; return msd_error(MSD_ERR_STATE, "not implemented"); }
int msd_group_norm(msd_tensor *x, int groups, msd_tensor *weight, msd_tensor *bias, float eps, msd_tensor **out) { (void)x; (void)groups; (void)weight; (void)bias; (void)eps; (void)out; return msd_error(MSD_ERR_STATE, "not implemented"); }
