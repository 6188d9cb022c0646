/* SCAFFOLD: replaced by the real implementation. */
#include "ops.h"
int msd_grad_max_pool2d(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx) { (void)n; (void)dy; (void)dx; return msd_error(MSD_ERR_STATE, "max_pool2d: not implemented"); }
int msd_grad_avg_pool2d(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx) { (void)n; (void)dy; (void)dx; return msd_error(MSD_ERR_STATE, "avg_pool2d: not implemented"); }
int msd_max_pool2d(msd_tensor *x, int k, int stride, msd_tensor **out) { (void)x; (void)k; (void)stride; (void)out; return msd_error(MSD_ERR_STATE, "not implemented"); }
int msd_avg_pool2d(msd_tensor *x, int k, int stride, msd_tensor **out) { (void)x; (void)k; (void)stride; (void)out; return msd_error(MSD_ERR_STATE, "not implemented"); }
