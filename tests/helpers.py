"""Shared test helpers: the per-dtype tolerance table, model and data makers, finite differences,
and a two-thread runner.

A plain module (tests/ has no __init__.py; pytest puts this directory on sys.path, as for
reference.py), so test files import it explicitly rather than reaching into conftest.
"""

import threading

import numpy as np

import fastrnn
from fastrnn import _layer

DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["f32", "f64"]

CELLS = ["rnn_tanh", "rnn_relu", "lstm", "gru", "gru_reset_before"]
NUM_GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3, "gru_reset_before": 3}

# Compiled output against the float64 oracle (or PyTorch), per dtype of the compiled path.
# Measured on this suite's problems, the worst error is about 1/4 of these bounds at float32
# (single-precision products and the polynomial activations) and 1/200 at float64 (the
# bounds leave room for other BLAS builds and CPUs).
TOL = {
    np.dtype(np.float32): {"rtol": 1e-5, "atol": 1e-6},
    np.dtype(np.float64): {"rtol": 1e-12, "atol": 1e-13},
}
# Weight and bias gradients are sums over T*B terms, some of them far larger than the sum:
# their rounding error follows the array's scale, not each element's. So a gradient's atol
# is relative to max|desired| (when above 1). Measured: at T=3, B=130, in a float32 weight_ih
# gradient of scale 41, the element 0.08836 is 5.6e-6 off the float64 value in fastrnn and
# 5.6e-6 off (the other way) in PyTorch.
GRAD_TOL = {
    np.dtype(np.float32): {"rtol": 5e-5, "atol": 5e-6},
    np.dtype(np.float64): {"rtol": 1e-11, "atol": 1e-12},
}
# Central differences in float64 with step FD_EPS: truncation O(eps^2), rounding O(1e-16/eps).
FD_EPS = 1e-6
FD_TOL = {"rtol": 1e-6, "atol": 1e-8}


def assert_close(actual, desired, dtype, *, grad=False, err_msg=""):
    """Compare a compiled result with a reference under the tolerance of `dtype`."""
    actual, desired = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
    tol = dict((GRAD_TOL if grad else TOL)[np.dtype(dtype)])
    if grad and desired.size:
        tol["atol"] *= max(1.0, float(np.max(np.abs(desired))))
    np.testing.assert_allclose(actual, desired, err_msg=err_msg, **tol)


def cell_of(model) -> str:
    """The cell name (as in CELLS) of a model."""
    if isinstance(model, fastrnn.RNN):
        return "rnn_" + model.nonlinearity
    if isinstance(model, fastrnn.GRU):
        return "gru" if model.reset_after else "gru_reset_before"
    return "lstm"


def twin(model):
    """A model of the same configuration and weights that has never run (so has no prepared
    calls: its calls take the validating path). LSTM projections are not copied."""
    other = make_model(
        cell_of(model), model.input_size, model.hidden_size, num_layers=model.num_layers,
        batch_first=model.batch_first, bidirectional=model.bidirectional, bias=model.bias,
        dtype=model.dtype,
    )  # fmt: skip
    other.load_state_dict(model.state_dict())
    return other


def forbid(monkeypatch, module, *names):
    """From here on, calling any of module's functions `names` fails (a test's proof that
    a call ran from its plan, not through them)."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the call did not run from its plan")

    for name in names:
        monkeypatch.setattr(module, name, forbidden)


def make_model(cell, input_size, hidden_size, **kwargs):
    """The public model class that runs `cell` (GRU reset-before is GRU(reset_after=False))."""
    if cell in ("rnn_tanh", "rnn_relu"):
        return fastrnn.RNN(input_size, hidden_size, nonlinearity=cell[4:], **kwargs)
    if cell == "lstm":
        return fastrnn.LSTM(input_size, hidden_size, **kwargs)
    return fastrnn.GRU(input_size, hidden_size, reset_after=cell == "gru", **kwargs)


def layer_weights(cell, input_size, hidden_size, dtype, rng, bias=True):
    """Random LayerWeights in PyTorch's layout and init range (zero biases with bias=False)."""
    GH = NUM_GATES[cell] * hidden_size
    k = 1.0 / np.sqrt(hidden_size)

    def uniform(*shape):
        return rng.uniform(-k, k, size=shape).astype(dtype)

    b_ih, b_hh = (uniform(GH), uniform(GH)) if bias else (np.zeros(GH, dtype), np.zeros(GH, dtype))
    return _layer.LayerWeights(uniform(GH, input_size), uniform(GH, hidden_size), b_ih, b_hh)


def normal(rng, shape, dtype, scale=1.0):
    """Standard normal data (never all zero), as a C-contiguous array of `dtype`."""
    return np.ascontiguousarray((scale * rng.standard_normal(shape)).astype(dtype))


# The layouts a model takes an input in, and its state to match: time-major (T, B, F),
# unbatched (T, F), and batch-first with one row (1, T, F).
LAYOUTS = ["time_major", "unbatched", "batch_first_one_row"]


def layout_array(layout, rng, dtype, steps, batch, width):
    """An input (or output gradient) of `width` features a step, in the layout."""
    if layout == "time_major":
        return normal(rng, (steps, batch, width), dtype)
    if layout == "unbatched":
        return normal(rng, (steps, width), dtype)
    return normal(rng, (1, steps, width), dtype)


def layout_state(layout, rng, dtype, slices, batch, width):
    """A state of `slices` (layers x directions) rows of `width`, in the layout."""
    if layout == "time_major":
        return normal(rng, (slices, batch, width), dtype)
    shape = (slices, 1, width) if layout == "batch_first_one_row" else (slices, width)
    return normal(rng, shape, dtype)


def lengths_for(kind, B, T, rng):
    """Per-row lengths: None, "mixed" (unsorted, holds 0 and T when B allows), "full", "zeros"."""
    if kind is None:
        return None
    if kind == "full":
        return np.full(B, T, dtype=np.int64)
    if kind == "zeros":
        return np.zeros(B, dtype=np.int64)
    assert kind == "mixed"
    lens = rng.integers(0, T + 1, size=B)
    lens[: min(B, 2)] = [T, 0][: min(B, 2)]  # the extremes
    if B > 2:
        lens[2] = min(1, T)
    lens = rng.permutation(lens)
    if B > 2 and np.all(np.diff(lens) <= 0):  # make sure the rows are not already sorted
        lens = lens[::-1].copy()
    return lens.astype(np.int64)


def numeric_grads(loss, arrays, eps=FD_EPS):
    """Central differences of loss() with respect to every element of each array in `arrays`.

    The arrays are perturbed in place (loss() must read them live) and restored exactly.
    """
    grads = {}
    for name, arr in arrays.items():
        g = np.zeros(arr.shape)
        flat, gflat = arr.reshape(-1), g.reshape(-1)
        assert np.shares_memory(flat, arr) or arr.size == 0
        for i in range(flat.size):
            orig = flat[i]
            flat[i] = orig + eps
            up = loss()
            flat[i] = orig - eps
            down = loss()
            flat[i] = orig
            gflat[i] = (up - down) / (2 * eps)
        grads[name] = g
    return grads


def assert_grads_match(analytic, numeric):
    """Every analytic gradient against its finite-difference estimate, named on failure."""
    assert set(analytic) == set(numeric)
    for name in numeric:
        np.testing.assert_allclose(
            analytic[name], numeric[name], err_msg=f"gradient of {name}", **FD_TOL
        )


def run_in_two_threads(call, repeats, what="a call"):
    """call(0) and call(1), each `repeats` times, on two threads at once: the results,
    got[k][r]. Fails (rather than hanging) when a thread is still running after 120 s."""
    got = [[None] * repeats for _ in range(2)]

    def run(k):
        for r in range(repeats):
            got[k][r] = call(k)

    workers = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not any(w.is_alive() for w in workers), f"{what} hung"
    return got
