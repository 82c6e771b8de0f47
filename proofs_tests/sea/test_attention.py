"""SEA attention (refattn.sea.attention): the pipeline end to end, exact at k = S, sparse attention on
the mask, the causal canary (with its power twin), the gate, heads and empty inputs, bad input.
Deterministic.
"""

import math

import numpy as np
import pytest

from proofs_tests.sea._draws import qkv
from refattn import softmax_attention
from refattn.exact import attention_probabilities
from refattn.lsh.sparse import Support
from refattn.sea import (
    sea_attention,
    upsample,
)


def _kernel_output(q, k, v, sup):
    """The Numba sparse kernel called directly (the public function rejects NaN values, rightly)."""
    from refattn.kernels.numba.sparse_attention import sparse_numba

    return sparse_numba(q, k, v, sup.indptr, sup.indices, 1 / math.sqrt(q.shape[1]), np.zeros(sup.nnz))[0]


def _near_tie_at_cut(est_row, L, K, support_cols, rel=1e-9):
    """Whether the row's upsampled estimate has a (rounding-level) tie between a kept and a dropped column."""
    up = upsample(est_row[None], np.array([L]), L)[0]
    kept = np.zeros(L, bool)
    kept[support_cols] = True
    if kept.all():
        return False
    lo, hi = up[kept].min(), up[~kept].max()
    return hi >= lo * (1 - rel)


@pytest.mark.parametrize("causal", [False, True, "top_left"])
@pytest.mark.parametrize("T,S", [(20, 20), (12, 25), (25, 12)])
def test_k_equal_S_is_exact_attention(causal, T, S):
    q, k, v = qkv(N=2, T=T, S=S)
    res = sea_attention(q, k, v, n_bins=min(6, S), topk=S, m=8, rng=0, causal=causal)
    np.testing.assert_allclose(res.output, softmax_attention(q, k, v, causal=causal), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("decoder", ["fixed", "oracle"])
def test_output_is_sparse_attention_on_the_mask(decoder):
    q, k, v = qkv(N=3, T=30, S=30)
    res = sea_attention(q, k, v, n_bins=6, topk=5, m=16, rng=2, causal=True, decoder=decoder)
    for h in range(3):
        P = attention_probabilities(q[h], k[h], mask=res.supports[h].to_dense())
        np.testing.assert_allclose(res.output[h], P @ v[h], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(res.estimate.sum(axis=-1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("decoder", ["fixed", "oracle"])
def test_causal_canary(decoder):
    """Rows must not see the future. New future keys/values change earlier rows only at rounding level
    (through the Performer's shared key stabiliser): their estimates agree to 1e-12, their masks agree
    except where the estimate has an exact tie at the cut (the fixed decoder makes ties: row bins inside
    one basis bin share a density), and their outputs agree where the masks do. NaN future values leave
    earlier rows bitwise equal."""
    q, k, v = qkv(N=2, T=40, S=40, seed=5)
    base = sea_attention(q, k, v, n_bins=8, topk=6, m=32, rng=1, causal=True, decoder=decoder)
    cut = 25
    k2, v2 = k.copy(), v.copy()
    rng = np.random.default_rng(9)
    k2[:, cut:] = rng.normal(size=k2[:, cut:].shape)
    v2[:, cut:] = rng.normal(size=v2[:, cut:].shape)
    other = sea_attention(q, k2, v2, n_bins=8, topk=6, m=32, rng=1, causal=True, decoder=decoder)
    np.testing.assert_allclose(other.estimate[:, :cut], base.estimate[:, :cut], rtol=1e-12, atol=1e-15)
    same_rows = 0
    for h, (a, b) in enumerate(zip(base.supports, other.supports)):
        for i in range(cut):
            ca = a.indices[a.indptr[i]:a.indptr[i + 1]]
            if np.array_equal(ca, b.indices[b.indptr[i]:b.indptr[i + 1]]):
                np.testing.assert_allclose(other.output[h, i], base.output[h, i], rtol=1e-10, atol=1e-12)
                same_rows += 1
            else:
                assert _near_tie_at_cut(base.estimate[h, i], base.lengths[i], 8, ca), (h, i)
    assert same_rows >= cut  # most rows have no tie at the cut
    v3 = v.copy()
    v3[:, cut:] = np.nan
    out3 = np.stack([_kernel_output(q[h], k[h], v3[h], base.supports[h]) for h in range(2)])
    assert np.array_equal(out3[:, :cut], base.output[:, :cut])


def test_causal_canary_has_power():
    """Power twin: a mask that lets row i see key i + 1 (an off-by-one) breaks the NaN check."""
    q, k, v = qkv(T=12, S=12, seed=5)
    res = sea_attention(q, k, v, n_bins=4, topk=3, m=8, rng=1, causal=True)
    leaky = Support.from_dense(res.supports[0].to_dense() | np.eye(12, k=1, dtype=bool))
    v3 = v.copy()
    v3[6:] = np.nan
    assert np.isfinite(_kernel_output(q, k, v3, res.supports[0])[:6]).all()
    assert not np.isfinite(_kernel_output(q, k, v3, leaky)[:6]).all()


def test_gate_mixes_with_the_causal_mean_of_v():
    q, k, v = qkv(T=10, S=10)
    plain = sea_attention(q, k, v, n_bins=4, topk=3, m=8, rng=0, causal=True)
    gated = sea_attention(q, k, v, n_bins=4, topk=3, m=8, rng=0, causal=True, gate=0.25)
    mean_v = np.cumsum(v, axis=0) / np.arange(1, 11)[:, None]
    np.testing.assert_allclose(gated.output, 0.25 * plain.output + 0.75 * mean_v, rtol=1e-13)


def test_heads_broadcast_and_empty_inputs():
    q, k, v = qkv(N=3, T=9, S=9)
    res = sea_attention(q, k[0], v[0], n_bins=3, topk=2, m=8, rng=0)
    assert res.output.shape == (3, 9, 3) and len(res.supports) == 3
    empty = sea_attention(np.zeros((0, 6)), k[0], v[0], n_bins=3, topk=2, m=8, rng=0)
    assert empty.output.shape == (0, 3)


@pytest.mark.parametrize("kwargs,exc,name", [
    (dict(n_bins=0), ValueError, "n_bins"),
    (dict(n_bins=21), ValueError, "n_bins"),
    (dict(topk=0), ValueError, "topk"),
    (dict(topk=np.ones(3, int)), TypeError, "topk"),
    (dict(topk=2.5), TypeError, "topk"),
    (dict(decoder="learned"), TypeError, "decoder"),
    (dict(decoder=lambda E, L, S, K: np.zeros((3, K))), ValueError, "decoder"),
    (dict(decoder=lambda E, L, S, K: np.full(E.shape[:-1] + (K,), np.nan)), ValueError, "decoder"),
    (dict(decoder=lambda E, L, S, K: np.full(E.shape[:-1] + (K,), np.inf)), ValueError, "decoder"),
    (dict(decoder=lambda E, L, S, K: np.full(E.shape[:-1] + (K,), -np.inf)), ValueError, "decoder"),
    (dict(decoder=lambda E, L, S, K: np.zeros(E.shape[:-1] + (K,), dtype=int)), TypeError, "decoder"),
    (dict(grouped=True), ValueError, "grouped"),
    (dict(gate=1.5), ValueError, "gate"),
    (dict(basis="cubic"), ValueError, "basis"),
    (dict(n_basis=50), ValueError, "n_basis"),
])
def test_bad_input_names_the_argument(kwargs, exc, name):
    q, k, v = qkv()
    args = dict(n_bins=4, topk=3, m=8, rng=0)
    args.update(kwargs)
    with pytest.raises(exc, match=name):
        sea_attention(q, k, v, **args)
