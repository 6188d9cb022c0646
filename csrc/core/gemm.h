/* minisd: single-precision matrix multiply, minisd's own.
 *
 * Every convolution and linear layer ends up here. It does not depend on how
 * a BLAS library sees the CPU (OpenBLAS 0.3.21 takes recent Xeons for a
 * Pentium 4 and runs its SSE3 kernel there, 4x slower), and it picks its
 * kernel at run time from the CPU's features (cpu.h): one build runs anywhere.
 *
 * Single-threaded: callers parallelise around it. Results for given inputs
 * and kernel level are the same on every call and thread. Never fails: when
 * its packing buffer cannot be allocated it computes the product unblocked. */
#ifndef MSD_GEMM_H
#define MSD_GEMM_H

#include <stddef.h>
#include <stdint.h>

/* C = alpha op(A) op(B) + beta C, all row-major, as cblas_sgemm with
 * CblasRowMajor: op(A) is (M, K), A[i*lda + k] or, with transa,
 * A[k*lda + i]; op(B) is (K, N), B[k*ldb + j] or, with transb, B[j*ldb + k];
 * C is (M, N) with row stride ldc. With beta == 0, C is not read (it may
 * hold NaN). */
void msd_sgemm(int transa, int transb, int M, int N, int K, float alpha, const float *A,
               int lda, const float *B, int ldb, float beta, float *C, int ldc);

/* The same with A addressed through offset tables instead of strides:
 * A[i, k] = base[rowoff[i] + koff[k]], rowoff (M) and koff (K) of the
 * caller. A convolution reads its image patches this way straight from a
 * padded copy of the input (ops_conv.c): no im2col matrix, no packing. */
void msd_sgemm_offsets(int M, int N, int K, float alpha, const float *base, const int *rowoff,
                       const int *koff, int transb, const float *B, int ldb, float beta,
                       float *C, int ldc);

/* msd_sgemm with the products of bf16-rounded inputs (msd_bf16_from_float,
 * conv_amx.h), summed in fp32: the bf16 precision's matrix product (cpu.h).
 * At level MSD_ISA_AVX512_BF16 and above on vdpbf16ps (twice the multiply-
 * adds of fp32 per instruction; as the hardware does, subnormal products
 * and sums may be flushed to zero), below it by plain loops (correct, slow).
 * Same guarantees as msd_sgemm otherwise. */
void msd_sgemm_bf16(int transa, int transb, int M, int N, int K, float alpha, const float *A,
                    int lda, const float *B, int ldb, float beta, float *C, int ldc);

/* The fp32 product with B packed beforehand, for a B that many products share (each
 * transformed kernel of a Winograd convolution, by every group of tiles, and kept across
 * calls for inference): msd_pack_b writes B (K x N, row-major) into bp in the panels of the
 * kernel level in use, msd_packed_b_floats(K, N) floats; msd_sgemm_packed computes C = A B +
 * beta C with A (M x K) row-major, read in place, at the same level, with the same bits as
 * msd_sgemm(0, 0, M, N, K, 1, A, lda, B, ldb, beta, C, ldc). bp 64-byte aligned. */
size_t msd_packed_b_floats(int K, int N);
void msd_pack_b(float *bp, const float *B, int ldb, int K, int N);
void msd_sgemm_packed(int M, int N, int K, const float *A, int lda, const float *bp, float beta,
                      float *C, int ldc);

/* The bf16 product with its operands converted beforehand, for a B that many products share
 * (each transformed kernel of a Winograd convolution, conv_wino.c, by every group of tiles)
 * or operands that a transform writes in these forms. msd_bf16_pack_b writes B (K x N,
 * row-major) rounded to bf16 into bp, in the bf16 kernel's panels: msd_bf16_packed_b_words(K,
 * N) 32-bit words; per block of KC = 128 k and 1920 columns, in that order, panels of 64
 * columns, each with (kc + 1) / 2 rows of 64 words for its kc values of k, holding k = 2p in
 * the low half and 2p + 1 in the high half; zero where the columns or an odd K end.
 * msd_sgemm_bf16_packed computes C = A B + beta C with A (M x K) as such words read in place:
 * elements (i, 2p) and (i, 2p + 1) in the word A[i rs + p ks] (rows of bf16: rs = lda / 2,
 * ks = 1; the transposed layout that pairs tiles: rs = 1, ks = M), an odd K's last high
 * halves zero; bp 64-byte aligned. The same bits as msd_sgemm_bf16 on the floats A and B
 * were rounded from; on vdpbf16ps where msd_gemm_bf16_native(), else by plain loops. */
size_t msd_bf16_packed_b_words(int K, int N);
void msd_bf16_pack_b(uint32_t *bp, const float *B, int ldb, int K, int N);
void msd_sgemm_bf16_packed(int M, int N, int K, const uint32_t *A, size_t rs, size_t ks,
                           const uint32_t *bp, float beta, float *C, int ldc);

/* 1 when msd_sgemm_bf16 runs on vdpbf16ps at the level in use. */
int msd_gemm_bf16_native(void);

#endif
