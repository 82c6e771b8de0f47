"""The kernel kind (refattn.check.kernel) and what every statistical kind shares: bad callables become
verdicts, --budget truncates and says so, the same seed gives the same report, FAVOR++ at a given A;
refattn's correct kernel estimators pass and each planted kernel defect fails its named check.

Statistical: the correct estimators are judged at alpha = 1e-6 each (false-failure probability <= 1e-6
per estimator and seed); the defects at the default alpha = 1e-3, each on two seeds (miss rates measured
by the slow tests of proofs_tests/check/test_planted.py).
"""


import numpy as np
import pytest

from refattn.check import check
from refattn.check.planted import CATALOGUE, CORRECT


def test_statistical_kinds_survive_bad_callables(user_file):
    rep = check(f"{user_file}:exits", "projection", n_draws=20)
    assert rep.failures and "SystemExit" in rep.failures[0].meaning
    rep = check(f"{user_file}:hash_floats", "hash", n_draws=20)
    assert rep.failures and "integer bucket ids" in rep.failures[0].meaning
    rep = check(lambda q, k, seed: np.zeros((2, 2)), "kernel", n_draws=20)
    assert "returned shape (2, 2)" in rep.failures[0].meaning


def test_budget_truncates_and_says_so():
    slow_calls = []

    def slow(m, d, seed):
        import time
        slow_calls.append(seed)
        time.sleep(0.002)
        return np.random.default_rng(seed).standard_normal((m, d))

    rep = check(slow, "projection", n_draws=2000, budget=0.2)
    assert len(slow_calls) < 2000 and any("budget reached" in n for n in rep.notes), rep.notes


def test_same_seed_same_report():
    fn = CATALOGUE["2% row scale"].fn
    a = check(fn, "projection", n_draws=200, seed=3).to_dict()
    b = check(fn, "projection", n_draws=200, seed=3).to_dict()
    for d in (a, b):
        d.pop("elapsed_s")
    assert a == b


def test_favorpp_at_a_given_A():
    """FAVOR++ at an explicit A: the closed-form variance uses that A. A correct estimator at A
    (iid rows, m = 64) passes; judged at another A, the variance check fails (the mean checks
    cannot: FAVOR++ is unbiased for every A < 1/8). False-failure probability <= 1e-6
    (alpha) for the first; the second is a power twin (the closed form at A = 0.1 is about 300
    times the variance at A = -0.1: measured p-values below 1e-300)."""
    from functools import partial

    from refattn.check.planted import favorpp_kernel

    fixed = partial(favorpp_kernel, A=-0.1)
    assert check(fixed, "kernel", method="favorpp", projection="gaussian", m=64, A=-0.1, alpha=1e-6).passed
    rep = check(fixed, "kernel", method="favorpp", projection="gaussian", m=64, A=0.1)
    assert {v.check for v in rep.failures} >= {"variance (m = 64)"}, rep.format_table()
    assert not any(v.check.startswith("unbiased") for v in rep.failures), rep.format_table()


@pytest.mark.statistical
@pytest.mark.parametrize("name", sorted(n for n, p in CORRECT.items() if p.kind == "kernel"))
def test_correct_kernel_implementations_pass(name, seed, passes):
    passes(name, seed)


@pytest.mark.statistical
@pytest.mark.parametrize("name", sorted(n for n, p in CATALOGUE.items() if p.kind == "kernel"))
def test_planted_kernel_defects_are_caught(name, seed, caught):
    caught(name, seed)


def _biased_noisy(scale):
    """1.5 x refattn's estimator plus Gaussian noise of size ``scale``: biased and far too noisy."""
    from refattn.check.planted import kernel_estimator

    def fn(q, k, seed, m=64):
        K = kernel_estimator(q, k, seed, m=m)
        return 1.5 * K + scale * np.random.default_rng(seed).standard_normal(K.shape)
    return fn


@pytest.mark.parametrize("noise", [1e3, 1e160])
@pytest.mark.parametrize("features", [None, 64])
def test_a_biased_noisy_estimator_is_never_pass(noise, features):
    """1.5 K + noise: the bias checks have no power at that noise (INCONCLUSIVE, never PASS) and the
    variance is always judged (with or without --features), so the run fails; noise of 1e160 (whose
    square overflows) fails naming the draw instead of a usage error. Deterministic given the seed
    (the noise is 1e6 times any feature count's variance)."""
    rep = check(_biased_noisy(noise), "kernel", m=features, isolate=False, seed=2, n_draws=200)
    assert rep.result == "FAIL" and rep.exit_code == 1, rep.format_table()
    by = {v.check: v for v in rep.verdicts}
    assert by["unbiased (pooled)"].label in ("INCONCLUSIVE", "FAIL")
    variance = by["variance (m unknown)" if features is None else "variance (m = 64)"]
    assert variance.passed is False
    if noise > 1e100:
        assert "draw 1 of" in variance.meaning and "non-finite" in variance.meaning


def test_every_statistical_verdict_states_its_detectable_defect():
    """In --json every statistical verdict carries its detectable defect and what it measures; a PASS
    of the pooled bias check could have detected its tolerance."""
    import json

    rep = check(CORRECT["FAVOR+ kernel (iid)"].fn, "kernel", isolate=False, seed=1,
                **CORRECT["FAVOR+ kernel (iid)"].options)
    rows = json.loads(rep.to_json())["checks"]
    stat = [r for r in rows if r["statistical"]]
    assert stat and all(r["detectable"] is not None and r["detectable_what"] for r in stat)
    pooled = next(r for r in stat if r["check"] == "unbiased (pooled)")
    assert pooled["verdict"] == "PASS" and pooled["detectable"] <= pooled["tolerance"] == 0.01


def test_short_of_power_within_the_budget_is_inconclusive_with_its_exit_code(capsys):
    """A correct estimator asked to detect a 0.01% bias with 20 draws and a 16x cap cannot: INCONCLUSIVE
    (exit 4), with a note saying how many draws it would need; loosening the tolerance gives PASS."""
    from refattn.cli import main

    args = ["check", "refattn.check.planted:kernel_estimator", "--kind", "kernel", "--features", "64",
            "--draws", "20", "--no-progress"]
    assert main(args + ["--max-bias", "0.0001"]) == 4
    out = capsys.readouterr().out
    assert "RESULT: INCONCLUSIVE" in out and "draws are needed for the stated power" in out
    assert main(args + ["--max-bias", "0.5", "--max-variance-ratio", "5"]) == 0


def test_iid_features_judged_as_orthogonal_get_the_projection_hint():
    """A correct iid FAVOR+ checked with the default (orthogonal) claim fails its variance check, and
    a note says its squared errors fit iid features (claim --projection gaussian); claimed gaussian, it
    passes with no such note; a correct orthogonal estimator gets no hint. Seeded; the hint needs the
    claimed projection's statistic beyond |z| > 5 and the other within |z| < 2."""
    from functools import partial

    from refattn.check.planted import kernel_estimator

    iid = partial(kernel_estimator, projection="gaussian")
    rep = check(iid, "kernel", method="positive", m=64, seed=11)
    assert not rep.passed and any("--projection gaussian" in n for n in rep.notes), rep.notes
    rep = check(iid, "kernel", method="positive", projection="gaussian", m=64, seed=11)
    assert rep.passed and not any("--projection" in n for n in rep.notes), rep.format_table()
    rep = check(kernel_estimator, "kernel", method="positive", m=64, seed=11)
    assert rep.passed and not any("--projection" in n for n in rep.notes), rep.format_table()
