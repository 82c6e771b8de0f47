"""The fused positive-feature kernels against the readable NumPy form of ``RandomFeatures``: the same
shifts bit for bit, the same features to the exponential's rounding (each exp within 1 ulp of the
true value, so two ulp apart at most, plus the shared rounding of the argument), every stabiliser,
padding rows, batched draws, both dtypes; and a planted off-by-one in ``m`` is caught."""

import math

import numpy as np
import pytest

from refattn.kernels.numba.features import exp_shifted_rows, log_feature_row_max
from refattn.performer.features import RandomFeatures
from refattn.performer.projections import gaussian_projection

RTOL = {np.float64: 4 * 2.0 ** -52, np.float32: 4 * 2.0 ** -23}


def _inputs(dtype, batch=()):
    rng = np.random.default_rng(11)
    x = (rng.standard_normal(batch + (37, 16)) * 0.6).astype(dtype)
    W = gaussian_projection(24, 16, rng, size=batch[0] if batch else None)
    valid = rng.random(batch + (37,)) > 0.2
    return x, RandomFeatures("positive", W), valid


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("stabilize", [None, "query", "key"])
@pytest.mark.parametrize("batch", [(), (3,)])
@pytest.mark.parametrize("padded", [False, True])
def test_fused_positive_features_equal_the_numpy_form(dtype, stabilize, batch, padded):
    x, feats, valid = _inputs(dtype, batch)
    valid = valid if padded else None
    phi, ls = feats(x, stabilize=stabilize, valid=valid, dtype=dtype)
    phi0, ls0 = feats(x, stabilize=stabilize, valid=valid, dtype=dtype, implementation="numpy")
    assert phi.dtype == phi0.dtype == np.dtype(dtype) and ls.dtype == ls0.dtype == np.float64
    assert np.array_equal(ls, ls0)  # the shifts: maxima of identically rounded values
    np.testing.assert_allclose(phi, phi0, rtol=RTOL[dtype], atol=0)
    if padded:
        assert np.all(phi[~np.broadcast_to(valid, phi.shape[:-1])] == 0)


def test_a_planted_off_by_one_in_m_is_caught():
    """Power twin of the comparison: the kernel run with log(m + 1) in place of log(m) differs by
    (log(m+1) - log(m)) / 2 ~ 2% relative, far beyond the tolerance."""
    x, feats, _ = _inputs(np.float64)
    phi0, _ = feats(x, stabilize=None, implementation="numpy")
    u = x @ feats.W.T
    sq = np.sum(x * x, axis=-1) / 2
    keep = np.ones(x.shape[0], dtype=np.bool_)
    wrong = 0.5 * math.log(feats.m + 1)
    assert np.isfinite(log_feature_row_max(u, sq, wrong, keep)).all()
    exp_shifted_rows(u, sq, wrong, np.zeros(x.shape[0]), keep)
    assert not np.allclose(u, phi0, rtol=RTOL[np.float64], atol=0)


@pytest.mark.parametrize("stabilize", ["query", "key"])
def test_draws_batched_over_shared_rows(stabilize):
    """The Monte Carlo engine's shape: one set of rows ``x (L, d)`` against a batch of draws ``W (c, m, d)``."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((9, 16)) * 0.6
    feats = RandomFeatures("positive", gaussian_projection(24, 16, rng, size=4))
    phi, ls = feats(x, stabilize=stabilize)
    phi0, ls0 = feats(x, stabilize=stabilize, implementation="numpy")
    assert phi.shape == (4, 9, 24) and np.array_equal(ls, ls0)
    np.testing.assert_allclose(phi, phi0, rtol=RTOL[np.float64], atol=0)
