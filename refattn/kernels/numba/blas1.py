"""Small Numba building blocks shared by the kernels."""

from __future__ import annotations

import numba

__all__ = ["dot4"]


@numba.njit(cache=True)
def dot4(a, b):
    """Dot product of two 1-D arrays with four independent partial sums.

    The association is explicit (no fastmath needed): a plain loop's single dependent add chain
    is latency bound; four chains run in parallel. Differs from a sequential sum by rounding.
    """
    n = a.size
    a0 = 0.0
    a1 = 0.0
    a2 = 0.0
    a3 = 0.0
    n4 = n - n % 4
    for t in range(0, n4, 4):
        a0 += a[t] * b[t]
        a1 += a[t + 1] * b[t + 1]
        a2 += a[t + 2] * b[t + 2]
        a3 += a[t + 3] * b[t + 3]
    for t in range(n4, n):
        a0 += a[t] * b[t]
    return (a0 + a1) + (a2 + a3)
