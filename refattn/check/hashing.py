r"""``--kind hash``: a hash function ``fn(x, seed) -> bucket ids (T,)``; the same seed must give
the same hash (so queries and keys hashed with one seed share it), different seeds
independent hashes.

Checks over ``n`` seeds, on unit pairs at angles 15..165 degrees (E2LSH: at distances) in a
random orientation (the docs' LSH page):

1. **Identical points collide** (exact): a point and its copy get the same bucket.
2. **Collision rate vs theory**: per pair, ``P[h(x) = h(y)]`` against the closed form, by exact
   binomial tests (Bonferroni over pairs): SimHash with ``r`` bits ``(1 - theta/pi)^r``
   (Charikar 2002), E2LSH (Datar et al. 2004). Reformer's angular hash and the cross-polytope
   have no closed form at practical bucket counts: their rate is compared with refattn's own
   hash by a two-proportion z-test per pair.
With ``rounds = R`` the callable returns ``(R, T)`` ids (a multi-round hash, Reformer's rounds):
a pair collides when it shares a bucket in any round, ``1 - (1 - p)^R``, and every round is
checked for identical points and independence.

**Draws for power.** Unless ``n_draws`` is given, the number of draws is chosen so that a 10%
relative change of the collision rate at the most sensitive pair is detected with probability at
least 0.99 at the run's ``alpha`` (Bonferroni over the pairs and the three statistical checks):
the normal-approximation sample size of the one-sample binomial test (two-sample test for the
families judged against refattn's own hash), at the reference rates (closed forms, or refattn's
Monte Carlo for the angular and cross-polytope hashes). [`draws_for_power`][refattn.check.hashing.draws_for_power].

3. **Independence across seeds**: a point hashed with seeds ``s`` and ``s + 1`` collides with
   probability ``1 / buckets`` for the symmetric families (SimHash ``2^-r``, angular ``1/b``,
   cross-polytope ``1/(2d)``), exact binomial tests per point; for E2LSH the rate is compared
   with refattn's own hash (two-proportion z-test). A hash that ignores the seed, or derives
   correlated draws from neighbouring seeds, fails.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as _st

from refattn._validation import InputError
from refattn.check.verdict import bonferroni_p
from refattn.lsh import hashes as lsh
from refattn.performer.projections import haar_orthogonal
from refattn.stats import proportion_test
from refattn.theory import angular_collision_mc, e2lsh_collision, pair_at_angle, simhash_collision

__all__ = ["check_hash", "HASH_FAMILIES", "reference_hash", "draws_for_power", "hash_draws"]

#: The angles (degrees; E2LSH: distances in units of the width) of the probe pairs.
ANGLES = (15, 45, 75, 90, 105, 135, 165)
E2LSH_DISTANCES = (0.25, 0.5, 1.0, 2.0, 4.0)
#: Statistical checks of the hash kind (collision rate, independence; Holm over them).
N_STATISTICAL = 3
#: Never fewer draws than this (the measured power of the seed-independence check rests on it).
MIN_DRAWS = 1000

HASH_FAMILIES = ("simhash", "angular", "cross_polytope", "e2lsh")


def reference_hash(family, *, bits=1, buckets=8, width=1.0, rounds=None):
    """refattn's own hash of ``family`` as a ``fn(x, seed)`` callable: ``(T,)`` ids (one round), or
    ``(rounds, T)`` with ``rounds`` independent rounds drawn from the seed."""
    R = 1 if rounds is None else rounds
    if family == "simhash":
        def fn(x, seed):
            return lsh.simhash(x, lsh.simhash_planes(x.shape[1], bits, seed, tables=R))
    elif family == "angular":
        def fn(x, seed):
            return lsh.angular_hash(x, lsh.angular_rotations(x.shape[1], buckets, seed, rounds=R))
    elif family == "cross_polytope":
        def fn(x, seed):
            return lsh.cross_polytope_hash(x, lsh.cross_polytope_rotations(x.shape[1], seed, rounds=R))
    elif family == "e2lsh":
        def fn(x, seed):
            a, b = lsh.e2lsh_draw(x.shape[1], width, seed, tables=R)
            return lsh.e2lsh(x, a, b, width)
    else:
        raise InputError(f"family: expected one of {HASH_FAMILIES}, got {family!r}")
    return fn if rounds is not None else (lambda x, seed: fn(x, seed)[0])


def draws_for_power(rates, *, alpha, n_tests, two_sample, relative=0.10, power=0.99, cap=40_000):
    """Draws so that a ``relative`` change of the collision rate is detected with probability
    ``power`` at the most sensitive of ``rates``, each test at level ``alpha / n_tests`` (two-sided):
    ``n = (z_a sqrt(k p0 q0) + z_b sqrt(p0 q0 + p1 q1 (k - 1)))^2 / (p1 - p0)^2`` with ``k = 1`` for the
    one-sample test and 2 for two samples of ``n`` each (the normal approximation; Fleiss et al.
    2003, Ch. 4), ``p1 = p0 (1 + relative)`` (or ``p0 (1 - relative)`` where that exceeds 1)."""
    za = _st.norm.isf(alpha / n_tests / 2)
    zb = _st.norm.isf(1 - power)
    best = cap
    for p0 in np.atleast_1d(np.asarray(rates, dtype=np.float64)):
        if not 0 < p0 < 1:
            continue
        p1 = p0 * (1 + relative) if p0 * (1 + relative) < 1 else p0 * (1 - relative)
        if two_sample:
            pbar = (p0 + p1) / 2
            n = (za * math.sqrt(2 * pbar * (1 - pbar)) + zb * math.sqrt(p0 * (1 - p0) + p1 * (1 - p1))) ** 2
        else:
            n = (za * math.sqrt(p0 * (1 - p0)) + zb * math.sqrt(p1 * (1 - p1))) ** 2
        best = min(best, math.ceil(n / (p1 - p0) ** 2))
    return int(max(best, 100))


def _reference_rates(family, bits, buckets, width, rounds, d):
    """Collision rates of the probe pairs for ``family``: closed forms, or refattn's Monte Carlo."""
    R = rounds or 1
    if family == "simhash":
        return simhash_collision(np.radians(ANGLES), r=bits, tables=R)
    if family == "e2lsh":
        return 1 - (1 - e2lsh_collision(width * np.array(E2LSH_DISTANCES), width)) ** R
    p = np.array([angular_collision_mc(math.radians(a), buckets, n_draws=4000, rng=a, d=d, family=family)[0]
                  for a in ANGLES])
    return 1 - (1 - p) ** R


def hash_draws(family, *, bits=1, buckets=8, width=1.0, rounds=None, alpha=1e-3, d=8):
    """The hash kind's default draws for this family and claim ([`draws_for_power`][refattn.check.hashing.draws_for_power])."""
    rates = _reference_rates(family, bits, buckets, width, rounds, d)
    P = len(E2LSH_DISTANCES) if family == "e2lsh" else len(ANGLES)
    n = draws_for_power(rates, alpha=alpha, n_tests=P * N_STATISTICAL, two_sample=family in ("angular", "cross_polytope"))
    return max(n, MIN_DRAWS)


def _two_proportion(run, check, hits_a, hits_b, meaning):
    """Per entry ``p_a = p_b`` (pooled two-proportion z-test, Bonferroni over entries)."""
    na, nb = len(hits_a), len(hits_b)
    pa, pb = hits_a.mean(axis=0), hits_b.mean(axis=0)
    pool = (hits_a.sum(axis=0) + hits_b.sum(axis=0)) / (na + nb)
    se = np.sqrt(pool * (1 - pool) * (1 / na + 1 / nb))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, (pa - pb) / np.where(se > 0, se, 1), 0.0)
    p = 2 * _st.norm.sf(np.abs(z))
    w = int(np.argmax(np.abs(z)))
    rate = np.clip(pool, 0.0, 1.0)  # the (absolute) rate change detectable in each entry
    n_eff = max(1, int(na * nb / (na + nb)))  # the two-sample test's variance is the one-sample one at this n
    return run.statistical(check, bonferroni_p(p), float(abs(z[w])),
                           f"{pa[w]:.3f} vs {pb[w]:.3f} at entry {w}", f"{meaning} (n = {na} vs {nb})",
                           power=("rate", (rate, n_eff, 1.0), max(1, len(p)), None), what="rate change")


def check_hash(run, *, family="simhash", bits=1, buckets=8, width=1.0, d=8, rounds=None):
    """Run the hash checks on ``run.fn``; verdicts go to ``run.report``. ``rounds``: the callable
    returns ``(rounds, T)`` ids (None: ``(T,)``)."""
    ref = reference_hash(family, bits=bits, buckets=buckets, width=width, rounds=rounds)
    R = rounds or 1
    data_rng = np.random.default_rng([run.report.seed, 4])
    rot = haar_orthogonal(1, d, data_rng)[0]
    if family == "e2lsh":
        grid = width * np.array(E2LSH_DISTANCES)
        pairs = [(np.eye(d)[0], np.eye(d)[0] + c * np.eye(d)[1]) for c in grid]
        theory = 1 - (1 - e2lsh_collision(grid, width)) ** R
    else:
        grid = np.radians(ANGLES)
        pairs = [pair_at_angle(math.degrees(t), 1.0, 1.0, d) for t in grid]
        theory = simhash_collision(grid, r=bits, tables=R) if family == "simhash" else None
    X = np.concatenate([np.stack([a for a, _ in pairs]), np.stack([b for _, b in pairs])]) @ rot.T  # (2P, d)
    P = len(pairs)
    X = np.concatenate([X, X[:1]])  # the last row copies the first: identical points must collide
    n_ids = X.shape[0]

    shape = (n_ids,) if rounds is None else (rounds, n_ids)
    ids, problem = run.collect(lambda seed: run.call((X.copy(), seed), shape=shape, integer=True),
                               run.n_draws, "hash draws", share=0.5)
    if problem is not None:
        run.problem("call fn(x, seed)", problem)
        return
    n = len(ids)
    ids = ids.reshape(n, R, n_ids)  # (n, rounds, points)
    same = int(np.sum(np.any(ids[..., -1] != ids[..., 0], axis=1)))
    run.exact("identical points collide", same, 0, "a point and its copy get the same bucket (in every round)",
              effect=f"{same} of {n} draws split them")
    hits = np.any(ids[..., :P] == ids[..., P:2 * P], axis=1).astype(np.int64)  # (n, P): a bucket shared in any round
    what = "angle" if family != "e2lsh" else "distance"
    if theory is not None:
        _, pv = proportion_test(hits, theory, alpha=0.5)
        w = int(np.argmin(pv))
        rate = np.clip(theory, 0.0, 1.0)
        run.statistical("collision rate", bonferroni_p(pv), float(hits[:, w].mean()),
                        f"{hits[:, w].mean():.3f} vs theory {theory[w]:.3f} at {what} {w}",
                        f"P[h(x) = h(y)] matches the closed form at each {what} (exact binomial, n = {n})",
                        power=("rate", (rate, n, 1.0), P, None), what="rate change")
    else:
        ref_ids = np.stack([ref(X, int(s)) for s in run.seeds(n)]).reshape(n, R, n_ids)
        ref_hits = np.any(ref_ids[..., :P] == ref_ids[..., P:2 * P], axis=1).astype(np.int64)
        _two_proportion(run, "collision rate", hits, ref_hits,
                        f"P[h(x) = h(y)] equals refattn's {family} hash at each {what}")

    # independence across neighbouring seeds: seeds s and s + 1
    def pair_draw(seed):
        a, problem = run.call((X.copy(), seed), shape=shape, integer=True)
        if problem is not None:
            return None, problem
        b, problem = run.call((X.copy(), seed + 1), shape=shape, integer=True)
        return (None, problem) if problem is not None else ((a == b).astype(np.int64).reshape(-1), None)

    cross, problem = run.collect(pair_draw, run.n_draws, "hash seed pairs")
    if problem is not None:
        run.problem("call fn(x, seed + 1)", problem)
        return
    cross = cross.reshape(len(cross), R, n_ids)[..., :2 * P].reshape(len(cross), -1)  # (n, rounds x points)
    n_buckets = {"simhash": 2**bits, "angular": buckets, "cross_polytope": 2 * d}.get(family)
    if n_buckets is not None:
        _, pv = proportion_test(cross, 1.0 / n_buckets, alpha=0.5)
        w = int(np.argmin(pv))
        run.statistical("independent seeds", bonferroni_p(pv), float(cross[:, w].mean()),
                        f"{cross[:, w].mean():.3f} vs 1/{n_buckets} at point {w}",
                        f"seeds s and s+1 hash a point independently: collide w.p. 1/{n_buckets} (exact binomial)",
                        power=("rate", (1.0 / n_buckets, len(cross), 1.0), pv.size, None),
                        what="rate change")
    else:
        seeds = run.seeds(len(cross))
        ref_cross = np.stack([(ref(X, int(s)) == ref(X, int(s) + 1)).reshape(R, n_ids)[:, :2 * P].reshape(-1)
                              for s in seeds]).astype(np.int64)
        _two_proportion(run, "independent seeds", cross, ref_cross,
                        "seeds s and s+1 collide as often as refattn's independent draws")
