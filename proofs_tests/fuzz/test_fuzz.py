"""No crash, no hang, no silent NaN from any public entry point (the fuzz grid, proofs_tests/fuzz/_grid.py).

Every public callable of refattn is in the grid's registry (or listed as not fuzzed, with the
reason), and each case runs in a child process, so a segfault or a hang is a finding, not a lost
suite. Every outcome must be a ``TypeError``/``ValueError`` whose message names an argument of
the function, or a valid (finite) result. The default run takes a seeded sample of the grid; the
whole grid runs under the ``fuzz`` marker (``pytest -m fuzz``). Deterministic.
"""

from __future__ import annotations

import collections
import importlib
import inspect
import random

import pytest

from proofs_tests.fuzz._grid import ENTRY_POINTS, NOT_FUZZED, RESULT_TYPES, Case, cases
from proofs_tests.fuzz._harness import run_cases

#: The packages whose ``__all__`` is refattn's public API.
PUBLIC_MODULES = ["refattn", "refattn.exact", "refattn.varlen", "refattn.paged", "refattn.splitkv", "refattn.mpmath_oracle", "refattn.problem", "refattn.stats", "refattn.testing",
                  "refattn.theory", "refattn.precision", "refattn.tolerance", "refattn.montecarlo", "refattn.performer", "refattn.lsh",
                  "refattn.scatterbrain", "refattn.sea", "refattn.check", "refattn.evaluation", "refattn.bench",
                  "refattn.distributed"]

#: Cases per entry point in the default run (its base call always runs too).
SAMPLE_PER_ENTRY = 5


def public_callables() -> dict[str, object]:
    """``module:qualname`` of every public function and class (the defining module's name)."""
    out = {}
    for modname in PUBLIC_MODULES:
        mod = importlib.import_module(modname)
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name)
            if callable(obj) and hasattr(obj, "__qualname__"):
                out[f"{obj.__module__}:{obj.__qualname__}"] = obj
    return out


def _excused(key: str) -> bool:
    module, _, qual = key.partition(":")
    if any(qual.endswith(suffix) for suffix in RESULT_TYPES) and inspect.isclass(public_callables()[key]):
        return True  # result containers and exceptions: built by refattn, not called with user input
    return key in NOT_FUZZED or any(module == m or module.startswith(m + ".") for m in NOT_FUZZED if ":" not in m)


def test_every_public_callable_is_in_the_grid():
    """A new public function without an entry (or a stated reason) fails here."""
    missing = sorted(k for k in public_callables() if k not in ENTRY_POINTS and not _excused(k))
    assert missing == [], f"public callables the fuzz grid does not cover: {missing}"
    stale = sorted(k for k in ENTRY_POINTS if k.split(".")[0] != "refattn")
    assert stale == []
    assert len(ENTRY_POINTS) >= 100


def test_the_registry_check_catches_a_new_function(monkeypatch):
    """Power twin of the coverage test: a public function added without a grid entry is reported."""
    import refattn.exact as exact

    def brand_new(q):
        return q

    brand_new.__module__, brand_new.__qualname__ = "refattn.exact", "brand_new"
    monkeypatch.setattr(exact, "brand_new", brand_new, raising=False)
    monkeypatch.setattr(exact, "__all__", [*exact.__all__, "brand_new"])
    assert "refattn.exact:brand_new" in public_callables()
    assert not _excused("refattn.exact:brand_new") and "refattn.exact:brand_new" not in ENTRY_POINTS


def _report(outcomes):
    counts = collections.Counter(o.status for o in outcomes)
    print(f"fuzz: {len(outcomes)} cases tried, {sum(o.clean for o in outcomes)} clean; {dict(counts)}")
    return [f"{o.case}: {o.status}: {o.detail}" for o in outcomes if not o.clean]


def test_sample_of_the_grid_is_clean():
    """The base call and a seeded sample of mutations of every entry point, in a child process."""
    rnd = random.Random(0)
    sample = []
    for name in ENTRY_POINTS:
        own = cases([name])
        sample += own[:1] + rnd.sample(own[1:], min(SAMPLE_PER_ENTRY, len(own) - 1))
    bad = _report(run_cases(sample))
    assert bad == [], "\n".join(bad)


def test_a_crash_and_a_silent_nan_are_findings(monkeypatch, tmp_path):
    """Power twin: the harness reports a segfaulting call as a crash and a NaN result as non-finite
    (planted entry points, run through the same child process)."""
    from proofs_tests.fuzz import _grid

    crash = _grid.Entry("ctypes:string_at", {"ptr": ("int", 0)}, ("ptr",))
    nan = _grid.Entry("numpy:log", {"x": ("farray", -_grid.Q)}, ("x",))
    monkeypatch.setitem(_grid.ENTRY_POINTS, "planted:crash", crash)
    monkeypatch.setitem(_grid.ENTRY_POINTS, "planted:nan", nan)
    # the child process reads the grid from disk: hand it the planted entries through a sitecustomize
    (tmp_path / "sitecustomize.py").write_text(
        "from proofs_tests.fuzz import _grid\n"
        "_grid.ENTRY_POINTS['planted:crash'] = _grid.Entry('ctypes:string_at', {'ptr': ('int', 0)}, ('ptr',))\n"
        "_grid.ENTRY_POINTS['planted:nan'] = _grid.Entry('numpy:log', {'x': ('farray', -_grid.Q)}, ('x',))\n")
    monkeypatch.setenv("REFATTN_FUZZ_EXTRA_PATH", str(tmp_path))
    out = run_cases([Case("planted:crash", "", ""), Case("planted:nan", "", ""),
                     Case("refattn.problem:causal_offset", "", "")])
    assert [o.status for o in out] == ["crash", "nonfinite", "clean-result"], out


@pytest.mark.fuzz
def test_the_whole_grid_is_clean():
    """Every case of the grid (about 6,000): run with ``pytest -m fuzz`` (about 10 minutes)."""
    bad = _report(run_cases(cases()))
    assert bad == [], "\n".join(bad[:200])
