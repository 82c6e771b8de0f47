r"""``--kind kernel``: a random-feature estimator ``fn(q, k, seed) -> K_hat (T, S)`` of the
softmax kernel ``exp(s q k^T)``, ``s = 1/sqrt(H)``.

Checks (Performer, Choromanski et al. 2021; the docs' Performer page):

1. **Unbiased, entrywise** (Lemma 1): ``E[K_hat_ij] = exp(s q_i.k_j)`` for every pair, by
   z-tests with Bonferroni over the ``T S`` pairs. The probe rows are chosen to expose the
   usual biases: axis-aligned rows (plain-QR orthogonal features put a sign bias on the first
   coordinates), the all-ones direction, mean-shifted rows (large ``|x + y|``: fixed-norm
   features estimate SMREG < SM there, Performer Theorem 1) and random rows.
2. **Unbiased, pooled**: the per-draw average of ``K_hat / K - 1`` over all pairs has mean 0
   (one z-test; far more power against a bias shared by all pairs, e.g. a 2% scale).
3. **Variance** (always judged): with the feature count ``m``, the per-draw statistic
   ``u = mean_ij (K_hat_ij - K_ij)^2 / MSE_ij`` has mean 1, where ``MSE`` is Lemma 2's closed
   form (iid Gaussian projections) or the exact orthogonal-feature MSE
   ([`refattn.theory.mse_orthogonal`][refattn.performer.theory.mse_orthogonal]); for combinations without a closed form, ``u``
   (normalised by ``K^2``) is compared with refattn's own estimator by a Welch two-sample test.
   Without ``m``, the variance is judged against the largest any estimator of the claimed kind can
   have, at ``m = 1`` (one-sided; the MSE falls with ``m``), and the feature count the sample fits
   is noted: an estimator with noise beyond any feature count fails.
4. **Consistency** (when ``fn`` takes ``m=``): the same variance check at ``4 m``: the error
   must fall as the closed form says when the feature count grows.

**Power.** The pooled bias check must be able to detect a relative bias of ``--max-bias`` (1%)
and the variance checks a variance ratio of ``--max-variance-ratio`` (10%), with probability
0.99 at their share of alpha; the kind draws more (up to 16 times the draws, within the budget)
when the first draws fall short, and reports INCONCLUSIVE when even that cannot reach it.

FAVOR++ (``method="favorpp"``, Likhosherstov et al. 2022; the docs' Performer page) is judged at its
parameter ``A``: given, or (``A=None``) the optimal ``A*`` that refattn computes from the data
([`refattn.theory.favorpp_optimal_A`][refattn.performer.theory.favorpp_optimal_A] at the pair average of ``|x_i + y_j|^2`` of the probe
rows, as [`refattn.performer.attention.performer_attention`][refattn.performer.attention.performer_attention] does). The estimate is unbiased for every
``A < 1/8``, so the mean checks do not depend on it; the variance is
[`refattn.theory.favorpp_variance`][refattn.performer.theory.favorpp_variance] ``/ m`` for iid projections (derived, checked by Monte
Carlo in proofs_tests/performer/test_features.py) and refattn's own estimator otherwise.
"""

from __future__ import annotations

import math

import numpy as np

from refattn._validation import InputError
from refattn.montecarlo import kernel_samples
from refattn.theory import (
    favorpp_optimal_A,
    favorpp_phi,
    favorpp_variance,
    mse_hyperbolic,
    mse_orthogonal,
    mse_positive,
    mse_trigonometric,
)

__all__ = ["check_kernel", "probe_rows", "KERNEL_METHODS", "favorpp_A"]

KERNEL_METHODS = ("positive", "hyperbolic", "trigonometric", "favorpp")
_CLOSED_FORMS = {("positive", "gaussian"): mse_positive, ("hyperbolic", "gaussian"): mse_hyperbolic,
                 ("trigonometric", "gaussian"): mse_trigonometric, ("positive", "orthogonal"): mse_orthogonal}


def probe_rows(n, H, norm, rng):
    """``n`` scaled rows ``(n, H)`` of norm ``norm``: axis-aligned, all-ones, mean-shifted, random.

    Row kinds: ``e_0``, ``e_1`` (``e_0`` again when ``H = 1``), the all-ones direction, a
    mean-shifted row (all-ones plus noise 0.3), then random Gaussian directions. No two rows
    are antipodal (``x + y = 0`` makes the positive estimator exact, a zero-variance entry).
    """
    rows = np.empty((n, H))
    ones = np.ones(H) / math.sqrt(H)
    for i in range(n):
        kind = i if i < 4 else 4
        if kind == 0:
            r = np.eye(H)[0]
        elif kind == 1:
            r = np.eye(H)[min(1, H - 1)]
        elif kind == 2:
            r = ones
        elif kind == 3:
            r = ones + 0.3 * rng.standard_normal(H)
        else:
            r = rng.standard_normal(H)
        rows[i] = norm * r / np.linalg.norm(r)
    return rows


def favorpp_A(x, y, A=None):
    """FAVOR++'s ``A`` for scaled rows ``x (T, d)``, ``y (S, d)``: ``A`` itself when given (checked
    ``< 1/8``), else the optimal ``A*`` at the pair average of ``|x_i + y_j|^2``."""
    if A is not None:
        A = float(A)
        if not (math.isfinite(A) and A < 0.125):
            raise InputError(f"A: FAVOR++ needs a finite A < 1/8, got {A}")
        return A
    return float(favorpp_optimal_A(float(favorpp_phi(x, y)), x.shape[-1]))


def _closed_mse(method, projection, A):
    """The closed-form MSE ``(x, y, m) -> MSE`` of a method and projection, or None."""
    if (method, projection) == ("favorpp", "gaussian"):
        return lambda a, b, mm: favorpp_variance(a, b, A) / mm  # m iid terms
    return _CLOSED_FORMS.get((method, projection))


def _variance_statistic(samples, x, y, truth, method, projection, m, A):
    """Per draw ``u = mean_ij (K_hat_ij - K_ij)^2 / MSE_ij(m)`` (closed form: mean 1 for a correct
    estimator), or ``mean_ij (K_hat_ij - K_ij)^2 / K_ij^2`` where no closed form exists (None, u)."""
    with np.errstate(over="ignore", invalid="ignore"):
        err2 = (samples - truth) ** 2  # (n, T, S); overflow is judged (a non-finite statistic fails)
    closed = _closed_mse(method, projection, A)
    if closed is None:
        with np.errstate(over="ignore", invalid="ignore"):
            return None, (err2 / truth**2).mean(axis=(1, 2))
    mse = closed(x[:, None, :], y[None, :, :], m)  # (T, S)
    zero = mse <= 1e-300  # x + y = 0: the positive estimator is exact there; judged by the mean test
    with np.errstate(over="ignore", invalid="ignore"):
        return mse, (err2[:, ~zero] / mse[~zero]).mean(axis=1)


def _variance_check(run, samples, x, y, truth, method, projection, m, label, A=0.0):
    """Mean of ``u = mean (K_hat - K)^2 / MSE`` is 1 (closed form) or equals refattn's (two-sample)."""
    mse, u = _variance_statistic(samples, x, y, truth, method, projection, m, A)
    tol = run.max_variance_ratio
    if mse is not None:
        _projection_hint(run, samples, x, y, truth, method, projection, m, u, A)
        return run.mean_check(f"{label} (m = {m})", u[:, None], 1.0,
                              f"mean squared error / closed-form MSE is 1 ({method}, {projection}, m = {m})",
                              tolerance=tol, what="variance ratio")
    ref_u = _reference_u(run, x, y, truth, method, projection, m, len(samples), A)
    return run.two_sample_check(f"{label} (m = {m})", u[:, None], ref_u[:, None],
                                f"relative MSE equals refattn's {method}/{projection} estimator at m = {m}"
                                + (f" (A = {A:.4g})" if method == "favorpp" else ""), tolerance=tol,
                                what="variance ratio")


def _projection_hint(run, samples, x, y, truth, method, projection, m, u, A):
    """A note when the squared errors miss the claimed projection's closed form by far (|z| > 5) but fit
    the other projection's (|z| < 2): iid features judged as orthogonal ones, or the reverse. A hint
    beside the verdict, which stays the claim's."""
    other = {"orthogonal": "gaussian", "gaussian": "orthogonal"}.get(projection)
    if other is None or _closed_mse(method, other, A) is None or len(u) < 20:
        return

    def z(v):
        return (float(np.mean(v)) - 1.0) / (float(np.std(v, ddof=1)) / np.sqrt(len(v)) or np.inf)

    _, u_other = _variance_statistic(samples, x, y, truth, method, other, m, A)
    if np.all(np.isfinite(u)) and abs(z(u)) > 5 and abs(z(u_other)) < 2:
        what = "iid (gaussian)" if other == "gaussian" else "orthogonal"
        run.report.notes.append(f"variance (m = {m}): the squared errors fit {what} features' closed form, not "
                                f"{projection} ones: claim it with --projection {other} "
                                f"(check(..., projection={other!r})) if that is what fn draws")


def _reference_u(run, x, y, truth, method, projection, m, n, A):
    """refattn's own estimator's per-draw relative MSE ``mean (K_hat - K)^2 / K^2`` at ``m`` features."""
    P = (x.shape[0], y.shape[0], x.shape[1])
    xx = np.broadcast_to(x[:, None, :], P).reshape(-1, x.shape[1])
    yy = np.broadcast_to(y[None, :, :], P).reshape(-1, x.shape[1])
    ref = kernel_samples(xx, yy, estimator=method, projection=projection, m=m, n_draws=n, rng=run.rng, A=A)
    return ((ref - truth.ravel()) ** 2 / truth.ravel() ** 2).mean(axis=1)


def _variance_without_m(run, samples, x, y, truth, method, projection, A):
    """Without the feature count: the variance judged against the largest any estimator of the claimed
    kind can have, at ``m = 1`` (the MSE falls with ``m``: ``MSE_1 / m`` for iid rows, below it for
    orthogonal ones), by a one-sided test of ``E[u_1] <= 1``, ``u_1 = mean (K_hat - K)^2 / MSE_1``
    (closed form), or of ``E[u] <=`` refattn's own estimator's at ``m = 1``. Notes the feature count
    the sample's variance fits."""
    mse, u = _variance_statistic(samples, x, y, truth, method, projection, 1, A)
    if mse is not None:
        bound, what = 1.0, "MSE at m = 1 (closed form)"
    else:
        bound, what = float(_reference_u(run, x, y, truth, method, projection, 1, len(samples), A).mean()), \
            "refattn's MSE at m = 1"
    verdict = run.one_sided_check("variance (m unknown)", u, bound,
                                  f"the squared error is at most the largest a {method}/{projection} estimator can "
                                  f"have, the {what} (no --features given)", tolerance=run.max_variance_ratio)
    if verdict is not None and np.isfinite(u).all() and u.mean() > 0:
        run.report.notes.append(f"variance: no feature count given (--features); the sample's squared error fits "
                                f"m = {bound / u.mean():.3g} features of the claimed kind (iid scaling)")
    return verdict


#: Statistical checks the kernel kind plans (for the power each needs: its share of alpha).
PLANNED_CHECKS = 4


def check_kernel(run, *, method="positive", projection="orthogonal", m=None, A=None, T=8, S=8, H=8, norm=0.6):
    """Run the kernel checks on ``run.fn`` (see the module docstring); verdicts go to ``run.report``."""
    if method not in KERNEL_METHODS:
        raise InputError(f"method: expected one of {KERNEL_METHODS} for --kind kernel, got {method!r}")
    if A is not None and method != "favorpp":
        raise InputError(f"A: only FAVOR++ (method 'favorpp') has a parameter A, not {method!r}")
    data_rng = np.random.default_rng([run.report.seed, 1])
    s = 1.0 / math.sqrt(H)
    x = probe_rows(T, H, norm, data_rng)  # scaled rows
    y = probe_rows(S, H, norm, data_rng)
    q, k = x / math.sqrt(s), y / math.sqrt(s)  # the callable sees raw q, k with the default scale
    truth = np.exp(x @ y.T)  # (T, S) = exp(s q k^T)
    A = favorpp_A(x, y, A) if method == "favorpp" else 0.0
    takes_m = m is not None and run.accepts("m")

    def sampler(mm):
        kw = {"m": mm} if takes_m else {}
        return lambda seed: run.call((q.copy(), k.copy(), seed), kw, shape=(T, S))

    def pooled(smp):
        with np.errstate(over="ignore", invalid="ignore"):
            return (smp / truth - 1).mean(axis=(1, 2))

    def power_stats(smp, mm):
        """The bias and variance statistics' spreads, and the tolerances they must reach."""
        mse, u = _variance_statistic(smp, x, y, truth, method, projection, mm or 1, A)
        scale = 1.0 if mse is not None else float(np.mean(u)) if np.isfinite(u).all() else 1.0
        spread = run.sd(u) * (1.0 if mse is not None else np.sqrt(2.0))  # two-sample: refattn's draws spread too
        bias_failing = run.failing(pooled(smp), 0.0, planned_checks=PLANNED_CHECKS)
        var_failing = mse is not None and mm is not None and run.failing(u, 1.0, planned_checks=PLANNED_CHECKS)
        return [(run.sd(pooled(smp)), run.max_bias, 1.0, bias_failing),
                (spread, run.max_variance_ratio, scale, var_failing)]

    def powered(mm, label, share):
        """Draws at ``mm`` features, more of them when the bias and variance checks need them."""
        return run.collect_for_power(sampler(mm), run.n_draws, label, lambda smp: power_stats(smp, mm),
                                     planned_checks=PLANNED_CHECKS, share=share)

    n_collects = 2 if takes_m else 1
    samples, problem = powered(m, "kernel draws", 1 / n_collects)
    if problem is not None:
        run.problem("call fn(q, k, seed)", problem)
        return
    run.mean_check("unbiased (entrywise)", samples, truth,
                   "E[K_hat_ij] = exp(s q_i.k_j) for every probe pair (Performer Lemma 1)")
    run.mean_check("unbiased (pooled)", pooled(samples)[:, None], 0.0,
                   "the average relative error over all pairs has mean 0", relative_to=1.0, tolerance=run.max_bias)
    if m is None:
        _variance_without_m(run, samples, x, y, truth, method, projection, A)
        run.skip("consistency", "pass the feature count m (--features) to check the error at 4 m")
        return
    _variance_check(run, samples, x, y, truth, method, projection, m, "variance", A)
    if not takes_m:
        run.skip("consistency", "fn takes no m= keyword: the error at a larger feature count is not checked")
        return
    more, problem = powered(4 * m, "kernel draws at 4m", 1.0)
    if problem is not None:
        run.problem(f"call fn(q, k, seed, m={4 * m})", problem)
        return
    _variance_check(run, more, x, y, truth, method, projection, 4 * m, "consistency", A)
