"""Reformer on its support's blocks against the readable twin (the CSR union support and the sparse
kernel): the same output and lse to summation order, over shared and separate QK, causal
alignments, one and several rounds (where a pair found twice must count once), ``same_bucket`` and
``lookback``; and the lazily built support is the twin's."""

import itertools

import numpy as np
import pytest

from refattn.lsh.attention import reformer_attention

CASES = [(T, S, shared, causal, rounds, same, lb)
         for T, S, shared, causal, rounds, same, lb in itertools.product(
             [64, 200], [64, 150], [False, True], [False, True, "top_left"], [1, 3], [True, False], [0, 1, 2])
         if not (shared and S != T)]


@pytest.mark.parametrize("T, S, shared, causal, rounds, same, lookback", CASES[::3])
def test_blocks_equal_the_csr_twin(T, S, shared, causal, rounds, same, lookback):
    rng = np.random.default_rng(T + 7 * S + rounds)
    q, k, v = rng.standard_normal((T, 8)), rng.standard_normal((S, 8)), rng.standard_normal((S, 3))
    kw = dict(n_buckets=4, chunk=16, rounds=rounds, rng=5, shared_qk=shared, causal=causal, same_bucket=same,
              lookback=lookback)
    fast = reformer_attention(q, k, v, **kw)
    twin = reformer_attention(q, k, v, implementation="numba", **kw)
    assert np.array_equal(np.isneginf(fast.lse), np.isneginf(twin.lse))
    seen = np.isfinite(twin.lse)
    np.testing.assert_allclose(fast.output, twin.output, rtol=0, atol=1e-13)  # outputs are O(1)
    np.testing.assert_allclose(fast.lse[seen], twin.lse[seen], rtol=1e-14, atol=1e-13)
    assert np.array_equal(fast.support.indptr, twin.support.indptr)
    assert np.array_equal(fast.support.indices, twin.support.indices)


def test_counting_a_pair_once_per_round_would_be_caught():
    """Power twin: on a small problem with three rounds many pairs recur. Weighting each entry by the
    number of rounds that found it (no de-duplication) moves the output far beyond the tolerance
    above, while weight 1 (the union) reproduces it: the comparison can tell the two apart."""
    from refattn.lsh.sparse import chunked_bucket_support

    rng = np.random.default_rng(1)
    q, v = rng.standard_normal((64, 8)), rng.standard_normal((64, 3))
    fast = reformer_attention(q, None, v, rounds=3, n_buckets=2, chunk=16, rng=5, shared_qk=True)
    hq = fast.buckets
    count = sum(chunked_bucket_support(hq[r:r + 1], hq[r:r + 1], 16).to_dense().astype(float) for r in range(3))
    np.fill_diagonal(count, 0.0)  # shared QK: no self entry while other keys exist
    assert count.max() > 1 and np.all(count.sum(axis=1) > 0)
    k = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w = np.exp(q @ k.T / np.sqrt(8))

    def attend(weight):
        a = weight * w
        return (a @ v) / a.sum(axis=1, keepdims=True)

    np.testing.assert_allclose(attend(np.minimum(count, 1.0)), fast.output, rtol=0, atol=1e-13)
    assert np.abs(attend(count) - fast.output).max() > 1e-3
