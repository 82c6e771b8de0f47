r"""``--kind backward``: an attention backward ``fn(q, k, v, dout) -> (dq, dk, dv)`` (and
``causal=``, ``mask=`` when it takes them; ``(dq, dk, dv, dsinks)`` for the attention-sink cases when it
takes ``sinks=``), judged case by case against
[`refattn.attention_backward`][refattn.exact.attention_backward] by the FlashAttention rule, one verdict per case (every one of
``dq``, ``dk``, ``dv`` within its bound).

The grid is the exact kind's (`refattn.check.exact.grid`: the small cases and, by default, the
tile-crossing ones): ``T != S``, ``T = S``,
``H = 1``, odd sizes, batch dims, logits far apart, causal ``T = S``, ``T < S``, ``T > S`` in the
claimed alignment, a boolean mask, and flash-attn's options the callable takes (sliding window,
softcap, ALiBi, additive bias, key padding, attention sinks); ``dout`` is standard normal. Claims: ``float64`` (default) and
``float32`` (inputs in float32, judged against the backward computed in float32,
``attention_backward(dtype=float32)``).

A failing case is diagnosed against the common backward faults (Dao et al. 2022, Algorithm 2;
the docs' exact-attention page, "Backward"), each computed from the dense formulas
``dV = P^T dO``, ``dP = dO V^T``, ``dS = P (dP - delta)``, ``delta_i = dO_i . O_i``,
``dQ = s dS K``, ``dK = s dS^T Q``:

- the ``rowsum(dO * O)`` term ``delta`` left out (``dS = P dP``);
- the softmax scale ``s`` left out of ``dq`` and ``dk``;
- ``dv`` from the unnormalised probabilities ``exp(l - max l)``;
- no causal mask in the backward (the forward's mask dropped);
- the other causal alignment in the backward (top-left where bottom-right is claimed, or back).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from refattn._validation import InputError
from refattn.check.exact import (BATCH, DEFAULT_HEAD_DIMS, DEFAULT_SIZES, HEADS, KV_HEADS, _call_kwargs, _from_layout,
                                 _inputs, _to_layout, grid, missing_keyword)
from refattn.check.verdict import Verdict
from refattn.exact import attention_backward, attention_probabilities, softmax_attention
from refattn.problem import score_problem
from refattn.precision import as_dtype, unit_roundoff
from refattn.tolerance import backward_allowance, compare

__all__ = ["check_backward", "BACKWARD_PRECISIONS"]

BACKWARD_PRECISIONS = ("float64", "float32")


def _dense_backward(p, q, k, v, dout, scale, *, delta=True, scaled=True, p_dv=None):
    """``(dq, dk, dv)`` from probabilities ``p`` by the dense formulas, with a fault switched in."""
    o = p @ v
    dv = np.swapaxes(p if p_dv is None else p_dv, -1, -2) @ dout
    dp = dout @ np.swapaxes(v, -1, -2)
    ds = p * (dp - np.sum(dout * o, axis=-1, keepdims=True)) if delta else p * dp
    s = scale if scaled else 1.0
    return s * ds @ k, s * np.swapaxes(ds, -1, -2) @ q, dv


def _faults(q, k, v, dout, kw):
    """``(name, (dq, dk, dv))`` under each common backward fault."""
    q, k, v, dout = (np.asarray(a, dtype=np.float64) for a in (q, k, v, dout))
    scale = 1.0 / np.sqrt(q.shape[-1])
    p = attention_probabilities(q, k, **kw)
    logits = score_problem(q, k, **kw).logits()  # (..., T, S), -inf where masked
    top = np.max(logits, axis=-1, keepdims=True)
    unnorm = np.exp(logits - np.where(np.isfinite(top), top, 0.0))  # rows' largest entry 1, masked 0
    out = [("the rowsum(dO * O) term left out of dS", _dense_backward(p, q, k, v, dout, scale, delta=False)),
           ("the softmax scale left out of dq and dk", _dense_backward(p, q, k, v, dout, scale, scaled=False)),
           ("dv from unnormalised probabilities", _dense_backward(p, q, k, v, dout, scale, p_dv=unnorm))]
    if "causal" in kw:
        full = attention_probabilities(q, k, **{a: b for a, b in kw.items() if a != "causal"})
        out.append(("no causal mask in the backward", _dense_backward(full, q, k, v, dout, scale)))
        other = "top_left" if kw["causal"] in (True, "bottom_right") else "bottom_right"
        p_other = attention_probabilities(q, k, **dict(kw, causal=other))
        out.append((f"the other causal alignment ({other}) in the backward",
                    _dense_backward(p_other, q, k, v, dout, scale)))
    return out


def _grouped(grads, group):
    """``(dq, dk, dv[, dsinks])`` with ``dk``, ``dv`` of the repeated key/value heads summed back over each
    group (query head ``h`` reads key/value head ``h // group``: its gradient collects from every reader);
    the sinks are per query head and stay."""
    if group == 1:
        return grads
    dq, dk, dv, *rest = grads
    fold = lambda g: g.reshape(g.shape[0], g.shape[1] // group, group, *g.shape[2:]).sum(axis=2)  # noqa: E731
    return (dq, fold(dk), fold(dv), *rest)


def check_backward(run, *, alignment="bottom_right", precision="float64", layout="TH", equal_head_dims=False,
                   gqa=False, sizes=DEFAULT_SIZES, head_dims=DEFAULT_HEAD_DIMS, probe_head_dims=False,
                   empty_rows="zeros"):
    """Run the grid on ``run.fn``; one verdict per case. ``layout``, ``equal_head_dims`` and ``gqa`` as
    for the exact kind ([`refattn.check.exact.check_exact`][refattn.check.exact.check_exact]); with a layout the gradients are
    judged on the whole batch. With ``gqa`` the key/value gradients must be summed over the query heads
    that share each key/value head. ``sizes``, ``head_dims``, ``probe_head_dims``: the exact kind's
    size preset ([`refattn.check.exact.grid`][refattn.check.exact.grid]). ``empty_rows``: ``"zeros"`` (the default:
    a row that sees no key has output 0, so no gradient, flash-attn's and torch SDPA's convention) or
    ``"any"`` (a kernel's own convention for such rows, JAX's uniform weights say: ``dout`` is 0 on
    them, so they carry no gradient either way)."""
    if empty_rows not in ("zeros", "any"):
        raise InputError(f"empty_rows: the backward kind judges 'zeros' or 'any', got {empty_rows!r}")
    if alignment not in ("bottom_right", "top_left"):
        raise InputError(f"alignment: expected 'bottom_right' or 'top_left', got {alignment!r}")
    if precision not in BACKWARD_PRECISIONS:
        raise InputError(f"precision: the backward kind judges {BACKWARD_PRECISIONS} claims, got {precision!r}")
    takes = {name: run.accepts(name) for name in ("causal", "mask")}
    rng = np.random.default_rng([run.report.seed, 5])
    dt = as_dtype(precision)
    for case in grid(sizes, head_dims):
        if case.dtype != np.float64:
            continue  # low-precision inputs: a claim of that precision covers them
        if case.option == "return_lse":  # the lse is the forward's; the backward takes its gradient
            case = replace(case, name=case.name.replace("log-sum-exp", "the lse's gradient (dlse)"), option="dlse")
        if equal_head_dims:
            case = replace(case, Hv=case.H)
        if layout != "TH":
            if case.batch:
                continue  # leading batch dims: the layout's own axes cover them
            case = replace(case, batch=(BATCH, HEADS) if layout in ("BNTH", "BTNH") else (BATCH, 1))
        need = missing_keyword(case, run, takes)
        if need:
            run.skip(case.name, f"fn takes no {need}= keyword")
            continue
        (q, k, v), kw = _inputs(case, rng)
        dout = rng.standard_normal(case.batch + (case.T, case.Hv))
        q, k, v, dout = (a.astype(dt) for a in (q, k, v, dout))
        dlse = rng.standard_normal(q.shape[:-1]).astype(dt) if case.option == "dlse" else None
        group = HEADS // KV_HEADS if gqa else 1
        k, v = k[:, ::group] if gqa else k, v[:, ::group] if gqa else v  # (B, N / group, S, .)
        call_kw = _call_kwargs(kw)
        if case.causal:
            call_kw["causal"] = True
            kw["causal"] = alignment
        if dlse is not None:  # flash-attn's lse layout: (B, N, T) with heads, (B, T) for BTH
            call_kw["dlse"] = dlse[:, 0] if layout == "BTH" else dlse
        if empty_rows == "any":  # no gradient flows from a row that sees no key, whatever the kernel puts there
            kr, vr = (np.repeat(a, group, axis=1) if group > 1 else a for a in (k, v))
            _, lse = softmax_attention(q, kr, vr, return_lse=True, **kw)
            dout = np.where(np.isfinite(lse)[..., None], dout, 0).astype(dt)
        given = [_to_layout(a, layout) if layout != "TH" else a for a in (q, k, v, dout)]
        shapes = [a.shape for a in given[:3]] + ([np.shape(call_kw["sinks"])] if "sinks" in call_kw else [])
        grads, problem = run.call(tuple(given), call_kw, shape=shapes, parts=len(shapes))
        if problem is not None:
            if case.sized and problem.what == "raised" and probe_head_dims:
                run.skip(case.name, f"fn rejects head dim {case.H} (--probe-head-dims: unsupported): {problem}")
            else:
                run.batched_problem(case, problem)
            continue
        if layout != "TH":
            grads = tuple(_from_layout(g, layout) for g in grads[:3]) + tuple(grads[3:])
        if "sinks" in kw:  # dsinks in the oracle's shape (the call's is at least 1-d)
            grads = tuple(grads[:3]) + (np.reshape(grads[3], np.shape(kw["sinks"])),)
        _judge(run, case, grads, q, k, v, dout, kw, precision, group, dlse)


def _first_item(kw):
    """The oracle's keywords for the first batch item alone (per-item key lengths cut to it)."""
    return {a: (np.asarray(b)[:1] if a == "key_lengths" and np.ndim(b) else b) for a, b in kw.items()}


def _judge(run, case, grads, q, k, v, dout, kw, precision, group=1, dlse=None):
    kr, vr = (np.repeat(a, group, axis=1) if group > 1 else a for a in (k, v))
    ref64 = _grouped(attention_backward(q, kr, vr, dout, dlse=dlse, **kw), group)
    ref_lo = _grouped(attention_backward(q, kr, vr, dout, dlse=dlse, dtype=precision, **kw), group)

    def allowed(p):  # the rigorous allowance: a correct backward of the precision and the float64 one each within theirs
        return [a + b for a, b in zip(*(_grouped(backward_allowance(q, kr, vr, dout, kw, unit_roundoff(x), dlse), group)
                                        for x in (p, "float64")))]

    allowance = allowed(precision)
    results = [compare(g, r, lo, precision=precision, allowance=a)
               for g, r, lo, a in zip(grads, ref64, ref_lo, allowance)]
    names = ("dq", "dk", "dv", "dsinks")[:len(results)]
    errors = ", ".join(f"{n} {r.error:.2g}" for n, r in zip(names, results))
    meaning = f"the tolerance rule on {', '.join(names)} vs attention_backward ({precision})"
    # the rule bounds each entry on its own: the statistic is the error at the entry nearest its bound
    worst = max(results, key=lambda r: r.worst_error / r.bound if r.bound else np.inf)
    if all(r.passed for r in results):
        run.exact(case.name, worst.worst_error, worst.bound, meaning, effect=f"max err {errors}")
        return
    fault = "no known fault matches"
    if precision == "float64":
        ref32 = _grouped(attention_backward(q, kr, vr, dout, dlse=dlse, dtype=np.float32, **kw), group)
        if all(compare(g, r, lo, precision="float32", allowance=a).passed
               for g, r, lo, a in zip(grads, ref64, ref32, allowed("float32"))):
            fault = ("the errors are at float32's rounding level: a float32 backward? claim it with --precision "
                     "float32 (check(..., precision='float32'))")
    candidates = [(name, _grouped(c, group)) for name, c in _faults(q, kr, vr, dout, kw)]
    if dlse is not None:  # the lse's gradient (the rest right)
        candidates = [(name, _grouped(attention_backward(q, kr, vr, dout, dlse=g, **kw), group))
                      for name, g in (("dlse ignored (the lse's gradient left out of dS)", None),
                                      ("dlse with the wrong sign (dS = P (dP - delta - dlse))", -dlse))] + candidates
    if len(grads) == 4:  # the sink's gradient (the others right)
        dq, dk, dv, dz = ref64
        sink = [("dsinks with the wrong sign (+sum_i P_i,sink delta_i)", (dq, dk, dv, -dz)),
                ("dsinks zero (the sink treated as a constant)", (dq, dk, dv, 0 * dz))]
        if q.ndim > 2 and q.shape[0] > 1:  # a batch axis the sinks are shared over
            one = attention_backward(q[:1], kr[:1], vr[:1], dout[:1], **_first_item(kw))[3]
            sink.append(("dsinks of one batch item (not summed over the batch)", (dq, dk, dv, np.broadcast_to(
                one, np.shape(dz)))))
        candidates = sink + candidates
    if group > 1:
        full = attention_backward(q, kr, vr, dout, **kw)
        candidates += [("key/value gradients taken from one query head of each group, not summed over the group",
                        (full[0], full[1][:, ::group], full[2][:, ::group])),
                       ("key/value gradients averaged over each group instead of summed",
                        (full[0], _grouped(full, group)[1] / group, _grouped(full, group)[2] / group))]
    for name, cand in candidates:
        if all(float(np.max(np.abs(np.asarray(g, np.float64) - c), initial=0.0)) <= r.bound
               for g, c, r in zip(grads, cand, results)):
            fault = f"looks like: {name}"
            break
    run.add(Verdict(case.name, False, f"{meaning}; {fault}", statistic=worst.worst_error, bound=worst.bound,
                    effect=f"max err {errors}"))
