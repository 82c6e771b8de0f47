r"""Sparse attention kernels on a CSR support: SDDMM, row softmax with lse, SpMM.

The formula is in [`refattn.lsh.sparse`][refattn.lsh.sparse]. `sparse_numpy` is the twin (vectorised
gathers and segment reductions); `sparse_numba` runs rows in parallel (``prange``;
each row is owned by one thread, so outputs are written without races; no fastmath).
Both take validated float64 arrays: ``q (T, H)``, ``k (S, H)``, ``v (S, Hv)``, ``indptr
(T+1,)``, ``indices (nnz,)``, scale ``s`` and ``entry_bias (nnz,)``; they return
``out (T, Hv)`` and ``lse (T,)`` (zeros and ``-inf`` for an empty or fully ``-inf`` row).
"""

from __future__ import annotations

import numba
import numpy as np

from refattn.kernels.numba.blas1 import dot4

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
def _kernel(q, k, v, indptr, indices, scale, entry_bias, out, lse):
    T = q.shape[0]
    Hv = v.shape[1]
    for i in numba.prange(T):
        a, b = indptr[i], indptr[i + 1]
        logit = np.empty(b - a)  # this row's own buffer
        m = -np.inf
        for n in range(a, b):
            j = indices[n]
            x = dot4(q[i], k[j]) * scale + entry_bias[n]  # SDDMM entry
            logit[n - a] = x
            if x > m:
                m = x
        for h in range(Hv):
            out[i, h] = 0.0
        if m == -np.inf:
            lse[i] = -np.inf
            continue
        total = 0.0
        for n in range(a, b):
            p = np.exp(logit[n - a] - m)
            total += p
            j = indices[n]
            for h in range(Hv):
                out[i, h] += p * v[j, h]
        for h in range(Hv):
            out[i, h] /= total
        lse[i] = m + np.log(total)


def sparse_numba(q, k, v, indptr, indices, scale, entry_bias):
    T = q.shape[0]
    out = np.empty((T, v.shape[1]))
    lse = np.empty(T)
    c = np.ascontiguousarray
    _kernel(c(q), c(k), c(v), c(indptr), c(indices), float(scale), c(entry_bias), out, lse)
    return out, lse
