"""Every CUDA source compiles with nvcc to PTX for sm_80 and sm_90 (warnings are errors), on a
machine without a GPU; skipped cleanly without nvcc. CI has nvcc, so a syntax error in GPU code
fails the build. A broken source is rejected (the check can fail). `refattn info` reports the
kernels' compile status."""

from __future__ import annotations

import json

import pytest

from refattn.cli import main
from refattn.kernels.cuda.build import (
    ARCHS,
    CUDA_DIR,
    SOURCES,
    find_nvcc,
    find_nvrtc,
    nvcc_check,
    nvcc_check_all,
    nvrtc_check,
)

needs_nvcc = pytest.mark.skipif(find_nvcc() is None, reason="nvcc not found on PATH or in $CUDA_HOME/bin")


def test_sources_and_kernels_are_listed():
    """The package data and the kernel table agree: every listed kernel is defined in its source."""
    assert sorted(p.name for p in CUDA_DIR.glob("*.cu")) == sorted(SOURCES)
    for source, kernels in SOURCES.items():
        text = (CUDA_DIR / source).read_text()
        for name in kernels:
            base = name.rsplit("_f", 1)[0] if name.endswith(("_f32", "_f64")) else name
            assert f"void {name}(" in text or f"void {base}_##SUFFIX(" in text, (source, name)


@pytest.fixture(scope="module")
def nvcc_builds():
    """All sources compiled once (in parallel; cached by the sources' hash, as `refattn info` does)."""
    return nvcc_check_all()


@needs_nvcc
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_source_compiles_with_nvcc(source, nvcc_builds):
    """The fatbin holds PTX for both targets with an entry point for every kernel of the source."""
    assert set(ARCHS) == {"80", "90"}
    folder, errors = nvcc_builds
    assert errors[source] is None, errors[source]
    ptx = (folder / source.replace(".cu", ".fatbin")).read_bytes()
    for arch in ARCHS:
        assert ptx.count(f".target sm_{arch}".encode()) == 1, arch
    for name in SOURCES[source]:
        assert ptx.count(f".entry {name}(".encode()) == len(ARCHS), name


@needs_nvcc
def test_broken_source_is_rejected(tmp_path):
    bad = tmp_path / "broken.cu"
    bad.write_text('#include "refattn_cuda.cuh"\nRA_GLOBAL void broken(i64 n_threads) { undefined_name = 1; }\n')
    with pytest.raises(RuntimeError, match="broken.cu: nvcc failed"):
        nvcc_check(str(bad), tmp_path)


@pytest.mark.skipif(find_nvrtc() is None, reason="libnvrtc not found (REFATTN_NVRTC names it)")
def test_broken_source_is_rejected_by_nvrtc(tmp_path):
    bad = tmp_path / "broken.cu"
    bad.write_text('#include "refattn_cuda.cuh"\nRA_GLOBAL void broken(i64 n_threads) { undefined_name = 1; }\n')
    with pytest.raises(RuntimeError, match="broken.cu: NVRTC failed for compute_80"):
        nvrtc_check(str(bad), "80")


@pytest.mark.skipif(find_nvrtc() is None, reason="libnvrtc not found (REFATTN_NVRTC names it)")
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_source_compiles_with_nvrtc_as_cupy_does(source):
    """The run-time compile of the CuPy backend (NVRTC, no host headers), without a GPU."""
    for arch in ARCHS:
        assert nvrtc_check(source, arch) > 0


def test_info_reports_the_cuda_kernels(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    ck = info["cuda_kernels"]
    assert ck["sources"] == list(SOURCES)
    if find_nvcc() is None:
        assert ck["nvcc"].startswith("not checked")
    else:
        assert ck["nvcc"] == "ok", ck
        assert ck["nvcc_archs"] == ["compute_80", "compute_90"]
    assert "nvrtc" in ck
    assert main(["info"]) == 0
    assert "cuda kernels (4 sources)" in capsys.readouterr().out
