r"""``--kind attention``: a random-feature attention estimator ``fn(q, k, v, seed) -> out (T, Hv)``.

Checks (Performer, Choromanski et al. 2021; the docs' Performer page):

1. **Constant values** (exact): with ``v = 1`` every normalised estimator ``N / D`` returns 1
   exactly (``N = D`` term by term). An epsilon floor in the denominator, a scaled output or an
   unnormalised estimator fails it, whatever the draw.
2. **Mean** (statistical): per output entry, Welch's two-sample test of ``fn``'s outputs against
   refattn's estimator of the same method, projection and ``m``
   ([`refattn.montecarlo.attention_samples`][refattn.montecarlo.attention_samples]), Bonferroni over entries. The ratio
   estimator's ``O(1/m)`` bias ([`refattn.theory.positive_output_moments`][refattn.performer.theory.positive_output_moments]) is part of both
   means, so a correct implementation with the same ``m`` passes and a different bias fails.
3. **Mean squared error** (statistical): the per-draw ``mean_e (out_e - O_e)^2`` (``O`` the exact
   oracle) has the same mean as refattn's (Welch): catches too few features, a wrong
   temperature, independent draws for queries and keys.
4. **Causal** (exact, when ``fn`` takes ``causal=``; ``T = S`` so both alignments agree):
   the canary (with the same seed, changing keys and values at positions ``>= c`` leaves rows
   ``< c`` unchanged), the first row (it sees only key 0, so it equals ``v_0``), and the
   output means against refattn's causal estimator (Welch per entry, statistical).
5. **Padding** (exact, when ``fn`` takes ``key_lengths=``): keys past the length, filled with
   garbage, change nothing: ``fn(q, k_pad, v_pad, seed, key_lengths=L) = fn(q, k[:L], v[:L], seed)``
   (the same seed gives the same projection whatever ``S``).
"""

from __future__ import annotations

import math

import numpy as np

from refattn._validation import InputError
from refattn.check._run import tolerance
from refattn.check.kernel import probe_rows
from refattn.exact import softmax_attention
from refattn.montecarlo import attention_samples
from refattn.performer.attention import performer_attention

__all__ = ["check_attention", "ATTENTION_METHODS"]

ATTENTION_METHODS = ("positive", "hyperbolic", "trigonometric")
#: Statistical checks the attention kind plans (for the power each needs: its share of alpha).
PLANNED_CHECKS = 3


def _exact_pair(run, check, a, b, meaning):
    """Verdict of an identity ``a == b`` between two results of ``fn``, to rounding."""
    err = float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) if np.size(a) else 0.0
    return run.exact(check, err, tolerance(a), meaning, effect=f"max diff {err:.2g}")


def check_attention(run, *, method="positive", projection="orthogonal", m=64, T=8, S=12, H=8, Hv=4, norm=0.6):
    """Run the attention checks on ``run.fn``; verdicts go to ``run.report``."""
    if method not in ATTENTION_METHODS:
        raise InputError(f"method: expected one of {ATTENTION_METHODS} for --kind attention, got {method!r}")
    if m is None:
        raise InputError("m: --kind attention needs the callable's feature count (--features M)")
    data_rng = np.random.default_rng([run.report.seed, 2])
    s = 1.0 / math.sqrt(H)
    q = probe_rows(T, H, norm, data_rng) / math.sqrt(s)
    k = probe_rows(S, H, norm, data_rng) / math.sqrt(s)
    v = data_rng.standard_normal((S, Hv)) + 0.5
    kw = {"m": m} if run.accepts("m") else {}

    # 1. constant values
    ones, problem = run.call((q, k, np.ones((S, Hv)), int(run.seeds(1)[0])), kw, shape=(T, Hv))
    if problem is not None:
        run.problem("call fn(q, k, v, seed)", problem)
        return
    _exact_pair(run, "constant values", ones, np.ones_like(ones),
                "with v = 1 a normalised estimator returns exactly 1 (no epsilon floor, no rescaling)")

    # 2, 3. distribution against refattn's estimator of the same method
    draw = lambda seed: run.call((q, k, v, seed), kw, shape=(T, Hv))  # noqa: E731
    exact = softmax_attention(q, k, v)
    ref_mse = None

    def mse_spread(smp):  # the MSE check's power: a variance ratio of --max-variance-ratio
        nonlocal ref_mse
        if ref_mse is None:
            ref_mse = ((refs(len(smp)) - exact) ** 2).mean(axis=(1, 2))
        with np.errstate(all="ignore"):
            a = ((smp - exact) ** 2).mean(axis=(1, 2))
        sd = float(np.sqrt(run.sd(a) ** 2 + run.sd(ref_mse) ** 2))
        failing = run.failing(a - ref_mse.mean(), 0.0, planned_checks=PLANNED_CHECKS)  # the MSE already off
        return [(sd, run.max_variance_ratio, float(ref_mse.mean()), failing)]

    def refs(n):
        return attention_samples(q, k, v, m=m, n_draws=n, rng=run.rng, features=method, projection=projection)

    samples, problem = run.collect_for_power(draw, run.n_draws, "attention draws", mse_spread,
                                             planned_checks=PLANNED_CHECKS, share=0.8)
    if problem is not None:
        run.problem("call fn(q, k, v, seed)", problem)
        return
    ref = refs(len(samples))  # (n, T, Hv)
    run.two_sample_check("mean vs refattn", samples, ref,
                         f"output means equal refattn's {method}/{projection} estimator at m = {m} "
                         "(same O(1/m) ratio bias)", relative=False)
    with np.errstate(all="ignore"):
        run.two_sample_check("MSE vs refattn", ((samples - exact) ** 2).mean(axis=(1, 2))[:, None],
                             ((ref - exact) ** 2).mean(axis=(1, 2))[:, None],
                             "mean squared error against the exact oracle equals refattn's",
                             tolerance=run.max_variance_ratio, what="variance ratio")

    if run.accepts("causal"):
        _causal_checks(run, q[:T], k[:T], v[:T], kw, method, projection, m)
    else:
        run.skip("causal", "fn takes no causal= keyword")
    if run.accepts("key_lengths"):
        _padding_check(run, q, k, v, kw, data_rng)
    else:
        run.skip("padding", "fn takes no key_lengths= keyword")


def _causal_checks(run, q, k, v, kw, method, projection, m):
    T, Hv = q.shape[0], v.shape[1]
    seed = int(run.seeds(1)[0])
    ckw = dict(kw, causal=True)
    out, problem = run.call((q, k, v, seed), ckw, shape=(T, Hv))
    if problem is not None:
        run.problem("call fn(..., causal=True)", problem)
        return
    c = T // 2
    k2, v2 = k.copy(), v.copy()
    k2[c:] = k2[c:][::-1] * 1.3  # other keys and values at positions >= c
    v2[c:] = -3.0 * v2[c:] + 1.0
    out2, problem = run.call((q, k2, v2, seed), ckw, shape=(T, Hv))
    if problem is not None:
        run.problem("call fn(..., causal=True)", problem)
        return
    _exact_pair(run, "causal canary", out2[:c], out[:c],
                f"rows < {c} do not change when keys/values at positions >= {c} do (no look-ahead)")
    _exact_pair(run, "causal first row", out[0], v[0], "row 0 sees only key 0, so it equals v_0")
    samples, problem = run.collect(lambda sd: run.call((q, k, v, sd), ckw, shape=(T, Hv)), run.n_draws,
                                   "causal draws")
    if problem is not None:
        run.problem("call fn(..., causal=True)", problem)
        return
    ref = np.stack([performer_attention(q, k, v, m=m, features=method, projection=projection, rng=int(sd),
                                        causal=True).output for sd in run.seeds(len(samples))])
    run.two_sample_check("causal mean vs refattn", samples, ref,
                         f"causal output means equal refattn's causal {method}/{projection} estimator", relative=False)


def _padding_check(run, q, k, v, kw, data_rng):
    T, S, Hv = q.shape[0], k.shape[0], v.shape[1]
    L = S - S // 3
    seed = int(run.seeds(1)[0])
    k_pad, v_pad = k.copy(), v.copy()
    k_pad[L:] = data_rng.standard_normal(k_pad[L:].shape) * 2.0  # garbage keys and values
    v_pad[L:] = data_rng.standard_normal(v_pad[L:].shape) * 10.0
    padded, problem = run.call((q, k_pad, v_pad, seed), dict(kw, key_lengths=L), shape=(T, Hv))
    if problem is not None:
        run.problem("call fn(..., key_lengths=L)", problem)
        return
    short, problem = run.call((q, k[:L], v[:L], seed), kw, shape=(T, Hv))
    if problem is not None:
        run.problem("call fn on the unpadded keys", problem)
        return
    _exact_pair(run, "padding invariance", padded, short,
                f"keys past key_lengths = {L} (garbage) change nothing: equals fn on the first {L} keys")
