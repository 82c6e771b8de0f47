"""Shared pieces of the benchmark scripts: the machine's description and a median timer.

Both live in :mod:`refattn.bench.measure` (the installed suite behind ``refattn bench``); this module
re-exports them for the per-method scripts here.
"""

from __future__ import annotations

from refattn.bench.measure import machine, median_time

__all__ = ["machine", "median_time"]
