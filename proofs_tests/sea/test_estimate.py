"""SEA's compressed estimate (refattn.sea.estimate): bins, the positional basis, the binned attention
and the kernel estimate.

Deterministic facts are checked exactly (or to rounding) on Hypothesis-drawn shapes; the statistical
claim (the kernel estimate converges as m grows) is a one-sided z-test at alpha = 1e-6 with a power twin.
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proofs_tests.sea._draws import Z_ONE_SIDED, qkv
from refattn import softmax_attention
from refattn.exact import attention_probabilities
from refattn.performer.projections import projection
from refattn.sea import (
    bin_starts,
    binned_attention,
    column_bins,
    kernel_estimate,
    positional_basis,
    row_lengths,
)


def _estimate_errors(q, k, target, m, draws, seed, defect=0.0):
    """Mean over rows of |E - A P|^2 for independent orthogonal draws (a planted ``defect`` mixes in a
    fixed, non-vanishing bias: E + defect (e_0 - 1/n))."""
    rng = np.random.default_rng(seed)
    n = target.shape[1]
    shift = defect * (np.eye(n)[0] - 1.0 / n)
    out = np.empty(draws)
    for r in range(draws):
        W = projection("orthogonal", m, q.shape[1], rng)
        E, _ = kernel_estimate(q, k, n_basis=n, W=W)
        out[r] = np.mean(np.sum((E + shift - target) ** 2, axis=1))
    return out


def _convergence_z(seed, defect=0.0):
    q, k, _ = qkv(T=24, S=24, H=8, seed=seed + 11, norm=0.5)
    target = binned_attention(q, k, 6)  # = A P
    e8 = _estimate_errors(q, k, target, 8, 400, seed, defect)
    e64 = _estimate_errors(q, k, target, 64, 400, seed + 1000, defect)
    se = math.sqrt(e8.var(ddof=1) / e8.size + 4 * e64.var(ddof=1) / e64.size)
    return (e8.mean() - 2 * e64.mean()) / se, e8.mean(), e64.mean()


@given(l=st.integers(0, 400), K=st.integers(1, 300))
def test_bin_starts_are_rounded_edges(l, K):
    s = bin_starts([l], K)[0]
    assert s[0] == 0 and s[-1] == l
    w = np.diff(s)
    assert np.all(w >= l // K) and np.all(w <= -(-l // K))
    exact = [math.floor(b * l / K + 0.5) for b in range(K + 1)]  # the pinned rule, in floats (small ints)
    assert s.tolist() == exact


@given(l=st.integers(1, 400), K=st.integers(1, 300))
def test_column_bins_inverts_bin_starts(l, K):
    s = bin_starts([l], K)[0]
    j = np.arange(l)
    b = column_bins(j, l, K)
    assert np.all(s[b] <= j) and np.all(j < s[b + 1])


@given(l=st.integers(1, 300), K=st.integers(1, 300))
def test_floor_map_differs_only_at_rounded_down_edges(l, K):
    """The naive map floor(j K / l) puts edge b at ceil(b l / K); the pinned rule at round(b l / K).
    They differ exactly at columns j = floor(b l / K) of edges with 0 < (b l mod K) < K / 2 (docs/sea.md)."""
    j = np.arange(l)
    pinned = column_bins(j, l, K)
    naive = (j * K) // l
    b = np.arange(1, K)
    r = (b * l) % K
    expected = set(((b * l) // K)[(r > 0) & (2 * r < K)].tolist())
    assert set(j[pinned != naive].tolist()) == expected
    assert np.all(pinned >= naive)
    if l >= K:  # no empty bins: the two maps are at most one bin apart
        assert np.all(pinned - naive <= 1)


def test_row_lengths_follow_the_oracle_alignment():
    assert row_lengths(3, 5, False).tolist() == [5, 5, 5]
    assert row_lengths(3, 5, True).tolist() == [3, 4, 5]  # bottom-right: i + S - T + 1
    assert row_lengths(3, 5, "top_left").tolist() == [1, 2, 3]
    assert row_lengths(5, 3, True).tolist() == [0, 0, 1, 2, 3]


@pytest.mark.parametrize("kind", ["bins", "linear"])
def test_positional_basis_rows_sum_to_one_and_full_width_is_identity(kind):
    P = positional_basis(37, 5, kind)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=0, atol=1e-15)
    assert np.all(P >= 0)
    np.testing.assert_array_equal(positional_basis(9, 9, kind), np.eye(9))


@pytest.mark.parametrize("T,S", [(20, 20), (13, 29)])
def test_AP_is_the_binned_attention(T, S):
    """Bidirectional: softmax(QK^T) P with the bin basis equals the rows binned to K bins."""
    q, k, _ = qkv(T=T, S=S)
    P = positional_basis(S, 7)
    np.testing.assert_allclose(softmax_attention(q, k, P), binned_attention(q, k, 7), rtol=0, atol=1e-14)


@pytest.mark.parametrize("causal", [True, "top_left"])
def test_binned_attention_causal_uses_each_rows_length(causal):
    q, k, _ = qkv(T=17, S=23)
    A = attention_probabilities(q, k, causal=causal)  # (T, S) naive
    L = row_lengths(17, 23, causal)
    got = binned_attention(q, k, 5, causal=causal)
    for i in range(17):
        want = np.zeros(5)
        for j in range(L[i]):
            want[column_bins(j, L[i], 5)] += A[i, j]
        np.testing.assert_allclose(got[i], want, rtol=0, atol=1e-15)


@pytest.mark.parametrize("causal", [False, True, "top_left"])
@pytest.mark.parametrize("T,S,n", [(15, 15, 4), (9, 23, 23), (23, 9, 5), (30, 30, 1)])
def test_bin_estimate_equals_performer_with_basis_values(causal, T, S, n):
    """The fast bin path and the twin (Performer with P as values, prefix sums when causal) agree."""
    q, k, _ = qkv(N=2, T=T, S=S)
    fast, _ = kernel_estimate(q, k, n_basis=n, m=16, rng=3, causal=causal, implementation="auto")
    twin, _ = kernel_estimate(q, k, n_basis=n, m=16, rng=3, causal=causal, implementation="numpy")
    np.testing.assert_allclose(fast, twin, rtol=1e-11, atol=1e-14)
    seen = row_lengths(T, S, causal) > 0
    np.testing.assert_allclose(fast.sum(axis=-1)[:, seen], 1.0, rtol=1e-12)  # a distribution over bins


@pytest.mark.statistical
def test_kernel_estimate_converges_to_AP(seed):
    """The estimate converges to A P: the MSE at m = 64 is below half the MSE at m = 8 (one-sided z-test
    rejecting 'ratio <= 2' at alpha = 1e-6; 400 orthogonal draws each). Measured: ratio 4.0 to 5.7 (not 8:
    at m = 8 the ratio estimator's O(1/m^2) terms still count), z = 10 to 16 over seeds 0-7, so a false
    failure needs a 5-sigma low draw of z: probability below 1e-6."""
    z, a, b = _convergence_z(seed)
    print(f"MSE m=8: {a:.4g}, m=64: {b:.4g}, ratio {a / b:.2f}, z = {z:.1f} (critical {Z_ONE_SIDED:.2f})")
    assert z > Z_ONE_SIDED, (z, a, b)


@pytest.mark.statistical
def test_kernel_estimate_convergence_has_power(seed):
    """Power twin: an estimate with a fixed bias that does not shrink with m fails the same test."""
    z, a, b = _convergence_z(seed, defect=0.15)
    assert not z > Z_ONE_SIDED, (z, a, b)


def test_compressed_softmax_is_shift_invariant_at_large_logits():
    """The softmax of logits near 800 (where exp overflows) equals that of the same logits minus
    800: the estimate is computed from z - max z."""
    from refattn.sea import compressed_softmax

    rng = np.random.default_rng(2)
    logits = rng.standard_normal((4, 3))
    lengths = np.array([6, 6, 2, 0])
    base = compressed_softmax(logits, lengths, 3)
    big = compressed_softmax(logits + 800.0, lengths, 3)
    assert np.all(np.isfinite(big))
    np.testing.assert_allclose(big, base, rtol=1e-12, atol=1e-15)


def test_compressed_softmax_names_the_first_dead_row():
    """A row with l > 0 and no finite logit on a non-empty bin is named in the error, even when it
    is the only one."""
    from refattn.sea import compressed_softmax

    logits = np.zeros((3, 2))
    logits[1] = -np.inf
    with pytest.raises(ValueError, match=r"^logits: row \(1,\) has no finite logit"):
        compressed_softmax(logits, np.array([4, 4, 4]), 2)
