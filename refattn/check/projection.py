r"""``--kind projection``: a sampler ``fn(m, d, seed) -> W (m, d)`` whose rows are meant to be
marginally ``N(0, I_d)`` (what keeps every Performer estimator unbiased, Lemma 1).

Checks over ``n`` seeds (statistical unless said otherwise):

1. **Mean 0**: z-tests per entry ``W_rc``, Bonferroni over ``m d`` entries.
2. **Covariance I**: ``E[w_r w_r^T] = I`` per row ``r``, z-tests per entry of the upper
   triangle, Bonferroni; and pooled, ``E[mean_r |w_r|^2 / d] = 1`` (a rescaled sampler).
3. **Sign symmetry**: ``P(W_rc > 0) = 1/2`` per entry, exact binomial tests
   ([`refattn.stats.proportion_test`][refattn.stats.proportion_test]). Plain (LAPACK) QR without Mezzadri's sign
   correction fails: its rows have a fixed sign on the leading coordinates (Mezzadri 2007).
4. **Norms chi_d**: per row index, the Kolmogorov-Smirnov test of ``|w_r|^2`` against
   ``chi^2_d``, Bonferroni over rows. Norms that never vary are reported as fixed-norm
   ("regular") features, which estimate SMREG, not softmax (Performer Theorem 1);
   with ``projection="regular"`` claimed, fixed norms ``sqrt(d)`` are required instead.
5. **Orthogonality within blocks** (exact, when claimed with ``projection="orthogonal"``):
   rows ``[b d, (b + 1) d)`` are mutually orthogonal.

The exact checks allow the rounding of the precision of the sampler's values: ``1000 eps`` of
that precision (a float32 sampler, PyTorch's default, gets float32's allowance, also when it
returns its rows upcast to float64; a float64 sampler gets float64's).
"""

from __future__ import annotations

import numpy as np
from scipy import stats as _st

from refattn._validation import InputError
from refattn.check.verdict import Verdict, bonferroni_p
from refattn.precision import values_eps
from refattn.stats import proportion_test

__all__ = ["check_projection"]


def check_projection(run, *, projection="gaussian", m=16, d=8):
    """Run the projection checks on ``run.fn``; verdicts go to ``run.report``."""
    if projection not in ("gaussian", "orthogonal", "regular"):
        raise InputError(f"projection: expected 'gaussian', 'orthogonal' or 'regular' for --kind projection, "
                         f"got {projection!r}")
    W, problem = run.collect(lambda seed: run.call((m, d, seed), shape=(m, d)), run.n_draws, "projection draws")
    if problem is not None:
        run.problem("call fn(m, d, seed)", problem)
        return
    n = len(W)
    run.mean_check("mean 0", W, 0.0, "every entry W_rc has mean 0", relative_to=1.0)
    iu = np.triu_indices(d)
    outer = np.einsum("nri,nrj->nrij", W, W)[:, :, iu[0], iu[1]]  # (n, m, d(d+1)/2)
    run.mean_check("covariance I", outer, np.eye(d)[iu], "E[w_r w_r^T] = I for every row r", relative_to=1.0)
    run.mean_check("covariance I (pooled)", (np.sum(W * W, axis=(1, 2)) / (m * d))[:, None], 1.0,
                   "the per-draw mean of |w_r|^2 / d over rows has mean 1 (trace of the covariance)")
    _, pv = proportion_test((W > 0).astype(np.int64), 0.5, alpha=0.5)
    worst = tuple(int(i) for i in np.unravel_index(int(np.argmin(pv)), pv.shape))
    frac = float((W > 0).mean(axis=0)[worst])
    run.statistical("sign symmetry", bonferroni_p(pv), frac, f"P(W{list(worst)} > 0) = {frac:.3f}",
                    f"P(W_rc > 0) = 1/2 for every entry (exact binomial, n = {n}, {pv.size} entries)",
                    power=("rate", (0.5, n, 1.0), pv.size, None), what="change of P(W > 0)")
    _norm_check(run, W, projection)
    if projection == "orthogonal":
        worst_cos = 0.0
        for b in range(0, m, d):
            blk = W[:, b:b + d, :]  # (n, <=d, d)
            unit = blk / np.linalg.norm(blk, axis=-1, keepdims=True)
            G = unit @ np.swapaxes(unit, -1, -2)  # (n, b, b)
            off = np.abs(G - np.eye(G.shape[-1]))
            worst_cos = max(worst_cos, float(off.max()))
        run.exact("orthogonal blocks", worst_cos, _allowance(W), f"rows within each block of d = {d} are orthogonal",
                  effect=f"max |cos| = {worst_cos:.2g}")


def _allowance(W) -> float:
    """Relative rounding allowance of the exact checks: ``1000 eps`` at the precision of the sampler's
    values ([`refattn.precision.values_precision`][refattn.precision.values_precision]): a float32 sampler returned as float64
    (``.double()``) is held to float32's rounding, a genuinely float64 one to float64's."""
    return 1000.0 * values_eps(W)


def _norm_check(run, W, projection):
    n, m, d = W.shape
    sq = np.sum(W * W, axis=-1)  # (n, m)
    spread = float(np.max(np.abs(sq - sq.mean(axis=0))))
    fixed = spread <= _allowance(W) * max(1.0, float(sq.max()))
    if projection == "regular":
        err = float(np.max(np.abs(np.sqrt(sq) - np.sqrt(d))))
        run.exact("norms sqrt(d)", err, _allowance(W) * np.sqrt(d),
                  "regular features: every row has norm sqrt(d) (they estimate SMREG, not softmax)",
                  effect=f"max |norm - sqrt(d)| = {err:.2g}")
        return
    if fixed:
        run.add(Verdict("norms chi_d", False, "row norms never vary: fixed-norm (regular) features estimate "
                        "SMREG, not the softmax kernel (Performer Theorem 1)", statistic=spread,
                        effect=f"|w|^2 = {sq.mean():.4g} always"))
        return
    pv = np.array([_st.kstest(sq[:, r], _st.chi2(d).cdf).pvalue for r in range(m)])
    r = int(np.argmin(pv))
    run.statistical("norms chi_d", bonferroni_p(pv), float(np.mean(sq[:, r])),
                    f"mean |w_{r}|^2 = {np.mean(sq[:, r]):.3f} (chi^2_d mean {d})",
                    f"|w_r|^2 ~ chi^2_{d} for every row (Kolmogorov-Smirnov, n = {n}, {m} rows)",
                    power=("ks", n, m, None), what="KS distance")
