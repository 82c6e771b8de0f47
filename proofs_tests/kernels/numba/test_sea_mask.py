"""The SEA mask kernel (refattn.kernels.numba.sea_mask): the Numba kernel on bins equals its NumPy twin
(upsampled rows and a stable sort) on Hypothesis-drawn shapes, per head and grouped. Deterministic.
"""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from refattn.sea import (
    compressed_softmax,
    row_lengths,
    sea_mask,
)


@st.composite
def _mask_case(draw):
    N = draw(st.integers(1, 3))
    T = draw(st.integers(1, 25))
    S = draw(st.integers(1, 30))
    K = draw(st.integers(1, S))
    causal = draw(st.sampled_from([False, True, "top_left"]))
    seed = draw(st.integers(0, 2**31))
    ties = draw(st.booleans())
    rng = np.random.default_rng(seed)
    logits = rng.integers(0, 3, size=(N, T, K)).astype(float) if ties else rng.normal(size=(N, T, K))
    L = row_lengths(T, S, causal)
    est = compressed_softmax(logits, L, K)
    per_row = draw(st.booleans())
    topk = rng.integers(1, S + 3, size=T) if per_row else draw(st.integers(1, S + 2))
    return est, L, S, topk


def _same(a, b):
    return all(np.array_equal(x.indptr, y.indptr) and np.array_equal(x.indices, y.indices) for x, y in zip(a, b))


@given(case=_mask_case(), grouped=st.booleans())
def test_mask_numba_equals_dense_twin(case, grouped):
    est, L, S, topk = case
    fast = sea_mask(est, L, S, topk, grouped=grouped, implementation="numba")
    twin = sea_mask(est, L, S, topk, grouped=grouped, implementation="numpy")
    assert _same(fast, twin)
