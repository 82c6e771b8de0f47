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
