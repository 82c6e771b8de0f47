"""Paged KV caches (refattn.paged) against their definition: the oracle on each batch item's keys laid
out contiguously, whatever the page size and page order; what a kernel must not read holds NaN.
Deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from refattn import softmax_attention
from refattn.paged import paged_attention

TOL = 64 * np.finfo(np.float64).eps


def _paged(lengths, page_size, T=2, Hq=4, Hk=2, D=8, Dv=3, seed=0):
    """Contiguous caches per item, scattered into shuffled pages; everything else in the pool is NaN."""
    rng = np.random.default_rng([seed, 43])
    keys = [rng.normal(size=(n, Hk, D)) for n in lengths]
    values = [rng.normal(size=(n, Hk, Dv)) for n in lengths]
    need = [-(-n // page_size) for n in lengths]
    max_pages = max(need) + 1
    num_pages = sum(need) + 3  # spare pages: never used, NaN
    order = rng.permutation(num_pages)
    k_cache, v_cache = np.full((num_pages, page_size, Hk, D), np.nan), np.full((num_pages, page_size, Hk, Dv), np.nan)
    table = np.full((len(lengths), max_pages), 10**6)  # the entries past an item's pages: garbage, never read
    used = 0
    for b, n in enumerate(lengths):
        for p in range(need[b]):
            page = order[used]
            used += 1
            table[b, p] = page
            rows = slice(p * page_size, min(n, (p + 1) * page_size))
            k_cache[page, :rows.stop - rows.start] = keys[b][rows]
            v_cache[page, :rows.stop - rows.start] = values[b][rows]
    q = rng.normal(size=(len(lengths), T, Hq, D)) * 2
    return q, k_cache, v_cache, table, np.array(lengths), keys, values


def _contiguous(q, keys, values, b, **kw):
    group = q.shape[2] // keys[b].shape[1]
    k, v = (np.repeat(np.swapaxes(a[b], 0, 1), group, axis=0) for a in (keys, values))
    out, lse = softmax_attention(np.swapaxes(q[b], 0, 1), k, v, return_lse=True, **kw)
    return np.swapaxes(out, 0, 1), lse


@pytest.mark.parametrize("page_size", [1, 16, 128, 5])
@pytest.mark.parametrize("causal", [False, True])
def test_paged_equals_the_oracle_on_contiguous_keys(page_size, causal):
    """Page sizes 1, 16, 128 and 5 (which divides no length here), pages in shuffled order, lengths 0,
    1, 37 and 130 (across pages), grouped heads; causal bottom-right on the cached length (the queries
    are its last tokens). NaN in every slot past a length, in spare pages and garbage past each
    item's pages in the block table: none of it reaches the output."""
    lengths = [37, 0, 1, 130]
    q, kc, vc, table, lens, keys, values = _paged(lengths, page_size)
    out, lse = paged_attention(q, kc, vc, table, lens, causal=causal, return_lse=True)
    assert np.all(np.isfinite(out)) and out.shape == (4, 2, 4, 3) and lse.shape == (4, 4, 2)
    for b in range(4):
        ref, ref_lse = _contiguous(q, keys, values, b, causal=causal)
        np.testing.assert_allclose(out[b], ref, rtol=0, atol=TOL * 8)
        np.testing.assert_array_equal(np.isinf(lse[b]), np.isinf(ref_lse))
    np.testing.assert_array_equal(out[1], 0.0)  # no cached key: zeros
    hnd = paged_attention(q, np.swapaxes(kc, 1, 2), np.swapaxes(vc, 1, 2), table, lens, causal=causal, layout="HND")
    np.testing.assert_array_equal(hnd, out)


def test_decode_with_sinks_and_a_window():
    """One query per item (decode), a sliding window and per-head sinks: the oracle's on the
    contiguous keys."""
    q, kc, vc, table, lens, keys, values = _paged([50, 7, 16], 16, T=1, seed=1)
    sinks = np.array([0.0, 1.0, 2.0, -1.0])
    out = paged_attention(q, kc, vc, table, lens, causal=True, window=(8, 0), sinks=sinks)
    for b in range(3):
        np.testing.assert_allclose(out[b], _contiguous(q, keys, values, b, causal=True, window=(8, 0),
                                                       sinks=sinks)[0], rtol=0, atol=TOL * 8)


@pytest.mark.parametrize("change,match", [
    (dict(block_table=[[0, 1], [2, 3]]), r"^block_table: expected \(B, max_pages\)"),
    (dict(cache_seqlens=[3, 4]), "^cache_seqlens: expected one length per batch item"),
    (dict(cache_seqlens=[3, 4, 10**9]), r"^cache_seqlens: each entry must lie in \[0"),
    (dict(cache_seqlens=[3.0, 4.0, 5.0]), "^cache_seqlens: expected integers"),
    (dict(layout="NDH"), "^layout: expected one of"),
    (dict(q=np.ones((3, 2, 4))), r"^q: expected \(B, T, Hq, D\)"),
])
def test_bad_input_names_the_argument(change, match):
    q, kc, vc, table, lens, _, _ = _paged([3, 4, 5], 4)
    args = {**dict(q=q, k_cache=kc, v_cache=vc, block_table=table, cache_seqlens=lens), **change}
    with pytest.raises((TypeError, ValueError), match=match):
        paged_attention(**args)


def test_a_needed_page_outside_the_pool_is_an_error():
    """A block-table entry the item's keys need must name a page of the pool (an out-of-bounds page
    is flash-attention's #2711); entries past the needed pages are never read."""
    q, kc, vc, table, lens, _, _ = _paged([3, 9], 4)
    bad = table.copy()
    bad[1, 2] = kc.shape[0]  # the third page of item 1 (9 keys: 3 pages of 4)
    with pytest.raises(ValueError, match=r"^block_table: batch item 1 needs pages .* outside \[0"):
        paged_attention(q, kc, vc, bad, lens)
