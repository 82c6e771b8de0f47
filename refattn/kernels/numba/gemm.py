r"""``C = op(A) op(B) + beta C`` on row-major blocks, from Numba code, through the BLAS Numba uses.

Numba's ``np.dot`` allocates its result and needs contiguous operands, so a blocked kernel that
multiplies a slice of ``K`` transposed, or accumulates into a running output, pays a copy and an
allocation per block. [`gemm`][refattn.kernels.numba.gemm.gemm] passes leading dimensions and
``beta`` to the BLAS ``dgemm``/``sgemm`` (SciPy's, the one ``np.dot`` calls inside Numba), so
sub-blocks are used in place and products accumulate into their destination.

Row-major ``C = op(A) op(B)`` is column-major ``C^T = op(B)^T op(A)^T``: the call swaps the operands
and keeps the transposition flags. The BLAS entry point is Numba's own helper ``numba_xxgemm``
(resolved by name, so kernels that use it stay cacheable).
"""

from __future__ import annotations

import numba
import numba.np.linalg  # noqa: F401  registers Numba's BLAS helpers (and loads SciPy's BLAS)
import numpy as np
from numba import types
from numba.core.errors import TypingError
from numba.extending import overload

__all__ = ["gemm", "blas_single_thread"]

_BLAS_CONTROLLER = None

_SIG = types.intc(types.char, types.char, types.char, types.intp, types.intp, types.intp, types.voidptr,
                  types.voidptr, types.intp, types.voidptr, types.intp, types.voidptr, types.voidptr, types.intp)
_xxgemm = types.ExternalFunction("numba_xxgemm", _SIG)


def gemm(trans_a, trans_b, M, N, K, a, lda, b, ldb, beta, c, ldc):
    """``c[:M, :N] = op(a) @ op(b) + beta * c[:M, :N]`` with row-major leading dimensions.

    ``op(a)`` is ``(M, K)``: ``a`` is ``(M, K)`` with row stride ``lda`` (``trans_a`` false) or
    ``(K, M)`` (``trans_a`` true); likewise ``op(b)`` is ``(K, N)``. ``a``, ``b``, ``c`` are
    float64 or float32 arrays of one dtype whose first element is the block's corner and whose
    rows are ``lda``/``ldb``/``ldc`` elements apart. Callable from Numba code only.
    """
    raise NotImplementedError("gemm is called from Numba-compiled code")


@overload(gemm)
def _gemm(trans_a, trans_b, M, N, K, a, lda, b, ldb, beta, c, ldc):
    if not (a.dtype == b.dtype == c.dtype) or c.dtype not in (types.float64, types.float32):
        raise TypingError("gemm: a, b and c must all be float64 or all float32")
    kind = ord("d") if c.dtype == types.float64 else ord("s")
    dt = numba.np.numpy_support.as_dtype(c.dtype)

    def impl(trans_a, trans_b, M, N, K, a, lda, b, ldb, beta, c, ldc):
        if M == 0 or N == 0:
            return
        coef = np.empty(2, dtype=dt)  # alpha, beta: passed by address
        coef[0] = 1.0
        coef[1] = beta
        ta = ord("T") if trans_a else ord("N")
        tb = ord("T") if trans_b else ord("N")
        # max(1, .): BLAS rejects a zero leading dimension even when K = 0 and nothing is read
        _xxgemm(kind, tb, ta, N, M, K, coef[0:].ctypes, b.ctypes, max(1, ldb), a.ctypes, max(1, lda),
                coef[1:].ctypes, c.ctypes, max(1, ldc))

    return impl


def blas_single_thread():
    """Limit BLAS to one thread while Numba's threads each call it: ``limit = blas_single_thread()``,
    then ``limit.restore_original_limits()``. (No oversubscription: idle OpenBLAS workers spin and
    halve a parallel kernel's speed on two cores.)"""
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        import scipy.linalg.cython_blas  # noqa: F401  the BLAS that Numba's np.dot and gemm call: load it first
        from threadpoolctl import ThreadpoolController

        _BLAS_CONTROLLER = ThreadpoolController()
    return _BLAS_CONTROLLER.limit(limits=1, user_api="blas")
