"""`refattn bench` (refattn.cli.bench): the quick run writes JSON and a plot and re-derives from JSON;
bad usage exits 2 in one line, without a traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from refattn.bench.format import validate_suite
from refattn.cli import main as cli_main


def _check_suite_structure(suite, names, lengths, dtypes, H):
    """The suite's own validator finds nothing, and it covers what the test asked for."""
    problems = validate_suite(suite)
    assert not problems, problems
    assert list(suite["methods"]) == names and suite["config"]["lengths"] == lengths
    assert suite["config"]["dtypes"] == dtypes and suite["config"]["H"] == H


def _has_matplotlib():
    try:
        import matplotlib  # noqa: F401
        return True
    except ImportError:
        return False


def test_cli_quick_writes_json_and_plot(tmp_path, capsys):
    out, png = tmp_path / "s.json", tmp_path / "s.png"
    plot = ["--plot", str(png)] if _has_matplotlib() else []
    goals = str(Path(__file__).resolve().parents[2] / "benchmarks" / "goals.json")
    assert cli_main(["bench", "--quick", "--methods", "exact streaming,reformer", "--dtypes", "float32",
                     "--out", str(out), "--goals", goals, *plot]) == 0
    text = capsys.readouterr().out
    assert "goals" in text and "reformer" in text
    suite = json.loads(out.read_text())
    _check_suite_structure(suite, ["exact streaming", "reformer"], [128, 256], ["float32"], 16)
    if plot:
        assert png.stat().st_size > 1000
    assert cli_main(["bench", "--from-json", str(out)]) == 0  # re-derived without measuring
    assert "goals" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["bench", "--methods", "nope"],
    ["bench", "--dtypes", "float16"],
    ["bench", "--T-min", "4096", "--T-max", "1024"],
    ["bench", "--T-min", "0"],
    ["bench", "--max-memory-gib", "-1"],
    ["bench", "--quick", "--out", "/nonexistent-dir/x.json"],
    ["bench", "--from-json", "/nonexistent-dir/x.json"],
    ["bench", "--goals", "/nonexistent-dir/goals.json"],
    ["bench", "--budget", "0"],
])
def test_bench_bad_usage_exits_2_in_one_line(argv, capsys):
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("refattn bench: error:"), err


def test_bench_bad_usage_from_the_console_has_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "refattn", "bench", "--methods", "nope"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr  # one line
