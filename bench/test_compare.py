"""The comparison harness's bookkeeping on a tiny case (its verdicts and records, not its
timings): ``compare.py`` itself is run by hand, for minutes."""

from __future__ import annotations

import json

import compare
import pytest

TINY = ["--cells", "rnn", "--modes", "training", "--threads", "1", "--shapes", "3,20,4,8",
        "--repeat", "1", "--max-time", "0.05", "--no-memory"]  # fmt: skip


def run_tiny(tmp_path) -> dict:
    out = tmp_path / "results.json"
    assert compare.main([*TINY, "--json", str(out)]) == 0
    return json.loads(out.read_text())


def gemm_target(data) -> dict:
    (target,) = [t for t in data["targets"] if "GEMM-only" in t["name"]]
    return target


def test_gemm_baseline_skipped_without_threadpoolctl(tmp_path, monkeypatch):
    """Without threadpoolctl BLAS cannot be held to one thread, so the GEMM-only baseline (and
    its target) is skipped with a warning rather than compared at the wrong thread count."""
    monkeypatch.setattr(compare, "blas_threads_controllable", lambda: False)
    data = run_tiny(tmp_path)
    assert data["cases"]
    for case in data["cases"]:
        assert case["gemm"] is None and case["gemm_fraction"] is None
        assert case["frameworks"]["fastrnn"]["median_ms"] > 0
    assert gemm_target(data)["status"] == "SKIP"
    assert any("threadpoolctl" in note for note in data["notes"])


def test_gemm_baseline_measured_with_threadpoolctl(tmp_path):
    pytest.importorskip("threadpoolctl")
    data = run_tiny(tmp_path)
    for case in data["cases"]:
        fraction = case["frameworks"]["fastrnn"]["median_ms"] / case["gemm"]["median_ms"]
        assert case["gemm_fraction"] == pytest.approx(fraction)
    target = gemm_target(data)
    assert target["status"] in ("PASS", "FAIL") and len(target["checks"]) == 1


def test_step_products_are_the_counted_gemm_flops():
    """The ceiling's products of a step are exactly the flops the harness counts for it."""
    import _bench_common as common

    for cell in common.CELLS:
        for shape in ((100, 1, 64, 64), (100, 16, 128, 128), (7, 3, 5, 11)):
            flops = sum(2 * m * k * n for m, k, n in compare.step_products(cell, shape))
            assert flops == common.gemm_flops(cell, shape, "training")


def _training_case(threads, fr_ms, torch_ms, gemm_flops):
    return {
        "cell": "lstm", "mode": "training", "shape": [100, 16, 128, 128], "threads": threads,
        "frameworks": {"fastrnn": {"median_ms": fr_ms}, "torch": {"median_ms": torch_ms}},
        "gemm_flops": gemm_flops, "fastrnn_gflops": gemm_flops / fr_ms * 1e-6,
    }  # fmt: skip


def test_ceiling_rules_out_only_targets_its_gemm_flops_cannot_meet():
    """A case short of 2x torch is 'out' only when its GEMM flops at the most generous rate
    (best GEMM, fastrnn's own, n x one thread) take longer than torch / 2; else FAIL."""
    flops = 1.2e9
    ceiling = [
        {"threads": 1, "best": {"gflops": 150.0}, "rates": []},
        {"threads": 2, "best": {"gflops": 280.0}, "rates": []},
    ]
    # one thread: 1.2 GFLOP at 150 GFLOP/s = 8 ms > 12 / 2 = 6 ms allowed: ruled out
    one = _training_case(1, 10.0, 12.0, flops)
    # two threads: 2 x 150 = 300 GFLOP/s is the most generous: 4 ms <= 9 / 2 = 4.5 ms
    two = _training_case(2, 5.0, 9.0, flops)
    assert compare.ceiling_gflops(ceiling, [one, two], 2) == pytest.approx(300.0)
    target = compare.target_training_vs_torch([one, two], True, 2.0, ceiling)
    by_case = {c.case.split()[-2]: c for c in target.checks}
    assert by_case["1"].ruled_out and not by_case["1"].passed
    assert "ruled out" in by_case["1"].detail and "8.000 ms" in by_case["1"].detail
    assert not by_case["2"].ruled_out and "not ruled out" in by_case["2"].detail
    # the scaled rate decided; the rate measured on two threads is quoted beside it
    assert "best GEMM measured on 2 thread(s), 280 GFLOP/s: 4.286 ms" in by_case["2"].detail
    assert "best GEMM measured" not in by_case["1"].detail
    assert target.status == "FAIL"
    assert compare.target_training_vs_torch([one], True, 2.0, ceiling).status == "OUT"
    # without a ceiling measurement nothing is ruled out
    assert compare.target_training_vs_torch([one], True, 2.0, []).status == "FAIL"
    # a case that passes is never marked
    fast = _training_case(1, 2.0, 12.0, flops)
    assert compare.target_training_vs_torch([fast], True, 2.0, ceiling).status == "PASS"


def test_ceiling_measured_in_a_run(tmp_path):
    """A run with training records the GEMM rates per thread count, 2048^3 among them."""
    pytest.importorskip("threadpoolctl")
    data = run_tiny(tmp_path)
    (entry,) = data["ceiling"]
    assert entry["threads"] == 1
    assert any(tuple(r["product"]) == compare.CEILING_SQUARE for r in entry["rates"])
    assert entry["best"]["gflops"] == max(r["gflops"] for r in entry["rates"]) > 0
