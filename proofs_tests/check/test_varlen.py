"""``--kind varlen`` (refattn.check.varlen): what it hands the callable, its skips and options, the
command line. The catalogue's false alarms and power are in test_serving_bugs.py. Deterministic."""

import subprocess
import sys

import numpy as np
import pytest

from refattn.check import check
from refattn.check.serving_bugs import varlen_kernel
from refattn.check.varlen import VARLEN_CASES


def test_the_callable_gets_flash_attn_varlen_arguments(seed):
    seen = []

    def spy(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=False, window_size=(-1, -1),
            seqused_k=None):
        seen.append((q.dtype, q.shape, k.shape, cu_seqlens_q.dtype, int(max_seqlen_q), int(max_seqlen_k),
                     seqused_k, bool(np.isnan(k).any())))
        return varlen_kernel(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, window_size,
                             seqused_k)

    rep = check(spy, "varlen", gqa=True, precision="float16", seed=seed, isolate=False)
    assert rep.passed, rep.format_table()
    assert all(s[0] == np.float16 and s[1][1] == 4 and s[2][1] == 2 and s[3] == np.int32 for s in seen)
    by_case = dict(zip([c.name for c in VARLEN_CASES], seen))
    assert by_case["seqused_k: padded key slots"][6] is not None and by_case["seqused_k: padded key slots"][7]
    assert not any(s[7] for n, s in by_case.items() if n != "seqused_k: padded key slots")
    assert by_case["decode: one query per sequence"][4:6] == (1, 128)


def test_a_case_needing_a_keyword_is_skipped_and_rejected_head_dims_are_unsupported(seed):
    def plain(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k):
        if q.shape[-1] == 192:
            raise ValueError("head dim 192 unsupported")
        return varlen_kernel(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)

    rep = check(plain, "varlen", seed=seed, isolate=False)
    skipped = {v.check: v.meaning for v in rep.verdicts if v.passed is None}
    assert rep.passed and "fn takes no causal= keyword" in skipped["causal, T < S and T > S per sequence"]
    assert "seqused_k" in skipped["seqused_k: padded key slots"]
    assert {v.check for v in rep.verdicts if v.passed} >= {"3 sequences, T = S", "a sequence with no keys"}


def test_rows_without_keys_must_be_zeros_unless_any(seed):
    def nan_rows(*args, **kw):
        out = varlen_kernel(*args, **kw)
        cu_k = args[4]
        if np.any(np.diff(cu_k) == 0):  # the sequence with no keys: NaN, as an unguarded 0/0
            b = int(np.flatnonzero(np.diff(cu_k) == 0)[0])
            out[args[3][b]:args[3][b + 1]] = np.nan
        return out

    rep = check(nan_rows, "varlen", seed=seed, isolate=False)
    assert {v.check for v in rep.failures} == {"a sequence with no keys"}
    assert "not zeros" in rep.failures[0].meaning
    assert check(nan_rows, "varlen", empty_rows="any", seed=seed, isolate=False).passed
    with pytest.raises(ValueError, match="empty_rows"):
        check(nan_rows, "varlen", empty_rows="nan")


def test_the_command_line(tmp_path):
    src = tmp_path / "v.py"
    src.write_text("from functools import partial\nfrom refattn.check.serving_bugs import varlen_kernel\n"
                   "good = varlen_kernel\nbad = partial(varlen_kernel, fault='causal top-left per sequence')\n")
    run = lambda fn, *flags: subprocess.run([sys.executable, "-m", "refattn", "check", f"{src}:{fn}",  # noqa: E731
                                             "--kind", "varlen", *flags], capture_output=True, text=True, timeout=300)
    ok = run("good", "--gqa", "--precision", "bfloat16")
    assert ok.returncode == 0 and "RESULT: PASS" in ok.stdout and "--gqa" in ok.stdout, ok.stdout + ok.stderr
    bad = run("bad")
    assert bad.returncode == 1 and "aligned top-left within each sequence" in bad.stdout


def test_the_library_adapter_hands_over_flash_attn_varlen_arguments(seed):
    from refattn.check.adapters import varlen_adapter

    seen = []

    def spy(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **kw):
        seen.append((cu_seqlens_q.dtype, type(max_seqlen_q), sorted(kw)))
        return varlen_kernel(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **kw)

    rep = check(varlen_adapter(spy, framework="numpy"), "varlen", seed=seed, isolate=False)
    assert rep.passed and not any(v.passed is None for v in rep.verdicts), rep.format_table()
    assert all(s[0] == np.int32 and s[1] is int for s in seen) and ["seqused_k"] in [s[2] for s in seen]
    with pytest.raises(ValueError, match="framework"):
        varlen_adapter(spy, framework="cupy")



def test_the_backward_gets_dout_in_the_packed_layout_and_is_judged_per_sequence(seed):
    from refattn.check.serving_bugs import varlen_backward_kernel

    seen = []

    def spy(q, k, v, dout, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=False,
            window_size=(-1, -1), seqused_k=None):
        seen.append((q.dtype, dout.shape == q.shape[:2] + v.shape[2:], k.shape[1]))
        return varlen_backward_kernel(q, k, v, dout, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal,
                                      window_size, seqused_k)

    rep = check(spy, "varlen_backward", precision="float32", gqa=True, seed=seed, isolate=False)
    assert rep.passed and not any(v.passed is None for v in rep.verdicts), rep.format_table()
    assert all(s[0] == np.float32 and s[1] and s[2] == 2 for s in seen)

    def plain(q, k, v, dout, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k):
        return varlen_backward_kernel(q, k, v, dout, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)

    rep = check(plain, "varlen_backward", seed=seed, isolate=False)
    assert rep.passed and any("causal=" in v.meaning for v in rep.verdicts if v.passed is None)
    with pytest.raises(ValueError, match="precision"):
        check(plain, "varlen_backward", precision="bfloat16")
