"""Scatterbrain's correction kernel (refattn.kernels.numba.scatterbrain_correction): the Numba kernel
equals its NumPy twin. Deterministic.
"""

import numpy as np
import pytest

from refattn.lsh.sparse import Support
from refattn.scatterbrain.attention import scatterbrain_attention


def _qkv(T=12, S=15, H=6, seed=0, norm=0.5):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(T, H)) * norm, rng.normal(size=(S, H)) * norm, rng.normal(size=(S, 3))


@pytest.mark.parametrize("T,S,density", [(1, 1, 1.0), (9, 4, 0.0), (13, 21, 0.3), (40, 40, 1.0)])
def test_correction_kernel_equals_numpy_twin(T, S, density):
    q, k, v = _qkv(T=T, S=S, norm=3.0)
    sup = Support.from_dense(np.random.default_rng(T).random((T, S)) < density)
    a = scatterbrain_attention(q, k, v, sup, m=8, rng=2, sparse_implementation="numpy")
    b = scatterbrain_attention(q, k, v, sup, m=8, rng=2, sparse_implementation="numba")
    np.testing.assert_allclose(b.output, a.output, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(b.correction, a.correction, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(b.log_unit, a.log_unit, rtol=1e-13)
