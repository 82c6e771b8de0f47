"""The worker process (refattn.check.isolation): the checker fails closed. Every way a callable can
end, stall or damage the process that runs it becomes a failing verdict naming what happened and a
non-zero exit code, the next case still runs in a fresh worker, printing never reaches the
checker's output, and a correct implementation still passes. Deterministic.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from refattn.check import check
from refattn.check.isolation import Worker
from refattn.check.planted import exact_attention


def _first_failure(rep):
    assert not rep.passed and rep.exit_code == 1, rep.format_table()
    return rep.failures[0]


@pytest.mark.parametrize("name,what,says", [
    ("ends_process", "crashed", "exited with code 0"),
    ("segfaults", "crashed", "SIGSEGV"),
    ("raises_unprintable", "raised", "could not be printed"),
    ("calls_sys_exit", "raised", "raised SystemExit"),
    ("interrupts", "raised", "raised KeyboardInterrupt"),
    ("writes_into_v", "mutated", "wrote into its input (v)"),
])
def test_a_failing_call_is_a_failing_verdict(user_file, name, what, says):
    v = _first_failure(check(f"{user_file}:{name}", "exact"))
    assert v.effect == what and says in v.meaning, v


def test_an_allocation_beyond_the_memory_limit_is_a_verdict(user_file):
    v = _first_failure(check(f"{user_file}:allocates", "exact", memory_limit=2 * 2**30))
    assert "MemoryError" in v.meaning and "--memory-limit" in v.meaning


def test_a_hang_is_stopped_at_the_timeout_and_the_worker_restarted(user_file):
    rep = check(f"{user_file}:hangs", "exact", timeout=0.5)
    v = _first_failure(rep)
    assert v.effect == "timeout" and "within 0.5 s" in v.meaning
    assert all(f.effect == "timeout" for f in rep.failures) and len(rep.failures) > 1  # every case ran
    assert any("restarted" in n for n in rep.notes)


def test_writing_into_a_copy_is_not_a_mutation(user_file):
    """Power twin of the mutation check: the same kernel that only writes into its own copy passes."""
    rep = check(f"{user_file}:writes_into_a_copy", "exact")
    assert rep.passed, rep.format_table()


def test_printing_is_captured_and_json_stays_parseable(user_file):
    proc = subprocess.run([sys.executable, "-m", "refattn", "check", f"{user_file}:prints", "--kind", "exact",
                           "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # nothing the callable printed is on stdout
    assert doc["passed"] and "progress: 50%" in doc["output"] and "a C library writes here" in doc["output"]
    table = subprocess.run([sys.executable, "-m", "refattn", "check", f"{user_file}:prints", "--kind", "exact"],
                           capture_output=True, text=True, timeout=300).stdout
    assert "the callable printed:" in table and table.rstrip().endswith("RESULT: PASS")


def test_a_file_targets_folder_is_importable(tmp_path):
    (tmp_path / "helper_mod.py").write_text("from refattn.check.planted import exact_attention as attention\n")
    (tmp_path / "kernel.py").write_text("from helper_mod import attention\n\n"
                                        "def fn(q, k, v, causal=False, mask=None):\n"
                                        "    return attention(q, k, v, causal=causal, mask=mask)\n")
    rep = check(f"{tmp_path / 'kernel.py'}:fn", "exact")
    assert rep.passed, rep.format_table()


def test_callables_from_python_run_in_the_worker_too():
    """A module-level function is pickled into the worker; a lambda is inherited by fork."""
    assert check(exact_attention, "exact").passed
    assert check(lambda q, k, v, causal=False, mask=None: exact_attention(q, k, v, causal=causal, mask=mask),
                 "exact").passed


def test_the_worker_reports_keywords_and_fresh_inputs(user_file):
    with Worker(f"{user_file}:writes_into_v") as w:
        assert set(w.keywords) == {"q", "k", "v", "causal", "mask"}
        v = np.ones((3, 2))
        out, problem = w.call((np.ones((2, 2)), np.ones((3, 2)), v), names=("q", "k", "v"))
        assert out is None and problem.what == "mutated"
        assert np.all(v == 1.0)  # the checker's own array is untouched: the worker wrote into its copy


@pytest.mark.parametrize("kwargs,match", [({"timeout": 0}, "^timeout: must be finite and > 0"),
                                          ({"timeout": "soon"}, "^timeout: expected a number"),
                                          ({"memory_limit": -1}, "^memory_limit: must be finite and > 0")])
def test_bad_limits_name_the_argument(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        check(exact_attention, "exact", **kwargs)


@pytest.mark.parametrize("argv", [["--timeout", "0"], ["--timeout", "x"], ["--memory-limit", "-2"]])
def test_bad_limits_on_the_command_line_exit_2(argv, capsys):
    from refattn.cli import main

    assert main(["check", "refattn.check.planted:exact_attention", "--kind", "exact", *argv]) == 2
