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


@pytest.mark.parametrize("claim,used,unused", [("lemma2", {"d": 8, "m": 4, "norm": 0.25, "draws": 50}, ()),
                                               ("orthogonal", {"d": 8, "m": 4}, ()),
                                               ("collision", {"d": 8, "draws": 50}, ("m", "norm")),
                                               ("rpca", {"n": 100, "trials": 2}, ("d", "m", "norm", "draws"))])
def test_the_settings_are_in_the_json_and_the_table(claim, used, unused, capsys):
    """Each table states what it was computed with (and only what the claim reads)."""
    argv = ["theory", claim, "--draws", "50" if claim != "rpca" else "2", "--dim", "8", "--features", "4",
            "--norm", "0.25", "--alpha", "0.01", "--seed", "3"]
    main(argv + ["--json"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["settings"] == {**doc["settings"], **used, "alpha": 0.01, "seed": 3}
    assert not set(unused) & set(doc["settings"]) and doc["description"]
    main(argv)
    table = capsys.readouterr().out
    assert "settings: " in table and "alpha = 0.01" in table and "seed = 3" in table
    assert all(f"{k} = {v:g}" in table for k, v in used.items())


def test_the_help_describes_every_claim(capsys):
    from refattn.evaluation.claims import CLAIM_HELP, CLAIMS

    assert main(["theory", "--help"]) == 0
    text = capsys.readouterr().out
    assert set(CLAIM_HELP) == set(CLAIMS)
    assert all(name in text and CLAIM_HELP[name][:30] in " ".join(text.split()) for name in CLAIMS)


def test_batched_draws_state_their_batches(capsys):
    assert main(["theory", "smreg", "--draws", "400", "--batches", "4", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["settings"]["batches"] == 4 and doc["rows"]
    assert main(["theory", "rpca", "--batches", "4"]) == 2  # a fixed number of trials: not split
