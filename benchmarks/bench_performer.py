"""Performer attention speed: bidirectional vs causal (chunked prefix sums), float32 and float64.

Ratios against baselines measured in the same run: the matrix-multiply rate of this machine
(a 4096^3 GEMM in the same dtype) and, for each T, the bidirectional time (causal/bidirectional
ratio; the goal in goals.json: <= 2.5 at T = 65536). Flops counted: features 2 (T + S) m H, and the
products 2 S F Hv + 2 T F Hv (F = m features), plus the causal chunks' 2 T c (F + Hv).
Each case runs in its own process, so its peak RSS is its own.

    python benchmarks/bench_performer.py            # T = 4096, 16384, 65536; m = 256; H = 64
    python benchmarks/bench_performer.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _harness import machine, median_time  # noqa: E402


def _child(case):
    import resource

    import numpy as np

    dt = np.dtype(case["dtype"]).type
    T, H, m, rep = case["T"], case["H"], case["m"], case["repeats"]
    rng = np.random.default_rng(0)
    if case["kind"].startswith("mc_"):
        from refattn.montecarlo import kernel_samples

        x = rng.standard_normal((4, H)) * 0.1
        y = rng.standard_normal((4, H)) * 0.1
        n = case["draws"]
        fn = lambda: kernel_samples(x, y, projection=case["kind"][3:], m=H, n_draws=n, rng=1)  # noqa: E731
        flops = 2 * n * H * H * 4
    elif case["kind"] == "gemm":
        n = case["n"]
        a, b = rng.standard_normal((n, n)).astype(dt), rng.standard_normal((n, n)).astype(dt)
        fn, flops = (lambda: a @ b), 2 * n**3
    else:
        from refattn.performer.attention import performer_attention

        q, k, v = (rng.standard_normal((T, H)) * 0.3 for _ in range(3))
        causal = case["kind"] == "causal"
        c = 128
        fn = lambda: performer_attention(q, k, v, m=m, rng=1, causal=causal, dtype=dt, chunk_size=c)  # noqa: E731
        flops = 2 * (2 * T) * m * H + 2 * T * m * H * 2 + (2 * T * c * (m + H) if causal else 0)
    med = median_time(fn, rep)
    return {**case, "median_s": med, "gflops": flops / med / 1e9,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return 0
    Ts = [512] if args.quick else [4096, 16384, 65536]
    rep = 1 if args.quick else args.repeats
    cases = []
    for dt in ("float64", "float32"):
        cases.append({"kind": "gemm", "n": 512 if args.quick else 4096, "dtype": dt, "T": 0, "H": 64, "m": 256, "repeats": rep})
        for T in Ts:
            for kind in ("bidirectional", "causal"):
                cases.append({"kind": kind, "dtype": dt, "T": T, "H": 64, "m": 256, "repeats": rep})
    draws = 2000 if args.quick else 100_000
    for kind in ("mc_gaussian", "mc_orthogonal"):
        cases.append({"kind": kind, "dtype": "float64", "T": 0, "H": 64, "m": 64, "draws": draws, "repeats": 1})
    results = []
    for case in cases:
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(case)], capture_output=True, text=True)
        r = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {**case, "error": proc.stderr[-500:]}
        results.append(r)
        print(f"  ran {case['kind']} {case['dtype']} T={case['T']}", file=sys.stderr)
    print(f"{'dtype':<8} {'T':>6} {'bidir s':>8} {'causal s':>9} {'causal/bidir':>12} {'GF/s bi':>8} {'GF/s ca':>8} "
          f"{'/GEMM bi':>8} {'/GEMM ca':>8} {'RSS ca':>8}")
    for dt in ("float64", "float32"):
        gemm = next(r for r in results if r["kind"] == "gemm" and r["dtype"] == dt)
        for T in Ts:
            bi = next(r for r in results if r["kind"] == "bidirectional" and r["dtype"] == dt and r["T"] == T)
            ca = next(r for r in results if r["kind"] == "causal" and r["dtype"] == dt and r["T"] == T)
            if "error" in bi or "error" in ca:
                print(dt, T, "error", bi.get("error"), ca.get("error"))
                continue
            ca["ratio_to_bidirectional"] = ca["median_s"] / bi["median_s"]
            print(f"{dt:<8} {T:>6} {bi['median_s']:>8.3f} {ca['median_s']:>9.3f} {ca['ratio_to_bidirectional']:>12.2f} "
                  f"{bi['gflops']:>8.1f} {ca['gflops']:>8.1f} {bi['gflops'] / gemm['gflops']:>8.2f} "
                  f"{ca['gflops'] / gemm['gflops']:>8.2f} {ca['peak_rss_bytes'] / 2**30:>6.2f}GB")
        print(f"{dt} GEMM rate: {gemm['gflops']:.1f} GFLOP/s")
    for r in results:
        if r["kind"].startswith("mc_") and "error" not in r:
            print(f"Monte Carlo engine, {r['kind'][3:]} projections: {r['draws']} draws at d = m = {r['H']}: "
                  f"{r['median_s']:.2f} s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "performer_quick.json" if args.quick else "performer.json"
    (out / name).write_text(json.dumps({"machine": machine(), "date": time.strftime("%Y-%m-%d"), "results": results}, indent=2))
    print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
