r"""``--kind varlen``: attention over packed sequences in flash-attn's ``flash_attn_varlen_func`` contract,
``fn(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k[, causal=, window_size=,
seqused_k=]) -> out (total_q, Hq, Dv)``, judged sequence by sequence against
[`refattn.varlen.varlen_attention`][refattn.varlen.varlen_attention] by the tolerance rule.

``q (total_q, Hq, D)``, ``k, v (total_k, Hk, .)`` in the claimed precision, ``cu_seqlens_*`` int32
``(B + 1,)`` and ``max_seqlen_*`` ints, as flash-attn takes them; ``Hk = Hq / 2`` with ``gqa``. The
cases: sequences with ``T = S`` and ``T != S`` both ways, a sequence with no queries, one with no
keys (its rows must be zeros, or ``empty_rows="any"``), decode (one query per sequence against keys
of different lengths), causal (bottom-right within each sequence), a sliding window, ``seqused_k``
with the slots' padding NaN (never to be read), sequences crossing 64- and 128-row tiles, and
MLA's head dims 192 for ``q, k`` with 128 for ``v`` (skipped when the callable rejects them by
raising). A case that needs a keyword the callable does not take is skipped.

A failing case names what it looks like: no block-diagonal mask (queries attend to other
sequences' keys), the causal mask aligned top-left within each sequence (flash-attn before 2.1),
the causal mask over the packed batch's positions, or the slot's padding read (``seqused_k``
ignored, or NaN from the slots past it).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from refattn.check.per_sequence import judge_sequences
from refattn.check.poison import NAN_FROM_UNUSED, with_finite_retry
from refattn.check.verdict import Verdict
from refattn.precision import eps, unit_roundoff
from refattn.tolerance import backward_allowance, compare
from refattn.exact import attention_backward, softmax_attention
from refattn.precision import as_given, round_to
from refattn.varlen import varlen_attention

__all__ = ["check_varlen", "check_varlen_backward", "VarlenCase", "VARLEN_CASES", "HEADS"]

#: Query heads of every case (key/value heads: the same, or half with ``gqa``).
HEADS = 4


@dataclass(frozen=True)
class VarlenCase:
    """One packed batch: the queries and key slots of each sequence, the head dims, its options."""

    name: str
    q_lens: tuple
    k_lens: tuple
    D: int = 32
    Dv: int = 32
    causal: bool = False
    window: tuple | None = None
    used: tuple | None = None  # seqused_k: the keys used in each slot
    probe: bool = False  # a head-dim case the callable may reject (skipped)


VARLEN_CASES = (
    VarlenCase("3 sequences, T = S", (5, 17, 40), (5, 17, 40)),
    VarlenCase("T != S within each sequence", (3, 40, 1), (10, 25, 70)),
    VarlenCase("a sequence with no queries", (4, 0, 6), (4, 5, 6)),
    VarlenCase("a sequence with no keys", (3, 2, 4), (6, 0, 4)),
    VarlenCase("decode: one query per sequence", (1, 1, 1, 1), (33, 1, 128, 7)),
    VarlenCase("causal, T < S and T > S per sequence", (3, 40, 9), (10, 20, 9), causal=True),
    VarlenCase("causal sliding window", (70, 129), (70, 129), causal=True, window=(16, 0)),
    VarlenCase("seqused_k: padded key slots", (4, 6), (20, 30), used=(13, 30)),
    VarlenCase("tiles: sequences of 63, 129 and 257", (63, 129, 257), (63, 129, 257), D=64, Dv=64, causal=True),
    VarlenCase("MLA head dims 192 / 128", (9, 30), (12, 30), D=192, Dv=128, causal=True, probe=True),
)


def _batch(case, rng, precision, group):
    """``q, k, v, cu_q, cu_k`` of a case (float64 values at the claim's rounding), keys in slots."""
    cu_q = np.concatenate([[0], np.cumsum(case.q_lens)]).astype(np.int32)
    cu_k = np.concatenate([[0], np.cumsum(case.k_lens)]).astype(np.int32)
    q = rng.standard_normal((int(cu_q[-1]), HEADS, case.D))
    k = rng.standard_normal((int(cu_k[-1]), HEADS // group, case.D))
    v = rng.standard_normal((int(cu_k[-1]), HEADS // group, case.Dv))
    return (*(round_to(a, precision) for a in (q, k, v)), cu_q, cu_k)


def _padding(case, cu_k):
    """Boolean ``(total_k,)``: the slots past ``seqused_k`` (None without it)."""
    if case.used is None:
        return None
    pos = np.arange(int(cu_k[-1]))
    seq = np.searchsorted(cu_k, pos, side="right") - 1
    return pos - cu_k[seq] >= np.asarray(case.used)[seq]


def _options(case):
    kw = {}
    if case.causal:
        kw["causal"] = True
    if case.window is not None:
        kw["window"] = case.window
    return kw


def _call_keywords(case):
    """flash_attn_varlen_func's keywords for a case: ``causal``, ``window_size``, ``seqused_k`` (int32)."""
    call_kw = {"causal": True} if case.causal else {}
    if case.window is not None:
        call_kw["window_size"] = case.window
    if case.used is not None:
        call_kw["seqused_k"] = np.asarray(case.used, np.int32)
    return call_kw


def check_varlen(run, *, precision="float64", gqa=False, empty_rows="zeros"):
    """Run the cases on ``run.fn``; one verdict per case (module docstring)."""
    rng = np.random.default_rng([run.report.seed, 13])
    group = 2 if gqa else 1
    for case in VARLEN_CASES:
        q, k, v, cu_q, cu_k = _batch(case, rng, precision, group)
        kw = _options(case)
        call_kw = _call_keywords(case)
        need = next((n for n in call_kw if not run.accepts(n)), None)
        if need:
            run.skip(case.name, f"fn takes no {need}= keyword")
            continue
        pad = _padding(case, cu_k)
        judged = partial(_call_and_judge, run, case, q, k, v, cu_q, cu_k, kw, call_kw, precision, group, empty_rows,
                         pad)
        outcome = with_finite_retry(partial(judged, np.nan), partial(judged, rng.standard_normal),
                                    "the keys/values past seqused_k")
        if isinstance(outcome, Verdict):
            run.add(outcome)
        elif case.probe and outcome.what == "raised":
            run.skip(case.name, f"fn rejects head dims {case.D} / {case.Dv} (unsupported, not judged): {outcome}")
        else:
            run.problem(case.name, outcome)


def _call_and_judge(run, case, q, k, v, cu_q, cu_k, kw, call_kw, precision, group, empty_rows, pad, poison):
    """One call with the slots past ``seqused_k`` holding ``poison`` (NaN, or a draw function): the
    verdict, or the call's problem."""
    given = [as_given(a, precision) for a in (q, k, v)]  # q, k, v hold values of the claim already: exact
    if pad is not None:
        for a in given[1:]:
            a[pad] = poison if not callable(poison) else as_given(poison(a[pad].shape), precision)
    kk, vv = (np.asarray(a, np.float64) for a in given[1:])
    args = (*given, cu_q, cu_k, int(max(case.q_lens)), int(max(case.k_lens)))
    out, problem = run.call(args, call_kw, shape=(q.shape[0], HEADS, case.Dv), finite=False)
    if problem is not None:
        return problem
    return _judge(case, np.asarray(out, np.float64), q, kk, vv, cu_q, cu_k, kw, precision, group, empty_rows, pad)


def _sequences(case, cu_q, cu_k):
    """``(b, rows, keys)`` slices of each sequence with queries (keys: the used ones)."""
    for b in range(len(case.q_lens)):
        if case.q_lens[b] == 0:
            continue
        used = case.k_lens[b] if case.used is None else case.used[b]
        yield b, slice(int(cu_q[b]), int(cu_q[b + 1])), slice(int(cu_k[b]), int(cu_k[b]) + used)


def _heads(a, rows, group=1):
    x = np.swapaxes(a[rows], 0, 1)  # (heads, n, X)
    return np.repeat(x, group, axis=0) if group > 1 else x


def _judge(case, out, q, k, v, cu_q, cu_k, kw, precision, group, empty_rows, pad):
    """The case's verdict: each sequence by the rule (heads as its batch), its empty rows by the convention."""
    items = ((b, np.swapaxes(out[rows], 0, 1), _heads(q, rows), _heads(k, keys, group), _heads(v, keys, group), kw)
             for b, rows, keys in _sequences(case, cu_q, cu_k))
    return judge_sequences(case.name, items, precision=precision, empty_rows=empty_rows,
                           meaning=f"the tolerance rule vs the oracle, sequence by sequence ({precision} inputs)",
                           diagnose=lambda bound: _diagnose(case, out, q, k, v, cu_q, cu_k, kw, group, pad, bound))


def _diagnose(case, out, q, k, v, cu_q, cu_k, kw, group, pad, bound):
    """What a wrong packed output looks like: the candidates of the common varlen faults."""
    if pad is not None and np.isnan(out).any():
        return f"looks like: {NAN_FROM_UNUSED}"
    cands = []
    qa, ka, va = _heads(q, slice(None)), _heads(k, slice(None), group), _heads(v, slice(None), group)
    if pad is not None:
        full = varlen_attention(q, k, v, cu_q, cu_k, **kw)  # the whole slot
        cands.append(("seqused_k ignored: it attends to the slot's padding", full))
    cands.append(("no block-diagonal mask: queries attend to every sequence's keys",
                  np.swapaxes(softmax_attention(qa, ka, va, **{n: x for n, x in kw.items() if n != "causal"}), 0, 1)))
    if case.causal:
        top_left = np.zeros_like(out)
        for b, rows, keys in _sequences(case, cu_q, cu_k):
            o = softmax_attention(_heads(q, rows), _heads(k, keys, group), _heads(v, keys, group),
                                  **dict(kw, causal="top_left"))
            top_left[rows] = np.swapaxes(o, 0, 1)
        cands.append(("the causal mask aligned top-left within each sequence (bottom-right expected)", top_left))
        cands.append(("the causal mask over the packed batch's positions, no block-diagonal mask",
                      np.swapaxes(softmax_attention(qa, ka, va, **dict(kw, causal="top_left")), 0, 1)))
    for name, cand in cands:
        with np.errstate(invalid="ignore"):
            if float(np.nanmax(np.abs(out - cand), initial=0.0)) <= max(bound, 1e-300) and not np.isnan(out).any():
                return f"looks like: {name}"
    return "no known fault matches"


# --- the backward ----------------------------------------------------------------------------
def check_varlen_backward(run, *, precision="float64", gqa=False, empty_rows="zeros"):
    """``--kind varlen_backward``: ``fn(q, k, v, dout, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
    max_seqlen_k[, causal=, window_size=, seqused_k=]) -> (dq, dk, dv)`` in the packed shapes, on the
    varlen kind's cases, each sequence's gradients judged against
    [`refattn.attention_backward`][refattn.exact.attention_backward] by the rule with the backward's
    rounding allowance (``precision`` float64 or float32; ``dk``, ``dv`` of a grouped key/value head
    summed over its query heads). The gradients of the slots past ``seqused_k`` are not judged; with
    ``empty_rows="any"``, ``dout`` is 0 on rows that see no key (no gradient flows from them)."""
    rng = np.random.default_rng([run.report.seed, 19])
    group = 2 if gqa else 1
    for case in VARLEN_CASES:
        q, k, v, cu_q, cu_k = _batch(case, rng, precision, group)
        dout = round_to(rng.standard_normal((q.shape[0], HEADS, case.Dv)), precision)
        kw = _options(case)
        call_kw = _call_keywords(case)
        need = next((n for n in call_kw if not run.accepts(n)), None)
        if need:
            run.skip(case.name, f"fn takes no {need}= keyword")
            continue
        if empty_rows == "any":  # rows that see no key pass no gradient, whatever the kernel puts there
            for b, rows, keys in _sequences(case, cu_q, cu_k):
                _, lse = softmax_attention(_heads(q, rows), _heads(k, keys, group), _heads(v, keys, group),
                                           return_lse=True, **kw)
                dout[rows] = np.where(np.isfinite(lse).T[..., None], dout[rows], 0.0)
        given = [as_given(a, precision) for a in (q, k, v, dout)]
        shapes = [q.shape, k.shape, v.shape]
        grads, problem = run.call((*given, cu_q, cu_k, int(max(case.q_lens)), int(max(case.k_lens))), call_kw,
                                  shape=shapes, parts=3)
        if problem is not None:
            if case.probe and problem.what == "raised":
                run.skip(case.name, f"fn rejects head dims {case.D} / {case.Dv} (unsupported, not judged): {problem}")
            else:
                run.problem(case.name, problem)
            continue
        run.add(_judge_backward(case, [np.asarray(g, np.float64) for g in grads], q, k, v, dout, cu_q, cu_k, kw,
                                precision, group))


def _grouped(a, group):
    """``(Hq, n, X)`` gradients of repeated key/value heads summed over each group: ``(Hk, n, X)``."""
    return a.reshape(a.shape[0] // group, group, *a.shape[1:]).sum(axis=1) if group > 1 else a


def _judge_backward(case, grads, q, k, v, dout, cu_q, cu_k, kw, precision, group):
    """One verdict: every sequence's dq, dk, dv by the rule; the failing sequences and gradients named."""
    worst, failed, bounds = None, [], {}
    for b, rows, keys in _sequences(case, cu_q, cu_k):
        qs, ks, vs, do = _heads(q, rows), _heads(k, keys, group), _heads(v, keys, group), _heads(dout, rows)
        ref64 = attention_backward(qs, ks, vs, do, **kw)
        ref_lo = attention_backward(qs, ks, vs, do, dtype=precision, **kw)
        allow = [a + c for a, c in zip(*(backward_allowance(qs, ks, vs, do, kw, unit_roundoff(p))
                                         for p in (precision, "float64")))]
        got = (grads[0][rows], grads[1][keys], grads[2][keys])
        results = []
        for name, g, r, lo, a, grouped in zip(("dq", "dk", "dv"), got, ref64, ref_lo, allow, (False, True, True)):
            fold = (lambda x: _grouped(x, group)) if grouped else (lambda x: x)
            res = compare(np.swapaxes(g, 0, 1), fold(r), fold(lo), precision=precision, allowance=fold(a))
            results.append((name, res))
        for name, res in results:
            if worst is None or (res.worst_error / res.bound if res.bound else np.inf) > worst[1]:
                worst = (name, res.worst_error / res.bound if res.bound else np.inf, res)
        bounds[b] = [res.bound for _, res in results]
        bad = [name for name, res in results if not res.passed]
        if bad:
            failed.append(f"{b} ({', '.join(bad)})")
    meaning = f"the tolerance rule on dq, dk, dv vs attention_backward, sequence by sequence ({precision})"
    if worst is None:
        return Verdict(case.name, True, meaning, statistic=0.0, bound=0.0, effect="no sequence with keys")
    name, _, res = worst
    if failed:
        return Verdict(case.name, False, f"{meaning}; sequences {', '.join(failed)} wrong; "
                       f"{_diagnose_backward(case, grads, q, k, v, dout, cu_q, cu_k, kw, group, bounds, precision)}",
                       statistic=res.worst_error, bound=res.bound, effect=f"{name} err {res.worst_error:.2g}")
    return Verdict(case.name, True, meaning, statistic=res.worst_error, bound=res.bound,
                   effect=f"{name} err {res.worst_error:.2g}")


def _diagnose_backward(case, grads, q, k, v, dout, cu_q, cu_k, kw, group, bounds, precision):
    """What wrong packed gradients look like: top-left causal masks, grouped heads not summed (a candidate
    matches when each sequence's gradients are within their own bounds of it, plus the rule's floor at
    the candidate's own scale)."""
    cands = {}
    if case.causal:
        cands["the backward's causal mask aligned top-left within each sequence (bottom-right expected)"] = \
            dict(kw, causal="top_left"), False
    if group > 1:
        cands["dk, dv of a key/value head from one query head of its group, not summed over the group"] = kw, True
    for name, (okw, first) in cands.items():
        ok = True
        for b, rows, keys in _sequences(case, cu_q, cu_k):
            ref = attention_backward(_heads(q, rows), _heads(k, keys, group), _heads(v, keys, group),
                                     _heads(dout, rows), **okw)
            kv = [r[::group] if first else _grouped(r, group) for r in ref[1:]]
            for g, r, bound in zip((grads[0][rows], grads[1][keys], grads[2][keys]), (ref[0], *kv), bounds[b]):
                floor = 4 * eps(precision) * float(np.max(np.abs(r), initial=0.0))
                ok &= float(np.max(np.abs(np.swapaxes(g, 0, 1) - r), initial=0.0)) <= bound + floor
        if ok:
            return f"looks like: {name}"
    return "no known fault matches"
