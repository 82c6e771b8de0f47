r"""Reformer's chunked LSH attention on the blocks of its support, not on a CSR of it.

Kitaev et al. (2020), Sec. 2.2: per hash round, queries and keys are sorted by (bucket, position)
and cut into chunks; query chunk ``c`` sees key chunks ``c - lookback .. c`` (optionally only keys
of its bucket). In sorted order that window is one contiguous run of keys, so each chunk is two
small matrix products on slices of the sorted (gathered once per round) ``q``, ``k``, ``[v | 1]``
(``gemm``), with the masks applied to the logits between them, and the online-softmax state
(running max ``m``, unnormalised ``[o | l]``) of each query carried across rounds as in the
streaming oracle. A query sits in exactly one chunk per round, so the chunks of a round run in
parallel without sharing a row.

The readable twin builds the union support as CSR
([`refattn.lsh.sparse.chunked_bucket_support`][refattn.lsh.sparse.chunked_bucket_support]) and runs
[`refattn.lsh.sparse.sparse_attention`][refattn.lsh.sparse.sparse_attention] on it, where a pair
found in several rounds counts once. Here an entry of round ``r`` is dropped when an earlier round
``r' < r`` already had it in its window (same chunk test, same bucket test on round ``r'``'s
layout), so the rounds' entry sets are disjoint and their union is the twin's support: the two give
the same output to summation order (tested).

Masks per entry ``(i, j)``: different bucket (``same_bucket``), ``i == j`` (``exclude_self``: shared
QK, where a query attends to itself only when it has no other key; those rows are finished by the
caller), ``j > i + offset`` (causal), or found in an earlier round.
"""

from __future__ import annotations

import numba
import numpy as np

from refattn.kernels.numba.gemm import gemm
from refattn.kernels.numba.streaming import _row_max
from refattn.kernels.numba.vexp import exp_inplace

__all__ = ["chunked_round"]


@numba.njit(cache=True)
def _seen_before(r, i, j, q_chunk, k_chunk, q_bucket, k_bucket, lookback, same_bucket):
    """Whether an earlier round's window already held the entry ``(i, j)``."""
    for r2 in range(r):
        d = q_chunk[r2, i] - k_chunk[r2, j]
        if 0 <= d <= lookback and (not same_bucket or q_bucket[r2, i] == k_bucket[r2, j]):
            return True
    return False


@numba.njit(parallel=True, cache=True)
def chunked_round(r, qs, ks, vs, q_ids, k_ids, q_bounds, k_bounds, q_chunk, k_chunk, q_bucket, k_bucket, lookback,
                  same_bucket, exclude_self, causal, offset, m, acc):
    """Round ``r``: fold every chunk's entries into the running ``m (T,)`` and ``acc (T, Hv + 1)``.

    ``qs (T, H)`` the scaled queries in this round's sorted order (``q_ids`` their original
    indices), ``ks (S, H)`` and ``vs (S, Hv + 1)`` the keys and ``[v | 1]`` in sorted order
    (``k_ids``); chunk ``c`` is ``q_bounds[c]:q_bounds[c + 1]`` of the sorted queries and
    ``k_bounds[c - lookback]:k_bounds[c + 1]`` of the sorted keys. ``q_chunk``, ``k_chunk``,
    ``q_bucket``, ``k_bucket`` ``(rounds, .)``: every round's layout, by original index.
    ``causal``: apply ``j <= i + offset``.
    """
    H = qs.shape[1]
    Hv1 = vs.shape[1]
    n_c = q_bounds.size - 1
    neg_inf = -np.inf
    for c in numba.prange(n_c):
        a = q_bounds[c]
        bq = q_bounds[c + 1] - a
        ka = k_bounds[max(0, c - lookback)]
        bk = k_bounds[c + 1] - ka
        if bq == 0 or bk == 0:
            continue
        s = np.empty((bq, bk), dtype=qs.dtype)  # this chunk's own buffers
        pv = np.empty((bq, Hv1), dtype=qs.dtype)
        alpha = np.empty(bq, dtype=qs.dtype)
        gemm(False, True, bq, bk, H, qs[a:a + bq], H, ks[ka:ka + bk], H, 0.0, s, bk)  # scaled logits
        for t in range(bq):
            i = q_ids[a + t]
            bi = q_bucket[r, i]
            row = s[t]
            for u in range(bk):
                j = k_ids[ka + u]
                if ((same_bucket and bi != k_bucket[r, j]) or (exclude_self and i == j) or (causal and j > i + offset)
                        or (r > 0 and _seen_before(r, i, j, q_chunk, k_chunk, q_bucket, k_bucket, lookback,
                                                   same_bucket))):
                    row[u] = neg_inf
            m_old = m[i]
            m[i] = max(m_old, _row_max(row, bk))
            ref = m[i] if m[i] > neg_inf else 0.0
            exp_inplace(row, ref)
            alpha[t] = np.exp(m_old - ref)
        gemm(False, False, bq, Hv1, bk, s, bk, vs[ka:ka + bk], Hv1, 0.0, pv, Hv1)  # this chunk's P [v | 1]
        for t in range(bq):
            i = q_ids[a + t]
            for h in range(Hv1):
                acc[i, h] = acc[i, h] * alpha[t] + pv[t, h]
