"""The peer benchmark's harness (refattn.bench.peers): calls interleaved after a warm-up, the goals judged
from the points (with power twins: a ratio or a fraction on the wrong side of its goal is NOT met),
families whose peer is missing skipped with the reason, and the baseline families (the sparse kernel,
the Monte Carlo engine) run without any peer installed. Nothing asserts on time."""

from __future__ import annotations

import json

import numpy as np

from refattn.bench import peers
from refattn.cli import main as cli_main


def test_calls_alternate_after_one_warm_up_of_each():
    calls = []
    res = peers.measure_pair(lambda: calls.append("A"), lambda: calls.append("B"), repeats=3)
    assert calls == ["A", "B"] + ["A", "B"] * 3  # one warm-up each, then interleaved
    assert len(res["refattn"]["times_s"]) == len(res["peer"]["times_s"]) == 3
    assert res["ratio"] == res["refattn"]["median_s"] / res["peer"]["median_s"]
    assert res["refattn"]["min_s"] <= res["refattn"]["median_s"] <= res["refattn"]["max_s"]


def _point(family, ratio=None, times=(1.0, 1.0, 1.0), **params):
    ts = list(times)
    p = {"family": family, **params, "refattn": {"times_s": ts, "min_s": min(ts), "median_s": sorted(ts)[1],
                                                 "max_s": max(ts), "peak_bytes": 10}, "under_load": False,
         "bound_bytes": 100}
    if ratio is not None:
        p["ratio"] = ratio
        p["peer"] = {"median_s": sorted(ts)[1] / ratio}
    return p


def _goal(run, gid):
    return next(g for g in peers.judge(run) if g["id"] == gid)


def test_goals_are_judged_from_the_points_and_can_fail():
    run = {"gemm": [{"gflops": 100.0}], "points": [
        _point("exact", 0.9, T=4096, dtype="float64", causal=False, flops=70e9),
        _point("exact", 0.95, T=4096, dtype="float64", causal=True, flops=35e9),
        _point("reformer", 0.8, T=4096, rounds=1, times=(1.0, 1.0, 1.0)),
        _point("reformer", 0.8, T=16384, rounds=1, times=(4.2, 4.2, 4.2)),
    ]}
    assert _goal(run, "exact-f64")["met"] is True
    assert _goal(run, "exact-gemm")["met"] is True  # 70 GFLOP in 1 s at a 100 GFLOP/s GEMM rate: 0.7
    goal = _goal(run, "reformer-exponent")  # slope log(4.2) / log(4) = 1.035 <= 1.15
    assert goal["met"] is True and "1: 1.04" in goal["detail"]
    assert _goal(run, "sparse-gemm")["met"] is None  # no point: not measured, never "met"
    run["points"][0]["ratio"] = 1.2  # power twins: one slow point fails the goal
    assert _goal(run, "exact-f64")["met"] is False
    run["points"][0]["flops"] = 50e9
    assert _goal(run, "exact-gemm")["met"] is False


def test_stability_and_causal_goals():
    run = {"gemm": [{"gflops": 1.0}], "points": [
        _point("performer", 0.5, T=4096, dtype="float32", causal=False, times=(1.0, 1.1, 1.2)),
        _point("performer", 0.1, T=4096, dtype="float32", causal=True, times=(1.4, 1.4, 1.4)),
    ]}
    assert _goal(run, "performer-stable")["met"] is True
    assert _goal(run, "performer-causal-own")["met"] is True  # 1.4 / 1.1
    assert _goal(run, "performer-causal-peer")["met"] is True
    run["points"][0]["refattn"]["max_s"] = 1.5  # max / min 1.5 > 1.3
    assert _goal(run, "performer-stable")["met"] is False
    run["points"][1]["ratio"] = 0.3
    assert _goal(run, "performer-causal-peer")["met"] is False


def test_exponent_goal_fails_on_quadratic_times():
    run = {"gemm": [{"gflops": 1.0}], "points": [
        _point("reformer", 0.5, T=T, rounds=1, times=(t, t, t)) for T, t in ((1024, 1.0), (4096, 16.0))]}
    goal = _goal(run, "reformer-exponent")
    assert goal["met"] is False and "1: 2.00" in goal["detail"]


def test_baseline_families_run_without_peers_and_missing_peers_are_skipped(monkeypatch):
    monkeypatch.setattr(peers, "peer_versions", lambda: {"torch": None, "performer_pytorch": None,
                                                         "reformer_pytorch": None})
    run = peers.run_peers([256], repeats=1, quiet_wait_s=0.0, quick=True, memory=False)
    fams = {p["family"] for p in run["points"]}
    assert fams == {"sparse", "montecarlo"}
    assert {s["family"] for s in run["skipped"]} == {"exact", "performer", "reformer"}
    assert all("not installed" in s["reason"] for s in run["skipped"])
    mc = [p for p in run["points"] if p["family"] == "montecarlo"]
    assert all(np.isfinite(p["ratio"]) and p["ratio"] > 0 for p in mc)
    text = peers.format_peers(run)
    assert "goals:" in text and "n/a" in text  # peer goals: not measured, said so
    json.dumps(run)  # JSON-ready


def test_cli_peers_quick_and_bad_lengths(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert cli_main(["bench", "--peers", "--quick", "--peer-families", "sparse", "--out", str(out)]) == 0
    run = json.loads(out.read_text())
    assert run["kind"] == "peers" and {p["family"] for p in run["points"]} == {"sparse"}
    assert cli_main(["bench", "--peers", "--from-json", str(out)]) == 0
    assert "sparse" in capsys.readouterr().out
    for bad in ("100", "abc", ""):
        assert cli_main(["bench", "--peers", "--peer-lengths", bad]) == 2
        assert "--peer-lengths" in capsys.readouterr().err


def test_peak_memory_of_a_point_is_measured_in_a_fresh_process():
    """A T = 4096 sparse point's refattn call allocates its output (4096 x 64 float64, 2 MiB) and less
    than its inputs' size again (three 2 MiB arrays): the fresh process reports a peak between half
    the output (resident-set accounting is by page, against a start that moves by a few pages) and
    32 MiB. A power twin for the meter itself is in test_measure.py."""
    mem = peers.peak_memory("sparse", {"T": 4096, "H": 64}, 0, timeout=600)
    assert "error" not in mem, mem
    assert 2**20 <= mem["refattn"] <= 32 * 2**20 and "peer" not in mem
