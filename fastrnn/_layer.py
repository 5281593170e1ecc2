"""One recurrent layer in one direction: allocation and layout around the compiled loops.

Everything here receives arrays that ``_validate`` has already checked and converted
(C-contiguous, the model's dtype, lengths as int64 within range). It allocates outputs and
workspaces, converts between the user's padded layout and the kernels' compact one, and
calls ``_kernels``; it does no arithmetic of its own.
"""

from __future__ import annotations

import functools
import math
import operator
import threading
import weakref
from dataclasses import dataclass, field

import numpy as np

from . import _kernels, _threads

CELL_CODES = {
    "rnn_tanh": _kernels.CELL_RNN_TANH,
    "rnn_relu": _kernels.CELL_RNN_RELU,
    "lstm": _kernels.CELL_LSTM,
    "gru": _kernels.CELL_GRU,
    "gru_reset_before": _kernels.CELL_GRU_B,
}
NUM_GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3, "gru_reset_before": 3}
_FLOAT_NAMES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_specialised: dict = {}


def _kernel(name: str, dtype: np.dtype):
    """The float or double specialisation of a fused kernel. Calling the fused function
    itself matches every argument's type on each call, which costs ~10 us per call."""
    key = (name, dtype)
    fn = _specialised.get(key)
    if fn is None:
        fn = _specialised[key] = getattr(_kernels, name)[_FLOAT_NAMES[dtype]]
    return fn


@dataclass
class LayerWeights:
    """One direction of one layer, in PyTorch's layout."""

    w_ih: np.ndarray  # (G*H, I)
    w_hh: np.ndarray  # (G*H, P), P = H except for an LSTM with a projection
    b_ih: np.ndarray  # (G*H,)
    b_hh: np.ndarray  # (G*H,)
    w_hr: np.ndarray | None = None  # (P, H) LSTM projection, or None
    frozen: bool = False  # every array read-only and owning its data (model.freeze())
    # frozen: the kernels' packed copies ("forward", "backward"), made by the first call
    # that needs each and kept for every later call from any thread (only read after that)
    packs: dict = field(default_factory=dict, repr=False, compare=False)


@dataclass
class Tape:
    """What a training forward pass keeps for its backward pass."""

    cell: str
    weights: LayerWeights
    xc: np.ndarray  # (S, B, I) compact input
    hs: np.ndarray  # (S+1, B, P) state before each step
    cs: np.ndarray  # (S+1, B, H) LSTM cell state; empty otherwise
    acts: np.ndarray  # (S, B, 4H) saved gate activations; empty for RNN
    hraw: np.ndarray  # (S, B, H) LSTM projection's input; empty otherwise
    lengths: np.ndarray  # (B,) int64
    order: np.ndarray  # (B,) int64, longest first
    bounds: np.ndarray  # (threads + 1,) int64 row ranges
    unit_threads: int  # threads sharing a batch-1 step by hidden units
    reverse: bool
    identity: bool  # compact layout == user layout (forward, no lengths)
    T: int
    packs: tuple  # (W_hh, W_ih) packed for backward by forward
    alone: bool = False  # forward ran on one thread beside the other direction; backward too


# Scratch arrays of 64 KiB and more, kept from one call to the next (a few of each shape, up
# to _SPARE_BYTES in all): fresh memory from the OS costs a page fault and the zeroing of
# every 4 KiB page, ~3% of an LSTM training step at (T, B, I, H) = (50, 64, 512, 512). Below
# 1 MiB, glibc's heap serves most requests, but whether it returns freed memory at the top
# of the heap to the OS (and faults it back in on the next call) depends on its dynamic
# thresholds: an LSTM training step at (100, 1, 64, 64) took 0.36 ms in some processes and
# 0.70 ms in others (36% of the time in page faults), and 0.36-0.38 ms in every run once
# arrays from 64 KiB up were kept. Only arrays that no result and no tape refers to come
# back here, so concurrent calls never share one (list.pop and append are atomic under the
# GIL).
_SPARE_MIN = 1 << 16
_SPARE_PER_SHAPE = 4  # a training step of an RNN with I = H holds four packs of one shape
_SPARE_BYTES = 256 << 20
_spare: dict = {}


def _aligned_empty(shape: tuple, dtype) -> np.ndarray:
    """An uninitialised array whose data starts on a 64-byte boundary. NumPy's own start 16
    bytes past one, so that every 64-byte vector load of a packed weight panel or a row of
    gate columns straddled two cache lines. (~2 us: kept for arrays that are reused.)"""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + 64, np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def _scratch(shape: tuple, dtype) -> np.ndarray:
    """An uninitialised array: a spare one of this shape and dtype, or a new one (aligned
    when it is large enough to be kept as a spare afterwards)."""
    dtype = np.dtype(dtype)
    kept = _spare.get((shape, dtype))
    if kept:
        try:
            return kept.pop()
        except IndexError:  # another thread took it
            pass
    if math.prod(shape) * dtype.itemsize >= _SPARE_MIN:
        return _aligned_empty(shape, dtype)
    return np.empty(shape, dtype)


def _release(*arrays: np.ndarray) -> None:
    """Keep large scratch arrays for the next call, within the total budget."""
    added = False
    for a in arrays:
        if a.nbytes < _SPARE_MIN:
            continue
        key = (a.shape, a.dtype)
        kept = _spare.setdefault(key, [])
        if len(kept) < _SPARE_PER_SHAPE:
            kept.append(a)
            added = True
    if not added:
        return
    # the arrays kept under one key are all of its size
    sizes = {key: math.prod(key[0]) * key[1].itemsize for key in list(_spare)}
    total = sum(len(_spare.get(key, ())) * size for key, size in sizes.items())
    for key in list(_spare):  # oldest shapes first
        if total <= _SPARE_BYTES:
            break
        total -= len(_spare.pop(key, ())) * sizes.get(key, 0)


# Scratch of small calls, kept per thread and per configuration: allocating a call's dozen
# internal arrays cost ~7 us of a 20 us LSTM (1, 1, 64, 64) call. A thread finishes one
# layer-direction before it starts the next, so no two calls share these; the results (y,
# h_n, c_n) are never among them, nor what a training pass keeps on its tape. Training takes
# its other scratch here too (forward's, and backward's in _backward_buffers): taken from and
# returned to the spares instead, it cost ~30 us of Python a step (LSTM (100, 1, 256, 256),
# 2 threads: the interpreter's own data comes back from L3 after each kernel).
_WORKSPACE_MAX_BYTES = 4 << 20  # per configuration; larger calls use the spares above
# xc and yc, the compact input and output: whole-sequence arrays that only calls with
# lengths or in reverse use. A call whose other scratch fits is kept without them, so that
# a frozen model keeps its packs at any sequence length (it then takes them from the spares).
_SEQUENCE_ARRAYS = ("xc", "yc")
_WORKSPACE_CONFIGS = 8  # per thread, the oldest dropped first
_local = threading.local()


def _thread_buffers(key: tuple) -> _Buffers | None:
    """This thread's kept buffers for one inference configuration, key = _forward_shapes'
    arguments but `training`, then what else tells layer-directions apart; None for a
    configuration larger than _WORKSPACE_MAX_BYTES. Found by one lookup (~0.1 us: a call
    of an LSTM (1, 1, 64, 64) with frozen weights spends ~2 us in its kernel)."""
    kept = getattr(_local, "buffers", None)
    if kept is None:
        kept = _local.buffers = {}
    buffer = kept.get(key)
    if buffer is None:
        cell, S, B, I, H, P, dtype, proj = key[:8]  # noqa: E741
        shapes, nbytes = _forward_shapes(cell, S, B, I, H, P, dtype, False, proj)
        sequence = sum(math.prod(shapes[k]) for k in _SEQUENCE_ARRAYS) * np.dtype(dtype).itemsize
        if nbytes - sequence > _WORKSPACE_MAX_BYTES:
            return None
        if len(kept) >= _WORKSPACE_CONFIGS:
            del kept[next(iter(kept))]  # dicts keep insertion order
        keeps_sequence = nbytes <= _WORKSPACE_MAX_BYTES
        buffer = kept[key] = _Buffers({}, dtype, False, shapes, keeps_sequence)
    return buffer


# forward()'s internal arrays, in the order the kernel takes them
_INTERNAL = ("xproj", "hs", "cs", "acts", "work", "hraw", "wpack", "ipack")
# those that a training pass keeps for backward (on its tape)
_SAVED = ("hs", "cs", "acts", "hraw")


class _Buffers:
    """Allocates arrays, or lends them from a dict kept across calls: a stream's (which lends
    its results and packed weights too) or this thread's scratch for the configuration."""

    def __init__(
        self, ws: dict | None, dtype, lends_results: bool, shapes: dict, keeps_sequence=True
    ):
        self.ws, self.dtype, self.lends_results, self.shapes = ws, dtype, lends_results, shapes
        # whether xc and yc are kept too (else lent from the spares: release_sequence())
        self.keeps_sequence = keeps_sequence
        if ws is not None and not lends_results:
            # this thread's scratch for one configuration: every array made once, all
            # served by one dict lookup (a dozen calls of __call__ cost ~3 us)
            arrays = ws.get("arrays")
            if arrays is None:
                arrays = ws["arrays"] = {
                    k: _aligned_empty(v, dtype)
                    for k, v in shapes.items()
                    if keeps_sequence or k not in _SEQUENCE_ARRAYS
                }
                ws["internal"] = (shapes, tuple(arrays[k] for k in _INTERNAL))
            if keeps_sequence:
                self.scratch = arrays.__getitem__
            else:
                self.scratch = lambda k: arrays[k] if k in arrays else _scratch(shapes[k], dtype)

    def internal(self) -> tuple:
        """The kernel's internal arrays, in _INTERNAL order: one lookup in a kept dict
        while the shapes are the same (_forward_shapes gives one dict per configuration)."""
        if self.ws is None:
            return tuple(self.scratch(k) for k in _INTERNAL)
        kept = self.ws.get("internal")
        if kept is None or kept[0] is not self.shapes:
            kept = self.ws["internal"] = (self.shapes, tuple(self.scratch(k) for k in _INTERNAL))
        return kept[1]

    def scratch(self, key: str) -> np.ndarray:
        """The internal array `key` of the configuration's shapes."""
        return self(key, self.shapes[key])

    def __call__(self, key: str, shape: tuple, dtype=None) -> np.ndarray:
        dtype = self.dtype if dtype is None else dtype
        if self.ws is None:
            return _scratch(shape, dtype)
        arr = self.ws.get(key)
        if arr is None or arr.shape != shape or arr.dtype != dtype:
            arr = self.ws[key] = _aligned_empty(shape, dtype)
        return arr

    def release_sequence(self, *arrays: np.ndarray) -> None:
        """Return xc or yc, once the call is done with them, where they came from the
        spares (kept buffers without them, or none kept)."""
        if self.ws is None or not self.keeps_sequence:
            _release(*arrays)

    def result(self, key: str, shape: tuple) -> np.ndarray:
        """An array the call returns: lent by a stream, otherwise the caller's own."""
        if self.lends_results:
            return self(key, shape)
        return np.empty(shape, self.dtype) if self.ws is not None else _scratch(shape, self.dtype)

    def holds(self, weights: LayerWeights, packs: tuple) -> bool:
        """Whether `packs` already hold `weights` packed (same arrays, same pack buffers as
        the last call); records them for the next call either way. Kept dicts keep packed
        weights only for a stream, which does not see in-place changes to the parameters
        (Stream.refresh() says so): other parameters may change in place between calls.
        (Frozen parameters, which cannot, keep their packs on their LayerWeights.)"""
        if self.ws is None:
            return False
        last = self.ws.pop("packed_for", None)  # this call packs over it unless it matches
        if not self.lends_results:
            return False
        w = weights
        held = self.ws["packed_for"] = (w.w_ih, w.w_hh, w.b_ih, w.b_hh, w.w_hr) + packs
        same = last is not None and len(last) == len(held) and all(map(operator.is_, last, held))
        if not same:  # counted: a stream's plans read these packs (_plan)
            self.ws["packings"] = self.ws.get("packings", 0) + 1
        return same


def _backward_pack_shapes(cell: str, P: int, H: int, I: int, dtype):  # noqa: E741
    """Shapes of backward's packs of W_hh and W_ih."""
    double = dtype == np.float64
    GH = NUM_GATES[cell] * H
    return (
        (_kernels.backward_pack_size(CELL_CODES[cell], P, H, double),),
        (_kernels.backward_input_pack_size(GH, I, double),),
    )


def _backward_packs(cell: str, P: int, H: int, I: int, dtype):  # noqa: E741
    """Scratch for backward's packs of W_hh and W_ih."""
    return tuple(_scratch(shape, dtype) for shape in _backward_pack_shapes(cell, P, H, I, dtype))


def _new_packs(key: tuple, shapes: tuple, dtype, made: dict) -> tuple:
    """New arrays for this call to pack frozen weights into, recorded in `made` under `key`
    for the weights to keep once the call has run (a thread that finds none packs its own
    and the first to finish keeps them: no pack is read while it is written)."""
    packs = made[key] = tuple(_aligned_empty(shape, dtype) for shape in shapes)
    return packs


@functools.lru_cache(maxsize=8)
def _no_input_copy(dtype) -> np.ndarray:
    """forward()'s xsave when it copies no input for the tape."""
    empty = np.empty((0, 0, 0), dtype)
    empty.flags.writeable = False
    return empty


@functools.lru_cache(maxsize=8)
def _no_packs(dtype) -> tuple[np.ndarray, np.ndarray]:
    """forward()'s bwpack and bipack when it makes no packs for backward."""
    empty = np.empty(0, dtype)
    empty.flags.writeable = False
    return empty, empty


def _training_weights(cell: str, weights: LayerWeights, P: int, H: int, I: int):  # noqa: E741
    """What a training forward pass keeps of its weights for backward, and the buffers
    for backward's packs of W_hh and W_ih if forward makes them.

    Backward must see the weights as they were at forward time, even if an optimiser
    updates the parameters in place in between. Forward packs W_hh and W_ih for backward as
    well (in parallel, where threads share the step by units), and those packs are the
    pass's copy of them: copying the two matrices first cost ~5% of an LSTM (100, 1, 256,
    256) training step. W_hr (LSTM projection) is read as it is (BLAS), and so copied;
    frozen parameters cannot change and are kept as they are.
    """
    dtype = weights.w_hh.dtype
    if weights.frozen:
        return weights, _no_packs(dtype)
    w_hr = None if weights.w_hr is None else weights.w_hr.copy()
    packs = _backward_packs(cell, P, H, I, dtype)
    # backward reads only the shapes of w_ih and w_hh
    return LayerWeights(weights.w_ih, weights.w_hh, weights.b_ih, weights.b_hh, w_hr), packs


@functools.lru_cache(maxsize=64)
def _full_lengths(T: int, B: int) -> tuple[np.ndarray, np.ndarray]:
    """Lengths (all T) and row order (identity) of a batch without `lengths`: read-only, so
    that calls share them (making them cost ~2 us a call)."""
    lens = np.full(B, T, np.int64)
    order = np.arange(B, dtype=np.int64)
    lens.flags.writeable = order.flags.writeable = False
    return lens, order


def _layout(T: int, B: int, lengths: np.ndarray | None, reverse: bool):
    """Row order, lengths, compact step count and whether compact == user layout."""
    if lengths is None:
        lens, order = _full_lengths(T, B)
        return lens, order, T, not reverse
    order = np.argsort(-lengths, kind="stable").astype(np.int64)
    S = int(lengths.max()) if B else 0
    return lengths, order, S, False


def _projection_steps(B: int, S: int, I: int, GH: int, dtype) -> int:  # noqa: E741
    """Steps of the input projection's ring (_kernels.projection_steps)."""
    wide = _threads.wide_projection(I * GH * np.dtype(dtype).itemsize)
    return _kernels.projection_steps(B, S, GH, wide)


@functools.lru_cache(maxsize=256)
def _forward_shapes(cell, S, B, I, H, P, dtype, training, proj):  # noqa: E741
    """Shapes of forward()'s internal arrays for one configuration, and their total bytes."""
    G = NUM_GATES[cell]
    is_lstm = cell == "lstm"
    double = dtype == np.float64
    if cell in ("rnn_tanh", "rnn_relu"):
        n_acts = 0
    elif training:
        n_acts = S
    else:
        n_acts = 1 if cell == "gru_reset_before" else 0
    n_states = S + 1 if training else 2
    shapes = {
        "xc": (S, B, I),
        "yc": (S, B, P),
        "no_c": (0, H),
        "xproj": (_projection_steps(B, S, I, G * H, dtype) * B, G * H),
        "hs": (n_states, B, P),
        "cs": (n_states, B, H) if is_lstm else (0, 0, H),
        "acts": (n_acts, B, 4 * H),
        "work": (B, 3 * H),
        "hraw": (S if training and proj else 0, B, H),
        "no_w_hr": (0, H),
        "wpack": (_kernels.forward_pack_size(CELL_CODES[cell], P, H, double),),
        "ipack": (_kernels.input_pack_size(I, G * H, double),),
    }
    nbytes = sum(int(np.prod(shape)) for shape in shapes.values()) * np.dtype(dtype).itemsize
    return shapes, nbytes


@functools.lru_cache(maxsize=256)
def _full_length_split(
    S: int, B: int, I: int, GH: int, P: int, itemsize: int, threads: int, packed_weights: int
):
    """row_bounds, unit_threads and projection_helper of a batch without `lengths`
    (threads: the current setting, part of the key)."""
    lens, order = _full_lengths(S, B)
    return _split(lens, order, S, B, I, GH, P, itemsize, packed_weights)


def _split(lens, order, S: int, B: int, I: int, GH: int, P: int, itemsize: int, packed_weights=0):
    """How a call's time loop is shared among threads (_threads); packed_weights: elements
    of the weights an inference call packs (_threads.row_bounds)."""
    bounds = _threads.row_bounds(lens, order, S, GH * (P + I), packed_weights)
    full = B <= 1 or int(lens[order[-1]]) >= S
    unit_threads = _threads.unit_threads(
        B, S, B * GH * P, full, GH * P * itemsize, GH * I * itemsize
    )
    helper = _threads.projection_helper(bounds, unit_threads, S * B * GH * I, packed_weights)
    return bounds, unit_threads, helper


def forward(
    cell: str,
    weights: LayerWeights,
    x: np.ndarray,
    h0: np.ndarray,
    c0: np.ndarray | None,
    lengths: np.ndarray | None,
    reverse: bool,
    training: bool,
    h_n: np.ndarray | None = None,
    c_n: np.ndarray | None = None,
    ws: dict | None = None,
    later: _kernels.Deferred | None = None,
    save_input: bool = False,
    split: bool = False,
):
    """Run one layer-direction. Returns (y (T,B,P), h_n (B,P), c_n (B,H) or None, tape or None).

    save_input (training): x is the caller's, who may reuse it before backward, so the tape
    keeps a copy of it (made by the kernel's threads as they project it).

    With `later`, the call is prepared for one thread and not run: it returns (later,
    finish), finish() giving those results once _kernels.run_deferred(later, ...) has run it
    (beside the other direction of a bidirectional layer). With `split` too, it keeps the
    thread split a direct call takes, for a _kernels.ForwardPlan to run on this thread.

    h_n and c_n, when given, receive the final state (they may be h0 and c0 themselves: the
    kernel reads the initial state before it writes the final one). `ws`, a dict kept by the
    caller, lends inference workspaces from one call to the next (streaming), so that a
    steady stream of same-shaped chunks allocates no arrays; y is then one of them.
    """
    T, B, I = x.shape  # noqa: E741
    G = NUM_GATES[cell]
    H, P = weights.w_hh.shape[0] // G, weights.w_hh.shape[1]
    dtype = x.dtype
    is_lstm = cell == "lstm"
    lens, order, S, identity = _layout(T, B, lengths, reverse)
    proj = weights.w_hr is not None
    buffer = None
    if ws is None:
        # the direction too: both directions of a layer may run at once (run_deferred).
        # Training takes only the call's own scratch from them (below): what its tape
        # keeps is its own.
        buffer = _thread_buffers((cell, S, B, I, H, P, dtype, proj, reverse))
    if buffer is None:
        shapes, _ = _forward_shapes(cell, S, B, I, H, P, dtype, training, proj)
        if ws is not None and not training:  # a stream's, kept while its chunks' shape is
            buffer = ws.get("buffers")
            if buffer is None or buffer.shapes is not shapes:
                buffer = ws["buffers"] = _Buffers(ws, dtype, True, shapes)
        else:
            buffer = _Buffers(None, dtype, False, shapes)
    shapes, scratch = buffer.shapes, buffer.scratch

    kept_buffers = buffer.ws is not None and not buffer.lends_results
    xsave = _no_input_copy(dtype)
    if identity:
        xc = x
        if training and save_input and x.size:  # (a gathered xc, below, is its own already)
            xsave = _scratch(x.shape, dtype)
    else:
        xc = _scratch(shapes["xc"], dtype) if training and kept_buffers else scratch("xc")
        _kernel("gather_steps", dtype)(x, lens, order, reverse, xc)
    yc = buffer.result("yc", shapes["yc"]) if identity else scratch("yc")
    if h_n is None:
        h_n = buffer.result("h_n", (B, P))
    if not is_lstm:
        c_n = c0 = scratch("no_c")
    elif c_n is None:
        c_n = buffer.result("c_n", (B, H))
    xproj, hs, cs, acts, work, hraw, wpack, ipack = buffer.internal()
    if training and kept_buffers:  # the tape's arrays, this call's own; the rest is scratch
        saved, _ = _forward_shapes(cell, S, B, I, H, P, dtype, True, proj)
        hs, cs, acts, hraw = (_scratch(saved[k], dtype) for k in _SAVED)
    scratch_packs = (wpack, ipack)
    w_hr = weights.w_hr if weights.w_hr is not None else scratch("no_w_hr")
    # Frozen weights keep their packs on themselves, at any size; a stream keeps them from one
    # call to the next for as long as the parameters are the same arrays.
    kept = {}  # packs this call makes that the frozen weights keep once it has run
    if weights.frozen:
        packs = weights.packs.get("forward")
        packed = packs is not None
        if not packed:
            packs = _new_packs("forward", (wpack.shape, ipack.shape), dtype, kept)
        wpack, ipack = packs
    else:
        packed = buffer.holds(weights, (wpack, ipack))
    if training:
        weights, bpacks = _training_weights(cell, weights, P, H, I)
        tape_packs = bpacks
        if weights.frozen:
            tape_packs = weights.packs.get("backward")
            if tape_packs is None:  # this call's forward pass makes them
                shapes = _backward_pack_shapes(cell, P, H, I, dtype)
                bpacks = tape_packs = _new_packs("backward", shapes, dtype, kept)
    else:
        bpacks, tape_packs = _no_packs(dtype), ()
    packed_weights = 0 if packed or training else G * H * (P + I)
    if later is not None and not split:
        bounds, unit_threads, helper = _threads.one_range(B), 1, False
    elif lengths is None:
        bounds, unit_threads, helper = _full_length_split(
            S, B, I, G * H, P, dtype.itemsize, _threads.get_num_threads(), packed_weights
        )
    else:
        bounds, unit_threads, helper = _split(
            lens, order, S, B, I, G * H, P, dtype.itemsize, packed_weights
        )

    _kernel("forward", dtype)(
        CELL_CODES[cell], training, packed, xc, weights.w_ih, weights.w_hh, weights.b_ih,
        weights.b_hh, w_hr,
        h0, c0, lens, order, bounds, unit_threads, helper, yc, h_n, c_n, xproj, hs, cs, acts,
        hraw, work, wpack, ipack, *bpacks, xsave, later,
    )  # fmt: skip

    own_input = xsave.size > 0
    if own_input:  # the tape keeps the copy, not the caller's x
        xc = xsave
    results = (
        cell, weights, T, B, lens, order, reverse, identity, training, buffer, xc, yc, h_n, c_n,
        (xproj, hs, cs, acts, work, hraw, *scratch_packs), tape_packs, bounds, unit_threads,
        later is not None, kept, own_input,
    )  # fmt: skip
    if later is not None:
        return later, functools.partial(_finish_forward, *results)
    return _finish_forward(*results)


def _finish_forward(
    cell, weights, T, B, lens, order, reverse, identity, training, buffer, xc, yc, h_n, c_n,
    internal, packs, bounds, unit_threads, alone, kept, own_input,
):  # fmt: skip
    """forward()'s results once its kernel has run: the packs it made for frozen weights
    kept, scratch released, y in the user's layout, the tape."""
    for key, made in kept.items():
        weights.packs.setdefault(key, made)
    xproj, hs, cs, acts, work, hraw, wpack, ipack = internal
    P = h_n.shape[1]
    is_lstm = cell == "lstm"
    if buffer.ws is None:  # internal arrays no result refers to; a tape keeps its own
        _release(xproj, work, wpack, ipack, *(() if training else (hs, cs, acts)))
    if identity:
        y = yc
    else:
        y = buffer.result("y", (T, B, P))
        _kernel("scatter_steps", yc.dtype)(yc, lens, order, reverse, y)
        buffer.release_sequence(yc, *(() if training else (xc,)))
    tape = None
    if training:
        tape = Tape(
            cell, weights, xc, hs, cs, acts, hraw, lens, order, bounds, unit_threads,
            reverse, identity, T, packs, alone,
        )  # fmt: skip
        # when the tape dies (its backward closure dropped), its arrays become spares (not
        # the packs that frozen weights keep, nor an xc that is not the pass's own copy)
        spare = () if weights.frozen else packs
        saved_x = (xc,) if own_input else ()
        weakref.finalize(tape, _release, hs, cs, acts, hraw, *spare, *saved_x)
    return y, h_n, (c_n if is_lstm else None), tape


@functools.lru_cache(maxsize=256)
def _backward_shapes(cell, S, B, H, P, proj, grad_threads, gbuf_size):  # noqa: E741
    """Shapes of backward()'s scratch: dG (input side), GRU's d hh_n, the projection's dh per
    step, the weight-gradient products' packing buffer."""
    GH = NUM_GATES[cell] * H
    return (
        (S * B, GH),
        (S * B if cell == "gru" else 0, H),
        (S * B if proj else 0, P),
        (grad_threads, gbuf_size),
    )


def _backward_buffers(key: tuple, shapes: tuple, dtype) -> tuple | None:
    """This thread's kept scratch for one backward configuration (key: the shapes, the
    dtype and the direction, as the two directions of a layer may run at once), as
    _thread_buffers keeps inference's; None when larger than _WORKSPACE_MAX_BYTES. A call
    holds it only while it runs: its results are never among it."""
    kept = getattr(_local, "backward", None)
    if kept is None:
        kept = _local.backward = {}
    arrays = kept.get(key)
    if arrays is None:
        if sum(map(math.prod, shapes)) * np.dtype(dtype).itemsize > _WORKSPACE_MAX_BYTES:
            return None
        if len(kept) >= _WORKSPACE_CONFIGS:
            del kept[next(iter(kept))]  # dicts keep insertion order
        arrays = kept[key] = tuple(_aligned_empty(shape, dtype) for shape in shapes)
    return arrays


def backward_shapes(tape: Tape, alone: bool = False) -> tuple:
    """Shapes of backward()'s scratch for `tape` (_backward_shapes), on one thread when
    `alone`, else on as many as the products' size calls for."""
    w = tape.weights
    S, B, I = tape.xc.shape  # noqa: E741
    G = NUM_GATES[tape.cell]
    H, P = w.w_hh.shape[0] // G, w.w_hh.shape[1]
    double = tape.xc.dtype == np.float64
    grad_threads = 1 if alone else _threads.product_threads(S * B * G * H * (I + P))
    gbuf_size = _kernels.gemm_buffer_size(G * H, double)
    return _backward_shapes(tape.cell, S, B, H, P, w.w_hr is not None, grad_threads, gbuf_size)


def backward_scratch(shapes: tuple, dtype, reverse: bool) -> tuple:
    """backward()'s scratch of these shapes for the calling thread: (dG, GRU's d hh_n, the
    projection's dh, the products' buffer, whether they are the thread's kept ones (else
    spares, for the caller to _release once the call has run))."""
    kept = _backward_buffers((shapes, dtype, reverse), shapes, dtype)
    if kept is not None:
        return (*kept, True)
    return (*(_scratch(shape, dtype) for shape in shapes), False)


def backward(
    tape: Tape,
    dy: np.ndarray,
    dh_n: np.ndarray,
    dc_n: np.ndarray | None,
    later: _kernels.Deferred | None = None,
    split: bool = False,
):
    """Gradients of one layer-direction from its tape.

    Returns (dx (T,B,I), dh0 (B,P), dc0 (B,H) or None, dict of gradients keyed weight_ih,
    weight_hh, bias_ih, bias_hh and, with a projection, weight_hr). With `later`, as
    forward(): prepared for one thread, or with `split` for the thread split a direct call
    takes; returns (later, finish).
    """
    w = tape.weights
    S, B, I = tape.xc.shape
    G = NUM_GATES[tape.cell]
    H, P = w.w_hh.shape[0] // G, w.w_hh.shape[1]
    dtype = tape.xc.dtype
    w_hr = w.w_hr if w.w_hr is not None else np.empty((0, H), dtype)
    is_lstm = tape.cell == "lstm"

    if tape.identity:
        dyc = dy
    else:
        dyc = np.empty((S, B, P), dtype)
        _kernel("gather_steps", dtype)(dy, tape.lengths, tape.order, tape.reverse, dyc)
    dc_n_arr = dc_n if is_lstm else np.empty((0, H), dtype)
    dxc = np.empty((S, B, I), dtype)
    dh0 = np.empty((B, P), dtype)
    dc0 = np.empty((B, H), dtype) if is_lstm else np.empty((0, H), dtype)
    grads = {
        "weight_ih": np.empty_like(w.w_ih),
        "weight_hh": np.empty_like(w.w_hh),
        "bias_ih": np.empty_like(w.b_ih),
        "bias_hh": np.empty_like(w.b_hh),
        "weight_hr": np.empty_like(w_hr),
    }
    wpack, ipack = tape.packs  # made by forward from the weights of that pass
    # prepared for one thread (beside the other direction), unless split
    alone = later is not None and not split
    # scratch kept by this thread for calls of this shape, else spares (large calls)
    dgx, dgh, dhs, gbuf, kept = backward_scratch(backward_shapes(tape, alone), dtype, tape.reverse)
    work = np.empty((3 * B, H), dtype)

    _kernel("backward", dtype)(
        CELL_CODES[tape.cell], tape.xc, w.w_ih, w.w_hh, w_hr, tape.lengths,
        tape.order, _threads.one_range(B) if alone else tape.bounds,
        1 if alone else tape.unit_threads,
        tape.hs, tape.cs, tape.acts, tape.hraw, dyc, dh_n, dc_n_arr, dxc, dh0, dc0,
        grads["weight_ih"], grads["weight_hh"], grads["bias_ih"], grads["bias_hh"],
        grads["weight_hr"], dgx, dgh, dhs, work, wpack, ipack, gbuf, later,
    )  # fmt: skip

    def finish():
        if not kept:
            _release(dgx, dgh, dhs, gbuf)
        if w.w_hr is None:
            del grads["weight_hr"]
        if tape.identity:
            dx = dxc
        else:
            dx = np.empty((tape.T, B, I), dtype)
            _kernel("scatter_steps", dtype)(dxc, tape.lengths, tape.order, tape.reverse, dx)
        return dx, dh0, (dc0 if is_lstm else None), grads

    return (later, finish) if later is not None else finish()
