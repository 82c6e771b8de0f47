"""`refattn check` (refattn.cli.check): usage errors exit 2 in one line, pass / fail exit codes and
JSON, a user's crash is a verdict, the progress bar goes to stderr.
"""

import json
import subprocess
import sys

import pytest

from refattn.check import check
from refattn.cli import main


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


def test_the_report_header_reruns_the_same_check(capsys):
    """The table's first line is a command that reproduces the run: same options, same verdicts."""
    import shlex

    assert main(["check", "refattn.check.planted:kernel_estimator", "--kind", "kernel", "--features", "64",
                 "--draws", "100", "--seed", "5", "--alpha", "0.01", "--no-progress"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    argv = shlex.split(header)
    assert argv[:2] == ["refattn", "check"] and {"--features", "--draws", "--seed", "--alpha"} <= set(argv)
    assert main([*argv[1:], "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["command"] == header and again["seed"] == 5 and again["alpha"] == 0.01
    first = check("refattn.check.planted:kernel_estimator", "kernel", m=64, n_draws=100, seed=5, alpha=0.01)
    assert [c["pvalue"] for c in again["checks"]] == [v.pvalue for v in first.verdicts]
