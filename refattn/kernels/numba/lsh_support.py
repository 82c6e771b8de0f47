r"""Build Reformer's chunked-LSH support in O(nnz), for several hash rounds at once.

The readable reference is [`refattn.lsh.sparse.chunked_bucket_support`][refattn.lsh.sparse.chunked_bucket_support] with
``implementation="dense"`` (a ``T x S`` boolean mask per round, then a union): this kernel
must give the same support (proofs_tests/lsh/test_sparse.py). Here each query row collects, over
the rounds, the keys of its own chunk and the ``lookback`` chunks before it (in the sorted
order of that round), optionally only those in its bucket; the row's candidates are sorted
and de-duplicated (an entry found in several rounds counts once). Two passes (count, then
fill), rows in parallel; each row uses its own buffer.

Inputs (per round ``r``): ``q_chunk (R, T)`` the chunk of each query, ``k_order (R, S)`` the
keys in sorted order, ``k_bounds (R, n_c + 1)`` where key chunk ``c`` is
``k_order[r, k_bounds[r, c]:k_bounds[r, c + 1]]``, and the buckets ``q_bucket (R, T)``,
``k_bucket (R, S)``.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["chunk_layout", "union_support_numba"]


def chunk_layout(buckets, n_chunks):
    """Stable sort by (bucket, position), cut into ``n_chunks``: (order, bounds, chunk of each position)."""
    buckets = np.asarray(buckets)
    order = np.lexsort((np.arange(buckets.size), buckets))
    bounds = np.round(np.linspace(0, buckets.size, n_chunks + 1)).astype(np.int64)
    chunk_of = np.empty(buckets.size, dtype=np.int64)
    for c in range(n_chunks):
        chunk_of[order[bounds[c]:bounds[c + 1]]] = c
    return order.astype(np.int64), bounds, chunk_of


@numba.njit(cache=True)
def _collect(i, q_chunk, k_order, k_bounds, q_bucket, k_bucket, lookback, same_bucket, buf):
    """Row i's candidate keys over all rounds, sorted and de-duplicated: (buffer, count)."""
    n = 0
    for r in range(q_chunk.shape[0]):
        c = q_chunk[r, i]
        for cc in range(max(0, c - lookback), c + 1):
            for p in range(k_bounds[r, cc], k_bounds[r, cc + 1]):
                j = k_order[r, p]
                if same_bucket and k_bucket[r, j] != q_bucket[r, i]:
                    continue
                buf[n] = j
                n += 1
    s = np.sort(buf[:n])
    m = 0
    for t in range(n):  # unique, in place
        if t == 0 or s[t] != s[t - 1]:
            s[m] = s[t]
            m += 1
    return s, m


@numba.njit(parallel=True, cache=True)
def _build_csr(q_chunk, k_order, k_bounds, q_bucket, k_bucket, lookback, same_bucket, cap):
    T = q_chunk.shape[1]
    counts = np.zeros(T, dtype=np.int64)
    for i in numba.prange(T):  # pass 1: counts
        buf = np.empty(cap, dtype=np.int64)
        _, m = _collect(i, q_chunk, k_order, k_bounds, q_bucket, k_bucket, lookback, same_bucket, buf)
        counts[i] = m
    indptr = np.zeros(T + 1, dtype=np.int64)
    for i in range(T):
        indptr[i + 1] = indptr[i] + counts[i]
    indices = np.empty(indptr[T], dtype=np.int64)
    for i in numba.prange(T):  # pass 2: fill (each row writes only its own slice)
        buf = np.empty(cap, dtype=np.int64)
        s, m = _collect(i, q_chunk, k_order, k_bounds, q_bucket, k_bucket, lookback, same_bucket, buf)
        indices[indptr[i]:indptr[i] + m] = s[:m]
    return indptr, indices


def union_support_numba(q_buckets, k_buckets, chunk, lookback, same_bucket):
    """``(indptr, indices)`` of the union over rounds; ``q_buckets (R, T)``, ``k_buckets (R, S)``."""
    qb = np.atleast_2d(np.asarray(q_buckets, dtype=np.int64))
    kb = np.atleast_2d(np.asarray(k_buckets, dtype=np.int64))
    R, T = qb.shape
    S = kb.shape[1]
    n_c = max(1, -(-T // chunk))
    q_chunk = np.empty((R, T), dtype=np.int64)
    k_order = np.empty((R, S), dtype=np.int64)
    k_bounds = np.empty((R, n_c + 1), dtype=np.int64)
    for r in range(R):
        q_chunk[r] = chunk_layout(qb[r], n_c)[2]
        k_order[r], k_bounds[r], _ = chunk_layout(kb[r], n_c)
    widest = int(np.max(np.diff(k_bounds, axis=1), initial=0))
    cap = max(1, R * (lookback + 1) * widest)
    return _build_csr(q_chunk, k_order, k_bounds, qb, kb, np.int64(lookback), bool(same_bucket), np.int64(cap))
