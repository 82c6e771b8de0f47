"""The CUDA kernels' logic on the CPU: ``kernels/cuda/*.cu`` built by the host C++ compiler
(:class:`refattn.kernels.cuda.build.HostLauncher`, a serial loop over the thread indices) and
driven by the same orchestration as on the GPU (:mod:`refattn.kernels.cuda.ops`), compared
with the NumPy twins on awkward shapes (1, odd, empty, tile and chunk boundaries, fully
masked rows). Deterministic.

Contracts (the GPU backend's documented tolerance): bucket ids identical except for points
within rounding of a boundary (margin below 1e-9 of the scale, counted, none expected here);
float64 values within 1e-12 of the twin relative to max|v| (observed ~1e-16); float32 values
within the FlashAttention rule (:func:`refattn.testing.tolerance_check`) against the float64
oracle with the CPU float32 path as ``ref_lo``.
"""

from __future__ import annotations

import numpy as np
import pytest

from refattn.exact import softmax_attention
from refattn.kernels.cuda import ops as cuda_ops
from refattn.kernels.cuda.build import HostLauncher, host_library
from refattn.kernels.numba.sparse_attention import sparse_numpy
from refattn.lsh import hashes as lsh
from refattn.lsh.sparse import Support
from refattn.performer.attention import causal_prefix_sums
from refattn.problem import attention_problem, causal_mask
from refattn.testing import tolerance_check

REL64 = 1e-12


@pytest.fixture(scope="module")
def host():
    try:
        host_library()
    except FileNotFoundError as exc:
        pytest.skip(f"no host C++ compiler: {exc}")
    return HostLauncher()


def _gen(*key):
    return np.random.default_rng([20261125, *key])


# ---------------------------------------------------------------- hashing

HASH_SHAPES = [(1, 1), (7, 3), (33, 16), (0, 5)]


@pytest.mark.parametrize("n,d", HASH_SHAPES)
def test_simhash_kernel_equals_numpy(host, n, d):
    g = _gen(n, d, 1)
    x = g.normal(size=(n, d))
    planes = lsh.simhash_planes(d, 13, g, tables=3)
    got = cuda_ops.simhash(host, x, planes)
    want = lsh.simhash(x, planes)
    proj = np.abs(np.matmul(x, np.swapaxes(planes, -1, -2))).min(axis=-1, initial=np.inf)  # (tables, n) margin
    near = proj <= 1e-9 * max(1.0, np.abs(x).max(initial=0) * np.abs(planes).max())
    assert got.shape == want.shape == (3, n)
    assert np.array_equal(got[~near], want[~near]), np.argwhere(got != want)


def test_simhash_kernel_zero_row_and_all_bits(host):
    """A zero row sets no bit (0 > 0 is false); 62 bits fill the int64 code as on the CPU."""
    g = _gen(2)
    x = np.vstack([np.zeros(4), g.normal(size=(5, 4))])
    planes = lsh.simhash_planes(4, lsh.MAX_BITS, g)
    got = cuda_ops.simhash(host, x, planes)
    assert got[0, 0] == 0
    assert np.array_equal(got, lsh.simhash(x, planes))


@pytest.mark.parametrize("n,d", HASH_SHAPES)
@pytest.mark.parametrize("n_buckets", [2, 6, 64])
def test_angular_kernel_equals_numpy(host, n, d, n_buckets):
    g = _gen(n, d, n_buckets)
    x = g.normal(size=(n, d))
    x[: min(n, 1)] = 0.0  # a zero row: every projection ties, numpy.argmax takes bucket 0
    R = lsh.angular_rotations(d, n_buckets, g, rounds=2)
    got = cuda_ops.angular_hash(host, x, R)
    want = lsh.angular_hash(x, R)
    assert got.shape == want.shape
    p = np.sort(np.abs(np.concatenate([np.matmul(x, R), -np.matmul(x, R)], -1)), axis=-1)
    gap = p[..., -1] - p[..., -2] if p.shape[-1] > 1 else np.full(p.shape[:-1], np.inf)
    near = (gap <= 1e-9) & (p[..., -1] > 0)  # two buckets within rounding of the max
    assert np.array_equal(got[~near], want[~near])


@pytest.mark.parametrize("n,d", HASH_SHAPES)
def test_cross_polytope_kernel_equals_numpy(host, n, d):
    g = _gen(n, d, 3)
    x = g.normal(size=(n, d))
    rot = lsh.cross_polytope_rotations(d, g, rounds=3)
    assert np.array_equal(cuda_ops.cross_polytope_hash(host, x, rot), lsh.cross_polytope_hash(x, rot))


@pytest.mark.parametrize("n,d", HASH_SHAPES)
def test_e2lsh_kernel_equals_numpy(host, n, d):
    g = _gen(n, d, 4)
    x = 3 * g.normal(size=(n, d))
    a, b = lsh.e2lsh_draw(d, 0.7, g, tables=4)
    got = cuda_ops.e2lsh(host, x, a, b, 0.7)
    want = lsh.e2lsh(x, a, b, 0.7)
    t = (a @ x.T + b[:, None]) / 0.7
    near = np.abs(t - np.round(t)) <= 1e-9 * max(1.0, np.abs(t).max(initial=0))
    assert np.array_equal(got[~near], want[~near])


def test_sort_order_is_stable_by_bucket_then_position(host):
    b = _gen(5).integers(0, 4, size=41)
    order = cuda_ops.sort_order(host, b)
    assert np.array_equal(order, lsh.sort_order(b))
    key = b[order] * 100 + order  # sorted by bucket, then position
    assert np.all(np.diff(key) > 0)


# ---------------------------------------------------------------- sparse attention


def _support(T, S, density, g):
    mask = g.random((T, S)) < density
    if T:
        mask[0] = False  # an empty row
    return Support.from_dense(mask)


@pytest.mark.parametrize("T,S,H,Hv", [(1, 1, 1, 1), (5, 9, 3, 2), (33, 17, 8, 5), (0, 4, 2, 2), (6, 6, 4, 1)])
@pytest.mark.parametrize("density", [0.0, 0.3, 1.0])
def test_sparse_kernels_equal_numpy(host, T, S, H, Hv, density):
    g = _gen(T, S, H, int(density * 10))
    q, k, v = g.normal(size=(T, H)), g.normal(size=(S, H)), g.normal(size=(S, Hv))
    sup = _support(T, S, density, g)
    eb = g.normal(size=sup.nnz)
    if sup.nnz:
        eb[sup.indptr[-2]:] = -np.inf  # the last row fully removed by its bias (when it has entries)
    out, lse = cuda_ops.sparse_attention(host, q, k, v, sup.indptr, sup.indices, 0.7, eb)
    ref, ref_lse = sparse_numpy(q, k, v, sup.indptr, sup.indices, 0.7, eb)
    assert np.abs(out - ref).max(initial=0) <= REL64 * max(1.0, np.abs(v).max(initial=0))
    assert np.array_equal(np.isinf(lse), np.isinf(ref_lse))
    fin = np.isfinite(ref_lse)
    assert np.abs(lse[fin] - ref_lse[fin]).max(initial=0) <= REL64 * max(1.0, np.abs(ref_lse[fin]).max(initial=0))
    assert np.all(out[~fin] == 0)


# ---------------------------------------------------------------- FAVOR+ causal prefix sums


def _naive_prefix(pq, pk, v, causal):
    a = (pq @ np.swapaxes(pk, -1, -2)) * causal_mask(pq.shape[-2], pk.shape[-2], causal)  # (..., T, S)
    return a @ v, a.sum(-1)


@pytest.mark.parametrize("T,S", [(1, 1), (7, 7), (5, 12), (12, 5), (0, 3), (3, 0)])
@pytest.mark.parametrize("chunk", [1, 3, 64])
@pytest.mark.parametrize("causal", ["bottom_right", "top_left"])
def test_prefix_kernels_equal_numpy(host, T, S, chunk, causal):
    g = _gen(T, S, chunk)
    pq, pk, v = g.random((2, T, 6)), g.random((1, S, 6)), g.normal(size=(2, S, 3))  # batch broadcast
    prob = attention_problem(pq, pk, v, causal=causal)
    num, den = cuda_ops.causal_prefix_sums(host, pq, pk, v, prob.causal_offset(), chunk, np.float64, prob.batch_shape)
    ref_num, ref_den = causal_prefix_sums(pq, pk, v, causal=causal, chunk_size=chunk)
    naive_num, naive_den = _naive_prefix(pq, pk, v, causal)
    scale = max(1.0, np.abs(naive_den).max(initial=0))
    for a, b in ((num, ref_num), (num, naive_num), (den, ref_den), (den, naive_den)):
        assert a.shape == b.shape
        assert np.abs(a - b).max(initial=0) <= REL64 * scale * max(1.0, np.abs(v).max(initial=0))


def test_prefix_kernels_float32_within_tolerance_rule(host):
    g = _gen(6)
    pq, pk, v = g.random((130, 16)), g.random((130, 16)), g.normal(size=(130, 4))
    prob = attention_problem(pq, pk, v, causal=True)
    args = (prob.causal_offset(), 32)
    num32, den32 = cuda_ops.causal_prefix_sums(host, pq, pk, v, *args, np.float32, ())
    assert num32.dtype == np.float32
    ref_num, ref_den = _naive_prefix(pq, pk, v, True)
    lo_num, lo_den = causal_prefix_sums(pq.astype(np.float32), pk.astype(np.float32), v.astype(np.float32), chunk_size=32)
    for actual, ref, lo in ((num32, ref_num, lo_num), (den32, ref_den, lo_den)):
        check = tolerance_check(actual, ref, lo)
        print(check.summary())
        assert check.passed, check.summary()


# ---------------------------------------------------------------- streaming exact attention


def _stream(host, q, k, v, dt=np.float64, **kw):
    prob = attention_problem(q, k, v, **kw)
    return cuda_ops.softmax_attention(host, prob, q, k, v, kw.get("mask"), kw.get("bias"), dt)


@pytest.mark.parametrize("T,S", [(1, 1), (3, 31), (5, 32), (9, 33), (40, 70), (0, 4), (4, 0)])
@pytest.mark.parametrize("causal", [False, "bottom_right", "top_left"])
def test_streaming_kernel_equals_oracle(host, T, S, causal):
    g = _gen(T, S, len(str(causal)))
    q, k, v = g.normal(size=(2, T, 5)), g.normal(size=(S, 5)), g.normal(size=(2, S, 3))
    out, lse = _stream(host, q, k, v, causal=causal)
    ref, ref_lse = softmax_attention(q, k, v, causal=causal, return_lse=True, implementation="dense")
    assert out.shape == ref.shape and lse.shape == ref_lse.shape
    assert np.abs(out - ref).max(initial=0) <= REL64 * max(1.0, np.abs(v).max(initial=0))
    assert np.array_equal(np.isinf(lse), np.isinf(ref_lse))
    fin = np.isfinite(ref_lse)
    assert np.abs(lse[fin] - ref_lse[fin]).max(initial=0) <= REL64 * max(1.0, np.abs(ref_lse[fin]).max(initial=0))


def test_streaming_kernel_masks_bias_and_padding(host):
    """mask with a fully masked row, bias with -inf entries, key padding, scale: all as the oracle."""
    g = _gen(7)
    T, S = 37, 45
    q, k, v = 2 * g.normal(size=(3, T, 4)), 2 * g.normal(size=(3, S, 4)), g.normal(size=(3, S, 2))
    mask = g.random((T, S)) < 0.6
    mask[4] = False
    bias = g.normal(size=(3, T, S))
    bias[:, 7, ::2] = -np.inf
    kw = dict(mask=mask, bias=bias, key_lengths=np.array([S, 20, 0]), causal=True, scale=0.9)
    out, lse = _stream(host, q, k, v, **kw)
    ref, ref_lse = softmax_attention(q, k, v, return_lse=True, implementation="dense", **kw)
    assert np.abs(out - ref).max() <= REL64 * np.abs(v).max()
    assert np.array_equal(np.isinf(lse), np.isinf(ref_lse)) and np.isinf(lse[:, 4]).all() and np.isinf(lse[2]).all()
    fin = np.isfinite(ref_lse)
    assert np.abs(lse[fin] - ref_lse[fin]).max() <= REL64 * np.abs(ref_lse[fin]).max()


def test_streaming_kernel_float32_within_tolerance_rule(host):
    g = _gen(8)
    q, k, v = 3 * g.normal(size=(70, 16)), 3 * g.normal(size=(90, 16)), g.normal(size=(90, 8))
    out32, _ = _stream(host, q, k, v, np.float32, causal=True)
    assert out32.dtype == np.float32
    ref64 = softmax_attention(q, k, v, causal=True)
    ref32 = softmax_attention(q, k, v, causal=True, dtype=np.float32)
    check = tolerance_check(out32, ref64, ref32)
    print(check.summary())
    assert check.passed, check.summary()
