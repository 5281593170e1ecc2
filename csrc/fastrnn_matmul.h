/*
 * fastrnn_matmul.h -- the small-batch recurrent product, C (n, N) = A (n, K) @ B (K, N) + beta C.
 *
 * Why: the per-step recurrent product has few rows (the batch). A BLAS call per step costs
 * 5-36 us of overhead at small batch (measured on a prototype), more than the arithmetic at
 * batch 1-16. This kernel keeps a 4-row x 64-column tile of C in registers and streams B
 * once per 4 rows; B is packed once per sequence call with its row stride padded to a
 * multiple of 16 (zero-filled), so every load of a tile is a full vector.
 *
 * Vector code is written with GCC vector extensions, so the same source compiles to
 * AVX-512, AVX2 and SSE2 (target_clones picks one at load time).
 *
 * Axes: n rows (batch), K reduction, N columns; `ldb` = N rounded up to 16 (float) or 8
 * (double); A and C are row-major with strides lda and ldc.
 */
#ifndef FASTRNN_MATMUL_H
#define FASTRNN_MATMUL_H

#include <stddef.h>

#define FASTRNN_DECLARE_MATMUL(T, SFX)                                                       \
    /* packed (K, ldb) := op(W) with zero padding; trans=0: op(W) = W (K, N) row stride ldw;  \
       trans=1: op(W) = W^T where W is (N, K) with row stride ldw */                          \
    void fastrnn_pack_##SFX(ptrdiff_t K, ptrdiff_t N, int trans, const T *w, ptrdiff_t ldw,    \
                            T *packed, ptrdiff_t ldb);                                         \
    /* C (n, N) := A (n, K) @ packed (K, N) + beta * C; beta is 0 or 1 */                     \
    void fastrnn_small_gemm_##SFX(ptrdiff_t n, ptrdiff_t N, ptrdiff_t K, const T *a,           \
                                  ptrdiff_t lda, const T *packed, ptrdiff_t ldb, int beta,     \
                                  T *c, ptrdiff_t ldc);

FASTRNN_DECLARE_MATMUL(float, f32)
FASTRNN_DECLARE_MATMUL(double, f64)

#undef FASTRNN_DECLARE_MATMUL

/* Padded row stride of a packed matrix with N columns. */
static inline ptrdiff_t fastrnn_packed_ld_f32(ptrdiff_t N) { return (N + 15) / 16 * 16; }
static inline ptrdiff_t fastrnn_packed_ld_f64(ptrdiff_t N) { return (N + 7) / 8 * 8; }

#endif /* FASTRNN_MATMUL_H */
