r"""``--kind exact``: an exact attention ``fn(q, k, v) -> out`` (and ``causal=``, ``mask=`` when it
takes them), judged case by case against the float64 oracle by refattn's one tolerance rule
([`refattn.tolerance`][refattn.tolerance]: the FlashAttention rule or the rigorous rounding allowance of a correct
kernel of the claimed precision, whichever is larger).

The grid: ``T != S``; ``T = S``; ``H = 1`` with ``T = 1``; odd sizes; leading batch dims (skipped when the
callable does not take them); logits about 1000 apart (overflow without the max
subtraction); float32 and float16 inputs (judged at their precision); when ``fn`` takes
``causal=True``: ``T = S``, ``T < S`` and ``T > S`` (judged against the claimed alignment,
bottom-right by default, FlashAttention >= 2.1; rows that see no key are not judged,
conventions differ); when it takes ``mask=``: a boolean mask, True = may attend.

A failing case is diagnosed: its output is compared with the oracle run under the usual
faults (scale 1 or ``1/H`` instead of ``1/sqrt(H)``, the other causal alignment, the causal
diagonal shifted by one, the mask inverted, the softmax over the query axis), and a
non-finite output where the oracle is finite is reported as an overflow (missing max
subtraction). The verdict names the fault the output matches within the rule's bound.

**Precision claims** (``precision=``, ``--precision``): a kernel that computes in float32,
float16 or bfloat16 is judged at that precision. Every case then hands it inputs in the claimed
dtype (bfloat16 values in float32 arrays: NumPy has no bfloat16 that frameworks read) and the
rule's low-precision reference is what a kernel of that precision computes
([`refattn.precision.kernel_reference`][refattn.precision.kernel_reference]: float32 accumulation and softmax, probabilities
rounded before the second product). A float64 claim
that fails with errors at a lower precision's rounding level is diagnosed as such, naming the
flag.

Rows whose logits are far apart, outputs that cancel to about 0 and float64 claims (whose
low-precision reference is the oracle itself) are covered by the rule's rigorous allowance
([`refattn.tolerance.rounding_allowance`][refattn.tolerance.rounding_allowance], derived in the docs' testing page): a correct
kernel of the claimed precision never exceeds it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from refattn._validation import InputError
from refattn.check import repeatable
from refattn.check.verdict import Verdict
from refattn.exact import attention_probabilities, softmax_attention
from refattn.precision import (STORAGE_PRECISIONS, as_given, as_precision, eps, given_dtype, kernel_reference,
                               largest, round_to)
from refattn.problem import attention_problem, causal_mask, causal_offset
from refattn.tolerance import check_attention_output, compare

__all__ = ["check_exact", "CASES", "Case", "LAYOUTS", "oracle_kwargs", "per_head", "per_item"]


@dataclass(frozen=True)
class Case:
    """One problem of the grid; ``logit_std`` is the standard deviation of ``s q.k``."""

    name: str
    T: int
    S: int
    H: int
    Hv: int
    batch: tuple = ()
    dtype: type = np.float64
    causal: bool = False
    mask: bool = False
    logit_std: float = 2.0
    #: a flash-attn option the case exercises (run only when the callable takes its keyword)
    option: str = ""
    #: rows that see no key: a mask that hides every key from two queries (when fn takes mask=), or
    #: (with key_lengths) a first batch item of length 0
    empty: bool = False
    #: the head dim comes from the run's --head-dims (the tile and long cases)
    sized: bool = False
    #: the window of a ``window_size`` case (default: `WINDOW`, `TILE_WINDOW` for the tile cases)
    window: tuple = ()


CASES = (
    Case("T != S", 7, 13, 16, 8),
    Case("T = S", 8, 8, 16, 8),
    Case("H = 1, T = 1", 1, 5, 1, 3),
    Case("odd sizes", 17, 31, 3, 7),
    Case("batch dims (2, 3)", 5, 9, 8, 4, batch=(2, 3)),
    Case("logits far apart", 6, 10, 8, 5, logit_std=1000.0),
    Case("float32 inputs", 9, 11, 8, 8, dtype=np.float32),
    Case("float16 inputs", 9, 11, 8, 8, dtype=np.float16, logit_std=1.0),
    Case("causal T = S", 12, 12, 8, 4, causal=True),
    Case("causal T < S", 5, 11, 8, 4, causal=True),
    Case("causal T > S", 11, 5, 8, 4, causal=True),
    Case("mask", 7, 9, 8, 4, mask=True),
    Case("sliding window", 12, 12, 8, 4, option="window_size"),
    Case("window (-1, -1): none", 9, 11, 8, 4, option="window_size", window=(-1, -1)),
    Case("causal sliding window", 12, 12, 8, 4, causal=True, option="window_size"),
    Case("softcap", 9, 11, 8, 4, logit_std=8.0, option="softcap"),
    Case("causal softcap", 9, 11, 8, 4, logit_std=8.0, causal=True, option="softcap"),
    Case("ALiBi", 9, 11, 8, 4, option="alibi_slopes"),
    Case("additive bias", 9, 11, 8, 4, option="bias"),
    Case("key padding", 9, 11, 8, 4, option="key_lengths"),
    Case("key padding, an empty batch item", 9, 11, 8, 4, batch=(2,), option="key_lengths", empty=True),
    Case("no keys (S = 0)", 4, 0, 8, 4),
    Case("log-sum-exp", 9, 11, 8, 4, option="return_lse"),
    Case("attention sinks, per head", 9, 11, 8, 4, batch=(2, 3), option="sinks"),
    Case("fully masked rows", 7, 9, 8, 4, mask=True, empty=True),
)

#: Lengths that cross the tiles of fused kernels (64 and 128 rows or keys): one short of a multiple,
#: a multiple, one past it. The tile cases take their head dim from the run (``head_dims``).
TILE_CASES = (
    Case("tiles 65 x 129", 65, 129, 64, 64, sized=True),
    Case("tiles 128 x 128", 128, 128, 64, 64, sized=True),
    Case("tiles 127 x 257", 127, 257, 64, 64, logit_std=4.0, sized=True),
    Case("tiles 257 x 63", 257, 63, 64, 64, sized=True),
    Case("causal tiles 129 x 129", 129, 129, 64, 64, causal=True, sized=True),
    Case("causal tiles 65 x 257", 65, 257, 64, 64, causal=True, sized=True),
    Case("causal tiles 257 x 129", 257, 129, 64, 64, causal=True, sized=True),
    Case("key padding past a tile, 64 x 193", 64, 193, 64, 64, option="key_lengths", sized=True),
    Case("mask, 129 x 191", 129, 191, 64, 64, mask=True, sized=True),
    Case("sliding window, 129 x 257", 129, 257, 64, 64, option="window_size", sized=True),
    Case("causal sliding window, 257 x 257", 257, 257, 64, 64, causal=True, option="window_size", sized=True),
    # logits mostly below the cap: a masked key scored -softcap (not -inf) then weighs like a real one
    Case("causal softcap, 129 x 129", 129, 129, 64, 64, logit_std=2.0, causal=True, option="softcap", sized=True),
    Case("log-sum-exp, 129 x 257", 129, 257, 64, 64, logit_std=4.0, option="return_lse", sized=True),
    Case("causal attention sinks, 129 x 257", 129, 257, 64, 64, causal=True, option="sinks", sized=True),
    Case("logits far apart, 129 x 257", 129, 257, 64, 64, logit_std=1000.0, sized=True),
)
#: One long problem each way (the oracle's streaming kernel makes them cheap).
LONG_CASES = (
    Case("long 4096 x 4096", 4096, 4096, 64, 64, sized=True),
    Case("causal long 4097 x 4097", 4097, 4097, 64, 64, causal=True, sized=True),
)
#: Size presets: ``small`` (the cases above, T, S <= 31), ``tiles`` (the default: and the tile
#: cases, at every head dim asked for), ``long`` (and the long cases).
SIZES = ("small", "tiles", "long")
DEFAULT_SIZES = "tiles"
DEFAULT_HEAD_DIMS = (64,)
#: What a row that sees no key must be: ``zeros`` (flash-attn, torch SDPA), ``nan``, or ``any`` (not judged).
EMPTY_ROWS = ("zeros", "nan", "any")


def grid(sizes=DEFAULT_SIZES, head_dims=DEFAULT_HEAD_DIMS):
    """The cases of a size preset: the small grid, then the tile (and long) cases at each head dim."""
    if sizes not in SIZES:
        raise InputError(f"sizes: expected one of {SIZES}, got {sizes!r}")
    cases = list(CASES)
    if sizes != "small":
        for H in head_dims:
            suffix = "" if len(head_dims) == 1 else f", H = {H}"
            cases += [replace(c, name=c.name + suffix, H=H, Hv=H) for c in TILE_CASES]
    if sizes == "long":
        cases += [replace(c, H=head_dims[0], Hv=head_dims[0]) for c in LONG_CASES]
    return cases

#: flash-attn's interface: the keyword a callable takes -> what the case passes it (the oracle's
#: keyword is the same but for ``window_size``, which is the oracle's ``window``).
#: The tile cases' window is wider than a tile's rows, so its band crosses key blocks.
WINDOW, TILE_WINDOW, SOFTCAP, ALIBI_SLOPE = (3, 2), (96, 32), 5.0, 0.5


def missing_keyword(case, run, takes):
    """The keyword the case needs and ``run.fn`` does not take (``causal``, ``mask``, the case's
    option), or None: such a case is skipped. ``takes``: the answers already known."""
    for name in ("causal" if case.causal else "", "mask" if case.mask else "", case.option):
        if name and not (takes[name] if name in takes else run.accepts(name)):
            return name
    return None


def _inputs(case, rng, precision="float64", descales=None):
    """q, k, v in the case's dtype (or the claimed precision's), and the oracle's keyword arguments
    (without causal). ``descales`` (a dict, FP8 claims of a callable that takes them): filled with
    ``q_descale``, ``k_descale``, ``v_descale``, one power of two per tensor, and ``q, k, v`` are then
    the FP8 codes ``rd(x / descale)`` (FlashAttention 3's ``q_descale`` convention: the value is
    ``code * descale``)."""
    b = case.batch
    # s q.k with q, k ~ N(0, I_H), s = 1/sqrt(H) has standard deviation 1: scale q by logit_std
    q = rng.standard_normal(b + (case.T, case.H)) * case.logit_std
    k = rng.standard_normal(b + (case.S, case.H))
    v = rng.standard_normal(b + (case.S, case.Hv))
    kw = {}
    if case.option == "window_size":
        kw["window"] = case.window or (TILE_WINDOW if case.sized else WINDOW)
    elif case.option == "softcap":
        kw["softcap"] = SOFTCAP
    elif case.option == "alibi_slopes":
        heads = b[1] if len(b) == 2 else 1
        kw["alibi_slopes"] = ALIBI_SLOPE / 2.0 ** np.arange(heads) if b else np.float64(ALIBI_SLOPE)
    elif case.option == "sinks":  # about as heavy as the row's keys together: P_sink near 1/2
        heads = b[1] if len(b) == 2 else 1
        z = np.log(max(case.S, 1)) + case.logit_std ** 2 / 2 + rng.standard_normal(heads)
        kw["sinks"] = z if len(b) == 2 else np.float64(z[0])
    elif case.option == "bias":
        kw["bias"] = rng.standard_normal((case.T, case.S))
    elif case.option == "key_lengths":
        length = case.S - 3 if case.S < 64 else 129  # past a tile of 128 keys, short of the next
        kw["key_lengths"] = np.array(length) if not b else np.full(b[:1] + (1,) * (len(b) - 1), length)
        if case.empty and b:
            kw["key_lengths"][0] = 0  # the first batch item sees no key: its rows are judged as empty rows
    if case.mask:
        mask = rng.random((case.T, case.S)) < 0.6
        mask[np.arange(case.T), rng.integers(0, case.S, case.T)] = True  # every row sees a key
        if case.empty:
            mask[[1, case.T - 2]] = False  # ... but two, which see none
        kw["mask"] = mask
    if descales is not None:  # codes at a quarter of the format's range: a power of two per tensor, exact
        for name, a in (("q", q), ("k", k), ("v", v)):
            top = float(np.max(np.abs(a), initial=0.0))
            descales[f"{name}_descale"] = float(2.0 ** np.ceil(np.log2(top / (largest(precision) / 4)))) if top else 1.0
        q, k, v = (a / descales[f"{n}_descale"] for n, a in (("q", q), ("k", k), ("v", v)))
    if precision != "float64":
        return tuple(as_given(a, precision) for a in (q, k, v)), kw
    return tuple(a.astype(case.dtype) for a in (q, k, v)), kw


def _softmax_query_axis(q, k, v, scale, *, causal=None, mask=None):
    """The classic bug: the softmax normalised over queries (axis -2) instead of keys."""
    T, S = q.shape[-2], k.shape[-2]
    allowed = causal_mask(T, S, causal) if causal else np.ones((T, S), dtype=bool)  # (T, S)
    if mask is not None:
        allowed = allowed & mask
    s = scale * (q.astype(np.float64) @ np.swapaxes(k.astype(np.float64), -1, -2))  # (..., T, S)
    s = np.where(allowed, s, -np.inf)
    top = s.max(axis=-2, keepdims=True)
    p = np.exp(s - np.where(np.isfinite(top), top, 0.0))
    tot = p.sum(axis=-2, keepdims=True)
    p = p / np.where(tot > 0, tot, 1.0)
    return p @ v.astype(np.float64)


def _candidates(case, q, k, v, kw, alignment, fp8=None):
    """(fault, oracle output under that fault) pairs for the diagnosis; ``fp8``: the format of an FP8
    claim (its faults: a descale factor lost, the probabilities saturated in their cast)."""
    H = q.shape[-1]
    s = 1.0 / np.sqrt(H)
    scale0 = kw.get("scale", s)  # 1/sqrt(H), times the descales of q and k (FP8 codes)
    out = [] if fp8 is None else [(f"the logits' scale off by 2^{j} (a descale factor ignored, or applied twice?)",
                                   dict(kw, scale=scale0 * 2.0 ** j)) for j in range(-8, 9) if j]
    out += [("scale 1 instead of 1/sqrt(H)", dict(kw, scale=scale0 * np.sqrt(H))),
            ("scale 1/H instead of 1/sqrt(H)", dict(kw, scale=scale0 / np.sqrt(H)))]
    if "window" in kw:
        left, right = kw["window"]
        out.append(("window_size read as (right, left)", dict(kw, window=(right, left))))
    if "sinks" in kw:
        out.append(("the sinks ignored (no e^z in the denominator)", {a: b for a, b in kw.items() if a != "sinks"}))
        out.append(("the sink logit multiplied by the softmax scale (it is a raw logit)",
                    dict(kw, sinks=kw["sinks"] * s)))
        out.append(("the sink logit in base 2 (exp2(z) where e^z is meant)", dict(kw, sinks=kw["sinks"] * np.log(2.0))))
    padded = -(-H // 8) * 8  # head dims padded to a multiple of 8 (tensor-core tiles)
    if padded != H:
        out.append((f"scale 1/sqrt({padded}) of the padded head dim instead of 1/sqrt({H})",
                    dict(kw, scale=scale0 * np.sqrt(H / padded))))
    if "causal" in kw:
        other = "top_left" if alignment == "bottom_right" else "bottom_right"
        out.append((f"the other causal alignment ({other})", dict(kw, causal=other)))
        off = causal_offset(case.T, case.S, alignment)
        j, i = np.arange(case.S)[None, :], np.arange(case.T)[:, None]
        base = {a: b for a, b in kw.items() if a != "causal"}
        out.append(("causal diagonal excluded (off by one)", dict(base, mask=j <= i + off - 1)))
        out.append(("causal mask one key too far (off by one)", dict(base, mask=j <= i + off + 1)))
        out.append(("causal mask inverted (queries see the future, not the past)",
                    dict(base, mask=(j >= i + off) & (kw.get("mask", True)))))
    if "mask" in kw:
        out.append(("mask inverted (True = masked, the PyTorch key_padding_mask convention)",
                    dict(kw, mask=~kw["mask"])))
    Hv = v.shape[-1]
    if Hv != H:
        out.append((f"scale 1/sqrt(max(H, Hv)) = 1/sqrt({max(H, Hv)}) instead of 1/sqrt(H)",
                    dict(kw, scale=scale0 * np.sqrt(H / max(H, Hv)))))
    results = [(name, softmax_attention(q, k, v, **okw)) for name, okw in out]
    if fp8 is not None:
        p = attention_probabilities(q, k, **kw)
        for times in (512, 1024, 2048, 4096):
            cap = largest(fp8) / times
            results.append((f"P saturated: probabilities above {largest(fp8):g} / {times} clipped (P scaled by "
                            f"{times} before a saturating {fp8} cast)", np.minimum(p, cap) @ v))
    results.append(("softmax over the query axis instead of the key axis",
                    _softmax_query_axis(q, k, v, s, **{a: b for a, b in kw.items() if a in ("causal", "mask")})))
    for block in (16, 32, 64, 128):
        if case.S > block:
            results.append((f"the running sum and output not rescaled when a row's maximum grows in a later key "
                            f"block (online softmax over blocks of {block} keys)", _not_rescaled(q, k, v, kw, block)))
    return results


def _not_rescaled(q, k, v, kw, block):
    """Blocked online softmax with the classic bug: the running sum and the unnormalised output are
    not multiplied by ``exp(m_old - m_new)`` when the row maximum changes (Milakov & Gimelshein 2018's
    correction left out); equal to the oracle while every row's maximum sits in its first block."""
    prob = attention_problem(q, k, v, **kw)
    logits = prob.logits()  # (..., T, S), -inf where masked
    vv = np.broadcast_to(prob.v, prob.batch_shape + (prob.S, prob.Hv))
    m = np.full(logits.shape[:-1] + (1,), -np.inf)
    l = np.zeros(logits.shape[:-1] + (1,))
    acc = np.zeros(logits.shape[:-1] + (prob.Hv,))
    for j in range(0, prob.S, block):
        s_blk = logits[..., j:j + block]
        new = np.maximum(m, s_blk.max(axis=-1, keepdims=True))
        p = np.exp(s_blk - np.where(np.isfinite(new), new, 0.0))
        l, acc, m = l + p.sum(axis=-1, keepdims=True), acc + p @ vv[..., j:j + block, :], new
    return np.where(l > 0, acc / np.where(l > 0, l, 1.0), 0.0)


#: Input layouts: ``T`` tokens, ``H`` features, ``B`` batch, ``N`` heads.
LAYOUTS = ("TH", "BTH", "BNTH", "BTNH")
#: Batch size, query heads and (with a grouped-query claim) key/value heads of the layout cases.
BATCH, HEADS, KV_HEADS = 2, 4, 2
#: The cases whose point is ``T != S``: skipped for a self-attention kernel (the rest run at ``S = T``).
CROSS_CASES = ("T != S", "causal T < S", "causal T > S")


#: The per-head and per-batch-item options: the callable takes one value per head ``(N,)`` or per
#: batch item ``(B,)``; the oracle takes them broadcastable to the batch shape.
PER_HEAD, PER_ITEM = ("alibi_slopes", "sinks"), ("key_lengths",)


def per_head(values, ndim):
    """One value per head ``(N,)`` as the oracle broadcasts it against the batch dims of an ``ndim``-d
    query (the last batch axis is the heads axis): a scalar for ``(T, H)``, else ``(N,)``."""
    s = np.atleast_1d(np.asarray(values))
    return s.reshape(-1)[0] if ndim == 2 else s.reshape(-1)


def per_item(values, ndim):
    """One value per batch item ``(B,)`` as ``(B, 1, ..., 1)`` against the batch dims of an ``ndim``-d
    query (a scalar for ``(T, H)``)."""
    a = np.asarray(values).reshape(-1)
    return a.reshape(-1)[0] if ndim == 2 else a.reshape((-1,) + (1,) * (ndim - 3))


def _call_kwargs(kw):
    """The callable's keywords (flash-attn's names and shapes) for the oracle's ``kw``; `oracle_kwargs`
    is the way back."""
    call = dict(kw)
    if "window" in call:
        call["window_size"] = call.pop("window")
    for name in PER_HEAD:
        if name in call:
            call[name] = np.atleast_1d(call[name])  # (heads,)
    if "key_lengths" in call and np.ndim(call["key_lengths"]):
        call["key_lengths"] = np.asarray(call["key_lengths"]).reshape(-1)  # (B,): one length per batch item
    return call


def oracle_kwargs(call_kw, ndim, alignment="bottom_right"):
    """The oracle's keywords for a call's flash-attn keywords (the inverse of `_call_kwargs`), the
    per-head and per-item values shaped for an ``ndim``-d query; ``causal=True`` is ``alignment``."""
    out = {}
    for name, value in call_kw.items():
        if value is None:
            continue
        if name == "window_size":
            out["window"] = tuple(value)
        elif name == "causal":
            if value:
                out["causal"] = alignment if value is True else value
        elif name in PER_HEAD:
            out[name] = per_head(value, ndim)
        elif name in PER_ITEM:
            out[name] = per_item(value, ndim)
        elif name in ("softcap", "bias", "mask", "sink_tokens"):
            out[name] = value
    return out


def _judge_lse(case, lse, q, k, v, kw, alignment, precision):
    """The log-sum-exp a kernel returns against the oracle's (the rule with the lse as the output): a
    failing verdict when it is wrong (None when it passed: the output is judged next). Rows that
    see no key (lse = -inf) are not judged here (their output is)."""
    _, ref64 = softmax_attention(q, k, v, return_lse=True, **kw)
    lo = _claimed(case, precision)
    _, ref_lo = kernel_reference(q, k, v, lo, return_lse=True, **kw)
    sel = np.isfinite(ref64)
    # the lse is a statistic of the accumulation (float32 for float16 and bfloat16 kernels): its
    # floor is the logits' rounding there (a dot product of H terms, Higham 2002, eq. (3.5)) and a
    # few units of the lse itself
    acc = "float64" if lo == "float64" else "float32"
    qa, ka = np.abs(np.asarray(q, np.float64)), np.abs(np.asarray(k, np.float64))
    absdot = float(np.max(qa @ np.swapaxes(ka, -1, -2), initial=0.0)) * (kw.get("scale") or q.shape[-1] ** -0.5)
    floor = (4 * (q.shape[-1] + 4) * absdot + 8 * max(1.0, float(np.max(np.abs(ref64[sel]), initial=0.0)))) * eps(acc)
    got = np.asarray(lse, np.float64)
    res = compare(got[sel], ref64[sel], ref_lo[sel], precision=lo, atol=floor)
    if res.passed:
        return None
    fault = ""
    if compare(got[sel] * np.log(2.0), ref64[sel], ref_lo[sel], precision=lo, atol=floor).passed:
        fault = "; looks like: the lse in base 2 (log2 of sum 2^x, as kernels keep it internally), not the natural log"
    return Verdict(case.name, False, "the returned log-sum-exp differs from the oracle's (return_lse=True)" + fault,
                   statistic=res.error, bound=res.bound, effect=f"max lse err {res.error:.2g}")


def _to_layout(a, layout):
    """Canonical ``(B, N, L, X)`` to ``layout``."""
    return {"TH": lambda x: x[0, 0], "BTH": lambda x: x[:, 0], "BNTH": lambda x: x,
            "BTNH": lambda x: np.swapaxes(x, 1, 2)}[layout](a)


def _from_layout(a, layout):
    """``layout`` to canonical ``(B, N, L, X)``."""
    return {"TH": lambda x: x[None, None], "BTH": lambda x: x[:, None], "BNTH": lambda x: x,
            "BTNH": lambda x: np.swapaxes(x, 1, 2)}[layout](a)


def _padding(kw, k):
    """Boolean ``(..., S)``: the key positions past ``key_lengths`` (None without padding)."""
    if "key_lengths" not in kw:
        return None
    S = k.shape[-2]
    lengths = np.asarray(kw["key_lengths"])
    return np.arange(S) >= lengths[..., None]


def _poisoned(a, pad, value):
    """``a`` ``(..., S, X)`` with the padded key positions set to ``value``."""
    out = np.array(a, copy=True)
    out[np.broadcast_to(pad, out.shape[:-1])] = value
    return out


def check_exact(run, *, alignment="bottom_right", precision="float64", layout="TH", gqa=False,
                self_attention=False, equal_head_dims=False, sizes=DEFAULT_SIZES, head_dims=DEFAULT_HEAD_DIMS,
                empty_rows="zeros", probe_head_dims=False, determinism=False, batch_invariance=False, num_splits=None,
                p_scale=None):
    """Run the grid on ``run.fn``; one verdict per case. ``precision``: the claimed compute precision;
    ``layout``: how the callable takes its arrays; ``gqa``: ``k``, ``v`` have fewer heads than ``q``
    (``KV_HEADS`` of ``HEADS``); ``self_attention``: the callable takes ``T = S`` only;
    ``equal_head_dims``: values have the head dim of queries and keys (``Hv = H``); ``sizes`` and
    ``head_dims``: the preset and the head dims of its tile cases (`grid`); ``empty_rows``: what a
    row that sees no key must be (`EMPTY_ROWS`); ``probe_head_dims``: a tile case whose head dim
    the callable rejects by raising is reported as unsupported (skipped), not failed.

    Where the callable takes ``key_lengths``, the padded keys and values it is given are NaN, then
    (a second pass) huge finite numbers: a kernel that reads past the valid length fails, diagnosed.
    ``num_splits``: split counts the callable takes as ``num_splits=`` (a split-KV kernel); every case
    runs at each, and each must pass on its own (the result may not depend on the count beyond
    rounding). ``determinism``, ``batch_invariance``: also the bit-level checks of
    [`refattn.check.repeatable`][refattn.check.repeatable].

    FP8 claims (``precision`` ``"float8_e4m3fn"``, ``"float8_e5m2"``): the callable gets the inputs as
    ``ml_dtypes`` FP8 arrays and, when it takes ``q_descale=``, ``k_descale=``, ``v_descale=``, their
    descale factors (powers of two; the value is ``code * descale``): float32 scalars, or with a heads
    layout FlashAttention 3's float32 ``(B, kv_heads)`` arrays, ``q_descale`` different at every other
    head (`_per_head_descales`);
    without them a case whose values exceed the format is skipped. It is judged by the rule at its
    [`recipe`][refattn.precision.recipe]: ``P`` scaled by ``p_scale`` (default 2^8, FlashAttention 3's)
    before its cast, the output in bfloat16. A case within a bound at least as large as its output's
    largest magnitude (an output of zeros would pass) is not judged, said so; a run in which no case
    could be judged is INCONCLUSIVE."""
    if alignment not in ("bottom_right", "top_left"):
        raise InputError(f"alignment: expected 'bottom_right' or 'top_left', got {alignment!r}")
    if layout not in LAYOUTS:
        raise InputError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    if gqa and layout not in ("BNTH", "BTNH"):
        raise InputError(f"gqa: grouped-query heads need a layout with a heads axis (BNTH or BTNH), got {layout!r}")
    if empty_rows not in EMPTY_ROWS:
        raise InputError(f"empty_rows: expected one of {EMPTY_ROWS}, got {empty_rows!r}")
    takes = {name: run.accepts(name) for name in ("causal", "mask")}
    fp8 = precision in STORAGE_PRECISIONS
    takes_descales = fp8 and all(run.accepts(f"{n}_descale") for n in "qkv")
    if num_splits and not run.accepts("num_splits"):
        run.add(Verdict("num_splits", False, "fn takes no num_splits= keyword, yet split counts were given "
                        "(--num-splits)"))
        return
    rng = np.random.default_rng([run.report.seed, 3])
    group = HEADS // KV_HEADS if gqa else 1
    judged = 0
    for case in grid(sizes, head_dims):
        if precision != "float64" and case.dtype != np.float64:
            continue  # the low-precision input cases of a float64 claim: every case is at the claim here
        if self_attention and (case.name in CROSS_CASES or case.T != case.S and case.sized):
            run.skip(case.name, "a self-attention kernel (--self-attention) takes T = S only")
            continue
        if equal_head_dims:
            case = replace(case, Hv=case.H)
        need = missing_keyword(case, run, takes)
        if need:
            run.skip(case.name, f"fn takes no {need}= keyword")
            continue
        if layout != "TH" and case.batch:
            continue  # leading batch dims: the layout's own batch and heads axes cover them
        if layout != "TH":
            case = replace(case, batch=(BATCH, HEADS) if layout in ("BNTH", "BTNH") else (BATCH, 1))
        descales = {} if fp8 and takes_descales else None
        q_call = None  # the queries the callable gets, when not those the oracle judges on
        try:
            (q, k, v), kw = _inputs(case, rng, precision, descales)
        except InputError as e:  # an FP8 claim without descale factors: values beyond the format's range
            run.skip(case.name, f"{e}; a kernel that takes q_descale=, k_descale=, v_descale= gets them scaled")
            continue
        if self_attention and case.S != case.T:
            continue
        call_kw = _call_kwargs(kw)
        if case.causal:
            call_kw["causal"] = True
            kw["causal"] = alignment
        if descales:  # the oracle on the codes: the descales of q and k are the logits' scale, v's the output's
            if layout in ("BNTH", "BTNH"):
                q_call = q
                q, per_head = _per_head_descales(q, descales, group)
                call_kw.update(per_head)
            else:
                call_kw.update((n, np.float32(d)) for n, d in descales.items())
            kw["scale"] = descales["q_descale"] * descales["k_descale"] / np.sqrt(case.H)
        if case.option == "return_lse":
            call_kw["return_lse"] = True
        pad = _padding(kw, k)
        passes = [None] if pad is None else [("NaN", np.nan), ("huge", min(1e30, largest(_claimed(case, precision)) / 4))]
        outcome = None
        for splits in num_splits or (None,):  # each split count a kernel claims to take, judged on its own
            ckw = call_kw if splits is None else dict(call_kw, num_splits=splits)
            args = (case, q, k, v, kw, ckw, layout, group, alignment, precision, empty_rows, p_scale, q_call)
            got = _run_poisoned(run, case, args, k, v, pad, passes)
            if splits is not None and isinstance(got, Verdict) and not got.passed:
                got = replace(got, meaning=f"at num_splits={splits}: {got.meaning}", effect=f"num_splits={splits}")
            if not isinstance(got, Verdict) or not got.passed:
                outcome = got
                break
            if outcome is None or (got.statistic or 0) / (got.bound or 1) > (outcome.statistic or 0) / (outcome.bound or 1):
                outcome = got  # the worst split count's numbers
        if num_splits and isinstance(outcome, Verdict) and outcome.passed:
            outcome = replace(outcome, meaning=f"{outcome.meaning}; at num_splits {', '.join(map(str, num_splits))}")
        if isinstance(outcome, Verdict):
            run.add(outcome)
            judged += outcome.passed is not None and case.S > 0  # a case with keys, judged (not powerless)
        else:
            _problem(run, case, outcome, batched=layout == "TH", probe=probe_head_dims)
    if fp8 and not judged:
        run.add(Verdict("FP8 power", None, f"no case could tell a wrong output from a right one at {precision}: "
                        "every bound was at least its output's size", inconclusive=True))
    bits = dict(layout=layout, heads=HEADS if layout in ("BNTH", "BTNH") else 1, call_kw={},
                dtype=given_dtype(precision), to_layout=_to_layout, from_layout=_from_layout)
    if determinism:
        repeatable.check_determinism(run, np.random.default_rng([run.report.seed, 5]), **bits)
    if batch_invariance:
        repeatable.check_batch_invariance(run, np.random.default_rng([run.report.seed, 6]), **bits)


def _run_poisoned(run, case, args, k, v, pad, passes):
    """One case's outcome over the padding passes (clean, or NaN then huge values past ``key_lengths``):
    a kernel fine on clean padding that fails on poisoned padding reads it, diagnosed."""
    for poison in passes:
        kk, vv = (k, v) if poison is None else (_poisoned(k, pad, poison[1]), _poisoned(v, pad, poison[1]))
        outcome = _run_case(run, *args, k_call=kk, v_call=vv)
        if poison is not None and not (isinstance(outcome, Verdict) and outcome.passed):
            clean = _run_case(run, *args, k_call=k, v_call=v)
            if isinstance(clean, Verdict) and clean.passed:  # fine on clean padding: it reads the padding
                what = outcome.meaning if isinstance(outcome, Verdict) else str(outcome)
                outcome = Verdict(case.name, False, f"with {poison[0]} values in the keys and values past "
                                  f"key_lengths: {what}; looks like: it reads keys/values past key_lengths "
                                  "(the padding must not be read)", statistic=getattr(outcome, "statistic", None),
                                  bound=getattr(outcome, "bound", None), effect="reads the padding")
            elif isinstance(clean, Verdict):  # wrong on clean padding too: that verdict, and what the poison did
                outcome = replace(clean, meaning=f"{clean.meaning}; with {poison[0]} values past key_lengths: "
                                  f"{outcome.meaning if isinstance(outcome, Verdict) else outcome}")
        if not isinstance(outcome, Verdict) or not outcome.passed:
            break
    return outcome


def _per_head_descales(q, descales, group):
    """FlashAttention 3's ``(B, kv_heads)`` descales: ``q_descale`` doubled at every other key/value head
    (a kernel that reads it at the wrong head computes logits twice or half as large), ``k_descale`` and
    ``v_descale`` the same at every head. Returns the queries the oracle judges on (the codes times the
    head's factor, exact: the codes lie within a quarter of the format's range) and the descales."""
    B, N = q.shape[:2]
    t = 2.0 ** (np.arange(N // group) % 2)  # per key/value head
    judged = np.asarray(q, np.float64) * np.repeat(t, group)[None, :, None, None]
    full = {"q_descale": descales["q_descale"] * t, "k_descale": descales["k_descale"] * np.ones_like(t),
            "v_descale": descales["v_descale"] * np.ones_like(t)}
    return judged, {n: np.broadcast_to(d, (B, t.size)).astype(np.float32) for n, d in full.items()}


def _run_case(run, case, q, k, v, kw, call_kw, layout, group, alignment, precision, empty_rows, p_scale=None,
              q_call=None, *, k_call, v_call):
    """Call ``fn`` on one case (with ``k_call``, ``v_call``: the keys and values it is given) and judge it
    against the oracle on ``q, k, v``: the case's verdict, or the call's problem. With descale factors
    (FP8) ``q, k, v`` are codes and the output is judged in ``v``'s code units (divided by ``v_descale``,
    a power of two: exact)."""
    lse = case.option == "return_lse"
    per_v = float(np.max(call_kw.get("v_descale", 1.0)))  # the same at every head
    if layout == "TH":
        shape = case.batch + (case.T, case.Hv)
        out, problem = run.call((q, k_call, v_call), call_kw, shape=[shape, shape[:-1]] if lse else shape,
                                finite=False, parts=2 if lse else None)
        if problem is not None:
            return problem
        if lse:
            out, lse_out = out
            failed = _judge_lse(case, lse_out, q, k, v, kw, alignment, precision)
            if failed is not None:
                return failed
        return _in_real_units(_judge(case, np.asarray(out, np.float64) / per_v, q, k, v, kw, alignment, precision,
                                     empty_rows, p_scale), per_v)
    kh, vh = k[:, ::group], v[:, ::group]  # (B, N / group, S, .): the key/value heads
    kc, vc = k_call[:, ::group], v_call[:, ::group]
    want = _to_layout(np.empty(q.shape[:-1] + (case.Hv,)), layout).shape
    want_lse = q.shape[:-1] if layout != "BTH" else (q.shape[0], q.shape[2])  # (B, N, T): flash-attn's lse
    qc = q if q_call is None else q_call
    out, problem = run.call(tuple(_to_layout(a, layout) for a in (qc, kc, vc)), call_kw,
                            shape=[want, want_lse] if lse else want, finite=False, parts=2 if lse else None)
    if problem is not None:
        return problem
    k_full, v_full = (np.repeat(a, group, axis=1) for a in (kh, vh))  # query head h reads key/value head h // group
    if lse:
        out, lse_out = out
        lse_c = lse_out[:, None] if layout == "BTH" else lse_out
        failed = _judge_lse(case, lse_c, q, k_full, v_full, kw, alignment, precision)
        if failed is not None:
            return failed
    return _in_real_units(_judge_heads(case, np.asarray(_from_layout(out, layout), np.float64) / per_v, q, k_full,
                                       v_full, kw, alignment, precision, group, empty_rows, p_scale), per_v)


def _in_real_units(verdict, per_v):
    """A verdict judged in ``v``'s code units, its error and bound stated in the output's units."""
    if per_v == 1.0 or verdict.statistic is None:
        return verdict
    stat, bound = verdict.statistic * per_v, verdict.bound * per_v
    return replace(verdict, statistic=stat, bound=bound, effect=verdict.effect.replace(
        f"max err {verdict.statistic:.2g}", f"max err {stat:.2g}"),
        meaning=f"{verdict.meaning} (descales: judged on the codes, in the output's units)")


def _problem(run, case, problem, batched=True, probe=False):
    """Report a call problem: a skip where the callable does not take batch dims, or (``probe``) a head
    dim it rejects by raising; a failure otherwise."""
    if case.sized and problem.what == "raised" and probe:
        run.skip(case.name, f"fn rejects head dim {case.H} (--probe-head-dims: unsupported, not judged): {problem}")
    elif batched:
        run.batched_problem(case, problem)
    else:
        run.problem(case.name, problem)


def _claimed(case, precision):
    """The precision a case's output is judged at: the claim, or (for a float64 claim) the case's inputs'."""
    return as_precision(case.dtype) if precision == "float64" else precision


def _empty_rows_fault(out, empty, convention):
    """What is wrong with the rows that see no key under ``convention`` (None when nothing is)."""
    if convention == "any" or not empty.any():
        return None
    o = np.asarray(out, dtype=np.float64)[empty]
    n = int(empty.sum())
    if convention == "zeros" and not np.all(o == 0):
        what = "NaN" if np.isnan(o).any() else f"values up to {float(np.nanmax(np.abs(o))):.3g}"
        return (f"the {n} rows that see no key must be zeros (--empty-rows zeros: flash-attn's and torch SDPA's "
                f"convention), got {what}")
    if convention == "nan" and not np.all(np.isnan(o)):
        return f"the {n} rows that see no key must be NaN (--empty-rows nan), got numbers"
    return None


def _assess(case, out, q, k, v, kw, alignment, precision="float64", empty_rows="zeros", p_scale=None):
    """``(result, meaning, fault)``: the rule on the rows that see a key, the stated convention on the
    rows that see none, and the diagnosis when either fails (else fault None)."""
    ref, lse = softmax_attention(q, k, v, return_lse=True, **kw)
    seen = np.isfinite(lse)  # (..., T): rows that see at least one key
    claimed = _claimed(case, precision)
    recipe = {"p_scale": p_scale} if p_scale is not None else {}
    res = check_attention_output(out, q, k, v, precision=claimed, rows=seen, **recipe, **kw)
    # powerless (an FP8 bound as large as the output: zeros would pass): not judged, never a PASS
    powerless = claimed in STORAGE_PRECISIONS and seen.any() and res.bound >= float(np.max(np.abs(ref[seen])))
    meaning = f"the tolerance rule vs the float64 oracle ({np.dtype(case.dtype).name if precision == 'float64' else precision} inputs" + (
        f", claimed {precision} compute)" if precision != "float64" else ")")
    empty_fault = _empty_rows_fault(out, ~seen, empty_rows)
    if res.passed and empty_fault is None:
        return res, meaning, None, powerless
    if res.passed:
        return res, meaning, empty_fault, False
    o = np.asarray(out, dtype=np.float64)
    nonfinite = ~np.isfinite(o[seen])
    if nonfinite.any():
        fault = f"{int(nonfinite.sum())} NaN/Inf outputs where the oracle is finite"
        top = float(np.max(np.abs(q.astype(np.float64) @ np.swapaxes(k.astype(np.float64), -1, -2)))) / np.sqrt(case.H)
        if top > np.log(largest(as_precision(case.dtype))):  # exp of these logits overflows in the input dtype
            fault += (f": overflow (logits up to {top:.3g}; missing max subtraction before exp, in the softmax or "
                      "in a split-KV merge's exp(lse_c)?)")
    else:
        matches = [name for name, cand in _candidates(case, q, k, v, kw, alignment,
                                                      claimed if claimed in STORAGE_PRECISIONS else None)
                   if float(np.max(np.abs(o[seen] - cand[seen]), initial=0.0)) <= res.bound]
        fault = f"looks like: {matches[0]}" if matches else _precision_diagnosis(out, q, k, v, kw, seen, claimed)
    return res, meaning, fault, False


def _judge(case, out, q, k, v, kw, alignment, precision="float64", empty_rows="zeros", p_scale=None):
    """The case's verdict (one problem)."""
    res, meaning, fault, powerless = _assess(case, out, q, k, v, kw, alignment, precision, empty_rows, p_scale)
    if powerless and fault is None:
        return _powerless(case, res, meaning)
    return Verdict(case.name, fault is None, meaning if fault is None else f"{meaning}; {fault}",
                   statistic=res.error, bound=res.bound, effect=f"max err {res.error:.2g}")


def _powerless(case, res, meaning):
    """A case within its bound whose bound is at least the output's size (an output of zeros would pass):
    not judged, said so (a run in which no case could be judged is INCONCLUSIVE)."""
    return Verdict(case.name, None, "not judged: its bound is at least the output's largest magnitude, so an "
                   f"output of zeros would pass ({meaning})", statistic=res.error,
                   bound=res.bound, effect=f"max err {res.error:.2g}")


def _judge_heads(case, out, q, k, v, kw, alignment, precision, group, empty_rows="zeros", p_scale=None):
    """Head by head on canonical ``(B, N, T, .)`` arrays (``k``, ``v`` already repeated to ``N`` heads):
    the case passes iff every head passes; the verdict names the worst head."""
    heads = list(np.ndindex(*out.shape[:2]))

    def head_kw(idx):  # per-batch-item and per-head options, at one head
        return {a: (np.broadcast_to(b, out.shape[:2])[idx] if a in PER_HEAD + PER_ITEM and np.ndim(b)
                    else b) for a, b in kw.items()}

    assessed = [(idx, *_assess(case, out[idx], q[idx], k[idx], v[idx], head_kw(idx), alignment, precision,
                               empty_rows, p_scale)) for idx in heads]
    idx, res, meaning, fault, _ = max(assessed, key=lambda a: a[1].error / a[1].bound if a[1].bound else np.inf)
    meaning = meaning.replace("the float64 oracle", "the float64 oracle, head by head")
    if all(a[3] is None for a in assessed):
        if any(a[4] for a in assessed):
            return _powerless(case, next(a[1] for a in assessed if a[4]), meaning)
        return Verdict(case.name, True, meaning, statistic=res.error, bound=res.bound,
                       effect=f"max err {res.error:.2g} at head {idx}")
    idx, res, meaning_f, fault, _ = next(a for a in assessed if a[3] is not None)
    if group > 1:  # grouped-query heads mapped by h mod N_kv instead of h // group
        n_kv = q.shape[1] // group
        tiled = softmax_attention(q, np.tile(k[:, ::group], (1, group, 1, 1)), np.tile(v[:, ::group], (1, group, 1, 1)),
                                  **kw)
        if n_kv < q.shape[1] and all(float(np.max(np.abs(np.asarray(out[h], np.float64) - tiled[h]), initial=0.0))
                                     <= a_res.bound for h, a_res, _, _, _ in assessed):
            fault = "looks like: key/value heads interleaved (h mod N_kv) instead of grouped (h // group)"
    return Verdict(case.name, False, f"{meaning}; {fault} (head {idx})", statistic=res.error, bound=res.bound,
                   effect=f"max err {res.error:.2g} at head {idx}")


def _precision_diagnosis(out, q, k, v, kw, rows, claimed):
    """When no fault matches: is the output right at a lower precision than claimed? Names the flag.

    Among the lower precisions whose rule the output passes, the coarsest in which every output
    value is exactly representable (a bfloat16 kernel's outputs are bfloat16 numbers; a float16
    kernel's are not), else the finest."""
    order = ("float32", "float16", "bfloat16")  # finer to coarser
    passing = [p for p in (order[order.index(claimed) + 1:] if claimed in order else order)
               if check_attention_output(out, q, k, v, precision=p, rows=rows, **kw).passed]
    if not passing:
        return "no known fault matches"
    o = np.asarray(out, dtype=np.float64)[np.broadcast_to(rows, np.shape(out)[:-1])]
    exact = [p for p in passing if np.array_equal(round_to(o, p), o)]
    p = exact[-1] if exact else passing[0]
    return (f"the errors are at {p}'s rounding level: a {p} kernel? claim it with --precision {p} "
            f"(check(..., precision={p!r}))")
