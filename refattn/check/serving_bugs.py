r"""Serving kernels as they are written, and their reported bugs: merges of split-KV states (``--kind
merge``), packed-batch attention (``--kind varlen``) and paged KV caches (``--kind paged``).

[`merge_kernel`][refattn.check.serving_bugs.merge_kernel] merges ``fn(outs, lses) -> (out, lse)`` in float32
(or float64) in one of the two orders the libraries use: ``"combine"``, flash-attn's split-KV
combine (``lse_max`` over every split, then ``lse = log sum exp(lse_c - lse_max) + lse_max`` and
``O = sum exp(lse_c - lse) O_c``), or ``"fold"``, a pairwise merge state by state as vLLM's
``merge_attn_states`` (prefix with suffix) and flashinfer's ``merge_state`` do. Its conventions
(``base``, ``empty``, ``layout``) are those of [`refattn.check.merge`][refattn.check.merge]; ``fault`` plants one
reported bug as the change it was. `CORRECT_MERGES` (every check passes) and `MERGE_BUGS` (each
fails the named check) measure the merge kind's false alarms and power.

[`varlen_kernel`][refattn.check.serving_bugs.varlen_kernel] is flash-attn's ``flash_attn_varlen_func``
in plain NumPy, with ``fault`` planting one of `VARLEN_FAULTS`; `CORRECT_VARLEN` and `VARLEN_BUGS`
do the same for the varlen kind, [`paged_kernel`][refattn.check.serving_bugs.paged_kernel] (flash-attn's
``flash_attn_with_kvcache`` with a block table, `PAGED_FAULTS`), `CORRECT_PAGED` and `PAGED_BUGS`
for the paged kind, and [`fp8_forward`][refattn.check.serving_bugs.fp8_forward] (FlashAttention 3's FP8
forward, `FP8_FAULTS`), `CORRECT_FP8` and `FP8_BUGS` for FP8 claims of the exact kind;
[`varlen_backward_kernel`][refattn.check.serving_bugs.varlen_backward_kernel], `CORRECT_VARLEN_BACKWARD` and
`VARLEN_BACKWARD_BUGS` for ``--kind varlen_backward``.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from refattn.check.bugs import Bug
from refattn.precision import largest, precision_of, round_to

__all__ = ["MERGE_FAULTS", "merge_kernel", "CORRECT_MERGES", "MERGE_BUGS", "VARLEN_FAULTS", "varlen_kernel",
           "CORRECT_VARLEN", "VARLEN_BUGS", "PAGED_FAULTS", "paged_kernel", "CORRECT_PAGED", "PAGED_BUGS",
           "FP8_FAULTS", "fp8_forward", "fp8_without_descales", "CORRECT_FP8", "FP8_BUGS", "VARLEN_BACKWARD_FAULTS",
           "varlen_backward_kernel", "CORRECT_VARLEN_BACKWARD", "VARLEN_BACKWARD_BUGS"]

MERGE_FAULTS = ("", "lse_max unguarded", "exp(lse) without the max", "lse strides of the other layout",
                "+inf read as a value", "lse read in the other base", "lse as the max")


def _pair(o_a, l_a, o_b, l_b, ex, lg, dt, guarded):
    """One pairwise merge (vLLM's ``merge_attn_states``): ``(o, l)`` of two states, in ``dt``."""
    top = np.maximum(l_a, l_b)
    ref = np.where(top == -np.inf, dt.type(0), top) if guarded else top
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        p, s = ex(l_a - ref).astype(dt), ex(l_b - ref).astype(dt)
        tot = (p + s).astype(dt)
        safe = np.where(tot > 0, tot, dt.type(1)) if guarded else tot
        o = (o_a * (p / safe)[..., None] + o_b * (s / safe)[..., None]).astype(dt)
        l = np.where(tot > 0, ref + lg(safe), dt.type(-np.inf)) if guarded else (ref + lg(tot)).astype(dt)
    return o, l.astype(dt)


def merge_kernel(outs, lses, *, base="e", empty="-inf", layout="NT", order="combine", dtype="float32", fault=""):
    """Merge ``outs (P, T, N, D)`` with ``lses (P, N, T)`` (``layout="NT"``) or ``(P, T, N)`` into
    ``(out (T, N, D), lse)`` (module docstring). ``fault``: one of `MERGE_FAULTS` (``""``: correct)."""
    if fault not in MERGE_FAULTS:
        raise ValueError(f"fault: expected one of {MERGE_FAULTS}, got {fault!r}")
    dt = np.dtype(dtype)
    o = np.asarray(outs, dt)
    P, T, N = o.shape[:3]
    g = np.asarray(lses, dt)
    if fault == "lse strides of the other layout":  # the other layout's strides on the same memory
        l = g.reshape(P, T, N) if layout == "NT" else g.reshape(P, N, T).swapaxes(1, 2)
    else:
        l = g.swapaxes(1, 2) if layout == "NT" else g  # (P, T, N)
    if fault != "+inf read as a value":
        l = np.where(np.isinf(l), dt.type(-np.inf), l)  # an infinite lse is an empty state (vLLM's reading)
    two = (base == "2") != (fault == "lse read in the other base")
    ex, lg = (np.exp2, np.log2) if two else (np.exp, np.log)
    guarded = fault != "lse_max unguarded"
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if order == "fold":
            out, lse = o[0], l[0]
            for c in range(1, P):
                out, lse = _pair(out, lse, o[c], l[c], ex, lg, dt, guarded)
        else:  # flash-attn's combine
            top = np.max(l, axis=0)
            ref = np.where(top == -np.inf, dt.type(0), top) if guarded else top
            if fault == "exp(lse) without the max":
                ref = np.zeros_like(top)
            total = np.sum(ex(l - ref), axis=0, dtype=dt)
            lse = (lg(total) + ref).astype(dt)
            if guarded:
                lse = np.where(total > 0, lse, dt.type(np.inf))  # flash-attn's combine: +inf where every split is empty
            w = ex(l - np.where(np.isinf(lse), dt.type(0), lse)).astype(dt) if guarded else ex(l - lse).astype(dt)
            out = np.sum(w[..., None] * o, axis=0, dtype=dt)
            if fault == "lse as the max":
                lse = top
        lse = np.where(np.isinf(lse), dt.type(np.inf if empty == "+inf" else -np.inf), lse) if guarded else lse
    lse = lse.astype(dt)
    return out.astype(dt), np.ascontiguousarray(lse.swapaxes(0, 1) if layout == "NT" else lse)


_VL, _FA, _FI = "vllm-project/vllm", "Dao-AILab/flash-attention", "flashinfer-ai/flashinfer"

#: Correct merges: the two orders, both conventions, both layouts, float64.
CORRECT_MERGES = {
    "merge: flash-attn's combine": Bug(merge_kernel, "merge"),
    "merge: pairwise fold, +inf empty (vLLM)": Bug(partial(merge_kernel, order="fold", empty="+inf"), "merge",
                                                   {"empty_lse": "+inf"}),
    "merge: base 2, (T, N) lses (flashinfer)": Bug(partial(merge_kernel, order="fold", base="2", layout="TN"),
                                                   "merge", {"lse_base": "2", "lse_layout": "TN"}),
    "merge: float64": Bug(partial(merge_kernel, dtype="float64"), "merge", {"precision": "float64"}),
}


def _m(fault, **kw):
    return partial(merge_kernel, fault=fault, **kw)


#: Reported merge bugs, each as the change it was.
MERGE_BUGS = {
    "merge: lse_max guard a no-op": Bug(
        _m("lse_max unguarded"), "merge", {}, "rows with no key in any state", f"{_FA} 31920dda",
        "`lse_max == lse_max == -INFINITY ? 0 : lse_max` compared instead of assigning: a row whose every split is "
        "empty got exp(-inf - -inf) = NaN"),
    "merge: pairwise merge without a guard": Bug(
        _m("lse_max unguarded", order="fold"), "merge", {}, "rows with no key in any state",
        f"{_VL} csrc/attention/merge_attn_states.cu",
        "max_lse = fmaxf(p_lse, s_lse) and p_lse - max_lse with both states empty: NaN; never reached where the "
        "suffix always holds the token itself, reached by any caller whose two states can both be empty"),
    "merge: exp(lse) without the max": Bug(
        _m("exp(lse) without the max"), "merge", {}, "lses near +200", f"{_FA} flash_fwd_splitkv_combine",
        "the combine's scales exp(lse_c) without subtracting lse_max overflow float32 beyond lse 88.7 "
        "(the kernel subtracts it: the planted change removes the subtraction)"),
    "merge: hard-coded lse strides": Bug(
        _m("lse strides of the other layout"), "merge", {}, "2 states", f"{_FA} #2388",
        "the softmax_lse strides were hard-coded for one layout: a kernel given (N, T) lses read them as (T, N)"),
    "merge: +inf of an empty split read as a value": Bug(
        _m("+inf read as a value", order="fold", empty="+inf"), "merge", {"empty_lse": "+inf"}, "an empty split",
        f"{_VL} merge_attn_states (flash-attn 2 returns +inf for an empty row)",
        "flash-attn 2 writes lse = +inf where a split saw no key and flash-attn 3 -inf; a merge that takes the "
        "+inf as a real lse makes it the max and every weight NaN; the fix reads an infinite lse as empty"),
    "merge: base-2 lse read as natural": Bug(
        _m("lse read in the other base", base="2", layout="TN"), "merge", {"lse_base": "2", "lse_layout": "TN"},
        "2 states", f"{_FI} merge_state (lse in base 2)",
        "flashinfer's states keep m + log2(d): a merge that takes them as natural logs weighs the states by "
        "e^(lse2) instead of 2^(lse2)"),
    "merge: lse of the merge as the states' max": Bug(
        _m("lse as the max"), "merge", {}, "2 states", f"{_FA} flash_fwd_splitkv_combine",
        "the merged lse written as lse_max instead of log sum exp(lse_c - lse_max) + lse_max: the output right, "
        "the lse (read by the backward and by the next merge) wrong"),
}


# --- packed (varlen) batches ----------------------------------------------------------------
VARLEN_FAULTS = ("", "causal top-left per sequence", "no block-diagonal mask", "seqused_k ignored",
                 "padding weighted by zero")


def _sequence_attention(qs, ks, vs, used, *, causal, window_size, top_left=False):
    """One sequence as a kernel computes it: ``qs (H, T, D)`` against the ``read`` keys it loaded,
    ``ks, vs (H, read, .)``, of which the first ``used`` are its keys (the rest weighted by zero: NaN
    there comes through); causal bottom-right on ``used`` (``top_left``: on the first key), ``window_size
    = (left, right)`` (-1 unbounded); float64, the softmax scale ``1/sqrt(D)``."""
    T, read = qs.shape[1], ks.shape[1]
    with np.errstate(invalid="ignore"):
        logits = (qs @ np.swapaxes(ks, 1, 2)) * qs.shape[2] ** -0.5  # (H, T, read)
    i, j = np.arange(T)[:, None], np.arange(read)[None, :]
    allowed = j < used
    off = 0 if top_left else used - T
    left, right = window_size
    if causal:
        right = 0
    if right >= 0:
        allowed = allowed & (j <= i + off + right)
    if left >= 0:
        allowed = allowed & (j >= i + off - left)
    logits = np.where(allowed, logits, -np.inf)
    top = np.max(logits, axis=-1, keepdims=True, initial=-np.inf)
    p = np.exp(logits - np.where(np.isfinite(top), top, 0.0))
    den = p.sum(axis=-1, keepdims=True)
    p = np.where(den > 0, p / np.where(den > 0, den, 1.0), 0.0)
    with np.errstate(invalid="ignore"):
        return p @ vs


def varlen_kernel(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=False,
                  window_size=(-1, -1), seqused_k=None, *, fault=""):
    """flash-attn's ``flash_attn_varlen_func`` in plain NumPy: each sequence's queries against its keys (the
    first ``seqused_k[b]`` of its slot), causal bottom-right within the sequence, ``window_size=(left,
    right)`` (-1 unbounded), grouped heads ``h // (Hq / Hk)``; float64 inside, the output in ``q``'s
    dtype. ``fault``: one of `VARLEN_FAULTS` (``""``: correct)."""
    if fault not in VARLEN_FAULTS:
        raise ValueError(f"fault: expected one of {VARLEN_FAULTS}, got {fault!r}")
    dtype = np.asarray(q).dtype
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    g = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    cq, ck = np.asarray(cu_seqlens_q), np.asarray(cu_seqlens_k)
    out = np.zeros(q.shape[:2] + (v.shape[2],))
    for b in range(cq.size - 1):
        r0, r1 = int(cq[b]), int(cq[b + 1])
        k0, k1 = int(ck[b]), int(ck[b + 1])
        if fault == "no block-diagonal mask":
            k0, k1 = 0, int(ck[-1])
        used = k1 - k0 if seqused_k is None or fault in ("seqused_k ignored", "no block-diagonal mask") \
            else int(seqused_k[b])
        read = k1 - k0 if fault == "padding weighted by zero" else used  # keys loaded
        if r1 == r0:
            continue
        qs, ks, vs = (np.swapaxes(a, 0, 1) for a in (q[r0:r1], k[k0:k0 + read], v[k0:k0 + read]))
        o = _sequence_attention(qs, ks, vs, used, causal=causal, window_size=window_size,
                                top_left=fault == "causal top-left per sequence")
        out[r0:r1] = np.swapaxes(o, 0, 1)
    return out.astype(dtype)


def _v(fault):
    return partial(varlen_kernel, fault=fault)


#: A correct packed-batch kernel in float64, float32 and bfloat16, with grouped heads.
CORRECT_VARLEN = {
    "varlen: float64": Bug(varlen_kernel, "varlen"),
    "varlen: float32, grouped heads": Bug(varlen_kernel, "varlen", {"precision": "float32", "gqa": True}),
    "varlen: bfloat16": Bug(varlen_kernel, "varlen", {"precision": "bfloat16"}),
}

VARLEN_BUGS = {
    "varlen: causal top-left within each sequence": Bug(
        _v("causal top-left per sequence"), "varlen", {}, "causal, T < S and T > S per sequence",
        f"{_FA} 9e5e8bc9 (v2.1)",
        "flash-attn 2.0 aligned the causal mask top-left in each sequence; 2.1 changed it to bottom-right: wrong "
        "in every sequence with T != S"),
    "varlen: no block-diagonal mask": Bug(
        _v("no block-diagonal mask"), "varlen", {}, "3 sequences, T = S", "planted: a packed batch as one sequence",
        "every query attends to the keys of the whole packed batch (the cu_seqlens_k offsets ignored)"),
    "varlen: seqused_k ignored": Bug(
        _v("seqused_k ignored"), "varlen", {}, "seqused_k: padded key slots", "planted: seqused_k not read",
        "each sequence attends to its whole key slot, padding included"),
    "varlen: padding loaded and weighted by zero": Bug(
        _v("padding weighted by zero"), "varlen", {}, "seqused_k: padded key slots",
        "planted: masked by weights, not by loads",
        "the slot's padding is loaded and multiplied by zero weights: 0 x NaN = NaN where the padding holds NaN "
        "(a kernel must predicate its loads, not its weights)"),
}


# --- paged KV caches ------------------------------------------------------------------------
PAGED_FAULTS = ("", "last page read whole", "one page past the need", "causal top-left on the cache",
                "appended tokens not attended")


def paged_kernel(q, k_cache, v_cache, k=None, v=None, *, cache_seqlens, block_table, causal=False,
                 window_size=(-1, -1), layout="NHD", fault=""):
    """flash-attn's ``flash_attn_with_kvcache`` with a ``block_table``, in plain NumPy: ``q (B, T, Hq, D)``
    against the first ``cache_seqlens[b]`` slots of batch item ``b``'s pages (``k_cache (pages, page_size,
    Hk, D)``, or ``(pages, Hk, page_size, D)`` with ``layout="HND"``); ``k, v (B, new, Hk, .)`` are
    appended after them (written into the pages) and attended; the slots past the length are never
    loaded; causal bottom-right on the length. ``fault``: one of `PAGED_FAULTS`."""
    if fault not in PAGED_FAULTS:
        raise ValueError(f"fault: expected one of {PAGED_FAULTS}, got {fault!r}")
    dtype = np.asarray(q).dtype
    q = np.asarray(q, np.float64)
    kc, vc = (np.array(c, np.float64) if layout == "NHD" else np.swapaxes(np.asarray(c, np.float64), 1, 2).copy()
              for c in (k_cache, v_cache))  # (pages, page_size, Hk, .), a copy the appended tokens are written into
    P, g = kc.shape[1], q.shape[2] // kc.shape[2]
    table, lens = np.asarray(block_table), np.asarray(cache_seqlens)
    out = np.zeros(q.shape[:3] + (vc.shape[3],))
    for b in range(q.shape[0]):
        length = int(lens[b])
        if k is not None:
            for t in range(np.shape(k)[1]):  # append: slot length + t
                page, slot = table[b, (length + t) // P], (length + t) % P
                kc[page, slot], vc[page, slot] = k[b, t], v[b, t]
            if fault != "appended tokens not attended":
                length += np.shape(k)[1]
        need = length // P + 1 if fault == "one page past the need" else -(-length // P)
        pages = table[b, :need] if need <= table.shape[1] else table[b, np.arange(need)]  # IndexError past it
        used = need * P if fault == "last page read whole" else length
        read = need * P if fault == "one page past the need" else used  # the slots loaded (predicated: the used)
        ks, vs = (np.repeat(np.swapaxes(c[pages].reshape(need * P, *c.shape[2:])[:read], 0, 1), g, axis=0)
                  for c in (kc, vc))
        o = _sequence_attention(np.swapaxes(q[b], 0, 1), ks, vs, used, causal=causal, window_size=window_size,
                                top_left=fault == "causal top-left on the cache")
        out[b] = np.swapaxes(o, 0, 1)
    return out.astype(dtype)


def _p(fault):
    return partial(paged_kernel, fault=fault)


#: A correct paged kernel in float64 (NHD), bfloat16 with grouped heads, and float32 in the HND layout.
CORRECT_PAGED = {
    "paged: float64": Bug(paged_kernel, "paged"),
    "paged: bfloat16, grouped heads": Bug(paged_kernel, "paged", {"precision": "bfloat16", "gqa": True}),
    "paged: float32, HND pages": Bug(partial(paged_kernel, layout="HND"), "paged",
                                     {"precision": "float32", "kv_layout": "HND"}),
}

PAGED_BUGS = {
    "paged: the last page read whole": Bug(
        _p("last page read whole"), "paged", {}, "pages of 5 (dividing no length)",
        "flashinfer #3717 (paged decode boundary mask)",
        "the mask at the last page's boundary: the slots of the last page past cache_seqlens attended"),
    "paged: one page past the need": Bug(
        _p("one page past the need"), "paged", {}, "a block table just as wide as the longest item needs",
        "flash-attention #2711 (paged KV block-table out of bounds)",
        "the pages counted as length // page_size + 1: an item whose keys fill their last page reads one "
        "block-table entry past its need (out of the table, or a page it does not own)"),
    "paged: causal top-left on the cache": Bug(
        _p("causal top-left on the cache"), "paged", {}, "prefill on a cache: 9 queries, causal",
        "planted: chunked prefill aligned at the cache's start",
        "the queries' causal diagonal aligned on the first cached key instead of the last (bottom-right)"),
    "paged: appended tokens not attended": Bug(
        _p("appended tokens not attended"), "paged", {}, "3 appended tokens per item, causal",
        "planted: k, v written but cache_seqlens not advanced",
        "the new tokens are written into the pages but the attention runs over the old length"),
}


# --- FP8 attention ----------------------------------------------------------------------------
FP8_FAULTS = ("", "P cast without its scale", "P scaled past the format", "k_descale ignored",
              "descales read at the query head")


def fp8_forward(q, k, v, causal=False, q_descale=None, k_descale=None, v_descale=None, *, p_scale=256.0, fault=""):
    """FlashAttention 3's FP8 forward in plain NumPy: ``q, k, v`` FP8 codes (``ml_dtypes`` arrays) with
    per-tensor descale factors (the value is ``code * descale``; None: 1), the logits and the softmax in
    float32, ``P`` scaled by ``p_scale`` and cast to the inputs' FP8 format before the second product
    (in float32), the output divided by ``p_scale``, multiplied by ``v_descale`` and written in bfloat16
    (returned as float32 values, as NumPy has no bfloat16). Causal bottom-right.
    ``fault``: one of `FP8_FAULTS` (``"P scaled past the format"``: ``p_scale`` 1024 with a saturating
    cast, flash-attention #2717's e4m3 saturation)."""
    if fault not in FP8_FAULTS:
        raise ValueError(f"fault: expected one of {FP8_FAULTS}, got {fault!r}")
    fmt = precision_of(np.asarray(q), "q")
    qf, kf, vf = (np.asarray(a, np.float32) for a in (q, k, v))
    if qf.ndim == 4 and kf.shape[1] != qf.shape[1]:  # (B, N, T, H) with grouped key/value heads
        kf, vf = (np.repeat(a, qf.shape[1] // a.shape[1], axis=1) for a in (kf, vf))

    def per_head(d):  # a (B, kv_heads) descale at each query head h: kv head h // group (the fault: h % kv_heads)
        d = np.float32(1.0) if d is None else np.asarray(d, np.float32)
        if d.ndim != 2:
            return d
        n = qf.shape[1]
        at = np.arange(n) % d.shape[1] if fault == "descales read at the query head" else np.arange(n) // (n // d.shape[1])
        return d[:, at][..., None, None]

    dq, dk, dv = (per_head(d) for d in (q_descale, k_descale, v_descale))
    if fault == "k_descale ignored":
        dk = np.float32(1.0)
    logits = (qf @ np.swapaxes(kf, -1, -2)) * (dq * dk / np.float32(np.sqrt(q.shape[-1])))  # (..., T, S)
    T, S = logits.shape[-2:]
    if causal:
        logits = np.where(np.arange(S)[None, :] <= np.arange(T)[:, None] + S - T, logits, np.float32(-np.inf))
    top = np.max(logits, axis=-1, keepdims=True, initial=-np.inf)
    e = np.exp(logits - np.where(np.isfinite(top), top, np.float32(0)))
    den = e.sum(axis=-1, keepdims=True)
    p = np.where(den > 0, e / np.where(den > 0, den, 1), np.float32(0)).astype(np.float32)
    scale = np.float32({"P cast without its scale": 1.0, "P scaled past the format": 1024.0}.get(fault, p_scale))
    x = p * scale
    if fault == "P scaled past the format":
        x = np.minimum(x, np.float32(largest(fmt)))  # a saturating cast
    p8 = round_to(x, fmt, "P").astype(np.float32)
    out = (p8 @ vf) / scale * dv
    return round_to(out, "bfloat16", "out").astype(np.float32)


def fp8_without_descales(q, k, v, causal=False):
    """`fp8_forward` for codes that are the values (a kernel that takes no descale factors)."""
    return fp8_forward(q, k, v, causal)


def _8(fault):
    return partial(fp8_forward, fault=fault)


#: FlashAttention 3's FP8 forward, e4m3 and e5m2, with and without descale factors.
CORRECT_FP8 = {
    "fp8: e4m3 with descales": Bug(fp8_forward, "exact", {"precision": "float8_e4m3fn"}),
    "fp8: e5m2 with descales": Bug(fp8_forward, "exact", {"precision": "float8_e5m2"}),
    "fp8: e4m3, no descales": Bug(fp8_without_descales, "exact", {"precision": "float8_e4m3fn"}),
    "fp8: e4m3, (B, kv_heads) descales, grouped heads": Bug(fp8_forward, "exact", {"precision": "float8_e4m3fn",
                                                                                    "layout": "BNTH", "gqa": True}),
}

FP8_BUGS = {
    "fp8: P saturated past the format": Bug(
        _8("P scaled past the format"), "exact", {"precision": "float8_e4m3fn"}, "logits far apart",
        "flash-attention #2717 (FP8 e4m3 P saturation)",
        "P scaled by 1024 before a saturating e4m3 cast: every probability above 448 / 1024 is clipped, so a "
        "peaked row loses most of its weight"),
    "fp8: k_descale ignored": Bug(
        _8("k_descale ignored"), "exact", {"precision": "float8_e4m3fn"}, "T != S",
        "planted: one descale factor dropped", "the logits computed from q's and k's codes with q's descale only"),
    "fp8: descales read at the query head": Bug(
        _8("descales read at the query head"), "exact", {"precision": "float8_e4m3fn", "layout": "BNTH", "gqa": True},
        "T != S", "planted: (B, kv_heads) descales indexed by the query head",
        "query head h reads the descales of key/value head h % kv_heads instead of h // group"),
}


# --- packed (varlen) backward ------------------------------------------------------------------
VARLEN_BACKWARD_FAULTS = ("", "causal top-left per sequence", "dk, dv of one query head per group")


def varlen_backward_kernel(q, k, v, dout, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=False,
                           window_size=(-1, -1), seqused_k=None, *, fault=""):
    """The backward of `varlen_kernel` (FlashAttention 2's, Dao 2023, Algorithm 2, per sequence):
    ``(dq, dk, dv)`` in the packed shapes, ``dk``, ``dv`` of a grouped key/value head summed over the
    query heads that read it, 0 for the slots past ``seqused_k``; computed in ``q``'s dtype (float32
    or float64). ``fault``: one of `VARLEN_BACKWARD_FAULTS`."""
    if fault not in VARLEN_BACKWARD_FAULTS:
        raise ValueError(f"fault: expected one of {VARLEN_BACKWARD_FAULTS}, got {fault!r}")
    dt = np.asarray(q).dtype.type
    q, k, v, dout = (np.asarray(a, dt) for a in (q, k, v, dout))
    hk, g = k.shape[1], q.shape[1] // k.shape[1]
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    cq, ck = np.asarray(cu_seqlens_q), np.asarray(cu_seqlens_k)
    for b in range(cq.size - 1):
        r0, r1, k0 = int(cq[b]), int(cq[b + 1]), int(ck[b])
        used = int(ck[b + 1]) - k0 if seqused_k is None else int(seqused_k[b])
        if r1 == r0 or used == 0:
            continue
        qs, ks, vs, do = (np.swapaxes(a, 0, 1) for a in (q[r0:r1], k[k0:k0 + used], v[k0:k0 + used], dout[r0:r1]))
        ks, vs = np.repeat(ks, g, axis=0), np.repeat(vs, g, axis=0)  # (Hq, S, .)
        s = dt(qs.shape[2] ** -0.5)
        T = r1 - r0
        i, j = np.arange(T)[:, None], np.arange(used)[None, :]
        off = 0 if fault == "causal top-left per sequence" else used - T
        left, right = window_size
        right = 0 if causal else right
        allowed = np.ones((T, used), bool)
        if right >= 0:
            allowed &= j <= i + off + right
        if left >= 0:
            allowed &= j >= i + off - left
        logits = np.where(allowed, (qs @ np.swapaxes(ks, 1, 2)) * s, -np.inf)
        top = np.max(logits, axis=-1, keepdims=True, initial=-np.inf)
        e = np.exp(logits - np.where(np.isfinite(top), top, 0))
        den = e.sum(axis=-1, keepdims=True)
        p = np.where(den > 0, e / np.where(den > 0, den, 1), 0).astype(dt)
        o = p @ vs
        ds = p * (do @ np.swapaxes(vs, 1, 2) - np.sum(do * o, axis=-1, keepdims=True))
        dq[r0:r1] = np.swapaxes(s * ds @ ks, 0, 1)
        for grad, acc in ((s * np.swapaxes(ds, 1, 2) @ qs, dk), (np.swapaxes(p, 1, 2) @ do, dv)):
            per_group = grad.reshape(hk, g, *grad.shape[1:])  # (Hk, group, S, .)
            acc[k0:k0 + used] = np.swapaxes(per_group[:, 0] if fault == "dk, dv of one query head per group"
                                            else per_group.sum(axis=1), 0, 1)
    return dq, dk, dv


def _vb(fault):
    return partial(varlen_backward_kernel, fault=fault)


#: A correct packed backward in float64 and float32, with grouped heads.
CORRECT_VARLEN_BACKWARD = {
    "varlen backward: float64": Bug(varlen_backward_kernel, "varlen_backward"),
    "varlen backward: float32, grouped heads": Bug(varlen_backward_kernel, "varlen_backward",
                                                   {"precision": "float32", "gqa": True}),
}

VARLEN_BACKWARD_BUGS = {
    "varlen backward: causal top-left within each sequence": Bug(
        _vb("causal top-left per sequence"), "varlen_backward", {}, "causal, T < S and T > S per sequence",
        f"{_FA} 9e5e8bc9 (v2.1)", "the backward's causal mask aligned top-left in each sequence"),
    "varlen backward: dk, dv of one query head per group": Bug(
        _vb("dk, dv of one query head per group"), "varlen_backward", {"gqa": True}, "3 sequences, T = S",
        "planted: grouped heads not summed",
        "dk, dv of a key/value head taken from the first query head that reads it instead of summed over its group"),
}
