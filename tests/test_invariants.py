"""Invariants that catch real bugs: chunked runs, bidirectional = forward + reversed run,
stacked = chained single layers, rows independent of their batch."""

import numpy as np
import pytest
from helpers import CELLS, DTYPE_IDS, DTYPES, assert_close, make_model, normal

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
