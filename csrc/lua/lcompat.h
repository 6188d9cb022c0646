/* minisd: the few Lua C API differences between Lua 5.4 and LuaJIT 2.1
 * (Lua 5.1 API, as LÖVE uses), so the bindings compile against both. */
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
