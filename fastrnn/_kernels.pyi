"""Type stub of the compiled module fastrnn._kernels (see _kernels.pyx for the contracts).

Every array argument is C-contiguous and of one float type (float32 or float64) per call;
int64 arrays are as stated. Each kernel has a float and a double specialisation, reachable
as ``kernel["float"]`` / ``kernel["double"]``.
"""

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

_F = NDArray[np.floating[Any]]
_I64 = NDArray[np.int64]

class _Fused:
    def __call__(self, *args: Any) -> None: ...
    def __getitem__(self, name: str) -> _Fused: ...

CELL_RNN_TANH: int
CELL_RNN_RELU: int
CELL_LSTM: int
CELL_GRU: int
CELL_GRU_B: int

def forward_pack_size(cell: int, P: int, H: int, double: bool) -> int: ...
def input_pack_size(I: int, GH: int, double: bool) -> int: ...
def backward_pack_size(cell: int, P: int, H: int, double: bool) -> int: ...
def backward_input_pack_size(GH: int, I: int, double: bool) -> int: ...
def gemm_buffer_size(GH: int, double: bool) -> int: ...
def pool_selftest(jobs: int) -> int: ...
def pipe_selftest(runs: int, chunks: int, slots: int) -> int: ...
def pipes_started() -> int: ...
def pool_sleeps() -> int: ...
def deferred_pairs_run() -> int: ...
def projection_steps(batch: int, S: int, GH: int) -> int: ...

gather_steps: _Fused
"""gather_steps(src (T,B,F), lengths (B,) int64, order (B,) int64, reverse, dst (S,B,F))"""
scatter_steps: _Fused
"""scatter_steps(src (S,B,F), lengths, order, reverse, dst (T,B,F))"""
forward: _Fused
"""forward(cell, training, packed, xc, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, order,
bounds, unit_threads, helper, yc, h_n, c_n, xproj, hs, cs, acts, hraw, work, wpack, ipack,
bwpack, bipack, xsave, later=None): with a Deferred `later`, prepared there and not run"""
backward: _Fused
"""backward(cell, packed, xc, w_ih, w_hh, w_hr, lengths, order, bounds, unit_threads, hs, cs,
acts, hraw, dyc, dh_n, dc_n, dxc, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr, dgx, dgh, dhs,
work, wpack, ipack, gbuf, later=None)"""

class Deferred:
    """A prepared forward() or backward() call (its arrays held), run by run_deferred."""

def run_deferred(first: Deferred, second: Deferred | None = None) -> None: ...

class ForwardPlan:
    """Prepared forward() calls of a stack of layers, re-run on new arrays of one shape."""
    def __init__(
        self,
        prepared: list[Deferred],
        mids: list[_F],
        x_shape: tuple[int, ...],
        y_shape: tuple[int, ...],
        h_shape: tuple[int, ...],
        c_shape: tuple[int, ...],
        zero_h: _F,
        zero_c: _F | None,
        pairs: tuple[bool, ...] | None = None,
    ) -> None: ...
    def run(
        self,
        x: _F,
        h0: _F | None = None,
        c0: _F | None = None,
        y: _F | None = None,
        h_n: _F | None = None,
        c_n: _F | None = None,
    ) -> tuple[_F, _F, _F | None] | None: ...

class TrainingTape:
    """What a TrainingPlan.forward() call keeps for its backward pass."""

class TrainingPlan:
    """Prepared training passes (forward and backward) of a stack of layers, re-run on new
    arrays of one shape."""
    def __init__(
        self,
        forwards: list[Deferred],
        backwards: list[Deferred],
        pairs: tuple[bool, ...],
        tape_shapes: list[tuple[tuple[int, ...], ...]],
        grad_shapes: list[tuple[tuple[int, ...], ...]],
        backward_scratch: list[Callable[[], tuple[_F, _F, _F, _F, bool]]],
        shapes: tuple[tuple[int, ...], ...],
        time_major: tuple[tuple[int, ...], ...],
        zero_h: _F,
        zero_c: _F | None,
        scratch: Callable[[tuple[int, ...], Any], _F],
        release: Callable[..., None],
        dtype: Any,
        w_hr: list[_F | None] | None = None,
    ) -> None: ...
    def forward(
        self,
        x: _F,
        h0: _F | None = None,
        c0: _F | None = None,
        dropout: Callable[[], list[_F]] | None = None,
    ) -> tuple[_F, _F, _F | None, TrainingTape] | None: ...
    def backward(
        self, tape: TrainingTape, dy: Any, dh_n: Any = None, dc_n: Any = None
    ) -> tuple[_F, _F, _F | None, tuple[tuple[_F, _F, _F, _F], ...]] | None: ...

sigmoid: _Fused
"""sigmoid(x (n,), out (n,))"""
tanh: _Fused
"""tanh(x (n,), out (n,))"""
multiply: _Fused
"""multiply(a (n,), b (n,), out (n,)): out = a * b"""
add_into: _Fused
"""add_into(a (n,), out (n,)): out += a"""
