"""``--kind merge`` (refattn.check.merge): its options, its contract's problems, what it hands the callable,
the command line, the isolated worker, and the library adapters (refattn.check.adapters.pairwise_merge).
The catalogue's false alarms and power are in test_serving_bugs.py. Deterministic given the seed."""

import subprocess
import sys
from functools import partial

import numpy as np
import pytest

from refattn.check import check
from refattn.check.adapters import pairwise_merge
from refattn.check.merge import MERGE_CASES, states
from refattn.check.serving_bugs import merge_kernel


def _flashinfer_style(v_a, s_a, v_b, s_b):
    """flashinfer's ``merge_state`` in NumPy: base-2 lse, ``(T, N)``."""
    m = np.maximum(s_a, s_b)
    m = np.where(np.isinf(m), 0, m)
    a, b = np.exp2(s_a - m), np.exp2(s_b - m)
    t = a + b
    st = np.where(t > 0, t, 1)
    return v_a * (a / st)[..., None] + v_b * (b / st)[..., None], np.where(t > 0, m + np.log2(st), -np.inf)


def _vllm_style(output, prefix_output, prefix_lse, suffix_output, suffix_lse, output_lse, *, guarded=True):
    """vLLM's ``merge_attn_states`` in NumPy, in place: lse ``(N, T)``, an infinite lse read as empty."""
    p = np.where(np.isinf(prefix_lse), -np.inf, prefix_lse)
    s = np.where(np.isinf(suffix_lse), -np.inf, suffix_lse)
    m = np.maximum(p, s)
    g = np.where(np.isinf(m), 0, m) if guarded else m
    with np.errstate(invalid="ignore"):
        a, b = np.exp(p - g), np.exp(s - g)
        t = a + b
        st = np.where(t > 0, t, 1) if guarded else t
        output[...] = prefix_output * (a / st).T[..., None] + suffix_output * (b / st).T[..., None]
        output_lse[...] = np.where(t > 0, g + np.log(st), np.inf) if guarded else g + np.log(st)


def test_the_library_styles_pass_through_the_adapter(seed):
    assert check(pairwise_merge(_flashinfer_style), "merge", lse_base="2", lse_layout="TN", seed=seed,
                 isolate=False).passed
    assert check(pairwise_merge(_vllm_style, style="vllm"), "merge", empty_lse="+inf", seed=seed, isolate=False).passed


def test_an_unguarded_merge_fails_only_where_every_state_is_empty_and_passes_with_empty_rows_any(seed):
    """vLLM's kernel subtracts max_lse unguarded: NaN only for a row whose two states are both empty (never
    reached where the suffix holds the token itself); ``empty_rows="any"`` leaves those rows unjudged."""
    fn = pairwise_merge(partial(_vllm_style, guarded=False), style="vllm")
    rep = check(fn, "merge", empty_lse="+inf", seed=seed, isolate=False)
    assert {v.check for v in rep.failures} == {"rows with no key in any state"}, rep.format_table()
    assert check(fn, "merge", empty_lse="+inf", empty_rows="any", seed=seed, isolate=False).passed


def test_the_states_are_real_split_states_in_the_claimed_precision():
    rng = np.random.default_rng(0)
    by_name = {c.name: c for c in MERGE_CASES}
    outs, lses = states(by_name["an empty split"], rng)
    assert outs.dtype == lses.dtype == np.float32 and outs.shape == (4, 5, 4, 16) and lses.shape == (4, 4, 5)
    assert np.all(lses[1] == -np.inf) and np.all(outs[1] == 0)  # the empty chunk
    outs, lses = states(by_name["lses near +200"], rng, "float64")
    assert outs.dtype == np.float64 and np.all(lses > 150)
    assert {c.D for c in MERGE_CASES} >= {512, 128} and max(c.T for c in MERGE_CASES) > 256


@pytest.mark.parametrize("options, match", [
    (dict(empty_rows="nan"), "empty_rows"), (dict(precision="float16"), "precision"),
    (dict(lse_base="10"), "lse_base"), (dict(lse_layout="NTH"), "lse_layout"), (dict(empty_lse="nan"), "empty_lse"),
    (dict(layout="BNTH"), "layout"),
])
def test_bad_options_name_themselves(options, match):
    with pytest.raises((TypeError, ValueError), match=match):
        check(merge_kernel, "merge", **options)


def test_merge_options_are_refused_by_other_kinds():
    with pytest.raises(ValueError, match="lse_base"):
        check(merge_kernel, "exact", lse_base="2")


def test_a_wrong_shape_or_an_exception_fails_the_case_and_a_two_state_function_gets_a_hint(seed):
    rep = check(lambda outs, lses: (outs[0], lses[0].T), "merge", seed=seed, isolate=False)
    assert any("shape" in v.meaning for v in rep.failures)
    rep = check(_flashinfer_style, "merge", seed=seed, isolate=False)
    assert not rep.passed and any("pairwise_merge" in n for n in rep.notes), rep.notes


def test_the_command_line_and_the_worker(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("from functools import partial\nfrom refattn.check.serving_bugs import merge_kernel\n"
                   "good = partial(merge_kernel, base='2', layout='TN')\n"
                   "bad = partial(merge_kernel, fault='lse as the max')\n")
    run = lambda fn, *flags: subprocess.run([sys.executable, "-m", "refattn", "check", f"{src}:{fn}", "--kind", "merge",  # noqa: E731
                                             *flags], capture_output=True, text=True, timeout=300)
    ok = run("good", "--lse-base", "2", "--lse-layout", "TN")
    assert ok.returncode == 0 and "RESULT: PASS" in ok.stdout, ok.stdout + ok.stderr
    assert "--kind merge --precision float32" in ok.stdout and "--lse-base 2" in ok.stdout
    bad = run("bad")
    assert bad.returncode == 1 and "the states' max lse" in bad.stdout
    wrong = run("good", "--lse-base", "3")
    assert wrong.returncode == 2 and "--lse-base" in wrong.stderr and "Traceback" not in wrong.stderr


def test_a_merge_written_in_torch_through_the_adapter():
    from proofs_tests.check.test_adapters import _in_a_fresh_process

    _in_a_fresh_process("torch", "torch_pairwise_merge()")
