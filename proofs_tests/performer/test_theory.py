"""Closed forms of refattn.theory: reference values, identities and orderings.

Deterministic, except test_orthogonal_cross_moment_by_monte_carlo (statistical, stated).
"""

import math

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from refattn import theory
from refattn.montecarlo import kernel_samples
from refattn.stats import z_test_mean


def _pair(angle_deg, nx=1.0, ny=1.0, d=2):
    return theory.pair_at_angle(angle_deg, nx, ny, d)


def test_lemma2_reference_table():
    """Reference values: |x| = |y| = 1: m MSE_pos = 396.04, 51.880, 6.3891, 0.6321 at 0, 60, 90, 120 degrees."""
    expected = {0: 396.04, 60: 51.880, 90: 6.3891, 120: 0.6321}
    for ang, val in expected.items():
        x, y = _pair(ang)
        got = float(theory.mse_positive(x, y, 1))
        assert abs(got - val) <= 0.5 * 10 ** (math.floor(math.log10(val)) - 4 + 1), (ang, got, val)


def test_orthogonal_reference_example():
    """Reference values: d = m = 16, x = (0.6, 0, ...), y at 60 degrees (|y| = 0.6):
    iid 0.17421, ORF 0.13539, Theorem 2 bound 0.14822."""
    x, y = _pair(60, 0.6, 0.6, d=16)
    assert round(float(theory.mse_positive(x, y, 16)), 5) == 0.17421
    assert round(float(theory.mse_orthogonal(x, y, 16)), 5) == 0.13539
    assert round(float(theory.theorem2_bound(x, y, 16)), 5) == 0.14822


def test_hyperbolic_equals_trig_at_90_degrees():
    """Identity: equal norms l at 90 degrees: MSE_hyp = MSE_trig = 2 sinh^2(l^2) / m."""
    for ell in (0.3, 0.7, 1.0, 1.4):
        x, y = _pair(90, ell, ell)
        target = 2 * math.sinh(ell**2) ** 2 / 5
        assert math.isclose(theory.mse_hyperbolic(x, y, 5), target, rel_tol=1e-12)
        assert math.isclose(theory.mse_trigonometric(x, y, 5), target, rel_tol=1e-12)


@pytest.mark.parametrize("d", [4, 16, 64])
def test_orderings_over_angles_and_norms(d):
    """ORF MSE <= Theorem 2 bound <= iid MSE (m <= d); MSE_hyp(m) < MSE_pos(2m);
    FAVOR++(A*) <= FAVOR+; SMREG <= SM. On a grid of angles and norms."""
    for ang in range(0, 181, 15):
        for nrm in (0.2, 0.5, 0.8, 1.0):
            x, y = _pair(ang, nrm, nrm, d=d)
            for m in (2, d // 2, d):
                ort, bound, iid = theory.mse_orthogonal(x, y, m), theory.theorem2_bound(x, y, m), theory.mse_positive(x, y, m)
                assert ort <= bound * (1 + 1e-12) + 1e-300 and bound <= iid * (1 + 1e-12), (ang, nrm, m)
            assert theory.mse_hyperbolic(x, y, 4) < theory.mse_positive(x, y, 8) or np.isclose(
                theory.mse_positive(x, y, 8), 0)
            phi = float(np.sum((x + y) ** 2))
            A = float(theory.favorpp_optimal_A(phi, d))
            assert theory.favorpp_variance(x, y, A) <= theory.favorpp_variance(x, y, 0.0) * (1 + 1e-12) + 1e-300
            assert theory.smreg_ratio(x, y) <= 1 + 1e-15


def test_favorpp_zero_is_favor_plus():
    x, y = _pair(40, 0.7, 0.9, d=8)
    assert math.isclose(theory.favorpp_variance(x, y, 0.0), theory.mse_positive(x, y, 1), rel_tol=1e-12)


@pytest.mark.parametrize("d", [1, 8, 64])
@pytest.mark.parametrize("phi", [0.01, 0.5, 2.0, 10.0, 100.0])
def test_favorpp_optimal_A_is_the_minimiser(d, phi):
    """The closed-form A* (derived on the docs' Performer page) equals a numerical minimiser of the variance."""
    x = np.zeros(d)
    x[0] = math.sqrt(phi) / 2
    y = x.copy()  # |x + y|^2 = phi
    A_star = float(theory.favorpp_optimal_A(phi, d))
    res = minimize_scalar(lambda A: math.log(theory.favorpp_variance(x, y, A) + 1e-300),
                          bounds=(-50.0, 0.125 - 1e-9), method="bounded", options={"xatol": 1e-12})
    assert abs(res.x - A_star) <= 1e-4 * max(1.0, abs(A_star)), (res.x, A_star)


def test_smreg_ratio_series_matches_quadrature():
    """SMREG/SM by the series equals the direct integral over the sphere (d = 3: u.z/|z| ~ U[-1, 1])."""
    from scipy.integrate import quad

    for zn in (0.5, 1.5, 3.0):
        x = np.array([zn / 2, 0, 0])
        y = x.copy()
        w = zn**2 / 2
        # d = 3: E exp(sqrt(3) |z| t) with t uniform on [-1, 1]
        integral = quad(lambda t: math.exp(math.sqrt(3) * zn * t) / 2, -1, 1)[0]
        assert math.isclose(theory.smreg_ratio(x, y), integral * math.exp(-w), rel_tol=1e-12)


@pytest.mark.statistical
def test_orthogonal_cross_moment_by_monte_carlo(seed):
    """C(w, d) (derived on the docs' Performer page) = E[exp(omega_1.z) exp(omega_2.z)] for an orthogonal pair with
    chi_d norms. Checked through the one-block ORF MSE with m = d = 4: z-test of the sample mean
    of (SM^ - SM)^2 against mse_orthogonal. False-failure 1e-6. Power twin: the iid formula
    (10% larger here, about 8 standard errors) is rejected."""
    d = 4
    x, y = _pair(60, 0.5, 0.5, d=d)
    s = kernel_samples(x, y, projection="orthogonal", m=4, n_draws=300_000, rng=np.random.default_rng([seed, 20]))
    sq = (s[:, 0] - theory.softmax_kernel(x, y)) ** 2
    assert z_test_mean(sq, theory.mse_orthogonal(x, y, 4), alpha=1e-6).passed
    assert not z_test_mean(sq, theory.mse_positive(x, y, 4), alpha=1e-6).passed


def test_relu_kernel_matches_quadrature():
    from refattn.performer.features import gauss_hermite_kernel

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    got = theory.relu_kernel(x, y)
    relu = lambda u: np.maximum(u, 0)  # noqa: E731
    err = [np.abs(gauss_hermite_kernel(relu, x, y, n_nodes=n) - got) for n in (20, 60, 150)]
    # the kink slows Gauss-Hermite convergence (about 1/n): the quadrature approaches the closed form
    assert np.all(err[2] < err[1]) and np.all(err[1] < err[0])
    assert np.all(err[2] <= 0.03 * got + 1e-3), err[2]
    # smooth functions are exact: fn(u) = u gives x.y
    np.testing.assert_allclose(gauss_hermite_kernel(lambda u: u, x, y), np.sum(x * y, -1), rtol=1e-12, atol=1e-12)


def test_uniform_convergence_feature_count_scales():
    """Theorem 4's count grows like 1/eps^2 (up to the log) and with R."""
    a = theory.uniform_convergence_features(0.1, 16, 1.0)
    b = theory.uniform_convergence_features(0.05, 16, 1.0)
    assert 4 < b / a < 5
    assert theory.uniform_convergence_features(0.1, 16, 2.0) > a
    with pytest.raises(ValueError):
        theory.uniform_convergence_features(0.0, 16, 1.0)


def test_theory_bad_input():
    with pytest.raises(ValueError, match="^A: FAVOR"):
        theory.favorpp_variance(np.ones(2), np.ones(2), 0.125)
    with pytest.raises(ValueError, match="^m: must be >= 1"):
        theory.mse_positive(np.ones(2), np.ones(2), 0)
    with pytest.raises(ValueError, match="^y: last dim"):
        theory.mse_positive(np.ones(2), np.ones(3), 1)
    with pytest.raises(ValueError, match="^x: contains NaN"):
        theory.mse_trigonometric(np.array([np.nan, 1.0]), np.ones(2), 1)


def test_uniform_convergence_features_by_hand():
    """Performer Theorem 4's count at eps = 0.1, d = 16, R = 2, computed by hand:
    l = R d^{-1/4} = 1, delta = eps e^{-1}, m = (d / delta^2) log(4 d^{3/4} R / delta)
    = 1600 e^2 log(640 e). Deterministic."""
    from refattn.theory import uniform_convergence_features

    by_hand = 1600 * math.e**2 * math.log(640 * math.e)
    assert uniform_convergence_features(0.1, 16, 2.0) == pytest.approx(by_hand, rel=1e-12)


def test_favorpp_phi_is_the_pair_average():
    """favorpp_phi = mean over all (i, j) of |x_i + y_j|^2, against the double loop."""
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((5, 3)), rng.standard_normal((7, 3)) + 0.5
    brute = np.mean([np.sum((a + b) ** 2) for a in x for b in y])
    assert theory.favorpp_phi(x, y) == pytest.approx(brute, rel=1e-12)
