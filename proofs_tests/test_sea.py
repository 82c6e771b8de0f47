"""SEA (seed 001), MATH.md section 5: bins, the kernel estimate, the mask rule, sparse attention on it,
the KL chain rule, TV / captured-mass bounds, decoders and distillation.

Deterministic facts are checked exactly (or to rounding) on Hypothesis-drawn shapes; the two
statistical claims (the kernel estimate converges as m grows; the distilled decoder beats the fixed
one on held-out inputs) are one-sided z-tests at alpha = 1e-6, each with a power twin.
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats as _st

from refattn import softmax_attention
from refattn.evaluation.datasets import local_sink_inputs
from refattn.exact import attention_probabilities
from refattn.performer.projections import projection
from refattn.sea import (
    binned_attention,
    bin_starts,
    captured_mass,
    column_bins,
    compressed_softmax,
    kernel_estimate,
    kl_decomposition,
    positional_basis,
    row_lengths,
    sea_attention,
    sea_mask,
    upsample,
)
from refattn.sea.decoder import (
    LogLinearDecoder,
    OracleDecoder,
    decoder_loss,
    distill_decoder,
    fixed_decoder,
    resample_bins,
)
from refattn.sea.metrics import compare_at_memory, mask_recall
from refattn.lsh.sparse import Support

ALPHA = 1e-6
Z_ONE_SIDED = float(_st.norm.ppf(1 - ALPHA))  # 4.75


def _qkv(N=None, T=20, S=20, H=6, Hv=3, seed=0, norm=1.0):
    rng = np.random.default_rng(seed)
    lead = () if N is None else (N,)
    return (rng.normal(size=lead + (T, H)) * norm, rng.normal(size=lead + (S, H)) * norm,
            rng.normal(size=lead + (S, Hv)))


# ----------------------------------------------------------------------------- bins


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


# ----------------------------------------------------------------------------- A P and the estimate


@pytest.mark.parametrize("T,S", [(20, 20), (13, 29)])
def test_AP_is_the_binned_attention(T, S):
    """Bidirectional: softmax(QK^T) P with the bin basis equals the rows binned to K bins."""
    q, k, _ = _qkv(T=T, S=S)
    P = positional_basis(S, 7)
    np.testing.assert_allclose(softmax_attention(q, k, P), binned_attention(q, k, 7), rtol=0, atol=1e-14)


@pytest.mark.parametrize("causal", [True, "top_left"])
def test_binned_attention_causal_uses_each_rows_length(causal):
    q, k, _ = _qkv(T=17, S=23)
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
    q, k, _ = _qkv(N=2, T=T, S=S)
    fast, _ = kernel_estimate(q, k, n_basis=n, m=16, rng=3, causal=causal, implementation="auto")
    twin, _ = kernel_estimate(q, k, n_basis=n, m=16, rng=3, causal=causal, implementation="numpy")
    np.testing.assert_allclose(fast, twin, rtol=1e-11, atol=1e-14)
    seen = row_lengths(T, S, causal) > 0
    np.testing.assert_allclose(fast.sum(axis=-1)[:, seen], 1.0, rtol=1e-12)  # a distribution over bins


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
    q, k, _ = _qkv(T=24, S=24, H=8, seed=seed + 11, norm=0.5)
    target = binned_attention(q, k, 6)  # = A P
    e8 = _estimate_errors(q, k, target, 8, 400, seed, defect)
    e64 = _estimate_errors(q, k, target, 64, 400, seed + 1000, defect)
    se = math.sqrt(e8.var(ddof=1) / e8.size + 4 * e64.var(ddof=1) / e64.size)
    return (e8.mean() - 2 * e64.mean()) / se, e8.mean(), e64.mean()


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


@pytest.mark.parametrize("implementation", ["numba", "numpy"])
@given(T=st.integers(1, 30), extra=st.integers(0, 20), n=st.integers(1, 12), K=st.integers(1, 12),
       causal=st.booleans(), seed=st.integers(0, 2**31))
def test_resample_bins_matches_uniform_spreading(implementation, T, extra, n, K, causal, seed):
    """Twin of the fixed decoder's re-binning: spread each basis bin's mass uniformly over the columns
    the row sees, then bin by column_bins."""
    S = T + extra
    n, K = min(n, S), min(K, S)
    rng = np.random.default_rng(seed)
    L = row_lengths(T, S, causal)
    g = bin_starts([S], n)[0]
    E = rng.random((T, n)) * (g[None, :-1] < L[:, None])  # no mass on basis bins a row cannot see
    got = resample_bins(E, L, S, K, implementation=implementation)
    for i in range(T):
        col = np.zeros(S)
        for c in range(n):
            lo, hi = g[c], min(g[c + 1], L[i])
            if hi > lo:
                col[lo:hi] = E[i, c] / (hi - lo)
        want = np.zeros(K)
        np.add.at(want, column_bins(np.arange(L[i]), max(L[i], 1), K), col[:L[i]])
        np.testing.assert_allclose(got[i], want, rtol=1e-12, atol=1e-15)


# ----------------------------------------------------------------------------- the mask


@st.composite
def _mask_case(draw):
    N = draw(st.integers(1, 3))
    T = draw(st.integers(1, 25))
    S = draw(st.integers(1, 30))
    K = draw(st.integers(1, S))
    causal = draw(st.sampled_from([False, True, "top_left"]))
    seed = draw(st.integers(0, 2**31))
    ties = draw(st.booleans())
    rng = np.random.default_rng(seed)
    logits = rng.integers(0, 3, size=(N, T, K)).astype(float) if ties else rng.normal(size=(N, T, K))
    L = row_lengths(T, S, causal)
    est = compressed_softmax(logits, L, K)
    per_row = draw(st.booleans())
    topk = rng.integers(1, S + 3, size=T) if per_row else draw(st.integers(1, S + 2))
    return est, L, S, topk


def _same(a, b):
    return all(np.array_equal(x.indptr, y.indptr) and np.array_equal(x.indices, y.indices) for x, y in zip(a, b))


@given(case=_mask_case(), grouped=st.booleans())
def test_mask_numba_equals_dense_twin(case, grouped):
    est, L, S, topk = case
    fast = sea_mask(est, L, S, topk, grouped=grouped, implementation="numba")
    twin = sea_mask(est, L, S, topk, grouped=grouped, implementation="numpy")
    assert _same(fast, twin)


@given(case=_mask_case())
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


@given(case=_mask_case())
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


@given(case=_mask_case())
def test_larger_budget_gives_a_superset(case):
    """Test-time k: the selection is a prefix of one ranking, so masks are nested in k."""
    est, L, S, topk = case
    small = sea_mask(est, L, S, np.maximum(np.broadcast_to(topk, L.shape) // 2, 1))
    big = sea_mask(est, L, S, topk)
    for a, b in zip(small, big):
        assert not (a.to_dense() & ~b.to_dense()).any()


@given(case=_mask_case())
def test_grouped_topk_captures_at_least_the_per_head_estimated_mass(case):
    """On the upsampled estimate, grouped selection solves the shared-budget (fractional knapsack)
    problem, of which the per-head selection is a feasible point (docs/sea.md)."""
    est, L, S, topk = case
    up = upsample(est, L, S)  # (N, T, S)

    def mass(sups):
        return sum((up[h] * s.to_dense()).sum(axis=1) for h, s in enumerate(sups))

    assert np.all(mass(sea_mask(est, L, S, topk, grouped=True)) >= mass(sea_mask(est, L, S, topk)) - 1e-12)


# ----------------------------------------------------------------------------- attention


@pytest.mark.parametrize("causal", [False, True, "top_left"])
@pytest.mark.parametrize("T,S", [(20, 20), (12, 25), (25, 12)])
def test_k_equal_S_is_exact_attention(causal, T, S):
    q, k, v = _qkv(N=2, T=T, S=S)
    res = sea_attention(q, k, v, n_bins=min(6, S), topk=S, m=8, rng=0, causal=causal)
    np.testing.assert_allclose(res.output, softmax_attention(q, k, v, causal=causal), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("decoder", ["fixed", "oracle"])
def test_output_is_sparse_attention_on_the_mask(decoder):
    q, k, v = _qkv(N=3, T=30, S=30)
    res = sea_attention(q, k, v, n_bins=6, topk=5, m=16, rng=2, causal=True, decoder=decoder)
    for h in range(3):
        P = attention_probabilities(q[h], k[h], mask=res.supports[h].to_dense())
        np.testing.assert_allclose(res.output[h], P @ v[h], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(res.estimate.sum(axis=-1), 1.0, rtol=1e-12)


def test_oracle_decoder_estimate_is_the_binned_attention():
    q, k, v = _qkv(N=2, T=18, S=18)
    res = sea_attention(q, k, v, n_bins=5, topk=4, m=8, rng=0, causal=True, decoder="oracle")
    np.testing.assert_allclose(res.estimate, binned_attention(q, k, 5, causal=True), rtol=1e-12, atol=1e-300)


def test_oracle_decoder_with_K_equal_S_is_the_exact_topk():
    q, k, v = _qkv(T=30, S=30, seed=4)
    res = sea_attention(q, k, v, n_bins=30, topk=7, m=8, rng=0, causal=True, decoder="oracle")
    np.testing.assert_array_equal(mask_recall(q, k, res.supports[0], 7, causal=True), 1.0)


def _kernel_output(q, k, v, sup):
    """The Numba sparse kernel called directly (the public function rejects NaN values, rightly)."""
    from refattn.kernels.numba.sparse_attention import sparse_numba

    return sparse_numba(q, k, v, sup.indptr, sup.indices, 1 / math.sqrt(q.shape[1]), np.zeros(sup.nnz))[0]


def _near_tie_at_cut(est_row, L, K, support_cols, rel=1e-9):
    """Whether the row's upsampled estimate has a (rounding-level) tie between a kept and a dropped column."""
    up = upsample(est_row[None], np.array([L]), L)[0]
    kept = np.zeros(L, bool)
    kept[support_cols] = True
    if kept.all():
        return False
    lo, hi = up[kept].min(), up[~kept].max()
    return hi >= lo * (1 - rel)


@pytest.mark.parametrize("decoder", ["fixed", "oracle"])
def test_causal_canary(decoder):
    """Rows must not see the future. New future keys/values change earlier rows only at rounding level
    (through the Performer's shared key stabiliser): their estimates agree to 1e-12, their masks agree
    except where the estimate has an exact tie at the cut (the fixed decoder makes ties: row bins inside
    one basis bin share a density), and their outputs agree where the masks do. NaN future values leave
    earlier rows bitwise equal."""
    q, k, v = _qkv(N=2, T=40, S=40, seed=5)
    base = sea_attention(q, k, v, n_bins=8, topk=6, m=32, rng=1, causal=True, decoder=decoder)
    cut = 25
    k2, v2 = k.copy(), v.copy()
    rng = np.random.default_rng(9)
    k2[:, cut:] = rng.normal(size=k2[:, cut:].shape)
    v2[:, cut:] = rng.normal(size=v2[:, cut:].shape)
    other = sea_attention(q, k2, v2, n_bins=8, topk=6, m=32, rng=1, causal=True, decoder=decoder)
    np.testing.assert_allclose(other.estimate[:, :cut], base.estimate[:, :cut], rtol=1e-12, atol=1e-15)
    same_rows = 0
    for h, (a, b) in enumerate(zip(base.supports, other.supports)):
        for i in range(cut):
            ca = a.indices[a.indptr[i]:a.indptr[i + 1]]
            if np.array_equal(ca, b.indices[b.indptr[i]:b.indptr[i + 1]]):
                np.testing.assert_allclose(other.output[h, i], base.output[h, i], rtol=1e-10, atol=1e-12)
                same_rows += 1
            else:
                assert _near_tie_at_cut(base.estimate[h, i], base.lengths[i], 8, ca), (h, i)
    assert same_rows >= cut  # most rows have no tie at the cut
    v3 = v.copy()
    v3[:, cut:] = np.nan
    out3 = np.stack([_kernel_output(q[h], k[h], v3[h], base.supports[h]) for h in range(2)])
    assert np.array_equal(out3[:, :cut], base.output[:, :cut])


def test_causal_canary_has_power():
    """Power twin: a mask that lets row i see key i + 1 (an off-by-one) breaks the NaN check."""
    q, k, v = _qkv(T=12, S=12, seed=5)
    res = sea_attention(q, k, v, n_bins=4, topk=3, m=8, rng=1, causal=True)
    leaky = Support.from_dense(res.supports[0].to_dense() | np.eye(12, k=1, dtype=bool))
    v3 = v.copy()
    v3[6:] = np.nan
    assert np.isfinite(_kernel_output(q, k, v3, res.supports[0])[:6]).all()
    assert not np.isfinite(_kernel_output(q, k, v3, leaky)[:6]).all()


def test_gate_mixes_with_the_causal_mean_of_v():
    q, k, v = _qkv(T=10, S=10)
    plain = sea_attention(q, k, v, n_bins=4, topk=3, m=8, rng=0, causal=True)
    gated = sea_attention(q, k, v, n_bins=4, topk=3, m=8, rng=0, causal=True, gate=0.25)
    mean_v = np.cumsum(v, axis=0) / np.arange(1, 11)[:, None]
    np.testing.assert_allclose(gated.output, 0.25 * plain.output + 0.75 * mean_v, rtol=1e-13)


def test_heads_broadcast_and_empty_inputs():
    q, k, v = _qkv(N=3, T=9, S=9)
    res = sea_attention(q, k[0], v[0], n_bins=3, topk=2, m=8, rng=0)
    assert res.output.shape == (3, 9, 3) and len(res.supports) == 3
    empty = sea_attention(np.zeros((0, 6)), k[0], v[0], n_bins=3, topk=2, m=8, rng=0)
    assert empty.output.shape == (0, 3)


# ----------------------------------------------------------------------------- the facts


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


@given(case=_teacher_case())
def test_kl_chain_rule_and_floor(case):
    p, est, L = case
    total, compressed, floor = kl_decomposition(p, est, L)
    np.testing.assert_allclose(total, compressed + floor, rtol=1e-10, atol=1e-12)
    assert np.all(floor >= -1e-12) and np.all(compressed >= -1e-12)


def test_oracle_estimate_reaches_the_floor():
    q, k, v = _qkv(T=25, S=25, seed=3)
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


# ----------------------------------------------------------------------------- decoders


def test_loglinear_decoder_starts_at_the_fixed_decoder():
    q, k, _ = _qkv(T=30, S=30)
    L = row_lengths(30, 30, True)
    E, _ = kernel_estimate(q, k, n_basis=6, m=8, rng=0, causal=True)
    a = compressed_softmax(fixed_decoder(E, L, 30, 6), L, 6)
    b = compressed_softmax(LogLinearDecoder()(E, L, 30, 6), L, 6)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-300)


def test_decoder_loss_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    R, K, p = 12, 5, 7
    F = rng.normal(size=(R, K, p))
    nonempty = rng.random((R, K)) < 0.85
    nonempty[:, 0] = True
    teacher = compressed_softmax(rng.normal(size=(R, K)), np.full(R, 50), K) * nonempty
    teacher /= teacher.sum(axis=1, keepdims=True)
    valid = np.ones(R, bool)
    theta = rng.normal(size=p) * 0.3
    _, g = decoder_loss(theta, F, teacher, nonempty, valid, 1.0)
    h = 1e-6
    num = [(decoder_loss(theta + h * e, F, teacher, nonempty, valid, 1.0)[0]
            - decoder_loss(theta - h * e, F, teacher, nonempty, valid, 1.0)[0]) / (2 * h) for e in np.eye(p)]
    np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-8)


T_D, H_D, K_D, M_D = 256, 16, 16, 32


def _held_out_gain(seed, decoder_for):
    """Paired per-input differences KL(teacher || fixed) - KL(teacher || decoder) on 40 held-out inputs."""
    rng = np.random.default_rng([seed, 606])
    W = projection("orthogonal", M_D, H_D, np.random.default_rng([seed, 5]))
    dec = decoder_for([local_sink_inputs(T_D, H_D, rng) for _ in range(4)], W)
    L = row_lengths(T_D, T_D, True)
    gains = []
    for _ in range(40):
        q, k = local_sink_inputs(T_D, H_D, rng)
        E, _ = kernel_estimate(q, k, n_basis=K_D, W=W, causal=True)
        t = binned_attention(q, k, K_D, causal=True)
        kl = [_mean_kl(t, compressed_softmax(d(E, L, T_D, K_D), L, K_D)) for d in (fixed_decoder, dec)]
        gains.append(kl[0] - kl[1])
    gains = np.array(gains)
    return gains.mean() / (gains.std(ddof=1) / math.sqrt(gains.size)), gains.mean()


def _mean_kl(teacher, est):
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.where(teacher > 0, teacher * (np.log(teacher) - np.log(est)), 0.0).sum(axis=1).mean())


@pytest.mark.statistical
def test_distilled_decoder_beats_fixed_on_held_out_inputs(seed):
    """Distillation (KL + MSE, L-BFGS-B) on 4 calibration inputs of the local + sink process lowers the
    held-out KL(A^down || A~) below the fixed decoder's: one-sided paired z-test at alpha = 1e-6. Measured
    over seeds 0-7 at 40 held-out inputs: mean gain 0.30 to 0.38 nats, z = 10.8 to 18.7, so a false
    failure needs a 6-sigma low draw: probability far below 1e-6."""
    z, gain = _held_out_gain(seed, lambda cal, W: distill_decoder(cal, n_bins=K_D, W=W, causal=True))
    print(f"held-out KL gain {gain:.4g}, z = {z:.1f} (critical {Z_ONE_SIDED:.2f})")
    assert z > Z_ONE_SIDED, (z, gain)


@pytest.mark.statistical
def test_distilled_decoder_comparison_has_power(seed):
    """Power twin: a decoder that is not better (the fixed decoder sharpened, theta_0 = 1.3) fails."""
    z, gain = _held_out_gain(seed, lambda cal, W: LogLinearDecoder(np.array([1.3, 0, 0, 0, 0, 0, 0.0])))
    assert not z > Z_ONE_SIDED, (z, gain)


# ----------------------------------------------------------------------------- metrics


def test_compare_at_memory_rows():
    rng = np.random.default_rng(1)
    q, k = local_sink_inputs(128, 16, rng)
    v = rng.normal(size=(128, 4))
    rows = compare_at_memory(q, k, v, n_bins=16, topk=8, m=16, rng=2, causal=True)
    names = [r.method for r in rows]
    assert names == ["sea (fixed)", "sea (oracle)", "performer", "window", "top-k oracle"]
    best = rows[-1]
    assert best.recall == 1.0
    for r in rows:
        assert r.output_error >= 0
        if r.method.startswith("sea") or r.method == "top-k oracle":
            assert 0 < r.captured_mean <= 1 + 1e-12
    assert rows[1].captured_mean <= best.captured_mean + 1e-12 or rows[1].recall < 1  # k keys: top-k is best


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs,exc,name", [
    (dict(n_bins=0), ValueError, "n_bins"),
    (dict(n_bins=21), ValueError, "n_bins"),
    (dict(topk=0), ValueError, "topk"),
    (dict(topk=np.ones(3, int)), TypeError, "topk"),
    (dict(topk=2.5), TypeError, "topk"),
    (dict(decoder="learned"), TypeError, "decoder"),
    (dict(decoder=lambda E, L, S, K: np.zeros((3, K))), ValueError, "decoder"),
    (dict(decoder=lambda E, L, S, K: np.full(E.shape[:-1] + (K,), np.nan)), ValueError, "decoder"),
    (dict(decoder=lambda E, L, S, K: np.full(E.shape[:-1] + (K,), np.inf)), ValueError, "decoder"),
    (dict(decoder=lambda E, L, S, K: np.full(E.shape[:-1] + (K,), -np.inf)), ValueError, "decoder"),
    (dict(decoder=lambda E, L, S, K: np.zeros(E.shape[:-1] + (K,), dtype=int)), TypeError, "decoder"),
    (dict(grouped=True), ValueError, "grouped"),
    (dict(gate=1.5), ValueError, "gate"),
    (dict(basis="cubic"), ValueError, "basis"),
    (dict(n_basis=50), ValueError, "n_basis"),
])
def test_bad_input_names_the_argument(kwargs, exc, name):
    q, k, v = _qkv()
    args = dict(n_bins=4, topk=3, m=8, rng=0)
    args.update(kwargs)
    with pytest.raises(exc, match=name):
        sea_attention(q, k, v, **args)


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


def test_oracle_decoder_is_a_decoder():
    q, k, _ = _qkv(T=8, S=8)
    z = OracleDecoder(q, k)(None, np.full(8, 8), 8, 4)
    np.testing.assert_allclose(np.exp(z), binned_attention(q, k, 4), rtol=1e-12)
