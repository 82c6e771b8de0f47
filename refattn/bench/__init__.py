r"""The benchmark suite (``refattn bench``): speed, memory and scaling of every method of the one
registry ([`refattn.evaluation.methods`][refattn.evaluation.methods]), as ratios measured in one run.

Every point runs a registry method at ``budget`` stored numbers per query row (its budget rule,
capped at ``T``), on ``q, k, v (T, H)`` standard normal times 0.5, in a dtype;
[`run_suite`][refattn.bench.suite.run_suite] measures every (entry, dtype, T) point and, in the same
run, the matrix-multiply (GEMM) rate of this machine, so every figure is also a ratio: a fraction
of the GEMM rate (useful flops / time / GEMM rate) and a speed-up over the exact streaming oracle
at the same T and dtype. The machines are shared and noisy: a ratio of two figures measured
minutes apart on the same machine is what can be compared across runs, never an absolute time.
Nothing here asserts on time.

Per point (in a fresh subprocess unless ``isolate=False``; [`refattn.bench.measure`][refattn.bench.measure]):

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
- **useful flops**: each method's own model (``Method.flops``, e.g. ``4 T S H`` for exact
  attention: the two matrix products), divided by the median time and by the same-dtype GEMM
  rate (the better of a square ``n^3`` GEMM measured at the start and at the end of the run).

Infeasible points (a predicted peak above ``max_memory_bytes``, or ``T`` beyond a method's
``max_T``) are recorded under ``skipped`` with the reason, never dropped.

Scaling: the exponent ``p`` of ``time ~ c T^p``, the least-squares slope of ``log t`` on
``log T`` over the measured points with ``T >= fit_from`` (the range is stored with it);
linear-time methods should give about 1, exact attention about 2.

Goals are data, not code ([`evaluate_goals`][refattn.bench.suite.evaluate_goals]).
"""

from refattn.bench.format import format_suite, plot_suite, validate_suite
from refattn.bench.measure import PeakMemory, gemm_rate, machine, measure_point, median_time
from refattn.bench.suite import (
    GIB,
    default_entries,
    default_lengths,
    evaluate_goals,
    exponents,
    fit_exponent,
    load_goals,
    refresh,
    run_suite,
)

__all__ = ["run_suite", "refresh", "default_entries", "default_lengths", "evaluate_goals", "load_goals", "exponents",
           "fit_exponent", "validate_suite", "format_suite", "plot_suite", "PeakMemory", "gemm_rate", "machine",
           "measure_point", "median_time", "GIB"]
