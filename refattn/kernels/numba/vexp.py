r"""A vectorisable ``exp`` for non-positive arguments, for the Numba kernels.

Numba calls libm's scalar ``exp`` (about 10 ns here), which would dominate the streaming
oracle: it evaluates ``T S`` exponentials against ``4 T S H`` flops of matrix products.
This version has no calls and no branches, so LLVM vectorises it (AVX2: about 3 ns, see
``benchmarks/``), without ``fastmath``. It is accurate to 1 ulp (tested against mpmath
in ``proofs_tests/kernels/numba/test_vexp.py``), which the oracle's error bound allows for
(``docs/exact.md``).

Method (the classic one, e.g. Tang 1989; fdlibm's ``e_exp.c``): write
$x = k \ln 2 + r$ with integer ``k`` and $|r| \le \ln 2 / 2$, so
$e^x = 2^k e^r$.

- ``k``: add ``1.5 * 2**52`` to ``x log2(e)``; the sum rounds to an integer, which sits in
  the low mantissa bits (the "shifter" trick), read back through an int64 view.
- ``r = (x - k ln2_hi) - k ln2_lo`` (Cody & Waite): ``ln2_hi`` has 32 trailing zero bits,
  so ``k ln2_hi`` is exact for ``|k| < 2**20``.
- $e^r$: Taylor polynomial to degree 13 (truncation below ``0.35**14 / 14! < 5e-18``
  relative), Horner's rule.
- $2^k$: built from exponent bits as two factors ``2^(k//2) 2^(k - k//2)``, each a
  normal number, so results down to the smallest subnormal are right.

Inputs are clamped at -746 (``exp(-746)`` rounds to 0), so ``-inf`` gives exactly 0.
Inputs must be <= 0 (the kernels only exponentiate ``logit - running max``) and not NaN.
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["exp_nonpositive"]

_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # fdlibm e_exp.c: ln2HI[0]
_LN2_LO = 1.90821492927058770002e-10  # fdlibm e_exp.c: ln2LO[0]
_SHIFTER = 6755399441055744.0  # 1.5 * 2**52
_SHIFTER_BITS = 0x4338000000000000  # its IEEE-754 bits
_C = [1.0 / math.factorial(i) for i in range(14)]
C2, C3, C4, C5, C6, C7, C8, C9, C10, C11, C12, C13 = _C[2:]


@numba.njit(cache=True)
def exp_nonpositive(x, out, work):
    """``out[i] = exp(x[i])`` for 1-D ``x <= 0``; ``work`` is int64 scratch, at least as long.

    Computes in float64 whatever the dtype of ``x``/``out`` (a float32 ``out`` receives the
    float64 result rounded once). ``out`` may be ``x`` itself (element i is read before it
    is written).
    """
    n = x.size
    wf = work.view(np.float64)
    for i in range(n):
        xi = max(x[i], -746.0)
        kd = xi * _LOG2E + _SHIFTER  # k + shifter, exactly
        wf[i] = kd
        k = kd - _SHIFTER
        r = (xi - k * _LN2_HI) - k * _LN2_LO
        p = C13
        p = p * r + C12
        p = p * r + C11
        p = p * r + C10
        p = p * r + C9
        p = p * r + C8
        p = p * r + C7
        p = p * r + C6
        p = p * r + C5
        p = p * r + C4
        p = p * r + C3
        p = p * r + C2
        p = p * r + 1.0
        out[i] = p * r + 1.0
    shifter_bits = np.int64(_SHIFTER_BITS)
    for i in range(n):
        kk = work[i] - shifter_bits  # k as an int64
        k1 = kk >> 1
        work[i] = (k1 + 1023) << 52  # bits of 2**k1
        o = out[i] * wf[i]
        work[i] = (kk - k1 + 1023) << 52  # bits of 2**(k - k1)
        out[i] = o * wf[i]

