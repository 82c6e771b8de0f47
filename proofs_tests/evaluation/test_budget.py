"""The matched-budget comparison (refattn.evaluation.methods): Scatterbrain's regimes on its clustered process.

the docs' Scatterbrain page: test the ordering of errors, not constants. Three oracles at the same budget
(b = 16 numbers per row, T = 256): the best sparse (top-k), the best low-rank (SVD) and the best
sparse + low-rank split (the better single oracle at worst). Means over 3 independent draws per temperature
(deterministic given the seeds; on the development draws the margins were 5x, 12% and three
orders of magnitude; the seed sweep re-draws them).
"""

import numpy as np
import pytest

from refattn import attention_probabilities
from refattn.evaluation.budget import matched_budget, row_entropy
from refattn.evaluation.datasets import clustered_inputs
from refattn.evaluation.methods import METHODS, REGISTRY

ORACLES = ("best sparse", "best low-rank", "sparse + low-rank")


def _mean_errors(beta, seed, draws=3):
    acc = {m: [] for m in ORACLES}
    ent = []
    for d in range(draws):
        q, k, v = clustered_inputs(256, 32, 8, np.random.default_rng([seed, d, int(beta * 10)]))
        ent.append(row_entropy(attention_probabilities(q, k, scale=beta)))
        for r in matched_budget(q, k, v, budget=16, scale=beta, rng=d, methods=ORACLES):
            acc[r.method].append(r.error_P)
    return {m: float(np.mean(e)) for m, e in acc.items()}, float(np.mean(ent))


def test_regimes_low_rank_then_mixed_then_sparse(seed):
    """High entropy (beta = 2): low-rank beats sparse; in between (beta = 16): a mixed split beats
    both by 3% or more; low entropy (beta = 100): sparse wins. Entropy falls as beta grows."""
    hot, e_hot = _mean_errors(2.0, seed)
    mid, e_mid = _mean_errors(16.0, seed)
    cold, e_cold = _mean_errors(100.0, seed)
    print("beta=2", hot, "\nbeta=16", mid, "\nbeta=100", cold)
    assert e_hot > e_mid > e_cold
    assert hot["best low-rank"] < hot["best sparse"]
    assert mid["sparse + low-rank"] < 0.97 * min(mid["best sparse"], mid["best low-rank"])
    # low entropy: sparse is essentially exact and orders of magnitude better than low-rank (the
    # mixed oracle can only tie it here, since its sparse part covers the same few entries)
    assert cold["best sparse"] <= 1e-3 and cold["best sparse"] < 1e-2 * cold["best low-rank"]


def test_every_method_runs_and_errors_are_finite():
    q, k, v = clustered_inputs(64, 16, 4, 0)
    rows = matched_budget(q, k, v, budget=8, scale=5.0, rng=1)
    assert [r.method for r in rows] == [m for m in METHODS if not REGISTRY[m].exact]
    assert all(np.isfinite(r.error_P) and np.isfinite(r.error_O) for r in rows)
    best = {r.method: r.error_P for r in rows}
    assert best["best sparse"] <= 1.0 and best["best low-rank"] <= 1.0  # projections never exceed |P|


def test_bad_input():
    q, k, v = clustered_inputs(16, 4, 2, 0)
    with pytest.raises(ValueError, match="^budget: must be >= 4"):
        matched_budget(q, k, v, budget=2, scale=1.0, rng=0)
    with pytest.raises(ValueError, match="^budget: 32 exceeds"):
        matched_budget(q, k, v, budget=32, scale=1.0, rng=0)
    with pytest.raises(ValueError, match="^q, k"):
        matched_budget(q, k[:8], v[:8], budget=4, scale=1.0, rng=0)
    with pytest.raises(ValueError, match="^method"):
        matched_budget(q, k, v, budget=4, scale=1.0, rng=0, methods=("magic",))
