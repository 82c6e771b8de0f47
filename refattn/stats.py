r"""Statistical verdicts for random estimators: means by z-tests, variances by bootstrap.

The helpers the whole suite uses, and [`refattn.testing`][refattn.testing] wraps as assertions. Each
returns a result object with the numbers a reviewer needs (no hidden thresholds).

- [`z_test_mean`][refattn.stats.z_test_mean]: is ``E[X] = truth`` entrywise? Studentised mean with a Student-t
  critical value, two-sided, Bonferroni over the entries tested, so the family-wise
  false-failure probability is at most ``alpha`` (exact for Gaussian samples, asymptotic
  otherwise: keep the estimator's variance finite and the sample large).
- [`bootstrap_variance_interval`][refattn.stats.bootstrap_variance_interval]: percentile bootstrap interval for ``Var[X]``
  (Efron & Tibshirani 1993, ch. 13); coverage ``1 - alpha`` asymptotically. Use it instead
  of chi^2 intervals, which assume Gaussian samples and fail for the heavy-tailed
  estimators of attention (the docs' testing page).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as _st

from refattn._validation import (
    InputError,
    InputTypeError,
    as_float_array,
    as_generator,
    check_allocation,
    check_finite_result,
    check_positive_int,
    check_real,
)

__all__ = ["MeanTest", "VarianceInterval", "z_test_mean", "proportion_test", "bootstrap_variance_interval",
           "as_generator", "FALSE_PASS_RATE", "min_detectable_mean_shift", "min_draws_for_mean_shift",
           "min_detectable_rate_shift", "min_draws_for_rate_shift", "min_detectable_ks_distance"]

#: The false-pass rate every power statement uses: a defect of the stated size is detected with
#: probability at least ``1 - FALSE_PASS_RATE = 0.99``.
FALSE_PASS_RATE = 0.01


# ---------------------------------------------------------------------------------------
# Power and sample sizes. One grammar: ``min_detectable_<quantity>`` (the smallest defect a test of
# the given size detects with probability 1 - false_pass_rate) and ``min_draws_for_<quantity>``
# (the draws that make a defect of the given size detectable), each with both error rates:
# ``false_fail_rate`` (the test's level: a correct implementation fails with at most this
# probability) and ``false_pass_rate`` (a defect of the stated size passes with at most this).
# ``entries``: the test is Bonferroni over that many entries (the level of each is the share).
# ---------------------------------------------------------------------------------------


def _rates(false_fail_rate, false_pass_rate, entries, two_sided):
    a = check_real(false_fail_rate, "false_fail_rate", minimum=0.0, maximum=1.0, low_open=True, high_open=True)
    b = check_real(false_pass_rate, "false_pass_rate", minimum=0.0, maximum=0.5, low_open=True)
    e = check_positive_int(entries, "entries")
    return (a / (2 * e) if two_sided else a / e), b


def min_detectable_mean_shift(stderr, *, false_fail_rate, false_pass_rate=FALSE_PASS_RATE, entries=1, df=None,
                              two_sided=True):
    r"""The smallest shift of a mean that a z- (or t-) test with standard error ``stderr`` detects
    with probability ``1 - false_pass_rate`` at level ``false_fail_rate`` (Bonferroni over ``entries``).

    A test rejecting when $|\bar X - \mu| > c\,\mathrm{se}$, $c = t^{-1}_{df}(1 - \alpha/(2E))$
    (normal without ``df``), rejects a shift $\delta$ with probability at least
    $\Phi(\delta/\mathrm{se} - c) \ge 1 - \beta$ once $\delta \ge (c + z_{1-\beta})\,\mathrm{se}$
    (the other tail only adds). Asymptotic as the z-test is. Broadcasts over ``stderr``.

    >>> round(float(min_detectable_mean_shift(1.0, false_fail_rate=0.05)), 3)  # 1.96 + 2.326
    4.286
    """
    tail, beta = _rates(false_fail_rate, false_pass_rate, entries, two_sided)
    try:
        se = np.asarray(stderr)
    except Exception:  # noqa: BLE001 - a ragged list
        raise InputTypeError("stderr: expected real numbers") from None
    if se.dtype.kind not in "fiu" or isinstance(stderr, bool):
        raise InputTypeError(f"stderr: expected real numbers, got dtype {se.dtype}")
    se = se.astype(np.float64)
    if np.any(np.isnan(se)) or np.any(se < 0):
        raise InputError("stderr: must be >= 0 (inf: a statistic without a finite spread)")
    if df is not None:
        df = check_real(df, "df", minimum=0.0, low_open=True)
    crit = float(_st.norm.isf(tail)) if df is None else float(_st.t.isf(tail, df))
    return (crit + float(_st.norm.isf(beta))) * se


def min_draws_for_mean_shift(sd, shift, *, false_fail_rate, false_pass_rate=FALSE_PASS_RATE, entries=1,
                             two_sided=True) -> int:
    """The draws ``n`` at which a mean shift ``shift`` of a statistic with per-draw standard deviation
    ``sd`` becomes detectable: ``n = ((c + z_{1-beta}) sd / shift)^2`` (normal critical value; the
    inverse of [`min_detectable_mean_shift`][refattn.stats.min_detectable_mean_shift])."""
    tail, beta = _rates(false_fail_rate, false_pass_rate, entries, two_sided)
    shift = check_real(shift, "shift", minimum=0.0, low_open=True)
    sd = check_real(sd, "sd", minimum=0.0)
    k = float(_st.norm.isf(tail)) + float(_st.norm.isf(beta))
    with np.errstate(over="ignore"):
        n = np.float64(k * sd / shift) ** 2
    if not n <= 2.0**62:
        raise InputError(f"sd: sd / shift = {sd / shift:.3g} needs {n:.3g} draws, beyond any sample")
    return max(2, int(np.ceil(n)))


def min_detectable_rate_shift(p, n, *, false_fail_rate, false_pass_rate=FALSE_PASS_RATE, entries=1):
    r"""The smallest change of a rate ``p`` (absolute) that a two-sided test of ``n`` Bernoulli draws
    detects with probability ``1 - false_pass_rate`` (normal approximation, the variance taken at the
    larger of ``p`` and the shifted rate: $\delta = (c\sqrt{p(1-p)} + z_{1-\beta}\sqrt{p'(1-p')})/\sqrt n$,
    solved by fixed-point iteration)."""
    tail, beta = _rates(false_fail_rate, false_pass_rate, entries, True)
    n = check_positive_int(n, "n")
    p = as_float_array(p, "p").astype(np.float64)
    if np.any((p < 0) | (p > 1)):
        raise InputError("p: rates must lie in [0, 1]")
    c, z = float(_st.norm.isf(tail)), float(_st.norm.isf(beta))
    delta = (c + z) * np.sqrt(np.maximum(p * (1 - p), 1.0 / n)) / np.sqrt(n)
    for _ in range(20):
        q = np.clip(p + delta, 0.0, 1.0)
        delta = (c * np.sqrt(p * (1 - p)) + z * np.sqrt(np.maximum(q * (1 - q), 1.0 / n))) / np.sqrt(n)
    return delta


def min_draws_for_rate_shift(p, shift, *, false_fail_rate, false_pass_rate=FALSE_PASS_RATE, entries=1) -> int:
    """The draws that make an absolute change ``shift`` of a rate ``p`` detectable (the inverse of
    [`min_detectable_rate_shift`][refattn.stats.min_detectable_rate_shift], normal approximation)."""
    tail, beta = _rates(false_fail_rate, false_pass_rate, entries, True)
    p = check_real(p, "p", minimum=0.0, maximum=1.0)
    shift = check_real(shift, "shift", minimum=0.0, low_open=True)
    q = min(1.0, p + shift)
    c, z = float(_st.norm.isf(tail)), float(_st.norm.isf(beta))
    return max(1, int(np.ceil(((c * np.sqrt(p * (1 - p)) + z * np.sqrt(q * (1 - q))) / shift) ** 2)))


def min_detectable_ks_distance(n, *, false_fail_rate, false_pass_rate=FALSE_PASS_RATE, entries=1) -> float:
    r"""The smallest sup-distance between the true and the claimed CDF that a one-sample
    Kolmogorov-Smirnov test of ``n`` draws detects with probability ``1 - false_pass_rate``.

    Derived from the Dvoretzky-Kiefer-Wolfowitz inequality with Massart's constant (Massart 1990),
    $P(\sup|F_n - F| > \varepsilon) \le 2e^{-2n\varepsilon^2}$: the test rejects when $D_n$ exceeds its
    critical value $c$, and under a true distance $D$, $D_n \ge D - \varepsilon_\beta$ with probability
    $\ge 1 - \beta$ for $\varepsilon_\beta = \sqrt{\ln(2/\beta)/(2n)}$; so $D = c + \varepsilon_\beta$ is
    detected (TensorFlow Probability's ``statistical_testing`` states its DKWM tests the same way)."""
    tail, beta = _rates(false_fail_rate, false_pass_rate, entries, False)
    n = check_positive_int(n, "n")
    crit = float(_st.kstwo.isf(tail, n))
    return crit + float(np.sqrt(np.log(2.0 / beta) / (2.0 * n)))


def _check_alpha(alpha) -> float:
    return check_real(alpha, "alpha", minimum=0.0, maximum=1.0, low_open=True, high_open=True)


def _draws_first(samples, axis, name="samples"):
    """``samples`` as float64 with the draws (``axis``) moved first."""
    x = as_float_array(samples, name).astype(np.float64)
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        raise InputTypeError(f"axis: expected an integer, got {type(axis).__name__}")
    if not -x.ndim <= axis < x.ndim:
        raise InputError(f"axis: {axis} is out of range for {name} of shape {x.shape}")
    return np.moveaxis(x, int(axis), 0)


def _target(value, shape, name):
    """``value`` (a float array) broadcast to the entries' ``shape``, or a ValueError naming ``name``."""
    arr = as_float_array(value, name).astype(np.float64)
    try:
        return np.broadcast_to(arr, shape)
    except ValueError:
        raise InputError(f"{name}: shape {arr.shape} does not broadcast to the entries' shape {shape}") from None


@dataclass(frozen=True)
class MeanTest:
    """Result of [`z_test_mean`][refattn.stats.z_test_mean] (arrays have the entries' shape)."""

    mean: np.ndarray
    stderr: np.ndarray
    z: np.ndarray
    critical: float
    alpha: float
    n: int

    @property
    def passed(self) -> bool:
        return bool(np.all(np.abs(self.z) <= self.critical))

    @property
    def worst(self) -> int:
        """Flat index of the entry with the largest |z|."""
        return int(np.argmax(np.abs(self.z))) if self.z.size else 0

    def summary(self) -> str:
        if not self.z.size:
            return "no entries tested"
        w = self.worst
        return (
            f"max |z| = {np.abs(self.z).ravel()[w]:.3f} vs critical {self.critical:.3f} "
            f"(alpha = {self.alpha:g}, Bonferroni over {self.z.size} entries, n = {self.n}); "
            f"worst entry {np.unravel_index(w, self.z.shape)}: mean {self.mean.ravel()[w]:.6g} "
            f"+- {self.stderr.ravel()[w]:.3g}"
        )


def z_test_mean(samples, truth, *, alpha: float, axis: int = 0) -> MeanTest:
    r"""Two-sided test of ``E[samples] == truth`` for every entry, family-wise level ``alpha``.

    ``samples`` has the draws along ``axis``; ``truth`` broadcasts to the remaining shape.
    The statistic is $z = (\bar X - \mu)/(s/\sqrt n)$; an entry fails when
    $|z| > t_{n-1}^{-1}(1 - \alpha/(2m))$, ``m`` the number of entries. An entry whose
    samples are all equal has ``z = 0`` if that value equals ``truth`` and ``inf`` otherwise.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> z_test_mean(rng.normal(1.0, 1.0, size=10_000), 1.0, alpha=1e-3).passed
    True
    >>> z_test_mean(rng.normal(1.1, 1.0, size=10_000), 1.0, alpha=1e-3).passed
    False
    """
    alpha = _check_alpha(alpha)
    x = _draws_first(samples, axis)
    n = x.shape[0]
    if n < 2:
        raise InputError(f"samples: need at least 2 draws along axis {axis}, got {n}")
    truth = _target(truth, x.shape[1:], "truth")
    # z is scale-free: standardise by the largest magnitude first, so 1e300 or 1e-300 samples neither
    # overflow nor underflow, then report the mean and standard error in the samples' own units
    c = max(float(np.max(np.abs(x), initial=0.0)), float(np.max(np.abs(truth), initial=0.0))) or 1.0
    xs, ts = x / c, truth / c
    mean_s = xs.mean(axis=0)
    se_s = xs.std(axis=0, ddof=1) / np.sqrt(n)
    mean, se = mean_s * c, se_s * c
    diff, se = mean_s - ts, se_s
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, diff / np.where(se > 0, se, 1.0), np.where(diff == 0, 0.0, np.inf))
    m = max(1, int(np.prod(x.shape[1:], dtype=np.int64)))
    crit = float(_st.t.ppf(1.0 - alpha / (2.0 * m), df=n - 1))
    return MeanTest(np.asarray(mean), np.asarray(se_s * c), np.asarray(z), crit, alpha, n)


def proportion_test(indicators, p, *, alpha: float, axis: int = 0):
    """Exact two-sided binomial tests of ``P[indicator] = p`` per entry, Bonferroni over entries.

    For 0/1 outcomes (collisions, coverage) the z-test's sample variance fails near 0 or 1
    (no failures observed gives a zero standard error); the exact test does not. Returns
    ``(passed, pvalues)``; the family-wise false-failure probability is at most ``alpha``.
    """
    from scipy.stats import binomtest

    alpha = _check_alpha(alpha)
    try:
        x = np.asarray(indicators)
    except Exception as exc:
        raise InputTypeError(f"indicators: cannot be converted to an array ({exc})") from None
    if x.dtype == np.bool_ or x.dtype.kind in "iu":
        x = x.astype(np.float64)
    x = _draws_first(x, axis, "indicators")
    if not np.all((x == 0) | (x == 1)):
        raise InputError("indicators: expected 0/1 outcomes")
    n = x.shape[0]
    if n < 1:
        raise InputError(f"indicators: need at least 1 draw along axis {axis}")
    hits = x.sum(axis=0).astype(np.int64)
    p = _target(p, hits.shape, "p")
    if np.any((p < 0) | (p > 1)):
        raise InputError("p: probabilities must lie in [0, 1]")
    pv = np.array([binomtest(int(h), n, float(q)).pvalue for h, q in zip(hits.ravel(), p.ravel())]).reshape(hits.shape)
    m = max(1, hits.size)
    return bool(np.all(pv > alpha / m)), pv


@dataclass(frozen=True)
class VarianceInterval:
    """Result of [`bootstrap_variance_interval`][refattn.stats.bootstrap_variance_interval]."""

    variance: np.ndarray
    low: np.ndarray
    high: np.ndarray
    alpha: float
    n: int
    n_boot: int

    def contains(self, value) -> np.ndarray:
        value = np.asarray(value, dtype=float)
        return (self.low <= value) & (value <= self.high)


def bootstrap_variance_interval(
    samples, *, alpha: float, rng, n_boot: int = 2000, axis: int = 0, method: str = "percentile"
) -> VarianceInterval:
    """Bootstrap ``1 - alpha`` interval for the variance of each entry.

    Resamples the draws (along ``axis``) with replacement ``n_boot`` times, in chunks, so
    memory stays at about 32 MB whatever ``n``. For a family of ``m`` entries pass
    ``alpha / m`` yourself (Bonferroni).

    ``method="percentile"`` takes the ``alpha/2`` and ``1 - alpha/2`` quantiles of the
    bootstrap variances (Efron & Tibshirani 1993, 13.3); it needs ``n_boot * alpha / 2 >= 5``.
    ``method="normal"`` uses the sample variance plus or minus ``z_{1-alpha/2}`` bootstrap
    standard errors (ibid. 13.2): the choice for small ``alpha`` (1e-6), where percentiles
    would need millions of resamples; it assumes the variance estimate is near Gaussian
    (large ``n``, finite fourth moment).
    """
    alpha = _check_alpha(alpha)
    n_boot = check_positive_int(n_boot, "n_boot", maximum=10**7)
    if method not in ("percentile", "normal"):
        raise InputError(f"method: expected 'percentile' or 'normal', got {method!r}")
    if method == "percentile" and n_boot * alpha / 2 < 5:
        raise InputError(
            f"n_boot: {n_boot} resamples cannot resolve alpha = {alpha:g} "
            f"(need n_boot * alpha / 2 >= 5, i.e. n_boot >= {int(np.ceil(10 / alpha))})"
        )
    gen = as_generator(rng)
    x = _draws_first(samples, axis)
    n = x.shape[0]
    if n < 2:
        raise InputError(f"samples: need at least 2 draws along axis {axis}, got {n}")
    check_allocation(n_boot * x.size, "n_boot, samples", "the bootstrap (n_boot resamples of every draw)")
    flat = x.reshape(n, -1)  # (n, E)
    chunk = max(1, int(4e6 // max(1, flat.size)))
    boots = []
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        idx = gen.integers(0, n, size=(b, n))  # (b, n)
        boots.append(flat[idx].var(axis=1, ddof=1))  # (b, E)
    boot = np.concatenate(boots, axis=0)
    var = check_finite_result(flat.var(axis=0, ddof=1), "samples", "the sample variance")
    if method == "percentile":
        low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2], axis=0)
    else:
        half = float(_st.norm.ppf(1 - alpha / 2)) * boot.std(axis=0, ddof=1)
        low, high = var - half, var + half
    shape = x.shape[1:]
    return VarianceInterval(var.reshape(shape), low.reshape(shape), high.reshape(shape), alpha, n, n_boot)
