"""Statistical verdicts (refattn.stats): z_test_mean's false-rejection rate is alpha (calibration)
and it rejects a 2% bias (power); bootstrap_variance_interval covers near 1 - alpha and rejects a
wrong variance; proportion_test is calibrated and has power; bad input names the argument.
Each statistical test states its false-failure probability; together <= 3e-6 per seed.
"""

import numpy as np
import pytest
from scipy import stats

from refattn.stats import bootstrap_variance_interval, proportion_test, z_test_mean

ALPHA_FAMILY = 1e-6  # per statistical assertion below


def _binomial_upper(n, p, alpha):
    """Smallest c with P[Binomial(n, p) > c] <= alpha."""
    return int(stats.binom.ppf(1 - alpha, n, p))


@pytest.mark.statistical
def test_z_test_is_calibrated(seed):
    """Under H0 the z-test rejects with probability alpha = 0.05 (t-quantile, Gaussian samples).

    400 independent tests; rejections ~ Binomial(400, 0.05). False-failure probability
    <= 2e-6 (two one-sided binomial tails at 1e-6 each).
    """
    rng = np.random.default_rng([seed, 1])
    rejections = sum(not z_test_mean(rng.normal(3.0, 2.0, size=30), 3.0, alpha=0.05).passed for _ in range(400))
    lo = int(stats.binom.ppf(ALPHA_FAMILY, 400, 0.05))
    hi = _binomial_upper(400, 0.05, ALPHA_FAMILY)
    assert lo <= rejections <= hi, (rejections, lo, hi)


@pytest.mark.statistical
def test_bootstrap_variance_coverage(seed):
    """The 90% percentile interval covers the true variance in about 90% of 200 Gaussian samples.

    Percentile-bootstrap coverage is asymptotic and slightly below nominal for n = 400; we
    allow a miss rate up to 0.15 (generous) and assert misses <= its binomial 1 - 1e-6
    quantile; the lower side checks the interval is not uselessly wide (misses >= the 1e-6
    quantile of Binomial(200, 0.05)). False-failure probability <= 2e-6.
    """
    rng = np.random.default_rng([seed, 3])
    x = rng.normal(0.0, 1.5, size=(400, 200))
    res = bootstrap_variance_interval(x, alpha=0.1, rng=rng, n_boot=400)
    misses = int((~res.contains(1.5**2)).sum())
    assert int(stats.binom.ppf(ALPHA_FAMILY, 200, 0.05)) <= misses <= _binomial_upper(200, 0.15, ALPHA_FAMILY), misses


@pytest.mark.statistical
def test_proportion_test_calibration_and_power(seed):
    """Exact binomial tests: true proportions (including p near 0 and 1, where a z-test breaks)
    pass at alpha = 1e-6; a 3-point shift at p = 0.5 with n = 20000 (8.5 sd) is rejected."""
    from refattn.stats import proportion_test

    rng = np.random.default_rng([seed, 5])
    p = np.array([0.9999, 0.5, 0.001])
    x = (rng.random((20000, 3)) < p).astype(float)
    assert proportion_test(x, p, alpha=1e-6)[0]
    assert not proportion_test(x, p + np.array([0, 0.03, 0]), alpha=1e-6)[0]
    with pytest.raises(ValueError, match="^indicators"):
        proportion_test(np.full((3, 1), 0.5), 0.5, alpha=0.1)


N_FAMILIES, N_ENTRIES = 100, 40  # 100 null families of 40 entries each, tested at alpha = 0.05


def _family_rejections(test_one_family, rng):
    return sum(not test_one_family(rng) for _ in range(N_FAMILIES))


def _z_family(rng, *, per_entry=False):
    x = rng.normal(2.0, 1.0, size=(30, N_ENTRIES))
    if per_entry:  # the power twin: each entry at alpha, no correction
        return all(z_test_mean(x[:, e], 2.0, alpha=0.05).passed for e in range(N_ENTRIES))
    return z_test_mean(x, 2.0, alpha=0.05).passed


def _proportion_family(rng, *, per_entry=False):
    from refattn.stats import proportion_test

    x = (rng.random((200, N_ENTRIES)) < 0.3).astype(float)
    if per_entry:
        return all(proportion_test(x[:, e], 0.3, alpha=0.05)[0] for e in range(N_ENTRIES))
    return proportion_test(x, 0.3, alpha=0.05)[0]


@pytest.mark.statistical
@pytest.mark.parametrize("family", [_z_family, _proportion_family], ids=["z_test_mean", "proportion_test"])
def test_family_wise_rate_is_at_most_alpha(family, seed):
    """The family-wise false-rejection rate over 40 null entries is at most alpha = 0.05 (the
    Bonferroni correction at work): rejections of 100 independent families are at most the
    1 - 1e-6 quantile of Binomial(100, 0.05) (17). Uncorrected, a family of 40 would be rejected with
    probability 1 - 0.95^40 = 0.87 (the z-test; the exact binomial test is conservative, but
    its per-entry level still compounds). False-failure probability <= 1e-6."""
    rejections = _family_rejections(family, np.random.default_rng([seed, 11]))
    assert rejections <= _binomial_upper(N_FAMILIES, 0.05, ALPHA_FAMILY), rejections


@pytest.mark.statistical
@pytest.mark.parametrize("family", [_z_family, _proportion_family], ids=["z_test_mean", "proportion_test"])
def test_family_wise_test_has_power_against_a_missing_correction(family, seed):
    """Power twin: the same families tested entry by entry at alpha (no correction) exceed the
    bound above, so the test above would catch a deleted Bonferroni factor."""
    rejections = _family_rejections(lambda g: family(g, per_entry=True), np.random.default_rng([seed, 11]))
    assert rejections > _binomial_upper(N_FAMILIES, 0.05, ALPHA_FAMILY), rejections


def test_stats_bad_input():
    with pytest.raises(ValueError, match="^alpha"):
        z_test_mean(np.ones(5), 1.0, alpha=1.5)
    with pytest.raises(ValueError, match="^samples: need at least 2"):
        z_test_mean(np.ones(1), 1.0, alpha=0.1)
    with pytest.raises(ValueError, match="^n_boot"):
        bootstrap_variance_interval(np.ones(10), alpha=1e-6, rng=0, n_boot=100)
    with pytest.raises(ValueError, match="^method"):
        bootstrap_variance_interval(np.ones(10), alpha=0.1, rng=0, method="bca")
    with pytest.raises(ValueError, match="^rng"):
        bootstrap_variance_interval(np.ones(10), alpha=0.1, rng=None)
    with pytest.raises(ValueError, match="^samples: contains NaN"):
        z_test_mean(np.array([1.0, np.nan]), 1.0, alpha=0.1)
    # constant samples: exact equality passes, anything else fails
    assert z_test_mean(np.ones(5), 1.0, alpha=0.1).passed
    assert not z_test_mean(np.ones(5), 1.0 + 1e-12, alpha=0.1).passed


def test_z_test_mean_with_a_vector_of_truths_and_at_any_scale():
    """truth broadcasts entry by entry; the verdict and z are scale-free (samples of 1e300 or 1e-300
    give the z of samples near 1, with no overflow or underflow)."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(400, 3)) + np.array([0.0, 1.0, 2.0])
    assert z_test_mean(x, np.array([0.0, 1.0, 2.0]), alpha=1e-6).passed
    assert not z_test_mean(x, np.array([0.0, 1.0, 2.5]), alpha=1e-6).passed
    base = z_test_mean(x, np.array([0.0, 1.0, 2.0]), alpha=1e-6)
    for c in (1e300, 1e-300):
        scaled = z_test_mean(x * c, np.array([0.0, 1.0, 2.0]) * c, alpha=1e-6)
        np.testing.assert_allclose(scaled.z, base.z, rtol=1e-9)
        np.testing.assert_allclose(scaled.stderr / c, base.stderr, rtol=1e-9)


def test_proportion_test_takes_boolean_and_integer_indicators():
    from refattn.stats import proportion_test

    x = np.random.default_rng(3).random((500, 2)) < 0.5
    assert proportion_test(x, 0.5, alpha=1e-6)[0]
    assert proportion_test(x.astype(np.int8), 0.5, alpha=1e-6)[0]


def test_bootstrap_methods_are_what_they_say():
    """method="normal" is the sample variance plus or minus z bootstrap standard errors (symmetric
    about it); method="percentile" takes the bootstrap quantiles, a different interval from the same
    resamples."""
    x = np.random.default_rng(4).exponential(size=(300, 1))
    normal = bootstrap_variance_interval(x, alpha=0.1, rng=1, n_boot=1000, method="normal")
    pct = bootstrap_variance_interval(x, alpha=0.1, rng=1, n_boot=1000, method="percentile")
    np.testing.assert_allclose((normal.low + normal.high) / 2, normal.variance, rtol=1e-12)
    assert abs(pct.low[0] - normal.low[0]) > 1e-3 * normal.variance[0]


def test_z_test_critical_value_and_zero_entries_at_large_scale():
    """The critical value is the Student-t quantile t_{n-1}(1 - alpha / (2m)), by scipy; samples of
    1e300 that include exact zeros standardise without overflow."""
    x = np.random.default_rng(5).normal(size=(30, 4))
    res = z_test_mean(x, 0.0, alpha=0.05)
    assert res.critical == stats.t.ppf(1 - 0.05 / 8, 29)
    x[0, 0] = 0.0
    big = z_test_mean(x * 1e300, 0.0, alpha=0.05)
    np.testing.assert_allclose(big.z, z_test_mean(x, 0.0, alpha=0.05).z, rtol=1e-9)


# --- power and sample sizes ---------------------------------------------------------------------

@pytest.mark.statistical
def test_min_detectable_mean_shift_is_detected_with_probability_099(seed):
    """A mean shifted by the stated detectable amount is rejected in >= 97.5% of 2000 z-tests (claimed:
    >= 99%; a binomial count that low has probability < 1e-10 if the claim holds); at half the amount
    the rejection rate falls below 90% (the statement is not vacuous). Bonferroni over 4 entries,
    level 1e-2, n = 60 Gaussian draws."""
    from refattn.stats import min_detectable_mean_shift

    rng = np.random.default_rng([seed, 91])
    n, reps = 60, 2000
    shift = float(min_detectable_mean_shift(1.0 / np.sqrt(n), false_fail_rate=1e-2, entries=4, df=n - 1))
    for factor, lo, hi in ((1.0, 0.975, 1.0), (0.5, 0.0, 0.9)):
        x = rng.standard_normal((reps, n, 4))
        x[..., 0] += factor * shift
        hits = sum(not z_test_mean(x[r], 0.0, alpha=1e-2).passed for r in range(reps))
        assert lo <= hits / reps <= hi, (factor, hits / reps)


@pytest.mark.statistical
def test_min_detectable_rate_and_ks_distance_are_detected(seed):
    """A rate moved by its detectable change, and a distribution at its detectable Kolmogorov distance,
    are rejected in >= 97.5% of 1000 tests (claimed >= 99%; false-failure probability < 1e-6 each)."""
    from scipy import stats as st

    from refattn.stats import min_detectable_ks_distance, min_detectable_rate_shift

    rng = np.random.default_rng([seed, 92])
    n, p, reps = 800, 0.3, 1000
    delta = float(min_detectable_rate_shift(p, n, false_fail_rate=1e-3))
    hits = sum(not proportion_test(rng.random((n, 1)) < p + delta, p, alpha=1e-3)[0] for _ in range(reps))
    assert hits / reps >= 0.975, hits / reps
    D = min_detectable_ks_distance(n, false_fail_rate=1e-3, entries=2)
    mu = 2 * st.norm.ppf((1 + D) / 2)  # N(mu, 1) is at sup distance D from N(0, 1)
    crit = st.kstwo.isf(1e-3 / 2, n)
    hits = sum(st.kstest(rng.normal(mu, 1, n), st.norm.cdf).statistic > crit for _ in range(reps))
    assert hits / reps >= 0.975, hits / reps


def test_sample_sizes_invert_the_detectable_defects():
    """``min_draws_for_*`` is the inverse of ``min_detectable_*``: at the draws it returns the defect is
    detectable, one draw fewer (well below) it is not; bad rates name the argument."""
    from refattn.stats import (min_detectable_mean_shift, min_detectable_rate_shift, min_draws_for_mean_shift,
                               min_draws_for_rate_shift)

    n = min_draws_for_mean_shift(2.0, 0.1, false_fail_rate=1e-3, entries=3)
    assert float(min_detectable_mean_shift(2.0 / np.sqrt(n), false_fail_rate=1e-3, entries=3)) <= 0.1
    assert float(min_detectable_mean_shift(2.0 / np.sqrt(0.9 * n), false_fail_rate=1e-3, entries=3)) > 0.1
    m = min_draws_for_rate_shift(0.2, 0.05, false_fail_rate=1e-3)
    assert float(min_detectable_rate_shift(0.2, m, false_fail_rate=1e-3)) <= 0.0505
    with pytest.raises(ValueError, match="^false_fail_rate|^alpha"):
        min_detectable_mean_shift(1.0, false_fail_rate=1.5)
    with pytest.raises(ValueError, match="^false_pass_rate"):
        min_detectable_mean_shift(1.0, false_fail_rate=0.01, false_pass_rate=0.0)
