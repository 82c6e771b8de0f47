"""Streaming kernels (NumPy twin and parallel Numba) against the dense oracle.

Awkward shapes (1, odd, block boundaries +-1, blocks of 1), every mask kind, both causal
alignments, float32. The issue's contract: equal to the dense form to 1e-12 relative
(here relative to max|v|; the observed differences are ~1e-15). Deterministic.
"""

import itertools

import numpy as np
import pytest

from refattn import softmax_attention
from refattn.kernels.numba.streaming import NO_CAUSAL, stream_numba, stream_numpy

SHAPES = [(1, 1), (1, 7), (7, 1), (5, 13), (13, 5), (127, 129), (129, 127), (256, 300)]
BLOCKS = [(1, 1), (3, 5), (128, 512)]


def _inputs(T, S, seed=0, batch=()):
    rng = np.random.default_rng([T, S, seed])
    H, Hv = 5, 3
    q = rng.standard_normal(batch + (T, H)) * 2
    k = rng.standard_normal(batch + (S, H))
    v = rng.standard_normal(batch + (S, Hv))
    return rng, q, k, v


def _options(rng, T, S):
    mask = rng.random((T, S)) < 0.6
    mask[T // 2] = False  # a fully masked row
    bias = np.where(rng.random((T, S)) < 0.1, -np.inf, rng.standard_normal((T, S)))
    return [
        {},
        {"causal": "bottom_right"},
        {"causal": "top_left"},
        {"mask": mask},
        {"bias": bias, "causal": True},
        {"key_lengths": max(0, S // 2)},
        {"key_lengths": 0},
    ]


@pytest.mark.parametrize("T,S", SHAPES)
@pytest.mark.parametrize("block_q,block_k", BLOCKS)
def test_streaming_equals_dense(T, S, block_q, block_k):
    rng, q, k, v = _inputs(T, S)
    for kw in _options(rng, T, S):
        ref, ref_lse = softmax_attention(q, k, v, implementation="dense", return_lse=True, **kw)
        for impl in ("numpy", "numba"):
            out, lse = softmax_attention(q, k, v, implementation=impl, return_lse=True,
                                         block_q=block_q, block_k=block_k, **kw)
            assert np.abs(out - ref).max() <= 1e-12 * np.abs(v).max(), (impl, kw)
            assert np.array_equal(np.isneginf(lse), np.isneginf(ref_lse)), (impl, kw)
            fin = np.isfinite(ref_lse)
            assert np.abs(lse[fin] - ref_lse[fin]).max(initial=0) <= 1e-12 * max(1, np.abs(ref_lse[fin]).max(initial=0))


def test_streaming_batched_broadcast():
    """Broadcast batch dims (shared k/v, per-item key lengths) through the streaming path."""
    rng = np.random.default_rng(5)
    q = rng.standard_normal((2, 3, 33, 8))
    k = rng.standard_normal((1, 3, 40, 8))
    v = rng.standard_normal((40, 4))
    kl = np.array([[40], [17]])
    ref = softmax_attention(q, k, v, implementation="dense", key_lengths=kl, causal=True)
    for impl in ("numpy", "numba"):
        out = softmax_attention(q, k, v, implementation=impl, key_lengths=kl, causal=True, block_q=8, block_k=16)
        assert out.shape == ref.shape
        assert np.abs(out - ref).max() <= 1e-12 * np.abs(v).max()


@pytest.mark.parametrize("T,S", [(5, 13), (129, 127)])
def test_float32_streaming_close_to_float32_dense(T, S):
    """dtype=float32: both kernels stay within float32 rounding of the float32 dense path."""
    _, q, k, v = _inputs(T, S)
    ref64 = softmax_attention(q, k, v, causal=True)
    ref32 = softmax_attention(q, k, v, causal=True, dtype=np.float32)
    for impl in ("numpy", "numba"):
        out = softmax_attention(q, k, v, causal=True, dtype=np.float32, implementation=impl)
        assert out.dtype == np.float32
        assert np.abs(out - ref64).max() <= 4 * np.abs(ref32 - ref64).max() + 1e-6


def test_numba_equals_numpy_twin_directly():
    """The kernels themselves (no dispatcher) on one item, with every option at once."""
    rng, q, k, v = _inputs(70, 90, seed=3)
    mask = rng.random((70, 90)) < 0.8
    bias = rng.standard_normal((70, 90))
    for offset, kl, bq, bk in itertools.product([NO_CAUSAL, 20, 0, -30], [90, 45, 0], [1, 16], [7, 64]):
        a = stream_numpy(q, k, v, 0.3, offset, mask, bias, kl, bq, bk)
        b = stream_numba(q, k, v, 0.3, offset, mask, bias, kl, bq, bk)
        assert np.abs(a[0] - b[0]).max() <= 1e-13 * np.abs(v).max()
        assert np.array_equal(np.isneginf(a[1]), np.isneginf(b[1]))


def test_disabling_numba_falls_back_to_numpy(monkeypatch):
    _, q, k, v = _inputs(9, 9)
    import refattn.kernels.numba.streaming as streaming

    def refuse(*args):
        raise AssertionError("the Numba kernel ran although REFATTN_DISABLE_NUMBA is set")

    monkeypatch.setattr(streaming, "stream_numba", refuse)
    monkeypatch.setenv("REFATTN_DISABLE_NUMBA", "1")
    out = softmax_attention(q, k, v, implementation="numba")
    assert np.abs(out - softmax_attention(q, k, v)).max() <= 1e-13
