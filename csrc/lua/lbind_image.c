/* minisd: image and dataset helpers (minisd.image_*), and list_dir for
 * datasets kept as folders of files. Indices are 1-based here. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"
#include "lbind.h"

/* The list of integers at index i as a 0-based C array (1-based in Lua),
 * in GC-owned memory pushed on the stack. */
static int *check_index_list(lua_State *L, int i, int *n)
{
    luaL_checktype(L, i, LUA_TTABLE);
    *n = (int)lua_rawlen(L, i);
    int *idx = lua_newuserdata(L, (size_t)(*n ? *n : 1) * sizeof *idx);
    for (int k = 0; k < *n; k++) {
        lua_rawgeti(L, i, k + 1);
        if (!lbind_isintegral(L, -1))
            luaL_argerror(L, i, lua_pushfstring(L, "entry %d is not an integer", k + 1));
        lua_Number v = lua_tonumber(L, -1);
        if (v < -2147483647.0 || v > 2147483647.0)
            luaL_argerror(L, i, lua_pushfstring(L, "entry %d is out of range", k + 1));
        idx[k] = (int)v - 1;
        lua_pop(L, 1);
    }
    return idx;
}

/* image_hwc_to_chw(x (N,H,W,C) or (H,W,C) [, scale=1 [, shift=0]]) */
static int l_image_hwc_to_chw(lua_State *L)
{
    msd_tensor *x = lbind_check_tensor(L, 1);
    float scale = (float)luaL_optnumber(L, 2, 1.0), shift = (float)luaL_optnumber(L, 3, 0.0);
    msd_tensor **box = lbind_new_box(L);
    return lbind_result(L, msd_image_hwc_to_chw(x, scale, shift, box), box);
}

/* image_affine_clamp(x, scale, shift, lo, hi): clamp(x * scale + shift, lo, hi) */
static int l_image_affine_clamp(lua_State *L)
{
    msd_tensor *x = lbind_check_tensor(L, 1);
    float scale = (float)luaL_checknumber(L, 2), shift = (float)luaL_checknumber(L, 3);
    float lo = (float)luaL_checknumber(L, 4), hi = (float)luaL_checknumber(L, 5);
    msd_tensor **box = lbind_new_box(L);
    return lbind_result(L, msd_image_affine_clamp(x, scale, shift, lo, hi, box), box);
}

/* image_gather(x, indices [, flips]): rows x[indices[i]] along dim 1, each
 * reversed along the last dim where flips[i] is true (or a non-zero number). */
static int l_image_gather(lua_State *L)
{
    msd_tensor *x = lbind_check_tensor(L, 1);
    int has_flip = !lua_isnoneornil(L, 3), n;
    int *idx = check_index_list(L, 2, &n);
    unsigned char *flip = NULL;
    if (has_flip) {
        luaL_checktype(L, 3, LUA_TTABLE);
        if ((int)lua_rawlen(L, 3) != n)
            return luaL_argerror(L, 3, lua_pushfstring(L, "%d flips for %d indices",
                                                       (int)lua_rawlen(L, 3), n));
        flip = lua_newuserdata(L, (size_t)(n ? n : 1));
        for (int k = 0; k < n; k++) {
            lua_rawgeti(L, 3, k + 1);
            flip[k] = lua_type(L, -1) == LUA_TNUMBER ? lua_tonumber(L, -1) != 0
                                                      : lua_toboolean(L, -1);
            lua_pop(L, 1);
        }
    }
    msd_tensor **box = lbind_new_box(L);
    return lbind_result(L, msd_image_gather(x, n, idx, flip, box), box);
}

/* image_flip(x, dim): x reversed along dim (1-based) */
static int l_image_flip(lua_State *L)
{
    msd_tensor *x = lbind_check_tensor(L, 1);
    int dim = lbind_check_int(L, 2);
    msd_tensor **box = lbind_new_box(L);
    return lbind_result(L, msd_image_flip(x, dim - 1, box), box);
}

/* image_composite(x (4,H,W) or (N,4,H,W), {r, g, b}) */
static int l_image_composite(lua_State *L)
{
    msd_tensor *x = lbind_check_tensor(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    float bg[3];
    for (int c = 0; c < 3; c++) {
        lua_rawgeti(L, 2, c + 1);
        if (lua_type(L, -1) != LUA_TNUMBER)
            return luaL_argerror(L, 2, "background must be a table of 3 numbers");
        bg[c] = (float)lua_tonumber(L, -1);
        lua_pop(L, 1);
    }
    msd_tensor **box = lbind_new_box(L);
    return lbind_result(L, msd_image_composite(x, bg, box), box);
}

/* image_tiles(sheet (C,H,W), tile, columns, count | {tile numbers, 1-based}) */
static int l_image_tiles(lua_State *L)
{
    msd_tensor *sheet = lbind_check_tensor(L, 1);
    int tile = lbind_check_int(L, 2), columns = lbind_check_int(L, 3), n;
    int *idx = NULL;
    if (lua_type(L, 4) == LUA_TTABLE)
        idx = check_index_list(L, 4, &n);
    else
        n = lbind_check_int(L, 4);
    msd_tensor **box = lbind_new_box(L);
    return lbind_result(L, msd_image_tiles(sheet, tile, columns, n, idx, box), box);
}

/* image_grid(x (N,C,H,W), nrow, padding, pad_value) */
static int l_image_grid(lua_State *L)
{
    msd_tensor *x = lbind_check_tensor(L, 1);
    int nrow = lbind_check_int(L, 2), padding = lbind_check_int(L, 3);
    float pad = (float)luaL_checknumber(L, 4);
    msd_tensor **box = lbind_new_box(L);
    return lbind_result(L, msd_image_grid(x, nrow, padding, pad, box), box);
}

/* image_upscale(x, factor) */
static int l_image_upscale(lua_State *L)
{
    msd_tensor *x = lbind_check_tensor(L, 1);
    int factor = lbind_check_int(L, 2);
    msd_tensor **box = lbind_new_box(L);
    return lbind_result(L, msd_image_upscale(x, factor, box), box);
}

/* image_rgba_bytes(x (C,H,W) in [0,1]) -> string of H*W*4 bytes */
static int l_image_rgba_bytes(lua_State *L)
{
    msd_tensor *x = lbind_check_tensor(L, 1);
    size_t n = x->ndim == 3 ? (size_t)x->shape[1] * x->shape[2] * 4 : 0;
    unsigned char *buf = lua_newuserdata(L, n ? n : 1); /* freed by the GC */
    lbind_check_rc(L, msd_image_rgba_bytes(buf, x));
    lua_pushlstring(L, (const char *)buf, n);
    return 1;
}

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* list_dir(path) -> sorted list of entry names (no "." or ".."), or
 * nil, message when path is not a readable directory. */
static int l_list_dir(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    DIR *d = opendir(path);
    if (!d) {
        lua_pushnil(L);
        lua_pushfstring(L, "%s: %s", path, strerror(errno));
        return 2;
    }
    lua_newtable(L);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        lua_pushstring(L, e->d_name);
        lua_rawseti(L, -2, ++n);
    }
    closedir(d);
    /* sort by bytes (strcmp), the same in every locale */
    const char **names = lua_newuserdata(L, (size_t)(n ? n : 1) * sizeof *names);
    for (int k = 0; k < n; k++) {
        lua_rawgeti(L, -2, k + 1);
        names[k] = lua_tostring(L, -1); /* kept alive by the table */
        lua_pop(L, 1);
    }
    qsort(names, (size_t)n, sizeof *names, compare_names);
    lua_createtable(L, n, 0);
    for (int k = 0; k < n; k++) {
        lua_pushstring(L, names[k]);
        lua_rawseti(L, -2, k + 1);
    }
    return 1;
}

static const luaL_Reg functions[] = {
    { "image_hwc_to_chw", l_image_hwc_to_chw },
    { "image_affine_clamp", l_image_affine_clamp },
    { "image_gather", l_image_gather },
    { "image_flip", l_image_flip },
    { "image_composite", l_image_composite },
    { "image_tiles", l_image_tiles },
    { "image_grid", l_image_grid },
    { "image_upscale", l_image_upscale },
    { "image_rgba_bytes", l_image_rgba_bytes },
    { "list_dir", l_list_dir },
    { NULL, NULL },
};

void lbind_open_image(lua_State *L)
{
    luaL_setfuncs(L, functions, 0);
}
