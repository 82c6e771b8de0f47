"""The Monte Carlo engine (refattn.montecarlo) computes what the shipped estimators compute.

The engine vectorises many draws at once and is what the statistical tests and ``refattn theory``
sample from, so each of its estimator formulas is held here to the product a user calls, on the
same draw: ``kernel_samples`` to :class:`refattn.performer.RandomFeatures` (every softmax kind),
``attention_samples`` to :func:`refattn.performer.performer_attention` with an explicit ``W``, and
``scatterbrain_samples`` to its definition on the support. Power twin: a planted wrong kind is
told apart. Deterministic (seeded draws, rounding-level tolerances).
"""

import numpy as np
import pytest

from refattn.montecarlo import ESTIMATORS, attention_samples, kernel_samples, scatterbrain_samples
from refattn.performer import RandomFeatures, performer_attention, projection


def _pairs(P=5, d=4, seed=0):
    rng = np.random.default_rng([seed, 11])
    return rng.normal(size=(P, d)) * 0.4, rng.normal(size=(P, d)) * 0.4


def _from_features(kind, W, x, y, A=0.0):
    """phi(x_p) . phi(y_p) with refattn's feature maps, one draw W (m, d)."""
    f = RandomFeatures(kind, W, A)
    px, lx = f(x)
    py, ly = f(y)
    return np.sum(px * py, axis=-1) * np.exp(lx + ly)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("proj", ["gaussian", "orthogonal"])
def test_kernel_samples_are_the_shipped_feature_maps(estimator, proj):
    x, y = _pairs()
    m, n, A = 6, 7, (-0.2 if estimator == "favorpp" else 0.0)
    samples = kernel_samples(x, y, estimator=estimator, projection=proj, m=m, n_draws=n, rng=3, A=A)
    W = projection(proj, m, x.shape[1], np.random.default_rng(3), size=n)  # the engine's draws, in order
    expected = np.stack([_from_features(estimator, W[i], x, y, A) for i in range(n)])
    np.testing.assert_allclose(samples, expected, rtol=1e-12)


def test_a_wrong_estimator_is_told_apart():
    """Power twin: positive samples are not the hyperbolic feature maps on the same draw."""
    x, y = _pairs()
    samples = kernel_samples(x, y, estimator="positive", m=6, n_draws=4, rng=3)
    W = projection("gaussian", 6, x.shape[1], np.random.default_rng(3), size=4)
    other = np.stack([_from_features("hyperbolic", W[i], x, y) for i in range(4)])
    assert np.max(np.abs(samples - other) / np.abs(other)) > 1e-3


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
