"""What the benchmark suite (test_bench.py) and the comparison harness (compare.py) share.

The shape grid, model construction on shared weights, the timed step functions, the
flop count and the thread settings live here once, so that both tools measure the same
thing. torch and threadpoolctl are optional: functions that need torch take it as an
argument, and thread limits without threadpoolctl fall back to torch's setting alone.
"""

from __future__ import annotations

import contextlib

import numpy as np

import fastrnn

CELLS = ("rnn", "lstm", "gru")
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
MODES = ("inference", "training")

# (T, B, I, H): sequence length, batch, input size, hidden size.
GRID = (
    (100, 1, 64, 64),
    (100, 1, 256, 256),
    (100, 16, 128, 128),
    (100, 64, 256, 256),
    (50, 64, 512, 512),
    (200, 32, 128, 256),
    (1000, 1, 32, 32),
)
STACKED_SHAPE = (100, 16, 128, 128)  # where the 2-layer bidirectional models run
# and a batch of one, where the two directions of a layer run at once on two threads
STACKED_SHAPES = (STACKED_SHAPE, (100, 1, 64, 64))
# Off the grid: a batch of two (its steps shared by hidden units on two threads), a batch of
# three with a hidden size off the vector width, and a batch past 128 (BLAS's until the own
# kernels measured faster there too)
OTHER_SHAPES = ((100, 2, 256, 256), (100, 3, 128, 200), (30, 256, 128, 128))
# Streaming: one step a call (T = 1), the state carried from call to call, where the time
# outside the kernels decides
STEP_SHAPES = ((1, 1, 64, 64), (1, 8, 256, 256))

_FASTRNN_CLASSES = {"rnn": fastrnn.RNN, "lstm": fastrnn.LSTM, "gru": fastrnn.GRU}
_TORCH_CLASS_NAMES = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}


def shape_id(shape) -> str:
    """'T100B16I128H128': a shape as a test id and group suffix."""
    T, B, I, H = shape  # noqa: E741 - the paper's names
    return f"T{T}B{B}I{I}H{H}"


# -- models and data ---------------------------------------------------------------------


def make_fastrnn(cell, input_size, hidden_size, num_layers=1, bidirectional=False, seed=0):
    """A float32 fastrnn model (RNN with tanh) with seeded PyTorch-style initialisation."""
    return _FASTRNN_CLASSES[cell](
        input_size, hidden_size, num_layers, bidirectional=bidirectional, seed=seed
    )


def make_torch(torch, cell, model):
    """The torch.nn module matching a fastrnn model of that cell, with the same weights."""
    cls = getattr(torch.nn, _TORCH_CLASS_NAMES[cell])
    module = cls(
        model.input_size,
        model.hidden_size,
        model.num_layers,
        bidirectional=model.bidirectional,
    )
    module.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    return module


def make_data(shape, out_features, seed=1):
    """Seeded input x (T, B, I) and output gradient dy (T, B, out_features), float32."""
    T, B, I, _ = shape  # noqa: E741
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, I), dtype=np.float32)
    dy = rng.standard_normal((T, B, out_features), dtype=np.float32)
    return x, dy


def output_features(model) -> int:
    return model.num_directions * model.hidden_size


# -- the timed steps ---------------------------------------------------------------------
# Each returns a no-argument callable; calling it once is one measured step.


def fastrnn_inference(model, x):
    """y, h_n = model(x)."""
    return lambda: model(x)


def fastrnn_training(model, x, dy):
    """forward_train, then backward with the fixed dy; returns the input gradient.

    backward computes the gradients of x, h0 and every parameter.
    """

    def step():
        _, _, backward = model.forward_train(x)
        return backward(dy).x

    return step


def fastrnn_stream_steps(model, x):
    """One step of model.stream(B): stream.step(x[0], out=...), the state carried."""
    stream = model.stream(x.shape[1])
    out = np.empty((x.shape[1], output_features(model)), model.dtype)
    return lambda: stream.step(x[0], out=out)


def fastrnn_state_steps(model, x):
    """One step as a call that takes and returns the state: y, h = model(x, h)."""
    state = [None]

    def step():
        y, state[0] = model(x, state[0])
        return y

    return step


def torch_state_steps(torch, module, x):
    """module(x, h) under torch.no_grad(), the state carried from call to call."""
    xt = torch.from_numpy(x)
    state = [None]

    def step():
        with torch.no_grad():
            y, state[0] = module(xt, state[0])
        return y

    return step


def torch_inference(torch, module, x):
    """module(x) under torch.no_grad()."""
    xt = torch.from_numpy(x)

    def step():
        with torch.no_grad():
            return module(xt)

    return step


def torch_training(torch, module, x, dy):
    """zero_grad, forward, backward of (y * dy).sum(); returns the input gradient.

    x requires grad, so torch computes dx as fastrnn does; gradients are reset to None
    each step (not accumulated), as fastrnn returns fresh arrays each step.
    """
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    dyt = torch.from_numpy(dy)

    def step():
        module.zero_grad(set_to_none=True)
        xt.grad = None
        y, _ = module(xt)
        (y * dyt).sum().backward()
        return xt.grad

    return step


# -- arithmetic --------------------------------------------------------------------------


def gemm_flops(cell, shape, mode, num_layers=1, num_directions=1) -> int:
    """Flops of the GEMMs of one single-layer, one-direction step (what BLAS would do).

    Inference: input projection 2*T*B*I*G*H plus recurrent products 2*T*B*H*G*H.
    Training: the forward plus the backward's four products of the same sizes
    (recurrent dh, dW_hh, dW_ih, dx), i.e. 3x the forward.
    """
    if num_layers != 1 or num_directions != 1:
        raise ValueError("gemm_flops counts one layer, one direction")
    T, B, I, H = shape  # noqa: E741
    GH = GATES[cell] * H
    forward = 2 * T * B * I * GH + 2 * T * B * H * GH
    return forward if mode == "inference" else 3 * forward


# -- threads -----------------------------------------------------------------------------


@contextlib.contextmanager
def thread_limits(n, torch=None):
    """Run the block with n threads for BLAS/OpenMP (threadpoolctl), torch and fastrnn.

    fastrnn is limited through its BLAS; if it grows its own thread pool with a
    ``fastrnn.set_num_threads``, that is set too. Previous settings are restored.
    """
    with contextlib.ExitStack() as stack:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            pass
        else:
            stack.enter_context(threadpool_limits(limits=n))
        if torch is not None:
            previous = torch.get_num_threads()
            torch.set_num_threads(n)
            stack.callback(torch.set_num_threads, previous)
        set_fastrnn = getattr(fastrnn, "set_num_threads", None)
        if set_fastrnn is not None:
            set_fastrnn(n)
        yield
