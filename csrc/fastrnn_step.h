/*
 * fastrnn_step.h -- a whole time step of the small-batch path in one pass: the recurrent
 * product with the cell's gate math applied to each block of units while its
 * pre-activations are still in registers.
 *
 * Why: computing the product into a (n, G*H) buffer and then running the gate math over
 * that buffer wrote and read back every pre-activation once a step, and the gate math ran
 * as a second pass (LSTM (100, 16, 128, 128) inference, one thread: 9.6% of the time in
 * that pass). Here W_hh^T is packed by fastrnn_pack_gates (fastrnn_matmul.h) so that one
 * panel holds the G gates of VW units side by side: a tile of R batch rows x G vectors
 * then ends with everything the gate math of those units needs.
 *
 * Notation, equations and saved activations: fastrnn_cells.h. Rows are the n active batch
 * rows of the step: h_prev (n, K) row stride K, pre (n, G*H), c_prev, c, h (n, H).
 * j0..j1-1: the units to compute (j0 a multiple of the vector width VW, 16 floats or 8
 * doubles; j1 such a multiple or H), so that threads can share a batch-1 step by units.
 * Each unit's numbers are those of the unfused path, the product summed over k in order,
 * then added to its pre-activation (fastrnn_small_gemm, beta = 1), then the gate math of
 * fastrnn_cells.h: they do not depend on the range, the thread count or the batch.
 * act may be NULL (inference). Buffers do not alias.
 */
#ifndef FASTRNN_STEP_H
#define FASTRNN_STEP_H

#include <stddef.h>

#define FASTRNN_DECLARE_STEP(T, SFX)                                                          \
    /* LSTM (L1)-(L3): a = pre + h_prev W_hh^T (pre holds W_ih x + both biases);             \
       packed: W_hh (4H, K) through fastrnn_pack_gates; act [i f g o] (n, 4H) or NULL */      \
    void fastrnn_lstm_step_##SFX(ptrdiff_t n, ptrdiff_t H, ptrdiff_t j0, ptrdiff_t j1,         \
                                 ptrdiff_t K, const T *h_prev, const T *packed,               \
                                 const T *pre, const T *c_prev, T *act, T *c, T *h);          \
    /* GRU "reset after" (A1)-(A3): hh = h_prev W_hh^T + b_hh, x = pre (W_ih x + b_ih);       \
       packed: W_hh (3H, H) through fastrnn_pack_gates; act [r z n hh_n] (n, 4H) or NULL */  \
    void fastrnn_gru_step_##SFX(ptrdiff_t n, ptrdiff_t H, ptrdiff_t j0, ptrdiff_t j1,          \
                                const T *h_prev, const T *packed, const T *b_hh,              \
                                const T *pre, T *act, T *h);

FASTRNN_DECLARE_STEP(float, f32)
FASTRNN_DECLARE_STEP(double, f64)

#undef FASTRNN_DECLARE_STEP

#endif /* FASTRNN_STEP_H */
