"""``--kind paged`` (refattn.check.paged): what it hands the callable (flash_attn_with_kvcache's
arguments, NaN in every slot it must not read, the page layouts), its skips and options, the command
line. The catalogue's false alarms and power are in test_serving_bugs.py. Deterministic."""

import subprocess
import sys

import numpy as np
import pytest

from refattn.check import check
from refattn.check.paged import PAGED_CASES
from refattn.check.serving_bugs import paged_kernel


def test_the_callable_gets_flash_attn_with_kvcache_arguments(seed):
    seen = {}

    def spy(q, k_cache, v_cache, k=None, v=None, *, cache_seqlens, block_table, causal=False, window_size=(-1, -1)):
        lens, table, P = np.asarray(cache_seqlens), np.asarray(block_table), k_cache.shape[1]
        owned = set()
        for b in range(len(lens)):
            need = -(-(int(lens[b]) + (0 if k is None else k.shape[1])) // P)
            owned |= set(table[b, :need].tolist())
            # the cached slots finite, the rest of the last page and the appended slots NaN
            s = np.arange(int(lens[b]))
            assert np.isfinite(k_cache[table[b, s // P], s % P]).all()
            rest = np.arange(int(lens[b]), need * P)
            assert np.isnan(k_cache[table[b, rest // P], rest % P]).all()
        unowned = sorted(set(range(k_cache.shape[0])) - owned)
        seen[len(seen)] = (q.dtype, q.shape, k_cache.shape, cache_seqlens.dtype, table.dtype, k is not None,
                           bool(unowned) and bool(np.isnan(k_cache[unowned]).all()))
        return paged_kernel(q, k_cache, v_cache, k, v, cache_seqlens=cache_seqlens, block_table=block_table,
                            causal=causal, window_size=window_size)

    rep = check(spy, "paged", gqa=True, precision="float16", seed=seed, isolate=False)
    assert rep.passed, rep.format_table()
    by_case = dict(zip([c.name for c in PAGED_CASES], seen.values()))
    mla = by_case.pop("MLA decode: head dims 576 / 512, one latent head")
    assert all(s[0] == np.float16 and s[1][2] == 4 and s[2][2] == 2 and s[3] == s[4] == np.int32 and s[6]
               for s in by_case.values())
    assert mla[1][2:] == (4, 576) and mla[2][2:] == (1, 576)  # every query head on the one latent head
    assert by_case["3 appended tokens per item, causal"][5] and not by_case["decode, pages of 1"][5]
    assert {s[2][1] for s in by_case.values()} == {1, 5, 16, 128}


def test_the_hnd_layout_and_a_layout_mismatch(seed):
    hnd = lambda *a, **kw: paged_kernel(*a, layout="HND", **kw)  # noqa: E731
    assert check(hnd, "paged", kv_layout="HND", seed=seed, isolate=False).passed
    assert not check(hnd, "paged", seed=seed, isolate=False).passed  # NHD pages read as HND
    with pytest.raises(ValueError, match="kv_layout"):
        check(hnd, "paged", kv_layout="NDH")


def test_a_case_needing_a_keyword_is_skipped_and_rejected_head_dims_are_unsupported(seed):
    def decode_only(q, k_cache, v_cache, *, cache_seqlens, block_table):
        if q.shape[-1] > 256:
            raise ValueError("head dims up to 256")
        return paged_kernel(q, k_cache, v_cache, cache_seqlens=cache_seqlens, block_table=block_table)

    rep = check(decode_only, "paged", seed=seed, isolate=False)
    skipped = {v.check: v.meaning for v in rep.verdicts if v.passed is None}
    assert rep.passed and "fn takes no causal= keyword" in skipped["prefill on a cache: 9 queries, causal"]
    assert "unsupported" in skipped["MLA decode: head dims 576 / 512, one latent head"]
    assert {v.check for v in rep.verdicts if v.passed} >= {"decode, pages of 1", "pages of 5 (dividing no length)"
                                                            } - set(skipped)


def test_rows_without_keys_must_be_zeros_unless_any(seed):
    def nan_rows(q, k_cache, v_cache, k=None, v=None, **kw):
        out = paged_kernel(q, k_cache, v_cache, k, v, **kw)
        out[np.asarray(kw["cache_seqlens"]) + (0 if k is None else k.shape[1]) == 0] = np.nan  # unguarded 0/0
        return out

    rep = check(nan_rows, "paged", seed=seed, isolate=False)
    assert {v.check for v in rep.failures} == {"decode, pages of 16: lengths 0, 1, 37, 130"}
    assert "not zeros" in rep.failures[0].meaning
    assert check(nan_rows, "paged", empty_rows="any", seed=seed, isolate=False).passed


def test_the_command_line(tmp_path):
    src = tmp_path / "p.py"
    src.write_text("from functools import partial\nfrom refattn.check.serving_bugs import paged_kernel\n"
                   "good = paged_kernel\nbad = partial(paged_kernel, fault='last page read whole')\n")
    run = lambda fn, *flags: subprocess.run([sys.executable, "-m", "refattn", "check", f"{src}:{fn}",  # noqa: E731
                                             "--kind", "paged", *flags], capture_output=True, text=True, timeout=300)
    ok = run("good", "--gqa", "--precision", "bfloat16")
    assert ok.returncode == 0 and "RESULT: PASS" in ok.stdout and "--gqa" in ok.stdout, ok.stdout + ok.stderr
    bad = run("bad")
    assert bad.returncode == 1 and "page-boundary mask" in bad.stdout


def _vllm_style(q, k, v, cu_seqlens_q, max_seqlen_q, seqused_k, max_seqlen_k, block_table, causal=False,
                window_size=(-1, -1), *, read_to_max=False):
    """vLLM's call of flash_attn_varlen_func with a block table, in NumPy (packed queries, lengths as
    seqused_k); ``read_to_max``: every item read to max_seqlen_k (seqused_k ignored, a planted fault)."""
    B, T = len(cu_seqlens_q) - 1, int(max_seqlen_q)
    assert np.all(np.diff(cu_seqlens_q) == T) and q.shape[0] == B * T
    lens = np.full(B, max_seqlen_k) if read_to_max else seqused_k
    out = paged_kernel(q.reshape(B, T, *q.shape[1:]), k, v, cache_seqlens=lens, block_table=block_table,
                       causal=causal, window_size=window_size)
    return out.reshape(B * T, *out.shape[2:])


def test_the_library_adapters_flash_attn_and_vllm(seed):
    """paged_adapter: flash_attn_with_kvcache's signature passes every case (the appended tokens too); vLLM's
    packed call passes with the append case skipped (vLLM writes the cache first); power twin: a vLLM-style
    kernel that ignores seqused_k fails."""
    from functools import partial

    from refattn.check.adapters import paged_adapter

    fa = check(paged_adapter(paged_kernel, framework="numpy"), "paged", seed=seed, isolate=False)
    assert fa.passed and not any(v.passed is None for v in fa.verdicts), fa.format_table()
    vl = check(paged_adapter(_vllm_style, style="vllm", framework="numpy"), "paged", seed=seed, isolate=False)
    skipped = {v.check for v in vl.verdicts if v.passed is None}
    assert vl.passed and skipped == {"3 appended tokens per item, causal"}, vl.format_table()
    bad = paged_adapter(partial(_vllm_style, read_to_max=True), style="vllm", framework="numpy")
    assert not check(bad, "paged", seed=seed, isolate=False).passed
    with pytest.raises(ValueError, match="style"):
        paged_adapter(paged_kernel, style="flashinfer")


def test_paged_and_packed_kernels_written_in_torch_through_the_adapters():
    from proofs_tests.check.test_adapters import _in_a_fresh_process

    _in_a_fresh_process("torch", "torch_serving_adapters()")
