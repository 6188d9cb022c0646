/* minisd: animated GIF writer binding (minisd.save_gif). */
#include <stdlib.h>

#include "gif.h"
#include "lbind.h"

/* save_gif(path, {frame (C,H,W), ...} [, scale=1 [, delay=10 [, loop=0 [, last_delay=100]]]])
 * Frames hold values in [0,1]. Raises the core's error (naming the file). */
static int l_save_gif(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    msd_gif_options o = msd_gif_defaults();
    o.scale = lbind_opt_int(L, 3, o.scale);
    o.delay = lbind_opt_int(L, 4, o.delay);
    o.loop = lbind_opt_int(L, 5, o.loop);
    o.last_delay = lbind_opt_int(L, 6, o.last_delay);
    int n = (int)lua_rawlen(L, 2);
    if (n < 1)
        return luaL_argerror(L, 2, "expected a non-empty list of frames");
    const msd_tensor **frames = lbind_newuserdata(L, (size_t)n * sizeof *frames);
    for (int i = 0; i < n; i++) {
        lua_rawgeti(L, 2, i + 1);
        msd_tensor **box = luaL_testudata(L, -1, LBIND_TENSOR_MT);
        if (!box || !*box)
            return luaL_argerror(L, 2, lua_pushfstring(L, "frame %d is not an open tensor (%s)",
                                                       i + 1, luaL_typename(L, -1)));
        frames[i] = *box;
        lua_pop(L, 1); /* the list keeps the tensor alive */
    }
    return lbind_file_done(L, msd_gif_save(path, frames, n, &o));
}

static const luaL_Reg gif_funcs[] = {
    {"save_gif", l_save_gif},
    {NULL, NULL},
};

void lbind_open_gif(lua_State *L)
{
    luaL_setfuncs(L, gif_funcs, 0);
}
