r"""LSH sparse attention estimators built on :mod:`refattn.lsh` and :mod:`refattn.sparse`.

- :func:`reformer_attention` (Kitaev et al. 2020): angular-hash buckets, stable sort by
  (bucket, position), chunks with look-back; several rounds combined as the **union** of
  their supports, each entry counted once (MATH.md section 3: without de-duplication the
  softmax over the union is wrong); shared-QK with unit keys and self-exclusion.
- :func:`smyrf_attention` (Daras et al. 2020): the asymmetric transform, one Gaussian
  projection per round, sorted and cut into equal-size (balanced) clusters.

Given the draws, both are exact softmax attention on their support (the kernels of
:mod:`refattn.sparse`), so they are as deterministic as their hashes: their error against
the oracle is the probability mass outside the support.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from refattn._validation import check_positive_int
from refattn.lsh import angular_hash, angular_rotations, smyrf_transform
from refattn.problem import attention_problem, causal_mask
from refattn.sparse import Support, balanced_clusters, chunked_bucket_support, sparse_attention, union
from refattn.stats import as_generator

__all__ = ["LSHAttentionResult", "reformer_attention", "smyrf_attention"]


@dataclass
class LSHAttentionResult:
    """Output, lse, the union support and the per-round buckets (or cluster keys) of the draw."""

    output: np.ndarray
    lse: np.ndarray
    support: Support
    buckets: np.ndarray


def _two_d(q, k, v, scale):
    prob = attention_problem(q, k, v, scale=scale)
    if prob.batch_shape:
        raise ValueError("q: LSH attention takes 2-D (T, H) inputs (one head); loop over heads")
    return prob


def reformer_attention(q, k, v, *, n_buckets, chunk, rounds=1, rng, shared_qk=False, causal=False,
                       lookback=1, same_bucket=True, scale=None, implementation="numba") -> LSHAttentionResult:
    """Reformer's LSH attention for one head.

    With ``shared_qk`` the keys are the unit-normalised queries (``k`` is ignored; T = S) and
    a query does not attend to itself unless it has no other key in its support
    (Kitaev et al. 2020, section 2.2). ``causal`` intersects the support with the causal
    mask (bottom-right alignment).
    """
    if shared_qk:
        qa = np.asarray(q, dtype=np.float64)
        norms = np.linalg.norm(qa, axis=-1, keepdims=True)
        k = qa / np.where(norms > 0, norms, 1.0)
    prob = _two_d(q, k, v, scale)
    rounds = check_positive_int(rounds, "rounds")
    R = angular_rotations(prob.H, n_buckets, as_generator(rng), rounds=rounds)
    hq = angular_hash(prob.q, R)  # (rounds, T)
    hk = hq if shared_qk else angular_hash(prob.k, R)
    supports = [chunked_bucket_support(hq[r], hk[r], chunk, lookback=lookback, same_bucket=same_bucket)
                for r in range(rounds)]
    sup = union(*supports)
    if causal:
        sup = sup.intersect(causal_mask(prob.T, prob.S, causal))
    bias = None
    if shared_qk:
        rows = sup.rows()
        self_entry = rows == sup.indices
        alone = sup.row_counts()[rows] == 1
        bias = np.where(self_entry & ~alone, -np.inf, 0.0)
    out, lse = sparse_attention(prob.q, prob.k, prob.v, sup, scale=prob.scale, entry_bias=bias,
                                return_lse=True, implementation=implementation)
    return LSHAttentionResult(out, lse, sup, hq)


def smyrf_attention(q, k, v, *, n_clusters, rounds=1, rng, scale=None, implementation="numba") -> LSHAttentionResult:
    """SMYRF for one head: transform the scaled rows (so inner products are the logits), project
    on a Gaussian direction per round, cut sorted queries and keys into ``n_clusters`` equal
    clusters, and attend within clusters; rounds are merged as a union."""
    prob = _two_d(q, k, v, scale)
    rounds = check_positive_int(rounds, "rounds")
    root = math.sqrt(prob.scale)
    F, G, _ = smyrf_transform(prob.q * root, prob.k * root)
    gen = as_generator(rng)
    a = gen.standard_normal((rounds, F.shape[1]))
    keys = []
    supports = []
    for r in range(rounds):
        fq, gk = F @ a[r], G @ a[r]
        keys.append(fq)
        supports.append(balanced_clusters(fq, gk, n_clusters))
    sup = union(*supports)
    out, lse = sparse_attention(prob.q, prob.k, prob.v, sup, scale=prob.scale, return_lse=True,
                                implementation=implementation)
    return LSHAttentionResult(out, lse, sup, np.stack(keys))
