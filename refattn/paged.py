r"""Paged KV caches: attention over keys and values stored in fixed-size pages (flash-attn's
``flash_attn_with_kvcache`` with a ``block_table``; vLLM's and flashinfer's paged layout).

The cache is ``k_cache (num_pages, page_size, Hk, D)`` and ``v_cache (num_pages, page_size, Hk,
Dv)`` (the NHD layout; pass ``layout="HND"`` for ``(num_pages, Hk, page_size, .)``). Batch item
``b`` owns pages ``block_table[b, 0], block_table[b, 1], ...`` in order, and its keys are the first
``cache_seqlens[b]`` slots of that sequence of pages. Queries are ``q (B, T, Hq, D)``: the last
``T`` tokens of each sequence, so a causal mask is aligned bottom-right on ``cache_seqlens[b]``
(decode is ``T = 1``). Slots past ``cache_seqlens[b]``, the rest of its last page and the
``block_table`` entries past its last needed page are never read (nor validated): a kernel that
reads them is wrong, and these are where the tests put NaN.

Every batch item is the oracle's own problem ([`refattn.softmax_attention`][refattn.exact.softmax_attention], heads as
its batch axis, grouped-query heads ``h // (Hq / Hk)``), on its keys gathered page by page.
"""

from __future__ import annotations

import numpy as np

from refattn._validation import InputError, InputTypeError, as_float_array, check_bool
from refattn.exact import softmax_attention

__all__ = ["paged_attention", "PAGED_LAYOUTS"]

PAGED_LAYOUTS = ("NHD", "HND")


def _cache(a, name, layout):
    try:
        arr = np.asarray(a)
    except ValueError:  # a ragged nest of lists
        raise InputTypeError(f"{name}: cannot be converted to an array (ragged?)") from None
    if arr.dtype.kind != "f":
        raise InputTypeError(f"{name}: expected a floating-point array, got dtype {arr.dtype}")
    if arr.ndim != 4:
        raise InputError(f"{name}: expected (num_pages, page_size, heads, head_dim) pages ({layout}), "
                         f"got shape {arr.shape}")
    return arr if layout == "NHD" else np.swapaxes(arr, 1, 2)  # to (num_pages, page_size, heads, .)


def _table(block_table, cache_seqlens, B, num_pages, page_size):
    table, lens = np.asarray(block_table), np.asarray(cache_seqlens)
    for a, name in ((table, "block_table"), (lens, "cache_seqlens")):
        if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
            raise InputTypeError(f"{name}: expected integers, got dtype {a.dtype}")
    if table.ndim != 2 or table.shape[0] != B:
        raise InputError(f"block_table: expected (B, max_pages) = ({B}, .), got shape {table.shape}")
    if lens.shape != (B,):
        raise InputError(f"cache_seqlens: expected one length per batch item, shape ({B},), got {lens.shape}")
    if np.any(lens < 0) or np.any(lens > table.shape[1] * page_size):
        raise InputError(f"cache_seqlens: each entry must lie in [0, max_pages * page_size] = "
                         f"[0, {table.shape[1] * page_size}]")
    for b in range(B):
        need = -(-int(lens[b]) // page_size)  # the pages its keys occupy
        pages = table[b, :need]
        if np.any(pages < 0) or np.any(pages >= num_pages):
            raise InputError(f"block_table: batch item {b} needs pages {pages.tolist()}, outside [0, {num_pages})")
    return table.astype(np.int64), lens.astype(np.int64)


def _gather_pages(cache, pages, length):
    """The first ``length`` slots of ``pages`` of an NHD cache, contiguous: ``(length, heads, .)``."""
    page_size = cache.shape[1]
    need = -(-length // page_size)
    rows = cache[np.asarray(pages[:need], dtype=np.int64)].reshape(need * page_size, *cache.shape[2:])
    return rows[:length]


def paged_attention(q, k_cache, v_cache, block_table, cache_seqlens, *, layout="NHD", scale=None, causal=False,
                    window=None, softcap=None, alibi_slopes=None, sinks=None, return_lse=False):
    r"""Attention of ``q`` over a paged KV cache (module docstring), the oracle on each batch item.

    Parameters
    ----------
    q : array (B, T, Hq, D)
    k_cache, v_cache : arrays (num_pages, page_size, Hk, D), (num_pages, page_size, Hk, Dv)
        ``layout="HND"``: ``(num_pages, Hk, page_size, .)``.
    block_table : int array (B, max_pages)
    cache_seqlens : int array (B,)
    scale, causal, window, softcap, alibi_slopes, sinks
        As for [`refattn.softmax_attention`][refattn.exact.softmax_attention] (``alibi_slopes``, ``sinks``: one per query head).
    return_lse : bool
        Also return ``lse (B, Hq, T)``.

    Returns
    -------
    out : ndarray (B, T, Hq, Dv), and ``lse`` with ``return_lse``. A batch item with no cached key
    gets zeros (lse ``-inf``, or its sink).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> k_cache, v_cache = rng.normal(size=(6, 4, 1, 8)), rng.normal(size=(6, 4, 1, 2))
    >>> q = rng.normal(size=(2, 1, 2, 8))  # one decode step, 2 query heads on 1 key/value head
    >>> out = paged_attention(q, k_cache, v_cache, [[5, 0], [2, 3]], [6, 3])
    >>> out.shape
    (2, 1, 2, 2)
    """
    if layout not in PAGED_LAYOUTS:
        raise InputError(f"layout: expected one of {PAGED_LAYOUTS}, got {layout!r}")
    return_lse = check_bool(return_lse, "return_lse")
    q = as_float_array(q, "q")
    if q.ndim != 4:
        raise InputError(f"q: expected (B, T, Hq, D), got shape {q.shape}")
    kc, vc = _cache(k_cache, "k_cache", layout), _cache(v_cache, "v_cache", layout)
    if kc.shape[:3] != vc.shape[:3]:
        raise InputError(f"k_cache, v_cache: expected the same pages and heads, got {kc.shape} and {vc.shape}")
    if kc.shape[3] != q.shape[3]:
        raise InputError(f"q, k_cache: expected the same head dim, got {q.shape[3]} and {kc.shape[3]}")
    if kc.shape[1] < 1:
        raise InputError("k_cache: pages of at least one slot")
    if kc.shape[2] == 0 or q.shape[2] % kc.shape[2]:
        raise InputError(f"q, k_cache: the query heads ({q.shape[2]}) must be a multiple of the key/value heads "
                         f"({kc.shape[2]})")
    B, T, Hq = q.shape[:3]
    table, lens = _table(block_table, cache_seqlens, B, kc.shape[0], kc.shape[1])
    group = Hq // kc.shape[2]
    options = {n: v for n, v in dict(scale=scale, causal=causal, window=window, softcap=softcap,
                                      alibi_slopes=alibi_slopes, sinks=sinks).items() if v is not None}
    out = np.zeros((B, T, Hq, vc.shape[3]))
    lse = np.full((B, Hq, T), -np.inf)
    for b in range(B):
        keys, values = (np.repeat(np.swapaxes(as_float_array(_gather_pages(c, table[b], int(lens[b])), name), 0, 1),
                                  group, axis=0) for c, name in ((kc, "k_cache"), (vc, "v_cache")))
        o, l = softmax_attention(np.swapaxes(q[b], 0, 1), keys, values, return_lse=True, **options)
        out[b], lse[b] = np.swapaxes(o, 0, 1), l
    return (out, lse) if return_lse else out
