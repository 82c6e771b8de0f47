"""Measuring one point: the machine's facts, wall time, peak memory and the GEMM rate, in this
process or a fresh subprocess ([`refattn.bench`][refattn.bench])."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

from refattn._validation import InputError
from refattn.evaluation.methods import REGISTRY, method_rng, output_of

__all__ = ["machine", "median_time", "PeakMemory", "gemm_rate", "entry", "build", "measure_point", "run_case",
           "CAUSAL"]

#: The suffix of a bench entry that runs a registry method in its causal form.
CAUSAL = " causal"


def machine() -> dict:
    """CPU, core count, Python and BLAS: stored with every result file."""
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    except OSError:
        pass
    from threadpoolctl import threadpool_info

    info["blas"] = [f"{d['internal_api']} {d['version']} {d.get('architecture')}" for d in threadpool_info()
                    if d.get("user_api") == "blas"]
    try:
        import numba

        info["numba"] = numba.__version__
        info["numba_threads"] = numba.config.NUMBA_NUM_THREADS
    except ImportError:
        pass
    info["numpy"] = np.__version__
    return info


def median_time(fn, repeats):
    """Median wall time of ``repeats`` calls after one warm-up call (compilation excluded)."""
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


class PeakMemory:
    """Peak resident memory of this process during a block, above its resident set at entry.

    ``with PeakMemory() as pm: ...`` then ``pm.peak_bytes``. Linux: the high-water mark
    ``VmHWM`` is reset through ``/proc/self/clear_refs`` (``method = "vmhwm-reset"``);
    elsewhere ``ru_maxrss`` (``method = "ru_maxrss"``: never reset, so an upper bound).
    """

    def __init__(self):
        self.peak_bytes = None
        self.method = None
        self._rss0 = 0

    @staticmethod
    def _status(field_name):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024  # kB
        raise OSError(f"{field_name} not in /proc/self/status")

    def __enter__(self):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak RSS (Linux >= 4.0)
            self._rss0 = self._status("VmRSS")
            self.method = "vmhwm-reset"
        except OSError:
            import resource

            self._rss0 = 0
            self.method = "ru_maxrss"
            self._ru0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return self

    def __exit__(self, *exc):
        if self.method == "vmhwm-reset":
            self.peak_bytes = max(0, self._status("VmHWM") - self._rss0)
        else:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.peak_bytes = peak if peak > self._ru0 else 0
        return False


def _inputs(T, H, dtype, seed):
    """``q, k, v (T, H)``: standard normal times 0.5 (logits of order 1), in ``dtype``."""
    rng = np.random.default_rng(seed)
    return tuple((rng.standard_normal((T, H)) * 0.5).astype(dtype) for _ in range(3))


def gemm_rate(dtype, n=4096, repeats=3) -> dict:
    """Rate of an ``n x n`` by ``n x n`` matrix product in ``dtype`` (``2 n^3`` flops), GFLOP/s."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n)).astype(dtype) for _ in range(2))
    t = median_time(lambda: a @ b, repeats)
    return {"kind": "gemm", "dtype": np.dtype(dtype).name, "n": n, "median_s": t, "gflops": 2.0 * n**3 / t / 1e9}


def entry(name):
    """The registry method and causal flag of a bench entry: ``"performer"`` or ``"performer causal"``."""
    base, causal = (name[: -len(CAUSAL)], True) if name.endswith(CAUSAL) else (name, False)
    if base not in REGISTRY or (causal and not REGISTRY[base].causal):
        known = [*REGISTRY, *(n + CAUSAL for n, m in REGISTRY.items() if m.causal)]
        raise InputError(f"methods: unknown {name!r}; known: {', '.join(known)}")
    return REGISTRY[base], causal


def build(name, q, k, v, dtype, seed, budget):
    """A zero-argument callable running entry ``name`` once on ``q, k, v (T, H)`` at ``budget``
    (at most ``S``): every call draws afresh from the same stream, so every call does the work a
    user pays (hashing, feature draws)."""
    method, causal = entry(name)
    b, scale = min(budget, k.shape[0]), 1.0 / math.sqrt(q.shape[1])
    kw = {"causal": True} if causal else {}
    return lambda: method.run(q, k, v, budget=b, scale=scale, rng=method_rng(seed, method.name), dtype=dtype, **kw)


def measure_point(name, T, H, dtype, *, seed=0, repeats=3, warm_T=256, budget=128) -> dict:
    """Measure one (entry, T, dtype) point in this process: see [`refattn.bench`][refattn.bench]."""
    method, _ = entry(name)
    dt = np.dtype(dtype)
    small = build(name, *_inputs(min(T, warm_T), H, dt, seed), dt, seed, budget)
    t0 = time.perf_counter()
    small()
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    small()
    t_second = time.perf_counter() - t0
    del small
    run = build(name, *_inputs(T, H, dt, seed), dt, seed, budget)
    n_calls = repeats + 1 if repeats > 1 else repeats
    times, peaks, flops, out_info = [], [], None, None
    for i in range(n_calls):
        with PeakMemory() as pm:
            t0 = time.perf_counter()
            result = run()
            elapsed = time.perf_counter() - t0
        times.append(elapsed)
        peaks.append(pm.peak_bytes)
        if i == 0:
            out = output_of(result)
            flops = float(method.flops(T, H, min(budget, T), result)) if method.flops else None
            out_info = {"output_dtype": out.dtype.name, "output_shape": list(out.shape),
                        "output_finite": bool(np.isfinite(out).all())}
            if getattr(result, "support", None) is not None:
                out_info["nnz"] = int(result.support.nnz)
            del out
        del result
    timed = times[1:] if repeats > 1 else times
    med = statistics.median(timed)
    return {"method": name, "T": T, "H": H, "dtype": dt.name, "repeats": len(timed), "median_s": med,
            "times_s": timed, "first_call_s": max(0.0, t_first - t_second), "first_call_total_s": t_first,
            "warm_T": min(T, warm_T), "peak_bytes": max(peaks), "memory_method": pm.method,
            "input_bytes": 3 * T * H * dt.itemsize, "budget": min(budget, T),
            "flops": flops, "gflops": None if flops is None else flops / med / 1e9, **out_info}


def _child_main():
    """Entry point of a measurement subprocess: one JSON case in argv, one JSON line out."""
    case = json.loads(sys.argv[1])
    if case["kind"] == "gemm":
        res = gemm_rate(case["dtype"], n=case["n"])
    else:
        res = measure_point(case["method"], case["T"], case["H"], case["dtype"], seed=case["seed"],
                            repeats=case["repeats"], budget=case["budget"])
    print(json.dumps(res))


def run_case(case, isolate, timeout):
    """One case (a GEMM rate or a point), in a fresh subprocess when ``isolate``."""
    if not isolate:
        if case["kind"] == "gemm":
            return gemm_rate(case["dtype"], n=case["n"])
        return {**measure_point(case["method"], case["T"], case["H"], case["dtype"], seed=case["seed"],
                                repeats=case["repeats"], budget=case["budget"]), "cold_numba_cache": False}
    import tempfile

    cmd = [sys.executable, "-c", "from refattn.bench.measure import _child_main; _child_main()", json.dumps(case)]
    with tempfile.TemporaryDirectory() as empty_cache:
        env = dict(os.environ)
        if case.get("cold"):  # an empty Numba cache: the first call compiles every kernel it uses
            env["NUMBA_CACHE_DIR"] = empty_cache
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout} s"}
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit code {proc.returncode} (killed: out of memory?)"}
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "cold_numba_cache": bool(case.get("cold"))}
