"""Sparse supports and sparse attention (refattn.lsh.sparse).

Deterministic: exact identities against the dense oracle (1e-12 relative), both implementations,
builders, CSR validation.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proofs_tests._spies import record_calls
from refattn import causal_mask, softmax_attention
from refattn.kernels.numba.sparse_attention import sparse_numba, sparse_numpy
from refattn.lsh.sparse import (
    Support,
    balanced_clusters,
    block_sparse,
    bucket_support,
    chunked_bucket_support,
    local_window,
    sparse_attention,
    topk_support,
    union,
)

SHAPES = [(1, 1), (1, 9), (9, 1), (7, 13), (13, 7), (64, 64)]


def _qkv(T, S, seed=0):
    rng = np.random.default_rng([T, S, seed])
    return rng, rng.normal(size=(T, 6)) * 2, rng.normal(size=(S, 6)), rng.normal(size=(S, 3))


@pytest.mark.parametrize("T,S", SHAPES)
@pytest.mark.parametrize("impl", ["numpy", "numba"])
def test_full_support_is_exact_attention(T, S, impl):
    _, q, k, v = _qkv(T, S)
    out, lse = sparse_attention(q, k, v, Support.from_dense(np.ones((T, S), bool)), return_lse=True,
                                implementation=impl)
    ref, ref_lse = softmax_attention(q, k, v, return_lse=True)
    assert np.abs(out - ref).max() <= 1e-12 * np.abs(v).max()
    assert np.abs(lse - ref_lse).max() <= 1e-12 * max(1, np.abs(ref_lse).max())


@pytest.mark.parametrize("T,S", SHAPES)
@pytest.mark.parametrize("density", [0.0, 0.2, 0.7])
def test_any_support_is_exact_attention_with_the_rest_masked(T, S, density):
    """On any support (empty rows included) sparse attention equals the oracle with the other keys masked;
    the Numba kernel equals its NumPy twin."""
    rng, q, k, v = _qkv(T, S, seed=int(density * 10))
    mask = rng.random((T, S)) < density
    sup = Support.from_dense(mask)
    bias = np.where(rng.random(sup.nnz) < 0.1, -np.inf, rng.normal(size=sup.nnz))
    ref, ref_lse = softmax_attention(q, k, v, mask=mask, return_lse=True)
    dense_bias = np.full((T, S), -np.inf)
    dense_bias[sup.rows(), sup.indices] = bias
    ref_b = softmax_attention(q, k, v, bias=np.where(mask, dense_bias, 0.0), mask=mask)
    for impl in ("numpy", "numba"):
        out, lse = sparse_attention(q, k, v, sup, return_lse=True, implementation=impl)
        assert np.abs(out - ref).max(initial=0) <= 1e-12 * np.abs(v).max()
        assert np.array_equal(np.isneginf(lse), np.isneginf(ref_lse))
        out_b = sparse_attention(q, k, v, sup, entry_bias=bias, implementation=impl)
        assert np.abs(out_b - ref_b).max(initial=0) <= 1e-12 * np.abs(v).max()
    a = sparse_numpy(q, k, v, sup.indptr, sup.indices, 0.4, bias)
    b = sparse_numba(q, k, v, sup.indptr, sup.indices, 0.4, bias)
    assert np.abs(a[0] - b[0]).max(initial=0) <= 1e-13 and np.array_equal(np.isneginf(a[1]), np.isneginf(b[1]))


def test_union_of_rounds_gives_the_softmax_over_the_union():
    """Entries found in several rounds count once: attention on the union equals the oracle masked
    to the union; naive concatenation (counting duplicates twice) does not."""
    rng, q, k, v = _qkv(20, 20)
    m1, m2 = rng.random((20, 20)) < 0.3, rng.random((20, 20)) < 0.3
    u = union(Support.from_dense(m1), Support.from_dense(m2))
    assert np.array_equal(u.to_dense(), m1 | m2)
    ref = softmax_attention(q, k, v, mask=m1 | m2)
    assert np.abs(sparse_attention(q, k, v, u) - ref).max() <= 1e-12
    # power twin: double-counting the overlap (bias +log 2 on duplicates) changes the answer
    dup = (m1 & m2)[u.rows(), u.indices]
    wrong = sparse_attention(q, k, v, u, entry_bias=np.where(dup, np.log(2.0), 0.0))
    assert np.abs(wrong - ref).max() > 1e-3


def test_builders():
    w = local_window(5, 7, 1, 1).to_dense()
    c = np.arange(5)[:, None] + 2
    assert np.array_equal(w, np.abs(np.arange(7)[None] - c) <= 1)
    i, j = np.arange(6)[:, None], np.arange(6)[None]
    assert np.array_equal(local_window(6, 6, 2, causal=True).to_dense(), (j <= i) & (j >= i - 2))
    assert np.array_equal(local_window(6, 6, 2, causal=True).to_dense(), causal_mask(6, 6) & (j >= i - 2))
    lay = np.array([[True, False], [True, True]])
    assert np.array_equal(block_sparse(3, 4, 2, lay).to_dense(), np.repeat(np.repeat(lay, 2, 0), 2, 1)[:3, :4])
    qb, kb = np.array([0, 1, 1, 2]), np.array([1, 0, 1])
    assert np.array_equal(bucket_support(qb, kb).to_dense(), qb[:, None] == kb[None])
    cl = balanced_clusters(np.arange(12.0), np.arange(12.0)[::-1], 3)
    assert np.all(cl.row_counts() == 4)
    d = cl.to_dense()
    assert np.all(d.sum(0) == 4)  # equal-size clusters on both sides


def test_topk_support_is_the_largest_logits():
    _, q, k, v = _qkv(9, 15)
    sup = topk_support(q, k, 4)
    logits = q @ k.T
    for i in range(9):
        kept = sup.indices[sup.indptr[i]:sup.indptr[i + 1]]
        assert kept.size == 4 and logits[i, kept].min() >= np.delete(logits[i], kept).max()
    assert np.all(topk_support(q, k, 50).row_counts() == 15)
    assert np.array_equal(topk_support(q, k, 3, causal=True).row_counts(), np.minimum(3, np.arange(9) + 7))


def test_chunked_bucket_support_reformer_pattern():
    """One bucket and one chunk covering everything: the full support; look-back 0 and many chunks: block
    diagonal in the sorted order."""
    b = np.zeros(16, dtype=int)
    assert chunked_bucket_support(b, b, 16).nnz == 256
    s = chunked_bucket_support(b, b, 4, lookback=0)
    assert np.all(s.row_counts() == 4)
    s1 = chunked_bucket_support(b, b, 4, lookback=1)
    assert np.array_equal(s1.row_counts(), [4] * 4 + [8] * 12)


def test_csr_validation():
    with pytest.raises(ValueError, match="^indices: every key index"):
        Support.from_csr([0, 2], [0, 5], 3)
    with pytest.raises(ValueError, match="^indices: each row's key indices must be sorted"):
        Support.from_csr([0, 2], [2, 1], 3)
    with pytest.raises(ValueError, match="^indices: each row's key indices must be sorted"):
        Support.from_csr([0, 2], [1, 1], 3)
    with pytest.raises(ValueError, match="^indptr"):
        Support.from_csr([0, 3], [0, 1], 3)
    with pytest.raises(TypeError, match="^indices"):
        Support.from_csr([0, 1], [0.5], 3)
    s = Support.from_csr([0, 2, 2, 3], [0, 2, 1], 3)  # rows may restart: [0, 2] then [] then [1]
    assert s.n_queries == 3 and s.nnz == 3
    _, q, k, v = _qkv(3, 3)
    with pytest.raises(ValueError, match="^support: shape"):
        sparse_attention(q[:2], k, v, s)
    with pytest.raises(ValueError, match="^entry_bias"):
        sparse_attention(q, k, v, s, entry_bias=np.zeros(2))
    with pytest.raises(ValueError, match="^q: contains NaN"):
        sparse_attention(np.full_like(q, np.nan), k, v, s)
    with pytest.raises(TypeError, match="^support"):
        sparse_attention(q, k, v, np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="^n_clusters"):
        balanced_clusters(np.arange(3.0), np.arange(3.0), 4)
    with pytest.raises(ValueError, match="^chunk"):
        chunked_bucket_support(np.zeros(4, dtype=int), np.zeros(4, dtype=int), 0)


def test_bucket_support_matches_dense_definition():
    rng = np.random.default_rng(12)
    for T, S in ((1, 1), (9, 4), (50, 70)):
        qb, kb = rng.integers(0, 5, size=T), rng.integers(0, 5, size=S)
        sup = bucket_support(qb, kb)
        assert np.array_equal(sup.to_dense(), qb[:, None] == kb[None, :])
        Support.from_csr(sup.indptr, sup.indices, S)  # valid CSR (sorted, distinct, in range)


@given(T=st.integers(0, 30), S=st.integers(0, 30), left=st.integers(0, 35), right=st.integers(0, 35),
       causal=st.booleans())
def test_local_window_is_its_definition(T, S, left, right, causal):
    """The O(nnz) window builder against its definition, c_i - left <= j <= c_i + right with c_i = i + S - T."""
    c = np.arange(T)[:, None] + (S - T)
    j = np.arange(S)[None, :]
    want = (j >= c - left) & (j <= c + (0 if causal else right))
    sup = local_window(T, S, left, right, causal=causal)
    assert np.array_equal(sup.to_dense(), want) and sup.nnz == want.sum()


@pytest.mark.parametrize("indptr,indices,n_keys,error", [
    ([0, 1, 2], [0, 10**6], 2, "indices: every key index must lie in"),
    ([0, 1, 2], [0, -1], 2, "indices: every key index must lie in"),
    ([0, 2, 1], [0, 1], 2, "indptr: must start at 0, be non-decreasing"),
    ([1, 2], [0, 1], 2, "indptr: must start at 0"),
    ([0.0, 1.0, 2.0], [0, 1], 2, "indptr: expected a 1-D integer array"),
    ([0, 1, 2], [0, 1], -3, "n_keys: must be >= 0"),
])
def test_the_plain_constructor_validates_what_kernels_index_with(indptr, indices, n_keys, error):
    """A Support built directly (not only through from_csr) can never make a kernel read out of
    bounds: each of these segfaulted or aborted sparse_attention before it was validated. Run in a
    subprocess, so a regression is a failing test, not a lost suite."""
    import subprocess
    import sys

    code = ("import numpy as np\nfrom refattn.lsh.sparse import Support, sparse_attention\nq = np.ones((2, 4))\n"
            f"try:\n    sparse_attention(q, q, q, Support(np.array({indptr}), np.array({indices}), {n_keys}))\n"
            "except (TypeError, ValueError) as exc:\n    print(exc)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith(error), (proc.returncode, proc.stdout, proc.stderr[-500:])


def test_topk_ties_keep_the_lower_key_index():
    """The documented tie rule: among equal logits the lower key index is kept first. Row 0 ties all
    six keys; row 1's best logit (1) is shared by keys 3 and 5, so top-1 keeps key 3."""
    from refattn.lsh.sparse import topk_support

    q = np.array([[0.0, 0.0], [1.0, 0.0]])
    k = np.array([[0.0, 1.0], [0.0, -1.0], [-1.0, 0.0], [1.0, 0.0], [0.5, 0.0], [1.0, 0.0]])

    def rows(topk):
        sup = topk_support(q, k, topk, scale=1.0)
        return [sup.indices[sup.indptr[i]:sup.indptr[i + 1]].tolist() for i in range(2)]

    assert rows(1) == [[0], [3]]
    assert rows(2) == [[0, 1], [3, 5]]
    assert rows(3) == [[0, 1, 2], [3, 4, 5]]


def test_union_of_one_support_is_itself():
    s = local_window(5, 6, 1, 1)
    u = union(s)
    np.testing.assert_array_equal(u.to_dense(), s.to_dense())


def test_from_pairs_with_a_single_key():
    """n_keys = 1: the pair code rows * n_keys + cols must decode with the same multiplier."""
    s = Support.from_pairs(np.array([2, 0, 2]), np.array([0, 0, 0]), 3, 1)
    assert s.indptr.tolist() == [0, 1, 1, 2] and s.indices.tolist() == [0, 0]


@pytest.mark.parametrize("implementation", ["numpy", "numba"])
def test_chunked_support_against_its_definition(implementation):
    """Reformer's chunked support (Kitaev et al. 2020, section 2): sort by bucket, cut into
    chunks; a query sees the keys of its own chunk and of the ``lookback`` chunks before it
    (same bucket only when asked). Both implementations against a brute-force double loop."""
    from refattn.lsh.hashes import sort_order

    rng = np.random.default_rng(3)
    qb, kb = rng.integers(0, 3, 12), rng.integers(0, 3, 12)
    chunk, lookback = 3, 1
    cq = np.empty(12, int)
    ck = np.empty(12, int)
    cq[sort_order(qb)] = np.arange(12) // chunk
    ck[sort_order(kb)] = np.arange(12) // chunk
    for same in (True, False):
        want = np.array([[0 <= cq[i] - ck[j] <= lookback and (not same or qb[i] == kb[j]) for j in range(12)]
                         for i in range(12)])
        got = chunked_bucket_support(qb, kb, chunk, lookback=lookback, same_bucket=same,
                                     implementation=implementation).to_dense()
        np.testing.assert_array_equal(got, want)


def test_numpy_sparse_kernel_gives_minus_inf_lse_for_an_empty_row():
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((3, 2)), rng.standard_normal((4, 2)), rng.standard_normal((4, 2))
    s = Support.from_pairs(np.array([0, 2]), np.array([1, 3]), 3, 4)
    for impl in ("numpy", "numba"):
        out, lse = sparse_attention(q, k, v, s, return_lse=True, implementation=impl)
        assert lse[1] == -np.inf and np.all(out[1] == 0) and np.all(np.isfinite(lse[[0, 2]])), impl


@pytest.mark.parametrize("implementation, runs", [("numba", "sparse_numba"), ("numpy", "sparse_numpy")])
def test_each_implementation_runs_its_own_sparse_kernel(monkeypatch, implementation, runs):
    """implementation= selects the kernel it names (a spy: the two agree to rounding)."""
    from refattn.kernels.numba import sparse_attention as kern

    calls = record_calls(monkeypatch, kern, ("sparse_numba", "sparse_numpy"))
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((5, 3)), rng.standard_normal((6, 3)), rng.standard_normal((6, 2))
    sparse_attention(q, k, v, local_window(5, 6, 1, 1), implementation=implementation)
    assert set(calls) == {runs}
