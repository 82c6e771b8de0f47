"""Versions and usable backends (refattn.info): what ``refattn info`` reports. Deterministic."""

import numpy as np

import refattn
from refattn.info import collect_info, format_info


def test_collect_info_reports_versions_and_a_working_numba():
    info = collect_info()
    assert info["refattn"] == refattn.__version__ and info["versions"]["numpy"] == np.__version__
    assert info["numba"]["usable"] is True  # it ran a tiny kernel
    assert {"python", "platform", "cupy", "nvcc", "cuda_kernels"} <= set(info)
    text = format_info(info)
    assert refattn.__version__ in text and "numba backend" in text


def test_disabled_numba_is_reported_with_the_reason(monkeypatch):
    """Power twin: the status follows REFATTN_DISABLE_NUMBA instead of always saying usable."""
    monkeypatch.setenv("REFATTN_DISABLE_NUMBA", "1")
    numba = collect_info()["numba"]
    assert numba["usable"] is False and "REFATTN_DISABLE_NUMBA" in numba["reason"]
