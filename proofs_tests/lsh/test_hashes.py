"""Hash families (refattn.lsh.hashes): code packing, buckets, SMYRF's transform, the Gray-code order,
bad input. Deterministic.
"""

import numpy as np
import pytest

from refattn import theory
from refattn.lsh.attention import smyrf_attention
from refattn.lsh.hashes import (
    angular_hash,
    angular_rotations,
    cross_polytope_hash,
    cross_polytope_rotations,
    e2lsh_draw,
    gray_rank,
    simhash,
    simhash_planes,
    smyrf_transform,
    sort_order,
)


def test_simhash_codes_pack_bits():
    planes = simhash_planes(3, 4, 0, tables=2)
    x = np.random.default_rng(1).normal(size=(6, 3))
    codes = simhash(x, planes)
    bits = np.einsum("trd,nd->tnr", planes, x) > 0
    assert np.array_equal(codes, (bits * (1 << np.arange(4))).sum(-1))
    with pytest.raises(ValueError, match="^r: at most 62"):
        simhash_planes(3, 63, 0)


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


def test_cross_polytope_hash_rotates_by_the_matrix_not_its_transpose():
    """Pinned by hand (Andoni et al. 2015: the bucket of x is the closest signed basis vector to
    R x): with the 90-degree rotation R = [[0, -1], [1, 0]], R [1, 0] = [0, 1], the basis vector
    e_2, bucket 1 (buckets 0..d-1 are +e_i, d..2d-1 are -e_i); R^T would give -e_2, bucket 3."""
    R = np.array([[[0.0, -1.0], [1.0, 0.0]]])
    assert cross_polytope_hash(np.array([[1.0, 0.0]]), R).tolist() == [[1]]
    assert cross_polytope_hash(np.array([[0.0, -2.0]]), R).tolist() == [[0]]  # R [0, -2] = [2, 0]


def test_smyrf_transform_maps_inner_products_to_distances():
    """Daras et al. (2020), section 3: F(q) = [q, 0, sqrt(M^2 - |q|^2)], G(k) = [k, sqrt(M^2 - |k|^2), 0]
    have d + 2 columns, F(q) . G(k) = q . k and |F(q) - G(k)|^2 = 2 M^2 - 2 q . k. Deterministic."""
    rng = np.random.default_rng(4)
    for size in (1.0, 0.1):  # norms near 2, and below 1 (where M^2 - |k|^2 < 1)
        q, k = size * rng.standard_normal((5, 3)), size * rng.standard_normal((6, 3))
        F, G, M = smyrf_transform(q, k)
        assert F.shape == (5, 5) and G.shape == (6, 5)
        np.testing.assert_allclose(F @ G.T, q @ k.T, atol=1e-12)
        np.testing.assert_allclose(np.linalg.norm(F, axis=1), M, rtol=1e-12)
        np.testing.assert_allclose(np.linalg.norm(G, axis=1), M, rtol=1e-12)
        d2 = np.sum((F[:, None, :] - G[None, :, :]) ** 2, -1)
        np.testing.assert_allclose(d2, 2 * M**2 - 2 * q @ k.T, atol=1e-10)


def test_e2lsh_pinned_by_hand():
    """Datar et al. (2004): h(x) = floor((a . x + b) / w). With a = (1, 0), b = 0.5, w = 2:
    x = (3, 7) gives floor(3.5 / 2) = 1 and x = (-0.6, 0) gives floor(-0.05) = -1."""
    from refattn.lsh.hashes import e2lsh

    h = e2lsh(np.array([[3.0, 7.0], [-0.6, 0.0]]), np.array([[1.0, 0.0]]), np.array([0.5]), 2.0)
    assert h.tolist() == [[1, -1]]


@pytest.mark.statistical
def test_e2lsh_offsets_are_uniform_on_the_width(seed):
    """The offsets b of e2lsh_draw are uniform on [0, width) (Kolmogorov-Smirnov over 2000 tables,
    alpha = 1e-6). Power twin: offsets shifted by a quarter width are rejected."""
    from scipy import stats

    _, b = e2lsh_draw(3, 4.0, np.random.default_rng([seed, 41]), tables=2000)
    assert stats.kstest(b, stats.uniform(0, 4.0).cdf).pvalue > 1e-6
    assert stats.kstest(np.minimum(b + 1.0, 3.999), stats.uniform(0, 4.0).cdf).pvalue < 1e-6


def test_angular_hash_pinned_by_hand():
    """Reformer (Kitaev et al. 2020, section 2.2): h(x) = argmax([x R; -x R]). With R = I_2
    (b = 4 buckets): x = (0.2, 3) gives xR = (0.2, 3), bucket 1; x = (-5, 1) gives -xR = (5, -1),
    bucket 2; two rows and two rounds (the second R = -I_2 swaps the halves)."""
    R = np.stack([np.eye(2), -np.eye(2)])
    h = angular_hash(np.array([[0.2, 3.0], [-5.0, 1.0]]), R)
    assert h.tolist() == [[1, 2], [3, 0]]
