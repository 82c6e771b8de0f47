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
  normal number, so results down to the smallest subnormal are right. The bits move between
  float and integer registers by a bit cast (an LLVM ``bitcast``, free in vector registers), so
  the whole evaluation is one loop with no scratch memory.

For a float32 result, [`exp_low`][refattn.kernels.numba.vexp.exp_low] stops the polynomial at degree 7
(truncation ``e^{0.347} 0.347**8 / 8! < 7.4e-9`` absolute, ``1.1e-8`` relative: under a fifth of a
float32 ulp, at least ``2**-24`` relative), still in float64, and rounds once: within
``0.5 + 0.2`` float32 ulp (tested against mpmath at 1 ulp).

Aliasing: a loop that writes ``out`` while reading ``x`` is vectorised behind a run-time overlap
check, and the check fails when ``out`` is ``x``, leaving the scalar loop (about 3x slower here).
In-place callers use [`exp_inplace`][refattn.kernels.numba.vexp.exp_inplace], whose loop reads and
writes one array (and subtracts the running max on the way).

Inputs are clamped at -746 (``exp(-746)`` rounds to 0), so ``-inf`` gives exactly 0.
Inputs must be <= 0 (the kernels only exponentiate ``logit - running max``) and not NaN.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

__all__ = ["exp_nonpositive", "exp_inplace", "exp_scalar", "exp_low"]

_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # fdlibm e_exp.c: ln2HI[0]
_LN2_LO = 1.90821492927058770002e-10  # fdlibm e_exp.c: ln2LO[0]
_SHIFTER = 6755399441055744.0  # 1.5 * 2**52
_SHIFTER_BITS = 0x4338000000000000  # its IEEE-754 bits
_C = [1.0 / math.factorial(i) for i in range(14)]
C2, C3, C4, C5, C6, C7, C8, C9, C10, C11, C12, C13 = _C[2:]


def _bitcast(src, dst):
    """An intrinsic reinterpreting a ``src`` scalar's bits as ``dst`` (an LLVM ``bitcast``, no conversion)."""

    @intrinsic
    def cast(typingctx, x):
        if x != src:
            return None

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], context.get_value_type(dst))

        return dst(src), codegen

    return cast


_bits = _bitcast(types.float64, types.int64)  # the IEEE-754 bits of a float64
_from_bits = _bitcast(types.int64, types.float64)  # the float64 with those bits


@numba.njit(inline="always")
def _reduce(x):
    """``(r, kd)``: ``x = k ln2 + r`` with ``kd = k + shifter`` (the integer ``k`` in its low bits)."""
    xi = max(np.float64(x), -746.0)
    kd = xi * _LOG2E + _SHIFTER  # k + shifter, exactly
    k = kd - _SHIFTER
    return (xi - k * _LN2_HI) - k * _LN2_LO, kd


@numba.njit(inline="always")
def _scale(p, kd):
    """``p 2^k`` as two normal factors, so subnormal results are right."""
    kk = _bits(kd) - np.int64(_SHIFTER_BITS)
    k1 = kk >> 1
    return (p * _from_bits((k1 + 1023) << 52)) * _from_bits((kk - k1 + 1023) << 52)


@numba.njit(inline="always")
def exp_scalar(x):
    """``exp(x)`` in float64 for ``x <= 0`` (not NaN), within 1 ulp; inlined into vectorisable loops."""
    r, kd = _reduce(x)
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
    return _scale(p * r + 1.0, kd)


@numba.njit(inline="always")
def exp_low(x):
    """``exp(x)`` for ``x <= 0`` to be rounded to float32: degree 7, float64 arithmetic."""
    r, kd = _reduce(x)
    p = C7
    p = p * r + C6
    p = p * r + C5
    p = p * r + C4
    p = p * r + C3
    p = p * r + C2
    p = p * r + 1.0
    return _scale(p * r + 1.0, kd)


@numba.njit(cache=True, fastmath={"contract"})
def exp_nonpositive(x, out):
    """``out[i] = exp(x[i])`` for 1-D ``x <= 0``; ``out`` must not be ``x`` (use ``exp_inplace``).

    A float64 ``out`` gets [`exp_scalar`][refattn.kernels.numba.vexp.exp_scalar]; a float32 one
    [`exp_low`][refattn.kernels.numba.vexp.exp_low], rounded once.
    """
    if out.itemsize == 8:
        for i in range(x.size):
            out[i] = exp_scalar(x[i])
    else:
        for i in range(x.size):
            out[i] = exp_low(x[i])


@numba.njit(cache=True, fastmath={"contract"})
def exp_inplace(x, shift):
    """``x[i] = exp(x[i] - shift)`` for 1-D ``x <= shift``, as ``exp_nonpositive`` (one array,
    vectorised; the subtraction rounds in ``x``'s dtype, as a separate pass would)."""
    if x.itemsize == 8:
        for i in range(x.size):
            x[i] = exp_scalar(x[i] - shift)
    else:
        for i in range(x.size):
            x[i] = exp_low(x[i] - shift)
