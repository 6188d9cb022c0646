/* minisd: the helpers every binding file shares (lbind.h): tensor boxes, argument
 * checks, the error conventions, the collector hint, and one-line op bindings. */
#include <string.h>

#include "lbind.h"

msd_tensor **lbind_new_box(lua_State *L)
{
    msd_tensor **box = lbind_newuserdata(L, sizeof *box);
    *box = NULL;
    luaL_getmetatable(L, LBIND_TENSOR_MT);
    lua_setmetatable(L, -2);
    return box;
}

/* Lua's collector sees only the small boxes of tensors, not their storage,
 * so a C-side pause rule decides when to collect: once the live tensor
 * bytes exceed 1.25 times (plus 32 MiB) what was live after the last
 * collection, a full collection frees the unreachable tensors. A full
 * collection of the Lua heap of a training loop (350 KiB) takes 0.1 ms,
 * and collecting this early keeps a step's dead activations from piling
 * up beside the next step's: peak RSS while training the default model
 * went from 930 to 550 MiB ("twice plus 64 MiB" let them pile up).
 * (LUA_GCSTEP with a size would inflate Lua's own heap estimate for good,
 * so that its collections become ever rarer and tensor memory grows by a
 * whole graph per step.) */
void lbind_gc_hint(lua_State *L, size_t bytes)
{
    static _Thread_local double base = 0;
    if (bytes < 64 * 1024)
        return;
    double live = (double)msd_memory_stats().live_bytes;
    if (live > 1.25 * base + 32.0 * 1024 * 1024) {
        lua_gc(L, LUA_GCCOLLECT, 0);
        base = (double)msd_memory_stats().live_bytes;
    }
}

void lbind_push_tensor(lua_State *L, msd_tensor *t)
{
    msd_tensor **box = lbind_newuserdata(L, sizeof *box);
    *box = t;
    luaL_getmetatable(L, LBIND_TENSOR_MT);
    lua_setmetatable(L, -2);
}

void lbind_check_rc(lua_State *L, int rc)
{
    if (rc != MSD_OK)
        luaL_error(L, "%s", msd_last_error());
}

/* The error convention for files: an expected run-time failure returns nil and the
 * message, everything else raises. Loading (the arguments already checked), every core
 * error comes from the file: missing, unreadable, malformed, or claiming absurd sizes.
 * Saving, only MSD_ERR_IO is (the file cannot be written); the rest is misuse (a tensor
 * of the wrong shape, a value the format cannot hold). */
int lbind_file_fail(lua_State *L, int rc, int loading)
{
    if (!loading && rc != MSD_ERR_IO)
        lbind_check_rc(L, rc);
    lua_pushnil(L);
    lua_pushstring(L, msd_last_error());
    return 2;
}

int lbind_file_result(lua_State *L, int rc, msd_tensor **box)
{
    if (rc != MSD_OK)
        return lbind_file_fail(L, rc, 1);
    return lbind_result(L, rc, box);
}

int lbind_file_done(lua_State *L, int rc)
{
    if (rc != MSD_OK)
        return lbind_file_fail(L, rc, 0);
    lua_pushboolean(L, 1);
    return 1;
}

int lbind_result(lua_State *L, int rc, msd_tensor **box)
{
    lbind_check_rc(L, rc);
    lbind_gc_hint(L, msd_tensor_numel(*box) * sizeof(float));
    return 1;
}

msd_tensor *lbind_check_tensor(lua_State *L, int i)
{
    msd_tensor **box = luaL_testudata(L, i, LBIND_TENSOR_MT);
    if (!box) {
        const char *got = luaL_typename(L, i);
        luaL_argerror(L, i, lua_pushfstring(L, "tensor expected, got %s", got));
    }
    if (!*box)
        luaL_argerror(L, i, "tensor has been closed");
    return *box;
}

msd_tensor *lbind_opt_tensor(lua_State *L, int i)
{
    return lua_isnoneornil(L, i) ? NULL : lbind_check_tensor(L, i);
}

void lbind_push_reducer(lua_State *L, const msd_reducer *r)
{
    const msd_reducer **box = lbind_newuserdata(L, sizeof *box);
    *box = r;
    luaL_getmetatable(L, LBIND_REDUCER_MT);
    lua_setmetatable(L, -2);
}

const msd_reducer *lbind_opt_reducer(lua_State *L, int i)
{
    if (lua_isnoneornil(L, i))
        return NULL;
    const msd_reducer **box = luaL_testudata(L, i, LBIND_REDUCER_MT);
    if (!box)
        luaL_argerror(L, i, lua_pushfstring(L, "reducer expected (minisd.dist.reducer()), got %s",
                                            luaL_typename(L, i)));
    return *box;
}

int lbind_check_int(lua_State *L, int i)
{
    if (!lbind_isintegral(L, i))
        luaL_argerror(L, i, lua_pushfstring(L, "integer expected, got %s",
                                            lua_type(L, i) == LUA_TNUMBER
                                                ? lua_pushfstring(L, "%f", lua_tonumber(L, i))
                                                : luaL_typename(L, i)));
    lua_Number n = lua_tonumber(L, i);
    if (n < -2147483647.0 || n > 2147483647.0)
        luaL_argerror(L, i, "integer out of range");
    return (int)n;
}

int lbind_opt_int(lua_State *L, int i, int def)
{
    return lua_isnoneornil(L, i) ? def : lbind_check_int(L, i);
}

int lbind_check_shape(lua_State *L, int i, int *shape)
{
    luaL_checktype(L, i, LUA_TTABLE);
    int n = (int)lua_rawlen(L, i);
    if (n > MSD_MAX_DIMS)
        luaL_argerror(L, i, lua_pushfstring(L, "shape has %d dims, at most %d supported", n,
                                            MSD_MAX_DIMS));
    for (int d = 0; d < n; d++) {
        lua_rawgeti(L, i, d + 1);
        if (!lbind_isintegral(L, -1))
            luaL_argerror(L, i, lua_pushfstring(L, "shape entry %d is not an integer", d + 1));
        lua_Number v = lua_tonumber(L, -1);
        if (v < -1 || v > 2147483647.0)
            luaL_argerror(L, i, lua_pushfstring(L, "shape entry %d (%d) out of range", d + 1,
                                                (int)v));
        shape[d] = (int)v;
        lua_pop(L, 1);
    }
    return n;
}

int lbind_check_new_shape(lua_State *L, int i, const char *what, int *shape)
{
    int n = lbind_check_shape(L, i, shape);
    lbind_check_rc(L, msd_shape_check(what, n, shape));
    return n;
}

/* ---- constructors ----------------------------------------------------- */

int lbind_binary_op(lua_State *L, lbind_binary_fn f)
{
    msd_tensor *a = lbind_check_tensor(L, 1), *b = lbind_check_tensor(L, 2);
    msd_tensor **box = lbind_new_box(L);
    return lbind_result(L, f(a, b, box), box);
}

int lbind_unary_op(lua_State *L, lbind_unary_fn f)
{
    msd_tensor *x = lbind_check_tensor(L, 1);
    msd_tensor **box = lbind_new_box(L);
    return lbind_result(L, f(x, box), box);
}
