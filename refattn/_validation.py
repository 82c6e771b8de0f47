"""Input checks shared by every public function.

Every check raises a ``TypeError`` or ``ValueError`` whose message starts with the
argument's name, so a user's mistake is never reported as a NumPy traceback from
deep inside a kernel, and never turns into a silent NaN.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from refattn.kernels import numba_enabled

__all__ = [
    "IMPLEMENTATIONS",
    "choose_implementation",
    "as_generator",
    "as_float_array",
    "check_scale",
    "check_positive_int",
]


def as_float_array(x, name: str, *, allow_neg_inf: bool = False) -> np.ndarray:
    """Return ``x`` as a real floating NumPy array, or raise naming ``name``.

    Accepts anything ``numpy.asarray`` converts (lists, torch/cupy/jax arrays with
    ``__array__``). Rejects complex, object, bool, integer and string arrays
    (``TypeError``) and NaN/Inf entries (``ValueError``). With ``allow_neg_inf``
    the value ``-inf`` is accepted (an additive bias uses it to mask).
    """
    try:
        arr = np.asarray(x)
    except Exception as exc:  # e.g. a ragged list
        raise TypeError(f"{name}: cannot be converted to an array ({exc})") from None
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(
            f"{name}: expected a real floating-point array, got dtype {arr.dtype}"
            + (" (cast integer inputs to float explicitly)" if np.issubdtype(arr.dtype, np.integer) else "")
        )
    if arr.size:
        if allow_neg_inf:
            bad = np.isnan(arr) | (arr == np.inf)
            if bad.any():
                raise ValueError(f"{name}: contains NaN or +Inf (only -inf is allowed, as a mask)")
        elif not np.isfinite(arr).all():
            raise ValueError(f"{name}: contains NaN or Inf")
    return arr


def check_scale(scale, head_dim: int) -> float:
    """The softmax scale: ``1/sqrt(head_dim)`` by default, else a finite positive real."""
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale: expected a real number, got {type(scale).__name__}")
    scale = float(scale)
    if not math.isfinite(scale) or scale <= 0.0:
        raise ValueError(f"scale: must be finite and > 0, got {scale!r}")
    return scale


def check_positive_int(value, name: str, *, minimum: int = 1) -> int:
    """An integer ``>= minimum`` (bools rejected), or raise naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value}")
    return value


def as_generator(rng) -> np.random.Generator:
    """A ``numpy.random.Generator`` from a Generator, an int seed or a SeedSequence."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        raise ValueError("rng: pass a numpy Generator or an int seed (refattn never uses global RNG state)")
    if isinstance(rng, (bool, np.bool_)):
        raise TypeError("rng: expected a Generator or an int seed, got a bool")
    try:
        return np.random.default_rng(rng)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"rng: expected a Generator or an int seed ({exc})") from None


#: The one vocabulary of ``implementation=`` across refattn: ``"auto"`` (the fastest path this
#: machine has), ``"numpy"`` (the readable twin, the reference the fast paths are tested
#: against), ``"numba"`` (the parallel CPU kernel), ``"cuda"`` (the GPU kernel: CuPy inputs select
#: it). ``"dense"`` appears only where a path materialises the ``T x S`` matrix.
IMPLEMENTATIONS = ("auto", "numpy", "numba", "cuda", "dense")


def choose_implementation(implementation, allowed, *, name="implementation"):
    """Validate ``implementation`` against ``allowed`` (a subset of :data:`IMPLEMENTATIONS`) and
    resolve it for NumPy inputs: ``"auto"`` becomes ``"numba"`` when allowed and Numba is usable,
    else the first of ``"numpy"``, ``"dense"`` allowed; ``"numba"`` falls back the same way when
    Numba is disabled (``REFATTN_DISABLE_NUMBA``); ``"cuda"`` is an error (it needs CuPy inputs).
    """
    if not isinstance(implementation, str) or implementation not in allowed:
        raise ValueError(f"{name}: expected one of {tuple(allowed)}, got {implementation!r}")
    if implementation == "cuda":
        raise ValueError(f"{name}: 'cuda' needs CuPy arrays (on the GPU); NumPy inputs take "
                         f"{tuple(a for a in allowed if a != 'cuda')}")
    if implementation in ("auto", "numba") and not ("numba" in allowed and numba_enabled()):
        return next(a for a in ("numpy", "dense") if a in allowed)
    return "numba" if implementation == "auto" else implementation
