r"""The one method registry: every attention method refattn compares, its budget rule and its seed stream.

``refattn report`` ([`refattn.evaluation.report`][refattn.evaluation.report]), the oracle's path comparison
([`refattn.evaluation.exact_paths`][refattn.evaluation.exact_paths]), the matched-budget study on synthetic data
([`refattn.evaluation.budget`][refattn.evaluation.budget]) and ``refattn bench`` ([`refattn.bench`][refattn.bench]) all read
`REGISTRY`; a new method joins all four with one [`register`][refattn.evaluation.methods.register] call (the docs' report
page, "Adding a method").

**Budget rule.** At a budget of ``b`` stored numbers per query row (``T = S``):

|   |   |
|---|---|
| exact dense, exact streaming | the oracle itself (no budget: every ``S`` entry) |
| best sparse (top-k, oracle) | ``b`` largest entries of each row of ``P`` (truncated) |
| best low-rank (SVD, oracle) | rank ``b/2`` (``r (T + S)`` numbers) |
| sparse + low-rank (oracle) | best of rank ``r`` + ``b - 2r`` entries per row, ``r`` in {0, b/8, b/4, 3b/8, b/2} (never worse than either single oracle) |
| performer | ``m = b/2`` features (orthogonal, positive) |
| scatterbrain (smyrf) | the paper's configuration: 2 SMYRF hashes, clusters of about ``b/4`` keys each (a pair found twice counts once), + ``m = b/4`` features |
| scatterbrain (simhash) | one SimHash table, buckets of about ``b/2`` keys, + ``m = b/4`` features |
| nystrom | ``b/2`` segment-mean landmarks (Xiong et al. 2021) |
| local window | ``b`` keys around the diagonal |
| reformer | chunks of ``b/2`` with look-back 1, buckets of about ``b/2`` |
| smyrf | balanced clusters of about ``b/2`` keys (one hash round) |
| hyperattention | blocks of ``b/2`` plus ``b/2`` sampled columns |
| sea | ``K = b/2`` compressed bins + top ``k = b/2`` keys (``m = b/2`` features) |

**Seed stream.** Every draw of a method comes from [`method_rng`][refattn.evaluation.methods.method_rng] ``(seed, name, *stream)``:
``numpy.random.default_rng([seed, crc32(name), *stream])``, one independent stream per seed,
method and head (``stream``), stable when the registry grows. A method with several independent
draws (Scatterbrain's hash and features) splits its stream with ``Generator.spawn`` in a fixed
order (hash first).

**Contract.** ``method.run(q, k, v, *, budget, scale, rng, causal=False, dtype=None)`` takes one
head ``q (T, H)``, ``k (S, H)``, ``v (S, Hv)`` and returns the output ``(T, Hv)`` or a result
object with ``.output`` ([`output_of`][refattn.evaluation.methods.output_of]). ``dtype`` asks for a lower working precision; the
methods with a low-precision path (the exact oracle, Performer) honour it, the others compute in
float64. Every entry is linear in ``v`` given its draw, so
``run(q, k, I)`` with the same draw is its effective attention matrix ``P^``.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from refattn._validation import InputError, InputTypeError
from refattn.exact import attention_probabilities, softmax_attention
from refattn.lsh.attention import hyper_attention, reformer_attention, smyrf_attention, smyrf_clusters
from refattn.lsh.hashes import simhash, simhash_planes
from refattn.lsh.sparse import bucket_support, local_window, sparse_attention, union
from refattn.performer.attention import performer_attention
from refattn.scatterbrain.attention import scatterbrain_attention
from refattn.scatterbrain.rpca import fixed_budget_decomposition
from refattn.sea.attention import sea_attention

__all__ = ["Method", "REGISTRY", "register", "method_rng", "output_of", "run_heads", "METHODS", "row_topk",
           "truncated_svd", "best_split"]


@dataclass(frozen=True)
class Method:
    """One registered method.

    Attributes
    ----------
    name : str
        Registry key: the report's row label, the bench's ``--methods`` name.
    run : callable
        ``run(q, k, v, *, budget, scale, rng, causal=False, dtype=None)`` on one head (module docstring).
    budget_rule : str
        What ``budget = b`` buys (shown in the docs, the bench's JSON and the report's JSON).
    oracle : bool
        It reads the exact matrix (a bound on what a method of its family can do, not a method
        one can ship): materialises ``T x S``.
    exact : bool
        The exact oracle itself (error 0 up to rounding; no budget).
    causal : bool
        ``run`` takes ``causal=True`` (bottom-right alignment).
    in_report : bool
        In ``refattn report``'s default set.
    flops : callable or None
        ``flops(T, H, budget, result)``: useful flops of one call for the bench (``T = S``, ``Hv = H``).
    peak_bytes : callable or None
        ``peak_bytes(T, H, itemsize, budget)``: predicted peak memory; the bench skips points above
        its memory cap (recorded as skipped, with the reason).
    expected_exponent : float
        ``time ~ T^p``: 1 for linear-time methods, 2 for quadratic, 3 for an SVD.
    max_T : int
        Largest ``T`` of the bench's sweep for this method.
    """

    name: str
    run: Callable
    budget_rule: str
    oracle: bool = False
    exact: bool = False
    causal: bool = False
    in_report: bool = True
    flops: Callable | None = None
    peak_bytes: Callable | None = None
    expected_exponent: float = 1.0
    max_T: int = 65536


#: name -> [`Method`][refattn.evaluation.methods.Method], in table order (exact, oracles, then the methods).
REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to `REGISTRY` (replacing one of the same name) and return it."""
    if not isinstance(method, Method):
        raise InputTypeError(f"method: expected a refattn.evaluation.methods.Method, got {type(method).__name__}")
    REGISTRY[method.name] = method
    return method


def method_rng(seed, name: str, *stream) -> np.random.Generator:
    """The draw of method ``name`` for master ``seed`` and sub-stream ``stream`` (e.g. a head index):
    ``default_rng([seed, crc32(name), *stream])``."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode()), *(int(s) for s in stream)])


def output_of(result) -> np.ndarray:
    """The output array of a method's result (an array, or an object with ``.output``)."""
    return np.asarray(result if isinstance(result, np.ndarray) else result.output)


def run_heads(method: Method, q, k, v, *, budget, seed, scale=None, causal=False) -> np.ndarray:
    """``method`` on every head of ``q (..., T, H)``, ``k (..., S, H)``, ``v (..., S, Hv)``: head
    ``i`` (in C order over the leading dims) draws from ``method_rng(seed, method.name, i)``."""
    if causal and not method.causal:
        raise InputError(f"causal: the method {method.name!r} has no causal form")
    q, k, v = np.asarray(q), np.asarray(k), np.asarray(v)
    out = np.empty(q.shape[:-1] + v.shape[-1:])
    for i, idx in enumerate(np.ndindex(*q.shape[:-2])):
        s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        kw = {"causal": True} if causal else {}
        out[idx] = output_of(method.run(q[idx], k[idx], v[idx], budget=budget, scale=s,
                                        rng=method_rng(seed, method.name, i), **kw))
    return out


# ----------------------------------------------------------------------------- the oracles' helpers
def row_topk(P, b):
    """The best sparse approximation with ``b`` entries per row: each row's ``b`` largest entries of ``P``
    (ties by position), zeros elsewhere."""
    idx = np.argsort(-P, axis=1, kind="stable")[:, :b]
    M = np.zeros_like(P)
    np.put_along_axis(M, idx, np.take_along_axis(P, idx, 1), 1)
    return M


def truncated_svd(P, r):
    """The best rank-``r`` approximation of ``P`` in the Frobenius norm (Eckart-Young): the truncated SVD."""
    U, s, Vt = np.linalg.svd(P, full_matrices=False)
    return (U[:, :r] * s[:r]) @ Vt[:r]


def best_split(P, b):
    """The sparse + low-rank oracle: the best at budget ``b`` of rank ``r`` plus ``b - 2r`` entries per
    row, over ``r`` in {0, b/8, b/4, 3b/8, b/2}. The ends are the two single oracles (``r = 0``: the
    ``b`` largest entries of each row; ``r = b/2``: the rank-``b/2`` SVD), so this oracle is never
    worse than either alone; the mixed splits come from alternating projections
    ([`fixed_budget_decomposition`][refattn.scatterbrain.rpca.fixed_budget_decomposition])."""
    candidates = [row_topk(P, b), truncated_svd(P, b // 2)]
    for r in sorted({max(1, b // 8), max(1, b // 4), max(1, 3 * b // 8)} - {b // 2}):
        L, Sp = fixed_budget_decomposition(P, r, P.shape[0] * max(0, b - 2 * r), n_iter=20)
        candidates.append(L + Sp)
    return min(candidates, key=lambda M: np.linalg.norm(M - P))


def _nystrom(q, k, v, scale, n_landmarks):
    """Nystromformer (Xiong et al. 2021, eq. 9-13): segment-mean landmarks, pseudo-inverse core,
    applied right to left so that no ``T x S`` matrix is formed (``v = I`` gives the matrix ``P^``)."""
    c = min(n_landmarks, q.shape[0], k.shape[0])
    ql = np.stack([s.mean(0) for s in np.array_split(q, c)])  # (c, H) segment means of the queries
    kl = np.stack([s.mean(0) for s in np.array_split(k, c)])  # (c, H) and of the keys
    F = attention_probabilities(q, kl, scale=scale)  # (T, c)
    A = attention_probabilities(ql, kl, scale=scale)  # (c, c)
    B = attention_probabilities(ql, k, scale=scale)  # (c, S)
    return F @ (np.linalg.pinv(A) @ (B @ v))


def _half(b):
    return max(1, b // 2)


def _simhash_bits(S, bucket):
    """SimHash bits giving buckets of about ``bucket`` keys out of ``S``."""
    return max(1, int(round(math.log2(max(2, S / bucket)))))


def _performer_flops(T, H, m):
    """Features ``2 (T + S) m H``, products ``2 S m Hv + 2 T m Hv`` (``T = S``, ``Hv = H``)."""
    return 2 * (2 * T) * m * H + 2 * T * m * H * 2


def _sparse_flops(T, H, budget, result):
    """Logits and values on the support, ``4 nnz H`` (hashing not counted)."""
    return 4.0 * result.support.nnz * H


# ----------------------------------------------------------------------------- the entries
def _exact(implementation):
    def run(q, k, v, *, budget, scale, rng, causal=False, dtype=None):
        return softmax_attention(q, k, v, scale=scale, causal=causal, implementation=implementation, dtype=dtype)
    return run


def _dense_oracle(matrix):
    def run(q, k, v, *, budget, scale, rng, causal=False, dtype=None):
        return matrix(attention_probabilities(q, k, scale=scale), budget) @ v
    return run


def _run_performer(q, k, v, *, budget, scale, rng, causal=False, dtype=None):
    return performer_attention(q, k, v, m=_half(budget), rng=rng, scale=scale, causal=causal, dtype=dtype)


#: SMYRF hash rounds of Scatterbrain's paper configuration (the authors' configs use 2)
SCATTERBRAIN_HASHES = 2


def _run_scatterbrain_smyrf(q, k, v, *, budget, scale, rng, causal=False, dtype=None):
    """Scatterbrain as its authors configured it (Chen et al. 2021; their SMYRF-based code): the sparse
    part is the union of ``SCATTERBRAIN_HASHES`` SMYRF cluster supports (asymmetric transform,
    balanced clusters), a pair found by both hashes counted once; the budget rule of their configs,
    cluster entries + 2m numbers per query: clusters of about b/4 keys per hash (b/2 entries) and
    m = b/4 features (b/2 numbers)."""
    hash_rng, feature_rng = rng.spawn(2)
    per_cluster = max(1, budget // (2 * SCATTERBRAIN_HASHES))
    n_clusters = max(1, min(q.shape[0], k.shape[0]) // per_cluster)
    supports, _ = smyrf_clusters(q, k, n_clusters=n_clusters, rounds=SCATTERBRAIN_HASHES, rng=hash_rng, scale=scale)
    return scatterbrain_attention(q, k, v, union(*supports), m=max(1, budget // 4), rng=feature_rng, scale=scale,
                                  causal=causal)


def _run_scatterbrain(q, k, v, *, budget, scale, rng, causal=False, dtype=None):
    hash_rng, feature_rng = rng.spawn(2)
    planes = simhash_planes(q.shape[1], _simhash_bits(k.shape[0], _half(budget)), hash_rng)
    sup = bucket_support(simhash(q, planes)[0], simhash(k, planes)[0])
    return scatterbrain_attention(q, k, v, sup, m=max(1, budget // 4), rng=feature_rng, scale=scale, causal=causal)


def _run_nystrom(q, k, v, *, budget, scale, rng, causal=False, dtype=None):
    return _nystrom(q, k, v, scale, _half(budget))


def _run_local_window(q, k, v, *, budget, scale, rng, causal=False, dtype=None):
    h = budget // 2
    sup = local_window(q.shape[0], k.shape[0], h, budget - h - 1)
    return sparse_attention(q, k, v, sup, scale=scale)


def _buckets(S, per_bucket):
    """An even bucket count giving about ``per_bucket`` keys per bucket (Reformer's hash needs even)."""
    return max(2, 2 * (S // per_bucket // 2))


def _run_reformer(q, k, v, *, budget, scale, rng, causal=False, dtype=None):
    h = _half(budget)
    return reformer_attention(q, k, v, n_buckets=_buckets(k.shape[0], h), chunk=h, rng=rng, scale=scale,
                              causal=causal)


def _run_smyrf(q, k, v, *, budget, scale, rng, causal=False, dtype=None):
    return smyrf_attention(q, k, v, n_clusters=max(1, k.shape[0] // _half(budget)), rounds=1, rng=rng, scale=scale)


def _run_hyperattention(q, k, v, *, budget, scale, rng, causal=False, dtype=None):
    h = _half(budget)
    return hyper_attention(q, k, v, block_size=h, n_samples=h, rng=rng, scale=scale, causal=causal)


def _run_sea(q, k, v, *, budget, scale, rng, causal=False, dtype=None):
    h = _half(budget)
    return sea_attention(q, k, v, n_bins=min(h, k.shape[0]), topk=h, m=h, rng=rng, scale=scale, causal=causal)


_EXACT_FLOPS = lambda T, H, b, r: 4.0 * T * T * H  # noqa: E731  two GEMMs, T = S, Hv = H

register(Method("exact dense", _exact("dense"), "the oracle: the T x S matrix", exact=True, causal=True,
                flops=_EXACT_FLOPS, peak_bytes=lambda T, H, itemsize, b: 4.0 * T * T * itemsize, expected_exponent=2.0))
register(Method("exact streaming", _exact("numba"), "the oracle, online softmax in O((T + S) H) memory",
                exact=True, causal=True, flops=_EXACT_FLOPS, expected_exponent=2.0, max_T=131072))
register(Method("best sparse", _dense_oracle(row_topk), "b largest entries of each row of P", oracle=True,
                peak_bytes=lambda T, H, itemsize, b: 4.0 * T * T * 8, expected_exponent=2.0, max_T=4096))
register(Method("best low-rank", _dense_oracle(lambda P, b: truncated_svd(P, b // 2)), "rank b/2 SVD of P", oracle=True,
                peak_bytes=lambda T, H, itemsize, b: 5.0 * T * T * 8, expected_exponent=3.0, max_T=2048))
register(Method("sparse + low-rank", _dense_oracle(best_split),
                "rank r + (b - 2r) entries per row, the best r in {0, b/8, b/4, 3b/8, b/2}", oracle=True, in_report=False,
                peak_bytes=lambda T, H, itemsize, b: 8.0 * T * T * 8, expected_exponent=3.0, max_T=1024))
register(Method("performer", _run_performer, "m = b/2 features (orthogonal, positive)", causal=True,
                flops=lambda T, H, b, r: _performer_flops(T, H, _half(b))))
_SCATTERBRAIN_FLOPS = lambda T, H, b, r: (_performer_flops(T, H, max(1, b // 4))  # noqa: E731
                                         + (4.0 * H + 2.0 * max(1, b // 4)) * r.support.nnz)
register(Method("scatterbrain (smyrf)", _run_scatterbrain_smyrf,
                f"the paper's configuration: {SCATTERBRAIN_HASHES} SMYRF hashes with clusters of about b/4 keys "
                "(a pair found twice counts once) + m = b/4 features", causal=True, flops=_SCATTERBRAIN_FLOPS))
register(Method("scatterbrain (simhash)", _run_scatterbrain, "one SimHash table, buckets of about b/2 keys "
                "+ m = b/4 features", causal=True, flops=_SCATTERBRAIN_FLOPS))
register(Method("nystrom", _run_nystrom, "b/2 segment-mean landmarks",
                flops=lambda T, H, b, r: 4.0 * (2 * T) * _half(b) * H))  # F, B logits and F (A^+ (B v)), T = S
register(Method("local window", _run_local_window, "b keys around the diagonal",
                flops=lambda T, H, b, r: 4.0 * T * b * H))
register(Method("reformer", _run_reformer, "chunks of b/2 with look-back 1, buckets of about b/2 keys", causal=True,
                flops=_sparse_flops))
# the cluster and block supports are built from dense T x S booleans (O(T^2) time and memory):
# measured ~1.25 (SMYRF) and ~3 (HyperAttention) bytes per entry, predicted with a margin
register(Method("smyrf", _run_smyrf, "balanced clusters of about b/2 keys, one round", flops=_sparse_flops,
                peak_bytes=lambda T, H, itemsize, b: 1.5 * T * T))
register(Method("hyperattention", _run_hyperattention, "blocks of b/2 plus b/2 sampled columns", causal=True,
                flops=_sparse_flops, peak_bytes=lambda T, H, itemsize, b: 3.5 * T * T))
register(Method("sea", _run_sea, "K = b/2 bins + top k = b/2 keys (m = b/2 features)", causal=True,
                flops=lambda T, H, b, r: 4.0 * T * _half(b) * H + 4.0 * T * _half(b) * (_half(b) + H)
                + 4.0 * r.supports[0].nnz * H))

#: The registered names in table order.
METHODS = tuple(REGISTRY)
