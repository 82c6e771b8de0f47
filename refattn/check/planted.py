r"""Correct implementations and a catalogue of planted defects, in the checker's callable contract.

The tests (proofs_tests/test_check*.py), the docs and examples/ share them: the correct
implementations measure the false-alarm rate, the defects the power. Every function here is
written out in plain NumPy on top of refattn's projections and hashes (the draws), so each
defect is a one-line change of a correct implementation, as it would be in a user's code.

`CATALOGUE` maps a defect's name to a [`Planted`][refattn.check.planted.Planted]: the callable, the ``kind`` and
options to check it with, the check expected to fail, and what the bug is.
`CORRECT` does the same for the correct implementations (every check should pass).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from refattn.check import check
from refattn.check.hashing import reference_hash
from refattn.lsh import hashes as lsh
from refattn.performer.features import RandomFeatures
from refattn.performer.projections import gaussian_projection, orthogonal_projection, regular_projection
from refattn.problem import causal_mask
from refattn.theory import favorpp_optimal_A, favorpp_phi

__all__ = ["Planted", "CATALOGUE", "CORRECT", "measure", "exact_attention", "attention_grads", "kernel_estimator",
           "performer_estimator",
           "projection_sampler", "simhash_bits", "features_kernel", "favorpp_kernel"]


# --- exact attention ----------------------------------------------------------------------
def exact_attention(q, k, v, causal=False, mask=None, *, scale_power=0.5, alignment="bottom_right", diag_shift=0,
                    subtract_max=True, axis=-1):
    """Softmax attention in plain NumPy (``q (..., T, H)``); the keywords after ``*`` plant faults:
    ``scale_power`` (scale ``H^-scale_power``), ``alignment``, ``diag_shift`` (causal offset + shift),
    ``subtract_max``, ``axis`` (the softmax axis)."""
    T, S, H = q.shape[-2], k.shape[-2], q.shape[-1]
    logits = (q @ np.swapaxes(k, -1, -2)) * H ** (-scale_power)  # (..., T, S)
    allowed = np.ones((T, S), dtype=bool)
    if causal:
        allowed = causal_mask(T, S, alignment)
        if diag_shift:
            off = (S - T if alignment == "bottom_right" else 0) + diag_shift
            allowed = np.arange(S)[None, :] <= np.arange(T)[:, None] + off
    if mask is not None:
        allowed = allowed & mask
    logits = np.where(allowed, logits, -np.inf)
    if subtract_max:
        top = logits.max(axis=axis, keepdims=True)
        logits = logits - np.where(np.isfinite(top), top, 0)
    p = np.exp(logits)
    den = p.sum(axis=axis, keepdims=True)
    p = np.where(den > 0, p / np.where(den > 0, den, 1), 0)
    return p @ v


def attention_grads(q, k, v, dout, causal=False, mask=None, *, with_delta=True, scaled=True, normalised_dv=True,
                    causal_in_backward=True):
    """``(dq, dk, dv)`` of softmax attention in plain NumPy (the FlashAttention backward, Dao et al.
    2022, Algorithm 2); the keywords after ``*`` plant faults: ``with_delta`` (the
    ``rowsum(dO * O)`` term), ``scaled`` (the scale in dq, dk), ``normalised_dv`` (dv from the
    normalised probabilities), ``causal_in_backward`` (the causal mask kept in the backward)."""
    T, S, H = q.shape[-2], k.shape[-2], q.shape[-1]
    scale = H ** -0.5
    logits = (q @ np.swapaxes(k, -1, -2)) * scale  # (..., T, S)
    allowed = causal_mask(T, S) if causal and causal_in_backward else np.ones((T, S), dtype=bool)
    if mask is not None:
        allowed = allowed & mask
    logits = np.where(allowed, logits, -np.inf)
    top = logits.max(axis=-1, keepdims=True)
    e = np.exp(logits - np.where(np.isfinite(top), top, 0))  # unnormalised, row max 1
    den = e.sum(axis=-1, keepdims=True)
    p = np.where(den > 0, e / np.where(den > 0, den, 1), 0)  # (..., T, S)
    o = p @ v
    dv = np.swapaxes(p if normalised_dv else e, -1, -2) @ dout
    dp = dout @ np.swapaxes(v, -1, -2)
    ds = p * (dp - np.sum(dout * o, axis=-1, keepdims=True)) if with_delta else p * dp
    s = scale if scaled else 1.0
    return s * ds @ k, s * np.swapaxes(ds, -1, -2) @ q, dv


# --- kernel estimators ------------------------------------------------------------------
def _draw(projection, m, d, seed, sign_correction=True):
    if projection == "gaussian":
        return gaussian_projection(m, d, seed)
    if projection == "regular":
        return regular_projection(m, d, seed)
    return orthogonal_projection(m, d, seed, sign_correction=sign_correction)


def _positive_features(x, W, norm_exp=0.5):
    """FAVOR+ ``m^-1/2 exp(W x - norm_exp |x|^2)`` (Performer eq. for phi^+; ``norm_exp = 1/2``)."""
    return np.exp(x @ W.T - norm_exp * np.sum(x * x, -1, keepdims=True)) / math.sqrt(W.shape[0])


def kernel_estimator(q, k, seed, m=64, *, projection="orthogonal", factor=1.0, norm_exp=0.5, sign_correction=True,
                     independent=False, temperature_power=0.5):
    """FAVOR+ estimate of ``exp(q k^T / sqrt(H))`` ``(T, S)``. Faults: ``factor`` (a bias),
    ``norm_exp`` (wrong feature scale), ``sign_correction=False`` (plain QR), ``projection="regular"``
    (fixed norms), ``independent`` (other draws for keys), ``temperature_power`` (scale ``H^-p``)."""
    H = q.shape[-1]
    root = H ** (-temperature_power / 2)
    W = _draw(projection, m, H, seed, sign_correction)
    Wk = _draw(projection, m, H, seed + 1_000_003, sign_correction) if independent else W
    return factor * _positive_features(q * root, W, norm_exp) @ _positive_features(k * root, Wk, norm_exp).T


def favorpp_kernel(q, k, seed, m=64, *, A=None, projection="gaussian", normalise=True):
    """FAVOR++ estimate of ``exp(q k^T / sqrt(H))`` (Likhosherstov et al. 2022): features
    ``m^-1/2 (1-4A)^{d/4} exp(A|w|^2 + sqrt(1-4A) w.x - |x|^2/2)`` at ``A`` (default the optimal
    ``A*`` of the data, refattn.theory). Fault: ``normalise=False`` drops the ``(1-4A)^{d/4}`` factor."""
    H = q.shape[-1]
    x, y = q * H**-0.25, k * H**-0.25
    if A is None:
        A = float(favorpp_optimal_A(float(favorpp_phi(x, y)), H))
    W = _draw(projection, m, H, seed)
    w2 = np.sum(W * W, axis=-1)
    log_c = (H / 4) * math.log1p(-4 * A) if normalise else 0.0

    def phi(z):
        return np.exp(A * w2 + math.sqrt(1 - 4 * A) * (z @ W.T) - np.sum(z * z, -1, keepdims=True) / 2 + log_c) \
            / math.sqrt(m)
    return phi(x) @ phi(y).T


def features_kernel(q, k, seed, m=64, *, kind="trigonometric"):
    """``phi(x) . phi(y)`` with refattn's [`RandomFeatures`][refattn.performer.features.RandomFeatures] of ``kind`` (iid rows)."""
    H = q.shape[-1]
    f = RandomFeatures(kind, gaussian_projection(m, H, seed))
    (a, la), (b, lb) = f(q * H**-0.25), f(k * H**-0.25)  # features and their log-scales
    return (a * np.exp(la)[:, None]) @ (b * np.exp(lb)[:, None]).T


# --- attention estimators ---------------------------------------------------------------
def performer_estimator(q, k, v, seed, m=64, causal=False, key_lengths=None, *, eps=0.0, feature_fraction=1.0,
                        cumsum_axis=0, causal_shift=0, values_only_padding=False, temperature_power=0.5):
    """FAVOR+ attention (orthogonal features, stabilised) with prefix sums for ``causal`` (``T = S``).

    Faults: ``eps`` (denominator floor), ``feature_fraction`` (fewer features than claimed),
    ``cumsum_axis=1`` (prefix sums over features), ``causal_shift`` (query i sees ``j <= i + shift``),
    ``values_only_padding`` (padded values zeroed, keys kept), ``temperature_power``.
    """
    H = q.shape[-1]
    root = H ** (-temperature_power / 2)
    W = orthogonal_projection(max(1, int(m * feature_fraction)), H, seed)
    x, y = q * root, k * root
    lq = x @ W.T - np.sum(x * x, -1, keepdims=True) / 2  # (T, m) log-features
    lk = y @ W.T - np.sum(y * y, -1, keepdims=True) / 2  # (S, m)
    keep = np.ones(k.shape[0], dtype=bool)
    if key_lengths is not None:
        keep = np.arange(k.shape[0]) < key_lengths
    pq = np.exp(lq - lq.max(axis=1, keepdims=True))  # query shift: cancels in out
    pk = np.exp(lk - lk[keep].max())  # one key shift: cancels in out
    if key_lengths is not None:
        if values_only_padding:
            v = np.where(keep[:, None], v, 0.0)
        else:
            pk = pk * keep[:, None]
    if not causal:
        num, den = pq @ (pk.T @ v), pq @ pk.sum(axis=0)
    else:
        kv = np.cumsum(pk[:, :, None] * v[:, None, :], axis=cumsum_axis)  # (S, m, Hv) prefix sums
        z = np.cumsum(pk, axis=cumsum_axis)  # (S, m)
        idx = np.clip(np.arange(q.shape[0]) + causal_shift, 0, k.shape[0] - 1)
        num = np.einsum("tm,tmh->th", pq, kv[idx])
        den = np.einsum("tm,tm->t", pq, z[idx])
    return num / (den + eps)[:, None]


# --- projections and hashes -------------------------------------------------------------
def projection_sampler(m, d, seed, *, kind="orthogonal", sign_correction=True, factor=1.0):
    """refattn's samplers in the contract ``fn(m, d, seed)``; ``factor`` rescales the rows (a fault)."""
    W = _draw(kind, m, d, seed, sign_correction)
    return W * factor


def simhash_bits(x, seed, *, bits=3, duplicate_round=False, seed_divisor=1):
    """SimHash with ``bits`` hyperplanes, packed into one id. Faults: ``duplicate_round`` (the last
    plane reuses the first: a round counted twice), ``seed_divisor`` (draws from ``seed // divisor``:
    neighbouring seeds share a draw)."""
    g = np.random.default_rng(seed // seed_divisor).standard_normal((bits, x.shape[1]))
    if duplicate_round:
        g[-1] = g[0]
    return ((x @ g.T) > 0).astype(np.int64) @ (1 << np.arange(bits))


def angular_rounds(x, seed, *, buckets=8, rounds=2, duplicate_round=False, and_rounds=False):
    """Reformer's angular hash over ``rounds`` independent rounds, ``(rounds, T)`` ids. Faults:
    ``duplicate_round`` (every round repeats the first), ``and_rounds`` (the rounds packed into one
    id ``(T,)``: a pair collides only when it collides in every round)."""
    ids = lsh.angular_hash(x, lsh.angular_rotations(x.shape[1], buckets, seed, rounds=rounds))  # (rounds, T)
    if duplicate_round:
        ids = np.broadcast_to(ids[:1], ids.shape).copy()
    if and_rounds:
        return np.sum(ids * buckets ** np.arange(rounds)[:, None], axis=0)
    return ids


# --- the catalogue ----------------------------------------------------------------------
@dataclass(frozen=True)
class Planted:
    """A callable, how to check it (``kind``, ``options``), the check that must fail, and the bug."""

    fn: object
    kind: str
    options: dict = field(default_factory=dict)
    fails: str = ""
    bug: str = ""


_K = {"method": "positive", "projection": "orthogonal", "m": 64}
_A = {"method": "positive", "projection": "orthogonal", "m": 64}

CORRECT = {
    "exact attention": Planted(exact_attention, "exact"),
    "attention backward": Planted(attention_grads, "backward"),
    "FAVOR+ kernel (orthogonal)": Planted(kernel_estimator, "kernel", _K),
    "FAVOR+ kernel (iid)": Planted(partial(kernel_estimator, projection="gaussian"), "kernel",
                                   dict(_K, projection="gaussian")),
    "FAVOR+ attention": Planted(performer_estimator, "attention", _A),
    "gaussian projection": Planted(partial(projection_sampler, kind="gaussian"), "projection",
                                   {"projection": "gaussian"}),
    "orthogonal projection": Planted(projection_sampler, "projection", {"projection": "orthogonal"}),
    "trigonometric kernel (iid)": Planted(features_kernel, "kernel",
                                          dict(_K, method="trigonometric", projection="gaussian")),
    "FAVOR++ kernel (iid)": Planted(favorpp_kernel, "kernel", dict(_K, method="favorpp", projection="gaussian")),
    "FAVOR++ kernel (orthogonal)": Planted(partial(favorpp_kernel, projection="orthogonal"), "kernel",
                                           dict(_K, method="favorpp")),
    "simhash": Planted(simhash_bits, "hash", {"family": "simhash", "bits": 3}),
    "cross-polytope hash": Planted(reference_hash("cross_polytope"), "hash", {"family": "cross_polytope"}),
    "e2lsh": Planted(reference_hash("e2lsh", width=1.0), "hash", {"family": "e2lsh", "width": 1.0}),
    "angular hash": Planted(reference_hash("angular", buckets=8), "hash", {"family": "angular", "buckets": 8}),
    "angular hash, 2 rounds": Planted(angular_rounds, "hash", {"family": "angular", "buckets": 8, "rounds": 2}),
}

CATALOGUE = {
    # exact attention (deterministic: caught on every seed by construction)
    "wrong scale": Planted(partial(exact_attention, scale_power=0.0), "exact", fails="T != S",
                           bug="scale 1 instead of 1/sqrt(H)"),
    "other causal alignment": Planted(partial(exact_attention, alignment="top_left"), "exact", fails="causal T < S",
                                      bug="top-left causal mask where bottom-right is claimed"),
    "off-by-one causal (exact)": Planted(partial(exact_attention, diag_shift=-1), "exact", fails="causal T = S",
                                         bug="the causal diagonal excluded"),
    "missing max subtraction": Planted(partial(exact_attention, subtract_max=False), "exact",
                                       fails="logits far apart", bug="exp without subtracting the row max"),
    "softmax over the wrong axis": Planted(partial(exact_attention, axis=-2), "exact", fails="T != S",
                                           bug="softmax normalised over queries"),
    # attention backward (deterministic)
    "backward without rowsum(dO * O)": Planted(partial(attention_grads, with_delta=False), "backward", fails="T != S",
                                               bug="the delta term of dS left out"),
    "backward without the scale": Planted(partial(attention_grads, scaled=False), "backward", fails="T != S",
                                          bug="dq and dk not multiplied by the softmax scale"),
    "dv from unnormalised P": Planted(partial(attention_grads, normalised_dv=False), "backward", fails="T != S",
                                      bug="dv from exp(l - max l) instead of P"),
    "no causal mask in backward": Planted(partial(attention_grads, causal_in_backward=False), "backward",
                                          fails="causal T = S", bug="the forward's causal mask dropped"),
    # kernel estimators
    "2% bias": Planted(partial(kernel_estimator, factor=1.02), "kernel", _K, "unbiased (pooled)",
                       "estimate multiplied by 1.02"),
    "wrong feature scale": Planted(partial(kernel_estimator, norm_exp=0.55), "kernel", _K, "unbiased (pooled)",
                                   "features exp(w.x - 0.55 |x|^2) instead of exp(w.x - |x|^2/2)"),
    "plain QR": Planted(partial(kernel_estimator, sign_correction=False), "kernel", _K, "unbiased (entrywise)",
                        "orthogonal features from LAPACK QR without the sign correction"),
    "fixed norms claimed as softmax": Planted(partial(kernel_estimator, projection="regular"), "kernel", _K,
                                              "unbiased (entrywise)", "regular (norm sqrt(d)) rows: estimates SMREG"),
    "independent q/k draws": Planted(partial(kernel_estimator, independent=True), "kernel", _K,
                                     "unbiased (entrywise)", "keys use another projection draw than queries"),
    "wrong temperature": Planted(partial(kernel_estimator, temperature_power=1.0), "kernel", _K,
                                 "unbiased (entrywise)", "scale 1/H instead of 1/sqrt(H)"),
    "FAVOR++ without its normalisation": Planted(partial(favorpp_kernel, normalise=False), "kernel",
                                                 dict(_K, method="favorpp", projection="gaussian"), "unbiased (pooled)",
                                                 "the (1-4A)^{d/4} factor of the FAVOR++ features dropped"),
    "iid features claimed orthogonal": Planted(favorpp_kernel, "kernel", dict(_K, method="favorpp"), "variance (m = 64)",
                                               "iid Gaussian rows where orthogonal ones are claimed (unbiased, "
                                               "25% more variance)"),
    # attention estimators
    "epsilon floor": Planted(partial(performer_estimator, eps=1e-6), "attention", _A, "constant values",
                             "denominator + 1e-6"),
    "fewer features than claimed": Planted(partial(performer_estimator, feature_fraction=0.5), "attention", _A,
                                           "MSE vs refattn", "m/2 features while m is claimed"),
    "values-only padding": Planted(partial(performer_estimator, values_only_padding=True), "attention", _A,
                                   "padding invariance", "padded values zeroed, padded keys kept in the denominator"),
    "cumulative sum over the wrong axis": Planted(partial(performer_estimator, cumsum_axis=1), "attention", _A,
                                                  "causal mean vs refattn", "causal prefix sums over features"),
    "off-by-one causal": Planted(partial(performer_estimator, causal_shift=1), "attention", _A, "causal canary",
                                 "query i sees key i + 1"),
    # projections
    "plain QR projection": Planted(partial(projection_sampler, sign_correction=False), "projection",
                                   {"projection": "orthogonal"}, "sign symmetry", "LAPACK QR without sign correction"),
    "fixed-norm rows": Planted(partial(projection_sampler, kind="regular"), "projection", {"projection": "gaussian"},
                               "norms chi_d", "rows of norm sqrt(d) claimed Gaussian"),
    "2% row scale": Planted(partial(projection_sampler, kind="gaussian", factor=1.02), "projection",
                            {"projection": "gaussian"}, "covariance I (pooled)", "rows scaled by 1.02 (covariance 1.0404 I)"),
    # hashes
    "double-counted LSH round": Planted(partial(simhash_bits, duplicate_round=True), "hash",
                                        {"family": "simhash", "bits": 3}, "collision rate",
                                        "the last hyperplane repeats the first"),
    "correlated seeds": Planted(partial(simhash_bits, seed_divisor=2), "hash", {"family": "simhash", "bits": 3},
                                "independent seeds", "draws from seed // 2"),
    "2 rounds packed as one": Planted(partial(angular_rounds, and_rounds=True), "hash",
                                      {"family": "angular", "buckets": 8}, "collision rate",
                                      "two rounds packed into one id: pairs collide only in both"),
    "repeated round": Planted(partial(angular_rounds, duplicate_round=True), "hash",
                              {"family": "angular", "buckets": 8, "rounds": 2}, "collision rate",
                              "the second round repeats the first"),
}


def measure(entries, seeds, *, alpha=1e-3):
    """Run the checker on each [`Planted`][refattn.check.planted.Planted] of ``entries`` (name -> Planted) for every seed.

    Returns ``{name: {"runs": n, "failed": runs that failed, "caught": runs whose expected check
    failed, "largest_p": the largest p-value of the expected check, "failing_checks": ...}}``:
    for correct implementations ``failed / runs`` is the false-alarm rate, for defects
    ``caught / runs`` the power (``largest_p`` against the Holm threshold shows the margin).
    """
    out = {}
    for name, p in entries.items():
        failed = caught = 0
        worst_p, fails = 0.0, set()
        for s in seeds:
            rep = check(p.fn, p.kind, seed=int(s), alpha=alpha, isolate=False, **p.options)  # the verdicts, not the worker
            failed += not rep.passed
            fails.update(v.check for v in rep.failures)
            caught += any(v.check == p.fails for v in rep.failures)
            worst_p = max([worst_p] + [v.pvalue for v in rep.verdicts if v.check == p.fails and v.pvalue is not None])
        out[name] = {"runs": len(seeds), "failed": failed, "caught": caught, "largest_p": worst_p,
                     "failing_checks": sorted(fails)}
    return out
