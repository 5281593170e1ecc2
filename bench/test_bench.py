"""pytest-benchmark suite: fastrnn against PyTorch on the same weights, side by side.

For each cell (rnn with tanh, lstm, gru), each shape of the grid in ``_bench_common.GRID``
(and of ``OTHER_SHAPES``: a few rows, a batch past 128)
and each mode there is one benchmark for fastrnn and one for torch, in one group
``{cell}-{mode}-T..B..I..H..`` so that pytest-benchmark prints them together:

- inference: ``model(x)``; torch under ``torch.no_grad()``;
- training: one step, fastrnn ``forward_train(x)`` then ``backward(dy)`` with a fixed dy;
  torch forward then backward of ``(y * dy).sum()``, with x requiring grad so that both
  compute the input gradient.

A 2-layer bidirectional model of each cell runs at ``STACKED_SHAPES`` in both modes too, and
fastrnn's inference runs once more per cell and shape on a frozen model (``freeze()``: the
weights stay packed between calls), in the same group. Streaming (``STEP_SHAPES``, one step
a call, the state carried) compares ``stream.step`` and ``y, h = model(x, h)`` on a frozen
model with torch's ``module(x, h)``, in groups ``{cell}-step-T1B..I..H..``.
torch benchmarks are skipped when torch is not installed.

Threads: ``FASTRNN_BENCH_THREADS`` (default 1) sets torch.set_num_threads and, through
threadpoolctl when installed, the BLAS and OpenMP pools. For the full comparison with
ONNX Runtime, GFLOP/s and memory, see ``compare.py``.

Run from the repository root, with the extension built in place. pyproject.toml's addopts
hold ``--benchmark-disable`` (every body runs once, untimed: the smoke run CI does), so
timing needs ``--benchmark-enable``::

    PYTHONPATH=. pytest bench -p no:cacheprovider                      # smoke run
    PYTHONPATH=. pytest bench --benchmark-enable -p no:cacheprovider   # time everything
    PYTHONPATH=. pytest bench --benchmark-enable -k "lstm and B64"     # a subset
    FASTRNN_BENCH_THREADS=2 PYTHONPATH=. pytest bench --benchmark-enable

Smoke run: with ``--benchmark-disable`` every body runs once, untimed, at the full shapes
(about 12 s for all 174 bodies on a 2-core machine at 1 thread). Should that grow too
slow, cut T for the largest shapes when ``benchmark.disabled`` is true, in ``_bench``.
"""

from __future__ import annotations

import os

import _bench_common as common
import pytest

THREADS = int(os.environ.get("FASTRNN_BENCH_THREADS", "1"))
FRAMEWORKS = ("fastrnn", "torch")


def _optional_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


@pytest.fixture(scope="module", autouse=True)
def _thread_limits():
    with common.thread_limits(THREADS, _optional_torch()):
        yield


def _step(framework, mode, cell, model, x, dy):
    """The callable that is one measured step; returns (y, h) or the input gradient."""
    if framework == "fastrnn":
        if mode == "inference":
            return common.fastrnn_inference(model, x)
        return common.fastrnn_training(model, x, dy)
    torch = pytest.importorskip("torch")
    module = common.make_torch(torch, cell, model)
    if mode == "inference":
        return common.torch_inference(torch, module, x)
    return common.torch_training(torch, module, x, dy)


def _bench(
    benchmark, cell, shape, mode, framework, num_layers=1, bidirectional=False, frozen=False
):
    """Benchmark one step and check the shape of what it returns."""
    T, B, I, H = shape  # noqa: E741
    model = common.make_fastrnn(cell, I, H, num_layers, bidirectional)
    if frozen:
        model.freeze()
    x, dy = common.make_data(shape, common.output_features(model))
    step = _step(framework, mode, cell, model, x, dy)
    benchmark.extra_info.update(
        threads=THREADS, shape=list(shape), num_layers=num_layers, bidirectional=bidirectional
    )
    out = benchmark(step)
    if mode == "inference":
        assert tuple(out[0].shape) == (T, B, common.output_features(model))
    else:
        assert tuple(out.shape) == x.shape


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("mode", common.MODES)
@pytest.mark.parametrize("shape", common.GRID + common.OTHER_SHAPES, ids=common.shape_id)
@pytest.mark.parametrize("cell", common.CELLS)
def test_single_layer(benchmark, cell, shape, mode, framework):
    benchmark.group = f"{cell}-{mode}-{common.shape_id(shape)}"
    _bench(benchmark, cell, shape, mode, framework)


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("mode", common.MODES)
@pytest.mark.parametrize("shape", common.STACKED_SHAPES, ids=common.shape_id)
@pytest.mark.parametrize("cell", common.CELLS)
def test_two_layer_bidirectional(benchmark, cell, shape, mode, framework):
    benchmark.group = f"{cell}-{mode}-L2-bidirectional-{common.shape_id(shape)}"
    _bench(benchmark, cell, shape, mode, framework, num_layers=2, bidirectional=True)


@pytest.mark.parametrize("shape", common.GRID + common.OTHER_SHAPES, ids=common.shape_id)
@pytest.mark.parametrize("cell", common.CELLS)
def test_single_layer_frozen_inference(benchmark, cell, shape):
    benchmark.group = f"{cell}-inference-{common.shape_id(shape)}"
    _bench(benchmark, cell, shape, "inference", "fastrnn", frozen=True)


STEP_WAYS = ("fastrnn-stream", "fastrnn-call", "torch")


@pytest.mark.parametrize("way", STEP_WAYS)
@pytest.mark.parametrize("shape", common.STEP_SHAPES, ids=common.shape_id)
@pytest.mark.parametrize("cell", common.CELLS)
def test_streaming_step(benchmark, cell, shape, way):
    benchmark.group = f"{cell}-step-{common.shape_id(shape)}"
    T, B, I, H = shape  # noqa: E741
    model = common.make_fastrnn(cell, I, H).freeze()
    x, _ = common.make_data(shape, H)
    if way == "fastrnn-stream":
        step = common.fastrnn_stream_steps(model, x)
    elif way == "fastrnn-call":
        step = common.fastrnn_state_steps(model, x)
    else:
        torch = pytest.importorskip("torch")
        step = common.torch_state_steps(torch, common.make_torch(torch, cell, model), x)
    benchmark.extra_info.update(threads=THREADS, shape=list(shape))
    out = benchmark(step)
    assert tuple(out.shape) == ((B, H) if way == "fastrnn-stream" else (T, B, H))
