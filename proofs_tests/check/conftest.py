"""Shared by the kind tests: run refattn's correct implementations and planted defects
(refattn.check.planted) through the checker.

These fixtures judge the verdict logic, so they call the implementations in this process
(``isolate=False``): the worker process changes where a call runs, not what is judged, and it is
tested on its own in proofs_tests/check/test_isolation.py. A statistical check makes thousands of
calls, and pickling each through a pipe would multiply the suite's time by five."""

import pytest

from refattn.check import check
from refattn.check.planted import CATALOGUE, CORRECT


@pytest.fixture
def passes():
    """``passes(name, seed)``: the correct implementation ``name`` passes every check at alpha = 1e-6."""
    def run(name, seed):
        p = CORRECT[name]
        rep = check(p.fn, p.kind, seed=seed, alpha=1e-6, isolate=False, **p.options)
        assert rep.passed, rep.format_table()
    return run


@pytest.fixture
def caught():
    """``caught(name, seed)``: the planted defect ``name`` fails its named check at the defaults
    (alpha = 1e-3) on two seeds."""
    def run(name, seed):
        p = CATALOGUE[name]
        for s in (seed, seed + 1000):
            rep = check(p.fn, p.kind, seed=s, isolate=False, **p.options)
            assert any(v.check == p.fails for v in rep.failures), rep.format_table()
    return run
