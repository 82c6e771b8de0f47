"""The checker's guarantees, measured: false alarms on refattn's correct implementations, and
power against the planted-defect catalogue (refattn.check.planted).

False alarms: a run's statistical verdicts share one family-wise alpha (Bonferroni within a
check, Holm across checks), so a correct implementation fails with probability <= alpha
(asymptotically: the z- and t-tests rely on the CLT at n >= 1000 draws; the binomial and
Kolmogorov-Smirnov tests are exact or conservative). Power: each defect is caught (its
expected check fails) at the default sample sizes and alpha = 1e-3.

The fast pass / catch tests live with their kind (proofs_tests/check/test_exact.py,
test_kernel.py, test_attention.py, test_projection.py, test_hashing.py); the slow tests here measure
both over many seeds. Power: 0 misses in N = 300 seeds bounds the miss
probability by 1 - 0.05^(1/N) < 1% at 95% confidence (Clopper-Pearson), i.e. P(caught) >= 0.99.
False alarms: with alpha = 1e-3, more than 3 failures in 200 runs has probability
P(Bin(200, 1e-3) >= 4) < 6e-5 per implementation; the observed rate and its Clopper-Pearson
upper bound are printed (200 runs cannot show a rate as small as 1e-3; they show the rate is not
grossly above it, and the fast test checks the same at alpha = 1e-6).
"""

import os

import pytest
from scipy.stats import beta

from refattn.check.planted import CATALOGUE, CORRECT, measure

STATISTICAL = {n: p for n, p in CATALOGUE.items() if p.kind != "exact"}


def test_every_kind_has_correct_implementations_and_defects():
    """The catalogue the kind tests (proofs_tests/check/test_*.py) and the measured rates below draw
    from covers every kind, and each defect names the check that must catch it."""
    from refattn.check import KINDS

    assert {p.kind for p in CORRECT.values()} == {p.kind for p in CATALOGUE.values()} == set(KINDS)
    assert all(p.fails for p in CATALOGUE.values())


def _upper(k, n, conf=0.95):
    return 1.0 if k == n else float(beta.ppf(conf, k + 1, n - k))


@pytest.mark.slow
def test_false_alarm_rate_over_200_seeds():
    """Each correct implementation, 200 seeds, alpha = 1e-3: at most 3 failures (false-failure
    probability < 6e-5 per implementation, < 5e-4 for the test)."""
    n = int(os.environ.get("REFATTN_CHECK_RUNS", "200"))
    res = measure(CORRECT, range(10_000, 10_000 + n))
    for name, r in res.items():
        print(f"false alarms {name}: {r['failed']}/{r['runs']} (95% upper bound {_upper(r['failed'], r['runs']):.3g})"
              f" {r['failing_checks']}")
    total = sum(r["failed"] for r in res.values())
    runs = sum(r["runs"] for r in res.values())
    print(f"false alarms overall: {total}/{runs} (95% upper bound {_upper(total, runs):.3g})")
    assert all(r["failed"] <= 3 for r in res.values()), res


@pytest.mark.slow
def test_power_over_300_seeds():
    """Each statistical defect caught on all of 300 seeds: P(caught) >= 0.99 at 95% confidence."""
    n = int(os.environ.get("REFATTN_CHECK_RUNS", "300"))
    res = measure(STATISTICAL, range(20_000, 20_000 + n))
    for name, r in res.items():
        print(f"power {name}: caught {r['caught']}/{r['runs']} (miss rate 95% upper bound "
              f"{_upper(r['runs'] - r['caught'], r['runs']):.3g}); largest p of {CATALOGUE[name].fails!r}: "
              f"{r['largest_p']:.3g}")
    assert all(r["caught"] == r["runs"] for r in res.values()), res
