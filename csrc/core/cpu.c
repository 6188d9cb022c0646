/* CPU feature detection and the kernel level in use (cpu.h).
 *
 * The levels are ordered (generic < avx2 < avx512 < avx512bf16 < amx), each implying the
 * ones below, so "the best level" is one number and forcing a lower one is a comparison. The level
 * and the precision are process-wide atomics: read (relaxed) whenever a kernel picks its
 * code path, written rarely (msd_isa_set, msd_precision_set, the first msd_isa_get). */
#define _GNU_SOURCE /* syscall() */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__)
#include <cpuid.h>
#endif
#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "cpu.h"
#include "error.h"

static const char *const isa_names[MSD_ISA_COUNT] = {
    [MSD_ISA_GENERIC] = "generic", [MSD_ISA_AVX2] = "avx2", [MSD_ISA_AVX512] = "avx512",
    [MSD_ISA_AVX512_BF16] = "avx512bf16",
    [MSD_ISA_AMX] = "amx"
};

/* AMX-TILE and AMX-BF16 (CPUID leaf 7: EDX bits 24 and 22), and Linux's
 * permission to use the tile data (arch_prctl ARCH_REQ_XCOMP_PERM for
 * XFEATURE_XTILEDATA, Linux 5.16+): without it the first tile instruction
 * faults. The permission is the process's, asked for once. */
static int amx_usable(void)
{
#if defined(__GNUC__) && defined(__linux__) && defined(__x86_64__)
    static atomic_int cached = -1; /* a race only repeats the same question */
    if (cached >= 0)
        return cached;
    unsigned a, b, c, d;
    int ok = __get_cpuid_max(0, NULL) >= 7 && __get_cpuid_count(7, 0, &a, &b, &c, &d) &&
             (d >> 24 & 1u) && (d >> 22 & 1u);
    if (ok)
        ok = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */,
                     18 /* XFEATURE_XTILEDATA */) == 0;
    cached = ok;
    return ok;
#else
    return 0;
#endif
}

/* -1 until first use; then the level in use */
static atomic_int isa_current = -1;

/* __builtin_cpu_supports (libgcc) also checks that the OS saves the AVX and AVX-512
 * registers (XGETBV), so a level it reports can run. AVX-512 needs F, BW, DQ and VL
 * together and AVX2 needs FMA: the target sets the kernels are compiled for (gemm.c). AMX
 * is offered only on top of AVX-512 with AVX512-BF16 (every CPU with the tiles has it),
 * and only when amx_usable() says Linux granted it. */
int msd_isa_best(void)
{
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
        if (!__builtin_cpu_supports("avx512bf16"))
            return MSD_ISA_AVX512;
        return amx_usable() ? MSD_ISA_AMX : MSD_ISA_AVX512_BF16;
    }
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

/* The level in use, chosen at the first call (later changed only by msd_isa_set): the
 * best one, lowered (never raised) by MINISD_ISA. Two threads racing on the first call
 * compute and store the same value. */
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

/* MSD_ERR_ARG for a level out of range or above the CPU's best: running a kernel the CPU
 * lacks would fault with SIGILL. */
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

static const char *const precision_names[MSD_PREC_COUNT] = { [MSD_PREC_FP32] = "fp32",
                                                             [MSD_PREC_BF16] = "bf16" };

static atomic_int precision_current = MSD_PREC_FP32;

int msd_precision_get(void)
{
    return atomic_load_explicit(&precision_current, memory_order_relaxed);
}

int msd_precision_set(int precision)
{
    if (precision < 0 || precision >= MSD_PREC_COUNT)
        return msd_error(MSD_ERR_ARG, "set_precision: precision %d is not one of 0..%d",
                         precision, MSD_PREC_COUNT - 1);
    atomic_store(&precision_current, precision);
    return MSD_OK;
}

const char *msd_precision_name(int precision)
{
    return precision >= 0 && precision < MSD_PREC_COUNT ? precision_names[precision] : NULL;
}

int msd_precision_from_name(const char *name)
{
    for (int i = 0; name && i < MSD_PREC_COUNT; i++)
        if (strcmp(name, precision_names[i]) == 0)
            return i;
    return -1;
}
