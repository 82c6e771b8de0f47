"""The shared Numba building block (refattn.kernels.numba.blas1): ``dot4``, a dot product with four
independent partial sums, equals the dot product to rounding at every length (the four-way split and
the remainder loop), and exactly on integer-valued floats. Deterministic."""

import numpy as np
import pytest

from refattn.kernels.numba.blas1 import dot4


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 7, 8, 9, 64, 1001])
def test_dot4_equals_the_dot_product(n):
    rng = np.random.default_rng(n)
    a, b = rng.normal(size=n), rng.normal(size=n)
    assert abs(dot4(a, b) - float(a @ b)) <= 8 * n * np.finfo(float).eps * float(np.abs(a) @ np.abs(b))
    ints = rng.integers(-50, 50, size=(2, n)).astype(np.float64)
    assert dot4(ints[0], ints[1]) == float(ints[0] @ ints[1])  # small integers: every partial sum exact


def test_dot4_uses_every_entry():
    """Power twin of the remainder loop: changing any single entry changes the result."""
    a = np.arange(1.0, 8.0)
    base = dot4(a, a)
    for i in range(a.size):
        b = a.copy()
        b[i] += 1.0
        assert dot4(a, b) == base + a[i]
