"""Speed and memory of the exact oracle's paths, as ratios against this machine's GEMM rate.

Everything is measured in one run (the machines are shared and noisy): the float64 matrix
multiply rate (a large square GEMM, and the attention-shaped GEMM Q K^T at the same T, S,
H), then each attention path. Attention flops are counted as 4 T S H (two GEMMs), halved
for causal. Each case runs in its own subprocess so its peak RSS is its own; timings are
the median of ``--repeats`` runs after one warm-up (Numba compilation is timed separately
as the first call of a fresh process).

    python benchmarks/bench_exact.py                   # T = 16384 (the goal in goals.json)
    python benchmarks/bench_exact.py --long            # also T = S = 131072, streaming only
    python benchmarks/bench_exact.py --quick           # a smoke run (CI): tiny sizes

Results: a table on stdout and JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _harness import machine  # noqa: E402


def _child(case: dict) -> dict:
    """Run one case in this process; return timings and peak RSS."""
    import resource

    import numpy as np

    T, S, H, repeats = case["T"], case["S"], case["H"], case["repeats"]
    rng = np.random.default_rng(0)
    q = rng.standard_normal((T, H))
    k = rng.standard_normal((S, H))
    v = rng.standard_normal((S, H))
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    kind = case["kind"]
    if kind == "gemm_square":
        n = case["n"]
        a, b = rng.standard_normal((n, n)), rng.standard_normal((n, n))
        fn, flops = (lambda: a @ b), 2 * n**3
    elif kind == "gemm_qk":
        fn, flops = (lambda: q @ k.T), 2 * T * S * H
    else:
        from refattn import softmax_attention

        causal = case.get("causal", False)
        fn = lambda: softmax_attention(q, k, v, implementation=kind, causal=causal)  # noqa: E731
        flops = 4 * T * S * H // (2 if causal else 1)
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times) if times else first  # repeats = 0: the single (first) call
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {**case, "first_call_s": first, "median_s": med, "times_s": times, "gflops": flops / med / 1e9,
            "peak_rss_bytes": peak, "rss_before_bytes": base_rss, "input_bytes": int(q.nbytes + k.nbytes + v.nbytes)}


def run_case(case: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(case)], capture_output=True, text=True)
    if proc.returncode != 0:
        return {**case, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--T", type=int, default=16384)
    ap.add_argument("--H", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--long", action="store_true", help="also the streaming oracle at T = S = 131072")
    ap.add_argument("--long-only", action="store_true", help="only the GEMM baselines and T = S = 131072")
    ap.add_argument("--quick", action="store_true", help="smoke run at T = 512, one repeat")
    ap.add_argument("--no-dense", action="store_true", help="skip the dense path (needs ~8 T^2 bytes x 3)")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return 0
    T, H, rep = (512, args.H, 1) if args.quick else (args.T, args.H, args.repeats)
    base = {"T": T, "S": T, "H": H, "repeats": rep}
    cases = [
        {**base, "kind": "gemm_square", "n": 512 if args.quick else 4096},
        {**base, "kind": "gemm_qk"},
        {**base, "kind": "numba"},
        {**base, "kind": "numba", "causal": True},
        {**base, "kind": "numpy"},
    ]
    if not args.no_dense:
        cases.append({**base, "kind": "dense"})
    if args.long_only:
        cases = cases[:2]
    if (args.long or args.long_only) and not args.quick:
        cases.append({"T": 131072, "S": 131072, "H": H, "repeats": 0, "kind": "numba"})
    results = []
    for case in cases:
        r = run_case(case)
        results.append(r)
        print(f"  ran {case['kind']:<12} T={case['T']:<7} {'causal' if case.get('causal') else ''}", file=sys.stderr)
    peak_gemm = next(r["gflops"] for r in results if r["kind"] == "gemm_square")
    qk_gemm = next(r["gflops"] for r in results if r["kind"] == "gemm_qk")
    dense = next((r for r in results if r["kind"] == "dense" and "error" not in r), None)
    print(f"float64 GEMM: square {peak_gemm:.1f} GFLOP/s, Q K^T at T={T}, H={H}: {qk_gemm:.1f} GFLOP/s")
    print(f"{'path':<22} {'T':>7} {'median s':>9} {'first s':>8} {'GFLOP/s':>8} {'/GEMM':>6} {'/QK^T':>6} "
          f"{'vs dense':>8} {'peak RSS':>9}")
    for r in results:
        if r["kind"].startswith("gemm"):
            continue
        if "error" in r:
            print(f"{r['kind']:<22} {r['T']:>7} error: {r['error']}")
            continue
        t = r["median_s"] if r["repeats"] else r["first_call_s"]
        gf = r["gflops"] if r["repeats"] else 4 * r["T"] * r["S"] * r["H"] / t / 1e9
        r["ratio_gemm"], r["ratio_qk"] = gf / peak_gemm, gf / qk_gemm
        sp = f"{dense['median_s'] / t:8.2f}" if dense and r["T"] == dense["T"] and not r.get("causal") else f"{'':>8}"
        name = r["kind"] + (" causal" if r.get("causal") else "")
        print(f"{name:<22} {r['T']:>7} {t:>9.3f} {r['first_call_s']:>8.3f} {gf:>8.1f} {r['ratio_gemm']:>6.2f} "
              f"{r['ratio_qk']:>6.2f} {sp} {r['peak_rss_bytes'] / 2**30:>7.2f} GiB")
    goal = next((r for r in results if r["kind"] == "numba" and not r.get("causal") and r["T"] == T and "ratio_gemm" in r), None)
    if goal:
        verdict = "met" if goal["ratio_gemm"] >= 0.5 else "not met"
        print(f"goal: streaming float64 >= 50% of the float64 GEMM rate at T = S = {T}: "
              f"{goal['ratio_gemm']:.0%} of square GEMM ({verdict}); {goal['ratio_qk']:.0%} of the Q K^T GEMM")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "exact_quick.json" if args.quick else f"exact_T{T}{'_long' if args.long else ''}{'_longonly' if args.long_only else ''}.json"
    (out / name).write_text(json.dumps({"machine": machine(), "date": time.strftime("%Y-%m-%d"), "results": results}, indent=2))
    print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
