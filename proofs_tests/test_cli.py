"""The command line: `refattn report` and `refattn info`, exit codes, no tracebacks for user errors."""

import json
import subprocess
import sys

import pytest

from refattn.cli import main


def test_report_table_and_json(capsys):
    assert main(["report", "--seq-len", "64", "--methods", "best sparse", "--exact-paths"]) == 0
    table = capsys.readouterr().out
    assert "streaming numba float64" in table and "mpmath" in table
    assert main(["report", "--seq-len", "64", "--methods", "best sparse", "--exact-paths", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["exact_paths"]
    by = {(r["problem"], r["method"]): r for r in rows}
    # the report's own numbers: the streaming kernels equal the dense oracle to rounding,
    # and float64 agrees with mpmath on the adversarial problem
    for impl in ("numpy", "numba"):
        assert by[("gaussian", f"streaming {impl} float64")]["max_rel_error"] <= 1e-12
    assert by[("adversarial", "dense float64")]["max_rel_error"] <= 1e-10
    assert by[("gaussian", "dense float16")]["max_rel_error"] > 1e-5  # low precision shows
    # the random estimators are in the table, with a finite, non-zero error against the oracle
    for problem in ("gaussian", "gaussian-causal", "padded"):
        r = by[(problem, "performer b=128")]
        assert 0 < r["max_abs_error"] < float("inf")


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


@pytest.mark.parametrize("claim", ["lemma2", "orthogonal", "favorpp", "smreg"])
def test_theory_claims(claim, capsys):
    """`refattn theory CLAIM`: every interval (alpha = 1e-6 each, about 15 per claim, so the
    false-failure probability is <= 2e-5) covers its closed form."""
    assert main(["theory", claim, "--draws", "5000", "--alpha", "1e-6", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    checked = [r for r in rows if r["empirical"] == r["empirical"]]  # rows with a Monte Carlo value
    assert checked and all(r["covered"] for r in checked)


def test_theory_bad_usage():
    for argv in (["theory", "lemma3"], ["theory", "lemma2", "--alpha", "2"], ["theory", "lemma2", "--norm", "-1"]):
        proc = subprocess.run([sys.executable, "-m", "refattn", *argv], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, argv
