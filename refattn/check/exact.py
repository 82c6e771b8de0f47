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
from refattn.check.verdict import Verdict
from refattn.exact import softmax_attention
from refattn.precision import as_dtype, as_precision, eps, largest, kernel_reference, round_to
from refattn.problem import causal_mask, causal_offset
from refattn.tolerance import check_attention_output, compare

__all__ = ["check_exact", "CASES", "Case", "LAYOUTS"]


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
    Case("softcap", 9, 11, 8, 4, logit_std=8.0, option="softcap"),
    Case("ALiBi", 9, 11, 8, 4, option="alibi_slopes"),
    Case("additive bias", 9, 11, 8, 4, option="bias"),
    Case("key padding", 9, 11, 8, 4, option="key_lengths"),
    Case("log-sum-exp", 9, 11, 8, 4, option="return_lse"),
)

#: flash-attn's interface: the keyword a callable takes -> what the case passes it (the oracle's
#: keyword is the same but for ``window_size``, which is the oracle's ``window``).
WINDOW, SOFTCAP, ALIBI_SLOPE = (3, 2), 5.0, 0.5


def _inputs(case, rng, precision="float64"):
    """q, k, v in the case's dtype (or the claimed precision's), and the oracle's keyword arguments
    (without causal)."""
    b = case.batch
    # s q.k with q, k ~ N(0, I_H), s = 1/sqrt(H) has standard deviation 1: scale q by logit_std
    q = rng.standard_normal(b + (case.T, case.H)) * case.logit_std
    k = rng.standard_normal(b + (case.S, case.H))
    v = rng.standard_normal(b + (case.S, case.Hv))
    kw = {}
    if case.option == "window_size":
        kw["window"] = WINDOW
    elif case.option == "softcap":
        kw["softcap"] = SOFTCAP
    elif case.option == "alibi_slopes":
        heads = b[1] if len(b) == 2 else 1
        kw["alibi_slopes"] = ALIBI_SLOPE / 2.0 ** np.arange(heads) if b else np.float64(ALIBI_SLOPE)
    elif case.option == "bias":
        kw["bias"] = rng.standard_normal((case.T, case.S))
    elif case.option == "key_lengths":
        kw["key_lengths"] = np.array(case.S - 3) if not b else np.full(b[:1] + (1,) * (len(b) - 1), case.S - 3)
    if case.mask:
        mask = rng.random((case.T, case.S)) < 0.6
        mask[np.arange(case.T), rng.integers(0, case.S, case.T)] = True  # every row sees a key
        kw["mask"] = mask
    if precision != "float64":
        carrier = np.float32 if precision == "bfloat16" else as_dtype(precision)
        return tuple(round_to(a, precision).astype(carrier) for a in (q, k, v)), kw
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


def _candidates(case, q, k, v, kw, alignment):
    """(fault, oracle output under that fault) pairs for the diagnosis."""
    H = q.shape[-1]
    s = 1.0 / np.sqrt(H)
    out = [("scale 1 instead of 1/sqrt(H)", dict(kw, scale=1.0)),
           ("scale 1/H instead of 1/sqrt(H)", dict(kw, scale=1.0 / H))]
    if "window" in kw:
        left, right = kw["window"]
        out.append(("window_size read as (right, left)", dict(kw, window=(right, left))))
    padded = -(-H // 8) * 8  # head dims padded to a multiple of 8 (tensor-core tiles)
    if padded != H:
        out.append((f"scale 1/sqrt({padded}) of the padded head dim instead of 1/sqrt({H})",
                    dict(kw, scale=1.0 / np.sqrt(padded))))
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
    results = [(name, softmax_attention(q, k, v, **okw)) for name, okw in out]
    results.append(("softmax over the query axis instead of the key axis",
                    _softmax_query_axis(q, k, v, s, **{a: b for a, b in kw.items() if a in ("causal", "mask")})))
    return results


#: Input layouts: ``T`` tokens, ``H`` features, ``B`` batch, ``N`` heads.
LAYOUTS = ("TH", "BTH", "BNTH", "BTNH")
#: Batch size, query heads and (with a grouped-query claim) key/value heads of the layout cases.
BATCH, HEADS, KV_HEADS = 2, 4, 2
#: The cases whose point is ``T != S``: skipped for a self-attention kernel (the rest run at ``S = T``).
CROSS_CASES = ("T != S", "causal T < S", "causal T > S")


def _call_kwargs(kw):
    """The callable's keywords (flash-attn's names and shapes) for the oracle's ``kw``."""
    call = dict(kw)
    if "window" in call:
        call["window_size"] = call.pop("window")
    if "alibi_slopes" in call:
        call["alibi_slopes"] = np.atleast_1d(call["alibi_slopes"])  # (heads,)
    if "key_lengths" in call and np.ndim(call["key_lengths"]):
        call["key_lengths"] = np.asarray(call["key_lengths"]).reshape(-1)  # (B,): one length per batch item
    return call


def _judge_lse(run, case, lse, q, k, v, kw, alignment, precision):
    """The log-sum-exp a kernel returns against the oracle's (the rule with the lse as the output);
    a failing verdict for the case when it is wrong. True when it passed (the output is judged next)."""
    rows = causal_mask(case.T, case.S, alignment).any(axis=1) if "causal" in kw else np.ones(case.T, dtype=bool)
    _, ref64 = softmax_attention(q, k, v, return_lse=True, **kw)
    lo = _claimed(case, precision)
    _, ref_lo = kernel_reference(q, k, v, lo, return_lse=True, **kw)
    sel = (Ellipsis, rows)
    floor = 1000 * eps(lo) * max(1.0, float(np.max(np.abs(ref64[sel]), initial=0.0)))
    res = compare(np.asarray(lse, np.float64)[sel], ref64[sel], ref_lo[sel], precision=lo, atol=floor)
    if res.passed:
        return True
    run.add(Verdict(case.name, False, "the returned log-sum-exp differs from the oracle's (return_lse=True)",
                    statistic=res.error, bound=res.bound, effect=f"max lse err {res.error:.2g}"))
    return False


def _to_layout(a, layout):
    """Canonical ``(B, N, L, X)`` to ``layout``."""
    return {"TH": lambda x: x[0, 0], "BTH": lambda x: x[:, 0], "BNTH": lambda x: x,
            "BTNH": lambda x: np.swapaxes(x, 1, 2)}[layout](a)


def _from_layout(a, layout):
    """``layout`` to canonical ``(B, N, L, X)``."""
    return {"TH": lambda x: x[None, None], "BTH": lambda x: x[:, None], "BNTH": lambda x: x,
            "BTNH": lambda x: np.swapaxes(x, 1, 2)}[layout](a)


def check_exact(run, *, alignment="bottom_right", precision="float64", layout="TH", gqa=False,
                self_attention=False, equal_head_dims=False):
    """Run the grid on ``run.fn``; one verdict per case. ``precision``: the claimed compute precision;
    ``layout``: how the callable takes its arrays; ``gqa``: ``k``, ``v`` have fewer heads than ``q``
    (``KV_HEADS`` of ``HEADS``); ``self_attention``: the callable takes ``T = S`` only;
    ``equal_head_dims``: values have the head dim of queries and keys (``Hv = H``)."""
    if alignment not in ("bottom_right", "top_left"):
        raise InputError(f"alignment: expected 'bottom_right' or 'top_left', got {alignment!r}")
    if layout not in LAYOUTS:
        raise InputError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    if gqa and layout not in ("BNTH", "BTNH"):
        raise InputError(f"gqa: grouped-query heads need a layout with a heads axis (BNTH or BTNH), got {layout!r}")
    takes = {name: run.accepts(name) for name in ("causal", "mask")}
    rng = np.random.default_rng([run.report.seed, 3])
    for case in CASES:
        if precision != "float64" and case.dtype != np.float64:
            continue  # the low-precision input cases of a float64 claim: every case is at the claim here
        if self_attention and case.name in CROSS_CASES:
            run.skip(case.name, "a self-attention kernel (--self-attention) takes T = S only")
            continue
        if self_attention:
            case = replace(case, S=case.T)
        if equal_head_dims:
            case = replace(case, Hv=case.H)
        need = "causal" if case.causal else "mask" if case.mask else case.option or None
        if need and not (takes[need] if need in takes else run.accepts(need)):
            run.skip(case.name, f"fn takes no {need}= keyword")
            continue
        if layout != "TH" and case.batch:
            continue  # leading batch dims: the layout's own batch and heads axes cover them
        group = HEADS // KV_HEADS if gqa else 1
        if layout != "TH":
            case = replace(case, batch=(BATCH, HEADS) if layout in ("BNTH", "BTNH") else (BATCH, 1))
        (q, k, v), kw = _inputs(case, rng, precision)
        call_kw = _call_kwargs(kw)
        if case.causal:
            call_kw["causal"] = True
            kw["causal"] = alignment
        lse = case.option == "return_lse"
        if lse:
            call_kw["return_lse"] = True
        if layout == "TH":
            shape = case.batch + (case.T, case.Hv)
            out, problem = run.call((q, k, v), call_kw, shape=[shape, shape[:-1]] if lse else shape, finite=False,
                                    parts=2 if lse else None)
            if problem is not None:
                run.batched_problem(case, problem)
                continue
            if lse:
                out, lse_out = out
                if not _judge_lse(run, case, lse_out, q, k, v, kw, alignment, precision):
                    continue
            _judge(run, case, out, q, k, v, kw, alignment, precision)
            continue
        k, v = k[:, ::group], v[:, ::group]  # (B, N / group, S, .): the key/value heads
        want = _to_layout(np.empty(q.shape[:-1] + (case.Hv,)), layout).shape
        want_lse = q.shape[:-1] if layout != "BTH" else (q.shape[0], q.shape[2])  # (B, N, T): flash-attn's lse
        out, problem = run.call(tuple(_to_layout(a, layout) for a in (q, k, v)), call_kw,
                                shape=[want, want_lse] if lse else want, finite=False, parts=2 if lse else None)
        if problem is not None:
            run.problem(case.name, problem)
            continue
        if lse:
            out, lse_out = out
            lse_c = lse_out[:, None] if layout == "BTH" else lse_out
            k_rep, v_rep = (np.repeat(a, group, axis=1) for a in (k, v))
            if not _judge_lse(run, case, lse_c, q, k_rep, v_rep, kw, alignment, precision):
                continue
        k_full, v_full = (np.repeat(a, group, axis=1) for a in (k, v))  # query head h reads key/value head h // group
        _judge_heads(run, case, _from_layout(out, layout), q, k_full, v_full, kw, alignment, precision, group)


def _claimed(case, precision):
    """The precision a case's output is judged at: the claim, or (for a float64 claim) the case's inputs'."""
    return as_precision(case.dtype) if precision == "float64" else precision


def _assess(case, out, q, k, v, kw, alignment, precision="float64"):
    """``(result, meaning, fault)``: the rule on one problem, and the diagnosis when it fails (else None)."""
    rows = np.ones(case.T, dtype=bool)
    if "causal" in kw:  # rows that see no key: conventions differ (0, NaN), not judged
        rows = causal_mask(case.T, case.S, alignment).any(axis=1)
    sel = (Ellipsis, rows, slice(None))
    claimed = _claimed(case, precision)
    res = check_attention_output(out, q, k, v, precision=claimed, rows=rows, **kw)
    meaning = f"the tolerance rule vs the float64 oracle ({np.dtype(case.dtype).name if precision == 'float64' else precision} inputs" + (
        f", claimed {precision} compute)" if precision != "float64" else ")")
    if res.passed:
        return res, meaning, None
    o = np.asarray(out[sel], dtype=np.float64)
    nonfinite = ~np.isfinite(o)
    if nonfinite.any():
        fault = f"{int(nonfinite.sum())} NaN/Inf outputs where the oracle is finite"
        top = float(np.max(np.abs(q.astype(np.float64) @ np.swapaxes(k.astype(np.float64), -1, -2)))) / np.sqrt(case.H)
        if top > np.log(largest(as_precision(case.dtype))):  # exp of these logits overflows in the input dtype
            fault += f": overflow (logits up to {top:.3g}; missing max subtraction before exp?)"
    else:
        matches = [name for name, cand in _candidates(case, q, k, v, kw, alignment)
                   if float(np.max(np.abs(o - cand[sel]))) <= res.bound]
        fault = f"looks like: {matches[0]}" if matches else _precision_diagnosis(out, q, k, v, kw, rows, claimed)
    return res, meaning, fault


def _judge(run, case, out, q, k, v, kw, alignment, precision="float64"):
    res, meaning, fault = _assess(case, out, q, k, v, kw, alignment, precision)
    if fault is None:
        run.exact(case.name, res.error, res.bound, meaning, effect=f"max err {res.error:.2g}")
    else:
        run.add(Verdict(case.name, False, f"{meaning}; {fault}", statistic=res.error, bound=res.bound,
                        effect=f"max err {res.error:.2g}"))


def _judge_heads(run, case, out, q, k, v, kw, alignment, precision, group):
    """Head by head on canonical ``(B, N, T, .)`` arrays (``k``, ``v`` already repeated to ``N`` heads):
    the case passes iff every head passes; the verdict names the worst head."""
    heads = list(np.ndindex(*out.shape[:2]))

    def head_kw(idx):  # per-batch-item and per-head options, at one head
        return {a: (np.broadcast_to(b, out.shape[:2])[idx] if a in ("alibi_slopes", "key_lengths") and np.ndim(b)
                    else b) for a, b in kw.items()}

    assessed = [(idx, *_assess(case, out[idx], q[idx], k[idx], v[idx], head_kw(idx), alignment, precision))
                for idx in heads]
    idx, res, meaning, fault = max(assessed, key=lambda a: a[1].error / a[1].bound if a[1].bound else np.inf)
    meaning = meaning.replace("the float64 oracle", "the float64 oracle, head by head")
    if all(a[3] is None for a in assessed):
        run.exact(case.name, res.error, res.bound, meaning, effect=f"max err {res.error:.2g} at head {idx}")
        return
    idx, res, meaning_f, fault = next(a for a in assessed if a[3] is not None)
    if group > 1:  # grouped-query heads mapped by h mod N_kv instead of h // group
        n_kv = q.shape[1] // group
        tiled = softmax_attention(q, np.tile(k[:, ::group], (1, group, 1, 1)), np.tile(v[:, ::group], (1, group, 1, 1)),
                                  **kw)
        if n_kv < q.shape[1] and all(float(np.max(np.abs(np.asarray(out[h], np.float64) - tiled[h]), initial=0.0))
                                     <= a_res.bound for h, a_res, _, _ in assessed):
            fault = "looks like: key/value heads interleaved (h mod N_kv) instead of grouped (h // group)"
    run.add(Verdict(case.name, False, f"{meaning}; {fault} (head {idx})", statistic=res.error, bound=res.bound,
                    effect=f"max err {res.error:.2g} at head {idx}"))


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
    o = np.asarray(out, dtype=np.float64)[..., rows, :]
    exact = [p for p in passing if np.array_equal(round_to(o, p), o)]
    p = exact[-1] if exact else passing[0]
    return (f"the errors are at {p}'s rounding level: a {p} kernel? claim it with --precision {p} "
            f"(check(..., precision={p!r}))")
