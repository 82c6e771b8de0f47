"""The blocked angular hash against the readable ``argmax([x R; -x R])``: the same buckets, ties included."""

import numpy as np
import pytest

from refattn.kernels.numba.angular_hash import angular_hash_blocked
from refattn.lsh.hashes import angular_hash, angular_rotations


@pytest.mark.parametrize("n, b, rounds", [(1, 2, 1), (37, 2, 2), (1000, 16, 3), (4096, 128, 2)])
def test_blocked_hash_equals_the_concatenation(n, b, rounds):
    rng = np.random.default_rng(n + b)
    x = rng.standard_normal((n, 16))
    R = angular_rotations(16, b, rng, rounds=rounds)
    fast = angular_hash(x, R)
    assert fast.shape == (rounds, n) and fast.dtype == np.int64
    assert np.array_equal(fast, angular_hash(x, R, implementation="numpy"))


def test_ties_go_to_the_first_half_and_the_first_index():
    """np.argmax picks the first maximum of [p, -p]: a tie between max p and -min p goes to p's index."""
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    R = np.array([[[1.0, -1.0, 1.0], [0.0, 0.0, 0.0]]])  # p rows: (1,-1,1), (0,0,0), (1,-1,1)
    expected = np.argmax(np.concatenate([x @ R[0], -(x @ R[0])], axis=-1), axis=-1)
    assert np.array_equal(angular_hash_blocked(x, R, 2)[0], expected)
    assert np.array_equal(expected, [0, 0, 0])


def test_a_hash_that_prefers_the_second_half_on_ties_is_caught():
    """Power twin: resolving a tie towards ``-p`` changes a bucket the test above pins."""
    p = np.array([1.0, -1.0, 1.0])
    wrong = len(p) + int(np.argmin(p))  # the second half's first maximum
    assert wrong != int(np.argmax(np.concatenate([p, -p])))
