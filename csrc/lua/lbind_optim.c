/* minisd: optimizer kernels on tensors, updated in place (minisd.adam_step,
 * minisd.sgd_step, minisd.ema_update). The optimizers themselves, with
 * their state, live in lua/minisd/optim.lua. */
#include "lbind.h"

/* Raises an error unless t has the same shape as ref. */
static void check_same(lua_State *L, const char *op, const char *what, const msd_tensor *t,
                       const msd_tensor *ref)
{
    if (!msd_tensor_same_shape(t, ref)) {
        char b1[64], b2[64];
        luaL_error(L, "%s: %s has shape %s but the parameter has shape %s", op, what,
                   msd_tensor_shape_str(b1, sizeof b1, t), msd_tensor_shape_str(b2, sizeof b2, ref));
    }
}

static long check_step(lua_State *L, int i)
{
    if (!lbind_isintegral(L, i))
        luaL_argerror(L, i, "step count must be an integer");
    lua_Number s = lua_tonumber(L, i);
    if (s < 1 || s > 2147483647.0)
        luaL_argerror(L, i, "step count must be in 1..2^31-1");
    return (long)s;
}

/* adam_step(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps,
 *           weight_decay, decoupled): one Adam (AdamW when decoupled) step. */
static int l_optim_adam_step(lua_State *L)
{
    msd_tensor *p = lbind_check_tensor(L, 1), *g = lbind_check_tensor(L, 2);
    msd_tensor *m = lbind_check_tensor(L, 3), *v = lbind_check_tensor(L, 4);
    long step = check_step(L, 5);
    msd_adam_hparams h;
    h.lr = luaL_checknumber(L, 6);
    h.beta1 = luaL_checknumber(L, 7);
    h.beta2 = luaL_checknumber(L, 8);
    h.eps = luaL_checknumber(L, 9);
    h.weight_decay = luaL_checknumber(L, 10);
    h.decoupled = lua_toboolean(L, 11);
    const char *op = h.decoupled ? "adamw_step" : "adam_step";
    check_same(L, op, "grad", g, p);
    check_same(L, op, "exp_avg", m, p);
    check_same(L, op, "exp_avg_sq", v, p);
    lbind_check_rc(L, msd_adam_step(msd_tensor_data(p), msd_tensor_data(m), msd_tensor_data(v),
                                    msd_tensor_data(g), msd_tensor_numel(p), step, &h));
    return 0;
}

/* sgd_step(param, grad, momentum_buf|nil, first, lr, momentum, dampening,
 *          weight_decay, nesterov) */
static int l_optim_sgd_step(lua_State *L)
{
    msd_tensor *p = lbind_check_tensor(L, 1), *g = lbind_check_tensor(L, 2);
    msd_tensor *buf = lbind_opt_tensor(L, 3);
    int first = lua_toboolean(L, 4);
    msd_sgd_hparams h;
    h.lr = luaL_checknumber(L, 5);
    h.momentum = luaL_optnumber(L, 6, 0);
    h.dampening = luaL_optnumber(L, 7, 0);
    h.weight_decay = luaL_optnumber(L, 8, 0);
    h.nesterov = lua_toboolean(L, 9);
    check_same(L, "sgd_step", "grad", g, p);
    if (buf)
        check_same(L, "sgd_step", "momentum_buffer", buf, p);
    lbind_check_rc(L, msd_sgd_step(msd_tensor_data(p), buf ? msd_tensor_data(buf) : NULL,
                                   msd_tensor_data(g), msd_tensor_numel(p), first, &h));
    return 0;
}

/* ema_update(ema, param, decay): ema = decay ema + (1 - decay) param */
static int l_optim_ema_update(lua_State *L)
{
    msd_tensor *ema = lbind_check_tensor(L, 1), *p = lbind_check_tensor(L, 2);
    double decay = luaL_checknumber(L, 3);
    check_same(L, "ema_update", "the average", ema, p);
    lbind_check_rc(L, msd_ema_update(msd_tensor_data(ema), msd_tensor_data(p),
                                     msd_tensor_numel(p), decay));
    return 0;
}

static const luaL_Reg functions[] = {
    { "adam_step", l_optim_adam_step },
    { "sgd_step", l_optim_sgd_step },
    { "ema_update", l_optim_ema_update },
    { NULL, NULL },
};

void lbind_open_optim(lua_State *L)
{
    luaL_setfuncs(L, functions, 0);
}
