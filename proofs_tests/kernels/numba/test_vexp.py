"""The vectorisable exp of the Numba kernels against mpmath: at most 1 ulp (float64, and float32 for
the degree-7 variant), special values exact, in place equal to out of place.

Deterministic: a fixed grid plus fixed random points over the whole non-positive range.
"""

import mpmath
import numpy as np

from refattn.kernels.numba.vexp import exp_inplace, exp_nonpositive


def _exp(x):
    x = np.ascontiguousarray(x, dtype=np.float64)
    out = np.empty_like(x)
    exp_nonpositive(x, out)
    return out


def _mp_exp(x):
    return np.array([
        mpmath.libmp.to_float(mpmath.exp(mpmath.mpf(float(v)))._mpf_, rnd=mpmath.libmp.round_nearest)
        for v in x
    ])


def _grid():
    rng = np.random.default_rng(99)
    return np.concatenate([
        -np.linspace(0, 746, 4001),                 # the whole range, subnormal results included
        -rng.exponential(2.0, size=2000),           # where attention probabilities live
        -np.logspace(-300, 0, 500),                 # tiny arguments: exp ~ 1 - |x|
        -(np.arange(1, 50) * np.log(2)),            # k ln2: reduction boundaries
        -(np.arange(1, 50) + 0.5) * np.log(2),
        np.array([-708.39641853226408, -708.4, -744.44, -745.13, -745.14]),  # normal/subnormal edges
    ])


def test_exp_within_one_ulp_over_the_range():
    x = _grid()
    got, ref = _exp(x), _mp_exp(x)
    ulp = np.abs(got - ref) / np.spacing(np.maximum(ref, 5e-324))
    assert ulp.max() <= 1.0, (ulp.max(), x[np.argmax(ulp)])
    assert np.mean(got == ref) > 0.9  # mostly correctly rounded


def test_exp_special_values():
    x = np.array([0.0, -0.0, -np.inf, -746.0, -1e300, -5e-324])
    assert np.array_equal(_exp(x), [1.0, 1.0, 0.0, 0.0, 0.0, 1.0])


def test_exp_in_place_equals_out_of_place():
    x = -np.linspace(0, 30, 1001)
    y = x.copy()
    exp_inplace(y, 0.0)
    assert np.array_equal(y, _exp(x))
    z = x + 3.0
    exp_inplace(z, 3.0)  # the shift is subtracted first, rounded as in a separate pass
    assert np.array_equal(z, _exp((x + 3.0) - 3.0))
    assert np.abs(y - np.exp(x)).max() <= 2 * np.spacing(1.0)


def test_float32_exp_within_one_float32_ulp():
    """The degree-7 variant behind float32 outputs: within 1 float32 ulp of the exact exp of the
    float32 argument, subnormal float32 results included (x < -87.3)."""
    x32 = np.concatenate([_grid()[_grid() > -110], -np.linspace(0, 104, 3001)]).astype(np.float32)
    out32 = np.empty_like(x32)
    exp_nonpositive(x32, out32)
    ref = _mp_exp(x32.astype(np.float64))  # exact to float64, far below a float32 ulp
    ulp32 = np.abs(out32.astype(np.float64) - ref) / np.spacing(np.maximum(ref, 1e-45).astype(np.float32)).astype(
        np.float64)
    assert ulp32.max() <= 1.0, (ulp32.max(), x32[np.argmax(ulp32)])
    y = x32.copy()
    exp_inplace(y, np.float32(0))
    assert np.array_equal(y, out32)


def test_a_degree_too_low_fails_the_float32_bound():
    """Power twin: the float32 test's bound sees a polynomial one degree short (truncation ~1.2e-7,
    about 2 ulp): the Taylor remainder at r = -ln2/2 alone exceeds 1 ulp."""
    import math

    r = -math.log(2) / 2
    short = sum(r ** n / math.factorial(n) for n in range(7))
    value = np.float32(short)
    exact = math.exp(r)
    assert abs(float(value) - exact) / float(np.spacing(np.float32(exact))) > 1.0
