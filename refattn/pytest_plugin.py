"""refattn's pytest plugin: seed sweeps, a false-failure budget for the session, and the oracle as a fixture.

Installed with refattn (a ``pytest11`` entry point) and inactive unless used: nothing changes in a
suite that neither requests its fixtures nor marks tests ``statistical``.

- ``seed`` fixture: a test that takes ``seed`` runs once per seed of ``--refattn-seeds`` (``"0-99"``,
  ``"3,7"`` or ``"5"``; default ``$REFATTN_SEEDS``, else ``"0"``). A sweep shows a statistical test
  is not tuned to one lucky seed.
- ``statistical`` marker and ``--refattn-alpha A``: the marked tests of the session share one
  family-wise false-failure budget ``A``, split equally (Bonferroni) over the marked tests that
  run, and within a test over its declared assertions (``@pytest.mark.statistical(assertions=3)``).
  [`refattn.testing.assert_unbiased`][refattn.testing.assert_unbiased] and [`assert_variance_matches`][refattn.testing.assert_variance_matches]
  called without ``alpha`` take their share; a test that makes more statistical assertions than it
  declared fails (its share would be overspent). The run ends with a summary: how many statistical
  assertions ran, the budget each got, the family-wise bound (their sum, at most ``A``).
- ``oracle`` fixture: ``oracle(q, k, v, **kwargs)`` returns the exact reference as
  [`OracleResult`][refattn.pytest_plugin.OracleResult] (``out``, ``lse``, ``grads(dout)`` and ``assert_close(actual,
  precision=)``, the one tolerance rule of [`refattn.tolerance`][refattn.tolerance]): refattn's float64 oracle.

Bad options are one-line usage errors naming the option.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pytest

from refattn import testing as _testing

__all__ = ["parse_seeds", "OracleResult", "MAX_SEEDS"]

#: The most seeds a sweep may have (each is a test run).
MAX_SEEDS = 100_000


def parse_seeds(text: str) -> list[int]:
    """``"0-3"`` -> [0, 1, 2, 3]; ``"3,7"`` -> [3, 7]; ``"5"`` -> [5]; a ``ValueError`` naming the
    option for anything else (an empty range, a negative seed, a word)."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo or hi - lo >= MAX_SEEDS:
                    raise ValueError
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise ValueError(f"--refattn-seeds: expected '0-99', '3,7' or '5' (at most {MAX_SEEDS} seeds), "
                             f"got {text!r}") from None
    if len(seeds) > MAX_SEEDS:
        raise ValueError(f"--refattn-seeds: at most {MAX_SEEDS} seeds, got {len(seeds)}")
    if not seeds or min(seeds) < 0:
        raise ValueError(f"--refattn-seeds: no non-negative seeds in {text!r}")
    return seeds


def pytest_addoption(parser):
    group = parser.getgroup("refattn", "refattn: seed sweeps and the statistical false-failure budget")
    group.addoption("--refattn-seeds", default=None, metavar="SEEDS",
                    help="seeds of the `seed` fixture: '0-99', '3,7' or '5' (default: $REFATTN_SEEDS or 0)")
    group.addoption("--refattn-alpha", default=None, metavar="ALPHA",
                    help="family-wise false-failure budget of the tests marked statistical, in (0, 1)")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "statistical(assertions=1): a test whose verdict is random; it shares the session's "
                   "false-failure budget (--refattn-alpha) over its declared assertions")
    text = config.getoption("--refattn-seeds")
    if text is None:
        text = os.environ.get("REFATTN_SEEDS") or "0"
    try:
        config._refattn_seeds = parse_seeds(text)
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    alpha = config.getoption("--refattn-alpha")
    if alpha is not None:
        try:
            alpha = float(alpha)
        except ValueError:
            raise pytest.UsageError(f"--refattn-alpha: expected a number in (0, 1), got {alpha!r}") from None
        if not 0 < alpha < 1:
            raise pytest.UsageError(f"--refattn-alpha: must lie in (0, 1), got {alpha}")
    config._refattn_budget = _Budget(alpha)


def pytest_generate_tests(metafunc):
    if "seed" in metafunc.fixturenames:
        seeds = metafunc.config._refattn_seeds
        metafunc.parametrize("seed", seeds, ids=[f"seed{s}" for s in seeds])


class _Budget:
    """The session's family-wise budget, split over the marked tests and their assertions."""

    def __init__(self, alpha):
        self.alpha = alpha
        self.n_tests = 0
        self.assertions = 0
        self.spent = 0.0

    def per_test(self):
        return self.alpha / max(1, self.n_tests)


def pytest_collection_modifyitems(session, config, items):
    config._refattn_budget.n_tests = sum(1 for item in items if item.get_closest_marker("statistical"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    marker = item.get_closest_marker("statistical")
    budget = item.config._refattn_budget
    if marker is None or budget.alpha is None:
        yield
        return
    declared = marker.kwargs.get("assertions", marker.args[0] if marker.args else 1)
    if isinstance(declared, bool) or not isinstance(declared, int) or declared < 1:
        raise pytest.UsageError(f"{item.nodeid}: statistical(assertions=...) must be an integer >= 1")
    share = budget.per_test() / declared
    state = _testing._SessionAlpha(share, declared)
    token = _testing._SESSION_ALPHA.set(state)
    try:
        outcome = yield
    finally:
        _testing._SESSION_ALPHA.reset(token)
        budget.assertions += state.used + state.explicit_count
        budget.spent += state.used * share + state.explicit
    if state.overspent:  # whatever the test did with the exception (a retry loop catching it), it fails
        outcome.force_exception(AssertionError(state.overspent))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    budget = getattr(config, "_refattn_budget", None)
    if budget is None or budget.alpha is None or not budget.n_tests:
        return
    tr = terminalreporter
    tr.write_sep("-", "refattn statistical budget")
    tr.write_line(f"{budget.n_tests} statistical tests collected, {budget.assertions} statistical assertions ran; "
                  f"each test's share alpha = {budget.alpha:g} / {budget.n_tests} = {budget.per_test():.3g}")
    within = "<=" if budget.spent <= budget.alpha * (1 + 1e-12) else "> (explicit alpha= beyond the budget)"
    tr.write_line(f"family-wise false-failure bound: {budget.spent:.3g} {within} {budget.alpha:g} (Bonferroni; "
                  "assertions given alpha= count at their own level)")


@dataclass(frozen=True)
class OracleResult:
    """The exact reference for one problem: ``out``, ``lse`` and ``grads(dout) -> (dq, dk, dv)``."""

    out: np.ndarray
    lse: np.ndarray
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    kwargs: dict

    def grads(self, dout):
        from refattn.exact import attention_backward

        return attention_backward(self.q, self.k, self.v, dout, **self.kwargs)

    def assert_close(self, actual, *, precision=None, name="out"):
        """Assert that a kernel's output passes refattn's one tolerance rule at ``precision`` (default:
        the output's stored precision), as ``refattn check`` judges it; prints the numbers."""
        return _testing.assert_close_to_reference(actual, self.q, self.k, self.v, dtype=precision, name=name,
                                                  **self.kwargs)


@pytest.fixture
def oracle():
    """``oracle(q, k, v, **kwargs)``: refattn's float64 oracle ([`refattn.softmax_attention`][refattn.exact.softmax_attention]) with
    its log-sum-exp and gradients, for a kernel's test."""
    from refattn.exact import softmax_attention

    def reference(q, k, v, **kwargs):
        out, lse = softmax_attention(q, k, v, return_lse=True, **kwargs)
        return OracleResult(out, lse, q, k, v, kwargs)

    return reference
