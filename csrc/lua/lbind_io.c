/* minisd: Lua bindings of the tensor files (io.h): npy, safetensors, PNG. */
#include <string.h>

#include "lbind.h"

/* minisd.load_png(path) -> tensor (C,H,W) in [0,1]; C = 1, 3 or 4. */
static int l_io_load_png(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    msd_tensor **box = lbind_new_box(L);
    return lbind_file_result(L, msd_png_load(path, box), box);
}

/* The *_string form of a reader: (bytes [, name]) -> tensor, or nil and a message naming
 * the bytes by `name` (default dflt). */
typedef int (*mem_reader)(const char *name, const unsigned char *data, size_t size,
                          msd_tensor **out);
static int load_string(lua_State *L, mem_reader read, const char *dflt)
{
    size_t len;
    const char *data = luaL_checklstring(L, 1, &len);
    const char *name = luaL_optstring(L, 2, dflt);
    msd_tensor **box = lbind_new_box(L);
    return lbind_file_result(L, read(name, (const unsigned char *)data, len, box), box);
}

/* minisd.load_png_string(bytes [, name]): the same from a PNG file's bytes. */
static int l_io_load_png_string(lua_State *L)
{
    return load_string(L, msd_png_load_mem, "(PNG bytes)");
}

/* minisd.save_png(path, t): t (C,H,W), C = 1, 3 or 4, clamped to [0,1]. */
static int l_io_save_png(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    msd_tensor *t = lbind_check_tensor(L, 2);
    return lbind_file_done(L, msd_png_save(path, t));
}

/* minisd.load_npy(path) -> tensor (float32, the array's shape). */
static int l_io_load_npy(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    msd_tensor **box = lbind_new_box(L);
    return lbind_file_result(L, msd_npy_load(path, box), box);
}

/* minisd.load_npy_string(bytes [, name]): the same from a .npy file's bytes. */
static int l_io_load_npy_string(lua_State *L)
{
    return load_string(L, msd_npy_load_mem, "(npy bytes)");
}

/* minisd.save_npy(path, t): '<f4' C-order, atomic. */
static int l_io_save_npy(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    msd_tensor *t = lbind_check_tensor(L, 2);
    return lbind_file_done(L, msd_npy_save(path, t));
}

/* A msd_safetensors set owned by a userdata, so that a Lua error raised
 * while it is filled or emptied frees it (in __gc). */
#define ST_MT "minisd.safetensors_holder"

static int l_st_gc(lua_State *L)
{
    msd_safetensors_free(luaL_checkudata(L, 1, ST_MT));
    return 0;
}

static msd_safetensors *new_holder(lua_State *L)
{
    msd_safetensors *st = lbind_newuserdata(L, sizeof *st);
    msd_safetensors_init(st);
    if (luaL_newmetatable(L, ST_MT)) {
        lua_pushcfunction(L, l_st_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    return st;
}

/* minisd.load_safetensors(path) -> tensors (name -> tensor), metadata (key -> string);
 * minisd.load_safetensors_string(bytes [, name]): the same from the file's bytes */
static int load_safetensors(lua_State *L, int from_string)
{
    size_t len;
    const char *arg = luaL_checklstring(L, 1, &len);
    const char *name = from_string ? luaL_optstring(L, 2, "(bytes)") : arg;
    lua_settop(L, 2);
    msd_safetensors *st = new_holder(L);
    int rc = from_string ? msd_safetensors_load_mem(name, (const unsigned char *)arg, len, st)
                         : msd_safetensors_load(arg, st);
    if (rc != MSD_OK)
        return lbind_file_fail(L, rc, 1);
    lua_createtable(L, 0, st->count);
    size_t bytes = 0;
    for (int i = 0; i < st->count; i++) {
        msd_tensor **box = lbind_new_box(L);
        *box = st->tensors[i]; /* moves the reference out of the holder */
        st->tensors[i] = NULL;
        bytes += msd_tensor_numel(*box) * sizeof(float);
        lua_setfield(L, -2, st->names[i]);
    }
    lua_createtable(L, 0, st->meta_count);
    for (int i = 0; i < st->meta_count; i++) {
        lua_pushstring(L, st->meta_values[i]);
        lua_setfield(L, -2, st->meta_keys[i]);
    }
    msd_safetensors_free(st);
    lbind_gc_hint(L, bytes);
    return 2;
}

static int l_io_load_safetensors(lua_State *L)
{
    return load_safetensors(L, 0);
}

static int l_io_load_safetensors_string(lua_State *L)
{
    return load_safetensors(L, 1);
}

/* minisd.save_safetensors(path, tensors, metadata?, opts?): tensors maps
 * names to tensors; metadata maps keys to strings; opts.dtypes maps names
 * to "F32", "F16", "BF16" or "I64" (values must be integers); opts.dtype
 * is the one for the tensors opts.dtypes does not name (default "F32").
 * Atomic. */

/* The dtype a file can store, from its name; MSD_DTYPE_COUNT when not one. */
static msd_dtype save_dtype(const char *v)
{
    if (!v)
        return MSD_DTYPE_COUNT;
    if (strcmp(v, "F32") == 0)
        return MSD_DTYPE_F32;
    if (strcmp(v, "F16") == 0)
        return MSD_DTYPE_F16;
    if (strcmp(v, "BF16") == 0)
        return MSD_DTYPE_BF16;
    if (strcmp(v, "I64") == 0)
        return MSD_DTYPE_I64;
    return MSD_DTYPE_COUNT;
}

static int l_io_save_safetensors(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    int has_meta = !lua_isnoneornil(L, 3), dt = 0;
    msd_dtype dflt = MSD_DTYPE_F32;
    if (has_meta)
        luaL_checktype(L, 3, LUA_TTABLE);
    if (!lua_isnoneornil(L, 4)) {
        luaL_checktype(L, 4, LUA_TTABLE);
        lua_getfield(L, 4, "dtype");
        if (!lua_isnil(L, -1)) {
            const char *v = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
            dflt = save_dtype(v);
            if (dflt == MSD_DTYPE_COUNT || dflt == MSD_DTYPE_I64)
                return luaL_error(L, "save_safetensors: '%s': opts.dtype: expected \"F32\", "
                                  "\"F16\" or \"BF16\", got %s", path,
                                  v ? v : luaL_typename(L, -1));
        }
        lua_pop(L, 1);
        lua_getfield(L, 4, "dtypes");
        if (!lua_isnil(L, -1)) {
            if (!lua_istable(L, -1))
                return luaL_error(L, "save_safetensors: '%s': opts.dtypes must be a table", path);
            dt = lua_gettop(L);
            lua_pushnil(L);
            while (lua_next(L, dt)) {
                const char *v = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
                if (lua_type(L, -2) != LUA_TSTRING)
                    return luaL_error(L, "save_safetensors: '%s': opts.dtypes keys must be "
                                      "tensor names", path);
                if (save_dtype(v) == MSD_DTYPE_COUNT)
                    return luaL_error(L, "save_safetensors: '%s': opts.dtypes['%s']: expected "
                                      "\"F32\", \"F16\", \"BF16\" or \"I64\"", path,
                                      lua_tostring(L, -2));
                lua_pushvalue(L, -2);
                lua_gettable(L, 2);
                if (lua_isnil(L, -1))
                    return luaL_error(L, "save_safetensors: '%s': opts.dtypes names '%s', which "
                                      "is not in the tensors table", path, lua_tostring(L, -3));
                lua_pop(L, 2);
            }
        }
    }
    /* check everything first, so nothing is held when an error is raised */
    lua_pushnil(L);
    while (lua_next(L, 2)) {
        if (lua_type(L, -2) != LUA_TSTRING)
            return luaL_error(L, "save_safetensors: '%s': tensor names must be strings", path);
        msd_tensor **box = luaL_testudata(L, -1, LBIND_TENSOR_MT);
        if (!box || !*box)
            return luaL_error(L, "save_safetensors: '%s': '%s' is not a tensor (%s)", path,
                              lua_tostring(L, -2), luaL_typename(L, -1));
        lua_pop(L, 1);
    }
    if (has_meta) {
        lua_pushnil(L);
        while (lua_next(L, 3)) {
            if (lua_type(L, -2) != LUA_TSTRING)
                return luaL_error(L, "save_safetensors: '%s': metadata keys must be strings",
                                  path);
            if (lua_type(L, -1) != LUA_TSTRING)
                return luaL_error(L, "save_safetensors: '%s': metadata '%s' must be a string, "
                                  "got %s", path, lua_tostring(L, -2), luaL_typename(L, -1));
            lua_pop(L, 1);
        }
    }
    msd_safetensors *st = new_holder(L);
    int rc = MSD_OK;
    lua_pushnil(L);
    while (rc == MSD_OK && lua_next(L, 2)) {
        const char *name = lua_tostring(L, -2);
        msd_dtype d = dflt;
        if (dt) {
            lua_getfield(L, dt, name);
            if (lua_type(L, -1) == LUA_TSTRING)
                d = save_dtype(lua_tostring(L, -1));
            lua_pop(L, 1);
        }
        rc = msd_safetensors_add(st, name, *(msd_tensor **)lua_touserdata(L, -1), d);
        lua_pop(L, 1);
    }
    if (rc == MSD_OK && has_meta) {
        lua_pushnil(L);
        while (rc == MSD_OK && lua_next(L, 3)) {
            rc = msd_safetensors_set_meta(st, lua_tostring(L, -2), lua_tostring(L, -1));
            lua_pop(L, 1);
        }
    }
    if (rc != MSD_OK) { /* add / set_meta errors do not know the path */
        msd_safetensors_free(st);
        return luaL_error(L, "save_safetensors: '%s': %s", path, msd_last_error());
    }
    rc = msd_safetensors_save(path, st);
    msd_safetensors_free(st);
    return lbind_file_done(L, rc);
}

static const luaL_Reg io_funcs[] = {
    { "load_npy", l_io_load_npy },
    { "load_npy_string", l_io_load_npy_string },
    { "save_npy", l_io_save_npy },
    { "load_safetensors", l_io_load_safetensors },
    { "load_safetensors_string", l_io_load_safetensors_string },
    { "save_safetensors", l_io_save_safetensors },
    { "load_png", l_io_load_png },
    { "load_png_string", l_io_load_png_string },
    { "save_png", l_io_save_png },
    { NULL, NULL },
};

void lbind_open_io(lua_State *L)
{
    luaL_setfuncs(L, io_funcs, 0);
}
