/* minisd: functional ops (minisd.conv2d, minisd.gelu, ...). Argument order
 * and defaults follow torch.nn.functional. */
#include "lbind.h"

static int l_ops_add(lua_State *L) { return lbind_binary_op(L, msd_add); }
static int l_ops_sub(lua_State *L) { return lbind_binary_op(L, msd_sub); }
static int l_ops_mul(lua_State *L) { return lbind_binary_op(L, msd_mul); }
static int l_ops_div(lua_State *L) { return lbind_binary_op(L, msd_div); }
static int l_ops_mse_loss(lua_State *L) { return lbind_binary_op(L, msd_mse_loss); }
static int l_ops_cross_entropy_raw(lua_State *L) { return lbind_binary_op(L, msd_cross_entropy); }
int lbind_op_sum(lua_State *L) { return lbind_unary_op(L, msd_sum); }
int lbind_op_mean(lua_State *L) { return lbind_unary_op(L, msd_mean); }
int lbind_op_abs(lua_State *L) { return lbind_unary_op(L, msd_abs); }
int lbind_op_sqrt(lua_State *L) { return lbind_unary_op(L, msd_sqrt); }
int lbind_op_exp(lua_State *L) { return lbind_unary_op(L, msd_exp); }
static int l_ops_gelu(lua_State *L) { return lbind_unary_op(L, msd_gelu); }
static int l_ops_relu(lua_State *L) { return lbind_unary_op(L, msd_relu); }

/* conv2d(x, w [, b [, stride=1 [, padding=0]]]) */
static int l_ops_conv2d(lua_State *L)
{
    msd_tensor *x = lbind_check_tensor(L, 1), *w = lbind_check_tensor(L, 2);
    msd_tensor *b = lbind_opt_tensor(L, 3);
    int stride = lbind_opt_int(L, 4, 1), padding = lbind_opt_int(L, 5, 0);
    msd_tensor **box = lbind_new_box(L);
    return lbind_result(L, msd_conv2d(x, w, b, stride, padding, box), box);
}

/* conv2d_bn_act(x, w, b, stride, padding, bn_weight, bn_bias, running_mean,
 *               running_var, eps, gelu): inference only */
static int l_ops_conv2d_bn_act(lua_State *L)
{
    msd_tensor *x = lbind_check_tensor(L, 1), *w = lbind_check_tensor(L, 2);
    msd_tensor *b = lbind_opt_tensor(L, 3);
    int stride = lbind_check_int(L, 4), padding = lbind_check_int(L, 5);
    msd_tensor *bw = lbind_opt_tensor(L, 6), *bb = lbind_opt_tensor(L, 7);
    msd_tensor *rm = lbind_check_tensor(L, 8), *rv = lbind_check_tensor(L, 9);
    float eps = (float)luaL_checknumber(L, 10);
    int gelu = lua_toboolean(L, 11);
    msd_tensor **box = lbind_new_box(L);
    return lbind_result(L, msd_conv2d_bn_act(x, w, b, stride, padding, bw, bb, rm, rv, eps, gelu,
                                             box), box);
}

/* conv_transpose2d(x, w [, b [, stride=1 [, padding=0]]]) */
static int l_ops_conv_transpose2d(lua_State *L)
{
    msd_tensor *x = lbind_check_tensor(L, 1), *w = lbind_check_tensor(L, 2);
    msd_tensor *b = lbind_opt_tensor(L, 3);
    int stride = lbind_opt_int(L, 4, 1), padding = lbind_opt_int(L, 5, 0);
    msd_tensor **box = lbind_new_box(L);
    return lbind_result(L, msd_conv_transpose2d(x, w, b, stride, padding, box), box);
}

/* batch_norm2d(x, running_mean, running_var [, weight [, bias [, training=false
 *              [, momentum=0.1 [, eps=1e-5 [, gelu=false [, sync]]]]]]]): with gelu, GELU
 * applied to the result in the same op; with a reducer as sync and training, the
 * statistics of every process (msd_batch_norm2d_sync; eval ignores it, as PyTorch's
 * SyncBatchNorm does) */
static int l_ops_batch_norm2d(lua_State *L)
{
    msd_tensor *x = lbind_check_tensor(L, 1);
    msd_tensor *rm = lbind_opt_tensor(L, 2), *rv = lbind_opt_tensor(L, 3);
    msd_tensor *w = lbind_opt_tensor(L, 4), *b = lbind_opt_tensor(L, 5);
    int training = lua_toboolean(L, 6);
    float momentum = (float)luaL_optnumber(L, 7, 0.1), eps = (float)luaL_optnumber(L, 8, 1e-5);
    int gelu = lua_toboolean(L, 9);
    const msd_reducer *sync = lbind_opt_reducer(L, 10);
    msd_tensor **box = lbind_new_box(L);
    if (sync && training)
        return lbind_result(L, msd_batch_norm2d_sync(x, w, b, rm, rv, momentum, eps, gelu, sync,
                                                     box), box);
    return lbind_result(L, (gelu ? msd_batch_norm2d_gelu : msd_batch_norm2d)(
                               x, w, b, rm, rv, training, momentum, eps, box), box);
}

/* group_norm(x, groups [, weight [, bias [, eps=1e-5]]]) */
static int l_ops_group_norm(lua_State *L)
{
    msd_tensor *x = lbind_check_tensor(L, 1);
    int groups = lbind_check_int(L, 2);
    msd_tensor *w = lbind_opt_tensor(L, 3), *b = lbind_opt_tensor(L, 4);
    float eps = (float)luaL_optnumber(L, 5, 1e-5);
    msd_tensor **box = lbind_new_box(L);
    return lbind_result(L, msd_group_norm(x, groups, w, b, eps, box), box);
}

/* max_pool2d(x, k [, stride=k]), avg_pool2d(x, k [, stride=k]) */
static int l_ops_max_pool2d(lua_State *L)
{
    msd_tensor *x = lbind_check_tensor(L, 1);
    int k = lbind_check_int(L, 2), s = lbind_opt_int(L, 3, k);
    msd_tensor **box = lbind_new_box(L);
    return lbind_result(L, msd_max_pool2d(x, k, s, box), box);
}

static int l_ops_avg_pool2d(lua_State *L)
{
    msd_tensor *x = lbind_check_tensor(L, 1);
    int k = lbind_check_int(L, 2), s = lbind_opt_int(L, 3, k);
    msd_tensor **box = lbind_new_box(L);
    return lbind_result(L, msd_avg_pool2d(x, k, s, box), box);
}

/* linear(x, w [, b]) */
static int l_ops_linear(lua_State *L)
{
    msd_tensor *x = lbind_check_tensor(L, 1), *w = lbind_check_tensor(L, 2);
    msd_tensor *b = lbind_opt_tensor(L, 3);
    msd_tensor **box = lbind_new_box(L);
    return lbind_result(L, msd_linear(x, w, b, box), box);
}

static const luaL_Reg functions[] = {
    { "add", l_ops_add },
    { "sub", l_ops_sub },
    { "mul", l_ops_mul },
    { "div", l_ops_div },
    { "sum", lbind_op_sum },
    { "mean", lbind_op_mean },
    { "abs", lbind_op_abs },
    { "sqrt", lbind_op_sqrt },
    { "exp", lbind_op_exp },
    { "conv2d", l_ops_conv2d },
    { "conv2d_bn_act", l_ops_conv2d_bn_act },
    { "conv_transpose2d", l_ops_conv_transpose2d },
    { "batch_norm2d", l_ops_batch_norm2d },
    { "group_norm", l_ops_group_norm },
    { "max_pool2d", l_ops_max_pool2d },
    { "avg_pool2d", l_ops_avg_pool2d },
    { "gelu", l_ops_gelu },
    { "relu", l_ops_relu },
    { "linear", l_ops_linear },
    { "mse_loss", l_ops_mse_loss },
    /* 0-based class indices; minisd.cross_entropy (init.lua) takes 1-based */
    { "cross_entropy_raw", l_ops_cross_entropy_raw },
    { NULL, NULL },
};

static int l_reducer_tostring(lua_State *L)
{
    lua_pushfstring(L, "minisd.Reducer (%p)", *(const void **)lua_touserdata(L, 1));
    return 1;
}

void lbind_open_ops(lua_State *L)
{
    luaL_setfuncs(L, functions, 0);
    /* the reducers minisd.dist hands to batch_norm2d */
    luaL_newmetatable(L, LBIND_REDUCER_MT);
    lua_pushcfunction(L, l_reducer_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
}
