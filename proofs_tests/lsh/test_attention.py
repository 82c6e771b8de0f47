"""LSH attention (refattn.lsh.attention): Reformer's support and output properties, HyperAttention
exact when its blocks cover everything, and unbiased row sums given the hash.

Statistical tests at alpha = 1e-6 each (at most 4 here, family-wise <= 4e-6 per seed).
"""

import math

import numpy as np
import pytest

from refattn import softmax_attention
from refattn.lsh.attention import reformer_attention
from refattn.lsh.hashes import (
    simhash_planes,
)
from refattn.stats import z_test_mean

ALPHA = 1e-6


def test_reformer_attention_properties():
    """Given the draw, Reformer is exact attention on its support; with one chunk and no bucket
    restriction it is exact attention; shared-QK excludes self unless alone; rounds count once."""
    rng = np.random.default_rng(6)
    q, k, v = rng.normal(size=(32, 8)), rng.normal(size=(32, 8)), rng.normal(size=(32, 3))
    res = reformer_attention(q, k, v, n_buckets=4, chunk=8, rounds=3, rng=7)
    np.testing.assert_allclose(res.output, softmax_attention(q, k, v, mask=res.support.to_dense()), atol=1e-13)
    full = reformer_attention(q, k, v, n_buckets=4, chunk=32, rng=7, same_bucket=False)
    np.testing.assert_allclose(full.output, softmax_attention(q, k, v), atol=1e-13)
    sq = reformer_attention(q, None, v, n_buckets=4, chunk=8, rng=7, shared_qk=True)
    dense = sq.support.to_dense()
    kn = q / np.linalg.norm(q, axis=1, keepdims=True)
    mask = dense & ~(np.eye(32, dtype=bool) & (dense.sum(1, keepdims=True) > 1))
    np.testing.assert_allclose(sq.output, softmax_attention(q, kn, v, mask=mask), atol=1e-13)
    causal = reformer_attention(q, k, v, n_buckets=4, chunk=8, rng=7, causal=True)
    assert not np.any(np.triu(causal.support.to_dense(), 1))


def test_hyper_attention_exact_when_blocks_cover_everything():
    from refattn.lsh.attention import hyper_attention

    rng = np.random.default_rng(8)
    q, k, v = rng.normal(size=(64, 8)), rng.normal(size=(64, 8)), rng.normal(size=(64, 3))
    full = hyper_attention(q, k, v, block_size=64, n_samples=5, rng=1)
    np.testing.assert_allclose(full.output, softmax_attention(q, k, v), atol=1e-13)
    # causal recursion: halves of 32 are exact base cases, the bottom-left block is one full block
    causal = hyper_attention(q, k, v, block_size=32, n_samples=5, rng=1, causal=True)
    np.testing.assert_allclose(causal.output, softmax_attention(q, k, v, causal=True), atol=1e-13)
    approx = hyper_attention(q, k, v, block_size=8, n_samples=8, rng=1, causal=True)
    assert np.all(np.isfinite(approx.output)) and approx.output.shape == (64, 3)


@pytest.mark.statistical
def test_hyper_attention_row_sums_unbiased_given_the_hash(seed):
    """Given the sortLSH hash, the estimated row sums exp(lse) are unbiased for the exact row sums
    (uniform sampling with replacement, weight S/s, block entries excluded). z-test over the 40
    rows, 4000 sample draws; false-failure 1e-6. Power twin: the weight S/(s+1) is rejected."""
    from scipy.special import logsumexp

    from refattn.lsh.attention import _hyper_noncausal

    rng = np.random.default_rng(9)
    q, k, v = rng.normal(size=(40, 6)) * 0.7, rng.normal(size=(40, 6)) * 0.7, rng.normal(size=(40, 2))
    s = 1 / math.sqrt(6)
    planes = simhash_planes(6, 3, 10)  # the hash is fixed; only the samples vary
    gen = np.random.default_rng([seed, 53])
    sums = np.array([np.exp(_hyper_noncausal(q, k, v, s, 8, 6, planes, gen, "numpy")[1]) for _ in range(4000)])
    exact = np.exp(logsumexp(q @ k.T * s, axis=1))
    assert z_test_mean(sums, exact, alpha=ALPHA).passed
    # power twin: the same samples with weight S/(s+1): the sampled part shrinks by 6/7
    block = np.array([np.exp(_hyper_noncausal(q, k, v, s, 8, 0, planes, gen, "numpy")[1])])[0]
    wrong = block + (sums - block) * 6 / 7
    assert not z_test_mean(wrong, exact, alpha=ALPHA).passed


@pytest.mark.parametrize("T,S,n_clusters,rounds", [(8, 8, 2, 2), (9, 12, 3, 3), (10, 7, 1, 2), (6, 6, 6, 1)])
def test_smyrf_clusters_equal_a_brute_force_construction(T, S, n_clusters, rounds):
    """SMYRF's supports against a construction written from the paper's description, pair by pair:
    transform the scaled rows (F(q) = [q, 0, sqrt(M^2 - |q|^2)], G(k) = [k, sqrt(M^2 - |k|^2), 0]),
    project on the round's Gaussian direction, rank, and put rank r of L rows into cluster
    c with round(c L / n) <= r < round((c + 1) L / n); (i, j) is in a round's support iff their
    clusters agree, and in the union iff some round has it. Deterministic."""
    from refattn.lsh.attention import smyrf_clusters
    from refattn.lsh.sparse import union

    rng = np.random.default_rng([T, S, n_clusters])
    q, k = rng.normal(size=(T, 5)), rng.normal(size=(S, 5))
    supports, keys = smyrf_clusters(q, k, n_clusters=n_clusters, rounds=rounds, rng=7, scale=0.5)
    x, y = q * math.sqrt(0.5), k * math.sqrt(0.5)
    M2 = max(float(r @ r) for r in x) + max(float(r @ r) for r in y)
    a = np.random.default_rng(7).standard_normal((rounds, 7))  # the same draw: one direction per round
    expected_union = np.zeros((T, S), bool)
    for r in range(rounds):
        fq = [float(np.r_[xi, 0.0, math.sqrt(max(M2 - xi @ xi, 0))] @ a[r]) for xi in x]
        gk = [float(np.r_[yj, math.sqrt(max(M2 - yj @ yj, 0)), 0.0] @ a[r]) for yj in y]

        def cluster(values, i):
            rank = sorted(range(len(values)), key=lambda j: (values[j], j)).index(i)
            return next(c for c in range(n_clusters)
                        if round(c * len(values) / n_clusters) <= rank < round((c + 1) * len(values) / n_clusters))

        expected = np.array([[cluster(fq, i) == cluster(gk, j) for j in range(S)] for i in range(T)])
        np.testing.assert_allclose(keys[r], fq, rtol=1e-12)
        np.testing.assert_array_equal(supports[r].to_dense(), expected)
        expected_union |= expected
    np.testing.assert_array_equal(union(*supports).to_dense(), expected_union)
