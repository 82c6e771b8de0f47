"""Shared pieces of the benchmark scripts: the machine's description and a median timer."""

from __future__ import annotations

import os
import platform
import statistics
import time

__all__ = ["machine", "median_time"]


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
