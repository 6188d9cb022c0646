/* minisd: Lua bindings of the Philox generator (rng.h): minisd.Generator,
 * rand, randn, randint, randperm and the per-state default generator. */
#include "lbind.h"

#define GEN_MT "minisd.Generator"
/* registry key of the default generator of this Lua state */
static const char default_key = 'g';

static msd_rng *check_gen(lua_State *L, int i)
{
    return luaL_checkudata(L, i, GEN_MT);
}

/* A seed or offset: a non-negative integer. Lua 5.4 integers take the full
 * int64 range; plain numbers (LuaJIT) must be integral and below 2^53 so
 * they round-trip exactly. */
static uint64_t check_u64(lua_State *L, int i, const char *what)
{
#if LUA_VERSION_NUM >= 503
    if (lua_isinteger(L, i)) {
        lua_Integer v = lua_tointeger(L, i);
        if (v < 0)
            luaL_error(L, "%s must be >= 0, got %I", what, v);
        return (uint64_t)v;
    }
#endif
    if (lua_type(L, i) != LUA_TNUMBER)
        luaL_error(L, "%s must be an integer, got %s", what, luaL_typename(L, i));
    lua_Number n = lua_tonumber(L, i);
    if (!(n >= 0 && n <= 9007199254740992.0) || n != (lua_Number)(uint64_t)n)
        luaL_error(L, "%s must be an integer in [0, 2^53], got %f", what, (double)n);
    return (uint64_t)n;
}

static void push_u64(lua_State *L, uint64_t v)
{
#if LUA_VERSION_NUM >= 503
    lua_pushinteger(L, (lua_Integer)v);
#else
    lua_pushnumber(L, (lua_Number)v);
#endif
}

static msd_rng *new_gen(lua_State *L, uint64_t seed)
{
    msd_rng *g = lbind_newuserdata(L, sizeof *g);
    msd_rng_seed(g, seed);
    luaL_getmetatable(L, GEN_MT);
    lua_setmetatable(L, -2);
    return g;
}

/* minisd.Generator(seed) -> generator (seed defaults to 0). */
static int l_rng_new(lua_State *L)
{
    uint64_t seed = lua_isnoneornil(L, 1) ? 0 : check_u64(L, 1, "Generator: seed");
    new_gen(L, seed);
    return 1;
}

static int l_rng_seed(lua_State *L)
{
    push_u64(L, check_gen(L, 1)->seed);
    return 1;
}

/* gen:manual_seed(s): reseeds and resets the offset; returns gen. */
static int l_rng_manual_seed(lua_State *L)
{
    msd_rng *g = check_gen(L, 1);
    msd_rng_seed(g, check_u64(L, 2, "manual_seed: seed"));
    lua_settop(L, 1);
    return 1;
}

/* gen:get_state() -> {seed = s, offset = o} */
static int l_rng_get_state(lua_State *L)
{
    msd_rng *g = check_gen(L, 1);
    lua_createtable(L, 0, 2);
    push_u64(L, g->seed);
    lua_setfield(L, -2, "seed");
    push_u64(L, g->offset);
    lua_setfield(L, -2, "offset");
    return 1;
}

/* gen:set_state{seed = s, offset = o}: restores a state from get_state. */
static int l_rng_set_state(lua_State *L)
{
    msd_rng *g = check_gen(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_getfield(L, 2, "seed");
    uint64_t seed = check_u64(L, -1, "set_state: seed");
    lua_getfield(L, 2, "offset");
    uint64_t offset = check_u64(L, -1, "set_state: offset");
    lbind_check_rc(L, msd_rng_set_state(g, seed, offset));
    return 0;
}

static int l_rng_tostring(lua_State *L)
{
    msd_rng *g = check_gen(L, 1);
    char buf[96];
    snprintf(buf, sizeof buf, "minisd.Generator(seed=%llu, offset=%llu)",
             (unsigned long long)g->seed, (unsigned long long)g->offset);
    lua_pushstring(L, buf);
    return 1;
}

static msd_rng *default_gen(lua_State *L)
{
    lua_pushlightuserdata(L, (void *)&default_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    msd_rng *g = lua_touserdata(L, -1);
    lua_pop(L, 1); /* the registry keeps it alive */
    return g;
}

/* The generator argument at i, or the default generator when nil/absent. */
static msd_rng *opt_gen(lua_State *L, int i)
{
    return lua_isnoneornil(L, i) ? default_gen(L) : check_gen(L, i);
}

/* minisd.default_generator() -> the generator used when none is passed. */
static int l_rng_default(lua_State *L)
{
    lua_pushlightuserdata(L, (void *)&default_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    return 1;
}

/* minisd.manual_seed(s): reseeds the default generator. */
static int l_rng_manual_seed_default(lua_State *L)
{
    msd_rng_seed(default_gen(L), check_u64(L, 1, "manual_seed: seed"));
    return 0;
}

/* minisd.rand(shape, gen?) -> tensor of uniform [0, 1) values. */
static int l_rng_rand(lua_State *L)
{
    int shape[MSD_MAX_DIMS];
    int nd = lbind_check_new_shape(L, 1, "rand", shape);
    msd_rng *g = opt_gen(L, 2);
    msd_tensor **box = lbind_new_box(L);
    return lbind_result(L, msd_rand(g, nd, shape, box), box);
}

/* minisd.randn(shape, gen?) -> tensor of standard normal values. */
static int l_rng_randn(lua_State *L)
{
    int shape[MSD_MAX_DIMS];
    int nd = lbind_check_new_shape(L, 1, "randn", shape);
    msd_rng *g = opt_gen(L, 2);
    msd_tensor **box = lbind_new_box(L);
    return lbind_result(L, msd_randn(g, nd, shape, box), box);
}

/* minisd.randint(shape, low, high, gen?) -> tensor of integers in [low, high]. */
static int l_rng_randint(lua_State *L)
{
    int shape[MSD_MAX_DIMS];
    int nd = lbind_check_new_shape(L, 1, "randint", shape);
    int low = lbind_check_int(L, 2), high = lbind_check_int(L, 3);
    msd_rng *g = opt_gen(L, 4);
    msd_tensor **box = lbind_new_box(L);
    return lbind_result(L, msd_randint(g, nd, shape, low, high, box), box);
}

/* minisd.randperm(n, gen?) -> Lua table holding 1..n in random order. */
static int l_rng_randperm(lua_State *L)
{
    int n = lbind_check_int(L, 1);
    if (n < 0 || n > (1 << 26))
        return luaL_error(L, "randperm: n must be in [0, 2^26], got %d", n);
    msd_rng *g = opt_gen(L, 2);
    lua_createtable(L, n, 0);
    /* the permutation is built in a userdata so an error cannot leak it */
    int *perm = lbind_newuserdata(L, (size_t)n * sizeof *perm + 1);
    msd_rng_randperm(g, perm, n);
    for (int i = 0; i < n; i++) {
        lua_pushinteger(L, perm[i] + 1);
        lua_rawseti(L, -3, i + 1);
    }
    lua_pop(L, 1);
    return 1;
}

static const luaL_Reg gen_methods[] = {
    { "seed", l_rng_seed },
    { "manual_seed", l_rng_manual_seed },
    { "get_state", l_rng_get_state },
    { "set_state", l_rng_set_state },
    { NULL, NULL },
};

static const luaL_Reg rng_funcs[] = {
    { "Generator", l_rng_new },
    { "default_generator", l_rng_default },
    { "manual_seed", l_rng_manual_seed_default },
    { "rand", l_rng_rand },
    { "randn", l_rng_randn },
    { "randint", l_rng_randint },
    { "randperm", l_rng_randperm },
    { NULL, NULL },
};

void lbind_open_rng(lua_State *L)
{
    if (luaL_newmetatable(L, GEN_MT)) {
        lua_newtable(L);
        luaL_setfuncs(L, gen_methods, 0);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_rng_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_pop(L, 1);
    lua_pushlightuserdata(L, (void *)&default_key);
    new_gen(L, 0);
    lua_rawset(L, LUA_REGISTRYINDEX);
    luaL_setfuncs(L, rng_funcs, 0);
}
