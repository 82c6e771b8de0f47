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
