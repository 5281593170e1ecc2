"""freeze(): read-only parameters that each thread keeps packed from one call to the next.

The kept packs must never outlive the weights they hold: every test compares a frozen model
with a fresh, unfrozen model of the same parameters (bit for bit: the same kernels run), or
with the float64 reference.
"""

import numpy as np
import pytest
import reference as ref
from helpers import CELLS, DTYPE_IDS, DTYPES, assert_close, make_model, normal, run_in_two_threads

import fastrnn
from fastrnn import _layer

I = H = 6  # input_size == hidden_size: the layers of a stack share one configuration  # noqa: E741
T = 5


def fresh(model):
    """An unfrozen model of the same class, configuration and parameters."""
    other = type(model)(**model._config(), dtype=model.dtype)
    other.load_state_dict(model.state_dict())
    return other


def change_behind_the_freeze(model):
    """Change a frozen array in place by forcing it writable (unsupported): a call that still
    gives the old numbers ran on packs kept from before."""
    w = model.parameters()["weight_hh_l0"]
    w.flags.writeable = True
    w *= 0.5
    w.flags.writeable = False


def state_of(cell, state):
    return state if cell != "lstm" else np.concatenate(state)


@pytest.fixture(params=["1-thread", "2-threads-by-units"])
def thread_policy(request):
    """One thread, or two sharing even a tiny batch-1 step by hidden units."""
    saved = fastrnn.get_num_threads()
    mp = pytest.MonkeyPatch()
    if request.param != "1-thread":
        mp.setattr(fastrnn._threads, "_MIN_PARALLEL_WORK", 0)
        mp.setattr(fastrnn._threads, "_MIN_WORK_PER_PACKED_WEIGHT", 0)
        mp.setattr(fastrnn._threads, "_MIN_UNIT_STEP_WORK", 0)
        mp.setattr(fastrnn._threads, "_MIN_UNIT_STEP_WORK_ROWS", 0)
        fastrnn.set_num_threads(2)
    else:
        fastrnn.set_num_threads(1)
    yield request.param
    mp.undo()
    fastrnn.set_num_threads(saved)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_frozen_model_gives_the_numbers_of_the_live_one(cell, dtype, batch, thread_policy):
    rng = np.random.default_rng(3)
    model = make_model(cell, I, H, num_layers=2, bidirectional=True, dtype=dtype, seed=3)
    live = fresh(model)
    model.freeze()
    x = normal(rng, (T, batch, I), dtype)
    dy = normal(rng, (T, batch, 2 * H), dtype)
    want_y, want_state = live(x)
    zeros = np.zeros((4, batch, H), dtype)
    y_ref, _, _ = ref.run_model(cell, x, live.state_dict(), 2, True, zeros, zeros)
    assert_close(want_y, y_ref, dtype)
    for call in range(3):  # the first call packs; the others reuse the packs
        y, state = model(x)
        np.testing.assert_array_equal(y, want_y, err_msg=f"call {call}")
        np.testing.assert_array_equal(state_of(cell, state), state_of(cell, want_state))
    _, _, backward = model.forward_train(x)
    _, _, live_backward = live.forward_train(x)
    got, want = backward(dy), live_backward(dy)
    np.testing.assert_array_equal(got.x, want.x)
    for name, value in want.params.items():
        np.testing.assert_array_equal(got.params[name], value, err_msg=name)


@pytest.mark.parametrize("cell", CELLS)
def test_frozen_parameters_refuse_in_place_changes_until_unfrozen(cell):
    model = make_model(cell, I, H, num_layers=2, seed=4).freeze()
    assert model.frozen
    for name, value in model.parameters().items():
        with pytest.raises(ValueError, match="read-only"):
            value[...] = 0.0
        assert np.array_equal(value, model.state_dict()[name])
    x = normal(np.random.default_rng(4), (T, 1, I), np.float32)
    before, _ = model(x)
    model.unfreeze()
    assert not model.frozen
    for value in model.parameters().values():
        value *= 0.5  # an optimiser's in-place step
    after, _ = model(x)
    np.testing.assert_array_equal(after, fresh(model)(x)[0])
    assert not np.array_equal(after, before)


@pytest.mark.parametrize("cell", CELLS)
def test_frozen_model_follows_replaced_parameters(cell):
    """load_state_dict and reset_parameters give new arrays, frozen too, packed anew."""
    rng = np.random.default_rng(5)
    model = make_model(cell, I, H, num_layers=2, seed=5).freeze()
    x = normal(rng, (T, 1, I), np.float32)
    model(x)
    model.load_state_dict(make_model(cell, I, H, num_layers=2, seed=6).state_dict())
    assert model.frozen and not model.parameters()["weight_hh_l1"].flags.writeable
    np.testing.assert_array_equal(model(x)[0], fresh(model)(x)[0])
    model.reset_parameters(np.random.default_rng(7))
    assert not model.parameters()["weight_ih_l0"].flags.writeable
    np.testing.assert_array_equal(model(x)[0], fresh(model)(x)[0])


@pytest.mark.parametrize("cell", CELLS)
def test_models_of_one_configuration_do_not_share_kept_packs(cell):
    """Two frozen models and a live one of the same shapes, called in turn on one thread;
    the live one changes in place between its calls."""
    rng = np.random.default_rng(8)
    a = make_model(cell, I, H, seed=8).freeze()
    b = make_model(cell, I, H, seed=9).freeze()
    live = make_model(cell, I, H, seed=10)
    want_a, want_b = fresh(a), fresh(b)
    x = normal(rng, (T, 1, I), np.float32)
    for turn in range(3):
        np.testing.assert_array_equal(a(x)[0], want_a(x)[0], err_msg=f"turn {turn}")
        live.parameters()["weight_hh_l0"][0] += 0.25
        np.testing.assert_array_equal(live(x)[0], fresh(live)(x)[0], err_msg=f"turn {turn}")
        np.testing.assert_array_equal(b(x)[0], want_b(x)[0], err_msg=f"turn {turn}")


def test_frozen_parameters_mapping_is_read_only():
    """parameters() is the live dict of a live model; no array can be swapped into a frozen
    one's behind its back (which would then be kept packed while it changes)."""
    model = fastrnn.GRU(I, H, seed=11).freeze()
    with pytest.raises(TypeError):
        model.parameters()["weight_hh_l0"] = np.zeros((3 * H, H), np.float32)
    model.unfreeze()
    model.parameters()["weight_hh_l0"] = np.zeros((3 * H, H), np.float32)
    np.testing.assert_array_equal(model.state_dict()["weight_hh_l0"], 0.0)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("cell", CELLS)
def test_frozen_model_reuses_its_packed_weights(cell, batch):
    """The packs are kept: forcing a frozen array writable by hand (unsupported) and changing
    it leaves the next call on the packed copy, where a live model sees the change."""
    rng = np.random.default_rng(12)
    model = make_model(cell, I, H, seed=12).freeze()
    x = normal(rng, (T, batch, I), np.float32)
    first, _ = model(x)
    change_behind_the_freeze(model)
    np.testing.assert_array_equal(model(x)[0], first)
    assert not np.array_equal(fresh(model)(x)[0], first)


@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("cell", CELLS)
def test_frozen_model_keeps_its_packs_at_any_sequence_length(cell, with_lengths):
    """A call whose output alone is more than the kept scratch's 4 MiB still keeps the packs
    (the sequence-sized arrays come from the spares), and its numbers are the live model's."""
    rng = np.random.default_rng(14)
    steps, batch, hidden = 600, 32, 64  # y: 4.9 MB
    assert steps * batch * hidden * 4 > _layer._WORKSPACE_MAX_BYTES
    model = make_model(cell, I, hidden, seed=14).freeze()
    x = normal(rng, (steps, batch, I), np.float32)
    lengths = rng.integers(0, steps + 1, batch) if with_lengths else None
    first, _ = model(x, lengths=lengths)
    np.testing.assert_array_equal(fresh(model)(x, lengths=lengths)[0], first)
    change_behind_the_freeze(model)
    np.testing.assert_array_equal(model(x, lengths=lengths)[0], first)
    assert not np.array_equal(fresh(model)(x, lengths=lengths)[0], first)


@pytest.mark.parametrize("batch", [1, 3, 200], ids=lambda b: f"B{b}")
@pytest.mark.parametrize("cell", CELLS)
def test_frozen_model_keeps_its_packs_without_kept_scratch(cell, batch, monkeypatch):
    """With no scratch kept between calls (as for a configuration above 4 MiB of it) the
    packs stay on the frozen weights, for inference and for both passes of training: after
    the first call, changing a frozen array behind the freeze changes nothing, and every
    result is the live model's, bit for bit. (Batch 200 runs the products in two blocks
    of rows.)"""
    monkeypatch.setattr(_layer, "_WORKSPACE_MAX_BYTES", -1)
    rng = np.random.default_rng(16)
    model = make_model(cell, I, H, num_layers=2, seed=16).freeze()
    live = fresh(model)
    x = normal(rng, (T, batch, I), np.float32)
    dy = normal(rng, (T, batch, H), np.float32)
    want_y, _ = live(x)
    want = live.forward_train(x)[2](dy)
    y, _ = model(x)
    got = model.forward_train(x)[2](dy)
    if batch <= 128:
        change_behind_the_freeze(model)
    for _ in range(2):  # the packs made above, then the same ones again
        np.testing.assert_array_equal(model(x)[0], want_y)
        np.testing.assert_array_equal(y, want_y)
        y_t, _, backward = model.forward_train(x)
        np.testing.assert_array_equal(y_t, want_y)
        got = backward(dy)
        np.testing.assert_array_equal(got.x, want.x)
        for name, value in want.params.items():
            np.testing.assert_array_equal(got.params[name], value, err_msg=name)
    if batch <= 128:
        assert not np.array_equal(fresh(model)(x)[0], want_y)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_stream_and_two_threads_on_a_frozen_model(cell):
    rng = np.random.default_rng(13)
    model = make_model(cell, I, H, num_layers=2, seed=13).freeze()
    live = fresh(model)
    x = normal(rng, (T, 2, I), np.float32)
    want, _ = live(x)
    stream = model.stream(2)
    np.testing.assert_array_equal(np.concatenate([stream(x[:2]), stream(x[2:])]), want)
    got = run_in_two_threads(lambda k: model(x[:, k : k + 1])[0], 20, "a frozen model")
    for k in range(2):
        for y in got[k]:
            np.testing.assert_array_equal(y, want[:, k : k + 1])


def test_forward_train_on_a_frozen_model_keeps_its_weights_for_backward():
    """A frozen model copies no weights for backward: replacing them (load_state_dict) after
    forward_train must not change that pass's gradients."""
    rng = np.random.default_rng(14)
    model = fastrnn.LSTM(I, H, seed=14).freeze()
    x = normal(rng, (T, 1, I), np.float32)
    dy = normal(rng, (T, 1, H), np.float32)
    _, _, backward = model.forward_train(x)
    want = fresh(model).forward_train(x)[2](dy)
    model.load_state_dict(fastrnn.LSTM(I, H, seed=15).state_dict())
    got = backward(dy)
    for name, value in want.params.items():
        np.testing.assert_array_equal(got.params[name], value, err_msg=name)


@pytest.mark.parametrize("freeze", [False, True], ids=["live", "frozen"])
def test_held_parameters_mapping_sees_replaced_parameters(freeze):
    """An optimiser holding parameters() keeps seeing the model's arrays after
    load_state_dict and reset_parameters (and, frozen, after unfreeze)."""
    model = fastrnn.LSTM(I, H, seed=16)
    if freeze:
        model.freeze()
    held = model.parameters()
    model.load_state_dict(fastrnn.LSTM(I, H, seed=17).state_dict())
    np.testing.assert_array_equal(held["weight_hh_l0"], model.state_dict()["weight_hh_l0"])
    model.reset_parameters(np.random.default_rng(18))
    np.testing.assert_array_equal(held["weight_ih_l0"], model.state_dict()["weight_ih_l0"])
    if freeze:
        model.unfreeze()
        assert held["weight_hh_l0"] is model.parameters()["weight_hh_l0"]
        assert held["weight_hh_l0"].flags.writeable


def test_dict_held_from_before_freeze_does_not_reach_the_frozen_model():
    """A live parameters() dict obtained before freeze() cannot swap a writable array into
    the frozen model (whose packs would then go stale as that array changes)."""
    rng = np.random.default_rng(19)
    model = fastrnn.GRU(I, H, seed=19)
    held = model.parameters()
    model.freeze()
    x = normal(rng, (T, 1, I), np.float32)
    want, _ = model(x)
    w = np.zeros((3 * H, H), np.float32)
    held["weight_hh_l0"] = w
    w += 1.0
    np.testing.assert_array_equal(model(x)[0], want)
    assert not model.parameters()["weight_hh_l0"].flags.writeable
