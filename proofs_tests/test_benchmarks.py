"""The benchmark harnesses run (smoke tests: they assert that numbers come out, never on time)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "script,result,kinds",
    [
        ("bench_exact.py", "exact_quick.json", {"gemm_square", "gemm_qk", "numba", "numpy", "dense"}),
        ("bench_performer.py", "performer_quick.json", {"gemm", "bidirectional", "causal", "mc_gaussian", "mc_orthogonal"}),
        ("bench_lsh.py", "lsh_quick.json", None),
        ("bench_scatterbrain.py", "scatterbrain_quick.json", None),
    ],
)
def test_benchmark_quick_run(tmp_path, script, result, kinds):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / result).read_text())
    if script == "bench_lsh.py":  # one row per (T, rounds)
        assert len(data["results"]) == 4 and all(r["lsh_s"] > 0 and r["nnz"] > 0 for r in data["results"])
        return
    if script == "bench_scatterbrain.py":
        assert len(data["attention"]) == 2 and all(r["scatterbrain_s"] > 0 for r in data["attention"])
        assert data["rpca"]["iterations"] >= 1 and data["rpca"]["converged"]
        return
    assert {r["kind"] for r in data["results"]} == kinds
    assert all("error" not in r and r["median_s"] > 0 for r in data["results"])


def test_suite_quick_run(tmp_path):
    """The whole suite's smoke run (benchmarks/bench_suite.py --quick): every registered method in
    both dtypes, GEMM rates, finite ratios, exponents, goals, valid JSON. No assertion on time."""
    from refattn.bench.format import validate_suite
    from refattn.bench.suite import default_entries, load_goals

    out = tmp_path / "suite.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_suite.py"), "--quick", "--out", str(out),
                           "--plot", str(tmp_path / "suite.png")], capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 2), proc.stderr  # 2: no matplotlib for --plot (an optional extra)
    if proc.returncode == 2:
        assert "matplotlib" in proc.stderr
        proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_suite.py"), "--quick", "--out",
                               str(out)], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
    suite = json.loads(out.read_text())
    assert validate_suite(suite) == []
    entries = default_entries()
    assert set(suite["methods"]) == set(entries) and not suite["skipped"]
    assert {(r["method"], r["dtype"]) for r in suite["results"]} == {(m, d) for m in entries for d in ("float64", "float32")}
    ex = [r for r in suite["results"] if r["method"] == "exact streaming"]
    assert all(r["flops"] == 4 * r["T"] ** 2 * r["H"] and r["speedup_vs_exact"] == 1.0 for r in ex)
    goals = load_goals(ROOT / "benchmarks" / "goals.json")
    assert suite["goal_definitions"] == goals
    judged = {g["goal"] for g in suite["goals"]}
    assert all(any(j.endswith(g["goal"]) for j in judged) for g in goals if g["kind"] != "crossover"), judged
