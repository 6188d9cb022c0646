/* SCAFFOLD: replaced by the real implementation. */
#include "ops.h"
int msd_grad_linear(msd_node *n, const msd_tensor *dy, msd_tensor *const *dx) { (void)n; (void)dy; (void)dx; return msd_error(MSD_ERR_STATE, "linear: not implemented"); }
int msd_linear(msd_tensor *x, msd_tensor *w, msd_tensor *b, msd_tensor **out) { (void)x; (void)w; (void)b; (void)out; return msd_error(MSD_ERR_STATE, "not implemented"); }
