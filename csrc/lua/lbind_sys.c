/* minisd: process-level settings and helpers: threads, kernel level, precision, memory
 * statistics, a monotonic clock, and a deferred Ctrl-C, so that train.lua can finish the
 * current step and save a consistent checkpoint. (Signals are the program's business, not
 * the core's: this lives in the binding layer only.) */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <string.h>
#include <time.h>

#include "lbind.h"

static int l_set_threads(lua_State *L)
{
    int n = lbind_check_int(L, 1);
    if (n < 1)
        return luaL_argerror(L, 1, lua_pushfstring(L, "thread count must be >= 1, got %d", n));
    msd_set_threads(n);
    return 0;
}

static int l_get_threads(lua_State *L)
{
    lua_pushinteger(L, msd_get_threads());
    return 1;
}

/* set_isa(name): the kernel level for everything ("generic", "avx2",
 * "avx512", "avx512bf16", "amx"); an error names the levels and the CPU's best. */
static int l_set_isa(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    int isa = msd_isa_from_name(name);
    if (isa < 0)
        return luaL_argerror(L, 1, lua_pushfstring(L, "unknown kernel level '%s' (expected "
                                                   "generic, avx2, avx512, avx512bf16 or amx)",
                                                   name));
    lbind_check_rc(L, msd_isa_set(isa));
    return 0;
}

/* get_isa() -> the level in use, the best this CPU runs */
static int l_get_isa(lua_State *L)
{
    lua_pushstring(L, msd_isa_name(msd_isa_get()));
    lua_pushstring(L, msd_isa_name(msd_isa_best()));
    return 2;
}

/* set_precision(name): "fp32" or "bf16" for conv2d's products (cpu.h) */
static int l_set_precision(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    int p = msd_precision_from_name(name);
    if (p < 0)
        return luaL_argerror(L, 1, lua_pushfstring(L, "unknown precision '%s' (expected fp32 "
                                                   "or bf16)", name));
    lbind_check_rc(L, msd_precision_set(p));
    return 0;
}

/* get_precision() -> "fp32" or "bf16", and what runs bf16's products at the
 * level in use: "amx" (the tiles), "avx512bf16" (vdpbf16ps, for the
 * convolutions Winograd takes) or false (the fp32 kernels on rounded inputs) */
static int l_get_precision(lua_State *L)
{
    lua_pushstring(L, msd_precision_name(msd_precision_get()));
    int isa = msd_isa_get();
    if (isa == MSD_ISA_AMX || isa == MSD_ISA_AVX512_BF16)
        lua_pushstring(L, msd_isa_name(isa));
    else
        lua_pushboolean(L, 0);
    return 2;
}

/* set_winograd(on): 3x3 convolutions by Winograd where the shape suits
 * (conv_wino.h): true (the default: F(4x4, 3x3) in fp32 where it pays, else
 * F(2x2, 3x3)), "2x2" (F(2x2, 3x3) only), or false (always direct) */
static int l_set_winograd(lua_State *L)
{
    if (lua_type(L, 1) == LUA_TSTRING && strcmp(lua_tostring(L, 1), "2x2") == 0) {
        msd_wino_set(MSD_WINO_F2);
        return 0;
    }
    if (lua_type(L, 1) != LUA_TBOOLEAN)
        return luaL_error(L, "set_winograd: expected true, false or \"2x2\", got %s",
                          lua_type(L, 1) == LUA_TSTRING ? lua_tostring(L, 1)
                                                        : luaL_typename(L, 1));
    msd_wino_set(lua_toboolean(L, 1) ? MSD_WINO_ON : MSD_WINO_OFF);
    return 0;
}

/* get_winograd() -> true, "2x2" or false (set_winograd's values) */
static int l_get_winograd(lua_State *L)
{
    int mode = msd_wino_get();
    if (mode == MSD_WINO_F2)
        lua_pushliteral(L, "2x2");
    else
        lua_pushboolean(L, mode != MSD_WINO_OFF);
    return 1;
}

/* t[key] = v on the table at the top of the stack */
static void set_number(lua_State *L, const char *key, double v)
{
    lua_pushnumber(L, (lua_Number)v);
    lua_setfield(L, -2, key);
}

static int l_memory_stats(lua_State *L)
{
    msd_mem_stats s = msd_memory_stats();
    lua_createtable(L, 0, 5);
    set_number(L, "live_bytes", (double)s.live_bytes);
    set_number(L, "cached_bytes", (double)s.cached_bytes);
    set_number(L, "peak_bytes", (double)s.peak_bytes);
    set_number(L, "allocs", (double)s.allocs);
    set_number(L, "cache_hits", (double)s.cache_hits);
    return 1;
}

/* conv_cache_stats() -> { entries, bytes, hits, misses }: this thread's
 * transformed-kernel cache (ops.h) */
static int l_conv_cache_stats(lua_State *L)
{
    msd_conv_cache_stats s = msd_conv_cache_get_stats();
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, s.entries);
    lua_setfield(L, -2, "entries");
    set_number(L, "bytes", (double)s.bytes);
    set_number(L, "hits", (double)s.hits);
    set_number(L, "misses", (double)s.misses);
    return 1;
}

static int l_clear_conv_cache(lua_State *L)
{
    (void)L;
    msd_conv_cache_clear();
    return 0;
}

/* Seconds on a monotonic clock, for progress rates and benchmarks. */
static int l_clock(lua_State *L)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec * 1e-9);
    return 1;
}

static volatile sig_atomic_t interrupt_flag;
static struct sigaction previous, previous_term;
static int trapping, trapping_term;

static void untrap(void)
{
    if (trapping)
        sigaction(SIGINT, &previous, NULL);
    if (trapping_term)
        sigaction(SIGTERM, &previous_term, NULL);
    trapping = trapping_term = 0;
}

/* The first Ctrl-C (or SIGTERM, when trapped) is recorded; a second Ctrl-C
 * restores the previous handlers and re-raises, so an impatient user can
 * still stop at once. A SIGTERM never stops at once: it is a launcher's
 * (mpirun, srun), which sends SIGKILL on its own schedule. */
static void on_sigint(int sig)
{
    if (interrupt_flag && sig == SIGINT) {
        untrap();
        raise(sig);
        return;
    }
    interrupt_flag = 1;
}

/* trap_interrupt(on [, terminate]): while on, SIGINT (and SIGTERM with
 * terminate: what mpirun sends every rank on Ctrl-C, after SIGINT under
 * srun) only sets a flag that interrupt_requested() reports. */
static int l_sys_trap_interrupt(lua_State *L)
{
    int on = lua_toboolean(L, 1), term = lua_toboolean(L, 2);
    if (on && !trapping) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_sigint;
        sigemptyset(&sa.sa_mask);
        if (sigaction(SIGINT, &sa, &previous) != 0)
            return luaL_error(L, "trap_interrupt: cannot install a SIGINT handler");
        trapping = 1;
        if (term) {
            if (sigaction(SIGTERM, &sa, &previous_term) != 0) {
                untrap();
                return luaL_error(L, "trap_interrupt: cannot install a SIGTERM handler");
            }
            trapping_term = 1;
        }
        interrupt_flag = 0;
    } else if (!on) {
        untrap();
    }
    return 0;
}

static int l_sys_interrupt_requested(lua_State *L)
{
    lua_pushboolean(L, interrupt_flag != 0);
    return 1;
}

static const luaL_Reg functions[] = {
    { "set_threads", l_set_threads },
    { "get_threads", l_get_threads },
    { "set_isa", l_set_isa },
    { "get_isa", l_get_isa },
    { "set_precision", l_set_precision },
    { "get_precision", l_get_precision },
    { "set_winograd", l_set_winograd },
    { "get_winograd", l_get_winograd },
    { "memory_stats", l_memory_stats },
    { "conv_cache_stats", l_conv_cache_stats },
    { "clear_conv_cache", l_clear_conv_cache },
    { "clock", l_clock },
    { "trap_interrupt", l_sys_trap_interrupt },
    { "interrupt_requested", l_sys_interrupt_requested },
    { NULL, NULL },
};

void lbind_open_sys(lua_State *L)
{
    luaL_setfuncs(L, functions, 0);
}
