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


#: The ``ml_dtypes`` floating formats refattn reads (their vocabulary is ``refattn.precision``'s).
_ML_DTYPES_FLOATS = ("bfloat16", "float8_e4m3fn", "float8_e5m2")


class InputError(ValueError):
    """A caller's mistake caught at refattn's boundary: a ``ValueError`` whose message starts with
    the argument's name. ``refattn`` (the CLI) reports it in one line with exit code 2; any other
    exception is refattn's own bug (exit 3, with the traceback)."""


class InputTypeError(TypeError):
    """The ``TypeError`` twin of [`InputError`][refattn._validation.InputError] (an argument of the wrong type)."""

__all__ = [
    "InputError",
    "InputTypeError",
    "IMPLEMENTATIONS",
    "MAX_ELEMENTS",
    "choose_implementation",
    "as_generator",
    "as_float_array",
    "as_index_array",
    "check_scale",
    "check_positive_int",
    "check_real",
    "check_bool",
    "check_allocation",
    "check_finite_result",
    "renamed_errors",
]

#: The largest array (in elements) a size argument may ask refattn to allocate: 2^32 float64
#: entries are 32 GiB. A larger request is a ValueError naming the argument, not a MemoryError
#: from deep inside NumPy (or minutes of swapping). Raise it with ``REFATTN_MAX_ELEMENTS``.
MAX_ELEMENTS = int(float(__import__("os").environ.get("REFATTN_MAX_ELEMENTS", 2**32)))


def as_float_array(x, name: str, *, allow_neg_inf: bool = False) -> np.ndarray:
    """Return ``x`` as a real floating NumPy array, or raise naming ``name``.

    Accepts anything ``numpy.asarray`` converts (lists, torch/cupy/jax arrays with
    ``__array__``). Rejects complex, object, bool, integer and string arrays
    (``TypeError``) and NaN/Inf entries (``ValueError``). With ``allow_neg_inf``
    the value ``-inf`` is accepted (an additive bias uses it to mask).
    """
    if x is None or isinstance(x, (str, bytes)):
        raise InputTypeError(f"{name}: expected a real floating-point array, got {type(x).__name__}")
    try:
        arr = np.asarray(x)
    except Exception as exc:  # e.g. a ragged list
        raise InputTypeError(f"{name}: cannot be converted to an array ({exc})") from None
    if arr.dtype.name in _ML_DTYPES_FLOATS:  # ml_dtypes' formats (refattn.precision's): exact in float32
        arr = arr.astype(np.float32)
    if not np.issubdtype(arr.dtype, np.floating):
        raise InputTypeError(
            f"{name}: expected a real floating-point array, got dtype {arr.dtype}"
            + (" (cast integer inputs to float explicitly)" if np.issubdtype(arr.dtype, np.integer) else "")
        )
    if arr.size:
        if allow_neg_inf:
            bad = np.isnan(arr) | (arr == np.inf)
            if bad.any():
                raise InputError(f"{name}: contains NaN or +Inf (only -inf is allowed, as a mask)")
        elif not np.isfinite(arr).all():
            raise InputError(f"{name}: contains NaN or Inf")
    return arr


def check_scale(scale, head_dim: int) -> float:
    """The softmax scale: ``1/sqrt(head_dim)`` by default, else a finite positive real."""
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, numbers.Real):
        raise InputTypeError(f"scale: expected a real number, got {type(scale).__name__}")
    scale = float(scale)
    if not math.isfinite(scale) or scale <= 0.0:
        raise InputError(f"scale: must be finite and > 0, got {scale!r}")
    return scale


def check_positive_int(value, name: str, *, minimum: int = 1, maximum: int | None = None) -> int:
    """An integer in ``[minimum, maximum]`` (bools rejected), or raise naming ``name``.

    ``maximum`` defaults to [`MAX_ELEMENTS`][refattn._validation.MAX_ELEMENTS]: every size refattn takes drives an allocation
    or a loop, so an absurd one (``2**40``) is the caller's mistake, reported as such.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise InputTypeError(f"{name}: expected an integer, got {type(value).__name__}")
    value = int(value)
    if value < minimum:
        raise InputError(f"{name}: must be >= {minimum}, got {value}")
    maximum = MAX_ELEMENTS if maximum is None else maximum
    if value > maximum:
        raise InputError(f"{name}: must be <= {maximum}, got {value}")
    return value


def check_real(value, name: str, *, minimum=None, maximum=None, low_open=False, high_open=False,
               finite=True) -> float:
    """A real number (bools, strings, complex and arrays rejected) in the given range, as a float.

    ``minimum``/``maximum`` bound it (exclusive with ``low_open``/``high_open``); NaN is always
    rejected, infinities unless ``finite=False``.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise InputTypeError(f"{name}: expected a real number, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value) or (finite and math.isinf(value)):
        raise InputError(f"{name}: must be {'finite' if finite else 'a number'}, got {value!r}")
    if minimum is not None and (value < minimum or (low_open and value == minimum)):
        raise InputError(f"{name}: must be {'>' if low_open else '>='} {minimum:g}, got {value!r}")
    if maximum is not None and (value > maximum or (high_open and value == maximum)):
        raise InputError(f"{name}: must be {'<' if high_open else '<='} {maximum:g}, got {value!r}")
    return value


def check_bool(value, name: str) -> bool:
    """``True``/``False`` (Python or NumPy bools only: ``"no"`` and ``2`` are mistakes)."""
    if not isinstance(value, (bool, np.bool_)):
        raise InputTypeError(f"{name}: expected True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def as_index_array(x, name: str, *, ndim: int | None = 1, minimum: int = 0, maximum: int | None = None) -> np.ndarray:
    """An integer array (int64) with entries in ``[minimum, maximum]``, or raise naming ``name``.

    Integer dtypes only (floats, bools, strings rejected: an index is never ``1.5``); validated
    before any kernel sees it, so no compiled loop can read out of bounds.
    """
    if x is None or isinstance(x, (str, bytes)):
        raise InputTypeError(f"{name}: expected an integer array, got {type(x).__name__}")
    try:
        arr = np.asarray(x)
    except Exception as exc:
        raise InputTypeError(f"{name}: cannot be converted to an array ({exc})") from None
    if arr.dtype.kind not in "iu":
        raise InputTypeError(f"{name}: expected an integer array, got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise InputError(f"{name}: expected a {ndim}-D array, got shape {arr.shape}")
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < minimum or (maximum is not None and hi > maximum):
            bound = f"[{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
            raise InputError(f"{name}: entries must lie in {bound}, got [{lo}, {hi}]")
    return arr.astype(np.int64, copy=False)


class renamed_errors:
    """Context manager: a TypeError/ValueError whose message starts with one of ``mapping``'s names
    (``"q: ..."``) is re-raised under the caller's argument name (``"phi_q: ..."``), so a function
    that validates through a shared helper still names its own arguments."""

    def __init__(self, **mapping):
        self.mapping = mapping

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or not isinstance(exc, (TypeError, ValueError)):
            return False
        msg = str(exc)
        head, sep, rest = msg.partition(":")
        if not sep:
            return False
        names = [self.mapping.get(n.strip(), n.strip()) for n in head.split(",")]
        for old, new in self.mapping.items():
            rest = rest.replace(f" {old}'s ", f" {new}'s ")
        raise type(exc)(", ".join(names) + ":" + rest) from None


def check_allocation(n_elements, names: str, what: str) -> None:
    """Raise ``ValueError`` naming ``names`` when ``what`` would need more than [`MAX_ELEMENTS`][refattn._validation.MAX_ELEMENTS] entries."""
    if n_elements > MAX_ELEMENTS:
        raise InputError(f"{names}: {what} would need {float(n_elements):.3g} entries, more than the "
                         f"{MAX_ELEMENTS:.3g} refattn allocates (REFATTN_MAX_ELEMENTS)")


def check_finite_result(result, names: str, what: str, *, allow_neg_inf: bool = False):
    """Return ``result``, or raise ``ValueError`` naming the inputs when it overflowed to NaN/Inf.

    For closed forms and estimators whose true value leaves float64 (``exp(x . y)`` at
    ``|x||y| > 709``): an error naming the arguments and the limit instead of a silent NaN.
    """
    arr = np.asarray(result)
    if arr.dtype.kind == "f":
        bad = np.isnan(arr) | (arr == np.inf) | ((arr == -np.inf) if not allow_neg_inf else False)
        if np.any(bad):
            raise InputError(f"{names}: {what} overflows float64 for these inputs ({int(np.sum(bad))} of "
                             f"{arr.size} entries are not finite); scale them down")
    return result


def as_generator(rng) -> np.random.Generator:
    """A ``numpy.random.Generator`` from a Generator, an int seed or a SeedSequence."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        raise InputError("rng: pass a numpy Generator or an int seed (refattn never uses global RNG state)")
    if isinstance(rng, (bool, np.bool_)):
        raise InputTypeError("rng: expected a Generator or an int seed, got a bool")
    try:
        return np.random.default_rng(rng)
    except (TypeError, ValueError) as exc:
        raise InputTypeError(f"rng: expected a Generator or an int seed ({exc})") from None


#: The one vocabulary of ``implementation=`` across refattn: ``"auto"`` (the fastest path this
#: machine has), ``"numpy"`` (the readable twin, the reference the fast paths are tested
#: against), ``"numba"`` (the parallel CPU kernel), ``"cuda"`` (the GPU kernel: CuPy inputs select
#: it). ``"dense"`` appears only where a path materialises the ``T x S`` matrix.
IMPLEMENTATIONS = ("auto", "numpy", "numba", "cuda", "dense")


def choose_implementation(implementation, allowed, *, name="implementation"):
    """Validate ``implementation`` against ``allowed`` (a subset of [`IMPLEMENTATIONS`][refattn._validation.IMPLEMENTATIONS]) and
    resolve it for NumPy inputs: ``"auto"`` becomes ``"numba"`` when allowed and Numba is usable,
    else the first of ``"numpy"``, ``"dense"`` allowed; ``"numba"`` falls back the same way when
    Numba is disabled (``REFATTN_DISABLE_NUMBA``); ``"cuda"`` is an error (it needs CuPy inputs).
    """
    if not isinstance(implementation, str) or implementation not in allowed:
        raise InputError(f"{name}: expected one of {tuple(allowed)}, got {implementation!r}")
    if implementation == "cuda":
        raise InputError(f"{name}: 'cuda' needs CuPy arrays (on the GPU); NumPy inputs take "
                         f"{tuple(a for a in allowed if a != 'cuda')}")
    if implementation in ("auto", "numba") and not ("numba" in allowed and numba_enabled()):
        return next(a for a in ("numpy", "dense") if a in allowed)
    return "numba" if implementation == "auto" else implementation
