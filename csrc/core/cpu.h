/* minisd: the CPU's instruction sets, and which one the kernels use.
 *
 * One build runs anywhere: the hot kernels (gemm.h, GELU) are compiled for several
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
    MSD_ISA_AVX512_BF16 = 3, /* AVX-512 + AVX512-BF16's vdpbf16ps (Cooper Lake, Zen 4 and
                              * later): bf16 products at twice fp32's rate (gemm.h's
                              * msd_sgemm_bf16); fp32 work runs the AVX-512 kernels */
    MSD_ISA_AMX = 4,     /* the above + AMX-BF16 tiles, granted by the kernel (Sapphire
                          * Rapids and later): bf16 convolutions on the tiles */
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

/* "generic", "avx2", "avx512", "avx512bf16", "amx"; NULL when isa is out of range. */
const char *msd_isa_name(int isa);

/* The level called name, or -1. */
int msd_isa_from_name(const char *name);

/* The precision of conv2d's products (forward and both gradients).
 * MSD_PREC_FP32, the default, keeps every PyTorch parity result.
 * MSD_PREC_BF16 rounds both inputs of each product (image or gradient, and
 * weights) to bfloat16, round-to-nearest-even with subnormals flushed to
 * zero as the hardware does, and accumulates in fp32: at level
 * MSD_ISA_AMX on the AMX tiles (several times faster); at
 * MSD_ISA_AVX512_BF16 (and for the shapes the tiles do not take) the 3x3
 * convolutions that Winograd takes in fp32 run it with bf16 products on
 * vdpbf16ps (the transformed tiles and weights are what is rounded); the
 * others, and every convolution below that level, by the fp32 kernels on the
 * rounded values (the same numbers up to the order of the sums, slower than
 * fp32). Other ops stay fp32. */
enum msd_precision { MSD_PREC_FP32 = 0, MSD_PREC_BF16 = 1, MSD_PREC_COUNT };

/* The precision in use (MSD_PREC_FP32 until set). */
int msd_precision_get(void);

/* Sets it for all threads; MSD_ERR_ARG when out of range. Not to be called
 * while other threads run kernels. */
int msd_precision_set(int precision);

/* "fp32", "bf16"; NULL when out of range. */
const char *msd_precision_name(int precision);

/* The precision called name, or -1. */
int msd_precision_from_name(const char *name);

#endif
