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
from threadpoolctl import threadpool_limits

from refattn._validation import check_positive_int
from refattn.exact import attention_probabilities
from refattn.stats import as_generator

__all__ = ["BudgetRow", "clustered_inputs", "local_sink_inputs", "matched_budget", "row_entropy", "METHODS",
           "REGISTRY", "register"]


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
    per row, r in {b/8, b/4, 3b/8} (:func:`refattn.scatterbrain.rpca.fixed_budget_decomposition`)."""
    from refattn.scatterbrain.rpca import fixed_budget_decomposition

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


#: The matched-budget registry: name -> ``run(q, k, v, *, budget, scale, rng) -> output (T, Hv)``.
#: Every entry is linear in ``v`` given its draw, so ``run(q, k, I)`` is its effective attention
#: matrix ``P^``; ``refattn report`` and :func:`matched_budget` both read this table. A new method
#: joins both with one :func:`register` call (see ``docs/report.md``).
REGISTRY: dict = {}


def register(name):
    """Decorator: add ``run(q, k, v, *, budget, scale, rng)`` to :data:`REGISTRY` under ``name``."""
    def deco(fn):
        REGISTRY[name] = fn
        return fn
    return deco


def _half(b):
    return max(1, b // 2)


@register("best sparse")
def _run_best_sparse(q, k, v, *, budget, scale, rng):
    return _topk(attention_probabilities(q, k, scale=scale), budget) @ v


@register("best low-rank")
def _run_best_low_rank(q, k, v, *, budget, scale, rng):
    return _svd(attention_probabilities(q, k, scale=scale), budget // 2) @ v


@register("sparse + low-rank")
def _run_mixed(q, k, v, *, budget, scale, rng):
    return _best_mixed_split(attention_probabilities(q, k, scale=scale), budget) @ v


@register("performer")
def _run_performer(q, k, v, *, budget, scale, rng):
    from refattn.performer.attention import performer_attention

    return performer_attention(q, k, v, m=_half(budget), rng=rng, scale=scale).output


@register("scatterbrain")
def _run_scatterbrain(q, k, v, *, budget, scale, rng):
    from refattn.lsh.hashes import simhash, simhash_planes
    from refattn.lsh.sparse import bucket_support
    from refattn.scatterbrain.attention import scatterbrain_attention

    bits = max(1, int(round(math.log2(max(2, k.shape[0] / _half(budget))))))
    planes = simhash_planes(q.shape[1], bits, np.random.default_rng([int(rng.integers(2**31)), 9]))
    sup = bucket_support(simhash(q, planes)[0], simhash(k, planes)[0])
    return scatterbrain_attention(q, k, v, sup, m=max(1, budget // 4), rng=rng, scale=scale).output


@register("nystrom")
def _run_nystrom(q, k, v, *, budget, scale, rng):
    return _nystrom(q, k, scale, _half(budget)) @ v


@register("local window")
def _run_local_window(q, k, v, *, budget, scale, rng):
    from refattn.lsh.sparse import local_window, sparse_attention

    return sparse_attention(q, k, v, local_window(q.shape[0], k.shape[0], budget // 2, budget - budget // 2 - 1),
                            scale=scale)


@register("reformer")
def _run_reformer(q, k, v, *, budget, scale, rng):
    from refattn.lsh.attention import reformer_attention

    h = _half(budget)
    return reformer_attention(q, k, v, n_buckets=max(2, 2 * (k.shape[0] // h // 2)), chunk=h, rng=rng,
                              scale=scale).output


@register("hyperattention")
def _run_hyperattention(q, k, v, *, budget, scale, rng):
    from refattn.lsh.attention import hyper_attention

    h = _half(budget)
    return hyper_attention(q, k, v, block_size=h, n_samples=h, rng=rng, scale=scale).output


@register("sea")
def _run_sea(q, k, v, *, budget, scale, rng):
    from refattn.sea import sea_attention

    h = _half(budget)
    return sea_attention(q, k, v, n_bins=min(h, k.shape[0]), topk=h, m=h, rng=rng, scale=scale).output


#: The methods' names in table order (the oracles first).
METHODS = tuple(REGISTRY)


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
    unknown = [m for m in methods if m not in REGISTRY]
    if unknown:
        raise ValueError(f"method: unknown {unknown[0]!r}; expected one of {sorted(REGISTRY)}")
    rows = []
    eye = np.eye(k.shape[0])  # P^ = the method applied to V = I (every entry is linear in V)
    # one BLAS thread: the oracles' many small SVDs gain nothing from threads, and on a loaded
    # 2-core machine OpenBLAS's spinning threads made them up to 300x slower
    with threadpool_limits(limits=1, user_api="blas"):
        for method in methods:
            Ph = REGISTRY[method](q, k, eye, budget=budget, scale=scale, rng=gen)
            rows.append(BudgetRow(method, float(np.linalg.norm(Ph - P) / nP),
                                  float(np.linalg.norm(Ph @ v - O) / nO)))
    return rows
