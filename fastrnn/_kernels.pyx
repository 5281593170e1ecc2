# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""Whole-sequence loops of one recurrent layer in one direction.

Three tiers, each trusting the one above it:

1. ``csrc/`` (plain C): the pointwise gate math of one time step, forward and backward,
   for float and double (``cells.c``; equations numbered in ``fastrnn_cells.h``); the
   small-batch products on packed weights (``matmul.c``); the thread pool (``threads.c``).
   No allocation, no Python.
2. This module (Cython): the time loops. It receives C-contiguous NumPy arrays of one float
   type, every output and workspace already allocated, re-checks only their rank, type and
   derived sizes, and runs the whole loop with the GIL released, row ranges of the batch on
   the pool's threads (at batch 1: ranges of hidden units, meeting once a step). Every
   product of a recurrent step and of the whole sequence goes through the own kernels on
   packed weights, at every batch; BLAS (``scipy.linalg.cython_blas``) only multiplies by an
   LSTM's W_hr. A forward() or backward() call given a ``Deferred`` is
   only checked and prepared; ``run_deferred`` then runs two such calls at once, one a
   thread (the two directions of a bidirectional layer).
3. ``fastrnn/_layer.py`` and the models (Python): validate user input, convert, allocate,
   and compose layers and directions.

Sequences inside the loops are *compact*: step ``s`` of row ``j`` holds time
``t = s`` (forward) or ``t = lengths[order[j]] - 1 - s`` (reverse) of batch row ``order[j]``,
where ``order`` sorts the rows by length, longest first. The rows still running at step ``s``
are then a prefix ``0..n_s-1``, so every step works on contiguous blocks and its cost follows
the real tokens. ``gather_steps`` / ``scatter_steps`` convert between the user's padded
(T, B, F) layout and the compact (S, B, F) one; initial and final states stay in user order
and are permuted here.

Arguments are marked IN, OUT or WORK (scratch, contents undefined on return).
"""
cimport numpy as cnp
from cython cimport floating
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset
from scipy.linalg.cython_blas cimport sgemm, dgemm

cdef extern from "fastrnn_cells.h" nogil:
    unsigned fastrnn_denormals_flush()
    void fastrnn_denormals_restore(unsigned previous)
    void fastrnn_rnn_gates_fwd_f32(Py_ssize_t n, Py_ssize_t H, Py_ssize_t j0, Py_ssize_t j1, int relu, const float *pre,
                                   float *h)
    void fastrnn_rnn_gates_fwd_f64(Py_ssize_t n, Py_ssize_t H, Py_ssize_t j0, Py_ssize_t j1, int relu, const double *pre,
                                   double *h)
    void fastrnn_rnn_gates_bwd_f32(Py_ssize_t n, Py_ssize_t H, Py_ssize_t j0, Py_ssize_t j1, int relu, const float *h,
                                   const float *dh, float *dpre)
    void fastrnn_rnn_gates_bwd_f64(Py_ssize_t n, Py_ssize_t H, Py_ssize_t j0, Py_ssize_t j1, int relu, const double *h,
                                   const double *dh, double *dpre)
    void fastrnn_lstm_gates_fwd_f32(Py_ssize_t n, Py_ssize_t H, Py_ssize_t j0, Py_ssize_t j1, const float *pre,
                                    const float *c_prev, float *act, float *c, float *h)
    void fastrnn_lstm_gates_fwd_f64(Py_ssize_t n, Py_ssize_t H, Py_ssize_t j0, Py_ssize_t j1, const double *pre,
                                    const double *c_prev, double *act, double *c, double *h)
    void fastrnn_lstm_gates_bwd_f32(Py_ssize_t n, Py_ssize_t H, Py_ssize_t j0, Py_ssize_t j1, const float *act,
                                    const float *c_prev, const float *c, const float *dh,
                                    float *dc, float *dpre)
    void fastrnn_lstm_gates_bwd_f64(Py_ssize_t n, Py_ssize_t H, Py_ssize_t j0, Py_ssize_t j1, const double *act,
                                    const double *c_prev, const double *c, const double *dh,
                                    double *dc, double *dpre)
    void fastrnn_gru_gates_fwd_f32(Py_ssize_t n, Py_ssize_t H, Py_ssize_t j0, Py_ssize_t j1, const float *x, const float *hh,
                                   const float *h_prev, float *act, float *h)
    void fastrnn_gru_gates_fwd_f64(Py_ssize_t n, Py_ssize_t H, Py_ssize_t j0, Py_ssize_t j1, const double *x,
                                   const double *hh, const double *h_prev, double *act,
                                   double *h)
    void fastrnn_gru_gates_bwd_f32(Py_ssize_t n, Py_ssize_t H, Py_ssize_t j0, Py_ssize_t j1, const float *act,
                                   const float *h_prev, const float *dh, float *dx, float *dhn,
                                   float *dh_prev)
    void fastrnn_gru_gates_bwd_f64(Py_ssize_t n, Py_ssize_t H, Py_ssize_t j0, Py_ssize_t j1, const double *act,
                                   const double *h_prev, const double *dh, double *dx,
                                   double *dhn, double *dh_prev)
    void fastrnn_grub_rz_fwd_f32(Py_ssize_t n, Py_ssize_t H, const float *pre,
                                 const float *h_prev, float *act, float *rh)
    void fastrnn_grub_rz_fwd_f64(Py_ssize_t n, Py_ssize_t H, const double *pre,
                                 const double *h_prev, double *act, double *rh)
    void fastrnn_grub_n_fwd_f32(Py_ssize_t n, Py_ssize_t H, const float *pre,
                                const float *h_prev, float *act, float *h)
    void fastrnn_grub_n_fwd_f64(Py_ssize_t n, Py_ssize_t H, const double *pre,
                                const double *h_prev, double *act, double *h)
    void fastrnn_grub_n_bwd_f32(Py_ssize_t n, Py_ssize_t H, const float *act,
                                const float *h_prev, const float *dh, float *dpre,
                                float *dh_prev)
    void fastrnn_grub_n_bwd_f64(Py_ssize_t n, Py_ssize_t H, const double *act,
                                const double *h_prev, const double *dh, double *dpre,
                                double *dh_prev)
    void fastrnn_grub_rz_bwd_f32(Py_ssize_t n, Py_ssize_t H, const float *act,
                                 const float *h_prev, const float *drh, float *dpre,
                                 float *dh_prev)
    void fastrnn_grub_rz_bwd_f64(Py_ssize_t n, Py_ssize_t H, const double *act,
                                 const double *h_prev, const double *drh, double *dpre,
                                 double *dh_prev)
    void fastrnn_sigmoid_f32(Py_ssize_t n, const float *x, float *y)
    void fastrnn_sigmoid_f64(Py_ssize_t n, const double *x, double *y)
    void fastrnn_tanh_f32(Py_ssize_t n, const float *x, float *y)
    void fastrnn_tanh_f64(Py_ssize_t n, const double *x, double *y)

cdef extern from "fastrnn_step.h" nogil:
    void fastrnn_lstm_step_row_f32(Py_ssize_t H, Py_ssize_t K, const float *h_prev,
                                   const float *packed, Py_ssize_t panel_stride, int reverse,
                                   float *pre, const float *c_prev, float *act, float *c,
                                   float *h)
    void fastrnn_lstm_step_row_f64(Py_ssize_t H, Py_ssize_t K, const double *h_prev,
                                   const double *packed, Py_ssize_t panel_stride, int reverse,
                                   double *pre, const double *c_prev, double *act, double *c,
                                   double *h)

    void fastrnn_gru_step_row_f32(Py_ssize_t H, Py_ssize_t K, const float *h_prev,
                                  const float *packed, Py_ssize_t panel_stride, int reverse,
                                  const float *b_hh, float *x, float *hh, float *act, float *h)
    void fastrnn_gru_step_row_f64(Py_ssize_t H, Py_ssize_t K, const double *h_prev,
                                  const double *packed, Py_ssize_t panel_stride, int reverse,
                                  const double *b_hh, double *x, double *hh, double *act,
                                  double *h)


cdef extern from "fastrnn_threads.h" nogil:
    ctypedef void (*fastrnn_task)(void *ctx, int t, int nt) noexcept nogil
    void fastrnn_parallel(int nt, fastrnn_task task, void *ctx)
    void fastrnn_parallel_team(int nt, fastrnn_task task, void *ctx)
    ctypedef struct fastrnn_barrier:
        pass
    void fastrnn_barrier_init(fastrnn_barrier *b)
    void fastrnn_barrier_wait(fastrnn_barrier *b, int t, int nt)
    int fastrnn_pool_selftest(int jobs)
    int fastrnn_pipe_selftest(int runs, long chunks, long slots)
    ctypedef struct fastrnn_pipe:
        pass
    enum: FASTRNN_PIPE_SLOTS
    void fastrnn_pipe_init(fastrnn_pipe *p, long chunks, long slots)
    int fastrnn_pipe_need(fastrnn_pipe *p, long k)
    void fastrnn_pipe_consumed(fastrnn_pipe *p, long k)
    void fastrnn_pipe_close(fastrnn_pipe *p)
    long fastrnn_pipe_claim(fastrnn_pipe *p)
    void fastrnn_pipe_ready(fastrnn_pipe *p, long k)
    long fastrnn_pipes_started()
    long fastrnn_pool_sleeps()

cdef extern from "fastrnn_matmul.h" nogil:
    void fastrnn_pack_f32(Py_ssize_t K, Py_ssize_t N, int trans, const float *w, Py_ssize_t ldw,
                          float *packed)
    void fastrnn_pack_f64(Py_ssize_t K, Py_ssize_t N, int trans, const double *w,
                          Py_ssize_t ldw, double *packed)
    void fastrnn_pack_cols_f32(Py_ssize_t K, Py_ssize_t N, Py_ssize_t c0, Py_ssize_t c1,
                               int trans, const float *w, Py_ssize_t ldw, float *packed)
    void fastrnn_pack_cols_f64(Py_ssize_t K, Py_ssize_t N, Py_ssize_t c0, Py_ssize_t c1,
                               int trans, const double *w, Py_ssize_t ldw, double *packed)
    void fastrnn_pack_both_f32(Py_ssize_t K, Py_ssize_t N, const float *w, Py_ssize_t ldw,
                               float *packed_t, float *packed)
    void fastrnn_pack_both_f64(Py_ssize_t K, Py_ssize_t N, const double *w, Py_ssize_t ldw,
                               double *packed_t, double *packed)
    void fastrnn_small_gemm_f32(Py_ssize_t n, Py_ssize_t N, Py_ssize_t K, const float *a,
                                Py_ssize_t lda, const float *packed, Py_ssize_t panel_stride,
                                int beta, float *c, Py_ssize_t ldc, int reverse)
    void fastrnn_small_gemm_f64(Py_ssize_t n, Py_ssize_t N, Py_ssize_t K, const double *a,
                                Py_ssize_t lda, const double *packed, Py_ssize_t panel_stride,
                                int beta, double *c, Py_ssize_t ldc, int reverse)
    void fastrnn_small_gemm_cols_f32(Py_ssize_t n, Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t K,
                                     const float *a, Py_ssize_t lda, const float *packed,
                                     Py_ssize_t panel_stride, int beta, const float *bias,
                                     float *c, Py_ssize_t ldc, int reverse)
    void fastrnn_small_gemm_cols_f64(Py_ssize_t n, Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t K,
                                     const double *a, Py_ssize_t lda, const double *packed,
                                     Py_ssize_t panel_stride, int beta, const double *bias,
                                     double *c, Py_ssize_t ldc, int reverse)
    void fastrnn_matvec_ranges_f32(int ranges, const Py_ssize_t *c0, const Py_ssize_t *c1,
                                   Py_ssize_t K, const float *a, const float *packed,
                                   Py_ssize_t panel_stride, int beta, float *c, int reverse)
    void fastrnn_matvec_ranges_f64(int ranges, const Py_ssize_t *c0, const Py_ssize_t *c1,
                                   Py_ssize_t K, const double *a, const double *packed,
                                   Py_ssize_t panel_stride, int beta, double *c, int reverse)
    void fastrnn_small_gemm_blocks_f32(Py_ssize_t blocks, Py_ssize_t rows, Py_ssize_t N,
                                       Py_ssize_t K, const float *a, Py_ssize_t a_block,
                                       Py_ssize_t lda, const float *packed,
                                       Py_ssize_t panel_stride, int beta, const float *bias,
                                       float *c, Py_ssize_t c_block, Py_ssize_t ldc)
    void fastrnn_small_gemm_blocks_f64(Py_ssize_t blocks, Py_ssize_t rows, Py_ssize_t N,
                                       Py_ssize_t K, const double *a, Py_ssize_t a_block,
                                       Py_ssize_t lda, const double *packed,
                                       Py_ssize_t panel_stride, int beta, const double *bias,
                                       double *c, Py_ssize_t c_block, Py_ssize_t ldc)
    void fastrnn_gemm_tn2_f32(Py_ssize_t M, Py_ssize_t K, const float *a, Py_ssize_t lda,
                              Py_ssize_t N1, const float *b1, Py_ssize_t ldb1, float *c1,
                              Py_ssize_t ldc1, Py_ssize_t N2, const float *b2,
                              Py_ssize_t ldb2, float *c2, Py_ssize_t ldc2, Py_ssize_t p0,
                              Py_ssize_t p1, float *sums, Py_ssize_t s0, Py_ssize_t s1,
                              float *buf)
    void fastrnn_gemm_tn2_f64(Py_ssize_t M, Py_ssize_t K, const double *a, Py_ssize_t lda,
                              Py_ssize_t N1, const double *b1, Py_ssize_t ldb1, double *c1,
                              Py_ssize_t ldc1, Py_ssize_t N2, const double *b2,
                              Py_ssize_t ldb2, double *c2, Py_ssize_t ldc2, Py_ssize_t p0,
                              Py_ssize_t p1, double *sums, Py_ssize_t s0, Py_ssize_t s1,
                              double *buf)
    void fastrnn_column_sums_f32(Py_ssize_t rows, Py_ssize_t cols, const float *a,
                                 Py_ssize_t lda, float *out)
    void fastrnn_column_sums_f64(Py_ssize_t rows, Py_ssize_t cols, const double *a,
                                 Py_ssize_t lda, double *out)
    Py_ssize_t fastrnn_gemm_tn_buffer_f32(Py_ssize_t M)
    Py_ssize_t fastrnn_gemm_tn_buffer_f64(Py_ssize_t M)
    Py_ssize_t fastrnn_packed_size_f32(Py_ssize_t K, Py_ssize_t N)
    Py_ssize_t fastrnn_packed_size_f64(Py_ssize_t K, Py_ssize_t N)
    const int FASTRNN_PANEL_F32
    const int FASTRNN_PANEL_F64
    const int FASTRNN_VECTOR_F32
    const int FASTRNN_VECTOR_F64

# The own kernels take every batch. Up to batch 128 they were always faster than OpenBLAS
# (by 1.5-10x at batch 1); BLAS also took larger batches until in-process A/Bs
# (bench/ab.py, OpenBLAS on as many threads as fastrnn) showed the own kernels ahead there
# too: (T, B, I, H) = (30, 256, 128, 128) LSTM inference 0.87 (1 thread) and 0.71 (2),
# training 0.74 (2), GRU training 0.73 (2); (5, 1024, 256, 256) LSTM training 0.91 (2);
# (5, 2048, 256, 256) GRU inference 0.88 (2) and 1.04 (1 thread, the one case BLAS led).

cnp.import_array()

cdef enum:
    FLOAT_TYPE = cnp.NPY_FLOAT32
    DOUBLE_TYPE = cnp.NPY_FLOAT64
    INT64_TYPE = cnp.NPY_INT64

# Cell kinds; fastrnn/_layer.py mirrors these numbers.
DEF RNN_TANH = 0
DEF RNN_RELU = 1
DEF LSTM = 2
DEF GRU = 3        # "reset after" (PyTorch, cuDNN)
DEF GRU_B = 4      # "reset before" (Cho et al., the lecture)

CELL_RNN_TANH = RNN_TANH
CELL_RNN_RELU = RNN_RELU
CELL_LSTM = LSTM
CELL_GRU = GRU
CELL_GRU_B = GRU_B


cdef inline int num_gates(int cell) noexcept nogil:
    if cell == LSTM:
        return 4
    if cell == GRU or cell == GRU_B:
        return 3
    return 1


# ---------------------------------------------------------------------------------------
# BLAS, row-major
# ---------------------------------------------------------------------------------------

cdef void gemm(bint trans_a, bint trans_b, int m, int n, int k, floating alpha,
               const floating *a, int lda, const floating *b, int ldb, floating beta,
               floating *c, int ldc) noexcept nogil:
    """Row-major C (m, n) := alpha * op(A) @ op(B) + beta * C.

    cython_blas is column-major; a row-major matrix is its column-major transpose, so
    C^T = op(B)^T op(A)^T is one column-major call with the operands swapped.
    """
    if m <= 0 or n <= 0:
        return
    cdef char ta = b'T' if trans_b else b'N'
    cdef char tb = b'T' if trans_a else b'N'
    if floating is float:
        sgemm(&ta, &tb, &n, &m, &k, &alpha, <float *> b, &ldb, <float *> a, &lda, &beta,
              c, &ldc)
    else:
        dgemm(&ta, &tb, &n, &m, &k, &alpha, <double *> b, &ldb, <double *> a, &lda, &beta,
              c, &ldc)


cdef inline Py_ssize_t packed_size(Py_ssize_t K, Py_ssize_t N, bint double) noexcept nogil:
    return fastrnn_packed_size_f64(K, N) if double else fastrnn_packed_size_f32(K, N)


cdef inline Py_ssize_t panel(floating dummy) noexcept nogil:
    """Columns per panel of a packed matrix."""
    return FASTRNN_PANEL_F32 if floating is float else FASTRNN_PANEL_F64


def forward_pack_size(int cell, Py_ssize_t P, Py_ssize_t H, bint double):
    """Elements of forward()'s `wpack`: W_hh^T packed for the own kernels (GRU_B packs its
    r,z and n blocks apart)."""
    if cell == GRU_B:
        return packed_size(H, 2 * H, double) + packed_size(H, H, double)
    return packed_size(P, num_gates(cell) * H, double)


def input_pack_size(Py_ssize_t I, Py_ssize_t GH, bint double):
    """Elements of forward()'s `ipack`: the folded bias (G*H,), then W_ih^T packed."""
    return GH + packed_size(I, GH, double)


def backward_pack_size(int cell, Py_ssize_t P, Py_ssize_t H, bint double):
    """Elements of backward()'s `wpack`: W_hh packed."""
    return packed_size(num_gates(cell) * H, P, double)


def backward_input_pack_size(Py_ssize_t GH, Py_ssize_t I, bint double):
    """Elements of backward()'s `ipack`: W_ih packed for dX by rows."""
    return packed_size(GH, I, double)


def gemm_buffer_size(Py_ssize_t GH, bint double):
    """Elements of one thread's scratch for the whole-sequence weight-gradient products
    (the largest has G*H rows)."""
    return fastrnn_gemm_tn_buffer_f64(GH) if double else fastrnn_gemm_tn_buffer_f32(GH)


cdef inline void pack_cols(Py_ssize_t K, Py_ssize_t N, Py_ssize_t c0, Py_ssize_t c1, bint trans,
                           const floating *w, Py_ssize_t ldw, floating *packed) noexcept nogil:
    """Columns c0..c1-1 (c0 a multiple of the vector width) of pack()'s result."""
    if c1 <= c0 and c1 < N:
        return
    if floating is float:
        fastrnn_pack_cols_f32(K, N, c0, c1, trans, w, ldw, packed)
    else:
        fastrnn_pack_cols_f64(K, N, c0, c1, trans, w, ldw, packed)


cdef inline void pack(Py_ssize_t K, Py_ssize_t N, bint trans, const floating *w, Py_ssize_t ldw,
                      floating *packed) noexcept nogil:
    """packed := w (K, N), or w^T when w is (N, K) (trans), in the kernel's panels."""
    if floating is float:
        fastrnn_pack_f32(K, N, trans, w, ldw, packed)
    else:
        fastrnn_pack_f64(K, N, trans, w, ldw, packed)


cdef inline void pack_both(Py_ssize_t K, Py_ssize_t N, const floating *w, Py_ssize_t ldw,
                           floating *packed_t, floating *packed) noexcept nogil:
    """packed_t := w^T and packed := w (w (N, K)) in the kernel's panels, from one read of w."""
    if floating is float:
        fastrnn_pack_both_f32(K, N, w, ldw, packed_t, packed)
    else:
        fastrnn_pack_both_f64(K, N, w, ldw, packed_t, packed)


cdef inline void pack_recurrent(const Seq *q, floating dummy) noexcept nogil:
    """q.pk := W_hh^T packed for the forward product (GRU_B: its r and z blocks, and the n
    block apart in q.pk_n); with q.pack_both, backward's pack of W_hh (q.bpk) too."""
    cdef const floating *w_hh = <const floating *> q.w_hh
    cdef Py_ssize_t H = q.H
    if q.cell == GRU_B:
        pack(H, 2 * H, True, w_hh, H, <floating *> q.pk)
        pack(H, H, True, w_hh + 2 * H * H, H, <floating *> q.pk_n)
    elif q.pack_both:
        pack_both(q.P, q.GH, w_hh, q.P, <floating *> q.pk, <floating *> q.bpk)
    else:
        pack(q.P, q.GH, True, w_hh, q.P, <floating *> q.pk)


cdef inline void recurrent_matmul(int n, int cols, int K, const floating *a, int lda,
                                  const floating *packed, Py_ssize_t panel_stride,
                                  bint accumulate, floating *out, int ldout,
                                  bint reverse) noexcept nogil:
    """out (n, cols) := a (n, K) @ the packed weights (K, cols) (+ out if accumulate).

    The per-step product: every step of every cell goes through here (op(w) packed once
    per call)."""
    if floating is float:
        fastrnn_small_gemm_f32(n, cols, K, a, lda, packed, panel_stride, accumulate, out,
                               ldout, reverse)
    else:
        fastrnn_small_gemm_f64(n, cols, K, a, lda, packed, panel_stride, accumulate, out,
                               ldout, reverse)


cdef inline void fill_rows(Py_ssize_t rows, Py_ssize_t cols, const floating *v,
                           floating *out) noexcept nogil:
    """out (rows, cols) := v broadcast over rows."""
    cdef Py_ssize_t r
    for r in range(rows):
        memcpy(out + r * cols, v, cols * sizeof(floating))


cdef inline void add_rows(Py_ssize_t rows, Py_ssize_t cols, const floating *a,
                          floating *out) noexcept nogil:
    """out (rows, cols) += a (rows, cols)."""
    cdef Py_ssize_t k
    for k in range(rows * cols):
        out[k] += a[k]


cdef inline void column_sums(Py_ssize_t rows, Py_ssize_t cols, const floating *a,
                             Py_ssize_t lda, floating *out) noexcept nogil:
    """out (cols,) := sum over rows of a (rows, cols), row stride lda."""
    if floating is float:
        fastrnn_column_sums_f32(rows, cols, a, lda, out)
    else:
        fastrnn_column_sums_f64(rows, cols, a, lda, out)


# ---------------------------------------------------------------------------------------
# Layout conversion
# ---------------------------------------------------------------------------------------

def gather_steps(const floating[:, :, ::1] src,     # IN  (T, B, F) user layout
                 const int64_t[::1] lengths,        # IN  (B,) each in [0, T]
                 const int64_t[::1] order,          # IN  (B,) rows, longest first
                 bint reverse,
                 floating[:, :, ::1] dst):          # OUT (S, B, F) compact, zero past length
    """dst[s, j] = src[t, order[j]] with t = s, or len - 1 - s in reverse; zero past length."""
    cdef Py_ssize_t S = dst.shape[0], B = dst.shape[1], F = dst.shape[2]
    cdef Py_ssize_t s, j, t, length
    if not (src.shape[1] == B == lengths.shape[0] == order.shape[0] and src.shape[2] == F
            and S <= src.shape[0]):
        raise ValueError("gather_steps: inconsistent shapes (a bug in fastrnn)")
    with nogil:
        for s in range(S):
            for j in range(B):
                length = lengths[order[j]]
                if s < length:
                    t = length - 1 - s if reverse else s
                    memcpy(&dst[s, j, 0], &src[t, order[j], 0], F * sizeof(floating))
                else:
                    memset(&dst[s, j, 0], 0, F * sizeof(floating))


def scatter_steps(const floating[:, :, ::1] src,    # IN  (S, B, F) compact
                  const int64_t[::1] lengths,       # IN  (B,)
                  const int64_t[::1] order,         # IN  (B,)
                  bint reverse,
                  floating[:, :, ::1] dst):         # OUT (T, B, F) user layout, zero past length
    """The inverse of gather_steps: dst[t, order[j]] = src[s, j]; zero where t >= length."""
    cdef Py_ssize_t T = dst.shape[0], B = dst.shape[1], F = dst.shape[2]
    cdef Py_ssize_t s, j, t, b, length
    if not (src.shape[1] == B == lengths.shape[0] == order.shape[0] and src.shape[2] == F
            and src.shape[0] <= T):
        raise ValueError("scatter_steps: inconsistent shapes (a bug in fastrnn)")
    with nogil:
        for j in range(B):
            b = order[j]
            length = lengths[b]
            for t in range(T):
                if t < length:
                    s = length - 1 - t if reverse else t
                    memcpy(&dst[t, b, 0], &src[s, j, 0], F * sizeof(floating))
                else:
                    memset(&dst[t, b, 0], 0, F * sizeof(floating))


# ---------------------------------------------------------------------------------------
# The time loops, over a range of compact rows
# ---------------------------------------------------------------------------------------
#
# Rows of a batch never interact, so a call splits its compact rows into contiguous ranges
# (fastrnn/_layer.py balances them by token count) and runs each range's whole time loop on
# its own thread, with no barrier between steps. Each row's numbers are computed by the same
# operations in the same order whatever the split, so results are bit-identical for any
# thread count.

cdef struct Seq:
    # What one forward() or backward() call shares with its row ranges. Buffers are of
    # the call's float type; the row functions cast them back. Shapes as in forward().
    int cell
    bint training
    bint proj
    Py_ssize_t S, B, H, P, GH, NH, NA
    const int64_t *lengths
    const int64_t *order
    const void *w_hh
    const void *w_hr
    const void *b_hh
    const void *pk          # W_hh^T (forward) or W_hh (backward) packed
    const void *pk_n        # GRU_B forward: W_hn^T packed apart
    Py_ssize_t panel_stride
    const void *xc          # forward: (S, B, I) input, when its projection is done per range
    Py_ssize_t n_in         # I (the name I is taken by complex.h)
    const void *ipk         # forward: W_ih^T packed; backward: W_ih packed (for dX)
    const void *w_ih        # (G*H, I)
    bint pack_units         # the unit-split threads pack W_hh and W_ih themselves
    bint pack_late          # the one row range packs W_hh^T after its first projection
    bint pack_both          # training: forward's packs of W_hh and W_ih fill backward's too
    void *bpk               # forward in training: backward's W_hh pack to fill, or NULL
    void *bipk              # forward in training: backward's W_ih pack (for dX) to fill
    void *xsave             # forward in training: the tape's copy of xc to fill, or NULL
    const void *bias        # (G*H,) the biases folded into the input projection
    Py_ssize_t chunk        # steps xproj holds: step s at (s % chunk)
    fastrnn_pipe *pipe      # a helper thread projects the input ahead (run_pipe), or NULL
    Py_ssize_t pipe_steps   # steps of one of the pipe's chunks (chunk is a multiple)
    void *hs
    void *cs
    void *acts
    void *hraw
    void *work
    void *yc                # forward: OUT; backward: dL/dy (IN)
    void *dgh
    void *dhs


cdef inline void zero_saved_rows(const Seq *q, floating *hs, Py_ssize_t s, Py_ssize_t first,
                                 Py_ssize_t last) noexcept nogil:
    """Zero what training saved at step s for rows first..last-1 (rows that have finished),
    so that they add nothing to backward's whole-sequence GEMMs."""
    cdef Py_ssize_t rows = last - first, B = q.B, H = q.H
    memset(hs + ((s + 1) * B + first) * q.P, 0, rows * q.P * sizeof(floating))
    if q.cell == LSTM:
        memset(<floating *> q.cs + ((s + 1) * B + first) * H, 0, rows * H * sizeof(floating))
    if q.NA > 0:
        memset(<floating *> q.acts + (s * B + first) * 4 * H, 0, rows * 4 * H * sizeof(floating))
    if q.proj:
        memset(<floating *> q.hraw + (s * B + first) * H, 0, rows * H * sizeof(floating))


# Elements of the input projection computed ahead of the time loop at a time (512 KiB in
# float32), into a ring that holds that many steps. Projecting a whole sequence first wrote
# and read back its output through memory: the own kernel ran (6400 x 256) x (256 x 1024),
# the projection of (T, B, I) = (100, 64, 256) for 1024 gate columns, at 68 GFLOP/s, and
# (384 x 256) x (256 x 1024) at 106 (one core, alone). A 2 MiB ring still pushed W_hh (1 MiB
# at H = 256) out of the 1 MiB L2 each chunk: LSTM inference (100, 64, 256, 256) took 69-73 ms
# with it and 67-68 with this one, (50, 64, 512, 512) 133-135 and 128 (one thread, AMD EPYC).
DEF PROJECTION_CHUNK = 1 << 17
# The ring where W_ih^T is at least half of L2 (_threads.wide_projection): 4 MiB in float32.
# With W_ih^T that large, a 512 KiB ring (one or two steps at batch 64) streamed all of it
# back from L3 for every chunk; this one projects 4-16 steps per pass over it. Measured on
# the 2-core Xeon (2 MiB L2), new / old, inference: LSTM (50, 64, 512, 512) one thread 0.951
# (in-process A/B, 8 rounds), two threads 41.0-41.5 against 43.1-43.3 ms; GRU there 0.971 and
# 31.8-32.5 against 33.5; LSTM (100, 64, 256, 256) 0.988 and 20.8-21.0 against 21.3-21.9;
# while LSTM (100, 16, 128, 128), whose W_ih^T is 256 KiB, lost (1.047) with it.
DEF PROJECTION_CHUNK_WIDE = 1 << 20


def projection_steps(Py_ssize_t batch, Py_ssize_t S, Py_ssize_t GH, bint wide=False):
    """Steps of forward()'s `xproj` ring: as many as PROJECTION_CHUNK elements hold
    (PROJECTION_CHUNK_WIDE when `wide`), at most S."""
    cdef Py_ssize_t elements = PROJECTION_CHUNK_WIDE if wide else PROJECTION_CHUNK
    return min(S, max(1, elements // max(1, batch * GH)))


cdef inline void save_input(const Seq *q, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t s0,
                            Py_ssize_t steps, floating dummy) noexcept nogil:
    """Rows r0..r1-1 of steps s0..s0+steps-1 of the input into q.xsave, the copy that a
    training pass keeps for backward (the caller may reuse its x before then). Each thread
    copies what it projects, as it projects it: copied in Python beforehand, by the main
    thread alone while the other waited, it cost 2.7% of an LSTM (100, 16, 128, 128)
    training step on 2 threads (4.2% for a GRU)."""
    cdef Py_ssize_t B = q.B, I = q.n_in, s
    cdef const floating *src = <const floating *> q.xc
    cdef floating *dst = <floating *> q.xsave
    if dst == NULL or steps <= 0 or r1 <= r0:
        return
    if r0 == 0 and r1 == B:
        memcpy(dst + s0 * B * I, src + s0 * B * I, steps * B * I * sizeof(floating))
        return
    for s in range(s0, s0 + steps):
        memcpy(dst + (s * B + r0) * I, src + (s * B + r0) * I, (r1 - r0) * I * sizeof(floating))


cdef inline void project_steps(const Seq *q, floating *xproj, Py_ssize_t r0, Py_ssize_t r1,
                               Py_ssize_t s0, Py_ssize_t steps) noexcept nogil:
    """xproj of rows r0..r1-1 at steps s0..s0+steps-1 (ring slots s0 % q.chunk onwards,
    which must not wrap around) := x W_ih^T + folded biases, by the own kernel in one pass
    (each panel of W_ih^T stays in cache while the rows pass), the biases added as it stores:
    the numbers of the product added onto rows filled with them first. That fill pass (a
    memcpy per row) was 1.4% of LSTM (100, 64, 256, 256) inference; without it, one thread,
    in one process (new / with the fill): 0.984 there, 0.983 at (50, 64, 512, 512), 0.995
    at (200, 32, 128, 256), GRU (100, 64, 256, 256) training 0.978, batch 1 0.99-1.01. (On
    the AMD EPYC of sessions 1-11, with an older kernel, the store-time bias measured
    slower: 72 vs 68 ms at (100, 64, 256, 256).)"""
    cdef Py_ssize_t B = q.B, GH = q.GH, I = q.n_in, rows = r1 - r0
    save_input(q, r0, r1, s0, steps, <floating> 0)  # (first: x then comes to the product hot)
    xproj += (s0 % q.chunk) * B * GH
    if floating is float:
        fastrnn_small_gemm_blocks_f32(steps, rows, GH, I,
                                      <const float *> q.xc + (s0 * B + r0) * I, B * I, I,
                                      <const float *> q.ipk, I * panel(<floating> 0), False,
                                      <const float *> q.bias, xproj + r0 * GH, B * GH, GH)
    else:
        fastrnn_small_gemm_blocks_f64(steps, rows, GH, I,
                                      <const double *> q.xc + (s0 * B + r0) * I, B * I, I,
                                      <const double *> q.ipk, I * panel(<floating> 0), False,
                                      <const double *> q.bias, xproj + r0 * GH, B * GH, GH)


cdef inline floating *state_before(const Seq *q, Py_ssize_t s, Py_ssize_t r0,
                                   floating dummy) noexcept nogil:
    """Row r0's state before step s. Training keeps every state in hs (backward reads
    them); inference reads the previous step's output in yc, or the initial state in hs[0],
    so that no step copies its state into yc."""
    if q.training:
        return <floating *> q.hs + (s * q.B + r0) * q.P
    if s == 0:
        return <floating *> q.hs + r0 * q.P
    return <floating *> q.yc + ((s - 1) * q.B + r0) * q.P


cdef inline floating *state_after(const Seq *q, Py_ssize_t s, Py_ssize_t r0,
                                  floating dummy) noexcept nogil:
    """Where step s writes row r0's new state: hs[s + 1] in training, else yc[s]."""
    if q.training:
        return <floating *> q.hs + ((s + 1) * q.B + r0) * q.P
    return <floating *> q.yc + (s * q.B + r0) * q.P


cdef void forward_rows(const Seq *q, floating *xproj, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    """Steps 0..S-1 of compact rows r0..r1-1: recurrent product and gate math per step."""
    cdef int cell = q.cell
    cdef bint relu = cell == RNN_RELU, training = q.training
    cdef Py_ssize_t H = q.H, P = q.P, GH = q.GH, B = q.B, NH = q.NH, ps = q.panel_stride
    cdef const floating *w_hr = <const floating *> q.w_hr
    cdef const floating *b_hh = <const floating *> q.b_hh
    cdef const floating *pk = <const floating *> q.pk
    cdef const floating *pk_n = <const floating *> q.pk_n
    cdef floating *hs = <floating *> q.hs
    cdef floating *cs = <floating *> q.cs
    cdef floating *yc = <floating *> q.yc
    cdef floating *work = <floating *> q.work + r0 * 3 * H
    cdef floating *pre
    cdef floating *hp
    cdef floating *hn
    cdef floating *cp
    cdef floating *cn
    cdef floating *act
    cdef floating *hcell
    cdef Py_ssize_t s, rows = r1 - r0, n = r1 - r0, steps = 0
    cdef Py_ssize_t vw = FASTRNN_VECTOR_F32 if floating is float else FASTRNN_VECTOR_F64
    # one row on packed weights, no vector of columns across two gates: LSTM and GRU steps
    # take the fused kernel (fastrnn_step.h)
    cdef bint fused = rows == 1 and H % vw == 0
    # the input projection runs a chunk of steps ahead of the loop, so that the chunk is
    # still in cache when its steps read it (the whole sequence's projection at (T, B, H) =
    # (100, 64, 1024 gate columns) is 26 MB: written, then read back from memory)
    cdef Py_ssize_t chunk = q.chunk
    cdef Py_ssize_t c = q.pipe_steps
    for s in range(q.S):
        if q.pipe != NULL:
            if s % c == 0:  # chunk s / c: from the helper, or projected here if not claimed
                if s > 0:
                    fastrnn_pipe_consumed(q.pipe, s // c - 1)
                if fastrnn_pipe_need(q.pipe, s // c):
                    project_steps(q, xproj, r0, r1, s, min(c, q.S - s))
        elif s % chunk == 0:
            project_steps(q, xproj, r0, r1, s, min(chunk, q.S - s))
            if s == 0 and q.pack_late:
                pack_recurrent(q, <floating> 0)
        # rows of this range still running at step s (a prefix: rows are longest first)
        while n > 0 and q.lengths[q.order[r0 + n - 1]] <= s:
            n -= 1
        if n == 0:
            break
        pre = xproj + ((s % chunk) * B + r0) * GH
        hp = state_before(q, s, r0, <floating> 0)
        hn = state_after(q, s, r0, <floating> 0)
        if training:
            act = <floating *> q.acts + (s * B + r0) * 4 * H if q.NA > 0 else NULL
        elif cell == GRU_B:
            act = <floating *> q.acts + r0 * 4 * H  # one step of scratch
        else:
            act = NULL
        # (2) the recurrent product and the step's gate math
        if cell == RNN_TANH or cell == RNN_RELU:
            recurrent_matmul(<int> n, <int> GH, <int> P, hp, <int> P, pk, ps, True, pre,
                             <int> GH, s & 1)
            if floating is float:
                fastrnn_rnn_gates_fwd_f32(n, H, 0, H, relu, pre, hn)
            else:
                fastrnn_rnn_gates_fwd_f64(n, H, 0, H, relu, pre, hn)
        elif cell == LSTM:
            cp = cs + ((s % NH) * B + r0) * H
            cn = cs + (((s + 1) % NH) * B + r0) * H
            if not q.proj:
                hcell = hn
            elif training:
                hcell = <floating *> q.hraw + (s * B + r0) * H
            else:
                hcell = work
            if fused:  # the gate math inside the product
                if floating is float:
                    fastrnn_lstm_step_row_f32(H, P, hp, pk, ps, s & 1, pre, cp, act, cn, hcell)
                else:
                    fastrnn_lstm_step_row_f64(H, P, hp, pk, ps, s & 1, pre, cp, act, cn, hcell)
            else:
                # the whole product, then the gate math over every unit. Running each block of
                # a panel's 64 units' gate math right after its four gates' tiles (their sums
                # still in cache) measured no faster: LSTM (100, 64, 256, 256), 1 thread,
                # new / old 1.005 (in-process A/B, 8 rounds)
                recurrent_matmul(<int> n, <int> GH, <int> P, hp, <int> P, pk, ps, True, pre,
                                 <int> GH, s & 1)
                if floating is float:
                    fastrnn_lstm_gates_fwd_f32(n, H, 0, H, pre, cp, act, cn, hcell)
                else:
                    fastrnn_lstm_gates_fwd_f64(n, H, 0, H, pre, cp, act, cn, hcell)
            if q.proj:  # h = W_hr (o * tanh(c))
                gemm(False, True, <int> n, <int> P, <int> H, <floating> 1, hcell, <int> H,
                     w_hr, <int> H, <floating> 0, hn, <int> P)
        elif cell == GRU and fused:  # r and z inside the product
            if floating is float:
                fastrnn_gru_step_row_f32(H, P, hp, pk, ps, s & 1, b_hh, pre, work, act, hn)
            else:
                fastrnn_gru_step_row_f64(H, P, hp, pk, ps, s & 1, b_hh, pre, work, act, hn)
        elif cell == GRU:
            fill_rows(n, GH, b_hh, work)
            recurrent_matmul(<int> n, <int> GH, <int> P, hp, <int> P, pk, ps, True, work,
                             <int> GH, s & 1)
            if floating is float:
                fastrnn_gru_gates_fwd_f32(n, H, 0, H, pre, work, hp, act, hn)
            else:
                fastrnn_gru_gates_fwd_f64(n, H, 0, H, pre, work, hp, act, hn)
        else:  # GRU_B: (B1) needs r before the n-gate's product can start
            recurrent_matmul(<int> n, <int> (2 * H), <int> H, hp, <int> H, pk, ps, True, pre,
                             <int> GH, s & 1)
            if floating is float:
                fastrnn_grub_rz_fwd_f32(n, H, pre, hp, act, work)
            else:
                fastrnn_grub_rz_fwd_f64(n, H, pre, hp, act, work)
            recurrent_matmul(<int> n, <int> H, <int> H, work, <int> H, pk_n, ps, True,
                             pre + 2 * H, <int> GH, s & 1)
            if floating is float:
                fastrnn_grub_n_fwd_f32(n, H, pre, hp, act, hn)
            else:
                fastrnn_grub_n_fwd_f64(n, H, pre, hp, act, hn)
        if training:
            memcpy(yc + (s * B + r0) * P, hn, n * P * sizeof(floating))
        if n < rows:
            memset(yc + (s * B + r0 + n) * P, 0, (rows - n) * P * sizeof(floating))
            if training:
                zero_saved_rows(q, hs, s, r0 + n, r1)
        steps = s + 1
    if q.pipe != NULL:
        fastrnn_pipe_close(q.pipe)
    # steps after every row of the range has finished
    for s in range(steps, q.S):
        memset(yc + (s * B + r0) * P, 0, rows * P * sizeof(floating))
        if training:
            zero_saved_rows(q, hs, s, r0, r1)


cdef void backward_rows(const Seq *q, floating *dgx, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    """Steps S-1..0 of compact rows r0..r1-1: gate gradients and the recurrent product."""
    cdef int cell = q.cell
    cdef bint relu = cell == RNN_RELU
    cdef Py_ssize_t H = q.H, P = q.P, GH = q.GH, B = q.B, ps = q.panel_stride
    cdef const floating *w_hr = <const floating *> q.w_hr
    cdef const floating *pk = <const floating *> q.pk
    cdef const floating *hs = <const floating *> q.hs
    cdef const floating *cs = <const floating *> q.cs
    cdef const floating *acts = <const floating *> q.acts
    cdef const floating *dyc = <const floating *> q.yc
    cdef floating *dh = <floating *> q.work + r0 * P          # (B, P)
    cdef floating *dc = <floating *> q.work + (B + r0) * H    # (B, H)
    cdef floating *tmp = <floating *> q.work + (2 * B + r0) * H
    cdef floating *dg
    cdef floating *dgh
    cdef const floating *hp
    cdef const floating *act
    cdef floating *hcell
    cdef Py_ssize_t s, rows = r1 - r0, n = 0
    for s in range(q.S - 1, -1, -1):
        # rows of this range running at step s: those with length > s
        while n < rows and q.lengths[q.order[r0 + n]] > s:
            n += 1
        dg = dgx + (s * B + r0) * GH
        dgh = <floating *> q.dgh + (s * B + r0) * H  # GRU: gradient of hh_n (A2)
        if n < rows:  # finished rows hold zero gate gradients
            memset(dg + n * GH, 0, (rows - n) * GH * sizeof(floating))
            if cell == GRU:
                memset(dgh + n * H, 0, (rows - n) * H * sizeof(floating))
            if q.proj:
                memset(<floating *> q.dhs + (s * B + r0 + n) * P, 0,
                       (rows - n) * P * sizeof(floating))
        if n == 0:
            continue
        add_rows(n, P, dyc + (s * B + r0) * P, dh)
        hp = hs + (s * B + r0) * P
        act = acts + (s * B + r0) * 4 * H
        if cell == RNN_TANH or cell == RNN_RELU:
            if floating is float:
                fastrnn_rnn_gates_bwd_f32(n, H, 0, H, relu, hs + ((s + 1) * B + r0) * P, dh, dg)
            else:
                fastrnn_rnn_gates_bwd_f64(n, H, 0, H, relu, hs + ((s + 1) * B + r0) * P, dh, dg)
            # dh_prev = dpre W_hh
            recurrent_matmul(<int> n, <int> H, <int> GH, dg, <int> GH, pk, ps, False, dh,
                             <int> H, s & 1)
        elif cell == LSTM:
            hcell = dh
            if q.proj:  # h = W_hr (o * tanh(c)): keep dh for dW_hr, pass dh W_hr down
                memcpy(<floating *> q.dhs + (s * B + r0) * P, dh, n * P * sizeof(floating))
                gemm(False, False, <int> n, <int> H, <int> P, <floating> 1, dh, <int> P, w_hr,
                     <int> H, <floating> 0, tmp, <int> H)
                hcell = tmp
            if floating is float:
                fastrnn_lstm_gates_bwd_f32(n, H, 0, H, act, cs + (s * B + r0) * H,
                                           cs + ((s + 1) * B + r0) * H, hcell, dc, dg)
            else:
                fastrnn_lstm_gates_bwd_f64(n, H, 0, H, act, cs + (s * B + r0) * H,
                                           cs + ((s + 1) * B + r0) * H, hcell, dc, dg)
            recurrent_matmul(<int> n, <int> P, <int> GH, dg, <int> GH, pk, ps, False, dh,
                             <int> P, s & 1)
        elif cell == GRU:
            if floating is float:
                fastrnn_gru_gates_bwd_f32(n, H, 0, H, act, hp, dh, dg, dgh, tmp)
            else:
                fastrnn_gru_gates_bwd_f64(n, H, 0, H, act, hp, dh, dg, dgh, tmp)
            # (A1)-(A2) through hh = W_hh h_prev + b_hh
            recurrent_matmul(<int> n, <int> H, <int> (2 * H), dg, <int> GH, pk, ps, True, tmp,
                             <int> H, s & 1)
            recurrent_matmul(<int> n, <int> H, <int> H, dgh, <int> H,
                             pk + 2 * H * panel(<floating> 0), ps, True, tmp, <int> H, s & 1)
            memcpy(dh, tmp, n * H * sizeof(floating))
        else:  # GRU_B
            if floating is float:
                fastrnn_grub_n_bwd_f32(n, H, act, hp, dh, dg, tmp)
            else:
                fastrnn_grub_n_bwd_f64(n, H, act, hp, dh, dg, tmp)
            # (B2): d rh = d a_n W_hn, into dh (free now)
            recurrent_matmul(<int> n, <int> H, <int> H, dg + 2 * H, <int> GH,
                             pk + 2 * H * panel(<floating> 0), ps, False, dh, <int> H, s & 1)
            if floating is float:
                fastrnn_grub_rz_bwd_f32(n, H, act, hp, dh, dg, tmp)
            else:
                fastrnn_grub_rz_bwd_f64(n, H, act, hp, dh, dg, tmp)
            # (B1): through a_r, a_z = ... + W_h{r,z} h_prev
            recurrent_matmul(<int> n, <int> H, <int> (2 * H), dg, <int> GH, pk, ps, True, tmp,
                             <int> H, s & 1)
            memcpy(dh, tmp, n * H * sizeof(floating))
    # dX = dG W_ih for this range's rows of every step (rows past an end hold dG = 0)
    if floating is float:
        fastrnn_small_gemm_blocks_f32(q.S, rows, q.n_in, GH, dgx + r0 * GH, B * GH, GH,
                                      <const float *> q.ipk, GH * panel(<floating> 0),
                                      False, NULL, <float *> q.xc + r0 * q.n_in, B * q.n_in,
                                      q.n_in)
    else:
        fastrnn_small_gemm_blocks_f64(q.S, rows, q.n_in, GH, dgx + r0 * GH, B * GH, GH,
                                      <const double *> q.ipk, GH * panel(<floating> 0),
                                      False, NULL, <double *> q.xc + r0 * q.n_in, B * q.n_in,
                                      q.n_in)


# ---------------------------------------------------------------------------------------
# A step shared by hidden units
# ---------------------------------------------------------------------------------------
#
# At batch 1 there are no rows to split, and a step is a matrix-vector product that reads
# all of W_hh; with a few rows, row ranges would leave each thread streaming all of W_hh
# for one or two rows. Instead each of nt threads takes a range of hidden units (of every
# gate) of every row, so that it reads only its part of W_hh (which then stays in its
# core's cache) and meets the others at a barrier once a step, when the new state is
# complete. Rows other than batch 1's must all run every step (no lengths to follow). Each
# unit's numbers come from the same operations in the same order as in forward_rows /
# backward_rows, so results do not depend on the split. Cells: RNN, LSTM without
# projection, GRU "reset after".


cdef inline void unit_range(Py_ssize_t H, int t, int nt, floating dummy, Py_ssize_t *j0,
                            Py_ssize_t *j1) noexcept nogil:
    """Thread t's units j0..j1-1, in whole vectors: each thread's range then splits into
    vector body and remainder where the whole range does, so the vectorised gate math gives
    every unit the same numbers whatever the split."""
    cdef Py_ssize_t vw = FASTRNN_VECTOR_F32 if floating is float else FASTRNN_VECTOR_F64
    cdef Py_ssize_t blocks = (H + vw - 1) // vw
    j0[0] = min(H, blocks * t // nt * vw)
    j1[0] = min(H, blocks * (t + 1) // nt * vw)


cdef inline void gemm_cols(Py_ssize_t n, Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t K,
                           const floating *a, Py_ssize_t lda, const floating *packed,
                           Py_ssize_t ps, bint accumulate, floating *c, Py_ssize_t ldc,
                           const floating *bias=NULL, bint reverse=False) noexcept nogil:
    """Columns c0..c1-1 of c (n, N) := a (n, K) @ packed (+ c if accumulate, else + bias
    (N,) if given); `reverse` visits the panels last to first (the same numbers)."""
    if c1 <= c0:
        return
    if floating is float:
        fastrnn_small_gemm_cols_f32(n, c0, c1, K, a, lda, packed, ps, accumulate, bias, c, ldc,
                                    reverse)
    else:
        fastrnn_small_gemm_cols_f64(n, c0, c1, K, a, lda, packed, ps, accumulate, bias, c, ldc,
                                    reverse)


cdef inline void gate_cols(int G, Py_ssize_t H, Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t K,
                           const floating *a, const floating *packed, Py_ssize_t ps,
                           floating *c, bint reverse) noexcept nogil:
    """Units j0..j1-1 of every gate of the row c (G*H,) += a (K,) @ packed (K, G*H), every
    gate's range in a single pass (last to first if `reverse`: the same numbers)."""
    cdef int g
    cdef Py_ssize_t c0[4]
    cdef Py_ssize_t c1[4]
    if j1 <= j0:
        return
    for g in range(G):
        c0[g], c1[g] = g * H + j0, g * H + j1
    if floating is float:
        fastrnn_matvec_ranges_f32(G, c0, c1, K, a, packed, ps, True, c, reverse)
    else:
        fastrnn_matvec_ranges_f64(G, c0, c1, K, a, packed, ps, True, c, reverse)


cdef inline void unit_product(int G, Py_ssize_t B, Py_ssize_t H, Py_ssize_t j0, Py_ssize_t j1,
                              Py_ssize_t K, const floating *a, const floating *packed,
                              Py_ssize_t ps, floating *c, Py_ssize_t ldc,
                              bint reverse) noexcept nogil:
    """Units j0..j1-1 of every gate of the B rows c (B, ldc) += a (B, K) @ packed: one row in
    a single pass over the gates (matvec chains across them), more rows a tile per gate, the
    gates' panels last to first if `reverse` (the same numbers)."""
    cdef int g, i
    if B == 1:
        gate_cols(G, H, j0, j1, K, a, packed, ps, c, reverse)
        return
    for i in range(G):
        g = G - 1 - i if reverse else i
        gemm_cols(B, g * H + j0, g * H + j1, K, a, K, packed, ps, True, c, ldc, NULL, reverse)


cdef void forward_units(const Seq *q, floating *xproj, int t, int nt,
                        fastrnn_barrier *barrier) noexcept nogil:
    """Thread t's hidden units of every row of a forward pass shared by units, every step
    (rows other than batch 1's all run every step)."""
    cdef int cell = q.cell, G = num_gates(cell), g
    cdef bint relu = cell == RNN_RELU
    cdef Py_ssize_t H = q.H, GH = q.GH, NH = q.NH, ps = q.panel_stride, I = q.n_in, B = q.B
    cdef Py_ssize_t S = q.S, length = q.lengths[0], s, j0, j1, r, steps = 0
    cdef const floating *pk = <const floating *> q.pk
    cdef const floating *b_hh = <const floating *> q.b_hh
    cdef const floating *bias = <const floating *> q.bias
    cdef floating *hs = <floating *> q.hs
    cdef floating *cs = <floating *> q.cs
    cdef floating *yc = <floating *> q.yc
    cdef floating *work = <floating *> q.work
    cdef floating *pre
    cdef floating *hp
    cdef floating *hn
    cdef floating *act
    unit_range(H, t, nt, <floating> 0, &j0, &j1)
    cdef Py_ssize_t chunk = q.chunk, s0, steps_in, vw = panel(<floating> 0) // 4
    cdef Py_ssize_t blocks = (GH + vw - 1) // vw, c0, c1
    # whole vectors a gate: each thread packs exactly its own columns (below)
    cdef bint own_columns = H % vw == 0
    # the tape's copy of the input (nothing reads it before backward): a share of the steps
    save_input(q, 0, B, S * t // nt, S * (t + 1) // nt - S * t // nt, <floating> 0)
    if q.pack_units:
        if own_columns:
            # the columns of W_hh^T and W_ih^T this thread reads, its units of every gate,
            # and no others: they are then in its own core's cache, and no thread waits
            if j1 > j0:
                for g in range(G):
                    pack_cols(H, GH, g * H + j0, g * H + j1, True, <const floating *> q.w_hh,
                              H, <floating *> q.pk)
                    pack_cols(I, GH, g * H + j0, g * H + j1, True, <const floating *> q.w_ih,
                              I, <floating *> q.ipk)
        else:
            # a share of the column blocks of W_hh^T and of W_ih^T each, packed in parallel;
            # every thread reads columns of every gate, packed by others too: hence the barrier
            c0, c1 = min(GH, blocks * t // nt * vw), min(GH, blocks * (t + 1) // nt * vw)
            pack_cols(H, GH, c0, c1, True, <const floating *> q.w_hh, H, <floating *> q.pk)
            pack_cols(I, GH, c0, c1, True, <const floating *> q.w_ih, I, <floating *> q.ipk)
        if q.bpk != NULL:  # training: the backward pass's packs too (its snapshot of them)
            # (packed after the time loop instead, the last thing written before backward
            # reads them, they measured level: LSTM (100, 1, 256, 256) training, 2 threads,
            # new / old 1.000 [0.988-1.015] over 6 rounds)
            backward_pack_cols(q, <floating *> q.bpk, <floating *> q.bipk, t, nt)
        if not own_columns:
            fastrnn_barrier_wait(barrier, t, nt)
    for s in range(min(S, length)):
        if s % chunk == 0 and j1 > j0:
            # (1) this thread's columns of the input projection plus the folded biases, a
            # chunk of steps ahead; the product adds the biases as it stores (the numbers of
            # a product onto rows filled with them; filling them first took a memcpy per step
            # and gate: GRU (100, 1, 256, 256), 2 threads, memmove 3.0% of perf's samples)
            steps_in = min(chunk, S - s)
            for g in range(G):
                gemm_cols(steps_in * B, g * H + j0, g * H + j1, I,
                          <const floating *> q.xc + s * B * I, I, <const floating *> q.ipk,
                          I * panel(<floating> 0), False, xproj, GH, bias)
        pre = xproj + (s % chunk) * B * GH
        hp = state_before(q, s, 0, <floating> 0)
        hn = state_after(q, s, 0, <floating> 0)
        act = <floating *> q.acts + s * B * 4 * H if q.training and q.NA > 0 else NULL
        if j1 > j0:
            # (2) this thread's units: their columns of the recurrent product, gate math
            if cell == GRU:
                for r in range(B):
                    for g in range(G):
                        memcpy(work + r * GH + g * H + j0, b_hh + g * H + j0,
                               (j1 - j0) * sizeof(floating))
                unit_product(G, B, H, j0, j1, H, hp, pk, ps, work, GH, s & 1)
            else:
                unit_product(G, B, H, j0, j1, H, hp, pk, ps, pre, GH, s & 1)
            if cell == LSTM:
                if floating is float:
                    fastrnn_lstm_gates_fwd_f32(B, H, j0, j1, pre, cs + (s % NH) * B * H, act,
                                               cs + ((s + 1) % NH) * B * H, hn)
                else:
                    fastrnn_lstm_gates_fwd_f64(B, H, j0, j1, pre, cs + (s % NH) * B * H, act,
                                               cs + ((s + 1) % NH) * B * H, hn)
            elif cell == GRU:
                if floating is float:
                    fastrnn_gru_gates_fwd_f32(B, H, j0, j1, pre, work, hp, act, hn)
                else:
                    fastrnn_gru_gates_fwd_f64(B, H, j0, j1, pre, work, hp, act, hn)
            else:
                if floating is float:
                    fastrnn_rnn_gates_fwd_f32(B, H, j0, j1, relu, pre, hn)
                else:
                    fastrnn_rnn_gates_fwd_f64(B, H, j0, j1, relu, pre, hn)
            if q.training:
                for r in range(B):
                    memcpy(yc + (s * B + r) * H + j0, hn + r * H + j0,
                           (j1 - j0) * sizeof(floating))
        # every thread's part of h_s is written before any thread reads it
        fastrnn_barrier_wait(barrier, t, nt)
        steps = s + 1
    if t == 0:  # steps past the sequence's end (batch 1)
        for s in range(steps, S):
            memset(yc + s * B * H, 0, B * H * sizeof(floating))
            if q.training:
                zero_saved_rows(q, hs, s, 0, B)


cdef inline void backward_pack_cols(const Seq *q, floating *pk, floating *ipk, int t,
                                    int nt) noexcept nogil:
    """Thread t's columns of backward's packs of W_hh and W_ih: those it alone reads in
    backward_units (its units of dh_prev, its columns of dX), so threads pack them in
    parallel with no barrier. Together the nt threads' columns make pack()'s whole result.

    Why backward has packs of its own rather than reading forward's W_hh^T: dh_prev from
    W_hh^T's panels is a dot product of each unit's row in every panel with the step's gate
    gradients (16 units at a time, then a transpose to sum their lanes). Measured in C (LSTM
    H = 256, one thread's half of the units, the matrix in L2): 3.85-3.88 us a step against
    3.22-3.37 for the tile on this pack, so 100 steps would lose about what the pack costs."""
    cdef Py_ssize_t H = q.H, GH = q.GH, I = q.n_in, j0, j1, i0, i1
    unit_range(H, t, nt, <floating> 0, &j0, &j1)
    unit_range(I, t, nt, <floating> 0, &i0, &i1)
    pack_cols(GH, H, j0, j1, False, <const floating *> q.w_hh, H, pk)
    pack_cols(GH, I, i0, i1, False, <const floating *> q.w_ih, I, ipk)


cdef void backward_units(const Seq *q, floating *dgx, int t, int nt,
                         fastrnn_barrier *barrier) noexcept nogil:
    """Thread t's hidden units of every row of a backward pass shared by units, every step,
    and its columns of dX."""
    cdef int cell = q.cell, G = num_gates(cell), g
    cdef bint relu = cell == RNN_RELU
    cdef Py_ssize_t H = q.H, GH = q.GH, ps = q.panel_stride, I = q.n_in, B = q.B
    cdef Py_ssize_t S = q.S, length = q.lengths[0], s, j0, j1, i0, i1, r
    cdef const floating *pk = <const floating *> q.pk
    cdef const floating *hs = <const floating *> q.hs
    cdef const floating *cs = <const floating *> q.cs
    cdef const floating *acts = <const floating *> q.acts
    cdef const floating *dyc = <const floating *> q.yc
    cdef floating *dh = <floating *> q.work               # (B, H)
    cdef floating *dc = <floating *> q.work + B * H       # (B, H)
    cdef floating *tmp = <floating *> q.work + 2 * B * H  # (B, H)
    cdef floating *dg
    cdef floating *dgh
    cdef Py_ssize_t k
    unit_range(H, t, nt, <floating> 0, &j0, &j1)
    unit_range(I, t, nt, <floating> 0, &i0, &i1)
    for s in range(S - 1, -1, -1):
        dg = dgx + s * B * GH
        dgh = <floating *> q.dgh + s * B * H
        if s >= length:  # past the end (batch 1): zero gate gradients, the state's pass
            for g in range(G):
                memset(dg + g * H + j0, 0, (j1 - j0) * sizeof(floating))
            if cell == GRU:
                memset(dgh + j0, 0, (j1 - j0) * sizeof(floating))
            continue
        for r in range(B):
            for k in range(j0, j1):
                dh[r * H + k] += dyc[(s * B + r) * H + k]
        if cell == LSTM:
            if floating is float:
                fastrnn_lstm_gates_bwd_f32(B, H, j0, j1, acts + s * B * 4 * H, cs + s * B * H,
                                           cs + (s + 1) * B * H, dh, dc, dg)
            else:
                fastrnn_lstm_gates_bwd_f64(B, H, j0, j1, acts + s * B * 4 * H, cs + s * B * H,
                                           cs + (s + 1) * B * H, dh, dc, dg)
        elif cell == GRU:
            if floating is float:
                fastrnn_gru_gates_bwd_f32(B, H, j0, j1, acts + s * B * 4 * H, hs + s * B * H,
                                          dh, dg, dgh, tmp)
            else:
                fastrnn_gru_gates_bwd_f64(B, H, j0, j1, acts + s * B * 4 * H, hs + s * B * H,
                                          dh, dg, dgh, tmp)
        else:
            if floating is float:
                fastrnn_rnn_gates_bwd_f32(B, H, j0, j1, relu, hs + (s + 1) * B * H, dh, dg)
            else:
                fastrnn_rnn_gates_bwd_f64(B, H, j0, j1, relu, hs + (s + 1) * B * H, dh, dg)
        # every thread's gate gradients are written before any thread multiplies them
        fastrnn_barrier_wait(barrier, t, nt)
        # this thread's units of dh_prev = dG W_hh (GRU: direct part + r, z blocks + n block)
        if cell == GRU:
            gemm_cols(B, j0, j1, 2 * H, dg, GH, pk, ps, True, tmp, H, NULL, s & 1)
            gemm_cols(B, j0, j1, H, dgh, H, pk + 2 * H * panel(<floating> 0), ps, True, tmp, H,
                      NULL, s & 1)
            for r in range(B):
                memcpy(dh + r * H + j0, tmp + r * H + j0, (j1 - j0) * sizeof(floating))
        else:
            gemm_cols(B, j0, j1, GH, dg, GH, pk, ps, False, dh, H, NULL, s & 1)
    # this thread's columns of dX = dG W_ih, every step (needs every thread's dG)
    fastrnn_barrier_wait(barrier, t, nt)
    gemm_cols(S * B, i0, i1, GH, dgx, GH, <const floating *> q.ipk, GH * panel(<floating> 0),
              False, <floating *> q.xc, I)


cdef struct UnitJob:
    const Seq *q
    void *buf
    bint backward
    bint double
    fastrnn_barrier barrier


cdef void unit_task(void *ctx, int t, int nt) noexcept nogil:
    """Share t of a UnitJob, denormals flushed."""
    cdef UnitJob *job = <UnitJob *> ctx
    cdef unsigned csr = fastrnn_denormals_flush()
    if job.double and job.backward:
        backward_units(job.q, <double *> job.buf, t, nt, &job.barrier)
    elif job.double:
        forward_units(job.q, <double *> job.buf, t, nt, &job.barrier)
    elif job.backward:
        backward_units(job.q, <float *> job.buf, t, nt, &job.barrier)
    else:
        forward_units(job.q, <float *> job.buf, t, nt, &job.barrier)
    fastrnn_denormals_restore(csr)


cdef void run_units(const Seq *q, floating *buf, bint backward, int nt) noexcept nogil:
    """The one row of a batch-1 call, its hidden units shared by nt threads."""
    cdef UnitJob job
    job.q, job.buf, job.backward, job.double = q, buf, backward, floating is double
    fastrnn_barrier_init(&job.barrier)
    fastrnn_parallel_team(nt, unit_task, &job)


cdef inline bint units_apply(const Seq *q, int unit_threads) noexcept nogil:
    """Whether a call takes the hidden-unit split: more than one thread asked for, a cell it
    covers, and batch 1 or rows that all run every step."""
    return (unit_threads > 1 and q.B >= 1 and not q.proj and q.cell != GRU_B
            and (q.B == 1 or q.lengths[q.order[q.B - 1]] >= q.S))


cdef struct RowJob:
    const Seq *q
    void *buf
    const int64_t *bounds
    bint backward
    bint double


cdef void row_task(void *ctx, int t, int nt) noexcept nogil:
    """Share t of a RowJob: the rows bounds[t]..bounds[t+1], denormals flushed."""
    cdef const RowJob *job = <const RowJob *> ctx
    cdef unsigned csr = fastrnn_denormals_flush()
    cdef Py_ssize_t r0 = job.bounds[t], r1 = job.bounds[t + 1]
    if job.double and job.backward:
        backward_rows(job.q, <double *> job.buf, r0, r1)
    elif job.double:
        forward_rows(job.q, <double *> job.buf, r0, r1)
    elif job.backward:
        backward_rows(job.q, <float *> job.buf, r0, r1)
    else:
        forward_rows(job.q, <float *> job.buf, r0, r1)
    fastrnn_denormals_restore(csr)


cdef void run_rows(const Seq *q, floating *buf, bint backward, const int64_t *bounds,
                   int nt) noexcept nogil:
    """The row ranges bounds[t]..bounds[t+1], each on its own thread of the pool."""
    cdef RowJob job
    job.q, job.buf, job.bounds, job.backward = q, buf, bounds, backward
    job.double = floating is double
    fastrnn_parallel(nt, row_task, &job)


# Packing shared by the row ranges' threads
# ---------------------------------------------------------------------------------------
#
# Every row range reads every column of the packs. Packed by the calling thread alone
# before the ranges start, each pack was written by one core while the other held last
# call's copy, then read across by the other: at 2 threads an LSTM H = 128 call's packs took
# 73-96 us against 19 on one thread (live against frozen weights, batch 16, T = 1-100). Each
# thread packs a share of the columns instead, meeting the others when the job ends.

cdef struct PackJob:
    const Seq *q
    bint double


cdef void pack_share(const Seq *q, int t, int nt, floating dummy) noexcept nogil:
    """Thread t's share of a row-range call's packs, in whole vectors of columns: of W_hh^T
    and W_ih^T, and in training of backward's W_hh and W_ih. The nt shares together write
    what pack() writes (the share that ends a matrix's columns zeroes its padding)."""
    cdef Py_ssize_t P = q.P, GH = q.GH, I = q.n_in, c0, c1
    unit_range(GH, t, nt, dummy, &c0, &c1)
    pack_cols(P, GH, c0, c1, True, <const floating *> q.w_hh, P, <floating *> q.pk)
    pack_cols(I, GH, c0, c1, True, <const floating *> q.w_ih, I, <floating *> q.ipk)
    if q.bpk != NULL:
        unit_range(P, t, nt, dummy, &c0, &c1)
        pack_cols(GH, P, c0, c1, False, <const floating *> q.w_hh, P, <floating *> q.bpk)
        unit_range(I, t, nt, dummy, &c0, &c1)
        pack_cols(GH, I, c0, c1, False, <const floating *> q.w_ih, I, <floating *> q.bipk)


cdef void pack_task(void *ctx, int t, int nt) noexcept nogil:
    """Share t of a PackJob (copies only: no arithmetic whose denormals need flushing)."""
    cdef const PackJob *job = <const PackJob *> ctx
    if job.double:
        pack_share(job.q, t, nt, <double> 0)
    else:
        pack_share(job.q, t, nt, <float> 0)


cdef void run_packs(const Seq *q, int nt, floating dummy) noexcept nogil:
    """A row-range call's packs, shared by nt threads of the pool (returns when all are
    written)."""
    cdef PackJob job
    job.q, job.double = q, floating is double
    fastrnn_parallel(nt, pack_task, &job)


# The input projection on a helper thread
# ---------------------------------------------------------------------------------------
#
# A call whose time loop runs on one thread (a batch of one row whose steps are too small to
# share by units, or a few rows) leaves the second core idle while the loop also projects
# the input. The helper projects chunks of steps ahead of the loop into the ring instead, so
# that the loop does only the recurrence; whichever thread claims a chunk first projects it
# (fastrnn_threads.h), with the same operations as the loop would: the same numbers.

# Multiply-adds of input projection in one pipe chunk: the chunk's rows pass W_ih^T (from
# the helper's cache) in one product, and the loop's first chunk is done before the helper
# is far along.
DEF PIPE_CHUNK_MACS = 65536


cdef inline Py_ssize_t pipe_steps(Py_ssize_t B, Py_ssize_t I, Py_ssize_t GH,
                                  Py_ssize_t ring) noexcept nogil:
    """Steps of a pipe chunk (at least a 6-row tile of the product), or 0 when the ring
    cannot hold two chunks."""
    cdef Py_ssize_t c = max((6 + B - 1) // B, PIPE_CHUNK_MACS // max(1, B * I * GH))
    return c if 2 * c <= ring else 0


cdef struct PipeJob:
    const Seq *q
    void *buf
    bint double


cdef void pipe_help(const Seq *q, floating *xproj) noexcept nogil:
    """The helper's side: project every chunk it can claim, each into its ring slot."""
    cdef long k
    cdef Py_ssize_t c = q.pipe_steps
    while True:
        k = fastrnn_pipe_claim(q.pipe)
        if k < 0:
            return
        project_steps(q, xproj, 0, q.B, k * c, min(c, q.S - k * c))
        fastrnn_pipe_ready(q.pipe, k)


cdef void pipe_task(void *ctx, int t, int nt) noexcept nogil:
    """Share 0 runs the time loop, share 1 helps with the projection; denormals flushed on
    both (a chunk's numbers must not depend on who projects it)."""
    cdef const PipeJob *job = <const PipeJob *> ctx
    cdef unsigned csr = fastrnn_denormals_flush()
    if t == 0 and job.double:
        forward_rows(job.q, <double *> job.buf, 0, job.q.B)
    elif t == 0:
        forward_rows(job.q, <float *> job.buf, 0, job.q.B)
    elif job.double:
        pipe_help(job.q, <double *> job.buf)
    else:
        pipe_help(job.q, <float *> job.buf)
    fastrnn_denormals_restore(csr)


cdef void run_pipe(Seq *q, floating *xproj) noexcept nogil:
    """All rows on one thread, their input projection a chunk ahead on another. When the
    pool is busy, share 0 runs first and alone: it projects every chunk, and share 1 then
    finds none left."""
    cdef fastrnn_pipe pipe
    cdef PipeJob job
    fastrnn_pipe_init(&pipe, (q.S + q.pipe_steps - 1) // q.pipe_steps,
                      q.chunk // q.pipe_steps)
    q.pipe = &pipe
    job.q, job.buf, job.double = q, xproj, floating is double
    fastrnn_parallel(2, pipe_task, &job)
    q.pipe = NULL


cdef struct WGrad:
    # The whole-sequence products of one backward() call (own-kernel path), shapes as there.
    int cell
    bint proj
    Py_ssize_t SB, H, P, GH, n_in
    const void *dgx
    const void *dgh
    const void *xc
    const void *hs
    const void *acts
    const void *dhs
    const void *hraw
    void *dw_ih
    void *dw_hh
    void *db_ih
    void *db_hh
    void *dw_hr


cdef inline void tn2_share(Py_ssize_t M, Py_ssize_t K, const floating *a, Py_ssize_t lda,
                           Py_ssize_t N1, const floating *b1, Py_ssize_t ldb1, floating *c1,
                           Py_ssize_t ldc1, Py_ssize_t N2, const floating *b2,
                           Py_ssize_t ldb2, floating *c2, Py_ssize_t ldc2, int t, int nt,
                           floating *buf, floating *sums=NULL) noexcept nogil:
    """Thread t's share of C1 = A^T B1 and C2 = A^T B2 together (A^T packed once for both,
    not once a product: A, the gate gradients of every step, is read from memory; N2 = 0
    for one product): a range of rows when there are at least as many rows as columns,
    else of the N1 + N2 columns' panels. Each thread packs its own part of A^T and all of
    B's columns it needs, so the split that duplicates less packing wins: by columns, every
    thread packed all of A^T (LSTM (100, 64, 256, 256) training, dW_ih = dG^T X of
    (1024 x 6400) x (6400 x 256): backward ran 1.47x faster on 2 threads by rows).
    With sums (M,): also its columns M * t // nt .. of A's column sums (bias gradients),
    taken as A is packed."""
    cdef Py_ssize_t pw = panel(<floating> 0)
    cdef Py_ssize_t panels = (N1 + pw - 1) // pw + (N2 + pw - 1) // pw
    cdef Py_ssize_t p0 = 0, p1 = panels, m0 = 0, m1 = M
    cdef Py_ssize_t s0 = M * t // nt, s1 = M * (t + 1) // nt
    cdef bint by_rows = M >= N1 + N2
    if by_rows:
        m0, m1 = s0, s1
    else:
        p0, p1 = panels * t // nt, panels * (t + 1) // nt
    if m1 <= m0 or p1 <= p0:  # no product here; by panels, maybe this share's sums
        if sums != NULL and s1 > s0:
            column_sums(K, s1 - s0, a + s0, lda, sums + s0)
        return
    # the sums' columns, counted from this call's first column of A
    if by_rows:
        s0, s1 = 0, m1 - m0
    if floating is float:
        fastrnn_gemm_tn2_f32(m1 - m0, K, a + m0, lda, N1, b1, ldb1, c1 + m0 * ldc1, ldc1, N2,
                             b2, ldb2, c2 + m0 * ldc2, ldc2, p0, p1,
                             sums + m0 if sums != NULL else NULL, s0, s1, buf)
    else:
        fastrnn_gemm_tn2_f64(m1 - m0, K, a + m0, lda, N1, b1, ldb1, c1 + m0 * ldc1, ldc1, N2,
                             b2, ldb2, c2 + m0 * ldc2, ldc2, p0, p1,
                             sums + m0 if sums != NULL else NULL, s0, s1, buf)


cdef inline void tn_share(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const floating *a,
                          Py_ssize_t lda, const floating *b, Py_ssize_t ldb, floating *c,
                          Py_ssize_t ldc, int t, int nt, floating *buf,
                          floating *sums=NULL) noexcept nogil:
    """Thread t's share of one product C (M, N) = A^T B (see tn2_share)."""
    tn2_share(M, K, a, lda, N, b, ldb, c, ldc, 0, b, ldb, c, ldc, t, nt, buf, sums)


cdef void weight_grads(const WGrad *w, floating *buf, int t, int nt) noexcept nogil:
    """Thread t's share of every weight and bias gradient: dW = dG^T (what the gate saw)."""
    cdef Py_ssize_t SB = w.SB, H = w.H, P = w.P, GH = w.GH, I = w.n_in
    cdef const floating *dgx = <const floating *> w.dgx
    cdef const floating *dgh = <const floating *> w.dgh
    cdef const floating *hs = <const floating *> w.hs
    cdef floating *db_ih = <floating *> w.db_ih
    cdef floating *db_hh = <floating *> w.db_hh
    cdef Py_ssize_t g0 = GH * t // nt, g1 = GH * (t + 1) // nt, c1
    # db_ih = the column sums of dG (this thread's columns g0..g1), with the product
    if w.cell != GRU and w.cell != GRU_B:  # dW_ih = dG^T X, dW_hh = dG^T H_prev together
        tn2_share(GH, SB, dgx, GH, I, <const floating *> w.xc, I, <floating *> w.dw_ih, I, P,
                  hs, P, <floating *> w.dw_hh, P, t, nt, buf, db_ih)
    else:  # dW_ih = dG^T X
        tn_share(GH, I, SB, dgx, GH, <const floating *> w.xc, I, <floating *> w.dw_ih, I, t,
                 nt, buf, db_ih)
    # db_hh = db_ih, but GRU's b_hn: the column sums of d hh_n (below)
    c1 = min(g1, 2 * H) if w.cell == GRU else g1
    if c1 > g0:
        memcpy(db_hh + g0, db_ih + g0, (c1 - g0) * sizeof(floating))
    # dW_hh = dG_h^T H_prev, hs[0:S] being the state before each step
    if w.cell == GRU:  # r, z rows: dG as for W_ih; n rows: d hh_n
        tn_share(2 * H, H, SB, dgx, GH, hs, H, <floating *> w.dw_hh, H, t, nt, buf)
        tn_share(H, H, SB, dgh, H, hs, H, <floating *> w.dw_hh + 2 * H * H, H, t, nt, buf,
                 db_hh + 2 * H)
    elif w.cell == GRU_B:  # r, z rows see h_prev; n rows see rh, saved in acts (B2)
        tn_share(2 * H, H, SB, dgx, GH, hs, H, <floating *> w.dw_hh, H, t, nt, buf)
        tn_share(H, H, SB, dgx + 2 * H, GH, <const floating *> w.acts + 3 * H, 4 * H,
                 <floating *> w.dw_hh + 2 * H * H, H, t, nt, buf)
    if w.proj:  # dW_hr = sum over steps of dh^T (o * tanh(c))
        tn_share(P, H, SB, <const floating *> w.dhs, P, <const floating *> w.hraw, H,
                 <floating *> w.dw_hr, H, t, nt, buf)


cdef struct GradJob:
    const WGrad *w
    void *buf
    Py_ssize_t buf_size
    bint double


cdef void grad_task(void *ctx, int t, int nt) noexcept nogil:
    """Share t of a GradJob, with its own scratch."""
    cdef const GradJob *job = <const GradJob *> ctx
    cdef unsigned csr = fastrnn_denormals_flush()
    if job.double:
        weight_grads(job.w, <double *> job.buf + t * job.buf_size, t, nt)
    else:
        weight_grads(job.w, <float *> job.buf + t * job.buf_size, t, nt)
    fastrnn_denormals_restore(csr)


cdef void run_weight_grads(const WGrad *w, floating *buf, Py_ssize_t buf_size,
                           int nt) noexcept nogil:
    cdef GradJob job
    job.w, job.buf, job.buf_size, job.double = w, buf, buf_size, floating is double
    fastrnn_parallel(nt, grad_task, &job)


cdef void *data(cnp.ndarray a, int ndim, int typenum, bint out) except? NULL:
    """The buffer of an array the Python layer prepared, after the kernels' own cheap guard
    (rank, element type, C order, writable outputs). NumPy arrays are taken directly, not as
    typed memoryviews: acquiring ~25 memoryviews cost ~20 us a call, more than a whole
    sequence of 10 steps at batch 1."""
    if (cnp.PyArray_NDIM(a) != ndim or cnp.PyArray_TYPE(a) != typenum
            or not cnp.PyArray_IS_C_CONTIGUOUS(a) or (out and not cnp.PyArray_ISWRITEABLE(a))):
        raise TypeError(
            f"kernel argument of shape {(<object> a).shape} and dtype {(<object> a).dtype} is "
            f"not a C-contiguous "
            f"{ndim}-d array of type number {typenum} (a bug in fastrnn)"
        )
    return cnp.PyArray_DATA(a)


# ---------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------

cdef struct ForwardCall:
    # One forward() call: its Seq and what the call does around the time loop.
    Seq q
    const void *h0
    const void *c0
    void *h_n
    void *c_n
    void *xproj
    const void *b_ih
    void *pk                # wpack
    bint packed
    const int64_t *bounds
    int nt
    int unit_threads
    bint helper


cdef struct BackwardCall:
    # One backward() call: its Seq, its weight-gradient products and the rest it needs.
    Seq q
    WGrad wg
    const void *dh_n
    const void *dc_n
    void *dh0
    void *dc0
    void *dgx
    void *gbuf
    int gbuf_threads
    Py_ssize_t gbuf_size
    const int64_t *bounds
    int nt
    int unit_threads


DEF FORWARD_CALL = 1
DEF BACKWARD_CALL = 2
DEF EMPTY_CALL = 3      # a forward() call with nothing to run (batch 0)

cdef long pairs_run = 0  # run_deferred calls that ran two calls at once


cdef class Deferred:
    """A forward() or backward() call, checked and prepared but not run: run_deferred()
    runs it (two at once on the pool: the two directions of a bidirectional layer). Holds
    the call's arrays, so that its pointers stay valid."""
    cdef int kind
    cdef bint double
    cdef object arrays
    cdef ForwardCall forward
    cdef BackwardCall backward

    cdef keep(self, int kind, bint double, tuple arrays):
        self.kind, self.double, self.arrays = kind, double, arrays


cdef struct Runnable:
    int kind
    bint double
    ForwardCall *forward
    BackwardCall *backward


cdef void run_one(const Runnable *call) noexcept nogil:
    if call.kind == FORWARD_CALL and call.double:
        forward_call(call.forward, <double> 0)
    elif call.kind == FORWARD_CALL:
        forward_call(call.forward, <float> 0)
    elif call.kind == BACKWARD_CALL and call.double:
        backward_call(call.backward, <double> 0)
    elif call.kind == BACKWARD_CALL:
        backward_call(call.backward, <float> 0)


cdef void pair_task(void *ctx, int t, int nt) noexcept nogil:
    """Call t of two, alone on its thread. Its loops run on this thread too (the pool does
    not nest), each flushing denormals as it does anywhere: the same numbers."""
    run_one(<const Runnable *> ctx + t)


cdef Runnable runnable(Deferred call) except *:
    cdef Runnable r
    if call.kind == 0:
        raise ValueError("run_deferred: a call that was not prepared, or already run")
    r.kind, r.double, r.forward, r.backward = call.kind, call.double, &call.forward, &call.backward
    return r


def run_deferred(Deferred first, Deferred second=None):
    """Run prepared calls: `first` alone, or `first` and `second` at once, one a thread
    (each must have been prepared for one thread: bounds of one range, unit_threads 1).
    When the pool is busy, they run one after the other on this thread. Each runs once."""
    cdef Runnable calls[2]
    calls[0] = runnable(first)
    if second is None:
        first.kind = 0
        with nogil:
            run_one(&calls[0])
        return
    if second is first:
        raise ValueError("run_deferred: the same call twice")
    calls[1] = runnable(second)
    first.kind = second.kind = 0
    global pairs_run
    pairs_run += 1
    with nogil:
        fastrnn_parallel(2, pair_task, calls)


cdef void run_prepared(Runnable *runs, int count):
    """`count` prepared calls (a plan's), the GIL released: one, or two at once, one thread
    each (the two directions of a bidirectional layer)."""
    global pairs_run
    if count == 2:
        pairs_run += 1
    with nogil:
        if count == 2:
            fastrnn_parallel(2, pair_task, runs)
        else:
            run_one(&runs[0])


cdef void run_layer(Runnable *runs, int directions, bint pair):
    """A layer's prepared calls, one a direction: at once when `pair`, else in turn."""
    cdef int d
    if pair:
        run_prepared(runs, 2)
        return
    for d in range(directions):
        run_prepared(&runs[d], 1)

cdef enum:
    PLAN_MAX_RANK = 3


cdef bint plan_array(object a, int typenum, int ndim, const cnp.npy_intp *dims) noexcept:
    """Whether `a` is exactly a C-contiguous, aligned NumPy array of this type and shape
    (a ForwardPlan takes nothing else; whatever it declines takes the validating path)."""
    cdef cnp.ndarray arr
    cdef int d
    if type(a) is not cnp.ndarray:
        return False
    arr = <cnp.ndarray> a
    if (cnp.PyArray_TYPE(arr) != typenum or cnp.PyArray_NDIM(arr) != ndim
            or not cnp.PyArray_IS_C_CONTIGUOUS(arr) or not cnp.PyArray_ISALIGNED(arr)):
        return False
    for d in range(ndim):
        if cnp.PyArray_DIMS(arr)[d] != dims[d]:
            return False
    return True


cdef class ForwardPlan:
    """An inference pass through a stack of layers (one or two directions each), prepared
    once for inputs of one shape and run again on new arrays with nothing prepared anew.

    Each layer-direction's forward() call is prepared by the Python layer (a Deferred, with
    the thread split a direct call takes, or for one thread where a layer's two directions
    run at once) and copied here as it was then; run() fills in the input, output and state
    pointers and runs the layers in order, the GIL released. The outputs of all layers but
    the last are the plan's own arrays; so are a bidirectional layer's compact outputs
    (joined into the layer's) and its reverse direction's input (the layer's, reversed in
    time). A plan shares the scratch of the calls it was prepared from: one thread runs it
    at a time. A small call spends most of its time in the Python that prepares it (an RNN
    step (1, 1, 64, 64): ~8 of 10 us), which a plan runs once.
    """
    cdef ForwardCall *calls     # as prepared, one a layer-direction k = layer * D + d;
                                # copied before each run (forward_call changes its chunking)
    cdef int n, L, D, typenum
    cdef bint lstm
    cdef tuple pairs            # per layer: whether its two directions run at once
    cdef object held            # the Deferreds (their arrays), the plan's own arrays
    cdef list mids              # outputs of layers 0..n-2 (inputs of the next)
    cdef object zero_h, zero_c  # the initial state of a call without one
    cdef int x_nd, y_nd, h_nd
    cdef cnp.npy_intp x_dims[PLAN_MAX_RANK]
    cdef cnp.npy_intp y_dims[PLAN_MAX_RANK]
    cdef cnp.npy_intp h_dims[PLAN_MAX_RANK]
    cdef cnp.npy_intp c_dims[PLAN_MAX_RANK]
    cdef Py_ssize_t h_step, c_step  # bytes of one layer-direction's state

    def __cinit__(self):
        self.calls = NULL

    def __dealloc__(self):
        free(self.calls)

    def __init__(self, list prepared, list mids, tuple x_shape, tuple y_shape, tuple h_shape,
                 tuple c_shape, zero_h, zero_c, tuple pairs=None):
        """prepared: one Deferred a layer-direction, from forward(..., later) with the usual
        thread split (one thread each in the layers whose `pairs` entry is true; pairs None:
        one direction, none), for an input (T, B, I), in order; mids: L - 1 arrays
        (T, B, D*P) for the outputs of all layers but the last. The shapes are those the
        caller presents x, y, h (L*D, ..., P) and c (LSTM: (L*D, ..., H); else ()) in: each
        the same memory as the time-major (T, B, .) and (L*D, B, .) the kernels see."""
        cdef Deferred d, first
        cdef int i
        cdef Py_ssize_t item
        if pairs is None:
            pairs = (False,) * len(prepared)
        if (not prepared or not pairs or len(prepared) % len(pairs) != 0
                or len(prepared) // len(pairs) > 2 or len(mids) != len(pairs) - 1):
            raise ValueError("ForwardPlan: one prepared call a layer-direction, one output "
                             "between two layers")
        for shape in (x_shape, y_shape, h_shape, c_shape):
            if len(shape) > PLAN_MAX_RANK:
                raise ValueError(f"ForwardPlan: shape {shape} of rank > {PLAN_MAX_RANK}")
        self.calls = <ForwardCall *> malloc(len(prepared) * sizeof(ForwardCall))
        if self.calls == NULL:
            raise MemoryError()
        self.n, self.L = len(prepared), len(pairs)
        self.D = self.n // self.L
        self.pairs = tuple(bool(p) and self.D == 2 for p in pairs)
        first = prepared[0]
        for i, d in enumerate(prepared):
            if d.kind != FORWARD_CALL or d.double != first.double:
                raise ValueError("ForwardPlan: a call that is not a prepared forward()")
            self.calls[i] = d.forward
        d = first
        self.typenum = DOUBLE_TYPE if d.double else FLOAT_TYPE
        self.lstm = d.forward.q.cell == LSTM
        self.held, self.mids = tuple(prepared), list(mids)
        self.zero_h, self.zero_c = zero_h, zero_c
        self.x_nd, self.y_nd, self.h_nd = len(x_shape), len(y_shape), len(h_shape)
        for i in range(self.x_nd):
            self.x_dims[i] = x_shape[i]
        for i in range(self.y_nd):
            self.y_dims[i] = y_shape[i]
        for i in range(self.h_nd):
            self.h_dims[i] = h_shape[i]
        for i in range(len(c_shape)):
            self.c_dims[i] = c_shape[i]
        item = 8 if d.double else 4
        self.h_step = d.forward.q.B * d.forward.q.P * item
        self.c_step = d.forward.q.B * d.forward.q.H * item
        for i in range(self.n):
            if (self.calls[i].q.B != d.forward.q.B or self.calls[i].q.P != d.forward.q.P
                    or self.calls[i].q.S != d.forward.q.S):
                raise ValueError("ForwardPlan: layers of different batch, width or length")
        if not (plan_array(zero_h, self.typenum, self.h_nd, self.h_dims)
                and (not self.lstm or plan_array(zero_c, self.typenum, self.h_nd, self.c_dims))):
            raise ValueError("ForwardPlan: initial states not of the planned shapes")

    def run(self, x, h0=None, c0=None, y=None, h_n=None, c_n=None):
        """Run on x, from h0 (and c0) or zeros; returns (y, h_n, c_n) (c_n None but for an
        LSTM), new arrays unless given (h_n and c_n may be h0 and c0). Returns None,
        running nothing, when an argument is not exactly a C-contiguous aligned array of
        the plan's type and shape (the caller then takes the validating path)."""
        cdef int layer, d, k, D = self.D
        cdef ForwardCall calls[2]
        cdef Runnable runs[2]
        cdef char *h0_
        cdef char *c0_ = NULL
        cdef char *h_n_
        cdef char *c_n_ = NULL
        cdef const void *layer_in
        cdef void *layer_out
        cdef void *y_
        cdef Py_ssize_t h_step = self.h_step, c_step = self.c_step
        cdef Py_ssize_t T, B, item = 8 if self.typenum == DOUBLE_TYPE else 4
        if h0 is None:
            h0, c0 = self.zero_h, self.zero_c
        if not (plan_array(x, self.typenum, self.x_nd, self.x_dims)
                and plan_array(h0, self.typenum, self.h_nd, self.h_dims)):
            return None
        if self.lstm and not plan_array(c0, self.typenum, self.h_nd, self.c_dims):
            return None
        if y is None:
            y = cnp.PyArray_EMPTY(self.y_nd, self.y_dims, self.typenum, 0)
        elif not (plan_array(y, self.typenum, self.y_nd, self.y_dims)
                  and cnp.PyArray_ISWRITEABLE(<cnp.ndarray> y)):
            return None
        if h_n is None:
            h_n = cnp.PyArray_EMPTY(self.h_nd, self.h_dims, self.typenum, 0)
        elif not (plan_array(h_n, self.typenum, self.h_nd, self.h_dims)
                  and cnp.PyArray_ISWRITEABLE(<cnp.ndarray> h_n)):
            return None
        if self.lstm:
            if c_n is None:
                c_n = cnp.PyArray_EMPTY(self.h_nd, self.c_dims, self.typenum, 0)
            elif not (plan_array(c_n, self.typenum, self.h_nd, self.c_dims)
                      and cnp.PyArray_ISWRITEABLE(<cnp.ndarray> c_n)):
                return None
            c0_ = <char *> cnp.PyArray_DATA(<cnp.ndarray> c0)
            c_n_ = <char *> cnp.PyArray_DATA(<cnp.ndarray> c_n)
        else:
            c_n = None
        h0_ = <char *> cnp.PyArray_DATA(<cnp.ndarray> h0)
        h_n_ = <char *> cnp.PyArray_DATA(<cnp.ndarray> h_n)
        layer_in = cnp.PyArray_DATA(<cnp.ndarray> x)
        y_ = cnp.PyArray_DATA(<cnp.ndarray> y)
        T, B = self.calls[0].q.S, self.calls[0].q.B
        for layer in range(self.L):
            if layer == self.L - 1:
                layer_out = y_
            else:
                layer_out = cnp.PyArray_DATA(<cnp.ndarray> self.mids[layer])
            for d in range(D):
                k = layer * D + d
                calls[d] = self.calls[k]
                if D == 1:
                    calls[d].q.xc, calls[d].q.yc = layer_in, layer_out
                elif d == 0:  # its output: its own, as prepared, joined below
                    calls[d].q.xc = layer_in
                else:  # the reverse direction reads its own copy of the input, reversed
                    steps_reversed(<const char *> layer_in, <char *> calls[d].q.xc, T,
                                   B * calls[d].q.n_in * item)
                calls[d].h0, calls[d].h_n = h0_ + k * h_step, h_n_ + k * h_step
                if self.lstm:
                    calls[d].c0, calls[d].c_n = c0_ + k * c_step, c_n_ + k * c_step
            for d in range(D):
                runs[d].kind, runs[d].double = FORWARD_CALL, self.typenum == DOUBLE_TYPE
                runs[d].forward, runs[d].backward = &calls[d], NULL
            run_layer(runs, D, self.pairs[layer])
            if D == 2:
                join_directions(<const char *> calls[0].q.yc, <const char *> calls[1].q.yc,
                                <char *> layer_out, T, B, calls[0].q.P * item)
            layer_in = layer_out
        return y, h_n, c_n


# Indices, in forward()'s and backward()'s kept arrays (Deferred.arrays), of those a
# TrainingPlan gives anew on every call; it holds the others (weights, row order, thread
# split, this thread's scratch) and, of these, only the empty ones (the arrays of a cell
# that has no cell state, no saved activations...), which no call reads.
FORWARD_PER_CALL = frozenset((0, 5, 6, 7, 11, 12, 13, 15, 16, 17, 18, 22, 23, 24))
BACKWARD_PER_CALL = frozenset((0, 3, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21,
                               22, 23, 24, 25, 26, 27, 28))


cdef tuple held_arrays(Deferred d, per_call):
    return tuple(a for i, a in enumerate(d.arrays) if i not in per_call or a.size == 0)


cdef object new_array(tuple shape, int typenum):
    cdef cnp.npy_intp dims[PLAN_MAX_RANK]
    cdef int i
    for i in range(len(shape)):
        dims[i] = shape[i]
    return cnp.PyArray_EMPTY(len(shape), dims, typenum, 0)


cdef inline void *array_data(object a) noexcept:
    return cnp.PyArray_DATA(<cnp.ndarray> a)


cdef class TrainingTape:
    """What one TrainingPlan.forward() call keeps for its backward pass: per layer, its
    input (layer 0: the call's own copy of x), states, activations and the packs of W_hh
    and W_ih that are this pass's copy of the weights. Those it took from the spares go
    back there when it dies (`release`), as a Tape's do."""
    cdef TrainingPlan plan
    cdef tuple layers           # per layer-direction: (xc, hs, cs, acts, bwpack, bipack,
                                # hraw, w_hr): the last two an LSTM projection's, else None
    cdef tuple spare
    cdef object release
    cdef object masks           # dropout between layers: one a layer but the last, or ()

    def __dealloc__(self):
        if self.release is not None and self.spare:
            try:
                self.release(*self.spare)
            except BaseException:  # (interpreter shutdown) the arrays are freed as they are
                pass


cdef void steps_reversed(const char *src, char *dst, Py_ssize_t T, Py_ssize_t step) noexcept nogil:
    """dst[s] = src[T - 1 - s] for steps of `step` bytes (gather_steps / scatter_steps of a
    reverse direction over full-length rows)."""
    cdef Py_ssize_t s
    for s in range(T):
        memcpy(dst + s * step, src + (T - 1 - s) * step, step)


cdef void join_directions(const char *a, const char *b, char *out, Py_ssize_t T,
                          Py_ssize_t B, Py_ssize_t width) noexcept nogil:
    """out[t, j] = (a[t, j], b[T - 1 - t, j]): a bidirectional layer's output from its
    forward direction's and its reverse direction's (compact, reversed) outputs, rows of
    `width` bytes."""
    cdef Py_ssize_t t, j
    for t in range(T):
        for j in range(B):
            memcpy(out + (t * B + j) * 2 * width, a + (t * B + j) * width, width)
            memcpy(out + (t * B + j) * 2 * width + width, b + ((T - 1 - t) * B + j) * width,
                   width)


cdef void split_directions(const char *g, char *a, char *b, Py_ssize_t T, Py_ssize_t B,
                           Py_ssize_t width) noexcept nogil:
    """The inverse of join_directions: each direction's part of dL/dy."""
    cdef Py_ssize_t t, j
    for t in range(T):
        for j in range(B):
            memcpy(a + (t * B + j) * width, g + (t * B + j) * 2 * width, width)
            memcpy(b + ((T - 1 - t) * B + j) * width, g + (t * B + j) * 2 * width + width,
                   width)


cdef void scale_by(floating *a, const floating *b, Py_ssize_t n) noexcept nogil:
    """a *= b elementwise (what multiply(a, b, a) computes)."""
    cdef Py_ssize_t k
    for k in range(n):
        a[k] = a[k] * b[k]


cdef void scale(object a, object b, int typenum):
    """Array a *= array b (same size, the plan's type): dropout's mask."""
    cdef void *a_ = array_data(a)
    cdef const void *b_ = array_data(b)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(<cnp.ndarray> a)
    with nogil:
        if typenum == DOUBLE_TYPE:
            scale_by(<double *> a_, <const double *> b_, n)
        else:
            scale_by(<float *> a_, <const float *> b_, n)


cdef void add_reversed(floating *out, const floating *a, Py_ssize_t T,
                       Py_ssize_t step) noexcept nogil:
    """out[t] += a[T - 1 - t] (steps of `step` elements): the input gradient of a
    bidirectional layer, its reverse direction's (compact) added to its forward's."""
    cdef Py_ssize_t t, k
    for t in range(T):
        for k in range(step):
            out[t * step + k] += a[(T - 1 - t) * step + k]


cdef class TrainingPlan:
    """A training pass through a stack of layers (one or two directions each), prepared
    once for inputs of one shape: forward() runs the layers from their prepared forward()
    calls with new arrays for what the pass keeps, and backward() runs them back from their
    prepared backward() calls, with nothing prepared anew (a training step of an LSTM (20,
    1, 32, 32) spent ~55 us in the Python that prepares its calls, its kernels ~25).

    The calls are prepared by the Python layer (Deferreds: with the thread split a direct
    call takes, or for one thread each where a layer's two directions run at once) and
    copied; the plan keeps only the arrays they read on every call (the weights, the row
    order and split, this thread's forward scratch), and gives each call its own input
    copy, saved states, activations and packs (from `scratch`, the spares, returned there
    when the TrainingTape dies), outputs and gradients (new arrays). A reverse direction
    reads its input, and writes its output, reversed in time (what gather_steps and
    scatter_steps do for full-length rows). The backward scratch is the calling thread's
    (`backward_scratch[k]()`). forward() runs on the thread that prepared it; a tape's
    backward() on any.
    """
    cdef ForwardCall *fcalls    # one a layer-direction k = layer * D + direction
    cdef BackwardCall *bcalls
    cdef int n, L, D, typenum
    cdef bint lstm
    cdef tuple pairs            # per layer: whether its directions run at once
    cdef object held            # the arrays the prepared calls read on every call
    cdef object scratch         # scratch(shape, dtype): an array from the spares
    cdef object release         # release(*arrays): back to the spares
    cdef list backward_scratch  # per layer-direction: () -> (dgx, dgh, dhs, gbuf, kept)
    cdef list tape_shapes       # per layer-direction: shapes of (hs, cs, acts, bwpack, bipack,
                                # hraw)
    cdef list grad_shapes       # per layer-direction: shapes of (dW_ih, dW_hh, db_ih, db_hh
                                # and, with a projection, dW_hr)
    cdef list w_hr              # per layer-direction: the projection's parameter, or None
    cdef object dtype
    cdef object zero_h, zero_c  # the initial state, and dh_n / dc_n, of a call without one
    cdef tuple x_shape, y_shape, h_shape, c_shape   # as the caller presents them
    cdef tuple xt_shape, yt_shape, ht_shape, ct_shape  # time-major, as the kernels see them
    cdef Py_ssize_t h_step, c_step  # bytes of one layer-direction's state

    def __cinit__(self):
        self.fcalls = self.bcalls = NULL

    def __dealloc__(self):
        free(self.fcalls)
        free(self.bcalls)

    def __init__(self, list forwards, list backwards, tuple pairs, list tape_shapes,
                 list grad_shapes, list backward_scratch, tuple shapes, tuple time_major,
                 zero_h, zero_c, scratch, release, dtype, list w_hr=None):
        """forwards, backwards: per layer-direction, in order, a Deferred from forward(...,
        training, later) over a time-major input (T, B, I_layer) and one from backward(...,
        later) of its tape, for one thread each in the layers whose `pairs` entry is true,
        else with the usual split; shapes: (x, y, h, c) as the caller presents them, the same
        memory as the time-major `time_major` (T, B, I), (T, B, D*P), (L*D, B, P),
        (L*D, B, H) (c: () but for an LSTM); zero_h / zero_c: read-only zeros of the
        presented h and c; w_hr: an LSTM projection's parameter per layer-direction (each
        pass copies it, as _layer._training_weights does), else None."""
        cdef Deferred f, b, first
        cdef int i, n
        cdef Py_ssize_t item
        n = len(forwards)
        if (n == 0 or len(pairs) == 0 or n % len(pairs) != 0 or n // len(pairs) > 2
                or len(backwards) != n or len(tape_shapes) != n or len(grad_shapes) != n
                or len(backward_scratch) != n):
            raise ValueError("TrainingPlan: one prepared forward and backward call a "
                             "layer-direction")
        for shape in shapes + time_major:
            if len(shape) > PLAN_MAX_RANK:
                raise ValueError(f"TrainingPlan: shape {shape} of rank > {PLAN_MAX_RANK}")
        self.fcalls = <ForwardCall *> malloc(n * sizeof(ForwardCall))
        self.bcalls = <BackwardCall *> malloc(n * sizeof(BackwardCall))
        if self.fcalls == NULL or self.bcalls == NULL:
            raise MemoryError()
        self.n, self.L, self.D = n, len(pairs), n // len(pairs)
        self.pairs = tuple(bool(p) and self.D == 2 for p in pairs)
        first = forwards[0]
        held = []
        for i in range(n):
            f, b = forwards[i], backwards[i]
            if (f.kind != FORWARD_CALL or b.kind != BACKWARD_CALL or f.double != first.double
                    or b.double != first.double or not f.forward.q.training):
                raise ValueError("TrainingPlan: calls that are not a prepared training pass")
            if (f.forward.q.S != first.forward.q.S or f.forward.q.B != first.forward.q.B
                    or f.forward.q.P != first.forward.q.P):
                raise ValueError("TrainingPlan: layers of different batch, width or length")
            self.fcalls[i], self.bcalls[i] = f.forward, b.backward
            held.append(held_arrays(f, FORWARD_PER_CALL))
            held.append(held_arrays(b, BACKWARD_PER_CALL))
        self.held = tuple(held)
        self.typenum = DOUBLE_TYPE if first.double else FLOAT_TYPE
        self.lstm = first.forward.q.cell == LSTM
        self.tape_shapes, self.grad_shapes = list(tape_shapes), list(grad_shapes)
        self.backward_scratch = list(backward_scratch)
        self.w_hr = list(w_hr) if w_hr is not None else [None] * n
        if len(self.w_hr) != n:
            raise ValueError("TrainingPlan: one projection (or None) a layer-direction")
        self.scratch, self.release, self.dtype = scratch, release, dtype
        self.zero_h, self.zero_c = zero_h, zero_c
        self.x_shape, self.y_shape, self.h_shape, self.c_shape = shapes
        self.xt_shape, self.yt_shape, self.ht_shape, self.ct_shape = time_major
        item = 8 if first.double else 4
        self.h_step = first.forward.q.B * first.forward.q.P * item
        self.c_step = first.forward.q.B * first.forward.q.H * item

    cdef bint exact(self, a, tuple shape, tuple also=None):
        """Whether `a` is exactly a C-contiguous aligned array of the plan's type and of
        `shape` (or `also`)."""
        cdef cnp.npy_intp dims[PLAN_MAX_RANK]
        cdef int i
        if type(a) is not cnp.ndarray:
            return False
        for candidate in (shape, also):
            if candidate is None:
                continue
            for i in range(len(candidate)):
                dims[i] = candidate[i]
            if plan_array(a, self.typenum, len(candidate), dims):
                return True
        return False

    def forward(self, x, h0=None, c0=None, dropout=None):
        """The forward pass on x from h0 (and c0) or zeros: (y, h_n, c_n, tape), c_n None
        but for an LSTM; or None, running nothing, when an argument is not exactly a
        C-contiguous aligned array of the plan's type and presented shape. dropout: None,
        or a function giving, once the arguments are taken, the masks (T, B, D*P) that
        multiply the outputs of all layers but the last (the tape keeps them)."""
        cdef int layer, d, k, D = self.D
        cdef ForwardCall calls[2]
        cdef Runnable runs[2]
        cdef char *h0_
        cdef char *c0_ = NULL
        cdef char *h_n_
        cdef char *c_n_ = NULL
        cdef Py_ssize_t T, B, P, item = 8 if self.typenum == DOUBLE_TYPE else 4
        cdef TrainingTape tape
        if h0 is None:
            h0, c0 = self.zero_h, self.zero_c
        if not (self.exact(x, self.x_shape) and self.exact(h0, self.h_shape)):
            return None
        if self.lstm and not self.exact(c0, self.c_shape):
            return None
        masks = () if dropout is None else tuple(dropout())
        if masks and (len(masks) != self.L - 1 or not all(
                self.exact(m, self.yt_shape) for m in masks)):
            raise ValueError("TrainingPlan: dropout masks of other shapes (a bug)")
        y = new_array(self.y_shape, self.typenum)
        h_n = new_array(self.h_shape, self.typenum)
        c_n = new_array(self.c_shape, self.typenum) if self.lstm else None
        h0_, h_n_ = <char *> array_data(h0), <char *> array_data(h_n)
        if self.lstm:
            c0_, c_n_ = <char *> array_data(c0), <char *> array_data(c_n)
        scratch, dtype = self.scratch, self.dtype
        T, B, P = self.fcalls[0].q.S, self.fcalls[0].q.B, self.fcalls[0].q.P
        layers, spare = [], []
        layer_x = x
        for layer in range(self.L):
            last = layer == self.L - 1
            outs = []
            for d in range(D):
                k = layer * D + d
                calls[d] = self.fcalls[k]
                hs_shape, cs_shape, acts_shape, bw_shape, bi_shape, hraw_shape = (
                    self.tape_shapes[k])
                hs, bw, bi = scratch(hs_shape, dtype), scratch(bw_shape, dtype), scratch(bi_shape, dtype)
                spare += [hs, bw, bi]
                cs = acts = None
                if self.lstm:
                    cs = scratch(cs_shape, dtype)
                    spare.append(cs)
                    calls[d].q.cs = array_data(cs)
                    calls[d].c0, calls[d].c_n = c0_ + k * self.c_step, c_n_ + k * self.c_step
                if calls[d].q.NA > 0:
                    acts = scratch(acts_shape, dtype)
                    spare.append(acts)
                    calls[d].q.acts = array_data(acts)
                hraw = w_hr = None
                if self.w_hr[k] is not None:  # the pass's own copy of W_hr, and o * tanh(c)
                    w_hr = cnp.PyArray_NewCopy(<cnp.ndarray> self.w_hr[k], cnp.NPY_CORDER)
                    hraw = scratch(hraw_shape, dtype)
                    spare.append(hraw)
                    calls[d].q.w_hr, calls[d].q.hraw = array_data(w_hr), array_data(hraw)
                calls[d].q.xsave = NULL
                if d == 1:  # the reverse direction reads its own copy, reversed in time
                    xc = scratch(layer_x.shape, dtype)
                    spare.append(xc)
                    steps_reversed(<const char *> array_data(layer_x), <char *> array_data(xc),
                                   T, B * calls[d].q.n_in * item)
                    calls[d].q.xc = array_data(xc)
                elif layer == 0:  # x is the caller's: the tape keeps a copy, made as it is projected
                    xc = scratch(self.xt_shape, dtype)
                    spare.append(xc)
                    calls[d].q.xsave = array_data(xc)
                    calls[d].q.xc = array_data(layer_x)
                else:
                    xc = layer_x
                    calls[d].q.xc = array_data(layer_x)
                out = y if last and D == 1 else new_array((T, B, P), self.typenum)
                outs.append(out)
                calls[d].q.yc = array_data(out)
                calls[d].q.hs, calls[d].q.bpk = array_data(hs), array_data(bw)
                calls[d].q.bipk = array_data(bi)
                calls[d].h0, calls[d].h_n = h0_ + k * self.h_step, h_n_ + k * self.h_step
                layers.append((xc, hs, cs, acts, bw, bi, hraw, w_hr))
            for d in range(D):
                runs[d].kind, runs[d].double = FORWARD_CALL, self.typenum == DOUBLE_TYPE
                runs[d].forward, runs[d].backward = &calls[d], NULL
            run_layer(runs, D, self.pairs[layer])
            if D == 1:
                layer_x = outs[0]
            else:
                layer_x = y if last else new_array((T, B, 2 * P), self.typenum)
                join_directions(<const char *> array_data(outs[0]),
                                <const char *> array_data(outs[1]),
                                <char *> array_data(layer_x), T, B, P * item)
            if masks and not last:  # dropout between layers, in place (its own array)
                scale(layer_x, masks[layer], self.typenum)
        tape = TrainingTape.__new__(TrainingTape)
        tape.plan, tape.layers, tape.spare = self, tuple(layers), tuple(spare)
        tape.release, tape.masks = self.release, masks
        return y, h_n, c_n, tape

    def backward(self, TrainingTape tape, dy, dh_n=None, dc_n=None):
        """The backward pass of `tape` (from this plan's forward()) for dL/dy and the final
        state's gradients (None: zeros): (dx, dh0, dc0, grads) with dx (T, B, I), dh0
        (L*D, B, P), dc0 (L*D, B, H) time-major (dc0 None but for an LSTM) and grads, per
        layer-direction, (dW_ih, dW_hh, db_ih, db_hh). dy, dh_n and dc_n are taken as the
        caller presents y, h and c, or time-major; None, running nothing, when one is not
        exactly such an array."""
        cdef int layer, d, k, D = self.D
        cdef BackwardCall calls[2]
        cdef Runnable runs[2]
        cdef const char *dh_n_
        cdef const char *dc_n_ = NULL
        cdef char *dh0_
        cdef char *dc0_ = NULL
        cdef Py_ssize_t T, B, P, step, item = 8 if self.typenum == DOUBLE_TYPE else 4
        cdef void *out
        cdef const void *rev
        if tape is None or tape.plan is not self:
            raise ValueError("TrainingPlan.backward: a tape of another plan")
        if dh_n is None:
            dh_n = self.zero_h
        if dc_n is None:
            dc_n = self.zero_c
        if not (self.exact(dy, self.y_shape, self.yt_shape)
                and self.exact(dh_n, self.h_shape, self.ht_shape)):
            return None
        if self.lstm and not self.exact(dc_n, self.c_shape, self.ct_shape):
            return None
        dh0 = new_array(self.ht_shape, self.typenum)
        dh_n_, dh0_ = <const char *> array_data(dh_n), <char *> array_data(dh0)
        dc0 = None
        if self.lstm:
            dc0 = new_array(self.ct_shape, self.typenum)
            dc_n_, dc0_ = <const char *> array_data(dc_n), <char *> array_data(dc0)
        T, B, P = self.bcalls[0].q.S, self.bcalls[0].q.B, self.bcalls[0].q.P
        grads = [None] * self.n
        g = dy
        for layer in range(self.L - 1, -1, -1):
            if tape.masks and layer < self.L - 1:  # through dropout (g: the layer above's dx)
                scale(g, tape.masks[layer], self.typenum)
            dys = [g]
            if D == 2:  # each direction's part of dL/dy, the reverse one reversed in time
                dys = [new_array((T, B, P), self.typenum) for d in range(2)]
                split_directions(<const char *> array_data(g), <char *> array_data(dys[0]),
                                 <char *> array_data(dys[1]), T, B, P * item)
            dxs, scratches, works = [], [], []  # (work: alive while the calls run)
            for d in range(D):
                k = layer * D + d
                calls[d] = self.bcalls[k]
                xc, hs, cs, acts, bw, bi, hraw, w_hr = tape.layers[k]
                dgx, dgh, dhs, gbuf, kept = self.backward_scratch[k]()
                if (gbuf.shape[0] != calls[d].gbuf_threads
                        or gbuf.shape[1] != calls[d].gbuf_size
                        or dgx.shape[0] * dgx.shape[1] != T * B * calls[d].q.GH):
                    raise ValueError("TrainingPlan: backward scratch of another shape (a bug)")
                scratches.append((kept, dgx, dgh, dhs, gbuf))
                work = new_array((3 * B, calls[d].q.H), self.typenum)
                dxc = new_array((T, B, calls[d].q.n_in), self.typenum)
                dxs.append(dxc)
                dws = tuple(new_array(s, self.typenum) for s in self.grad_shapes[k])
                dw_ih, dw_hh, db_ih, db_hh = dws[:4]
                grads[k] = dws
                works.append(work)
                if w_hr is not None:  # the projection: its copy of W_hr, o * tanh(c), dW_hr
                    calls[d].q.w_hr = array_data(w_hr)
                    calls[d].q.hraw = calls[d].wg.hraw = array_data(hraw)
                    calls[d].wg.dw_hr = array_data(dws[4])
                calls[d].q.pk, calls[d].q.ipk = array_data(bw), array_data(bi)
                calls[d].q.xc, calls[d].q.yc = array_data(dxc), array_data(dys[d])
                calls[d].q.work = array_data(work)
                calls[d].q.hs = calls[d].wg.hs = array_data(hs)
                calls[d].wg.xc = array_data(xc)
                if cs is not None:
                    calls[d].q.cs = array_data(cs)
                if acts is not None:
                    calls[d].q.acts = calls[d].wg.acts = array_data(acts)
                calls[d].q.dgh = calls[d].wg.dgh = array_data(dgh)
                calls[d].q.dhs = calls[d].wg.dhs = array_data(dhs)
                calls[d].dgx = calls[d].wg.dgx = array_data(dgx)
                calls[d].gbuf = array_data(gbuf)
                calls[d].wg.dw_ih, calls[d].wg.dw_hh = array_data(dw_ih), array_data(dw_hh)
                calls[d].wg.db_ih, calls[d].wg.db_hh = array_data(db_ih), array_data(db_hh)
                calls[d].dh_n, calls[d].dh0 = dh_n_ + k * self.h_step, dh0_ + k * self.h_step
                if self.lstm:
                    calls[d].dc_n, calls[d].dc0 = dc_n_ + k * self.c_step, dc0_ + k * self.c_step
            for d in range(D):
                runs[d].kind, runs[d].double = BACKWARD_CALL, self.typenum == DOUBLE_TYPE
                runs[d].forward, runs[d].backward = NULL, &calls[d]
            run_layer(runs, D, self.pairs[layer])
            for kept, dgx, dgh, dhs, gbuf in scratches:
                if not kept:
                    self.release(dgx, dgh, dhs, gbuf)
            g = dxs[0]
            if D == 2:  # the reverse direction's input gradient, put back in time order, added
                out, rev = array_data(g), array_data(dxs[1])
                step = B * self.bcalls[layer * D].q.n_in
                with nogil:
                    if self.typenum == DOUBLE_TYPE:
                        add_reversed(<double *> out, <const double *> rev, T, step)
                    else:
                        add_reversed(<float *> out, <const float *> rev, T, step)
        return g, dh0, dc0, tuple(grads)


def deferred_pairs_run():
    """How many times run_deferred has run two calls at once (the tests' proof that a
    bidirectional layer took that path)."""
    return pairs_run


cdef void forward_call(ForwardCall *call, floating dummy) noexcept nogil:
    """The work of forward() once its arguments are checked: initial state, packing, input
    projection, the time loop on call.nt threads, final state."""
    cdef Seq *q = &call.q
    cdef int cell = q.cell
    cdef Py_ssize_t S = q.S, B = q.B, H = q.H, P = q.P, GH = q.GH, I = q.n_in, NH = q.NH
    cdef Py_ssize_t j, r
    cdef const int64_t *order_ = q.order
    cdef const int64_t *lengths_ = q.lengths
    cdef const floating *h0_ = <const floating *> call.h0
    cdef const floating *c0_ = <const floating *> call.c0
    cdef floating *h_n_ = <floating *> call.h_n
    cdef floating *c_n_ = <floating *> call.c_n
    cdef floating *hs_ = <floating *> q.hs
    cdef floating *cs_ = <floating *> q.cs
    cdef floating *xproj_ = <floating *> call.xproj
    cdef const floating *w_ih_ = <const floating *> q.w_ih
    cdef const floating *w_hh_ = <const floating *> q.w_hh
    cdef const floating *b_ih = <const floating *> call.b_ih
    cdef const floating *b_hh_ = <const floating *> q.b_hh
    cdef floating *bias = <floating *> q.bias
    cdef floating *pk = <floating *> call.pk
    cdef floating *pk_n = NULL
    cdef floating *ipk = <floating *> q.ipk
    cdef floating *bpk = <floating *> q.bpk
    cdef floating *bipk = <floating *> q.bipk
    cdef bint packed = call.packed, helper = call.helper
    cdef int nt = call.nt, unit_threads = call.unit_threads
    cdef const int64_t *bounds_ = call.bounds
    # initial state, permuted to compact row order
    for j in range(B):
        memcpy(hs_ + j * P, h0_ + order_[j] * P, P * sizeof(floating))
        if cell == LSTM:
            memcpy(cs_ + j * H, c0_ + order_[j] * H, H * sizeof(floating))
    if cell == GRU_B:
        pk_n = pk + packed_size(H, 2 * H, floating is double)
    q.pk, q.pk_n = pk, pk_n
    if helper and nt == 1 and not units_apply(q, unit_threads):
        q.pipe_steps = pipe_steps(B, I, GH, q.chunk)
    if q.pipe_steps > 0:
        # the ring holds whole chunks, at most FASTRNN_PIPE_SLOTS of them
        q.chunk = min(q.chunk // q.pipe_steps, FASTRNN_PIPE_SLOTS) * q.pipe_steps
    # the threads of a batch-1 unit split share the packing (forward_units); a caller
    # that keeps workspaces (a stream) marks them packed after this call, so everything
    # is packed here even when no step runs (S == 0)
    q.pack_units = not packed and S > 0 and units_apply(q, unit_threads)
    # One row range on this thread packs W_hh^T itself, after its first chunk of input
    # projection: W_hh^T is then the last thing written, in L2 for the first steps. Packed
    # here, before the projection, it was pushed out of the 2 MiB L2 by the projection's
    # W_ih^T at H = 256 and streamed back from L3. (Backward's packs went first for the same
    # reason, until they came from the same reads of W_hh and W_ih as these: pack_both.)
    q.pack_late = not packed and not q.pack_units and nt == 1 and q.pipe_steps == 0 and S > 0
    # In training, each weight matrix read once for forward's pack and backward's together
    # (GRU_B's W_hh^T is packed in two parts: apart). W comes from L3 there, the step's other
    # arrays having passed through L2 since the last call. In-process A/B, new / old: LSTM
    # (100, 1, 256, 256) training, one thread, 0.985 and 0.947 (medians of 10 rounds);
    # (100, 16, 128, 128) 0.997 (one thread), 0.991 (two); (50, 64, 512, 512) 0.982; GRU
    # (100, 1, 256, 256) 0.999.
    # Row ranges on several threads share the packing (run_packs; GRU_B's W_hh^T comes in
    # two parts and keeps the calling thread's)
    cdef bint share = not packed and not q.pack_units and nt > 1 and S > 0 and cell != GRU_B
    q.pack_both = (bpk != NULL and not q.pack_units and not packed and cell != GRU_B
                   and not share)
    if share:
        run_packs(q, nt, <floating> 0)
    elif bpk != NULL and not q.pack_units and not q.pack_both:
        pack(GH, P, False, w_hh_, P, bpk)
        pack(GH, I, False, w_ih_, I, bipk)
    if not packed and not q.pack_units and not share:
        # (This pack skipped altogether, timing only, bounds what a projection that reads
        # W_ih's rows unpacked could gain: LSTM (100, 1, 256, 256) training, new / old
        # 0.977 on one thread, 0.985 on two; not built.)
        if q.pack_both:
            pack_both(I, GH, w_ih_, I, ipk, bipk)
        else:
            pack(I, GH, True, w_ih_, I, ipk)
        if not q.pack_late:
            pack_recurrent(q, <floating> 0)
    if not packed:
        # biases folded into the input projection where they add (GRU keeps b_hh
        # apart, since r multiplies its n block (A2))
        for r in range(GH):
            bias[r] = b_ih[r] + (b_hh_[r] if cell != GRU else <floating> 0)
    if S > 0:
        # (1) the input projection, a chunk of steps at a time, and (2) the time loop: row ranges in parallel, or one row's hidden units
        if units_apply(q, unit_threads):
            run_units(q, xproj_, False, unit_threads)
        elif q.pipe_steps > 0:
            run_pipe(q, xproj_)
        else:
            run_rows(q, xproj_, False, bounds_, nt)
    # final state of each row: the state after its own last step
    for j in range(B):
        r = lengths_[order_[j]]
        memcpy(h_n_ + order_[j] * P, state_before(q, r, j, <floating> 0),
               P * sizeof(floating))
        r = r % NH
        if cell == LSTM:
            memcpy(c_n_ + order_[j] * H, cs_ + (r * B + j) * H, H * sizeof(floating))


def forward(int cell,
            bint training,                      # keep what backward needs in hs, cs, acts, hraw
            bint packed,                        # wpack and ipack already hold these weights
            cnp.ndarray xc,                     # IN   (S, B, I) compact input
            cnp.ndarray w_ih,                   # IN   (G*H, I)
            cnp.ndarray w_hh,                   # IN   (G*H, P)
            const floating[::1] b_ih,           # IN   (G*H,)
            cnp.ndarray b_hh,                   # IN   (G*H,)
            cnp.ndarray w_hr,                   # IN   (P, H) LSTM projection; (0, H) without
            cnp.ndarray h0,                     # IN   (B, P) user row order
            cnp.ndarray c0,                     # IN   (B, H) LSTM; (0, H) otherwise
            cnp.ndarray lengths,                # IN   (B,) each in [0, S]
            cnp.ndarray order,                  # IN   (B,) rows, longest first
            cnp.ndarray bounds,                 # IN   (threads + 1,) row ranges, one a thread
            int unit_threads,                   # IN   threads sharing a batch-1 step by units
            bint helper,                        # IN   a second thread may project the input
                                                #      ahead of a one-range time loop
            cnp.ndarray yc,                     # OUT  (S, B, P) compact output, zero past length
            cnp.ndarray h_n,                    # OUT  (B, P) user row order
            cnp.ndarray c_n,                    # OUT  (B, H) LSTM; (0, H) otherwise
            cnp.ndarray xproj,                  # WORK (projection_steps(...) * B, G*H)
            cnp.ndarray hs,                     # OUT/WORK (NH, B, P): NH = S+1 keeps every
                                                #      state for backward; NH = 2 (inference):
                                                #      hs[0] holds the initial state
            cnp.ndarray cs,                     # OUT/WORK (NH, B, H) LSTM; (0, 0, H) otherwise
            cnp.ndarray acts,                   # OUT/WORK (NA, B, 4H): NA = S keeps activations
                                                #      for backward; NA = 1 is GRU_B's scratch;
                                                #      (0, B, 4H) for inference otherwise
            cnp.ndarray hraw,                   # OUT  (S, B, H) LSTM projection, training:
                                                #      o * tanh(c) before W_hr; else (0, B, H)
            cnp.ndarray work,                   # WORK (B, 3H) GRU: recurrent part; GRU_B: rh;
                                                #      LSTM projection: o * tanh(c)
            cnp.ndarray wpack,                  # WORK forward_pack_size(...): W_hh^T packed
            cnp.ndarray ipack,                  # WORK input_pack_size(...): folded bias, then
                                                #      W_ih^T packed
            cnp.ndarray bwpack,                 # OUT  training: backward()'s wpack, packed
                                                #      here from these weights; else empty
            cnp.ndarray bipack,                 # OUT  training: backward()'s ipack; else empty
            cnp.ndarray xsave,                  # OUT  training: (S, B, I) a copy of xc for the
                                                #      tape, made by the threads as they
                                                #      project it; else (0, 0, 0), no copy
            Deferred later=None):               # given: only prepare the call, which
                                                #      run_deferred() runs later
    """Run one layer in one direction over a compact sequence.

    H is the cell's width and P the state's (P == H except for an LSTM with a projection,
    where h = W_hr (o * tanh(c)) has P < H features).
    Training mode leaves in hs, cs, acts and hraw what backward needs: hs[s] is the state
    before step s; rows past a sequence's end are zero. Given bwpack and bipack (a batch
    the own kernels take), it also packs W_hh and W_ih for backward, which then reads no
    weight array: the packs are that pass's copy of the weights, so that parameters updated
    in place before backward runs do not change its gradients. Inference keeps the initial
    state in hs[0] and reads every later one from yc (each step writes its state there
    once); the LSTM cell state ping-pongs between cs[0] and cs[1].

    With `later`, the arrays' pointers are checked and kept in `later` (which holds the
    arrays too) and the call runs in run_deferred(), the GIL released, perhaps beside another.
    """
    cdef ForwardCall call
    cdef Seq q
    cdef int ft = FLOAT_TYPE if floating is float else DOUBLE_TYPE
    cdef int G = num_gates(cell)
    cdef Py_ssize_t S = xc.shape[0], B = xc.shape[1], I = xc.shape[2]
    cdef Py_ssize_t H = w_hh.shape[0] // G, P = w_hh.shape[1], GH = G * H
    cdef Py_ssize_t NH = hs.shape[0]
    cdef const floating *xc_ = <const floating *> data(xc, 3, ft, False)
    cdef const floating *w_ih_ = <const floating *> data(w_ih, 2, ft, False)
    cdef const floating *w_hh_ = <const floating *> data(w_hh, 2, ft, False)
    cdef const floating *b_hh_ = <const floating *> data(b_hh, 1, ft, False)
    cdef const floating *w_hr_ = <const floating *> data(w_hr, 2, ft, False)
    cdef const floating *h0_ = <const floating *> data(h0, 2, ft, False)
    cdef const floating *c0_ = <const floating *> data(c0, 2, ft, False)
    cdef const int64_t *lengths_ = <const int64_t *> data(lengths, 1, INT64_TYPE, False)
    cdef const int64_t *order_ = <const int64_t *> data(order, 1, INT64_TYPE, False)
    cdef const int64_t *bounds_ = <const int64_t *> data(bounds, 1, INT64_TYPE, False)
    cdef floating *yc_ = <floating *> data(yc, 3, ft, True)
    cdef floating *h_n_ = <floating *> data(h_n, 2, ft, True)
    cdef floating *c_n_ = <floating *> data(c_n, 2, ft, True)
    cdef floating *xproj_ = <floating *> data(xproj, 2, ft, True)
    cdef floating *hs_ = <floating *> data(hs, 3, ft, True)
    cdef floating *cs_ = <floating *> data(cs, 3, ft, True)
    cdef floating *acts_ = <floating *> data(acts, 3, ft, True)
    cdef floating *hraw_ = <floating *> data(hraw, 3, ft, True)
    cdef floating *work_ = <floating *> data(work, 2, ft, True)
    cdef floating *wpack_ = <floating *> data(wpack, 1, ft, True)
    cdef floating *ipack_ = <floating *> data(ipack, 1, ft, True)
    cdef floating *pk = wpack_
    cdef floating *bias = ipack_
    cdef floating *ipk = ipack_ + GH
    cdef floating *bpk = NULL
    cdef floating *bipk = NULL
    cdef floating *xsave_ = NULL
    cdef int nt = <int> (bounds.shape[0] - 1)
    if xsave.size > 0:
        if (not training or xsave.ndim != 3 or xsave.shape[0] != S or xsave.shape[1] != B
                or xsave.shape[2] != I):
            raise ValueError("forward: inconsistent input copy (a bug in fastrnn)")
        xsave_ = <floating *> data(xsave, 3, ft, True)
    if bwpack.shape[0] > 0 or bipack.shape[0] > 0:
        if (not training
                or bwpack.shape[0] < packed_size(GH, P, ft == DOUBLE_TYPE)
                or bipack.shape[0] < packed_size(GH, I, ft == DOUBLE_TYPE)):
            raise ValueError("forward: inconsistent backward packs (a bug in fastrnn)")
        bpk = <floating *> data(bwpack, 1, ft, True)
        bipk = <floating *> data(bipack, 1, ft, True)
    # the derived sizes the loops rely on (Python allocated them; a mismatch is a bug)
    # xproj: the ring of projected steps, its rows a whole number of steps (projection_steps)
    if (xproj.shape[1] != GH or (S > 0 and xproj.shape[0] < B) or
            (B > 0 and xproj.shape[0] % B != 0) or yc.size < S * B * P or
            hs.size != hs.shape[0] * B * P or
            wpack.shape[0] < forward_pack_size(cell, P, H, ft == DOUBLE_TYPE) or
            ipack.shape[0] < input_pack_size(I, GH, ft == DOUBLE_TYPE) or
            hs.shape[0] != (S + 1 if training else 2) or work.size < B * 3 * H or
            b_ih.shape[0] != GH or
            lengths.shape[0] != B or order.shape[0] != B or bounds.shape[0] < 2 or
            h0.size < B * P or h_n.size < B * P):
        raise ValueError("forward: inconsistent workspace sizes (a bug in fastrnn)")
    if B == 0:
        if later is not None:
            later.keep(EMPTY_CALL, floating is double, ())
        return
    q.cell, q.training, q.proj = cell, training, w_hr.shape[0] > 0
    q.S, q.B, q.H, q.P, q.GH, q.NH, q.NA = S, B, H, P, GH, NH, acts.shape[0]
    q.lengths, q.order = lengths_, order_
    q.w_hh, q.w_hr, q.b_hh = w_hh_, w_hr_ if w_hr.shape[0] > 0 else NULL, b_hh_
    q.panel_stride = P * panel(<floating> 0)  # W_hh^T has K = P rows
    q.hs, q.cs, q.acts, q.hraw, q.work, q.yc = hs_, cs_, acts_, hraw_, work_, yc_
    q.dgh = q.dhs = NULL
    q.xc, q.n_in, q.ipk, q.bias, q.w_ih = xc_, I, ipk, bias, w_ih_
    q.chunk = min(S, xproj.shape[0] // B)
    q.pipe, q.pipe_steps = NULL, 0
    q.bpk, q.bipk, q.xsave = bpk, bipk, xsave_
    call.q = q
    call.h0, call.c0, call.h_n, call.c_n = h0_, c0_, h_n_, c_n_
    call.xproj, call.b_ih, call.pk, call.packed = xproj_, &b_ih[0], pk, packed
    call.bounds, call.nt, call.unit_threads, call.helper = bounds_, nt, unit_threads, helper
    if later is not None:  # (the order FORWARD_PER_CALL counts in)
        later.keep(FORWARD_CALL, floating is double,
                   (xc, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, order, bounds, yc, h_n,
                    c_n, xproj, hs, cs, acts, hraw, work, wpack, ipack, bwpack, bipack,
                    xsave))
        later.forward = call
        return
    with nogil:
        forward_call(&call, <floating> 0)


# ---------------------------------------------------------------------------------------
# Backward through time
# ---------------------------------------------------------------------------------------

cdef void backward_call(BackwardCall *call, floating dummy) noexcept nogil:
    """The work of backward() once its arguments are checked."""
    cdef Seq *q = &call.q
    cdef WGrad *wg = &call.wg
    cdef int cell = q.cell, nt = call.nt, unit_threads = call.unit_threads
    cdef bint proj = q.proj
    cdef Py_ssize_t S = q.S, B = q.B, H = q.H, P = q.P, GH = q.GH, I = q.n_in
    cdef Py_ssize_t j
    cdef const int64_t *order_ = q.order
    cdef const int64_t *bounds_ = call.bounds
    cdef const floating *dh_n_ = <const floating *> call.dh_n
    cdef const floating *dc_n_ = <const floating *> call.dc_n
    cdef floating *dh0_ = <floating *> call.dh0
    cdef floating *dc0_ = <floating *> call.dc0
    cdef floating *dw_ih_ = <floating *> wg.dw_ih
    cdef floating *dw_hh_ = <floating *> wg.dw_hh
    cdef floating *db_ih_ = <floating *> wg.db_ih
    cdef floating *db_hh_ = <floating *> wg.db_hh
    cdef floating *dw_hr_ = <floating *> wg.dw_hr
    cdef floating *dgx_ = <floating *> call.dgx
    cdef floating *gbuf_ = <floating *> call.gbuf
    cdef floating *dh = <floating *> q.work
    cdef floating *dc = <floating *> q.work + B * H
    if S == 0 or B == 0:  # otherwise the products below write every gradient
        memset(dw_ih_, 0, GH * I * sizeof(floating))
        memset(dw_hh_, 0, GH * P * sizeof(floating))
        memset(db_ih_, 0, GH * sizeof(floating))
        memset(db_hh_, 0, GH * sizeof(floating))
        if proj:
            memset(dw_hr_, 0, P * H * sizeof(floating))
    if B > 0:
        for j in range(B):
            memcpy(dh + j * P, dh_n_ + order_[j] * P, P * sizeof(floating))
            if cell == LSTM:
                memcpy(dc + j * H, dc_n_ + order_[j] * H, H * sizeof(floating))
        if units_apply(q, unit_threads):
            run_units(q, dgx_, True, unit_threads)
        else:
            run_rows(q, dgx_, True, bounds_, nt)
        for j in range(B):
            memcpy(dh0_ + order_[j] * P, dh + j * P, P * sizeof(floating))
            if cell == LSTM:
                memcpy(dc0_ + order_[j] * H, dc + j * H, H * sizeof(floating))
        if S > 0:
            run_weight_grads(wg, gbuf_, call.gbuf_size, call.gbuf_threads)


def backward(int cell,
             cnp.ndarray xc,                    # IN   (S, B, I) compact input of forward
             cnp.ndarray w_ih,                  # IN   (G*H, I)
             cnp.ndarray w_hh,                  # IN   (G*H, P)
             cnp.ndarray w_hr,                  # IN   (P, H) LSTM projection; (0, H) without
             cnp.ndarray lengths,               # IN   (B,)
             cnp.ndarray order,                 # IN   (B,)
             cnp.ndarray bounds,                # IN   (threads + 1,) row ranges, one a thread
             int unit_threads,                  # IN   threads sharing a batch-1 step by units
             cnp.ndarray hs,                    # IN   (S+1, B, P) from forward (training)
             cnp.ndarray cs,                    # IN   (S+1, B, H) LSTM; (0, 0, H) otherwise
             cnp.ndarray acts,                  # IN   (S, B, 4H); (0, B, 4H) for RNN
             cnp.ndarray hraw,                  # IN   (S, B, H) LSTM projection; else (0, B, H)
             cnp.ndarray dyc,                   # IN   (S, B, P) compact dL/dy, zero past length
             cnp.ndarray dh_n,                  # IN   (B, P) user order
             cnp.ndarray dc_n,                  # IN   (B, H) LSTM; (0, H) otherwise
             cnp.ndarray dxc,                   # OUT  (S, B, I) compact dL/dx
             cnp.ndarray dh0,                   # OUT  (B, P) user order
             cnp.ndarray dc0,                   # OUT  (B, H) LSTM; (0, H) otherwise
             cnp.ndarray dw_ih,                 # OUT  (G*H, I)
             cnp.ndarray dw_hh,                 # OUT  (G*H, P)
             floating[::1] db_ih,               # OUT  (G*H,)
             cnp.ndarray db_hh,                 # OUT  (G*H,)
             cnp.ndarray dw_hr,                 # OUT  (P, H) LSTM projection; (0, H) without
             cnp.ndarray dgx,                   # WORK (S*B, G*H) gate gradients, input side
             cnp.ndarray dgh,                   # WORK (S*B, H) GRU: d hh_n; else (0, H)
             cnp.ndarray dhs,                   # WORK (S*B, P) LSTM projection: dL/dh per step
             cnp.ndarray work,                  # WORK (3B, H) dh, dc, dh_prev / drh
             cnp.ndarray wpack,                 # IN   backward_pack_size(...): W_hh packed
                                                #      by forward() (its bwpack)
             cnp.ndarray ipack,                 # IN   backward_input_pack_size(...): W_ih
                                                #      packed for dX by forward() (bipack)
             cnp.ndarray gbuf,                  # WORK (threads, gemm_buffer_size()) scratch
                                                #      of the weight-gradient products, one
                                                #      row a thread (its rows: their threads)
             Deferred later=None):              # given: only prepare (see forward())
    """Backpropagation through time of one forward() call made in training mode.

    Steps run from the last down to 0 on the rows still running there; a row's state
    gradient passes through its padded steps untouched. After the loop, whole-sequence GEMMs
    give the weight, bias and input gradients (rows past a sequence's end hold zero
    gate gradients, so they add nothing). Those products run on fastrnn's threads too (dX by
    row ranges, weight gradients by column panels), so no BLAS thread pool competes with
    them.
    """
    cdef BackwardCall call
    cdef Seq q
    cdef WGrad wg
    cdef int ft = FLOAT_TYPE if floating is float else DOUBLE_TYPE
    cdef int nt = <int> (bounds.shape[0] - 1)
    cdef int G = num_gates(cell)
    cdef Py_ssize_t S = xc.shape[0], B = xc.shape[1], I = xc.shape[2]
    cdef Py_ssize_t H = w_hh.shape[0] // G, P = w_hh.shape[1], GH = G * H, SB = S * B
    cdef bint proj = w_hr.shape[0] > 0
    cdef const floating *xc_ = <const floating *> data(xc, 3, ft, False)
    cdef const floating *w_ih_ = <const floating *> data(w_ih, 2, ft, False)
    cdef const floating *w_hh_ = <const floating *> data(w_hh, 2, ft, False)
    cdef const floating *w_hr_ = <const floating *> data(w_hr, 2, ft, False)
    cdef const int64_t *lengths_ = <const int64_t *> data(lengths, 1, INT64_TYPE, False)
    cdef const int64_t *order_ = <const int64_t *> data(order, 1, INT64_TYPE, False)
    cdef const int64_t *bounds_ = <const int64_t *> data(bounds, 1, INT64_TYPE, False)
    cdef const floating *hs_ = <const floating *> data(hs, 3, ft, False)
    cdef const floating *cs_ = <const floating *> data(cs, 3, ft, False)
    cdef const floating *acts_ = <const floating *> data(acts, 3, ft, False)
    cdef const floating *hraw_ = <const floating *> data(hraw, 3, ft, False)
    cdef const floating *dyc_ = <const floating *> data(dyc, 3, ft, False)
    cdef const floating *dh_n_ = <const floating *> data(dh_n, 2, ft, False)
    cdef const floating *dc_n_ = <const floating *> data(dc_n, 2, ft, False)
    cdef floating *dxc_ = <floating *> data(dxc, 3, ft, True)
    cdef floating *dh0_ = <floating *> data(dh0, 2, ft, True)
    cdef floating *dc0_ = <floating *> data(dc0, 2, ft, True)
    cdef floating *dw_ih_ = <floating *> data(dw_ih, 2, ft, True)
    cdef floating *dw_hh_ = <floating *> data(dw_hh, 2, ft, True)
    cdef floating *db_hh_ = <floating *> data(db_hh, 1, ft, True)
    cdef floating *dw_hr_ = <floating *> data(dw_hr, 2, ft, True)
    cdef floating *dgx_ = <floating *> data(dgx, 2, ft, True)
    cdef floating *dgh_ = <floating *> data(dgh, 2, ft, True)
    cdef floating *dhs_ = <floating *> data(dhs, 2, ft, True)
    cdef floating *work_ = <floating *> data(work, 2, ft, True)
    cdef const floating *pk = <const floating *> data(wpack, 1, ft, False)
    cdef const floating *ipk = <const floating *> data(ipack, 1, ft, False)
    cdef floating *gbuf_ = <floating *> data(gbuf, 2, ft, True)
    if (dgx.size < SB * GH or dyc.size < SB * P or hs.size < (S + 1) * B * P or
            work.size < 3 * B * H or db_ih.shape[0] != GH or lengths.shape[0] != B or
            order.shape[0] != B or bounds.shape[0] < 2 or gbuf.shape[0] < 1
            or (cell != RNN_TANH and cell != RNN_RELU and acts.size < SB * 4 * H)
            or wpack.shape[0] < backward_pack_size(cell, P, H, ft == DOUBLE_TYPE)
            or ipack.shape[0] < backward_input_pack_size(GH, I, ft == DOUBLE_TYPE)):
        raise ValueError("backward: inconsistent workspace sizes (a bug in fastrnn)")
    q.cell, q.training, q.proj = cell, True, proj
    q.S, q.B, q.H, q.P, q.GH, q.NH, q.NA = S, B, H, P, GH, S + 1, acts.shape[0]
    q.lengths, q.order = lengths_, order_
    q.w_hh, q.w_hr, q.b_hh = w_hh_, w_hr_ if proj else NULL, NULL
    q.pk, q.pk_n = pk, NULL
    q.panel_stride = GH * panel(<floating> 0)  # W_hh has K = G*H rows
    q.xc, q.n_in, q.ipk, q.bias, q.w_ih = dxc_, I, ipk, NULL, w_ih_  # xc: dX out, by row range
    q.chunk = 0  # no input projection here
    q.pipe, q.pipe_steps = NULL, 0
    q.hs, q.cs, q.acts, q.hraw = <void *> hs_, <void *> cs_, <void *> acts_, <void *> hraw_
    q.work, q.yc, q.dgh, q.dhs = work_, <void *> dyc_, dgh_, dhs_
    wg.cell, wg.proj, wg.SB, wg.H, wg.P, wg.GH, wg.n_in = cell, proj, SB, H, P, GH, I
    wg.dgx, wg.dgh, wg.xc, wg.hs = dgx_, dgh_, xc_, hs_
    wg.acts, wg.dhs, wg.hraw = acts_, dhs_, hraw_
    wg.dw_ih, wg.dw_hh, wg.db_ih, wg.db_hh = dw_ih_, dw_hh_, &db_ih[0], db_hh_
    wg.dw_hr = dw_hr_
    q.bpk = q.bipk = q.xsave = NULL
    q.pack_units = q.pack_late = q.pack_both = False  # forward packed wpack and ipack
    call.q, call.wg = q, wg
    call.dh_n, call.dc_n, call.dh0, call.dc0 = dh_n_, dc_n_, dh0_, dc0_
    call.dgx, call.gbuf = dgx_, gbuf_
    call.gbuf_threads, call.gbuf_size = <int> gbuf.shape[0], gbuf.shape[1]
    call.bounds, call.nt, call.unit_threads = bounds_, nt, unit_threads
    if later is not None:  # (the order BACKWARD_PER_CALL counts in)
        later.keep(BACKWARD_CALL, floating is double,
                   (xc, w_ih, w_hh, w_hr, lengths, order, bounds, hs, cs, acts, hraw, dyc,
                    dh_n, dc_n, dxc, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr, dgx, dgh, dhs,
                    work, wpack, ipack, gbuf))
        later.backward = call
        return
    with nogil:
        backward_call(&call, <floating> 0)


# ---------------------------------------------------------------------------------------
# Elementwise activations (exposed for the accuracy tests)
# ---------------------------------------------------------------------------------------

def sigmoid(const floating[::1] x, floating[::1] out):
    """out := sigmoid(x) with the kernels' own implementation."""
    if out.shape[0] != x.shape[0]:
        raise ValueError(f"out has {out.shape[0]} elements, x has {x.shape[0]}")
    if x.shape[0] == 0:
        return
    with nogil:
        if floating is float:
            fastrnn_sigmoid_f32(x.shape[0], &x[0], &out[0])
        else:
            fastrnn_sigmoid_f64(x.shape[0], &x[0], &out[0])


def tanh(const floating[::1] x, floating[::1] out):
    """out := tanh(x) with the kernels' own implementation."""
    if out.shape[0] != x.shape[0]:
        raise ValueError(f"out has {out.shape[0]} elements, x has {x.shape[0]}")
    if x.shape[0] == 0:
        return
    with nogil:
        if floating is float:
            fastrnn_tanh_f32(x.shape[0], &x[0], &out[0])
        else:
            fastrnn_tanh_f64(x.shape[0], &x[0], &out[0])


# ---------------------------------------------------------------------------------------
# Small whole-array helpers for the model layer
# ---------------------------------------------------------------------------------------

def multiply(const floating[::1] a,             # IN  (n,)
             const floating[::1] b,             # IN  (n,)
             floating[::1] out):                # OUT (n,) may be a
    """out := a * b (dropout: b holds 0 or 1 / (1 - p))."""
    cdef Py_ssize_t k
    if not a.shape[0] == b.shape[0] == out.shape[0]:
        raise ValueError(f"sizes differ: a {a.shape[0]}, b {b.shape[0]}, out {out.shape[0]}")
    with nogil:
        for k in range(out.shape[0]):
            out[k] = a[k] * b[k]


def add_into(const floating[::1] a,             # IN  (n,)
             floating[::1] out):                # IN/OUT (n,)
    """out += a (summing the input gradients of two directions)."""
    if a.shape[0] != out.shape[0]:
        raise ValueError(f"sizes differ: a {a.shape[0]}, out {out.shape[0]}")
    if out.shape[0] == 0:
        return
    with nogil:
        add_rows(1, out.shape[0], &a[0], &out[0])


def pool_selftest(int jobs):
    """Run `jobs` small jobs of 2, 3 and 4 shares through the thread pool; returns how many
    shares ran other than exactly once within their job (0 when the pool is sound)."""
    cdef int bad
    with nogil:
        bad = fastrnn_pool_selftest(jobs)
    if bad < 0:
        raise MemoryError()
    return bad


def pipe_selftest(int runs, long chunks, long slots):
    """Run `runs` pipes of `chunks` chunks (<= 256) over `slots` ring slots between a loop and
    a helper thread; returns the anomalies (chunks projected other than once, slots
    overwritten while read): 0 when the pipe is sound."""
    cdef int bad
    with nogil:
        bad = fastrnn_pipe_selftest(runs, chunks, slots)
    if bad < 0:
        raise MemoryError()
    return bad


def pipes_started():
    """How many calls so far had a helper thread project their input (the tests' proof that
    a configuration takes that path)."""
    return fastrnn_pipes_started()


def pool_sleeps():
    """How many times so far a worker of the pool stopped spinning and went to sleep (the
    tests' proof that idle workers do not spin on)."""
    return fastrnn_pool_sleeps()
