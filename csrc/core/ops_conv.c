/* SCAFFOLD: replaced by the real implementation. */
#include "ops.h"
int msd_grad_conv2d(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx) { (void)n; (void)dy; (void)dx; return msd_error(MSD_ERR_STATE, "conv2d: not implemented"); }
int msd_grad_conv_transpose2d(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx) { (void)n; (void)dy; (void)dx; return msd_error(MSD_ERR_STATE, "conv_transpose2d: not implemented"); }
int msd_conv2d(msd_tensor *x, msd_tensor *w, msd_tensor *b, int stride, int padding, msd_tensor **out) { (void)x; (void)w; (void)b; (void)stride; (void)padding; (void)out; return msd_error(MSD_ERR_STATE, "not implemented"); }
int msd_conv_transpose2d(msd_tensor *x, msd_tensor *w, msd_tensor *b, int stride, int padding, msd_tensor **out) { (void)x; (void)w; (void)b; (void)stride; (void)padding; (void)out; return msd_error(MSD_ERR_STATE, "not implemented"); }
