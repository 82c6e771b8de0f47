"""The Reformer support kernel (refattn.kernels.numba.lsh_support): the O(nnz) CSR builder equals the
readable twin (a T x S mask per round) on drawn buckets, look-backs and rounds. Deterministic.
"""

import numpy as np
import pytest

from refattn.lsh.sparse import (
    Support,
    chunked_bucket_support,
)


@pytest.mark.parametrize("T,S", [(1, 1), (7, 13), (64, 64), (100, 37)])
@pytest.mark.parametrize("rounds,lookback,same", [(1, 1, True), (3, 1, True), (2, 0, False), (4, 2, True)])
def test_chunked_support_kernel_equals_dense_twin(T, S, rounds, lookback, same):
    """The O(nnz) Numba builder gives exactly the support of the dense twin (union over rounds)."""
    rng = np.random.default_rng([T, S, rounds])
    qb, kb = rng.integers(0, 4, size=(rounds, T)), rng.integers(0, 4, size=(rounds, S))
    a = chunked_bucket_support(qb, kb, 8, lookback=lookback, same_bucket=same, implementation="numpy")
    b = chunked_bucket_support(qb, kb, 8, lookback=lookback, same_bucket=same)
    assert np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)
    Support.from_csr(b.indptr, b.indices, S)  # valid CSR: sorted, distinct, in range
