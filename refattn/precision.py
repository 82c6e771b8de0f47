r"""Precisions: the one dtype vocabulary, rounding, unit roundoff, and the reference at a precision.

Every module of refattn that takes a precision (``dtype=`` of the oracle, ``precision=`` of the
checker, the tolerance rule, the test tools) parses it here, with [`as_precision`][refattn.precision.as_precision],
and every rounding to a narrower format happens here, with [`round_to`][refattn.precision.round_to].

**Vocabulary.** A precision is named by a string: ``"float64"``, ``"float32"``, ``"float16"``,
``"bfloat16"`` (the four a kernel may claim, `PRECISIONS`), and the storage formats
``"float8_e4m3fn"``, ``"float8_e5m2"`` (FP8, OCP 8-bit floating point, Micikevicius et al. 2022),
which round and have a unit roundoff but are not claimed as compute precisions. bfloat16 and FP8
arrays are ``ml_dtypes`` arrays (the library JAX uses); NumPy dtypes, their scalar types,
``ml_dtypes`` types and framework dtype objects whose name is one of these (``torch.bfloat16``,
``jnp.float16``) are accepted wherever a precision is.

**The reference at a precision.** Real kernels do not compute softmax attention in their input
dtype. FlashAttention (Dao et al. 2022, Sec. 3.1; Dao 2023, Sec. 3) and cuDNN's fused attention
read ``q, k, v`` in float16 or bfloat16, accumulate both matrix products in float32, keep the
softmax statistics in float32, round the probabilities to the input dtype before the second
product, and write the output in the input dtype; a float32 kernel does everything in float32.
[`kernel_reference`][refattn.precision.kernel_reference] computes exactly that, with the choices as explicit knobs
(the ones flash-attention's test reference ``attention_ref(upcast, reorder_ops)`` expresses):

$$
\tilde q, \tilde k, \tilde v = \mathrm{rd}_p(q, k, v), \quad
\ell = \mathrm{rd}_a(s\,\tilde q \tilde k^\top + B)\ [\mathrm{rd}_p \text{ with } \texttt{round\_logits}], \quad
P = \mathrm{softmax}_a(\ell), \quad
O = \mathrm{rd}_p\big(\mathrm{rd}_a(\mathrm{rd}_p(P)\,\tilde v)\big),
$$

with ``p`` the precision, ``a`` the accumulation precision (``accumulate``, default float32 for
float16 and bfloat16, the precision itself otherwise), ``rd_p(P)`` optional
(``round_probabilities``, default on when ``p`` is narrower than ``a``) and the final ``rd_p``
optional (``round_output``). The softmax subtracts the row max before ``exp``, so a finite input
never gives NaN or Inf. [`refattn.softmax_attention`][refattn.exact.softmax_attention] with ``dtype=`` below float64 is this
reference with its default knobs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from refattn._validation import _ML_DTYPES_FLOATS, InputError, InputTypeError, as_float_array, check_bool, check_real
from refattn.problem import attention_problem

__all__ = [
    "PRECISIONS",
    "STORAGE_PRECISIONS",
    "as_precision",
    "as_dtype",
    "as_given",
    "given_dtype",
    "numpy_type",
    "precision_of",
    "values_precision",
    "eps",
    "unit_roundoff",
    "tiny",
    "largest",
    "smallest_subnormal",
    "values_eps",
    "round_to",
    "store",
    "is_storage_only",
    "compute_type",
    "Recipe",
    "recipe",
    "FP8_P_SCALE",
    "FP8_OUTPUT",
    "kernel_reference",
]

#: The precisions a kernel may claim to compute in, finest first.
PRECISIONS = ("float64", "float32", "float16", "bfloat16")
#: Formats that store values (and round) but are not claimed as compute precisions.
STORAGE_PRECISIONS = ("float8_e4m3fn", "float8_e5m2")
_ALL = PRECISIONS + STORAGE_PRECISIONS
assert set(_ML_DTYPES_FLOATS) == set(_ALL) - {"float64", "float32", "float16"}  # one list, read in two places
_DTYPES = {"float64": np.dtype(np.float64), "float32": np.dtype(np.float32), "float16": np.dtype(np.float16),
           "bfloat16": np.dtype(ml_dtypes.bfloat16), "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
           "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2)}
#: Aliases frameworks print for the same formats (torch.half, jnp.bfloat16, "fp16", ...).
_ALIASES = {"double": "float64", "float": "float32", "single": "float32", "half": "float16", "fp64": "float64",
            "fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "float8_e4m3": "float8_e4m3fn",
            "e4m3": "float8_e4m3fn", "e5m2": "float8_e5m2", "fp8_e4m3": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2"}


def as_precision(dtype, name: str = "dtype", *, allowed=PRECISIONS) -> str:
    """The precision named by ``x``, as one of ``allowed``; a ``TypeError`` naming ``name`` otherwise.

    ``dtype`` may be a name (``"bfloat16"``, ``"float16"``, ``"fp16"``), a NumPy dtype or scalar type, an
    ``ml_dtypes`` type, or a framework dtype whose printed name ends in one of those
    (``torch.bfloat16``, ``jax.numpy.float16``).

    >>> as_precision(np.float16), as_precision("bf16"), as_precision(np.dtype("float32"))
    ('float16', 'bfloat16', 'float32')
    """
    key = _name(dtype)
    key = _ALIASES.get(key, key)
    if key not in _ALL:
        if isinstance(dtype, str):
            raise InputError(f"{name}: expected one of {', '.join(allowed)}, got {dtype!r}")
        try:
            got = np.dtype(dtype).name  # a NumPy dtype that is not a floating format (int8, bool)
        except TypeError:
            raise InputTypeError(f"{name}: not a precision: {dtype!r} (expected one of {', '.join(allowed)})") \
                from None
        raise InputTypeError(f"{name}: must be one of {', '.join(allowed)}, got {got}")
    if key not in allowed:
        raise InputTypeError(f"{name}: must be one of {', '.join(allowed)}, got {key}")
    return key


def _name(x) -> str:
    if isinstance(x, str):
        return x.strip().lower().rpartition(".")[2]
    try:
        return np.dtype(x).name
    except TypeError:
        pass
    text = str(getattr(x, "name", None) or x)  # torch.float16 prints "torch.float16"
    return text.strip().lower().rpartition(".")[2]


def numpy_type(dtype, name: str = "dtype", *, allowed=("float64", "float32")):
    """The NumPy scalar type of a precision restricted to ``allowed`` (a function computing in
    float64 or float32 takes its ``dtype=`` through this): ``np.float32`` for ``"float32"``, ``np.float32``."""
    return _DTYPES[as_precision(dtype, name, allowed=allowed)].type


def as_dtype(precision) -> np.dtype:
    """The NumPy dtype of a precision (bfloat16 and FP8: ``ml_dtypes``')."""
    return _DTYPES[as_precision(precision, "precision", allowed=_ALL)]


def precision_of(array, name: str = "array") -> str:
    """The precision an array is stored in (its dtype's): a ``TypeError`` naming ``name`` for a
    non-floating array, or a bfloat16 array whose dtype lost ``ml_dtypes``' dtype object (``V2``)."""
    try:
        dt = np.asarray(array).dtype
    except ValueError:  # a ragged nest of lists
        raise InputTypeError(f"{name}: cannot be converted to an array (ragged?)") from None
    if dt == np.dtype("V2"):
        raise InputTypeError(f"{name}: dtype V2 (a bfloat16 array without its dtype: pass it through ml_dtypes)")
    if dt.name not in _ALL:
        raise InputTypeError(f"{name}: expected a real floating-point array, got dtype {dt}")
    return dt.name


def values_precision(array, name: str = "array") -> str:
    """The coarsest claimable precision in which every value of ``array`` is exactly representable.

    A float32 result upcast to float64 (``tensor.double()``) has float32 values: judged at float32's
    rounding, not float64's; a genuinely float64 result is float64 (a non-zero float64 value drawn
    from a continuous distribution is a float32 number with probability ``2^-29``). Considered, from
    the array's own precision down: float32, then float16 or bfloat16 (whichever holds every value,
    the finer when both do). Non-finite values are ignored (the caller judges them).
    """
    stored = precision_of(array, name)
    a = widen(np.asarray(array)).astype(np.float64)
    a = a[np.isfinite(a)]
    found = stored
    if found == "float64" and _exact_in(a, "float32"):
        found = "float32"
    if found == "float32":
        found = next((p for p in ("float16", "bfloat16") if _exact_in(a, p)), found)
    return found


def _exact_in(a, precision) -> bool:
    dt = _DTYPES[precision]
    big = float(ml_dtypes.finfo(dt).max)
    if a.size and float(np.max(np.abs(a))) > big:
        return False
    return bool(np.array_equal(a.astype(dt).astype(np.float64), a))


def eps(precision) -> float:
    """Machine epsilon of a precision (the gap above 1: float64 2^-52, bfloat16 2^-7)."""
    return float(ml_dtypes.finfo(as_dtype(precision)).eps)


def tiny(precision) -> float:
    """The smallest positive normal number of a precision."""
    return float(ml_dtypes.finfo(as_dtype(precision)).tiny)


def smallest_subnormal(precision) -> float:
    """The smallest positive (subnormal) number of a precision, the spacing of its subnormals
    (float8_e4m3fn 2^-9, float16 2^-24): below ``tiny`` a rounding's error is absolute, at most half of it."""
    return float(ml_dtypes.finfo(as_dtype(precision)).smallest_subnormal)


def largest(precision) -> float:
    """The largest finite number of a precision (float16 65504, float8_e4m3fn 448)."""
    return float(ml_dtypes.finfo(as_dtype(precision)).max)


def values_eps(array) -> float:
    """Machine epsilon at the precision of ``array``'s values ([`values_precision`][refattn.precision.values_precision]):
    the rounding a sampler or estimator is judged at (a float32 result upcast to float64 gets
    float32's). Non-floating arrays: float64's."""
    a = np.asarray(array)
    if a.dtype.name not in _ALL:
        return eps("float64")
    return eps(values_precision(a))


def unit_roundoff(precision) -> float:
    """Unit roundoff ``u = eps / 2`` (round to nearest; Higham 2002, Sec. 2.1)."""
    return eps(precision) / 2.0


def is_storage_only(precision) -> bool:
    """Whether a kernel of this precision stores at it but computes in float32 (float16, bfloat16, FP8)."""
    return as_precision(precision, "precision", allowed=_ALL) not in ("float64", "float32")


def compute_type(precision):
    """The NumPy scalar type the oracle computes a precision in: itself for float64 and float32,
    float32 for the storage-only formats (their kernels accumulate in float32)."""
    p = as_precision(precision, "precision", allowed=_ALL)
    return np.float64 if p == "float64" else np.float32


def widen(arr: np.ndarray) -> np.ndarray:
    """An ``ml_dtypes`` floating array (bfloat16, FP8) as float32 (exact); any other array as given."""
    return arr.astype(np.float32) if arr.dtype.name in _ML_DTYPES_FLOATS else arr


def round_to(x, precision, name: str = "x") -> np.ndarray:
    """``x`` rounded to ``precision`` (round to nearest even), returned as float64 values; values
    beyond the precision's range are a ``ValueError`` naming ``name`` (never a silent inf)."""
    p = as_precision(precision, "precision", allowed=_ALL)
    a = as_float_array(x, name).astype(np.float64)
    return a if p == "float64" else _rounded(a, p, name).astype(np.float64)


def _rounded(a, precision, name):
    """``a`` rounded to ``precision``, held in float32 (float64 for float64): the values a kernel of
    that precision reads. Values beyond the range are an error naming ``name``."""
    if precision == "float64":
        return np.asarray(a, dtype=np.float64)
    dt = _DTYPES[precision]
    big = float(ml_dtypes.finfo(dt).max)
    a = np.asarray(a, dtype=np.float64)
    if a.size and np.max(np.abs(a)) > big:
        raise InputError(f"{name}: values up to {np.max(np.abs(a)):.3g} exceed the {precision} range ({big:.5g}); "
                         f"a {precision} kernel cannot be given them")
    return a.astype(dt).astype(np.float32)


def given_dtype(precision) -> np.dtype:
    """The dtype the checker hands a callable that claims ``precision``: float64, float32 and float16
    their own, bfloat16 values in float32 (exact; NumPy has no bfloat16, and a framework adapter casts
    them back losslessly), FP8 as ``ml_dtypes`` arrays."""
    p = as_precision(precision, "precision", allowed=_ALL)
    return np.dtype(np.float32) if p == "bfloat16" else as_dtype(p)


def as_given(a, precision) -> np.ndarray:
    """``a`` rounded to ``precision``, in [`given_dtype`][refattn.precision.given_dtype]."""
    return round_to(a, precision, "a").astype(given_dtype(precision))


def store(a, precision) -> np.ndarray:
    """``a`` written in the precision's own dtype (round to nearest even): the output a kernel of that
    precision returns (bfloat16 and FP8 as ``ml_dtypes`` arrays). Values beyond the precision's
    range become ``+-inf``, as a kernel's store makes them (IEEE overflow); NaN is an error naming ``a``."""
    try:
        arr = np.asarray(a)
    except ValueError:  # a ragged nest of lists
        raise InputTypeError("a: cannot be converted to an array (ragged?)") from None
    if arr.dtype.kind not in "fiub":
        raise InputTypeError(f"a: expected numbers, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        raise InputError("a: contains NaN")
    with np.errstate(over="ignore"):
        return arr.astype(as_dtype(precision))


def round_problem(prob, precision, extra=()):
    """``prob`` with ``q``, ``k``, ``v`` (and ``extra`` ``(name, array)`` pairs) rounded to ``precision``,
    held in its compute type: what a kernel of that precision reads."""
    p = as_precision(precision, "dtype", allowed=_ALL)
    new = dataclasses.replace(prob, q=_rounded(prob.q, p, "q"), k=_rounded(prob.k, p, "k"), v=_rounded(prob.v, p, "v"))
    return (new, *(_rounded(a, p, name) for name, a in extra))


@dataclass(frozen=True)
class Recipe:
    """How a kernel of ``precision`` computes attention: the knobs of [`kernel_reference`][refattn.precision.kernel_reference]."""

    precision: str
    accumulate: str
    round_logits: bool
    round_probabilities: bool
    round_output: bool
    #: the power of two the probabilities are scaled by before their rounding (FP8 kernels: 2^8)
    p_scale: float = 1.0
    #: the precision the output is written in (FP8 kernels: bfloat16)
    output: str = ""

    def describe(self) -> str:
        parts = [f"{self.precision} inputs", f"{self.accumulate} accumulation and softmax"]
        if self.round_logits:
            parts.append(f"logits rounded to {self.precision}")
        if self.round_probabilities:
            scaled = f" (scaled by {self.p_scale:g})" if self.p_scale != 1 else ""
            parts.append(f"probabilities rounded to {self.precision}{scaled}")
        parts.append(f"output {'rounded to ' + self.output if self.round_output else 'in ' + self.accumulate}")
        return ", ".join(parts)


#: FlashAttention 3's FP8 forward: the probabilities scaled by 2^8 before their cast to e4m3 (a bit-exact
#: power of two that keeps them in the format's normal range; Lau 2026, arXiv:2606.06521, Sec. 5), the
#: output written in bfloat16.
FP8_P_SCALE, FP8_OUTPUT = 256.0, "bfloat16"


def recipe(precision, *, accumulate=None, round_logits=False, round_probabilities=None, round_output=True,
           p_scale=None, output=None) -> Recipe:
    """The [`Recipe`][refattn.precision.Recipe] of a kernel of ``precision``; defaults as FlashAttention
    (module docstring; FP8: `FP8_P_SCALE`, `FP8_OUTPUT`). ``accumulate`` may not be narrower than
    float32 for a storage-only precision, nor narrower than the precision itself; ``p_scale``, a power
    of two no larger than the precision's largest number; ``output``, a precision no narrower than it."""
    p = as_precision(precision, "precision", allowed=_ALL)
    default = "float64" if p == "float64" else "float32"
    a = default if accumulate is None else as_precision(accumulate, "accumulate", allowed=("float64", "float32"))
    if PRECISIONS.index(a) > PRECISIONS.index(default):
        raise InputError(f"accumulate: {a} is narrower than the {p} inputs")
    narrower = p != a
    rp = narrower if round_probabilities is None else check_bool(round_probabilities, "round_probabilities")
    fp8 = p in STORAGE_PRECISIONS
    scale = (FP8_P_SCALE if fp8 else 1.0) if p_scale is None else check_real(p_scale, "p_scale", minimum=2.0**-126)
    if math.frexp(scale)[0] != 0.5 or scale > largest(p):
        raise InputError(f"p_scale: a power of two up to {largest(p):g} (the largest {p}), got {scale:g}")
    out = (FP8_OUTPUT if fp8 else p) if output is None else as_precision(output, "output", allowed=_ALL)
    if out not in (p, "float32", "float64") + (("float16", "bfloat16") if fp8 else ()):
        raise InputError(f"output: a {p} kernel writes its output in {p} or a wider format, got {out}")
    return Recipe(p, a, check_bool(round_logits, "round_logits"), rp, check_bool(round_output, "round_output"),
                  float(scale), out)


def kernel_reference(q, k, v, precision, *, accumulate=None, round_logits=False, round_probabilities=None,
                     round_output=True, p_scale=None, output=None, scale=None, causal=False, mask=None, bias=None, key_lengths=None, window=None,
                     softcap=None, alibi_slopes=None, sinks=None, sink_tokens=0, return_lse=False):
    """Attention as a kernel of ``precision`` computes it (module docstring), as float64 values.

    Arguments as for [`refattn.softmax_attention`][refattn.exact.softmax_attention], plus the knobs of
    [`recipe`][refattn.precision.recipe]. Inputs beyond the precision's range are a ``ValueError``
    naming the argument. Fully masked rows give zeros and ``lse = -inf``, as the oracle.
    ``return_lse``: also the log-sum-exp in the accumulation precision (the statistic a kernel
    keeps), as float64 values. ``precision="float64"`` is the oracle's dense path.
    """
    how = recipe(precision, accumulate=accumulate, round_logits=round_logits,
                 round_probabilities=round_probabilities, round_output=round_output, p_scale=p_scale, output=output)
    return_lse = check_bool(return_lse, "return_lse")
    prob = attention_problem(q, k, v, scale=scale, causal=causal, mask=mask, bias=bias, key_lengths=key_lengths,
                             window=window, softcap=softcap, alibi_slopes=alibi_slopes, sinks=sinks,
                             sink_tokens=sink_tokens)
    out, lse = reference_on(prob, how)
    out = out.astype(np.float64)
    return (out, lse.astype(np.float64)) if return_lse else out


def reference_on(prob, how: Recipe):
    """``(out, lse)`` of a validated problem by the recipe ``how``: ``out`` in the precision's dtype
    when the output is rounded (else the accumulation's), ``lse`` in the accumulation's."""
    acc = np.dtype(how.accumulate).type
    rounded = round_problem(prob, how.precision)[0] if how.precision != how.accumulate else prob
    qa, ka, va = (a.astype(acc, copy=False) for a in (rounded.q, rounded.k, rounded.v))
    logits = (np.matmul(qa, np.swapaxes(ka, -1, -2)) * acc(prob.scale)).astype(acc, copy=False)  # (..., T, S)
    if prob.softcap is not None:
        logits = (acc(prob.softcap) * np.tanh(logits / acc(prob.softcap))).astype(acc, copy=False)
    if prob.bias is not None:
        logits = (logits + prob.bias.astype(acc)).astype(acc, copy=False)
    if how.round_logits and how.precision != how.accumulate:
        logits = _rounded(logits, how.precision, "logits").astype(acc)
    allowed = prob.allowed()
    if allowed is not None:
        logits = np.where(allowed, logits, acc(-np.inf))
    if np.any(np.isnan(logits) | (logits == np.inf)):
        raise InputError(f"scale, q, k: the logits overflow {how.accumulate} (a real kernel would produce NaN "
                         "here); scale the inputs down")
    logits = np.broadcast_to(logits, prob.batch_shape + (prob.T, prob.S))
    top = logits.max(axis=-1, keepdims=True) if prob.S else np.full(logits.shape[:-1] + (1,), -np.inf, acc)
    sinks = prob.sink_logits(acc)  # (..., 1, 1) or None: one more term of the denominator, kept in acc
    if sinks is not None:
        top = np.maximum(top, sinks)
    seen = top > -np.inf  # (..., T, 1) rows with a visible key (or a sink)
    ref = np.where(seen, top, acc(0))
    p = np.exp(logits - ref).astype(acc, copy=False)  # 0 where masked, <= 1 elsewhere: no overflow
    total = p.sum(axis=-1, keepdims=True, dtype=acc)
    if sinks is not None:
        total = (total + np.exp(sinks - ref)).astype(acc, copy=False)
    p = np.where(seen, p / np.where(seen, total, acc(1)), acc(0)).astype(acc, copy=False)
    if how.round_probabilities and how.precision != how.accumulate:  # the second product reads them rounded
        p = _rounded(p * acc(how.p_scale), how.precision, "probabilities").astype(acc)
    out = np.matmul(p, va).astype(acc, copy=False)  # (..., T, Hv) accumulated in the accumulation precision
    if how.p_scale != 1:
        out = (out / acc(how.p_scale)).astype(acc, copy=False)  # a power of two: exact
    if how.round_output and how.output != how.accumulate:
        out = out.astype(_DTYPES[how.output])
    out = np.broadcast_to(out, prob.batch_shape + (prob.T, prob.Hv)).copy()
    lse = np.where(seen[..., 0], (ref + np.log(np.where(seen, total, acc(1))))[..., 0], acc(-np.inf))
    return out, np.broadcast_to(lse, prob.batch_shape + (prob.T,)).copy()
