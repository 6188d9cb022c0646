/* minisd: bindings of the diffusion core (diffusion.h) for the schedulers
 * in lua/minisd/sched/: schedule tables and the per-step kernels. */
#include "lbind.h"

/* Largest T accepted, to bound the table sizes a script can ask for. */
#define SCHED_MAX_T 1000000

/* Pushes v[0..T] as a Lua table indexed 0..T, each value rounded to float32
 * so that the tables equal the seed's float32 torch tensors. */
static void push_table0(lua_State *L, const double *v, int T)
{
    lua_createtable(L, T, 1);
    for (int t = 0; t <= T; t++) {
        lua_pushnumber(L, (lua_Number)(float)v[t]);
        lua_rawseti(L, -2, t);
    }
}

/* sched_tables(kind, T, a, b) -> betas, alphas, alphas_cumprod (tables
 * indexed 0..T). kind "linear" / "scaled_linear": a = beta_start,
 * b = beta_end; "cosine": a = s, b = max_beta. */
static int l_diffusion_sched_tables(lua_State *L)
{
    static const char *const kinds[] = { "linear", "scaled_linear", "cosine", NULL };
    int kind = luaL_checkoption(L, 1, NULL, kinds);
    int T = lbind_check_int(L, 2);
    double a = luaL_checknumber(L, 3), b = luaL_checknumber(L, 4);
    if (T < 1 || T > SCHED_MAX_T)
        return luaL_argerror(L, 2, lua_pushfstring(L, "T must be in 1..%d, got %d", SCHED_MAX_T,
                                                   T));
    /* scratch in a userdata, so that a Lua error cannot leak it */
    double *buf = lbind_newuserdata(L, 3 * ((size_t)T + 1) * sizeof *buf);
    double *betas = buf, *alphas = buf + T + 1, *ab = buf + 2 * ((size_t)T + 1);
    int rc = kind == 0   ? msd_schedule_linear(betas, T, a, b)
             : kind == 1 ? msd_schedule_scaled_linear(betas, T, a, b)
                         : msd_schedule_cosine(betas, T, a, b);
    if (rc == MSD_OK)
        rc = msd_schedule_cumprod(alphas, ab, betas, T);
    lbind_check_rc(L, rc);
    push_table0(L, betas, T);
    push_table0(L, alphas, T);
    push_table0(L, ab, T);
    return 3;
}

/* Reads a list of n numbers at index i into a float array owned by a
 * userdata pushed on the stack (freed by the GC, even on error). */
static float *check_floats(lua_State *L, int i, int *n)
{
    luaL_checktype(L, i, LUA_TTABLE);
    *n = (int)lua_rawlen(L, i);
    float *v = lbind_newuserdata(L, (size_t)(*n ? *n : 1) * sizeof *v);
    for (int k = 0; k < *n; k++) {
        lua_rawgeti(L, i, k + 1);
        if (lua_type(L, -1) != LUA_TNUMBER)
            luaL_argerror(L, i, lua_pushfstring(L, "entry %d is a %s, expected a number", k + 1,
                                                luaL_typename(L, -1)));
        v[k] = (float)lua_tonumber(L, -1);
        lua_pop(L, 1);
    }
    return v;
}

/* sched_add_noise(x0, noise, coef_a, coef_b) -> x_t; coef_* are lists of
 * one number per sample. */
static int l_diffusion_sched_add_noise(lua_State *L)
{
    msd_tensor *x0 = lbind_check_tensor(L, 1), *noise = lbind_check_tensor(L, 2);
    int na, nb;
    float *ca = check_floats(L, 3, &na), *cb = check_floats(L, 4, &nb);
    if (na != nb)
        return luaL_error(L, "sched_add_noise: %d coef_a values but %d coef_b values", na, nb);
    msd_tensor **box = lbind_new_box(L);
    return lbind_result(L, msd_add_noise(x0, noise, ca, cb, na, box), box);
}

/* sched_ddpm_step(x, eps, z|nil, alpha, alpha_cumprod, alpha_cumprod_prev,
 *                 variance) -> prev_sample, pred_original_sample */
static int l_diffusion_sched_ddpm_step(lua_State *L)
{
    static const char *const vars[] = { "fixed_large", "fixed_small", NULL };
    msd_tensor *x = lbind_check_tensor(L, 1), *eps = lbind_check_tensor(L, 2);
    msd_tensor *z = lbind_opt_tensor(L, 3);
    double alpha = luaL_checknumber(L, 4), ab = luaL_checknumber(L, 5);
    double ab_prev = luaL_checknumber(L, 6);
    int var = luaL_checkoption(L, 7, "fixed_large", vars);
    msd_tensor **prev = lbind_new_box(L), **x0 = lbind_new_box(L);
    lbind_check_rc(L, msd_ddpm_step(x, eps, z, alpha, ab, ab_prev, (msd_ddpm_variance)var, prev,
                                    x0));
    lbind_gc_hint(L, 2 * msd_tensor_numel(x) * sizeof(float));
    return 2;
}

/* sched_ddim_step(x, eps, z|nil, alpha_cumprod, alpha_cumprod_prev, eta)
 *   -> prev_sample, pred_original_sample */
static int l_diffusion_sched_ddim_step(lua_State *L)
{
    msd_tensor *x = lbind_check_tensor(L, 1), *eps = lbind_check_tensor(L, 2);
    msd_tensor *z = lbind_opt_tensor(L, 3);
    double ab = luaL_checknumber(L, 4), ab_prev = luaL_checknumber(L, 5);
    double eta = luaL_checknumber(L, 6);
    msd_tensor **prev = lbind_new_box(L), **x0 = lbind_new_box(L);
    lbind_check_rc(L, msd_ddim_step(x, eps, z, ab, ab_prev, eta, prev, x0));
    lbind_gc_hint(L, 2 * msd_tensor_numel(x) * sizeof(float));
    return 2;
}

/* sched_ddim_sigma(alpha_cumprod, alpha_cumprod_prev, eta) -> sigma */
static int l_diffusion_sched_ddim_sigma(lua_State *L)
{
    double ab = luaL_checknumber(L, 1), ab_prev = luaL_checknumber(L, 2);
    double eta = luaL_checknumber(L, 3);
    lua_pushnumber(L, msd_ddim_sigma(ab, ab_prev, eta));
    return 1;
}

static const luaL_Reg functions[] = {
    { "sched_tables", l_diffusion_sched_tables },
    { "sched_add_noise", l_diffusion_sched_add_noise },
    { "sched_ddpm_step", l_diffusion_sched_ddpm_step },
    { "sched_ddim_step", l_diffusion_sched_ddim_step },
    { "sched_ddim_sigma", l_diffusion_sched_ddim_sigma },
    { NULL, NULL },
};

void lbind_open_diffusion(lua_State *L)
{
    luaL_setfuncs(L, functions, 0);
}
