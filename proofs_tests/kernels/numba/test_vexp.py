"""The vectorisable exp of the Numba kernels against mpmath: at most 1 ulp, special values exact.

Deterministic: a fixed grid plus fixed random points over the whole non-positive range.
"""

import mpmath
import numpy as np

from refattn.kernels.numba.vexp import exp_nonpositive


def _exp(x):
    x = np.ascontiguousarray(x, dtype=np.float64)
    out = np.empty_like(x)
    exp_nonpositive(x, out, np.empty(x.size, dtype=np.int64))
    return out


def _mp_exp(x):
    return np.array([
        mpmath.libmp.to_float(mpmath.exp(mpmath.mpf(float(v)))._mpf_, rnd=mpmath.libmp.round_nearest)
        for v in x
    ])


def test_exp_within_one_ulp_over_the_range():
    rng = np.random.default_rng(99)
    x = np.concatenate([
        -np.linspace(0, 746, 4001),                 # the whole range, subnormal results included
        -rng.exponential(2.0, size=2000),           # where attention probabilities live
        -np.logspace(-300, 0, 500),                 # tiny arguments: exp ~ 1 - |x|
        -(np.arange(1, 50) * np.log(2)),            # k ln2: reduction boundaries
        -(np.arange(1, 50) + 0.5) * np.log(2),
        np.array([-708.39641853226408, -708.4, -744.44, -745.13, -745.14]),  # normal/subnormal edges
    ])
    got, ref = _exp(x), _mp_exp(x)
    ulp = np.abs(got - ref) / np.spacing(np.maximum(ref, 5e-324))
    assert ulp.max() <= 1.0, (ulp.max(), x[np.argmax(ulp)])
    assert np.mean(got == ref) > 0.9  # mostly correctly rounded


def test_exp_special_values():
    x = np.array([0.0, -0.0, -np.inf, -746.0, -1e300, -5e-324])
    assert np.array_equal(_exp(x), [1.0, 1.0, 0.0, 0.0, 0.0, 1.0])


def test_exp_in_place_and_float32():
    x = -np.linspace(0, 30, 1001)
    ref = np.exp(x)
    y = x.copy()
    exp_nonpositive(y, y, np.empty(y.size, dtype=np.int64))
    assert np.array_equal(y, _exp(x))
    x32 = x.astype(np.float32)
    out32 = np.empty_like(x32)
    exp_nonpositive(x32, out32, np.empty(x32.size, dtype=np.int64))
    np.testing.assert_allclose(out32, np.exp(x32.astype(np.float64)), rtol=2 ** -23)
    assert np.abs(y - ref).max() <= 2 * np.spacing(1.0)
