"""The sparse attention kernel (refattn.kernels.numba.sparse_attention): the parallel Numba kernel
equals its NumPy twin (SDDMM, row softmax, SpMM) on random CSR supports with empty rows, repeated
rows and -inf entry biases, and both equal the dense masked softmax. Deterministic.
"""

import numpy as np
import pytest

from refattn.exact import softmax_attention
from refattn.kernels.numba.sparse_attention import sparse_numba, sparse_numpy


def _csr(rng, T, S, density):
    mask = rng.random((T, S)) < density
    mask[rng.integers(0, T)] = False  # an empty row
    indptr = np.concatenate([[0], np.cumsum(mask.sum(1))]).astype(np.int64)
    indices = np.nonzero(mask)[1].astype(np.int64)
    return mask, indptr, indices


@pytest.mark.parametrize("T,S,H,Hv,density", [(1, 1, 1, 1, 1.0), (7, 5, 3, 2, 0.5), (40, 33, 16, 5, 0.2),
                                              (12, 9, 4, 3, 0.0)])
def test_numba_equals_numpy_twin_and_the_dense_oracle(T, S, H, Hv, density):
    rng = np.random.default_rng([T, S, H])
    q, k, v = rng.normal(size=(T, H)) * 2, rng.normal(size=(S, H)), rng.normal(size=(S, Hv))
    mask, indptr, indices = _csr(rng, T, S, density)
    bias = np.where(rng.random(indices.size) < 0.1, -np.inf, rng.normal(size=indices.size))
    out_a, lse_a = sparse_numba(q, k, v, indptr, indices, 0.4, bias)
    out_b, lse_b = sparse_numpy(q, k, v, indptr, indices, 0.4, bias)
    np.testing.assert_allclose(out_a, out_b, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(lse_a, lse_b, rtol=1e-12, atol=1e-14)
    dense_bias = np.full((T, S), -np.inf)
    dense_bias[np.repeat(np.arange(T), np.diff(indptr)), indices] = bias
    ref, ref_lse = softmax_attention(q, k, v, scale=0.4, bias=dense_bias, return_lse=True)
    np.testing.assert_allclose(out_a, ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(lse_a, ref_lse, rtol=1e-12, atol=1e-14)


def test_an_empty_support_gives_zeros_and_minus_infinity():
    q = np.ones((3, 2))
    out, lse = sparse_numba(q, q, q, np.zeros(4, np.int64), np.zeros(0, np.int64), 1.0, np.zeros(0))
    assert np.all(out == 0) and np.all(lse == -np.inf)


def test_rows_sharing_a_column_list_are_grouped():
    """A block-structured support groups by query block (capped at the group size); distinct rows
    stay alone; the grouped kernel equals the twin on both, with a -inf entry bias and an empty row."""
    from refattn.kernels.numba.sparse_attention import row_groups, sparse_numba, sparse_numpy
    from refattn.lsh.sparse import Support, block_sparse

    T, block = 300, 64
    nb = -(-T // block)
    sup = block_sparse(T, T, block, np.eye(nb, dtype=bool) | np.eye(nb, k=-1, dtype=bool))
    starts = row_groups(sup.indptr, sup.indices, 64)
    assert np.array_equal(starts, [0, 64, 128, 192, 256, 300])
    assert np.array_equal(row_groups(sup.indptr, sup.indices, 50)[:3], [0, 50, 64])  # the cap
    rng = np.random.default_rng(4)
    q, k, v = rng.normal(size=(T, 8)), rng.normal(size=(T, 8)), rng.normal(size=(T, 3))
    bias = np.where(rng.random(sup.nnz) < 0.1, -np.inf, 0.0)
    a, la = sparse_numba(q, k, v, sup.indptr, sup.indices, 0.35, bias)
    b, lb = sparse_numpy(q, k, v, sup.indptr, sup.indices, 0.35, bias)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(la, lb, rtol=1e-12)
    dense = rng.random((T, T)) < 0.05
    dense[5] = False  # an empty row
    rand = Support.from_dense(dense)
    assert row_groups(rand.indptr, rand.indices, 64).size == T + 1  # random rows: all distinct
    a, la = sparse_numba(q, k, v, rand.indptr, rand.indices, 0.35, np.zeros(rand.nnz))
    b, lb = sparse_numpy(q, k, v, rand.indptr, rand.indices, 0.35, np.zeros(rand.nnz))
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
