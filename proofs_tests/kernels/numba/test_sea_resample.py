"""SEA's re-binning kernel (refattn.kernels.numba.sea_resample): the Numba kernel equals its NumPy
twin on drawn lengths, basis and row bin counts (the formula itself is checked against uniform
spreading in proofs_tests/sea/test_decoder.py). Deterministic."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from refattn.kernels.numba.sea_resample import resample_numba, resample_numpy
from refattn.sea import bin_starts, row_lengths


@given(T=st.integers(1, 25), extra=st.integers(0, 15), n=st.integers(1, 10), K=st.integers(1, 10),
       causal=st.booleans(), R=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_numba_equals_numpy_twin(T, extra, n, K, causal, R, seed):
    S = T + extra
    n, K = min(n, S), min(K, S)
    L = row_lengths(T, S, causal)
    g = bin_starts(np.array([S]), n)[0]
    E = np.random.default_rng(seed).random((R, T, n))
    a = resample_numba(E, L, g, S, K)
    b = resample_numpy(E, L, g, S, K)
    assert a.shape == (R, T, K)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
