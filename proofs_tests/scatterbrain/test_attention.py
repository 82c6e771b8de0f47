"""Scatterbrain (refattn.scatterbrain.attention; Chen et al. 2021, Sec. 3).

Two layers: (1) deterministic: given the draws, scatterbrain_attention's estimate equals
exp(s q.k) on the support and phi(q).phi(k) off it, and its output is that matrix row-normalised
times V; (2) statistical: that estimator formula, evaluated for many independent draws of the
features and of a SimHash support (vectorised here), is unbiased and has the variance
(1 - P_ij) Var_pfm. Each statistical assertion at alpha = 1e-6, with a power twin.
"""

import math

import numpy as np
import pytest

from proofs_tests._spies import record_calls
from refattn import softmax_attention, theory
from refattn.lsh.hashes import simhash, simhash_planes
from refattn.lsh.sparse import Support, bucket_support, local_window
from refattn.montecarlo import scatterbrain_samples
from refattn.scatterbrain.attention import scatterbrain_attention, scatterbrain_matrix
from refattn.stats import z_test_mean
from refattn.testing import assert_unbiased, assert_variance_matches

ALPHA = 1e-6


def _qkv(T=12, S=15, H=6, seed=0, norm=0.5):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(T, H)) * norm, rng.normal(size=(S, H)) * norm, rng.normal(size=(S, 3))


def _draws(n, m, r, seed):
    """Vectorised Scatterbrain estimates (n, P) for all pairs of a small problem, plus the truth,
    P_ij and Var_pfm: iid Gaussian positive features, SimHash support with r bits (one table),
    features and hash drawn independently."""
    q, k, _ = _qkv(T=3, S=4, H=4, seed=5)
    s = 1 / 2.0  # 1/sqrt(H)
    # scaled rows of norm 0.5, so |z|^2 <= 1: the estimator's fourth moment stays moderate and the
    # variance test is valid (the docs' Performer page: heavy tails; the seed sweep failed at norm ~1.3)
    q = q / np.linalg.norm(q, axis=1, keepdims=True) * 0.5 / math.sqrt(s)
    k = k / np.linalg.norm(k, axis=1, keepdims=True) * 0.5 / math.sqrt(s)
    x, y = q * math.sqrt(s), k * math.sqrt(s)
    X = np.repeat(x, 4, axis=0)  # pairs (i, j), i-major
    Y = np.tile(y, (3, 1))
    est, sparse_only = scatterbrain_samples(X, Y, m=m, r=r, n_draws=n, rng=seed)
    A = np.exp(np.sum(X * Y, 1))
    cos = np.sum(q.repeat(4, 0) * np.tile(k, (3, 1)), 1) / (
        np.linalg.norm(q.repeat(4, 0), axis=1) * np.linalg.norm(np.tile(k, (3, 1)), axis=1))
    P = theory.simhash_collision(np.arccos(np.clip(cos, -1, 1)), r)
    return est, sparse_only, A, P, theory.mse_positive(X, Y, m)


@pytest.mark.parametrize("kind", ["positive", "favorpp", "trigonometric"])
@pytest.mark.parametrize("causal", [False, True])
def test_estimate_is_exact_on_support_and_lowrank_off(kind, causal):
    q, k, v = _qkv()
    rng = np.random.default_rng(1)
    sup = Support.from_dense(rng.random((12, 15)) < 0.3)
    res = scatterbrain_attention(q, k, v, sup, m=8, features=kind, rng=2, causal=causal)
    A_hat = scatterbrain_matrix(res)
    exact = np.exp(q @ k.T / math.sqrt(6))
    on = res.support.to_dense()
    lr = res.lowrank
    lowrank = (lr.phi_q @ lr.phi_k.T) * np.exp(lr.log_scale)[:, None]
    np.testing.assert_allclose(A_hat[on], exact[on], rtol=1e-12)
    np.testing.assert_allclose(A_hat[~on], lowrank[~on], rtol=1e-12, atol=1e-300)
    if causal:
        A_hat = A_hat * np.tril(np.ones((12, 15), bool), 15 - 12)
    ok = A_hat.sum(1) != 0
    ref = (A_hat @ v) / np.where(ok, A_hat.sum(1), 1)[:, None]
    np.testing.assert_allclose(res.output[ok], ref[ok], rtol=1e-10, atol=1e-12)


def test_full_support_is_exact_attention_and_window_support_works():
    q, k, v = _qkv()
    full = Support.from_dense(np.ones((12, 15), bool))
    np.testing.assert_allclose(scatterbrain_attention(q, k, v, full, m=2, rng=3).output, softmax_attention(q, k, v),
                               rtol=1e-12, atol=1e-13)
    res = scatterbrain_attention(q, k, v, local_window(12, 15, 2, 2), m=16, rng=3, causal=True)
    assert np.all(np.isfinite(res.output))


def test_large_logits_do_not_overflow():
    q, k, v = _qkv(norm=40.0)
    sup = local_window(12, 15, 3, 3)
    res = scatterbrain_attention(q, k, v, sup, m=16, rng=4)
    assert np.all(np.isfinite(res.output)) and np.all(np.isfinite(res.numerator))


@pytest.mark.statistical
def test_unbiased(seed):
    """E[A^] = A for every entry (z-test over 12 pairs, false-failure 1e-6). Power twin: the
    sparse-only estimate (0 off the support) is biased and is rejected."""
    est, sparse_only, A, P, _ = _draws(60_000, 4, 1, [seed, 60])
    assert_unbiased(est, A, alpha=ALPHA, name="scatterbrain")
    assert not z_test_mean(sparse_only, A, alpha=ALPHA).passed


@pytest.mark.statistical
def test_sparse_only_entries_have_mean_P_A(seed):
    """Reformer-like (sparse only): E = P_ij A_ij with P_ij the SimHash collision probability
    (z-test, 1e-6). Power twin: P computed with theta/(2 pi) is rejected."""
    _, sparse_only, A, P, _ = _draws(60_000, 4, 1, [seed, 61])
    assert z_test_mean(sparse_only, P * A, alpha=ALPHA).passed
    theta = np.pi * (1 - P)  # r = 1: P = 1 - theta/pi
    assert not z_test_mean(sparse_only, (1 - theta / (2 * np.pi)) * A, alpha=ALPHA).passed


@pytest.mark.statistical
def test_variance_is_one_minus_P_times_performer_variance(seed):
    """Var[A^_ij] = (1 - P_ij) Var_pfm(q_i, k_j) (derived on the docs' Scatterbrain page: the law of total
    variance with E[A^ | S] = A): bootstrap interval (normal, alpha = 1e-6 over 12 entries).
    Power twin: Var_pfm alone (the Performer variance) is rejected; and the empirical MSE is
    below Performer's entrywise."""
    est, _, A, P, var_pfm = _draws(100_000, 4, 1, [seed, 62])
    rng = np.random.default_rng([seed, 63])
    assert_variance_matches(est, (1 - P) * var_pfm, alpha=ALPHA, rng=rng, n_boot=200, name="scatterbrain")
    with pytest.raises(AssertionError, match="outside"):
        assert_variance_matches(est, var_pfm, alpha=ALPHA, rng=rng, n_boot=200)
    assert np.all(np.mean((est - A) ** 2, axis=0) <= var_pfm * 1.05)


@pytest.mark.statistical
def test_output_error_falls_with_m(seed):
    """The normalised output approaches the oracle as m grows (LSH support, 300 draws each):
    z-test that the mean error at m = 4 exceeds the one at m = 256 (false-failure 1e-6); the
    power twin compares m = 256 with itself."""
    q, k, v = _qkv(T=16, S=16, H=8, seed=7, norm=0.6)
    ex = softmax_attention(q, k, v)
    gen = np.random.default_rng([seed, 64])

    def errs(m):
        out = []
        for _ in range(300):
            planes = simhash_planes(8, 2, gen)
            sup = bucket_support(simhash(q, planes)[0], simhash(k, planes)[0])
            out.append(np.abs(scatterbrain_attention(q, k, v, sup, m=m, rng=gen, projection="gaussian").output
                              - ex).mean())
        return np.array(out)

    e4, e256, e256b = errs(4), errs(256), errs(256)
    assert not z_test_mean(e4 - e256, 0.0, alpha=ALPHA).passed and (e4 - e256).mean() > 0
    assert z_test_mean(e256 - e256b, 0.0, alpha=ALPHA).passed


def test_bad_input():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="^support: shape"):
        scatterbrain_attention(q, k, v, local_window(11, 15, 1, 1), m=4, rng=0)
    with pytest.raises(TypeError, match="^support"):
        scatterbrain_attention(q, k, v, np.ones((12, 15), bool), m=4, rng=0)
    with pytest.raises(ValueError, match="^q: scatterbrain"):
        scatterbrain_attention(q[None], k[None], v[None], local_window(12, 15, 1, 1), m=4, rng=0)
    with pytest.raises(ValueError, match="^k: contains NaN"):
        scatterbrain_attention(q, np.full_like(k, np.nan), v, local_window(12, 15, 1, 1), m=4, rng=0)


def _future_leaks(T, S, fn=None):
    """Entries (query, key) where changing key j moves a query that may not see it (bottom-right)."""
    from refattn.lsh.sparse import local_window
    from refattn.problem import causal_mask

    fn = fn or scatterbrain_attention
    rng = np.random.default_rng([T, S])
    q, k, v = rng.normal(size=(T, 6)), rng.normal(size=(S, 6)), rng.normal(size=(S, 3))
    sup = local_window(T, S, 3, 3)
    base = fn(q, k, v, sup, m=8, rng=4, causal=True).output
    sees = causal_mask(T, S)
    leaks, moved = 0, 0
    for j in range(S):
        k2, v2 = k.copy(), v.copy()
        k2[j] += 1.0
        v2[j] += 1.0
        changed = np.any(np.abs(fn(q, k2, v2, sup, m=8, rng=4, causal=True).output - base) > 1e-12, axis=1)
        leaks += int(np.sum(changed & ~sees[:, j]))
        moved += int(np.sum(changed & sees[:, j]))
    return leaks, moved


def test_a_support_cut_with_the_other_alignment_leaks(monkeypatch):
    """Power twin of the canary below: the causal support cut top-left where bottom-right is meant
    (T > S) lets 36 (query, key) pairs see the future, and the canary counts them."""
    import refattn.scatterbrain.attention as sb
    from refattn.problem import causal_mask

    monkeypatch.setattr(sb, "causal_mask", lambda T, S, a: causal_mask(T, S, "top_left"))
    assert _future_leaks(15, 12, sb.scatterbrain_attention)[0] > 0


@pytest.mark.parametrize("T,S", [(15, 12), (12, 15), (9, 9)])
def test_causal_canary_in_both_shapes(T, S):
    """No leak from the future for T > S as well as T < S: changing key j changes only the queries that
    may see it (bottom-right: i + S - T >= j), for the same draws of features and support; and the
    queries that see it do move (the canary has power)."""
    leaks, moved = _future_leaks(T, S)
    assert leaks == 0 and moved > 0


@pytest.mark.parametrize("implementation, runs", [("numba", "correction_numba"), ("numpy", "correction_numpy")])
def test_each_sparse_implementation_runs_its_own_kernel(monkeypatch, implementation, runs):
    """``sparse_implementation=`` selects the correction kernel it names (a spy: the two agree to
    rounding). Deterministic."""
    from refattn.kernels.numba import scatterbrain_correction as kern

    calls = record_calls(monkeypatch, kern, ("correction_numba", "correction_numpy"))
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((5, 3)), rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    scatterbrain_attention(q, k, v, local_window(5, 5, 1, 1), m=4, rng=0, sparse_implementation=implementation)
    assert set(calls) == {runs}


def test_queries_that_see_no_key_get_zero_output():
    """Causal with T > S (bottom-right): the first T - S queries see no key; their numerator and
    denominator are exactly zero and the output is defined as zero (not 0/0). Deterministic."""
    rng = np.random.default_rng(1)
    T, S = 7, 4
    q, k, v = rng.standard_normal((T, 3)), rng.standard_normal((S, 3)), rng.standard_normal((S, 2))
    res = scatterbrain_attention(q, k, v, local_window(T, S, 1, 0), m=4, rng=0, causal=True)
    assert np.all(res.denominator[: T - S] == 0) and np.all(res.output[: T - S] == 0)
    assert np.all(np.isfinite(res.output)) and np.all(res.denominator[T - S:] > 0)


def _smyrf_union_draws(n, seed, T=6, m=4):
    """``n`` draws of Scatterbrain's unnormalised estimate ``A^`` on SMYRF's de-duplicated union of 2
    hashes (the paper's configuration), each draw with its own hash and feature seeds, and how many
    hashes found each pair (``counts``, 0 off the support)."""
    from refattn.lsh.attention import smyrf_clusters
    from refattn.lsh.sparse import union

    rng = np.random.default_rng(seed)
    q, k, v = rng.normal(size=(T, 4)) * 0.4, rng.normal(size=(T, 4)) * 0.4, rng.normal(size=(T, 2))
    A = np.exp(q @ k.T * 0.5)
    est, counts, lowrank = np.empty((n, T, T)), np.empty((n, T, T)), np.empty((n, T, T))
    for i, (hash_seed, feature_seed) in enumerate(zip(rng.integers(2**63, size=n), rng.integers(2**63, size=n))):
        supports, _ = smyrf_clusters(q, k, n_clusters=2, rounds=2, rng=int(hash_seed), scale=0.5)
        res = scatterbrain_attention(q, k, v, union(*supports), m=m, rng=int(feature_seed), scale=0.5)
        est[i] = scatterbrain_matrix(res)
        counts[i] = sum(s.to_dense() for s in supports)
        lr = res.lowrank
        lowrank[i] = (lr.phi_q @ lr.phi_k.T) * np.exp(lr.log_scale)[:, None]
    return est.reshape(n, -1), counts.reshape(n, -1), lowrank.reshape(n, -1), A.ravel()


@pytest.mark.statistical
def test_the_deduplicated_smyrf_union_keeps_scatterbrain_unbiased(seed):
    """The paper's configuration (2 SMYRF hashes, the union de-duplicated): E[A^_ij] = A_ij for all 36
    entries (z-tests, false-failure 1e-6 in all). Power twin: summing each hash's exact entries (a
    pair found by both hashes counted twice) is biased, and the same test rejects it."""
    est, counts, _, A = _smyrf_union_draws(1200, [seed, 70])
    assert_unbiased(est, A, alpha=ALPHA, name="scatterbrain (smyrf)")
    assert (counts == 2).mean() > 0.1  # pairs found by both hashes are common here: the twin has power
    twice = est + np.maximum(counts - 1, 0) * A  # exact entries counted once per hash
    assert not z_test_mean(twice, A, alpha=ALPHA).passed


def test_deduplication_makes_the_estimate_exact_on_the_support():
    """Without de-duplication a pair found by both hashes gets the correction A - phi.phi twice:
    still unbiased (E[phi.phi] = A), but no longer exact on the support (it carries (c - 1) times the
    low-rank part's noise). With it, every supported entry is exactly A_ij. Deterministic."""
    est, counts, lowrank, A = _smyrf_union_draws(50, 3)
    on = counts > 0
    np.testing.assert_allclose(est[on], np.broadcast_to(A, est.shape)[on], rtol=1e-12)
    duplicated = est + np.maximum(counts - 1, 0) * (A - lowrank)
    both = counts == 2
    assert both.any() and np.abs(duplicated[both] - np.broadcast_to(A, est.shape)[both]).max() > 1e-3
