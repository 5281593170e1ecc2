"""The spare scratch arrays kept between calls: reused, bounded, never shared by two calls."""

import numpy as np
import pytest
import reference
from helpers import CELLS, assert_close, make_model, normal, run_in_two_threads

from fastrnn import _layer


def test_released_array_is_reused_and_small_ones_are_not_kept(monkeypatch):
    monkeypatch.setattr(_layer, "_spare", {})
    big = _layer._scratch((512, 1024), np.float32)  # 2 MiB
    small = _layer._scratch((16, 16), np.float32)
    _layer._release(big, small)
    assert _layer._scratch((512, 1024), np.float32) is big
    assert _layer._scratch((16, 16), np.float32) is not small
    # taken: the next request for that shape gets a new array
    assert _layer._scratch((512, 1024), np.float32) is not big


def test_spare_arrays_stay_within_the_budget(monkeypatch):
    monkeypatch.setattr(_layer, "_spare", {})
    monkeypatch.setattr(_layer, "_SPARE_BYTES", 5 << 20)
    arrays = [np.empty((k + 1, 1 << 18), np.float32) for k in range(4)]  # 1, 2, 3, 4 MiB
    _layer._release(*arrays)
    kept = sum(a.nbytes for kept in _layer._spare.values() for a in kept)
    assert kept <= 5 << 20
    assert _layer._scratch((4, 1 << 18), np.float32) is arrays[3]  # the newest stays


def test_training_from_two_threads_with_shared_spares():
    """Two threads train at once (their scratch comes from the shared spares): every
    result equals the same step run alone."""
    rng = np.random.default_rng(51)
    model = make_model("lstm", 32, 128, dtype=np.float32, seed=51)
    xs = [normal(rng, (40, 48, 32), np.float32) for _ in range(2)]
    dys = [normal(rng, (40, 48, 128), np.float32) for _ in range(2)]

    def step(k):
        _, _, backward = model.forward_train(xs[k])
        g = backward(dys[k])
        return g.x, g.params["weight_hh_l0"]

    want = [step(k) for k in range(2)]
    got = run_in_two_threads(step, 5)
    for k in range(2):
        for r in range(5):
            for a, b in zip(got[k][r], want[k], strict=True):
                np.testing.assert_array_equal(a, b)


def _state_dict64(model):
    return {k: v.astype(np.float64) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("cell", CELLS)
def test_inference_results_are_the_callers_own(cell):
    """Small inference calls reuse their thread's scratch: a later call (same shapes) must
    not write into an earlier call's y or final state."""
    rng = np.random.default_rng(61)
    model = make_model(cell, 5, 19, dtype=np.float32, seed=61)
    xs = [normal(rng, (6, 1, 5), np.float32) for _ in range(3)]
    firsts = [model(x) for x in xs]
    h0 = np.zeros((1, 1, 19))
    for x, (y, state) in zip(xs, firsts, strict=True):
        y_ref, h_ref, c_ref = reference.run_model(
            cell, x, _state_dict64(model), 1, False, h0, h0 if cell == "lstm" else None
        )
        assert_close(y, y_ref, np.float32)
        assert_close(state[0] if cell == "lstm" else state, h_ref, np.float32)
        if cell == "lstm":
            assert_close(state[1], c_ref, np.float32)


@pytest.mark.parametrize("cell", CELLS)
def test_in_place_weight_update_between_calls_is_seen(cell):
    """Packed weights are not kept between model calls: an optimiser's in-place step
    shows in the next call."""
    rng = np.random.default_rng(62)
    model = make_model(cell, 4, 21, dtype=np.float32, seed=62)
    x = normal(rng, (5, 1, 4), np.float32)
    model(x)
    for p in model.parameters().values():
        p *= -0.75
    y, _ = model(x)
    h0 = np.zeros((1, 1, 21))
    y_ref, _, _ = reference.run_model(
        cell, x, _state_dict64(model), 1, False, h0, h0 if cell == "lstm" else None
    )
    assert_close(y, y_ref, np.float32)


def test_inference_from_two_threads_at_once():
    """Two threads run small inference calls on one model at once (each with its own
    scratch): every result equals the same call run alone."""
    rng = np.random.default_rng(63)
    model = make_model("gru", 8, 24, dtype=np.float32, seed=63)
    xs = [normal(rng, (30, 1, 8), np.float32) for _ in range(2)]
    want = [model(x) for x in xs]
    got = run_in_two_threads(lambda k: model(xs[k]), 200)
    for k in range(2):
        for y, h in got[k]:
            np.testing.assert_array_equal(y, want[k][0])
            np.testing.assert_array_equal(h, want[k][1])


def test_kept_and_aligned_arrays_start_on_a_64_byte_boundary(monkeypatch):
    """The kernels' 64-byte vector loads of packed weights and gate rows stay within one
    cache line only if the buffers are 64-byte aligned (NumPy's own start 16 bytes past):
    every scratch array large enough to be kept as a spare, and every _aligned_empty."""
    monkeypatch.setattr(_layer, "_spare", {})
    big = [(1 << 14,), (2, 3, 4000), (129, 128)]
    for shape in big + [(3,), (5, 7), (0,)]:
        for dtype in (np.float32, np.float64):
            arrays = [_layer._aligned_empty(shape, dtype)]
            if shape in big:
                arrays.append(_layer._scratch(shape, dtype))
            for a in arrays:
                assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous
                assert a.size == 0 or a.ctypes.data % 64 == 0
                a[...] = 1  # writable, and the whole extent is its own
                assert a.sum() == a.size


def test_small_inference_scratch_is_aligned():
    """A small inference call's per-thread scratch (packed weights among it) is aligned."""
    model = make_model("lstm", 8, 24, dtype=np.float32, seed=64)
    model(np.ones((3, 1, 8), np.float32))
    kept = _layer._local.buffers
    arrays = [a for b in kept.values() for a in b.ws.get("arrays", {}).values() if a.size]
    assert arrays
    assert all(a.ctypes.data % 64 == 0 for a in arrays)


@pytest.mark.parametrize("cell", CELLS)
def test_training_steps_reuse_their_large_scratch(cell, monkeypatch):
    """After the first step, a training step takes every large internal array (packed
    weights among them) from the spares: none is allocated afresh (the pack buffers of
    forward_train were once dropped, and so faulted in anew, on every step)."""
    monkeypatch.setattr(_layer, "_spare", {})
    made = []
    aligned_empty = _layer._aligned_empty
    monkeypatch.setattr(_layer, "_aligned_empty", lambda *a: made.append(a) or aligned_empty(*a))
    rng = np.random.default_rng(5)
    model = make_model(cell, 128, 128, dtype=np.float32, seed=5)  # packs of 64 KiB and more
    x = normal(rng, (20, 1, 128), np.float32)
    dy = normal(rng, (20, 1, 128), np.float32)
    counts = []
    for _ in range(3):
        _, _, backward = model.forward_train(x)
        backward(dy)
        del backward  # the tape's arrays come back as spares
        counts.append(len(made))
    assert counts[0] > 0
    assert counts[2] == counts[1]
