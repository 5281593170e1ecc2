"""Invariants that catch real bugs: chunked runs, bidirectional = forward + reversed run,
stacked = chained single layers, rows independent of their batch and of the thread count."""

import time

import numpy as np
import pytest
import reference as ref
from helpers import (
    CELLS,
    DTYPE_IDS,
    DTYPES,
    assert_close,
    make_model,
    normal,
    run_in_two_threads,
)

import fastrnn
import fastrnn._layer
import fastrnn._threads

T, B, I, H = 6, 4, 3, 5  # noqa: E741
LENGTHS = np.array([4, 6, 0, 2])  # unsorted, with 0 and T


def state_args(cell, h, c):
    return (h, c) if cell == "lstm" else h


def split_state(cell, state):
    return state if cell == "lstm" else (state, None)


def initial_state(cell, rng, n, dtype):
    h0 = normal(rng, (n, B, H), dtype, 0.5)
    c0 = normal(rng, (n, B, H), dtype, 0.5) if cell == "lstm" else None
    return h0, c0


def assert_states_close(cell, got, want_h, want_c, dtype):
    h, c = split_state(cell, got)
    assert_close(h, want_h, dtype)
    if cell == "lstm":
        assert_close(c, want_c, dtype)


# -- chunks ------------------------------------------------------------------------------


@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("split", [0, 1, 3, T], ids=lambda k: f"at{k}")
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_two_chunks_equal_one_call(cell, dtype, split, with_lengths):
    """x[:k] then x[k:] from the carried final state equals one call over x (forward only).

    With lengths, a row's chunk lengths are its length clipped to each chunk; a row that ends
    in the first chunk carries its final state through the second with length 0.
    """
    rng = np.random.default_rng(31)
    model = make_model(cell, I, H, num_layers=2, dtype=dtype, seed=31)
    x = normal(rng, (T, B, I), dtype)
    h0, c0 = initial_state(cell, rng, 2, dtype)
    lens = LENGTHS if with_lengths else None
    lens1 = None if lens is None else np.minimum(lens, split)
    lens2 = None if lens is None else np.clip(lens - split, 0, T - split)

    y, state = model(x, state_args(cell, h0, c0), lengths=lens)
    y1, state1 = model(x[:split], state_args(cell, h0, c0), lengths=lens1)
    y2, state2 = model(x[split:], state1, lengths=lens2)
    assert_close(np.concatenate([y1, y2]), y, dtype)
    assert_states_close(cell, state2, *split_state(cell, state), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_step_by_step_equals_sequence_call(cell, dtype):
    rng = np.random.default_rng(32)
    model = make_model(cell, I, H, num_layers=2, batch_first=True, dtype=dtype, seed=32)
    x = normal(rng, (B, T, I), dtype)
    h0, c0 = initial_state(cell, rng, 2, dtype)
    y, state = model(x, state_args(cell, h0, c0))
    carried, ys = state_args(cell, h0, c0), []
    for t in range(T):
        y_t, carried = model(x[:, t : t + 1], carried)
        ys.append(y_t)
    assert_close(np.concatenate(ys, axis=1), y, dtype)
    assert_states_close(cell, carried, *split_state(cell, state), dtype)


# -- bidirectional = forward + reversed run ----------------------------------------------


def reverse_within_lengths(a, lens):
    """a (T, B, F) with each row's first lengths[b] steps reversed; padding left in place."""
    out = a.copy()
    for b, n in enumerate(lens):
        out[:n, b] = a[:n, b][::-1]
    return out


def direction(state_dict, sfx):
    """One direction's weights under the names of a forward-only model."""
    return {
        name.removesuffix("_reverse"): value
        for name, value in state_dict.items()
        if name.endswith("_reverse") == (sfx == "_reverse")
    }


@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_bidirectional_equals_forward_and_reversed_run(cell, dtype, with_lengths):
    rng = np.random.default_rng(33)
    bi = make_model(cell, I, H, bidirectional=True, dtype=dtype, seed=33)
    fwd = make_model(cell, I, H, dtype=dtype, seed=0)
    bwd = make_model(cell, I, H, dtype=dtype, seed=0)
    fwd.load_state_dict(direction(bi.state_dict(), ""))
    bwd.load_state_dict(direction(bi.state_dict(), "_reverse"))
    x = normal(rng, (T, B, I), dtype)
    h0, c0 = initial_state(cell, rng, 2, dtype)
    lens = LENGTHS if with_lengths else np.full(B, T)

    y, state = bi(x, state_args(cell, h0, c0), lengths=lens if with_lengths else None)
    cs = (None, None) if c0 is None else (c0[:1], c0[1:])
    y_f, state_f = fwd(x, state_args(cell, h0[:1], cs[0]), lengths=lens)
    y_b_rev, state_b = bwd(
        reverse_within_lengths(x, lens), state_args(cell, h0[1:], cs[1]), lengths=lens
    )
    y_b = reverse_within_lengths(y_b_rev, lens)

    assert_close(y, np.concatenate([y_f, y_b], axis=2), dtype)
    (h_f, c_f), (h_b, c_b) = split_state(cell, state_f), split_state(cell, state_b)
    want_c = None if c_f is None else np.concatenate([c_f, c_b])
    assert_states_close(cell, state, np.concatenate([h_f, h_b]), want_c, dtype)


# -- stacked = chained single layers -----------------------------------------------------


def layer(state_dict, k):
    """Layer k's weights under the names of a one-layer model."""
    tag = f"_l{k}"
    return {name.replace(tag, "_l0"): value for name, value in state_dict.items() if tag in name}


@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_two_layers_equal_two_chained_models(cell, dtype, bidirectional, with_lengths):
    D = 2 if bidirectional else 1
    rng = np.random.default_rng(34)
    deep = make_model(cell, I, H, num_layers=2, bidirectional=bidirectional, dtype=dtype, seed=34)
    first = make_model(cell, I, H, bidirectional=bidirectional, dtype=dtype, seed=0)
    second = make_model(cell, D * H, H, bidirectional=bidirectional, dtype=dtype, seed=0)
    first.load_state_dict(layer(deep.state_dict(), 0))
    second.load_state_dict(layer(deep.state_dict(), 1))
    x = normal(rng, (T, B, I), dtype)
    h0, c0 = initial_state(cell, rng, 2 * D, dtype)
    lens = LENGTHS if with_lengths else None
    c_lo, c_hi = (None, None) if c0 is None else (c0[:D], c0[D:])

    y, state = deep(x, state_args(cell, h0, c0), lengths=lens)
    y1, state1 = first(x, state_args(cell, h0[:D], c_lo), lengths=lens)
    y2, state2 = second(y1, state_args(cell, h0[D:], c_hi), lengths=lens)

    assert_close(y, y2, dtype)
    (h1, c1), (h2, c2) = split_state(cell, state1), split_state(cell, state2)
    want_c = None if c1 is None else np.concatenate([c1, c2])
    assert_states_close(cell, state, np.concatenate([h1, h2]), want_c, dtype)


# -- rows are independent ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_each_row_alone_equals_its_row_in_the_batch(cell, dtype):
    """Row b with lengths[b] equals a batch of one truncated to its length, padding unused."""
    rng = np.random.default_rng(35)
    model = make_model(cell, I, H, num_layers=2, bidirectional=True, dtype=dtype, seed=35)
    x = normal(rng, (T, B, I), dtype)
    h0, c0 = initial_state(cell, rng, 4, dtype)
    y, state = model(x, state_args(cell, h0, c0), lengths=LENGTHS)
    h_n, c_n = split_state(cell, state)
    for b, n in enumerate(LENGTHS):
        c0_b = None if c0 is None else c0[:, b : b + 1]
        y_b, state_b = model(x[:n, b : b + 1], state_args(cell, h0[:, b : b + 1], c0_b))
        assert_close(y[:n, b : b + 1], y_b, dtype)
        assert not np.any(y[n:, b])
        assert_states_close(
            cell, state_b, h_n[:, b : b + 1], None if c_n is None else c_n[:, b : b + 1], dtype
        )


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_batch_first_equals_time_major(cell, dtype):
    rng = np.random.default_rng(36)
    tm = make_model(cell, I, H, num_layers=2, bidirectional=True, dtype=dtype, seed=36)
    bf = make_model(
        cell, I, H, num_layers=2, bidirectional=True, batch_first=True, dtype=dtype, seed=36
    )
    x = normal(rng, (T, B, I), dtype)
    h0, c0 = initial_state(cell, rng, 4, dtype)
    y, state = tm(x, state_args(cell, h0, c0), lengths=LENGTHS)
    y_bf, state_bf = bf(x.transpose(1, 0, 2), state_args(cell, h0, c0), lengths=LENGTHS)
    np.testing.assert_array_equal(y_bf, y.transpose(1, 0, 2))
    for a, b in zip(split_state(cell, state), split_state(cell, state_bf), strict=True):
        np.testing.assert_array_equal(a, b)
    # and the gradients, transposed back
    dy = normal(rng, y.shape, dtype)
    _, _, back = tm.forward_train(x, state_args(cell, h0, c0), lengths=LENGTHS)
    _, _, back_bf = bf.forward_train(
        x.transpose(1, 0, 2), state_args(cell, h0, c0), lengths=LENGTHS
    )
    g, g_bf = back(dy), back_bf(dy.transpose(1, 0, 2))
    np.testing.assert_array_equal(g_bf.x, g.x.transpose(1, 0, 2))
    np.testing.assert_array_equal(g_bf.h0, g.h0)
    for name in g.params:
        np.testing.assert_array_equal(g_bf.params[name], g.params[name])


# -- thread count ------------------------------------------------------------------------


@pytest.fixture
def threads():
    """Set fastrnn's thread count for one test (restored after), with the parallel cut-offs
    at zero so that even these small problems split their rows among threads."""
    saved = fastrnn.get_num_threads()
    mp = pytest.MonkeyPatch()
    mp.setattr(fastrnn._threads, "_MIN_PARALLEL_WORK", 0)
    mp.setattr(fastrnn._threads, "_MIN_WORK_PER_PACKED_WEIGHT", 0)
    yield fastrnn.set_num_threads
    mp.undo()
    fastrnn.set_num_threads(saved)


def run_model_and_grads(model, cell, x, h0, c0, lens, dy, dh, dc):
    y, state = model(x, state_args(cell, h0, c0), lengths=lens)
    y_t, state_t, backward = model.forward_train(x, state_args(cell, h0, c0), lengths=lens)
    g = backward(dy, (dh, dc) if cell == "lstm" else dh)
    out = {"y": y, "y_train": y_t, "dx": g.x, "dh0": g.h0, **g.params}
    out["h_n"], out["c_n"] = split_state(cell, state)
    out["h_train"], out["c_train"] = split_state(cell, state_t)
    if cell == "lstm":
        out["dc0"] = g.c0
    return {k: v for k, v in out.items() if v is not None}


THREAD_BATCHES = [
    pytest.param(np.array([6, 0, 0, 0, 0]), id="one-long-row"),
    pytest.param(np.array([3, 6, 0, 2, 6, 1, 5, 4, 6]), id="B9-mixed"),
    pytest.param(np.array([6, 6]), id="B2-full"),
    pytest.param(np.array([0, 0, 0]), id="all-zero"),
]


@pytest.mark.parametrize("lens", THREAD_BATCHES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_results_do_not_depend_on_thread_count(cell, dtype, lens, threads):
    """Row ranges run on separate threads; the numbers are bit-identical for any count."""
    batch = lens.shape[0]
    rng = np.random.default_rng(37)
    model = make_model(cell, I, H, num_layers=2, bidirectional=True, dtype=dtype, seed=37)
    x = normal(rng, (T, batch, I), dtype)
    h0 = normal(rng, (4, batch, H), dtype, 0.5)
    c0 = normal(rng, (4, batch, H), dtype, 0.5) if cell == "lstm" else None
    dy = normal(rng, (T, batch, 2 * H), dtype)
    dh, dc = normal(rng, (4, batch, H), dtype), normal(rng, (4, batch, H), dtype)
    args = (model, cell, x, h0, c0, lens, dy, dh, dc)
    same_on_more_threads(args, dtype, threads, (2, True))


def same_on_more_threads(args, dtype, threads, layout):
    """run_model_and_grads(*args) on one thread, its output and final state checked against
    the reference's for `layout` (layers, bidirectional; None: not checked), then on 2 and 3
    threads: everything bit-identical to one thread's."""
    model, cell, x, h0, c0, lens = args[:6]
    threads(1)
    serial = run_model_and_grads(*args)
    if layout is not None:
        y_ref, h_ref, _ = ref.run_model(cell, x, model.state_dict(), *layout, h0, c0, lens)
        assert_close(serial["y"], y_ref, dtype)
        assert_close(serial["h_n"], h_ref, dtype)
    for n in (2, 3):
        threads(n)
        parallel = run_model_and_grads(*args)
        assert parallel.keys() == serial.keys()
        for name, value in serial.items():
            np.testing.assert_array_equal(parallel[name], value, err_msg=f"{name}, {n} threads")


def one_layer_case(cell, dtype, inputs, hidden, steps, batch, lens, seed, proj):
    """A one-layer model ("lstm-proj": an LSTM with proj_size `proj`), run_model_and_grads'
    arguments for it (input, initial state, lengths, the output and state gradients, drawn
    in that order) and the generator that drew them."""
    rng = np.random.default_rng(seed)
    kwargs = {"proj_size": proj} if cell == "lstm-proj" else {}
    cell = cell.removesuffix("-proj")
    model = make_model(cell, inputs, hidden, dtype=dtype, seed=seed, **kwargs)
    out = kwargs.get("proj_size", hidden)
    x = normal(rng, (steps, batch, inputs), dtype)
    h0 = normal(rng, (1, batch, out), dtype, 0.5)
    c0 = normal(rng, (1, batch, hidden), dtype, 0.5) if cell == "lstm" else None
    dy = normal(rng, (steps, batch, out), dtype)
    dh, dc = normal(rng, (1, batch, out), dtype), normal(rng, (1, batch, hidden), dtype)
    return model, (model, cell, x, h0, c0, lens, dy, dh, dc), rng


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", [*CELLS, "lstm-proj"])
def test_packs_shared_by_threads_follow_weights_changed_in_place(cell, dtype, threads):
    """Row ranges on 2 or 3 threads pack the weights in shares of columns (_kernels
    run_packs), anew on every call of a live model. Sizes whose columns split inside a panel
    (37 inputs, 20 units), weights changed in place between calls: outputs, states and
    gradients bit-identical to one thread, and the reference's after the change."""
    lens = np.array([5, 3, 5, 0, 4, 5])
    model, args, rng = one_layer_case(cell, dtype, 37, 20, 5, len(lens), lens, 51, 7)
    projected = cell == "lstm-proj"
    params = model.parameters()
    for change in range(2):
        if change:  # what an optimiser's in-place step does
            for name in ("weight_ih_l0", "weight_hh_l0"):
                params[name] -= 0.1 * normal(rng, params[name].shape, dtype)
        # (the reference has no LSTM projection)
        same_on_more_threads(args, dtype, threads, None if projected else (1, False))


def check_gradients_across_threads(model, x, dy, dtype, threads, rng, checked):
    """Every parameter gradient of one training step is bit-identical for 1-4 threads, and
    in float64 the 1-thread gradients of the parameters `checked` match central finite
    differences along a random direction."""

    def grads():
        _, _, backward = model.forward_train(x)
        return backward(dy).params

    threads(1)
    serial = grads()
    for n in (2, 3, 4):
        threads(n)
        for name, value in grads().items():
            np.testing.assert_array_equal(value, serial[name], err_msg=f"{name}, {n} threads")
    if dtype != np.float64:
        return
    threads(1)
    for name in checked:
        param = model.parameters()[name]  # the model's own array, perturbed in place
        direction = rng.standard_normal(param.shape)
        saved = param.copy()
        losses = []
        for sign in (1, -1):
            param[...] = saved + sign * 1e-6 * direction
            losses.append(float(np.sum(model(x)[0] * dy)))
        param[...] = saved
        numeric = (losses[0] - losses[1]) / 2e-6
        exact = float(np.sum(serial[name] * direction))
        assert abs(numeric - exact) <= 1e-6 * float(np.sum(np.abs(serial[name] * direction)))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_weight_gradients_shared_by_panels(cell, dtype, threads):
    """dW_ih and dW_hh come from one pass over the gate gradients, shared among threads by
    rows of dW or by column panels of the two products in a row (an RNN's H rows are fewer
    than I + H columns; I = 100 and H = 130 give each product several panels, so a thread's
    panels start inside the second product): every gradient is bit-identical for 1-4
    threads, and the 1-thread ones match finite differences in float64."""
    steps, batch, inputs, hidden = 4, 3, 100, 130
    rng = np.random.default_rng(53)
    model = make_model(cell, inputs, hidden, dtype=dtype, seed=53)
    x = normal(rng, (steps, batch, inputs), dtype)
    dy = normal(rng, (steps, batch, hidden), dtype)
    check_gradients_across_threads(
        model, x, dy, dtype, threads, rng, ("weight_ih_l0", "weight_hh_l0")
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(
    "cell, inputs, hidden",
    [
        # GRU's 3H = 24 rows of dW_ih are fewer than its I = 40 columns: one panel, so from
        # 2 threads some have no product and take their bias columns alone
        pytest.param("gru", 40, 8, id="gru-one-panel"),
        pytest.param("rnn_tanh", 40, 8, id="rnn-two-panels"),
        # by rows of dW: a thread's columns end inside a vector; 288 columns make passes of
        # 8 vectors, 1 and a partial one
        pytest.param("lstm", 20, 33, id="lstm-rows-partial-vector"),
        pytest.param("lstm", 20, 72, id="lstm-rows-8-vector-passes"),
    ],
)
def test_bias_gradients_taken_with_the_weight_gradients(cell, inputs, hidden, dtype, threads):
    """The bias gradients (column sums of the gate gradients) are summed while dW's product
    packs them, over 150 rows (two of its 128-row passes), by each thread for its columns:
    bit-identical for 1-4 threads, and the 1-thread ones match finite differences in
    float64."""
    steps, batch = 50, 3
    rng = np.random.default_rng(61)
    model = make_model(cell, inputs, hidden, dtype=dtype, seed=61)
    x = normal(rng, (steps, batch, inputs), dtype)
    dy = normal(rng, (steps, batch, hidden), dtype)
    check_gradients_across_threads(model, x, dy, dtype, threads, rng, ("bias_ih_l0", "bias_hh_l0"))


@pytest.fixture
def unit_threads():
    """Set the thread count for one test (restored after), with both cut-offs at zero so that
    even a tiny batch-1 step is shared among threads by hidden units."""
    saved = fastrnn.get_num_threads()
    mp = pytest.MonkeyPatch()
    mp.setattr(fastrnn._threads, "_MIN_PARALLEL_WORK", 0)
    mp.setattr(fastrnn._threads, "_MIN_WORK_PER_PACKED_WEIGHT", 0)
    mp.setattr(fastrnn._threads, "_MIN_UNIT_STEP_WORK", 0)
    mp.setattr(fastrnn._threads, "_MIN_UNIT_STEP_WORK_ROWS", 0)
    yield fastrnn.set_num_threads
    mp.undo()
    fastrnn.set_num_threads(saved)


UNIT_SPLIT_CASES = [  # (batch, hidden, lengths or None); steps = 11
    pytest.param(1, 5, None, id="B1-H5-fewer-units-than-a-vector"),
    pytest.param(1, 40, None, id="B1-H40-partial-vector"),
    pytest.param(1, 72, [9], id="B1-H72-length-9-of-11"),
    pytest.param(1, 33, [0], id="B1-H33-length-0"),
    # whole vectors a gate in float32 too (H a multiple of 16), each thread's units in one
    # pass of the product's 8 vectors or in several
    pytest.param(1, 48, None, id="B1-H48-whole-vectors"),
    pytest.param(1, 144, [7], id="B1-H144-whole-vectors-length-7"),
    # a few rows that all run every step share their steps by units too
    pytest.param(2, 40, None, id="B2-H40"),
    pytest.param(3, 72, [11, 11, 11], id="B3-H72-full-lengths"),
    pytest.param(5, 33, None, id="B5-H33"),  # units on 3 threads, row ranges on 2
    pytest.param(3, 40, [11, 4, 11], id="B3-H40-short-row"),  # row ranges
    # any batch whose W_hh overflows L2 (here an L2 of 1 KiB): 200 rows cross the product's
    # 192-row block; a short row keeps row ranges
    pytest.param(200, 40, "l2", id="B200-H40-weights-past-L2"),
    pytest.param(9, 72, "l2-short-row", id="B9-H72-weights-past-L2-short-row"),
]


@pytest.mark.parametrize(("batch", "hidden", "lengths"), UNIT_SPLIT_CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_split_by_units_does_not_change_results(
    cell, dtype, batch, hidden, lengths, unit_threads, monkeypatch
):
    """At batch 1, for a few rows that all run every step, and for any batch whose weights
    overflow L2, threads share each step by hidden units: outputs, states and every gradient
    are bit-identical for 1, 2 and 3 threads, and match the reference."""
    steps, inputs = 11, 7
    rng = np.random.default_rng(41)
    if isinstance(lengths, str):  # the L2 rule: a tiny L2, every row full or one short
        monkeypatch.setattr(fastrnn._threads, "_L2_BYTES", 1024)
        lengths = [steps] * batch if lengths == "l2" else [steps] * (batch - 1) + [6]
    model = make_model(cell, inputs, hidden, num_layers=2, dtype=dtype, seed=41)
    x = normal(rng, (steps, batch, inputs), dtype)
    h0 = normal(rng, (2, batch, hidden), dtype, 0.5)
    c0 = normal(rng, (2, batch, hidden), dtype, 0.5) if cell == "lstm" else None
    lens = None if lengths is None else np.array(lengths)
    dy = normal(rng, (steps, batch, hidden), dtype)
    dh, dc = normal(rng, (2, batch, hidden), dtype), normal(rng, (2, batch, hidden), dtype)
    args = (model, cell, x, h0, c0, lens, dy, dh, dc)
    unit_threads(1)
    serial = run_model_and_grads(*args)
    y_ref, h_ref, _ = ref.run_model(cell, x, model.state_dict(), 2, False, h0, c0, lens)
    assert_close(serial["y"], y_ref, dtype)
    assert_close(serial["h_n"], h_ref, dtype)
    for n in (2, 3):
        unit_threads(n)
        if lens is not None and batch > 2 * n:  # the L2 cases: the split is the rule's
            G = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4}.get(cell, 3)
            order = np.argsort(-lens, kind="stable")
            itemsize = np.dtype(dtype).itemsize
            _, split, _ = fastrnn._layer._split(
                lens, order, steps, batch, inputs, G * hidden, hidden, itemsize
            )
            assert split == (n if lens.min() == steps else 1)
        parallel = run_model_and_grads(*args)
        for name, value in serial.items():
            np.testing.assert_array_equal(parallel[name], value, err_msg=f"{name}, {n} threads")


FUSED_CASES = [  # (cell, proj_size)
    pytest.param("lstm", 0, id="lstm"),
    pytest.param("lstm", 5, id="lstm-proj5"),
    pytest.param("gru", 0, id="gru"),
]


@pytest.mark.parametrize("hidden", [16, 64, 96, 40], ids=lambda h: f"H{h}")
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(("cell", "proj"), FUSED_CASES)
def test_fused_step_equals_product_then_gates(cell, proj, dtype, hidden):
    """A batch-1 LSTM or GRU step whose hidden size is a multiple of the vector width runs
    the fused kernel (fastrnn_step.h: gate math inside the product; H = 96 puts two gates
    in one panel, GRU's H = 16 and 96 end on a partial panel, f32's H = 40 takes the unfused
    path); a batch of two runs the product and the gates kernels. Each row alone equals its
    row of the batch bit for bit, inference and training alike, and matches the float64
    reference."""
    steps, inputs = 9, 7
    rng = np.random.default_rng(47)
    saved = fastrnn.get_num_threads()
    fastrnn.set_num_threads(1)  # the batch of two then stays one range of rows
    try:
        kwargs = {"proj_size": proj} if proj else {}
        model = make_model(cell, inputs, hidden, dtype=dtype, seed=47, **kwargs)
        P = proj or hidden
        x = normal(rng, (steps, 2, inputs), dtype)
        h0 = normal(rng, (1, 2, P), dtype, 0.5)
        c0 = normal(rng, (1, 2, hidden), dtype, 0.5) if cell == "lstm" else None
        y2, state2 = model(x, state_args(cell, h0, c0))
        h2, c2 = split_state(cell, state2)
        for b in range(2):
            rows = slice(b, b + 1)
            c0_b = None if c0 is None else c0[:, rows]
            y1, state1 = model(x[:, rows], state_args(cell, h0[:, rows], c0_b))
            h1, c1 = split_state(cell, state1)
            np.testing.assert_array_equal(y1, y2[:, rows])
            np.testing.assert_array_equal(h1, h2[:, rows])
            if cell == "lstm":
                np.testing.assert_array_equal(c1, c2[:, rows])
            yt, _, _ = model.forward_train(x[:, rows], state_args(cell, h0[:, rows], c0_b))
            np.testing.assert_array_equal(yt, y1)
            if not proj:
                want, _, _ = ref.run_model(cell, x[:, rows], model.state_dict(), 1, False,
                                           h0[:, rows], c0_b)  # fmt: skip
                assert_close(y1, want, dtype)
    finally:
        fastrnn.set_num_threads(saved)


def test_unit_split_rule(monkeypatch):
    """Which calls share their steps by units on 2 threads: batch 1 and a few full rows (these
    from a larger step); a larger batch only when W_hh (its bytes) overflows a core's L2, and
    only if every row runs every step; never a step too small to share."""
    monkeypatch.setattr(fastrnn._threads, "_L2_BYTES", 2 << 20)
    saved = fastrnn.get_num_threads()
    rule = fastrnn._threads.unit_threads
    try:
        fastrnn.set_num_threads(2)
        macs = 4 * 512 * 512  # LSTM H = 512: a step's multiply-adds a row; W_hh 4 MiB
        assert rule(1, 50, macs) == 2
        assert rule(3, 50, 3 * macs) == 2
        assert rule(4, 50, 4 * macs) == 1
        small = 4 * 100 * 100  # LSTM H = 100: W_hh 160 KiB
        assert rule(2, 50, 2 * small, True, 4 * small) == 1  # a few rows, a small step
        assert rule(2, 50, 2 * small, True, 4 << 20) == 2  # ... whose W_hh overflows L2
        assert rule(3, 50, 3 * 4 * 256 * 256) == 2
        assert rule(64, 50, 64 * macs, True, 4 * macs) == 2
        assert rule(64, 50, 64 * macs, True, 2 << 20) == 1  # fits: row ranges
        assert rule(64, 50, 64 * macs, False, 4 * macs) == 1  # a short row: row ranges
        assert rule(64, 50, 64 * 100, True, 4 * macs) == 1  # a step too small to share
        fastrnn.set_num_threads(1)
        assert rule(64, 50, 64 * macs, True, 4 * macs) == 1
    finally:
        fastrnn.set_num_threads(saved)


def test_l2_size_is_read():
    """The L2 size behind the rule is a plausible cache size (sysfs, or the 1 MiB default)."""
    assert 64 << 10 <= fastrnn._threads._l2_bytes() <= 1 << 30


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_batch_one_split_at_natural_size(cell):
    """(T, B, I, H) = (50, 1, 16, 256) shares its steps by units at the default cut-offs; a
    stream stepping one step at a time on one thread gives the same numbers bit for bit."""
    saved = fastrnn.get_num_threads()
    rng = np.random.default_rng(42)
    model = make_model(cell, 16, 256, dtype=np.float32, seed=42)
    x = normal(rng, (50, 1, 16), np.float32)
    dy = normal(rng, (50, 1, 256), np.float32)
    try:
        fastrnn.set_num_threads(2)
        G = {"rnn_tanh": 1, "lstm": 4, "gru": 3}[cell]
        assert fastrnn._threads.unit_threads(1, 50, G * 256 * 256) == 2
        y2, _, backward = model.forward_train(x)
        g2 = backward(dy)
        fastrnn.set_num_threads(1)
        y1, _, backward = model.forward_train(x)
        g1 = backward(dy)
        stream = model.stream(1)
        stepped = np.stack([stream.step(x[t]) for t in range(50)])
    finally:
        fastrnn.set_num_threads(saved)
    np.testing.assert_array_equal(y2, y1)
    np.testing.assert_array_equal(stepped, y1)
    np.testing.assert_array_equal(g2.x, g1.x)
    for name, value in g1.params.items():
        np.testing.assert_array_equal(g2.params[name], value, err_msg=name)


@pytest.mark.parametrize(
    "cell, hidden, batch", [("lstm", 256, 1), ("gru", 256, 8), ("rnn_tanh", 512, 4)]
)
def test_short_calls_over_large_weights_split_by_units(cell, hidden, batch):
    """A call of a few tokens whose W_ih and W_hh overflow half a core's L2 shares its steps
    by units (each core then keeps its half of the weights): one step and a training step
    give the one-thread numbers bit for bit, and so does a stream, step by step."""
    saved = fastrnn.get_num_threads()
    rng = np.random.default_rng(43)
    model = make_model(cell, hidden, hidden, dtype=np.float32, seed=43).freeze()
    x = normal(rng, (3, batch, hidden), np.float32)
    dy = normal(rng, (1, batch, hidden), np.float32)
    G = {"rnn_tanh": 1, "lstm": 4, "gru": 3}[cell]
    lens, order = fastrnn._layer._full_lengths(1, batch)
    results = {}
    try:
        for n in (1, 2):
            fastrnn.set_num_threads(n)
            _, split, _ = fastrnn._layer._split(
                lens, order, 1, batch, hidden, G * hidden, hidden, 4
            )
            assert split == n
            y, h = model(x[:1])
            _, _, backward = model.forward_train(x[:1])
            grads = backward(dy)
            stream = model.stream(batch)
            stepped = np.stack([stream.step(x[t]) for t in range(3)])
            results[n] = [y, h, grads.x, *grads.params.values(), stepped]
        # the rule's edges: weights one L2 holds, or many tokens over weights that fit
        fastrnn.set_num_threads(2)
        small = fastrnn._threads.unit_threads(1, 1, 64 * 64, True, 64 * 64 * 4, 64 * 64 * 4)
        many = fastrnn._threads.unit_threads(8, 100, 8 * 1024 * 256, True, 1 << 20, 1 << 20)
        assert (small, many) == (1, 1)
    finally:
        fastrnn.set_num_threads(saved)
    for one, two in zip(results[1], results[2], strict=True):
        np.testing.assert_array_equal(two, one)


def test_short_inference_that_packs_keeps_one_row_range(monkeypatch):
    """An inference call that packs live weights takes a second thread for its row ranges
    only from _MIN_WORK_PER_PACKED_WEIGHT multiply-adds per packed weight (below it, the
    cross-core reads of the shared packs cost more than the thread saved); a frozen model's
    calls, which read kept packs, and training passes keep the plain cut-off. The rule as
    the layer applies it (the packed size it passes) and at its edge."""
    seen = []
    rule = fastrnn._threads.row_bounds

    def recording(*args):
        seen.append(args[4] if len(args) > 4 else 0)
        return rule(*args)

    monkeypatch.setattr(fastrnn._threads, "row_bounds", recording)
    saved = fastrnn.get_num_threads()
    fastrnn.set_num_threads(2)
    fastrnn._layer._full_length_split.cache_clear()
    try:
        steps, batch, inputs, hidden = 1, 16, 128, 128
        live = make_model("lstm", inputs, hidden, dtype=np.float32, seed=3)
        x = normal(np.random.default_rng(3), (steps, batch, inputs), np.float32)
        packed = 4 * hidden * (hidden + inputs)
        live(x)
        assert seen[-1] == packed
        live.forward_train(x)
        assert seen[-1] == 0
        frozen = make_model("lstm", inputs, hidden, dtype=np.float32, seed=3).freeze()
        frozen(x)  # the first call packs what the model keeps
        frozen(x)
        assert seen[-1] == 0
        lens, order = np.full(batch, 4, np.int64), np.arange(batch, dtype=np.int64)
        macs = 4 * hidden * (hidden + inputs)
        least = fastrnn._threads._MIN_WORK_PER_PACKED_WEIGHT * packed  # (4 steps' work)
        assert len(rule(lens, order, 4, macs, packed)) == 3  # at the edge: two ranges
        assert len(rule(lens, order, 4, macs - 1, packed)) == 2  # below it: one
        assert 4 * batch * macs == least
        assert len(rule(lens, order, 1, macs, 0)) == 3  # nothing packed: the plain cut-off
        # the projection helper of a one-range loop: the same rule on its projection's work
        one = np.array([0, batch], np.int64)
        helper = fastrnn._threads.projection_helper
        assert helper(one, 1, least, packed) and not helper(one, 1, least - 1, packed)
        assert helper(one, 1, fastrnn._threads._MIN_HELPER_WORK, 0)
    finally:
        fastrnn.set_num_threads(saved)
        fastrnn._layer._full_length_split.cache_clear()


@pytest.fixture
def pipe_threads():
    """Set the thread count for one test (restored after), with every call's time loop on
    one thread (row ranges and the unit split out of reach) and a second thread projecting
    its input ahead, however small the call."""
    saved = fastrnn.get_num_threads()
    mp = pytest.MonkeyPatch()
    mp.setattr(fastrnn._threads, "_MIN_PARALLEL_WORK", 1 << 62)
    mp.setattr(fastrnn._threads, "_MIN_HELPER_WORK", 0)
    mp.setattr(fastrnn._threads, "_MIN_WORK_PER_PACKED_WEIGHT", 0)
    yield fastrnn.set_num_threads
    mp.undo()
    fastrnn.set_num_threads(saved)


PIPE_CASES = [  # (steps, lengths): 64 inputs and units make pipe chunks of 6-16 steps at batch 1
    pytest.param(100, [100], id="B1-T100"),
    pytest.param(1200, [1200], id="B1-T1200-ring-wraps"),
    pytest.param(300, [300, 0, 170], id="B3-lengths"),
    pytest.param(40, [0, 25], id="B2-ends-early"),
]


@pytest.mark.parametrize(("steps", "lengths"), PIPE_CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", [*CELLS, "lstm-proj"])
def test_input_projection_on_a_helper_thread_does_not_change_results(
    cell, dtype, steps, lengths, pipe_threads
):
    """A time loop on one thread with its input projected ahead by a second: outputs, states
    and gradients bit-identical to one thread, and the reference's; the helper really ran."""
    batch = len(lengths)
    lens = np.array(lengths) if batch > 1 else None
    model, args, _ = one_layer_case(cell, dtype, 64, 64, steps, batch, lens, 44, 24)
    projected = cell == "lstm-proj"
    _, cell, x, h0, c0 = args[:5]
    pipe_threads(1)
    serial = run_model_and_grads(*args)
    if not projected:  # the reference has no LSTM projection (tests/test_torch_parity.py does)
        y_ref, h_ref, _ = ref.run_model(cell, x, model.state_dict(), 1, False, h0, c0, lens)
        assert_close(serial["y"], y_ref, dtype)
        assert_close(serial["h_n"], h_ref, dtype)
    started = fastrnn._kernels.pipes_started()
    pipe_threads(2)
    parallel = run_model_and_grads(*args)
    assert fastrnn._kernels.pipes_started() >= started + 2  # inference and training forward
    for name, value in serial.items():
        np.testing.assert_array_equal(parallel[name], value, err_msg=name)


@pytest.mark.parametrize("lengths", [None, "mixed"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", [*CELLS, "lstm-proj"])
def test_projection_ring_width_does_not_change_results(cell, dtype, lengths, monkeypatch):
    """The input projection runs ahead of the time loop into a ring of steps, wider where
    W_ih^T is large (_threads.wide_projection). Both rings at batch 32 over 150 steps (the
    narrow one wraps around many times, the wide one for LSTM too): outputs, states and
    gradients bit-identical, and the reference's."""
    steps, batch, inputs, hidden = 150, 32, 16, 64
    rng = np.random.default_rng(48)
    kwargs = {"proj_size": 24} if cell == "lstm-proj" else {}
    cell = cell.removesuffix("-proj")
    out = kwargs.get("proj_size", hidden)
    model = make_model(cell, inputs, hidden, dtype=dtype, seed=48, **kwargs)
    x = normal(rng, (steps, batch, inputs), dtype)
    h0 = normal(rng, (1, batch, out), dtype, 0.5)
    c0 = normal(rng, (1, batch, hidden), dtype, 0.5) if cell == "lstm" else None
    lens = None if lengths is None else rng.integers(0, steps + 1, batch)
    dy = normal(rng, (steps, batch, out), dtype)
    dh, dc = normal(rng, (1, batch, out), dtype), normal(rng, (1, batch, hidden), dtype)
    args = (model, cell, x, h0, c0, lens, dy, dh, dc)
    results, rings = [], []
    for wide in (False, True):
        monkeypatch.setattr(fastrnn._threads, "wide_projection", lambda nbytes, w=wide: w)
        fastrnn._layer._forward_shapes.cache_clear()
        gates = model.state_dict()["weight_hh_l0"].shape[0]
        rings.append(fastrnn._layer._projection_steps(batch, steps, inputs, gates, dtype))
        results.append(run_model_and_grads(*args))
    fastrnn._layer._forward_shapes.cache_clear()
    assert rings[0] < rings[1]  # the wide ring holds more steps (and either wraps or not)
    if not kwargs:  # the reference has no LSTM projection (test_torch_parity does)
        y_ref, h_ref, _ = ref.run_model(cell, x, model.state_dict(), 1, False, h0, c0, lens)
        assert_close(results[1]["y"], y_ref, dtype)
        assert_close(results[1]["h_n"], h_ref, dtype)
    assert results[0].keys() == results[1].keys()
    for name, value in results[0].items():
        np.testing.assert_array_equal(results[1][name], value, err_msg=name)


PAIR_CASES = [  # (lengths, batch); H = 16 takes the fused step at batch 1 (float32)
    pytest.param(None, 1, id="B1"),
    pytest.param([0], 1, id="B1-length-0"),
    pytest.param([7, 0, 9, 4], 4, id="B4-lengths"),
    pytest.param(None, 0, id="B0"),
]


@pytest.mark.parametrize(("lengths", "batch"), PAIR_CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", [*CELLS, "lstm-proj"])
def test_bidirectional_directions_at_once_do_not_change_results(
    cell, dtype, lengths, batch, threads
):
    """On two threads each layer of a bidirectional stack runs its two directions at once,
    one thread each, forward and backward: outputs, states and every gradient bit-identical
    to one thread (one direction after the other) and matching the reference; the pairs
    really ran (2 layers x inference, training forward and backward)."""
    steps, inputs, hidden = 9, 7, 16
    rng = np.random.default_rng(46)
    kwargs = {"proj_size": 6} if cell == "lstm-proj" else {}
    cell = cell.removesuffix("-proj")
    out = kwargs.get("proj_size", hidden)
    model = make_model(
        cell, inputs, hidden, num_layers=2, bidirectional=True, dtype=dtype, seed=46, **kwargs
    )
    x = normal(rng, (steps, batch, inputs), dtype)
    h0 = normal(rng, (4, batch, out), dtype, 0.5)
    c0 = normal(rng, (4, batch, hidden), dtype, 0.5) if cell == "lstm" else None
    lens = None if lengths is None else np.array(lengths)
    dy = normal(rng, (steps, batch, 2 * out), dtype)
    dh, dc = normal(rng, (4, batch, out), dtype), normal(rng, (4, batch, hidden), dtype)
    args = (model, cell, x, h0, c0, lens, dy, dh, dc)
    threads(1)  # (the `threads` fixture's cut-off at zero pairs even these small layers)
    serial = run_model_and_grads(*args)
    if not kwargs and batch:  # the reference has no LSTM projection (test_torch_parity does)
        y_ref, h_ref, _ = ref.run_model(cell, x, model.state_dict(), 2, True, h0, c0, lens)
        assert_close(serial["y"], y_ref, dtype)
        assert_close(serial["h_n"], h_ref, dtype)
    before = fastrnn._kernels.deferred_pairs_run()
    threads(2)
    parallel = run_model_and_grads(*args)
    assert fastrnn._kernels.deferred_pairs_run() == before + 6
    assert parallel.keys() == serial.keys()
    for name, value in serial.items():
        np.testing.assert_array_equal(parallel[name], value, err_msg=name)


def test_bidirectional_from_two_threads_at_once(threads):
    """Two Python threads calling bidirectional models at once: a call that finds the pool
    busy runs its two directions one after the other; every result equals a serial call's."""
    steps, inputs, hidden, calls = 40, 8, 32, 20
    rng = np.random.default_rng(47)
    model = make_model("gru", inputs, hidden, bidirectional=True, dtype=np.float32, seed=47)
    xs = [normal(rng, (steps, 1, inputs), np.float32) for _ in range(2)]
    dy = normal(rng, (steps, 1, 2 * hidden), np.float32)
    threads(1)

    def call(k):
        y, _, backward = model.forward_train(xs[k])
        return y, backward(dy).params["weight_hh_l0_reverse"]

    want = [call(k) for k in range(2)]
    threads(2)
    got = run_in_two_threads(call, calls, "a bidirectional call")
    for k in range(2):
        for r in range(calls):
            np.testing.assert_array_equal(got[k][r][0], want[k][0])
            np.testing.assert_array_equal(got[k][r][1], want[k][1])


def test_deferred_calls_run_once():
    """run_deferred refuses a call that was never prepared, one given twice, and one that
    has already run (its scratch may be someone else's by then)."""
    kernels = fastrnn._kernels
    with pytest.raises(ValueError, match="not prepared"):
        kernels.run_deferred(kernels.Deferred())
    model = make_model("rnn_tanh", 3, 4, dtype=np.float64, seed=48)
    x = normal(np.random.default_rng(48), (5, 1, 3), np.float64)
    later = kernels.Deferred()
    _, finish = fastrnn._layer.forward(
        "rnn_tanh", model._weights(0, 0), x, np.zeros((1, 4)), None, None, False, False,
        later=later,
    )  # fmt: skip
    with pytest.raises(ValueError, match="twice"):
        kernels.run_deferred(later, later)
    kernels.run_deferred(later)
    y, _, _, _ = finish()
    y_ref, _, _ = ref.run_model("rnn_tanh", x, model.state_dict(), 1, False, np.zeros((1, 1, 4)))
    assert_close(y, y_ref, np.float64)
    with pytest.raises(ValueError, match="already run"):
        kernels.run_deferred(later)


@pytest.mark.parametrize(
    ("policy", "inputs", "hidden", "steps", "calls", "seed"),
    [
        pytest.param("unit_threads", 8, 48, 200, 20, 43, id="unit-split"),
        pytest.param("pipe_threads", 64, 64, 300, 30, 45, id="helper-thread"),
    ],
)
def test_batch_one_from_two_threads_at_once(request, policy, inputs, hidden, steps, calls, seed):
    """Two Python threads calling at once: one of them finds the pool busy and runs its call
    alone (a unit-split team job never waits for a share nobody runs; with the helper, the
    loop projects every chunk and the helper's share then finds none left); both agree with
    a serial call, and nothing hangs."""
    set_threads = request.getfixturevalue(policy)
    rng = np.random.default_rng(seed)
    model = make_model("lstm", inputs, hidden, dtype=np.float32, seed=seed)
    xs = [normal(rng, (steps, 1, inputs), np.float32) for _ in range(2)]
    set_threads(1)
    want = [model(x)[0] for x in xs]
    set_threads(2)
    got = run_in_two_threads(lambda k: model(xs[k])[0], calls, f"a call ({policy})")
    for k in range(2):
        for r in range(calls):
            np.testing.assert_array_equal(got[k][r], want[k])


@pytest.mark.parametrize(("chunks", "slots"), [(7, 2), (100, 3), (200, 64), (256, 5)])
def test_projection_pipe_hands_over_every_chunk_once(chunks, slots):
    """The helper's protocol alone: every chunk projected exactly once, and no ring slot
    rewritten while the loop reads it, whichever side runs ahead. (Publishing a chunk as
    ready before writing it showed here as 7800-38000 anomalies in 300 runs.)"""
    assert fastrnn._kernels.pipe_selftest(300, chunks, slots) == 0


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_parallel_split_at_natural_size(cell):
    """A problem big enough to split without lowering the cut-off: 2 threads equal 1."""
    saved = fastrnn.get_num_threads()
    rng = np.random.default_rng(38)
    batch, steps, hidden = 40, 12, 64  # about 4 * 64 * 64 * 480 = 7.9M multiply-adds a layer
    model = make_model(cell, 8, hidden, dtype=np.float32, seed=38)
    x = normal(rng, (steps, batch, 8), np.float32)
    lens = rng.integers(0, steps + 1, size=batch)
    dy = normal(rng, (steps, batch, hidden), np.float32)
    try:
        results = []
        for n in (1, 2):
            fastrnn.set_num_threads(n)
            y, _, backward = model.forward_train(x, lengths=lens)
            g = backward(dy)
            results.append((y, g.x, g.params["weight_hh_l0"]))
    finally:
        fastrnn.set_num_threads(saved)
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_callers_denormal_handling_is_untouched(n_threads, threads):
    """The time loops flush denormals while they run; the calling thread keeps IEEE
    gradual underflow afterwards."""
    threads(n_threads)
    model = make_model("lstm", I, H, num_layers=2, bidirectional=True, dtype=np.float64, seed=39)
    x = normal(np.random.default_rng(39), (T, B, I), np.float64)
    _, _, backward = model.forward_train(x, lengths=LENGTHS)
    backward(np.ones((T, B, 2 * H)))
    model(x)
    tiny = np.array([2.2250738585072014e-308, 1.1754944e-38])  # smallest normal f64, f32
    assert (tiny[:1] / 4)[0] != 0  # a float64 denormal result survives (no flush-to-zero)
    assert (tiny[1:].astype(np.float32) / np.float32(4))[0] != 0
    assert np.array([5e-324])[0] * 2 != 0  # a denormal input is not read as zero


# -- streaming ---------------------------------------------------------------------------


@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_stream_chunks_equal_one_call(cell, dtype, batch_first):
    """model.stream: chunks of any size (0 included), then single steps, give exactly the
    numbers of one call over the whole sequence, and the same final state."""
    rng = np.random.default_rng(40)
    model = make_model(cell, I, H, num_layers=2, batch_first=batch_first, dtype=dtype, seed=40)
    steps = 9
    x_tm = normal(rng, (steps, B, I), dtype)
    h0, c0 = initial_state(cell, rng, 2, dtype)
    hx = state_args(cell, h0, c0)
    y_tm, state = model(x_tm.transpose(1, 0, 2) if batch_first else x_tm, hx)
    if batch_first:
        y_tm = y_tm.transpose(1, 0, 2)

    stream = model.stream(B, h0=hx)
    pieces, t = [], 0
    for size in (3, 0, 1, 2):
        chunk = x_tm[t : t + size]
        y = stream(chunk.transpose(1, 0, 2) if batch_first else chunk)
        pieces.append(y.transpose(1, 0, 2) if batch_first else y)
        t += size
    out = np.empty((B, H), dtype)
    while t < steps:
        result = stream.step(x_tm[t], out=out)
        assert result is out
        pieces.append(out[None].copy())
        t += 1
    np.testing.assert_array_equal(np.concatenate(pieces), y_tm)
    for a, b in zip(split_state(cell, stream.state), split_state(cell, state), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cell", CELLS)
def test_stream_reset_restarts_only_the_given_rows(cell):
    rng = np.random.default_rng(41)
    model = make_model(cell, I, H, num_layers=2, dtype=np.float64, seed=41)
    x = normal(rng, (5, B, I), np.float64)
    stream = model.stream(B)
    stream(x[:3])
    stream.reset(rows=[1])
    y = stream(x[3:])
    y_all, _ = model(x)  # rows other than 1 continue
    y_fresh, _ = model(x[3:])  # row 1 starts again from zeros
    keep = [0, 2, 3]
    np.testing.assert_array_equal(y[:, keep], y_all[3:, keep])
    np.testing.assert_array_equal(y[:, 1], y_fresh[:, 1])


def test_stream_rejects_bidirectional_models():
    model = make_model("gru", I, H, bidirectional=True)
    with pytest.raises(ValueError, match=r"streaming needs a unidirectional model"):
        model.stream(B)


def test_thread_pool_runs_every_share_exactly_once():
    """Jobs of 4, 2, 3 and 2 shares in turn, so that some workers have no share in a job and
    may wake for it late: each share must run once, before its job returns. (Workers that
    woke late once read the next job's fields and ran a share twice: 4-6 anomalies in 2000
    jobs here, and missing gradient rows in the thread-count tests above.)"""
    assert fastrnn._kernels.pool_selftest(2000) == 0


def test_idle_workers_stop_spinning():
    """Workers spin a short while after a job (0.5 ms, so that the jobs of one call chain
    without a sleep), then sleep: a worker still spinning 200 ms after its last job would
    hold a core between calls. Every worker (three at least, for jobs of 4 shares) sees each
    job, and so goes back to sleep after the last."""
    before = fastrnn._kernels.pool_sleeps()
    assert fastrnn._kernels.pool_selftest(10) == 0  # jobs of 2-4 shares
    time.sleep(0.2)
    assert fastrnn._kernels.pool_sleeps() >= before + 3
