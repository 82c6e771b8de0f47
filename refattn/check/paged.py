r"""``--kind paged``: attention over a paged KV cache in flash-attn's ``flash_attn_with_kvcache`` contract,
``fn(q, k_cache, v_cache[, k=, v=], cache_seqlens=, block_table=[, causal=, window_size=]) -> out (B,
T, Hq, Dv)``, judged batch item by batch item against
[`refattn.paged.paged_attention`][refattn.paged.paged_attention] by the tolerance rule.

``q (B, T, Hq, D)`` are the last ``T`` tokens of each sequence; ``k_cache, v_cache (pages,
page_size, Hk, .)`` (``kv_layout="HND"``: ``(pages, Hk, page_size, .)``, flashinfer's and vLLM's
other layout) in the claimed precision; ``cache_seqlens (B,)`` and ``block_table (B, max_pages)``
int32; ``Hk = Hq / 2`` with ``gqa``. Each batch item owns pages drawn at random from the pool, in a
random order. Every slot a kernel must not read holds NaN: the slots past ``cache_seqlens`` in an
item's last page, the pages no item owns, and the page the block table's entries past an item's
need point at; where NaN comes back the case is posed again with finite values there
([`refattn.check.poison`][refattn.check.poison]).

The cases: decode (``T = 1``) at pages of 16 with lengths 0, 1, 37 and 130, pages of 1, pages of
128 over a 2048-key cache, pages of 5 (dividing no length), prefill on a cache (9 queries, causal
bottom-right on the cached length), chunked prefill crossing tiles (129 queries over 300 keys), a
sliding window, a block table just as wide as the longest item needs (whose keys fill their last
page), MLA's decode (head dims 576 for ``q, k`` and 512 for ``v``, one latent key/value head for
every query head; skipped when the callable rejects them by raising), and appended tokens (``k, v (B, 3, Hk, .)`` written after the cached ones and attended, when
the callable takes ``k=``). A case that needs a keyword the callable does not take is skipped.

A failing case names what it looks like: the rest of the last page attended (the page-boundary mask),
one page past the need read, the causal mask aligned at the cache's start, the appended tokens
written but not attended (or not written), the grouped heads interleaved.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from refattn.check.per_sequence import judge_sequences
from refattn.check.poison import NAN_FROM_UNUSED, with_finite_retry
from refattn.check.verdict import Verdict
from refattn.exact import softmax_attention
from refattn.paged import PAGED_LAYOUTS
from refattn.precision import as_given, given_dtype, round_to

__all__ = ["check_paged", "PagedCase", "PAGED_CASES", "HEADS", "PAGED_LAYOUTS"]

#: Query heads of every case (key/value heads: the same, or half with ``gqa``).
HEADS = 4


@dataclass(frozen=True)
class PagedCase:
    """One batch over a paged cache: the page size, each item's cached length, the queries per item,
    the tokens appended (``k=``, ``v=``), the head dims, its options, and the block table's entries
    beyond the longest item's need (0: just as wide)."""

    name: str
    page: int
    lens: tuple
    T: int = 1
    new: int = 0
    D: int = 32
    Dv: int = 32
    causal: bool = False
    window: tuple | None = None
    spare: int = 1
    mqa: bool = False  # one key/value head for every query head (MLA's latent cache)
    probe: bool = False  # a head-dim case the callable may reject (skipped)


PAGED_CASES = (
    PagedCase("decode, pages of 16: lengths 0, 1, 37, 130", 16, (0, 1, 37, 130)),
    PagedCase("decode, pages of 1", 1, (5, 20, 1)),
    PagedCase("decode, pages of 128: a 2048-key cache", 128, (2048, 129, 300), D=64, Dv=64),
    PagedCase("pages of 5 (dividing no length)", 5, (7, 23, 41), T=2, causal=True),
    PagedCase("prefill on a cache: 9 queries, causal", 16, (9, 30, 50), T=9, causal=True),
    PagedCase("chunked prefill: 129 queries over 300 keys", 16, (300, 129), T=129, D=64, Dv=64, causal=True),
    PagedCase("decode with a sliding window", 16, (100, 37), causal=True, window=(32, 0)),
    PagedCase("a block table just as wide as the longest item needs", 16, (32, 48, 5), spare=0),
    PagedCase("3 appended tokens per item, causal", 16, (0, 14, 16), T=3, new=3, causal=True),
    PagedCase("MLA decode: head dims 576 / 512, one latent head", 64, (100, 300), D=576, Dv=512, mqa=True,
              probe=True),
)


@dataclass
class _Batch:
    """A case's draws: the queries, each item's keys and values (cached then appended), where they live."""

    q: np.ndarray  # (B, T, Hq, D), values at the claim's rounding
    keys: list  # per item (length + new, Hk, D)
    values: list
    table: np.ndarray  # (B, width) int32
    pool: int  # pages in the pool
    poison_page: int  # the page unused table entries point at


def _group(case, gqa):
    """Query heads per key/value head: all of them (MQA), 2 with ``gqa``, else 1."""
    return HEADS if case.mqa else 2 if gqa else 1


def _draw(case, rng, precision, group):
    B, P = len(case.lens), case.page
    full = [n + case.new for n in case.lens]
    need = [-(-n // P) for n in full]
    width = max(max(need), 1) + case.spare
    pool = sum(need) + 2  # + the page unused entries point at + one no item owns
    order = rng.permutation(pool)
    table = np.full((B, width), order[-1], np.int32)
    at = 0
    for b in range(B):
        table[b, :need[b]] = order[at:at + need[b]]
        at += need[b]
    hk = HEADS // group
    q = round_to(rng.standard_normal((B, case.T, HEADS, case.D)), precision)
    keys = [round_to(rng.standard_normal((n, hk, case.D)), precision) for n in full]
    values = [round_to(rng.standard_normal((n, hk, case.Dv)), precision) for n in full]
    return _Batch(q, keys, values, table, pool, int(order[-1]))


def _caches(case, batch, precision, fill):
    """``k_cache, v_cache`` (NHD, in the claim's given dtype) with the cached keys written and every other
    slot ``fill``: NaN, or finite draws (a draw function)."""
    out = []
    for items in (batch.keys, batch.values):
        shape = (batch.pool, case.page) + items[0].shape[1:]
        cache = as_given(fill(shape), precision) if callable(fill) else np.full(shape, fill, given_dtype(precision))
        for b, n in enumerate(case.lens):
            slots = np.arange(n)
            cache[batch.table[b, slots // case.page], slots % case.page] = as_given(items[b][:n], precision)
        out.append(cache)
    return out


def _options(case):
    kw = {"causal": True} if case.causal else {}
    if case.window is not None:
        kw["window"] = case.window
    return kw


def check_paged(run, *, precision="float64", gqa=False, empty_rows="zeros", kv_layout="NHD"):
    """Run the cases on ``run.fn``; one verdict per case (module docstring)."""
    rng = np.random.default_rng([run.report.seed, 17])
    for case in PAGED_CASES:
        group = _group(case, gqa)
        batch = _draw(case, rng, precision, group)
        call_kw = {"causal": True} if case.causal else {}
        if case.window is not None:
            call_kw["window_size"] = case.window
        need = next((n for n in list(call_kw) + (["k", "v"] if case.new else []) if not run.accepts(n)), None)
        if need:
            run.skip(case.name, f"fn takes no {need}= keyword")
            continue
        judged = partial(_call_and_judge, run, case, batch, call_kw, precision, group, empty_rows, kv_layout)
        outcome = with_finite_retry(partial(judged, np.nan), partial(judged, rng.standard_normal),
                                    "the slots and pages it must not read")
        if isinstance(outcome, Verdict):
            run.add(outcome)
        elif case.probe and outcome.what == "raised":
            run.skip(case.name, f"fn rejects head dims {case.D} / {case.Dv} (unsupported, not judged): {outcome}")
        else:
            hint = ("; the block table is just as wide as the longest item needs: a kernel that reads an entry "
                    "past an item's need goes out of the table" if case.spare == 0 and outcome.what == "raised"
                    else "")
            run.problem(case.name, outcome, f"the callable's result could not be judged{hint}")


def _call_and_judge(run, case, batch, call_kw, precision, group, empty_rows, kv_layout, fill):
    """One call with every slot the kernel must not read holding ``fill``: the verdict, or the call's problem."""
    given = _caches(case, batch, precision, fill)
    kc, vc = given if kv_layout == "NHD" else (np.ascontiguousarray(np.swapaxes(c, 1, 2)) for c in given)
    kw = dict(call_kw, cache_seqlens=np.asarray(case.lens, np.int32), block_table=batch.table)
    if case.new:
        kw["k"], kw["v"] = (as_given(np.stack([a[n:] for a, n in zip(items, case.lens)]), precision)
                            for items in (batch.keys, batch.values))
    B = len(case.lens)
    out, problem = run.call((as_given(batch.q, precision), kc, vc), kw, shape=(B, case.T, HEADS, case.Dv),
                            finite=False)
    if problem is not None:
        return problem
    out = np.asarray(out, np.float64)
    kw = _options(case)
    items = ((b, np.swapaxes(out[b], 0, 1), np.swapaxes(batch.q[b], 0, 1), _heads(batch.keys[b], group),
              _heads(batch.values[b], group), kw) for b in range(B))
    meaning = f"the tolerance rule vs the oracle, batch item by batch item ({precision} inputs, {kv_layout} pages)"
    return judge_sequences(case.name, items, precision=precision, empty_rows=empty_rows, meaning=meaning,
                           diagnose=lambda bound: _diagnose(case, batch, out, group, fill, kw, bound, given))


def _heads(a, group):
    """``(n, Hk, X)`` as ``(Hq, n, X)``: each key/value head repeated for its query heads."""
    return np.repeat(np.swapaxes(a, 0, 1), group, axis=0)


def _slots(case, batch, caches, b, count):
    """The first ``count`` slots of item ``b``'s pages as the kernel holds them once the appended tokens
    are written (float64 ``(k, v)``), or None past its block table."""
    pages = -(-count // case.page)
    if pages > batch.table.shape[1]:
        return None
    full = case.lens[b] + case.new
    kv = []
    for c, drawn in zip(caches, (batch.keys[b], batch.values[b])):
        a = np.asarray(c[batch.table[b, :pages]], np.float64).reshape(pages * case.page, *c.shape[2:])[:count]
        a[case.lens[b]:full] = drawn[case.lens[b]:]
        kv.append(a)
    return kv


def _diagnose(case, batch, out, group, fill, kw, bound, caches):
    """What a wrong paged output looks like: the candidates of the common paged faults."""
    if not callable(fill) and np.isnan(out).any():
        return f"looks like: {NAN_FROM_UNUSED}"

    def oracle(kv_of, expand=_heads, **over):
        """The oracle with item ``b``'s keys and values ``kv_of(b)`` (their heads given to the query heads
        by ``expand``); None where one is None."""
        res = np.zeros_like(out)
        for b in range(len(case.lens)):
            kv = kv_of(b)
            if kv is None:
                return None
            res[b] = np.swapaxes(softmax_attention(np.swapaxes(batch.q[b], 0, 1), *(expand(a, group) for a in kv),
                                                   **dict(kw, **over)), 0, 1)
        return res

    full = [n + case.new for n in case.lens]
    cands = []
    if callable(fill):  # finite values where it must not read: what reading the rest of the last page gives
        cands.append(("the rest of the last page attended: the slots past cache_seqlens in an item's last page "
                      "are read (the page-boundary mask)",
                      oracle(lambda b: _slots(case, batch, caches, b, -(-full[b] // case.page) * case.page))))
    if case.causal:
        cands.append(("the causal mask aligned at the cache's start (top-left), not on its last key",
                      oracle(lambda b: (batch.keys[b], batch.values[b]), causal="top_left")))
    if case.new:
        cands.append(("the appended k, v not attended (the attention over the cached length only)",
                      oracle(lambda b: (batch.keys[b][:case.lens[b]], batch.values[b][:case.lens[b]]))))
    if group > 1:
        cands.append(("interleaved grouped heads: query head h reads key/value head h % Hk, not h // group",
                      oracle(lambda b: (batch.keys[b], batch.values[b]),
                             expand=lambda a, g: np.tile(np.swapaxes(a, 0, 1), (g, 1, 1)))))
    for name, cand in cands:
        if cand is not None and float(np.max(np.abs(out - cand), initial=0.0)) <= max(bound, 1e-300):
            return f"looks like: {name}"
    return "no known fault matches"
