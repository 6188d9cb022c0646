/* minisd: the CPU's instruction sets, and which one the kernels use.
 *
 * One build runs anywhere: the hot kernels (gemm.h) are compiled for several
 * x86-64 levels and the best one the CPU supports is chosen at run time.
 * Tests force each level in turn; a user can force one with the environment
 * variable MINISD_ISA (a name below), read once when minisd first needs it.
 * Other CPUs (ARM...) get the generic level. */
#ifndef MSD_CPU_H
#define MSD_CPU_H

enum msd_isa {
    MSD_ISA_GENERIC = 0, /* portable C: whatever the compiler's baseline allows */
    MSD_ISA_AVX2 = 1,    /* AVX2 + FMA (Haswell and later, Zen) */
    MSD_ISA_AVX512 = 2,  /* AVX-512 F/BW/DQ/VL (Skylake-X and later, Zen 4) */
    MSD_ISA_COUNT
};

/* The best level this CPU supports. */
int msd_isa_best(void);

/* The level in use: MINISD_ISA when set to a level the CPU supports (a
 * higher one is clamped to the best), else msd_isa_best(). */
int msd_isa_get(void);

/* Uses level isa from now on (all threads). MSD_ERR_ARG, with a message
 * naming the level and the best one, when isa is out of range or the CPU
 * cannot run it. Not to be called while other threads run kernels. */
int msd_isa_set(int isa);

/* "generic", "avx2", "avx512"; NULL when isa is out of range. */
const char *msd_isa_name(int isa);

/* The level called name, or -1. */
int msd_isa_from_name(const char *name);

#endif
