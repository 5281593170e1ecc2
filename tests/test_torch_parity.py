"""Parity with torch.nn.RNN / LSTM / GRU on the same weights: outputs, states, gradients."""

import numpy as np
import pytest
from helpers import DTYPE_IDS, DTYPES, assert_close, make_model, normal

torch = pytest.importorskip("torch")
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

TORCH_DTYPE = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}
# PyTorch's cells (GRU reset-before has no PyTorch counterpart).
TORCH_CELLS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]
SIZE = T, B, I, H = 5, 4, 3, 5  # noqa: E741
LENGTHS = np.array([3, 5, 1, 4])  # unsorted, holds 1 and T; PyTorch refuses length 0


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """These problems are tiny; keep PyTorch from spreading them over the shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def torch_model(cell, model, dtype):
    """The PyTorch module of `cell` with `model`'s configuration and weights."""
    cfg = dict(
        input_size=model.input_size,
        hidden_size=model.hidden_size,
        num_layers=model.num_layers,
        bias=model.bias,
        batch_first=model.batch_first,
        bidirectional=model.bidirectional,
        dropout=model.dropout,
        dtype=TORCH_DTYPE[np.dtype(dtype)],
    )
    if cell in ("rnn_tanh", "rnn_relu"):
        tm = torch.nn.RNN(nonlinearity=cell[4:], **cfg)
    elif cell == "lstm":
        tm = torch.nn.LSTM(proj_size=model.proj_size, **cfg)
    else:
        tm = torch.nn.GRU(**cfg)
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    return tm


def torch_run(tm, x, h0, c0, lengths, batch_first):
    """PyTorch's outputs and gradients of loss = sum(y wy) + sum(h_n wh) (+ sum(c_n wc))."""
    xt = torch.from_numpy(x).requires_grad_()
    h0t = torch.from_numpy(h0).requires_grad_()
    c0t = None if c0 is None else torch.from_numpy(c0).requires_grad_()
    hx = h0t if c0t is None else (h0t, c0t)
    if lengths is None:
        y, state = tm(xt, hx)
    else:
        packed = pack_padded_sequence(
            xt, torch.from_numpy(lengths), batch_first=batch_first, enforce_sorted=False
        )
        y_packed, state = tm(packed, hx)
        steps = x.shape[1] if batch_first else x.shape[0]
        y, _ = pad_packed_sequence(y_packed, batch_first=batch_first, total_length=steps)
    return xt, h0t, c0t, y, state


def run_both(
    cell,
    dtype,
    num_layers,
    bidirectional,
    batch_first,
    lengths,
    seed=0,
    size=None,
    dropout=0.0,
    proj_size=0,
):
    T, B, I, H = size or SIZE  # noqa: E741
    P = proj_size or H  # LSTM with projection: h is (.., P), c is (.., H)
    is_lstm = cell == "lstm"
    D = 2 if bidirectional else 1
    rng = np.random.default_rng(seed)
    extra = {"proj_size": proj_size} if proj_size else {}
    model = make_model(
        cell,
        I,
        H,
        num_layers=num_layers,
        bidirectional=bidirectional,
        batch_first=batch_first,
        dropout=dropout,
        dtype=dtype,
        seed=seed,
        **extra,
    )
    tm = torch_model(cell, model, dtype)  # in training mode: dropout (if any) applies
    x = normal(rng, (B, T, I) if batch_first else (T, B, I), dtype)
    h0 = normal(rng, (num_layers * D, B, P), dtype, 0.5)
    c0 = normal(rng, (num_layers * D, B, H), dtype, 0.5) if is_lstm else None
    wy = normal(rng, (B, T, D * P) if batch_first else (T, B, D * P), dtype)
    wh = normal(rng, h0.shape, dtype)
    wc = normal(rng, c0.shape, dtype) if is_lstm else None

    xt, h0t, c0t, yt, state_t = torch_run(tm, x, h0, c0, lengths, batch_first)
    h_t, c_t = state_t if is_lstm else (state_t, None)
    loss = (yt * torch.from_numpy(wy)).sum() + (h_t * torch.from_numpy(wh)).sum()
    if is_lstm:
        loss = loss + (c_t * torch.from_numpy(wc)).sum()
    loss.backward()

    hx = (h0, c0) if is_lstm else h0
    y, state, backward = model.forward_train(x, hx, lengths=lengths)
    h_n, c_n = state if is_lstm else (state, None)
    g = backward(wy, (wh, wc) if is_lstm else wh)

    assert_close(y, yt.detach().numpy(), dtype, err_msg="y")
    assert_close(h_n, h_t.detach().numpy(), dtype, err_msg="h_n")
    if is_lstm:
        assert_close(c_n, c_t.detach().numpy(), dtype, err_msg="c_n")
    assert_close(g.x, xt.grad.numpy(), dtype, grad=True, err_msg="dx")
    assert_close(g.h0, h0t.grad.numpy(), dtype, grad=True, err_msg="dh0")
    if is_lstm:
        assert_close(g.c0, c0t.grad.numpy(), dtype, grad=True, err_msg="dc0")
    torch_grads = dict(tm.named_parameters())
    assert set(g.params) == set(torch_grads)
    for name, p in torch_grads.items():
        assert_close(g.params[name], p.grad.numpy(), dtype, grad=True, err_msg=name)
    return model, tm


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2, 3], ids=lambda n: f"L{n}")
@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_matches_torch(cell, num_layers, bidirectional, batch_first, packed, dtype):
    run_both(cell, dtype, num_layers, bidirectional, batch_first, LENGTHS if packed else None)


# PyTorch's CPU LSTM says once that it falls back from oneDNN for projections.
@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported:UserWarning")
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=lambda n: f"L{n}")
def test_lstm_projection_matches_torch(num_layers, bidirectional, packed, dtype):
    lengths = LENGTHS if packed else None
    run_both("lstm", dtype, num_layers, bidirectional, True, lengths, seed=19, proj_size=3)


# Wider problems: the kernels' own recurrent product over several column panels, and past
# 192 rows in two blocks of rows.
WIDER = [  # (T, B, I, H)
    pytest.param((6, 16, 7, 40), id="B16-H40"),
    pytest.param((4, 21, 9, 36), id="B21-H36"),
    pytest.param((3, 200, 5, 12), id="rowblocks-B200-H12"),
]


@pytest.mark.parametrize("size", WIDER)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_matches_torch_wider(cell, dtype, size):
    steps, batch = size[:2]
    lengths = np.random.default_rng(9).integers(1, steps + 1, size=batch)
    lengths[0] = steps
    run_both(cell, dtype, 2, True, False, lengths, seed=9, size=size)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_matches_torch_without_bias(cell, dtype):
    rng = np.random.default_rng(3)
    model = make_model(
        cell, I, H, num_layers=2, bidirectional=True, bias=False, dtype=dtype, seed=3
    )
    tm = torch_model(cell, model, dtype)
    x = normal(rng, (T, B, I), dtype)
    y, _ = model(x)
    with torch.no_grad():
        yt, _ = tm(torch.from_numpy(x))
    assert_close(y, yt.numpy(), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_matches_torch_unbatched(cell, dtype):
    rng = np.random.default_rng(4)
    model = make_model(cell, I, H, num_layers=2, bidirectional=True, dtype=dtype, seed=4)
    tm = torch_model(cell, model, dtype)
    x = normal(rng, (T, I), dtype)
    y, state = model(x)
    with torch.no_grad():
        yt, state_t = tm(torch.from_numpy(x))
    assert y.shape == tuple(yt.shape)
    assert_close(y, yt.numpy(), dtype)
    if cell == "lstm":
        assert_close(state[0], state_t[0].numpy(), dtype)
        assert_close(state[1], state_t[1].numpy(), dtype)
    else:
        assert state.shape == tuple(state_t.shape)
        assert_close(state, state_t.numpy(), dtype)


@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_load_state_dict_accepts_torch_tensors(cell):
    model = make_model(cell, I, H, num_layers=2, bidirectional=True, dtype=np.float64, seed=5)
    tm = torch_model(cell, model, np.float64)
    with torch.no_grad():
        for p in tm.parameters():
            p.mul_(-0.5)
    model.load_state_dict(tm.state_dict())
    for name, value in tm.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[name], value.numpy())


# -- dropout -----------------------------------------------------------------------------


@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_dropout_with_one_layer_changes_nothing(cell):
    """PyTorch applies dropout only between layers: one layer trains as without dropout."""
    rng = np.random.default_rng(6)
    x = normal(rng, (T, B, I), np.float64)
    plain = make_model(cell, I, H, dtype=np.float64, seed=6)
    dropped = make_model(cell, I, H, dropout=0.5, dtype=np.float64, seed=6)
    y0, s0, back0 = plain.forward_train(x)
    y1, s1, back1 = dropped.forward_train(x)
    np.testing.assert_array_equal(y1, y0)
    np.testing.assert_array_equal(s1[0] if cell == "lstm" else s1, s0[0] if cell == "lstm" else s0)
    dy = normal(rng, y0.shape, np.float64)
    g0, g1 = back0(dy), back1(dy)
    np.testing.assert_array_equal(g1.x, g0.x)
    for name in g0.params:
        np.testing.assert_array_equal(g1.params[name], g0.params[name])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_dropout_is_reproducible_from_seed(cell, dtype):
    rng = np.random.default_rng(7)
    x = normal(rng, (T, B, I), dtype)
    a = make_model(cell, I, H, num_layers=3, dropout=0.4, dtype=dtype, seed=11)
    b = make_model(cell, I, H, num_layers=3, dropout=0.4, dtype=dtype, seed=11)
    c = make_model(cell, I, H, num_layers=3, dropout=0.4, dtype=dtype, seed=12)
    c.load_state_dict(a.state_dict())  # same weights, other dropout stream
    for _ in range(2):  # the whole stream, not just the first mask
        ya, _, back_a = a.forward_train(x)
        yb, _, back_b = b.forward_train(x)
        yc, _, _ = c.forward_train(x)
        np.testing.assert_array_equal(ya, yb)
        assert not np.array_equal(ya, yc)
        dy = normal(rng, ya.shape, dtype)
        ga, gb = back_a(dy), back_b(dy)
        np.testing.assert_array_equal(ga.x, gb.x)
        for name in ga.params:
            np.testing.assert_array_equal(ga.params[name], gb.params[name])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_dropout_one_matches_torch(cell, dtype):
    """dropout=1.0 is deterministic (every unit between layers dropped): training matches
    PyTorch's training mode exactly, gradients included."""
    model, _ = run_both(cell, dtype, 3, True, False, LENGTHS, seed=10, dropout=1.0)
    x = normal(np.random.default_rng(10), (T, B, I), dtype)
    _, _, backward = model.forward_train(x, lengths=LENGTHS)
    g = backward(np.ones((T, B, 2 * H), dtype))
    assert not np.any(g.x)  # nothing reaches the input through a fully dropped layer
    assert not any(np.any(v) for k, v in g.params.items() if "_l0" in k or "_l1" in k)


@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_inference_never_applies_dropout(cell):
    rng = np.random.default_rng(8)
    x = normal(rng, (T, B, I), np.float64)
    dropped = make_model(
        cell, I, H, num_layers=3, bidirectional=True, dropout=0.5, dtype=np.float64, seed=8
    )
    plain = make_model(cell, I, H, num_layers=3, bidirectional=True, dtype=np.float64, seed=8)
    y_train, _, _ = dropped.forward_train(x)
    y_plain, _ = plain(x)
    assert not np.allclose(y_train, y_plain)  # training does drop
    for _ in range(2):
        y, _ = dropped(x)
        np.testing.assert_array_equal(y, y_plain)
    # and torch in eval mode agrees
    tm = torch_model(cell, dropped, np.float64).eval()
    with torch.no_grad():
        yt, _ = tm(torch.from_numpy(x))
    assert_close(y_plain, yt.numpy(), np.float64)
