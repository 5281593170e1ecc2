"""RNN, LSTM and GRU models: PyTorch's constructors, parameter names and semantics.

A model holds its parameters in PyTorch's state_dict layout and composes the compiled
layers of ``_layer`` over layers and directions. It does no arithmetic of its own: the
dropout product and the sum of the two directions' input gradients are kernels too.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from . import _kernels, _layer, _plan, _threads, _validate

_PARAM_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")


@functools.cache
def _param_names(layer: int, direction: int) -> tuple[str, ...]:
    """PyTorch's names of one layer-direction's parameters, in _PARAM_KINDS order."""
    sfx = "_reverse" if direction else ""
    return tuple(f"{kind}_l{layer}{sfx}" for kind in _PARAM_KINDS)


@functools.lru_cache(maxsize=64)
def _zeros(shape: tuple, dtype: np.dtype) -> np.ndarray:
    """A read-only zero state, shared by calls without h0 (c0): the kernels only read it."""
    z = np.zeros(shape, dtype)
    z.flags.writeable = False
    return z


def _read_only(a: np.ndarray) -> np.ndarray:
    """A read-only copy that owns its data: no view of it can write it."""
    a = a.copy()
    a.flags.writeable = False
    return a


@dataclass
class Gradients:
    """Gradients of a loss with respect to a forward_train call's inputs and parameters.

    x has the input's shape; h0 (and c0 for LSTM) the initial state's; params is keyed like
    state_dict().
    """

    x: np.ndarray
    h0: np.ndarray
    c0: np.ndarray | None = None
    params: dict = field(default_factory=dict)


class RecurrentModel:
    """Shared machinery of RNN, LSTM and GRU (use those classes)."""

    _gate_count = 1

    def __init__(
        self,
        input_size,
        hidden_size,
        num_layers=1,
        bias=True,
        batch_first=False,
        dropout=0.0,
        bidirectional=False,
        *,
        dtype=np.float32,
        seed=None,
    ):
        self.input_size = _validate.positive_int("input_size", input_size)
        self.hidden_size = _validate.positive_int("hidden_size", hidden_size)
        self.num_layers = _validate.positive_int("num_layers", num_layers)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = _validate.probability("dropout", dropout)
        self.bidirectional = bool(bidirectional)
        self.dtype = _validate.dtype_arg(dtype)
        init_seq, dropout_seq = np.random.SeedSequence(seed).spawn(2)
        self._dropout_rng = np.random.default_rng(dropout_seq)
        self._params: dict[str, np.ndarray] = {}
        self._frozen = False
        self._frozen_weights: dict = {}  # (layer, direction) -> LayerWeights, while frozen
        self._plans = _plan.PlanCache()  # prepared inference calls (_plan)
        self._zero_bias = _read_only(np.zeros(self._gate_count * self.hidden_size, self.dtype))
        self.reset_parameters(np.random.default_rng(init_seq))

    # -- configuration -------------------------------------------------------------------

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def _cell(self) -> str:
        raise NotImplementedError

    @property
    def _h_size(self) -> int:
        """Features of h (and of each direction's output): hidden_size, or proj_size."""
        return self.hidden_size

    def _config(self) -> dict:
        """Constructor arguments, for repr, save and to_torch."""
        return {
            "input_size": self.input_size,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "bias": self.bias,
            "batch_first": self.batch_first,
            "dropout": self.dropout,
            "bidirectional": self.bidirectional,
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._config().items())
        return f"{type(self).__name__}({args}, dtype={self.dtype.name})"

    # -- parameters ----------------------------------------------------------------------

    @functools.cached_property
    def _param_order(self) -> tuple[str, ...]:
        """Parameter names in state_dict order (the configuration is fixed at construction)."""
        return tuple(self._param_shapes())

    def _param_shapes(self) -> dict[str, tuple]:
        """Names and shapes in PyTorch's state_dict order."""
        GH, P = self._gate_count * self.hidden_size, self._h_size
        shapes = {}
        for layer in range(self.num_layers):
            layer_in = self.input_size if layer == 0 else self.num_directions * P
            for sfx in ("", "_reverse")[: self.num_directions]:
                shapes[f"weight_ih_l{layer}{sfx}"] = (GH, layer_in)
                shapes[f"weight_hh_l{layer}{sfx}"] = (GH, P)
                if self.bias:
                    shapes[f"bias_ih_l{layer}{sfx}"] = (GH,)
                    shapes[f"bias_hh_l{layer}{sfx}"] = (GH,)
                if P != self.hidden_size:
                    shapes[f"weight_hr_l{layer}{sfx}"] = (P, self.hidden_size)
        return shapes

    def reset_parameters(self, rng=None) -> None:
        """PyTorch's initialisation: every parameter uniform in +-1/sqrt(hidden_size)."""
        rng = np.random.default_rng(rng)
        k = 1.0 / np.sqrt(self.hidden_size)
        self._set_params(
            {
                name: rng.uniform(-k, k, size=shape).astype(self.dtype)
                for name, shape in self._param_shapes().items()
            }
        )

    def _set_params(self, params: dict) -> None:
        """Every parameter at once (the only way they change, bar in-place writes to live
        ones): read-only copies while frozen. The dict stays the same object, so that a
        parameters() mapping held by the caller (an optimiser's) sees the new arrays."""
        new = {k: _read_only(v) for k, v in params.items()} if self._frozen else dict(params)
        self._frozen_weights = {}
        self._plans.clear()  # they read the old arrays, or their packs
        self._params.clear()
        self._params.update(new)

    @property
    def frozen(self) -> bool:
        """Whether the parameters are fixed (see freeze)."""
        return self._frozen

    def freeze(self):
        """Fix the parameters for inference, as an ONNX Runtime session does; returns self.

        They become read-only arrays that the model owns, so each thread keeps them packed
        for the kernels from one call to the next instead of packing them on every call,
        and forward_train needs no private copy of them. Changing one in place then raises
        ValueError; load_state_dict and reset_parameters still replace them (frozen too).
        unfreeze() makes them writable again (making the arrays writable by hand is not
        supported: packed copies of them may be in use).
        """
        self._frozen = True
        live, self._params = self._params, {}  # a dict handed out before must not reach these
        self._set_params(live)
        return self

    def unfreeze(self):
        """Make the parameters writable again (new arrays); returns self."""
        self._frozen = False
        self._set_params({name: value.copy() for name, value in self._params.items()})
        return self

    def state_dict(self) -> dict[str, np.ndarray]:
        """A copy of every parameter, keyed and shaped as PyTorch's state_dict()."""
        return {name: value.copy() for name, value in self._params.items()}

    def load_state_dict(self, state_dict, strict: bool = True) -> None:
        """Replace parameters from a mapping of NumPy arrays or torch tensors.

        Values are converted to the model's dtype. With strict, the keys must match
        exactly; otherwise missing keys keep their values and unknown keys raise.
        """
        shapes = self._param_shapes()
        unknown = sorted(set(state_dict) - set(shapes))
        missing = sorted(set(shapes) - set(state_dict))
        if unknown or (strict and missing):
            raise ValueError(
                f"state_dict does not match {type(self).__name__}: "
                f"unexpected keys {unknown}, missing keys {missing if strict else []}"
            )
        new = {
            name: _validate.parameter(name, state_dict[name], shapes[name], self.dtype)
            for name in shapes
            if name in state_dict
        }
        self._set_params({**self._params, **new})

    def parameters(self) -> Mapping[str, np.ndarray]:
        """The live parameter arrays (for optimisers that update them in place); a read-only
        mapping of read-only arrays while the model is frozen."""
        return types.MappingProxyType(self._params) if self._frozen else self._params

    def _weights(self, layer: int, direction: int):
        """One layer-direction's parameters, as they are (a training pass keeps what its
        backward reads: _layer._training_weights)."""
        if self._frozen:  # read-only arrays, set only by _set_params (which clears these)
            kept = self._frozen_weights.get((layer, direction))
            if kept is not None:
                return kept
        p = self._params
        n_ih, n_hh, n_bih, n_bhh, n_hr = _param_names(layer, direction)
        w_ih, w_hh, w_hr = p[n_ih], p[n_hh], p.get(n_hr)
        b_ih, b_hh = p.get(n_bih, self._zero_bias), p.get(n_bhh, self._zero_bias)
        if self._frozen:
            weights = _layer.LayerWeights(w_ih, w_hh, b_ih, b_hh, w_hr, frozen=True)
            self._frozen_weights[layer, direction] = weights
            return weights
        return _layer.LayerWeights(w_ih, w_hh, b_ih, b_hh, w_hr)

    # -- forward -------------------------------------------------------------------------

    def _state_shape(self, batch: int) -> tuple:
        return (self.num_layers * self.num_directions, batch, self._h_size)

    def _initial_state(self, hx, batch: int, batched: bool):
        """(h0, c0) as (L*D, B, H) arrays; c0 is None except for LSTM."""
        shape = self._state_shape(batch)
        if hx is None:
            return _zeros(shape, self.dtype), None
        return _validate.state("h0", hx, shape, batched, self.dtype), None

    def _present_state(self, h, c, batched):
        return h if batched else h[:, 0, :]

    def _present_sequence(self, y, batched):
        if not batched:
            return y[:, 0, :]
        return np.ascontiguousarray(y.transpose(1, 0, 2)) if self.batch_first else y

    def _run(self, x, hx, lengths, training):
        xs, batched = _validate.sequence(x, self.input_size, self.batch_first, self.dtype)
        T, B, _ = xs.shape
        lens = _validate.lengths(lengths, B, T)
        H, D, L = self.hidden_size, self.num_directions, self.num_layers
        _validate.blas_sizes(T, B, (self.input_size, D * self._h_size, self._gate_count * H))
        h0, c0 = self._initial_state(hx, B, batched)
        # backward reads the input: when it is the caller's array (who may reuse it
        # meanwhile), the first layer's forward pass keeps a copy of it
        save_input = training and np.may_share_memory(xs, x)
        h_n = np.empty_like(h0)
        c_n = np.empty_like(c0) if c0 is not None else None
        tapes, masks = [], []
        layer_in = xs
        for layer in range(L):
            # the directions of a bidirectional layer at once, one thread each
            pair = D == 2 and _threads.pair_directions(
                B, T, self._gate_count * H * (layer_in.shape[2] + self._h_size)
            )
            outs = []
            for d in range(D):
                k = layer * D + d
                result = _layer.forward(
                    self._cell, self._weights(layer, d), layer_in, h0[k],
                    None if c0 is None else c0[k], lens, bool(d), training,
                    h_n=h_n[k], c_n=None if c_n is None else c_n[k],
                    later=_kernels.Deferred() if pair else None,
                    save_input=save_input and layer == 0,
                )  # fmt: skip
                if pair:  # (later, finish): run below
                    outs.append(result)
                    continue
                outs.append(result[0])
                tapes.append(result[3])
            if pair:
                _kernels.run_deferred(outs[0][0], outs[1][0])
                results = [finish() for _, finish in outs]
                outs = [result[0] for result in results]
                tapes += [result[3] for result in results]
            layer_out = outs[0] if D == 1 else np.concatenate(outs, axis=2)
            if training and self.dropout > 0.0 and layer < L - 1:
                mask = self._dropout_mask(layer_out.shape)
                _kernels.multiply(layer_out.reshape(-1), mask.reshape(-1), layer_out.reshape(-1))
                masks.append(mask)
            layer_in = layer_out
        run = (T, B, batched, lens, tapes, masks)
        return layer_in, h_n, c_n, run

    def _dropout_mask(self, shape: tuple) -> np.ndarray:
        """A fresh dropout mask: 0 or 1 / (1 - p) an element."""
        keep = 1.0 - self.dropout
        kept = self._dropout_rng.random(shape) < keep
        return (kept / keep if keep > 0.0 else kept).astype(self.dtype)

    def _dropout_masks(self, T: int, B: int) -> list:
        """The masks of a training pass's layer outputs but the last, drawn in the order
        _run draws them."""
        shape = (T, B, self.num_directions * self._h_size)
        return [self._dropout_mask(shape) for _ in range(self.num_layers - 1)]

    def __call__(self, x, h0=None, lengths=None):
        """Inference. x: (T, B, I), (B, T, I) with batch_first, or unbatched (T, I).

        Returns y (T, B, D*H) and h_n (num_layers*D, B, H); LSTM returns (h_n, c_n).
        With lengths, row b runs for lengths[b] steps: its outputs past that are zero and
        its final state is the state after its last step (its initial state if 0).
        """
        if lengths is None and self._plans:
            planned = self._run_planned(x, h0)
            if planned is not None:
                return planned
        y, h_n, c_n, (_, _, batched, _, _, _) = self._run(x, h0, lengths, training=False)
        if lengths is None:
            self._plan_calls_like(x)
        return self._present_sequence(y, batched), self._present_state(h_n, c_n, batched)

    forward = __call__

    def _planned(self, key, x, h0):
        """The plan of `key` for this call and the arguments it takes after x (h0 as the
        kernels read it: none, (h,) or an LSTM's (h, c)), or None: not an array, no plan,
        or an h0 of another kind."""
        if type(x) is not np.ndarray:
            return None
        entry = _plan.find(self._plans, key(x), self._params)
        if entry is None:
            return None
        if h0 is None:
            return entry[1], ()
        if self._cell != "lstm":
            return entry[1], (h0,)
        if type(h0) in (tuple, list) and len(h0) == 2:
            return entry[1], tuple(h0)
        return None

    def _run_planned(self, x, h0):
        """The call run by its plan (_plan), or None: no plan, or one that declines it."""
        planned = self._planned(_plan.model_key, x, h0)
        out = None if planned is None else planned[0].run(x, *planned[1])
        if out is None:
            return None
        y, h_n, c_n = out
        return y, (h_n if c_n is None else (h_n, c_n))

    def _plan_calls_like(self, x) -> None:
        """After a call that took the validating path: plan calls of x's shape, if they
        recur and a plan can take them (_plan)."""
        if not _plan.eligible_input(x, self.dtype):
            return
        key = _plan.model_key(x)
        if not _plan.wants(self._plans, key, self._params):
            return
        layout = self._plan_layout(x)
        if layout is None:
            return
        plan = _plan.prepare(self, *layout)
        if plan is not None:
            self._plans.remember(key, (tuple(self._params.values()), plan, None))

    def _time_major_sizes(self, x) -> tuple:
        """(T, B, batched) of an input array x (3-D: batched; else unbatched (T, I))."""
        if x.ndim != 3:
            return x.shape[0], 1, False
        T, B = x.shape[:2] if not self.batch_first else x.shape[1::-1]
        return T, B, True

    def _plan_layout(self, x):
        """(xs (T, B, I) time-major, the presented shapes (x, y, h, c), zeros (h, c)) of a
        plan for inputs like x, or None when x is not time-major memory or the plan would
        hold too much (_plan.small_enough)."""
        T, B, batched = self._time_major_sizes(x)
        if batched and self.batch_first and B != 1:  # (B, T, I) is not time-major
            return None
        if T == 0 or B == 0 or not _plan.small_enough(self, T, B):
            return None
        LD, P, H = self.num_layers * self.num_directions, self._h_size, self.hidden_size
        Y = self.num_directions * P
        lstm = self._cell == "lstm"
        if batched:
            y_shape = (B, T, Y) if self.batch_first else (T, B, Y)
            h_shape, c_shape = (LD, B, P), (LD, B, H)
        else:
            y_shape, h_shape, c_shape = (T, Y), (LD, P), (LD, H)
        c_shape = c_shape if lstm else ()
        zeros = (_zeros(h_shape, self.dtype), _zeros(c_shape, self.dtype) if lstm else None)
        xs = x.reshape(T, B, self.input_size)
        return xs, (x.shape, y_shape, h_shape, c_shape), zeros

    def stream(self, batch_size: int, h0=None):
        """A Stream: feed this (unidirectional) model chunk by chunk or step by step, with
        the state carried between calls (see fastrnn._stream.Stream)."""
        from ._stream import Stream

        return Stream(self, batch_size, h0)

    def save(self, path) -> None:
        """Write configuration and weights to `path` atomically (see fastrnn.load)."""
        from ._io import save

        save(self, path)

    def forward_train(self, x, h0=None, lengths=None):
        """Forward pass that keeps what backpropagation needs.

        Returns (y, h_n, backward) (LSTM: (y, (h_n, c_n), backward)); backward(dy, dh_n=None)
        returns Gradients. Each call owns its saved state, so several passes may be in
        flight at once, and backward may be called more than once.
        """
        if lengths is None and self._plans:
            planned = self._train_planned(x, h0)
            if planned is not None:
                return planned
        y, h_n, c_n, run = self._run(x, h0, lengths, training=True)
        batched = run[2]
        if lengths is None:
            self._plan_training_like(x)

        def backward(dy, dh_n=None):
            return self._backward(run, dy, dh_n)

        return (
            self._present_sequence(y, batched),
            self._present_state(h_n, c_n, batched),
            backward,
        )

    def _train_planned(self, x, h0):
        """forward_train() run by its plan (_plan.prepare_training), or None: no plan, or
        one that declines the call."""
        planned = self._planned(_plan.training_key, x, h0)
        if planned is None:
            return None
        plan, state = planned
        layout = self._time_major_sizes(x)
        dropout = None
        if self.dropout > 0.0 and self.num_layers > 1:
            dropout = functools.partial(self._dropout_masks, *layout[:2])
        out = plan.forward(x, *state, dropout=dropout)
        if out is None:
            return None
        y, h_n, c_n, tape = out

        def backward(dy, dh_n=None):
            return self._backward_planned(plan, tape, layout, dy, dh_n)

        return y, (h_n if c_n is None else (h_n, c_n)), backward

    def _plan_training_like(self, x) -> None:
        """After a training pass that took the validating path: plan passes of x's shape,
        if they recur and a plan can take them (_plan)."""
        if not _plan.eligible_input(x, self.dtype) or not _plan.trains_by_plan(self):
            return
        key = _plan.training_key(x)
        if not _plan.wants(self._plans, key, self._params):
            return
        layout = self._plan_layout(x)
        if layout is not None:
            plan = _plan.prepare_training(self, *layout)
            self._plans.remember(key, (tuple(self._params.values()), plan, None))

    # -- backward ------------------------------------------------------------------------

    def _final_state_grads(self, dh_n, batch, batched):
        shape = self._state_shape(batch)
        if dh_n is None:
            return np.zeros(shape, self.dtype), None
        return _validate.state("dh_n", dh_n, shape, batched, self.dtype), None

    def _backward_inputs(self, dy, dh_n, T, B, batched):
        """dy as a (T, B, D*H) time-major contiguous array (zeros for None), and the final
        state's gradients (L*D, B, .) (_final_state_grads), validated."""
        out_shape = (T, B, self.num_directions * self._h_size)
        if dy is None:
            g = np.zeros(out_shape, self.dtype)
        else:
            shown = out_shape if not self.batch_first else (B, T, out_shape[2])
            if not batched:
                shown = (T, out_shape[2])
            g = _validate.gradient("dy", dy, shown, self.dtype)
            if not batched:
                g = g[:, None, :]
            elif self.batch_first:
                g = g.transpose(1, 0, 2)
            g = np.ascontiguousarray(g)
        dh, dc = self._final_state_grads(dh_n, B, batched)
        return g, dh, dc

    def _backward_planned(self, plan, tape, layout, dy, dh_n):
        """backward() of a planned pass: dy and dh_n as they are when the plan takes them,
        else validated and converted as the validating path does."""
        T, B, batched = layout
        dh = dc = None
        if dh_n is not None:
            if self._cell == "lstm" and type(dh_n) in (tuple, list) and len(dh_n) == 2:
                dh, dc = dh_n
            else:
                dh = dh_n
        out = plan.backward(tape, dy, dh, dc)
        if out is None:  # (aligned copies: the plan takes nothing else)
            g, dh, dc = self._backward_inputs(dy, dh_n, T, B, batched)
            out = plan.backward(tape, *(None if a is None else np.require(a, requirements="CA")
                                        for a in (g, dh, dc)))  # fmt: skip
            if out is None:
                raise RuntimeError("a training plan declined validated gradients (a bug)")
        dx, dh0, dc0, grads = out
        params = {}
        D = self.num_directions
        for k, values in enumerate(grads):
            for name, value in zip(_param_names(k // D, k % D), values, strict=False):
                params[name] = value
        if not self.bias:
            params = {k: v for k, v in params.items() if not k.startswith("bias")}
        return Gradients(
            x=self._present_sequence(dx, batched),
            h0=self._present_state(dh0, None, batched),
            c0=None if dc0 is None else self._present_state(dc0, None, batched),
            params={name: params[name] for name in self._param_order},
        )

    def _backward(self, run, dy, dh_n):
        T, B, batched, lens, tapes, masks = run
        H, D, L = self._h_size, self.num_directions, self.num_layers
        g, dh, dc = self._backward_inputs(dy, dh_n, T, B, batched)
        dh0 = np.empty_like(dh)
        dc0 = np.empty_like(dc) if dc is not None else None
        params = {}
        for layer in reversed(range(L)):
            if layer < L - 1 and masks:
                g = g.copy()
                _kernels.multiply(g.reshape(-1), masks[layer].reshape(-1), g.reshape(-1))
            dx_layer = None
            # directions whose forward passes ran at once run their backward passes so too
            pair = D == 2 and tapes[layer * D].alone and tapes[layer * D + 1].alone
            results = []
            for d in range(D):
                k = layer * D + d
                dy_d = g if D == 1 else np.ascontiguousarray(g[:, :, d * H : (d + 1) * H])
                results.append(_layer.backward(
                    tapes[k], dy_d, dh[k], None if dc is None else dc[k],
                    later=_kernels.Deferred() if pair else None,
                ))  # fmt: skip
            if pair:
                _kernels.run_deferred(*(later for later, _ in results))
                results = [finish() for _, finish in results]
            for d, (dx, dh0_k, dc0_k, grads) in enumerate(results):
                k = layer * D + d
                dh0[k] = dh0_k
                if dc0 is not None:
                    dc0[k] = dc0_k
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                for name, value in grads.items():
                    if name.startswith("bias") and not self.bias:
                        continue
                    params[name + sfx] = value
                if dx_layer is None:
                    dx_layer = dx
                else:
                    _kernels.add_into(dx.reshape(-1), dx_layer.reshape(-1))
            g = dx_layer
        params = {name: params[name] for name in self._param_order}
        return Gradients(
            x=self._present_sequence(g, batched),
            h0=self._present_state(dh0, None, batched),
            c0=None if dc0 is None else self._present_state(dc0, None, batched),
            params=params,
        )


class RNN(RecurrentModel):
    """Elman RNN: h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), act tanh or relu."""

    _gate_count = 1

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, *, dtype=np.float32,
                 seed=None):  # fmt: skip
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype=dtype, seed=seed)  # fmt: skip

    @property
    def _cell(self) -> str:
        return "rnn_" + self.nonlinearity

    def _config(self) -> dict:
        return {**super()._config(), "nonlinearity": self.nonlinearity}


class GRU(RecurrentModel):
    """Gated recurrent unit, gates r, z, n; h_t = (1 - z) * n + z * h_{t-1}.

    reset_after=True is PyTorch's and cuDNN's form, n = tanh(W_in x + b_in + r * (W_hn h + b_hn));
    reset_after=False is Cho et al.'s, n = tanh(W_in x + b_in + W_hn (r * h) + b_hn). Both
    keep PyTorch's parameter layout.
    """

    _gate_count = 3

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, reset_after=True, dtype=np.float32,
                 seed=None):  # fmt: skip
        self.reset_after = bool(reset_after)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype=dtype, seed=seed)  # fmt: skip

    @property
    def _cell(self) -> str:
        return "gru" if self.reset_after else "gru_reset_before"

    def _config(self) -> dict:
        return {**super()._config(), "reset_after": self.reset_after}


class LSTM(RecurrentModel):
    """Long short-term memory, gates i, f, g, o; c_t = f*c_{t-1} + i*g, h_t = o*tanh(c_t)."""

    _gate_count = 4

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, *, dtype=np.float32,
                 seed=None):  # fmt: skip
        self.proj_size = _validate.positive_int("proj_size", proj_size, minimum=0)
        if self.proj_size and self.proj_size >= _validate.positive_int("hidden_size", hidden_size):
            raise ValueError(
                f"proj_size must be smaller than hidden_size, got proj_size={proj_size} "
                f"and hidden_size={hidden_size}"
            )
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype=dtype, seed=seed)  # fmt: skip

    @property
    def _cell(self) -> str:
        return "lstm"

    @property
    def _h_size(self) -> int:
        return self.proj_size or self.hidden_size

    def _config(self) -> dict:
        return {**super()._config(), "proj_size": self.proj_size}

    def _cell_shape(self, batch: int) -> tuple:
        return (self.num_layers * self.num_directions, batch, self.hidden_size)

    def _initial_state(self, hx, batch, batched):
        shape, cshape = self._state_shape(batch), self._cell_shape(batch)
        if hx is None:
            return _zeros(shape, self.dtype), _zeros(cshape, self.dtype)
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError(
                f"LSTM's initial state must be a pair (h0, c0), got {type(hx).__name__}"
            )
        return (
            _validate.state("h0", hx[0], shape, batched, self.dtype),
            _validate.state("c0", hx[1], cshape, batched, self.dtype),
        )

    def _present_state(self, h, c, batched):
        if c is None:  # a gradient of one state alone
            return h if batched else h[:, 0, :]
        return (h, c) if batched else (h[:, 0, :], c[:, 0, :])

    def _final_state_grads(self, dh_n, batch, batched):
        shape, cshape = self._state_shape(batch), self._cell_shape(batch)
        if dh_n is None:
            return np.zeros(shape, self.dtype), np.zeros(cshape, self.dtype)
        if isinstance(dh_n, (tuple, list)):
            if len(dh_n) != 2:
                raise TypeError("LSTM's dh_n must be an array or a pair (dh_n, dc_n)")
            dh, dc = dh_n
        else:
            dh, dc = dh_n, None
        dh = _validate.state("dh_n", dh, shape, batched, self.dtype)
        if dc is None:
            return dh, np.zeros(cshape, self.dtype)
        return dh, _validate.state("dc_n", dc, cshape, batched, self.dtype)
