"""SEA's mask (refattn.sea.mask): the pinned top-k rule on the upsampled estimate, its budget
invariants, and what a mask loses (the KL chain rule, TV and the captured-mass output bound).
Deterministic.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proofs_tests.sea._draws import mask_cases, qkv
from refattn.exact import attention_probabilities
from refattn.lsh.sparse import Support
from refattn.sea import (
    bin_starts,
    captured_mass,
    column_bins,
    compressed_softmax,
    kl_decomposition,
    row_lengths,
    sea_attention,
    sea_mask,
    upsample,
)
from refattn.sea.decoder import (
    distill_decoder,
)


@st.composite
def _teacher_case(draw):
    T = draw(st.integers(1, 20))
    S = draw(st.integers(1, 25))
    K = draw(st.integers(1, S))
    causal = draw(st.sampled_from([False, True]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    L = row_lengths(T, S, causal)
    logits = rng.normal(size=(T, S)) * draw(st.sampled_from([0.5, 3.0]))
    p = attention_probabilities(logits, np.eye(S), scale=1.0,
                                mask=np.arange(S)[None, :] < L[:, None])  # rows of softmax(logits) on l_i
    est = compressed_softmax(rng.normal(size=(T, K)), L, K)
    return p, est, L


@given(case=mask_cases())
def test_mask_budget_invariants(case):
    est, L, S, topk = case
    N, T, K = est.shape
    k = np.broadcast_to(topk, (T,))
    per_head = sea_mask(est, L, S, topk)
    grouped = sea_mask(est, L, S, topk, grouped=True)
    visible = np.arange(S)[None, :] < L[:, None]
    for sup in per_head:
        np.testing.assert_array_equal(sup.row_counts(), np.minimum(k, L))  # exactly min(k, l) keys
        dense = sup.to_dense()
        assert not (dense & ~visible).any()  # within the causal mask
        assert np.all(dense[L <= k] == visible[L <= k])  # short rows are dense
    counts = np.stack([s.row_counts() for s in grouped])  # (N, T)
    np.testing.assert_array_equal(counts.sum(axis=0), N * np.minimum(k, L))
    assert np.all(counts[:, L > 0] >= 1)  # every head keeps its best column
    for sup in grouped:
        assert not (sup.to_dense() & ~visible).any()


@given(case=mask_cases())
def test_mask_cuts_at_most_one_bin_per_row(case):
    """Whole bins are taken in rank order; only the last one is cut to the budget (the cap)."""
    est, L, S, topk = case
    K = est.shape[2]
    for h, sup in enumerate(sea_mask(est, L, S, topk)):
        for i in range(est.shape[1]):
            if L[i] == 0:
                continue
            cols = sup.indices[sup.indptr[i]:sup.indptr[i + 1]]
            bins = column_bins(cols, L[i], K)
            taken = np.bincount(bins, minlength=K)
            width = np.diff(bin_starts([L[i]], K)[0])
            assert np.sum((taken > 0) & (taken < width)) <= 1


@given(case=mask_cases())
def test_larger_budget_gives_a_superset(case):
    """Test-time k: the selection is a prefix of one ranking, so masks are nested in k."""
    est, L, S, topk = case
    small = sea_mask(est, L, S, np.maximum(np.broadcast_to(topk, L.shape) // 2, 1))
    big = sea_mask(est, L, S, topk)
    for a, b in zip(small, big):
        assert not (a.to_dense() & ~b.to_dense()).any()


@given(case=mask_cases())
def test_grouped_topk_captures_at_least_the_per_head_estimated_mass(case):
    """On the upsampled estimate, grouped selection solves the shared-budget (fractional knapsack)
    problem, of which the per-head selection is a feasible point (docs/sea.md)."""
    est, L, S, topk = case
    up = upsample(est, L, S)  # (N, T, S)

    def mass(sups):
        return sum((up[h] * s.to_dense()).sum(axis=1) for h, s in enumerate(sups))

    assert np.all(mass(sea_mask(est, L, S, topk, grouped=True)) >= mass(sea_mask(est, L, S, topk)) - 1e-12)


@given(case=_teacher_case())
def test_kl_chain_rule_and_floor(case):
    p, est, L = case
    total, compressed, floor = kl_decomposition(p, est, L)
    np.testing.assert_allclose(total, compressed + floor, rtol=1e-10, atol=1e-12)
    assert np.all(floor >= -1e-12) and np.all(compressed >= -1e-12)


def test_oracle_estimate_reaches_the_floor():
    q, k, v = qkv(T=25, S=25, seed=3)
    res = sea_attention(q, k, v, n_bins=6, topk=5, m=8, rng=0, causal=True, decoder="oracle")
    P = attention_probabilities(q, k, causal=True)
    total, compressed, floor = kl_decomposition(P, res.estimate, res.lengths)
    np.testing.assert_allclose(compressed, 0.0, atol=1e-12)
    np.testing.assert_allclose(total, floor, rtol=1e-10, atol=1e-12)
    fixed = sea_attention(q, k, v, n_bins=6, topk=5, m=8, rng=0, causal=True)
    assert np.all(kl_decomposition(P, fixed.estimate, fixed.lengths)[0] >= floor - 1e-12)


@given(seed=st.integers(0, 2**31), causal=st.booleans(), density=st.floats(0.05, 1.0))
def test_tv_is_one_minus_captured_mass_and_output_bound(seed, causal, density):
    rng = np.random.default_rng(seed)
    T = S = 16
    q, k, v = rng.normal(size=(T, 5)) * 2, rng.normal(size=(S, 5)) * 2, rng.normal(size=(S, 3))
    L = row_lengths(T, S, causal)
    visible = np.arange(S)[None, :] < L[:, None]
    sup = Support.from_dense((rng.random((T, S)) < density) & visible)
    m = captured_mass(q, k, [sup], causal=causal)[0]
    P = attention_probabilities(q, k, causal=causal)
    keep = sup.to_dense()
    Pm = np.where(keep, P, 0.0)
    rows = Pm.sum(axis=1) > 0
    np.testing.assert_allclose(m, Pm.sum(axis=1), rtol=1e-12, atol=1e-15)
    Pr = Pm[rows] / Pm[rows].sum(axis=1, keepdims=True)
    tv = 0.5 * np.abs(P[rows] - Pr).sum(axis=1)
    np.testing.assert_allclose(tv, 1 - m[rows], rtol=1e-10, atol=1e-13)
    err = np.abs(P[rows] @ v - Pr @ v).max(axis=1)
    assert np.all(err <= 2 * (1 - m[rows]) * np.abs(v).max() + 1e-12)


def test_bad_teacher_names_the_argument():
    L = np.array([3, 3])
    est = np.full((2, 2), 0.5)
    good = np.full((2, 3), 1 / 3)
    kl_decomposition(good, est, L)
    for bad in (good * 2, -good, np.array([[1.0, 0, 0], [np.nan, 0.5, 0.5]]), good[:1]):
        with pytest.raises(ValueError, match="teacher"):
            kl_decomposition(bad, est, L)
    with pytest.raises(ValueError, match="teacher"):
        kl_decomposition(np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]]), est, np.array([1, 3]))  # beyond l_0
    with pytest.raises(ValueError, match="calibration"):
        distill_decoder([], n_bins=2, W=np.ones((2, 6)))


def test_upsample_with_a_heads_axis():
    """upsample on (N, T, K) estimates: each head upsampled as alone (K read from the last axis)."""
    from refattn.sea import upsample

    rng = np.random.default_rng(1)
    est = rng.dirichlet(np.ones(3), size=(2, 5))  # (N, T, K)
    lengths = np.array([6, 6, 3, 1, 6])
    both = upsample(est, lengths, 6)
    for h in range(2):
        np.testing.assert_allclose(both[h], upsample(est[h], lengths, 6), rtol=1e-15)
