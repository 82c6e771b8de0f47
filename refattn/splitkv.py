r"""Split-KV attention: the partial states of chunks of the keys, and their merge.

Flash-decoding (Dao, Haziza, Massa and Sizov 2023), flash-attn's ``num_splits``, vLLM's
``merge_attn_states`` and flashinfer's ``merge_state`` cut the keys of one attention into chunks
``c``, compute each chunk's *state*: its normalised output ``O_c`` and log-sum-exp ``lse_c``, and merge
the states (Milakov and Gimelshein 2018, the online softmax; Dao 2023, Sec. 3.1.1):

$$
\mathrm{lse} = m + \log \sum_c e^{\mathrm{lse}_c - m}, \qquad
O = \sum_c e^{\mathrm{lse}_c - \mathrm{lse}}\, O_c, \qquad m = \max_c \mathrm{lse}_c .
$$

The merge is exact, associative and commutative, so the same two lines combine a prefix cache with
its suffix, a ring's blocks and a cascade's levels. A state that saw no key has weight 0; a row
whose every state saw no key gets ``O = 0`` and the empty ``lse``.

**Conventions** (each a keyword here and an option of ``refattn check --kind merge``; the libraries
differ in them):

- ``base``: the log-sum-exp as a natural log (``"e"``: flash-attn, vLLM, PyTorch) or in base 2
  (``"2"``: flashinfer's state keeps ``m + log2(d)`` over scores scaled by ``log2 e``);
- ``empty``: the lse of a state that saw no key: ``"-inf"`` (``log 0``; flash-attn's splits,
  PyTorch) or ``"+inf"`` (flash-attn 2's combine writes ``+inf`` for a row that sees no key in any
  split; vLLM's merge reads an infinite lse of either sign as an empty state). Under ``"+inf"``
  both infinities are read as empty on input, and ``+inf`` is returned.

An attention sink (one more term of the denominator with no value) is one more state: ``O = 0``,
``lse`` the sink's logit.
"""

from __future__ import annotations

import numpy as np

from refattn._validation import InputError, InputTypeError, as_float_array
from refattn.problem import attention_problem
from refattn.precision import as_precision, store

__all__ = ["partial_states", "merge_states", "split_edges", "LSE_BASES", "EMPTY_LSE"]

LSE_BASES = ("e", "2")
EMPTY_LSE = ("-inf", "+inf")
#: The most chunks `split_edges` cuts (flash-attn caps num_splits at 128; a chunk per key of a 1M-key
#: cache is still far below this).
MAX_SPLITS = 2**24


def _choice(value, name, choices):
    if not isinstance(value, str) or value not in choices:
        raise InputError(f"{name}: expected one of {choices}, got {value!r}")
    return value


def split_edges(S, splits) -> np.ndarray:
    """The key edges ``[0, e_1, ..., S]`` of ``splits``: an int (that many chunks as equal as
    possible, as flash-attn divides its key blocks; more chunks than keys leaves some empty) or the
    edges themselves (non-decreasing, from 0 to ``S``)."""
    if isinstance(splits, (bool, np.bool_)):
        raise InputTypeError(f"splits: expected a number of chunks or their edges, got {splits!r}")
    if isinstance(splits, (int, np.integer)):
        if not 1 <= splits <= MAX_SPLITS:
            raise InputError(f"splits: between 1 and {MAX_SPLITS} chunks, got {splits}")
        return np.linspace(0, S, int(splits) + 1).round().astype(np.int64)
    try:
        edges = np.asarray(splits)
    except ValueError:
        raise InputTypeError("splits: cannot be converted to an array (ragged?)") from None
    if edges.ndim != 1 or edges.size < 2 or not np.issubdtype(edges.dtype, np.integer) or edges.dtype == np.bool_:
        raise InputTypeError(f"splits: expected an int or integer edges [0, ..., S], got {splits!r}")
    if edges[0] != 0 or edges[-1] != S or np.any(np.diff(edges) < 0):
        raise InputError(f"splits: the edges must rise from 0 to S = {S}, got {edges.tolist()}")
    return edges.astype(np.int64)


def partial_states(q, k, v, splits, *, dtype="float64", **options):
    r"""The states ``(outs, lses)`` of attention over each chunk of the keys (module docstring).

    Parameters
    ----------
    q, k, v : arrays (..., T, H), (..., S, H), (..., S, Hv)
    splits : int or sequence of int
        The chunks ([`split_edges`][refattn.splitkv.split_edges]).
    dtype : {"float64", "float32", "float16", "bfloat16"}
        The dtype the states are written in (flash-attn keeps its split states in float32).
    **options
        ``scale``, ``causal``, ``mask``, ``bias``, ``key_lengths``, ``window``, ``softcap``,
        ``alibi_slopes`` as for [`refattn.softmax_attention`][refattn.exact.softmax_attention]; every
        chunk sees the keys the whole attention allows it.

    Returns
    -------
    outs : ndarray (P, ..., T, Hv)
        Each chunk's normalised output; zeros for a row that sees no key of the chunk.
    lses : ndarray (P, ..., T)
        Natural log-sum-exp of each chunk's logits; ``-inf`` where the row sees no key of the chunk.

    Examples
    --------
    >>> import numpy as np
    >>> from refattn import softmax_attention
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 8)), rng.normal(size=(10, 8)), rng.normal(size=(10, 2))
    >>> outs, lses = partial_states(q, k, v, 4)
    >>> out, lse = merge_states(outs, lses)
    >>> bool(np.allclose(out, softmax_attention(q, k, v)))
    True
    """
    for name in ("sinks", "sink_tokens"):
        if options.get(name) not in (None, 0):
            raise InputError(f"{name}: a sink is a state of its own (out 0, lse the sink's logit): merge it as "
                             "one more state")
    prob = attention_problem(q, k, v, **options)
    dt = as_precision(dtype, "dtype")
    logits = np.broadcast_to(prob.logits(), prob.batch_shape + (prob.T, prob.S))
    vals = np.broadcast_to(prob.v, prob.batch_shape + (prob.S, prob.Hv))
    edges = split_edges(prob.S, splits)
    outs, lses = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        part = logits[..., a:b]
        top = np.max(part, axis=-1, initial=-np.inf)  # (..., T)
        seen = top > -np.inf
        p = np.exp(part - np.where(seen, top, 0.0)[..., None])
        total = p.sum(axis=-1)
        safe = np.where(seen, total, 1.0)
        outs.append(np.where(seen[..., None], (p @ vals[..., a:b, :]) / safe[..., None], 0.0))
        lses.append(np.where(seen, top + np.log(safe), -np.inf))
    outs, lses = np.stack(outs), np.stack(lses)
    if dt == "float64":
        return outs, lses
    return store(outs, dt), lses.astype(np.float32)  # lse kept in float32, as the kernels keep it


def merge_states(outs, lses, *, base="e", empty="-inf", dtype="float64"):
    r"""Merge states ``(outs, lses)`` into ``(out, lse)`` (module docstring, the two-line formula).

    Parameters
    ----------
    outs : array (P, ..., Hv)
        The states' normalised outputs (an empty state's output is not read).
    lses : array (P, ...)
        Their log-sum-exps in ``base``; an empty state's is ``-inf`` (or, with ``empty="+inf"``,
        either infinity). NaN is an error.
    base : {"e", "2"}
    empty : {"-inf", "+inf"}
        The lse of a state that saw no key (module docstring), on input and in the result.
    dtype : {"float64", "float32"}
        The precision the merge computes in (a float32 merge is what kernels run).

    Returns
    -------
    out : ndarray (..., Hv)
        Zeros where every state is empty.
    lse : ndarray (...)
        In ``base``; ``empty`` where every state is empty.
    """
    _choice(base, "base", LSE_BASES)
    _choice(empty, "empty", EMPTY_LSE)
    dt = np.dtype(_choice(as_precision(dtype, "dtype"), "dtype", ("float64", "float32")))
    o = as_float_array(outs, "outs", allow_neg_inf=True)
    try:
        raw = np.asarray(lses)
    except ValueError:
        raise InputTypeError("lses: cannot be converted to an array (ragged?)") from None
    if raw.dtype.kind not in "fiu" and raw.dtype.name not in ("bfloat16",):
        raise InputTypeError(f"lses: expected numbers, got dtype {raw.dtype}")
    lse_in = raw.astype(np.float64)
    if o.ndim < 2:
        raise InputError(f"outs: expected (P, ..., Hv) states, got shape {o.shape}")
    if lse_in.shape != o.shape[:-1]:
        raise InputError(f"lses: expected shape {o.shape[:-1]} (outs without its last axis), got {lse_in.shape}")
    if np.isnan(lse_in).any():
        raise InputError("lses: contains NaN (an empty state's lse is -inf)")
    if empty == "-inf" and np.any(lse_in == np.inf):
        raise InputError("lses: +inf is an empty state only under empty='+inf'")
    is_empty = np.isinf(lse_in)
    if np.any(~np.isfinite(o) & ~is_empty[..., None]):
        raise InputError("outs: a state that saw keys (finite lse) has a non-finite output")
    ex, lg = (np.exp2, np.log2) if base == "2" else (np.exp, np.log)
    lse_c = np.where(is_empty, -np.inf, lse_in).astype(dt)
    top = np.max(lse_c, axis=0)
    seen = top > -np.inf
    ref = np.where(seen, top, dt.type(0))
    w = np.where(is_empty, dt.type(0), ex(lse_c - ref)).astype(dt)  # each in (0, 1], the largest 1
    total = w.sum(axis=0, dtype=dt)
    safe = np.where(seen, total, dt.type(1))
    vals = np.where(is_empty[..., None], dt.type(0), o.astype(dt))
    out = np.where(seen[..., None], np.sum((w / safe)[..., None] * vals, axis=0, dtype=dt), dt.type(0))
    lse = np.where(seen, ref + lg(safe), dt.type(np.inf if empty == "+inf" else -np.inf))
    return out.astype(dt), lse.astype(dt)
