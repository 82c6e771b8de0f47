"""Ending everything a worker started, including what tried to escape.

The worker runs in its own session, so ``killpg`` ends it and what it started. A process can
leave that group (``setpgid``) or the session (``setsid``, then a double fork: its parent exits and
it is orphaned). On Linux the checker makes itself a *child subreaper*
(``prctl(PR_SET_CHILD_SUBREAPER)``, ``man 2 prctl``): orphans of its descendants are re-parented to
it instead of to init, so it can still find them. [`end`][refattn.check.reaper.end] kills every
process of the worker's session and every child adopted since the worker started that is not in
the checker's own session, waits for them (no zombies are left) and repeats until none is found.
Elsewhere (no ``/proc``) only the process group is ended.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import time

__all__ = ["become_subreaper", "children", "end"]

_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make this process the child subreaper of its descendants (Linux); whether it is."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _stat(pid: int):
    """``(ppid, session)`` of a live process from ``/proc/<pid>/stat``, or ``None`` once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()  # after "pid (comm) ": state ppid pgrp session ...
    if fields[0] in (b"Z", b"X"):
        return None  # already dead: nothing left to kill (its parent reaps it)
    return int(fields[1]), int(fields[3])


def _processes():
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    return [int(n) for n in names if n.isdigit()]


def children() -> set[int]:
    """The pids of this process's children now (``/proc``; empty where there is none)."""
    me = os.getpid()
    return {pid for pid in _processes() if (st := _stat(pid)) is not None and st[0] == me}


def _targets(session: int, known: set[int]) -> list[int]:
    me, mine = os.getpid(), os.getsid(0)
    out = []
    for pid in _processes():
        st = _stat(pid)
        if st is None or pid == me:
            continue
        ppid, sid = st
        if sid == session or (ppid == me and sid != mine and pid not in known):
            out.append(pid)
    return out


def end(session: int, known: set[int] = frozenset(), *, rounds: int = 20) -> int:
    """Kill the worker's session ``session`` and the children this process adopted (not in
    ``known``: its children before the worker started) that left it; reap the adopted ones. The
    number of processes killed."""
    try:
        os.killpg(session, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        pass
    killed = 0
    for _ in range(rounds):
        found = _targets(session, set(known))
        if not found:
            break
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.02)
        for pid in found:
            try:
                os.waitpid(pid, os.WNOHANG)  # an adopted child: reaped here (others are not ours to wait on)
            except ChildProcessError:
                pass
    return killed
