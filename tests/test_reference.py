"""Every compiled path against the float64 NumPy oracle in reference.py, at float32 and float64."""

import numpy as np
import pytest
import reference as ref
from helpers import (
    CELLS,
    DTYPE_IDS,
    DTYPES,
    assert_close,
    layer_weights,
    lengths_for,
    make_model,
    normal,
)

from fastrnn import _layer

# (T, B, I, H): edge shapes in the grid, hidden sizes that are not multiples of 8.
SHAPES = [
    pytest.param((5, 4, 3, 13), id="T5-B4-I3-H13"),
    pytest.param((1, 3, 2, 17), id="T1-B3-I2-H17"),
    pytest.param((6, 1, 5, 1), id="T6-B1-I5-H1"),
    pytest.param((3, 2, 1, 3), id="T3-B2-I1-H3"),
    pytest.param((7, 5, 9, 8), id="T7-B5-I9-H8"),
    pytest.param((0, 3, 2, 3), id="T0-B3-I2-H3"),
    pytest.param((4, 0, 2, 3), id="T4-B0-I2-H3"),
    pytest.param((8, 16, 5, 33), id="T8-B16-I5-H33"),
    pytest.param((20, 17, 33, 65), id="T20-B17-I33-H65"),
    # batch 1 over several panels of 64 gate columns, the last one partial: alternate steps
    # read the panels in reverse order
    pytest.param((9, 1, 6, 37), id="T9-B1-I6-H37"),
    # past 192 rows the own kernels' products run in two blocks of rows
    pytest.param((3, 200, 4, 9), id="T3-B200-I4-H9"),
    # packed weights past 1 MiB (W_ih^T and W_hh^T 1.2 MiB in float32): the tiles of each
    # panel also fetch the next one, either way round, and the last panel is partial
    pytest.param((4, 7, 272, 272), id="T4-B7-I272-H272"),
]
LENGTHS = [None, "mixed", "full", "zeros"]


def assert_zero_past_lengths(y, lengths):
    """Outputs past a row's length are exactly zero, not merely small."""
    if lengths is None:
        return
    T = y.shape[0]
    for b, n in enumerate(lengths):
        assert not np.any(y[n:T, b]), f"row {b} (length {n}) has non-zero padded outputs"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("lengths_kind", LENGTHS, ids=lambda k: f"len-{k}")
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_layer_matches_reference(cell, dtype, reverse, lengths_kind, shape):
    T, B, I, H = shape  # noqa: E741
    rng = np.random.default_rng(1234)
    w = layer_weights(cell, I, H, dtype, rng)
    x = normal(rng, (T, B, I), dtype)
    h0 = normal(rng, (B, H), dtype, 0.5)
    c0 = normal(rng, (B, H), dtype, 0.5) if cell == "lstm" else None
    lens = lengths_for(lengths_kind, B, T, rng)
    x_before = x.copy()

    y, h_n, c_n, tape = _layer.forward(cell, w, x, h0, c0, lens, reverse, training=False)
    params = (w.w_ih, w.w_hh, w.b_ih, w.b_hh)
    y_ref, h_ref, c_ref = ref.run(cell, x, params, h0, c0, lens, reverse)

    assert tape is None
    assert y.dtype == h_n.dtype == dtype
    assert y.shape == (T, B, H) and h_n.shape == (B, H)
    assert_close(y, y_ref, dtype)
    assert_close(h_n, h_ref, dtype)
    if cell == "lstm":
        assert c_n.dtype == dtype
        assert_close(c_n, c_ref, dtype)
    else:
        assert c_n is None
    assert_zero_past_lengths(y, lens)
    np.testing.assert_array_equal(x, x_before)

    # The training pass computes the very same numbers, and keeps a tape.
    y_t, h_t, c_t, tape = _layer.forward(cell, w, x, h0, c0, lens, reverse, training=True)
    assert tape is not None
    np.testing.assert_array_equal(y_t, y)
    np.testing.assert_array_equal(h_t, h_n)
    if cell == "lstm":
        np.testing.assert_array_equal(c_t, c_n)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_layer_final_state_may_alias_initial_state(cell, dtype):
    """_layer.forward documents that h_n and c_n may be h0 and c0 themselves."""
    T, B, I, H = 4, 3, 2, 5  # noqa: E741
    rng = np.random.default_rng(7)
    w = layer_weights(cell, I, H, dtype, rng)
    x = normal(rng, (T, B, I), dtype)
    h0 = normal(rng, (B, H), dtype, 0.5)
    c0 = normal(rng, (B, H), dtype, 0.5) if cell == "lstm" else None
    lens = np.array([2, 4, 0])
    _, h_ref, c_ref = ref.run(cell, x, (w.w_ih, w.w_hh, w.b_ih, w.b_hh), h0, c0, lens)
    h = h0.copy()
    c = None if c0 is None else c0.copy()
    _layer.forward(cell, w, x, h, c, lens, False, False, h_n=h, c_n=c)
    assert_close(h, h_ref, dtype)
    if c is not None:
        assert_close(c, c_ref, dtype)


# (num_layers, bidirectional)
STACKS = [
    pytest.param((1, False), id="L1"),
    pytest.param((1, True), id="L1-bi"),
    pytest.param((2, False), id="L2"),
    pytest.param((2, True), id="L2-bi"),
]


def model_reference(model, cell, x_tm, h0, c0, lens):
    """The oracle for a whole model: reference.run_model on the model's own weights."""
    return ref.run_model(
        cell, x_tm, model.state_dict(), model.num_layers, model.bidirectional, h0, c0, lens
    )


@pytest.mark.parametrize("lengths_kind", [None, "mixed"], ids=lambda k: f"len-{k}")
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_model_matches_reference(cell, dtype, stack, batch_first, lengths_kind):
    num_layers, bidirectional = stack
    T, B, I, H = 5, 4, 3, 7  # noqa: E741
    D = 2 if bidirectional else 1
    rng = np.random.default_rng(99)
    model = make_model(
        cell,
        I,
        H,
        num_layers=num_layers,
        bidirectional=bidirectional,
        batch_first=batch_first,
        dtype=dtype,
        seed=3,
    )
    x_tm = normal(rng, (T, B, I), dtype)
    x = np.ascontiguousarray(x_tm.transpose(1, 0, 2)) if batch_first else x_tm
    h0 = normal(rng, (num_layers * D, B, H), dtype, 0.5)
    c0 = normal(rng, (num_layers * D, B, H), dtype, 0.5) if cell == "lstm" else None
    lens = lengths_for(lengths_kind, B, T, rng)
    hx = (h0, c0) if cell == "lstm" else h0

    y, state = model(x, hx, lengths=lens)
    y_ref, h_ref, c_ref = model_reference(model, cell, x_tm, h0, c0, lens)
    if batch_first:
        y_ref = y_ref.transpose(1, 0, 2)
    h_n, c_n = state if cell == "lstm" else (state, None)
    assert y.shape == y_ref.shape and y.dtype == dtype
    assert h_n.shape == (num_layers * D, B, H) and h_n.dtype == dtype
    assert_close(y, y_ref, dtype)
    assert_close(h_n, h_ref, dtype)
    if cell == "lstm":
        assert_close(c_n, c_ref, dtype)

    # forward_train gives identical outputs (no dropout configured).
    y_t, state_t, _ = model.forward_train(x, hx, lengths=lens)
    np.testing.assert_array_equal(y_t, y)
    if cell == "lstm":
        np.testing.assert_array_equal(state_t[0], h_n)
        np.testing.assert_array_equal(state_t[1], c_n)
    else:
        np.testing.assert_array_equal(state_t, h_n)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_model_default_state_is_zero(cell, dtype):
    T, B, I, H = 4, 3, 2, 3  # noqa: E741
    rng = np.random.default_rng(5)
    model = make_model(cell, I, H, num_layers=2, bidirectional=True, dtype=dtype, seed=1)
    x = normal(rng, (T, B, I), dtype)
    zeros = np.zeros((4, B, H))
    y, state = model(x)
    y_ref, h_ref, c_ref = model_reference(
        model, cell, x, zeros, zeros if cell == "lstm" else None, None
    )
    assert_close(y, y_ref, dtype)
    assert_close(state[0] if cell == "lstm" else state, h_ref, dtype)
    if cell == "lstm":
        assert_close(state[1], c_ref, dtype)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_model_unbatched_input(cell, dtype, bidirectional):
    """(T, I) input runs as a batch of one and returns (T, D*H) and (L*D, H) states."""
    T, I, H, L = 5, 3, 4, 2  # noqa: E741
    D = 2 if bidirectional else 1
    rng = np.random.default_rng(11)
    model = make_model(cell, I, H, num_layers=L, bidirectional=bidirectional, dtype=dtype, seed=2)
    x = normal(rng, (T, I), dtype)
    h0 = normal(rng, (L * D, H), dtype, 0.5)
    c0 = normal(rng, (L * D, H), dtype, 0.5) if cell == "lstm" else None
    y, state = model(x, (h0, c0) if cell == "lstm" else h0)
    y_ref, h_ref, c_ref = model_reference(
        model, cell, x[:, None], h0[:, None], None if c0 is None else c0[:, None], None
    )
    assert y.shape == (T, D * H)
    assert_close(y, y_ref[:, 0], dtype)
    h_n = state[0] if cell == "lstm" else state
    assert h_n.shape == (L * D, H)
    assert_close(h_n, h_ref[:, 0], dtype)
    if cell == "lstm":
        assert state[1].shape == (L * D, H)
        assert_close(state[1], c_ref[:, 0], dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_model_without_bias(cell, dtype):
    T, B, I, H = 5, 3, 4, 6  # noqa: E741
    rng = np.random.default_rng(8)
    model = make_model(
        cell, I, H, num_layers=2, bidirectional=True, bias=False, dtype=dtype, seed=4
    )
    assert not any(name.startswith("bias") for name in model.state_dict())
    x = normal(rng, (T, B, I), dtype)
    h0 = normal(rng, (4, B, H), dtype, 0.5)
    c0 = normal(rng, (4, B, H), dtype, 0.5) if cell == "lstm" else None
    lens = lengths_for("mixed", B, T, rng)
    y, state = model(x, (h0, c0) if cell == "lstm" else h0, lengths=lens)
    y_ref, h_ref, c_ref = model_reference(model, cell, x, h0, c0, lens)
    assert_close(y, y_ref, dtype)
    assert_close(state[0] if cell == "lstm" else state, h_ref, dtype)
    if cell == "lstm":
        assert_close(state[1], c_ref, dtype)


# Edge shapes through the public model, including B=0 and T=0.
MODEL_EDGES = [
    pytest.param((0, 3), id="T0-B3"),
    pytest.param((4, 0), id="T4-B0"),
    pytest.param((0, 0), id="T0-B0"),
    pytest.param((1, 1), id="T1-B1"),
]


@pytest.mark.parametrize("edge", MODEL_EDGES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_model_edge_shapes(cell, dtype, edge):
    T, B = edge
    I, H, L = 2, 3, 2  # noqa: E741
    rng = np.random.default_rng(21)
    model = make_model(cell, I, H, num_layers=L, bidirectional=True, dtype=dtype, seed=6)
    x = normal(rng, (T, B, I), dtype)
    h0 = normal(rng, (2 * L, B, H), dtype, 0.5)
    c0 = normal(rng, (2 * L, B, H), dtype, 0.5) if cell == "lstm" else None
    hx = (h0, c0) if cell == "lstm" else h0
    for lens in (None, np.full(B, T)):
        y, state = model(x, hx, lengths=lens)
        y_ref, h_ref, c_ref = model_reference(model, cell, x, h0, c0, lens)
        assert y.shape == (T, B, 2 * H)
        assert_close(y, y_ref, dtype)
        assert_close(state[0] if cell == "lstm" else state, h_ref, dtype)
        if cell == "lstm":
            assert_close(state[1], c_ref, dtype)
