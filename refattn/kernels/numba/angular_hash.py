r"""Reformer's angular hash ``argmax([x R; -x R])`` in row blocks that stay in cache.

The readable form in [`refattn.lsh.hashes.angular_hash`][refattn.lsh.hashes.angular_hash] forms
``p = x R`` for all ``n`` rows (``rounds x n x b/2``: at Reformer's ``b = n / 64`` that is
quadratic in ``n``, 1 GiB at ``n = 65536`` with 4 rounds) and concatenates ``[p, -p]`` at twice the
size. The argmax of the concatenation needs neither: with ``hi``/``lo`` the first argmax/argmin of
``p``, it is ``hi`` when ``max p >= -min p`` (the first half wins a tie, as ``np.argmax`` picks
the first occurrence) and ``b/2 + lo`` otherwise. Here each parallel task multiplies a block of
rows by one round's ``R`` into a buffer of a few hundred KiB (``gemm``) and scans it once.
"""

from __future__ import annotations

import numba
import numpy as np

from refattn.kernels.numba.gemm import gemm

__all__ = ["angular_hash_blocked", "hash_block_rows"]


def hash_block_rows(half):
    """Rows per block: a ``rows x half`` float64 buffer of about 256 KiB (L2-resident)."""
    return max(8, min(1024, (1 << 15) // max(1, half)))


@numba.njit(parallel=True, cache=True)
def angular_hash_blocked(x, R, block):
    """Buckets ``(rounds, n)`` of rows ``x (n, d)`` under ``R (rounds, d, h)`` (both C-contiguous float64)."""
    n, d = x.shape
    rounds, _, h = R.shape
    out = np.empty((rounds, n), dtype=np.int64)
    n_blocks = (n + block - 1) // block
    for t in numba.prange(n_blocks):
        i0 = t * block
        bn = min(n, i0 + block) - i0
        p = np.empty((bn, h))
        for r in range(rounds):
            gemm(False, False, bn, h, d, x[i0:i0 + bn], d, R[r], h, 0.0, p, h)  # p = x_b R_r
            for i in range(bn):
                row = p[i]
                hi_v = row[0]
                lo_v = row[0]
                hi = 0
                lo = 0
                for j in range(1, h):
                    e = row[j]
                    if e > hi_v:
                        hi_v = e
                        hi = j
                    if e < lo_v:
                        lo_v = e
                        lo = j
                out[r, i0 + i] = hi if hi_v >= -lo_v else h + lo
    return out
