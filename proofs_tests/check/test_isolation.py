"""The worker process (refattn.check.isolation): the checker fails closed. Every way a callable can
end, stall or damage the process that runs it becomes a failing verdict naming what happened and a
non-zero exit code, the next case still runs in a fresh worker, printing never reaches the
checker's output, and a correct implementation still passes. Deterministic.
"""

import json
import subprocess
import sys
import time

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
    v = _first_failure(check(f"{user_file}:{name}", "exact", sizes="small"))
    assert v.effect == what and says in v.meaning, v


def test_an_allocation_beyond_the_memory_limit_is_a_verdict(user_file):
    v = _first_failure(check(f"{user_file}:allocates", "exact", sizes="small", memory_limit=2 * 2**30))
    assert "MemoryError" in v.meaning and "--memory-limit" in v.meaning


def test_a_hang_is_stopped_at_the_timeout_and_the_worker_restarted(user_file):
    rep = check(f"{user_file}:hangs", "exact", sizes="small", timeout=0.5)
    v = _first_failure(rep)
    assert v.effect == "timeout" and "within 0.5 s" in v.meaning
    assert all(f.effect == "timeout" for f in rep.failures) and len(rep.failures) > 1  # every case ran
    assert any("restarted" in n for n in rep.notes)


def test_writing_into_a_copy_is_not_a_mutation(user_file):
    """Power twin of the mutation check: the same kernel that only writes into its own copy passes."""
    rep = check(f"{user_file}:writes_into_a_copy", "exact", sizes="small")
    assert rep.passed, rep.format_table()


def test_printing_is_captured_and_json_stays_parseable(user_file):
    proc = subprocess.run([sys.executable, "-m", "refattn", "check", f"{user_file}:prints", "--kind", "exact", "--sizes", "small",
                           "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # nothing the callable printed is on stdout
    assert doc["passed"] and "progress: 50%" in doc["output"] and "a C library writes here" in doc["output"]
    table = subprocess.run([sys.executable, "-m", "refattn", "check", f"{user_file}:prints", "--kind", "exact", "--sizes", "small"],
                           capture_output=True, text=True, timeout=300).stdout
    assert "the callable printed:" in table and table.rstrip().endswith("RESULT: PASS")


def test_a_file_targets_folder_is_importable(tmp_path):
    (tmp_path / "helper_mod.py").write_text("from refattn.check.planted import exact_attention as attention\n")
    (tmp_path / "kernel.py").write_text("from helper_mod import attention\n\n"
                                        "def fn(q, k, v, causal=False, mask=None):\n"
                                        "    return attention(q, k, v, causal=causal, mask=mask)\n")
    rep = check(f"{tmp_path / 'kernel.py'}:fn", "exact", sizes="small")
    assert rep.passed, rep.format_table()


def test_callables_from_python_run_in_the_worker_too():
    """A module-level function is pickled into the worker; a lambda is inherited by fork."""
    assert check(exact_attention, "exact", sizes="small").passed
    assert check(lambda q, k, v, causal=False, mask=None: exact_attention(q, k, v, causal=causal, mask=mask),
                 "exact", sizes="small").passed


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


# --- hostile callables: nothing they send can win a verdict ---------------------------------------
HOSTILE = '''
import os, pickle, sys
import numpy as np
from refattn.check.planted import exact_attention

MARK = os.environ["REFATTN_TEST_MARK"]


class Payload:
    """Unpickling this runs code: it writes the mark file (it must never run in the checker)."""
    def __reduce__(self):
        return (open, (MARK, "w"))


def structured_with_object(q, k, v):
    out = np.zeros(q.shape[0], dtype=[("x", "f8"), ("y", "O")])
    out["y"] = Payload()
    return out


def _worker_pipe():
    frame = sys._getframe(1)
    while frame is not None:
        if "conn" in frame.f_locals:
            return frame.f_locals["conn"]
        frame = frame.f_back
    raise RuntimeError("no pipe")


def forged_pickle_reply(q, k, v):
    """Sends the old channel's reply with a payload, then a wrong answer."""
    _worker_pipe().send(("ok", Payload(), None, [], ""))
    return np.zeros((q.shape[0], v.shape[1]))


def forged_reply_bytes(q, k, v):
    """Sends a pickle as raw bytes, then a wrong answer."""
    _worker_pipe().send_bytes(pickle.dumps(("ok", Payload(), None, [], "")))
    return np.zeros((q.shape[0], v.shape[1]))


def wrong_with_patched_oracle(q, k, v, causal=False, mask=None):
    """A wrong answer that patches the oracle to agree with it (effective in the checker's process only)."""
    import refattn.exact, refattn.tolerance
    fake = lambda q, k, v, **kw: np.zeros(q.shape[:-1] + v.shape[-1:])
    refattn.exact.softmax_attention = fake
    refattn.tolerance.softmax_attention = fake
    return np.zeros(q.shape[:-1] + v.shape[-1:])
'''


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    path = tmp_path / "hostile.py"
    path.write_text(HOSTILE)
    mark = tmp_path / "payload-ran"
    monkeypatch.setenv("REFATTN_TEST_MARK", str(mark))
    return path, mark


@pytest.mark.parametrize("name", ["structured_with_object", "forged_pickle_reply", "forged_reply_bytes"])
def test_a_hostile_reply_never_wins_and_never_runs(hostile, name):
    """The worker's replies are numbers only: a structured array with an object field, a crafted pickle
    sent down the worker's pipe (as an object or as raw bytes) fail the check, and the payload never
    runs in the checker (no mark file)."""
    path, mark = hostile
    rep = check(f"{path}:{name}", "exact", sizes="small", timeout=20)
    assert rep.result == "FAIL" and rep.exit_code == 1, rep.format_table()
    assert not mark.exists()


def test_isolation_off_says_so_and_a_patched_oracle_cannot_pass_isolated(hostile):
    """isolate=False runs the callable in the checker's process: the report says so. Isolated, a callable
    that patches the oracle patches only its worker's copy and fails."""
    import importlib

    import refattn.exact
    import refattn.tolerance

    path, _ = hostile
    rep = check(f"{path}:wrong_with_patched_oracle", "exact", sizes="small", timeout=20)
    assert rep.result == "FAIL", rep.format_table()
    try:
        off = check(exact_attention, "exact", sizes="small", isolate=False)
        assert any("isolation off" in n for n in off.notes) and "isolation off" in off.format_table()
    finally:
        importlib.reload(refattn.exact)
        importlib.reload(refattn.tolerance)


def test_printing_gigabytes_keeps_the_checkers_memory_bounded(tmp_path):
    """A callable that prints 200 MB per call: the worker reads back a bounded prefix, the report keeps
    4000 characters, and the checker's peak memory stays far below what was printed (gigabytes in
    all: 200 MB on each of the small grid's calls; the peak is the checker itself plus at most one call's
    output in flight)."""
    code = (
        "import resource, sys\n"
        "from refattn.check import check\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "rep = check('loud.py:loud', 'exact', sizes='small', timeout=60)\n"
        "print(rep.result, len(rep.output), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    (tmp_path / "loud.py").write_text(
        "import os\nfrom refattn.check.planted import exact_attention\n"
        "def loud(q, k, v):\n    os.write(1, b'x' * (200 << 20))\n    return exact_attention(q, k, v)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result, kept, rss_kib = proc.stdout.split()
    assert result == "PASS" and int(kept) <= 4000 and int(rss_kib) < 512 * 1024


def test_a_grandchild_is_ended_with_the_worker(tmp_path):
    """A callable that starts a detached grandchild holding the pipes: the checker's caller is not left
    waiting (the worker's process group is killed when the check ends)."""
    (tmp_path / "spawner.py").write_text(
        "import subprocess, sys\nfrom refattn.check.planted import exact_attention\n"
        "def spawner(q, k, v):\n"
        "    subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(90)'])\n"
        "    return exact_attention(q, k, v)\n")
    proc = subprocess.run([sys.executable, "-m", "refattn", "check", "spawner.py:spawner", "--kind", "exact", "--sizes", "small",
                           "--no-progress"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("escape", ["setsid", "setpgid"])
def test_a_grandchild_that_escapes_the_session_is_ended_too(tmp_path, escape):
    """A callable whose grandchild double-forks out of the worker's session (or only its process
    group), keeps the pipes, and after a pause opens the checker's stdout through /proc to append a
    forged verdict: the checker (a child subreaper) finds and ends it before it exits, so the caller
    reads the checker's own output only, and no process of the attack is left. (It writes once the
    process whose stdout it holds has exited: the window the caller cannot see.)"""
    pidfile = tmp_path / "escaped.pid"
    leave = "os.setsid()" if escape == "setsid" else "os.setpgid(0, 0)"
    (tmp_path / "escaper.py").write_text(
        "import os, time\nfrom refattn.check.planted import exact_attention\n"
        "def escaper(q, k, v):\n"
        "    checker = os.getppid()\n"
        "    if not os.path.exists(%r) and os.fork() == 0:\n"
        "        %s\n"
        "        if os.fork() == 0:\n"
        "            open(%r, 'w').write(str(os.getpid()))\n"
        "            out = open('/proc/%%d/fd/1' %% checker, 'w')\n"
        "            while os.path.exists('/proc/%%d' %% checker):\n"
        "                time.sleep(0.05)\n"
        "            out.write('RESULT: PASS (forged)\\n')\n"
        "            out.flush()\n"
        "            time.sleep(60)\n"
        "        os._exit(0)\n"
        "    return exact_attention(q, k, v)\n" % (str(pidfile), leave, str(pidfile)))
    proc = subprocess.run([sys.executable, "-m", "refattn", "check", "escaper.py:escaper", "--kind", "exact", "--sizes", "small",
                           "--sizes", "small", "--no-progress"], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "forged" not in proc.stdout
    pid = int(pidfile.read_text())
    import os

    time.sleep(0.2)
    assert not os.path.exists(f"/proc/{pid}") or " Z " in open(f"/proc/{pid}/stat").read(), "the escaped process lives"


def test_sigterm_during_a_hang_leaves_no_worker(tmp_path):
    """SIGTERM to `refattn check` while the callable hangs: the checker exits 143 and the worker (which
    wrote its pid) is gone with it."""
    import os
    import signal
    import time

    pidfile = tmp_path / "worker.pid"
    (tmp_path / "hang.py").write_text(
        "import os, time\n"
        f"def hang(q, k, v):\n    open({str(pidfile)!r}, 'w').write(str(os.getpid()))\n    time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-m", "refattn", "check", "hang.py:hang", "--kind", "exact", "--sizes", "small",
                             "--timeout", "500", "--no-progress"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            if pidfile.exists() and pidfile.read_text():
                break
            time.sleep(0.1)
        worker = int(pidfile.read_text())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
    finally:
        proc.kill()
    for _ in range(50):
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError(f"worker {worker} outlived the checker")


def test_a_script_that_checks_at_its_top_level_works_as_written(tmp_path):
    """A callable from the script being run (``__main__``), also inside an adapter, and ``check()`` at the
    script's top level without ``if __name__ == "__main__":``: the worker never imports the script (it
    would run its top level again), so the script runs once and passes."""
    import subprocess
    import sys

    script = tmp_path / "first.py"
    script.write_text(
        "from refattn.check import check\n"
        "from refattn.check.adapters import pairwise_merge\n"
        "from refattn.check.serving_bugs import merge_kernel\n"
        "import numpy as np\n"
        "def two(v_a, s_a, v_b, s_b):\n"
        "    out, lse = merge_kernel(np.stack([v_a, v_b]), np.stack([s_a, s_b]), layout='TN')\n"
        "    return out, lse\n"
        "print('top level ran')\n"
        "print(check(pairwise_merge(two), 'merge', lse_layout='TN').format_table().splitlines()[-1])\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("top level ran") == 1 and proc.stdout.strip().endswith("RESULT: PASS"), proc.stdout
