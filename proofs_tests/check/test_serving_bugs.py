"""The serving kernels and their bugs (refattn.check.serving_bugs): the merge, packed and paged kernels
without a fault are their definitions (the merge in both orders, conventions and layouts; the oracle)
and pass every check of their kind; each bug fails its named check at the defaults with its diagnosis. Deterministic given
the seed (the merge kind draws its states from it); 30 seeds in the slow test."""

import os

import numpy as np
import pytest

from refattn.check import check
from refattn.check.serving_bugs import (CORRECT_VARLEN_BACKWARD, VARLEN_BACKWARD_BUGS, VARLEN_BACKWARD_FAULTS,
                                         varlen_backward_kernel)
from refattn.check.serving_bugs import (CORRECT_FP8, CORRECT_MERGES, CORRECT_PAGED, CORRECT_VARLEN, FP8_BUGS,
                                         FP8_FAULTS, MERGE_BUGS, MERGE_FAULTS, PAGED_BUGS, PAGED_FAULTS, VARLEN_BUGS,
                                         VARLEN_FAULTS, fp8_forward, merge_kernel, paged_kernel, varlen_kernel)
from refattn.splitkv import merge_states, partial_states

#: What each bug's failing verdict must say (its diagnosis).
DIAGNOSES = {"merge: lse_max guard a no-op": "max lse = -inf", "merge: pairwise merge without a guard": "max lse = -inf",
             "merge: exp(lse) without the max": "without subtracting the max",
             "merge: hard-coded lse strides": "other layout's strides",
             "merge: +inf of an empty split read as a value": "+inf lse read as a value",
             "merge: base-2 lse read as natural": "read in base e, not base 2",
             "merge: lse of the merge as the states' max": "the states' max lse"}


@pytest.mark.parametrize("order", ["combine", "fold"])
@pytest.mark.parametrize("base, empty, layout", [("e", "-inf", "NT"), ("2", "+inf", "TN")])
def test_the_kernel_without_a_fault_is_the_merge(order, base, empty, layout):
    rng = np.random.default_rng(3)
    q, k, v = rng.normal(size=(3, 5, 8)), rng.normal(size=(3, 30, 8)), rng.normal(size=(3, 30, 4))
    outs, lses = partial_states(q, k, v, (0, 7, 7, 20, 30), key_lengths=np.array([30, 0, 12]))  # (P, N, T, .)
    ref, ref_lse = merge_states(outs, lses, base="e", empty=empty)
    given = np.where(np.isinf(lses), np.inf if empty == "+inf" else -np.inf, lses / (np.log(2.0) if base == "2" else 1))
    given = given if layout == "NT" else np.swapaxes(given, 1, 2)
    out, lse = merge_kernel(np.swapaxes(outs, 1, 2), given, base=base, empty=empty, layout=layout, order=order,
                            dtype="float64")
    lse = lse if layout == "NT" else lse.T
    np.testing.assert_allclose(np.swapaxes(out, 0, 1), ref, atol=1e-12)
    fin = np.isfinite(ref_lse)
    np.testing.assert_allclose(lse[fin] * (np.log(2.0) if base == "2" else 1), ref_lse[fin], atol=1e-12)
    assert np.all(lse[~fin] == ref_lse[~fin])
    with pytest.raises(ValueError, match="fault"):
        merge_kernel(np.swapaxes(outs, 1, 2), given, fault="typo")


@pytest.mark.parametrize("name", sorted(CORRECT_MERGES))
def test_the_merges_without_a_fault_pass_every_check(name, seed):
    b = CORRECT_MERGES[name]
    rep = check(b.fn, b.kind, seed=seed, isolate=False, **b.options)
    assert rep.passed, rep.format_table()


@pytest.mark.parametrize("name", sorted(MERGE_BUGS))
def test_each_reported_merge_bug_fails_its_check_with_its_diagnosis(name, seed):
    b = MERGE_BUGS[name]
    rep = check(b.fn, b.kind, seed=seed, isolate=False, **b.options)
    failed = {v.check: v.meaning for v in rep.failures}
    assert b.fails in failed, rep.format_table()
    assert DIAGNOSES[name] in failed[b.fails], failed[b.fails]


def test_every_merge_fault_is_a_catalogued_bug_with_its_source():
    planted = {b.fn.keywords["fault"] for b in MERGE_BUGS.values()}
    assert planted == set(MERGE_FAULTS) - {""}
    assert all("/" in b.source and b.what for b in MERGE_BUGS.values())


@pytest.mark.slow
def test_over_30_seeds_no_false_alarm_and_every_merge_bug_caught():
    """0 failed runs of every correct merge and every bug caught, on 30 seeds (REFATTN_CHECK_RUNS)."""
    seeds = range(5000, 5000 + int(os.environ.get("REFATTN_CHECK_RUNS", "30")))
    for name, b in {**CORRECT_MERGES, **MERGE_BUGS}.items():
        for s in seeds:
            rep = check(b.fn, b.kind, seed=s, isolate=False, **b.options)
            assert (b.fails in {v.check for v in rep.failures}) if b.fails else rep.passed, (name, s)


VARLEN_DIAGNOSES = {"varlen: causal top-left within each sequence": "aligned top-left within each sequence",
                    "varlen: no block-diagonal mask": "no block-diagonal mask",
                    "varlen: seqused_k ignored": "seqused_k ignored",
                    "varlen: padding loaded and weighted by zero": "weighs them by zero"}


def test_the_varlen_kernel_without_a_fault_is_the_oracle():
    from refattn.varlen import varlen_attention

    rng = np.random.default_rng(4)
    cu_q, cu_k = np.array([0, 3, 3, 43, 44]), np.array([0, 10, 15, 35, 35])
    q, k, v = rng.normal(size=(44, 4, 16)), rng.normal(size=(35, 2, 16)), rng.normal(size=(35, 2, 8))
    for kw, okw in (({}, {}), ({"causal": True}, {"causal": True}),
                    ({"causal": True, "window_size": (5, 0)}, {"causal": True, "window": (5, 0)})):
        np.testing.assert_allclose(varlen_kernel(q, k, v, cu_q, cu_k, 40, 20, **kw),
                                   varlen_attention(q, k, v, cu_q, cu_k, **okw), atol=1e-12)
    used = np.array([4, 5, 11, 0])
    np.testing.assert_allclose(varlen_kernel(q, k, v, cu_q, cu_k, 40, 20, seqused_k=used),
                               varlen_attention(q, k, v, cu_q, cu_k, seqused_k=used), atol=1e-12)
    with pytest.raises(ValueError, match="fault"):
        varlen_kernel(q, k, v, cu_q, cu_k, 40, 20, fault="typo")


@pytest.mark.parametrize("name", sorted(CORRECT_VARLEN))
def test_the_varlen_kernels_without_a_fault_pass_every_check(name, seed):
    b = CORRECT_VARLEN[name]
    rep = check(b.fn, b.kind, seed=seed, isolate=False, **b.options)
    assert rep.passed, rep.format_table()


@pytest.mark.parametrize("name", sorted(VARLEN_BUGS))
def test_each_varlen_bug_fails_its_check_with_its_diagnosis(name, seed):
    b = VARLEN_BUGS[name]
    rep = check(b.fn, b.kind, seed=seed, isolate=False, **b.options)
    failed = {v.check: v.meaning for v in rep.failures}
    assert b.fails in failed, rep.format_table()
    assert VARLEN_DIAGNOSES[name] in failed[b.fails], failed[b.fails]
    assert {v.fn.keywords["fault"] for v in VARLEN_BUGS.values()} == set(VARLEN_FAULTS) - {""}


@pytest.mark.slow
def test_over_30_seeds_no_false_alarm_and_every_varlen_bug_caught():
    seeds = range(6000, 6000 + int(os.environ.get("REFATTN_CHECK_RUNS", "30")))
    for name, b in {**CORRECT_VARLEN, **VARLEN_BUGS}.items():
        for s in seeds:
            rep = check(b.fn, b.kind, seed=s, isolate=False, **b.options)
            assert (b.fails in {v.check for v in rep.failures}) if b.fails else rep.passed, (name, s)


PAGED_DIAGNOSES = {"paged: the last page read whole": "the page-boundary mask",
                   "paged: one page past the need": "goes out of the table",
                   "paged: causal top-left on the cache": "aligned at the cache's start",
                   "paged: appended tokens not attended": "the appended k, v not attended"}


def test_the_paged_kernel_without_a_fault_is_the_oracle():
    from refattn.paged import paged_attention

    rng = np.random.default_rng(5)
    kc, vc = rng.normal(size=(9, 4, 2, 8)), rng.normal(size=(9, 4, 2, 3))
    q = rng.normal(size=(3, 2, 4, 8))
    table, lens = np.array([[5, 1, 7], [2, 0, 3], [8, 6, 4]]), np.array([6, 9, 0])
    for kw, okw in (({}, {}), ({"causal": True}, {"causal": True}),
                    ({"causal": True, "window_size": (3, 0)}, {"causal": True, "window": (3, 0)})):
        np.testing.assert_allclose(paged_kernel(q, kc, vc, cache_seqlens=lens, block_table=table, **kw),
                                   paged_attention(q, kc, vc, table, lens, **okw), atol=1e-12)
    np.testing.assert_allclose(paged_kernel(q, np.swapaxes(kc, 1, 2), np.swapaxes(vc, 1, 2), cache_seqlens=lens,
                                            block_table=table, layout="HND"),
                               paged_attention(q, kc, vc, table, lens), atol=1e-12)
    kn, vn = rng.normal(size=(3, 2, 2, 8)), rng.normal(size=(3, 2, 2, 3))  # appended: written after the cache
    kc2, vc2 = kc.copy(), vc.copy()
    for b in range(3):
        for t in range(2):
            s = lens[b] + t
            kc2[table[b, s // 4], s % 4], vc2[table[b, s // 4], s % 4] = kn[b, t], vn[b, t]
    np.testing.assert_allclose(paged_kernel(q, kc, vc, kn, vn, cache_seqlens=lens, block_table=table, causal=True),
                               paged_attention(q, kc2, vc2, table, lens + 2, causal=True), atol=1e-12)
    with pytest.raises(ValueError, match="fault"):
        paged_kernel(q, kc, vc, cache_seqlens=lens, block_table=table, fault="typo")


@pytest.mark.parametrize("name", sorted(CORRECT_PAGED))
def test_the_paged_kernels_without_a_fault_pass_every_check(name, seed):
    b = CORRECT_PAGED[name]
    rep = check(b.fn, b.kind, seed=seed, isolate=False, **b.options)
    assert rep.passed, rep.format_table()


@pytest.mark.parametrize("name", sorted(PAGED_BUGS))
def test_each_paged_bug_fails_its_check_with_its_diagnosis(name, seed):
    b = PAGED_BUGS[name]
    rep = check(b.fn, b.kind, seed=seed, isolate=False, **b.options)
    failed = {v.check: v.meaning for v in rep.failures}
    assert b.fails in failed, rep.format_table()
    assert PAGED_DIAGNOSES[name] in failed[b.fails], failed[b.fails]
    assert {v.fn.keywords["fault"] for v in PAGED_BUGS.values()} == set(PAGED_FAULTS) - {""}


@pytest.mark.slow
def test_over_30_seeds_no_false_alarm_and_every_paged_bug_caught():
    seeds = range(7000, 7000 + int(os.environ.get("REFATTN_CHECK_RUNS", "30")))
    for name, b in {**CORRECT_PAGED, **PAGED_BUGS}.items():
        for s in seeds:
            rep = check(b.fn, b.kind, seed=s, isolate=False, **b.options)
            assert (b.fails in {v.check for v in rep.failures}) if b.fails else rep.passed, (name, s)


FP8_DIAGNOSES = {"fp8: P saturated past the format": "P saturated: probabilities above 448 / 1024 clipped",
                 "fp8: k_descale ignored": "a descale factor ignored",
                 "fp8: descales read at the query head": "a descale factor ignored"}


@pytest.mark.parametrize("fmt", ["float8_e4m3fn", "float8_e5m2"])
def test_the_fp8_kernel_without_a_fault_is_flash_attention_3s_recipe(fmt):
    """fp8_forward is kernel_reference at the FP8 recipe (P scaled by 2^8 before its cast, float32 products,
    the output in bfloat16) up to the float32 products' order and one bfloat16 rounding; with descales, the
    same on the values code * descale."""
    from refattn.precision import as_given, kernel_reference

    rng = np.random.default_rng(8)
    q, k, v = (as_given(rng.normal(size=shape), fmt) for shape in ((9, 32), (13, 32), (13, 16)))
    for causal in (False, True):
        ref = kernel_reference(*(np.asarray(a, np.float64) for a in (q, k, v)), fmt, causal=causal)
        np.testing.assert_allclose(fp8_forward(q, k, v, causal), ref, atol=2 * 2.0 ** -8 * np.abs(ref).max())
    d = (0.25, 8.0, 2.0)
    ref = kernel_reference(*(np.asarray(a, np.float64) * s for a, s in zip((q, k, v), d)), fmt, output="float32")
    out = fp8_forward(q, k, v, q_descale=d[0], k_descale=d[1], v_descale=d[2])
    np.testing.assert_allclose(out, ref, atol=2 * 2.0 ** -8 * np.abs(ref).max())
    with pytest.raises(ValueError, match="fault"):
        fp8_forward(q, k, v, fault="typo")


@pytest.mark.parametrize("name", sorted(CORRECT_FP8))
def test_the_fp8_kernels_without_a_fault_pass_every_case(name, seed):
    b = CORRECT_FP8[name]
    rep = check(b.fn, b.kind, seed=seed, isolate=False, **b.options)
    assert rep.result == "PASS", rep.format_table()


@pytest.mark.parametrize("name", sorted(FP8_BUGS))
def test_each_fp8_bug_fails_its_check_with_its_diagnosis(name, seed):
    b = FP8_BUGS[name]
    rep = check(b.fn, b.kind, seed=seed, isolate=False, **b.options)
    failed = {v.check: v.meaning for v in rep.failures}
    assert b.fails in failed, rep.format_table()
    assert FP8_DIAGNOSES[name] in failed[b.fails], failed[b.fails]
    assert {v.fn.keywords["fault"] for v in FP8_BUGS.values()} < set(FP8_FAULTS)


@pytest.mark.slow
def test_over_30_seeds_no_false_alarm_and_every_fp8_bug_caught():
    seeds = range(8000, 8000 + int(os.environ.get("REFATTN_CHECK_RUNS", "30")))
    for name, b in {**CORRECT_FP8, **FP8_BUGS}.items():
        for s in seeds:
            rep = check(b.fn, b.kind, seed=s, isolate=False, **b.options)
            assert (b.fails in {v.check for v in rep.failures}) if b.fails else rep.result == "PASS", (name, s)


VARLEN_BACKWARD_DIAGNOSES = {
    "varlen backward: causal top-left within each sequence": "aligned top-left within each sequence",
    "varlen backward: dk, dv of one query head per group": "not summed over the group"}


def test_the_varlen_backward_kernel_without_a_fault_is_the_oracles():
    from refattn.varlen import varlen_backward

    rng = np.random.default_rng(6)
    cu_q, cu_k = np.array([0, 3, 3, 43, 44]), np.array([0, 10, 15, 35, 35])
    q, k, v = rng.normal(size=(44, 4, 16)), rng.normal(size=(35, 2, 16)), rng.normal(size=(35, 2, 8))
    dout = rng.normal(size=(44, 4, 8))
    for kw, okw in (({}, {}), ({"causal": True}, {"causal": True}),
                    ({"causal": True, "window_size": (5, 0)}, {"causal": True, "window": (5, 0)})):
        for a, b in zip(varlen_backward_kernel(q, k, v, dout, cu_q, cu_k, 40, 20, **kw),
                        varlen_backward(q, k, v, dout, cu_q, cu_k, **okw)):
            np.testing.assert_allclose(a, b, atol=1e-12)
    used = np.array([4, 5, 11, 0])
    for a, b in zip(varlen_backward_kernel(q, k, v, dout, cu_q, cu_k, 40, 20, seqused_k=used),
                    varlen_backward(q, k, v, dout, cu_q, cu_k, seqused_k=used)):
        np.testing.assert_allclose(a, b, atol=1e-12)
    with pytest.raises(ValueError, match="fault"):
        varlen_backward_kernel(q, k, v, dout, cu_q, cu_k, 40, 20, fault="typo")


@pytest.mark.parametrize("name", sorted(CORRECT_VARLEN_BACKWARD))
def test_the_varlen_backwards_without_a_fault_pass_every_check(name, seed):
    b = CORRECT_VARLEN_BACKWARD[name]
    rep = check(b.fn, b.kind, seed=seed, isolate=False, **b.options)
    assert rep.passed, rep.format_table()


@pytest.mark.parametrize("name", sorted(VARLEN_BACKWARD_BUGS))
def test_each_varlen_backward_bug_fails_its_check_with_its_diagnosis(name, seed):
    b = VARLEN_BACKWARD_BUGS[name]
    rep = check(b.fn, b.kind, seed=seed, isolate=False, **b.options)
    failed = {v.check: v.meaning for v in rep.failures}
    assert b.fails in failed, rep.format_table()
    assert VARLEN_BACKWARD_DIAGNOSES[name] in failed[b.fails], failed[b.fails]
    assert {v.fn.keywords["fault"] for v in VARLEN_BACKWARD_BUGS.values()} == set(VARLEN_BACKWARD_FAULTS) - {""}


@pytest.mark.slow
def test_over_30_seeds_no_false_alarm_and_every_varlen_backward_bug_caught():
    seeds = range(9000, 9000 + int(os.environ.get("REFATTN_CHECK_RUNS", "30")))
    for name, b in {**CORRECT_VARLEN_BACKWARD, **VARLEN_BACKWARD_BUGS}.items():
        for s in seeds:
            rep = check(b.fn, b.kind, seed=s, isolate=False, **b.options)
            assert (b.fails in {v.check for v in rep.failures}) if b.fails else rep.passed, (name, s)
