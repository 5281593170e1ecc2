"""PyTorch interop: torch.nn.RNN / LSTM / GRU to fastrnn models and back.

fastrnn keeps PyTorch's parameter names, shapes and gate order, so conversion copies the
state_dict unchanged: weights round-trip bit for bit when the dtype is kept. torch is
imported only inside these functions; fastrnn itself does not depend on it.
"""

from __future__ import annotations

import numpy as np

from . import _validate
from ._models import GRU, LSTM, RNN

_FLOAT_NAMES = ("float32", "float64")


def _import_torch():
    try:
        import torch
    except ImportError as exc:
        raise ImportError(
            "fastrnn's PyTorch interop (from_torch, to_torch) needs PyTorch: pip install torch"
        ) from exc
    return torch


def _type_name(obj) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def from_torch(module, dtype=None):
    """The fastrnn model equivalent to a torch.nn.RNN, LSTM or GRU, with its weights.

    dtype defaults to the module's parameter dtype, which must then be float32 or float64;
    an explicit dtype (float32 or float64) converts the weights to it. The fastrnn model
    has no train/eval mode: calling it is inference, like the module in eval mode.
    """
    torch = _import_torch()
    nn = torch.nn
    if isinstance(module, nn.LSTM):
        cls, extra = LSTM, {}
    elif isinstance(module, nn.GRU):
        cls, extra = GRU, {}
    elif isinstance(module, nn.RNN):
        cls, extra = RNN, {"nonlinearity": module.nonlinearity}
    else:
        raise TypeError(
            f"from_torch expects a torch.nn.RNN, torch.nn.LSTM or torch.nn.GRU, "
            f"got {_type_name(module)}"
        )
    state = module.state_dict()
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in state.values()})
    if dtype is None:
        if len(dtypes) != 1 or dtypes[0] not in _FLOAT_NAMES:
            raise TypeError(
                f"from_torch supports float32 and float64 modules, got parameters of dtype "
                f"{', '.join(dtypes)}; pass dtype=np.float32 or np.float64 to convert"
            )
        dt = np.dtype(dtypes[0])
    else:
        dt = _validate.dtype_arg(dtype)
    config = {
        "input_size": module.input_size,
        "hidden_size": module.hidden_size,
        "num_layers": module.num_layers,
        "bias": module.bias,
        "batch_first": module.batch_first,
        "dropout": module.dropout,
        "bidirectional": module.bidirectional,
        **extra,
    }
    model = cls(**config, dtype=dt)
    proj_size = getattr(module, "proj_size", 0)
    if proj_size:
        if "proj_size" not in model._config():
            raise ValueError(
                f"the torch LSTM has proj_size={proj_size}, but fastrnn's LSTM does not "
                f"support projections (proj_size)"
            )
        model = cls(**config, proj_size=proj_size, dtype=dt)
    torch_dtype = getattr(torch, dt.name)
    model.load_state_dict(
        {name: t.detach().to(device="cpu", dtype=torch_dtype).numpy() for name, t in state.items()}
    )
    return model


def to_torch(model):
    """A new torch.nn.RNN, LSTM or GRU with `model`'s configuration, weights and dtype.

    Like any new torch module it is in training mode: with dropout > 0, call .eval() for
    the inference that calling the fastrnn model does.
    """
    torch = _import_torch()
    if isinstance(model, LSTM):
        torch_cls = torch.nn.LSTM
    elif isinstance(model, GRU):
        torch_cls = torch.nn.GRU
    elif isinstance(model, RNN):
        torch_cls = torch.nn.RNN
    else:
        raise TypeError(f"to_torch expects a fastrnn RNN, LSTM or GRU, got {_type_name(model)}")
    config = dict(model._config())
    if torch_cls is torch.nn.GRU and not config.pop("reset_after", True):
        raise ValueError(
            "to_torch cannot convert a GRU with reset_after=False: PyTorch's GRU only has "
            "the reset-after form n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), which "
            "computes different outputs from the same weights"
        )
    module = torch_cls(**config, dtype=getattr(torch, model.dtype.name))
    state = {name: torch.from_numpy(value) for name, value in model.state_dict().items()}
    module.load_state_dict(state, strict=True)
    return module
