"""Prepared calls: a recurring call without the Python that prepares it.

An inference call spends ~8 us in Python before its kernels run (validation, layout,
buffers, the kernels' argument checks), which is most of a single step's time (an RNN step
(1, 1, 64, 64): 10 us, 1.5 of them in the kernel). The second call of a model (or stream)
with an input of one shape, on one thread, prepares every layer's forward() call once into
a _kernels.ForwardPlan; later calls of that shape hand the new arrays straight to it. It
takes only what needs no conversion: exactly the model's dtype, C-contiguous and aligned,
no `lengths`, in the layout the kernels read (time-major, or batch-first
with one row); anything else, or anything it declines, takes the validating path as before.

Training passes are planned alike (prepare_training, a _kernels.TrainingPlan): the second
forward_train() of a shape prepares each layer's forward() and backward() calls; later
passes run from them, each with its own saved arrays, outputs and gradients.

A plan is valid while the model's parameters are the arrays it was prepared with (checked
on every call: a live model's parameters() may have entries replaced) and, for a frozen
model or a stream, while the packed weights it reads are unchanged: _set_params clears a
model's plans, and a stream counts its packings (see Stream).
"""

from __future__ import annotations

import functools
import math
import operator
import threading

import numpy as np

from . import _kernels, _layer, _threads

_MAX_PLANS = 8  # per model or stream, the oldest dropped first
_SEEN = object()  # a key seen once: planned the second time (a call of a new shape each
# time, such as sequences of many lengths, plans nothing)


class PlanCache(dict):
    """key -> (parameter arrays, plan, extra) or _SEEN. Copies and pickles of a model start
    with none (a plan holds this process's scratch and this thread's)."""

    def __reduce__(self):
        return (PlanCache, ())

    def __deepcopy__(self, memo):
        return PlanCache()

    def remember(self, key, entry) -> None:
        if key not in self and len(self) >= _MAX_PLANS:
            try:
                del self[next(iter(self))]  # dicts keep insertion order
            except (KeyError, RuntimeError, StopIteration):  # another thread changed it
                pass
        self[key] = entry


def _same_arrays(held: tuple, params: dict) -> bool:
    return len(held) == len(params) and all(map(operator.is_, held, params.values()))


def find(cache: PlanCache, key, params: dict):
    """The entry planned for `key` with these parameter arrays, or None."""
    entry = cache.get(key)
    if entry is None or entry is _SEEN or not _same_arrays(entry[0], params):
        return None
    return entry


def wants(cache: PlanCache, key, params: dict) -> bool:
    """Whether a call of `key` that took the validating path should plan now: the second
    time the key is seen, or when its plan is stale (not when its plan declined the call)."""
    entry = cache.get(key)
    if entry is None:
        cache.remember(key, _SEEN)
        return False
    return entry is _SEEN or not _same_arrays(entry[0], params)


def eligible_input(x, dtype: np.dtype) -> bool:
    """Whether x is an array a plan takes as it is."""
    return (
        type(x) is np.ndarray
        and x.dtype == dtype
        and x.ndim in (2, 3)
        and x.flags.c_contiguous
        and x.flags.aligned
    )


def small_enough(model, T: int, B: int) -> bool:
    """Whether what a plan of these calls would hold for as long as it is kept, its layers'
    scratch and the outputs between them, is at most _layer._WORKSPACE_MAX_BYTES. Not the
    packs of a frozen model, which are its weights' own (a frozen LSTM step (1, 1, 512,
    512) reads 8 MiB of them and holds 30 KiB), nor the input copy, which no plan makes.
    Calls that need more take long enough for a plan to gain nothing measurable."""
    P, H, D = model._h_size, model.hidden_size, model.num_directions
    proj = P != H
    itemsize = model.dtype.itemsize
    unheld = ("xc", "wpack", "ipack") if model.frozen else ("xc",)
    held = (model.num_layers - 1) * T * B * D * P * itemsize
    for layer in range(model.num_layers):
        I = model.input_size if layer == 0 else D * P  # noqa: E741
        shapes, nbytes = _layer._forward_shapes(
            model._cell, T, B, I, H, P, model.dtype, False, proj
        )
        held += D * (nbytes - sum(math.prod(shapes[k]) for k in unheld) * itemsize)
    return held <= _layer._WORKSPACE_MAX_BYTES


def prepare(model, xs: np.ndarray, shapes: tuple, zeros: tuple, ws_list=None):
    """A ForwardPlan of the model's layers over inputs shaped as xs (T, B, I), time-major,
    presented in `shapes` (x, y, h, c); zeros: the (h, c) initial state of a call without
    one, in the presented shapes. ws_list: a stream's kept workspaces, one a layer (one
    direction). None when a frozen layer has no packs yet (its first call makes them)."""
    T, B, _ = xs.shape
    L, D, P, H = model.num_layers, model.num_directions, model._h_size, model.hidden_size
    G = _layer.NUM_GATES[model._cell]
    lstm = model._cell == "lstm"
    dtype = model.dtype
    # the state arrays the calls are prepared with; run() gives them new ones each time
    h0, h_n = np.zeros((L * D, B, P), dtype), np.empty((L * D, B, P), dtype)
    c0 = np.zeros((L * D, B, H), dtype) if lstm else None
    c_n = np.empty((L * D, B, H), dtype) if lstm else None
    prepared, mids, pairs = [], [], []
    layer_in = xs
    for layer in range(L):
        # as _models.RecurrentModel._run pairs them
        pair = D == 2 and _threads.pair_directions(B, T, G * H * (layer_in.shape[2] + P))
        pairs.append(pair)
        for d in range(D):
            k = layer * D + d
            weights = model._weights(layer, d)
            if weights.frozen and "forward" not in weights.packs:
                return None
            later = _kernels.Deferred()
            _layer.forward(
                model._cell, weights, layer_in, h0[k], None if c0 is None else c0[k],
                None, bool(d), False, h_n=h_n[k], c_n=None if c_n is None else c_n[k],
                ws=None if ws_list is None else ws_list[layer], later=later, split=not pair,
            )  # fmt: skip
            prepared.append(later)
        if layer < L - 1:
            layer_in = np.empty((T, B, D * P), dtype)
            mids.append(layer_in)
    x_shape, y_shape, h_shape, c_shape = shapes
    return _kernels.ForwardPlan(
        prepared, mids, x_shape, y_shape, h_shape, c_shape, *zeros, tuple(pairs)
    )


def trains_by_plan(model) -> bool:
    """Whether a model's training passes can be planned: live parameters (a frozen model's
    backward packs are its weights' own)."""
    return not model.frozen


def prepare_training(model, xs: np.ndarray, shapes: tuple, zeros: tuple):
    """A TrainingPlan of the model's layers over inputs shaped as xs (T, B, I), time-major,
    presented in `shapes` (x, y, h, c); zeros: (h, c) zeros in the presented shapes. Each
    layer-direction's forward() is prepared with the thread split a direct call takes (one
    thread each where a layer's two directions run at once), and the backward() of that
    (never run) pass's tape too; the plan keeps the prepared calls, not their arrays."""
    T, B, _ = xs.shape
    L, D, P, H = model.num_layers, model.num_directions, model._h_size, model.hidden_size
    cell, dtype = model._cell, model.dtype
    lstm = cell == "lstm"
    G = _layer.NUM_GATES[cell]
    h0, h_n = np.zeros((L * D, B, P), dtype), np.empty((L * D, B, P), dtype)
    c0 = np.zeros((L * D, B, H), dtype) if lstm else None
    c_n = np.empty((L * D, B, H), dtype) if lstm else None
    dy = np.zeros((T, B, P), dtype)
    forwards, backwards, pairs, tape_shapes, grad_shapes, scratch, w_hr = ([] for _ in range(7))
    layer_in = xs
    for layer in range(L):
        # as _models.RecurrentModel._run pairs them
        pair = D == 2 and _threads.pair_directions(B, T, G * H * (layer_in.shape[2] + P))
        pairs.append(pair)
        outs = []
        for d in range(D):
            k = layer * D + d
            prepared = _kernels.Deferred()
            weights = model._weights(layer, d)
            w_hr.append(weights.w_hr)  # each pass copies it (_layer._training_weights)
            _, finish = _layer.forward(
                cell, weights, layer_in, h0[k],
                None if c0 is None else c0[k], None, bool(d), True, h_n=h_n[k],
                c_n=None if c_n is None else c_n[k], later=prepared, split=not pair,
                save_input=layer == 0,
            )  # fmt: skip
            # the tape of that (never run) call: for its backward's preparation and shapes
            y, _, _, tape = finish()
            outs.append(y)
            back = _kernels.Deferred()
            _layer.backward(
                tape, dy, h0[k], None if c0 is None else c0[k], later=back, split=not pair
            )
            forwards.append(prepared)
            backwards.append(back)
            saved = (tape.hs, tape.cs, tape.acts, *tape.packs, tape.hraw)
            tape_shapes.append(tuple(a.shape for a in saved))
            w = tape.weights
            grads = (w.w_ih, w.w_hh, w.b_ih, w.b_hh) + (() if w.w_hr is None else (w.w_hr,))
            grad_shapes.append(tuple(g.shape for g in grads))
            shapes_k = _layer.backward_shapes(tape, alone=pair)
            scratch.append(functools.partial(_layer.backward_scratch, shapes_k, dtype, bool(d)))
        layer_in = outs[0] if D == 1 else np.concatenate(outs, axis=2)
    time_major = ((T, B, model.input_size), (T, B, D * P), (L * D, B, P),
                  (L * D, B, H) if lstm else ())  # fmt: skip
    return _kernels.TrainingPlan(
        forwards, backwards, tuple(pairs), tape_shapes, grad_shapes, scratch, shapes,
        time_major, *zeros, _layer._scratch, _layer._release, dtype, w_hr,
    )  # fmt: skip


def training_key(x: np.ndarray) -> tuple:
    """A model's training plans are keyed as its inference plans (model_key), apart."""
    return ("training", *model_key(x))


def model_key(x: np.ndarray) -> tuple:
    """A model's plans are per thread (they share its scratch), per thread count (the split
    is part of the plan) and per input shape."""
    return (threading.get_ident(), _threads.get_num_threads(), x.shape)
