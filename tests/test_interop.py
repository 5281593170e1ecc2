"""fastrnn.from_torch / fastrnn.to_torch: exact weight round trips and PyTorch's outputs."""

import sys

import numpy as np
import pytest

import fastrnn

torch = pytest.importorskip("torch")

CELLS = {
    "rnn_tanh": (torch.nn.RNN, fastrnn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (torch.nn.RNN, fastrnn.RNN, {"nonlinearity": "relu"}),
    "lstm": (torch.nn.LSTM, fastrnn.LSTM, {}),
    "lstm_proj": (torch.nn.LSTM, fastrnn.LSTM, {"proj_size": 2}),
    "gru": (torch.nn.GRU, fastrnn.GRU, {}),
}
CONFIGS = {
    "plain": {},
    "stacked_bidirectional": {"num_layers": 2, "bidirectional": True},
    "batch_first_no_bias": {"batch_first": True, "bias": False},
    "everything": {
        "num_layers": 2,
        "bidirectional": True,
        "batch_first": True,
        "bias": False,
        "dropout": 0.3,
    },
}
DTYPES = {np.float32: torch.float32, np.float64: torch.float64}
# Output tolerance against PyTorch: float64 to rounding; float32 allows the kernels'
# vectorised sigmoid/tanh (about 2e-7 relative) accumulated over steps and layers.
TOL = {np.float32: {"rtol": 1e-5, "atol": 1e-6}, np.float64: {"rtol": 0, "atol": 1e-12}}


def bits(a):
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else a
    return a.dtype.str, a.shape, a.tobytes()


def torch_module(cell, dtype, **config):
    torch_cls, _, extra = CELLS[cell]
    torch.manual_seed(1234)
    return torch_cls(input_size=3, hidden_size=5, **extra, **config, dtype=DTYPES[dtype])


def assert_same_weights(fastrnn_model, module):
    want = module.state_dict()
    got = fastrnn_model.state_dict()
    assert list(got) == list(want)
    for name in want:
        assert bits(got[name]) == bits(want[name]), name


# PyTorch's float32 CPU LSTM warns that oneDNN lacks projections (then computes them itself).
@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", CELLS)
def test_from_torch_matches_module(cell, dtype, config):
    module = torch_module(cell, dtype, **CONFIGS[config]).eval()
    model = fastrnn.from_torch(module)

    assert type(model) is CELLS[cell][1]
    assert model.dtype == dtype
    keys = ["input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
            "bidirectional"]  # fmt: skip
    keys += ["nonlinearity"] if cell.startswith("rnn") else []
    keys += ["proj_size"] if cell.startswith("lstm") else []
    extra = {"reset_after": True} if cell == "gru" else {}  # PyTorch's GRU form
    assert model._config() == {**{key: getattr(module, key) for key in keys}, **extra}
    assert_same_weights(model, module)

    rng = np.random.default_rng(5)
    B, T = 3, 4
    x = rng.standard_normal((B, T, 3) if module.batch_first else (T, B, 3)).astype(dtype)
    LD = module.num_layers * (2 if module.bidirectional else 1)
    h0 = rng.standard_normal((LD, B, getattr(module, "proj_size", 0) or 5)).astype(dtype)
    c0 = rng.standard_normal((LD, B, 5)).astype(dtype)
    lstm = cell.startswith("lstm")
    hx = (h0, c0) if lstm else h0
    with torch.no_grad():
        thx = tuple(map(torch.from_numpy, hx)) if lstm else torch.from_numpy(hx)
        y_t, state_t = module(torch.from_numpy(x), thx)
    y, state = model(x, hx)
    np.testing.assert_allclose(y, y_t.numpy(), **TOL[dtype])
    states = zip(state, state_t, strict=True) if lstm else [(state, state_t)]
    for s, s_t in states:
        np.testing.assert_allclose(s, s_t.numpy(), **TOL[dtype])


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", CELLS)
def test_round_trips_are_exact(cell, dtype, config):
    module = torch_module(cell, dtype, **CONFIGS[config])
    back = fastrnn.to_torch(fastrnn.from_torch(module))
    assert type(back) is type(module)
    for key in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                "bidirectional", "mode", "proj_size"):  # fmt: skip
        assert getattr(back, key) == getattr(module, key), key
    want, got = module.state_dict(), back.state_dict()
    assert list(got) == list(want)
    for name in want:
        assert bits(got[name]) == bits(want[name]), name

    # and from the fastrnn side
    _, fastrnn_cls, extra = CELLS[cell]
    model = fastrnn_cls(3, 5, **extra, **CONFIGS[config], dtype=dtype, seed=3)
    again = fastrnn.from_torch(fastrnn.to_torch(model))
    assert again._config() == model._config()
    assert again.dtype == model.dtype
    for name, value in model.state_dict().items():
        assert bits(again.state_dict()[name]) == bits(value), name


def test_to_torch_module_computes_the_same():
    model = fastrnn.GRU(3, 5, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
    module = fastrnn.to_torch(model)
    assert module.training  # a new torch module, as torch.nn.GRU(...) would be
    x = np.random.default_rng(0).standard_normal((4, 2, 3))
    with torch.no_grad():
        y_t, h_t = module(torch.from_numpy(x))
    y, h = model(x)
    np.testing.assert_allclose(y, y_t.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(h, h_t.numpy(), rtol=0, atol=1e-12)


def test_to_torch_keeps_dropout_and_torch_warns_for_one_layer():
    model = fastrnn.LSTM(3, 5, num_layers=1, dropout=0.5)
    # PyTorch's own warning: dropout acts only between layers.
    with pytest.warns(UserWarning, match="dropout option adds dropout after all but last"):
        module = fastrnn.to_torch(model)
    assert module.dropout == 0.5


def test_to_torch_rejects_reset_before_gru():
    model = fastrnn.GRU(3, 5, reset_after=False)
    with pytest.raises(ValueError, match=r"cannot convert a GRU with reset_after=False"):
        fastrnn.to_torch(model)


def test_explicit_dtype_converts():
    module = torch_module("lstm", np.float64)
    model = fastrnn.from_torch(module, dtype=np.float32)
    assert model.dtype == np.float32
    for name, value in module.state_dict().items():
        assert bits(model.state_dict()[name]) == bits(value.numpy().astype(np.float32))


@pytest.mark.parametrize("torch_dtype", [torch.float16, torch.bfloat16])
def test_half_precision_modules_need_an_explicit_dtype(torch_dtype):
    torch.manual_seed(0)
    module = torch.nn.GRU(3, 5, dtype=torch_dtype)
    name = str(torch_dtype).removeprefix("torch.")
    with pytest.raises(TypeError, match=f"supports float32 and float64 modules, got .*{name}"):
        fastrnn.from_torch(module)
    model = fastrnn.from_torch(module, dtype=np.float32)  # exact: float32 holds every value
    for key, value in module.state_dict().items():
        assert bits(model.state_dict()[key]) == bits(value.float())


def test_bad_dtype_argument():
    with pytest.raises(TypeError, match="dtype must be float32 or float64, got int32"):
        fastrnn.from_torch(torch_module("rnn_tanh", np.float32), dtype=np.int32)


def test_from_torch_rejects_other_modules():
    with pytest.raises(TypeError, match=r"got torch\.nn\.modules\.linear\.Linear"):
        fastrnn.from_torch(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match=r"got torch\.nn\.modules\.rnn\.RNNCell"):
        fastrnn.from_torch(torch.nn.RNNCell(2, 2))
    with pytest.raises(TypeError, match="got builtins.str"):
        fastrnn.from_torch("lstm")


def test_to_torch_rejects_other_objects():
    with pytest.raises(
        TypeError, match=r"to_torch expects a fastrnn RNN, LSTM or GRU, got .*LSTM"
    ):
        fastrnn.to_torch(torch.nn.LSTM(2, 2))


def test_lstm_projection_needs_fastrnn_support(monkeypatch):
    """A fastrnn LSTM whose config has no proj_size cannot take a projected torch LSTM."""

    class LSTMWithoutProjection(fastrnn.LSTM):
        def _config(self):
            return {k: v for k, v in super()._config().items() if k != "proj_size"}

    monkeypatch.setattr(fastrnn._torch, "LSTM", LSTMWithoutProjection)
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="proj_size=2, but fastrnn's LSTM does not support"):
        fastrnn.from_torch(torch.nn.LSTM(3, 5, proj_size=2))
    assert type(fastrnn.from_torch(torch.nn.LSTM(3, 5))) is LSTMWithoutProjection


def test_missing_torch_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(ImportError, match="PyTorch interop .* needs PyTorch: pip install torch"):
        fastrnn.from_torch(object())
    with pytest.raises(ImportError, match="needs PyTorch"):
        fastrnn.to_torch(fastrnn.RNN(2, 2))
