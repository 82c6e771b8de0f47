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
