"""The benchmark harness runs (a smoke test: it asserts that it produces numbers, never on time)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_exact_quick(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_exact.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "exact_quick.json").read_text())
    kinds = {r["kind"] for r in data["results"]}
    assert {"gemm_square", "gemm_qk", "numba", "numpy", "dense"} <= kinds
    assert all("error" not in r and r["median_s"] > 0 for r in data["results"])


def test_bench_performer_quick(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_performer.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "performer_quick.json").read_text())
    assert {r["kind"] for r in data["results"]} == {"gemm", "bidirectional", "causal"}
    assert all("error" not in r and r["median_s"] > 0 for r in data["results"])
