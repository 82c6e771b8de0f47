"""refattn.check.reaper: the worker's session and the orphans that left it are ended, processes the
checker had before are not. (End to end, through refattn check: test_isolation.) Deterministic."""

import os
import subprocess
import sys
import time

import pytest

from refattn.check import reaper

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and prctl are Linux's")


def _alive(pid):
    return reaper._stat(pid) is not None


def test_a_session_and_an_adopted_orphan_are_ended_and_reaped():
    assert reaper.become_subreaper()
    known = reaper.children()
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    known_with_bystander = known | {bystander.pid}
    # a "worker" in its own session that leaves a grandchild in yet another session, then exits
    r, w = os.pipe()
    worker = subprocess.Popen([sys.executable, "-c", (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.write({w}, str(os.getpid()).encode()); time.sleep(30)\n"
        "    os._exit(0)\n"
        "time.sleep(30)\n")], start_new_session=True, pass_fds=(w,))
    os.close(w)
    orphan = int(os.read(r, 64))
    os.close(r)
    for _ in range(100):  # its parent exited: adopted by this process (a subreaper)
        if reaper._stat(orphan) and reaper._stat(orphan)[0] == os.getpid():
            break
        time.sleep(0.02)
    assert reaper._stat(orphan)[0] == os.getpid()
    try:
        assert reaper.end(worker.pid, known_with_bystander) >= 1
        worker.wait(5)
        assert not _alive(orphan) and not _alive(worker.pid)
        assert _alive(bystander.pid)  # a child the checker had before: not touched
    finally:
        bystander.kill()
        bystander.wait()


def test_stat_reads_parent_and_session():
    ppid, sid = reaper._stat(os.getpid())
    assert ppid == os.getppid() and sid == os.getsid(0)
    assert reaper._stat(2**22 + 12345) is None  # no such process
