"""One test per validation error (matching its message), input conversion, and the ownership
rules of forward_train: independent passes, repeatable backward, no aliasing of the caller's x.
"""

import numpy as np
import pytest
from helpers import CELLS, DTYPE_IDS, DTYPES, assert_close, make_model, normal

import fastrnn

T, B, I, H = 4, 3, 2, 5  # noqa: E741


def rnn(**kwargs):
    return fastrnn.RNN(I, H, seed=0, **kwargs)


def lstm(**kwargs):
    return fastrnn.LSTM(I, H, seed=0, **kwargs)


def data(shape=(T, B, I), dtype=np.float32, seed=0):
    return normal(np.random.default_rng(seed), shape, dtype)


# -- x -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(I,), (2, T, B, I)], ids=["1-D", "4-D"])
def test_x_wrong_rank(shape):
    with pytest.raises(
        ValueError,
        match=r"x must have shape \(T, B, input_size\) or "
        r"\(T, input_size\), got \d-D shape",
    ):
        rnn()(data(shape))


def test_x_wrong_rank_batch_first_names_its_layout():
    with pytest.raises(ValueError, match=r"x must have shape \(B, T, input_size\)"):
        rnn(batch_first=True)(data((2, T, B, I)))


def test_x_wrong_feature_size():
    with pytest.raises(ValueError, match=r"x has 3 features .* model's input_size is 2"):
        rnn()(data((T, B, 3)))


def test_x_wrong_feature_size_unbatched():
    with pytest.raises(ValueError, match=r"x has 3 features \(shape \(4, 3\)\)"):
        rnn()(data((T, 3)))


@pytest.mark.parametrize(
    "x",
    [
        pytest.param(np.full((T, B, I), "a"), id="strings"),
        pytest.param(np.full((T, B, I), 1.0, dtype=object), id="object"),
        pytest.param(np.ones((T, B, I), dtype=np.complex128), id="complex"),
        pytest.param(np.ones((T, B, I), dtype=bool), id="bool"),
    ],
)
def test_x_non_numeric(x):
    with pytest.raises(TypeError, match=r"x must hold real numbers \(float or int\), got dtype"):
        rnn()(x)


def test_x_not_an_array():
    ragged = [[[1.0, 2.0]], [[1.0]]]
    with pytest.raises(TypeError, match=r"x must be a numeric array, got list"):
        rnn()(ragged)


def test_x_non_numeric_in_forward_train():
    with pytest.raises(TypeError, match=r"x must hold real numbers"):
        rnn().forward_train(np.full((T, B, I), "a"))


# -- initial state -----------------------------------------------------------------------


def test_h0_wrong_shape():
    with pytest.raises(
        ValueError,
        match=r"h0 must have shape \(2, 3, 5\) \(num_layers \* "
        r"num_directions, batch, hidden\), got \(1, 3, 5\)",
    ):
        fastrnn.RNN(I, H, num_layers=2)(data(), data((1, B, H)))


def test_h0_wrong_shape_unbatched():
    with pytest.raises(
        ValueError,
        match=r"h0 must have shape \(1, 5\) .* for unbatched x, "
        r"got \(1, 1, 5\)",
    ):
        rnn()(data((T, I)), data((1, 1, H)))


def test_h0_wrong_shape_bidirectional_needs_both_directions():
    with pytest.raises(ValueError, match=r"h0 must have shape \(2, 3, 5\)"):
        rnn(bidirectional=True)(data(), data((1, B, H)))


@pytest.mark.parametrize("pair", [False, True], ids=["array", "triple"])
def test_lstm_h0_not_a_pair(pair):
    state = data((1, B, H))
    hx = (state, state, state) if pair else state
    with pytest.raises(TypeError, match=r"LSTM's initial state must be a pair \(h0, c0\)"):
        lstm()(data(), hx)


def test_lstm_c0_wrong_shape():
    with pytest.raises(ValueError, match=r"c0 must have shape \(1, 3, 5\) .* got \(1, 2, 5\)"):
        lstm()(data(), (data((1, B, H)), data((1, 2, H))))


def test_lstm_h0_wrong_shape():
    with pytest.raises(ValueError, match=r"h0 must have shape \(1, 3, 5\)"):
        lstm()(data(), (data((1, B, 4)), data((1, B, H))))


def test_h0_non_numeric():
    with pytest.raises(TypeError, match=r"h0 must hold real numbers"):
        rnn()(data(), np.full((1, B, H), "a"))


# -- lengths -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lengths", [[4, 4], [4, 4, 4, 4], [[4, 4, 4]]], ids=["short", "long", "2-D"]
)
def test_lengths_wrong_size(lengths):
    with pytest.raises(ValueError, match=r"lengths must have shape \(3,\) \(one per batch row\)"):
        rnn()(data(), lengths=lengths)


@pytest.mark.parametrize(
    "lengths, lo, hi", [([4, -1, 2], -1, 4), ([5, 0, 2], 0, 5)], ids=["negative", "above-T"]
)
def test_lengths_out_of_range(lengths, lo, hi):
    with pytest.raises(
        ValueError,
        match=rf"lengths must lie in \[0, 4\] \(the sequence has "
        rf"T=4 steps\), got values from {lo} to {hi}",
    ):
        rnn()(data(), lengths=lengths)


@pytest.mark.parametrize(
    "lengths",
    [
        pytest.param(np.array([1.5, 2.0, 3.0]), id="fraction"),
        pytest.param(np.array([np.nan, 2.0, 3.0]), id="nan"),
        pytest.param(np.array(["1", "2", "3"]), id="strings"),
        pytest.param(np.array([True, False, True]), id="bool"),
    ],
)
def test_lengths_not_whole_numbers(lengths):
    with pytest.raises(TypeError, match=r"lengths must be whole numbers, got dtype"):
        rnn()(data(), lengths=lengths)


def test_lengths_whole_floats_and_lists_are_accepted():
    model = rnn()
    y_int, h_int = model(data(), lengths=np.array([4, 0, 2]))
    y_flt, h_flt = model(data(), lengths=[4.0, 0.0, 2.0])
    np.testing.assert_array_equal(y_int, y_flt)
    np.testing.assert_array_equal(h_int, h_flt)


def test_lengths_out_of_range_in_forward_train():
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 4\]"):
        rnn().forward_train(data(), lengths=[5, 1, 1])


# -- constructor -------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [fastrnn.RNN, fastrnn.LSTM, fastrnn.GRU], ids=lambda c: c.__name__)
def test_hidden_size_zero(cls):
    with pytest.raises(ValueError, match=r"hidden_size must be >= 1, got 0"):
        cls(I, 0)


def test_input_size_zero():
    with pytest.raises(ValueError, match=r"input_size must be >= 1, got 0"):
        fastrnn.GRU(0, H)


def test_num_layers_zero():
    with pytest.raises(ValueError, match=r"num_layers must be >= 1, got 0"):
        fastrnn.LSTM(I, H, num_layers=0)


@pytest.mark.parametrize("value", [2.0, True, "3"], ids=["float", "bool", "str"])
def test_sizes_must_be_integers(value):
    with pytest.raises(TypeError, match=r"hidden_size must be an integer, got"):
        fastrnn.RNN(I, value)


@pytest.mark.parametrize(
    "dropout", [-0.1, 1.5, float("nan")], ids=["negative", "above-one", "nan"]
)
def test_dropout_out_of_range(dropout):
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\], got"):
        fastrnn.GRU(I, H, num_layers=2, dropout=dropout)


@pytest.mark.parametrize("dropout", ["0.5", None, True], ids=["str", "None", "bool"])
def test_dropout_not_a_number(dropout):
    with pytest.raises(TypeError, match=r"dropout must be a number in \[0, 1\]"):
        fastrnn.GRU(I, H, num_layers=2, dropout=dropout)


@pytest.mark.parametrize("dropout", [0.0, 1.0], ids=["zero", "one"])
def test_dropout_bounds_are_accepted(dropout):
    """PyTorch accepts dropout in [0, 1], both ends included."""
    assert fastrnn.GRU(I, H, num_layers=2, dropout=dropout).dropout == dropout


def test_nonlinearity_unknown():
    with pytest.raises(ValueError, match=r"nonlinearity must be 'tanh' or 'relu', got 'sigmoid'"):
        fastrnn.RNN(I, H, nonlinearity="sigmoid")


@pytest.mark.parametrize("dtype", [np.int32, np.float16, np.complex64], ids=str)
def test_dtype_not_float32_or_64(dtype):
    with pytest.raises(TypeError, match=r"dtype must be float32 or float64, got"):
        fastrnn.LSTM(I, H, dtype=dtype)


def test_dtype_not_a_dtype():
    with pytest.raises(TypeError, match=r"dtype must be float32 or float64, got"):
        fastrnn.LSTM(I, H, dtype="no such type")


@pytest.mark.parametrize("proj_size", [H, H + 1], ids=["equal", "larger"])
def test_lstm_proj_size_not_smaller_than_hidden_size(proj_size):
    with pytest.raises(
        ValueError,
        match=r"proj_size must be smaller than hidden_size, got "
        rf"proj_size={proj_size} and hidden_size={H}",
    ):
        fastrnn.LSTM(I, H, proj_size=proj_size)


def test_lstm_proj_size_negative():
    with pytest.raises(ValueError, match=r"proj_size must be >= 0, got -1"):
        fastrnn.LSTM(I, H, proj_size=-1)


def test_lstm_projection_state_shapes():
    """With proj_size P, h0 is (L*D, B, P) and c0 (L*D, B, H); the wrong one is named."""
    model = fastrnn.LSTM(I, H, proj_size=2)
    with pytest.raises(ValueError, match=r"h0 must have shape \(1, 3, 2\)"):
        model(data(), (data((1, B, H)), data((1, B, H))))
    with pytest.raises(ValueError, match=r"c0 must have shape \(1, 3, 5\)"):
        model(data(), (data((1, B, 2)), data((1, B, 2))))


@pytest.mark.parametrize("n", [0, 1.5], ids=["zero", "float"])
def test_set_num_threads_rejects(n):
    before = fastrnn.get_num_threads()
    with pytest.raises((ValueError, TypeError), match=r"n must be"):
        fastrnn.set_num_threads(n)
    assert fastrnn.get_num_threads() == before


# -- state_dict --------------------------------------------------------------------------


def test_load_state_dict_missing_key():
    model = lstm(num_layers=2)
    sd = model.state_dict()
    del sd["weight_hh_l1"]
    with pytest.raises(ValueError, match=r"missing keys \['weight_hh_l1'\]"):
        model.load_state_dict(sd)


def test_load_state_dict_missing_key_allowed_when_not_strict():
    model = lstm(num_layers=2)
    sd = {"weight_hh_l1": np.full((4 * H, H), 0.25)}
    before = model.state_dict()
    model.load_state_dict(sd, strict=False)
    after = model.state_dict()
    np.testing.assert_array_equal(after["weight_hh_l1"], 0.25)
    for name in before:
        if name != "weight_hh_l1":
            np.testing.assert_array_equal(after[name], before[name])


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "lenient"])
def test_load_state_dict_unexpected_key(strict):
    model = rnn()
    sd = model.state_dict()
    sd["weight_ih_l1"] = sd["weight_hh_l0"]
    with pytest.raises(ValueError, match=r"unexpected keys \['weight_ih_l1'\]"):
        model.load_state_dict(sd, strict=strict)


def test_load_state_dict_bias_into_model_without_bias():
    model = rnn(bias=False)
    with pytest.raises(ValueError, match=r"unexpected keys \['bias_hh_l0', 'bias_ih_l0'\]"):
        model.load_state_dict(rnn().state_dict())


def test_load_state_dict_wrong_shape():
    model = fastrnn.GRU(I, H, seed=0)
    sd = model.state_dict()
    sd["weight_ih_l0"] = np.ones((3 * H, I + 1))
    before = model.state_dict()
    with pytest.raises(
        ValueError,
        match=r"state_dict entry 'weight_ih_l0' must have shape "
        r"\(15, 2\), got \(15, 3\)",
    ):
        model.load_state_dict(sd)
    for name, value in model.state_dict().items():  # a failed load changes nothing
        np.testing.assert_array_equal(value, before[name])


def test_load_state_dict_non_numeric():
    model = rnn()
    sd = model.state_dict()
    sd["bias_ih_l0"] = np.array(["x"] * H)
    with pytest.raises(TypeError, match=r"bias_ih_l0 must hold real numbers"):
        model.load_state_dict(sd)


def test_load_state_dict_copies_and_converts():
    model = rnn(dtype=np.float32)
    sd = {k: v.astype(np.float64) for k, v in model.state_dict().items()}
    model.load_state_dict(sd)
    sd["weight_ih_l0"][...] = 7.0  # the model keeps its own copy
    loaded = model.state_dict()
    assert all(v.dtype == np.float32 for v in loaded.values())
    assert not np.any(loaded["weight_ih_l0"] == 7.0)


# -- backward arguments ------------------------------------------------------------------


@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
def test_dy_wrong_shape(batch_first):
    model = rnn(batch_first=batch_first)
    x = data((B, T, I) if batch_first else (T, B, I))
    y, _, backward = model.forward_train(x)
    want = r"\(3, 4, 5\)" if batch_first else r"\(4, 3, 5\)"
    with pytest.raises(ValueError, match=rf"dy must have shape {want}, got \(4, 3, 6\)"):
        backward(np.ones((T, B, H + 1)))


def test_dy_wrong_shape_unbatched():
    _, _, backward = rnn().forward_train(data((T, I)))
    with pytest.raises(ValueError, match=r"dy must have shape \(4, 5\), got \(4, 1, 5\)"):
        backward(np.ones((T, 1, H)))


def test_dh_n_wrong_shape():
    y, _, backward = rnn().forward_train(data())
    with pytest.raises(ValueError, match=r"dh_n must have shape \(1, 3, 5\)"):
        backward(np.ones_like(y), np.ones((2, B, H)))


def test_lstm_dc_n_wrong_shape():
    y, _, backward = lstm().forward_train(data())
    with pytest.raises(ValueError, match=r"dc_n must have shape \(1, 3, 5\)"):
        backward(np.ones_like(y), (np.ones((1, B, H)), np.ones((1, B, 2))))


def test_lstm_dh_n_not_a_pair():
    y, _, backward = lstm().forward_train(data())
    state = np.ones((1, B, H))
    with pytest.raises(TypeError, match=r"LSTM's dh_n must be an array or a pair"):
        backward(np.ones_like(y), (state, state, state))


def test_dy_non_numeric():
    _, _, backward = rnn().forward_train(data())
    with pytest.raises(TypeError, match=r"dy must hold real numbers"):
        backward(np.full((T, B, H), "a"))


# -- conversion --------------------------------------------------------------------------


@pytest.mark.parametrize("model_dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(
    "convert",
    [
        pytest.param(lambda x: x.astype(np.float16), id="float16"),
        pytest.param(lambda x: x.astype(np.float64), id="float64"),
        pytest.param(lambda x: x.astype(np.float32), id="float32"),
        pytest.param(lambda x: np.round(4 * x).astype(np.int32), id="int32"),
        pytest.param(lambda x: np.round(4 * x).astype(np.int64), id="int64"),
        pytest.param(lambda x: np.abs(np.round(4 * x)).astype(np.uint8), id="uint8"),
        pytest.param(lambda x: x.tolist(), id="list"),
        pytest.param(lambda x: np.asfortranarray(x), id="fortran-order"),
        pytest.param(lambda x: np.repeat(x, 2, axis=2)[:, :, ::2], id="strided"),
    ],
)
def test_x_is_converted_to_model_dtype(convert, model_dtype):
    model = fastrnn.LSTM(I, H, num_layers=2, dtype=model_dtype, seed=1)
    x = convert(data(dtype=np.float64))
    expected_x = np.asarray(x).astype(model_dtype)  # what the model should compute on
    y, (h_n, c_n) = model(x)
    y_ref, (h_ref, c_ref) = model(np.ascontiguousarray(expected_x))
    assert y.dtype == h_n.dtype == c_n.dtype == model_dtype
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(h_n, h_ref)
    y_t, _, backward = model.forward_train(x)
    np.testing.assert_array_equal(y_t, y_ref)
    g = backward(np.ones_like(y_t))
    assert g.x.dtype == model_dtype and g.x.shape == np.shape(x)


@pytest.mark.parametrize("model_dtype", DTYPES, ids=DTYPE_IDS)
def test_state_and_gradients_are_converted(model_dtype):
    model = fastrnn.LSTM(I, H, dtype=model_dtype, seed=1)
    x = data(dtype=np.float64)
    h0, c0 = data((1, B, H), np.float64, 1), data((1, B, H), np.float64, 2)
    y, (h_n, _) = model(x, (h0.tolist(), c0.astype(np.float16)))
    y_ref, (h_ref, _) = model(
        x.astype(model_dtype), (h0.astype(model_dtype), c0.astype(np.float16).astype(model_dtype))
    )
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(h_n, h_ref)
    _, _, backward = model.forward_train(x)
    g = backward(np.ones(y.shape, np.float16).tolist(), np.ones((1, B, H), np.int64))
    g_ref = backward(np.ones(y.shape, model_dtype), np.ones((1, B, H), model_dtype))
    np.testing.assert_array_equal(g.x, g_ref.x)
    assert g.h0.dtype == g.c0.dtype == model_dtype


# -- ownership of the caller's arrays and of each pass -----------------------------------


@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("cell", CELLS)
def test_model_does_not_modify_caller_arrays(cell, batch_first):
    model = make_model(
        cell,
        I,
        H,
        num_layers=2,
        bidirectional=True,
        dropout=0.3,
        batch_first=batch_first,
        dtype=np.float32,
        seed=2,
    )
    rng = np.random.default_rng(3)
    x = normal(rng, (B, T, I) if batch_first else (T, B, I), np.float32)
    h0 = normal(rng, (4, B, H), np.float32)
    c0 = normal(rng, (4, B, H), np.float32)
    lens = np.array([4, 1, 3])
    hx = (h0, c0) if cell == "lstm" else h0
    originals = [a.copy() for a in (x, h0, c0, lens)]
    y, _ = model(x, hx, lengths=lens)
    y_t, _, backward = model.forward_train(x, hx, lengths=lens)
    dy = normal(rng, y.shape, np.float32)
    dh = normal(rng, (4, B, H), np.float32)
    dy_copy, dh_copy = dy.copy(), dh.copy()
    backward(dy, (dh, dh) if cell == "lstm" else dh)
    for before, after in zip(originals, (x, h0, c0, lens), strict=True):
        np.testing.assert_array_equal(after, before)
    np.testing.assert_array_equal(dy, dy_copy)
    np.testing.assert_array_equal(dh, dh_copy)


def test_returned_arrays_are_not_shared_between_calls():
    model = rnn()
    x = data()
    y1, h1 = model(x)
    y1_copy, h1_copy = y1.copy(), h1.copy()
    model(data(seed=5))
    np.testing.assert_array_equal(y1, y1_copy)
    np.testing.assert_array_equal(h1, h1_copy)


def grads_of(model, x, hx, lens, dy, dh):
    _, _, backward = model.forward_train(x, hx, lengths=lens)
    return backward(dy, dh)


def assert_same_gradients(g, h):
    np.testing.assert_array_equal(g.x, h.x)
    np.testing.assert_array_equal(g.h0, h.h0)
    if g.c0 is not None:
        np.testing.assert_array_equal(g.c0, h.c0)
    assert list(g.params) == list(h.params)
    for name in g.params:
        np.testing.assert_array_equal(g.params[name], h.params[name])


def problem(cell, dtype, seed, batch_first=False):
    rng = np.random.default_rng(seed)
    x = normal(rng, (B, T, I) if batch_first else (T, B, I), dtype)
    h0 = normal(rng, (4, B, H), dtype, 0.5)
    hx = (h0, normal(rng, (4, B, H), dtype, 0.5)) if cell == "lstm" else h0
    lens = rng.permutation([4, 2, 3])
    dy = normal(rng, (B, T, 2 * H) if batch_first else (T, B, 2 * H), dtype)
    dh = normal(rng, (4, B, H), dtype)
    return x, hx, lens, dy, ((dh, dh) if cell == "lstm" else dh)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_two_passes_in_flight(cell, dtype):
    """Interleaved forward_train calls on one model keep independent tapes."""
    model = make_model(cell, I, H, num_layers=2, bidirectional=True, dtype=dtype, seed=4)
    a, b = problem(cell, dtype, 1), problem(cell, dtype, 2)
    expected_a, expected_b = grads_of(model, *a), grads_of(model, *b)
    x_a, hx_a, lens_a, dy_a, dh_a = a
    x_b, hx_b, lens_b, dy_b, dh_b = b
    _, _, back_a = model.forward_train(x_a, hx_a, lengths=lens_a)
    _, _, back_b = model.forward_train(x_b, hx_b, lengths=lens_b)
    assert_same_gradients(back_b(dy_b, dh_b), expected_b)
    assert_same_gradients(back_a(dy_a, dh_a), expected_a)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("cell", CELLS)
def test_passes_in_flight_keep_their_own_saved_state(cell, batch):
    """Passes of one shape in the user's layout (no lengths, one direction) take their
    scratch from this thread's kept buffers: three in flight at once, their backward passes
    run in another order, and each twice, give each pass's own gradients."""
    model = make_model(cell, I, H, num_layers=2, dtype=np.float32, seed=6)
    rng = np.random.default_rng(6)
    runs = []
    for _ in range(3):
        x = normal(rng, (T, batch, I), np.float32)
        dy = normal(rng, (T, batch, H), np.float32)
        runs.append((x, dy, grads_of(model, x, None, None, dy, None)))
    backwards = [model.forward_train(x)[2] for x, _, _ in runs]
    for k in (2, 0, 1, 0):
        assert_same_gradients(backwards[k](runs[k][1]), runs[k][2])


@pytest.mark.parametrize("cell", CELLS)
def test_passes_in_flight_from_threads(cell):
    """The kernels release the GIL: concurrent passes on one model still agree."""
    from concurrent.futures import ThreadPoolExecutor

    model = make_model(cell, I, H, num_layers=2, bidirectional=True, dtype=np.float64, seed=4)
    problems = [problem(cell, np.float64, s) for s in range(8)]
    expected = [grads_of(model, *p) for p in problems]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda p: grads_of(model, *p), problems * 3))
    for k, g in enumerate(got):
        assert_same_gradients(g, expected[k % len(problems)])


@pytest.mark.parametrize("cell", CELLS)
def test_backward_twice_gives_the_same_result(cell):
    model = make_model(cell, I, H, num_layers=2, bidirectional=True, dtype=np.float64, seed=4)
    x, hx, lens, dy, dh = problem(cell, np.float64, 1)
    _, _, backward = model.forward_train(x, hx, lengths=lens)
    first = backward(dy, dh)
    snapshot = grads_of(model, x, hx, lens, dy, dh)
    second = backward(dy, dh)
    assert_same_gradients(first, snapshot)  # the first result was not overwritten
    assert_same_gradients(second, snapshot)


@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_mutating_inputs_after_forward_train(cell, dtype, batch_first):
    """backward uses the inputs as they were at forward_train, even if the caller reuses them.

    x already in the model's dtype (and layout) is the case where no conversion copy exists.
    """
    model = make_model(
        cell, I, H, num_layers=2, bidirectional=True, batch_first=batch_first, dtype=dtype, seed=4
    )
    x, hx, lens, dy, dh = problem(cell, dtype, 1, batch_first)
    for lengths in (None, lens):
        expected = grads_of(model, x, hx, lengths, dy, dh)
        _, _, backward = model.forward_train(x, hx, lengths=lengths)
        saved = [a.copy() for a in (x, *(hx if cell == "lstm" else (hx,)))]
        x[...] = 3.0
        for state in hx if cell == "lstm" else (hx,):
            state[...] = -2.0
        assert_same_gradients(backward(dy, dh), expected)
        x[...] = saved[0]
        for state, value in zip(hx if cell == "lstm" else (hx,), saved[1:], strict=True):
            state[...] = value


@pytest.mark.parametrize("cell", CELLS)
def test_mutating_unbatched_x_after_forward_train(cell):
    model = make_model(cell, I, H, dtype=np.float32, seed=4)
    x = data((T, I))
    expected = grads_of(model, x, None, None, np.ones((T, H), np.float32), None)
    _, _, backward = model.forward_train(x)
    x[...] = 3.0
    assert_same_gradients(backward(np.ones((T, H), np.float32)), expected)


INPUT_COPY_PATHS = {  # name: (T, batch, threads, bidirectional, thresholds set to 0)
    "one-thread": (5, 3, 1, False, ()),
    "B1-split-by-units": (5, 1, 2, False, ("_MIN_UNIT_STEP_WORK", "_MIN_PARALLEL_WORK")),
    "B1-projection-helper": (5, 1, 2, False, ("_MIN_HELPER_WORK",)),
    "row-ranges": (5, 3, 2, False, ("_MIN_PARALLEL_WORK", "_MIN_UNIT_STEP_WORK_ROWS")),
    "row-ranges-many-chunks": (40, 64, 2, False, ("_MIN_PARALLEL_WORK",)),
    "directions-at-once": (5, 3, 2, True, ("_MIN_PARALLEL_WORK",)),
}


@pytest.mark.parametrize("path", INPUT_COPY_PATHS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_input_reused_before_backward_on_every_thread_layout(cell, dtype, path, monkeypatch):
    """The copy of x that a training pass keeps is made by the kernel's threads as they
    project it (each its rows or steps): whichever way the work is shared, overwriting x
    between forward_train and backward leaves the gradients bit-identical."""
    T, batch, threads, bidirectional, zeroed = INPUT_COPY_PATHS[path]
    for name in zeroed:
        monkeypatch.setattr(fastrnn._threads, name, 0)
    if path == "B1-projection-helper":  # one range, no unit split: the helper projects
        monkeypatch.setattr(fastrnn._threads, "_MIN_UNIT_STEP_WORK", 1 << 62)
    saved = fastrnn.get_num_threads()
    fastrnn.set_num_threads(threads)
    fastrnn._layer._full_length_split.cache_clear()  # splits made under other thresholds
    try:
        model = make_model(
            cell, 6, 32, num_layers=2, bidirectional=bidirectional, dtype=dtype, seed=11
        )
        rng = np.random.default_rng(11)
        x = normal(rng, (T, batch, 6), dtype)
        dy = normal(rng, (T, batch, 64 if bidirectional else 32), dtype)
        # the oracle: an input in Fortran order, which validation copies (so no pass keeps
        # a copy of its own)
        expected = grads_of(model, np.asfortranarray(x), None, None, dy, None)
        # a pass on other numbers first: memory freed since (the allocator's, the spares)
        # holds those, not x's, in case a copy were never written
        grads_of(model, -x, None, None, dy, None)
        _, _, backward = model.forward_train(x)
        x[...] = np.nan  # the caller's buffer, reused
        assert_same_gradients(backward(dy), expected)
    finally:
        fastrnn.set_num_threads(saved)
        fastrnn._layer._full_length_split.cache_clear()


@pytest.mark.parametrize("cell", CELLS)
def test_mutating_returned_outputs_does_not_change_gradients(cell):
    model = make_model(cell, I, H, num_layers=2, dtype=np.float64, seed=4)
    x = data(dtype=np.float64)
    dy = np.ones((T, B, H))
    expected = grads_of(model, x, None, None, dy, None)
    y, state, backward = model.forward_train(x)
    y[...] = 5.0
    for s in state if cell == "lstm" else (state,):
        s[...] = 5.0
    assert_same_gradients(backward(dy), expected)


WEIGHT_UPDATE_CASES = [  # (cell, batch, threads, proj_size)
    *(
        pytest.param(cell, batch, threads, 0, id=f"{cell}-{name}")
        for cell in CELLS
        for batch, threads, name in [
            (1, 1, "B1-one-thread"),
            (1, 2, "B1-split-by-units"),  # forward packs for backward by units, in parallel
            (3, 2, "B3-row-ranges"),
            (200, 2, "B200-row-ranges"),  # rows past 192: products in two row blocks
        ]
    ),
    pytest.param("lstm", 3, 1, 3, id="lstm-B3-projection"),
]


@pytest.mark.parametrize(("cell", "batch", "threads", "proj"), WEIGHT_UPDATE_CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_parameters_updated_before_backward_do_not_change_gradients(
    cell, dtype, batch, threads, proj, monkeypatch
):
    """backward uses the weights of its forward_train: an optimiser's in-place step on every
    parameter in between (or a parameter replaced) leaves its gradients bit-identical to a
    pass without one. forward_train keeps packs of W_hh and W_ih for backward (and a copy
    of W_hr)."""
    monkeypatch.setattr(fastrnn._threads, "_MIN_PARALLEL_WORK", 0)
    monkeypatch.setattr(fastrnn._threads, "_MIN_UNIT_STEP_WORK", 0)
    monkeypatch.setattr(fastrnn._threads, "_MIN_UNIT_STEP_WORK_ROWS", 0)
    saved = fastrnn.get_num_threads()
    fastrnn.set_num_threads(threads)
    try:
        kwargs = {"proj_size": proj} if proj else {}
        model = make_model(cell, 6, 20, num_layers=2, dtype=dtype, seed=8, **kwargs)
        rng = np.random.default_rng(8)
        x = normal(rng, (5, batch, 6), dtype)
        dy = normal(rng, (5, batch, proj or 20), dtype)
        expected = grads_of(model, x, None, None, dy, None)
        _, _, backward = model.forward_train(x)
        params = model.parameters()
        originals = {name: value.copy() for name, value in params.items()}
        for value in params.values():
            value *= -0.5
        params["weight_hh_l1"] = np.zeros_like(params["weight_hh_l1"])
        got = backward(dy)
        for name, value in originals.items():
            params[name] = value
        assert_same_gradients(got, expected)
        assert_same_gradients(grads_of(model, x, None, None, dy, None), expected)
    finally:
        fastrnn.set_num_threads(saved)


def test_results_are_close_to_float64_for_float32_model():
    """A float32 model on float64 input computes in float32 (sanity of the conversion)."""
    m32 = fastrnn.GRU(I, H, dtype=np.float32, seed=9)
    m64 = fastrnn.GRU(I, H, dtype=np.float64, seed=9)
    m64.load_state_dict(m32.state_dict())
    x = data(dtype=np.float64)
    y32, _ = m32(x)
    y64, _ = m64(x.astype(np.float32))
    assert y32.dtype == np.float32
    assert_close(y32, y64, np.float32)
