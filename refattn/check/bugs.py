r"""A catalogue of real bugs: defects reported against the field's attention kernels, reproduced in NumPy.

Each entry of `BUGS` is a [`Bug`][refattn.check.bugs.Bug]: a callable in the checker's contract
(flash-attn's interface, plain NumPy), how to check it, the check that must fail, and the report it
reproduces (repository and commit, pull request or issue; what was wrong; what the fix changed).
The callables are one tiled kernel, [`flash_forward`][refattn.check.bugs.flash_forward] (an online
softmax over query tiles of ``BLOCK_M`` rows and key tiles of ``BLOCK_N`` keys, optionally split
over the keys and merged as flash-decoding does; Dao 2023, Algorithm 1) and its backward,
[`flash_backward`][refattn.check.bugs.flash_backward] (Algorithm 2), each with a ``fault`` keyword
that plants one reported bug as the change it was. With ``fault=""`` both are correct
(`CORRECT_KERNELS`, in float64, float16 and bfloat16, with and without a split): they measure
every rule's false alarms on the same cases.

[`refattn.check.rules`][refattn.check.rules] runs the audit: which rule (refattn's and the anchors'
rules of flash-attention, PyTorch and flashinfer) catches which bug, and each rule's false alarms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import numpy as np

from refattn.check.exact import per_head, per_item
from refattn.precision import round_to

__all__ = ["BLOCK_M", "BLOCK_N", "PAGE", "FAULTS", "BACKWARD_FAULTS", "Bug", "BUGS", "CORRECT_KERNELS",
           "flash_forward", "split_forward", "flash_backward", "stored_in"]

#: The kernel's tiles (query rows, keys) and the page of a paged KV cache (keys).
BLOCK_M, BLOCK_N, PAGE = 128, 64, 16

#: The forward faults of `flash_forward`; each is one entry of `BUGS`.
FAULTS = ("", "causal top-left", "causal key blocks bounded top-left", "split-KV lse_max unguarded",
          "split-KV lse_logsum unguarded", "no keys: output left unwritten", "softcap as x tanh(x)",
          "window (-1, -1) read as a band", "ALiBi as +slope j", "rescale unguarded", "masked block unguarded",
          "keys read to the end of the page", "keys read to the end of the tile", "mask before the softcap",
          "causal limit in unsigned arithmetic", "empty key length left unwritten", "split-KV lse of one split",
          "exp2 without log2(e)", "padding scores 0", "empty rows NaN", "kv head h % kv heads",
          "lse of the group's first head", "batch items at a padded offset")
#: The backward faults of `flash_backward`.
BACKWARD_FAULTS = ("", "tail keys unmasked in dS", "softcap derivative dropped", "delta from O at dO's stride",
                   "P dP in float16", "dv allocated like k")


def _f64(a):
    return np.asarray(a, np.float64)


def _valid(j, key_lengths, q_ndim, *, round_up=1):
    """Boolean ``(B, 1, ..., keys, 1)``: the keys ``j`` within each batch item's length rounded up to a
    multiple of ``round_up`` (the kernel's predicated loads: a key past it is read as 0)."""
    kl = per_item(key_lengths, q_ndim)
    kl = -(-kl // round_up) * round_up
    return j[:, None] < np.asarray(kl)[..., None, None] if q_ndim > 2 else j[:, None] < kl


def _allowed(i, j, T, S, *, causal, window_size, key_lengths, fault, q_ndim):
    """Boolean ``(..., rows, keys)``: which keys ``j`` each query row ``i`` (absolute indices) sees.
    Bottom-right alignment: query ``i`` sits at key position ``i + S - T``."""
    pos = i[:, None] + (0 if fault == "causal top-left" else S - T)  # (rows, 1)
    ok = np.ones((i.size, j.size), bool)
    left, right = window_size
    if fault == "window (-1, -1) read as a band" and (left, right) == (-1, -1):
        return np.zeros((i.size, j.size), bool)  # j >= i + 1 and j <= i - 1: no key
    if causal:
        right = 0
        if fault == "causal limit in unsigned arithmetic":  # (S - T + i) wraps to ~2^32 where it is negative
            pos = np.where(pos < 0, 2**32 + pos, pos)
    if causal or right >= 0:
        ok &= j[None, :] <= pos + right
    if left >= 0:
        ok &= j[None, :] >= pos - left
    if key_lengths is not None and fault != "padding scores 0":
        ok = ok & np.swapaxes(_valid(j, key_lengths, q_ndim), -1, -2)  # (B, 1, ..., 1, keys)
    return ok


def _logits(q_t, k_t, i, j, T, S, scale, softcap, alibi_slopes, fault, q_ndim):
    """The tile's logits ``(..., rows, keys)`` before masking: scale, cap, ALiBi."""
    s = (q_t @ np.swapaxes(k_t, -1, -2)) * scale
    if softcap:
        x = s / softcap
        s = x * np.tanh(x) if fault == "softcap as x tanh(x)" else softcap * np.tanh(x)
    if alibi_slopes is not None:
        slopes = np.asarray(per_head(_f64(alibi_slopes), q_ndim))[..., None, None]  # (N, 1, 1): per head
        dist = j[None, :] * -1.0 if fault == "ALiBi as +slope j" else np.abs(i[:, None] + S - T - j[None, :])
        s = s - slopes * dist
    return s


def _key_pass(q, k, v, i, starts, *, T, S, scale, causal, window_size, softcap, alibi_slopes, key_lengths,
              fault, store):
    """The online softmax of query rows ``i`` over the key tiles starting at ``starts``: the running
    max ``m``, sum ``l`` and unnormalised output ``acc`` (Milakov & Gimelshein 2018)."""
    lead = np.broadcast_shapes(q.shape[:-2], k.shape[:-2])
    m = np.full(lead + (i.size, 1), -np.inf)
    l = np.zeros(lead + (i.size, 1))
    acc = np.zeros(lead + (i.size, v.shape[-1]))
    for j0 in starts:
        j = np.arange(j0, min(S, j0 + BLOCK_N))
        k_t, v_t = k[..., j, :], v[..., j, :]
        if key_lengths is not None:
            up = {"keys read to the end of the page": PAGE, "keys read to the end of the tile": BLOCK_N}.get(fault, 1)
            loaded = _valid(j, key_lengths, q.ndim, round_up=up)
            k_t, v_t = np.where(loaded, k_t, 0.0), np.where(loaded, v_t, 0.0)
        s = _logits(q[..., i, :], k_t, i, j, T, S, scale, softcap, alibi_slopes, fault, q.ndim)
        ok = _allowed(i, j, T, S, causal=causal, window_size=window_size, key_lengths=key_lengths,
                      fault=fault, q_ndim=q.ndim)
        if fault == "mask before the softcap" and softcap:  # the mask value -5e4 then capped: -softcap
            s = np.where(ok, s, -softcap)
        elif fault == "padding scores 0" and key_lengths is not None:  # out-of-bounds lanes scored 0, not -inf
            s = np.where(ok, s, -np.inf)
            s = np.where(np.swapaxes(_valid(j, key_lengths, q.ndim), -1, -2), s, 0.0)
        else:
            s = np.where(ok, s, -np.inf)
        m_new = np.maximum(m, s.max(axis=-1, keepdims=True))
        ref = m_new if fault == "masked block unguarded" else np.where(np.isfinite(m_new), m_new, 0.0)
        with np.errstate(invalid="ignore"):
            p = np.exp2(s - ref) if fault == "exp2 without log2(e)" else np.exp(s - ref)
            alpha = np.exp(m - m_new) if fault == "rescale unguarded" else \
                np.where(np.isfinite(m), np.exp(m - ref), 0.0)
        pv = (p if store == "float64" else np.where(np.isnan(p), np.nan, _f64(round_to(np.nan_to_num(p), store)))) @ v_t
        l = alpha * l + p.sum(axis=-1, keepdims=True)
        acc = alpha * acc + pv
        m = m_new
    return m, l, acc


def _merge(parts, fault):
    """flash-attention's split-KV combine (``combine_attn_seqk_parallel``): ``lse_max = max_c lse_c``
    (0 where every split is empty), ``lse = log sum_c exp(lse_c - lse_max) + lse_max`` (+inf where
    every split is empty), ``O = sum_c exp(lse_c - lse) O_c``. Returns ``(out, lse)`` of the rows."""
    with np.errstate(divide="ignore", invalid="ignore"):
        lses = [np.where(lc > 0, mc + np.log(np.where(lc > 0, lc, 1.0)), -np.inf) for mc, lc, _ in parts]
        outs = [np.where(lc > 0, ac / np.where(lc > 0, lc, 1.0), 0.0) for _, lc, ac in parts]
        lse_max = np.maximum.reduce(lses)
        if fault != "split-KV lse_max unguarded":
            lse_max = np.where(lse_max == -np.inf, 0.0, lse_max)
        lse_sum = sum(np.exp(lc - lse_max) for lc in lses)
        lse = np.log(lse_sum) + lse_max
        if fault not in ("split-KV lse_logsum unguarded", "split-KV lse_max unguarded"):  # the later fix, 26d7d92f
            lse = np.where((lse_sum == 0) | np.isnan(lse_sum), np.inf, lse)
        out = sum(np.exp(lc - lse) * oc for lc, oc in zip(lses, outs))
    lse = np.where(lse == np.inf, -np.inf, lse)  # refattn's convention: -inf for a row that sees no key
    return out, (lses[-1] if fault == "split-KV lse of one split" else lse)


def flash_forward(q, k, v, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None, key_lengths=None,
                  return_lse=False, *, fault="", store="float64", splits=1):
    """Attention as a FlashAttention 2 forward kernel computes it, tile by tile, in float64.

    flash-attn's interface: ``q (..., T, H)``, ``k (..., S, H)``, ``v (..., S, Hv)`` (with a heads
    axis ``(B, N, ., .)``, ``k``, ``v`` may have ``N / g`` heads: grouped queries), bottom-right
    causal alignment, ``window_size=(left, right)`` (``-1``: unbounded), ``softcap`` (Gemma 2),
    ``alibi_slopes`` (one per head), ``key_lengths`` (one per batch item; keys past it are never
    read), ``return_lse`` (natural log; ``-inf`` for a row that sees no key, whose output is 0).
    ``fault``: one of `FAULTS` ("" is the correct kernel). ``store``: ``float16`` or ``bfloat16`` is
    a kernel that keeps the probabilities before the second product and its output in that format
    (FlashAttention 2), the statistics in float64; its output comes back as float32. ``splits``:
    the key tiles cut into that many splits, each normalised on its own and merged by their
    log-sum-exps (flash-decoding)."""
    if fault not in FAULTS:
        raise ValueError(f"fault: expected one of {FAULTS}, got {fault!r}")
    q, k, v = (_f64(a) for a in (q, k, v))
    g = 1
    if q.ndim == 4 and k.shape[1] != q.shape[1]:  # grouped queries: query head h reads key/value head h // g
        g = q.shape[1] // k.shape[1]
        heads = np.arange(q.shape[1]) % k.shape[1] if fault == "kv head h % kv heads" else np.arange(q.shape[1]) // g
        k, v = k[:, heads], v[:, heads]
    if fault == "batch items at a padded offset" and q.ndim > 2:  # item b's rows read from b * T_pad of the packed rows
        T_pad = -(-q.shape[-2] // 8) * 8
        flat = q.reshape(-1, q.shape[-1])
        n = flat.shape[0] // q.shape[-2]
        rows = np.minimum(np.arange(n)[:, None] * T_pad + np.arange(q.shape[-2]), flat.shape[0] - 1)
        q = flat[rows].reshape(q.shape)
    T, S, H = q.shape[-2], k.shape[-2], q.shape[-1]
    scale = H ** -0.5
    lead = np.broadcast_shapes(q.shape[:-2], k.shape[:-2])
    out = np.zeros(lead + (T, v.shape[-1]))
    lse = np.full(lead + (T,), -np.inf)
    if S == 0 and fault == "no keys: output left unwritten":
        out[...] = np.nan  # torch.empty: whatever the memory held
    starts = np.arange(0, S, BLOCK_N)
    tiles = np.array_split(starts, max(1, min(splits, starts.size)))
    opts = dict(T=T, S=S, scale=scale, causal=causal, window_size=window_size, softcap=softcap,
                alibi_slopes=alibi_slopes, key_lengths=key_lengths, fault=fault, store=store)
    for i0 in range(0, T if S else 0, BLOCK_M):
        i = np.arange(i0, min(T, i0 + BLOCK_M))
        if fault == "causal key blocks bounded top-left" and causal:  # key blocks up to (m_block + 1) * BLOCK_M
            bounded = [t[t < i0 + BLOCK_M] for t in tiles]
            parts = [_key_pass(q, k, v, i, t, **opts) for t in bounded]
        else:
            parts = [_key_pass(q, k, v, i, t, **opts) for t in tiles]
        if len(parts) > 1:
            rows_out, rows_lse = _merge(parts, fault)
        else:
            m, l, acc = parts[0]
            with np.errstate(invalid="ignore", divide="ignore"):
                rows_out = acc / l if fault == "empty rows NaN" else np.where(l > 0, acc / np.where(l > 0, l, 1.0), 0.0)
            rows_lse = np.where(l > 0, m + np.log(np.where(l > 0, l, 1.0)), -np.inf)
        out[..., i, :] = rows_out
        lse[..., i] = rows_lse[..., 0]
    if key_lengths is not None and fault == "empty key length left unwritten":
        empty = np.broadcast_to(per_item(key_lengths, q.ndim) == 0, lead)
        out[empty] = np.nan
    if fault == "lse of the group's first head" and g > 1:  # heads folded into rows: one lse per group written
        lse = np.repeat(lse[:, ::g], g, axis=1)
    if store != "float64":  # NaN (a fault's) stays NaN
        out = np.where(np.isnan(out), np.nan, round_to(np.nan_to_num(out), store)).astype(np.float32)
    return (out, lse) if return_lse else out


def split_forward(q, k, v, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None, key_lengths=None,
                  return_lse=False, num_splits=1, *, fault="", store="float64"):
    """`flash_forward` with flash-attn's ``num_splits`` keyword (``flash_attn_with_kvcache``): the key tiles
    cut into that many splits and merged (``num_splits=1``: no split)."""
    return flash_forward(q, k, v, causal, window_size, softcap, alibi_slopes, key_lengths, return_lse, fault=fault,
                         store=store, splits=num_splits)


def flash_backward(q, k, v, dout, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                   key_lengths=None, *, fault=""):
    """``(dq, dk, dv)`` as a FlashAttention 2 backward computes them (Dao 2023, Algorithm 2), from
    the forward's log-sum-exp, key tile by key tile, in float64: ``P = exp(s - lse)``,
    ``dS = P (dP - rowsum(dO * O))``, through the cap ``1 - tanh^2``, ``dq = scale dS K``,
    ``dk = scale dS^T Q``, ``dv = P^T dO`` (with grouped queries, ``dk``, ``dv`` summed over the
    query heads of each key/value head). Interface as [`flash_forward`][refattn.check.bugs.flash_forward];
    ``fault``: one of `BACKWARD_FAULTS`."""
    if fault not in BACKWARD_FAULTS:
        raise ValueError(f"fault: expected one of {BACKWARD_FAULTS}, got {fault!r}")
    q, k, v, dout = (_f64(a) for a in (q, k, v, dout))
    group = 1
    if q.ndim == 4 and k.shape[1] != q.shape[1]:
        group = q.shape[1] // k.shape[1]
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    T, S, H = q.shape[-2], k.shape[-2], q.shape[-1]
    scale = H ** -0.5
    o, lse = flash_forward(q, k, v, causal, window_size, softcap, alibi_slopes, key_lengths, return_lse=True)
    if fault == "delta from O at dO's stride":  # O's rows addressed with dO's row stride (twice O's)
        o = o[..., np.minimum(2 * np.arange(T), T - 1), :]
    delta = np.sum(dout * o, axis=-1, keepdims=True)  # (..., T, 1)
    i = np.arange(T)
    lse_ = np.where(np.isfinite(lse), lse, np.inf)[..., None]  # a row that sees no key: P = 0
    lead = np.broadcast_shapes(q.shape[:-2], k.shape[:-2])
    dq = np.zeros(lead + (T, H))
    dk, dv = np.zeros(lead + (S, H)), np.zeros(lead + (S, v.shape[-1]))
    for j0 in range(0, S, BLOCK_N):
        j = np.arange(j0, min(S, j0 + BLOCK_N))
        k_t, v_t = k[..., j, :], v[..., j, :]
        if key_lengths is not None:
            loaded = _valid(j, key_lengths, q.ndim)
            k_t, v_t = np.where(loaded, k_t, 0.0), np.where(loaded, v_t, 0.0)
        raw = (q @ np.swapaxes(k_t, -1, -2)) * scale
        s = _logits(q, k_t, i, j, T, S, scale, softcap, alibi_slopes, "", q.ndim)
        ok = _allowed(i, j, T, S, causal=causal, window_size=window_size, key_lengths=key_lengths, fault="",
                      q_ndim=q.ndim)
        p = np.where(ok, np.exp(np.where(ok, s, 0.0) - lse_), 0.0)
        dp = dout @ np.swapaxes(v_t, -1, -2)
        ds = p * (dp - delta) if fault != "P dP in float16" else _f64(
            round_to(_f64(round_to(p, "float16")) * _f64(round_to(dp - delta, "float16")), "float16"))
        if softcap and fault != "softcap derivative dropped":
            ds = ds * (1 - np.tanh(raw / softcap) ** 2)
        k_dq = k_t
        if fault == "tail keys unmasked in dS" and j.size < BLOCK_N:
            # the last tile's columns past S are not masked: their P = exp(s - lse) from stale shared
            # memory overflows in dS (float16), and Inf times the zero-filled K row is NaN in dq
            ds = np.concatenate([ds, np.full(ds.shape[:-1] + (BLOCK_N - j.size,), np.inf)], axis=-1)
            k_dq = np.concatenate([k_t, np.zeros(k_t.shape[:-2] + (BLOCK_N - j.size, H))], axis=-2)
        with np.errstate(invalid="ignore"):
            dq = dq + scale * ds @ k_dq
        dk[..., j, :] = scale * np.swapaxes(ds[..., :j.size], -1, -2) @ q
        dv[..., j, :] = np.swapaxes(p, -1, -2) @ dout
    if group > 1:
        fold = lambda g: g.reshape(g.shape[0], g.shape[1] // group, group, *g.shape[2:]).sum(axis=2)  # noqa: E731
        dk, dv = fold(dk), fold(dv)
    if fault == "dv allocated like k":  # dv = empty_like(k): k's shape, the values written into its first columns
        buf = np.zeros(dk.shape)
        w = min(dk.shape[-1], dv.shape[-1])
        buf[..., :w] = dv[..., :w]
        dv = buf
    return dq, dk, dv


@dataclass(frozen=True)
class Bug:
    """A reported bug reproduced: ``fn`` (the checker's contract), ``kind`` and ``options`` to check it
    with, ``fails`` (a check that must fail at the defaults), ``source`` (repository and commit, pull
    request or issue), ``what`` (what the kernel computed wrong, and the fix)."""

    fn: object
    kind: str
    options: dict = field(default_factory=dict)
    fails: str = ""
    source: str = ""
    what: str = ""
    #: the check that fails in a bfloat16 kernel when it is not ``fails`` (a small case the rounding hides)
    fails_bfloat16: str = ""


def _fwd(fault, **kw):
    return partial(flash_forward, fault=fault, **kw)


def _bwd(fault):
    return partial(flash_backward, fault=fault)


_GQA = {"layout": "BNTH", "gqa": True}
_FA, _FI, _XF, _PT, _VL = ("Dao-AILab/flash-attention", "flashinfer-ai/flashinfer", "facebookresearch/xformers",
                           "pytorch/pytorch", "vllm-project/vllm")

BUGS = {
    "causal mask top-left": Bug(
        _fwd("causal top-left"), "exact", {}, "causal T < S", f"{_FA} 9e5e8bc9 (v2.1)",
        "flash-attn 2.0 aligned the causal mask top-left (key j <= i); 2.1 changed it to bottom-right "
        "(j <= i + S - T): a kernel on the old convention is wrong whenever T != S"),
    "causal key blocks bounded top-left": Bug(
        _fwd("causal key blocks bounded top-left"), "exact", {}, "causal tiles 65 x 257", f"{_FA} #436 (e07aa036)",
        "after the switch to bottom-right, the loop over key blocks still stopped at (m_block + 1) * kBlockM: "
        "with S > T the rows lost keys past it; fix: add seqlen_k - seqlen_q to the bound"),
    "split-KV combine: lse_max guard a no-op": Bug(
        _fwd("split-KV lse_max unguarded", splits=3), "exact", {}, "causal tiles 257 x 129", f"{_FA} 31920dda",
        "`lse_max == lse_max == -INFINITY ? 0 : lse_max` compared instead of assigning: a row that sees no key "
        "in any split got exp(-inf - -inf) = NaN"),
    "split-KV combine: log of an empty sum": Bug(
        _fwd("split-KV lse_logsum unguarded", splits=3), "exact", {}, "causal tiles 257 x 129", f"{_FA} 26d7d92f",
        "with every split's lse -inf, lse_logsum = log(0) = -inf and the scales exp(lse_c - lse_logsum) NaN; "
        "fix: lse_logsum = +inf there"),
    "no keys: output left unwritten": Bug(
        _fwd("no keys: output left unwritten"), "exact", {}, "no keys (S = 0)", f"{_FA} db2f8069, #2470 (03cd0651)",
        "with seqlen_k = 0 the kernel returned before writing O (torch.empty: garbage); FA4 crashed; fix: O = 0, "
        "lse = -inf"),
    "softcap as x tanh(x)": Bug(
        _fwd("softcap as x tanh(x)"), "exact", {}, "softcap", f"{_FA} #2402 (14f3627d)",
        "the CuTe softcap score_mod returned (s/c) tanh(s/c) instead of c tanh(s/c)"),
    "window (-1, -1) read as a band": Bug(
        _fwd("window (-1, -1) read as a band"), "exact", {}, "window (-1, -1): none", f"{_FA} #2251 (5678dd90)",
        "the CuTe path took window_size = (-1, -1) (flash-attn's 'no window') as a band of width -1: every key "
        "masked, the output 0"),
    "ALiBi as +slope j": Bug(
        _fwd("ALiBi as +slope j"), "exact", {}, "ALiBi", f"{_FA} 5ab9b366",
        "the first ALiBi added slope * j for every row: right under causal (the row constant cancels), wrong "
        "without it, where the bias is -slope |i + S - T - j|"),
    "online softmax rescale of -inf - -inf": Bug(
        _fwd("rescale unguarded"), "exact", {}, "sliding window, 129 x 257", f"{_XF} 540fcbfd (fairinternal#564)",
        "the rescale exp(m_prime - mi) was taken unguarded: a row whose first key block is fully masked "
        "(a -inf bias prefix, a window) got exp(-inf - -inf) = NaN"),
    "a fully masked block gives NaN": Bug(
        _fwd("masked block unguarded"), "exact", {}, "sliding window, 129 x 257", f"{_XF} 63d7f30b (fairinternal#1185)",
        "split-K decoding: when an entire block is masked out m_i_new = -inf and p = exp(qk - m_i_new) NaN; "
        "fix: p = 0 there"),
    "keys read to the end of the page": Bug(
        _fwd("keys read to the end of the page"), "exact", {}, "key padding", f"{_FI} #942 (27906fdbf)",
        "the paged MLA load checked the page index, not the token: the last page was read whole, and NaN "
        "past kv_len reached P V as 0 * NaN"),
    "keys read to the end of the tile": Bug(
        _fwd("keys read to the end of the tile"), "exact", {}, "key padding past a tile, 64 x 193",
        f"{_VL} #37442 (and {_FA}#1974)",
        "MLA kernels read the KV cache in whole tiles: entries past seq_len from uninitialised pages, NaN "
        "through the softmax"),
    "mask before the softcap": Bug(
        _fwd("mask before the softcap"), "exact", {}, "causal softcap", f"{_FI} #350 (f5f7a2a23)",
        "the decode kernel set masked keys to -5e4 before the logits cap, which mapped them to -softcap: "
        "masked keys got weight; fix: cap, then mask", fails_bfloat16="causal softcap, 129 x 129"),
    "causal limit in unsigned arithmetic": Bug(
        _fwd("causal limit in unsigned arithmetic"), "exact", {}, "causal T > S", f"{_FI} #353 (7adc8cf01)",
        "kv_idx > kv_len + q_idx - qo_len in unsigned arithmetic wrapped when qo_len > kv_len + q_idx: rows "
        "that see no key saw every key"),
    "empty key length left unwritten": Bug(
        _fwd("empty key length left unwritten"), "exact", {}, "key padding, an empty batch item",
        f"{_FI} #440 (6ac28f4dd), #363 (ac72b1cc1)",
        "a request with kv_len = 0 got no KV chunk, so its output and lse were never written"),
    "split-KV lse of one split": Bug(
        _fwd("split-KV lse of one split", splits=3), "exact", {}, "log-sum-exp, 129 x 257", f"{_FI} #58 (ee3a7e822)",
        "the split batch-decode kernel returned the lse of its own split, not the merged state's"),
    "num_splits: combine guard a no-op": Bug(
        partial(split_forward, fault="split-KV lse_max unguarded"), "exact", {"num_splits": (1, 2, 3, 8)},
        "causal tiles 257 x 129", f"{_FA} 31920dda",
        "the combine's lse_max guard that compared instead of assigning, reached through num_splits: right at "
        "num_splits=1, NaN for the rows that see no key in any split at 2 or more"),
    "num_splits: lse of one split": Bug(
        partial(split_forward, fault="split-KV lse of one split"), "exact", {"num_splits": (1, 2, 3, 8)},
        "log-sum-exp, 129 x 257", f"{_FI} #58 (ee3a7e822)",
        "the lse of the kernel's last split returned instead of the merged one, reached through num_splits: right "
        "at num_splits=1 only"),
    "exp2 without log2(e)": Bug(
        _fwd("exp2 without log2(e)"), "exact", {}, "T != S", f"{_FI} #787 (23413e00a)",
        "the MLA decode kernel used exp2 with sm_scale not multiplied by log2(e): softmax of s ln 2"),
    "padding scores 0": Bug(
        _fwd("padding scores 0"), "exact", {}, "key padding", f"{_FI} #3717 (fixing #3716)",
        "the CuTe paged decode skipped the boundary mask when not causal: lanes past seq_len scored 0, not "
        "-inf, and entered the denominator (outputs scaled down)"),
    "fully masked rows NaN": Bug(
        _fwd("empty rows NaN"), "exact", {}, "causal T > S", f"{_PT} #131060, #133882 (reported in #41508)",
        "SDPA returned NaN for a query whose mask hides every key (softmax of all -inf); fix: _safe_softmax "
        "returns 0"),
    "kv head h % kv heads": Bug(
        _fwd("kv head h % kv heads"), "exact", _GQA, "T != S", f"{_FA} 9eb3d099",
        "GQA decode with seqlen_q and the groups swapped wrote a preallocated out untransposed: query head "
        "h took the result of kv head h % H_kv instead of h // g"),
    "lse of the group's first head": Bug(
        _fwd("lse of the group's first head"), "exact", _GQA, "log-sum-exp", f"{_XF} 41646dbb (fairinternal#850)",
        "the MQA trick (heads folded into query rows) wrote the logsumexp at the rows' indices: the output right, "
        "the lse (and so the backward) wrong for the other heads"),
    "batch items at a padded offset": Bug(
        _fwd("batch items at a padded offset"), "exact", {}, "batch dims (2, 3)", f"{_FI} #4382 (4fa40aeea)",
        "multi-token batch decode indexed Q/O by a padded request offset: the first request right, the others "
        "read another request's queries"),
    "backward: tail keys unmasked": Bug(
        _bwd("tail keys unmasked in dS"), "backward", {}, "T != S", f"{_FA} a4f148b6 (test_flash_attn_bwd_overflow)",
        "the backward did not mask keys past seqlen_k in the last block: dS overflowed to Inf in float16, and "
        "Inf times a zero K row is NaN in dQ"),
    "backward: softcap derivative dropped": Bug(
        _bwd("softcap derivative dropped"), "backward", {}, "softcap", f"{_FA} #2402 (14f3627d)",
        "the CuTe backward took no softcap: the factor 1 - tanh^2(s/c) missing from dS"),
    "backward: O read at dO's stride": Bug(
        _bwd("delta from O at dO's stride"), "backward", {}, "T != S", f"{_FA} 9ee0ff1d",
        "D = rowsum(dO * O) read O with dO's row stride: wrong D, wrong dQ and dK for a non-contiguous dout"),
    "backward: P dP in float16": Bug(
        _bwd("P dP in float16"), "backward", {}, "T != S", f"{_FA} a5559a0e",
        "dS = P * (dP - D) was formed in float16; fix: in float32"),
    "backward: dv allocated like k": Bug(
        _bwd("dv allocated like k"), "backward", {}, "T != S", f"{_FA} #818 (2423cca3)",
        "dv = empty_like(k): k's shape and strides where v's differ"),
}

#: The correct kernels (every check passes): the same code with no fault.
CORRECT_KERNELS = {
    "flash forward": Bug(flash_forward, "exact"),
    "flash forward, GQA": Bug(flash_forward, "exact", _GQA),
    "flash forward, 3 splits": Bug(partial(flash_forward, splits=3), "exact"),
    "flash forward, float16": Bug(partial(flash_forward, store="float16"), "exact", {"precision": "float16"}),
    "flash forward, bfloat16": Bug(partial(flash_forward, store="bfloat16"), "exact", {"precision": "bfloat16"}),
    "flash forward, bfloat16, 3 splits": Bug(partial(flash_forward, store="bfloat16", splits=3), "exact",
                                             {"precision": "bfloat16"}),
    "split forward, num_splits 1, 2, 3, 8": Bug(split_forward, "exact", {"num_splits": (1, 2, 3, 8)}),
    "flash backward": Bug(flash_backward, "backward"),
    "flash backward, GQA": Bug(flash_backward, "backward", _GQA),
}


def stored_in(bug: Bug, store: str) -> Bug:
    """``bug``'s forward kernel storing in ``store`` (``float16``, ``bfloat16``), checked at that claim:
    the precision the anchors' rules were written for."""
    if bug.kind != "exact":
        raise ValueError(f"bug: only the forward kernels store in a low precision, got a {bug.kind!r} bug")
    return Bug(partial(bug.fn, store=store), bug.kind, dict(bug.options, precision=store),
               bug.fails_bfloat16 or bug.fails, bug.source, bug.what)
