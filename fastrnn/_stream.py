"""Streaming inference: feed a sequence a chunk or a single step at a time.

A Stream carries each layer's state from one call to the next, so that any split of a
sequence into chunks gives exactly the numbers of one call over the whole sequence. It
keeps its workspaces between calls: a steady stream of same-shaped chunks allocates no
arrays when the caller passes `out=` (without it, each call returns one new array).
Rows of the batch are independent streams; `reset(rows)` restarts some of them.
"""

from __future__ import annotations

import numpy as np

from . import _layer, _plan, _threads, _validate


class Stream:
    """The running state of a unidirectional model over a batch of `batch_size` streams.

    Create it with ``model.stream(batch_size, h0=None)``. The stream keeps the model's
    weights packed for its kernels between calls and sees new parameter arrays at once
    (``load_state_dict``); after changing parameters *in place* (an optimiser step on
    ``model.parameters()``), call ``refresh()``.
    """

    def __init__(self, model, batch_size: int, h0=None):
        if model.bidirectional:
            raise ValueError(
                "streaming needs a unidirectional model: the reverse direction of a "
                "bidirectional one needs the whole sequence before its first output"
            )
        self.model = model
        self.batch_size = _validate.positive_int("batch_size", batch_size, minimum=0)
        self._is_lstm = model._cell == "lstm"
        L, B = model.num_layers, self.batch_size
        self._h = np.zeros((L, B, model._h_size), model.dtype)
        self._c = np.zeros((L, B, model.hidden_size), model.dtype) if self._is_lstm else None
        self._ws = [{} for _ in range(L)]
        # prepared calls (_plan), each valid while the parameters are the same arrays and
        # no call has packed them anew since (the packings each ws counts)
        self._plans = _plan.PlanCache()
        self._bf = {}  # a time-major copy of batch_first chunks
        if h0 is not None:
            self.reset(h0=h0)

    def refresh(self) -> None:
        """Repack the weights at the next call (after in-place parameter updates)."""
        for ws in self._ws:
            ws.pop("packed_for", None)
        self._plans.clear()  # they would read the old packs

    @property
    def state(self):
        """A copy of the current state: h (num_layers, B, H_out); LSTM (h, c)."""
        if self._is_lstm:
            return self._h.copy(), self._c.copy()
        return self._h.copy()

    def reset(self, rows=None, h0=None) -> None:
        """Restart streams: rows (an index, slice, boolean mask or None for all) get the
        initial state h0 (LSTM: a pair (h0, c0)), given for those rows, or zeros."""
        sel = slice(None) if rows is None else rows
        try:
            target_h = self._h[:, sel]
        except IndexError as exc:
            raise ValueError(f"rows {rows!r} do not index a batch of {self.batch_size}") from exc
        if h0 is None:
            self._h[:, sel] = 0.0
            if self._is_lstm:
                self._c[:, sel] = 0.0
            return
        if self._is_lstm:
            if not isinstance(h0, (tuple, list)) or len(h0) != 2:
                raise TypeError("an LSTM stream's h0 must be a pair (h0, c0)")
            h, c = h0
            self._c[:, sel] = _validate.gradient("c0", c, self._c[:, sel].shape, self.model.dtype)
        else:
            h = h0
        self._h[:, sel] = _validate.gradient("h0", h, target_h.shape, self.model.dtype)

    def __call__(self, x, out=None):
        """Run a chunk: x (T, B, I), or (B, T, I) if the model is batch_first.

        Returns y (T, B, H_out) (or batch-first), written into `out` when given.
        """
        m = self.model
        x = _validate.float_array("x", x, m.dtype)
        B, I = self.batch_size, m.input_size
        batch_axis = 0 if m.batch_first else 1
        if x.ndim != 3 or x.shape[batch_axis] != B or x.shape[2] != I:
            layout = "(B, T, input_size)" if m.batch_first else "(T, B, input_size)"
            raise ValueError(
                f"x must have shape {layout} with B={B} (the stream's batch) and "
                f"input_size={I}, got {x.shape}"
            )
        if m.batch_first:
            tm = self._bf.get("x")
            if tm is None or tm.shape != (x.shape[1], B, I):
                tm = self._bf["x"] = np.empty((x.shape[1], B, I), m.dtype)
            np.copyto(tm, x.transpose(1, 0, 2))
            x = tm
        y = self._run(x)
        return self._deliver(y, out, batch_first=m.batch_first)

    def step(self, x_t, out=None):
        """Run one time step: x_t (B, I). Returns y_t (B, H_out), written into `out` if given."""
        m = self.model
        x_t = _validate.float_array("x_t", x_t, m.dtype)
        if x_t.shape != (self.batch_size, m.input_size):
            raise ValueError(
                f"x_t must have shape ({self.batch_size}, {m.input_size}), got {x_t.shape}"
            )
        y = self._run(x_t.reshape(1, self.batch_size, m.input_size))
        return self._deliver(y[0], out, batch_first=False)

    def _packings(self) -> tuple:
        return tuple(ws.get("packings", 0) for ws in self._ws)

    def _run(self, x):
        """Run x (T, B, I), time-major and of the model's dtype, from the carried state."""
        m = self.model
        key = (_threads.get_num_threads(), x.shape)
        if self._plans:
            entry = _plan.find(self._plans, key, m._params)
            if entry is not None and entry[2][1] != self._packings():
                del self._plans[key]  # the packs it reads were made anew: plan again
            elif entry is not None:
                y = entry[2][0]
                if entry[1].run(x, self._h, self._c, y, self._h, self._c) is not None:
                    return y
        y = self._run_layers(x)
        if _plan.eligible_input(x, m.dtype) and _plan.wants(self._plans, key, m._params):
            self._plan_chunks_like(x, key)
        return y

    def _plan_chunks_like(self, x, key) -> None:
        T, B, _ = x.shape
        m = self.model
        if T == 0 or B == 0 or not _plan.small_enough(m, T, B):
            return
        L, P, H = m.num_layers, m._h_size, m.hidden_size
        c_shape = (L, B, H) if self._is_lstm else ()
        shapes = (x.shape, (T, B, P), (L, B, P), c_shape)
        plan = _plan.prepare(m, x, shapes, (self._h, self._c), self._ws)
        if plan is not None:
            y = np.empty((T, B, P), m.dtype)
            self._plans.remember(key, (tuple(m._params.values()), plan, (y, self._packings())))

    def _run_layers(self, x):
        m = self.model
        layer_in = x
        for layer in range(m.num_layers):
            layer_in, _, _, _ = _layer.forward(
                m._cell, m._weights(layer, 0), layer_in, self._h[layer],
                self._c[layer] if self._is_lstm else None, None, False, False,
                h_n=self._h[layer], c_n=self._c[layer] if self._is_lstm else None,
                ws=self._ws[layer],
            )  # fmt: skip
        return layer_in

    def _deliver(self, y, out, batch_first):
        shown = y.transpose(1, 0, 2) if batch_first else y
        if out is None:
            return shown.copy()
        if not isinstance(out, np.ndarray) or out.shape != shown.shape or out.dtype != y.dtype:
            raise ValueError(
                f"out must be a {y.dtype} array of shape {shown.shape}, got "
                f"{getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}"
            )
        np.copyto(out, shown)
        return out
