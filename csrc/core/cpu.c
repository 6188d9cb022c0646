/* CPU feature detection and the kernel level in use (cpu.h). */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "cpu.h"
#include "error.h"

static const char *const isa_names[MSD_ISA_COUNT] = {
    [MSD_ISA_GENERIC] = "generic", [MSD_ISA_AVX2] = "avx2", [MSD_ISA_AVX512] = "avx512"
};

/* -1 until first use; then the level in use */
static atomic_int isa_current = -1;

int msd_isa_best(void)
{
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
        return MSD_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return MSD_ISA_AVX2;
#endif
    return MSD_ISA_GENERIC;
}

const char *msd_isa_name(int isa)
{
    return isa >= 0 && isa < MSD_ISA_COUNT ? isa_names[isa] : NULL;
}

int msd_isa_from_name(const char *name)
{
    for (int i = 0; name && i < MSD_ISA_COUNT; i++)
        if (strcmp(name, isa_names[i]) == 0)
            return i;
    return -1;
}

int msd_isa_get(void)
{
    int isa = atomic_load_explicit(&isa_current, memory_order_relaxed);
    if (isa >= 0)
        return isa;
    isa = msd_isa_best();
    int forced = msd_isa_from_name(getenv("MINISD_ISA"));
    if (forced >= 0 && forced < isa)
        isa = forced;
    atomic_store(&isa_current, isa);
    return isa;
}

int msd_isa_set(int isa)
{
    int best = msd_isa_best();
    if (isa < 0 || isa >= MSD_ISA_COUNT)
        return msd_error(MSD_ERR_ARG, "set_isa: level %d is not one of 0..%d", isa,
                         MSD_ISA_COUNT - 1);
    if (isa > best)
        return msd_error(MSD_ERR_ARG, "set_isa: this CPU cannot run %s kernels (best: %s)",
                         isa_names[isa], isa_names[best]);
    atomic_store(&isa_current, isa);
    return MSD_OK;
}
