"""Packed variable-length batches (refattn.varlen) against their definition: one attention over the
whole packed batch whose mask is block-diagonal (a query sees only its own sequence's keys, causal
per sequence). Deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from refattn import softmax_attention
from refattn.varlen import varlen_attention, varlen_backward

TOL = 64 * np.finfo(np.float64).eps


def _packed(lq, lk, Hq=4, Hk=2, D=8, Dv=3, seed=0):
    rng = np.random.default_rng([seed, 41])
    cq, ck = np.concatenate([[0], np.cumsum(lq)]), np.concatenate([[0], np.cumsum(lk)])
    return (rng.normal(size=(cq[-1], Hq, D)) * 2, rng.normal(size=(ck[-1], Hk, D)), rng.normal(size=(ck[-1], Hk, Dv)),
            cq, ck)


def _block_mask(cq, ck, causal, used=None, window=None):
    """(total_q, total_k): True where a query may attend, built from the packed positions."""
    mask = np.zeros((cq[-1], ck[-1]), bool)
    for b in range(len(cq) - 1):
        T, S = cq[b + 1] - cq[b], ck[b + 1] - ck[b]
        i, j = np.arange(T)[:, None], np.arange(S)[None, :]
        ok = np.ones((T, S), bool)
        if causal:
            ok &= j <= i + S - T
        if window is not None:
            ok &= (j >= i + S - T - window[0]) & (j <= i + S - T + window[1])
        if used is not None:
            ok &= j < used[b]
        mask[cq[b]:cq[b + 1], ck[b]:ck[b + 1]] = ok
    return mask


def _whole(q, k, v, mask, **kw):
    """The definition: every head's attention over the whole packed batch under the block mask."""
    group = q.shape[1] // k.shape[1]
    kh, vh = (np.repeat(np.swapaxes(a, 0, 1), group, axis=0) for a in (k, v))
    out, lse = softmax_attention(np.swapaxes(q, 0, 1), kh, vh, mask=mask, return_lse=True, **kw)
    return np.swapaxes(out, 0, 1), lse


LENGTHS = [([3, 0, 1, 5, 2], [4, 2, 0, 6, 2]), ([1], [1]), ([0, 0], [3, 0]), ([7, 1], [2, 9])]


@pytest.mark.parametrize("lq,lk", LENGTHS)
@pytest.mark.parametrize("causal", [False, True])
def test_packed_sequences_are_one_attention_under_a_block_diagonal_mask(lq, lk, causal):
    """Sequences of length 0 and 1, T > S and T < S, grouped heads (4 query heads on 2): out and lse
    equal the whole packed batch's attention under the block mask; a row with no key is zeros, lse -inf."""
    q, k, v, cq, ck = _packed(lq, lk)
    out, lse = varlen_attention(q, k, v, cq, ck, causal=causal, return_lse=True)
    ref, ref_lse = _whole(q, k, v, _block_mask(cq, ck, causal))
    np.testing.assert_allclose(out, ref, rtol=0, atol=TOL * 8)
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-14, atol=0)
    assert out.shape == (cq[-1], 4, 3) and lse.shape == (4, cq[-1])


def test_used_keys_and_windows_per_sequence_and_the_padding_is_never_read():
    """seqused_k keeps the first keys of each slot: the rest are NaN here and never reach the output;
    a sliding window and sinks are per sequence as well."""
    q, k, v, cq, ck = _packed([3, 4, 2], [6, 5, 4], seed=1)
    used = np.array([4, 0, 3])
    k, v = k.copy(), v.copy()
    for b, u in enumerate(used):
        k[ck[b] + u:ck[b + 1]] = np.nan
        v[ck[b] + u:ck[b + 1]] = np.nan
    sinks = np.array([0.5, 1.0, -1.0, 2.0])
    kw = dict(causal=True, window=(2, 0), sinks=sinks)
    out, lse = varlen_attention(q, k, v, cq, ck, seqused_k=used, return_lse=True, **kw)
    assert np.all(np.isfinite(out))
    clean_k, clean_v = np.nan_to_num(k), np.nan_to_num(v)
    mask = _block_mask(cq, ck, False, used)  # the causal window per sequence, on the used keys only
    for b in range(3):
        T, S = cq[b + 1] - cq[b], used[b]
        rows = slice(cq[b], cq[b + 1])
        ref = softmax_attention(np.swapaxes(q[rows], 0, 1), np.repeat(np.swapaxes(clean_k[ck[b]:ck[b] + S], 0, 1), 2, 0),
                                np.repeat(np.swapaxes(clean_v[ck[b]:ck[b] + S], 0, 1), 2, 0), sinks=sinks, causal=True,
                                window=(2, 0))
        np.testing.assert_allclose(out[rows], np.swapaxes(ref, 0, 1), rtol=0, atol=TOL * 8)
    assert mask[cq[1]:cq[2]].sum() == 0 and np.all(out[cq[1]:cq[2]] == 0)  # no used key: zeros, lse = the sink
    np.testing.assert_array_equal(lse[:, cq[1]:cq[2]], np.repeat(sinks[:, None], 4, 1))


def test_the_backward_matches_finite_differences_and_sums_grouped_heads():
    """dq, dk, dv (and dsinks) by central differences, at entries of sequences with queries and keys;
    the keys of a sequence without queries get no gradient."""
    q, k, v, cq, ck = _packed([3, 0, 4], [4, 2, 5], seed=2)
    rng = np.random.default_rng(3)
    dout, sinks = rng.normal(size=(cq[-1], 4, 3)), np.array([0.2, 1.0, -0.5, 0.0])
    kw = dict(causal=True, sinks=sinks)
    dq, dk, dv, dz = varlen_backward(q, k, v, dout, cq, ck, **kw)
    assert dk.shape == k.shape and dz.shape == sinks.shape and np.all(dk[ck[1]:ck[2]] == 0)
    h = 1e-6

    def loss(q=q, k=k, v=v, sinks=sinks):
        return np.sum(dout * varlen_attention(q, k, v, cq, ck, causal=True, sinks=sinks))

    for name, x, g, idx in [("q", q, dq, (1, 2, 3)), ("q", q, dq, (5, 0, 1)), ("k", k, dk, (1, 1, 2)),
                            ("k", k, dk, (8, 0, 4)), ("v", v, dv, (7, 1, 0)), ("sinks", sinks, dz, (2,))]:
        e = np.zeros_like(x)
        e[idx] = h
        num = (loss(**{name: x + e}) - loss(**{name: x - e})) / (2 * h)
        assert abs(num - g[idx]) <= 1e-6 * max(1.0, abs(num)), (name, idx, num, g[idx])


@pytest.mark.parametrize("change,match", [
    (dict(cu_seqlens_q=[1, 3, 5]), "^cu_seqlens_q: offsets must start at 0"),
    (dict(cu_seqlens_q=[0, 4, 2, 5]), "^cu_seqlens_q: offsets must"),
    (dict(cu_seqlens_k=[0, 3, 6]), "^cu_seqlens_k: offsets must .* end at the packed length 7"),
    (dict(cu_seqlens_q=[0.0, 2.0, 5.0]), "^cu_seqlens_q: expected integers"),
    (dict(cu_seqlens_k=[0, 2, 5, 7]), "^cu_seqlens_q, cu_seqlens_k: expected the same number"),
    (dict(seqused_k=[4, 5]), r"^seqused_k: each entry must lie in \[0"),
    (dict(seqused_k=[1]), "^seqused_k: expected one length per sequence"),
    (dict(mask=np.ones((5, 7), bool)), "unexpected keyword argument 'mask'"),
    (dict(q=np.ones((5, 3, 8))), r"^q, k: the query heads \(3\) must be a multiple"),
    (dict(q=np.ones((5, 4))), "^q: expected the packed layout"),
])
def test_bad_input_names_the_argument(change, match):
    q, k, v, cq, ck = _packed([2, 3], [3, 4])
    args = {**dict(q=q, k=k, v=v, cu_seqlens_q=cq, cu_seqlens_k=ck), **change}
    with pytest.raises((TypeError, ValueError), match=match):
        varlen_attention(**args)
