"""Bidirectional layers on two threads: both directions at once (one thread each) against
one direction after the other (each on both threads), in one process.

Usage (from the repository root, the extension built in place)::

    PYTHONPATH=. python bench/pairs.py lstm 100,1,64,64
    PYTHONPATH=. python bench/pairs.py gru 100,16,128,128 --mode training --rounds 10

The two policies take turns in rounds (a pause and three untimed calls, then --seconds of
calls each, the order alternating), the same model and data throughout; "one after the
other" is fastrnn with its pairing rule (fastrnn._threads.pair_directions) switched off.
Printed: each policy's median over the rounds of its per-round median, and the median, min
and max of the per-round ratio pair / one after the other. The two give bit-identical
results (tests/test_invariants.py).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import fastrnn
import fastrnn._threads


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Directions at once vs one after the other.")
    p.add_argument("cell", choices=("rnn", "lstm", "gru"))
    p.add_argument("shape", type=lambda s: tuple(int(v) for v in s.split(",")), help="T,B,I,H")
    p.add_argument("--mode", choices=("inference", "training"), default="inference")
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--seconds", type=float, default=0.4, help="of calls per policy and round")
    args = p.parse_args(argv)
    T, B, I, H = args.shape  # noqa: E741
    fastrnn.set_num_threads(2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I), dtype=np.float32)
    dy = rng.standard_normal((T, B, 2 * H), dtype=np.float32)
    cls = {"rnn": fastrnn.RNN, "lstm": fastrnn.LSTM, "gru": fastrnn.GRU}[args.cell]
    model = cls(I, H, num_layers=args.layers, bidirectional=True, seed=0)
    if args.mode == "inference":
        model.freeze()

    def call():
        if args.mode == "inference":
            model(x)
        else:
            model.forward_train(x)[2](dy)

    rule = fastrnn._threads.pair_directions
    policies = {"one after the other": lambda *a: False, "pair": rule}
    medians = {name: [] for name in policies}
    try:
        for r in range(args.rounds):
            for name in list(policies)[:: 1 if r % 2 == 0 else -1]:
                fastrnn._threads.pair_directions = policies[name]
                time.sleep(0.05)
                for _ in range(3):
                    call()
                taken, end = [], time.perf_counter() + args.seconds
                while time.perf_counter() < end or len(taken) < 3:
                    start = time.perf_counter()
                    call()
                    taken.append(time.perf_counter() - start)
                medians[name].append(1e3 * statistics.median(taken))
    finally:
        fastrnn._threads.pair_directions = rule
    pairs = zip(medians["pair"], medians["one after the other"], strict=True)
    ratios = [p / s for p, s in pairs]
    print(f"{args.cell} {T},{B},{I},{H} {args.mode}, {args.layers} layer(s), 2 threads, ms:")
    for name, values in medians.items():
        print(f"  {name:20s} {statistics.median(values):.3f}")
    print(
        f"  pair / one after the other {statistics.median(ratios):.3f}"
        f" [{min(ratios):.3f}-{max(ratios):.3f}] over {args.rounds} rounds"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
