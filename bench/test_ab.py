"""ab.py's bookkeeping on a tiny case (its rounds, turns and report, not its timings): the
same build as "old" and "new", in one process and a process a turn."""

from __future__ import annotations

import os
import re

import ab
import pytest

import fastrnn

BUILD = os.path.dirname(os.path.dirname(os.path.abspath(fastrnn.__file__)))
TINY = ["lstm", "3,2,4,5", "--rounds", "2", "--seconds", "0.02"]
REPORT = re.compile(
    r"^lstm 3,2,4,5 (\d) thread\(s\) (\w+)( \(a process a turn\))?: old ([\d.]+) ms, "
    r"new ([\d.]+) ms; new/old per round ([\d.]+) \[([\d.]+)-([\d.]+)\]$"
)


def report(capsys, argv) -> re.Match:
    assert ab.main([BUILD, BUILD, *TINY, *argv]) == 0
    match = REPORT.match(capsys.readouterr().out.strip())
    assert match, "ab.py printed no report line"
    return match


@pytest.mark.parametrize("processes", [False, True])
def test_rounds_report_both_builds_and_their_ratio(capsys, processes):
    argv = ["--threads", "2", "--mode", "training"] + (["--processes"] if processes else [])
    match = report(capsys, argv)
    threads, mode, marker, old, new, ratio, low, high = match.groups()
    assert (threads, mode, bool(marker)) == ("2", "training", processes)
    assert float(old) > 0 and float(new) > 0
    assert float(low) <= float(ratio) <= float(high)


def test_one_turn_prints_its_median(capsys):
    """The child of --processes: one build, one median in ms."""
    assert ab.main([BUILD, BUILD, *TINY, "--_one", "new"]) == 0
    assert float(capsys.readouterr().out) > 0


def test_failed_turn_names_the_build(tmp_path):
    with pytest.raises(RuntimeError, match="old build's process failed"):
        ab.process_turn([str(tmp_path), BUILD, *TINY], "old")
