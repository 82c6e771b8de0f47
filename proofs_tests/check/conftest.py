"""Shared by the kind tests: run refattn's correct implementations and planted defects
(refattn.check.planted) through the checker."""

import pytest

from refattn.check import check
from refattn.check.planted import CATALOGUE, CORRECT


@pytest.fixture
def passes():
    """``passes(name, seed)``: the correct implementation ``name`` passes every check at alpha = 1e-6."""
    def run(name, seed):
        p = CORRECT[name]
        rep = check(p.fn, p.kind, seed=seed, alpha=1e-6, **p.options)
        assert rep.passed, rep.format_table()
    return run


@pytest.fixture
def caught():
    """``caught(name, seed)``: the planted defect ``name`` fails its named check at the defaults
    (alpha = 1e-3) on two seeds."""
    def run(name, seed):
        p = CATALOGUE[name]
        for s in (seed, seed + 1000):
            rep = check(p.fn, p.kind, seed=s, **p.options)
            assert any(v.check == p.fails for v in rep.failures), rep.format_table()
    return run
