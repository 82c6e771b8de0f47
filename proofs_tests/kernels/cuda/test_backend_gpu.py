"""The CUDA kernels on a GPU through the public functions (CuPy in, CuPy out), each against
its NumPy twin with the same draws, on awkward shapes. Marked ``gpu``: left out of the
default run and skipped cleanly without CuPy or a device (run with ``-m gpu``). Deterministic;
tolerances as in test_cuda_kernels.py (bucket ids identical away from rounding ties, float64
within 1e-12 relative, float32 within the FlashAttention rule)."""

from __future__ import annotations

import numpy as np
import pytest

from refattn import softmax_attention
from refattn.lsh import hashes as lsh
from refattn.lsh.sparse import Support, sparse_attention
from refattn.performer.attention import causal_prefix_sums
from refattn.testing import tolerance_check

pytestmark = pytest.mark.gpu
REL64 = 1e-12


@pytest.fixture(scope="module")
def cp():
    cupy = pytest.importorskip("cupy")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("CuPy sees no GPU")
    except Exception as exc:  # no driver
        pytest.skip(f"no usable GPU: {exc}")
    return cupy


def _gen(*key):
    return np.random.default_rng([20261126, *key])


def _is_device(cp, *arrays):
    return all(isinstance(a, cp.ndarray) for a in arrays)


@pytest.mark.parametrize("n,d", [(1, 1), (37, 5), (1000, 64)])
def test_hashes_on_gpu_equal_cpu(cp, n, d):
    g = _gen(n, d)
    x = g.normal(size=(n, d))
    xd = cp.asarray(x)
    planes = lsh.simhash_planes(d, 20, g, tables=4)
    R = lsh.angular_rotations(d, 16, g, rounds=3)
    rot = lsh.cross_polytope_rotations(d, g, rounds=2)
    a, b = lsh.e2lsh_draw(d, 0.5, g, tables=3)
    pairs = [
        (lsh.simhash(xd, cp.asarray(planes)), lsh.simhash(x, planes)),
        (lsh.angular_hash(xd, cp.asarray(R)), lsh.angular_hash(x, R)),
        (lsh.cross_polytope_hash(xd, cp.asarray(rot)), lsh.cross_polytope_hash(x, rot)),
        (lsh.e2lsh(xd, cp.asarray(a), cp.asarray(b), 0.5), lsh.e2lsh(x, a, b, 0.5)),
    ]
    for got, want in pairs:
        assert _is_device(cp, got)
        mismatch = int((cp.asnumpy(got) != want).sum())
        assert mismatch <= max(1, want.size // 10**6), mismatch  # ties only: at most one in 10^6 ids
    buckets = lsh.angular_hash(x, R)[0]
    assert np.array_equal(cp.asnumpy(lsh.sort_order(cp.asarray(buckets))), lsh.sort_order(buckets))


@pytest.mark.parametrize("T,S,density", [(1, 1, 1.0), (33, 65, 0.2), (500, 700, 0.05), (4, 6, 0.0)])
def test_sparse_attention_on_gpu_equals_cpu(cp, T, S, density):
    g = _gen(T, S)
    q, k, v = g.normal(size=(T, 16)), g.normal(size=(S, 16)), g.normal(size=(S, 7))
    sup = Support.from_dense(g.random((T, S)) < density)
    eb = g.normal(size=sup.nnz)
    out, lse = sparse_attention(cp.asarray(q), cp.asarray(k), cp.asarray(v), sup, entry_bias=cp.asarray(eb),
                                return_lse=True)
    ref, ref_lse = sparse_attention(q, k, v, sup, entry_bias=eb, return_lse=True)
    assert _is_device(cp, out, lse)
    assert np.abs(cp.asnumpy(out) - ref).max(initial=0) <= REL64 * np.abs(v).max()
    fin = np.isfinite(ref_lse)
    assert np.array_equal(np.isfinite(cp.asnumpy(lse)), fin)
    assert np.abs(cp.asnumpy(lse)[fin] - ref_lse[fin]).max(initial=0) <= REL64 * max(1, np.abs(ref_lse[fin]).max(initial=0))


@pytest.mark.parametrize("T,S,chunk", [(1, 1, 1), (129, 200, 64), (300, 100, 7)])
def test_causal_prefix_sums_on_gpu_equal_cpu(cp, T, S, chunk):
    g = _gen(T, S, chunk)
    pq, pk, v = g.random((2, T, 32)), g.random((2, S, 32)), g.normal(size=(2, S, 5))
    num, den = causal_prefix_sums(cp.asarray(pq), cp.asarray(pk), cp.asarray(v), chunk_size=chunk)
    ref_num, ref_den = causal_prefix_sums(pq, pk, v, chunk_size=chunk)
    assert _is_device(cp, num, den)
    assert np.abs(cp.asnumpy(num) - ref_num).max() <= REL64 * np.abs(ref_den).max() * np.abs(v).max()
    assert np.abs(cp.asnumpy(den) - ref_den).max() <= REL64 * np.abs(ref_den).max()
    f32 = [cp.asarray(a, dtype=cp.float32) for a in (pq, pk, v)]
    num32, den32 = causal_prefix_sums(*f32, chunk_size=chunk)
    lo_num, lo_den = causal_prefix_sums(*(a.astype(np.float32) for a in (pq, pk, v)), chunk_size=chunk)
    for actual, ref, lo in ((num32, ref_num, lo_num), (den32, ref_den, lo_den)):
        check = tolerance_check(cp.asnumpy(actual), ref, lo)
        print(check.summary())
        assert check.passed, check.summary()


@pytest.mark.parametrize("T,S", [(1, 1), (31, 33), (257, 1000)])
@pytest.mark.parametrize("causal", [False, True, "top_left"])
def test_exact_attention_on_gpu_equals_oracle(cp, T, S, causal):
    g = _gen(T, S, len(str(causal)))
    q, k, v = g.normal(size=(2, T, 64)), g.normal(size=(2, S, 64)), g.normal(size=(2, S, 64))
    mask = g.random((T, S)) < 0.9
    kl = np.array([S, S // 2])
    kw = dict(causal=causal, mask=mask, key_lengths=kl)
    out, lse = softmax_attention(cp.asarray(q), cp.asarray(k), cp.asarray(v), mask=cp.asarray(mask), causal=causal,
                                 key_lengths=kl, return_lse=True)
    ref, ref_lse = softmax_attention(q, k, v, return_lse=True, **kw)
    assert _is_device(cp, out, lse)
    assert np.abs(cp.asnumpy(out) - ref).max() <= REL64 * np.abs(v).max()
    fin = np.isfinite(ref_lse)
    assert np.array_equal(np.isfinite(cp.asnumpy(lse)), fin)
    assert np.abs(cp.asnumpy(lse)[fin] - ref_lse[fin]).max(initial=0) <= REL64 * max(1, np.abs(ref_lse[fin]).max(initial=0))
    out32 = softmax_attention(*(cp.asarray(a) for a in (q, k, v)), mask=cp.asarray(mask), causal=causal,
                              key_lengths=kl, dtype=np.float32)
    assert out32.dtype == cp.float32
    check = tolerance_check(cp.asnumpy(out32), ref, softmax_attention(q, k, v, dtype=np.float32, **kw))
    print(check.summary())
    assert check.passed, check.summary()


def test_nan_on_gpu_is_rejected(cp):
    q = cp.ones((3, 4))
    q[1, 2] = cp.nan
    with pytest.raises(ValueError, match="^q: contains NaN or Inf"):
        softmax_attention(q, cp.ones((5, 4)), cp.ones((5, 2)))
    with pytest.raises(ValueError, match="^x: contains NaN or Inf"):
        lsh.simhash(q, cp.ones((1, 3, 4)))
