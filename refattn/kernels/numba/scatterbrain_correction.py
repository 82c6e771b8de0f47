r"""Scatterbrain's sparse correction on a CSR support, without materialising gathered rows.

For each query row ``i`` (the docs' Scatterbrain page; the formula is in [`refattn.scatterbrain.attention`][refattn.scatterbrain.attention]):
``u_i = max(log_scale_i, max_{j in S_i} l_ij)`` with ``l_ij = s q_i.k_j``, then
``C_ij = exp(l_ij - u_i) - (phi_q[i].phi_k[j]) exp(log_scale_i - u_i)`` for ``j in S_i``, and
the row's ``sum_j C_ij v_j`` and ``sum_j C_ij``. [`correction_numpy`][refattn.kernels.numba.scatterbrain_correction.correction_numpy] is the twin
(vectorised gathers, ``O(nnz (H + F))`` memory); [`correction_numba`][refattn.kernels.numba.scatterbrain_correction.correction_numba] does the same per
row in parallel (two passes over the row: its max, then the sums) with ``O(1)`` extra memory
per row and no fastmath.
"""

from __future__ import annotations

import numba
import numpy as np

from refattn.kernels.numba.blas1 import dot4

__all__ = ["correction_numpy", "correction_numba"]


def correction_numpy(q, k, v, phi_q, phi_k, log_scale, indptr, indices, scale):
    """Returns ``(u (T,), corr (nnz,), cv (T, Hv), c1 (T,))`` (``corr`` in units ``exp(u_i)``)."""
    T = q.shape[0]
    counts = np.diff(indptr)
    rows = np.repeat(np.arange(T), counts)
    logit = np.einsum("nh,nh->n", q[rows], k[indices]) * scale  # SDDMM
    lr = np.einsum("nf,nf->n", phi_q[rows], phi_k[indices])  # phi(q).phi(k) on the support
    nonempty = counts > 0
    starts = indptr[:-1][nonempty]
    u = log_scale.astype(np.float64).copy()
    cv = np.zeros((T, v.shape[1]))
    c1 = np.zeros(T)
    if indices.size:
        u[nonempty] = np.maximum(u[nonempty], np.maximum.reduceat(logit, starts))
    corr = np.exp(logit - u[rows]) - lr * np.exp(log_scale - u)[rows]
    if indices.size:
        cv[nonempty] = np.add.reduceat(corr[:, None] * v[indices], starts, axis=0)
        c1[nonempty] = np.add.reduceat(corr, starts)
    return u, corr, cv, c1


@numba.njit(parallel=True, cache=True)
def _kernel(q, k, v, phi_q, phi_k, log_scale, indptr, indices, scale, order, u, corr, cv, c1):
    T = q.shape[0]
    Hv = v.shape[1]
    for t in numba.prange(T):
        i = order[t]  # rows with the same keys run back to back: their gathered rows stay in cache
        a, b = indptr[i], indptr[i + 1]
        m = log_scale[i]
        for n in range(a, b):  # pass 1: exact logits (stored in corr) and the row's unit
            j = indices[n]
            x = dot4(q[i], k[j]) * scale
            corr[n] = x
            if x > m:
                m = x
        u[i] = m
        w = np.exp(log_scale[i] - m)
        for h in range(Hv):
            cv[i, h] = 0.0
        c1[i] = 0.0
        for n in range(a, b):  # pass 2: C_ij and the row sums
            j = indices[n]
            e = dot4(phi_q[i], phi_k[j])
            c = np.exp(corr[n] - m) - e * w
            corr[n] = c
            c1[i] += c
            for h in range(Hv):
                cv[i, h] += c * v[j, h]


def correction_numba(q, k, v, phi_q, phi_k, log_scale, indptr, indices, scale):
    """Parallel Numba version of [`correction_numpy`][refattn.kernels.numba.scatterbrain_correction.correction_numpy] (same returns)."""
    T = q.shape[0]
    u = np.empty(T)
    corr = np.empty(indices.size)
    cv = np.empty((T, v.shape[1]))
    c1 = np.empty(T)
    c = np.ascontiguousarray
    counts = np.diff(indptr)
    first = np.where(counts > 0, indices[np.minimum(indptr[:-1], max(indices.size - 1, 0))] if indices.size else 0, -1)
    order = np.argsort(first, kind="stable").astype(np.int64)  # group rows by their first key (e.g. an LSH bucket)
    _kernel(c(q, dtype=np.float64), c(k, dtype=np.float64), c(v, dtype=np.float64), c(phi_q, dtype=np.float64),
            c(phi_k, dtype=np.float64), c(log_scale, dtype=np.float64), c(indptr), c(indices), float(scale),
            order, u, corr, cv, c1)
    return u, corr, cv, c1
