"""The backward kind (refattn.check.backward): refattn's backward and the planted NumPy backward pass
every case (in float64, and in float32 with its claim), and each common backward fault of the
catalogue fails with its diagnosis: the missing rowsum(dO * O) term, the missing scale in dq and
dk, dv from unnormalised probabilities, no causal mask in the backward. Deterministic.
"""

import numpy as np
import pytest

from refattn import attention_backward
from refattn.check import check
from refattn.check.exact import grid, per_head
from refattn.check.planted import CATALOGUE, CORRECT


def correct(q, k, v, dout, causal=False, mask=None):
    return attention_backward(q, k, v, dout, causal=causal, mask=mask)


def in_float32(q, k, v, dout, causal=False, mask=None):
    return tuple(g.astype(np.float32) for g in attention_backward(q, k, v, dout, causal=causal, mask=mask,
                                                                  dtype=np.float32))


OPTIONS = {c.name.replace("log-sum-exp", "the lse's gradient (dlse)") for c in grid() if c.option}  # flash-attn's
# options (and the lse's gradient, the backward's twin of the forward's lse cases), in every case


def test_refattns_backward_passes_every_case():
    rep = check(correct, "backward")
    cases = [c for c in grid() if c.dtype == np.float64]
    assert rep.passed and len(rep.verdicts) == len(cases), rep.format_table()
    assert all(v.passed for v in rep.verdicts if v.check not in OPTIONS)
    assert {v.check for v in rep.verdicts if v.passed is None} == OPTIONS  # it takes none of them


def test_a_backward_with_flash_attn_options_is_judged_on_them():
    def with_options(q, k, v, dout, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None, bias=None,
                     key_lengths=None, sinks=None, dlse=None):
        slopes = None if alibi_slopes is None else np.asarray(alibi_slopes)[0]
        z = None if sinks is None else per_head(sinks, q.ndim)
        grads = attention_backward(q, k, v, dout, causal=causal, window=window_size, softcap=softcap,
                                   alibi_slopes=slopes, bias=bias, key_lengths=key_lengths, sinks=z, dlse=dlse)
        return grads if sinks is None else grads[:3] + (np.reshape(grads[3], np.shape(sinks)),)
    rep = check(with_options, "backward")
    assert rep.passed and OPTIONS <= {v.check for v in rep.verdicts if v.passed}, rep.format_table()

    def no_softcap_gradient(q, k, v, dout, causal=False, softcap=0.0):
        return attention_backward(q, k, v, dout, causal=causal)  # the cap's derivative left out
    failed = {v.check for v in check(no_softcap_gradient, "backward").failures}
    assert failed == {c.name for c in grid() if c.option == "softcap"}


def test_a_float32_backward_passes_with_its_claim_and_is_diagnosed_without_it():
    assert check(in_float32, "backward", precision="float32").passed
    rep = check(in_float32, "backward")
    assert not rep.passed and all("claim it with --precision float32" in v.meaning for v in rep.failures)


@pytest.mark.parametrize("name", sorted(n for n, p in CORRECT.items() if p.kind == "backward"))
def test_correct_backward_implementations_pass(name, seed, passes):
    passes(name, seed)


@pytest.mark.parametrize("name,diagnosis", [
    ("backward without rowsum(dO * O)", "the rowsum(dO * O) term left out of dS"),
    ("backward without the scale", "the softmax scale left out of dq and dk"),
    ("dv from unnormalised P", "dv from unnormalised probabilities"),
    ("no causal mask in backward", "no causal mask in the backward"),
    ("the lse's gradient ignored", "dlse ignored"),
    ("the lse's gradient with the wrong sign", "dlse with the wrong sign"),
])
def test_planted_backward_defects_are_caught_and_named(name, diagnosis, seed, caught):
    caught(name, seed)
    p = CATALOGUE[name]
    failed = {v.check: v for v in check(p.fn, p.kind, isolate=False).failures}
    assert f"looks like: {diagnosis}" in failed[p.fails].meaning


def test_every_backward_defect_of_the_catalogue_is_tested():
    assert {n for n, p in CATALOGUE.items() if p.kind == "backward"} == {
        "backward without rowsum(dO * O)", "backward without the scale", "dv from unnormalised P",
        "no causal mask in backward", "the lse's gradient ignored", "the lse's gradient with the wrong sign"}


def test_a_backward_that_returns_one_array_is_a_verdict():
    rep = check(lambda q, k, v, dout: attention_backward(q, k, v, dout)[0], "backward")
    assert not rep.passed and "expected a tuple of 3 arrays" in rep.failures[0].meaning


def test_bad_backward_claims_name_the_argument():
    with pytest.raises(ValueError, match="^precision: the backward kind judges"):
        check(correct, "backward", precision="bfloat16")


def _grouped_query_grads(q, k, v, dout, causal=False, mask=None, *, fold="sum"):
    """(B, N, T, H) gradients of grouped-query attention; ``fold`` = "first" plants the fault of taking
    the key/value gradients from one query head of each group instead of summing over it."""
    group = q.shape[1] // k.shape[1]
    dq, dk, dv = attention_backward(q, np.repeat(k, group, 1), np.repeat(v, group, 1), dout, causal=causal, mask=mask)
    if fold == "first":
        return dq, dk[:, ::group], dv[:, ::group]
    return (dq, *(g.reshape(g.shape[0], g.shape[1] // group, group, *g.shape[2:]).sum(2) for g in (dk, dv)))


def test_grouped_query_gradients_are_summed_over_the_shared_heads():
    from functools import partial

    assert check(_grouped_query_grads, "backward", layout="BNTH", gqa=True).passed
    rep = check(partial(_grouped_query_grads, fold="first"), "backward", layout="BNTH", gqa=True)
    assert not rep.passed
    assert all("taken from one query head of each group" in v.meaning for v in rep.failures), rep.format_table()


def test_the_sink_gradient_is_judged_and_its_faults_named():
    """The backward of a kernel that takes ``sinks=`` returns ``dsinks`` too: right, it passes; with the
    wrong sign or not summed over the batch, the sink cases fail and the verdict names it."""
    def backward(q, k, v, dout, causal=False, sinks=None, *, fault=""):
        z = None if sinks is None else per_head(sinks, q.ndim)
        grads = attention_backward(q, k, v, dout, causal=causal, sinks=z)
        if sinks is None:
            return grads
        if fault == "sign":
            grads = grads[:3] + (-grads[3],)
        elif fault == "one item" and q.ndim > 2:  # the first batch item's sink gradient, not the batch's sum
            grads = grads[:3] + (attention_backward(q[:1], k[:1], v[:1], dout[:1], causal=causal, sinks=z)[3],)
        dz = grads[3]
        return grads[:3] + (np.reshape(dz, np.shape(sinks)),)

    from functools import partial

    sink_cases = {c.name for c in grid() if c.option == "sinks"}
    rep = check(backward, "backward")
    assert rep.passed and sink_cases <= {v.check for v in rep.verdicts if v.passed}, rep.format_table()
    for fault, says in [("sign", "wrong sign"), ("one item", "not summed over the batch")]:
        failed = {v.check: v.meaning for v in check(partial(backward, fault=fault), "backward").failures}
        assert set(failed) == {"attention sinks, per head"} | ({"causal attention sinks, 129 x 257"}
                                                                 if fault == "sign" else set()), failed
        assert says in failed["attention sinks, per head"], failed


def test_the_sink_gradients_allowance_bounds_a_float32_backward():
    """Derived bound, checked: on the sink cases and 20 seeds, the float32 and float64 sink gradients
    differ by at most the sum of their allowances; and the allowance stays a small part of the
    gradient's scale ``sum_i P_i,sink |delta_i|`` (float32: under 1%, float64: under 1e-9), so a sign
    flipped or a sink treated as a constant cannot hide in it. Deterministic."""
    from refattn.exact import softmax_attention
    from refattn.check.exact import _inputs
    from refattn.tolerance import backward_allowance

    for seed in range(20):
        rng = np.random.default_rng([seed, 7])
        for case in [c for c in grid() if c.option == "sinks"]:
            (q, k, v), kw = _inputs(case, rng)
            kw = dict(kw, causal=True) if case.causal else kw
            dout = rng.standard_normal(case.batch + (case.T, case.Hv))
            dz64 = attention_backward(q, k, v, dout, **kw)[3]
            dz32 = attention_backward(q, k, v, dout, dtype=np.float32, **kw)[3]
            allow = [backward_allowance(q, k, v, dout, kw, np.finfo(t).eps / 2)[3] for t in (np.float32, np.float64)]
            assert np.all(np.abs(dz32 - dz64) <= allow[0] + allow[1]), (case.name, seed)
            out, lse = softmax_attention(q, k, v, return_lse=True, **kw)
            z = np.broadcast_to(kw["sinks"], lse.shape[:-1])[..., None]
            scale = np.sum(np.exp(z - lse) * np.abs(np.sum(dout * out, axis=-1)))
            assert np.all(allow[0] < 1e-2 * scale) and np.all(allow[1] < 1e-9 * scale), (case.name, seed)


def test_the_dlse_allowance_bounds_a_float32_backward_and_not_the_faults():
    """Derived bound, checked (the shift of delta by dlse, tolerance.backward_allowance): on the dlse
    cases and 20 seeds, the float32 and float64 gradients with dlse differ by at most the sum of their
    allowances; and the float32 allowance stays under 10% of what ignoring dlse changes (1.5% at
    most on these draws, the tile case at logit spread 4), so neither fault of the catalogue can hide
    in it; the float64 claim is judged within float64's allowance, far smaller. Deterministic."""
    from refattn.check.exact import _inputs
    from refattn.tolerance import backward_allowance

    for seed in range(20):
        rng = np.random.default_rng([seed, 9])
        for case in [c for c in grid() if c.option == "return_lse"]:
            (q, k, v), kw = _inputs(case, rng)
            dout = rng.standard_normal(case.batch + (case.T, case.Hv))
            dlse = rng.standard_normal(q.shape[:-1])
            g64 = attention_backward(q, k, v, dout, dlse=dlse, **kw)
            g32 = attention_backward(q, k, v, dout, dlse=dlse, dtype=np.float32, **kw)
            plain = attention_backward(q, k, v, dout, **kw)
            allow = [a + b for a, b in zip(*(backward_allowance(q, k, v, dout, kw, np.finfo(t).eps / 2, dlse)
                                             for t in (np.float32, np.float64)))]
            for name, a, b, e, p in zip("qk", g32, g64, allow, plain):
                assert np.all(np.abs(a - b) <= e), (case.name, seed, name)
                assert np.max(e) < 0.1 * np.max(np.abs(b - p)), (case.name, seed, name)


def test_a_float32_backward_with_dlse_passes_at_float32(seed):
    from refattn.check.planted import attention_grads

    rep = check(attention_grads, "backward", precision="float32", sizes="small", seed=seed, isolate=False)
    assert rep.passed and any(v.check == "the lse's gradient (dlse)" and v.passed for v in rep.verdicts)


def test_the_rounding_allowance_bounds_two_correct_backwards_and_no_fault():
    """Derived bound, checked: on every case of the grid and 20 seeds, refattn's backward and the
    independent NumPy one differ by at most twice the allowance (each within it); and the allowance
    stays far below what the planted faults change, so it cannot hide them. Deterministic."""
    from refattn.tolerance import backward_allowance as rounding_allowance
    from refattn.check.exact import CASES, _inputs
    from refattn.check.planted import attention_grads

    u = np.finfo(np.float64).eps / 2
    for seed in range(20):
        rng = np.random.default_rng([seed, 5])
        for case in CASES:
            if case.dtype != np.float64 or case.option or case.S == 0:  # no keys: no gradient to bound
                continue
            (q, k, v), kw = _inputs(case, rng)
            dout = rng.standard_normal(case.batch + (case.T, case.Hv))
            causal = {"causal": True} if case.causal else {}
            ours = attention_backward(q, k, v, dout, **kw, **causal)
            theirs = attention_grads(q, k, v, dout, **kw, **causal)
            bounds = rounding_allowance(q, k, v, dout, dict(kw, **causal), u)
            for a, b, e in zip(ours, theirs, bounds):
                assert np.max(np.abs(a - b)) <= 2 * np.max(e), (case.name, seed)
            faulty = attention_grads(q, k, v, dout, with_delta=False, **kw, **causal)
            assert np.max(np.abs(faulty[0] - ours[0])) > 100 * np.max(bounds[0]) or case.name == "logits far apart"
