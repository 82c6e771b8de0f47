"""The Monte Carlo engine (refattn.montecarlo) computes what the shipped estimators compute.

The engine vectorises many draws at once and is what the statistical tests and ``refattn theory``
sample from. It draws through the shipped feature maps, and each estimator is held here, on the
same draw, to the formula written out from its paper: ``kernel_samples`` (so
:class:`refattn.performer.RandomFeatures`, every softmax kind, FAVOR++ at a given A and at A*)
to Lemma 1 of Choromanski et al. (2021) and Likhosherstov et al. (2022, eq. 9);
``attention_samples`` to :func:`refattn.performer.performer_attention` with an explicit ``W``; and
``scatterbrain_samples`` to its definition on the support. Power twin: a planted wrong kind is
told apart. Deterministic (seeded draws, rounding-level tolerances).
"""

import numpy as np
import pytest

from refattn._validation import InputError
from refattn.montecarlo import ESTIMATORS, attention_samples, kernel_samples, scatterbrain_samples
from refattn.performer import RandomFeatures, performer_attention, projection


def _pairs(P=5, d=4, seed=0):
    rng = np.random.default_rng([seed, 11])
    return rng.normal(size=(P, d)) * 0.4, rng.normal(size=(P, d)) * 0.4


def _from_formula(kind, W, x, y, A=0.0):
    """SM^(x_p, y_p) for one draw W (m, d), written out from the papers (no refattn code):
    positive Lam mean_r exp(w_r.z), hyperbolic Lam mean_r cosh(w_r.z), trigonometric
    exp((|x|^2 + |y|^2)/2) mean_r cos(w_r.(x - y)), FAVOR++
    Lam (1 - 4A)^{d/2} mean_r exp(2A |w_r|^2 + sqrt(1 - 4A) w_r.z), with z = x + y and
    Lam = exp(-(|x|^2 + |y|^2)/2)."""
    sx, sy = np.sum(x * x, -1), np.sum(y * y, -1)
    lam, z, d = np.exp(-(sx + sy) / 2), x + y, x.shape[1]
    if kind == "trigonometric":
        return np.exp((sx + sy) / 2) * np.cos((x - y) @ W.T).mean(axis=1)
    u = z @ W.T  # (P, m)
    if kind == "positive":
        return lam * np.exp(u).mean(axis=1)
    if kind == "hyperbolic":
        return lam * np.cosh(u).mean(axis=1)
    w2 = np.sum(W * W, axis=-1)
    return lam * (1 - 4 * A) ** (d / 2) * np.exp(2 * A * w2 + np.sqrt(1 - 4 * A) * u).mean(axis=1)


def _from_features(kind, W, x, y, A=0.0):
    """phi(x_p) . phi(y_p) with refattn's feature maps, one draw W (m, d)."""
    f = RandomFeatures(kind, W, A)
    px, lx = f(x)
    py, ly = f(y)
    return np.sum(px * py, axis=-1) * np.exp(lx + ly)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("proj", ["gaussian", "orthogonal"])
def test_kernel_samples_are_the_shipped_feature_maps(estimator, proj):
    """The engine's samples are the shipped features' stabilised product on the same draw, and
    both are the paper's formula (FAVOR++ at a given A and at the optimal A* of these pairs)."""
    from refattn.theory import favorpp_optimal_A, favorpp_phi

    x, y = _pairs()
    m, n = 6, 7
    A_star = float(favorpp_optimal_A(favorpp_phi(x, y), x.shape[1]))
    for A in ([-0.2, A_star, 0.1] if estimator == "favorpp" else [0.0]):
        samples = kernel_samples(x, y, estimator=estimator, projection=proj, m=m, n_draws=n, rng=3, A=A)
        W = projection(proj, m, x.shape[1], np.random.default_rng(3), size=n)  # the engine's draws, in order
        shipped = np.stack([_from_features(estimator, W[i], x, y, A) for i in range(n)])
        formula = np.stack([_from_formula(estimator, W[i], x, y, A) for i in range(n)])
        np.testing.assert_allclose(samples, shipped, rtol=1e-12)
        np.testing.assert_allclose(shipped, formula, rtol=1e-11)


def test_a_wrong_estimator_is_told_apart():
    """Power twin: positive samples are not the hyperbolic formula on the same draw, and a FAVOR++
    formula with the constant (1 - 4A)^{d/4} (half the exponent) is told apart."""
    x, y = _pairs()
    samples = kernel_samples(x, y, estimator="positive", m=6, n_draws=4, rng=3)
    W = projection("gaussian", 6, x.shape[1], np.random.default_rng(3), size=4)
    other = np.stack([_from_formula("hyperbolic", W[i], x, y) for i in range(4)])
    assert np.max(np.abs(samples - other) / np.abs(other)) > 1e-3
    pp = kernel_samples(x, y, estimator="favorpp", m=6, n_draws=4, rng=3, A=-0.2)
    half = np.stack([_from_formula("favorpp", W[i], x, y, -0.2) for i in range(4)]) / 1.8 ** (x.shape[1] / 4)
    assert np.max(np.abs(pp - half) / np.abs(half)) > 1e-3


def test_attention_samples_are_performer_outputs():
    rng = np.random.default_rng(4)
    q, k, v = rng.normal(size=(5, 4)), rng.normal(size=(6, 4)), rng.normal(size=(6, 3))
    samples = attention_samples(q, k, v, m=8, n_draws=3, rng=9, projection="orthogonal")
    W = projection("orthogonal", 8, 4, np.random.default_rng(9), size=3)
    for i in range(3):
        out = performer_attention(q, k, v, W=W[i], features="positive").output
        np.testing.assert_allclose(samples[i], out, rtol=1e-10)


def test_scatterbrain_samples_are_exact_on_the_support():
    x, y = _pairs(P=4)
    same = np.vstack([x[:2], x[:2]]), np.vstack([x[:2], y[2:4]])  # pairs 0, 1 identical: always hashed together
    est, sparse_only = scatterbrain_samples(*same, m=4, r=3, n_draws=50, rng=1)
    exact = np.exp(np.sum(same[0] * same[1], axis=1))
    np.testing.assert_allclose(est[:, :2], np.broadcast_to(exact[:2], (50, 2)), rtol=1e-15)
    np.testing.assert_allclose(sparse_only[:, :2], est[:, :2], rtol=0)
    assert np.all((sparse_only[:, 2:] == 0) | (sparse_only[:, 2:] == exact[2:]))


@pytest.mark.parametrize("call,match", [
    (lambda: kernel_samples(np.ones((2, 3)), np.ones((2, 3)), estimator="relu", m=2, n_draws=2, rng=0), "^estimator:"),
    (lambda: kernel_samples(np.ones((2, 3)), np.ones((3, 3)), m=2, n_draws=2, rng=0), "^y: shape"),
    (lambda: kernel_samples(np.ones(3), np.ones(3), estimator="favorpp", A=0.2, m=2, n_draws=2, rng=0), "^A:"),
    (lambda: kernel_samples(np.ones(3), np.ones(3), m=0, n_draws=2, rng=0), "^m:"),
    (lambda: attention_samples(np.ones((2, 2, 3)), np.ones((2, 2, 3)), np.ones((2, 2, 1)), m=2, n_draws=2, rng=0),
     "^q: attention_samples takes 2-D"),
    (lambda: scatterbrain_samples(np.ones((2, 3)), np.ones((2, 4)), m=2, r=1, n_draws=2, rng=0), "^x, y:"),
])
def test_bad_input_names_the_argument(call, match):
    with pytest.raises((TypeError, ValueError), match=match):
        call()


def _one_pair(seed, d=32):
    rng = np.random.default_rng([seed, 77])
    x, y = rng.normal(size=(2, 1, d)) * (0.6 / d ** 0.25)
    return x, y


@pytest.mark.statistical
@pytest.mark.parametrize("estimator", ["positive", "hyperbolic", "trigonometric"])
@pytest.mark.parametrize("proj", ["gaussian", "orthogonal"])
def test_the_reduced_draw_has_the_direct_draws_distribution(seed, estimator, proj):
    """``sampler="gram"`` (jointly Gaussian projections through the Gram matrix; a Haar frame for
    orthogonal rows) against ``sampler="direct"`` (each W drawn and projected): a two-sample
    Kolmogorov-Smirnov test on 3000 independent samples of each, false-failure 1e-4 per case. The
    power twin below shows the test rejects a reduced draw that loses the x-y correlation."""
    from scipy.stats import ks_2samp

    x, y = _one_pair(seed)
    kw = dict(estimator=estimator, projection=proj, m=16, n_draws=3000)
    fast = kernel_samples(x, y, sampler="gram", rng=np.random.default_rng([seed, 1]), **kw)[:, 0]
    direct = kernel_samples(x, y, sampler="direct", rng=np.random.default_rng([seed, 2]), **kw)[:, 0]
    assert ks_2samp(fast, direct).pvalue > 1e-4


@pytest.mark.statistical
def test_a_reduced_draw_without_the_cross_covariance_is_rejected(seed):
    """Power twin: projections of x and y drawn with the right variances but independent (the Gram
    matrix's off-diagonal block dropped) give E = 1 instead of exp(x . y); the same test, at the
    same size, rejects them (at x . y = 0.6 the KS statistic is about 0.2; its 1e-4 critical value
    at n = 3000 is 0.05)."""
    from scipy.stats import ks_2samp

    from refattn.montecarlo import _gram_factor

    rng = np.random.default_rng([seed, 5])
    a, b = np.linalg.qr(rng.normal(size=(32, 2)))[0].T  # a random orthonormal pair
    x, y = a[None], (0.6 * a + 0.8 * b)[None]  # |x| = |y| = 1, x . y = 0.6: E = 1.82 against 1 planted
    m, n = 16, 3000
    rng = np.random.default_rng([seed, 3])
    Z = np.concatenate([x, y])
    L = _gram_factor(Z)
    L_wrong = np.diag(np.sqrt(np.sum(Z * Z, axis=1)))  # variances kept, correlation lost
    feats = RandomFeatures("positive", np.zeros((m, x.shape[1])))

    def estimate(L):
        u = rng.standard_normal((n, m, 2)) @ L.T
        px, lx = feats.from_projections(np.ascontiguousarray(u[..., :1].swapaxes(-1, -2)), np.sum(x * x) / 2 * np.ones((1, 1)), stabilize="query")
        py, ly = feats.from_projections(np.ascontiguousarray(u[..., 1:].swapaxes(-1, -2)), np.sum(y * y) / 2 * np.ones((1, 1)), stabilize="query")
        return (np.sum(px * py, axis=-1) * np.exp(lx + ly))[:, 0]

    direct = kernel_samples(x, y, sampler="direct", m=m, n_draws=n, rng=np.random.default_rng([seed, 4]))[:, 0]
    assert ks_2samp(estimate(L), direct).pvalue > 1e-4  # the right factor through the same path passes
    assert ks_2samp(estimate(L_wrong), direct).pvalue < 1e-4


def test_auto_uses_the_reduced_draw_only_where_it_applies():
    x, y = _one_pair(0, d=8)
    same = dict(m=4, n_draws=5, rng=1)
    assert np.array_equal(kernel_samples(x, y, **same), kernel_samples(x, y, sampler="gram", **same))
    many = np.repeat(x, 5, axis=0), np.repeat(y, 5, axis=0)  # 2P = 10 > d = 8: direct
    assert np.array_equal(kernel_samples(*many, **same), kernel_samples(*many, sampler="direct", **same))
    fpp = dict(estimator="favorpp", A=-0.1, **same)
    assert np.array_equal(kernel_samples(x, y, **fpp), kernel_samples(x, y, sampler="direct", **fpp))
    with pytest.raises(InputError, match="sampler"):
        kernel_samples(x, y, sampler="gram", estimator="favorpp", **same)
    with pytest.raises(InputError, match="sampler"):
        kernel_samples(x, y, sampler="fast", **same)
