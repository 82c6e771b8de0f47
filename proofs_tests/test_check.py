"""refattn.check: loading targets, bad input becomes a verdict, diagnoses, the report, the CLI."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from refattn.check import check
from refattn.cli import main
from refattn.check.planted import CATALOGUE, exact_attention
from refattn.check.verdict import CheckReport, Verdict, holm

USER_MODULE = textwrap.dedent('''
    import numpy as np
    from refattn.check.planted import exact_attention

    def good(q, k, v, causal=False, mask=None):
        return exact_attention(q, k, v, causal=causal, mask=mask)

    def top_left(q, k, v, causal=False, mask=None):
        return exact_attention(q, k, v, causal=causal, mask=mask, alignment="top_left")

    def raises(q, k, v):
        raise RuntimeError("boom")

    def nan(q, k, v):
        return np.full((q.shape[-2], v.shape[-1]), np.nan)

    def wrong_shape(q, k, v):
        return np.zeros(3)

    def ints(q, k, v):
        return np.zeros((q.shape[-2], v.shape[-1]), dtype=int)

    def not_array(q, k, v):
        return object()

    def exits(m, d, seed):
        raise SystemExit(3)

    def hash_floats(x, seed):
        return np.random.default_rng(seed).random(x.shape[0])

    not_callable = 3
''')


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "user_impl.py"
    path.write_text(USER_MODULE)
    return path


def test_holm_controls_and_steps_down():
    assert holm([0.01, 0.04, 0.03], 0.05).tolist() == [True, False, False]
    assert holm([1e-9, 0.02, 0.04], 0.05).tolist() == [True, True, True]
    assert holm([], 0.05).tolist() == []


def test_report_table_json_and_exit_code():
    rep = CheckReport("t", "kernel", 1e-3, 0)
    rep.add(Verdict("a", None, "stat", statistic=5.0, pvalue=1e-5, statistical=True))
    rep.add(Verdict("b", None, "stat", statistic=1.0, pvalue=0.5, statistical=True))
    rep.add(Verdict("c", None, "skipped"))
    rep.finalize()
    assert [v.passed for v in rep.verdicts] == [False, True, None]
    assert rep.exit_code == 1 and "RESULT: FAIL (1 of 3" in rep.format_table()
    d = json.loads(rep.to_json())
    assert [c["verdict"] for c in d["checks"]] == ["FAIL", "PASS", "skip"] and d["passed"] is False


def test_exact_correct_passes_every_case(user_file):
    rep = check(f"{user_file}:good", "exact")
    print(rep.format_table())
    assert rep.passed and all(v.passed for v in rep.verdicts), rep.format_table()
    assert len(rep.verdicts) == 11


@pytest.mark.parametrize("name, fault", [
    ("wrong scale", "scale 1 instead of 1/sqrt(H)"),
    ("other causal alignment", "the other causal alignment"),
    ("off-by-one causal (exact)", "causal diagonal excluded"),
    ("missing max subtraction", "missing max subtraction"),
    ("softmax over the wrong axis", "softmax over the query axis"),
])
def test_exact_faults_are_named(name, fault):
    """Deterministic: each planted fault fails its case and the diagnosis names it."""
    planted = CATALOGUE[name]
    rep = check(planted.fn, "exact")
    failed = {v.check: v for v in rep.failures}
    assert planted.fails in failed, rep.format_table()
    assert fault in failed[planted.fails].meaning, failed[planted.fails].meaning


def test_mask_inverted_is_named():
    rep = check(lambda q, k, v, mask=None: exact_attention(q, k, v, mask=~mask), "exact")
    (v,) = [v for v in rep.verdicts if v.check == "mask"]
    assert v.passed is False and "mask inverted" in v.meaning


def test_float16_kernel_judged_at_its_precision():
    """A kernel computing in its inputs' dtype (float16 included) passes; a float32 kernel fed
    float64 is less accurate than float64 allows and fails; a 1% error fails everywhere."""
    rep = check(exact_attention, "exact")  # numpy computes float16 inputs in float16
    assert rep.passed, rep.format_table()

    def f32(q, k, v):
        return exact_attention(*(np.asarray(a, np.float32) for a in (q, k, v)))

    failed = {v.check for v in check(f32, "exact").failures}
    assert "T != S" in failed and "float32 inputs" not in failed and "float16 inputs" not in failed

    def sloppy(q, k, v):
        return exact_attention(q, k, v) * 1.01

    rep = check(sloppy, "exact")
    assert {v.check for v in rep.failures} >= {"float16 inputs", "float32 inputs", "T != S"}


@pytest.mark.parametrize("name, what", [
    ("raises", "raised RuntimeError: boom"), ("nan", "NaN/Inf"), ("wrong_shape", "returned shape (3,)"),
    ("ints", "expected a real floating array"), ("not_array", "dtype object"),
])
def test_bad_callables_become_failing_verdicts(user_file, name, what):
    rep = check(f"{user_file}:{name}", "exact")
    assert not rep.passed and rep.exit_code == 1
    assert any(what in v.meaning for v in rep.failures), rep.format_table()


def test_statistical_kinds_survive_bad_callables(user_file):
    rep = check(f"{user_file}:exits", "projection", n_draws=20)
    assert rep.failures and "SystemExit" in rep.failures[0].meaning
    rep = check(f"{user_file}:hash_floats", "hash", n_draws=20)
    assert rep.failures and "integer bucket ids" in rep.failures[0].meaning
    rep = check(lambda q, k, seed: np.zeros((2, 2)), "kernel", n_draws=20)
    assert "returned shape (2, 2)" in rep.failures[0].meaning


@pytest.mark.parametrize("target, what", [("not_callable", "not callable"), ("missing", "no attribute")])
def test_load_failures_are_verdicts(user_file, target, what):
    rep = check(f"{user_file}:{target}", "exact")
    assert [v.check for v in rep.failures] == ["load"] and what in rep.failures[0].meaning


def test_module_that_raises_on_import(tmp_path):
    (tmp_path / "broken.py").write_text("raise ImportError('half-installed')\n")
    rep = check(f"{tmp_path / 'broken.py'}:fn", "exact")
    assert "ImportError: half-installed" in rep.failures[0].meaning


def test_module_path_target():
    rep = check("refattn.check.planted:exact_attention", "exact")
    assert rep.passed


def test_budget_truncates_and_says_so():
    slow_calls = []

    def slow(m, d, seed):
        import time
        slow_calls.append(seed)
        time.sleep(0.002)
        return np.random.default_rng(seed).standard_normal((m, d))

    rep = check(slow, "projection", n_draws=2000, budget=0.2)
    assert len(slow_calls) < 2000 and any("budget reached" in n for n in rep.notes), rep.notes


def test_same_seed_same_report():
    fn = CATALOGUE["2% row scale"].fn
    a = check(fn, "projection", n_draws=200, seed=3).to_dict()
    b = check(fn, "projection", n_draws=200, seed=3).to_dict()
    for d in (a, b):
        d.pop("elapsed_s")
    assert a == b


@pytest.mark.parametrize("argv", [
    ["check", "x.py", "--kind", "exact"],
    ["check", "no_such_file.py:fn", "--kind", "exact"],
    ["check", "no_such_module_xyz:fn", "--kind", "exact"],
    ["check", "refattn.check.planted:exact_attention", "--kind", "nope"],
    ["check", "refattn.check.planted:exact_attention"],
    ["check", "refattn.check.planted:projection_sampler", "--kind", "projection", "--draws", "5"],
    ["check", "refattn.check.planted:exact_attention", "--kind", "exact", "--seed", "-1"],
    ["check", "refattn.check.planted:favorpp_kernel", "--kind", "kernel", "--method", "favorpp", "--A", "0.2"],
    ["check", "refattn.check.planted:favorpp_kernel", "--kind", "kernel", "--method", "favorpp", "--A", "nan"],
    ["check", "refattn.check.planted:kernel_estimator", "--kind", "kernel", "--A", "-0.1"],
])
def test_cli_usage_errors_exit_2(argv, capsys):
    """In-process (main() is what the console script runs): one line on stderr, exit 2."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("refattn") and "Traceback" not in "\n".join(err)


def test_cli_pass_fail_json(user_file, capsys):
    assert main(["check", f"{user_file}:good", "--kind", "exact"]) == 0
    assert "RESULT: PASS" in capsys.readouterr().out
    assert main(["check", f"{user_file}:top_left", "--kind", "exact", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    failed = {c["check"]: c for c in out["checks"] if c["verdict"] == "FAIL"}
    assert "other causal alignment" in failed["causal T < S"]["meaning"]


def test_cli_user_crash_is_a_verdict_not_a_traceback(user_file):
    proc = subprocess.run([sys.executable, "-m", "refattn", "check", f"{user_file}:raises", "--kind", "exact"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout
    assert "raised RuntimeError: boom" in proc.stdout


def test_progress_bar_goes_to_stderr(capsys):
    from refattn.check.planted import projection_sampler

    rep = check(projection_sampler, "projection", n_draws=50, progress=True)
    captured = capsys.readouterr()
    assert "projection draws" in captured.err and captured.out == ""
    assert rep.verdicts


def test_favorpp_at_a_given_A():
    """FAVOR++ at an explicit A: the closed-form variance uses that A. A correct estimator at A
    (iid rows, m = 64) passes; judged at another A, the variance check fails (the mean checks
    cannot: FAVOR++ is unbiased for every A < 1/8). False-failure probability <= 1e-6
    (alpha) for the first; the second is a power twin (the closed form at A = 0.1 is about 300
    times the variance at A = -0.1: measured p-values below 1e-300)."""
    from functools import partial

    from refattn.check.planted import favorpp_kernel

    fixed = partial(favorpp_kernel, A=-0.1)
    assert check(fixed, "kernel", method="favorpp", projection="gaussian", m=64, A=-0.1, alpha=1e-6).passed
    rep = check(fixed, "kernel", method="favorpp", projection="gaussian", m=64, A=0.1)
    assert {v.check for v in rep.failures} >= {"variance (m = 64)"}, rep.format_table()
    assert not any(v.check.startswith("unbiased") for v in rep.failures), rep.format_table()

