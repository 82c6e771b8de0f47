"""The in-place BLAS product of the Numba kernels against NumPy: every transposition, sub-blocks with
leading dimensions, accumulation (beta = 1) and overwrite (beta = 0), both dtypes."""

import numba
import numpy as np
import pytest

from refattn.kernels.numba.gemm import gemm


@numba.njit
def _block_product(trans_a, trans_b, a, b, c, beta, M, N, K):
    # sub-blocks: a's and b's corners at (1, 2), c's at (2, 1); rows a full stride apart
    gemm(trans_a, trans_b, M, N, K, a[1:, 2:], a.shape[1], b[1:, 2:], b.shape[1], beta, c[2:, 1:], c.shape[1])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_gemm_on_sub_blocks_equals_numpy(dtype, trans_a, trans_b, beta):
    rng = np.random.default_rng(3)
    M, N, K = 5, 7, 3
    a = rng.standard_normal((12, 12)).astype(dtype)
    b = rng.standard_normal((12, 12)).astype(dtype)
    c = rng.standard_normal((12, 12)).astype(dtype)
    opa = a[1:, 2:][:K, :M].T if trans_a else a[1:, 2:][:M, :K]
    opb = b[1:, 2:][:N, :K].T if trans_b else b[1:, 2:][:K, :N]
    expected = c.copy()
    expected[2:2 + M, 1:1 + N] = opa.astype(np.float64) @ opb.astype(np.float64) + beta * c[2:2 + M, 1:1 + N]
    _block_product(trans_a, trans_b, a, b, c, dtype(beta), M, N, K)
    tol = 1e-13 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(c, expected, rtol=tol, atol=tol)  # outside the block: untouched


def test_gemm_with_an_empty_inner_dimension_scales_c():
    c = np.ones((3, 3))
    _block_product(False, False, np.ones((4, 4)), np.ones((4, 4)), c, 0.0, 1, 1, 0)
    assert c[2, 1] == 0.0 and c.sum() == 8.0  # K = 0: c = 0 * c on the 1 x 1 block only
