/* minisd: the few Lua C API differences between Lua 5.4, 5.3, LuaJIT 2.1 (the
 * Lua 5.1 API with some 5.2 additions, as LÖVE uses) and PUC Lua 5.1, so the
 * bindings compile against each. */
#ifndef MSD_LCOMPAT_H
#define MSD_LCOMPAT_H

#include <lauxlib.h>
#include <lua.h>

#if LUA_VERSION_NUM < 502
#define lua_rawlen(L, i) lua_objlen(L, (i))
#define lbind_newuserdata(L, size) lua_newuserdata(L, (size))
#ifndef LUA_OK
#define LUA_OK 0
#endif
static inline int lua_absindex(lua_State *L, int i)
{
    return (i > 0 || i <= LUA_REGISTRYINDEX) ? i : lua_gettop(L) + i + 1;
}
/* PUC Lua 5.1 lacks these two (LuaJIT 2.1 has them); the same behaviour, written
 * with the 5.1 API, under names of our own so they never clash with a library's. */
static inline void lbind_compat_setfuncs(lua_State *L, const luaL_Reg *l, int nup)
{
    for (; l->name; l++) {
        for (int i = 0; i < nup; i++)
            lua_pushvalue(L, -nup);
        lua_pushcclosure(L, l->func, nup);
        lua_setfield(L, -(nup + 2), l->name);
    }
    lua_pop(L, nup);
}
static inline void *lbind_compat_testudata(lua_State *L, int i, const char *tname)
{
    void *p = lua_touserdata(L, i);
    if (!p || !lua_getmetatable(L, i))
        return NULL;
    luaL_getmetatable(L, tname);
    int same = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return same ? p : NULL;
}
#define luaL_setfuncs(L, l, nup) lbind_compat_setfuncs(L, (l), (nup))
#define luaL_testudata(L, i, tname) lbind_compat_testudata(L, (i), (tname))
#elif LUA_VERSION_NUM < 504
#define lbind_newuserdata(L, size) lua_newuserdata(L, (size))
#else
#define lbind_newuserdata(L, size) lua_newuserdatauv(L, (size), 0)
#endif

/* Whether the value at i is a number with an integral value. */
static inline int lbind_isintegral(lua_State *L, int i)
{
    if (lua_type(L, i) != LUA_TNUMBER)
        return 0;
    lua_Number n = lua_tonumber(L, i);
    return n == (lua_Number)(long long)n;
}

#endif
