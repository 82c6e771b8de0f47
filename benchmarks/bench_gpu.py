"""The CUDA kernels on a GPU (CuPy), each against a baseline measured in the same run.

- device memory bandwidth: a device-to-device copy of 1 GiB (read + write bytes / time);
- hashing throughput (SimHash 16 bits x 4 tables, angular 64 buckets x 4 rounds, n = 2^22
  points, d = 64): points/s and the bytes the kernel must read as a fraction of that bandwidth;
- sparse attention (Reformer-like support: a 128-key local window, T = S = 65536, H = 64):
  time, nnz/s and useful GFLOP/s (4 nnz H) as a fraction of the float64 GEMM rate;
- streaming exact attention (float64, the oracle, and float32; T = S = 4096, 16384; H = 64)
  against the dense CuPy computation of the same precision (logits, softmax, product).

    python benchmarks/bench_gpu.py [--quick] [--out DIR]

Without CuPy or a device it says so, measures nothing and writes nothing (exit code 0).
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
from _harness import machine  # noqa: E402


def _device(cp):
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    return {"name": name, "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
            "cuda_driver": cp.cuda.runtime.driverGetVersion(), "cupy": cp.__version__,
            "memory_gib": props["totalGlobalMem"] / 2**30}


def gpu_time(cp, fn, repeats):
    """Median seconds of ``repeats`` calls after a warm-up call (kernel compilation excluded),
    measured with CUDA events around each call."""
    fn()
    cp.cuda.Device().synchronize()
    times = []
    for _ in range(repeats):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop) / 1e3)
    return float(np.median(times))


def dense_attention(cp, q, k, v, scale):
    """The dense baseline in the inputs' precision: the (T, S) logits, a stable softmax, the product."""
    s = (q @ k.T) * q.dtype.type(scale)  # (T, S)
    s -= s.max(axis=1, keepdims=True)
    p = cp.exp(s)
    return (p @ v) / p.sum(axis=1, keepdims=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    try:
        import cupy as cp

        n_dev = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:  # not installed, no driver
        print(f"bench_gpu: no CUDA device present ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
              "nothing measured")
        return 0
    if n_dev < 1:
        print("bench_gpu: no CUDA device present (CuPy sees 0 devices); nothing measured")
        return 0

    from refattn import softmax_attention
    from refattn.lsh import hashes as lsh
    from refattn.lsh.sparse import local_window, sparse_attention

    reps = 3 if args.quick else 10
    rng = np.random.default_rng(0)
    results = {"device": _device(cp)}

    nbytes = (1 << 24) if args.quick else (1 << 30)
    a = cp.ones(nbytes // 8)
    b = cp.empty_like(a)
    copy_s = gpu_time(cp, lambda: b.__setitem__(Ellipsis, a), reps)
    bw = 2 * nbytes / copy_s
    results["bandwidth_gbs"] = bw / 1e9
    print(f"device: {results['device']['name']}; copy bandwidth {bw / 1e9:.0f} GB/s", flush=True)
    del a, b

    n, d = (1 << 16 if args.quick else 1 << 22), 64
    x = cp.asarray(rng.standard_normal((n, d)))
    planes = cp.asarray(lsh.simhash_planes(d, 16, rng, tables=4))
    R = cp.asarray(lsh.angular_rotations(d, 64, rng, rounds=4))
    hashing = []
    for name, fn, rounds in (("simhash", lambda: lsh.simhash(x, planes), 4),
                             ("angular", lambda: lsh.angular_hash(x, R), 4)):
        t = gpu_time(cp, fn, reps)
        moved = rounds * n * (d * 8 + 8)  # each (round, point) thread reads its row, writes one id
        hashing.append({"hash": name, "n": n, "d": d, "rounds": rounds, "seconds": t, "points_per_s": rounds * n / t,
                        "bytes_per_s": moved / t, "fraction_of_bandwidth": moved / t / bw})
        r = hashing[-1]
        print(f"{name:8s} n={n} d={d} x{rounds}: {t * 1e3:8.3f} ms  {r['points_per_s'] / 1e9:.2f} G ids/s  "
              f"{r['fraction_of_bandwidth']:.1%} of copy bandwidth", flush=True)
    results["hashing"] = hashing

    m = 2048 if args.quick else 8192
    g1, g2 = cp.asarray(rng.standard_normal((m, m))), cp.asarray(rng.standard_normal((m, m)))
    gemm = 2 * m**3 / gpu_time(cp, lambda: g1 @ g2, reps) / 1e9
    results["gemm64_gflops"] = gemm
    del g1, g2
    T, H = (4096 if args.quick else 65536), 64
    sup = local_window(T, T, 127)
    q, k, v = (cp.asarray(rng.standard_normal((T, H))) for _ in range(3))
    t = gpu_time(cp, lambda: sparse_attention(q, k, v, sup), reps)
    gf = 4 * sup.nnz * H / t / 1e9
    results["sparse"] = {"T": T, "H": H, "nnz": sup.nnz, "seconds": t, "nnz_per_s": sup.nnz / t, "gflops": gf,
                         "fraction_of_gemm64": gf / gemm}
    print(f"sparse   T={T} nnz={sup.nnz}: {t * 1e3:8.3f} ms  {gf:.1f} GFLOP/s ({gf / gemm:.1%} of float64 GEMM "
          f"{gemm:.0f} GFLOP/s)", flush=True)

    exact = []
    for T in ([1024, 2048] if args.quick else [4096, 16384]):
        for dt in (np.float64, np.float32):
            q, k, v = (cp.asarray(rng.standard_normal((T, H)), dtype=dt) for _ in range(3))
            s = 1 / np.sqrt(H)
            t_stream = gpu_time(cp, lambda: softmax_attention(q, k, v, dtype=dt), reps)
            t_dense = gpu_time(cp, lambda: dense_attention(cp, q, k, v, s), reps)
            diff = float(cp.abs(softmax_attention(q, k, v, dtype=dt) - dense_attention(cp, q, k, v, s)).max())
            exact.append({"T": T, "S": T, "H": H, "dtype": np.dtype(dt).name, "streaming_s": t_stream,
                          "dense_s": t_dense, "streaming_over_dense": t_stream / t_dense, "max_abs_diff": diff})
            print(f"exact    T=S={T} {np.dtype(dt).name}: streaming {t_stream * 1e3:9.3f} ms  dense "
                  f"{t_dense * 1e3:9.3f} ms  ratio {t_stream / t_dense:6.2f}  max|diff| {diff:.1e}", flush=True)
    results["exact"] = exact

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "gpu_quick.json" if args.quick else "gpu.json"
    (out / name).write_text(json.dumps({"machine": machine(), "date": time.strftime("%Y-%m-%d"), **results}, indent=2))
    print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
