"""`refattn theory` claims added for LSH, Scatterbrain and robust PCA, each with a power twin.

- ``collision``: 15 exact binomial intervals at alpha = 1e-6 each (false failure <= 1.5e-5).
- ``scatterbrain``: 6 z-intervals and 6 bootstrap (normal) intervals at 1e-6 each (<= 1.2e-5,
  plus the normal approximation of the bootstrap at moderate norms, the docs' Scatterbrain page).
- ``rpca``: recovery at rank 0.05 n is claimed with probability 1 - O(n^-10) (Candes et al.
  2011); the failing region's rate interval covers 0 unless PCP succeeds there, which it never
  did in development (relative errors about 1.3).
Power twins plant a wrong closed form or a wrong estimator and require a missed interval.
"""

import numpy as np
import pytest

from refattn import theory
from refattn.evaluation import claims
from refattn.evaluation.claims import run_claim
from refattn.scatterbrain import rpca

ALPHA = 1e-6


def _covered(rows):
    checked = [r for r in rows if r.empirical == r.empirical]
    assert checked
    return [r.covered for r in checked]


@pytest.mark.statistical
@pytest.mark.parametrize("claim", ["collision", "scatterbrain", "rpca"])
def test_claim_covers_its_closed_form(claim, seed):
    draws = 8 if claim == "rpca" else 5000  # rpca: trials of PCP at n = 100
    rows = run_claim(claim, draws=draws, alpha=ALPHA, seed=seed, progress=lambda it: it)
    assert all(_covered(rows)), [r for r in rows if r.empirical == r.empirical and not r.covered]


@pytest.mark.statistical
def test_collision_claim_has_power(seed, monkeypatch):
    """theta / (2 pi) in place of theta / pi (a classic slip) is rejected."""
    right = theory.simhash_collision
    monkeypatch.setattr(theory, "simhash_collision", lambda theta, r=1, tables=1: right(theta / 2, r, tables))
    rows = run_claim("collision", draws=5000, alpha=ALPHA, seed=seed, progress=lambda it: it)
    assert not all(_covered(rows))


@pytest.mark.statistical
def test_scatterbrain_claim_has_power(seed, monkeypatch):
    """The sparse-only estimate (0 off the support, Reformer-like) is rejected: it is biased."""
    right = claims.scatterbrain_samples
    monkeypatch.setattr(claims, "scatterbrain_samples", lambda *a, **kw: (right(*a, **kw)[1],) * 2)
    rows = run_claim("scatterbrain", draws=5000, alpha=ALPHA, seed=seed, progress=lambda it: it)
    means = [r.covered for r in rows if r.quantity.startswith("mean")]
    assert not any(means)


def test_rpca_claim_has_power(seed, monkeypatch):
    """PCP with lambda ten times too large (S is over-penalised, so L absorbs the corruption)
    fails the recovery claim."""
    right = rpca.robust_pca
    monkeypatch.setattr(rpca, "robust_pca", lambda M, **kw: right(M, lam=10 / np.sqrt(max(M.shape)), **kw))
    rows = run_claim("rpca", draws=5, alpha=ALPHA, seed=seed, progress=lambda it: it)
    assert not all(_covered(rows))


def test_an_mse_interval_respects_positivity_and_a_zero_closed_form_prints_no_percentage():
    """The trigonometric estimator is exact at angle 0 (MSE 0 up to rounding): its interval starts at 0, not
    below, still covers the closed form, and its detectable column says '-' (a relative error of 0 is
    undefined), not 'nan%'."""
    from refattn.evaluation.claims import format_claim, run_claim

    rows = run_claim("lemma2", draws=2000, seed=1)
    zero = next(r for r in rows if r.quantity == "MSE trigonometric" and r.setting == "angle 0")
    assert zero.closed_form == 0 and zero.low >= 0 and zero.covered
    assert all(r.low >= 0 for r in rows if r.quantity.startswith("MSE") and r.low == r.low)
    text = format_claim("lemma2", rows)
    assert "nan%" not in text and any(line.rstrip().endswith("-") for line in text.splitlines() if "angle 0" in line)
