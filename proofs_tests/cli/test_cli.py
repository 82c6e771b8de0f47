"""The command line as a whole (refattn.cli): bad usage exits 2 without a traceback; `python -m refattn`
and the console script agree.
"""

import subprocess
import sys

import pytest


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
