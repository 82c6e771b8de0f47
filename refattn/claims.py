"""`refattn theory CLAIM`: Monte Carlo estimates next to the closed forms of refattn.theory.

Each claim is a table: the closed-form value, the empirical value from
:mod:`refattn.montecarlo` with a bootstrap (normal) interval at level ``1 - alpha``, and
whether the interval covers the closed form. Claims:

- ``lemma2``: MSE of the positive, hyperbolic and trigonometric estimators (iid) by angle.
- ``orthogonal``: ORF MSE (exact series) vs the Theorem 2 bound vs the iid MSE, by angle.
- ``favorpp``: FAVOR++ at the optimal ``A*`` vs FAVOR+ (per-term variance), by norm.
- ``smreg``: the mean of regular features vs ``SMREG`` (Theorem 1) vs ``SM``, by norm.

Inputs are pairs at a given norm and angle in ``d`` dimensions (scaled rows). Variance
checks need moderate ``|z|^2`` (MATH.md: heavy tails), hence the default norm 0.5.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from refattn import theory
from refattn.montecarlo import kernel_samples
from refattn.stats import as_generator, bootstrap_variance_interval, z_test_mean

__all__ = ["CLAIMS", "ClaimRow", "run_claim", "format_claim"]


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


def _pair(angle_deg, norm, d):
    return theory.pair_at_angle(angle_deg, norm, norm, d)


def _mse_row(label, setting, samples, truth, expected, alpha, gen):
    err = samples - truth
    iv = bootstrap_variance_interval(err, alpha=alpha, rng=gen, n_boot=200, method="normal")
    mse = float(np.mean(err**2))
    # intervals for the variance about the true mean: shift by the (tiny) squared bias
    bias2 = float(np.mean(err)) ** 2
    return ClaimRow(label, setting, float(expected), mse, float(iv.low) + bias2, float(iv.high) + bias2)


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


CLAIMS = {"lemma2": _lemma2, "orthogonal": _orthogonal, "favorpp": _favorpp, "smreg": _smreg}


def run_claim(name, *, draws=20_000, d=16, m=16, norm=0.5, alpha=1e-3, seed=0, progress=None):
    """Rows of one claim's table (:class:`ClaimRow`)."""
    from tqdm.auto import tqdm

    if name not in CLAIMS:
        raise ValueError(f"claim: unknown {name!r}; expected one of {sorted(CLAIMS)}")
    gen = as_generator(seed)
    bar = (lambda it: tqdm(it, desc=name, leave=False, disable=None)) if progress is None else progress
    return CLAIMS[name](draws, d, m, norm, alpha, gen, bar)


def format_claim(name, rows) -> str:
    head = f"{'quantity':<28} {'setting':<12} {'closed form':>12} {'empirical':>12} {'interval':>27} {'covers':>6}"
    lines = [f"claim: {name}", head, "-" * len(head)]
    for r in rows:
        if math.isnan(r.empirical):
            lines.append(f"{r.quantity:<28} {r.setting:<12} {r.closed_form:>12.5g}")
        else:
            lines.append(f"{r.quantity:<28} {r.setting:<12} {r.closed_form:>12.5g} {r.empirical:>12.5g} "
                         f"[{r.low:>11.5g}, {r.high:>11.5g}] {'yes' if r.covered else 'NO':>6}")
    return "\n".join(lines)


def rows_as_dicts(rows):
    return [{**asdict(r), "covered": r.covered} for r in rows]
