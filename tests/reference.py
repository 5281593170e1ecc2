"""Plain float64 NumPy reference of every cell: the oracle for every compiled path.

One function per cell, one loop over time, the equations of csrc/fastrnn_cells.h written
out line by line. Weights are in PyTorch's layout and gate order. Sequences are time-major
(T, B, I); `lengths` gives each row its own length (outputs past it are zero, the final
state is the state at its last step), and `reverse` walks each row from its own last step
down to 0.
"""

import numpy as np


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def _step_rnn(x, h, w_ih, w_hh, b_ih, b_hh, relu):
    a = x @ w_ih.T + b_ih + h @ w_hh.T + b_hh  # (R1) pre-activation
    return (np.maximum(a, 0.0) if relu else np.tanh(a)), None


def _step_lstm(x, hc, w_ih, w_hh, b_ih, b_hh):
    h, c = hc
    a = x @ w_ih.T + b_ih + h @ w_hh.T + b_hh
    i, f, g, o = np.split(a, 4, axis=-1)  # gate order i, f, g, o
    i, f, g, o = sigmoid(i), sigmoid(f), np.tanh(g), sigmoid(o)  # (L1)
    c = f * c + i * g  # (L2)
    h = o * np.tanh(c)  # (L3)
    return h, c


def _step_gru(x, h, w_ih, w_hh, b_ih, b_hh, reset_after):
    xr, xz, xn = np.split(x @ w_ih.T + b_ih, 3, axis=-1)  # gate order r, z, n
    w_hr, w_hz, w_hn = np.split(w_hh, 3, axis=0)
    b_hr, b_hz, b_hn = np.split(b_hh, 3)
    r = sigmoid(xr + h @ w_hr.T + b_hr)  # (A1) / (B1)
    z = sigmoid(xz + h @ w_hz.T + b_hz)
    if reset_after:
        n = np.tanh(xn + r * (h @ w_hn.T + b_hn))  # (A2): reset applied after the product
    else:
        n = np.tanh(xn + (r * h) @ w_hn.T + b_hn)  # (B2): reset applied before it
    return (1.0 - z) * n + z * h, None  # (A3) / (B3)


def run(cell, x, params, h0, c0=None, lengths=None, reverse=False):
    """One layer, one direction. cell: rnn_tanh, rnn_relu, lstm, gru, gru_reset_before.

    params: (w_ih, w_hh, b_ih, b_hh). Returns y (T, B, H), h_n (B, H), c_n (B, H) or None.
    """
    x = np.asarray(x, np.float64)
    w_ih, w_hh, b_ih, b_hh = (np.asarray(p, np.float64) for p in params)
    T, B, _ = x.shape
    H = w_hh.shape[1]
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    y = np.zeros((T, B, H))
    h_n = np.zeros((B, H))
    c_n = np.zeros((B, H))
    for b in range(B):  # one row at a time: each has its own length and direction
        h = np.asarray(h0, np.float64)[b : b + 1]
        c = None if c0 is None else np.asarray(c0, np.float64)[b : b + 1]
        L = int(lengths[b])
        steps = range(L - 1, -1, -1) if reverse else range(L)
        for t in steps:
            xt = x[t, b : b + 1]
            if cell in ("rnn_tanh", "rnn_relu"):
                h, _ = _step_rnn(xt, h, w_ih, w_hh, b_ih, b_hh, cell == "rnn_relu")
            elif cell == "lstm":
                h, c = _step_lstm(xt, (h, c), w_ih, w_hh, b_ih, b_hh)
            else:
                h, _ = _step_gru(xt, h, w_ih, w_hh, b_ih, b_hh, cell == "gru")
            y[t, b] = h[0]
        h_n[b] = h[0]
        if c is not None:
            c_n[b] = c[0]
    return y, h_n, (c_n if cell == "lstm" else None)


def run_model(cell, x, state_dict, num_layers, bidirectional, h0, c0=None, lengths=None):
    """A stacked, optionally bidirectional model built from `run`, without dropout.

    x is time-major (T, B, I); state_dict uses PyTorch's names (a missing bias is zero);
    h0 and c0 are (num_layers * D, B, H). Returns y (T, B, D*H), h_n, c_n (or None).
    """
    D = 2 if bidirectional else 1
    h0 = np.asarray(h0, np.float64)
    c0 = None if c0 is None else np.asarray(c0, np.float64)
    layer_in = np.asarray(x, np.float64)
    h_n, c_n = np.zeros_like(h0), np.zeros_like(h0)
    for layer in range(num_layers):
        outs = []
        for d, sfx in enumerate(("", "_reverse")[:D]):
            k = layer * D + d  # PyTorch's state index: layer-major, direction-minor
            w_ih = state_dict[f"weight_ih_l{layer}{sfx}"]
            w_hh = state_dict[f"weight_hh_l{layer}{sfx}"]
            zero = np.zeros(w_hh.shape[0])  # bias=False is a zero bias
            b_ih = state_dict.get(f"bias_ih_l{layer}{sfx}", zero)
            b_hh = state_dict.get(f"bias_hh_l{layer}{sfx}", zero)
            y, h_n[k], c = run(
                cell, layer_in, (w_ih, w_hh, b_ih, b_hh), h0[k],
                None if c0 is None else c0[k], lengths, reverse=bool(d),
            )  # fmt: skip
            if c is not None:
                c_n[k] = c
            outs.append(y)
        layer_in = np.concatenate(outs, axis=2)  # directions side by side, forward first
    return layer_in, h_n, (c_n if c0 is not None else None)
