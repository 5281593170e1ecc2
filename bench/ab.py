"""Before/after timing of two builds of fastrnn in one process, alternated in rounds.

Usage (each directory holds a built ``fastrnn`` package, e.g. two ``git worktree``s with
``python setup.py build_ext --inplace`` run in each)::

    python bench/ab.py OLD_DIR NEW_DIR lstm 100,1,64,64 --threads 1 --mode inference
    python bench/ab.py OLD_DIR NEW_DIR gru 100,1,256,256 --mode training --rounds 12
    python bench/ab.py DIR DIR lstm 100,1,64,64 --freeze new     # live against frozen

Why one process: on this project's VM the same build runs 10-35% apart in two processes
(which vCPU a process lands on, and when), more than most changes measured. Here both
builds share the process and take turns: per round each runs --seconds of calls (after a
short pause and three untimed calls), the order alternating from round to round. Printed:
each build's median over the rounds of its per-round median, and the median, min and max of
the per-round ratio new/old. Two copies of the library mean two thread pools: use it for
one-thread comparisons; 2-thread figures from it read differently from separate processes.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import sys
import time

import numpy as np


def load(directory: str, alias: str):
    """The fastrnn package under `directory`, its modules renamed to `alias`.*."""
    sys.path.insert(0, directory)
    try:
        for name in [m for m in sys.modules if m == "fastrnn" or m.startswith("fastrnn.")]:
            del sys.modules[name]
        package = importlib.import_module("fastrnn")
        importlib.import_module("fastrnn._stream")  # imported lazily by model.stream
        for name in [m for m in sys.modules if m == "fastrnn" or m.startswith("fastrnn.")]:
            sys.modules[alias + name[len("fastrnn") :]] = sys.modules.pop(name)
    finally:
        sys.path.remove(directory)
    return package


def step(fr, args, x, dy, frozen: bool):
    """One timed call of the model the arguments describe."""
    fr.set_num_threads(args.threads)
    T, B, I, H = args.shape  # noqa: E741
    model = {"rnn": fr.RNN, "lstm": fr.LSTM, "gru": fr.GRU}[args.cell](I, H, seed=0)
    if frozen:
        model.freeze()
    if args.mode == "inference":
        return lambda: model(x)

    def train():
        _, _, backward = model.forward_train(x)
        backward(dy)

    return train


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Time two fastrnn builds in one process.")
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("cell", choices=("rnn", "lstm", "gru"))
    p.add_argument("shape", type=lambda s: tuple(int(v) for v in s.split(",")), help="T,B,I,H")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--mode", choices=("inference", "training"), default="inference")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--seconds", type=float, default=0.4, help="of calls per build and round")
    p.add_argument("--freeze", choices=("none", "old", "new", "both"), default="none")
    args = p.parse_args(argv)
    T, B, I, H = args.shape  # noqa: E741
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I), dtype=np.float32)
    dy = rng.standard_normal((T, B, H), dtype=np.float32)
    calls = {
        name: step(load(path, f"fastrnn_{name}"), args, x, dy, args.freeze in (name, "both"))
        for name, path in (("old", args.old), ("new", args.new))
    }
    medians = {name: [] for name in calls}
    gc.disable()
    for r in range(args.rounds):
        for name in list(calls) if r % 2 == 0 else list(calls)[::-1]:
            call = calls[name]
            time.sleep(0.1)
            for _ in range(3):
                call()
            taken, end = [], time.perf_counter() + args.seconds
            while time.perf_counter() < end:
                start = time.perf_counter()
                call()
                taken.append(time.perf_counter() - start)
            medians[name].append(float(np.median(taken)) * 1e3)
    old, new = np.array(medians["old"]), np.array(medians["new"])
    ratio = new / old
    print(
        f"{args.cell} {T},{B},{I},{H} {args.threads} thread(s) {args.mode}: "
        f"old {np.median(old):.4f} ms, new {np.median(new):.4f} ms; new/old per round "
        f"{np.median(ratio):.3f} [{ratio.min():.3f}-{ratio.max():.3f}]"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
