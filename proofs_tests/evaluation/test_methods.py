"""The one method registry (refattn.evaluation.methods): every entry is linear in v given its draw (so
run(q, k, I) is its matrix), the seed stream is one per (seed, method, head), the budget rules hold,
and every method is in the report, the bench and the matched-budget study. Deterministic.
"""

import numpy as np
import pytest

from refattn.evaluation.budget import matched_budget
from refattn.evaluation.datasets import gaussian_inputs
from refattn.evaluation.methods import REGISTRY, method_rng, output_of, register


def test_effective_matrix_reproduces_the_output():
    """P^ = run(q, k, I) is what the report compares with P; it must give the method's output
    (every registered method is linear in v given its draw)."""
    d = gaussian_inputs(40, 8, 3, n_heads=1)
    q, k, v = d.q[0], d.k[0], d.v[0]
    for name, method in REGISTRY.items():
        if name == "sparse + low-rank":
            continue  # slow; an oracle built like best low-rank
        out = output_of(method.run(q, k, v, budget=8, scale=8**-0.5, rng=np.random.default_rng(5)))
        Ph = output_of(method.run(q, k, np.eye(40), budget=8, scale=8**-0.5, rng=np.random.default_rng(5)))
        np.testing.assert_allclose(Ph @ v, out, atol=1e-10, err_msg=name)


def test_every_method_is_in_the_report_the_bench_and_the_budget_study():
    from refattn.bench.suite import default_entries
    from refattn.evaluation.report import DEFAULT_METHODS

    every = set(REGISTRY)
    assert {"smyrf", "nystrom", "sea", "scatterbrain", "performer", "reformer", "hyperattention"} <= every
    assert every <= set(default_entries())
    assert set(DEFAULT_METHODS) == {n for n, m in REGISTRY.items() if m.in_report}
    assert [n for n, m in REGISTRY.items() if not m.in_report] == ["sparse + low-rank"]  # 30 s per head: opt-in
    d = gaussian_inputs(16, 4, 1, n_heads=1)
    rows = matched_budget(d.q[0], d.k[0], d.v[0], budget=4, scale=0.5, rng=0)
    assert [r.method for r in rows] == [n for n, m in REGISTRY.items() if not m.exact]


def test_one_seed_stream_per_seed_method_and_head():
    a = method_rng(0, "performer", 3).random(4)
    np.testing.assert_array_equal(a, method_rng(0, "performer", 3).random(4))  # reproducible
    others = [method_rng(1, "performer", 3), method_rng(0, "reformer", 3), method_rng(0, "performer", 4)]
    assert all(not np.array_equal(a, g.random(4)) for g in others)  # independent streams
    d = gaussian_inputs(24, 4, 0, n_heads=1)
    s = REGISTRY["scatterbrain"]
    runs = [output_of(s.run(d.q[0], d.k[0], d.v[0], budget=8, scale=0.5, rng=method_rng(2, "scatterbrain", 0)))
            for _ in range(2)]
    np.testing.assert_array_equal(*runs)  # the hash and the features are split from the stream in a fixed order


def test_register_accepts_only_methods():
    with pytest.raises(TypeError, match="^method:"):
        register(lambda q, k, v: v)


@pytest.mark.parametrize("budget", [8, 16])
def test_the_budget_rules(budget):
    """What ``budget = b`` buys, read off each method's own result: Performer m = b/2 features,
    Scatterbrain m = b/4, SEA at most k = b/2 keys per row, the local window b keys, Reformer chunks
    of b/2 with look-back 1 (at most b keys per row)."""
    d = gaussian_inputs(64, 8, 2, n_heads=1)
    q, k, v = d.q[0], d.k[0], d.v[0]

    def result(name):
        return REGISTRY[name].run(q, k, v, budget=budget, scale=8**-0.5, rng=method_rng(0, name))

    assert result("performer").features.m == budget // 2
    assert result("scatterbrain").lowrank.features.m == budget // 4
    assert result("sea").supports[0].row_counts().max() <= budget // 2
    assert result("reformer").support.row_counts().max() <= budget
    window = REGISTRY["local window"].run(q, k, np.eye(64), budget=budget, scale=8**-0.5, rng=None)
    assert np.count_nonzero(window, axis=1).max() == budget
