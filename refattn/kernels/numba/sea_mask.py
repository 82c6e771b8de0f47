r"""SEA's mask builder: top-k on the compressed estimate, upsampled to key columns.

The rule (the docs' SEA page, steps 2-3; pinned in [`refattn.sea`][refattn.sea]): row ``i`` has length
``l_i``; bin ``b`` of ``K`` covers columns ``[start_b, start_{b+1})`` with
``start_b = floor(b l_i / K + 1/2)`` (integer arithmetic, [`refattn.sea.bin_starts`][refattn.sea.estimate.bin_starts]).
Each column ``j`` of bin ``b`` carries the upsampled estimate (the density)
``A~[i, b] / w_b``, ``w_b = start_{b+1} - start_b``. The mask of a row is the ``B_i`` columns
with the largest density, ties broken by (head, column) ascending, with ``B_i = N min(k_i, l_i)``
shared by the ``N`` heads of a query (grouped; ``N = 1`` is the per-head top-k) and at least one
column per head (each head's best column is taken first).

Two implementations that must agree exactly (``proofs_tests/sea/``):

* `mask_dense` (the twin): upsamples every row to ``(N, S)`` densities and sorts columns
  with a stable sort. ``O(T N S log(N S))`` time, one row at a time.
* `mask_numba`: the same selection done on bins (a stable sort of the ``N K`` bin
  densities, whole bins taken greedily, the last one cut to the budget, lower columns first),
  ``O(T N K log(N K) + nnz)``, rows in parallel, never a ``T x S`` array.

Both take ``probs (N, T, K)`` float64 (the estimate, rows summing to 1 over non-empty bins),
``lengths (T,)`` and ``budget (T,)`` int64 (already validated) and return, per head, CSR
``indptr (T+1,)`` and ``indices (nnz,)`` with each row's columns sorted.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["mask_dense", "mask_numba"]


def _starts_numpy(l, K):
    b = np.arange(K + 1, dtype=np.int64)
    return (2 * b * l + K) // (2 * K)  # floor(b l / K + 1/2), exact


def mask_dense(probs, lengths, budget):
    N, T, K = probs.shape
    per_head = [[[] for _ in range(T)] for _ in range(N)]
    for i in range(T):
        l = int(lengths[i])
        if l == 0:
            continue
        starts = _starts_numpy(l, K)
        width = np.diff(starts)  # (K,)
        col_bin = np.searchsorted(starts, np.arange(l), side="right") - 1  # (l,) the bin of each column
        dens = np.empty((N, l))
        for h in range(N):
            dens[h] = probs[h, i, col_bin] / width[col_bin]  # (l,) upsampled estimate
        flat = np.argsort(-dens.ravel(), kind="stable")  # key (-density, head, column)
        chosen = set()
        for h in range(N):  # each head's best column first
            best = int(np.argsort(-dens[h], kind="stable")[0])
            chosen.add((h, best))
        total = N * min(int(budget[i]), l)
        for idx in flat:
            if len(chosen) >= total:
                break
            chosen.add(divmod(int(idx), l))
        for h, j in chosen:
            per_head[h][i].append(j)
    out = []
    for h in range(N):
        counts = np.array([len(r) for r in per_head[h]], dtype=np.int64)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        indices = np.array([j for r in per_head[h] for j in sorted(r)], dtype=np.int64)
        out.append((indptr, indices))
    return out


@numba.njit(cache=True)
def _row_plan(probs, i, l, K, kb, starts, take, top):
    """Fill ``take (N, K)``: how many columns of bin ``b`` head ``h`` keeps (from ``starts[b]``,
    the first column of a head's top bin being its forced one); ``top (N,)`` its top bin."""
    N = probs.shape[0]
    for b in range(K + 1):
        starts[b] = (2 * b * l + K) // (2 * K)
    dens = np.empty(N * K)
    for h in range(N):
        for b in range(K):
            w = starts[b + 1] - starts[b]
            dens[h * K + b] = -(probs[h, i, b] / w) if w > 0 else np.inf  # empty bins sort last
            take[h, b] = 0
    order = np.argsort(dens, kind="mergesort")  # stable: ties by (head, bin)
    for h in range(N):
        top[h] = -1
    seen = 0
    for n in range(N * K):
        h = order[n] // K
        if top[h] < 0:
            top[h] = order[n] % K
            take[h, top[h]] = 1  # the forced best column of head h
            seen += 1
            if seen == N:
                break
    remaining = N * kb - N
    for n in range(N * K):
        if remaining <= 0:
            break
        h = order[n] // K
        b = order[n] % K
        avail = (starts[b + 1] - starts[b]) - take[h, b]
        if avail <= 0:
            continue
        t = avail if avail < remaining else remaining
        take[h, b] += t
        remaining -= t


_ROWS_PER_TASK = 256  # rows per parallel task: each task allocates its scratch once


@numba.njit(parallel=True, cache=True)
def _count(probs, lengths, budget, counts):
    N, T, K = probs.shape
    n_tasks = (T + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK
    for task in numba.prange(n_tasks):
        starts = np.empty(K + 1, dtype=np.int64)
        take = np.empty((N, K), dtype=np.int64)
        top = np.empty(N, dtype=np.int64)
        for i in range(task * _ROWS_PER_TASK, min(T, (task + 1) * _ROWS_PER_TASK)):
            l = lengths[i]
            if l == 0:
                for h in range(N):
                    counts[h, i] = 0
                continue
            kb = budget[i] if budget[i] < l else l
            _row_plan(probs, i, l, K, kb, starts, take, top)
            for h in range(N):
                c = 0
                for b in range(K):
                    c += take[h, b]
                counts[h, i] = c


@numba.njit(parallel=True, cache=True)
def _fill(probs, lengths, budget, indptr, indices):
    N, T, K = probs.shape
    n_tasks = (T + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK
    for task in numba.prange(n_tasks):
        starts = np.empty(K + 1, dtype=np.int64)
        take = np.empty((N, K), dtype=np.int64)
        top = np.empty(N, dtype=np.int64)
        for i in range(task * _ROWS_PER_TASK, min(T, (task + 1) * _ROWS_PER_TASK)):
            l = lengths[i]
            if l == 0:
                continue
            kb = budget[i] if budget[i] < l else l
            _row_plan(probs, i, l, K, kb, starts, take, top)
            for h in range(N):
                p = indptr[h, i]
                for b in range(K):  # bins in column order: the row comes out sorted
                    for j in range(starts[b], starts[b] + take[h, b]):
                        indices[h, p] = j
                        p += 1


def mask_numba(probs, lengths, budget):
    N, T, K = probs.shape
    if N == 1:  # one head keeps exactly min(k, l) columns: no counting pass
        counts = np.minimum(budget, lengths)[None, :].astype(np.int64)
    else:
        counts = np.empty((N, T), dtype=np.int64)
        _count(probs, lengths, budget, counts)
    indptr = np.zeros((N, T + 1), dtype=np.int64)
    np.cumsum(counts, axis=1, out=indptr[:, 1:])
    width = int(indptr[:, -1].max()) if T else 0
    indices = np.empty((N, max(width, 1)), dtype=np.int64)
    if T:
        _fill(probs, lengths, budget, indptr, indices)
    return [(indptr[h], indices[h, : indptr[h, -1]].copy()) for h in range(N)]
