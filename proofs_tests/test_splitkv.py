"""Split-KV states and their merge (refattn.splitkv) against their definition, and the merge's rounding
allowance (refattn.tolerance.merge_allowance) against merges computed in float32 the ways kernels
compute them. The first group is deterministic; the allowance is checked over random states drawn
from the ``seed`` fixture, with a power twin (a merge in bfloat16 exceeds the float32 allowance)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from refattn import softmax_attention
from refattn.check.serving_bugs import merge_kernel
from refattn.precision import unit_roundoff
from refattn.splitkv import merge_states, partial_states, split_edges
from refattn.tolerance import merge_allowance

TOL = 1e-12
OPTIONS = ({}, {"causal": True}, {"window": (3, 1)}, {"key_lengths": np.array([4, 0])}, {"softcap": 2.0},
           {"bias": np.full((1, 1), 150.0)})


@pytest.mark.parametrize("kw", OPTIONS, ids=lambda kw: ",".join(kw) or "plain")
@pytest.mark.parametrize("splits", [1, 3, 20, (0, 0, 5, 5, 13)], ids=str)
def test_merging_the_states_of_any_split_is_the_attention(kw, splits):
    """More chunks than keys and empty chunks included; rows that see no key are zeros with lse -inf."""
    rng = np.random.default_rng(5)
    q, k, v = rng.normal(size=(2, 5, 8)), rng.normal(size=(2, 13, 8)), rng.normal(size=(2, 13, 3))
    outs, lses = partial_states(q, k, v, splits, **kw)
    assert outs.shape == (len(split_edges(13, splits)) - 1, 2, 5, 3)
    out, lse = merge_states(outs, lses)
    ref, ref_lse = softmax_attention(q, k, v, return_lse=True, **kw)
    np.testing.assert_allclose(out, ref, atol=TOL)
    np.testing.assert_array_equal(np.isinf(lse), np.isinf(ref_lse))
    np.testing.assert_allclose(np.where(np.isinf(lse), 0, lse), np.where(np.isinf(ref_lse), 0, ref_lse), atol=TOL)


def test_the_conventions_base_2_and_an_empty_plus_inf():
    rng = np.random.default_rng(6)
    q, k, v = rng.normal(size=(3, 8)), rng.normal(size=(10, 8)), rng.normal(size=(10, 2))
    outs, lses = partial_states(q, k, v, (0, 4, 4, 10), key_lengths=np.array(10))
    out, lse = merge_states(outs, lses)
    out2, lse2 = merge_states(outs, lses / np.log(2.0), base="2")
    np.testing.assert_allclose(out2, out, atol=TOL)
    np.testing.assert_allclose(lse2 * np.log(2.0), lse, atol=TOL)
    plus = np.where(np.isinf(lses), np.inf, lses)
    np.testing.assert_allclose(merge_states(outs, plus, empty="+inf")[0], out, atol=TOL)
    outs_e, lses_e = partial_states(q, k, v, 2, mask=np.zeros((3, 10), bool))  # no key anywhere
    o, l = merge_states(outs_e, np.where(np.isinf(lses_e), np.inf, lses_e), empty="+inf")
    assert np.all(o == 0) and np.all(l == np.inf)
    assert np.all(merge_states(outs_e, lses_e)[1] == -np.inf)


def test_the_merge_is_associative_commutative_and_takes_a_sink_as_a_state():
    rng = np.random.default_rng(7)
    q, k, v = rng.normal(size=(2, 4, 8)), rng.normal(size=(2, 30, 8)), rng.normal(size=(2, 30, 5))
    outs, lses = partial_states(q, k, v, 6)
    whole = merge_states(outs, lses)
    a, b = merge_states(outs[:2], lses[:2]), merge_states(outs[2:], lses[2:])
    nested = merge_states(np.stack([a[0], b[0]]), np.stack([a[1], b[1]]))
    perm = rng.permutation(6)
    shuffled = merge_states(outs[perm], lses[perm])
    for got in (nested, shuffled):
        np.testing.assert_allclose(got[0], whole[0], atol=TOL)
        np.testing.assert_allclose(got[1], whole[1], atol=TOL)
    sinks = np.array([0.5, -1.0])
    with_sink = merge_states(np.concatenate([outs, np.zeros((1, 2, 4, 5))]),
                             np.concatenate([lses, np.broadcast_to(sinks[:, None], (1, 2, 4))]))
    np.testing.assert_allclose(with_sink[0], softmax_attention(q, k, v, sinks=sinks), atol=TOL)


def test_states_written_in_float32_are_the_rounded_float64_states():
    rng = np.random.default_rng(8)
    q, k, v = rng.normal(size=(4, 16)), rng.normal(size=(40, 16)), rng.normal(size=(40, 16))
    o64, l64 = partial_states(q, k, v, 3)
    o32, l32 = partial_states(q, k, v, 3, dtype="float32")
    assert o32.dtype == np.float32 and l32.dtype == np.float32
    np.testing.assert_array_equal(o32, o64.astype(np.float32))
    np.testing.assert_array_equal(l32, l64.astype(np.float32))


@pytest.mark.parametrize("bad, match", [
    (dict(lses=np.array([[np.nan, 0.0]])), "lses"),
    (dict(lses=np.array([[np.inf, 0.0]])), "lses"),
    (dict(lses=np.zeros((2, 2))), "lses"),
    (dict(outs=np.full((1, 2, 3), np.nan)), "outs"),
    (dict(base="10"), "base"),
    (dict(empty="nan"), "empty"),
    (dict(dtype="float16"), "dtype"),
])
def test_bad_merge_input_names_the_argument(bad, match):
    args = dict(outs=np.zeros((1, 2, 3)), lses=np.zeros((1, 2)))
    args.update(bad)
    with pytest.raises((TypeError, ValueError), match=match):
        merge_states(args.pop("outs"), args.pop("lses"), **args)


@pytest.mark.parametrize("splits, match", [(0, "splits"), ((0, 5), "splits"), ((1, 10), "splits"), (True, "splits"),
                                           ((0, 6, 4, 10), "splits")])
def test_bad_splits_and_sinks_name_the_argument(splits, match):
    q = np.zeros((2, 4))
    with pytest.raises((TypeError, ValueError), match=match):
        partial_states(q, np.zeros((10, 4)), np.zeros((10, 2)), splits)
    with pytest.raises(ValueError, match="sinks"):
        partial_states(q, np.zeros((10, 4)), np.zeros((10, 2)), 2, sinks=np.array(1.0))


def _random_states(rng, P, T=6, N=3, D=16):
    """States of random attention problems with lses spread wide and shifted far from 0 (float32)."""
    q = rng.normal(size=(N, T, D)) * rng.uniform(0.5, 6.0)
    k, v = rng.normal(size=(N, 8 * P, D)), rng.normal(size=(N, 8 * P, D)) * rng.uniform(0.1, 10.0)
    bias = np.full((1, 1), rng.uniform(-150.0, 150.0))
    edges = np.sort(np.concatenate([[0, 8 * P], rng.integers(0, 8 * P, size=P - 1)]))
    return partial_states(q, k, v, edges, bias=bias, dtype="float32")


def test_every_float32_merge_is_within_the_merge_allowance_and_a_bfloat16_one_is_not(seed):
    """The allowance bounds |merge_32 - merge_64| for the combine and the pairwise fold, in base e and 2,
    over 40 random state sets (a bound: no chance of failing a correct merge). Power twin: a merge that
    rounds its weights to bfloat16 exceeds it on most sets."""
    rng = np.random.default_rng([seed, 91])
    u = unit_roundoff("float32")
    exceeded = twins = 0
    for _ in range(40):
        P = int(rng.integers(1, 9))
        outs, lses = _random_states(rng, P)
        o_tn = np.ascontiguousarray(np.swapaxes(outs, 1, 2))  # (P, T, N, D)
        ref, ref_lse = merge_states(outs.astype(np.float64), lses.astype(np.float64))
        allow, allow_lse = merge_allowance(outs, lses, u)
        for order in ("combine", "fold"):
            for base in ("e", "2"):
                given = lses / np.float32(np.log(2.0)) if base == "2" else lses
                out, lse = merge_kernel(o_tn, given, order=order, base=base)
                lse = lse.astype(np.float64) * (np.log(2.0) if base == "2" else 1.0)
                assert np.all(np.abs(np.swapaxes(out, 0, 1) - ref) <= allow), (order, base, P)
                assert np.all(np.abs(lse - ref_lse) <= allow_lse + 1e-300), (order, base, P)
        if P == 1:
            continue  # one state: its weight 1 is exact in any format
        twins += 1
        w = np.exp(lses - ref_lse).astype(ml_dtypes.bfloat16).astype(np.float64)  # weights rounded to bfloat16
        coarse = np.sum(w[..., None] * outs, axis=0)
        exceeded += bool(np.any(np.abs(coarse - ref) > allow))
    assert exceeded >= 0.75 * twins, (exceeded, twins)
    assert float(np.max(allow)) < 1e4 * u * float(np.max(np.abs(outs)))  # not vacuous
