/* minisd: the Tensor userdata — creation, fields, methods, metamethods. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "lbind.h"

/* ---- creation ---------------------------------------------------------- */

static int push_new(lua_State *L, msd_tensor **box, msd_tensor *t)
{
    if (!t)
        return luaL_error(L, "%s", msd_last_error());
    *box = t;
    lbind_gc_hint(L, msd_tensor_numel(t) * sizeof(float));
    return 1;
}

static int l_tensor_zeros(lua_State *L)
{
    int shape[MSD_MAX_DIMS];
    int nd = lbind_check_new_shape(L, 1, "zeros", shape);
    msd_tensor **box = lbind_new_box(L);
    return push_new(L, box, msd_tensor_zeros(nd, shape));
}

static int l_tensor_ones(lua_State *L)
{
    int shape[MSD_MAX_DIMS];
    int nd = lbind_check_new_shape(L, 1, "ones", shape);
    msd_tensor **box = lbind_new_box(L);
    return push_new(L, box, msd_tensor_full(nd, shape, 1.0f));
}

static int l_tensor_full(lua_State *L)
{
    int shape[MSD_MAX_DIMS];
    int nd = lbind_check_new_shape(L, 1, "full", shape);
    float v = (float)luaL_checknumber(L, 2);
    msd_tensor **box = lbind_new_box(L);
    return push_new(L, box, msd_tensor_full(nd, shape, v));
}

/* Finds the shape of a nested table at index i (following first
 * elements), for minisd.tensor. */
static int nested_shape(lua_State *L, int i, int *shape)
{
    int nd = 0;
    lua_pushvalue(L, i);
    while (lua_type(L, -1) == LUA_TTABLE) {
        if (nd == MSD_MAX_DIMS)
            luaL_error(L, "tensor: nested table deeper than %d levels", MSD_MAX_DIMS);
        shape[nd++] = (int)lua_rawlen(L, -1);
        lua_rawgeti(L, -1, 1);
        lua_remove(L, -2);
    }
    lua_pop(L, 1);
    return nd;
}

/* Copies the nested table at the top of the stack into p, checking that
 * every level has the size found by nested_shape. */
static float *fill_nested(lua_State *L, float *p, const int *shape, int nd, int depth,
                          char *path, size_t pathlen)
{
    if (depth >= MSD_MAX_DIMS || depth >= nd)
        return p;
    int n = (int)lua_rawlen(L, -1);
    if (n != shape[depth])
        luaL_error(L, "tensor: ragged nested table: %s has %d entries, expected %d",
                   depth ? path : "the table", n, shape[depth]);
    for (int k = 1; k <= n; k++) {
        lua_rawgeti(L, -1, k);
        size_t len = strlen(path);
        snprintf(path + len, pathlen - len, "[%d]", k);
        if (depth + 1 < nd) {
            if (lua_type(L, -1) != LUA_TTABLE)
                luaL_error(L, "tensor: element %s is a %s, expected a table", path,
                           luaL_typename(L, -1));
            p = fill_nested(L, p, shape, nd, depth + 1, path, pathlen);
        } else {
            if (lua_type(L, -1) != LUA_TNUMBER)
                luaL_error(L, "tensor: element %s is a %s, expected a number", path,
                           luaL_typename(L, -1));
            *p++ = (float)lua_tonumber(L, -1);
        }
        path[len] = '\0';
        lua_pop(L, 1);
    }
    return p;
}

static int l_tensor_tensor(lua_State *L)
{
    int shape[MSD_MAX_DIMS];
    if (lua_type(L, 1) == LUA_TNUMBER) { /* a 0-dim tensor */
        float v = (float)lua_tonumber(L, 1);
        msd_tensor **box = lbind_new_box(L);
        return push_new(L, box, msd_tensor_full(0, NULL, v));
    }
    luaL_checktype(L, 1, LUA_TTABLE);
    int nd = nested_shape(L, 1, shape);
    lbind_check_rc(L, msd_shape_check("tensor", nd, shape));
    msd_tensor **box = lbind_new_box(L);
    if (!(*box = msd_tensor_empty(nd, shape)))
        return luaL_error(L, "%s", msd_last_error());
    char path[128] = "";
    lua_pushvalue(L, 1);
    fill_nested(L, msd_tensor_data(*box), shape, nd, 0, path, sizeof path);
    lua_pop(L, 1);
    lbind_gc_hint(L, msd_tensor_numel(*box) * sizeof(float));
    return 1;
}

static int l_tensor_cat(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    int dim = lbind_opt_int(L, 2, 1);
    int n = (int)lua_rawlen(L, 1);
    if (n < 1)
        return luaL_argerror(L, 1, "cat: expected a non-empty list of tensors");
    msd_tensor **xs = lua_newuserdata(L, (size_t)n * sizeof *xs); /* freed by the GC */
    for (int k = 0; k < n; k++) {
        lua_rawgeti(L, 1, k + 1);
        msd_tensor **b = luaL_testudata(L, -1, LBIND_TENSOR_MT);
        if (!b || !*b)
            return luaL_error(L, "cat: entry %d of the list is a %s, expected a tensor", k + 1,
                              luaL_typename(L, -1));
        xs[k] = *b; /* kept alive by the list table */
        lua_pop(L, 1);
    }
    msd_tensor **box = lbind_new_box(L);
    return lbind_result(L, msd_cat(n, xs, dim - 1, box), box);
}

static int l_no_grad_set(lua_State *L)
{
    lua_pushboolean(L, msd_set_grad_enabled(lua_toboolean(L, 1)));
    return 1;
}

static int l_grad_enabled(lua_State *L)
{
    lua_pushboolean(L, msd_grad_enabled());
    return 1;
}

static int l_is_tensor(lua_State *L)
{
    lua_pushboolean(L, luaL_testudata(L, 1, LBIND_TENSOR_MT) != NULL);
    return 1;
}

/* ---- methods ---------------------------------------------------------- */

static int l_tensor_shape(lua_State *L)
{
    msd_tensor *t = lbind_check_tensor(L, 1);
    lua_createtable(L, t->ndim, 0);
    for (int d = 0; d < t->ndim; d++) {
        lua_pushinteger(L, t->shape[d]);
        lua_rawseti(L, -2, d + 1);
    }
    return 1;
}

static int l_tensor_size(lua_State *L)
{
    msd_tensor *t = lbind_check_tensor(L, 1);
    if (lua_isnoneornil(L, 2))
        return l_tensor_shape(L);
    int d = lbind_check_int(L, 2);
    if (d < 1 || d > t->ndim)
        return luaL_argerror(L, 2, lua_pushfstring(L, "dim %d out of range 1..%d", d, t->ndim));
    lua_pushinteger(L, t->shape[d - 1]);
    return 1;
}

static int l_tensor_dim(lua_State *L)
{
    lua_pushinteger(L, lbind_check_tensor(L, 1)->ndim);
    return 1;
}

static int l_tensor_numel(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)msd_tensor_numel(lbind_check_tensor(L, 1)));
    return 1;
}

/* reshape({2,3}) or reshape(2, 3); one size may be -1. */
static int l_tensor_reshape(lua_State *L)
{
    msd_tensor *t = lbind_check_tensor(L, 1);
    int shape[MSD_MAX_DIMS], nd;
    if (lua_type(L, 2) == LUA_TTABLE) {
        nd = lbind_check_shape(L, 2, shape);
    } else {
        nd = lua_gettop(L) - 1;
        if (nd > MSD_MAX_DIMS)
            return luaL_error(L, "reshape: %d sizes given, at most %d supported", nd,
                              MSD_MAX_DIMS);
        for (int d = 0; d < nd; d++)
            shape[d] = lbind_check_int(L, d + 2);
    }
    msd_tensor **box = lbind_new_box(L);
    lbind_check_rc(L, msd_reshape(t, nd, shape, box));
    return 1;
}

static int l_tensor_narrow(lua_State *L)
{
    msd_tensor *t = lbind_check_tensor(L, 1);
    int dim = lbind_check_int(L, 2), start = lbind_check_int(L, 3), len = lbind_check_int(L, 4);
    msd_tensor **box = lbind_new_box(L);
    return lbind_result(L, msd_narrow(t, dim - 1, start - 1, len, box), box);
}

static int l_tensor_clone(lua_State *L)
{
    msd_tensor *t = lbind_check_tensor(L, 1);
    msd_tensor **box = lbind_new_box(L);
    return push_new(L, box, msd_tensor_clone(t));
}

/* A view sharing storage, cut off from the graph. */
static int l_tensor_detach(lua_State *L)
{
    msd_tensor *t = lbind_check_tensor(L, 1);
    msd_tensor **box = lbind_new_box(L);
    if (!(*box = msd_tensor_view(t, t->ndim, t->shape)))
        return luaL_error(L, "%s", msd_last_error());
    return 1;
}

static int l_tensor_copy_(lua_State *L)
{
    msd_tensor *t = lbind_check_tensor(L, 1), *src = lbind_check_tensor(L, 2);
    lbind_check_rc(L, msd_tensor_copy_(t, src));
    lua_settop(L, 1);
    return 1;
}

static int l_tensor_fill_(lua_State *L)
{
    msd_tensor *t = lbind_check_tensor(L, 1);
    msd_tensor_fill_(t, (float)luaL_checknumber(L, 2));
    lua_settop(L, 1);
    return 1;
}

static int l_tensor_zero_(lua_State *L)
{
    msd_tensor_fill_(lbind_check_tensor(L, 1), 0.0f);
    lua_settop(L, 1);
    return 1;
}

static void push_nested(lua_State *L, const float **p, const msd_tensor *t, int depth)
{
    if (depth >= MSD_MAX_DIMS || depth >= t->ndim)
        return;
    int n = t->shape[depth];
    lua_createtable(L, n, 0);
    for (int k = 1; k <= n; k++) {
        if (depth + 1 < t->ndim)
            push_nested(L, p, t, depth + 1);
        else
            lua_pushnumber(L, *(*p)++);
        lua_rawseti(L, -2, k);
    }
}

static int l_tensor_totable(lua_State *L)
{
    msd_tensor *t = lbind_check_tensor(L, 1);
    const float *p = msd_tensor_data(t);
    if (t->ndim == 0)
        lua_pushnumber(L, p[0]);
    else
        push_nested(L, &p, t, 0);
    return 1;
}

static int l_tensor_item(lua_State *L)
{
    msd_tensor *t = lbind_check_tensor(L, 1);
    if (msd_tensor_numel(t) != 1) {
        char b[64];
        return luaL_error(L, "item: expected a tensor with one element, got shape %s",
                          msd_tensor_shape_str(b, sizeof b, t));
    }
    lua_pushnumber(L, msd_tensor_data(t)[0]);
    return 1;
}

static int l_tensor_min(lua_State *L)
{
    float v;
    lbind_check_rc(L, msd_min(lbind_check_tensor(L, 1), &v));
    lua_pushnumber(L, v);
    return 1;
}

static int l_tensor_max(lua_State *L)
{
    float v;
    lbind_check_rc(L, msd_max(lbind_check_tensor(L, 1), &v));
    lua_pushnumber(L, v);
    return 1;
}


/* t:backward([grad] [, retain_graph]) */
static int l_tensor_backward(lua_State *L)
{
    msd_tensor *t = lbind_check_tensor(L, 1);
    msd_tensor *g = lbind_opt_tensor(L, 2);
    int retain = lua_toboolean(L, 3);
    lbind_check_rc(L, msd_backward(t, g, retain));
    return 0;
}

/* Bytes round(clamp(v, 0, 1) * 255) in the tensor's element order. */
static int l_tensor_to_bytes(lua_State *L)
{
    msd_tensor *t = lbind_check_tensor(L, 1);
    size_t n = msd_tensor_numel(t);
    const float *p = msd_tensor_data(t);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (size_t i = 0; i < n; i++) {
        float v = p[i] != p[i] ? 0.0f : p[i] < 0 ? 0.0f : p[i] > 1 ? 1.0f : p[i];
        luaL_addchar(&b, (char)(unsigned char)lrintf(v * 255.0f));
    }
    luaL_pushresult(&b);
    return 1;
}

static int l_tensor_requires_grad_(lua_State *L)
{
    msd_tensor *t = lbind_check_tensor(L, 1);
    t->requires_grad = lua_isnone(L, 2) ? 1 : lua_toboolean(L, 2);
    lua_settop(L, 1);
    return 1;
}

static int l_tensor_close(lua_State *L)
{
    msd_tensor **box = luaL_checkudata(L, 1, LBIND_TENSOR_MT);
    msd_tensor_release(*box);
    *box = NULL;
    return 0;
}

static int l_tensor_tostring(lua_State *L)
{
    msd_tensor **box = luaL_checkudata(L, 1, LBIND_TENSOR_MT);
    if (!*box) {
        lua_pushliteral(L, "tensor(closed)");
        return 1;
    }
    msd_tensor *t = *box;
    char shape[64], buf[512];
    size_t n = msd_tensor_numel(t), k = 0;
    const float *p = msd_tensor_data(t);
    k += (size_t)snprintf(buf, sizeof buf, "tensor%s {", msd_tensor_shape_str(shape, sizeof shape, t));
    size_t show = n <= 8 ? n : 6;
    for (size_t i = 0; i < show; i++)
        k += (size_t)snprintf(buf + k, sizeof buf - k, i ? ", %.6g" : "%.6g", (double)p[i]);
    if (show < n)
        snprintf(buf + k, sizeof buf - k, ", ... (%zu values)}%s", n,
                 msd_requires_grad(t) ? " requires_grad" : "");
    else
        snprintf(buf + k, sizeof buf - k, "}%s", msd_requires_grad(t) ? " requires_grad" : "");
    lua_pushstring(L, buf);
    return 1;
}

/* ---- arithmetic metamethods ------------------------------------------- */

enum arith { A_ADD, A_SUB, A_MUL, A_DIV };

static int arith(lua_State *L, enum arith op)
{
    int na = lua_type(L, 1) == LUA_TNUMBER, nb = lua_type(L, 2) == LUA_TNUMBER;
    msd_tensor *a = na ? NULL : lbind_check_tensor(L, 1);
    msd_tensor *b = nb ? NULL : lbind_check_tensor(L, 2);
    float s = (float)lua_tonumber(L, na ? 1 : 2);
    msd_tensor **box = lbind_new_box(L);
    int rc;
    if (!na && !nb) {
        rc = op == A_ADD   ? msd_add(a, b, box)
             : op == A_SUB ? msd_sub(a, b, box)
             : op == A_MUL ? msd_mul(a, b, box)
                           : msd_div(a, b, box);
    } else if (op == A_ADD) {
        rc = msd_add_scalar(na ? b : a, s, box);
    } else if (op == A_MUL) {
        rc = msd_mul_scalar(na ? b : a, s, box);
    } else if (op == A_SUB && nb) {
        rc = msd_add_scalar(a, -s, box);
    } else { /* s - b, a / s, s / b: through a 0-dim constant, exact as PyTorch */
        msd_tensor *c = msd_tensor_full(0, NULL, s);
        if (!c)
            return luaL_error(L, "%s", msd_last_error());
        rc = op == A_SUB ? msd_sub(c, b, box) : na ? msd_div(c, b, box) : msd_div(a, c, box);
        msd_tensor_release(c);
    }
    return lbind_result(L, rc, box);
}

static int l_tensor_add(lua_State *L) { return arith(L, A_ADD); }
static int l_tensor_sub(lua_State *L) { return arith(L, A_SUB); }
static int l_tensor_mul(lua_State *L) { return arith(L, A_MUL); }
static int l_tensor_div(lua_State *L) { return arith(L, A_DIV); }

static int l_tensor_unm(lua_State *L)
{
    msd_tensor *t = lbind_check_tensor(L, 1);
    msd_tensor **box = lbind_new_box(L);
    return lbind_result(L, msd_mul_scalar(t, -1.0f, box), box);
}

static int l_tensor_eq(lua_State *L)
{
    msd_tensor **a = luaL_testudata(L, 1, LBIND_TENSOR_MT);
    msd_tensor **b = luaL_testudata(L, 2, LBIND_TENSOR_MT);
    lua_pushboolean(L, a && b && *a == *b);
    return 1;
}

static int l_tensor_len(lua_State *L)
{
    msd_tensor *t = lbind_check_tensor(L, 1);
    lua_pushinteger(L, t->ndim ? t->shape[0] : 0);
    return 1;
}

/* ---- fields: t.grad, t.requires_grad, t.is_leaf ----------------------- */

static int l_tensor_index(lua_State *L)
{
    msd_tensor **box = luaL_checkudata(L, 1, LBIND_TENSOR_MT);
    const char *k = lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : NULL;
    int field = k && (strcmp(k, "grad") == 0 || strcmp(k, "requires_grad") == 0 ||
                      strcmp(k, "is_leaf") == 0);
    msd_tensor *t = field ? lbind_check_tensor(L, 1) : *box;
    if (k && strcmp(k, "grad") == 0) {
        if (t->grad)
            lbind_push_tensor(L, msd_tensor_retain(t->grad));
        else
            lua_pushnil(L);
        return 1;
    }
    if (k && strcmp(k, "requires_grad") == 0) {
        lua_pushboolean(L, msd_requires_grad(t));
        return 1;
    }
    if (k && strcmp(k, "is_leaf") == 0) {
        lua_pushboolean(L, t->grad_fn == NULL);
        return 1;
    }
    lua_pushvalue(L, lua_upvalueindex(1)); /* the methods table */
    lua_pushvalue(L, 2);
    lua_rawget(L, -2);
    return 1;
}

static int l_tensor_newindex(lua_State *L)
{
    msd_tensor *t = lbind_check_tensor(L, 1);
    const char *k = lua_tostring(L, 2);
    if (k && strcmp(k, "requires_grad") == 0) {
        if (t->grad_fn)
            return luaL_error(L, "requires_grad: can only be set on a leaf tensor, not on the "
                                 "result of an op (use :detach() first)");
        t->requires_grad = lua_toboolean(L, 3);
        return 0;
    }
    if (k && strcmp(k, "grad") == 0) {
        msd_tensor *g = lbind_opt_tensor(L, 3);
        if (g && !msd_tensor_same_shape(g, t)) {
            char b1[64], b2[64];
            return luaL_error(L, "grad: gradient of shape %s assigned to a tensor of shape %s",
                              msd_tensor_shape_str(b1, sizeof b1, g),
                              msd_tensor_shape_str(b2, sizeof b2, t));
        }
        msd_tensor_release(t->grad);
        t->grad = g ? msd_tensor_clone(g) : NULL;
        if (g && !t->grad)
            return luaL_error(L, "%s", msd_last_error());
        return 0;
    }
    return luaL_error(L, "tensor has no field '%s' to set (settable: grad, requires_grad)",
                      k ? k : luaL_typename(L, 2));
}

static const luaL_Reg methods[] = {
    { "shape", l_tensor_shape },
    { "size", l_tensor_size },
    { "dim", l_tensor_dim },
    { "numel", l_tensor_numel },
    { "reshape", l_tensor_reshape },
    { "view", l_tensor_reshape },
    { "narrow", l_tensor_narrow },
    { "clone", l_tensor_clone },
    { "detach", l_tensor_detach },
    { "copy_", l_tensor_copy_ },
    { "fill_", l_tensor_fill_ },
    { "zero_", l_tensor_zero_ },
    { "totable", l_tensor_totable },
    { "item", l_tensor_item },
    { "min", l_tensor_min },
    { "max", l_tensor_max },
    { "sum", lbind_op_sum },
    { "mean", lbind_op_mean },
    { "abs", lbind_op_abs },
    { "sqrt", lbind_op_sqrt },
    { "exp", lbind_op_exp },
    { "backward", l_tensor_backward },
    { "to_bytes", l_tensor_to_bytes },
    { "requires_grad_", l_tensor_requires_grad_ },
    { "close", l_tensor_close },
    { NULL, NULL },
};

static const luaL_Reg metamethods[] = {
    { "__gc", l_tensor_close },
    { "__close", l_tensor_close },
    { "__tostring", l_tensor_tostring },
    { "__add", l_tensor_add },
    { "__sub", l_tensor_sub },
    { "__mul", l_tensor_mul },
    { "__div", l_tensor_div },
    { "__unm", l_tensor_unm },
    { "__eq", l_tensor_eq },
    { "__len", l_tensor_len },
    { "__newindex", l_tensor_newindex },
    { NULL, NULL },
};

static const luaL_Reg functions[] = {
    { "zeros", l_tensor_zeros },
    { "ones", l_tensor_ones },
    { "full", l_tensor_full },
    { "tensor", l_tensor_tensor },
    { "cat", l_tensor_cat },
    { "is_tensor", l_is_tensor },
    { "set_grad_enabled", l_no_grad_set },
    { "is_grad_enabled", l_grad_enabled },
    { NULL, NULL },
};

void lbind_open_tensor(lua_State *L)
{
    luaL_newmetatable(L, LBIND_TENSOR_MT);
    luaL_setfuncs(L, metamethods, 0);
    lua_pushliteral(L, "minisd.Tensor");
    lua_setfield(L, -2, "__name");
    lua_newtable(L); /* methods, also exported as minisd.Tensor */
    luaL_setfuncs(L, methods, 0);
    lua_pushvalue(L, -1);
    lua_setfield(L, -4, "Tensor");
    lua_pushcclosure(L, l_tensor_index, 1);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    luaL_setfuncs(L, functions, 0);
}
