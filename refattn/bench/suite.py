r"""The benchmark suite: speed, memory and scaling of every method, as ratios measured in one run.

One **registry** (:data:`METHODS`, name -> :class:`Method`) says how to run each method on
``q, k, v (T, H)`` in a dtype; :func:`run_suite` measures every (method, dtype, T) point and,
in the same run, the matrix-multiply (GEMM) rate of this machine, so every figure is also a
ratio: a fraction of the GEMM rate (useful flops / time / GEMM rate) and a speed-up over the
exact streaming oracle at the same T and dtype. The machines are shared and noisy: a ratio of
two figures measured minutes apart on the same machine is what can be compared across runs,
never an absolute time. Nothing here asserts on time.

Per point (in a fresh subprocess unless ``isolate=False``):

- **first call**: the method at ``T_warm = min(T, 256)``, run twice; ``first_call_s`` is the
  first call minus the second, i.e. Numba compilation (or loading its on-disk cache) and
  other one-off set-up, reported separately and excluded from the timings. The first point of
  each (method, dtype) runs with an empty Numba cache (``cold_numba_cache``), so its
  ``first_call_s`` is the compile time; later points load the cache.
- **time**: at full size, one warm-up call (when ``repeats > 1``) then the median of
  ``repeats`` calls (``repeats`` falls to ``large_T_repeats`` from ``large_T`` on).
- **memory**: the peak resident set size of the process during a call minus its resident set
  just before it (``/proc/self/clear_refs`` resets the kernel's high-water mark ``VmHWM``
  before each call). This counts NumPy and Numba allocations alike (``tracemalloc`` sees only
  the former). Where the reset is not available the fallback is ``ru_maxrss`` (never reset:
  an upper bound), and the JSON says which was used.
- **useful flops**: each method's own count (:attr:`Method.flops`, e.g. ``4 T S H`` for exact
  attention: the two matrix products), divided by the median time and by the same-dtype GEMM
  rate (the better of a square ``n^3`` GEMM measured at the start and at the end of the run).

Infeasible points (a predicted peak above ``max_memory_bytes``, or ``T`` beyond a method's
``max_T``) are recorded under ``skipped`` with the reason, never dropped.

Scaling: the exponent ``p`` of ``time ~ c T^p``, the least-squares slope of ``log t`` on
``log T`` over the measured points with ``T >= fit_from`` (the range is stored with it);
linear-time methods should give about 1, exact attention about 2.

Adding a method is one :func:`register` call (see ``docs/bench.md`` for SEA's entry).
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = [
    "Method", "METHODS", "register", "machine", "median_time", "gemm_rate", "measure_point", "run_suite",
    "fit_exponent", "evaluate_goals", "refresh", "validate_suite", "format_suite", "plot_suite", "default_lengths", "PeakMemory",
]

GIB = 2**30


# ----------------------------------------------------------------------------- machine and timers
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


# ----------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class Method:
    """One benchmarked method.

    Attributes
    ----------
    name : str
        Registry key (also the CLI's ``--methods`` name).
    build : callable ``(q, k, v, dtype, seed) -> run``
        Returns a zero-argument callable that runs the method once on ``q, k, v (T, H)`` and
        returns its result (an array, or a result object with ``.output``). Work that a user
        pays on every call (hashing, feature draws) belongs in ``run``.
    flops : callable ``(T, H, result) -> float``
        Useful flops of one call (the method's own model, stated in ``description``).
    description : str
        Parameters and the flop model, shown in the JSON.
    max_T : int
        Largest T of the sweep for this method (the streaming oracle goes further).
    peak_bytes : callable ``(T, H, itemsize) -> float``, optional
        Predicted peak memory; points above the suite's memory cap are skipped (with the reason).
    expected_exponent : float
        1 for linear-time methods, 2 for quadratic: the scaling goal's target.
    auxiliary : bool
        A baseline for a goal (e.g. Performer at Scatterbrain's m), not a method of its own.
    """

    name: str
    build: Callable
    flops: Callable
    description: str = ""
    max_T: int = 65536
    peak_bytes: Callable | None = None
    expected_exponent: float = 1.0
    auxiliary: bool = False


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to :data:`METHODS` (replacing one of the same name) and return it."""
    if not isinstance(method, Method):
        raise TypeError(f"method: expected a refattn.bench.suite.Method, got {type(method).__name__}")
    METHODS[method.name] = method
    return method


def output_of(result) -> np.ndarray:
    """The ``(T, Hv)`` output of a method's result (an array or an object with ``.output``)."""
    return np.asarray(result if isinstance(result, np.ndarray) else result.output)


def _nnz(result) -> int:
    return result.support.nnz


def _performer_flops(T, H, m, causal, chunk=128):
    """Features ``2 (T + S) m H``, products ``2 S m Hv + 2 T m Hv``; causal chunks add
    ``2 T c (m + Hv)`` (T = S, Hv = H; as benchmarks/bench_performer.py)."""
    return 2 * (2 * T) * m * H + 2 * T * m * H * 2 + (2 * T * chunk * (m + H) if causal else 0)


def _exact(implementation):
    def build(q, k, v, dtype, seed):
        from refattn.exact import softmax_attention

        return lambda: softmax_attention(q, k, v, implementation=implementation, dtype=dtype)
    return build


def _performer(m, causal):
    def build(q, k, v, dtype, seed):
        from refattn.performer.attention import performer_attention

        return lambda: performer_attention(q, k, v, m=m, rng=seed, causal=causal, dtype=dtype, chunk_size=128)
    return build


def _buckets(T, per_bucket=64):
    """An even bucket count giving about ``per_bucket`` keys per bucket (Reformer's hash needs even)."""
    return max(2, 2 * (T // per_bucket // 2))


def _reformer(q, k, v, dtype, seed):
    from refattn.lsh.attention import reformer_attention

    nb = _buckets(q.shape[0])
    return lambda: reformer_attention(q, k, v, n_buckets=nb, chunk=64, rounds=1, rng=seed)


def _smyrf(q, k, v, dtype, seed):
    from refattn.lsh.attention import smyrf_attention

    nc = max(1, q.shape[0] // 64)
    return lambda: smyrf_attention(q, k, v, n_clusters=nc, rounds=1, rng=seed)


def _hyper(q, k, v, dtype, seed):
    from refattn.lsh.attention import hyper_attention

    return lambda: hyper_attention(q, k, v, block_size=64, n_samples=64, bits=4, rng=seed)


def _scatterbrain(q, k, v, dtype, seed):
    from refattn.lsh.hashes import simhash, simhash_planes
    from refattn.lsh.sparse import bucket_support
    from refattn.scatterbrain.attention import scatterbrain_attention

    bits = max(1, int(round(math.log2(max(q.shape[0], 2) / 64))))

    def run():
        planes = simhash_planes(q.shape[1], bits, seed + 10)  # its own seed: independent of the features
        sup = bucket_support(simhash(q, planes)[0], simhash(k, planes)[0])
        return scatterbrain_attention(q, k, v, sup, m=128, rng=seed)
    return run


def _register_builtin():
    exact_flops = lambda T, H, r: 4.0 * T * T * H  # noqa: E731  two GEMMs, T = S, Hv = H
    register(Method("exact_dense", _exact("dense"), exact_flops, expected_exponent=2.0, max_T=65536,
                    peak_bytes=lambda T, H, b: 4.0 * T * T * b,
                    description="softmax_attention(implementation='dense'); 4 T^2 H flops; T x S logits, "
                                "exponentials and probabilities (~4 T^2 itemsize bytes)"))
    register(Method("exact_streaming", _exact("numba"), exact_flops, expected_exponent=2.0, max_T=131072,
                    description="softmax_attention(implementation='numba'): online softmax, O((T + S) H) "
                                "memory; 4 T^2 H flops"))
    for causal in (False, True):
        register(Method(
            "performer_causal" if causal else "performer", _performer(256, causal),
            lambda T, H, r, c=causal: _performer_flops(T, H, 256, c),
            description=f"performer_attention(m=256, positive orthogonal features, {'causal, chunk 128' if causal else 'bidirectional'}); "
                        "flops: features 4 T m H + products 4 T m H" + (" + chunks 2 T 128 (m + H)" if causal else "")))
    register(Method("performer_m128", _performer(128, False), lambda T, H, r: _performer_flops(T, H, 128, False),
                    auxiliary=True,
                    description="Performer alone at Scatterbrain's m = 128 (bidirectional): the low-rank "
                                "part, the baseline of issue 5's goal"))
    sparse_note = "; useful flops 4 nnz H (logits and values on the support; hashing not counted)"
    register(Method("reformer", _reformer, lambda T, H, r: 4.0 * _nnz(r) * H,
                    description="reformer_attention(1 round, chunk 64, n_buckets = T/64)" + sparse_note))
    # peaks of the O(T^2) reference builders: measured ~1.25 (SMYRF) and ~3 (HyperAttention) bytes
    # per T x S entry at T = 4096, 8192 (docs/bench.md); predicted with a margin
    register(Method("smyrf", _smyrf, lambda T, H, r: 4.0 * _nnz(r) * H,
                    peak_bytes=lambda T, H, b: 1.5 * T * T,
                    description="smyrf_attention(1 round, n_clusters = T/64)" + sparse_note
                                + "; its cluster support is built from a dense T x S boolean (O(T^2) time "
                                  "and memory)"))
    register(Method("hyperattention", _hyper, lambda T, H, r: 4.0 * _nnz(r) * H,
                    peak_bytes=lambda T, H, b: 3.5 * T * T,
                    description="hyper_attention(block 64, 64 sampled columns, 4 bits, non-causal)" + sparse_note
                                + "; the reference builds dense T x S boolean masks (O(T^2) time and memory)"))
    register(Method("scatterbrain", _scatterbrain,
                    lambda T, H, r: _performer_flops(T, H, 128, False) + (4.0 * H + 2.0 * 128) * _nnz(r),
                    description="SimHash support (buckets of ~64 keys, bits = log2(T/64)) + "
                                "scatterbrain_attention(m = 128); flops: Performer's + (4 H + 2 m) nnz"))


def _sea(q, k, v, dtype, seed):
    from refattn.sea import sea_attention

    S = k.shape[0]  # K = 256 bins and k = 64 keys, capped at S for the quick run's small T
    return lambda: sea_attention(q, k, v, n_bins=min(256, S), topk=min(64, S), m=256, rng=seed)


_register_builtin()
# SEA (issue 6): the kernel estimate with values [P | V] (m = 256 features, K + H value
# columns), then exact attention on the selected support (docs/bench.md, "Adding a method").
register(Method("sea", _sea,
                lambda T, H, r: 4.0 * T * 256 * H + 4.0 * T * 256 * (min(256, T) + H) + 4.0 * r.supports[0].nnz * H,
                description="sea_attention(K = min(256, T) bins, k = min(64, T) keys, m = 256 features, fixed decoder); flops: "
                            "features 4 T m H + products 4 T m (K + H) + sparse 4 nnz H"))


# ----------------------------------------------------------------------------- measuring
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


def measure_point(name, T, H, dtype, *, seed=0, repeats=3, warm_T=256) -> dict:
    """Measure one (method, T, dtype) point in this process: see the module docstring."""
    method = METHODS[name]
    dt = np.dtype(dtype)
    small = method.build(*_inputs(min(T, warm_T), H, dt, seed), dt, seed)
    t0 = time.perf_counter()
    small()
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    small()
    t_second = time.perf_counter() - t0
    del small
    run = method.build(*_inputs(T, H, dt, seed), dt, seed)
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
            flops = float(method.flops(T, H, result))
            out_info = {"output_dtype": out.dtype.name, "output_shape": list(out.shape),
                        "output_finite": bool(np.isfinite(out).all())}
            if hasattr(result, "support") and result.support is not None:
                out_info["nnz"] = int(result.support.nnz)
            del out
        del result
    timed = times[1:] if repeats > 1 else times
    med = statistics.median(timed)
    return {"method": name, "T": T, "H": H, "dtype": dt.name, "repeats": len(timed), "median_s": med,
            "times_s": timed, "first_call_s": max(0.0, t_first - t_second), "first_call_total_s": t_first,
            "warm_T": min(T, warm_T), "peak_bytes": max(peaks), "memory_method": pm.method,
            "input_bytes": 3 * T * H * dt.itemsize, "flops": flops, "gflops": flops / med / 1e9, **out_info}


def _child_main():
    """Entry point of a measurement subprocess: one JSON case in argv, one JSON line out."""
    case = json.loads(sys.argv[1])
    if case["kind"] == "gemm":
        res = gemm_rate(case["dtype"], n=case["n"])
    else:
        res = measure_point(case["method"], case["T"], case["H"], case["dtype"], seed=case["seed"],
                            repeats=case["repeats"])
    print(json.dumps(res))


def _run_case(case, isolate, timeout):
    if not isolate:
        if case["kind"] == "gemm":
            return gemm_rate(case["dtype"], n=case["n"])
        return {**measure_point(case["method"], case["T"], case["H"], case["dtype"], seed=case["seed"],
                                repeats=case["repeats"]), "cold_numba_cache": False}
    import tempfile

    cmd = [sys.executable, "-c", "from refattn.bench.suite import _child_main; _child_main()", json.dumps(case)]
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


def default_lengths(T_min=1024, T_max=131072):
    """Powers of two from ``T_min`` to ``T_max`` (both rounded into that doubling ladder)."""
    out, T = [], T_min
    while T <= T_max:
        out.append(T)
        T *= 2
    return out


def run_suite(*, methods=None, lengths=None, dtypes=("float64", "float32"), H=64, seed=0, repeats=3,
              large_T=32768, large_T_repeats=1, max_memory_bytes=4 * GIB, gemm_n=4096, isolate=True,
              timeout=1800, fit_from=4096, note=None, progress=None, checkpoint=None) -> dict:
    """Run the sweep; return the JSON-ready suite (results, skipped, GEMM rates, exponents, goals).

    ``methods``: registry names (default: all); ``lengths``: the T values (default
    1024 .. 131072, each method up to its ``max_T``); ``progress``: a callable given one line
    per finished point; ``checkpoint``: a path where the partial suite (``"complete": false``,
    re-derivable with :func:`refresh`) is rewritten after every point, so a long sweep that is
    stopped keeps what it measured.
    """
    names = list(METHODS) if methods is None else list(methods)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"methods: unknown {unknown}; known: {sorted(METHODS)}")
    lengths = default_lengths() if lengths is None else sorted(int(T) for T in lengths)
    dtypes = [np.dtype(d).name for d in dtypes]
    say = progress or (lambda line: None)
    load = (lambda: list(os.getloadavg())) if hasattr(os, "getloadavg") else (lambda: None)
    started = time.time()
    suite = {
        "schema": "refattn.bench.suite/1",
        "complete": False,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)),
        "wall_s": None,
        "load_average": {"start": load(), "end": None},
        "note": note,
        "config": {"H": H, "seed": seed, "lengths": lengths, "dtypes": dtypes, "repeats": repeats,
                   "large_T": large_T, "large_T_repeats": large_T_repeats, "max_memory_bytes": max_memory_bytes,
                   "gemm_n": gemm_n, "isolated": bool(isolate), "fit_from": fit_from},
        "methods": {n: {"description": METHODS[n].description, "expected_exponent": METHODS[n].expected_exponent,
                        "auxiliary": METHODS[n].auxiliary, "max_T": METHODS[n].max_T} for n in names},
        "gemm": [],
        "results": [],
        "skipped": [],
    }
    gemm, results, skipped = suite["gemm"], suite["results"], suite["skipped"]

    def save():
        if checkpoint:
            tmp = f"{checkpoint}.tmp"
            with open(tmp, "w") as f:
                json.dump(suite, f, indent=1)
            os.replace(tmp, checkpoint)

    for dt in dtypes:
        gemm.append({**_run_case({"kind": "gemm", "dtype": dt, "n": gemm_n}, isolate, timeout), "when": "start"})
        say(f"GEMM {dt} n={gemm_n}: {gemm[-1].get('gflops', float('nan')):.1f} GFLOP/s")
    for dt in dtypes:
        itemsize = np.dtype(dt).itemsize
        for T in lengths:
            for name in names:
                m = METHODS[name]
                base = {"method": name, "T": T, "H": H, "dtype": dt}
                if T > m.max_T:
                    skipped.append({**base, "reason": f"beyond this method's sweep range (max_T = {m.max_T})"})
                    continue
                need = m.peak_bytes(T, H, itemsize) if m.peak_bytes else None
                if need is not None and need > max_memory_bytes:
                    skipped.append({**base, "reason": f"predicted peak memory {need / GIB:.1f} GiB exceeds the cap "
                                                      f"of {max_memory_bytes / GIB:.1f} GiB", "predicted_bytes": need})
                    continue
                reps = repeats if T < large_T else large_T_repeats
                cold = not any(r["method"] == name and r["dtype"] == dt for r in results)  # first point
                r = _run_case({"kind": "point", "method": name, "T": T, "H": H, "dtype": dt, "seed": seed,
                               "repeats": reps, "cold": cold}, isolate, timeout)
                if "error" in r:
                    skipped.append({**base, "reason": f"failed: {r['error']}"})
                    say(f"{name:<18} {dt} T={T:<7} FAILED: {r['error']}")
                    continue
                results.append({**r, "load_average_after": load()})
                save()
                say(f"{name:<18} {dt} T={T:<7} {r['median_s']:9.4f} s  peak {r['peak_bytes'] / 2**20:8.1f} MiB")
    for dt in dtypes:
        gemm.append({**_run_case({"kind": "gemm", "dtype": dt, "n": gemm_n}, isolate, timeout), "when": "end"})
    suite.update(complete=True, wall_s=time.time() - started)
    suite["load_average"]["end"] = load()
    refresh(suite)
    save()
    return suite


def refresh(suite) -> dict:
    """(Re)compute the derived figures of a suite from its measurements: ratios, exponents, goals.

    A saved JSON can be re-derived after the goal logic changes (``refattn bench --from-json``).
    """
    add_ratios(suite)
    suite["exponents"] = exponents(suite, fit_from=suite["config"]["fit_from"])
    suite["goals"] = evaluate_goals(suite)
    return suite


# ----------------------------------------------------------------------------- derived figures
def gemm_gflops(suite, dtype) -> float:
    """The same-dtype GEMM rate of the run: the better of its start and end measurements."""
    rates = [g["gflops"] for g in suite["gemm"] if g.get("dtype") == dtype and "gflops" in g]
    return max(rates) if rates else float("nan")


def point(suite, method, T, dtype):
    """The measured point, or None."""
    return next((r for r in suite["results"] if r["method"] == method and r["T"] == T and r["dtype"] == dtype), None)


def add_ratios(suite) -> None:
    """Add ``fraction_of_gemm`` and ``speedup_vs_exact`` (exact streaming, same T and dtype) to every result."""
    for r in suite["results"]:
        r["fraction_of_gemm"] = r["gflops"] / gemm_gflops(suite, r["dtype"])
        ex = point(suite, "exact_streaming", r["T"], r["dtype"])
        r["speedup_vs_exact"] = ex["median_s"] / r["median_s"] if ex else None


def fit_exponent(lengths, times):
    r"""Least-squares slope ``p`` of ``log t = log c + p log T`` and its intercept ``log c``.

    Needs at least two distinct ``T``; times must be positive.
    """
    T = np.asarray(lengths, dtype=np.float64).ravel()
    t = np.asarray(times, dtype=np.float64).ravel()
    if T.size != t.size:
        raise ValueError(f"times: {t.size} values for {T.size} lengths")
    if not (np.all(np.isfinite(T)) and np.all(T > 0)):
        raise ValueError("lengths: must be positive and finite")
    if not (np.all(np.isfinite(t)) and np.all(t > 0)):
        raise ValueError("times: must be positive and finite")
    if np.unique(T).size < 2:
        raise ValueError("lengths: need at least two distinct T to fit an exponent")
    p, logc = np.polyfit(np.log(T), np.log(t), 1)
    return float(p), float(logc)


def exponents(suite, fit_from=4096) -> list:
    """The fitted exponent per (method, dtype) over the measured ``T >= fit_from`` (with the range);
    when fewer than two such points exist, over all measured points (the range says which)."""
    out = []
    for name in suite["methods"]:
        for dt in suite["config"]["dtypes"]:
            pts = sorted((r["T"], r["median_s"]) for r in suite["results"] if r["method"] == name and r["dtype"] == dt)
            use = [p for p in pts if p[0] >= fit_from]
            if len(use) < 2:
                use = pts
            if len(use) < 2:
                continue
            p, _ = fit_exponent([t for t, _ in use], [s for _, s in use])
            out.append({"method": name, "dtype": dt, "exponent": p, "T_from": use[0][0], "T_to": use[-1][0],
                        "points": len(use), "expected": suite["methods"][name]["expected_exponent"]})
    return out


def _largest_common(suite, names, dtype, want):
    """``want`` if every method in ``names`` was measured there, else their largest common T (or None)."""
    sets = [{r["T"] for r in suite["results"] if r["method"] == n and r["dtype"] == dtype} for n in names]
    common = set.intersection(*sets) if sets else set()
    if want in common:
        return want
    return max(common) if common else None


def _goal(issue, goal, dtype, T, want_T, met, figure, detail=""):
    if T is not None and T != want_T:  # indicative only: no verdict away from the goal's size
        detail = (detail + "; " if detail else "") + f"measured at T = {T}, not the goal's T = {want_T}: no verdict"
        met = None
    return {"issue": issue, "goal": goal, "dtype": dtype, "T": T, "met": met, "figure": figure, "detail": detail}


def evaluate_goals(suite) -> list:
    """The speed goals of the method issues, as met / not met (None: not measured) with the figures.

    Thresholds, from the issues: 2: streaming float64 >= 50% of the GEMM rate at T = S = 16384;
    3: Performer causal <= 2.5x bidirectional at T = 65536 and no ``T x m x H`` array (peak
    memory below ``T m H itemsize``); 4: Reformer >= 20x faster than the exact streaming oracle at
    T = 65536 (and the crossover length); 5: Scatterbrain's correction costs at most about the
    low-rank part, read as ``(t_sb - t_pf) / t_pf <= 1`` at T = 65536 (m = 128); 6: SEA linear in
    T and no ``T x S`` allocation; 10: fitted exponents, about 1 for linear methods (<= 1.2)
    and about 2 for exact attention (1.8 .. 2.2).
    """
    goals = []
    dtypes = suite["config"]["dtypes"]

    def ratio_goal(issue, text, a, b, want_T, limit, dtypes_=dtypes, fmt="{:.2f}", larger_is_better=False):
        for dt in dtypes_:
            T = _largest_common(suite, [a, b], dt, want_T)
            if T is None:
                goals.append(_goal(issue, text, dt, None, want_T, None, None, "not measured"))
                continue
            pa, pb = point(suite, a, T, dt), point(suite, b, T, dt)
            val = pa["median_s"] / pb["median_s"]
            met = val >= limit if larger_is_better else val <= limit
            goals.append(_goal(issue, text, dt, T, want_T, bool(met), fmt.format(val)))

    # issue 2: the streaming oracle's rate
    for dt in ("float64",):
        if dt not in dtypes:
            continue
        T = _largest_common(suite, ["exact_streaming"], dt, 16384)
        p = point(suite, "exact_streaming", T, dt) if T else None
        goals.append(_goal(2, "exact streaming >= 50% of the GEMM rate", dt, T, 16384,
                           None if p is None else bool(p["fraction_of_gemm"] >= 0.5),
                           None if p is None else f"{p['fraction_of_gemm']:.0%} of {gemm_gflops(suite, dt):.1f} GFLOP/s"))
    # issue 3: Performer causal / bidirectional, and memory
    ratio_goal(3, "Performer causal time <= 2.5x bidirectional", "performer_causal", "performer", 65536, 2.5)
    for dt in dtypes:
        T = _largest_common(suite, ["performer_causal"], dt, 65536)
        p = point(suite, "performer_causal", T, dt) if T else None
        if p is None:
            goals.append(_goal(3, "Performer causal allocates no T x m x H array", dt, None, 65536, None, None,
                               "not measured"))
            continue
        bound = T * 256 * p["H"] * np.dtype(dt).itemsize
        goals.append(_goal(3, "Performer causal allocates no T x m x H array", dt, T, 65536,
                           bool(p["peak_bytes"] < bound),
                           f"peak {p['peak_bytes'] / 2**20:.0f} MiB < T m H itemsize = {bound / 2**20:.0f} MiB"
                           if p["peak_bytes"] < bound else
                           f"peak {p['peak_bytes'] / 2**20:.0f} MiB >= T m H itemsize = {bound / 2**20:.0f} MiB"))
    # issue 4: Reformer speed-up and crossover
    ratio_goal(4, "Reformer (1 round) >= 20x faster than exact streaming", "exact_streaming", "reformer", 65536, 20.0,
               fmt="{:.1f}x", larger_is_better=True)
    for dt in dtypes:
        rows = sorted((r["T"], r["speedup_vs_exact"]) for r in suite["results"]
                      if r["method"] == "reformer" and r["dtype"] == dt and r["speedup_vs_exact"] is not None)
        if rows:
            faster = [T for T, s in rows if s > 1]
            fig = f"faster from T = {min(faster)}" if faster else f"not faster up to T = {rows[-1][0]}"
            goals.append({"issue": 4, "goal": "Reformer crossover length (reported, no threshold)", "dtype": dt,
                          "T": None, "met": None, "figure": fig, "detail": f"measured T = {rows[0][0]} .. {rows[-1][0]}"})
    # issue 5: Scatterbrain's correction against the low-rank part
    for dt in dtypes:
        T = _largest_common(suite, ["scatterbrain", "performer_m128"], dt, 65536)
        if T is None:
            goals.append(_goal(5, "Scatterbrain correction <= about the low-rank part", dt, None, 65536, None, None,
                               "not measured"))
            continue
        sb, pf = point(suite, "scatterbrain", T, dt), point(suite, "performer_m128", T, dt)
        val = (sb["median_s"] - pf["median_s"]) / pf["median_s"]
        goals.append(_goal(5, "Scatterbrain correction <= about the low-rank part", dt, T, 65536, bool(val <= 1.0),
                           f"(t_sb - t_pf)/t_pf = {val:.2f}", "threshold 1.0 (the issue says 'about as much')"))
    # issue 6: SEA linear, no T x S allocation (the entry joins the registry as "sea")
    for dt in dtypes:
        T = _largest_common(suite, ["sea"], dt, 65536) if "sea" in suite["methods"] else None
        p = point(suite, "sea", T, dt) if T else None
        if p is None:
            goals.append(_goal(6, "SEA allocates no T x S array", dt, None, 65536, None, None,
                               "not measured (no 'sea' entry in this run)"))
            continue
        bound = T * T * np.dtype(dt).itemsize
        goals.append(_goal(6, "SEA allocates no T x S array", dt, T, 65536, bool(p["peak_bytes"] < bound),
                           f"peak {p['peak_bytes'] / 2**20:.0f} MiB vs T S itemsize = {bound / 2**20:.0f} MiB"))
    # issue 10 (and 6 for SEA): scaling exponents
    for e in suite.get("exponents", []):
        if suite["methods"][e["method"]]["auxiliary"]:
            continue
        if e["expected"] == 1.0:
            met, text = e["exponent"] <= 1.2, "linear in T: fitted exponent <= 1.2"
        else:
            met, text = abs(e["exponent"] - e["expected"]) <= 0.2, f"fitted exponent {e['expected']:g} +- 0.2"
        detail = f"fit over T = {e['T_from']} .. {e['T_to']} ({e['points']} points)"
        if e["points"] < 3:
            met, detail = None, detail + ": fewer than 3 points, no verdict"
        goals.append({"issue": 6 if e["method"] == "sea" else 10, "goal": f"{e['method']}: {text}", "dtype": e["dtype"],
                      "T": None, "met": None if met is None else bool(met), "figure": f"{e['exponent']:.2f}",
                      "detail": detail})
    return goals


def validate_suite(suite) -> list:
    """Problems with a suite's structure (empty when sound): every (method, T, dtype) of its
    config measured once or skipped with a reason, times and ratios positive and finite, outputs
    finite and of shape (T, H), GEMM rates at start and end, exponents finite, goal verdicts in
    {True, False, None}, and plain JSON. It checks structure, never speed."""
    problems = []
    cfg = suite.get("config", {})
    for key in ("schema", "machine", "date", "config", "methods", "gemm", "results", "skipped", "exponents", "goals"):
        if key not in suite:
            problems.append(f"missing key {key!r}")
    if problems:
        return problems
    for dt in cfg["dtypes"]:
        for when in ("start", "end"):
            if not any(g.get("dtype") == dt and g.get("when") == when and g.get("gflops", 0) > 0 for g in suite["gemm"]):
                problems.append(f"no GEMM rate for {dt} at the {when}")
    for name, info in suite["methods"].items():
        for T in cfg["lengths"]:
            for dt in cfg["dtypes"]:
                key = (name, T, dt)
                got = [r for r in suite["results"] if (r["method"], r["T"], r["dtype"]) == key]
                skip = [x for x in suite["skipped"] if (x["method"], x["T"], x["dtype"]) == key]
                if len(got) + len(skip) != 1:
                    problems.append(f"{key}: measured {len(got)} times, skipped {len(skip)} times")
                problems += [f"{key}: skipped without a reason" for x in skip if not x.get("reason")]
                for r in got:
                    finite = [r.get(f) for f in ("median_s", "gflops", "fraction_of_gemm", "flops")]
                    if not all(isinstance(x, (int, float)) and math.isfinite(x) and x > 0 for x in finite):
                        problems.append(f"{key}: time, flops or ratio not positive and finite: {finite}")
                    sp = r.get("speedup_vs_exact")
                    if sp is not None and not (math.isfinite(sp) and sp > 0):
                        problems.append(f"{key}: speed-up over exact not positive and finite: {sp}")
                    if not (r.get("peak_bytes", -1) >= 0 and r.get("first_call_s", -1) >= 0):
                        problems.append(f"{key}: negative peak memory or first-call time")
                    if r.get("output_shape") != [T, cfg["H"]] or not r.get("output_finite"):
                        problems.append(f"{key}: output shape {r.get('output_shape')} or not finite")
    for e in suite["exponents"]:
        if not (math.isfinite(e["exponent"]) and e["T_from"] < e["T_to"]):
            problems.append(f"exponent of {e['method']} {e['dtype']}: {e}")
    problems += [f"goal verdict {g['met']!r}" for g in suite["goals"] if g.get("met") not in (True, False, None)]
    try:
        json.dumps(suite, allow_nan=False)
    except (TypeError, ValueError) as exc:
        problems.append(f"not plain JSON: {exc}")
    return problems


# ----------------------------------------------------------------------------- output
def _fmt_s(t):
    return f"{t:.3g}" if t is not None else "-"


def format_suite(suite) -> str:
    """Tables: time per (method, T), ratios at the largest T, exponents, goals, skipped points."""
    lines = []
    m = suite["machine"]
    lines.append(f"machine: {m.get('cpu', '?')}, {m.get('cpus')} CPUs; {suite['date']}; "
                 f"load average {suite['load_average']['start']} -> {suite['load_average']['end']}")
    if suite.get("note"):
        lines.append(f"note: {suite['note']}")
    for g in suite["gemm"]:
        if "gflops" in g:
            lines.append(f"GEMM {g['dtype']} n={g['n']} ({g['when']}): {g['gflops']:.1f} GFLOP/s")
    Ts = suite["config"]["lengths"]
    for dt in suite["config"]["dtypes"]:
        lines.append("")
        lines.append(f"{dt}: median time (s), H = {suite['config']['H']}")
        lines.append(f"{'method':<18}" + "".join(f"{T:>9}" for T in Ts))
        for name in suite["methods"]:
            cells = []
            for T in Ts:
                p = point(suite, name, T, dt)
                cells.append(f"{_fmt_s(p['median_s']) if p else '-':>9}")
            lines.append(f"{name:<18}" + "".join(cells))
        lines.append(f"{'method':<18}{'T':>7} {'GFLOP/s':>8} {'/GEMM':>7} {'vs exact':>9} {'peak MiB':>9} {'compile s':>10}")
        for name in suite["methods"]:
            pts = [r for r in suite["results"] if r["method"] == name and r["dtype"] == dt]
            if not pts:
                continue
            p = max(pts, key=lambda r: r["T"])
            first = min(pts, key=lambda r: r["T"])["first_call_s"]  # the cold-cache point when isolated
            sp = f"{p['speedup_vs_exact']:.2f}x" if p["speedup_vs_exact"] else "-"
            lines.append(f"{name:<18}{p['T']:>7} {p['gflops']:>8.2f} {p['fraction_of_gemm']:>7.1%} {sp:>9} "
                         f"{p['peak_bytes'] / 2**20:>9.1f} {first:>10.3f}")
    lines.append("")
    lines.append("scaling exponents (least squares of log t on log T)")
    for e in suite["exponents"]:
        lines.append(f"  {e['method']:<18} {e['dtype']}: {e['exponent']:.2f} over T = {e['T_from']} .. {e['T_to']}"
                     f" ({e['points']} points; expected {e['expected']:g})")
    lines.append("")
    lines.append("goals")
    for g in suite["goals"]:
        verdict = {True: "met", False: "NOT MET", None: "-"}[g["met"]]
        lines.append(f"  [{verdict:>7}] issue {g['issue']}: {g['goal']} ({g['dtype']}): {g['figure'] or ''}"
                     + (f"  ({g['detail']})" if g["detail"] else ""))
    if suite["skipped"]:
        lines.append("")
        lines.append("skipped points")
        for s in suite["skipped"]:
            lines.append(f"  {s['method']:<18} {s['dtype']} T={s['T']}: {s['reason']}")
    return "\n".join(lines)


def plot_suite(suite, path) -> None:
    """Time against T, log-log, one panel per dtype (needs matplotlib: ``refattn[plots]``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dts = suite["config"]["dtypes"]
    fig, axes = plt.subplots(1, len(dts), figsize=(6.5 * len(dts), 5), squeeze=False, sharey=True)
    for ax, dt in zip(axes[0], dts):
        for name in suite["methods"]:
            pts = sorted((r["T"], r["median_s"]) for r in suite["results"] if r["method"] == name and r["dtype"] == dt)
            if pts:
                ax.loglog(*zip(*pts), marker="o", ms=3, label=name, ls="--" if suite["methods"][name]["auxiliary"] else "-")
        Ts = sorted({r["T"] for r in suite["results"] if r["dtype"] == dt})
        if Ts:
            ax.set_xscale("log", base=2)
            ax.set_xticks(Ts, [str(T) for T in Ts], rotation=45, fontsize=7)
            ax.minorticks_off()
        ax.set_title(f"{dt}, H = {suite['config']['H']}")
        ax.set_xlabel("T (= S)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("median time (s)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"refattn bench: {suite['machine'].get('cpu', '?')} ({suite['date']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
