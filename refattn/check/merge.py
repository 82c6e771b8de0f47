r"""``--kind merge``: a merge of split-KV states ``fn(outs, lses) -> (out, lse)`` (flash-decoding's
combine, vLLM's ``merge_attn_states``, flashinfer's ``merge_state``/``merge_states``), judged case by
case against [`refattn.splitkv.merge_states`][refattn.splitkv.merge_states] by the tolerance rule.

The contract: ``outs (P, T, N, D)``, the ``P`` states' normalised outputs for ``T`` tokens and ``N``
heads, and ``lses (P, N, T)`` (``lse_layout="NT"``, vLLM's and flash-attn's) or ``(P, T, N)``
(``"TN"``, flashinfer's), in the claimed ``precision`` (float32 by default, as kernels keep split
states); the result is ``out (T, N, D)`` and ``lse`` in the layout of one state's. The conventions
are options: ``lse_base`` (``"e"`` or ``"2"``) and ``empty_lse`` (``"-inf"`` or ``"+inf"``; the lse of a
state that saw no key, given that way and expected back for a row whose every state is empty,
[`refattn.splitkv`][refattn.splitkv]). An empty state's output is zeros.

The states are those of real attention problems (a query's keys cut into chunks by
[`refattn.splitkv.partial_states`][refattn.splitkv.partial_states]), so each case is a state a split kernel writes: two
states, one, uneven splits, an empty split, rows whose every state is empty (``empty_rows``: they
must be zeros with the empty lse, or ``"any"``: not judged), decode with 16 splits over a long
cache, lses around ``+-200`` (beyond float32's ``exp``), states far apart, 257 tokens x 8 heads
(crossing the tiles of a merge kernel), and head dim 512 (MLA). The reference is the merge of the
given states computed in float64; the allowance is the rule's: the FlashAttention part against the
merge in the claimed precision, and the rigorous one of [`refattn.tolerance.merge_allowance`][refattn.tolerance.merge_allowance].

A failing case names what it looks like: the lse read in the other base, the lse read with the
other layout's strides (flash-attention #2388: hard-coded LSE strides), the states averaged without
their weights, ``exp(lse_c)`` without subtracting the max (overflow beyond 88.7 in float32), an
unguarded ``max = -inf`` for a row whose every state is empty (flash-attention 31920dda: NaN), an
empty state's ``+inf`` read as a value, the merged lse as the states' max rather than their
log-sum-exp, or returned in the other base.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from refattn.check.verdict import Verdict
from refattn.precision import as_dtype, largest, unit_roundoff
from refattn.splitkv import merge_states, partial_states
from refattn.tolerance import compare, merge_allowance

__all__ = ["check_merge", "MergeCase", "MERGE_CASES", "LSE_LAYOUTS", "MERGE_PRECISIONS", "states"]

LSE_LAYOUTS = ("NT", "TN")
MERGE_PRECISIONS = ("float32", "float64")


@dataclass(frozen=True)
class MergeCase:
    """One problem: ``T`` tokens, ``N`` heads of head dim ``D`` over ``S`` keys cut by ``splits`` (a
    count or edges); ``options`` of the attention; ``shift`` added to every logit (moves every lse)."""

    name: str
    T: int
    N: int
    D: int
    S: int
    splits: object
    options: dict = field(default_factory=dict)
    shift: float = 0.0
    spread: float = 1.0  # the queries' scale: lses far apart when large


MERGE_CASES = (
    MergeCase("2 states", 5, 4, 16, 40, 2),
    MergeCase("1 state", 3, 2, 16, 20, 1),
    MergeCase("7 uneven splits", 6, 4, 32, 100, (0, 3, 4, 30, 31, 60, 97, 100)),
    MergeCase("an empty split", 5, 4, 16, 40, (0, 10, 10, 25, 40)),
    MergeCase("rows with no key in any state", 7, 3, 16, 24, 3, {"key_lengths": np.array([24, 0, 9])}),
    MergeCase("causal: later splits empty for early rows", 9, 2, 16, 9, 3, {"causal": True}),
    MergeCase("decode: 16 splits of a long cache", 1, 8, 128, 2048, 16),
    MergeCase("lses near +200", 4, 3, 16, 48, 3, shift=200.0),
    MergeCase("lses near -200", 4, 3, 16, 48, 3, shift=-200.0),
    MergeCase("states far apart", 6, 4, 16, 64, 4, spread=12.0),
    MergeCase("tiles: 257 tokens x 8 heads, D = 128", 257, 8, 128, 96, 3),
    MergeCase("MLA head dim 512", 3, 16, 512, 64, 4),
)


def states(case, rng, precision="float32"):
    """``(outs (P, T, N, D), lses (P, N, T))``: a case's states in ``precision`` (natural log, ``-inf``
    empty), from an attention problem with heads as its batch axis."""
    q = rng.standard_normal((case.N, case.T, case.D)) * case.spread
    k = rng.standard_normal((case.N, case.S, case.D))
    v = rng.standard_normal((case.N, case.S, case.D))
    opts = dict(case.options)
    if case.shift:
        opts["bias"] = np.full((1, 1), case.shift)
    outs, lses = partial_states(q, k, v, case.splits, dtype=precision, **opts)  # (P, N, T, D), (P, N, T)
    return np.ascontiguousarray(np.swapaxes(outs, 1, 2)), np.ascontiguousarray(lses)


def _given(lses, base, empty, layout):
    """The lses as the callable takes them: in its base, its empty value, its layout (from ``(P, N, T)``)."""
    dt = lses.dtype
    g = lses / np.log(2.0) if base == "2" else lses.astype(np.float64)
    g = np.where(np.isinf(lses), np.inf if empty == "+inf" else -np.inf, g).astype(dt)
    return np.ascontiguousarray(g if layout == "NT" else np.swapaxes(g, 1, 2))


def _canonical_lse(lse, base, layout):
    """A returned lse (one state's layout, the callable's base) as natural log ``(N, T)`` float64."""
    a = np.asarray(lse, np.float64)
    a = a if layout == "NT" else np.swapaxes(a, 0, 1)
    return np.where(np.isfinite(a), a * (np.log(2.0) if base == "2" else 1.0), a)


def check_merge(run, *, precision="float32", lse_base="e", empty_lse="-inf", lse_layout="NT", empty_rows="zeros"):
    """Run the cases on ``run.fn``; one verdict per case (module docstring)."""
    rng = np.random.default_rng([run.report.seed, 11])
    for case in MERGE_CASES:
        outs, lses = states(case, rng, precision)
        given = _given(lses, lse_base, empty_lse, lse_layout)
        lse_shape = (case.N, case.T) if lse_layout == "NT" else (case.T, case.N)
        result, problem = run.call((outs, given), shape=[(case.T, case.N, case.D), lse_shape], finite=False, parts=2)
        if problem is not None:
            run.problem(case.name, problem)
            if "required positional argument" in str(problem) and not any("pairwise_merge" in n
                                                                          for n in run.report.notes):
                run.report.notes.append("fn takes more than (outs, lses): a two-state merge (flashinfer's merge_state, "
                                        "vLLM's merge_attn_states)? wrap it with refattn.check.adapters.pairwise_merge")
            continue
        run.add(_judge(case, result, outs, lses, given, precision, lse_base, empty_lse, lse_layout, empty_rows))


def _judge(case, result, outs, lses, given, precision, base, empty, layout, empty_rows):
    """The case's verdict: ``out`` and ``lse`` by the rule where a state saw keys, the convention elsewhere."""
    out = np.asarray(result[0], np.float64)
    lse = _canonical_lse(result[1], base, layout)
    o_nt = np.swapaxes(outs, 1, 2).astype(np.float64)  # (P, N, T, D)
    ref64, lse64 = merge_states(o_nt, lses.astype(np.float64))
    ref_lo, lse_lo = merge_states(o_nt, lses, dtype=precision)
    allow, allow_lse = merge_allowance(o_nt, lses, unit_roundoff(precision))
    a64, a64_lse = merge_allowance(o_nt, lses, unit_roundoff("float64"))
    seen = np.isfinite(lse64)  # (N, T)
    out_nt = np.swapaxes(out, 0, 1)
    res = compare(out_nt[seen], ref64[seen], ref_lo[seen], precision=precision, allowance=(allow + a64)[seen])
    res_lse = compare(lse[seen], lse64[seen], lse_lo[seen].astype(np.float64), precision=precision,
                      allowance=(allow_lse + a64_lse)[seen], atol=4 * unit_roundoff(precision))
    meaning = f"the tolerance rule vs the merge in float64 ({precision} states, lse base {base}, layout {layout})"
    faults = []
    if not res.passed:
        faults.append(_out_fault(out_nt, outs, lses, given, seen, res.bound, precision, base, empty, layout))
    elif not res_lse.passed:
        faults.append(_lse_fault(lse, lses, lse64, seen, res_lse.bound, base))
    if empty_rows == "zeros" and (~seen).any():
        want = np.inf if empty == "+inf" else -np.inf
        bad_out = ~np.all(out_nt[~seen] == 0, axis=-1)
        bad_lse = lse[~seen] != want
        if bad_out.any() or bad_lse.any():
            nan = bool(np.isnan(out_nt[~seen]).any() or np.isnan(lse[~seen]).any())
            faults.append(f"{int((bad_out | bad_lse).sum())} rows whose every state is empty are not zeros with lse "
                          f"{empty}" + ("; looks like: NaN from max lse = -inf subtracted from -inf (guard it, as "
                                        "flash-attn's combine sets lse_max = 0 when every split is empty)" if nan
                                        else ""))
    stat, bound = (res.error, res.bound) if not res.passed or res_lse.passed else (res_lse.error, res_lse.bound)
    effect = f"max err {res.error:.2g}, lse err {res_lse.error:.2g}"
    if faults:
        return Verdict(case.name, False, f"{meaning}; {'; '.join(faults)}", statistic=stat, bound=bound, effect=effect)
    return Verdict(case.name, True, meaning, statistic=stat, bound=bound, effect=effect)


def _candidates(outs_nt, lses, given, base, layout, precision):
    """``(name, out (N, T, D))`` of the common merge faults on the case's states (``outs_nt (P, N, T, D)``,
    ``lses (P, N, T)`` natural, ``given`` as the callable got them)."""
    P, N, T = lses.shape
    g = np.asarray(given if layout == "NT" else np.swapaxes(given, 1, 2), np.float64)
    g = np.where(np.isinf(g), -np.inf, g)
    other = "2" if base == "e" else "e"
    fin = np.isfinite(lses)
    wrong = given.reshape(P, T, N).swapaxes(1, 2) if layout == "NT" else given.reshape(P, N, T)
    wrong = np.where(np.isinf(wrong), -np.inf, np.asarray(wrong, np.float64))
    dt = as_dtype(precision).type
    with np.errstate(over="ignore", invalid="ignore"):  # the weights exp(lse_c) in the claimed precision
        w = np.exp(np.where(fin, lses, -np.inf).astype(dt))
        total = w.sum(axis=0)
        naive = np.where((total > 0)[..., None], np.sum(w[..., None] * outs_nt, axis=0) / total[..., None], 0.0)
    return [(f"the lse read in base {other}, not base {base}", merge_states(outs_nt, g, base=other)[0]),
            (f"exp(lse_c) without subtracting the max lse (under- or overflow in {precision})", naive),
            ("the states averaged with equal weights (their lse ignored)",
             np.sum(np.where(fin[..., None], outs_nt, 0.0), axis=0) / np.maximum(fin.sum(axis=0), 1)[..., None]),
            ("the lse read with the other layout's strides ((N, T) as (T, N) or back: hard-coded lse strides)",
             merge_states(outs_nt, wrong, base=base)[0])]


def _out_fault(out_nt, outs, lses, given, seen, bound, precision, base, empty, layout):
    """What a wrong merged output looks like."""
    nonfinite = ~np.isfinite(out_nt[seen])
    if nonfinite.any():
        top = float(np.max(np.abs(lses[np.isfinite(lses)]), initial=0.0))
        if top > np.log(largest(precision)):
            return (f"{int(nonfinite.sum())} NaN/Inf outputs; looks like: exp(lse_c) without subtracting the max lse "
                    f"(lses up to {top:.3g} overflow or underflow {precision}'s exp)")
        if empty == "+inf" and np.isinf(given).any() and (given == np.inf).any():
            return (f"{int(nonfinite.sum())} NaN/Inf outputs; looks like: an empty state's +inf lse read as a value "
                    "(read an infinite lse as an empty state, as vLLM's merge does)")
        return f"{int(nonfinite.sum())} NaN/Inf outputs where the merge is finite"
    o_nt = np.swapaxes(outs, 1, 2).astype(np.float64)
    for name, cand in _candidates(o_nt, lses, given, base, layout, precision):
        if float(np.max(np.abs(out_nt[seen] - cand[seen]), initial=0.0)) <= bound:
            return f"looks like: {name}"
    return "no known fault matches"


def _lse_fault(lse, lses, lse64, seen, bound, base):
    """What a wrong merged lse (natural log, ``(N, T)``) looks like."""
    got = lse[seen]
    if not np.isfinite(got).all():
        return "the merged lse is not finite where a state saw keys"
    nat = np.where(np.isfinite(lses), lses.astype(np.float64), -np.inf)
    if float(np.max(np.abs(got - np.max(nat, axis=0)[seen]))) <= bound:
        return "the merged lse is wrong; looks like: the states' max lse, not their log-sum-exp"
    for factor, other in ((np.log(2.0), "2"), (1 / np.log(2.0), "e")):
        if other != base and float(np.max(np.abs(got * factor - lse64[seen]))) <= bound:
            return f"the merged lse is wrong; looks like: returned in base {other}, not base {base}"
    return "the merged lse is wrong; no known fault matches"

