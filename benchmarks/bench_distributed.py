"""The sharded oracle (refattn.distributed) against the local kernel, and its scaling on a LocalCluster.

    python benchmarks/bench_distributed.py                    # overhead at T = 16384, scaling at 16k-32k
    python benchmarks/bench_distributed.py --long 131072      # also one run at T = S = 131072 (minutes)

Measures, in one process, calls interleaved (A B A B after a warm-up), with the load average recorded:

- overhead: ``softmax_attention(implementation="numba")`` (the local kernel) against
  ``refattn.distributed.reference`` in this process and on a LocalCluster of 1 worker process
  (same cores, same kernel: the difference is the sharding, the scatter and the writes);
- strong scaling: the same problem on 1 and 2 worker processes (Numba threads split between them);
- weak scaling: work ``T S H`` doubled with the workers (T = 16384 on 1, 23168 on 2);
- with ``--long T``: one run of ``refattn reference`` at ``T = S`` locally and on 2 workers.

Writes benchmarks/results/distributed.json. H = 64, float64, non-causal, shards of 2048 rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from refattn import softmax_attention
from refattn.distributed import connect, reference

from _harness import machine  # noqa: E402  (benchmarks/ is the script's folder)

H = 64


def _inputs(T, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(T, H)), rng.normal(size=(T, H)), rng.normal(size=(T, H))


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _ref_fn(q, k, v, client, root):
    def run():
        out = Path(tempfile.mkdtemp(dir=root)) / "r"
        reference(q, k, v, out=out, client=client, progress=False)
        shutil.rmtree(out.parent)
    return run


def _interleaved(fns, repeats):
    """Median seconds of each function, calls interleaved A B C A B C ... after one warm-up each."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_timed(fn))
    return {name: {"median_s": float(np.median(t)), "min_s": float(np.min(t)), "max_s": float(np.max(t))}
            for name, t in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--T", type=int, default=16384, help="the overhead point (T = S)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--long", type=int, help="also one run at this T = S (e.g. 131072: minutes)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "distributed.json"))
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="refattn-bench-")
    result = {"machine": machine(), "H": H, "dtype": "float64", "shard": 2048, "load_average": {"start": os.getloadavg()}}

    q, k, v = _inputs(args.T)
    one = connect(workers=1, threads_per_worker=1)
    fns = {"local kernel": lambda: softmax_attention(q, k, v, implementation="numba"),
           "reference, this process": _ref_fn(q, k, v, None, root),
           "reference, LocalCluster(1)": _ref_fn(q, k, v, one, root)}
    result["overhead"] = {"T": args.T, "times": _interleaved(fns, args.repeats)}
    base = result["overhead"]["times"]["local kernel"]["median_s"]
    for name, t in result["overhead"]["times"].items():
        t["vs_local_kernel"] = t["median_s"] / base
        print(f"T = {args.T}: {name:<28} {t['median_s']:8.3f} s  ({t['vs_local_kernel']:.3f}x the local kernel)")

    two = connect(workers=2, threads_per_worker=1)
    scaling = {}
    for T in (args.T, 2 * args.T):
        q, k, v = _inputs(T, seed=T)
        t = _interleaved({"1 worker": _ref_fn(q, k, v, one, root), "2 workers": _ref_fn(q, k, v, two, root)},
                         max(1, args.repeats - 1))
        scaling[T] = t
        print(f"strong scaling T = {T}: 1 worker {t['1 worker']['median_s']:.2f} s, 2 workers "
              f"{t['2 workers']['median_s']:.2f} s")
    result["strong_scaling"] = scaling
    T2 = int(round(args.T * 2 ** 0.5 / 128)) * 128
    q, k, v = _inputs(T2, seed=T2)
    weak = {"1 worker, T = %d" % args.T: scaling[args.T]["1 worker"],
            "2 workers, T = %d" % T2: _interleaved({"w": _ref_fn(q, k, v, two, root)}, max(1, args.repeats - 1))["w"]}
    result["weak_scaling"] = weak
    print("weak scaling:", {n: round(t["median_s"], 2) for n, t in weak.items()})

    if args.long:
        q, k, v = _inputs(args.long, seed=1)
        long = {}
        for name, client in (("this process", None), ("LocalCluster(2)", two)):
            long[name] = _timed(_ref_fn(q, k, v, client, root))
            print(f"T = S = {args.long}: refattn reference, {name}: {long[name]:.1f} s")
        result["long"] = {"T": args.long, "seconds": long}
    one.close(), two.close()
    result["load_average"]["end"] = os.getloadavg()
    shutil.rmtree(root, ignore_errors=True)
    Path(args.out).write_text(json.dumps(result, indent=1, default=str))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
