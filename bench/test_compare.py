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
