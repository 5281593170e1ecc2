/*
 * fastrnn_step.h -- a whole batch-1 LSTM or GRU step in one kernel: the recurrent product and
 * the gate math, interleaved.
 *
 * Why: at batch 1 a step streams W_hh (packed, fastrnn_matmul.h) from L2 at one FMA per
 * element loaded, so the FMA and divide units idle half the time; the gate math run after
 * the product (fastrnn_lstm_gates_fwd) then adds its own time to every step (11% of an
 * LSTM (100, 1, 64, 64) call). Here each panel's gate activations run inside the next
 * panel's k loop, one vector per quarter of it, where the out-of-order core overlaps them
 * with the loads; only the last panel's activations and the cell update (L2), (L3) follow
 * the product.
 *
 * Same numbers as the product (fastrnn_small_gemm, beta = 1) followed by
 * fastrnn_lstm_gates_fwd: every column sums over k in order from 0, then adds the
 * pre-activation; every unit goes through the same SIGMOID/TANH and (L2), (L3) code.
 * Notation: fastrnn_cells.h (L1)-(L3).
 */
#ifndef FASTRNN_STEP_H
#define FASTRNN_STEP_H

#include <stddef.h>

#define FASTRNN_DECLARE_STEP(T, SFX)                                                         \
    /* One LSTM step of one row. pre (4H): x W_ih^T + biases in, the activated gates out;    \
       h_prev (K); packed: W_hh^T (K, 4H) in fastrnn_matmul.h's panels (panel_stride apart); \
       reverse: panels last to first (odd steps: the panels read last are still in L1).      \
       H must be a multiple of the vector width (FASTRNN_VECTOR_*), so that every vector     \
       of columns lies in one gate. act (4H), if not NULL, gets the activated gates;          \
       c_prev, c (H): the cell state before and after; h (H): the output. */                 \
    void fastrnn_lstm_step_row_##SFX(ptrdiff_t H, ptrdiff_t K, const T *h_prev,               \
                                     const T *packed, ptrdiff_t panel_stride, int reverse,   \
                                     T *pre, const T *c_prev, T *act, T *c, T *h);  \
    /* One GRU ("reset after") step of one row, the same way: x (3H) = W_i x + b_i in, r and  \
       z activated in its first 2H out; hh (3H) gets W_h h_prev + b_hh (b_hh (3H)); K = H.   \
       H must be a multiple of the vector width. act (4H), if not NULL, gets [r z n hh_n]. */ \
    void fastrnn_gru_step_row_##SFX(ptrdiff_t H, ptrdiff_t K, const T *h_prev,                \
                                    const T *packed, ptrdiff_t panel_stride, int reverse,    \
                                    const T *b_hh, T *x, T *hh, T *act, T *h);

FASTRNN_DECLARE_STEP(float, f32)
FASTRNN_DECLARE_STEP(double, f64)

#undef FASTRNN_DECLARE_STEP

#endif /* FASTRNN_STEP_H */
