"""How many threads fastrnn's time loops use, and how a call's work is split among them.

The rows of a batch never interact, so each thread runs the whole time loop of a contiguous
range of rows, with no barrier between steps; ranges are balanced by their real tokens. A
batch of a row or two a thread, or one whose W_hh overflows a core's L2, instead shares
each step by hidden units, with a barrier once a step (`unit_threads`); a time loop left on
one thread gets a second one projecting its input ahead (`projection_helper`). Results are
bit-identical for any thread count. Every
product runs on these threads; BLAS (only an LSTM's W_hr, through scipy) keeps its own
thread setting: control it with threadpoolctl.
"""

from __future__ import annotations

import os

import numpy as np

from . import _validate

# Below this many multiply-adds in a call's time loop, starting a second thread costs more
# than it saves (a few microseconds).
_MIN_PARALLEL_WORK = 2_000_000


def _available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


_num_threads = _available_cpus()


def set_num_threads(n: int) -> None:
    """Use up to n threads for the time loops (default: the CPUs this process may use)."""
    global _num_threads
    _num_threads = _validate.positive_int("n", n)


def get_num_threads() -> int:
    return _num_threads


# A batch-1 step shared by hidden units meets at a barrier once a step (~0.15-0.2 us between
# the 2 cores here, plus moving the new state across). Measured per step, 1 -> 2 threads,
# alone on the machine: RNN H=64 (4K multiply-adds) 0.30 -> 0.38 us, GRU H=64 (12K)
# 0.89 -> 0.94, RNN H=128 (16K) 1.01 -> 0.68, LSTM H=64 (16K) 1.34 -> 0.97, LSTM H=128 (64K)
# 4.6 -> 2.4, LSTM H=256 (256K) 19.2 -> 10.8. A spinning barrier is at the mercy of whatever
# else runs on the other core, though: in bench/compare.py's process (torch and ONNX Runtime
# loaded, their pools idle) LSTM (100, 1, 64, 64) took 0.29 ms on 2 threads, 0.13 on one.
# So only steps long enough to absorb a late partner are shared.
_MIN_UNIT_STEP_WORK = 65_536

_one_range: dict[int, np.ndarray] = {}


# A batch of a few rows splits by units too (every row running every step): with row
# ranges, each thread streams all of W_hh for one or two rows. Measured (one process, 2
# threads, units / row ranges): batch 2 LSTM H = 128-256 0.71 inference and 0.82-0.86
# training, GRU H = 128-256 0.75-0.88 / 0.82, RNN H = 512 0.78; batch 3 inference a tie
# (0.95-1.03), training 0.83-0.86; batch 4 LSTM 1.07 inference, 0.95-0.97 training, batch
# 5-8 1.06-1.07 inference: row ranges from two rows a thread.
#
# But only a step of some size: each thread's share of a gate is then a few vectors (a tile
# of one or two), and the threads write neighbouring columns of every gate and row. Measured
# later (2-core Xeon, separate processes, LSTM, T = 100, inference units / rows, ms): batch
# 2 H = 100 (80K multiply-adds a step) 0.37 / 0.27 and 1 thread 0.30; batch 3 H = 75 (68K)
# 0.37 / 0.21; batch 3 H = 96-112 (110-150K) 0.32-0.42 / 0.28-0.38; batch 2 H = 128 (131K)
# 0.27-0.33 / 0.30-0.32, training 0.91 / 0.87; batch 2 H = 160 (205K) 0.52 / 0.54; H = 200
# (320K) 0.97 / 0.95; batch 3 H = 256 (786K) 1.1-1.2 / 1.6. So more than one row shares its
# steps by units from this many multiply-adds a step (or when W_hh overflows L2, below).
_MIN_UNIT_STEP_WORK_ROWS = 262_144


# Any batch splits by units when W_hh does not fit a core's L2: row ranges then stream all
# of it from L3 on every thread, every step, where units stream half each. Measured on a
# 2-core Xeon (2 MiB L2; one process, 2 threads, units / row ranges, inference): LSTM
# H = 512 (4 MiB) batch 64 0.93, batch 16 0.83, training 0.99; GRU H = 512 (3 MiB) batch 64
# 0.95; with W_hh in L2 units lost (LSTM H = 256, 1 MiB: batch 8-64 1.06-1.08; H = 128,
# batch 16, 1.19).
def _l2_bytes() -> int:
    """A core's L2 cache in bytes (Linux sysfs), or 1 MiB where it cannot be read."""
    root = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in sorted(os.listdir(root)):
            if not entry.startswith("index"):  # e.g. uevent
                continue
            with open(os.path.join(root, entry, "level")) as f:
                level = f.read().strip()
            with open(os.path.join(root, entry, "type")) as f:
                kind = f.read().strip()
            if level != "2" or kind not in ("Unified", "Data"):
                continue
            with open(os.path.join(root, entry, "size")) as f:
                size = f.read().strip().upper()
            scale = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:], 1)
            return int(size.rstrip("KM")) * scale
    except (OSError, ValueError):
        pass
    return 1 << 20


_L2_BYTES = _l2_bytes()


# A short call splits by units when its weights (W_ih and W_hh packed) are more than half a
# core's L2: each thread then packs or reads only its half of both, and calls that come
# back to them (a frozen model, a stream) find each half in its own core's L2, where one
# thread streamed all of them from L3 on every call. Measured on the 2-core Xeon (2 MiB L2;
# frozen float32 models, repeated calls, 2 threads, units / the rules below, I = H unless
# given): one step (T = 1) at batch 1, LSTM H = 256 0.20, GRU H = 256 0.42, RNN H = 512
# 0.23, LSTM H = 192 (I = 128, 0.94 MiB) 0.89, RNN H = 384 (I = 256) 0.89; LSTM H = 256 at
# T x B = 1 x 4 0.35, 1 x 8 0.53, 1 x 16 0.60, 1 x 32 0.77, 1 x 64 0.89, 2 x 8 0.60,
# 4 x 8 0.79, 8 x 8 0.95, 16 x 4 0.90, 2 x 32 0.95; GRU H = 256 1 x 16 0.87, 16 x 4 0.88,
# 4 x 16 0.99; RNN H = 512 1 x 4 0.33, 8 x 8 0.89. Level where the weights fit one L2
# (LSTM and GRU H = 128, RNN H = 256: 0.98-1.06) or fit no two (GRU H = 512, 6 MiB: 1.00).
_MAX_SPREAD_TOKENS = 64  # steps x rows of the calls measured


def unit_threads(
    batch: int,
    steps: int,
    macs_per_step: int,
    full: bool = True,
    weight_bytes: int = 0,
    input_weight_bytes: int = 0,
) -> int:
    """Threads that share each step of a call by hidden units (1: no split); full: every row
    runs every step (more than one row shares its steps only then); weight_bytes: W_hh's,
    input_weight_bytes: W_ih's."""
    if (
        batch < 1
        or (batch > 1 and not full)
        or _num_threads <= 1
        or macs_per_step < _MIN_UNIT_STEP_WORK
    ):
        return 1
    if 2 * (weight_bytes + input_weight_bytes) > _L2_BYTES and steps * batch <= _MAX_SPREAD_TOKENS:
        return _num_threads  # a short call over weights that one L2 does not hold
    fits = weight_bytes <= _L2_BYTES
    if (
        (batch >= 2 * _num_threads and fits)
        or (batch > 1 and fits and macs_per_step < _MIN_UNIT_STEP_WORK_ROWS)
        or steps * macs_per_step < _MIN_PARALLEL_WORK // 4
    ):
        return 1
    return _num_threads


def wide_projection(input_weight_bytes: int) -> bool:
    """Whether the input projection runs ahead of the time loop in the wide ring (_kernels:
    PROJECTION_CHUNK_WIDE): when W_ih^T is at least half of a core's L2, a ring of one or
    two steps streamed it back from L3 for every chunk."""
    return 2 * input_weight_bytes >= _L2_BYTES


# A time loop left on one thread (see unit_threads; a batch too small for row ranges) can
# have a second thread project its input a few steps ahead (the kernel's "pipe"). Below this
# many multiply-adds of projection the helper's wake-up is not worth it.
_MIN_HELPER_WORK = 1_000_000


def projection_helper(
    bounds: np.ndarray, unit_threads: int, projection_macs: int, packed_weights: int = 0
) -> bool:
    """Whether a second thread projects the input ahead of a one-range time loop;
    packed_weights as for row_bounds (the helper reads the packs from the other core too:
    LSTM H = 128 batch 16 T = 2 on live weights ran 1.21x one thread's time with it)."""
    least = max(_MIN_HELPER_WORK, _MIN_WORK_PER_PACKED_WEIGHT * packed_weights)
    return (
        _num_threads > 1
        and unit_threads <= 1
        and bounds.shape[0] == 2
        and projection_macs >= least
    )


# The two directions of a bidirectional layer are independent: on two threads, each can run
# alone on one (the pool does not nest, so a direction then gets one thread) rather than one
# after the other on both. Measured (in-process A/B, 2 threads, pair / one after the other):
# batch 1, where the other way splits every step by units and meets at a barrier, 0.81-0.89
# inference and 0.73-0.98 training (LSTM and GRU H = 32-256, RNN H = 64); batch 4 (H = 64),
# where row ranges of 2 rows each stream all of W_hh, 0.51 / 0.55; batch 16-64 (H = 128-512)
# 0.95-1.04, a tie. With more threads than two, a batch that fills them keeps its row ranges.
def pair_directions(batch: int, steps: int, macs_per_token: int) -> bool:
    """Whether the two directions of a bidirectional layer run at once, one thread each
    (instead of one after the other, each on every thread)."""
    return (
        _num_threads >= 2
        and (_num_threads == 2 or batch < _num_threads)
        and steps * batch * macs_per_token >= _MIN_PARALLEL_WORK // 4
    )


def product_threads(macs: int) -> int:
    """Threads for a call's whole-sequence weight-gradient products (split by columns)."""
    return 1 if macs < _MIN_PARALLEL_WORK else _num_threads


def one_range(B: int) -> np.ndarray:
    """bounds of one range holding all B rows (read-only, shared)."""
    one = _one_range.get(B)
    if one is None:
        one = np.array([0, B], dtype=np.int64)
        one.flags.writeable = False
        _one_range[B] = one
    return one


# An inference call that packs its weights (a live model's: they may have changed since the
# last call) writes the packs from every thread, and each thread then reads the others'
# share from their cores (_kernels run_packs). Short calls lost more to that than the second
# thread saved. Measured (2-core Xeon, inference on live weights, 2 threads / 1, medians of
# 5 alternations; multiply-adds of the call per packed weight): LSTM H = 128 batch 16
# T = 1, 2, 4 (16, 32, 64): 1.35, 1.18, 0.93; GRU H = 128 batch 16 T = 2, 4 (32, 64): 1.34,
# 0.99; RNN H = 256 batch 32 T = 1, 2 (32, 64): 1.12, 0.87; LSTM H = 64 batch 64 T = 1, 2
# (64, 128): 0.98, 0.83. On frozen weights (no packing) 2 threads won from the first step.
_MIN_WORK_PER_PACKED_WEIGHT = 64


def row_bounds(
    lengths: np.ndarray,
    order: np.ndarray,
    steps: int,
    macs_per_token: int,
    packed_weights: int = 0,
):
    """Row ranges, one a thread: bounds (threads + 1,) over rows sorted longest first.
    packed_weights: elements of the weights an inference call packs (0 if none)."""
    B = order.shape[0]
    nt = min(_num_threads, B)
    least = max(_MIN_PARALLEL_WORK, _MIN_WORK_PER_PACKED_WEIGHT * packed_weights)
    if nt <= 1 or steps * B * macs_per_token < least:
        return one_range(B)
    tokens = np.cumsum(lengths[order])
    total = int(tokens[-1])
    if total * macs_per_token < least:
        return np.array([0, B], dtype=np.int64)
    cuts = np.searchsorted(tokens, total * np.arange(1, nt) / nt, side="left") + 1
    bounds = np.concatenate(([0], np.clip(cuts, 1, B - 1), [B])).astype(np.int64)
    return np.unique(bounds)
