r"""The matched-budget comparison (Scatterbrain's main figure, Chen et al. 2021, Sec. 3 and 5).

At a budget of ``b`` stored numbers per query row, every method approximates the attention
matrix ``P`` (and the output ``O = P V``); we report the relative Frobenius errors
``|P^ - P|_F / |P|_F`` and ``|O^ - O|_F / |O|_F`` and the mean row entropy of ``P``.
Budget accounting (``T = S``):

==============================  ===============================================
best sparse (top-k, oracle)     ``b`` largest entries of each row of ``P`` (truncated)
best low-rank (SVD, oracle)     rank ``b/2`` (``r (T + S)`` numbers)
sparse + low-rank (oracle)      best of rank ``r`` + ``b - 2r`` entries per row, ``r`` in {b/8, b/4, 3b/8}
performer                       ``m = b/2`` features (orthogonal, positive)
scatterbrain                    ``m = b/4`` features + SimHash buckets of about ``b/2`` keys
nystrom                         ``b/2`` segment-mean landmarks (Xiong et al. 2021)
local window                    ``b`` keys around the diagonal
reformer                        chunks of ``b/2`` with look-back 1, buckets of about ``b/2``
hyperattention                  blocks of ``b/2`` plus ``b/2`` sampled columns
sea                             ``K = b/2`` compressed bins + top ``k = b/2`` keys (``m = b/2`` features)
==============================  ===============================================

:func:`clustered_inputs` is Scatterbrain's generative process: queries and keys around
``C`` shared cluster centres, logits ``beta q . k``; the inverse temperature ``beta`` moves
attention from diffuse (high entropy: low-rank wins) to peaked (low entropy: sparse wins),
with sparse + low-rank best in between (MATH.md section 4: test the ordering, not constants).
The oracles materialise ``T x S``: this is a small-``T`` study tool.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from refattn._validation import check_positive_int
from refattn.exact import attention_probabilities
from refattn.stats import as_generator

__all__ = ["BudgetRow", "clustered_inputs", "local_sink_inputs", "matched_budget", "row_entropy", "METHODS"]


@dataclass
class BudgetRow:
    method: str
    error_P: float
    error_O: float


def clustered_inputs(T, H, n_clusters, rng, *, sigma=0.3, Hv=None):
    """Scatterbrain's clustered process: ``q_i = c_{z_i} + sigma e_i``, ``k_j = c_{z'_j} + sigma e'_j``,
    centres ``c ~ N(0, I/H)``, noise ``e ~ N(0, I/H)``; ``v ~ N(0, I)``. Use ``scale=beta``."""
    T = check_positive_int(T, "T")
    H = check_positive_int(H, "H")
    C = check_positive_int(n_clusters, "n_clusters")
    gen = as_generator(rng)
    centres = gen.normal(size=(C, H)) / math.sqrt(H)
    q = centres[gen.integers(0, C, size=T)] + sigma * gen.normal(size=(T, H)) / math.sqrt(H)
    k = centres[gen.integers(0, C, size=T)] + sigma * gen.normal(size=(T, H)) / math.sqrt(H)
    v = gen.normal(size=(T, Hv or H))
    return q, k, v


def local_sink_inputs(T, H, rng, *, beta=8.0, step=0.3, noise=0.3, sink=1.0):
    """A language-model-like process: local attention plus an attention sink.

    Keys follow a random walk (``k_j = sum_{j' <= j} step e_j'``, ``e ~ N(0, I/H)``), centred and
    scaled so that ``|q_i| |k_i| / sqrt(H)`` is about ``beta`` (the inverse temperature: the logit
    of a query with its own key at the default scale); nearby positions have similar keys, so
    ``q_i = k_i + noise |k_i| e'_i`` (``e' ~ N(0, I/H)``) attends mostly near ``i``. Key 0 is replaced
    by ``sink`` times the mean query direction at the same norm (every query puts extra mass on
    the first key). Used by SEA's distillation tests and examples. Returns ``q, k`` (``(T, H)``).
    """
    T = check_positive_int(T, "T")
    H = check_positive_int(H, "H")
    gen = as_generator(rng)
    k = np.cumsum(gen.normal(size=(T, H)) * (step / math.sqrt(H)), axis=0)  # (T, H) random walk
    k -= k.mean(axis=0)
    norm = np.linalg.norm(k, axis=1).mean()
    target = math.sqrt(beta * math.sqrt(H))  # |q| = |k| = target: logit q.k / sqrt(H) ~ beta
    if norm > 0:  # T = 1: a single centred key is 0
        k *= target / norm
    q = k + noise * target * gen.normal(size=(T, H)) / math.sqrt(H)
    mean_q = q.mean(axis=0)
    if np.linalg.norm(mean_q) > 0:
        k[0] = sink * target * mean_q / np.linalg.norm(mean_q)
    return q, k


def row_entropy(P):
    """Mean Shannon entropy (nats) of the rows of ``P``."""
    P = np.asarray(P, dtype=np.float64)
    return float(-(P * np.log(np.where(P > 0, P, 1.0))).sum(axis=-1).mean())


def _normalise(A):
    s = A.sum(axis=1, keepdims=True)
    return np.where(s != 0, A / np.where(s != 0, s, 1.0), 0.0)


def _topk(P, b):
    idx = np.argsort(-P, axis=1, kind="stable")[:, :b]
    M = np.zeros_like(P)
    np.put_along_axis(M, idx, np.take_along_axis(P, idx, 1), 1)
    return M


def _svd(P, r):
    U, s, Vt = np.linalg.svd(P, full_matrices=False)
    return (U[:, :r] * s[:r]) @ Vt[:r]


def _best_mixed_split(P, b):
    """The sparse + low-rank oracle: the best of the strictly mixed splits rank r + (b - 2r) entries
    per row, r in {b/8, b/4, 3b/8} (:func:`refattn.rpca.fixed_budget_decomposition`)."""
    from refattn.rpca import fixed_budget_decomposition

    best, err = None, np.inf
    for r in sorted({max(1, b // 8), max(1, b // 4), max(1, 3 * b // 8)}):
        L, Sp = fixed_budget_decomposition(P, r, P.shape[0] * max(0, b - 2 * r), n_iter=20)
        e = np.linalg.norm(L + Sp - P)
        if e < err:
            best, err = L + Sp, e
    return best


def _nystrom(q, k, scale, n_landmarks):
    """Nystromformer (Xiong et al. 2021, eq. 9-13): segment-mean landmarks, pseudo-inverse core."""
    T = q.shape[0]
    seg = np.array_split(np.arange(T), n_landmarks)
    ql = np.stack([q[s].mean(0) for s in seg])
    kl = np.stack([k[s].mean(0) for s in seg])
    F = attention_probabilities(q, kl, scale=scale)  # (T, c)
    A = attention_probabilities(ql, kl, scale=scale)  # (c, c)
    B = attention_probabilities(ql, k, scale=scale)  # (c, S)
    return F @ np.linalg.pinv(A) @ B


def _estimate_matrix(method, q, k, b, scale, rng):
    """The method's effective (row-normalised where it is an attention) matrix P^ (T, S)."""
    from refattn.lsh import simhash, simhash_planes
    from refattn.lsh_attention import hyper_attention, reformer_attention
    from refattn.performer import performer_attention
    from refattn.scatterbrain import scatterbrain_attention, scatterbrain_matrix
    from refattn.sparse import bucket_support, local_window

    T, S = q.shape[0], k.shape[0]
    eye = np.eye(S)  # P^ = method applied to V = I
    half = max(1, b // 2)
    bits = max(1, int(round(math.log2(max(2, S / half)))))
    if method == "performer":
        return performer_attention(q, k, eye, m=half, rng=rng, scale=scale).output
    if method == "scatterbrain":
        planes = simhash_planes(q.shape[1], bits, np.random.default_rng([int(rng.integers(2**31)), 9]))
        sup = bucket_support(simhash(q, planes)[0], simhash(k, planes)[0])
        res = scatterbrain_attention(q, k, eye, sup, m=max(1, b // 4), rng=rng, scale=scale)
        return _normalise(scatterbrain_matrix(res))
    if method == "nystrom":
        return _nystrom(q, k, scale, half)
    if method == "local window":
        from refattn.sparse import sparse_attention

        return sparse_attention(q, k, eye, local_window(T, S, b // 2, b - b // 2 - 1), scale=scale)
    if method == "reformer":
        return reformer_attention(q, k, eye, n_buckets=max(2, 2 * (S // half // 2)), chunk=half, rng=rng,
                                  scale=scale).output
    if method == "hyperattention":
        return hyper_attention(q, k, eye, block_size=half, n_samples=half, rng=rng, scale=scale).output
    if method == "sea":
        from refattn.sea import sea_attention

        return sea_attention(q, k, eye, n_bins=min(half, S), topk=half, m=half, rng=rng, scale=scale).output
    raise ValueError(f"method: unknown {method!r}")


METHODS = ("best sparse", "best low-rank", "sparse + low-rank", "performer", "scatterbrain", "nystrom",
           "local window", "reformer", "hyperattention", "sea")


def matched_budget(q, k, v, *, budget, scale, rng, methods=METHODS):
    """Errors of every method at ``budget`` numbers per row: a list of :class:`BudgetRow`."""
    budget = check_positive_int(budget, "budget", minimum=4)
    if q.shape[0] != k.shape[0]:
        raise ValueError("q, k: the budget accounting here assumes T == S")
    if budget > k.shape[0]:
        raise ValueError(f"budget: {budget} exceeds the number of keys {k.shape[0]}")
    gen = as_generator(rng)
    P = attention_probabilities(q, k, scale=scale)
    O = P @ v
    nP, nO = np.linalg.norm(P), np.linalg.norm(O)
    rows = []
    for method in methods:
        if method == "best sparse":
            Ph = _topk(P, budget)
        elif method == "best low-rank":
            Ph = _svd(P, budget // 2)
        elif method == "sparse + low-rank":
            Ph = _best_mixed_split(P, budget)
        else:
            Ph = _estimate_matrix(method, q, k, budget, scale, gen)
        rows.append(BudgetRow(method, float(np.linalg.norm(Ph - P) / nP), float(np.linalg.norm(Ph @ v - O) / nO)))
    return rows
