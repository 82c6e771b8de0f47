r"""Exact softmax attention: the oracle every estimator in refattn is judged against.

the docs' exact-attention page. With logits $\ell = s\,QK^\top + B$ (``B`` the additive bias,
``-inf`` where masked) the stable form is

$$
P_{ij} = \frac{e^{\ell_{ij} - \max_j \ell_{ij}}}{\sum_j e^{\ell_{ij} - \max_j \ell_{ij}}},
\qquad O = P V, \qquad \mathrm{lse}_i = \log \textstyle\sum_j e^{\ell_{ij}} .
$$

Shape legend: ``...`` batch dims (broadcast across q, k, v, mask, bias, key_lengths),
``T`` queries, ``S`` keys, ``H`` head dim, ``Hv`` value dim. Masking conventions (causal
alignment, mask polarity, key padding, fully masked rows) are in [`refattn.problem`][refattn.problem].

Three forward implementations share one signature (``implementation=``):

- ``"dense"``: materialises the ``(..., T, S)`` matrix, the readable reference;
- ``"numpy"``: blockwise online softmax in NumPy ([`refattn.kernels.numba.streaming`][refattn.kernels.numba.streaming]);
- ``"numba"``: the same algorithm as a parallel Numba kernel, ``O((T + S) H)`` memory;
- ``"auto"`` (default): ``"dense"`` while the logits fit in `DENSE_LIMIT` entries, else
  ``"numba"``;
- ``"cuda"``: the streaming kernel on the GPU (``kernels/cuda/streaming.cu``), float64 or
  float32. CuPy arrays ``q, k, v`` (and ``mask``, ``bias``) select it under ``"auto"`` too, and
  the outputs are CuPy arrays; it needs CuPy inputs.

All paths compute in float64 whatever the input dtype (``dtype=`` may lower that, to
reproduce a low-precision kernel's own rounding, as the FlashAttention tolerance rule
needs). They agree to about 1e-15 relative (tested at 1e-12).

**Low precision** (``dtype=np.float32``, ``np.float16`` or ``"bfloat16"``; any precision name of
[`refattn.precision`][refattn.precision]) is the reference at that precision,
[`refattn.precision.kernel_reference`][refattn.precision.kernel_reference] with its default knobs, the semantics real kernels
have (FlashAttention, cuDNN, XLA): ``q``, ``k``, ``v`` (and ``dout``) rounded to the dtype (values
beyond its range are a ``ValueError`` naming the argument), products accumulated and the softmax
computed in float32, the probabilities rounded to the dtype before the second product, the
outputs rounded to the dtype (``lse`` stays float32, as kernels keep it). Finite inputs never give
NaN. float16 and bfloat16 run the dense path (``implementation="numpy"`` or ``"numba"`` with
them is an error); float32 also runs the streaming paths (float32 throughout, a float32 kernel).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from refattn import precision as _prec
from refattn._validation import (
    InputError,
    InputTypeError,
    as_float_array,
    check_bool,
    check_finite_result,
    check_positive_int,
)
from refattn.kernels import numba_enabled
from refattn.kernels.dispatch import gpu_backend, is_cupy, shadow, shadow64
from refattn.kernels.numba import streaming as _streaming
from refattn.kernels.numba.gemm import blas_single_thread
from refattn.problem import attention_problem, score_problem, sum_to_shape

__all__ = [
    "softmax_attention",
    "attention_probabilities",
    "attention_backward",
    "forward_error_bound",
    "DENSE_LIMIT",
    "IMPLEMENTATIONS",
]

#: ``"auto"`` uses the dense path while batch * T * S is at most this (64 MiB of float64 logits).
DENSE_LIMIT = 1 << 23
IMPLEMENTATIONS = ("auto", "dense", "numpy", "numba", "cuda")


def _precision(dtype, *, fp8=False):
    """``(compute type, storage precision or None)`` of ``dtype=`` (parsed by [`refattn.precision`][refattn.precision]):
    float64 and float32 compute at themselves; float16 and bfloat16 (and with ``fp8`` the FP8
    formats) store at themselves and compute in float32."""
    if dtype is None:
        return np.float64, None
    p = _prec.as_precision(dtype, "dtype", allowed=_prec.PRECISIONS + (_prec.STORAGE_PRECISIONS if fp8 else ()))
    return _prec.compute_type(p), (p if _prec.is_storage_only(p) else None)


def _softmax_rows(logits, sinks=None):
    """Row softmax of masked logits ``(..., T, S)``, with the sink logits ``(..., 1, 1)`` (or None) as one
    more term of every denominator; rows with no key and no sink give zeros, lse -inf."""
    dt = logits.dtype.type
    m = logits.max(axis=-1, keepdims=True) if logits.shape[-1] else np.full(logits.shape[:-1] + (1,), -np.inf, dt)
    if sinks is not None:
        m = np.maximum(m, sinks)
    seen = m > -np.inf  # (..., T, 1) False for rows with no visible key (and no sink)
    ref = np.where(seen, m, dt(0))
    p = np.exp(logits - ref)  # (..., T, S); exactly 0 where masked
    l = p.sum(axis=-1, keepdims=True)  # (..., T, 1), >= 1 where seen
    if sinks is not None:
        l = l + np.exp(sinks - ref)
    p = np.where(seen, p / np.where(seen, l, dt(1)), dt(0))
    lse = np.where(seen, ref + np.log(np.where(seen, l, dt(1))), dt(-np.inf))[..., 0]
    return p, lse


def _with_sinks(out, lse, prob):
    """``(out, lse)`` of the problem without its sinks made those with them (the sink as one more split
    with no value: ``O = O_0 e^{lse_0 - lse}``, ``lse = log(e^{lse_0} + e^z)``; derived in the docs'
    exact-attention page, "Attention sinks")."""
    if prob.sinks is None:
        return out, lse
    z = np.broadcast_to(prob.sinks, prob.batch_shape).astype(lse.dtype)[..., None]  # (..., 1)
    both = np.logaddexp(lse, z)  # (..., T)
    finite = np.isfinite(both)
    keep = np.where(finite, np.exp(lse - np.where(finite, both, 0)), 0)  # lse_0 = -inf: the row keeps nothing
    return out * keep[..., None].astype(out.dtype), both


def _full(a, shape):
    """``a`` broadcast to ``shape`` as a writeable array of its own (no read-only views)."""
    return a if a.shape == shape else np.broadcast_to(a, shape).copy()


def attention_probabilities(
    q, k, *, scale=None, causal=False, mask=None, bias=None, key_lengths=None, window=None, softcap=None,
    alibi_slopes=None, sinks=None, sink_tokens=0, return_lse=False, dtype=None
):
    r"""The attention probability matrix $P = \operatorname{softmax}(s\,QK^\top + B)$.

    Parameters are those of [`softmax_attention`][refattn.exact.softmax_attention] (without ``v``). Returns ``P`` of shape
    ``(..., T, S)`` (rows sum to 1; a fully masked row is all zeros) and, with
    ``return_lse``, ``lse`` of shape ``(..., T)``.

    Examples
    --------
    >>> import numpy as np
    >>> P = attention_probabilities(np.zeros((2, 4)), np.zeros((3, 4)), causal="top_left")
    >>> P.round(3)
    array([[1. , 0. , 0. ],
           [0.5, 0.5, 0. ]])
    """
    return_lse = check_bool(return_lse, "return_lse")
    prob = score_problem(q, k, scale=scale, causal=causal, mask=mask, bias=bias, key_lengths=key_lengths,
                         window=window, softcap=softcap, alibi_slopes=alibi_slopes, sinks=sinks,
                         sink_tokens=sink_tokens)
    dt, low = _precision(dtype)
    if low is not None:
        prob = _prec.round_problem(prob, low)[0]
    p, lse = _softmax_rows(prob.logits(dt), prob.sink_logits(dt))
    if low is not None:
        p = _prec.store(p, low)
    return (p, lse) if return_lse else p


def softmax_attention(
    q,
    k,
    v,
    *,
    scale=None,
    causal=False,
    mask=None,
    bias=None,
    key_lengths=None,
    window=None,
    softcap=None,
    alibi_slopes=None,
    sinks=None,
    sink_tokens=0,
    return_lse=False,
    implementation="auto",
    dtype=None,
    block_q=None,
    block_k=None,
):
    r"""Exact softmax attention, computed in float64.

    $$
    O = \operatorname{softmax}(s\,QK^\top + B)\,V, \qquad s = 1/\sqrt{H}
    $$

    Parameters
    ----------
    q : array (..., T, H)
    k : array (..., S, H)
    v : array (..., S, Hv)
        Real floating arrays (float16/32/64); leading dims broadcast.
    scale : float, optional
        Softmax scale ``s`` (finite, > 0). Default ``1/sqrt(H)``.
    causal : bool or {"bottom_right", "top_left"}
        ``True`` means ``"bottom_right"``: query ``i`` sees keys ``j <= i + S - T``.
    mask : bool array broadcastable to (..., T, S), optional
        True where a query may attend to a key.
    bias : float array broadcastable to (..., T, S), optional
        Added to the scaled logits; ``-inf`` masks.
    key_lengths : int array broadcastable to the batch shape, optional
        Keys at positions ``>= key_lengths`` are padding and removed.
    window, softcap, alibi_slopes : optional
        flash-attn's sliding window, logit cap and ALiBi slopes ([`refattn.problem`][refattn.problem]).
    sinks : float array broadcastable to the batch shape, optional
        A learnable sink logit per batch item or head (gpt-oss): one more term ``e^z`` in every
        row's denominator, with no value (the docs' exact-attention page, "Attention sinks").
    sink_tokens : int
        The first ``sink_tokens`` keys stay inside the sliding ``window`` (StreamingLLM).
    return_lse : bool
        Also return ``lse = log sum_j exp(logit_ij)`` of shape ``(..., T)``.
    implementation : {"auto", "dense", "numpy", "numba", "cuda"}
        See the module docstring.
    dtype : {float64, float32, float16, "bfloat16"}, optional
        Precision of the computation (default float64, the oracle); float16 and bfloat16 have
        real kernels' semantics (module docstring).
    block_q, block_k : int, optional
        Block sizes of the streaming paths.

    Returns
    -------
    out : ndarray (..., T, Hv)
        A query that sees no key gets a row of zeros.
    lse : ndarray (..., T), only with ``return_lse``
        ``-inf`` for a query that sees no key (the sink logit with ``sinks``).

    Notes
    -----
    Empty inputs give empty outputs; ``S = 0`` makes every row fully masked.
    The streaming paths handle every mask; a ``mask``/``bias`` is read per batch item as a
    dense ``(T, S)`` array, so for long sequences prefer ``causal`` and ``key_lengths``,
    which cost no memory.

    References
    ----------
    Vaswani et al. (2017); Milakov & Gimelshein (2018); Dao et al. (2022) FlashAttention.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(4, 8)), rng.normal(size=(6, 8)), rng.normal(size=(6, 3))
    >>> out, lse = softmax_attention(q, k, v, causal=True, return_lse=True)
    >>> out.shape, lse.shape
    ((4, 3), (4,))
    >>> bool(np.allclose(out, softmax_attention(q, k, v, causal=True, implementation="numpy")))
    True
    """
    if implementation not in IMPLEMENTATIONS:
        raise InputError(f"implementation: expected one of {IMPLEMENTATIONS}, got {implementation!r}")
    return_lse = check_bool(return_lse, "return_lse")
    gpu = gpu_backend(q=q, k=k, v=v, mask=mask, bias=bias)
    if gpu:
        if implementation not in ("auto", "cuda"):
            raise InputError(f"implementation: {implementation!r} runs on the CPU; CuPy inputs take 'auto' or 'cuda'")
        if is_cupy(key_lengths):
            key_lengths = key_lengths.get()  # (batch,) integers: validated and read on the host
        prob = attention_problem(shadow64(q), shadow64(k), shadow64(v), scale=scale, causal=causal,
                                 mask=None if mask is None else shadow(mask),
                                 bias=None if bias is None else shadow64(bias), key_lengths=key_lengths,
                                 window=window, alibi_slopes=alibi_slopes, sink_tokens=sink_tokens)
        if softcap:
            raise InputError("softcap: the CUDA streaming kernel does not cap logits; pass NumPy arrays")
        dt, low = _precision(dtype)
        if low is not None:
            raise InputTypeError(f"dtype: the CUDA streaming kernel supports float64 and float32, got {low} "
                                 "(float16 and bfloat16 references run on NumPy inputs)")
        if sinks is not None:
            raise InputError("sinks: the CUDA streaming kernel has no attention sinks; pass NumPy arrays")
        out, lse = gpu.softmax_attention(prob, q, k, v, mask, bias, dt)
        return (out, lse) if return_lse else out
    if implementation == "cuda":
        raise InputError("implementation: 'cuda' needs CuPy arrays q, k, v (on the GPU)")
    dt, low = _precision(dtype)
    prob = attention_problem(
        q, k, v, scale=scale, causal=causal, mask=mask, bias=bias, key_lengths=key_lengths, window=window,
        softcap=softcap, alibi_slopes=alibi_slopes, sinks=sinks, sink_tokens=sink_tokens
    )
    block_q = _streaming.DEFAULT_BLOCK_Q if block_q is None else check_positive_int(block_q, "block_q")
    block_k = _streaming.DEFAULT_BLOCK_K if block_k is None else check_positive_int(block_k, "block_k")
    batch = int(np.prod(prob.batch_shape, dtype=np.int64))
    if implementation == "auto":
        small = batch * prob.T * prob.S <= DENSE_LIMIT
        implementation = "dense" if small or low is not None or not numba_enabled() else "numba"
    elif implementation == "numba" and not numba_enabled():
        implementation = "numpy"
    if low is not None and implementation != "dense":
        raise InputError(f"implementation: the {low} reference is dense (refattn.precision.kernel_reference: "
                         f"probabilities rounded before the second product); got {implementation!r}")

    if dt is not np.float64 and implementation == "dense":  # the reference at a precision: one definition
        out, lse = _prec.reference_on(prob, _prec.recipe(low or "float32"))
    elif implementation == "dense":
        p, lse = _softmax_rows(prob.logits(dt), prob.sink_logits(dt))
        out = np.matmul(p, prob.v.astype(dt, copy=False))  # (..., T, Hv)
        out = _full(out, prob.batch_shape + (prob.T, prob.Hv))
        lse = _full(lse, prob.batch_shape + (prob.T,))  # v's batch dims may be missing from P
    else:
        out, lse = _with_sinks(*_stream(prob, dt, implementation, block_q, block_k), prob)
    return (out, lse) if return_lse else out


def _stream(prob, dt, implementation, block_q, block_k):
    """Run the streaming kernel per batch item; BLAS pinned to one thread inside Numba's threads."""
    out = np.empty(prob.batch_shape + (prob.T, prob.Hv), dtype=dt)
    lse = np.empty(prob.batch_shape + (prob.T,), dtype=dt)
    offset = prob.causal_offset() if prob.causal else _streaming.NO_CAUSAL
    kernel = _streaming.stream_numba if implementation == "numba" else _streaming.stream_numpy
    limit = blas_single_thread() if implementation == "numba" else None
    try:
        for idx, q, k, v, mask, bias, klen in prob.items():
            o, l = kernel(
                q.astype(dt, copy=False), k.astype(dt, copy=False), v.astype(dt, copy=False),
                prob.scale, offset, mask, None if bias is None else bias.astype(dt, copy=False),
                klen, block_q, block_k, prob.softcap or 0.0,
            )
            out[idx] = o
            lse[idx] = l
    finally:
        if limit is not None:
            limit.restore_original_limits()
    return out, lse


def attention_backward(
    q, k, v, dout, *, scale=None, causal=False, mask=None, bias=None, key_lengths=None, window=None, softcap=None,
    alibi_slopes=None, sinks=None, sink_tokens=0, dlse=None, dtype=None
):
    r"""Gradients ``(dq, dk, dv)`` of [`softmax_attention`][refattn.exact.softmax_attention] for an upstream gradient ``dout``.

    the docs' exact-attention page (the FlashAttention backward):

    $$
    dV = P^\top dO, \quad dP = dO\,V^\top, \quad
    dS_{ij} = P_{ij}(dP_{ij} - \delta_i),\ \delta_i = dO_i \cdot O_i, \quad
    dQ = s\,dS\,K, \quad dK = s\,dS^\top Q .
    $$

    ``dout`` has the output's shape ``(..., T, Hv)``. Each gradient has the shape of its
    input: gradients of broadcast inputs are summed over the broadcast dims. Masked
    entries have ``P = 0`` and so carry no gradient; a fully masked row contributes
    nothing. Dense, ``O(T S)`` memory, float64 unless ``dtype`` says otherwise. With ``sinks`` it
    returns ``(dq, dk, dv, dsinks)``, ``dsinks = -sum_i P_i,sink delta_i`` of the sinks' shape
    (derived in the docs' exact-attention page, "Attention sinks").

    ``dlse`` (``(..., T)``, the lse's shape) is an upstream gradient of the log-sum-exp as well, as a
    split-KV or ring-attention backward receives it: since ``d lse_i / d s_ij = P_ij``, it enters as
    ``dS_ij = P_ij (dP_ij - delta_i + dlse_i)`` (and ``dsinks = -sum_i P_i,sink (delta_i - dlse_i)``;
    derived in the docs' exact-attention page, "The gradient of the lse"). Rows that see no key carry
    none of it.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> q, k, v = rng.normal(size=(3, 4)), rng.normal(size=(5, 4)), rng.normal(size=(5, 2))
    >>> dq, dk, dv = attention_backward(q, k, v, np.ones((3, 2)))
    >>> dq.shape, dk.shape, dv.shape
    ((3, 4), (5, 4), (5, 2))
    """
    dt, low = _precision(dtype)
    prob = attention_problem(
        q, k, v, scale=scale, causal=causal, mask=mask, bias=bias, key_lengths=key_lengths, window=window,
        softcap=softcap, alibi_slopes=alibi_slopes, sinks=sinks, sink_tokens=sink_tokens
    )
    out_shape = prob.batch_shape + (prob.T, prob.Hv)
    d_o = as_float_array(dout, "dout")
    if d_o.shape != out_shape:
        raise InputError(f"dout: expected the output's shape {out_shape}, got {d_o.shape}")
    if dlse is not None:
        dlse = as_float_array(dlse, "dlse")
        if dlse.shape != out_shape[:-1]:
            raise InputError(f"dlse: expected the lse's shape {out_shape[:-1]}, got {dlse.shape}")
    if low is not None:
        prob, d_o, *rest = _prec.round_problem(prob, low, [("dout", d_o)] + ([("dlse", dlse)] if dlse is not None
                                                                              else []))
        dlse = rest[0] if rest else None
    d_o = d_o.astype(dt, copy=False)
    qd, kd, vd = (a.astype(dt, copy=False) for a in (prob.q, prob.k, prob.v))
    s = dt(prob.scale)
    z = prob.sink_logits(dt)  # (..., 1, 1) or None
    p, lse = _softmax_rows(prob.logits(dt), z)  # (..., T, S)
    o = np.matmul(p, vd)  # (..., T, Hv)
    dv = np.matmul(np.swapaxes(p, -1, -2), d_o)  # (..., S, Hv)
    dp = np.matmul(d_o, np.swapaxes(vd, -1, -2))  # (..., T, S)
    delta = np.sum(d_o * o, axis=-1, keepdims=True)  # (..., T, 1)
    if dlse is not None:  # d lse_i / d s_ij = P_ij: the lse's gradient shifts delta (derived: "The gradient of the lse")
        delta = delta - dlse.astype(dt, copy=False)[..., None]
    ds = p * (dp - delta)  # (..., T, S)
    if prob.softcap is not None:  # through the cap: d(c tanh(x / c))/dx = 1 - tanh^2(x / c)
        raw = s * np.matmul(qd, np.swapaxes(kd, -1, -2))
        ds = ds * (1 - np.tanh(raw / dt(prob.softcap)) ** 2)
    dq = s * np.matmul(ds, kd)  # (..., T, H)
    dk = s * np.matmul(np.swapaxes(ds, -1, -2), qd)  # (..., S, H)
    grads = (sum_to_shape(dq, prob.q.shape), sum_to_shape(dk, prob.k.shape), sum_to_shape(dv, prob.v.shape))
    if z is not None:  # d lse_i / d z = P_i,sink, so dL/dz = -sum_i P_i,sink delta_i (derived: "Attention sinks")
        fin = np.isfinite(lse)[..., None]
        p_sink = np.where(fin, np.exp(z - np.where(fin, lse[..., None], 0)), 0)  # (..., T, 1)
        dz = -np.sum(p_sink * delta, axis=(-2, -1))  # (batch...)
        grads = grads + (sum_to_shape(np.broadcast_to(dz, prob.batch_shape), prob.sinks.shape),)
    return grads if low is None else tuple(_prec.store(g, low) for g in grads)


def _gamma(n, u):
    """Higham's gamma_n = n u / (1 - n u) (Accuracy and Stability of Numerical Algorithms, 3.1)."""
    return n * u / (1.0 - n * u)


def forward_error_bound(q, k, v, *, scale=None, causal=False, mask=None, bias=None, key_lengths=None, window=None,
                        softcap=None, alibi_slopes=None, sinks=None, sink_tokens=0, dtype=None, p_scale=None,
                        output=None):
    r"""A rigorous per-row bound on the rounding error of [`softmax_attention`][refattn.exact.softmax_attention].

    Derived in the docs' exact-attention page ("Forward error of the oracle"). With unit roundoff
    ``u`` of the compute dtype, $\gamma_n = nu/(1-nu)$, ``R_i`` the range of row ``i``'s visible
    logits and

    $$
    \Delta_i = \gamma_{H+2} \max_j \bigl(s \textstyle\sum_h |q_{ih} k_{jh}| + |b_{ij}|\bigr)
               + 2u R_i + \gamma_{5S+4} \;[+\, u \max_j s\textstyle\sum_h |q_{ih}k_{jh}| + 4uc
               \text{ with a softcap } c],
    $$

    every implementation (dense and streaming) satisfies

    $$
    \max_h |\hat O_{ih} - O_{ih}| \le \bigl(e^{2\Delta_i} - 1 + 2\gamma_{S+2}\bigr)
    \max_{j\ \text{visible}} \max_h |v_{jh}| .
    $$

    With ``dtype`` float16, bfloat16 or an FP8 format it bounds the distance of a kernel of that
    precision from the exact attention of the *rounded* inputs: the float32 computation's bound,
    plus ``(u_p + n t_p / 2)`` times the visible ``max |v|`` for the probabilities rounded to the
    precision before the second product (each within a relative ``u_p``, or half the smallest
    subnormal ``t_p`` where it falls below the normal range, over the row's ``n`` visible keys; they
    sum to at most ``1 + `` the float32 bound), plus half an ulp of the output's rounding (derived,
    the docs' testing page, "The tolerance rule"). ``p_scale`` and ``output`` are the kernel's
    [`recipe`][refattn.precision.recipe] (defaults: 1 and the precision itself; FP8: FlashAttention 3's
    2^8 and bfloat16): the probabilities scaled by ``p_scale`` before their rounding have subnormal
    errors ``t / (2 p_scale)``, and the output is rounded to ``output``. A kernel that casts ``P``
    unscaled to e4m3 (``t = 2^-9``) is bounded with ``p_scale=1``.

    The first term is the conditioning of softmax (a logit error ``eps`` moves each
    probability by a factor within ``e^{+-2 eps}``), the second the rounding of the sums
    (the ``5S`` covers the streaming paths' rescaling, one per key block, block_k >= 1). A softcap
    ``c tanh(x / c)`` has slope at most 1, so the error of ``x`` passes through it; the division,
    ``tanh`` (within 2 ulps) and the product by ``c`` add at most ``u |x| + 3uc``.
    Returns the bound of shape ``(..., T)`` (0 for a query that sees no key, whose output
    is exactly zero). Tests check it against the mpmath oracle on adversarial inputs.
    """
    dt, low = _precision(dtype, fp8=True)
    u = _prec.unit_roundoff(np.dtype(dt).name)
    prob = attention_problem(q, k, v, scale=scale, causal=causal, mask=mask, bias=bias, key_lengths=key_lengths,
                             window=window, softcap=softcap, alibi_slopes=alibi_slopes, sinks=sinks,
                             sink_tokens=sink_tokens)
    S, H = prob.S, prob.H
    qa, ka = (np.abs(a).astype(np.float64) for a in (prob.q, prob.k))  # the bound in float64, whatever the inputs
    absdot = prob.scale * np.matmul(qa, np.swapaxes(ka, -1, -2))  # (..., T, S)
    logits = prob.logits()  # (..., T, S), -inf where masked
    visible = logits > -np.inf
    capped = np.zeros(()) if prob.softcap is None else u * absdot + 4 * u * prob.softcap  # (..., T, S)
    if prob.bias is not None:
        absdot = absdot + np.where(np.isfinite(prob.bias), np.abs(prob.bias), 0.0)
    absdot = np.broadcast_to(absdot + capped, visible.shape)
    any_vis = visible.any(axis=-1) if S else np.zeros(visible.shape[:-1], dtype=bool)  # (..., T)
    big = np.where(visible, absdot, 0.0).max(axis=-1, initial=0.0)
    hi = np.where(visible, logits, -np.inf).max(axis=-1, initial=-np.inf)
    lo = np.where(visible, logits, np.inf).min(axis=-1, initial=np.inf)
    terms = S
    if prob.sinks is not None:  # the sink: one more term of the sum, an exact logit with no value
        z = np.broadcast_to(prob.sinks, prob.batch_shape)[..., None]  # (..., 1)
        hi, lo = np.where(np.isfinite(z), np.maximum(hi, z), hi), np.where(np.isfinite(z), np.minimum(lo, z), lo)
        terms = S + 1
    rng_i = np.where(any_vis, hi - lo, 0.0)
    delta = _gamma(H + 2, u) * big + 2 * u * rng_i + _gamma(5 * terms + 4, u)
    vmax = np.abs(np.broadcast_to(prob.v, prob.batch_shape + (S, prob.Hv))).max(axis=-1, initial=0.0)  # (..., S)
    vmax_vis = np.where(visible, vmax[..., None, :], 0.0).max(axis=-1, initial=0.0)  # (..., T)
    spread = np.expm1(2 * delta) + 2 * _gamma(terms + 2, u)  # relative error of the probabilities' sum
    bound = spread * vmax_vis
    if low is not None:  # rounded probabilities, then the output rounded to the storage precision
        how = _prec.recipe(low, p_scale=p_scale, output=output)
        u_low, half_sub = _prec.unit_roundoff(low), _prec.smallest_subnormal(low) / 2 / how.p_scale
        # each probability within a relative u_low, or (below the format's normal range) half a subnormal
        n_vis = visible.sum(axis=-1)  # (a sink has no value: no term)
        bound = bound + (u_low * (1 + spread) + n_vis * half_sub) * vmax_vis
        bound = bound + _prec.unit_roundoff(how.output) * (vmax_vis + bound) + _prec.smallest_subnormal(how.output) / 2
    elif p_scale is not None or output is not None:
        raise InputError("p_scale, output: the recipe of a storage precision (dtype float16, bfloat16 or FP8)")
    return check_finite_result(np.where(any_vis, bound, 0.0), "q, k, scale",
                               "the forward error bound (exp of 2 Delta: the logits are too large for a finite bound)")
