/* minisd: single-precision matrix multiply, minisd's own.
 *
 * Every convolution and linear layer ends up here. It does not depend on how
 * a BLAS library sees the CPU (OpenBLAS 0.3.21 takes recent Xeons for a
 * Pentium 4 and runs its SSE3 kernel there, 4x slower), and it picks its
 * kernel at run time from the CPU's features (cpu.h): one build runs anywhere. */
#ifndef MSD_GEMM_H
#define MSD_GEMM_H

/* C = alpha op(A) op(B) + beta C, all row-major, as cblas_sgemm with
 * CblasRowMajor: op(A) is (M, K), A[i*lda + k] or, with transa,
 * A[k*lda + i]; op(B) is (K, N), B[k*ldb + j] or, with transb, B[j*ldb + k];
 * C is (M, N) with row stride ldc. With beta == 0, C is not read (it may
 * hold NaN). Single-threaded: callers parallelise around it. Results for
 * given inputs and level (cpu.h) are the same on every call and thread.
 * Never fails: when its packing buffers cannot be allocated it computes
 * the product unblocked. */
void msd_sgemm(int transa, int transb, int M, int N, int K, float alpha, const float *A,
               int lda, const float *B, int ldb, float beta, float *C, int ldc);

/* Writes op(B)[p0 .. p0+kc, j0 .. j0+nc] as ceil(nc/nr) panels of kc x nr
 * floats, bp[panel*kc*nr + k*nr + j] = op(B)[p0+k, j0+panel*nr+j], with
 * zeros past column nc of the last panel. */
typedef void (*msd_pack_b_fn)(void *ctx, float *bp, int p0, int kc, int j0, int nc, int nr);

/* msd_sgemm with op(B) (K, N) supplied by a packing function instead of a
 * matrix: a convolution packs its image patches straight into the panels,
 * with no im2col matrix in between. MSD_OK, or MSD_ERR_MEM when this
 * thread's packing buffer cannot be allocated. */
int msd_sgemm_pack(int transa, int M, int N, int K, float alpha, const float *A, int lda,
                   msd_pack_b_fn pack_b, void *ctx, float beta, float *C, int ldc);

#endif
