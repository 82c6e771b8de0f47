r"""The positive (FAVOR+) feature map's elementwise work, fused and parallel, in place.

[`RandomFeatures`][refattn.performer.features.RandomFeatures] computes, for projections
``u = x W^T`` of ``L`` rows (the readable NumPy form is its ``from_projections`` with
``implementation="numpy"``),

$$
\log\phi_{ij} = (u_{ij} - |x_i|^2/2) - \tfrac12 \log m, \qquad
\phi_{ij} = \exp(\log\phi_{ij} - c_i),
$$

with ``c_i`` the stabiliser's shift (Choromanski et al. 2021, Lemma 1 and Sec. 4.1 for the map; the
shift cancels in the normalised output). In NumPy that is five single-threaded passes over a
``(L, m)`` array that does not fit in cache. Here it is two parallel passes over ``u``, which is
overwritten: the row maxima of ``log phi`` (the query shift, or the key shift's per-row part), then
the shifted exponential ([`exp_inplace`][refattn.kernels.numba.vexp.exp_inplace], within 1 ulp of
``exp``). The operations are those of the NumPy form in the same order, so the two agree to the
exponential's rounding (tested).
"""

from __future__ import annotations

import numba
import numpy as np

from refattn.kernels.numba.vexp import exp_inplace

__all__ = ["log_feature_row_max", "exp_shifted_rows"]


@numba.njit(parallel=True, cache=True)
def log_feature_row_max(u, sq, log_root_m, valid):
    """``max_j ((u[i, j] - sq[i]) - log_root_m)`` per row of ``u (L, m)``; ``-inf`` where ``valid[i]`` is false."""
    L, m = u.shape
    out = np.empty(L, dtype=u.dtype)
    for i in numba.prange(L):
        if not valid[i]:
            out[i] = -np.inf
            continue
        row = u[i]
        b0 = b1 = b2 = b3 = row[0]  # independent chains (a max does not depend on the order), in u's dtype
        m4 = m - m % 4
        for j in range(0, m4, 4):
            b0 = max(b0, row[j])
            b1 = max(b1, row[j + 1])
            b2 = max(b2, row[j + 2])
            b3 = max(b3, row[j + 3])
        for j in range(m4, m):
            b0 = max(b0, row[j])
        out[i] = (max(max(b0, b1), max(b2, b3)) - sq[i]) - log_root_m  # rounding is monotone: max commutes
    return out


@numba.njit(parallel=True, cache=True)
def exp_shifted_rows(u, sq, log_root_m, shift, valid):
    """``u[i, j] = exp(((u[i, j] - sq[i]) - log_root_m) - shift[i])`` in place; rows with ``valid[i]`` false get 0."""
    L, m = u.shape
    for i in numba.prange(L):
        row = u[i]
        if not valid[i]:
            row[:] = 0
            continue
        a = sq[i]
        for j in range(m):
            row[j] = (row[j] - a) - log_root_m
        exp_inplace(row, shift[i])
