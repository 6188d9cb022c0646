/* minisd: process-level helpers for long-running programs: a deferred
 * Ctrl-C, so that train.lua can finish the current step and save a
 * consistent checkpoint. (Signals are the program's business, not the
 * core's: this lives in the binding layer only.) */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <string.h>

#include "lbind.h"

static volatile sig_atomic_t interrupt_flag;
static struct sigaction previous;
static int trapping;

/* The first Ctrl-C is recorded; a second one restores the previous
 * handler and re-raises, so an impatient user can still stop at once. */
static void on_sigint(int sig)
{
    if (interrupt_flag) {
        sigaction(SIGINT, &previous, NULL);
        raise(sig);
        return;
    }
    interrupt_flag = 1;
}

/* trap_interrupt(on): while on, SIGINT only sets a flag that
 * interrupt_requested() reports. */
static int l_sys_trap_interrupt(lua_State *L)
{
    int on = lua_toboolean(L, 1);
    if (on && !trapping) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_sigint;
        sigemptyset(&sa.sa_mask);
        if (sigaction(SIGINT, &sa, &previous) != 0)
            return luaL_error(L, "trap_interrupt: cannot install a SIGINT handler");
        trapping = 1;
        interrupt_flag = 0;
    } else if (!on && trapping) {
        sigaction(SIGINT, &previous, NULL);
        trapping = 0;
    }
    return 0;
}

static int l_sys_interrupt_requested(lua_State *L)
{
    lua_pushboolean(L, interrupt_flag != 0);
    return 1;
}

static const luaL_Reg functions[] = {
    { "trap_interrupt", l_sys_trap_interrupt },
    { "interrupt_requested", l_sys_interrupt_requested },
    { NULL, NULL },
};

void lbind_open_sys(lua_State *L)
{
    luaL_setfuncs(L, functions, 0);
}
