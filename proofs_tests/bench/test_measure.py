"""Measuring one point (refattn.bench.measure): the memory meter with power twins for NumPy and Numba
allocations, and the subprocess path against the in-process one. Nothing here asserts on time.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

from refattn.bench import measure
from refattn.bench.measure import PeakMemory

MiB = 2**20


@numba.njit(cache=True)
def _numba_fill(n):
    a = np.ones(n)
    return a.sum()


def test_peak_memory_sees_numpy_allocations():
    """A touched 64 MiB array shows as >= 64 MiB of peak; the meter has power."""
    with PeakMemory() as pm:
        a = np.ones(8 * MiB)  # 64 MiB, written so the pages are resident
        del a
    assert pm.peak_bytes >= 63 * MiB, (pm.peak_bytes, pm.method)


def test_peak_memory_twin_without_allocation():
    """The twin: the same block without the array stays far below 64 MiB (the meter is reset per block)."""
    big = np.ones(16 * MiB)  # 128 MiB resident before the block: must not be counted
    with PeakMemory() as pm:
        x = float(big[::4096].sum())
    assert x > 0
    if pm.method != "vmhwm-reset":
        pytest.skip("ru_maxrss cannot be reset: only an upper bound on this platform")
    assert pm.peak_bytes < 16 * MiB, pm.peak_bytes


def test_peak_memory_sees_numba_allocations():
    """Allocations inside a Numba kernel (which tracemalloc does not see) count too."""
    fill = _numba_fill
    fill(8)
    with PeakMemory() as pm:
        assert fill(8 * MiB) == 8 * MiB
    assert pm.peak_bytes >= 63 * MiB, pm.peak_bytes


def test_isolated_point_matches_in_process_schema():
    """One point through the subprocess path (what the full sweep uses) has the same fields."""
    case = {"kind": "point", "method": "exact streaming", "T": 128, "H": 16, "dtype": "float32", "seed": 0,
            "repeats": 1, "budget": 128}
    sub = measure.run_case(case, isolate=True, timeout=300)
    here = measure.run_case(case, isolate=False, timeout=300)
    assert "error" not in sub, sub
    assert set(sub) == set(here) and sub["output_dtype"] == "float32" and sub["median_s"] > 0
