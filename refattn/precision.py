r"""What a low-precision attention kernel computes: the reference at a claimed precision.

Real kernels do not compute softmax attention in their input dtype. FlashAttention (Dao et al.
2022, Sec. 3.1; Dao 2023, Sec. 3) and cuDNN's fused attention read ``q, k, v`` in float16 or
bfloat16, accumulate both matrix products in float32, keep the softmax statistics (the running
max and sum) in float32, round the probabilities to the input dtype before the second product,
and write the output in the input dtype. A float32 kernel does everything in float32. This
module computes exactly that, so that a kernel claiming a precision is judged against what that
precision can deliver (the FlashAttention test rule, [`refattn.testing.tolerance_check`][refattn.testing.tolerance_check],
with this as ``ref_lo``):

$$
\tilde q, \tilde k, \tilde v = \mathrm{rd}_p(q, k, v), \quad
\ell = \mathrm{rd}_{32}(s\,\tilde q \tilde k^\top + B), \quad
P = \mathrm{softmax}_{32}(\ell), \quad
O = \mathrm{rd}_p\big(\mathrm{rd}_{32}(\mathrm{rd}_p(P)\,\tilde v)\big),
$$

with ``rd_p`` rounding to the claimed precision ``p`` (bfloat16 through ``ml_dtypes``, the
library JAX uses) and the softmax subtracting the row max before ``exp`` (so a finite input never
gives NaN or Inf: the logits of a float16 kernel are float32 and cannot overflow at 65504).
For ``p = float64`` it is the float64 oracle itself.

Precisions are named by strings: ``"float64"``, ``"float32"``, ``"float16"``, ``"bfloat16"``.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from refattn._validation import InputError, as_float_array
from refattn.exact import softmax_attention
from refattn.problem import attention_problem

__all__ = ["PRECISIONS", "as_dtype", "eps", "round_to", "kernel_reference"]

PRECISIONS = ("float64", "float32", "float16", "bfloat16")


def as_dtype(precision) -> np.dtype:
    """The NumPy dtype of a precision name (bfloat16: ``ml_dtypes.bfloat16``)."""
    if precision not in PRECISIONS:
        raise InputError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    return np.dtype(ml_dtypes.bfloat16) if precision == "bfloat16" else np.dtype(precision)


def eps(precision) -> float:
    """Machine epsilon of a precision (bfloat16: 2^-7 = 0.0078125)."""
    return float(ml_dtypes.finfo(as_dtype(precision)).eps)


def round_to(x, precision) -> np.ndarray:
    """``x`` rounded to ``precision`` (round to nearest even), returned as float64 values; values
    beyond the precision's range are a ``ValueError`` naming ``x`` (never a silent inf)."""
    dt = as_dtype(precision)
    return _rounded(as_float_array(x, "x"), dt, "x").astype(dt).astype(np.float64) if dt != np.float64 \
        else as_float_array(x, "x").astype(np.float64)


def _rounded(a, dt, name):
    """``a`` rounded to ``dt`` as float32 values; values beyond ``dt``'s range are an error."""
    big = float(ml_dtypes.finfo(dt).max)
    a = np.asarray(a, dtype=np.float64)
    if a.size and np.max(np.abs(a)) > big:
        raise InputError(f"{name}: values up to {np.max(np.abs(a)):.3g} exceed the {dt.name} range ({big:.5g}); "
                         f"a {dt.name} kernel cannot be given them")
    return a.astype(dt).astype(np.float32)


def kernel_reference(q, k, v, precision, *, scale=None, causal=False, mask=None, bias=None, key_lengths=None,
                     window=None, softcap=None, alibi_slopes=None, return_lse=False):
    """Attention as a kernel of ``precision`` computes it (module docstring), as float64 values.

    Arguments as for [`refattn.softmax_attention`][refattn.exact.softmax_attention]; inputs beyond the precision's range are a
    ``ValueError`` naming the argument. Fully masked rows give zeros and
    ``lse = -inf``, as the oracle. ``return_lse``: also the float32 log-sum-exp (the statistic a
    kernel keeps), as float64 values.
    """
    dt = as_dtype(precision)
    if precision == "float64":
        return softmax_attention(q, k, v, scale=scale, causal=causal, mask=mask, bias=bias, key_lengths=key_lengths,
                                 window=window, softcap=softcap, alibi_slopes=alibi_slopes, return_lse=return_lse)
    prob = attention_problem(q, k, v, scale=scale, causal=causal, mask=mask, bias=bias, key_lengths=key_lengths,
                             window=window, softcap=softcap, alibi_slopes=alibi_slopes)
    f32 = np.float32
    qr, kr, vr = (_rounded(a, dt, name) for a, name in ((prob.q, "q"), (prob.k, "k"), (prob.v, "v")))
    logits = (f32(prob.scale) * (qr @ np.swapaxes(kr, -1, -2))).astype(f32)  # (..., T, S) accumulated in float32
    if prob.softcap is not None:
        logits = (f32(prob.softcap) * np.tanh(logits / f32(prob.softcap))).astype(f32)
    if prob.bias is not None:
        logits = (logits + prob.bias.astype(f32)).astype(f32)
    allowed = prob.allowed()
    if allowed is not None:
        logits = np.where(allowed, logits, f32(-np.inf))
    if np.any(np.isnan(logits) | (logits == np.inf)):
        raise InputError("scale, q, k: the logits overflow float32 (a real kernel would produce NaN here); "
                         "scale the inputs down")
    top = logits.max(axis=-1, keepdims=True) if logits.shape[-1] else np.full(logits.shape[:-1] + (1,), -np.inf, f32)
    seen = top > -np.inf  # (..., T, 1) rows with a visible key
    ref = np.where(seen, top, f32(0))
    p = np.exp(logits - ref).astype(f32)  # 0 where masked, <= 1 elsewhere: no overflow
    total = p.sum(axis=-1, keepdims=True, dtype=f32)
    p = np.where(seen, p / np.where(seen, total, f32(1)), f32(0)).astype(f32)
    if dt != np.float32:
        p = p.astype(dt).astype(f32)  # the probabilities enter the second product in the input dtype
    out = (p @ vr).astype(f32).astype(dt).astype(np.float64)  # accumulated in float32, written in dtype
    out = np.broadcast_to(out, prob.batch_shape + (prob.T, prob.Hv)).copy()
    if not return_lse:
        return out
    lse = np.where(seen[..., 0], (ref + np.log(np.where(seen, total, f32(1))))[..., 0], -np.inf)
    return out, np.broadcast_to(lse.astype(np.float64), prob.batch_shape + (prob.T,)).copy()
