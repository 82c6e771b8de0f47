r"""Sparse attention kernels on a CSR support: SDDMM, row softmax with lse, SpMM.

The formula is in [`refattn.lsh.sparse`][refattn.lsh.sparse]. `sparse_numpy` is the twin (vectorised
gathers and segment reductions). `sparse_numba` groups consecutive rows that share a column list
(a block-structured support: one group per query block; a random one: groups of one row), gathers
each group's keys and values once and runs the group as two small matrix products with the row
softmax between them (the vectorised exp, within 1 ulp); groups run in parallel (``prange``), each
row owned by one group, so outputs are written without races; buffers are allocated per task,
never per row; no fastmath. It agrees with the twin to rounding (the logits' products summed in
BLAS order).
Both take validated float64 arrays: ``q (T, H)``, ``k (S, H)``, ``v (S, Hv)``, ``indptr
(T+1,)``, ``indices (nnz,)``, scale ``s`` and ``entry_bias (nnz,)``; they return
``out (T, Hv)`` and ``lse (T,)`` (zeros and ``-inf`` for an empty or fully ``-inf`` row).
"""

from __future__ import annotations

import numba
import numpy as np

from refattn.kernels.numba.gemm import gemm
from refattn.kernels.numba.streaming import _row_max
from refattn.kernels.numba.vexp import exp_inplace

__all__ = ["sparse_numpy", "sparse_numba"]


def sparse_numpy(q, k, v, indptr, indices, scale, entry_bias):
    T, Hv = q.shape[0], v.shape[1]
    counts = np.diff(indptr)
    rows = np.repeat(np.arange(T), counts)  # (nnz,)
    logits = np.einsum("nh,nh->n", q[rows], k[indices]) * scale + entry_bias  # SDDMM, (nnz,)
    out = np.zeros((T, Hv))
    lse = np.full(T, -np.inf)
    nonempty = counts > 0
    if not nonempty.any():
        return out, lse
    starts = indptr[:-1][nonempty]
    m = np.full(T, -np.inf)
    m[nonempty] = np.maximum.reduceat(logits, starts)  # row max
    ref = np.where(np.isfinite(m), m, 0.0)
    p = np.exp(logits - ref[rows])  # (nnz,), 0 for -inf entries
    l = np.zeros(T)
    l[nonempty] = np.add.reduceat(p, starts)
    acc = np.zeros((T, Hv))
    acc[nonempty] = np.add.reduceat(p[:, None] * v[indices], starts, axis=0)  # SpMM
    seen = l > 0
    out[seen] = acc[seen] / l[seen, None]
    lse[seen] = ref[seen] + np.log(l[seen])
    return out, lse


@numba.njit(parallel=True, cache=True)
def _same_as_previous(indptr, indices):
    """``same[r]``: row ``r`` has row ``r - 1``'s column list (rows compared in parallel)."""
    T = indptr.size - 1
    same = np.zeros(T, dtype=np.bool_)
    for r in numba.prange(1, T):
        a0, a1 = indptr[r - 1], indptr[r]
        length = a1 - a0
        if indptr[r + 1] - a1 == length:
            eq = True
            for u in range(length):
                if indices[a0 + u] != indices[a1 + u]:
                    eq = False
                    break
            same[r] = eq
    return same


@numba.njit(cache=True)
def _cut_groups(same, max_rows):
    T = same.size
    starts = np.empty(T + 1, dtype=np.int64)
    n = 0
    r0 = 0
    for r in range(1, T + 1):
        if r == T or not same[r] or r - r0 >= max_rows:
            starts[n] = r0
            n += 1
            r0 = r
    starts[n] = T
    return starts[:n + 1]


def row_groups(indptr, indices, max_rows):
    """Start rows of maximal runs (at most ``max_rows`` long) of consecutive rows with the same
    column list: ``(n_groups + 1,)``. A block-structured support gives one group per query block."""
    return _cut_groups(_same_as_previous(indptr, indices), max_rows)


@numba.njit(parallel=True, cache=True)
def _kernel(q, k, v, indptr, indices, scale, entry_bias, gstart, n_tasks, max_n, max_rows, out, lse):
    """Groups of rows sharing a column list: the group's keys and values gathered once, then two
    products (``gemm``) with the row softmax between them (each row's sum taken on the way).
    Buffers are allocated once per task (a contiguous range of groups), never per row."""
    H = q.shape[1]
    Hv = v.shape[1]
    G = gstart.size - 1
    for t in numba.prange(n_tasks):
        g0 = t * G // n_tasks
        g1 = (t + 1) * G // n_tasks
        kb = np.empty((max_n, H))
        vb = np.empty((max_n, Hv))
        qb = np.empty((max_rows, H))
        s = np.empty((max_rows, max_n))
        acc = np.empty((max_rows, Hv))
        mrow = np.empty(max_rows)
        lrow = np.empty(max_rows)
        for g in range(g0, g1):
            r0 = gstart[g]
            br = gstart[g + 1] - r0
            a = indptr[r0]
            n = indptr[r0 + 1] - a
            if n == 0:
                for rr in range(br):
                    out[r0 + rr, :] = 0.0
                    lse[r0 + rr] = -np.inf
                continue
            for u in range(n):  # gather the group's keys once
                j = indices[a + u]
                kb[u, :] = k[j]
                vb[u, :] = v[j]
            for rr in range(br):
                qb[rr, :] = q[r0 + rr]
            gemm(False, True, br, n, H, qb, H, kb, H, 0.0, s, max_n)  # SDDMM of the group
            for rr in range(br):
                row = s[rr][:n]
                b0 = indptr[r0 + rr]
                for u in range(n):
                    row[u] = row[u] * scale + entry_bias[b0 + u]
                mx = _row_max(row, n)
                mrow[rr] = mx
                exp_inplace(row, mx if mx > -np.inf else 0.0)
                l0 = l1 = l2 = l3 = 0.0  # the row sum on four chains
                n4 = n - n % 4
                for u in range(0, n4, 4):
                    l0 += row[u]
                    l1 += row[u + 1]
                    l2 += row[u + 2]
                    l3 += row[u + 3]
                for u in range(n4, n):
                    l0 += row[u]
                lrow[rr] = (l0 + l1) + (l2 + l3)
            gemm(False, False, br, Hv, n, s, max_n, vb, Hv, 0.0, acc, Hv)  # SpMM
            for rr in range(br):
                l = lrow[rr]
                if mrow[rr] > -np.inf and l > 0:
                    for h in range(Hv):
                        out[r0 + rr, h] = acc[rr, h] / l
                    lse[r0 + rr] = mrow[rr] + np.log(l)
                else:
                    out[r0 + rr, :] = 0.0
                    lse[r0 + rr] = -np.inf


#: Rows per group at most: a group's logits buffer is max_rows x (its row length).
MAX_GROUP_ROWS = 64


def sparse_numba(q, k, v, indptr, indices, scale, entry_bias):
    from refattn.kernels.numba.gemm import blas_single_thread

    T, Hv = q.shape[0], v.shape[1]
    out = np.empty((T, Hv))
    lse = np.empty(T)
    if T == 0:
        return out, lse
    c = np.ascontiguousarray
    indptr, indices = c(indptr, dtype=np.int64), c(indices, dtype=np.int64)
    gstart = row_groups(indptr, indices, MAX_GROUP_ROWS)
    max_n = max(1, int(np.max(np.diff(indptr), initial=0)))
    n_tasks = min(gstart.size - 1, 8 * numba.get_num_threads())
    limit = blas_single_thread()
    try:
        _kernel(c(q), c(k), c(v), indptr, indices, float(scale), c(entry_bias), gstart, n_tasks, max_n,
                MAX_GROUP_ROWS, out, lse)
    finally:
        limit.restore_original_limits()
    return out, lse
