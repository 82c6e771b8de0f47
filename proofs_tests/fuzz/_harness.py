"""Run fuzz cases in a child process: a crash or a hang is a finding, not a lost suite."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

from proofs_tests.fuzz._grid import ENTRY_POINTS, Case, Outcome

RUNNER = Path(__file__).with_name("_runner.py")
ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 120.0  # importing refattn and Numba's first compile


def _describe(code):
    if code is not None and code < 0:
        try:
            return f"crashed: {signal.Signals(-code).name}"
        except ValueError:
            return f"crashed: signal {-code}"
    return f"crashed: exit code {code}"


def run_cases(cases: list[Case]) -> list[Outcome]:
    """Outcomes of ``cases``, in order; the runner is restarted after a crash or a timeout."""
    outcomes: list[Outcome] = []
    todo = list(cases)
    extra = os.environ.get("REFATTN_FUZZ_EXTRA_PATH")  # tests plant entries through a sitecustomize there
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (extra, str(ROOT)) if p), PYTHONWARNINGS="ignore")
    while todo:
        proc = subprocess.Popen([sys.executable, str(RUNNER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=env)
        proc.stdin.write(json.dumps([[c.entry, c.argument, c.mutation] for c in todo]))
        proc.stdin.close()
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        current, deadline, done_here = None, time.monotonic() + START_TIMEOUT, 0
        stopped = None
        while True:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                proc.kill()
                proc.wait()
                stopped = "timeout"
                break
            line = proc.stdout.readline()
            if not line:
                proc.wait()
                stopped = "crash"
                break
            if line.startswith("START "):
                current = int(line.split()[1])
                entry = ENTRY_POINTS.get(todo[current].entry)
                deadline = time.monotonic() + (entry.timeout if entry else 60.0)
            elif line.startswith("DONE "):
                out = json.loads(line[5:])
                outcomes.append(Outcome(todo[current].id, out["status"], out["detail"]))
                done_here += 1
                current = None
                if done_here == len(todo):
                    proc.wait()
                    break
        sel.close()
        proc.stdout.close()
        if stopped is None:
            break
        if current is None:  # died between cases (or before the first): count it against the next
            current = done_here
            if current >= len(todo):
                break
        detail = "no answer in time" if stopped == "timeout" else _describe(proc.returncode)
        outcomes.append(Outcome(todo[current].id, stopped, detail))
        todo = todo[current + 1:]
    return outcomes
