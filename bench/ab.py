"""Before/after timing of two builds of fastrnn, alternated in rounds.

Usage (each directory holds a built ``fastrnn`` package, e.g. two ``git worktree``s with
``python setup.py build_ext --inplace`` run in each, or a copy of ``fastrnn/`` with its
``.so`` taken before a rebuild)::

    python bench/ab.py OLD_DIR NEW_DIR lstm 100,1,64,64 --threads 1 --mode inference
    python bench/ab.py OLD_DIR NEW_DIR gru 100,1,256,256 --mode training --rounds 12
    python bench/ab.py DIR DIR lstm 100,1,64,64 --freeze new     # live against frozen
    python bench/ab.py OLD_DIR NEW_DIR lstm 100,16,128,128 --threads 2 --processes

Per round each build runs --seconds of calls (after a short pause and three untimed calls),
the order alternating from round to round. Printed: each build's median over the rounds of
its per-round median, and the median, min and max of the per-round ratio new/old.

One process (the default): on this project's VM the same build runs 10-35% apart in two
processes (which vCPU a process lands on, and when), more than most changes measured, so
both builds share the process and take turns. But two copies of the library mean two
thread pools, whose idle workers wait beside the other build's calls: 2-thread figures read
differently from separate processes. ``--processes``: every turn runs in a fresh process
(this script with ``--_one``; it also runs --seconds / 2 of untimed calls first, the
process being cold), one pool each, as users run it: the way to compare thread counts above
one. Rounds then cost a start-up each, so take more of them.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import subprocess
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
        found = os.path.dirname(os.path.dirname(os.path.abspath(package.__file__)))
        if os.path.realpath(found) != os.path.realpath(directory):
            # else another fastrnn on sys.path (an installed one) stands in unnoticed
            raise ValueError(f"no fastrnn package in {directory!r} (found {found!r})")
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


def median_ms(call, seconds: float, warm_seconds: float = 0.0) -> float:
    """Median of one turn: a pause, three untimed calls (and warm_seconds of them), then
    `seconds` of timed calls."""
    time.sleep(0.1)
    for _ in range(3):
        call()
    end = time.perf_counter() + warm_seconds
    while time.perf_counter() < end:
        call()
    taken, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        call()
        taken.append(time.perf_counter() - start)
    return float(np.median(taken)) * 1e3


def in_process_turns(args, x, dy):
    """{"old": call, "new": call}: both builds loaded into this process."""
    return {
        name: step(load(path, f"fastrnn_{name}"), args, x, dy, args.freeze in (name, "both"))
        for name, path in (("old", args.old), ("new", args.new))
    }


def process_turn(argv, name: str) -> float:
    """One turn of build `name` in a fresh interpreter (--_one): its median in ms."""
    command = [sys.executable, os.path.abspath(__file__), *argv, "--_one", name]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{name} build's process failed:\n{done.stderr}")
    return float(done.stdout.split()[-1])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description="Time two fastrnn builds, alternated in rounds.")
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("cell", choices=("rnn", "lstm", "gru"))
    p.add_argument("shape", type=lambda s: tuple(int(v) for v in s.split(",")), help="T,B,I,H")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--mode", choices=("inference", "training"), default="inference")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--seconds", type=float, default=0.4, help="of calls per build and round")
    p.add_argument("--freeze", choices=("none", "old", "new", "both"), default="none")
    p.add_argument(
        "--processes", action="store_true", help="each turn in a fresh process (2+ threads)"
    )
    p.add_argument("--_one", choices=("old", "new"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    T, B, I, H = args.shape  # noqa: E741
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I), dtype=np.float32)
    dy = rng.standard_normal((T, B, H), dtype=np.float32)
    gc.disable()
    if args._one:  # a --processes turn: this build alone
        path = args.old if args._one == "old" else args.new
        call = step(load(path, "fastrnn"), args, x, dy, args.freeze in (args._one, "both"))
        print(median_ms(call, args.seconds, warm_seconds=args.seconds / 2))
        return 0
    calls = None if args.processes else in_process_turns(args, x, dy)
    medians = {"old": [], "new": []}
    for r in range(args.rounds):
        for name in ("old", "new") if r % 2 == 0 else ("new", "old"):
            medians[name].append(
                process_turn(argv, name) if calls is None else median_ms(calls[name], args.seconds)
            )
    old, new = np.array(medians["old"]), np.array(medians["new"])
    ratio = new / old
    print(
        f"{args.cell} {T},{B},{I},{H} {args.threads} thread(s) {args.mode}"
        f"{' (a process a turn)' if args.processes else ''}: "
        f"old {np.median(old):.4f} ms, new {np.median(new):.4f} ms; new/old per round "
        f"{np.median(ratio):.3f} [{ratio.min():.3f}-{ratio.max():.3f}]"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
