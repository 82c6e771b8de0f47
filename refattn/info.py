"""`refattn info`: versions and which backends are usable on this machine."""

from __future__ import annotations

import importlib
import platform
import shutil
import subprocess
from pathlib import Path

from refattn import __version__
from refattn._extras import install_hint
from refattn.exact import softmax_attention
from refattn.kernels import numba_enabled
from refattn.kernels.cuda.backend import compile_all
from refattn.kernels.cuda.build import ARCHS, SOURCES, find_nvcc, nvcc_check_all

__all__ = ["collect_info", "format_info"]


def _version(module):
    try:
        return importlib.import_module(module).__version__
    except Exception:  # not installed, or broken
        return None


def _numba_status():
    if not numba_enabled():
        return {"usable": False, "reason": "disabled (REFATTN_DISABLE_NUMBA) or not installed"}
    try:
        import numba
        import numpy as np


        w = np.ones((2, 3))
        softmax_attention(w, w, w, implementation="numba")
        return {"usable": True, "threads": numba.config.NUMBA_NUM_THREADS}
    except Exception as exc:  # report, do not crash
        return {"usable": False, "reason": f"{type(exc).__name__}: {exc}"}


def _cupy_status():
    try:
        import cupy
    except Exception as exc:
        return {"installed": False, "reason": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    status = {"installed": True, "version": cupy.__version__}
    try:
        n = cupy.cuda.runtime.getDeviceCount()
        status["devices"] = n
        if n:
            props = cupy.cuda.runtime.getDeviceProperties(0)
            status["device0"] = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
            status["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
            status["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
    except Exception as exc:
        status["devices"] = 0
        status["reason"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return status


def _blas_owner(filepath: str) -> str:
    """The package whose wheel ships a BLAS library (``.../numpy.libs/libscipy_openblas64_...so`` ->
    ``numpy``): NumPy and SciPy each load their own, and ``refattn info`` says which is which."""
    for part in reversed(Path(filepath).parts):
        if part.endswith(".libs"):
            return part[:-len(".libs")]
    return Path(filepath).name


def _nvcc_status():
    path = shutil.which("nvcc")
    if path is None:
        return {"found": False}
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
        release = [line for line in out.splitlines() if "release" in line]
        return {"found": True, "path": path, "version": release[-1].strip() if release else out.strip()}
    except Exception as exc:
        return {"found": True, "path": path, "error": str(exc)}


def _cuda_kernels_status(cupy_status):
    """Whether refattn's CUDA sources compile: with nvcc (PTX for sm_80, sm_90; no GPU needed)
    and, when CuPy sees a device, with NVRTC for that device (what the GPU backend runs)."""
    status = {"sources": list(SOURCES)}
    if find_nvcc() is None:
        status["nvcc"] = "not checked (nvcc not found)"
    else:
        try:
            errors = {k: v for k, v in nvcc_check_all()[1].items() if v}
            status["nvcc"] = "ok" if not errors else "FAIL"
            status["nvcc_archs"] = [f"compute_{a}" for a in ARCHS]
            if errors:
                status["nvcc_errors"] = {k: v.splitlines()[-1] for k, v in errors.items()}
        except Exception as exc:  # report, do not crash
            status["nvcc"] = f"error: {type(exc).__name__}: {exc}".splitlines()[0]
    if cupy_status.get("devices"):
        try:
            status["nvrtc"] = f"ok ({len(compile_all())} kernels on device 0)"
        except Exception as exc:
            status["nvrtc"] = f"FAIL: {type(exc).__name__}: {exc}".splitlines()[0]
    else:
        status["nvrtc"] = "not checked (no CuPy device)"
    return status


def collect_info() -> dict:
    """Everything `refattn info` prints, as a dict."""
    info = {
        "refattn": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {m: _version(m) for m in ("numpy", "scipy", "numba", "mpmath", "hypothesis", "cupy")},
        "numba": _numba_status(),
        "cupy": _cupy_status(),
        "nvcc": _nvcc_status(),
    }
    info["cuda_kernels"] = _cuda_kernels_status(info["cupy"])
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [
            {**{k: d.get(k) for k in ("internal_api", "version", "num_threads", "architecture")},
             "used_by": _blas_owner(d.get("filepath") or "")}
            for d in threadpool_info() if d.get("user_api") == "blas"
        ]
    except Exception:  # threadpoolctl is a dependency, but info must never crash
        info["blas"] = []
    return info


def format_info(info: dict) -> str:
    lines = [f"refattn {info['refattn']}  (Python {info['python']}, {info['platform']})"]
    lines.append("versions: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in info["versions"].items()))
    nb = info["numba"]
    lines.append("numba backend: " + (f"usable, {nb['threads']} threads" if nb["usable"] else f"unusable ({nb['reason']})"))
    cp = info["cupy"]
    if cp["installed"]:
        dev = f"{cp.get('devices', 0)} GPU(s)" + (f", {cp['device0']}" if cp.get("device0") else "")
        lines.append(f"cupy backend: cupy {cp['version']}, {dev}" + (f" ({cp['reason']})" if cp.get("reason") else ""))
        if cp.get("cuda_runtime"):
            lines.append(f"cuda: runtime {cp['cuda_runtime']}, driver {cp.get('cuda_driver', '?')}")
    else:
        lines.append(f"cupy backend: not installed (for an NVIDIA GPU: {install_hint('gpu')})")
    nv = info["nvcc"]
    lines.append("nvcc: " + (f"{nv.get('version', '?')} ({nv['path']})" if nv["found"] else "not found"))
    ck = info.get("cuda_kernels")
    if ck:
        archs = "/".join(ck.get("nvcc_archs", []))
        lines.append(f"cuda kernels ({len(ck['sources'])} sources): nvcc {ck['nvcc']}" + (f" (PTX {archs})" if archs else "")
                     + f"; nvrtc {ck['nvrtc']}")
        for src, err in ck.get("nvcc_errors", {}).items():
            lines.append(f"  {src}: {err}")
    for b in info.get("blas", []):
        lines.append(f"blas ({b.get('used_by') or 'loaded'}): {b['internal_api']} {b['version']}, "
                     f"{b['num_threads']} threads, {b['architecture']}")
    return "\n".join(lines)
