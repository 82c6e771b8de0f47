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


def test_install_advice_works_from_a_clone_and_from_pypi():
    """Every install hint names an extra that pyproject.toml defines, and the PyPI packages that
    extra installs (refattn itself is not on an index: 'pip install refattn[gpu]' would fail)."""
    import re
    import tomllib
    from pathlib import Path

    from refattn._extras import EXTRAS, install_hint
    from refattn.info import collect_info, format_info

    extras = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    for extra, packages in EXTRAS.items():
        names = {re.split(r"[<>=\[]", req)[0] for req in extras[extra]}
        assert {re.split(r"[\[]", p)[0] for p in packages.split()} <= names, (extra, names)
        assert f"pip install -e '.[{extra}]'" in install_hint(extra)
    assert "refattn[" not in format_info(collect_info())


def test_each_blas_line_names_the_package_that_loaded_it():
    """NumPy and SciPy wheels each bring their own OpenBLAS: every blas line says whose it is."""
    from refattn.info import _blas_owner

    assert _blas_owner("/x/site-packages/numpy.libs/libscipy_openblas64_-32a4.so") == "numpy"
    assert _blas_owner("/usr/lib/libopenblas.so.0") == "libopenblas.so.0"
    lines = [ln for ln in format_info(collect_info()).splitlines() if ln.startswith("blas")]
    assert lines and all(ln.startswith("blas (") and "): " in ln for ln in lines)
