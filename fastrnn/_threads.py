"""How many threads fastrnn's time loops use, and how a batch is split among them.

The rows of a batch never interact, so each thread runs the whole time loop of a contiguous
range of rows, with no barrier between steps; ranges are balanced by their real tokens.
Results are bit-identical for any thread count. BLAS (the whole-sequence products) keeps its
own thread setting: control it with threadpoolctl.
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


def row_bounds(lens_sorted: np.ndarray, macs_per_token: int) -> np.ndarray:
    """Row ranges, one a thread: bounds (threads + 1,) over rows sorted longest first."""
    B = lens_sorted.shape[0]
    tokens = np.cumsum(lens_sorted)
    total = int(tokens[-1]) if B else 0
    nt = min(_num_threads, B)
    if nt <= 1 or total * macs_per_token < _MIN_PARALLEL_WORK:
        return np.array([0, B], dtype=np.int64)
    cuts = np.searchsorted(tokens, total * np.arange(1, nt) / nt, side="left") + 1
    bounds = np.concatenate(([0], np.clip(cuts, 1, B - 1), [B])).astype(np.int64)
    return np.unique(bounds)
