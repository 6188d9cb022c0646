/* minisd: helpers shared by the binding files (csrc/lua/lbind_*.c), defined in lbind.c.
 * Bindings check arguments, call the core, and turn its errors into Lua
 * errors; they hold no maths. */
#ifndef MSD_LBIND_H
#define MSD_LBIND_H

#include "lcompat.h"
#include "minisd.h"

#define LBIND_TENSOR_MT "minisd.Tensor"
#define LBIND_REDUCER_MT "minisd.Reducer"

/* The tensor at index i, or a Lua error naming the argument. */
msd_tensor *lbind_check_tensor(lua_State *L, int i);
/* The tensor at i, or NULL when the value there is nil or absent. */
msd_tensor *lbind_opt_tensor(lua_State *L, int i);
/* Pushes an empty tensor box (a userdata holding NULL) and returns it; the
 * caller fills *box with a tensor it owns one reference of. */
msd_tensor **lbind_new_box(lua_State *L);
/* Pushes a new box holding t (takes over the caller's reference). */
void lbind_push_tensor(lua_State *L, msd_tensor *t);
/* Finishes a binding that filled a box on top of the stack: raises the
 * core's error when rc != MSD_OK, otherwise tells Lua's GC about the C
 * memory just allocated (see STYLE.md) and returns 1. */
int lbind_result(lua_State *L, int rc, msd_tensor **box);
/* The error convention for files: an expected run-time failure returns nil
 * and the message, misuse raises. Loading, every core error is such a
 * failure (the file is missing, unreadable or malformed); saving, only
 * MSD_ERR_IO (it cannot be written). lbind_file_result finishes a load like
 * lbind_result, lbind_file_done a save (true on success), lbind_file_fail
 * pushes nil and the message (or raises) and returns 2. */
int lbind_file_result(lua_State *L, int rc, msd_tensor **box);
int lbind_file_done(lua_State *L, int rc);
int lbind_file_fail(lua_State *L, int rc, int loading);
/* Tells Lua's GC about `bytes` of C memory allocated for a new object. */
void lbind_gc_hint(lua_State *L, size_t bytes);
/* Reads a shape: a table of sizes at index i. Returns ndim. */
int lbind_check_shape(lua_State *L, int i, int *shape);
/* Binds a tensor op of one or two tensor arguments (at indices 1, 2): checks
 * them, runs f into a new box and returns it (lbind_result). */
typedef int (*lbind_unary_fn)(msd_tensor *, msd_tensor **);
typedef int (*lbind_binary_fn)(msd_tensor *, msd_tensor *, msd_tensor **);
int lbind_unary_op(lua_State *L, lbind_unary_fn f);
int lbind_binary_op(lua_State *L, lbind_binary_fn f);
/* The reductions and maths bound once (lbind_ops.c): minisd.sum(x) and x:sum() alike. */
int lbind_op_sum(lua_State *L);
int lbind_op_mean(lua_State *L);
int lbind_op_abs(lua_State *L);
int lbind_op_sqrt(lua_State *L);
int lbind_op_exp(lua_State *L);
/* The shape of a tensor to create (a table at index i): like
 * lbind_check_shape, then msd_shape_check (no -1, no negative size, not too
 * many elements); `what` names the function in the message. Returns ndim. */
int lbind_check_new_shape(lua_State *L, int i, const char *what, int *shape);
/* A reducer (ops.h) for synchronised BatchNorm, as a userdata holding a pointer to r, which
 * must live as long as the module (minisd.dist's is static). */
void lbind_push_reducer(lua_State *L, const msd_reducer *r);
/* The reducer at i, or NULL when the value there is nil or absent. */
const msd_reducer *lbind_opt_reducer(lua_State *L, int i);
/* Raises a Lua error with msd_last_error() when rc != MSD_OK. */
void lbind_check_rc(lua_State *L, int rc);
/* An integer argument (error if not an integral number). */
int lbind_check_int(lua_State *L, int i);
int lbind_opt_int(lua_State *L, int i, int def);

/* Each binding file registers its functions into the module table on top
 * of the stack. */
void lbind_open_tensor(lua_State *L);
void lbind_open_ops(lua_State *L);
void lbind_open_rng(lua_State *L);
void lbind_open_io(lua_State *L);
void lbind_open_optim(lua_State *L);
void lbind_open_diffusion(lua_State *L);
void lbind_open_image(lua_State *L);
void lbind_open_sys(lua_State *L);
void lbind_open_gif(lua_State *L);
#ifdef MINISD_MPI
/* minisd.core.dist: MPI (lbind_dist.c, built with -DMINISD_MPI=ON) */
void lbind_open_dist(lua_State *L);
#endif

#endif
