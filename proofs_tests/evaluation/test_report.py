"""`refattn report`'s main table (refattn.evaluation.report).

The numbers in the table are checked against independent computations: the local window's
error of P against the masked exact oracle, the oracles' limits (every key kept: error 0),
and the streaming kernel's agreement with the dense oracle. Deterministic (seeded draws); no
timing is asserted.
"""

import numpy as np
import pytest

from refattn import attention_probabilities
from refattn.evaluation.datasets import AttentionData, embedded_attention
from refattn.evaluation.methods import REGISTRY, Method, register
from refattn.evaluation.report import DEFAULT_METHODS, format_comparison, run_comparison, summarise

_FULL = embedded_attention().truncated(48)


SMALL = AttentionData("minilm (3 heads)", _FULL.q[::4], _FULL.k[::4], _FULL.v[::4], _FULL.heads[::4], _FULL.provenance)


def _by(rows):
    return {(r.temperature, r.head, r.method): r for r in rows}


def test_table_rows_and_exact_baselines():
    rows = run_comparison(SMALL, budget=8, temperatures=(1.0, 0.5), progress=False)
    assert len(rows) == 2 * 3 * len(DEFAULT_METHODS)  # the exact entries are in the default set
    for r in rows:
        assert np.isfinite(r.error_O) and r.peak_mb >= 0 and r.seconds >= 0
        if r.method == "exact dense":
            assert r.error_P == 0 and r.error_O == 0
        elif r.method == "exact streaming":
            assert r.error_P <= 1e-13 and r.error_O <= 1e-13
        else:
            assert 0 < r.error_P < np.inf
    # lowering the temperature sharpens every head's attention
    by = _by(rows)
    for h in SMALL.heads:
        assert by[(0.5, h, "exact dense")].entropy < by[(1.0, h, "exact dense")].entropy
    text = format_comparison(rows, SMALL.provenance)
    assert "all-MiniLM-L6-v2" in text and "scatterbrain (smyrf)" in text and "the paper's configuration" in text
    assert {s["method"] for s in summarise(rows)} == set(DEFAULT_METHODS) >= {"exact dense", "exact streaming"}


def test_local_window_error_matches_the_masked_oracle():
    """The report's error of P for the local window equals |softmax(window mask) - P|_F / |P|_F computed
    with the exact oracle's mask path (an independent implementation of the same P^)."""
    b = 8
    rows = run_comparison(SMALL, budget=b, methods=("local window",), progress=False)
    T = SMALL.q.shape[1]
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    mask = (j >= i - b // 2) & (j <= i + b - b // 2 - 1)  # refattn.lsh.sparse.local_window(T, S, b/2, b - b/2 - 1)
    for h, r in enumerate(r for r in rows if r.method == "local window"):
        P = attention_probabilities(SMALL.q[h], SMALL.k[h])
        Pm = attention_probabilities(SMALL.q[h], SMALL.k[h], mask=mask)
        expected = np.linalg.norm(Pm - P) / np.linalg.norm(P)
        assert abs(r.error_P - expected) <= 1e-12 * expected, (r.head, r.error_P, expected)


def test_oracles_are_exact_when_the_budget_covers_every_key():
    T = SMALL.q.shape[1]
    rows = run_comparison(SMALL, budget=T, methods=("best sparse",), progress=False)
    assert all(r.error_P <= 1e-12 and r.error_O <= 1e-12 for r in rows)


def test_a_planted_wrong_method_shows_a_large_error():
    """Power: a method that returns uniform attention is reported far from the oracle on real heads."""
    register(Method("uniform (planted)", lambda q, k, v, *, budget, scale, rng, **kw: np.broadcast_to(
        v.mean(0), (q.shape[0], v.shape[1])), "none: uniform attention"))
    try:
        rows = run_comparison(SMALL, budget=8, methods=("uniform (planted)",), progress=False)
    finally:
        del REGISTRY["uniform (planted)"]
    errs = [r.error_P for r in rows if r.method == "uniform (planted)"]
    assert min(errs) > 0.3, errs


def test_bad_arguments():
    with pytest.raises(ValueError, match="^budget: 999 exceeds"):
        run_comparison(SMALL, budget=999)
    with pytest.raises(ValueError, match="^methods: unknown"):
        run_comparison(SMALL, budget=8, methods=("magic",))
    with pytest.raises(ValueError, match="^temperature"):
        run_comparison(SMALL, budget=8, temperatures=(0.0,))


def test_peak_memory_is_the_timed_calls_not_the_warm_ups(monkeypatch):
    """A method whose first call allocates 40 MB (as a JIT compile can) and later calls almost
    nothing shows the later calls' peak: the column is measured on the timed call."""
    calls = []

    def run(q, k, v, *, budget, scale, rng, **kw):
        calls.append(1)
        if len(calls) == 1:
            np.ones(5_000_000).sum()  # 40 MB, only on the warm-up
        return attention_probabilities(q, k) @ v

    monkeypatch.setitem(REGISTRY, "first-call hog", Method("first-call hog", run, "the exact P"))
    rows = run_comparison(SMALL, budget=8, methods=("first-call hog",), progress=False)
    hog = [r for r in rows if r.method == "first-call hog"]
    assert len(calls) >= 3 and all(r.peak_mb < 5 for r in hog), [r.peak_mb for r in hog]


def _summary(sp, lr, errors_O, temps=(1.0,), entropies=(3.0,)):
    """A hand-made summary: per temperature the two oracles' err P and the estimators' err O."""
    out = []
    for i, t in enumerate(temps):
        base = {"temperature": t, "entropy": entropies[i], "heads": 1, "budget": 8, "error_O_max": 1.0,
                "peak_mb": 0.0, "seconds_median": 0.0, "time_vs_dense": 1.0}
        out.append({**base, "method": "best sparse", "error_P_mean": sp[i], "error_O_mean": sp[i]})
        out.append({**base, "method": "best low-rank", "error_P_mean": lr[i], "error_O_mean": lr[i]})
        for name, e in errors_O.items():
            out.append({**base, "method": name, "error_P_mean": 1.0, "error_O_mean": e[i]})
    return out


def test_the_takeaway_is_computed_from_the_numbers():
    from refattn.evaluation.report import takeaway

    one = takeaway(_summary([0.1], [0.3], {"performer": [0.8], "reformer": [0.9]}))
    assert "estimator here is performer" in one[1] and "the sparse oracle beats" in one[2]
    swapped = takeaway(_summary([0.3], [0.1], {"performer": [0.9], "reformer": [0.8]}))
    assert "estimator here is reformer" in swapped[1] and "the low-rank oracle beats" in swapped[2]
    sweep = takeaway(_summary([0.01, 0.2, 0.7], [0.3, 0.3, 0.1], {"performer": [1, 1, 1]},
                              temps=(0.5, 1.0, 2.0), entropies=(1.0, 3.0, 4.5)))
    assert any("cross between temperature 1 and 2 (entropy 3.00 to 4.50 nats): sparse wins below, low-rank above"
               in line for line in sweep), sweep
    moved = takeaway(_summary([0.01, 0.4, 0.7], [0.3, 0.3, 0.1], {"performer": [1, 1, 1]},
                              temps=(0.5, 1.0, 2.0), entropies=(1.0, 3.0, 4.5)))
    assert any("cross between temperature 0.5 and 1" in line for line in moved), moved


def test_the_legend_names_oracles_estimators_and_configurations():
    from refattn.evaluation.report import legend

    text = "\n".join(legend(_summary([0.1], [0.3], {"performer": [0.8]})))
    assert "oracles (best sparse, best low-rank)" in text and "estimators (performer)" in text
    assert "err P above 1" in text and "entropy" in text and REGISTRY["performer"].budget_rule in text
