"""The hash kind (refattn.check.hashing): refattn's SimHash, cross-polytope, E2LSH and angular
hashes pass, and each planted defect (a double-counted round, correlated seeds) fails its named check.

Statistical: the correct hashes are judged at alpha = 1e-6 each (false-failure probability <= 1e-6 per
hash and seed); the defects at the default alpha = 1e-3, each on two seeds (miss rates measured by the
slow tests of proofs_tests/check/test_planted.py).
"""

import pytest

from refattn.check.planted import CATALOGUE, CORRECT


@pytest.mark.statistical
@pytest.mark.parametrize("name", sorted(n for n, p in CORRECT.items() if p.kind == "hash"))
def test_correct_hash_implementations_pass(name, seed, passes):
    passes(name, seed)


@pytest.mark.statistical
@pytest.mark.parametrize("name", sorted(n for n, p in CATALOGUE.items() if p.kind == "hash"))
def test_planted_hash_defects_are_caught(name, seed, caught):
    caught(name, seed)


def test_default_draws_detect_a_ten_percent_change_with_power_099():
    """Monte Carlo of the sample size: at the draws chosen for SimHash (3 bits) and the most sensitive
    pair, a collision rate 10% above the closed form is rejected by the check's own exact binomial test
    at its per-pair level in at least 98% of 4000 simulated runs (design power 0.99; the Monte Carlo
    standard error is 0.0016, so a false failure needs a 5-sigma shortfall, probability < 1e-6).
    Power twin: at a quarter of the draws the same change is missed far more often."""
    import numpy as np
    from scipy import stats

    from refattn.check.hashing import ANGLES, N_STATISTICAL, draws_for_power
    from refattn.lsh.theory import simhash_collision

    alpha = 1e-3
    rates = simhash_collision(np.radians(ANGLES), r=3)
    n = draws_for_power(rates, alpha=alpha, n_tests=len(ANGLES) * N_STATISTICAL, two_sample=False)
    level = alpha / (len(ANGLES) * N_STATISTICAL)
    rng = np.random.default_rng(2026)

    def power(draws):
        best = 0.0
        for p0 in rates:
            p1 = p0 * 1.1 if p0 * 1.1 < 1 else p0 * 0.9
            hits = rng.binomial(draws, p1, size=4000)
            lo = stats.binom.cdf(hits, draws, p0)
            hi = stats.binom.sf(hits - 1, draws, p0)
            best = max(best, float(np.mean(np.minimum(1.0, 2 * np.minimum(lo, hi)) <= level)))
        return best

    assert power(n) >= 0.98, (n, power(n))
    assert power(n // 4) < 0.9


@pytest.mark.parametrize("kwargs,match", [({"rounds": 2, "kind": "exact"}, "^rounds: a multi-round claim"),
                                          ({"rounds": 0}, "^rounds: must be >= 1")])
def test_bad_round_claims_name_the_argument(kwargs, match):
    from refattn.check import check
    from refattn.check.planted import simhash_bits

    kind = kwargs.pop("kind", "hash")
    with pytest.raises(ValueError, match=match):
        check(simhash_bits, kind, **kwargs)
