r"""Re-binning SEA's kernel estimate to each row's own bins (the fixed decoder's inner loop).

The formula is in [`refattn.sea.decoder.resample_bins`][refattn.sea.decoder.resample_bins]: basis bin ``c`` (edges ``g`` over
the full length ``S``) spreads its mass uniformly over the ``w_c = min(g_{c+1}, l) - g_c`` columns
row ``i`` sees; row bin ``b`` (edges ``floor(b l / K + 1/2)``) collects what falls on its columns.
`resample_numpy` is the vectorised twin (gathers; whole basis bins inside a row bin by a
cumulative sum); `resample_numba` walks each row's ``K`` bins once (whole basis bins summed
directly), rows in parallel. Both take ``E (R, T, n)`` float64, ``lengths (T,)``, ``g (n+1,)``
int64 and return ``(R, T, K)``.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["resample_numpy", "resample_numba"]


def _bins_of(columns, length, n_bins):
    return ((2 * columns + 1) * n_bins - 1) // (2 * length)  # refattn.sea.column_bins


def resample_numpy(E, lengths, g, n_keys, n_bins):
    n = E.shape[-1]
    K = n_bins
    b = np.arange(K + 1, dtype=np.int64)
    r = (2 * b[None, :] * lengths[:, None] + K) // (2 * K)  # (T, K+1) row-bin edges
    w = np.clip(np.minimum(g[None, 1:], lengths[:, None]) - g[None, :-1], 0, None)  # (T, n) visible widths
    lo, hi = r[:, :-1], r[:, 1:]  # (T, K)
    empty = hi == lo
    c_lo = _bins_of(np.where(empty, 0, lo), n_keys, n)  # (T, K) basis bin of the first column
    c_hi = _bins_of(np.where(empty, 0, hi - 1), n_keys, n)  # basis bin of the last column
    rows = np.arange(lengths.size)[:, None]

    def take(a, c):  # a (R, T, n) gathered at (T, K) basis-bin indices
        return np.take_along_axis(a, np.broadcast_to(c, a.shape[:1] + c.shape), axis=-1)

    wl = np.maximum(w[rows, c_lo], 1)
    wh = np.maximum(w[rows, c_hi], 1)
    same = c_lo == c_hi
    mass = take(E, c_lo) * (np.where(same, hi - lo, g[c_lo + 1] - lo) / wl)
    mass = mass + take(E, c_hi) * np.where(same, 0.0, (hi - g[c_hi]) / wh)
    cum = np.concatenate([np.zeros(E.shape[:-1] + (1,)), np.cumsum(E, axis=-1)], axis=-1)  # (R, T, n+1)
    inner = take(cum, c_hi) - take(cum, np.minimum(c_lo + 1, c_hi))  # whole basis bins strictly inside
    mass = mass + np.where(c_hi > c_lo + 1, inner, 0.0)
    return np.where(empty, 0.0, mass)


@numba.njit(parallel=True, cache=True)
def _kernel(E, lengths, g, n_keys, K, out):
    R, T, n = E.shape
    for i in numba.prange(T):
        l = lengths[i]
        for b in range(K):
            lo = (2 * b * l + K) // (2 * K)
            hi = (2 * (b + 1) * l + K) // (2 * K)
            if hi == lo:
                for r in range(R):
                    out[r, i, b] = 0.0
                continue
            c_lo = ((2 * lo + 1) * n - 1) // (2 * n_keys)
            c_hi = ((2 * (hi - 1) + 1) * n - 1) // (2 * n_keys)
            wl = max(min(g[c_lo + 1], l) - g[c_lo], 1)
            wh = max(min(g[c_hi + 1], l) - g[c_hi], 1)
            for r in range(R):
                if c_lo == c_hi:
                    m = E[r, i, c_lo] * ((hi - lo) / wl)
                else:
                    m = E[r, i, c_lo] * ((g[c_lo + 1] - lo) / wl) + E[r, i, c_hi] * ((hi - g[c_hi]) / wh)
                    for c in range(c_lo + 1, c_hi):
                        m += E[r, i, c]
                out[r, i, b] = m


def resample_numba(E, lengths, g, n_keys, n_bins):
    out = np.empty(E.shape[:-1] + (n_bins,))
    if E.shape[1]:
        _kernel(E, lengths, g, n_keys, n_bins, out)
    return out
