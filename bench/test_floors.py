"""The C floor benchmarks build and count what the harness counts (one quick round: their
rates are for a quiet machine, by hand)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import _bench_common as common
import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPILER = shutil.which("gcc")
# -O0: these tests check what the programs count, not their rates, and an -O3 build of
# csrc/matmul.c (every tile shape, cloned for three targets) takes two minutes
FLAGS = ["-O0", "-fno-trapping-math", "-std=gnu11", "-pthread", "-I", str(ROOT / "csrc")]
# cell, T,B,I,H, M multiply-adds, then inference and training: 1 thread / 2 threads (tile)
ROW = re.compile(
    r"^(rnn|lstm|gru)\s+(\d+),(\d+),(\d+),(\d+)\s+([\d.]+)\s+"
    r"([\d.]+)/\s*([\d.]+) \(\s*([\d.]+)\)\s+([\d.]+)/\s*([\d.]+) \(\s*([\d.]+)\)$"
)


def build(tmp_path, source: str, *others: str) -> Path:
    if COMPILER is None:
        pytest.skip("no gcc to build the C benchmarks")
    exe = tmp_path / Path(source).stem
    sources = [str(ROOT / source), *(str(ROOT / o) for o in others)]
    subprocess.run([COMPILER, *FLAGS, "-o", str(exe), *sources, "-lm"], check=True)
    return exe


@pytest.fixture(scope="module")
def compute_floor(tmp_path_factory) -> Path:
    return build(
        tmp_path_factory.mktemp("floor"), "bench/compute_floor.c", "csrc/matmul.c", "csrc/cells.c"
    )


def test_compute_floor_counts_the_harness_multiply_adds(compute_floor):
    """Every grid case's multiply-adds are half the harness's GEMM flops (inference; training
    three times them), and each floor is those multiply-adds at the printed rates."""
    run = [str(compute_floor), "1"]
    out = subprocess.run(run, check=True, capture_output=True, text=True).stdout
    fma = re.search(r"1 thread ([\d.]+) G .*at once ([\d.]+) \+ ([\d.]+) = ([\d.]+)", out)
    one, first, second, both = map(float, fma.groups())
    assert one > 0 and both == pytest.approx(first + second, abs=0.11)
    tile = max(float(r) for r in re.findall(r": ([\d.]+) G multiply-adds/s", out))
    rows = [ROW.match(line) for line in out.splitlines()]
    rows = [m.groups() for m in rows if m]
    assert {(r[0], tuple(map(int, r[1:5]))) for r in rows} == {
        (cell, shape) for cell in common.CELLS for shape in common.GRID
    }
    for cell, *numbers in rows:
        shape, macs, floors = tuple(map(int, numbers[:4])), numbers[4], numbers[5:]
        expected = common.gemm_flops(cell, shape, "inference") / 2
        assert float(macs) * 1e6 == pytest.approx(expected, rel=1e-3, abs=0.06e6)
        inf1, inf2, inf_tile, tr1, tr2, tr_tile = map(float, floors)
        ms = expected / 1e6  # M multiply-adds at G/s = ms
        for got, rate, mult in (
            (inf1, one, 1), (inf2, both, 1), (inf_tile, tile, 1),
            (tr1, one, 3), (tr2, both, 3), (tr_tile, tile, 3),
        ):  # fmt: skip
            assert abs(got - mult * ms / rate) <= printed_error(mult * ms / rate, rate)


# the transposed product's lines: (M x K) @ (K x N) twice, its rate and its share of the FMA rate
TN_ROW = re.compile(
    r"^\s+\(\s*(\d+) x\s+(\d+)\) @ \(\s*(\d+) x\s+(\d+)\) twice: "
    r"at ([\d.]+) G multiply-adds/s, (\d+)% of the FMA rate$"
)


def test_compute_floor_rates_the_weight_gradient_product(compute_floor):
    """The weight gradients' transposed product is timed at both training shapes (LSTM
    H = 256 at batch 1, H = 128 at batch 16), each rate's share of the one-thread FMA rate
    as printed."""
    out = subprocess.run([str(compute_floor), "1"], check=True, capture_output=True, text=True)
    one = float(re.search(r"1 thread ([\d.]+) G", out.stdout).group(1))
    rows = [m.groups() for m in map(TN_ROW.match, out.stdout.splitlines()) if m]
    shapes = {tuple(map(int, r[:4])) for r in rows}
    assert shapes == {(1024, 100, 100, 256), (512, 1600, 1600, 128)}
    for *_, rate, share in rows:
        rate = float(rate)
        assert rate > 0
        # the share is rounded to a whole percent, from rates printed to 0.1 G
        slack = 0.5 + 100 * 0.05 / one + 100 * rate * 0.05 / one**2 + 1e-9
        assert abs(int(share) - 100 * rate / one) <= slack


# the gate-math rates, ns a hidden unit: cell, inference, training step
GATE_RATE = re.compile(r"^  (rnn|lstm|gru)\s+inference ([\d.]+), training step ([\d.]+)$")
# the gate-math table: cell, T,B,I,H, M units, inference ms, training-step ms
GATE_ROW = re.compile(
    r"^(rnn|lstm|gru)\s+(\d+),(\d+),(\d+),(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$"
)


def test_compute_floor_times_the_gate_math_of_every_case(compute_floor):
    """Each cell's gate math is rated, for inference and for a training step, and every grid
    case's T*B*H units are costed at those rates (not the rates' values: timings, one quick
    round)."""
    out = subprocess.run([str(compute_floor), "1"], check=True, capture_output=True, text=True)
    lines = out.stdout.splitlines()
    rates = {m[1]: (float(m[2]), float(m[3])) for m in map(GATE_RATE.match, lines) if m}
    assert set(rates) == set(common.CELLS)
    for inference, training in rates.values():
        assert inference > 0 and training > 0
    rows = [m.groups() for m in map(GATE_ROW.match, lines) if m]
    assert {(r[0], tuple(map(int, r[1:5]))) for r in rows} == {
        (cell, shape) for cell in common.CELLS for shape in common.GRID
    }
    for cell, T, B, _, H, units, inference, training in rows:
        count = int(T) * int(B) * int(H)
        assert float(units) == pytest.approx(count / 1e6, abs=0.0005)
        for got, ns in ((inference, rates[cell][0]), (training, rates[cell][1])):
            # printed to 3 decimals, from a rate printed to 3 decimals
            assert abs(float(got) - count * ns / 1e6) <= 0.0005 + count * 0.0005 / 1e6 + 1e-9


def printed_error(floor_ms: float, rate: float) -> float:
    """How far a printed floor (2 decimals) may be from one recomputed from the printed rate
    (1 decimal): the two roundings add (pytest.approx would take the larger of the two)."""
    return 0.005 + floor_ms * 0.05 / (rate - 0.05) + 1e-9


def test_compute_floor_rejects_a_bad_round_count(compute_floor):
    bad = subprocess.run([str(compute_floor), "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "usage" in bad.stderr


def test_stream_floor_builds(tmp_path):
    """The batch-1 floor benchmark still builds against the kernels' headers (it runs for
    seconds, so it is only built here)."""
    assert build(tmp_path, "bench/stream_floor.c", "csrc/matmul.c", "csrc/threads.c").exists()
