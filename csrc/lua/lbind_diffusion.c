/* SCAFFOLD: replaced by the real bindings. */
#include "lbind.h"
void lbind_open_diffusion(lua_State *L) { (void)L; }
