"""The regime study (refattn.evaluation.regimes): its oracles, its intervals, and the pieces of
Scatterbrain's error anatomy, each against an independent computation. Deterministic."""

import numpy as np
import pytest
from scipy import stats

from refattn import theory
from refattn.evaluation.datasets import gaussian_inputs
from refattn.evaluation.regimes import (
    ESTIMATORS,
    ORACLES,
    RegimeRow,
    _per_feature_variance,
    rpca_split,
    run_regime_study,
    scatterbrain_anatomy,
    summarise_study,
)


def test_the_per_feature_variance_is_lemma_2_with_one_feature():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(4, 6)) * 0.3, rng.normal(size=(5, 6)) * 0.3
    V = _per_feature_variance(x, y)
    expected = [[theory.mse_positive(x[i], y[j], 1) for j in range(5)] for i in range(4)]
    np.testing.assert_allclose(V, expected, rtol=1e-12)


def test_the_interval_is_a_t_interval_over_draws_of_the_head_means():
    rows = [RegimeRow("h0", 1.0, 2.0, "performer", [1.0, 2.0, 3.0]),
            RegimeRow("h1", 1.0, 4.0, "performer", [3.0, 4.0, 5.0]),
            RegimeRow("h0", 1.0, 2.0, "best sparse", [0.5]), RegimeRow("h1", 1.0, 4.0, "best sparse", [0.7])]
    s = {x["method"]: x for x in summarise_study(rows)}
    per_draw = np.array([2.0, 3.0, 4.0])  # the mean over the two heads, draw by draw
    half = stats.t.ppf(0.975, 2) * per_draw.std(ddof=1) / np.sqrt(3)
    assert s["performer"]["error_P"] == pytest.approx(3.0) and s["performer"]["entropy"] == pytest.approx(3.0)
    assert s["performer"]["high"] - 3.0 == pytest.approx(half)
    assert s["best sparse"]["low"] == s["best sparse"]["high"] == pytest.approx(0.6)


def test_the_rpca_split_recovers_a_planted_sparse_plus_low_rank_matrix():
    """M = L + S with rank 1 and 2 entries per row: at a budget of 2 + 2 * 1 numbers per row the
    budget-cut split is (nearly) exact, where either single part is far off."""
    rng = np.random.default_rng(1)
    n = 40
    L = np.outer(rng.random(n) + 0.5, rng.random(n) + 0.5)
    S = np.zeros((n, n))
    for i in range(n):
        S[i, rng.choice(n, 2, replace=False)] = 5.0
    M = L + S
    err = np.linalg.norm(rpca_split(M, 4) - M) / np.linalg.norm(M)
    assert err < 1e-3
    assert np.linalg.norm(S - M) / np.linalg.norm(M) > 0.3  # the sparse part alone misses L


def test_the_study_rows_and_bad_input():
    d = gaussian_inputs(24, 4, 0, n_heads=2)
    rows = run_regime_study(d, budget=8, temperatures=(0.5, 2.0), draws=2, progress=False)
    assert len(rows) == 2 * 2 * (len(ORACLES) + len(ESTIMATORS))
    assert all(len(r.errors) == (1 if r.method in ORACLES else 2) and np.all(np.isfinite(r.errors)) for r in rows)
    by = {(r.temperature, r.head, r.method): r.mean for r in rows}
    for t in (0.5, 2.0):
        for h in d.heads:
            assert by[(t, h, "sparse + low-rank")] <= min(by[(t, h, "best sparse")], by[(t, h, "best low-rank")]) + 1e-12
    with pytest.raises(ValueError, match="^budget"):
        run_regime_study(d, budget=99)
    with pytest.raises(ValueError, match="^methods"):
        run_regime_study(d, budget=8, estimators=("no such method",))


def test_the_anatomy_pieces():
    """The support's share of the variance lies in [0, 1]; a random support's expected mass is its
    size over S; the errors are the registry methods' errors."""
    d = gaussian_inputs(32, 4, 1, n_heads=2)
    out = scatterbrain_anatomy(d, budget=8, draws=2)
    assert len(out) == 2
    for a in out:
        assert 0 <= a["support_share"] <= 1 and 0 < a["captured_mass"] <= 1
        assert a["chance_mass"] == pytest.approx(a["keys_per_row"] / 32)
        assert a["error_performer"] > 0 and a["error_scatterbrain"] > 0
