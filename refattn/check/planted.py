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
from refattn.check.serving_bugs import (CORRECT_MERGES, CORRECT_PAGED, CORRECT_VARLEN, CORRECT_VARLEN_BACKWARD, MERGE_BUGS,
                                        PAGED_BUGS, VARLEN_BACKWARD_BUGS, VARLEN_BUGS)
from refattn.lsh import hashes as lsh
from refattn.performer.features import RandomFeatures
from refattn.performer.projections import gaussian_projection, orthogonal_projection, regular_projection
from refattn.problem import causal_mask
from refattn.theory import favorpp_optimal_A, favorpp_phi

__all__ = ["Planted", "CATALOGUE", "CORRECT", "measure", "exact_attention", "key_order_attention", "attention_grads", "kernel_estimator",
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
        top = logits.max(axis=axis, keepdims=True, initial=-np.inf)
        logits = logits - np.where(np.isfinite(top), top, 0)
    p = np.exp(logits)
    den = p.sum(axis=axis, keepdims=True)
    p = np.where(den > 0, p / np.where(den > 0, den, 1), 0)
    return p @ v


def key_order_attention(q, k, v, causal=False, mask=None, *, order="fixed"):
    """Exact attention summed over the keys in a planted order (each is accurate; only the bits move):
    ``"fixed"`` (one order: correct, deterministic, batch invariant), ``"random"`` (a new order every
    call, as a split-KV combine that adds splits in completion order) or ``"batch"`` (the order
    shifted by the batch size, as a kernel that picks its tiling from the batch)."""
    T, S = q.shape[-2], k.shape[-2]
    allowed = causal_mask(T, S) if causal else np.ones((T, S), dtype=bool)
    if mask is not None:
        allowed = allowed & mask
    if order == "random":
        perm = np.random.default_rng().permutation(S)  # fresh entropy: the defect is that it differs
    elif order == "batch":
        perm = np.roll(np.arange(S), q.shape[0] if q.ndim > 2 else 1)
    else:
        perm = np.arange(S)[::-1]
    return exact_attention(q, k[..., perm, :], v[..., perm, :], mask=allowed[:, perm])


def attention_grads(q, k, v, dout, causal=False, mask=None, dlse=None, *, with_delta=True, scaled=True,
                    normalised_dv=True, causal_in_backward=True, dlse_factor=1.0):
    """``(dq, dk, dv)`` of softmax attention in plain NumPy (the FlashAttention backward, Dao et al.
    2022, Algorithm 2), with ``dlse`` (``(..., T)``) the lse's upstream gradient (``dS = P (dP - delta +
    dlse)``); the keywords after ``*`` plant faults: ``with_delta`` (the ``rowsum(dO * O)`` term),
    ``scaled`` (the scale in dq, dk), ``normalised_dv`` (dv from the normalised probabilities),
    ``causal_in_backward`` (the causal mask kept in the backward), ``dlse_factor`` (dlse times it: 0
    ignores it, -1 flips its sign)."""
    T, S, H = q.shape[-2], k.shape[-2], q.shape[-1]
    scale = H ** -0.5
    logits = (q @ np.swapaxes(k, -1, -2)) * scale  # (..., T, S)
    allowed = causal_mask(T, S) if causal and causal_in_backward else np.ones((T, S), dtype=bool)
    if mask is not None:
        allowed = allowed & mask
    logits = np.where(allowed, logits, -np.inf)
    top = logits.max(axis=-1, keepdims=True, initial=-np.inf)
    e = np.exp(logits - np.where(np.isfinite(top), top, 0))  # unnormalised, row max 1
    den = e.sum(axis=-1, keepdims=True)
    p = np.where(den > 0, e / np.where(den > 0, den, 1), 0)  # (..., T, S)
    o = p @ v
    dv = np.swapaxes(p if normalised_dv else e, -1, -2) @ dout
    dp = dout @ np.swapaxes(v, -1, -2)
    ds = p * (dp - np.sum(dout * o, axis=-1, keepdims=True)) if with_delta else p * dp
    if dlse is not None:
        ds = ds + dlse_factor * p * np.asarray(dlse)[..., None]
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


def _planted(bug):
    """A reported or planted serving bug (refattn.check.serving_bugs) as a catalogue entry."""
    return Planted(bug.fn, bug.kind, bug.options, bug.fails, bug.what)


_K = {"method": "positive", "projection": "orthogonal", "m": 64}
_A = {"method": "positive", "projection": "orthogonal", "m": 64}

CORRECT = {
    "exact attention": Planted(exact_attention, "exact"),
    "exact attention, keys in reverse order": Planted(key_order_attention, "exact",
                                                      {"determinism": True, "batch_invariance": True}),
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
    # serving kernels (deterministic; the catalogue of real bugs, refattn.check.serving_bugs, holds more)
    "split-KV merge": Planted(CORRECT_MERGES["merge: flash-attn's combine"].fn, "merge"),
    "packed (varlen) attention": Planted(CORRECT_VARLEN["varlen: float64"].fn, "varlen"),
    "paged KV-cache attention": Planted(CORRECT_PAGED["paged: float64"].fn, "paged"),
    "packed (varlen) backward": Planted(CORRECT_VARLEN_BACKWARD["varlen backward: float64"].fn, "varlen_backward"),
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
    "keys summed in a new order each call": Planted(partial(key_order_attention, order="random"), "exact",
                                                    {"determinism": True}, fails="determinism",
                                                    bug="a split-KV combine that adds splits in completion order"),
    "key order from the batch size": Planted(partial(key_order_attention, order="batch"), "exact",
                                             {"batch_invariance": True}, fails="batch invariance",
                                             bug="tiling (the key order) chosen from the batch size"),
    # attention backward (deterministic)
    "backward without rowsum(dO * O)": Planted(partial(attention_grads, with_delta=False), "backward", fails="T != S",
                                               bug="the delta term of dS left out"),
    "backward without the scale": Planted(partial(attention_grads, scaled=False), "backward", fails="T != S",
                                          bug="dq and dk not multiplied by the softmax scale"),
    "dv from unnormalised P": Planted(partial(attention_grads, normalised_dv=False), "backward", fails="T != S",
                                      bug="dv from exp(l - max l) instead of P"),
    "no causal mask in backward": Planted(partial(attention_grads, causal_in_backward=False), "backward",
                                          fails="causal T = S", bug="the forward's causal mask dropped"),
    "the lse's gradient ignored": Planted(partial(attention_grads, dlse_factor=0.0), "backward",
                                          fails="the lse's gradient (dlse)",
                                          bug="dlse taken but left out of dS (a split-KV or ring backward)"),
    "the lse's gradient with the wrong sign": Planted(partial(attention_grads, dlse_factor=-1.0), "backward",
                                                      fails="the lse's gradient (dlse)",
                                                      bug="dS = P (dP - delta - dlse)"),
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
    # serving kernels (deterministic)
    "merge: exp(lse) without the max": _planted(MERGE_BUGS["merge: exp(lse) without the max"]),
    "varlen: no block-diagonal mask": _planted(VARLEN_BUGS["varlen: no block-diagonal mask"]),
    "paged: the last page read whole": _planted(PAGED_BUGS["paged: the last page read whole"]),
    "varlen backward: causal top-left within each sequence": _planted(
        VARLEN_BACKWARD_BUGS["varlen backward: causal top-left within each sequence"]),
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
            failed += bool(rep.failures)
            fails.update(v.check for v in rep.failures)
            caught += any(v.check == p.fails for v in rep.failures)
            worst_p = max([worst_p] + [v.pvalue for v in rep.verdicts if v.check == p.fails and v.pvalue is not None])
        out[name] = {"runs": len(seeds), "failed": failed, "caught": caught, "largest_p": worst_p,
                     "failing_checks": sorted(fails)}
    return out


# --- kernels at their precision: the tolerance rule's false alarms and power ---------------------
def _rows_out(acc, total):
    """``acc / total`` with rows that saw no key (``total == 0``) set to 0, the oracle's convention."""
    seen = total > 0
    return np.where(seen, acc / np.where(seen, total, 1), 0)


def blocked_attention(q, k, v, allowed, scale, *, block=64, dtype=np.float64, store=None, rescale=True,
                      accumulate_pv=None):
    """Blocked online softmax (Milakov & Gimelshein 2018; FlashAttention, Dao et al. 2022, Algorithm 1)
    over key blocks of ``block``: running max ``m``, sum ``l`` and unnormalised output, rescaled by
    ``exp(m_old - m_new)`` when the max grows; computed in ``dtype``. ``store`` (float16, bfloat16): a
    kernel that stores in that format, as FlashAttention 2 does: inputs read in it, the unnormalised
    probabilities rounded to it before the second product, the output written in it. Faults:
    ``rescale=False`` (the running sum and output not rescaled when the max changes),
    ``accumulate_pv`` (the second product accumulated in another dtype)."""
    from refattn.precision import as_dtype

    low = None if store is None else as_dtype(store)
    rd = (lambda a: a) if low is None else (lambda a: a.astype(low).astype(dtype))  # noqa: E731
    q, k, v = (rd(np.asarray(a, dtype=np.float64).astype(dtype)) for a in (q, k, v))
    allowed = np.broadcast_to(allowed, np.broadcast_shapes(q.shape[:-1] + (k.shape[-2],), allowed.shape))
    shape = allowed.shape[:-1]
    m = np.full(shape + (1,), -np.inf, dtype)
    l = np.zeros(shape + (1,), dtype)
    acc = np.zeros(shape + (v.shape[-1],), dtype)
    S = k.shape[-2]
    for j in range(0, S, block):
        s = (q @ np.swapaxes(k[..., j:j + block, :], -1, -2)).astype(dtype) * dtype(scale)
        s = np.where(allowed[..., j:j + block], s, dtype(-np.inf))
        m_new = np.maximum(m, s.max(axis=-1, keepdims=True))
        ref = np.where(np.isfinite(m_new), m_new, dtype(0))
        p = np.exp(s - ref).astype(dtype)
        alpha = np.where(np.isfinite(m), np.exp(m - ref), dtype(0)).astype(dtype) if rescale else \
            np.where(np.isfinite(m), dtype(1), dtype(0))
        pv = rd(p) @ v[..., j:j + block, :] if accumulate_pv is None else (
            rd(p).astype(accumulate_pv) @ v[..., j:j + block, :].astype(accumulate_pv)).astype(dtype)
        l = alpha * l + p.sum(axis=-1, keepdims=True, dtype=dtype)
        acc = alpha * acc + pv
        m = m_new
    out = _rows_out(acc, l).astype(dtype)
    return out if low is None else out.astype(low)


def plain_attention(q, k, v, allowed, scale, *, dtype=np.float64):
    """The textbook two passes: ``exp(l - max l) / sum`` then ``P V``, in ``dtype``."""
    q, k, v = (np.asarray(a, dtype=np.float64).astype(dtype) for a in (q, k, v))
    s = np.where(allowed, (q @ np.swapaxes(k, -1, -2)) * dtype(scale), dtype(-np.inf))
    top = s.max(axis=-1, keepdims=True, initial=-np.inf)
    p = np.exp(s - np.where(np.isfinite(top), top, 0))
    return _rows_out(p @ v, p.sum(axis=-1, keepdims=True))


def logspace_attention(q, k, v, allowed, scale):
    """Log-space: ``lse = max + log sum exp(l - max)``, then ``P = exp(l - lse)`` (one exp per entry
    against the log-sum-exp, as a kernel that stores only ``lse`` recomputes it)."""
    s = np.where(allowed, (q @ np.swapaxes(k, -1, -2)) * scale, -np.inf)
    top = s.max(axis=-1, keepdims=True, initial=-np.inf)
    ref = np.where(np.isfinite(top), top, 0)
    total = np.exp(s - ref).sum(axis=-1, keepdims=True)
    lse = np.where(total > 0, ref + np.log(np.where(total > 0, total, 1)), np.inf)
    return np.exp(s - lse) @ v


def split_kv_attention(q, k, v, allowed, scale, *, splits=3):
    """Split-KV (flash-decoding): each of ``splits`` key chunks gives a normalised partial output and
    its log-sum-exp, merged by ``O = sum_c exp(lse_c - lse) O_c`` (an empty chunk has ``lse = -inf``)."""
    S = k.shape[-2]
    edges = np.linspace(0, S, splits + 1).astype(int)
    parts = []
    for a, b in zip(edges[:-1], edges[1:]):
        s = np.where(allowed[..., a:b], (q @ np.swapaxes(k[..., a:b, :], -1, -2)) * scale, -np.inf)
        top = s.max(axis=-1, keepdims=True, initial=-np.inf)
        ref = np.where(np.isfinite(top), top, 0)
        p = np.exp(s - ref)
        total = p.sum(axis=-1, keepdims=True)
        lse = np.where(total > 0, ref + np.log(np.where(total > 0, total, 1)), -np.inf)
        parts.append((_rows_out(p @ v[..., a:b, :], total), lse))
    lses = np.stack([lse for _, lse in parts])
    top = lses.max(axis=0)
    ref = np.where(np.isfinite(top), top, 0)
    w = np.exp(lses - ref)  # (splits, ..., T, 1)
    return _rows_out(sum(wi * o for wi, (o, _) in zip(w, parts)), w.sum(axis=0))


#: Correct kernels for the tolerance rule: ``name -> (fn(q, k, v, allowed, scale), precision claimed)``.
RULE_CORRECT = {
    "plain": (plain_attention, "float64"),
    "blocked online softmax, block 1": (partial(blocked_attention, block=1), "float64"),
    "blocked online softmax, block 16": (partial(blocked_attention, block=16), "float64"),
    "blocked online softmax, block 64": (partial(blocked_attention, block=64), "float64"),
    "blocked online softmax, block 128": (partial(blocked_attention, block=128), "float64"),
    "log-space": (logspace_attention, "float64"),
    "split-KV combine, 3 splits": (split_kv_attention, "float64"),
    "float32 kernel (blocks of 64)": (partial(blocked_attention, dtype=np.float32), "float32"),
    "float32 kernel (two passes)": (partial(plain_attention, dtype=np.float32), "float32"),
    "float16 kernel (FlashAttention 2)": (partial(blocked_attention, dtype=np.float32, store="float16"), "float16"),
    "bfloat16 kernel (FlashAttention 2)": (partial(blocked_attention, dtype=np.float32, store="bfloat16"), "bfloat16"),
}

#: Defects for the rule's power: ``name -> (fn, precision claimed)``.
RULE_DEFECTS = {
    "running sum not rescaled (blocks of 64)": (partial(blocked_attention, block=64, rescale=False), "float64"),
    "running sum not rescaled (blocks of 16)": (partial(blocked_attention, block=16, rescale=False), "float64"),
    "float32 second product claimed float64": (partial(blocked_attention, accumulate_pv=np.float32), "float64"),
    "float32 kernel claimed float64": (partial(blocked_attention, dtype=np.float32), "float64"),
    "bfloat16 kernel claimed float16": (partial(blocked_attention, dtype=np.float32, store="bfloat16"), "float16"),
    "float16 kernel claimed float32": (partial(blocked_attention, dtype=np.float32, store="float16"), "float32"),
    "scale 1% off": (lambda q, k, v, allowed, scale: plain_attention(q, k, v, allowed, 1.01 * scale), "float64"),
}


def draw_rule_problem(rng, *, max_len=300, max_head_dim=128, max_logit_std=30.0):
    """One random problem for the tolerance rule: ``(q, k, v, kwargs)`` for the oracle.

    ``T``, ``S`` log-uniform in ``[1, max_len]``, head dims log-uniform in ``[1, max_head_dim]``,
    0 to 2 leading dims of size 1 to 3, logit standard deviation uniform in ``[0, max_logit_std]``
    with ``q = 0`` (uniform attention, outputs that cancel) one time in 20; a boolean mask (possibly
    masking whole rows), causal in either alignment, key padding, each with probability 1/3."""
    def loguniform(hi):
        return int(np.exp(rng.uniform(0.0, np.log(hi + 1.0))))

    T, S, H, Hv = loguniform(max_len), loguniform(max_len), loguniform(max_head_dim), loguniform(max_head_dim)
    T, S, H, Hv = (min(max(1, x), hi) for x, hi in ((T, max_len), (S, max_len), (H, max_head_dim),
                                                    (Hv, max_head_dim)))
    batch = tuple(int(b) for b in rng.integers(1, 4, size=rng.integers(0, 3)))
    std = 0.0 if rng.random() < 0.05 else float(rng.uniform(0.0, max_logit_std))
    q = rng.standard_normal(batch + (T, H)) * std
    k = rng.standard_normal(batch + (S, H))
    v = rng.standard_normal(batch + (S, Hv)) + rng.choice([0.0, 3.0])  # values with and without a mean
    kw = {}
    if rng.random() < 1 / 3:
        kw["causal"] = str(rng.choice(["bottom_right", "top_left"]))
    if rng.random() < 1 / 3:
        kw["mask"] = rng.random((T, S)) < rng.choice([0.1, 0.5, 0.9])
    if rng.random() < 1 / 3:
        kw["key_lengths"] = rng.integers(0, S + 1, size=batch[:1] + (1,) * max(0, len(batch) - 1)) if batch \
            else np.array(int(rng.integers(0, S + 1)))
    return q, k, v, kw


def measure_rule(n_problems, seed, *, kernels=None, progress=False, **draw):
    """Judge every kernel of ``kernels`` (default `RULE_CORRECT` and `RULE_DEFECTS`) on ``n_problems``
    problems of [`draw_rule_problem`][refattn.check.planted.draw_rule_problem], by the one tolerance rule at the
    kernel's claimed precision (low-precision kernels get their inputs in that precision, as the
    checker gives them). Returns ``{name: {"problems", "failed", "worst_ratio", "precision"}}``:
    ``failed / problems`` is the false-alarm rate of a correct kernel and the power against a defect;
    ``worst_ratio`` the largest ``error / bound`` seen."""
    from refattn.precision import kernel_reference, round_to
    from refattn.problem import attention_problem
    from refattn.tolerance import compare, rounding_allowance

    kernels = dict(RULE_CORRECT, **RULE_DEFECTS) if kernels is None else kernels
    rng = np.random.default_rng(seed)
    stats = {name: {"problems": 0, "failed": 0, "worst_ratio": 0.0, "precision": p}
             for name, (_, p) in kernels.items()}
    bar = range(n_problems)
    if progress:
        from tqdm import tqdm

        bar = tqdm(bar, desc="tolerance rule", mininterval=5)
    for _ in bar:
        q, k, v, kw = draw_rule_problem(rng, **draw)
        judged = {}  # precision -> (q, k, v, allowed, scale, ref64, ref_lo, allowance)
        for name, (fn, p) in kernels.items():
            if p not in judged:
                qp, kp, vp = (q, k, v) if p == "float64" else (round_to(a, p) for a in (q, k, v))
                prob = attention_problem(qp, kp, vp, **kw)
                allowed = prob.allowed()
                allowed = np.ones((prob.T, prob.S), bool) if allowed is None else allowed
                from refattn.exact import softmax_attention

                ref64 = softmax_attention(qp, kp, vp, **kw)
                ref_lo = ref64 if p == "float64" else kernel_reference(qp, kp, vp, p, **kw)
                judged[p] = (qp, kp, vp, allowed, prob.scale, ref64, ref_lo, rounding_allowance(qp, kp, vp, p, **kw))
            qp, kp, vp, allowed, scale, ref64, ref_lo, allow = judged[p]
            with np.errstate(all="ignore"):
                out = fn(qp, kp, vp, allowed, scale)
            out = np.broadcast_to(out, ref64.shape)
            res = compare(out, ref64, ref_lo, precision=p, allowance=allow)
            st = stats[name]
            st["problems"] += 1
            st["failed"] += not res.passed
            if res.bound > 0:
                st["worst_ratio"] = max(st["worst_ratio"], res.worst_error / res.bound)
    return stats
