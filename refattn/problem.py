r"""The attention problem: validated inputs and the masks that define which keys a query sees.

Every implementation in refattn (dense, streaming, arbitrary precision, backward) takes
its inputs through [`attention_problem`][refattn.problem.attention_problem], so they all agree on shapes, on the causal
alignment and on what a mask means.

Shape legend: ``...`` leading batch dims (broadcast), ``T`` queries, ``S`` keys,
``H`` head dim, ``Hv`` value dim.

Conventions
-----------
- ``mask``: boolean, broadcastable to ``(..., T, S)``; **True means "may attend"**
  (the JAX convention; PyTorch's ``key_padding_mask`` is the opposite).
- ``bias``: real, broadcastable to ``(..., T, S)``, added to the scaled logits;
  ``-inf`` entries act as a mask, NaN and ``+inf`` are rejected.
- ``key_lengths``: integers broadcastable to the batch shape; keys ``j >= key_lengths``
  are padding and are removed from the softmax (right padding).
- ``causal``: ``False``; ``True`` or ``"bottom_right"`` (query ``i`` sees keys
  ``j <= i + S - T``, FlashAttention >= 2.1); or ``"top_left"`` (``j <= i``). For
  ``T == S`` both are the usual lower-triangular mask. With ``bottom_right`` and
  ``T > S`` the first ``T - S`` queries see no key at all.
- ``window``: ``(left, right)``, a sliding window (flash-attn's ``window_size``): query ``i``
  sees keys ``i + S - T - left <= j <= i + S - T + right``; ``-1`` leaves a side unbounded.
  Folded into the mask.
- ``softcap``: ``c > 0`` caps the scaled logits, ``c tanh(s q.k / c)``, before the bias and the
  masks (Gemma 2, Team Gemma 2024; flash-attn's ``softcap``).
- ``alibi_slopes``: slopes ``m`` broadcastable to the batch shape (per head); ALiBi (Press et al.
  2022) adds ``-m |i + S - T - j|`` to the logits (flash-attn's convention). Folded into the bias.
- ``sinks``: a learnable attention-sink logit ``z`` per batch item or head (broadcastable to the
  batch shape, as gpt-oss's per-head ``sinks``; OpenAI 2025, flash-attn's ``learnable_sink``): one
  more term ``e^z`` in every row's softmax denominator, with no value, so
  ``O_i = sum_j e^{l_ij} v_j / (e^z + sum_j e^{l_ij})`` and ``lse_i = log(e^z + sum_j e^{l_ij})``.
  The sink is a raw logit: not scaled, not capped, never masked; ``-inf`` is no sink.
- ``sink_tokens``: ``n >= 0``; the first ``n`` keys stay visible through the sliding ``window``
  (StreamingLLM's sink tokens, Xiao et al. 2024, Sec. 3.2); ``causal``, ``mask`` and ``key_lengths``
  still apply to them. Without a window every key is visible anyway and it changes nothing.
- A query that sees no key (every logit masked) has no defined softmax; refattn returns
  an output row of zeros and ``lse = -inf`` for it (the docs' exact-attention page); with a sink
  the row is still zeros and its ``lse`` is the sink logit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numbers

import numpy as np

from refattn._validation import (
    InputError,
    InputTypeError,
    as_float_array,
    check_allocation,
    check_finite_result,
    check_positive_int,
    check_scale,
)

__all__ = ["AttentionProblem", "attention_problem", "score_problem", "sum_to_shape", "causal_alignment", "causal_mask",
           "causal_offset", "window_mask", "alibi_bias", "as_mask", "as_key_lengths", "CAUSAL_ALIGNMENTS"]

CAUSAL_ALIGNMENTS = ("bottom_right", "top_left")


def causal_alignment(causal, name: str = "causal") -> str | None:
    """``None`` (no causal mask), ``"bottom_right"`` (``True``) or ``"top_left"``; anything else is a
    ``ValueError`` naming ``name``."""
    if isinstance(causal, np.bool_):
        causal = bool(causal)
    if causal is False or causal is None:
        return None
    if causal is True:
        return "bottom_right"
    if isinstance(causal, str) and causal in CAUSAL_ALIGNMENTS:
        return causal
    raise InputError(f"{name}: expected False, True, 'bottom_right' or 'top_left', got {causal!r}")


def _sizes(T, S):
    """``T, S`` as sizes of a ``(T, S)`` array refattn may allocate."""
    T = check_positive_int(T, "T", minimum=0)
    S = check_positive_int(S, "S", minimum=0)
    check_allocation(T * S, "T, S", f"a ({T}, {S}) array")
    return T, S


def causal_offset(T: int, S: int, alignment: str) -> int:
    """Query ``i`` may see key ``j`` iff ``j <= i + offset``."""
    T, S = (check_positive_int(n, name, minimum=0) for n, name in ((T, "T"), (S, "S")))
    if not (isinstance(alignment, str) and alignment in CAUSAL_ALIGNMENTS):
        raise InputError(f"alignment: expected one of {CAUSAL_ALIGNMENTS}, got {alignment!r}")
    return S - T if alignment == "bottom_right" else 0


def causal_mask(T: int, S: int, alignment: str | bool = "bottom_right") -> np.ndarray:
    """Boolean ``(T, S)`` mask, True where query ``i`` may attend to key ``j``.

    ``bottom_right``: ``j <= i + S - T`` (FlashAttention >= 2.1). ``top_left``: ``j <= i``.

    Examples
    --------
    >>> causal_mask(2, 3).astype(int)
    array([[1, 1, 0],
           [1, 1, 1]])
    >>> causal_mask(2, 3, "top_left").astype(int)
    array([[1, 0, 0],
           [1, 1, 0]])
    """
    T, S = _sizes(T, S)
    alignment = causal_alignment(alignment, "alignment")
    if alignment is None:
        return np.ones((T, S), dtype=bool)
    off = causal_offset(T, S, alignment)
    return np.arange(S)[None, :] <= np.arange(T)[:, None] + off  # (T, S)


def _check_qkv(q, k, v):
    q = as_float_array(q, "q")
    k = as_float_array(k, "k")
    v = as_float_array(v, "v")
    for name, a in (("q", q), ("k", k), ("v", v)):
        if a.ndim < 2:
            raise InputError(f"{name}: expected shape (..., L, H) with at least 2 dims, got {a.shape}")
    if q.shape[-1] != k.shape[-1]:
        raise InputError(f"k: head dim {k.shape[-1]} does not match q's head dim {q.shape[-1]}")
    if q.shape[-1] == 0:
        raise InputError("q: head dim H must be >= 1")
    if k.shape[-2] != v.shape[-2]:
        raise InputError(f"v: has {v.shape[-2]} keys (axis -2) but k has {k.shape[-2]}")
    return q, k, v


def _broadcast(shapes_named):
    try:
        return np.broadcast_shapes(*(s for _, s in shapes_named))
    except ValueError:
        desc = ", ".join(f"{n} {s}" for n, s in shapes_named)
        raise InputError(f"q, k, v: leading (batch) dims do not broadcast: {desc}") from None


def _as_pair_array(a, name, T, S):
    """``a`` with at least 2 dims whose last two broadcast to ``(T, S)``, or a ValueError naming it."""
    if a.ndim < 2:
        a = a.reshape((1,) * (2 - a.ndim) + a.shape)
    try:
        ok = np.broadcast_shapes(a.shape[-2:], (T, S)) == (T, S)
    except ValueError:
        ok = False
    if not ok:
        raise InputError(f"{name}: shape {a.shape} does not broadcast to (..., T, S) = (..., {T}, {S})")
    return a


def as_mask(mask, name: str = "mask") -> np.ndarray:
    """``mask`` as a boolean array (True = may attend), or a TypeError naming ``name``: a float or
    integer mask is refused, not cast (is 0.5 "may attend"?)."""
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise InputTypeError(f"{name}: expected a boolean array (True = may attend), got dtype {mask.dtype}")
    return mask


def as_key_lengths(key_lengths, S: int, name: str = "key_lengths") -> np.ndarray:
    """``key_lengths`` as int64 with every entry in ``[0, S]``, or an error naming ``name``: floats
    (3.7 keys?) and bools are refused, not cast, and lengths past ``S`` are not clamped."""
    S = check_positive_int(S, "S", minimum=0)
    key_lengths = np.asarray(key_lengths)
    if key_lengths.dtype == np.bool_ or not np.issubdtype(key_lengths.dtype, np.integer):
        raise InputTypeError(f"{name}: expected integers, got dtype {key_lengths.dtype}")
    if key_lengths.size and (int(key_lengths.min()) < 0 or int(key_lengths.max()) > S):
        raise InputError(f"{name}: every entry must lie in [0, S] = [0, {S}], got [{int(key_lengths.min())}, "
                         f"{int(key_lengths.max())}]")
    return key_lengths.astype(np.int64)


@dataclass(frozen=True)
class AttentionProblem:
    """Validated attention inputs (not yet broadcast) and their masking rules."""

    q: np.ndarray  # (..., T, H)
    k: np.ndarray  # (..., S, H)
    v: np.ndarray  # (..., S, Hv)
    scale: float
    causal: str | None
    mask: np.ndarray | None  # bool, broadcastable to (..., T, S)
    bias: np.ndarray | None  # float64, broadcastable to (..., T, S)
    key_lengths: np.ndarray | None  # int64, broadcastable to batch_shape
    batch_shape: tuple
    softcap: float | None = None  # c: logits c tanh(s q.k / c)
    sinks: np.ndarray | None = None  # float64 sink logits z, broadcastable to batch_shape (-inf: none)

    def sink_logits(self, dtype=np.float64) -> np.ndarray | None:
        """The sink logits as ``(..., 1, 1)`` (they broadcast against the ``(..., T, S)`` logits), or None."""
        return None if self.sinks is None else self.sinks.astype(dtype, copy=False)[..., None, None]

    @property
    def T(self) -> int:
        return self.q.shape[-2]

    @property
    def S(self) -> int:
        return self.k.shape[-2]

    @property
    def H(self) -> int:
        return self.q.shape[-1]

    @property
    def Hv(self) -> int:
        return self.v.shape[-1]

    @property
    def has_mask(self) -> bool:
        return self.causal is not None or self.mask is not None or self.key_lengths is not None

    def causal_offset(self) -> int:
        return causal_offset(self.T, self.S, self.causal) if self.causal else 0

    def allowed(self) -> np.ndarray | None:
        """Boolean array broadcastable to ``(..., T, S)``: True where attention is allowed.

        ``None`` when every key is visible to every query (no causal, mask or padding);
        ``-inf`` bias entries are not folded in here (they act through the logits).
        """
        allowed = None
        if self.causal is not None:
            allowed = causal_mask(self.T, self.S, self.causal)  # (T, S)
        if self.mask is not None:
            allowed = self.mask if allowed is None else allowed & self.mask
        if self.key_lengths is not None:
            keep = np.arange(self.S) < self.key_lengths[..., None, None]  # (..., 1, S)
            allowed = keep if allowed is None else allowed & keep
        return allowed

    def logits(self, dtype=np.float64) -> np.ndarray:
        """Masked, scaled logits ``s Q K^T + bias`` of shape ``(..., T, S)``; ``-inf`` where masked."""
        q = self.q.astype(dtype, copy=False)
        k = self.k.astype(dtype, copy=False)
        logits = np.matmul(q, np.swapaxes(k, -1, -2)) * dtype(self.scale)  # (..., T, S)
        if self.softcap is not None:
            logits = dtype(self.softcap) * np.tanh(logits / dtype(self.softcap))
        if self.bias is not None:
            logits = logits + self.bias.astype(dtype, copy=False)
        allowed = self.allowed()
        if allowed is not None:
            logits = np.where(allowed, logits, dtype(-np.inf))
        return np.broadcast_to(logits, self.batch_shape + (self.T, self.S))

    def items(self):
        """Yield ``(index, q_b, k_b, v_b, mask_b, bias_b, key_length_b)`` per batch item.

        ``q_b`` etc. are 2-D views; ``mask_b`` and ``bias_b`` are ``(T, S)`` views (possibly
        with zero strides) or ``None``; ``key_length_b`` is an ``int`` (``S`` when unpadded).
        """
        nb = len(self.batch_shape)
        T, S = self.T, self.S

        def view(a, tail):
            return np.broadcast_to(a, self.batch_shape + tail) if a is not None else None

        q = view(self.q, (T, self.H))
        k = view(self.k, (S, self.H))
        v = view(self.v, (S, self.Hv))
        mask = view(self.mask, (T, S))
        bias = view(self.bias, (T, S))
        lens = (
            np.broadcast_to(self.key_lengths, self.batch_shape) if self.key_lengths is not None else None
        )
        for idx in np.ndindex(*self.batch_shape) if nb else [()]:
            yield (
                idx,
                q[idx],
                k[idx],
                v[idx],
                None if mask is None else mask[idx],
                None if bias is None else bias[idx],
                S if lens is None else int(lens[idx]),
            )


def attention_problem(
    q, k, v, *, scale=None, causal=False, mask=None, bias=None, key_lengths=None, window=None, softcap=None,
    alibi_slopes=None, sinks=None, sink_tokens=0,
) -> AttentionProblem:
    """Validate attention inputs; see the module docstring for every convention.

    Raises ``TypeError``/``ValueError`` naming the offending argument for wrong dtypes,
    NaN/Inf, shapes that do not match or broadcast, a bad scale, causal flag, mask,
    bias or key length.
    """
    q, k, v = _check_qkv(q, k, v)
    T, S, H = q.shape[-2], k.shape[-2], q.shape[-1]
    scale = check_scale(scale, H)
    alignment = causal_alignment(causal)
    named = [("q", q.shape[:-2]), ("k", k.shape[:-2]), ("v", v.shape[:-2])]

    if mask is not None:
        mask = _as_pair_array(as_mask(mask), "mask", T, S)
        named.append(("mask", mask.shape[:-2]))

    if bias is not None:
        bias = as_float_array(bias, "bias", allow_neg_inf=True).astype(np.float64, copy=False)
        bias = _as_pair_array(bias, "bias", T, S)
        named.append(("bias", bias.shape[:-2]))

    if key_lengths is not None:
        key_lengths = as_key_lengths(key_lengths, S)
        named.append(("key_lengths", key_lengths.shape))

    if isinstance(sink_tokens, (bool, np.bool_)) or not isinstance(sink_tokens, numbers.Integral):
        raise InputTypeError(f"sink_tokens: expected an integer >= 0, got {sink_tokens!r}")
    if sink_tokens < 0:
        raise InputError(f"sink_tokens: expected an integer >= 0, got {sink_tokens}")
    if window is not None:
        band = window_mask(T, S, window)
        band[:, :int(sink_tokens)] = True  # the sink tokens stay in every query's window
        mask = band if mask is None else mask & band
    if sinks is not None:
        sinks = as_float_array(sinks, "sinks", allow_neg_inf=True).astype(np.float64, copy=False)
        named.append(("sinks", sinks.shape))
        finite = sinks[np.isfinite(sinks)]
        if finite.size and float(np.max(np.abs(finite))) > LOGIT_LIMIT:
            raise InputError(f"sinks: entries up to {float(np.max(np.abs(finite))):.3g}, beyond the {LOGIT_LIMIT:g} "
                             "refattn can exponentiate safely")
    if alibi_slopes is not None:
        slopes = as_float_array(alibi_slopes, "alibi_slopes").astype(np.float64, copy=False)
        named.append(("alibi_slopes", slopes.shape))
        alibi = alibi_bias(slopes, T, S)  # (*slopes.shape, T, S)
        bias = alibi if bias is None else bias + alibi
    if softcap is not None:
        if isinstance(softcap, (bool, np.bool_, str, bytes)) or not isinstance(softcap, numbers.Real):
            raise InputTypeError(f"softcap: expected a number, got {softcap!r}")
        softcap = float(softcap)
        if not (np.isfinite(softcap) and softcap >= 0):
            raise InputError(f"softcap: must be finite and >= 0 (0: no capping), got {softcap}")
        softcap = softcap or None

    batch_shape = tuple(_broadcast(named))
    given_bias = any(name == "bias" for name, _ in named)
    check_logit_range(q, k, scale, bias, ", ".join(
        n for n, given in (("bias", given_bias), ("alibi_slopes", alibi_slopes is not None)) if given) or "bias")
    return AttentionProblem(q, k, v, scale, alignment, mask, bias, key_lengths, batch_shape, softcap, sinks)


#: Logits whose magnitude may reach this cannot be formed in float64 (``exp`` differences of them
#: would be ``inf - inf``); inputs that could produce them are refused up front.
LOGIT_LIMIT = 1e300


def check_logit_range(q, k, scale, bias, bias_name="bias"):
    """Refuse inputs whose logits could overflow float64: ``s H max|q| max|k| (+ max|bias|)`` bounds
    every ``|s q.k + b|`` (a sufficient condition, so no overflow can reach a kernel). The error
    names what pushed the bound past the limit: ``q, k, scale``, or the bias (``bias_name``)."""
    if not (q.size and k.size):
        return
    qmax, kmax = float(np.max(np.abs(q))), float(np.max(np.abs(k)))
    with np.errstate(over="ignore"):
        products = scale * q.shape[-1] * qmax * kmax
        largest = 0.0
        if bias is not None and bias.size:
            finite = np.isfinite(bias)
            largest = float(np.max(np.abs(bias[finite]))) if finite.any() else 0.0
        bound = products + largest
    if not products <= LOGIT_LIMIT:
        raise InputError(f"q, k, scale: logits could reach {products:.3g} (scale * H * max|q| * max|k|), beyond the "
                         f"{LOGIT_LIMIT:g} refattn can exponentiate safely; rescale the inputs")
    if not bound <= LOGIT_LIMIT:
        raise InputError(f"{bias_name}: entries up to {largest:.3g} make the logits reach {bound:.3g}, beyond the "
                         f"{LOGIT_LIMIT:g} refattn can exponentiate safely")


def window_mask(T: int, S: int, window) -> np.ndarray:
    """Boolean ``(T, S)``: query ``i`` sees keys ``c_i - left <= j <= c_i + right``, ``c_i = i + S - T``
    (bottom-right aligned, as flash-attn's ``window_size``); ``-1`` leaves a side unbounded."""
    T, S = _sizes(T, S)
    try:
        ok = len(tuple(window)) == 2 and all(isinstance(w, numbers.Integral) and not isinstance(w, (bool, np.bool_))
                                             for w in window)
        left, right = (int(w) for w in window) if ok else (0, 0)
    except TypeError:
        ok = False
    if not ok or left < -1 or right < -1:
        raise InputError(f"window: expected (left, right) with integers >= -1 (-1: unbounded), got {window!r}")
    c = np.arange(T)[:, None] + (S - T)
    j = np.arange(S)[None, :]
    band = np.ones((T, S), dtype=bool)
    if left >= 0:
        band &= j >= c - left
    if right >= 0:
        band &= j <= c + right
    return band


def alibi_bias(slopes, T: int, S: int) -> np.ndarray:
    """ALiBi (Press et al. 2022) as an additive bias ``(*slopes.shape, T, S)``: ``-m |i + S - T - j|``
    (flash-attn's convention, bottom-right aligned)."""
    slopes = as_float_array(slopes, "slopes").astype(np.float64)
    T, S = _sizes(T, S)
    check_allocation(slopes.size * T * S, "slopes, T, S", "the bias")
    distance = np.abs(np.arange(T)[:, None] + (S - T) - np.arange(S)[None, :]).astype(np.float64)  # (T, S)
    return check_finite_result(-slopes[..., None, None] * distance, "slopes", "the ALiBi bias")


def score_problem(q, k, *, scale=None, causal=False, mask=None, bias=None, key_lengths=None, window=None, softcap=None,
                  alibi_slopes=None, sinks=None, sink_tokens=0) -> AttentionProblem:
    """[`attention_problem`][refattn.problem.attention_problem] for ``q`` and ``k`` alone (attention scores, no values): the same
    checks and errors, with ``v`` a zero-width ``(..., S, 0)`` array."""
    k_arr = as_float_array(k, "k")
    v = np.zeros(k_arr.shape[:-1] + (0,)) if k_arr.ndim >= 2 else k_arr  # k's own error if k is not (..., S, H)
    return attention_problem(q, k, v, scale=scale, causal=causal, mask=mask, bias=bias, key_lengths=key_lengths,
                             window=window, softcap=softcap, alibi_slopes=alibi_slopes, sinks=sinks,
                             sink_tokens=sink_tokens)


def sum_to_shape(g, shape):
    """Sum a broadcast gradient ``g`` back to an input's ``shape`` (the reverse of broadcasting)."""
    try:
        g = np.asarray(g)
    except Exception as exc:
        raise InputTypeError(f"g: cannot be converted to an array ({exc})") from None
    if g.dtype.kind not in "fO":  # float, or mpmath's object arrays
        raise InputTypeError(f"g: expected a floating-point (or mpmath object) array, got dtype {g.dtype}")
    if g.dtype.kind == "f" and not np.all(np.isfinite(g)):
        raise InputError("g: contains NaN or Inf")
    try:
        shape = tuple(int(n) for n in shape)
    except (TypeError, ValueError):
        raise InputTypeError(f"shape: expected a tuple of ints, got {shape!r}") from None
    try:
        if np.broadcast_shapes(shape, g.shape) != g.shape or min(shape, default=0) < 0:
            raise ValueError
    except ValueError:
        raise InputError(f"shape: {shape} does not broadcast to g's shape {g.shape}") from None
    lead = g.ndim - len(shape)
    g = g.sum(axis=tuple(range(lead))) if lead else g
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g
