/* minisd: the module entry point. The only exported symbol. */
#include "lbind.h"

#if defined(__GNUC__)
#define MSD_EXPORT __attribute__((visibility("default")))
#else
#define MSD_EXPORT
#endif

MSD_EXPORT int luaopen_minisd_core(lua_State *L)
{
    lua_newtable(L);
    lbind_open_tensor(L);
    lbind_open_ops(L);
    lbind_open_rng(L);
    lbind_open_io(L);
    lbind_open_optim(L);
    lbind_open_diffusion(L);
    lbind_open_image(L);
    lbind_open_sys(L);
    lbind_open_gif(L);
#ifdef MINISD_MPI
    lbind_open_dist(L);
#endif
    return 1;
}
