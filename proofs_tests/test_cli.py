"""The command line: `refattn report` and `refattn info`, exit codes, no tracebacks for user errors."""

import json
import subprocess
import sys

import pytest

from refattn.cli import main


def test_report_table_and_json(capsys):
    assert main(["report", "--seq-len", "64"]) == 0
    table = capsys.readouterr().out
    assert "streaming numba float64" in table and "mpmath" in table
    assert main(["report", "--seq-len", "64", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    by = {(r["problem"], r["method"]): r for r in rows}
    # the report's own numbers: the streaming kernels equal the dense oracle to rounding,
    # and float64 agrees with mpmath on the adversarial problem
    for impl in ("numpy", "numba"):
        assert by[("gaussian", f"streaming {impl} float64")]["max_rel_error"] <= 1e-12
    assert by[("adversarial", "dense float64")]["max_rel_error"] <= 1e-10
    assert by[("gaussian", "dense float16")]["max_rel_error"] > 1e-5  # low precision shows


def test_info(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["numba"]["usable"] is True
    assert "nvcc" in info and "cupy" in info
    assert main(["info"]) == 0
    assert "numba backend" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [[], ["frobnicate"], ["report", "--seq-len", "0"], ["report", "--seq-len", "x"], ["report", "--bogus"]],
)
def test_bad_usage_exits_2_without_traceback(argv):
    proc = subprocess.run([sys.executable, "-m", "refattn", *argv], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("refattn")


def test_python_dash_m_and_console_script_agree():
    proc = subprocess.run([sys.executable, "-m", "refattn", "info"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "refattn" in proc.stdout
