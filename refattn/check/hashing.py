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

from refattn.check.verdict import bonferroni_p
from refattn.lsh import hashes as lsh
from refattn.performer.projections import haar_orthogonal
from refattn.stats import proportion_test
from refattn.theory import e2lsh_collision, pair_at_angle, simhash_collision

__all__ = ["check_hash", "HASH_FAMILIES", "reference_hash"]

HASH_FAMILIES = ("simhash", "angular", "cross_polytope", "e2lsh")


def reference_hash(family, *, bits=1, buckets=8, width=1.0):
    """refattn's own hash of ``family`` as a ``fn(x, seed) -> (T,)`` callable (one table, one round)."""
    if family == "simhash":
        return lambda x, seed: lsh.simhash(x, lsh.simhash_planes(x.shape[1], bits, seed))[0]
    if family == "angular":
        return lambda x, seed: lsh.angular_hash(x, lsh.angular_rotations(x.shape[1], buckets, seed))[0]
    if family == "cross_polytope":
        return lambda x, seed: lsh.cross_polytope_hash(x, lsh.cross_polytope_rotations(x.shape[1], seed))[0]
    if family == "e2lsh":
        def e2(x, seed):
            a, b = lsh.e2lsh_draw(x.shape[1], width, seed)
            return lsh.e2lsh(x, a, b, width)[0]
        return e2
    raise ValueError(f"family: expected one of {HASH_FAMILIES}, got {family!r}")


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
    return run.statistical(check, bonferroni_p(p), float(abs(z[w])),
                           f"{pa[w]:.3f} vs {pb[w]:.3f} at entry {w}", f"{meaning} (n = {na} vs {nb})")


def check_hash(run, *, family="simhash", bits=1, buckets=8, width=1.0, d=8):
    """Run the hash checks on ``run.fn``; verdicts go to ``run.report``."""
    ref = reference_hash(family, bits=bits, buckets=buckets, width=width)
    data_rng = np.random.default_rng([run.report.seed, 4])
    rot = haar_orthogonal(1, d, data_rng)[0]
    if family == "e2lsh":
        grid = width * np.array([0.25, 0.5, 1.0, 2.0, 4.0])
        pairs = [(np.eye(d)[0], np.eye(d)[0] + c * np.eye(d)[1]) for c in grid]
        theory = e2lsh_collision(grid, width)
    else:
        grid = np.radians([15, 45, 75, 90, 105, 135, 165])
        pairs = [pair_at_angle(math.degrees(t), 1.0, 1.0, d) for t in grid]
        theory = simhash_collision(grid, r=bits) if family == "simhash" else None
    X = np.concatenate([np.stack([a for a, _ in pairs]), np.stack([b for _, b in pairs])]) @ rot.T  # (2P, d)
    P = len(pairs)
    X = np.concatenate([X, X[:1]])  # the last row copies the first: identical points must collide
    n_ids = X.shape[0]

    ids, problem = run.collect(lambda seed: run.call((X.copy(), seed), shape=(n_ids,), integer=True),
                               run.n_draws, "hash draws", share=0.5)
    if problem is not None:
        run.problem("call fn(x, seed)", problem)
        return
    n = len(ids)
    same = int(np.sum(ids[:, -1] != ids[:, 0]))
    run.exact("identical points collide", same, 0, "a point and its copy get the same bucket",
              effect=f"{same} of {n} draws split them")
    hits = (ids[:, :P] == ids[:, P:2 * P]).astype(np.int64)  # (n, P)
    what = "angle" if family != "e2lsh" else "distance"
    if theory is not None:
        _, pv = proportion_test(hits, theory, alpha=0.5)
        w = int(np.argmin(pv))
        run.statistical("collision rate", bonferroni_p(pv), float(hits[:, w].mean()),
                        f"{hits[:, w].mean():.3f} vs theory {theory[w]:.3f} at {what} {w}",
                        f"P[h(x) = h(y)] matches the closed form at each {what} (exact binomial, n = {n})")
    else:
        ref_ids = np.stack([ref(X, int(s)) for s in run.seeds(n)])
        ref_hits = (ref_ids[:, :P] == ref_ids[:, P:2 * P]).astype(np.int64)
        _two_proportion(run, "collision rate", hits, ref_hits,
                        f"P[h(x) = h(y)] equals refattn's {family} hash at each {what}")

    # independence across neighbouring seeds: seeds s and s + 1
    def pair_draw(seed):
        a, problem = run.call((X.copy(), seed), shape=(n_ids,), integer=True)
        if problem is not None:
            return None, problem
        b, problem = run.call((X.copy(), seed + 1), shape=(n_ids,), integer=True)
        return (None, problem) if problem is not None else ((a == b).astype(np.int64), None)

    cross, problem = run.collect(pair_draw, run.n_draws, "hash seed pairs")
    if problem is not None:
        run.problem("call fn(x, seed + 1)", problem)
        return
    cross = cross[:, :2 * P]  # (n, points)
    n_buckets = {"simhash": 2**bits, "angular": buckets, "cross_polytope": 2 * d}.get(family)
    if n_buckets is not None:
        _, pv = proportion_test(cross, 1.0 / n_buckets, alpha=0.5)
        w = int(np.argmin(pv))
        run.statistical("independent seeds", bonferroni_p(pv), float(cross[:, w].mean()),
                        f"{cross[:, w].mean():.3f} vs 1/{n_buckets} at point {w}",
                        f"seeds s and s+1 hash a point independently: collide w.p. 1/{n_buckets} (exact binomial)")
    else:
        seeds = run.seeds(len(cross))
        ref_cross = np.stack([(ref(X, int(s)) == ref(X, int(s) + 1))[:2 * P] for s in seeds]).astype(np.int64)
        _two_proportion(run, "independent seeds", cross, ref_cross,
                        "seeds s and s+1 collide as often as refattn's independent draws")
