"""Compare fastrnn with PyTorch and ONNX Runtime on the same weights, in one process.

Usage, from the repository root with the extension built in place::

    PYTHONPATH=. python bench/compare.py                  # whole grid, 1 and 2 threads
    PYTHONPATH=. python bench/compare.py --quick          # two small shapes, 3 samples
    PYTHONPATH=. python bench/compare.py --cells lstm --modes training --threads 1,2 \\
        --shapes "100,64,256,256;50,64,512,512" --repeat 50 --json out.json

Options: --cells rnn,lstm,gru; --shapes all or "T,B,I,H;T,B,I,H"; --threads 1,2;
--modes inference,training; --repeat N (most timed calls per case and framework);
--max-time S (time cap per case and framework); --json PATH (every raw number);
--no-memory (skip the memory probes); --quick (two small shapes, --repeat 3, short caps).

Method
------
Models. Per cell and shape one float32 fastrnn model (seeded; rnn means tanh) is built;
the torch.nn module gets the same weights through state_dict, and ONNX Runtime runs that
module exported by torch.onnx.export at the fixed shape into a temporary directory (the
legacy TorchScript exporter, which emits ONNX's RNN/LSTM/GRU operators, else the dynamo
exporter). A peer that is not installed or fails to export is skipped, saying why. Each
peer's inference output is checked once against fastrnn's (max abs difference).

Modes. inference: fastrnn ``model(x)`` on a frozen copy of the model (``freeze()``: read-only
parameters, kept packed between calls, as an ORT session keeps its weights), and on the live
model too ("fastrnn_live", which packs the weights on every call: its parameters may change
in place; column "live ms"); torch under ``no_grad``; ORT ``session.run``.
training (fastrnn and torch): forward and backward of a fixed dy, input gradient included
(torch: backward of ``(y * dy).sum()`` with x requiring grad, gradients reset each step).

Threads. Per thread count n: threadpoolctl.threadpool_limits(n) (BLAS and OpenMP pools),
torch.set_num_threads(n), ORT intra_op_num_threads=n and inter_op_num_threads=1.

Timing. Per case, the frameworks (and the GEMM-only baseline) take turns, 3 rounds; each
turn: a 0.3 s pause (other frameworks' spinning threads go to sleep), a warm-up (the first
call, then calls for a tenth of the time cap), then a third of up to --repeat timed calls
(200 unless given) with gc off, the turn stopping at a third of the time cap once it has a
sample. Turns put a slow spell of a shared machine on every framework of the case instead
of one. Reported: the
median in ms, the ratio peer/fastrnn (> 1: fastrnn is faster) and fastrnn's GFLOP/s, counting
only GEMM flops (input projection 2*T*B*I*G*H plus recurrent 2*T*B*H*G*H for inference, 3x
that for a training step).

GEMM-only baseline. In the same run, the time the step's GEMMs alone take through the
BLAS that fastrnn calls (scipy's, via scipy.linalg.blas.sgemm into preallocated outputs):
one (T*B, I) x (I, G*H) product and T products (B, H) x (H, G*H) for inference; training
adds T products (B, G*H) x (G*H, H) and the whole-sequence dW_hh, dW_ih and dx products.
"fr/gemm" is fastrnn's time over that time: 1.0 means fastrnn runs at the per-step GEMM
rate. Each of the T calls pays about 1-2 us of Python overhead, so the baseline is
pessimistic (the fraction flattering) where one step's GEMM is that short (B = 1).

Memory. The peak memory of a training step, per framework, cell and shape, measured in a
fresh process (this script with --_memprobe) at 1 thread: the peak resident set over two
steps minus the resident set at a baseline taken after imports, weight and data
creation. On Linux the peak is VmHWM, reset to the current resident set at the baseline
through /proc/self/clear_refs; plain ru_maxrss cannot serve, because a child inherits the
peak of the (large) parent that started it as its own ru_maxrss, hiding everything below
it. Elsewhere the increase of ru_maxrss is the fallback. The step's first-call lazy
initialisation, if any, counts for both frameworks alike.

GEMM ceiling. After the cases (when training is measured and threadpoolctl can hold BLAS to
n threads), per thread count, the fastest of 5 calls of float32 C := A @ B through torch.mm
(oneDNN/MKL) and scipy's BLAS, at 2048^3 (the issue's "machine's limit") and at the
whole-sequence products of every training step with B <= 16 in the run (projection,
recurrent with the steps stacked, dh, dW_hh, dW_ih, dx). A training case short of its
"2x torch" target is "ruled out" when its GEMM flops alone, at the most generous rate this
run shows for its thread count (that best GEMM; fastrnn's own GFLOP/s in any case; n times
either on one thread, i.e. perfect scaling), take longer than the target allows: no gate
math, no memory traffic, no overhead counted. Where a rate above the best GEMM measured on
that many threads decided, the verdict also quotes the time at that GEMM. (The register-only
FMA rate, a higher bound still, is bench/compute_floor.c's, run by hand.)

Targets. Last, the issue's targets are checked on the measured cases and printed PASS,
FAIL, SKIP (not measured) or OUT (short only where the GEMM ceiling rules the target out)
with the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import io
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field

import _bench_common as common
import numpy as np
from scipy.linalg.blas import sgemm

import fastrnn

QUICK_SHAPES = ((100, 1, 64, 64), (100, 16, 128, 128))
WARMUP_FRACTION = 0.1  # of the time cap
AGREEMENT_ATOL = 1e-3  # a peer whose output differs more is reported
SCALING_SHAPES = ((100, 64, 256, 256), (50, 64, 512, 512))
PEERS = ("torch", "onnxruntime")


# -- command line ------------------------------------------------------------------------


def parse_shape(text: str) -> tuple:
    values = tuple(int(v) for v in text.split(","))
    if len(values) != 4 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"a shape is T,B,I,H with positive ints, got {text!r}")
    return values


def parse_shapes(text: str) -> tuple:
    if text == "all":
        return common.GRID
    shapes = tuple(parse_shape(part) for part in text.split(";") if part.strip())
    if not shapes:
        raise argparse.ArgumentTypeError('give "all" or at least one shape T,B,I,H')
    return shapes


def _choices(allowed):
    def parse(text):
        values = tuple(v.strip() for v in text.split(",") if v.strip())
        unknown = [v for v in values if v not in allowed]
        if unknown or not values:
            raise argparse.ArgumentTypeError(f"choose from {','.join(allowed)}, got {text!r}")
        return values

    return parse


def _thread_counts(text: str) -> tuple:
    values = tuple(int(v) for v in text.split(","))
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"thread counts must be >= 1, got {text!r}")
    return values


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Time fastrnn against torch and onnxruntime on the same weights.",
        epilog="See the module docstring for the method.",
    )
    p.add_argument(
        "--cells", type=_choices(common.CELLS), default=common.CELLS, help="rnn,lstm,gru (all)"
    )
    p.add_argument(
        "--shapes", type=parse_shapes, default=None, help='"all" (default) or "T,B,I,H;T,B,I,H"'
    )
    p.add_argument("--threads", type=_thread_counts, default=(1, 2), help="counts (1,2)")
    p.add_argument(
        "--modes",
        type=_choices(common.MODES),
        default=common.MODES,
        help="inference,training (both)",
    )
    p.add_argument("--repeat", type=int, default=None, help="timed calls per case (200)")
    p.add_argument("--max-time", type=float, default=None, help="seconds per case (2.0)")
    p.add_argument("--json", metavar="PATH", help="write every raw number here")
    p.add_argument("--no-memory", action="store_true", help="skip the memory probes")
    p.add_argument(
        "--quick",
        action="store_true",
        help="shapes (100,1,64,64) and (100,16,128,128), --repeat 3, short caps",
    )
    p.add_argument("--_memprobe", metavar="FRAMEWORK:CELL:T,B,I,H", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.shapes is None:
        args.shapes = QUICK_SHAPES if args.quick else common.GRID
    if args.repeat is None:
        args.repeat = 3 if args.quick else DEFAULT_REPEAT
    if args.max_time is None:
        args.max_time = 0.2 if args.quick else 2.0
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    return args


# -- optional peers ----------------------------------------------------------------------


def import_optional(name):
    """(module, None), or (None, why it cannot be used)."""
    try:
        return importlib.import_module(name), None
    except ImportError as exc:
        return None, f"{name} is not installed ({exc})"


def export_onnx(torch, module, cell, x, directory):
    """Export module at x's fixed shape: (path, exporter used, operator types).

    Tries the legacy TorchScript exporter first, then the dynamo one; raises RuntimeError
    with both reasons if neither works.
    """
    path = os.path.join(directory, f"{cell}-{'x'.join(map(str, x.shape))}.onnx")
    outputs = ["y", "h_n", "c_n"] if cell == "lstm" else ["y", "h_n"]
    errors = []
    for dynamo in (False, True):
        try:
            with (
                warnings.catch_warnings(),
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(io.StringIO()),
            ):
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    module,
                    (torch.from_numpy(x),),
                    path,
                    input_names=["x"],
                    output_names=outputs,
                    dynamo=dynamo,
                )
        except Exception as exc:  # noqa: BLE001 - any exporter failure means: skip ORT
            errors.append(
                f"{'dynamo' if dynamo else 'legacy'} exporter: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            )
            continue
        return path, "dynamo" if dynamo else "legacy", _onnx_op_types(path)
    raise RuntimeError("; ".join(errors))


def _onnx_op_types(path):
    try:
        import onnx
    except ImportError:
        return None
    return sorted({node.op_type for node in onnx.load(path).graph.node})


def ort_session(ort, path, threads):
    """An ORT CPU session with threads intra-op threads and one inter-op thread."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def ort_inference(session, x):
    """session.run of every output for input x."""
    return lambda: session.run(None, {"x": x})


# -- the GEMM-only baseline --------------------------------------------------------------


def _column_major_operand(m):
    """m^T as a column-major BLAS operand without copying: (array, trans flag)."""
    return (m.T, 0) if m.T.flags.f_contiguous else (m, 1)


def sgemm_into(a, b, out, beta=0.0):
    """out := a @ b + beta*out for float32 row-major views, in place, through scipy's BLAS.

    Row-major out = a b is column-major out^T = b^T a^T; a row-major array's transpose is
    a free column-major view, so nothing is copied.
    """
    b_op, trans_b = _column_major_operand(b)
    a_op, trans_a = _column_major_operand(a)
    sgemm(1.0, b_op, a_op, beta=beta, c=out.T, trans_a=trans_b, trans_b=trans_a, overwrite_c=1)


def gemm_step(cell, shape, mode, seed=2):
    """A callable doing the GEMMs of one step of `mode`, and nothing else (see docstring)."""
    T, B, I, H = shape  # noqa: E741
    GH = common.GATES[cell] * H
    rng = np.random.default_rng(seed)

    def rand(*dims):
        return rng.standard_normal(dims, dtype=np.float32)

    x, w_ih, w_hh, h = rand(T * B, I), rand(GH, I), rand(GH, H), rand(T, B, H)
    gates = np.zeros((T, B, GH), np.float32)

    def forward():
        sgemm_into(x, w_ih.T, gates.reshape(T * B, GH))  # input projection, all steps
        for t in range(T):
            sgemm_into(h[t], w_hh.T, gates[t], beta=1.0)  # recurrent product into step t

    if mode == "inference":
        return forward
    dgates, dh = rand(T, B, GH), np.empty((B, H), np.float32)
    dw_hh, dw_ih, dx = (np.empty(s, np.float32) for s in ((GH, H), (GH, I), (T * B, I)))
    dg = dgates.reshape(T * B, GH)

    def training():
        forward()
        for t in range(T - 1, -1, -1):
            sgemm_into(dgates[t], w_hh, dh)  # recurrent part of dh_{t-1}
        sgemm_into(dg.T, h.reshape(T * B, H), dw_hh)
        sgemm_into(dg.T, x, dw_ih)
        sgemm_into(dg, w_ih, dx)

    return training


# -- the machine's GEMM ceiling ---------------------------------------------------------

# The "machine's limit": float32 GEMM at 2048^3 (and a step's own products, below).
CEILING_SQUARE = (2048, 2048, 2048)
CEILING_CALLS = 5  # timed calls per library and product; the fastest counts
CEILING_BATCH = 16  # the training cases whose 2x-torch target the ceiling is checked for


def step_products(cell, shape) -> list:
    """The whole-sequence products (m, k, n) of one training step of one layer-direction:
    projection, recurrent (all steps stacked), dh, dW_hh, dW_ih, dx; their flops sum to
    common.gemm_flops(cell, shape, "training")."""
    T, B, I, H = shape  # noqa: E741
    TB, GH = T * B, common.GATES[cell] * H
    return [(TB, I, GH), (TB, H, GH), (TB, GH, H), (GH, TB, H), (GH, TB, I), (TB, GH, I)]


def _fastest_call(fn, calls: int) -> float:
    fn()  # warm: pools awake, pages touched
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def gemm_rates(products, torch, calls=CEILING_CALLS) -> list:
    """GFLOP/s of float32 C := A @ B for each (m, k, n), through torch.mm (oneDNN/MKL) when
    installed and scipy's BLAS, under the caller's thread limits; the fastest of `calls`."""
    rng = np.random.default_rng(3)
    rates = []
    for m, k, n in products:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        c = np.empty((m, n), np.float32)
        libs = {"scipy": lambda a=a, b=b, c=c: sgemm_into(a, b, c)}
        if torch is not None:
            ta, tb, tc = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)
            libs["torch"] = lambda ta=ta, tb=tb, tc=tc: torch.mm(ta, tb, out=tc)
        for lib, fn in libs.items():
            seconds = _fastest_call(fn, calls)
            rates.append(
                {"lib": lib, "product": [m, k, n], "gflops": 2 * m * k * n / seconds / 1e9}
            )
    return rates


def measure_ceiling(args, torch) -> list:
    """Per thread count: the GEMM rates at 2048^3 and at the products of every training
    case with B <= CEILING_BATCH in this run, and the best of them."""
    if "training" not in args.modes or not blas_threads_controllable():
        return []
    products = [CEILING_SQUARE]
    for cell in args.cells:
        for shape in args.shapes:
            if shape[1] <= CEILING_BATCH:
                products += [p for p in step_products(cell, shape) if p not in products]
    ceiling = []
    for threads in args.threads:
        with common.thread_limits(threads, torch):
            rates = gemm_rates(products, torch)
        best = max(rates, key=lambda r: r["gflops"])
        ceiling.append({"threads": threads, "rates": rates, "best": best})
        print(".", end="", file=sys.stderr, flush=True)
    return ceiling


def ceiling_gflops(ceiling, cases, threads):
    """The most generous GEMM rate this run shows for `threads` threads: the best measured
    GEMM, fastrnn's own whole-step GFLOP/s, and n times the best rate on one thread (perfect
    scaling); None without a ceiling measurement."""
    by_threads = {c["threads"]: c["best"]["gflops"] for c in ceiling}
    if threads not in by_threads:
        return None
    rates = [by_threads[threads]]
    rates += [c["fastrnn_gflops"] for c in cases if c["threads"] == threads]
    if 1 in by_threads:
        rates += [threads * by_threads[1]]
        rates += [threads * c["fastrnn_gflops"] for c in cases if c["threads"] == 1]
    return max(rates)


# -- timing ------------------------------------------------------------------------------


# Every framework here leaves worker threads spinning for a while after its calls (ONNX
# Runtime's intra-op pool, torch's OpenMP, OpenBLAS, fastrnn's pool for ~50 us). On a 2-core
# machine those spinners steal a core from whichever framework is timed next, so each
# measurement starts after a pause that lets them go to sleep.
SETTLE_SECONDS = 0.3


# The frameworks of a case take turns, this many rounds each: a slow spell of a shared
# machine (seconds long, on this project's VMs) then falls on every framework of the case
# rather than on whichever was being timed, and the ratios stay comparable.
ROUNDS = 3
# Up to this many timed calls per case and framework, within the time cap: 30 once, when a
# turn of a call of a few ms lasted a few tens of ms, and a short slow spell of the shared
# machine moved a median by a third (interquartile ranges up to 27% of the median at
# LSTM (100, 1, 256, 256)); the cap still bounds the slow cases.
DEFAULT_REPEAT = 200


def _warm(fn, seconds: float) -> None:
    """Call fn for `seconds` (at least once): its threads awake, its caches and the core's
    clock back up after the pause before a turn (a turn timed straight after the pause read
    fastrnn's 2-thread LSTM (100, 16, 128, 128) 2.6-3.7 ms, against 2.3-2.4 warm)."""
    until = time.perf_counter() + seconds
    fn()
    while time.perf_counter() < until:
        fn()


def time_calls(fns: dict, repeat: int, max_time: float) -> dict:
    """Seconds per call of each callable in `fns`, timed in turns.

    ROUNDS rounds; in each, every callable takes a turn: a pause (SETTLE_SECONDS), a warm-up
    (its first call, then calls for WARMUP_FRACTION of the time cap), then its share of up to
    `repeat` timed calls, repeat / ROUNDS a turn, stopping at max_time / ROUNDS seconds once
    the turn has a sample. Garbage collection is off while timing.
    """
    samples = {name: [] for name in fns}
    for r in range(ROUNDS):
        goal = -(-repeat * (r + 1) // ROUNDS)  # ceil: all `repeat` by the last round
        for name, fn in fns.items():
            time.sleep(SETTLE_SECONDS)
            _warm(fn, WARMUP_FRACTION * max_time)
            taken = samples[name]
            first = len(taken)
            gc_was_enabled = gc.isenabled()
            gc.disable()
            try:
                deadline = time.perf_counter() + max_time / ROUNDS
                while len(taken) < goal:
                    start = time.perf_counter()
                    fn()
                    end = time.perf_counter()
                    taken.append(end - start)
                    if end > deadline and len(taken) > first:
                        break
            finally:
                if gc_was_enabled:
                    gc.enable()
    return samples


def summarize(samples) -> dict:
    ms = [1e3 * s for s in samples]
    q1, _, q3 = statistics.quantiles(ms, n=4) if len(ms) > 1 else (ms[0], None, ms[0])
    return {"median_ms": statistics.median(ms), "n": len(ms), "iqr_ms": q3 - q1, "samples_ms": ms}


# -- one (cell, shape): models, peers, cases ---------------------------------------------


@dataclass
class Peers:
    """The optional peer modules and why any is unavailable."""

    torch: object = None
    ort: object = None
    why_not: dict = field(default_factory=dict)


def load_peers() -> Peers:
    torch, why_torch = import_optional("torch")
    ort, why_ort = import_optional("onnxruntime")
    if ort is not None and torch is None:
        ort, why_ort = None, "torch is needed to export the ONNX model"
    why = {k: v for k, v in (("torch", why_torch), ("onnxruntime", why_ort)) if v}
    return Peers(torch, ort, why)


def prepare_onnx(peers, module, cell, shape, x, directory, notes):
    """The exported model's path, or None with the reason added to notes."""
    if peers.ort is None:
        return None, None
    try:
        path, exporter, ops = export_onnx(peers.torch, module, cell, x, directory)
    except RuntimeError as exc:
        note = f"onnxruntime skipped for {cell} {common.shape_id(shape)}: export failed: {exc}"
        print(note, file=sys.stderr)
        notes.append(note)
        return None, {"error": str(exc)}
    return path, {"exporter": exporter, "op_types": ops}


def output_agreement(model, frozen, module, torch, session, x) -> dict:
    """Max abs difference of each peer's inference y (and the live model's) to fastrnn's."""
    y, _ = frozen(x)
    diffs = {"fastrnn_live": float(np.max(np.abs(model(x)[0] - y)))}
    if module is not None:
        with torch.no_grad():
            diffs["torch"] = float(np.max(np.abs(module(torch.from_numpy(x))[0].numpy() - y)))
    if session is not None:
        diffs["onnxruntime"] = float(np.max(np.abs(session.run(None, {"x": x})[0] - y)))
    return diffs


def case_steps(mode, model, frozen, module, torch, session, x, dy) -> dict:
    """The timed callables of one case, fastrnn first."""
    if mode == "inference":
        steps = {
            "fastrnn": common.fastrnn_inference(frozen, x),
            "fastrnn_live": common.fastrnn_inference(model, x),
        }
        if module is not None:
            steps["torch"] = common.torch_inference(torch, module, x)
        if session is not None:
            steps["onnxruntime"] = ort_inference(session, x)
        return steps
    steps = {"fastrnn": common.fastrnn_training(model, x, dy)}
    if module is not None:
        steps["torch"] = common.torch_training(torch, module, x, dy)
    return steps


def measure_case(cell, shape, mode, threads, steps, args) -> dict:
    """Time every framework and the GEMM-only baseline of one case; derive the ratios."""
    if blas_threads_controllable():
        steps = {**steps, "gemm": gemm_step(cell, shape, mode)}
    samples = time_calls(steps, args.repeat, args.max_time)
    # without threadpoolctl the baseline's BLAS would run on all its threads at any count
    gemm = summarize(samples.pop("gemm")) if "gemm" in samples else None
    times = {name: summarize(taken) for name, taken in samples.items()}
    fr_ms = times["fastrnn"]["median_ms"]
    flops = common.gemm_flops(cell, shape, mode)
    return {
        "cell": cell,
        "mode": mode,
        "shape": list(shape),
        "threads": threads,
        "frameworks": times,
        "ratios": {peer: t["median_ms"] / fr_ms for peer, t in times.items() if peer != "fastrnn"},
        "gemm_flops": flops,
        "fastrnn_gflops": flops / fr_ms * 1e-6,
        "gemm": gemm,
        "gemm_gflops": None if gemm is None else flops / gemm["median_ms"] * 1e-6,
        "gemm_fraction": None if gemm is None else fr_ms / gemm["median_ms"],
    }


def blas_threads_controllable() -> bool:
    """Whether threadpoolctl can limit BLAS's threads (the GEMM-only baseline needs it)."""
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        return False
    return True


def measure_cell_shape(cell, shape, args, peers, directory, notes):
    """Every (threads, mode) case of one cell and shape, and the peers' output agreement."""
    T, B, I, H = shape  # noqa: E741
    model = common.make_fastrnn(cell, I, H)
    frozen = common.make_fastrnn(cell, I, H).freeze()
    x, dy = common.make_data(shape, H)
    torch = peers.torch
    module = common.make_torch(torch, cell, model) if torch is not None else None
    onnx_path, export = prepare_onnx(peers, module, cell, shape, x, directory, notes)
    cases, agreement = [], None
    for threads in args.threads:
        with common.thread_limits(threads, torch):
            session = ort_session(peers.ort, onnx_path, threads) if onnx_path else None
            if agreement is None:
                agreement = output_agreement(model, frozen, module, torch, session, x)
            for mode in args.modes:
                steps = case_steps(mode, model, frozen, module, torch, session, x, dy)
                cases.append(measure_case(cell, shape, mode, threads, steps, args))
                print(".", end="", file=sys.stderr, flush=True)
    info = {"cell": cell, "shape": list(shape), "max_abs_diff": agreement, "onnx": export}
    return cases, info


# -- memory ------------------------------------------------------------------------------


def _proc_status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M).group(1))


def _ru_maxrss_kib() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes there, KiB on Linux


def start_peak_tracking():
    """(baseline KiB, method): reset the peak resident set where the OS allows it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set
        return _proc_status_kib("VmRSS"), "VmHWM"
    except OSError:
        return _ru_maxrss_kib(), "ru_maxrss"


def peak_kib(method: str) -> int:
    return _proc_status_kib("VmHWM") if method == "VmHWM" else _ru_maxrss_kib()


def memprobe(spec: str) -> dict:
    """Run in a fresh process: peak memory increase of two training steps (see docstring)."""
    framework, cell, shape_text = spec.split(":")
    shape = parse_shape(shape_text)
    T, B, I, H = shape  # noqa: E741
    torch = importlib.import_module("torch") if framework == "torch" else None
    with common.thread_limits(1, torch):
        model = common.make_fastrnn(cell, I, H)
        x, dy = common.make_data(shape, H)
        if framework == "torch":
            step = common.torch_training(torch, common.make_torch(torch, cell, model), x, dy)
        else:
            step = common.fastrnn_training(model, x, dy)
        baseline, method = start_peak_tracking()
        step()
        step()
        peak = peak_kib(method)
    return {
        "framework": framework,
        "cell": cell,
        "shape": list(shape),
        "method": method,
        "baseline_mb": baseline / 1024,
        "peak_increase_mb": (peak - baseline) / 1024,
    }


def run_memprobe(framework, cell, shape) -> dict:
    """memprobe in a fresh interpreter; an 'error' entry if it fails."""
    spec = f"{framework}:{cell}:{','.join(map(str, shape))}"
    cmd = [sys.executable, os.path.abspath(__file__), "--_memprobe", spec]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    except subprocess.TimeoutExpired:
        return {"framework": framework, "error": "timed out"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"framework": framework, "error": f"exit {proc.returncode}: {last}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_memory(args, peers, notes) -> list:
    """Training-step peak memory of fastrnn and torch for every cell and shape.

    A failed probe is left out of the comparison and added to notes.
    """
    frameworks = ["fastrnn"] + (["torch"] if peers.torch is not None else [])
    records = []
    for cell in args.cells:
        for shape in args.shapes:
            probes = {fw: run_memprobe(fw, cell, shape) for fw in frameworks}
            records.append({"cell": cell, "shape": list(shape), "probes": probes})
            for fw, probe in probes.items():
                if "error" in probe:
                    where = f"{fw} {cell} {common.shape_id(shape)}"
                    notes.append(f"WARNING: memory probe failed for {where}: {probe['error']}")
            print("m", end="", file=sys.stderr, flush=True)
    return records


def memory_mb(record, framework):
    probe = record["probes"].get(framework, {})
    return probe.get("peak_increase_mb")


# -- machine -----------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            match = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        return match.group(1).strip() if match else platform.processor()
    except OSError:
        return platform.processor()


def _simd_flags() -> list:
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(re.search(r"^flags\s*:\s*(.+)$", f.read(), re.M).group(1).split())
    except (OSError, AttributeError):
        return []
    return [flag for flag in ("sse4_2", "avx", "avx2", "fma", "avx512f") if flag in flags]


def _versions() -> dict:
    versions = {
        "fastrnn": fastrnn.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    for name in ("scipy", "torch", "onnxruntime", "onnx", "threadpoolctl"):
        module, _ = import_optional(name)
        versions[name] = getattr(module, "__version__", None) if module else None
    return versions


def machine_info() -> dict:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    info = {
        "cpu_model": _cpu_model(),
        "simd": _simd_flags(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "platform": platform.platform(),
        "versions": _versions(),
        "load_average_start": os.getloadavg(),
    }
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        info["threadpoolctl"] = None
    else:
        info["threadpoolctl"] = threadpool_info()
    return info


# -- targets -----------------------------------------------------------------------------


@dataclass
class Check:
    case: str
    detail: str
    passed: bool
    # short of the target, and shown out of reach by this run's measurements (the GEMM
    # ceiling): what the "which target the hardware rules out" asks
    ruled_out: bool = False


@dataclass
class Target:
    name: str
    checks: list
    needs: str  # what must be measured for the target to be checked

    @property
    def status(self) -> str:
        """PASS, SKIP, FAIL, or OUT: short only where the measurements rule the target out."""
        if not self.checks:
            return "SKIP"
        if all(c.passed for c in self.checks):
            return "PASS"
        return "OUT" if all(c.passed or c.ruled_out for c in self.checks) else "FAIL"


def _label(cell, shape, threads=None) -> str:
    text = f"{cell:<4} {common.shape_id(shape):<17}"
    return text if threads is None else f"{text} {threads} thr"


def _fr_ms(case) -> float:
    return case["frameworks"]["fastrnn"]["median_ms"]


def _peer_ms(case, peer):
    entry = case["frameworks"].get(peer)
    return entry["median_ms"] if entry else None


def target_inference_vs_best_peer(cases, batch_one: bool, factor: float) -> Target:
    checks = []
    for c in cases:
        if c["mode"] != "inference" or (c["shape"][1] == 1) != batch_one:
            continue
        peers = {p: _peer_ms(c, p) for p in PEERS if _peer_ms(c, p) is not None}
        if not peers:
            continue
        best = min(peers, key=peers.get)
        ratio = peers[best] / _fr_ms(c)
        checks.append(
            Check(
                _label(c["cell"], c["shape"], c["threads"]),
                f"best peer {best} {peers[best]:.3f} ms / fastrnn "
                f"{_fr_ms(c):.3f} ms = {ratio:.2f}x",
                ratio >= factor,
            )
        )
    where = "B=1" if batch_one else "B>1"
    return Target(
        f"inference {where}: >= {factor}x the faster of torch and onnxruntime",
        checks,
        f"inference cases at {where} with a peer",
    )


def _ceiling_verdict(case, allowed_ms, ceiling, cases):
    """(ruled out?, text) for a case short of a time target: whether the step's GEMM flops
    alone, at the most generous GEMM rate of this run (ceiling_gflops), take longer than
    the target allows; (False, "") without a ceiling measurement."""
    gflops = ceiling_gflops(ceiling, cases, case["threads"])
    if gflops is None:
        return False, ""
    bound_ms = case["gemm_flops"] / gflops * 1e-6
    out = bound_ms > allowed_ms
    text = (
        f"; {'ruled out' if out else 'not ruled out'}: its GEMM flops at the ceiling "
        f"({gflops:.0f} GFLOP/s) take {bound_ms:.3f} ms {'>' if out else '<='} the "
        f"{allowed_ms:.3f} ms allowed"
    )
    measured = {c["threads"]: c["best"]["gflops"] for c in ceiling}[case["threads"]]
    if measured < gflops:  # a scaled rate or fastrnn's own decided: the measured one too
        text += (
            f" (at the best GEMM measured on {case['threads']} thread(s), {measured:.0f} "
            f"GFLOP/s: {case['gemm_flops'] / measured * 1e-6:.3f} ms)"
        )
    return out, text


def target_training_vs_torch(
    cases, small_batch: bool, factor: float, ceiling: list | None = None
) -> Target:
    checks = []
    for c in cases:
        if c["mode"] != "training" or (c["shape"][1] <= 16) != small_batch:
            continue
        torch_ms = _peer_ms(c, "torch")
        if torch_ms is None:
            continue
        ratio = torch_ms / _fr_ms(c)
        passed, out, verdict = ratio >= factor, False, ""
        if not passed:
            out, verdict = _ceiling_verdict(c, torch_ms / factor, ceiling or [], cases)
        checks.append(
            Check(
                _label(c["cell"], c["shape"], c["threads"]),
                f"torch {torch_ms:.3f} ms / fastrnn {_fr_ms(c):.3f} ms = {ratio:.2f}x{verdict}",
                passed,
                out,
            )
        )
    where = "B<=16" if small_batch else "B>16"
    return Target(
        f"training {where}: >= {factor}x torch", checks, f"training cases at {where} with torch"
    )


def target_training_gemm_rate(cases, limit: float) -> Target:
    checks = []
    for c in cases:
        if c["mode"] != "training" or c["shape"][1] <= 16 or c["gemm"] is None:
            continue
        gemm_ms = c["gemm"]["median_ms"]
        checks.append(
            Check(
                _label(c["cell"], c["shape"], c["threads"]),
                f"fastrnn {_fr_ms(c):.3f} ms / GEMM-only {gemm_ms:.3f} ms = "
                f"{c['gemm_fraction']:.2f}",
                c["gemm_fraction"] <= limit,
            )
        )
    return Target(
        f"training B>16: fastrnn within {limit}x of the GEMM-only time",
        checks,
        "training cases with B>16 and the GEMM-only baseline (threadpoolctl)",
    )


def target_thread_scaling(cases, factor: float) -> Target:
    by_key = {(c["cell"], c["mode"], tuple(c["shape"]), c["threads"]): c for c in cases}
    checks = []
    for (cell, mode, shape, threads), one in sorted(by_key.items()):
        two = by_key.get((cell, mode, shape, 2))
        if threads != 1 or shape not in SCALING_SHAPES or two is None:
            continue
        speedup = _fr_ms(one) / _fr_ms(two)
        checks.append(
            Check(
                f"{_label(cell, shape)} {mode}",
                f"1 thread {_fr_ms(one):.3f} ms / 2 threads {_fr_ms(two):.3f} ms = {speedup:.2f}x",
                speedup >= factor,
            )
        )
    shapes = " and ".join(common.shape_id(s) for s in SCALING_SHAPES)
    return Target(
        f"2 threads >= {factor}x faster than 1 thread at {shapes}",
        checks,
        "--threads 1,2 and one of those shapes",
    )


def target_memory(memory) -> Target:
    checks = []
    for record in memory:
        fr, pt = memory_mb(record, "fastrnn"), memory_mb(record, "torch")
        if fr is None or pt is None:
            continue
        checks.append(
            Check(
                _label(record["cell"], record["shape"]),
                f"fastrnn {fr:.1f} MB, torch {pt:.1f} MB",
                fr <= pt,
            )
        )
    return Target("training peak memory <= torch's", checks, "memory probes with torch")


def check_targets(cases, memory, ceiling=None) -> list:
    return [
        target_inference_vs_best_peer(cases, batch_one=True, factor=1.25),
        target_inference_vs_best_peer(cases, batch_one=False, factor=1.0),
        target_training_vs_torch(cases, small_batch=True, factor=2.0, ceiling=ceiling),
        target_training_vs_torch(cases, small_batch=False, factor=1.0),
        target_training_gemm_rate(cases, limit=1.15),
        target_thread_scaling(cases, factor=1.6),
        target_memory(memory),
    ]


# -- report ------------------------------------------------------------------------------


def format_table(headers, rows, left=3) -> str:
    """Columns aligned: the first `left` (text) columns to the left, numbers to the right."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells):
        return "  ".join(
            str(v).ljust(w) if i < left else str(v).rjust(w)
            for i, (v, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def _num(value, digits=2) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


def _ms(value) -> str:
    return "-" if value is None else (f"{value:.3f}" if value < 10 else _num(value, 1))


def table_rows(cases, memory) -> list:
    mem = {(r["cell"], tuple(r["shape"])): r for r in memory}
    rows = []
    for c in cases:
        record = mem.get((c["cell"], tuple(c["shape"]))) if c["mode"] == "training" else None
        rows.append(
            [
                c["cell"],
                c["mode"],
                common.shape_id(c["shape"]),
                c["threads"],
                _ms(_fr_ms(c)),
                _ms(_peer_ms(c, "fastrnn_live")),
                _ms(_peer_ms(c, "torch")),
                _ms(_peer_ms(c, "onnxruntime")),
                _num(c["ratios"].get("torch")),
                _num(c["ratios"].get("onnxruntime")),
                _num(c["fastrnn_gflops"], 1),
                _ms(None if c["gemm"] is None else c["gemm"]["median_ms"]),
                _num(c["gemm_fraction"]),
                c["frameworks"]["fastrnn"]["n"],
                _num(memory_mb(record, "fastrnn") if record else None, 1),
                _num(memory_mb(record, "torch") if record else None, 1),
            ]
        )
    return rows


TABLE_HEADERS = [
    "cell",
    "mode",
    "shape",
    "thr",
    "fastrnn ms",
    "live ms",
    "torch ms",
    "ort ms",
    "torch/fr",
    "ort/fr",
    "fr GFLOP/s",
    "gemm ms",
    "fr/gemm",
    "n",
    "mem fr MB",
    "mem torch MB",
]


def _loads(loads) -> str:
    return " ".join(f"{x:.2f}" for x in loads)


def print_header(machine, peers, notes):
    v = machine["versions"]
    print(
        f"fastrnn {v['fastrnn']} | torch {v['torch']} | onnxruntime {v['onnxruntime']} | "
        f"numpy {v['numpy']} | scipy {v['scipy']}"
    )
    print(
        f"{machine['cpu_model']} ({machine['usable_cpus']} usable cpus, "
        f"{' '.join(machine['simd'])}); load average (1, 5, 15 min) "
        f"{_loads(machine['load_average_start'])} at start, "
        f"{_loads(machine['load_average_end'])} at end"
    )
    for peer, why in peers.why_not.items():
        print(f"{peer} skipped: {why}")
    for note in notes:
        print(note)


def print_agreement(agreement):
    worst = {}
    for info in agreement:
        for peer, diff in (info["max_abs_diff"] or {}).items():
            worst[peer] = max(worst.get(peer, 0.0), diff)
            if diff > AGREEMENT_ATOL:
                print(
                    f"WARNING: {peer} output differs from fastrnn's by {diff:.2e} for "
                    f"{info['cell']} {common.shape_id(info['shape'])}"
                )
    if worst:
        text = ", ".join(f"{peer} {diff:.1e}" for peer, diff in worst.items())
        print(f"inference outputs vs fastrnn, max abs difference: {text}")


def print_targets(targets):
    print("\ntargets")
    for target in targets:
        passed = sum(c.passed for c in target.checks)
        count = f"({passed}/{len(target.checks)})" if target.checks else f"(needs {target.needs})"
        print(f"  {target.status:<4}  {target.name}  {count}")
        for check in target.checks:
            mark = "ok  " if check.passed else "out " if check.ruled_out else "FAIL"
            print(f"          {mark}  {check.case}  {check.detail}")
    print(
        "  (OUT, out: short of the target where the step's GEMM flops alone, at the GEMM "
        "ceiling below, take longer than the target allows)"
    )


def print_ceiling(ceiling):
    if not ceiling:
        return
    print(
        "\nGEMM ceiling: the fastest float32 GEMM this run measured (torch.mm and scipy's "
        f"BLAS, at {'x'.join(map(str, CEILING_SQUARE))} and at the whole-sequence products "
        f"of every training step with B <= {CEILING_BATCH}); the targets use the most "
        "generous of it, fastrnn's own GFLOP/s and n x the one-thread figures"
    )
    for entry in ceiling:
        best = entry["best"]
        shape = "x".join(map(str, best["product"]))
        square = [r for r in entry["rates"] if tuple(r["product"]) == CEILING_SQUARE]
        at_square = ", ".join(f"{r['lib']} {r['gflops']:.0f}" for r in square)
        print(
            f"  {entry['threads']} thr: best {best['gflops']:.0f} GFLOP/s ({best['lib']}, "
            f"{shape}); at {'x'.join(map(str, CEILING_SQUARE))}: {at_square}"
        )


def write_json(path, **sections):
    with open(path, "w") as f:
        json.dump(sections, f, indent=1, default=str)


# -- main --------------------------------------------------------------------------------


def run(args) -> dict:
    """Measure everything the arguments ask for; return the raw results."""
    peers = load_peers()
    machine = machine_info()
    notes, cases, agreement = [], [], []
    if not blas_threads_controllable():
        notes.append(
            "WARNING: threadpoolctl is not installed (the bench extra has it): BLAS's threads "
            "cannot be limited, so the GEMM-only baseline is skipped"
        )
    with tempfile.TemporaryDirectory(prefix="fastrnn-compare-") as directory:
        for cell in args.cells:
            for shape in args.shapes:
                shape_cases, info = measure_cell_shape(cell, shape, args, peers, directory, notes)
                cases += shape_cases
                agreement.append(info)
    memory = [] if args.no_memory else measure_memory(args, peers, notes)
    ceiling = measure_ceiling(args, peers.torch)
    print(file=sys.stderr)
    machine["load_average_end"] = os.getloadavg()
    return {
        "machine": machine,
        "peers": peers,
        "notes": notes,
        "cases": cases,
        "agreement": agreement,
        "memory": memory,
        "ceiling": ceiling,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if args._memprobe:
        print(json.dumps(memprobe(args._memprobe)))
        return 0
    results = run(args)
    targets = check_targets(results["cases"], results["memory"], results["ceiling"])
    print_header(results["machine"], results["peers"], results["notes"])
    print_agreement(results["agreement"])
    print()
    print(format_table(TABLE_HEADERS, table_rows(results["cases"], results["memory"])))
    print(
        "\nratios peer/fastrnn: > 1 means fastrnn is faster; fr/gemm: fastrnn time over the "
        "GEMM-only time; memory: training-step peak increase, 1 thread"
    )
    print_targets(targets)
    print_ceiling(results["ceiling"])
    if args.json:
        config = {k: v for k, v in vars(args).items() if not k.startswith("_")}
        write_json(
            args.json,
            config=config,
            machine=results["machine"],
            skipped_peers=results["peers"].why_not,
            notes=results["notes"],
            agreement=results["agreement"],
            cases=results["cases"],
            memory=results["memory"],
            ceiling=results["ceiling"],
            targets=[{**asdict(t), "status": t.status} for t in targets],
        )
        print(f"\nraw numbers written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
