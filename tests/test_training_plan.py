"""Prepared training passes (fastrnn/_plan.py: prepare_training, _kernels.TrainingPlan): from
the second forward_train() of a shape on, a model runs its training passes, forward and
backward, from a plan. Every output and gradient must be the validating path's, bit for bit;
the gradients must match central differences; and the plan must follow what the validating
path follows (parameter updates, several passes in flight, other threads)."""

import gc

import numpy as np
import pytest
from helpers import (
    CELLS,
    DTYPE_IDS,
    DTYPES,
    LAYOUTS,
    assert_grads_match,
    forbid,
    layout_array,
    layout_state,
    make_model,
    normal,
    numeric_grads,
    run_in_two_threads,
    twin,
)

import fastrnn
from fastrnn import _layer

I, H, T, B = 5, 7, 4, 3  # noqa: E741


def no_validating_path(monkeypatch):
    """From here on, a pass that runs _layer.forward or _layer.backward fails."""
    forbid(monkeypatch, _layer, "forward", "backward")


def train(model, x, h0=None, dy=None, dh_n=None):
    """One training step: forward_train's outputs and backward's gradients, as flat lists."""
    y, state, backward = model.forward_train(x, h0)
    g = backward(dy, dh_n)
    states = list(state) if isinstance(state, tuple) else [state]
    grads = [g.x, g.h0] + ([g.c0] if g.c0 is not None else []) + list(g.params.values())
    return [y, *states], grads, list(g.params)


def assert_same_step(got, want):
    for kind in (0, 1):
        assert len(got[kind]) == len(want[kind])
        for a, b in zip(got[kind], want[kind], strict=True):
            assert a.shape == b.shape and a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)
    assert got[2] == want[2]  # the parameters' names, in state_dict order


def assert_same_gradients(g, want):
    """Gradients g (LSTM) against the gradients of a train() step, bit for bit."""
    assert list(g.params) == want[2]
    for a, b in zip([g.x, g.h0, g.c0, *g.params.values()], want[1], strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("with_dh_n", [False, True], ids=["no_dh_n", "dh_n"])
@pytest.mark.parametrize("with_h0", [False, True], ids=["zero_state", "h0"])
@pytest.mark.parametrize("directions", [1, 2], ids=["one_way", "bidirectional"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_planned_training_equals_the_validating_path(
    cell, dtype, layout, layers, directions, with_h0, with_dh_n, monkeypatch
):
    rng = np.random.default_rng(1)
    model = make_model(cell, I, H, num_layers=layers, dtype=dtype, seed=2,
                       bidirectional=directions == 2,
                       batch_first=layout == "batch_first_one_row")  # fmt: skip
    lstm = cell == "lstm"

    def state():
        h = layout_state(layout, rng, dtype, layers * directions, B, H)
        return (h, layout_state(layout, rng, dtype, layers * directions, B, H)) if lstm else h

    x = layout_array(layout, rng, dtype, T, B, I)
    h0 = state() if with_h0 else None
    dy = layout_array(layout, rng, dtype, T, B, directions * H)
    dh_n = state() if with_dh_n else None
    train(model, x, h0, dy, dh_n)
    train(model, x, h0, dy, dh_n)  # plans passes of this shape
    no_validating_path(monkeypatch)
    x2 = layout_array(layout, rng, dtype, T, B, I)
    dy2 = layout_array(layout, rng, dtype, T, B, directions * H)
    got = train(model, x2, h0, dy2, dh_n)  # new values, same shape: still the plan
    monkeypatch.undo()
    assert_same_step(got, train(twin(model), x2, h0, dy2, dh_n))


@pytest.mark.parametrize("cell", CELLS)
def test_planned_gradients_match_central_differences(cell, monkeypatch):
    rng = np.random.default_rng(3)
    model = make_model(cell, 3, 2, num_layers=2, dtype=np.float64, seed=3)
    x = normal(rng, (T, 2, 3), np.float64)
    h = normal(rng, (2, 2, 2), np.float64)
    h0 = (h, normal(rng, (2, 2, 2), np.float64)) if cell == "lstm" else h
    wy = normal(rng, (T, 2, 2), np.float64)
    wh = normal(rng, (2, 2, 2), np.float64)
    model.forward_train(x, h0)
    model.forward_train(x, h0)
    no_validating_path(monkeypatch)
    _, _, backward = model.forward_train(x, h0)
    dh_n = (wh, wh) if cell == "lstm" else wh
    grads = backward(wy, dh_n)
    monkeypatch.undo()

    def loss():
        y, state = model(x, h0)
        hs = state if cell == "lstm" else (state,)
        return float(np.sum(y * wy) + sum(np.sum(s * wh) for s in hs))

    inputs = {"x": x, "h0": h0[0] if cell == "lstm" else h0, **model.parameters()}
    analytic = {"x": grads.x, "h0": grads.h0, **grads.params}
    if cell == "lstm":
        inputs["c0"], analytic["c0"] = h0[1], grads.c0
    assert_grads_match(analytic, numeric_grads(loss, inputs))


def test_planned_pass_keeps_the_weights_of_its_forward_and_repeats():
    """An optimiser's in-place step between forward and backward does not reach a pass in
    flight; backward may run twice; several passes may be in flight at once."""
    rng = np.random.default_rng(4)
    model = fastrnn.LSTM(I, H, num_layers=2, seed=4)
    x1, x2 = normal(rng, (T, B, I), np.float32), normal(rng, (T, B, I), np.float32)
    dy = normal(rng, (T, B, H), np.float32)
    model.forward_train(x1)
    model.forward_train(x1)
    want1 = train(twin(model), x1, dy=dy)
    _, _, backward1 = model.forward_train(x1)  # planned
    for p in model.parameters().values():
        p *= 0.5
    want2 = train(twin(model), x2, dy=dy)
    _, _, backward2 = model.forward_train(x2)  # planned, the new weights
    for backward, want in ((backward2, want2), (backward1, want1), (backward1, want1)):
        assert_same_gradients(backward(dy), want)


def test_planned_outputs_and_gradients_are_new_arrays():
    rng = np.random.default_rng(5)
    model = fastrnn.GRU(I, H, seed=5)
    x, dy = normal(rng, (T, B, I), np.float32), normal(rng, (T, B, H), np.float32)
    train(model, x, dy=dy)
    train(model, x, dy=dy)
    first = train(model, x, dy=dy)
    kept = [a.copy() for a in first[0] + first[1]]
    second = train(model, normal(rng, (T, B, I), np.float32), dy=dy)
    for a, b, k in zip(first[0] + first[1], second[0] + second[1], kept, strict=True):
        assert not np.shares_memory(a, b)
        assert a.flags.writeable
        np.testing.assert_array_equal(a, k)


@pytest.mark.parametrize("cell", ["rnn_relu", "lstm", "gru"])
def test_arguments_a_plan_declines_give_the_validating_paths_numbers_or_errors(cell):
    rng = np.random.default_rng(6)
    model = make_model(cell, I, H, seed=6)
    x, dy = normal(rng, (T, B, I), np.float32), normal(rng, (T, B, H), np.float32)
    train(model, x, dy=dy)
    train(model, x, dy=dy)
    want = twin(model)
    strided = normal(rng, (T, 2 * B, H), np.float32)[:, ::2]
    for other in (dy.astype(np.float64), np.asfortranarray(dy), dy.tolist(), strided, None):
        assert_same_step(train(model, x, dy=other), train(want, x, dy=other))
    for other_x in (x.astype(np.float64), np.asfortranarray(x), x.tolist()):
        assert_same_step(train(model, other_x, dy=dy), train(want, other_x, dy=dy))
    for bad in (dy[:-1], dy[..., :-1], np.zeros((T, B, H, 1), np.float32)):
        with pytest.raises(ValueError) as planned_error:
            train(model, x, dy=bad)
        with pytest.raises(ValueError) as validating_error:
            train(want, x, dy=bad)
        assert str(planned_error.value) == str(validating_error.value)
    with pytest.raises(ValueError, match="dh_n"):
        train(model, x, dy=dy, dh_n=np.zeros((2, B, H), np.float32))


@pytest.mark.parametrize("directions", [1, 2], ids=["one_way", "bidirectional"])
@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_planned_training_draws_dropout_masks_as_the_validating_path(
    cell, directions, monkeypatch
):
    """Two models alike, one training from its plan (from its third pass), the other (given
    Fortran-ordered x, which no plan takes) on the validating path: the same masks, drawn
    in the same order, so the same numbers, pass after pass."""
    rng = np.random.default_rng(15)
    models = [make_model(cell, I, H, num_layers=3, dropout=0.4, bidirectional=directions == 2,
                         seed=15) for _ in range(2)]  # fmt: skip
    x = normal(rng, (T, B, I), np.float32)
    dy = normal(rng, (T, B, directions * H), np.float32)
    calls = []
    forward = _layer.forward
    monkeypatch.setattr(_layer, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    outputs = []
    for step in range(4):
        calls.clear()
        got = train(models[0], x, dy=dy)
        assert bool(calls) == (step < 2)  # planned from the third pass
        want = train(models[1], np.asfortranarray(x), dy=dy)
        assert_same_step(got, want)
        outputs.append(got[0][0])
    assert not np.array_equal(outputs[2], outputs[3])  # fresh masks each pass


@pytest.mark.parametrize("directions", [1, 2], ids=["one_way", "bidirectional"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_planned_lstm_with_projection_equals_the_validating_path(
    dtype, layers, directions, monkeypatch
):
    """An LSTM with proj_size: each pass keeps its own copy of W_hr (an in-place step on it
    between forward and backward does not reach the pass), and dW_hr comes back too."""
    rng = np.random.default_rng(7)
    kwargs = dict(num_layers=layers, proj_size=4, bidirectional=directions == 2, dtype=dtype)
    model = fastrnn.LSTM(I, H, seed=7, **kwargs)
    x = normal(rng, (T, B, I), dtype)
    dy = normal(rng, (T, B, directions * 4), dtype)
    h0 = (normal(rng, (layers * directions, B, 4), dtype),
          normal(rng, (layers * directions, B, H), dtype))  # fmt: skip
    train(model, x, h0, dy)
    train(model, x, h0, dy)
    want_model = fastrnn.LSTM(I, H, **kwargs)
    want_model.load_state_dict(model.state_dict())
    want = train(want_model, x, h0, dy)
    no_validating_path(monkeypatch)
    _, _, backward = model.forward_train(x, h0)
    model.parameters()["weight_hr_l0"] *= 0.5  # after the forward pass: not seen by it
    g = backward(dy)
    monkeypatch.undo()
    assert "weight_hr_l0" in g.params
    assert_same_gradients(g, want)


def test_a_frozen_model_trains_on_the_validating_path():
    rng = np.random.default_rng(8)
    model = fastrnn.GRU(I, H, seed=8)
    x, dy = normal(rng, (T, B, I), np.float32), normal(rng, (T, B, H), np.float32)
    want = train(model, x, dy=dy)
    model.freeze()
    for _ in range(3):
        assert_same_step(train(model, x, dy=dy), want)


def test_planned_training_follows_replaced_parameters_and_load_state_dict():
    rng = np.random.default_rng(9)
    model = fastrnn.RNN(I, H, num_layers=2, seed=9)
    x, dy = normal(rng, (T, B, I), np.float32), normal(rng, (T, B, H), np.float32)
    train(model, x, dy=dy)
    train(model, x, dy=dy)
    params = model.parameters()
    params["weight_hh_l1"] = params["weight_hh_l1"] * -1.0
    assert_same_step(train(model, x, dy=dy), train(twin(model), x, dy=dy))
    model.load_state_dict(fastrnn.RNN(I, H, num_layers=2, seed=10).state_dict())
    assert_same_step(train(model, x, dy=dy), train(twin(model), x, dy=dy))


@pytest.mark.parametrize("shared", [False, True], ids=["own_models", "one_model"])
def test_planned_training_on_two_threads_and_thread_counts(shared):
    """Two threads, each with its own model of one configuration or both with one, and a
    change of the thread count: the numbers of one validating pass, bit for bit."""
    rng = np.random.default_rng(11)
    models = [fastrnn.LSTM(I, H, num_layers=2, seed=11) for _ in range(2)]
    if shared:
        models[1] = models[0]
    x, dy = normal(rng, (T, 1, I), np.float32), normal(rng, (T, 1, H), np.float32)
    want = train(twin(models[0]), x, dy=dy)
    got = run_in_two_threads(lambda k: train(models[k], x, dy=dy), 6, "a training step")
    for runs in got:
        for step in runs:
            assert_same_step(step, want)
    before = fastrnn.get_num_threads()
    try:
        for n in (1, 2, 1):
            fastrnn.set_num_threads(n)
            for _ in range(3):
                assert_same_step(train(models[0], x, dy=dy), want)
    finally:
        fastrnn.set_num_threads(before)


def test_a_planned_tape_returns_its_arrays_to_the_spares():
    """A large enough pass takes its saved arrays from the spares, and gives them back when
    its backward closure is dropped, as the validating path's tapes do."""
    rng = np.random.default_rng(12)
    model = fastrnn.LSTM(64, 64, seed=12)
    x = normal(rng, (100, 1, 64), np.float32)
    for _ in range(2):
        model.forward_train(x)
    gc.collect()
    kept = sum(len(v) for v in _layer._spare.values())
    _, _, backward = model.forward_train(x)
    taken = kept - sum(len(v) for v in _layer._spare.values())
    assert taken > 0
    del backward
    gc.collect()
    assert sum(len(v) for v in _layer._spare.values()) == kept


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_planned_bidirectional_layers_run_their_directions_as_the_validating_path(
    cell, threads, monkeypatch
):
    """On two threads a bidirectional layer large enough runs its two directions at once, one
    thread each, planned as not; on one thread, one after the other. The same numbers."""
    rng = np.random.default_rng(13)
    model = make_model(cell, 32, 48, num_layers=2, bidirectional=True, seed=13)
    x = normal(rng, (60, 2, 32), np.float32)
    dy = normal(rng, (60, 2, 96), np.float32)
    before = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(threads)
        want = train(twin(model), x, dy=dy)
        train(model, x, dy=dy)
        train(model, x, dy=dy)
        pairs = fastrnn._kernels.deferred_pairs_run()
        no_validating_path(monkeypatch)
        got = train(model, x, dy=dy)
        ran_pairs = fastrnn._kernels.deferred_pairs_run() - pairs
    finally:
        fastrnn.set_num_threads(before)
    assert_same_step(got, want)
    # forward and backward of both layers at once on two threads; never on one
    assert ran_pairs == (4 if threads == 2 else 0)
