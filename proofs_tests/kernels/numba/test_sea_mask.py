"""The SEA mask kernel (refattn.kernels.numba.sea_mask): the Numba kernel on bins equals its NumPy twin
(upsampled rows and a stable sort) on Hypothesis-drawn shapes, per head and grouped. Deterministic.
"""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from proofs_tests.sea._draws import mask_cases
from refattn.sea import (
    sea_mask,
)


def _same(a, b):
    return all(np.array_equal(x.indptr, y.indptr) and np.array_equal(x.indices, y.indices) for x, y in zip(a, b))


@given(case=mask_cases(), grouped=st.booleans())
def test_mask_numba_equals_dense_twin(case, grouped):
    est, L, S, topk = case
    fast = sea_mask(est, L, S, topk, grouped=grouped, implementation="numba")
    twin = sea_mask(est, L, S, topk, grouped=grouped, implementation="numpy")
    assert _same(fast, twin)
