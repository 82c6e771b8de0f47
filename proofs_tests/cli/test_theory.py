"""`refattn theory` (refattn.cli.theory): the claims' tables and bad usage.
"""

import json
import subprocess
import sys

import pytest

from refattn.cli import main


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
