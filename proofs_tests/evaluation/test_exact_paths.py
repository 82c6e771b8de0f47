"""The oracle's own paths (refattn.evaluation.exact_paths, ``refattn report --exact-paths``): the
streaming kernels equal the dense oracle to rounding, float64 agrees with mpmath on adversarial
logits, low precision shows, and every path is within its derived error bound (PASS). Deterministic
(seeded draws); no timing is asserted.
"""

import numpy as np
import pytest

from refattn.evaluation import exact_paths
from refattn.evaluation.methods import REGISTRY


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


def test_every_path_is_within_its_derived_bound(rows):
    """Each path's verdict is PASS (every query row within forward_error_bound), the references are
    '-', and only exact attention is in the table (no estimator rows)."""
    assert {r.verdict for r in rows} == {"PASS", "-"}
    assert all(r.max_abs_error <= r.bound for r in rows if r.verdict == "PASS")
    methods = {r.method for r in rows}
    assert methods == {"dense float64", "mpmath (50 digits)", "streaming numpy float64", "streaming numba float64",
                       "dense float32", "dense float16"}
    assert not any(name in m for m in methods for name, meth in REGISTRY.items() if not meth.exact)


def test_the_verdict_fails_a_path_beyond_its_bound():
    """Power twin: one query row off by twice its bound fails, even though the largest bound covers it."""
    ref = np.zeros((3, 2))
    bound = np.array([1e-12, 1e-3, 1e-12])
    out = ref.copy()
    out[0, 1] = 2e-12  # row 0 beyond its own bound, far below row 1's
    r = exact_paths._row("p", "planted", "ref", out, ref, 0.0, bound=bound)
    assert r.verdict == "FAIL" and r.max_abs_error < r.bound
    assert exact_paths._row("p", "fine", "ref", ref + 1e-13, ref, 0.0, bound=bound).verdict == "PASS"
