/*
 * fastrnn_cells.h -- pointwise gate math of one time step, forward and backward.
 *
 * Notation
 * --------
 * Axes: n   active batch rows of this step (rows are contiguous, row-major)
 *       H   hidden size
 *       G   gates (RNN 1, GRU 3, LSTM 4); gate blocks lie side by side in a row:
 *           row b of a (n, G*H) buffer is [gate0: H][gate1: H]...
 * Pointer names carry their axes: `pre__bg` is (n, G*H), `h__bh` is (n, H).
 * j0, j1: the RNN, LSTM and GRU ("reset after") kernels touch only units j0..j1-1 of each
 * row (of every gate), so that threads can share one batch row's step by hidden units;
 * (0, H) is the whole step. Each unit's numbers do not depend on the range.
 * Gate order is PyTorch's: LSTM i,f,g,o; GRU r,z,n.
 * sigma is the logistic function, * is elementwise.
 *
 * Forward equations (a_* are pre-activations, already holding W_ih x + W_hh h + biases
 * unless stated otherwise):
 *   (R1) RNN        h = act(a),  act = tanh or relu
 *   (L1) LSTM       i = sigma(a_i), f = sigma(a_f), g = tanh(a_g), o = sigma(a_o)
 *   (L2)            c = f * c_prev + i * g
 *   (L3)            h = o * tanh(c)
 *   GRU "reset after" (PyTorch, cuDNN): x_* = W_i* x + b_i*, hh_* = W_h* h_prev + b_h*
 *   (A1)            r = sigma(x_r + hh_r), z = sigma(x_z + hh_z)
 *   (A2)            n = tanh(x_n + r * hh_n)
 *   (A3)            h = (1 - z) * n + z * h_prev
 *   GRU "reset before" (Cho et al. 2014, the lecture's form), two stages per step:
 *   (B1)            r = sigma(a_r), z = sigma(a_z), rh = r * h_prev
 *   (B2)            n = tanh(a_n),  a_n = W_in x + b_in + W_hn rh + b_hn
 *   (B3)            h = (1 - z) * n + z * h_prev
 *
 * Saved activations (training), one row of `act__bg` per batch row:
 *   RNN     none (the output h is its own derivative's input)
 *   LSTM    [i f g o]              (4H)
 *   GRU-A   [r z n hh_n]           (4H)
 *   GRU-B   [r z n rh]             (4H)
 *
 * Backward: each *_bwd turns the gradient of the step's output into gate gradients d a_*
 * (`dpre__bg`); the caller multiplies them by W_hh (BLAS) for the recurrent part of dh_prev.
 *
 * Activations: float64 uses the C library's exp and tanh. float32 uses the vectorisable
 * approximations in fastrnn_math.h (relative error below 3e-7 for sigmoid and tanh over the
 * whole float range; see tests/test_math.py).
 *
 * Functions take sizes first, then const inputs, then outputs; nothing allocates, nothing
 * calls BLAS. Buffers never alias each other (the kernels declare them restrict), except
 * act__bg, which the GRU-B stages read and write in place. Symbols: fastrnn_<cell>_<what>_<fwd|bwd>_<f32|f64>.
 */
#ifndef FASTRNN_CELLS_H
#define FASTRNN_CELLS_H

#include <stddef.h>

#define FASTRNN_DECLARE(T, SFX)                                                              \
    /* (R1) */                                                    \
    void fastrnn_rnn_gates_fwd_##SFX(ptrdiff_t n, ptrdiff_t H, ptrdiff_t j0, ptrdiff_t j1, int relu,                      \
                                     const T *pre__bh, T *h__bh);                            \
    /* d a = dh * act'(a), from the output h */                                              \
    void fastrnn_rnn_gates_bwd_##SFX(ptrdiff_t n, ptrdiff_t H, ptrdiff_t j0, ptrdiff_t j1, int relu,                      \
                                     const T *h__bh, const T *dh__bh, T *dpre__bh);          \
    /* (L1)-(L3); act__bg may be NULL (inference) */                                \
    void fastrnn_lstm_gates_fwd_##SFX(ptrdiff_t n, ptrdiff_t H, ptrdiff_t j0, ptrdiff_t j1, const T *pre__bg,             \
                                      const T *c_prev__bh, T *act__bg, T *c__bh, T *h__bh);  \
    /* dc__bh: in dL/dc, out dL/dc_prev; dh__bh: dL/dh of this step */                       \
    void fastrnn_lstm_gates_bwd_##SFX(ptrdiff_t n, ptrdiff_t H, ptrdiff_t j0, ptrdiff_t j1, const T *act__bg,             \
                                      const T *c_prev__bh, const T *c__bh, const T *dh__bh,  \
                                      T *dc__bh, T *dpre__bg);                               \
    /* (A1)-(A3); x__bg = W_i x + b_i, hh__bg = W_h h_prev + b_h; act__bg may be NULL */     \
    void fastrnn_gru_gates_fwd_##SFX(ptrdiff_t n, ptrdiff_t H, ptrdiff_t j0, ptrdiff_t j1, const T *x__bg,                \
                                     const T *hh__bg, const T *h_prev__bh, T *act__bg,       \
                                     T *h__bh);                                              \
    /* dx__bg: gradients of x_r, x_z, x_n (those of hh_r, hh_z are the same); dhn__bh: of    \
       hh_n (dn * r); dh_prev__bh gets the direct part dh * z (the caller adds the rest) */  \
    void fastrnn_gru_gates_bwd_##SFX(ptrdiff_t n, ptrdiff_t H, ptrdiff_t j0, ptrdiff_t j1, const T *act__bg,              \
                                     const T *h_prev__bh, const T *dh__bh, T *dx__bg,        \
                                     T *dhn__bh, T *dh_prev__bh);                            \
    /* (B1); pre__bg holds a_r, a_z in its first 2H columns (row stride 3H) */               \
    void fastrnn_grub_rz_fwd_##SFX(ptrdiff_t n, ptrdiff_t H, const T *pre__bg,                \
                                   const T *h_prev__bh, T *act__bg, T *rh__bh);              \
    /* (B2)-(B3); pre__bg holds a_n in its last H columns; act__bg holds r, z from B1 */     \
    void fastrnn_grub_n_fwd_##SFX(ptrdiff_t n, ptrdiff_t H, const T *pre__bg,                 \
                                  const T *h_prev__bh, T *act__bg, T *h__bh);                \
    /* inverse of (B3), (B2): d a_n into dpre__bg's last H columns, dh_prev = dh * z */      \
    void fastrnn_grub_n_bwd_##SFX(ptrdiff_t n, ptrdiff_t H, const T *act__bg,                 \
                                  const T *h_prev__bh, const T *dh__bh, T *dpre__bg,         \
                                  T *dh_prev__bh);                                           \
    /* inverse of (B1): drh__bh = d a_n W_hn; d a_r, d a_z into dpre__bg, dh_prev += drh*r */\
    void fastrnn_grub_rz_bwd_##SFX(ptrdiff_t n, ptrdiff_t H, const T *act__bg,                \
                                   const T *h_prev__bh, const T *drh__bh, T *dpre__bg,       \
                                   T *dh_prev__bh);                                          \
    /* elementwise y = sigma(x) and y = tanh(x), for the accuracy tests */                   \
    void fastrnn_sigmoid_##SFX(ptrdiff_t n, const T *x, T *y);                                \
    void fastrnn_tanh_##SFX(ptrdiff_t n, const T *x, T *y);

/* Flush denormals to zero (FTZ and DAZ) in this thread; returns the previous setting for
   fastrnn_denormals_restore. Denormal operands slow some CPUs many-fold; the time loops run
   with them flushed. No-op where the architecture has no such switch. */
unsigned fastrnn_denormals_flush(void);
void fastrnn_denormals_restore(unsigned previous);

FASTRNN_DECLARE(float, f32)
FASTRNN_DECLARE(double, f64)

#undef FASTRNN_DECLARE

#endif /* FASTRNN_CELLS_H */
