"""The sweep (refattn.bench.suite): the exponent fit, skipped points, goal verdicts (the committed
benchmarks/goals.json on hand-built suites), how a registry method joins the sweep, checkpoints.

Nothing here asserts on time: timings are checked for structure (positive, finite), the
logic that turns them into verdicts is checked on hand-built suites with known answers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from refattn.bench.format import validate_suite
from refattn.bench.suite import default_entries, fit_exponent, load_goals, refresh, run_suite
from refattn.evaluation.methods import REGISTRY, Method, register

GOALS = load_goals(Path(__file__).resolve().parents[2] / "benchmarks" / "goals.json")


MiB = 2**20


def _check_suite_structure(suite, names, lengths, dtypes, H):
    """The suite's own validator finds nothing, and it covers what the test asked for."""
    problems = validate_suite(suite)
    assert not problems, problems
    assert list(suite["methods"]) == names and suite["config"]["lengths"] == lengths
    assert suite["config"]["dtypes"] == dtypes and suite["config"]["H"] == H


def _fake_suite(times, lengths=(16384, 32768, 65536), dtype="float64", gemm=100.0):
    """A hand-built suite: ``times[name] = f(T)`` seconds; flops 1 GFLOP per call."""
    names = list(times)
    results = [{"method": n, "T": T, "H": 64, "dtype": dtype, "median_s": times[n](T), "flops": 1e9,
                "gflops": 1.0 / times[n](T), "peak_bytes": 10 * MiB} for n in names for T in lengths]
    return refresh({
        "config": {"dtypes": [dtype], "fit_from": 0, "lengths": list(lengths), "H": 64},
        "methods": {n: {"expected_exponent": REGISTRY[n.removesuffix(" causal")].expected_exponent} for n in names},
        "gemm": [{"dtype": dtype, "gflops": gemm, "when": "start"}, {"dtype": dtype, "gflops": gemm / 2, "when": "end"}],
        "results": results, "skipped": [],
    }, GOALS)


def _verdict(suite, text):
    rows = [g for g in suite["goals"] if text in g["goal"]]
    assert len(rows) == 1, rows
    return rows[0]


@pytest.mark.parametrize("p", [1.0, 2.0, 1.37])
def test_fit_exponent_recovers_a_power_law(p):
    """t = c T^p exactly gives slope p and intercept log c (least squares on a straight line)."""
    Ts = np.array([1024, 2048, 4096, 8192, 65536])
    slope, logc = fit_exponent(Ts, 3e-9 * Ts**p)
    assert abs(slope - p) < 1e-10 and abs(logc - math.log(3e-9)) < 1e-8, (slope, logc)


def test_fit_exponent_averages_noise_in_log_space():
    """Multiplicative noise e^{+-d} alternating on 4 points: the slope error is the regression of
    the noise, derived: x = log2 spacing, noise (+d, -d, +d, -d) -> slope shift -0.4 d / ln 2."""
    Ts = np.array([1024.0, 2048.0, 4096.0, 8192.0])
    d = 0.1
    noise = np.exp(d * np.array([1, -1, 1, -1]))
    slope, _ = fit_exponent(Ts, Ts * noise)
    # x_i = i ln2 (centred: -1.5, -0.5, 0.5, 1.5 times ln2), sum x^2 = 5 ln2^2, sum x e = (-1.5-(-0.5)... )
    xc = (np.arange(4) - 1.5) * math.log(2)
    expected = 1 + float(np.sum(xc * d * np.array([1, -1, 1, -1])) / np.sum(xc**2))
    assert abs(slope - expected) < 1e-12 and abs(expected - (1 - 0.4 * d / math.log(2))) < 1e-12


@pytest.mark.parametrize("lengths,times,match", [
    ([1024], [1.0], "two distinct"),
    ([1024, 1024], [1.0, 2.0], "two distinct"),
    ([1024, 2048], [1.0, -1.0], "times"),
    ([1024, 2048], [1.0, np.nan], "times"),
    ([0, 2048], [1.0, 1.0], "lengths"),
    ([1024, 2048], [1.0], "times"),
])
def test_fit_exponent_bad_input(lengths, times, match):
    with pytest.raises(ValueError, match=match):
        fit_exponent(lengths, times)


def test_infeasible_points_are_recorded_as_skipped(monkeypatch):
    """A predicted peak above the cap, and T beyond max_T: skipped with the reason, never dropped."""
    streaming = REGISTRY["exact streaming"]
    monkeypatch.setitem(REGISTRY, "tiny", Method("tiny", streaming.run, "the oracle", flops=streaming.flops, max_T=128))
    cap = 4 * 128 * 128 * 8 + 1  # exact dense at T = 128 float64 fits, T = 256 does not
    suite = run_suite(methods=["exact dense", "tiny"], lengths=[128, 256], dtypes=["float64"], H=8, repeats=1,
                      gemm_n=64, isolate=False, max_memory_bytes=cap)
    _check_suite_structure(suite, ["exact dense", "tiny"], [128, 256], ["float64"], 8)
    reasons = {(s["method"], s["T"]): s["reason"] for s in suite["skipped"]}
    assert set(reasons) == {("exact dense", 256), ("tiny", 256)}
    assert "predicted peak memory" in reasons[("exact dense", 256)]
    assert "max_T = 128" in reasons[("tiny", 256)]


@pytest.mark.parametrize("ratio,met", [(2.4, True), (2.6, False)])
def test_goal_performer_causal_ratio(ratio, met):
    s = _fake_suite({"performer": lambda T: T / 1e5, "performer causal": lambda T: ratio * T / 1e5})
    g = _verdict(s, "causal time")
    assert g["met"] is met and g["T"] == 65536 and g["figure"] == f"{ratio:.2f}", g


@pytest.mark.parametrize("speedup,met", [(25.0, True), (15.0, False)])
def test_goal_reformer_speedup(speedup, met):
    s = _fake_suite({"exact streaming": lambda T: (T / 65536) ** 2 * 45.0,
                     "reformer": lambda T: (T / 65536) ** 2 * 45.0 / speedup})
    assert _verdict(s, ">= 20x")["met"] is met
    assert s["results"][-1]["speedup_vs_exact"] == pytest.approx(speedup)


def test_goal_streaming_fraction_uses_the_better_gemm_rate():
    """1 GFLOP in 1/60 s = 60 GFLOP/s against max(100, 50) GFLOP/s = 60%: met; 40 GFLOP/s: not."""
    good = _fake_suite({"exact streaming": lambda T: 1 / 60}, lengths=(4096, 8192, 16384))
    bad = _fake_suite({"exact streaming": lambda T: 1 / 40}, lengths=(4096, 8192, 16384))
    assert _verdict(good, "50%")["met"] is True and _verdict(bad, "50%")["met"] is False


def test_goal_away_from_its_size_gives_no_verdict():
    s = _fake_suite({"performer": lambda T: 1.0, "performer causal": lambda T: 1.0}, lengths=(1024, 2048, 4096))
    g = _verdict(s, "causal time")
    assert g["met"] is None and g["T"] == 4096 and "not the goal's" in g["detail"]


def test_goal_exponents():
    """A quadratic 'linear' method fails its scaling goal; exact at T^2 meets its own."""
    s = _fake_suite({"exact streaming": lambda T: 1e-9 * T**2, "reformer": lambda T: 1e-9 * T**2,
                     "performer": lambda T: 1e-6 * T})
    assert _verdict(s, "exact streaming: scaling")["met"] is True
    assert _verdict(s, "reformer: scaling")["met"] is False
    assert _verdict(s, "performer: scaling")["met"] is True


@pytest.mark.parametrize("ratio,met", [(0.9, True), (1.2, False)])
def test_goal_scatterbrain_at_performers_budget(ratio, met):
    s = _fake_suite({"performer": lambda T: 1.0, "scatterbrain (smyrf)": lambda T: ratio})
    g = _verdict(s, "Scatterbrain")
    assert g["met"] is met and g["figure"] == f"{ratio:.2f}"


def test_goal_peak_bound_is_an_expression_of_the_point():
    """Performer causal at budget 128 (m = 64): the bound T m H itemsize = 65536 * 64 * 64 * 8 = 2 GiB."""
    s = _fake_suite({"performer causal": lambda T: 1.0})
    for r in s["results"]:
        r["budget"] = 128
    g = _verdict(refresh(s), "no T x m x H")
    assert g["met"] is True and "2048 MiB" in g["figure"]
    for r in s["results"]:
        r["peak_bytes"] = 3 * 2**30
    assert _verdict(refresh(s), "no T x m x H")["met"] is False


def test_goal_bounds_take_arithmetic_only():
    bad = [{"goal": "x", "kind": "peak_below", "method": "performer", "T": 16384, "bound": "__import__('os')"}]
    s = _fake_suite({"performer": lambda T: 1.0})
    with pytest.raises(ValueError, match="^bound:"):
        refresh(s, bad)


def test_one_register_call_adds_a_method_with_its_goals(monkeypatch):
    """How a method joins: one registry entry named "sea"; its rows and goals appear in the suite."""
    def run(q, k, v, *, budget, scale, rng, causal=False, dtype=None):
        return np.cumsum(v, axis=0) / np.arange(1, q.shape[0] + 1)[:, None]  # linear-time toy

    monkeypatch.setitem(REGISTRY, "sea", Method("sea", run, "none", flops=lambda T, H, b, r: 2.0 * T * H))
    suite = run_suite(methods=["exact streaming", "sea"], lengths=[128, 256, 512], dtypes=["float64"], H=8,
                      repeats=1, gemm_n=64, isolate=False, fit_from=0, goals=GOALS)
    _check_suite_structure(suite, ["exact streaming", "sea"], [128, 256, 512], ["float64"], 8)
    mem = _verdict(suite, "no T x S")
    assert mem["T"] == 512 and mem["met"] is None and "peak" in mem["figure"]  # away from 65536: no verdict
    assert _verdict(suite, "sea: scaling exponent")["figure"]


def test_register_rejects_non_methods():
    with pytest.raises(TypeError, match="^method:"):
        register({"name": "x"})


def test_every_registry_method_is_a_bench_entry():
    assert set(REGISTRY) <= set(default_entries()) and "performer causal" in default_entries()


def test_checkpoint_keeps_a_stopped_sweep(tmp_path):
    """A sweep stopped after its first point leaves a partial suite that re-derives; a finished one is complete."""
    path = tmp_path / "partial.json"

    class Stop(Exception):
        pass

    def stop_after_first_point(line):
        if "T=" in line:
            raise Stop

    with pytest.raises(Stop):
        run_suite(methods=["exact streaming"], lengths=[64, 128], dtypes=["float64"], H=8, repeats=1, gemm_n=64,
                  isolate=False, checkpoint=str(path), progress=stop_after_first_point)
    partial = refresh(json.loads(path.read_text()))
    assert partial["complete"] is False and [r["T"] for r in partial["results"]] == [64]
    assert validate_suite(partial)  # the missing point is reported
    run_suite(methods=["exact streaming"], lengths=[64, 128], dtypes=["float64"], H=8, repeats=1, gemm_n=64,
              isolate=False, checkpoint=str(path))
    done = json.loads(path.read_text())
    assert done["complete"] is True and validate_suite(done) == []
