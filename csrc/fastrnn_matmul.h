/*
 * fastrnn_matmul.h -- the small-batch recurrent product, C (n, N) = A (n, K) @ B (K, N) + beta C.
 *
 * Why: the per-step recurrent product has few rows (the batch). A BLAS call per step costs
 * 5-36 us of overhead at small batch (measured on a prototype), more than the arithmetic at
 * batch 1-16. This kernel keeps a 6-row x 4-vector tile of C in registers and streams B
 * once per 6 rows. B is packed once per sequence call into panels of PW = 4 vectors of
 * columns (64 floats, 32 doubles): packed[panel][k][PW], zero-filled past N, so a tile
 * reads its panel front to back, contiguously, whatever K and N are.
 *
 * Vector code is written with GCC vector extensions, so the same source compiles to
 * AVX-512, AVX2 and SSE2 (target_clones picks one at load time).
 *
 * Axes: n rows (batch), K reduction, N columns; A and C are row-major with strides lda and
 * ldc. `panel_stride` is the distance between panels (K_packed * PW); a product over rows
 * k0.. of a packed matrix passes packed + k0 * PW with the same panel_stride.
 */
#ifndef FASTRNN_MATMUL_H
#define FASTRNN_MATMUL_H

#include <stddef.h>

#define FASTRNN_DECLARE_MATMUL(T, SFX)                                                       \
    /* packed := op(W) (K, N) in panels; trans=0: op(W) = W (K, N) with row stride ldw;      \
       trans=1: op(W) = W^T where W is (N, K) with row stride ldw */                          \
    void fastrnn_pack_##SFX(ptrdiff_t K, ptrdiff_t N, int trans, const T *w, ptrdiff_t ldw,    \
                            T *packed);                                                        \
    /* columns c0..c1-1 of the same (c0 a multiple of the vector width; c1 one too, or N);   \
       the call whose range ends at N also zeroes the padding: threads may share the work */   \
    void fastrnn_pack_cols_##SFX(ptrdiff_t K, ptrdiff_t N, ptrdiff_t c0, ptrdiff_t c1,          \
                                 int trans, const T *w, ptrdiff_t ldw, T *packed);             \
    /* both packs of W (N, K) from one read of it: packed_t := W^T (K, N) and packed := W    \
       (N, K), as fastrnn_pack with trans = 1 and 0 would give them */                        \
    void fastrnn_pack_both_##SFX(ptrdiff_t K, ptrdiff_t N, const T *w, ptrdiff_t ldw,          \
                                 T *packed_t, T *packed);                                      \
    /* C (n, N) := A (n, K) @ packed (K, N) + beta * C; beta is 0 or 1. reverse = 1 visits   \
       the panels last to first, with the same numbers: a time loop alternates it, so that a   \
       step starts on the panels the last one left in cache (a W larger than L2 would miss   \
       on every panel in a fixed order) */                                                    \
    void fastrnn_small_gemm_##SFX(ptrdiff_t n, ptrdiff_t N, ptrdiff_t K, const T *a,           \
                                  ptrdiff_t lda, const T *packed, ptrdiff_t panel_stride,      \
                                  int beta, T *c, ptrdiff_t ldc, int reverse);               \
    /* columns c0..c1-1 of the same product only; each column's numbers are those of the    \
       whole product (every column sums over K in the same order). With beta = 0 and a bias   \
       (N,), not NULL, C := A @ packed + bias: the numbers of beta = 1 on rows filled with it. \
       reverse = 1 visits the panels last to first (as in fastrnn_small_gemm) */           \
    void fastrnn_small_gemm_cols_##SFX(ptrdiff_t n, ptrdiff_t c0, ptrdiff_t c1, ptrdiff_t K,  \
                                       const T *a, ptrdiff_t lda, const T *packed,            \
                                       ptrdiff_t panel_stride, int beta, const T *bias, T *c, \
                                       ptrdiff_t ldc, int reverse);                           \
    /* one row (n = 1) over `ranges` column ranges c0[i]..c1[i]-1 of                          \
       C (1, N) := a (1, K) @ packed + beta * C, every range's numbers those of the whole    \
       product; reverse = 1 visits the ranges and their vectors last to first (the same      \
       numbers: a time loop alternates it, as for fastrnn_small_gemm) */                     \
    void fastrnn_matvec_ranges_##SFX(int ranges, const ptrdiff_t *c0, const ptrdiff_t *c1,    \
                                     ptrdiff_t K, const T *a, const T *packed,                \
                                     ptrdiff_t panel_stride, int beta, T *c, int reverse);    \
    /* the same over `blocks` blocks of `rows` rows: row i of block s of A is at              \
       a + s * a_block + i * lda (likewise C), e.g. a row range of every time step; with     \
       beta = 0 and a bias (N,), not NULL, C := A @ packed + bias (as fastrnn_small_gemm_cols) */ \
    void fastrnn_small_gemm_blocks_##SFX(ptrdiff_t blocks, ptrdiff_t rows, ptrdiff_t N,        \
                                         ptrdiff_t K, const T *a, ptrdiff_t a_block,          \
                                         ptrdiff_t lda, const T *packed,                      \
                                         ptrdiff_t panel_stride, int beta, const T *bias,     \
                                         T *c, ptrdiff_t c_block, ptrdiff_t ldc);             \
    /* C1 (M, N1) := A^T B1 and C2 (M, N2) := A^T B2 of one A (N2 = 0: one product), A^T    \
       packed once for both: A (K, M), B_q (K, N_q) row-major with strides lda, ldb_q, C_q   \
       (M, N_q) with stride ldc_q. Only panels p0..p1-1 of the two products' panels in a row  \
       (C1's ceil(N1 / PW), then C2's); buf holds fastrnn_gemm_tn_buffer(M) elements (this   \
       call's own). The sum over K runs in a fixed order, so a split of the panels (or of   \
       the rows of A^T) among threads gives the same numbers as one call over all of them.   \
       With sums not NULL, also sums[m] := the sum over K of A[k][m] for m in s0..s1-1, the  \
       numbers of fastrnn_column_sums, taken while A is packed (one pass over A for both). */ \
    void fastrnn_gemm_tn2_##SFX(ptrdiff_t M, ptrdiff_t K, const T *a, ptrdiff_t lda,          \
                                ptrdiff_t N1, const T *b1, ptrdiff_t ldb1, T *c1,             \
                                ptrdiff_t ldc1, ptrdiff_t N2, const T *b2, ptrdiff_t ldb2,    \
                                T *c2, ptrdiff_t ldc2, ptrdiff_t p0, ptrdiff_t p1, T *sums,   \
                                ptrdiff_t s0, ptrdiff_t s1, T *buf);                          \
    /* out (cols,) := the sum over rows of A (rows, cols), row stride lda: each column from   \
       0 in row order (bias gradients: the column sums of the gate gradients) */             \
    void fastrnn_column_sums_##SFX(ptrdiff_t rows, ptrdiff_t cols, const T *a, ptrdiff_t lda, \
                                   T *out);

/* Rows of A (the sum's K) per pass of fastrnn_gemm_tn2; each pass adds its partial sums to C,
   so this fixes the order of the additions (and the numbers). */
#define FASTRNN_GEMM_TN_KC 128
/* Elements of fastrnn_gemm_tn2's buf for M rows of C: a chunk of FASTRNN_GEMM_TN_KC rows of
   A^T, padded to a multiple of 6, and one of a panel of B. */
static inline ptrdiff_t fastrnn_gemm_tn_buffer_f32(ptrdiff_t M)
{
    return ((M + 5) / 6 * 6 + 64) * FASTRNN_GEMM_TN_KC;
}
static inline ptrdiff_t fastrnn_gemm_tn_buffer_f64(ptrdiff_t M)
{
    return ((M + 5) / 6 * 6 + 32) * FASTRNN_GEMM_TN_KC;
}

FASTRNN_DECLARE_MATMUL(float, f32)
FASTRNN_DECLARE_MATMUL(double, f64)

#undef FASTRNN_DECLARE_MATMUL

/* Columns per panel, and per vector (the alignment of a column range). */
#define FASTRNN_VECTOR_F32 16
#define FASTRNN_VECTOR_F64 8
#define FASTRNN_PANEL_F32 64
#define FASTRNN_PANEL_F64 32

/* Elements of a packed (K, N) matrix: its panels and a vector of slack (a product over a
   column range that starts inside a vector reads up to a vector past a panel's row). */
static inline ptrdiff_t fastrnn_packed_size_f32(ptrdiff_t K, ptrdiff_t N)
{
    return (N + FASTRNN_PANEL_F32 - 1) / FASTRNN_PANEL_F32 * FASTRNN_PANEL_F32 * K +
           FASTRNN_VECTOR_F32;
}
static inline ptrdiff_t fastrnn_packed_size_f64(ptrdiff_t K, ptrdiff_t N)
{
    return (N + FASTRNN_PANEL_F64 - 1) / FASTRNN_PANEL_F64 * FASTRNN_PANEL_F64 * K +
           FASTRNN_VECTOR_F64;
}

#endif /* FASTRNN_MATMUL_H */
