"""`refattn theory CLAIM`: Monte Carlo estimates next to the closed forms of refattn.theory.

Each claim is a table: the closed-form value, the empirical value from
[`refattn.montecarlo`][refattn.montecarlo] with a bootstrap (normal) interval at level ``1 - alpha``, and
whether the interval covers the closed form. Claims:

- ``lemma2``: MSE of the positive, hyperbolic and trigonometric estimators (iid) by angle.
- ``orthogonal``: ORF MSE (exact series) vs the Theorem 2 bound vs the iid MSE, by angle.
- ``favorpp``: FAVOR++ at the optimal ``A*`` vs FAVOR+ (per-term variance), by norm.
- ``smreg``: the mean of regular features vs ``SMREG`` (Theorem 1) vs ``SM``, by norm.
- ``collision``: collision rates of SimHash (``(1 - theta/pi)^r``, Charikar 2002) by angle and
  bits, and of E2LSH (Datar et al. 2004) by distance / width, with exact (Clopper-Pearson)
  binomial intervals.
- ``scatterbrain``: Scatterbrain's entry estimate (Chen et al. 2021) is unbiased and has
  variance ``(1 - P) Var_pfm`` (derived, docs/scatterbrain.md), by angle and SimHash bits.
- ``rpca``: principal component pursuit (Candes et al. 2011) recovers a planted low rank +
  sparse matrix (relative error of ``L`` <= 1e-5) at rank 0.05 n with 5% and 10% corruption
  (claimed rate 1), and fails far outside the region (rank 0.3 n, 30%; claimed rate 0);
  ``min(draws, 20)`` trials per setting at ``n = 100``, exact binomial intervals of the rate.

Inputs are pairs at a given norm and angle in ``d`` dimensions (scaled rows). Variance
checks need moderate ``|z|^2`` (the docs' Performer page: heavy tails), hence the default norm 0.5.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from refattn import theory
from refattn._validation import InputError, as_generator
from refattn.lsh.hashes import e2lsh, e2lsh_draw, simhash, simhash_planes
from refattn.montecarlo import kernel_samples, scatterbrain_samples
from refattn.scatterbrain import rpca  # looked up at call time: the power twin patches rpca.robust_pca
from scipy.stats import norm as _norm

from refattn.stats import bootstrap_variance_interval, min_detectable_mean_shift, z_test_mean

__all__ = ["CLAIMS", "CLAIM_HELP", "ClaimRow", "claim_settings", "run_claim", "format_claim"]


@dataclass
class ClaimRow:
    quantity: str
    setting: str
    closed_form: float
    empirical: float
    low: float
    high: float

    @property
    def covered(self) -> bool:
        return bool(self.low <= self.closed_form <= self.high)

    def detectable(self, alpha) -> float:
        """The smallest relative error of the closed form that this row would detect with probability
        0.99: its interval (level ``1 - alpha``) read as ``estimate +- z se``, then
        [`refattn.stats.min_detectable_mean_shift`][refattn.stats.min_detectable_mean_shift] of that ``se``, over ``|closed form|``."""
        if math.isnan(self.empirical) or self.closed_form == 0:
            return float("nan")
        se = (self.high - self.low) / 2 / float(_norm.isf(alpha / 2))
        return float(min_detectable_mean_shift(se, false_fail_rate=alpha)) / abs(self.closed_form)


def _pair(angle_deg, norm, d):
    return theory.pair_at_angle(angle_deg, norm, norm, d)


def _mse_row(label, setting, samples, truth, expected, alpha, gen):
    err = samples - truth
    iv = bootstrap_variance_interval(err, alpha=alpha, rng=gen, n_boot=200, method="normal")
    mse = float(np.mean(err**2))
    # intervals for the variance about the true mean: shift by the (tiny) squared bias
    bias2 = float(np.mean(err)) ** 2
    # an MSE is >= 0: the normal interval's lower end clipped at 0 (coverage only grows)
    return ClaimRow(label, setting, float(expected), mse, max(0.0, float(iv.low) + bias2), float(iv.high) + bias2)


def _lemma2(draws, d, m, norm, alpha, gen, progress):
    rows = []
    for ang in progress([0, 45, 90, 135, 170]):  # not 180: z = 0 up to rounding
        x, y = _pair(ang, norm, d)
        sm = float(theory.softmax_kernel(x, y))
        for est, formula in (("positive", theory.mse_positive), ("hyperbolic", theory.mse_hyperbolic),
                             ("trigonometric", theory.mse_trigonometric)):
            s = kernel_samples(x, y, estimator=est, projection="gaussian", m=m, n_draws=draws, rng=gen)[:, 0]
            rows.append(_mse_row(f"MSE {est}", f"angle {ang}", s, sm, formula(x, y, m), alpha, gen))
    return rows


def _orthogonal(draws, d, m, norm, alpha, gen, progress):
    rows = []
    m = min(m, d)
    for ang in progress([0, 60, 90, 120]):
        x, y = _pair(ang, norm, d)
        sm = float(theory.softmax_kernel(x, y))
        s = kernel_samples(x, y, projection="orthogonal", m=m, n_draws=draws, rng=gen)[:, 0]
        rows.append(_mse_row("MSE orthogonal", f"angle {ang}", s, sm, theory.mse_orthogonal(x, y, m), alpha, gen))
        rows.append(ClaimRow("Theorem 2 bound", f"angle {ang}", float(theory.theorem2_bound(x, y, m)),
                             float("nan"), float("nan"), float("nan")))
        rows.append(ClaimRow("MSE iid", f"angle {ang}", float(theory.mse_positive(x, y, m)),
                             float("nan"), float("nan"), float("nan")))
    return rows


def _favorpp(draws, d, m, norm, alpha, gen, progress):
    rows = []
    for nrm in progress([0.25 * norm, 0.5 * norm, norm, 1.5 * norm]):
        x, y = _pair(30, nrm, d)
        sm = float(theory.softmax_kernel(x, y))
        A = float(theory.favorpp_optimal_A(float(np.sum((x + y) ** 2)), d))
        s = kernel_samples(x, y, estimator="favorpp", projection="gaussian", m=m, n_draws=draws, rng=gen, A=A)[:, 0]
        rows.append(_mse_row(f"MSE favor++ (A*={A:.4f})", f"norm {nrm:.3g}", s, sm,
                             theory.favorpp_variance(x, y, A) / m, alpha, gen))
        rows.append(ClaimRow("MSE favor+", f"norm {nrm:.3g}", float(theory.mse_positive(x, y, m)),
                             float("nan"), float("nan"), float("nan")))
    return rows


def _smreg(draws, d, m, norm, alpha, gen, progress):
    rows = []
    for nrm in progress([0.5 * norm, norm, 2 * norm]):
        x, y = _pair(0, nrm, d)
        s = kernel_samples(x, y, projection="regular", m=m, n_draws=draws, rng=gen)[:, 0]
        smreg = float(theory.smreg_ratio(x, y) * theory.softmax_kernel(x, y))
        t = z_test_mean(s, smreg, alpha=alpha)
        half = t.critical * float(t.stderr)
        rows.append(ClaimRow("mean regular = SMREG", f"norm {nrm:.3g}", smreg, float(t.mean),
                             float(t.mean) - half, float(t.mean) + half))
        rows.append(ClaimRow("SM", f"norm {nrm:.3g}", float(theory.softmax_kernel(x, y)),
                             float("nan"), float("nan"), float("nan")))
    return rows


def _rate_row(label, setting, hits, n, claimed, alpha):
    """A proportion against its claimed value, with the exact (Clopper-Pearson) interval."""
    from scipy.stats import binomtest

    ci = binomtest(int(hits), int(n), float(np.clip(claimed, 0, 1))).proportion_ci(1 - alpha, method="exact")
    return ClaimRow(label, setting, float(claimed), hits / n, float(ci.low), float(ci.high))


def _collision(draws, d, m, norm, alpha, gen, progress):
    rows = []
    for r in progress([1, 2, 4]):
        for ang in (30, 60, 90, 135):
            xy = np.stack(_pair(ang, 1.0, d))
            codes = simhash(xy, simhash_planes(d, r, gen, tables=draws))  # (draws, 2): one hash per draw
            rows.append(_rate_row(f"SimHash r={r}", f"angle {ang}", int(np.sum(codes[:, 0] == codes[:, 1])), draws,
                                  float(theory.simhash_collision(np.radians(ang), r)), alpha))
    for c in (0.25, 1.0, 2.0):  # distance in units of the bucket width
        x = np.zeros(d)
        y = np.zeros(d)
        y[0] = c
        a, b = e2lsh_draw(d, 1.0, gen, tables=draws)
        buckets = e2lsh(np.stack([x, y]), a, b, 1.0)  # (draws, 2)
        rows.append(_rate_row("E2LSH", f"c/w {c:g}", int(np.sum(buckets[:, 0] == buckets[:, 1])), draws,
                              float(theory.e2lsh_collision(c, 1.0)), alpha))
    return rows


def _scatterbrain(draws, d, m, norm, alpha, gen, progress):
    rows = []
    for r in progress([1, 2]):
        for ang in (30, 90, 150):  # not 0: there P = 1 and the estimate is exact (zero variance)
            x, y = _pair(ang, norm, d)
            est, _ = scatterbrain_samples(x, y, m=m, r=r, n_draws=draws, rng=gen)
            est = est[:, 0]
            sm = float(theory.softmax_kernel(x, y))
            P = float(theory.simhash_collision(np.radians(ang), r))
            var_pfm = float(theory.mse_positive(x, y, m))
            t = z_test_mean(est, sm, alpha=alpha)
            half = t.critical * float(t.stderr)
            setting = f"r={r} angle {ang}"
            rows.append(ClaimRow("mean = exp(x.y)", setting, sm, float(t.mean), float(t.mean) - half,
                                 float(t.mean) + half))
            rows.append(_mse_row("var = (1-P) Var_pfm", setting, est, sm, (1 - P) * var_pfm, alpha, gen))
            rows.append(ClaimRow("Var_pfm (Performer)", setting, var_pfm, float("nan"), float("nan"), float("nan")))
    return rows


def _rpca(draws, d, m, norm, alpha, gen, progress):
    from threadpoolctl import threadpool_limits


    n, trials = 100, min(draws, 20)
    rows = []
    # one BLAS thread: at n = 100 threads only add overhead, and on a loaded machine OpenBLAS's
    # spinning threads made each SVD about 300x slower
    with threadpool_limits(limits=1, user_api="blas"):
        for rank_frac, frac, claimed in progress([(0.05, 0.05, 1.0), (0.05, 0.10, 1.0), (0.3, 0.3, 0.0)]):
            ok = 0
            for _ in range(trials):
                L0, S0 = rpca.planted_low_rank_plus_sparse(n, max(1, int(rank_frac * n)), frac, gen)
                res = _quiet_rpca(L0 + S0)
                ok += int(np.linalg.norm(res.L - L0) <= 1e-5 * np.linalg.norm(L0))
            rows.append(_rate_row("recovery rate", f"rank {rank_frac:g}n, {frac:.0%}", ok, trials, claimed, alpha))
    return rows


def _quiet_rpca(M):
    """PCP outside its region may stop at max_iter: that is an expected outcome here, not a warning."""
    import warnings


    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rpca.RPCANotConverged)
        return rpca.robust_pca(M, max_iter=100)


CLAIMS = {"lemma2": _lemma2, "orthogonal": _orthogonal, "favorpp": _favorpp, "smreg": _smreg,
          "collision": _collision, "scatterbrain": _scatterbrain, "rpca": _rpca}

#: One line per claim: what its table checks and where the claim comes from (``refattn theory --help``).
CLAIM_HELP = {
    "lemma2": "MSE of the positive, hyperbolic and trigonometric estimators of exp(x.y) by angle "
              "(Choromanski et al. 2021, Lemma 2)",
    "orthogonal": "MSE of orthogonal features (exact, derived) against the Theorem 2 bound and the iid MSE, by angle "
                  "(Choromanski et al. 2021, Theorem 2)",
    "favorpp": "FAVOR++ at its optimal A* against FAVOR+, by norm (Likhosherstov et al. 2022)",
    "smreg": "regular (fixed-norm) features estimate SMREG, not SM, by norm (Choromanski et al. 2021, Theorem 1)",
    "collision": "collision rates of SimHash (Charikar 2002) by angle and bits, and of E2LSH "
                 "(Datar et al. 2004) by distance",
    "scatterbrain": "Scatterbrain's entry estimate is unbiased with variance (1 - P) Var_pfm (derived), by angle "
                    "and bits (Chen et al. 2021)",
    "rpca": "principal component pursuit recovers low rank + sparse inside its region and fails outside "
            "(Candes et al. 2011)",
}

#: The settings each claim reads (the others are ignored by it and not reported).
_USES = {"lemma2": ("d", "m", "norm"), "orthogonal": ("d", "m", "norm"), "favorpp": ("d", "m", "norm"),
         "smreg": ("d", "m", "norm"), "collision": ("d",), "scatterbrain": ("d", "m", "norm"), "rpca": ()}


def claim_settings(name, *, draws=20_000, d=16, m=16, norm=0.5, alpha=1e-3, seed=0) -> dict:
    """The settings a claim's table was computed with (those it reads): draws, alpha, seed and, by
    claim, the dimension ``d``, the projection rows ``m`` and the norm of the scaled rows."""
    if name not in CLAIMS:
        raise InputError(f"claim: unknown {name!r}; expected one of {sorted(CLAIMS)}")
    used = {"d": d, "m": min(m, d) if name == "orthogonal" else m, "norm": norm}
    out = {k: used[k] for k in _USES[name]}
    if name == "rpca":
        out.update(n=100, trials=min(draws, 20))
    else:
        out["draws"] = draws
    out.update(alpha=alpha, seed=seed)
    return out


def run_claim(name, *, draws=20_000, d=16, m=16, norm=0.5, alpha=1e-3, seed=0, progress=None):
    """Rows of one claim's table (`ClaimRow`)."""
    from tqdm.auto import tqdm

    if name not in CLAIMS:
        raise InputError(f"claim: unknown {name!r}; expected one of {sorted(CLAIMS)}")
    gen = as_generator(seed)
    bar = (lambda it: tqdm(it, desc=name, leave=False, disable=None)) if progress is None else progress
    return CLAIMS[name](draws, d, m, norm, alpha, gen, bar)


def _percent(x) -> str:
    """A relative size as a percentage; ``-`` where it is undefined (a closed form of 0)."""
    return "-" if math.isnan(x) else f"{x:.2%}"


def format_claim(name, rows, settings=None) -> str:
    """The claim's table, headed by what it checks and the ``settings`` it was computed with."""
    alpha = float((settings or {}).get("alpha", 1e-3))
    head = (f"{'quantity':<28} {'setting':<12} {'closed form':>12} {'empirical':>12} {'interval':>27} {'covers':>6} "
            f"{'detectable':>10}")
    lines = [f"claim: {name}: {CLAIM_HELP[name]}"]
    if settings:
        lines.append("settings: " + ", ".join(f"{k} = {v:g}" if isinstance(v, float) else f"{k} = {v}"
                                              for k, v in settings.items()))
    lines += [head, "-" * len(head)]
    for r in rows:
        if math.isnan(r.empirical):
            lines.append(f"{r.quantity:<28} {r.setting:<12} {r.closed_form:>12.5g}")
        else:
            lines.append(f"{r.quantity:<28} {r.setting:<12} {r.closed_form:>12.5g} {r.empirical:>12.5g} "
                         f"[{r.low:>11.5g}, {r.high:>11.5g}] {'yes' if r.covered else 'NO':>6} "
                         f"{_percent(r.detectable(alpha)):>10}")
    lines.append(f"detectable: the smallest relative error of the closed form each row detects with probability "
                 f"0.99 at alpha = {alpha:g} (refattn.stats.min_detectable_mean_shift)")
    return "\n".join(lines)


def rows_as_dicts(rows, alpha=1e-3):
    return [{**asdict(r), "covered": r.covered, "detectable": r.detectable(alpha)} for r in rows]
