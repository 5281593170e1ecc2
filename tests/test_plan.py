"""Prepared inference calls (fastrnn/_plan.py): from the second call of a shape on, a model or
a stream runs its small calls from a plan. Their numbers must be the validating path's, bit
for bit, and the float64 reference's within tolerance; and they must follow every change of
the parameters that the validating path follows."""

import copy
import pickle

import numpy as np
import pytest
import reference
from helpers import (
    CELLS,
    DTYPE_IDS,
    DTYPES,
    LAYOUTS,
    assert_close,
    forbid,
    layout_array,
    layout_state,
    make_model,
    normal,
    run_in_two_threads,
    twin,
)

import fastrnn
from fastrnn import _layer

I, H, T, B = 5, 7, 4, 3  # noqa: E741


def no_validating_path(monkeypatch):
    """From here on, a call that takes the validating path (which runs _layer.forward) fails."""
    forbid(monkeypatch, _layer, "forward")


def planned(model, x, h0=None):
    """model(x, h0) three times: the third runs from the plan the second made."""
    model(x, h0)
    model(x, h0)
    return model(x, h0)


def as_list(result):
    """(y, h) or (y, (h, c)) as a flat list of arrays."""
    y, state = result
    return [y, *state] if isinstance(state, tuple) else [y, state]


def assert_same(got, want):
    for g, w in zip(as_list(got), as_list(want), strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("with_h0", [False, True], ids=["zero_state", "h0"])
@pytest.mark.parametrize("frozen", [False, True], ids=["live", "frozen"])
@pytest.mark.parametrize("directions", [1, 2], ids=["one_way", "bidirectional"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_planned_calls_equal_the_validating_path_and_the_reference(
    cell, dtype, layout, layers, directions, frozen, with_h0, monkeypatch
):
    rng = np.random.default_rng(1)
    model = make_model(cell, I, H, num_layers=layers, dtype=dtype, seed=2,
                       bidirectional=directions == 2,
                       batch_first=layout == "batch_first_one_row")  # fmt: skip
    if frozen:
        model.freeze()
    x = layout_array(layout, rng, dtype, T, B, I)
    h0 = None
    if with_h0:
        slices = model.num_layers * model.num_directions
        h = layout_state(layout, rng, dtype, slices, B, H)
        h0 = (h, layout_state(layout, rng, dtype, slices, B, H)) if cell == "lstm" else h
    planned(model, x, h0)
    no_validating_path(monkeypatch)
    x2 = layout_array(layout, rng, dtype, T, B, I)  # new values, same shape: still the plan
    got = model(x2, h0)
    monkeypatch.undo()
    assert_same(got, twin(model)(x2, h0))
    # against the float64 reference, time-major (T, B', .)
    x_tm = x2.reshape(T, -1, I)
    LD = layers * directions
    if h0 is None:
        h_ref = np.zeros((LD, x_tm.shape[1], H))
        c_ref = h_ref if cell == "lstm" else None
    else:
        h_ref = (h0[0] if cell == "lstm" else h0).reshape(LD, -1, H)
        c_ref = h0[1].reshape(LD, -1, H) if cell == "lstm" else None
    y_ref, h_n_ref, c_n_ref = reference.run_model(
        cell, x_tm, model.state_dict(), layers, directions == 2, h_ref, c_ref
    )
    flat = as_list(got)
    assert_close(flat[0].reshape(y_ref.shape), y_ref, dtype)
    assert_close(flat[1].reshape(h_n_ref.shape), h_n_ref, dtype)
    if cell == "lstm":
        assert_close(flat[2].reshape(c_n_ref.shape), c_n_ref, dtype)


@pytest.mark.parametrize("frozen", [False, True], ids=["live", "frozen"])
def test_planned_lstm_with_projection(frozen, monkeypatch):
    rng = np.random.default_rng(3)
    model = fastrnn.LSTM(I, H, num_layers=2, proj_size=4, seed=3)
    if frozen:
        model.freeze()
    x = normal(rng, (T, B, I), np.float32)
    planned(model, x)
    x2 = normal(rng, (T, B, I), np.float32)
    no_validating_path(monkeypatch)
    got = model(x2)
    monkeypatch.undo()
    twin = fastrnn.LSTM(I, H, num_layers=2, proj_size=4)
    twin.load_state_dict(model.state_dict())
    assert_same(got, twin(x2))


def test_planned_outputs_are_new_arrays_each_call():
    rng = np.random.default_rng(4)
    model = fastrnn.LSTM(I, H, seed=4).freeze()
    x = normal(rng, (T, B, I), np.float32)
    first = planned(model, x)
    kept = [a.copy() for a in as_list(first)]
    second = model(normal(rng, (T, B, I), np.float32))
    for a, b, k in zip(as_list(first), as_list(second), kept, strict=True):
        assert not np.shares_memory(a, b)
        assert a.flags.writeable
        np.testing.assert_array_equal(a, k)


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_live_model_plan_follows_in_place_updates_and_replaced_arrays(cell):
    rng = np.random.default_rng(5)
    model = make_model(cell, I, H, num_layers=2, seed=5)
    x = normal(rng, (T, B, I), np.float32)
    planned(model, x)
    for p in model.parameters().values():
        p *= 0.5  # an optimiser's in-place step: a live model repacks on every call
    assert_same(model(x), twin(model)(x))
    # an entry of the live mapping replaced by a new array
    params = model.parameters()
    params["weight_hh_l1"] = params["weight_hh_l1"] * -1.0
    assert_same(model(x), twin(model)(x))


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru_reset_before"])
def test_frozen_model_plan_follows_load_state_dict_and_unfreeze(cell):
    rng = np.random.default_rng(6)
    model = make_model(cell, I, H, seed=6).freeze()
    other = make_model(cell, I, H, seed=7)
    x = normal(rng, (T, B, I), np.float32)
    planned(model, x)
    model.load_state_dict(other.state_dict())
    assert_same(planned(model, x), other(x))
    model.unfreeze()
    for p in model.parameters().values():
        p += 0.25
    assert_same(model(x), twin(model)(x))
    model.freeze()
    assert_same(planned(model, x), twin(model)(x))


@pytest.mark.parametrize("cell", ["rnn_relu", "lstm", "gru"])
def test_calls_a_plan_declines_take_the_validating_path(cell):
    """Other dtypes, non-contiguous arrays, lists, states of the wrong kind: the same numbers
    (converted), or the same errors, as without a plan."""
    rng = np.random.default_rng(8)
    model = make_model(cell, I, H, seed=8).freeze()
    x = normal(rng, (T, B, I), np.float32)
    planned(model, x)
    want = twin(model)
    for other in (x.astype(np.float64), np.asfortranarray(x), x.tolist()):
        assert_same(model(other), want(other))
    wide = normal(rng, (T, 2 * B, I), np.float32)[:, ::2]  # the plan's shape, strided
    assert_same(model(wide), want(wide))
    h = normal(rng, (1, B, H), np.float64)  # converted to float32
    h0 = (h, h) if cell == "lstm" else h
    assert_same(model(x, h0), want(x, h0))
    with pytest.raises(ValueError, match=r"h0 must have shape \(1, 3, 7\)"):
        model(x, (h[:, :2], h) if cell == "lstm" else h[:, :2])
    if cell == "lstm":
        with pytest.raises(TypeError, match="pair"):
            model(x, h)
    with pytest.raises(ValueError, match="features"):
        model(normal(rng, (T, B, I + 1), np.float32))


def test_plans_are_per_thread():
    rng = np.random.default_rng(9)
    model = fastrnn.GRU(I, H, num_layers=2, seed=9).freeze()
    xs = [normal(rng, (T, B, I), np.float32) for _ in range(2)]
    want = [twin(model)(x)[0] for x in xs]
    got = run_in_two_threads(lambda k: model(xs[k])[0], 50, "planned calls")
    for k in range(2):
        for y in got[k]:
            np.testing.assert_array_equal(y, want[k])


def test_plans_follow_the_thread_count():
    rng = np.random.default_rng(10)
    model = fastrnn.LSTM(I, 40, seed=10).freeze()  # large enough for 2 threads at batch 1
    x = normal(rng, (T, 1, I), np.float32)
    before = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(1)
        one = planned(model, x)
        fastrnn.set_num_threads(2)
        two = planned(model, x)
    finally:
        fastrnn.set_num_threads(before)
    assert_same(one, two)


def test_copies_of_a_planned_model_run_alike():
    rng = np.random.default_rng(11)
    model = fastrnn.LSTM(I, H, num_layers=2, seed=11).freeze()
    x = normal(rng, (T, B, I), np.float32)
    want = planned(model, x)
    for copied in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert_same(planned(copied, x), want)
    assert_same(model(x), want)


@pytest.mark.parametrize("frozen", [False, True], ids=["live", "frozen"])
@pytest.mark.parametrize("cell", CELLS)
def test_planned_stream_steps_and_chunks_equal_one_call(cell, frozen, monkeypatch):
    rng = np.random.default_rng(12)
    model = make_model(cell, I, H, num_layers=2, seed=12)
    if frozen:
        model.freeze()
    x = normal(rng, (12, B, I), np.float32)
    want, _ = twin(model)(x)
    stream = model.stream(B)
    out = np.empty((B, H), np.float32)
    got = [stream.step(x[t], out=out).copy() for t in range(3)]  # the third is planned
    no_validating_path(monkeypatch)
    got += [stream.step(x[t]) for t in range(3, 6)]
    monkeypatch.undo()
    # chunks of two lengths, alternating: each shape its own plan
    got += list(stream(x[6:8])) + list(stream(x[8:9])) + list(stream(x[9:11]))
    got += list(stream(x[11:12]))
    np.testing.assert_array_equal(np.stack(got), want)


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_planned_stream_follows_parameter_changes(cell):
    """load_state_dict is seen at once; in-place updates after refresh(); and arrays put back
    after others were packed are packed again: the plan made for them (here for chunks of
    two steps, while single steps ran on the others) must not read the others' packs."""
    rng = np.random.default_rng(13)
    model = make_model(cell, I, H, seed=13)
    other = make_model(cell, I, H, seed=14)
    x = normal(rng, (20, B, I), np.float32)
    stream = model.stream(B)
    saved = dict(model.parameters())
    got = [stream(x[t : t + 2]) for t in range(0, 6, 2)]  # chunks of two: planned
    model.load_state_dict(other.state_dict())
    got += [stream.step(x[t])[None] for t in range(6, 9)]  # steps: planned
    model.parameters().update(saved)  # the first arrays again
    got += [stream(x[t : t + 2]) for t in range(9, 15, 2)]
    for p in model.parameters().values():
        p *= 0.5
    stream.refresh()
    got += [stream(x[t : t + 2]) for t in range(15, 19, 2)] + [stream.step(x[19])[None]]

    first = twin(model)
    first.load_state_dict({k: v * 2.0 for k, v in model.state_dict().items()})
    halved = twin(model)
    want, h = [], None
    for lo, hi, m in ((0, 6, first), (6, 9, other), (9, 15, first), (15, 20, halved)):
        y, h = m(x[lo:hi], h)
        want.append(y)
    np.testing.assert_array_equal(np.concatenate(got), np.concatenate(want))


def test_stream_plans_again_after_its_packs_were_made_anew(monkeypatch):
    """A plan whose packs another call made anew is dropped and made again: the stream goes
    back to planned calls (and the same numbers) rather than the validating path for good."""
    rng = np.random.default_rng(15)
    model = fastrnn.LSTM(I, H, seed=15)
    other = fastrnn.LSTM(I, H, seed=16)
    x = normal(rng, (13, B, I), np.float32)
    stream = model.stream(B)
    saved = dict(model.parameters())
    got = [stream(x[t : t + 2]) for t in (0, 2)]  # a plan for chunks of two, then
    model.load_state_dict(other.state_dict())
    got += [stream.step(x[t])[None] for t in (4, 5)]  # single steps pack `other`'s weights
    model.parameters().update(saved)
    got += [stream(x[t : t + 2]) for t in (6, 8)]  # packed anew, planned anew
    no_validating_path(monkeypatch)
    got.append(stream(x[10:12]))
    monkeypatch.undo()
    got.append(stream.step(x[12])[None])  # packed anew for the steps' plan
    want, h = [], None
    for lo, hi, m in ((0, 4, model), (4, 6, other), (6, 13, model)):
        y, h = twin(m)(x[lo:hi], h)
        want.append(y)
    np.testing.assert_array_equal(np.concatenate(got), np.concatenate(want))


def test_frozen_model_plans_single_steps_over_large_weights(monkeypatch):
    """The packs of a frozen model are its weights' own, not a plan's: a step of an LSTM
    whose packs (8 MiB) exceed what a plan may hold is planned all the same."""
    rng = np.random.default_rng(17)
    model = fastrnn.LSTM(512, 512, seed=17).freeze()
    x = normal(rng, (1, 1, 512), np.float32)
    planned(model, x)
    x2 = normal(rng, (1, 1, 512), np.float32)
    no_validating_path(monkeypatch)
    got = model(x2)
    monkeypatch.undo()
    twin = fastrnn.LSTM(512, 512)
    twin.load_state_dict(model.state_dict())
    assert_same(got, twin(x2))


@pytest.mark.parametrize("threads", [1, 2])
def test_planned_bidirectional_calls_pair_their_directions_as_the_validating_path(
    threads, monkeypatch
):
    """On two threads a bidirectional layer large enough runs its two directions at once,
    one thread each, planned as not; on one thread, one after the other. The same numbers."""
    rng = np.random.default_rng(14)
    model = fastrnn.GRU(32, 48, num_layers=2, bidirectional=True, seed=14).freeze()
    x = normal(rng, (60, 2, 32), np.float32)
    before = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(threads)
        want = twin(model)(x)
        planned(model, x)
        pairs = fastrnn._kernels.deferred_pairs_run()
        no_validating_path(monkeypatch)
        got = model(x)
        ran_pairs = fastrnn._kernels.deferred_pairs_run() - pairs
    finally:
        fastrnn.set_num_threads(before)
    assert_same(got, want)
    assert ran_pairs == (2 if threads == 2 else 0)  # both layers at once on two threads
