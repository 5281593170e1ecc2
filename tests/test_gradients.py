"""Every gradient against central finite differences in float64.

loss = sum(y * wy) + sum(h_n * wh) (+ sum(c_n * wc) for LSTM), a random projection of all
outputs, so that dL/dy = wy, dL/dh_n = wh and dL/dc_n = wc are what backward receives.
"""

import numpy as np
import pytest
from helpers import (
    CELLS,
    FD_EPS,
    FD_TOL,
    assert_close,
    assert_grads_match,
    layer_weights,
    lengths_for,
    make_model,
    normal,
    numeric_grads,
)

from fastrnn import _layer

F64 = np.float64

# (T, B, I, H), tiny so that finite differences stay cheap.
LAYER_SHAPES = [
    pytest.param((4, 3, 3, 2), id="T4-B3-I3-H2"),
    pytest.param((1, 1, 2, 1), id="T1-B1-I2-H1"),
    pytest.param((0, 2, 2, 3), id="T0-B2-I2-H3"),
]


@pytest.mark.parametrize("shape", LAYER_SHAPES)
@pytest.mark.parametrize("lengths_kind", [None, "mixed", "zeros"], ids=lambda k: f"len-{k}")
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("cell", CELLS)
def test_layer_gradients(cell, reverse, lengths_kind, shape):
    T, B, I, H = shape  # noqa: E741
    is_lstm = cell == "lstm"
    rng = np.random.default_rng(2024)
    w = layer_weights(cell, I, H, F64, rng)
    x = normal(rng, (T, B, I), F64)
    h0 = normal(rng, (B, H), F64, 0.5)
    c0 = normal(rng, (B, H), F64, 0.5) if is_lstm else None
    lens = lengths_for(lengths_kind, B, T, rng)
    wy, wh = normal(rng, (T, B, H), F64), normal(rng, (B, H), F64)
    wc = normal(rng, (B, H), F64) if is_lstm else None

    def loss():
        y, h_n, c_n, _ = _layer.forward(cell, w, x, h0, c0, lens, reverse, training=False)
        total = np.sum(y * wy) + np.sum(h_n * wh)
        return total + (np.sum(c_n * wc) if is_lstm else 0.0)

    _, _, _, tape = _layer.forward(cell, w, x, h0, c0, lens, reverse, training=True)
    dx, dh0, dc0, grads = _layer.backward(tape, wy, wh, wc)
    analytic = {"x": dx, "h0": dh0, **grads}
    inputs = {
        "x": x,
        "h0": h0,
        "weight_ih": w.w_ih,
        "weight_hh": w.w_hh,
        "bias_ih": w.b_ih,
        "bias_hh": w.b_hh,
    }
    if is_lstm:
        analytic["c0"] = dc0
        inputs["c0"] = c0
    else:
        assert dc0 is None
    for name, g in analytic.items():
        assert g.shape == inputs[name].shape, name
    assert_grads_match(analytic, numeric_grads(loss, inputs))


def model_case(
    cell,
    num_layers=1,
    bidirectional=False,
    bias=True,
    batch_first=False,
    lengths_kind=None,
    T=4,
    B=3,
    I=3,  # noqa: E741
    H=2,
    seed=0,
    **kwargs,
):
    """A float64 model, its inputs, the loss projection and the FD loss over live arrays."""
    is_lstm = cell == "lstm"
    D = 2 if bidirectional else 1
    rng = np.random.default_rng(seed)
    model = make_model(
        cell,
        I,
        H,
        num_layers=num_layers,
        bidirectional=bidirectional,
        bias=bias,
        batch_first=batch_first,
        dtype=F64,
        seed=seed,
        **kwargs,
    )
    P = kwargs.get("proj_size") or H  # LSTM with projection: h is (.., P), c is (.., H)
    x = normal(rng, (B, T, I) if batch_first else (T, B, I), F64)
    h_shape, c_shape = (num_layers * D, B, P), (num_layers * D, B, H)
    h0 = normal(rng, h_shape, F64, 0.5)
    c0 = normal(rng, c_shape, F64, 0.5) if is_lstm else None
    lens = lengths_for(lengths_kind, B, T, rng)
    wy = normal(rng, (B, T, D * P) if batch_first else (T, B, D * P), F64)
    wh = normal(rng, h_shape, F64)
    wc = normal(rng, c_shape, F64) if is_lstm else None
    return model, x, h0, c0, lens, wy, wh, wc


def model_loss_and_gradients(model, x, h0, c0, lens, wy, wh, wc):
    """The projected loss of a model call, its backward gradients, and the arrays they are
    gradients of (perturbed in place by the finite differences)."""
    is_lstm = c0 is not None
    hx = (h0, c0) if is_lstm else h0

    def loss():
        y, state = model(x, hx, lengths=lens)
        if is_lstm:
            return np.sum(y * wy) + np.sum(state[0] * wh) + np.sum(state[1] * wc)
        return np.sum(y * wy) + np.sum(state * wh)

    _, _, backward = model.forward_train(x, hx, lengths=lens)
    g = backward(wy, (wh, wc) if is_lstm else wh)
    assert list(g.params) == list(model.state_dict())  # every parameter, in state_dict order
    analytic = {"x": g.x, "h0": g.h0, **g.params}
    inputs = {"x": x, "h0": h0, **model.parameters()}
    if is_lstm:
        analytic["c0"], inputs["c0"] = g.c0, c0
    else:
        assert g.c0 is None
    return loss, analytic, inputs


def check_model_gradients(model, x, h0, c0, lens, wy, wh, wc):
    loss, analytic, inputs = model_loss_and_gradients(model, x, h0, c0, lens, wy, wh, wc)
    for name, arr in analytic.items():
        assert arr.shape == inputs[name].shape and arr.dtype == F64, name
    assert_grads_match(analytic, numeric_grads(loss, inputs))


# (num_layers, bidirectional)
STACKS = [
    pytest.param((1, False), id="L1"),
    pytest.param((1, True), id="L1-bi"),
    pytest.param((2, False), id="L2"),
    pytest.param((2, True), id="L2-bi"),
]


@pytest.mark.parametrize("lengths_kind", [None, "mixed"], ids=lambda k: f"len-{k}")
@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("cell", CELLS)
def test_model_gradients(cell, stack, lengths_kind):
    num_layers, bidirectional = stack
    check_model_gradients(
        *model_case(cell, num_layers, bidirectional, lengths_kind=lengths_kind, seed=17)
    )


@pytest.mark.parametrize("lengths_kind", [None, "mixed"], ids=lambda k: f"len-{k}")
@pytest.mark.parametrize("stack", STACKS)
def test_lstm_projection_gradients(stack, lengths_kind):
    """LSTM(proj_size=P): h = W_hr (o * tanh(c)), so weight_hr_l* gets a gradient too."""
    num_layers, bidirectional = stack
    case = model_case(
        "lstm", num_layers, bidirectional, lengths_kind=lengths_kind, H=3, proj_size=2, seed=18
    )
    assert any(name.startswith("weight_hr") for name in case[0].state_dict())
    check_model_gradients(*case)


@pytest.mark.parametrize("cell", CELLS)
def test_model_gradients_without_bias(cell):
    model, *rest = model_case(cell, 2, True, bias=False, lengths_kind="mixed", seed=5)
    assert not any(name.startswith("bias") for name in model.state_dict())
    check_model_gradients(model, *rest)


@pytest.mark.parametrize("cell", CELLS)
def test_model_gradients_batch_first(cell):
    check_model_gradients(
        *model_case(cell, 1, True, batch_first=True, lengths_kind="mixed", seed=6)
    )


@pytest.mark.parametrize("cell", CELLS)
def test_model_gradients_unbatched(cell):
    model, x, h0, c0, _, wy, wh, wc = model_case(cell, 2, True, seed=8)
    # batch row 0 as a (T, I) sequence, states (L*D, H)
    check_model_gradients(
        model,
        x[:, 0].copy(),
        h0[:, 0].copy(),
        None if c0 is None else c0[:, 0].copy(),
        None,
        wy[:, 0].copy(),
        wh[:, 0].copy(),
        None if wc is None else wc[:, 0].copy(),
    )


@pytest.mark.parametrize("cell", CELLS)
def test_model_gradients_default_arguments(cell):
    """backward(dy) alone means dL/dh_n = 0; forward_train(x) alone means h0 = 0."""
    model, x, h0, c0, lens, wy, wh, wc = model_case(cell, 2, True, lengths_kind="mixed", seed=9)
    zeros = np.zeros_like(h0)

    def loss():
        return np.sum(model(x, lengths=lens)[0] * wy)

    _, _, backward = model.forward_train(x, lengths=lens)
    g = backward(wy)
    numeric = numeric_grads(loss, {"x": x, **model.parameters()})
    assert_grads_match({"x": g.x, **g.params}, numeric)
    # Omitting dh_n is the same as passing zeros.
    g0 = backward(wy, (zeros, zeros) if cell == "lstm" else zeros)
    np.testing.assert_array_equal(g.h0, g0.h0)
    np.testing.assert_array_equal(g.x, g0.x)


def test_lstm_dh_n_alone_means_zero_dc_n():
    model, x, h0, c0, _, wy, wh, _ = model_case("lstm", 2, False, seed=10)
    _, _, backward = model.forward_train(x, (h0, c0))
    g_h = backward(wy, wh)
    g_pair = backward(wy, (wh, np.zeros_like(wh)))
    for a, b in [(g_h.x, g_pair.x), (g_h.h0, g_pair.h0), (g_h.c0, g_pair.c0)]:
        np.testing.assert_array_equal(a, b)
    for name in g_h.params:
        np.testing.assert_array_equal(g_h.params[name], g_pair.params[name])


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru", "gru_reset_before"])
def test_model_gradients_with_dropout(cell):
    """Dropout between layers: gradients through the mask a fresh seeded model draws.

    A new model with the same seed draws the same first mask, so the FD loss rebuilds the
    model from the (perturbed) parameters for every evaluation.
    """
    model, x, h0, c0, lens, wy, wh, wc = model_case(
        cell, 3, True, lengths_kind="mixed", dropout=0.5, seed=12, T=3, B=2
    )
    params = model.parameters()
    is_lstm = cell == "lstm"
    hx = (h0, c0) if is_lstm else h0

    def loss():
        fresh = make_model(
            cell, 3, 2, num_layers=3, bidirectional=True, dropout=0.5, dtype=F64, seed=12
        )
        fresh.load_state_dict(params)
        y, state, _ = fresh.forward_train(x, hx, lengths=lens)
        if is_lstm:
            return np.sum(y * wy) + np.sum(state[0] * wh) + np.sum(state[1] * wc)
        return np.sum(y * wy) + np.sum(state * wh)

    y_drop, _, backward = model.forward_train(x, hx, lengths=lens)
    y_plain, _ = model(x, hx, lengths=lens)
    assert not np.allclose(y_drop, y_plain)  # the mask did act
    g = backward(wy, (wh, wc) if is_lstm else wh)
    analytic = {"x": g.x, "h0": g.h0, **g.params}
    inputs = {"x": x, "h0": h0, **params}
    if is_lstm:
        analytic["c0"], inputs["c0"] = g.c0, c0
    assert_grads_match(analytic, numeric_grads(loss, inputs))


# Empty problems: shapes and exact values of the trivial gradients.
@pytest.mark.parametrize("edge", [(0, 3), (4, 0), (0, 0)], ids=["T0-B3", "T4-B0", "T0-B0"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell", CELLS)
def test_model_gradients_of_empty_problems(cell, dtype, edge):
    T, B = edge
    I, H, L = 2, 3, 2  # noqa: E741
    is_lstm = cell == "lstm"
    rng = np.random.default_rng(4)
    model = make_model(cell, I, H, num_layers=L, bidirectional=True, dtype=dtype, seed=1)
    x = normal(rng, (T, B, I), dtype)
    wh = normal(rng, (2 * L, B, H), dtype)
    wc = normal(rng, (2 * L, B, H), dtype)
    y, _, backward = model.forward_train(x)
    g = backward(np.ones_like(y), (wh, wc) if is_lstm else wh)
    assert g.x.shape == x.shape and g.x.dtype == dtype
    for name, value in model.state_dict().items():
        assert g.params[name].shape == value.shape
        assert not np.any(g.params[name]), f"{name}: nothing ran, so the gradient is zero"
    # With no step run, dL/dh0 is dL/dh_n passed straight through (layer 0 only sees it
    # directly; upper layers have no steps either).
    np.testing.assert_array_equal(g.h0, wh)
    if is_lstm:
        np.testing.assert_array_equal(g.c0, wc)


F32_SIZES = [
    pytest.param(dict(T=6, B=5, I=4, H=7), id="B5-H7"),
    pytest.param(dict(T=4, B=16, I=5, H=70), id="B16-H70"),
    pytest.param(dict(T=4, B=19, I=5, H=20), id="B19-H20"),
    pytest.param(dict(T=3, B=200, I=5, H=20), id="rowblocks-B200-H20"),
    pytest.param(dict(T=5, B=1, I=4, H=32), id="fused-B1-H32"),
]


@pytest.mark.parametrize("size", F32_SIZES)
@pytest.mark.parametrize("lengths_kind", [None, "mixed"], ids=lambda k: f"len-{k}")
@pytest.mark.parametrize("cell", CELLS)
def test_float32_gradients_match_float64(cell, lengths_kind, size):
    """The float32 backward kernels (FD checks run in float64) agree with the float64 ones."""
    model64, x, h0, c0, lens, wy, wh, wc = model_case(
        cell, 2, True, lengths_kind=lengths_kind, seed=13, **size
    )
    model32 = make_model(
        cell, size["I"], size["H"], num_layers=2, bidirectional=True, dtype=np.float32
    )
    model32.load_state_dict(model64.state_dict())
    model64.load_state_dict(model32.state_dict())  # the same, float32-representable, weights
    is_lstm = cell == "lstm"
    f32 = [None if a is None else a.astype(np.float32) for a in (x, h0, c0, wy, wh, wc)]
    x32, h32, c32, wy32, wh32, wc32 = f32
    x, h0, c0, wy, wh, wc = [None if a is None else a.astype(F64) for a in f32]

    def grads(model, x, h0, c0, wy, wh, wc):
        _, _, backward = model.forward_train(x, (h0, c0) if is_lstm else h0, lengths=lens)
        return backward(wy, (wh, wc) if is_lstm else wh)

    g32 = grads(model32, x32, h32, c32, wy32, wh32, wc32)
    g64 = grads(model64, x, h0, c0, wy, wh, wc)
    assert g32.x.dtype == np.float32
    pairs = [("x", g32.x, g64.x), ("h0", g32.h0, g64.h0)]
    if is_lstm:
        pairs.append(("c0", g32.c0, g64.c0))
    pairs += [(name, g32.params[name], g64.params[name]) for name in g64.params]
    for name, a, b in pairs:
        assert_close(a, b, np.float32, grad=True, err_msg=name)


@pytest.mark.parametrize("cell", CELLS)
def test_backward_without_dy(cell):
    """backward(None, dh_n): the loss depends on the final state only."""
    model, x, h0, c0, lens, wy, wh, wc = model_case(cell, 2, True, lengths_kind="mixed", seed=14)
    hx = (h0, c0) if cell == "lstm" else h0
    dh = (wh, wc) if cell == "lstm" else wh
    _, _, backward = model.forward_train(x, hx, lengths=lens)
    g_none, g_zero = backward(None, dh), backward(np.zeros_like(wy), dh)
    np.testing.assert_array_equal(g_none.x, g_zero.x)
    np.testing.assert_array_equal(g_none.h0, g_zero.h0)
    for name in g_zero.params:
        np.testing.assert_array_equal(g_none.params[name], g_zero.params[name])


# Larger problems, where every element's FD would be too slow: one random direction per
# array. The kernels' own products run over several column panels at these widths, over
# two blocks of rows past 192 rows, and fetch each panel ahead past 1 MiB of packed
# weights (H = 272). The FD error measured here is below 2e-10 of sum|g * v|.
DIRECTIONAL_RTOL = 1e-8
LARGE = [
    pytest.param(dict(T=5, B=16, I=6, H=40), id="B16-H40"),
    pytest.param(dict(T=5, B=13, I=3, H=33), id="B13-H33"),
    pytest.param(dict(T=4, B=20, I=5, H=70), id="B20-H70"),
    pytest.param(dict(T=3, B=200, I=4, H=20), id="rowblocks-B200-H20"),
    pytest.param(dict(T=5, B=1, I=3, H=16), id="fused-B1-H16"),
    pytest.param(dict(T=3, B=7, I=272, H=272), id="prefetch-B7-H272"),
]


@pytest.mark.parametrize("size", LARGE)
@pytest.mark.parametrize("cell", CELLS)
def test_directional_derivatives_of_larger_models(cell, size):
    model, x, h0, c0, lens, wy, wh, wc = model_case(
        cell, 2, True, lengths_kind="mixed", seed=15, **size
    )
    loss, analytic, inputs = model_loss_and_gradients(model, x, h0, c0, lens, wy, wh, wc)
    rng = np.random.default_rng(16)
    for name, arr in inputs.items():
        v = rng.standard_normal(arr.shape)
        saved = arr.copy()
        arr += FD_EPS * v
        up = loss()
        arr[...] = saved - FD_EPS * v
        down = loss()
        arr[...] = saved
        numeric = (up - down) / (2 * FD_EPS)
        exact = np.sum(analytic[name] * v)
        scale = np.sum(np.abs(analytic[name] * v))
        assert abs(numeric - exact) <= DIRECTIONAL_RTOL * scale + FD_TOL["atol"], (
            f"d loss / d {name} along a random direction: FD {numeric!r}, backward {exact!r}"
        )
