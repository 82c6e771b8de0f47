"""Reformer LSH attention against the exact streaming oracle, measured in one run.

For T = 4096, 16384, 65536 (H = 64, chunk 64, n_buckets = T / chunk so that buckets hold
about a chunk, 1 to 8 rounds): the time of hash + sort + support build + sparse attention,
the exact streaming oracle's time on the same inputs, their ratio, the crossover length,
and the sparse kernel's useful GFLOP/s (4 nnz H flops) as a fraction of the float64 GEMM
rate measured in the same run.

    python benchmarks/bench_lsh.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _harness import machine, median_time  # noqa: E402


def main(argv=None):
    from refattn import softmax_attention
    from refattn.lsh.attention import reformer_attention
    from refattn.lsh.sparse import sparse_attention

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    Ts = [512, 1024] if args.quick else [4096, 16384, 65536]
    rounds_list = [1, 2] if args.quick else [1, 2, 4, 8]
    H, chunk = 64, 64
    rng = np.random.default_rng(0)
    n = 512 if args.quick else 4096
    a, b = rng.standard_normal((n, n)), rng.standard_normal((n, n))
    gemm_s = median_time(lambda: a @ b, 3)
    gemm = 2 * n**3 / gemm_s / 1e9
    results = []
    for T in Ts:
        q, k, v = (rng.standard_normal((T, H)) for _ in range(3))
        reps = 1 if T >= 65536 else 3
        exact_s = median_time(lambda: softmax_attention(q, k, v, implementation="numba"), reps)
        for R in rounds_list:
            nb = max(2, 2 * (T // chunk // 2))
            run = lambda: reformer_attention(q, k, v, n_buckets=nb, chunk=chunk, rounds=R, rng=1)  # noqa: E731
            lsh_s = median_time(run, reps)
            res = run()
            sup = res.support
            attn_s = median_time(lambda: sparse_attention(q, k, v, sup), reps)
            gf = 4 * sup.nnz * H / attn_s / 1e9
            results.append({"T": T, "rounds": R, "n_buckets": nb, "exact_s": exact_s, "lsh_s": lsh_s,
                            "speedup": exact_s / lsh_s, "nnz": sup.nnz, "nnz_per_row": sup.nnz / T,
                            "sparse_kernel_s": attn_s, "sparse_gflops": gf, "sparse_fraction_of_gemm": gf / gemm})
            r = results[-1]
            print(f"T={T:>6} rounds={R} buckets={nb:>5} exact {exact_s:8.3f}s  lsh {lsh_s:7.3f}s  "
                  f"speed-up {r['speedup']:6.1f}x  nnz/row {r['nnz_per_row']:6.1f}  sparse kernel "
                  f"{gf:5.2f} GFLOP/s ({r['sparse_fraction_of_gemm']:.1%} of GEMM)", flush=True)
    for R in rounds_list:
        faster = [r["T"] for r in results if r["rounds"] == R and r["speedup"] > 1]
        print(f"rounds={R}: LSH faster than exact from T = {min(faster) if faster else 'none measured'}")
    print(f"float64 GEMM rate: {gemm:.1f} GFLOP/s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "lsh_quick.json" if args.quick else "lsh.json"
    (out / name).write_text(json.dumps({"machine": machine(), "date": time.strftime("%Y-%m-%d"),
                                        "gemm_gflops": gemm, "results": results}, indent=2))
    print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
