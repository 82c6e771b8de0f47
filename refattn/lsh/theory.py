r"""Collision probabilities of the LSH families (SimHash, E2LSH, Reformer's angular hash,
cross-polytope) and SMYRF's distance identity, which the tests, the docs and ``refattn theory``
compare against. Derivations: the docs' LSH page.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm

from refattn._validation import (
    InputError,
    as_float_array,
    as_generator,
    check_finite_result,
    check_positive_int,
    check_real,
)
from refattn.lsh.hashes import angular_hash, angular_rotations, cross_polytope_hash, cross_polytope_rotations
from refattn.performer.theory import _xy, pair_at_angle

__all__ = ["simhash_collision", "e2lsh_collision", "angular_collision_mc", "smyrf_distance"]


def simhash_collision(theta, r=1, tables=1):
    """SimHash (Charikar 2002): ``1 - (1 - (1 - theta/pi)^r)^L``: r bits AND, L tables OR."""
    r = check_positive_int(r, "r")
    tables = check_positive_int(tables, "tables")
    theta = as_float_array(theta, "theta").astype(np.float64)
    if np.any((theta < 0) | (theta > np.pi)):
        raise InputError("theta: angles must lie in [0, pi]")
    p = (1 - theta / np.pi) ** r
    return 1 - (1 - p) ** tables


def e2lsh_collision(c, width):
    """E2LSH (Datar et al. 2004, eq. for the Gaussian case): with ``u = width / c``,
    ``P = 1 - 2 Phi(-u) - (2 / (sqrt(2 pi) u)) (1 - exp(-u^2/2))``; ``c = 0`` gives 1."""
    c = as_float_array(c, "c").astype(np.float64)
    if np.any(c < 0):
        raise InputError("c: distances must be >= 0")
    width = check_real(width, "width", minimum=0.0, low_open=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = width / c
        p = 1 - 2 * norm.cdf(-u) - 2 / (np.sqrt(2 * np.pi) * u) * (1 - np.exp(-u * u / 2))
    return np.where(c == 0, 1.0, p)


def angular_collision_mc(theta, n_buckets=None, *, n_draws=100_000, rng=0, d=2, family="angular"):
    """Collision probability of Reformer's angular hash (``family="angular"``, ``n_buckets`` buckets)
    or of the cross-polytope hash (``family="cross_polytope"``, ``2d`` buckets) at angle ``theta``,
    by Monte Carlo.

    No closed form fits at practical bucket counts (the docs' LSH page: the asymptotic formula of
    Andoni et al. 2015 is far off), so this returns ``(p, stderr)`` from ``n_draws`` independent
    hashes, with the binomial standard error. The angular hash's probability depends only on
    the angle and ``b``, not on ``d`` (Gaussian ``R``'s projections onto the plane of ``x``, ``y``
    are all that matter); the cross-polytope's depends on ``d`` through its ``2d`` buckets.
    """
    if family not in ("angular", "cross_polytope"):
        raise InputError(f"family: expected 'angular' or 'cross_polytope', got {family!r}")
    n_draws = check_positive_int(n_draws, "n_draws", maximum=10**9)
    d = check_positive_int(d, "d")
    theta = check_real(theta, "theta", minimum=0.0, maximum=math.pi)
    if family == "angular":
        check_positive_int(n_buckets, "n_buckets", minimum=2)
    gen = as_generator(rng)
    x, y = pair_at_angle(float(np.degrees(theta)), 1.0, 1.0, max(2, d))
    xy = np.stack([x, y])
    hits = 0
    done = 0
    while done < n_draws:
        c = min(20_000, n_draws - done)
        if family == "angular":
            h = angular_hash(xy, angular_rotations(x.size, n_buckets, gen, rounds=c))  # (c, 2)
        else:
            h = cross_polytope_hash(xy, cross_polytope_rotations(x.size, gen, rounds=c))
        hits += int(np.sum(h[:, 0] == h[:, 1]))
        done += c
    p = hits / n_draws
    return p, math.sqrt(max(p * (1 - p), 1.0 / n_draws) / n_draws)


def smyrf_distance(q, k, M):
    """The SMYRF identity's right side: ``|F(q) - G(k)|^2 = 2 M^2 - 2 q . k`` (Daras et al. 2020)."""
    q, k = _xy(q, k, ("q", "k"))
    M = check_real(M, "M", minimum=0.0, maximum=1e150)
    return check_finite_result(2 * M**2 - 2 * np.sum(q * k, -1), "q, k, M", "2 M^2 - 2 q . k")
