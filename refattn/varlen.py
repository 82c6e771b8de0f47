r"""Variable-length batches: attention over packed sequences, flash-attn's ``varlen`` layout.

A serving batch packs its sequences end to end instead of padding them: ``q`` is
``(total_q, Hq, D)``, ``k`` and ``v`` are ``(total_k, Hk, D)`` and ``(total_k, Hk, Dv)``, and
sequence ``b`` is rows ``cu_seqlens_q[b]:cu_seqlens_q[b+1]`` of ``q`` and rows
``cu_seqlens_k[b]:cu_seqlens_k[b+1]`` of ``k`` and ``v`` (flash-attn's ``flash_attn_varlen_func``;
``cu_seqlens`` are the cumulative lengths, starting at 0). Each sequence is its own attention
problem: causal masks and sliding windows are aligned per sequence (bottom-right, flash-attn
>= 2.1), a query never sees another sequence's keys. ``seqused_k`` (one per sequence) keeps only
the first keys of each sequence's slot: they are the sequence's keys (its causal diagonal is
aligned on their count) and the rest of the slot is padding, never read nor validated. Grouped-query heads: query head ``h`` reads key/value head ``h // (Hq / Hk)``.

Every sequence is computed by [`refattn.softmax_attention`][refattn.exact.softmax_attention] (the heads as its batch
axis) and [`refattn.attention_backward`][refattn.exact.attention_backward], so the conventions are the oracle's: a
sequence with no keys has output rows of zeros and ``lse = -inf`` (the sink logit with
``sinks``); a sequence with no queries has no rows.
"""

from __future__ import annotations

import numbers

import numpy as np

from refattn._validation import InputError, InputTypeError, as_float_array, check_bool, check_positive_int
from refattn.exact import attention_backward, softmax_attention

__all__ = ["varlen_attention", "varlen_backward", "as_cu_seqlens"]


def as_cu_seqlens(cu_seqlens, total, name="cu_seqlens"):
    """Validated cumulative sequence lengths: integers, ``cu[0] = 0``, non-decreasing, ``cu[-1] = total``."""
    total = check_positive_int(total, "total", minimum=0)
    a = np.asarray(cu_seqlens) if not isinstance(cu_seqlens, (str, bytes)) else np.asarray([cu_seqlens])
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        raise InputTypeError(f"{name}: expected integers, got dtype {a.dtype}")
    if a.ndim != 1 or a.size < 1:
        raise InputError(f"{name}: expected a 1-d array of B + 1 offsets, got shape {a.shape}")
    a = a.astype(np.int64)
    if a[0] != 0 or np.any(np.diff(a) < 0) or a[-1] != total:
        raise InputError(f"{name}: offsets must start at 0, never decrease and end at the packed length {total}, "
                         f"got {a.tolist() if a.size <= 12 else '[' + str(a[0]) + ', ..., ' + str(a[-1]) + ']'}")
    return a


def _problem(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, dout=False):
    q = as_float_array(q, "q")
    if seqused_k is None:
        k, v = as_float_array(k, "k"), as_float_array(v, "v")
    else:  # the slots past seqused_k are never read: what they hold (NaN, garbage) is not validated
        k, v = (_unchecked(a, n) for a, n in ((k, "k"), (v, "v")))
    for a, n in ((q, "q"), (k, "k"), (v, "v")):
        if a.ndim != 3:
            raise InputError(f"{n}: expected the packed layout (total, heads, head_dim), got shape {a.shape}")
    if k.shape[:2] != v.shape[:2]:
        raise InputError(f"k, v: expected the same (total_k, heads), got {k.shape[:2]} and {v.shape[:2]}")
    if q.shape[2] != k.shape[2]:
        raise InputError(f"q, k: expected the same head dim, got {q.shape[2]} and {k.shape[2]}")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        raise InputError(f"q, k: the query heads ({q.shape[1]}) must be a multiple of the key/value heads "
                         f"({k.shape[1]})")
    cq = as_cu_seqlens(cu_seqlens_q, q.shape[0], "cu_seqlens_q")
    ck = as_cu_seqlens(cu_seqlens_k, k.shape[0], "cu_seqlens_k")
    if cq.size != ck.size:
        raise InputError(f"cu_seqlens_q, cu_seqlens_k: expected the same number of sequences, got {cq.size - 1} "
                         f"and {ck.size - 1}")
    used = None
    if seqused_k is not None:
        used = np.asarray(seqused_k)
        if used.dtype == np.bool_ or not np.issubdtype(used.dtype, np.integer):
            raise InputTypeError(f"seqused_k: expected integers, got dtype {used.dtype}")
        if used.shape != (cq.size - 1,):
            raise InputError(f"seqused_k: expected one length per sequence, shape ({cq.size - 1},), got {used.shape}")
        if np.any(used < 0) or np.any(used > np.diff(ck)):
            raise InputError("seqused_k: each entry must lie in [0, its sequence's key slot length]")
        keep = np.zeros(k.shape[0], bool)
        for b in range(used.size):
            keep[ck[b]:ck[b] + int(used[b])] = True
        k, v = (as_float_array(np.where(keep[:, None, None], a, 0.0), n) for a, n in ((k, "k"), (v, "v")))
    if dout is not False:  # the backward's
        dout = as_float_array(dout, "dout")
        if dout.shape != q.shape[:2] + (v.shape[2],):
            raise InputError(f"dout: expected the output's shape {q.shape[:2] + (v.shape[2],)}, got {dout.shape}")
    return q, k, v, cq, ck, used, dout


def _unchecked(a, name):
    """``a`` as a float64 array, its shape and dtype checked but not its values."""
    arr = np.asarray(a)
    if arr.dtype.kind != "f":
        return as_float_array(a, name)  # the usual error for a non-float array
    return arr.astype(np.float64, copy=False)


def _sequence(a, lo, hi, group=1):
    """Rows ``lo:hi`` of a packed ``(total, heads, X)`` array as ``(heads * group, hi - lo, X)``."""
    x = np.swapaxes(a[lo:hi], 0, 1)
    return np.repeat(x, group, axis=0) if group > 1 else x


def _keys(ck, used, b):
    """The rows of sequence ``b``'s keys: its slot, or the slot's first ``seqused_k[b]`` (its real length:
    the causal diagonal and the window are aligned on it, as flash-attn's)."""
    return ck[b], ck[b + 1] if used is None else ck[b] + int(used[b])


def _check_options(kw):
    for name in ("alibi_slopes", "sinks"):
        if kw.get(name) is not None and not isinstance(kw[name], numbers.Real) and np.ndim(kw[name]) > 1:
            raise InputError(f"{name}: expected one value per query head (Hq,), got shape {np.shape(kw[name])}")
    return {n: v for n, v in kw.items() if v is not None}


def varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, *, seqused_k=None, scale=None, causal=False, window=None,
                     softcap=None, alibi_slopes=None, sinks=None, sink_tokens=0, return_lse=False):
    r"""Attention over packed sequences (module docstring), the oracle on each.

    Parameters
    ----------
    q : array (total_q, Hq, D)
    k, v : arrays (total_k, Hk, D), (total_k, Hk, Dv)
    cu_seqlens_q, cu_seqlens_k : int arrays (B + 1,)
        Cumulative lengths (flash-attn's ``cu_seqlens_q``, ``cu_seqlens_k``); ``max_seqlen_*`` follow from them.
    seqused_k : int array (B,), optional
        Keys actually used in each sequence's slot (the rest are never read).
    return_lse : bool
        Also return ``lse`` of shape ``(Hq, total_q)`` (flash-attn's varlen layout).
    scale, causal, window, softcap, alibi_slopes, sinks, sink_tokens
        As for [`refattn.softmax_attention`][refattn.exact.softmax_attention], per sequence (``alibi_slopes`` and ``sinks``:
        one per query head). Per-sequence masks and biases have no packed form here.

    Returns
    -------
    out : ndarray (total_q, Hq, Dv), and ``lse`` (Hq, total_q) with ``return_lse``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(5, 2, 4)), rng.normal(size=(7, 2, 4)), rng.normal(size=(7, 2, 3))
    >>> out = varlen_attention(q, k, v, [0, 2, 5], [0, 3, 7], causal=True)
    >>> out.shape
    (5, 2, 3)
    >>> bool(np.allclose(out[:2], np.swapaxes(softmax_attention(np.swapaxes(q[:2], 0, 1),
    ...     np.swapaxes(k[:3], 0, 1), np.swapaxes(v[:3], 0, 1), causal=True), 0, 1)))
    True
    """
    return_lse = check_bool(return_lse, "return_lse")
    options = _check_options(dict(scale=scale, causal=causal, window=window, softcap=softcap,
                                  alibi_slopes=alibi_slopes, sinks=sinks, sink_tokens=sink_tokens))
    q, k, v, cq, ck, used, _ = _problem(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k)
    group = q.shape[1] // k.shape[1]
    out = np.zeros(q.shape[:2] + (v.shape[2],))
    lse = np.full((q.shape[1], q.shape[0]), -np.inf)
    for b in range(cq.size - 1):
        if cq[b + 1] == cq[b]:
            continue  # a sequence with no queries: no rows
        lo, hi = _keys(ck, used, b)
        o, l = softmax_attention(_sequence(q, cq[b], cq[b + 1]), _sequence(k, lo, hi, group),
                                 _sequence(v, lo, hi, group), return_lse=True, **options)
        out[cq[b]:cq[b + 1]] = np.swapaxes(o, 0, 1)
        lse[:, cq[b]:cq[b + 1]] = l
    return (out, lse) if return_lse else out


def varlen_backward(q, k, v, dout, cu_seqlens_q, cu_seqlens_k, *, seqused_k=None, scale=None, causal=False,
                    window=None, softcap=None, alibi_slopes=None, sinks=None, sink_tokens=0):
    """Gradients ``(dq, dk, dv)`` of [`varlen_attention`][refattn.varlen.varlen_attention] (``(dq, dk, dv, dsinks)``
    with ``sinks``), each in the packed shape of its input; grouped key/value heads collect the
    gradients of every query head that reads them; the keys of a slot past ``seqused_k`` get 0."""
    options = _check_options(dict(scale=scale, causal=causal, window=window, softcap=softcap,
                                  alibi_slopes=alibi_slopes, sinks=sinks, sink_tokens=sink_tokens))
    q, k, v, cq, ck, used, dout = _problem(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, dout)
    group = q.shape[1] // k.shape[1]
    dq, dk, dv = np.zeros(q.shape), np.zeros(k.shape), np.zeros(v.shape)
    dz = None if sinks is None else np.zeros(np.shape(sinks))
    for b in range(cq.size - 1):
        if cq[b + 1] == cq[b]:
            continue
        lo, hi = _keys(ck, used, b)
        grads = attention_backward(_sequence(q, cq[b], cq[b + 1]), _sequence(k, lo, hi, group),
                                   _sequence(v, lo, hi, group), _sequence(dout, cq[b], cq[b + 1]), **options)
        dq[cq[b]:cq[b + 1]] = np.swapaxes(grads[0], 0, 1)
        for g, acc in ((grads[1], dk), (grads[2], dv)):  # (Hq, S_b, X) -> summed over each group -> (S_b, Hk, X)
            acc[lo:hi] = np.swapaxes(g.reshape(k.shape[1], group, *g.shape[1:]).sum(axis=1), 0, 1)
        if dz is not None:
            dz = dz + grads[3]
    return (dq, dk, dv) if dz is None else (dq, dk, dv, dz)
