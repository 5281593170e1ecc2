"""`python -m fastrnn`: run every cell forward and backward and check it.

For each cell: the compiled forward pass against a plain NumPy computation of the same
equations (float64), the compiled backward pass against a central finite difference of
the compiled forward along a random direction (float64), and the time per step of float32
inference and of a float32 training step (forward + backward).
"""

from __future__ import annotations

import sys
import time

import numpy as np

from . import GRU, LSTM, RNN


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def numpy_forward(model, x, h0, c0=None):
    """The model's equations in plain NumPy, float64, one layer, one direction."""
    p = {k: v.astype(np.float64) for k, v in model.state_dict().items()}
    w_ih, w_hh, b_ih, b_hh = p["weight_ih_l0"], p["weight_hh_l0"], p["bias_ih_l0"], p["bias_hh_l0"]
    h, c = h0[0].astype(np.float64), None if c0 is None else c0[0].astype(np.float64)
    ys = []
    for xt in x.astype(np.float64):
        gx, gh = xt @ w_ih.T + b_ih, h @ w_hh.T + b_hh
        if isinstance(model, LSTM):
            i, f, g, o = np.split(gx + gh, 4, axis=1)
            c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
            h = _sigmoid(o) * np.tanh(c)
        elif isinstance(model, GRU):
            (xr, xz, xn), (hr, hz, hn) = np.split(gx, 3, axis=1), np.split(gh, 3, axis=1)
            r, z = _sigmoid(xr + hr), _sigmoid(xz + hz)
            if model.reset_after:
                n = np.tanh(xn + r * hn)
            else:
                n = np.tanh(xn + (r * h) @ w_hh[2 * h.shape[1] :].T + b_hh[2 * h.shape[1] :])
            h = (1.0 - z) * n + z * h
        else:
            a = gx + gh
            h = np.maximum(a, 0.0) if model.nonlinearity == "relu" else np.tanh(a)
        ys.append(h)
    return np.stack(ys)


def _models(dtype, I, H, seed):
    return {
        "rnn_tanh": RNN(I, H, dtype=dtype, seed=seed),
        "rnn_relu": RNN(I, H, nonlinearity="relu", dtype=dtype, seed=seed),
        "lstm": LSTM(I, H, dtype=dtype, seed=seed),
        "gru": GRU(I, H, dtype=dtype, seed=seed),
        "gru_reset_before": GRU(I, H, reset_after=False, dtype=dtype, seed=seed),
    }


def _state(model, B, rng):
    h0 = rng.standard_normal((1, B, model.hidden_size))
    return (h0, rng.standard_normal(h0.shape)) if isinstance(model, LSTM) else h0


def check_cell(model, rng, T=7, B=3):
    """Max abs errors (forward vs NumPy, backward vs finite difference), float64 model."""
    x = rng.standard_normal((T, B, model.input_size))
    hx = _state(model, B, rng)
    y, _ = model(x, hx)
    y_ref = numpy_forward(model, x, *(hx if isinstance(hx, tuple) else (hx,)))
    fwd_err = float(np.abs(y - y_ref).max())

    wy = rng.standard_normal(y.shape)
    _, _, backward = model.forward_train(x, hx)
    grads = backward(wy)
    # directional derivative along a random v in x and in weight_hh
    vx = rng.standard_normal(x.shape)
    vw = rng.standard_normal(model.parameters()["weight_hh_l0"].shape)
    analytic = float((grads.x * vx).sum() + (grads.params["weight_hh_l0"] * vw).sum())
    w0 = model.parameters()["weight_hh_l0"].copy()
    eps = 1e-6
    losses = []
    for sign in (1.0, -1.0):
        model.load_state_dict({"weight_hh_l0": w0 + sign * eps * vw}, strict=False)
        losses.append(float((model(x + sign * eps * vx, hx)[0] * wy).sum()))
    model.load_state_dict({"weight_hh_l0": w0}, strict=False)
    numeric = (losses[0] - losses[1]) / (2 * eps)
    bwd_err = abs(analytic - numeric) / max(1.0, abs(numeric))
    return fwd_err, bwd_err


def time_per_step(model, rng, T=100, B=16, repeat=5):
    """Median microseconds per time step: inference, and training (forward + backward)."""
    x = rng.standard_normal((T, B, model.input_size)).astype(model.dtype)
    dy = rng.standard_normal((T, B, model.hidden_size)).astype(model.dtype)

    def train():
        model.forward_train(x)[2](dy)

    out = []
    for fn in (lambda: model(x), train):
        fn()
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out.append(float(np.median(times)) / T * 1e6)
    return out


def main() -> int:
    rng = np.random.default_rng(0)
    I, H = 32, 64
    checks = _models(np.float64, 5, 6, seed=1)
    timed = _models(np.float32, I, H, seed=1)
    print("fastrnn self-check: forward vs NumPy (float64), backward vs finite difference,")
    print(f"time per step at T=100, B=16, I={I}, H={H} (float32)")
    print(f"{'cell':18} {'fwd err':>9} {'bwd err':>9} {'infer us/step':>14} {'train us/step':>14}")
    ok = True
    for name, model in checks.items():
        fwd_err, bwd_err = check_cell(model, rng)
        infer_us, train_us = time_per_step(timed[name], rng)
        good = fwd_err < 1e-10 and bwd_err < 1e-6
        ok &= good
        print(
            f"{name:18} {fwd_err:9.1e} {bwd_err:9.1e} {infer_us:14.2f} {train_us:14.2f}"
            f"  {'ok' if good else 'FAILED'}"
        )
    print("all cells ok" if ok else "SELF-CHECK FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
