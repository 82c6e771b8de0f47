"""The oracle's own paths (refattn.evaluation.exact_paths, ``refattn report --exact-paths``): the
streaming kernels equal the dense oracle to rounding, float64 agrees with mpmath on adversarial
logits, low precision shows, and every estimator of the registry that applies to a problem gets a
row. Deterministic (seeded draws); no timing is asserted.
"""

import numpy as np
import pytest

from refattn.evaluation import exact_paths
from refattn.evaluation.methods import REGISTRY, Method


@pytest.fixture(scope="module")
def rows():
    return exact_paths.run_report(seq_len=32, seed=0, progress=False)


def _by(rows):
    return {(r.problem, r.method): r for r in rows}


def test_streaming_paths_equal_the_dense_oracle(rows):
    by = _by(rows)
    for problem in ("gaussian", "gaussian-causal", "padded"):
        for impl in ("numpy", "numba"):
            assert by[(problem, f"streaming {impl} float64")].max_rel_error <= 1e-12
        assert by[(problem, "dense float16")].max_rel_error > 1e-5  # low precision shows
    assert by[("adversarial", "dense float64")].reference == "mpmath (50 digits)"
    assert by[("adversarial", "dense float64")].max_rel_error <= 1e-10


def test_every_applicable_estimator_has_a_row(rows):
    budget = exact_paths.ESTIMATOR_BUDGET
    estimators = [n for n, m in REGISTRY.items() if not (m.exact or m.oracle)]
    causal = [n for n in estimators if REGISTRY[n].causal]
    got = {p: {r.method for r in rows if r.problem == p and r.method.endswith(f" b={budget}")}
           for p in ("gaussian", "gaussian-causal", "padded", "adversarial")}
    assert got["gaussian"] == got["padded"] == {f"{n} b={budget}" for n in estimators}
    assert got["gaussian-causal"] == {f"{n} b={budget}" for n in causal} and len(causal) < len(estimators)
    assert got["adversarial"] == set()  # the tiny problem is for the mpmath comparison only
    assert all(0 < r.max_abs_error < np.inf for r in rows if r.method.endswith(f" b={budget}"))


def test_a_method_without_a_causal_form_skips_causal_problems(monkeypatch):
    """Power twin of the row selection: a registered non-causal method appears only where it applies."""
    monkeypatch.setitem(REGISTRY, "uniform (planted)", Method(
        "uniform (planted)", lambda q, k, v, *, budget, scale, rng, **kw: np.broadcast_to(v.mean(0), (len(q), v.shape[1])),
        "none"))
    rows = exact_paths._estimator_rows("gaussian-causal", *[np.ones((1, 4, 2))] * 3, {"causal": True},
                                       np.ones((1, 4, 2)), "dense float64", 0)
    assert "uniform (planted) b=128" not in {r.method for r in rows}
    rows = exact_paths._estimator_rows("gaussian", *[np.ones((1, 4, 2))] * 3, {}, np.ones((1, 4, 2)), "dense float64", 0)
    assert "uniform (planted) b=128" in {r.method for r in rows}
