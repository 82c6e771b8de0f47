"""Hash families (refattn.lsh.hashes) and LSH attention (refattn.lsh.attention) against theory.

Statistical tests: each assertion at alpha = 1e-6 (Bonferroni inside where several angles or
distances are tested); at most 12 here, family-wise <= 1.2e-5 per seed. Power twins: the
same test against a wrong formula must fail.
"""

import math

import numpy as np
import pytest

from refattn import softmax_attention, theory
from refattn.lsh.hashes import (
    angular_hash,
    angular_rotations,
    cross_polytope_hash,
    cross_polytope_rotations,
    e2lsh,
    e2lsh_draw,
    gray_rank,
    simhash,
    simhash_planes,
    smyrf_transform,
    sort_order,
)
from refattn.lsh.attention import reformer_attention, smyrf_attention
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


def test_simhash_codes_pack_bits():
    planes = simhash_planes(3, 4, 0, tables=2)
    x = np.random.default_rng(1).normal(size=(6, 3))
    codes = simhash(x, planes)
    bits = np.einsum("trd,nd->tnr", planes, x) > 0
    assert np.array_equal(codes, (bits * (1 << np.arange(4))).sum(-1))
    with pytest.raises(ValueError, match="^r: at most 62"):
        simhash_planes(3, 63, 0)


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


def test_cross_polytope_buckets():
    rot = cross_polytope_rotations(4, 0, rounds=3)
    x = np.random.default_rng(2).normal(size=(7, 4))
    h = cross_polytope_hash(x, rot)
    assert h.shape == (3, 7) and h.min() >= 0 and h.max() < 8
    assert np.array_equal(h, cross_polytope_hash(3 * x, rot))  # scale invariant


def test_smyrf_identity_and_balanced_clusters():
    """|F(q) - G(k)|^2 = 2 M^2 - 2 q.k exactly (to rounding), and SMYRF's clusters have equal sizes."""
    rng = np.random.default_rng(4)
    q, k = rng.normal(size=(12, 5)), rng.normal(size=(20, 5)) * 2
    F, G, M = smyrf_transform(q, k)
    d2 = np.sum((F[:, None, :] - G[None, :, :]) ** 2, -1)
    np.testing.assert_allclose(d2, theory.smyrf_distance(q[:, None, :], k[None, :, :], M), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="^M: must satisfy"):
        smyrf_transform(q, k, M=1.0)
    v = rng.normal(size=(20, 3))
    res = smyrf_attention(q, k, v, n_clusters=4, rng=5)
    dense = res.support.to_dense()
    assert np.all(dense.sum(1) == 5)  # 20 keys / 4 clusters
    assert set(dense.sum(0)) == {3}  # 12 queries / 4 clusters


def test_gray_code_order_and_stable_sort():
    codes = np.arange(16)
    order = np.argsort(gray_rank(codes))
    seq = codes[order]
    assert np.all([bin(a ^ b).count("1") == 1 for a, b in zip(seq[:-1], seq[1:])])  # neighbours differ by 1 bit
    b = np.array([2, 1, 2, 1, 0])
    assert np.array_equal(sort_order(b), [4, 1, 3, 0, 2])


def test_reformer_attention_properties():
    """Given the draw, Reformer is exact attention on its support; with one chunk and no bucket
    restriction it is exact attention; shared-QK excludes self unless alone; rounds count once."""
    rng = np.random.default_rng(6)
    q, k, v = rng.normal(size=(32, 8)), rng.normal(size=(32, 8)), rng.normal(size=(32, 3))
    res = reformer_attention(q, k, v, n_buckets=4, chunk=8, rounds=3, rng=7)
    np.testing.assert_allclose(res.output, softmax_attention(q, k, v, mask=res.support.to_dense()), atol=1e-13)
    full = reformer_attention(q, k, v, n_buckets=4, chunk=32, rng=7, same_bucket=False)
    np.testing.assert_allclose(full.output, softmax_attention(q, k, v), atol=1e-13)
    sq = reformer_attention(q, None, v, n_buckets=4, chunk=8, rng=7, shared_qk=True)
    dense = sq.support.to_dense()
    kn = q / np.linalg.norm(q, axis=1, keepdims=True)
    mask = dense & ~(np.eye(32, dtype=bool) & (dense.sum(1, keepdims=True) > 1))
    np.testing.assert_allclose(sq.output, softmax_attention(q, kn, v, mask=mask), atol=1e-13)
    causal = reformer_attention(q, k, v, n_buckets=4, chunk=8, rng=7, causal=True)
    assert not np.any(np.triu(causal.support.to_dense(), 1))


def test_lsh_bad_input():
    with pytest.raises(ValueError, match="^n_buckets: must be even"):
        angular_rotations(4, 5, 0)
    with pytest.raises(ValueError, match="^n_buckets: must be >= 2"):
        angular_rotations(4, 0, 0)
    with pytest.raises(ValueError, match="^r: must be >= 1"):
        simhash_planes(4, 0, 0)
    with pytest.raises(ValueError, match="^width"):
        e2lsh_draw(4, 0.0, 0)
    with pytest.raises(ValueError, match="^x: contains NaN"):
        angular_hash(np.full((2, 4), np.nan), angular_rotations(4, 4, 0))
    with pytest.raises(ValueError, match="^R: expected shape"):
        angular_hash(np.ones((2, 3)), angular_rotations(4, 4, 0))
    with pytest.raises(ValueError, match="^theta"):
        theory.simhash_collision(4.0)


def test_hyper_attention_exact_when_blocks_cover_everything():
    from refattn.lsh.attention import hyper_attention

    rng = np.random.default_rng(8)
    q, k, v = rng.normal(size=(64, 8)), rng.normal(size=(64, 8)), rng.normal(size=(64, 3))
    full = hyper_attention(q, k, v, block_size=64, n_samples=5, rng=1)
    np.testing.assert_allclose(full.output, softmax_attention(q, k, v), atol=1e-13)
    # causal recursion: halves of 32 are exact base cases, the bottom-left block is one full block
    causal = hyper_attention(q, k, v, block_size=32, n_samples=5, rng=1, causal=True)
    np.testing.assert_allclose(causal.output, softmax_attention(q, k, v, causal=True), atol=1e-13)
    approx = hyper_attention(q, k, v, block_size=8, n_samples=8, rng=1, causal=True)
    assert np.all(np.isfinite(approx.output)) and approx.output.shape == (64, 3)


@pytest.mark.statistical
def test_hyper_attention_row_sums_unbiased_given_the_hash(seed):
    """Given the sortLSH hash, the estimated row sums exp(lse) are unbiased for the exact row sums
    (uniform sampling with replacement, weight S/s, block entries excluded). z-test over the 40
    rows, 4000 sample draws; false-failure 1e-6. Power twin: the weight S/(s+1) is rejected."""
    from scipy.special import logsumexp

    from refattn.lsh.attention import _hyper_noncausal

    rng = np.random.default_rng(9)
    q, k, v = rng.normal(size=(40, 6)) * 0.7, rng.normal(size=(40, 6)) * 0.7, rng.normal(size=(40, 2))
    s = 1 / math.sqrt(6)
    planes = simhash_planes(6, 3, 10)  # the hash is fixed; only the samples vary
    gen = np.random.default_rng([seed, 53])
    sums = np.array([np.exp(_hyper_noncausal(q, k, v, s, 8, 6, planes, gen, "numpy")[1]) for _ in range(4000)])
    exact = np.exp(logsumexp(q @ k.T * s, axis=1))
    assert z_test_mean(sums, exact, alpha=ALPHA).passed
    # power twin: the same samples with weight S/(s+1): the sampled part shrinks by 6/7
    block = np.array([np.exp(_hyper_noncausal(q, k, v, s, 8, 0, planes, gen, "numpy")[1])])[0]
    wrong = block + (sums - block) * 6 / 7
    assert not z_test_mean(wrong, exact, alpha=ALPHA).passed
