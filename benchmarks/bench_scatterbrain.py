"""Scatterbrain against the exact streaming oracle and against Performer alone, and RPCA's cost.

For T = 4096, 16384, 65536 (H = 64, m = 128, SimHash buckets of about 64 keys: r = log2(T/64)
bits): times of Scatterbrain (features + support + correction), of Performer alone (the
low-rank part) and of the exact streaming oracle, measured in one run; the correction's
cost is Scatterbrain minus Performer (expected: at most about the low-rank part's).
RPCA on a 1024 x 1024 planted problem: iterations, time, and the time of one SVD measured
in the same run (the expected dominant cost).

    python benchmarks/bench_scatterbrain.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _harness import machine, median_time  # noqa: E402


def main(argv=None):
    from refattn import softmax_attention
    from refattn.lsh.hashes import simhash, simhash_planes
    from refattn.performer.attention import performer_attention
    from refattn.scatterbrain.rpca import robust_pca
    from refattn.scatterbrain.attention import scatterbrain_attention
    from refattn.lsh.sparse import bucket_support

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    Ts = [512, 1024] if args.quick else [4096, 16384, 65536]
    H, m = 64, 128
    rng = np.random.default_rng(0)
    rows = []
    for T in Ts:
        q, k, v = (rng.standard_normal((T, H)) * 0.5 for _ in range(3))
        bits = max(1, int(round(math.log2(T / 64))))
        reps = 1 if T >= 65536 else 3

        def sb():
            planes = simhash_planes(H, bits, 11)
            sup = bucket_support(simhash(q, planes)[0], simhash(k, planes)[0])
            return scatterbrain_attention(q, k, v, sup, m=m, rng=1)

        t_sb = median_time(sb, reps)
        t_pf = median_time(lambda: performer_attention(q, k, v, m=m, rng=1), reps)
        t_ex = median_time(lambda: softmax_attention(q, k, v, implementation="numba"), reps)
        nnz = sb().support.nnz
        r = {"T": T, "bits": bits, "nnz_per_row": nnz / T, "scatterbrain_s": t_sb, "performer_s": t_pf,
             "exact_s": t_ex, "correction_over_lowrank": (t_sb - t_pf) / t_pf, "speedup_vs_exact": t_ex / t_sb}
        rows.append(r)
        print(f"T={T:>6} nnz/row {r['nnz_per_row']:6.1f}  scatterbrain {t_sb:7.3f}s  performer {t_pf:7.3f}s  "
              f"exact {t_ex:8.3f}s  correction/low-rank {r['correction_over_lowrank']:5.2f}  "
              f"speed-up vs exact {r['speedup_vs_exact']:6.1f}x", flush=True)
    n = 256 if args.quick else 1024
    X, Y = rng.normal(size=(n, n // 20)) / math.sqrt(n), rng.normal(size=(n, n // 20)) / math.sqrt(n)
    M = X @ Y.T + np.where(rng.random((n, n)) < 0.05, rng.choice([-1.0, 1.0], size=(n, n)), 0.0)
    t_svd = median_time(lambda: np.linalg.svd(M, full_matrices=False), 1)
    t0 = time.perf_counter()
    res = robust_pca(M)
    t_rpca = time.perf_counter() - t0
    rp = {"n": n, "iterations": res.n_iter, "seconds": t_rpca, "svd_seconds": t_svd,
          "svd_share": res.n_iter * t_svd / t_rpca, "converged": res.converged,
          "relative_error_L": float(np.linalg.norm(res.L - X @ Y.T) / np.linalg.norm(X @ Y.T))}
    print(f"RPCA {n}x{n}: {res.n_iter} iterations, {t_rpca:.2f} s; one SVD {t_svd:.3f} s, so SVDs are about "
          f"{rp['svd_share']:.0%} of the time; relative error of L {rp['relative_error_L']:.2e}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "scatterbrain_quick.json" if args.quick else "scatterbrain.json"
    (out / name).write_text(json.dumps({"machine": machine(), "date": time.strftime("%Y-%m-%d"),
                                        "attention": rows, "rpca": rp}, indent=2))
    print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
