"""Projection samplers (refattn.performer.projections): moments, sign symmetry, orthogonality, norms.

Statistical tests: module family-wise false-failure probability <= 1e-5 per seed
(each assertion at alpha = 1e-6, fewer than 10 of them). Each has a power twin that runs
the same check on a planted defect (plain QR without the sign correction; fixed norms).
"""

import numpy as np
import pytest
from scipy import stats

from refattn.performer.projections import (
    gaussian_projection,
    haar_orthogonal,
    orthogonal_projection,
    projection,
    regular_projection,
    sorf_projection,
)
from refattn.stats import z_test_mean

ALPHA = 1e-6
D = 8
N = 6000

SAMPLERS = {"gaussian": gaussian_projection, "orthogonal": orthogonal_projection, "sorf": sorf_projection}


def _moment_tests(W):
    """z-tests of E[omega] = 0 and E[omega omega^T] = I on the first row of each draw (independent)."""
    w = W[:, 0, :]  # (N, d)
    first = z_test_mean(w, 0.0, alpha=ALPHA / 2)
    outer = (w[:, :, None] * w[:, None, :]).reshape(len(w), -1)  # (N, d*d)
    second = z_test_mean(outer, np.eye(w.shape[1]).ravel(), alpha=ALPHA / 2)
    return first, second


@pytest.mark.statistical
@pytest.mark.parametrize("name", ["gaussian", "orthogonal"])
def test_rows_have_gaussian_moments(name, seed):
    """E[omega] = 0, E[omega omega^T] = I (Lemma 1's condition). False-failure <= 1e-6."""
    W = SAMPLERS[name](D, D, np.random.default_rng([seed, 10]), size=N)
    first, second = _moment_tests(W)
    assert first.passed, first.summary()
    assert second.passed, second.summary()


@pytest.mark.statistical
def test_plain_qr_fails_the_moment_test(seed):
    """Power twin: without the sign correction, E[omega] != 0 (the first coordinate is biased)."""
    W = orthogonal_projection(D, D, np.random.default_rng([seed, 11]), size=N, sign_correction=False)
    first, _ = _moment_tests(W)
    assert not first.passed, first.summary()


@pytest.mark.statistical
def test_sign_symmetry_of_haar_directions(seed):
    """P(Q_00 < 0) = 1/2 for Haar matrices (binomial test, false-failure <= 1e-6); the plain
    LAPACK QR has P = 1 (power twin; Mezzadri 2007)."""
    rng = np.random.default_rng([seed, 12])
    n = 2000
    neg = int((haar_orthogonal(n, D, rng)[:, 0, 0] < 0).sum())
    assert stats.binomtest(neg, n, 0.5).pvalue > ALPHA, neg
    neg_plain = int((haar_orthogonal(n, D, rng, sign_correction=False)[:, 0, 0] < 0).sum())
    assert stats.binomtest(neg_plain, n, 0.5).pvalue <= ALPHA, neg_plain


@pytest.mark.parametrize("m", [1, 5, 8, 13, 24])
def test_rows_orthogonal_within_blocks(m):
    """Orthogonal and regular rows are exactly orthogonal within each block of d (deterministic)."""
    for sampler in (orthogonal_projection, regular_projection):
        W = sampler(m, D, 3)
        assert W.shape == (m, D)
        for b in range(0, m, D):
            blk = W[b:b + D]
            G = blk @ blk.T
            off = G - np.diag(np.diag(G))
            assert np.abs(off).max() <= 1e-12 * np.diag(G).max()


@pytest.mark.statistical
def test_norms_are_chi_d_and_regular_norms_are_fixed(seed):
    """Row norms ~ chi_d (KS test, false-failure 1e-6); regular rows have norm exactly sqrt(d),
    and the same KS test rejects them (power twin)."""
    rng = np.random.default_rng([seed, 13])
    norms = np.linalg.norm(orthogonal_projection(D, D, rng, size=1500)[:, 0, :], axis=-1)
    assert stats.kstest(norms, stats.chi(D).cdf).pvalue > ALPHA
    reg = np.linalg.norm(regular_projection(D, D, rng, size=1500)[:, 0, :], axis=-1)
    assert np.allclose(reg, np.sqrt(D), rtol=1e-13, atol=0) and np.all(np.abs(reg - np.sqrt(D)) <= 1e-12)
    assert stats.kstest(reg, stats.chi(D).cdf).pvalue <= ALPHA


def test_sorf_structure():
    """SORF rows: chi-scaled, d columns, blocks of the padded size; same seed, same draw."""
    W = sorf_projection(20, 12, 5)
    assert W.shape == (20, 12)
    assert np.array_equal(W, sorf_projection(20, 12, 5))
    assert not np.array_equal(W, sorf_projection(20, 12, 6))


def test_projection_dispatch_and_bad_input():
    assert projection("iid", 3, 4, 0).shape == (3, 4)
    with pytest.raises(ValueError, match="^name: unknown projection"):
        projection("hadamard", 3, 4, 0)
    with pytest.raises(ValueError, match="^m: must be >= 1"):
        gaussian_projection(0, 4, 0)
    with pytest.raises(TypeError, match="^d: expected an integer"):
        orthogonal_projection(3, 4.0, 0)
    with pytest.raises(ValueError, match="^rng"):
        orthogonal_projection(3, 4, None)


@pytest.mark.statistical
def test_sorf_row_norms_are_chi_d(seed):
    """SORF (Yu et al. 2016, section 4) keeps the first d of p = 8 columns of each structured row,
    then rescales every row to an independent chi_d norm: the 4000 row norms of 500 draws at
    m = 8, d = 6 follow chi_6 exactly (Kolmogorov-Smirnov, alpha = 1e-6). Power twin: the norms
    without the per-row renormalisation (scaled by the truncated row's norm, about sqrt(6/8))
    are rejected by the same test."""
    from refattn.performer.projections import sorf_projection

    W = sorf_projection(8, 6, np.random.default_rng([seed, 40]), size=500)  # (500, 8, 6)
    norms = np.linalg.norm(W, axis=-1).ravel()
    assert stats.kstest(norms, stats.chi(6).cdf).pvalue > 1e-6
    assert stats.kstest(norms * np.sqrt(6 / 8), stats.chi(6).cdf).pvalue < 1e-6


@pytest.mark.parametrize("d", [1, 2, 3, 5, 8, 9])
def test_sorf_shapes_and_orthogonal_blocks(d):
    """SORF pads d up to the next power of two p (Yu et al. 2016): every d gives (m, d) rows, and at
    d = p = 8 the rows of one block are exactly orthogonal directions (the structured product is
    an orthogonal matrix; a larger p truncated to d columns would not be). Deterministic."""
    from refattn.performer.projections import sorf_projection

    W = sorf_projection(min(d, 8), d, np.random.default_rng(3))
    assert W.shape == (min(d, 8), d) and np.all(np.isfinite(W))
    if d == 8:
        U = W / np.linalg.norm(W, axis=1, keepdims=True)
        np.testing.assert_allclose(U @ U.T, np.eye(8), atol=1e-12)
