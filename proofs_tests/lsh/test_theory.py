"""Collision probabilities (refattn.lsh.theory) against the hashes' empirical rates.

Statistical tests: each assertion at alpha = 1e-6 (Bonferroni inside where several angles or
distances are tested); at most 8 here, family-wise <= 8e-6 per seed. Power twins: the same test
against a wrong formula must fail.
"""

import math

import numpy as np
import pytest

from refattn import theory
from refattn.lsh.hashes import (
    angular_hash,
    angular_rotations,
    e2lsh,
    e2lsh_draw,
    simhash_planes,
)
from refattn.stats import proportion_test, z_test_mean

ALPHA = 1e-6


ANGLES = np.radians([10, 45, 90, 135, 170])


def _pairs_at(angles, d):
    xs, ys = zip(*(theory.pair_at_angle(math.degrees(a), 1.0, 1.0, d) for a in angles))
    return np.array(xs), np.array(ys)


@pytest.mark.statistical
@pytest.mark.parametrize("r,tables", [(1, 1), (3, 1), (2, 4)])
def test_simhash_collision_rate(r, tables, seed):
    """(1 - theta/pi)^r per table, OR over L tables (Charikar 2002). Exact binomial tests over 5
    angles with 20000 draws (Bonferroni); false-failure 1e-6. Power twin: theta/(2 pi) in place of
    theta/pi is rejected. (A z-test is wrong here: at p = 0.99986 all draws may collide, which
    gives a zero standard error: the seed sweep caught that.)"""
    rng = np.random.default_rng([seed, 50, r, tables])
    n, d = 20_000, 5
    x, y = _pairs_at(ANGLES, d)
    planes = simhash_planes(d, r, rng, tables=tables * n).reshape(n, tables, r, d)
    px = np.einsum("ntrd,pd->ntpr", planes, x) > 0
    py = np.einsum("ntrd,pd->ntpr", planes, y) > 0
    hit = np.any(np.all(px == py, axis=-1), axis=1).astype(float)  # (n, P): some table agrees on all bits
    assert proportion_test(hit, theory.simhash_collision(ANGLES, r, tables), alpha=ALPHA)[0]
    wrong = 1 - (1 - (1 - ANGLES / (2 * np.pi)) ** r) ** tables
    assert not proportion_test(hit, wrong, alpha=ALPHA)[0]


@pytest.mark.statistical
def test_e2lsh_collision_rate(seed):
    """Datar et al. (2004): P = 1 - 2 Phi(-u) - 2/(sqrt(2 pi) u) (1 - e^{-u^2/2}), u = r/c. z-test over 5
    distances (exact binomial tests, Bonferroni), false-failure 1e-6; power twin: the formula at
    1.3 c is rejected."""
    rng = np.random.default_rng([seed, 51])
    n, d, width = 20_000, 4, 2.0
    dist = np.array([0.3, 1.0, 2.0, 4.0, 8.0])
    x = np.zeros((5, d))
    y = np.zeros((5, d))
    y[:, 0] = dist
    a, b = e2lsh_draw(d, width, rng, tables=n)
    hit = (e2lsh(x, a, b, width) == e2lsh(y, a, b, width)).astype(float)  # (n, 5)
    assert proportion_test(hit, theory.e2lsh_collision(dist, width), alpha=ALPHA)[0]
    assert not proportion_test(hit, theory.e2lsh_collision(1.3 * dist, width), alpha=ALPHA)[0]


@pytest.mark.statistical
def test_reformer_collisions_fall_with_angle_and_ignore_d(seed):
    """Reformer's angular hash (b = 8): the collision probability decreases with the angle
    (one-sided z-tests between neighbouring angles), and is the same in d = 3 and d = 64
    (two-sample z-tests). False-failure <= 2e-6. Power twin for the d-independence: the same
    two-sample test detects the change from b = 8 to b = 6 buckets."""
    rng = np.random.default_rng([seed, 52])
    n = 20_000

    def rates(d, b):
        x, y = _pairs_at(ANGLES, d)
        R = angular_rotations(d, b, rng, rounds=n)
        return (angular_hash(x, R) == angular_hash(y, R)).astype(float)  # (n, 5)

    h3, h64, h3b6 = rates(3, 8), rates(64, 8), rates(3, 6)
    p, se = h3.mean(0), h3.std(0, ddof=1) / math.sqrt(n)
    zc = 5.0  # one-sided, Bonferroni over 4 comparisons at 1e-6 total
    assert np.all((p[:-1] - p[1:]) / np.hypot(se[:-1], se[1:]) > zc), p
    assert z_test_mean(h3 - h64, 0.0, alpha=ALPHA).passed  # independent draws, paired by index
    assert not z_test_mean(h3b6 - h64, 0.0, alpha=ALPHA).passed


def test_angular_collision_mc_reports_its_error():
    p, se = theory.angular_collision_mc(np.radians(60), 8, n_draws=20_000, rng=3)
    assert 0 < p < 1 and 0 < se < 0.01
    p0, _ = theory.angular_collision_mc(0.0, 8, n_draws=1000, rng=3)
    assert p0 == 1.0
    # cross-polytope (2d buckets): more buckets than b = 2 SimHash, so fewer collisions at 60 degrees
    pc, sc = theory.angular_collision_mc(np.radians(60), family="cross_polytope", d=8, n_draws=20_000, rng=4)
    assert pc + 5 * sc < theory.simhash_collision(np.radians(60)) and pc > 0
    with pytest.raises(ValueError, match="^family"):
        theory.angular_collision_mc(0.5, 8, family="e2")


def test_angular_collision_mc_standard_error_is_binomial():
    """The reported error is the binomial standard error sqrt(p (1 - p) / n) of the returned p."""
    p, se = theory.angular_collision_mc(np.radians(75), 4, n_draws=5000, rng=9)
    assert 0.05 < p < 0.95
    assert se == pytest.approx(math.sqrt(p * (1 - p) / 5000), rel=1e-12)
