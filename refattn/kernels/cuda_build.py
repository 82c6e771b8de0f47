"""The CUDA kernel sources (package data in ``refattn/kernels/cuda``) and their two builds.

- :func:`nvcc_check`: compile every source with ``nvcc`` to PTX for the given virtual
  architectures (default ``compute_80`` and ``compute_90``, embedded in one fatbin per source,
  one nvcc call per source); warnings are errors. Needs nvcc, not a GPU: CI runs it.
- :class:`HostLauncher`: the same sources compiled by the host C++ compiler (``g++ -x c++``),
  where ``RA_FOR_EACH_THREAD`` is a serial loop over the thread indices (see
  ``cuda/refattn_cuda.cuh``), loaded with ctypes. It runs every kernel's logic on the CPU,
  one "thread" after another, so :mod:`refattn.kernels.cuda_ops` is tested against the NumPy
  twins without a GPU. It checks the arithmetic and indexing, not the launch configuration,
  memory transfers or races (the kernels have no shared memory and write disjoint outputs).

CuPy itself compiles the sources at run time with NVRTC (:mod:`refattn.kernels.cupy_backend`).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["CUDA_DIR", "HEADER", "SOURCES", "ARCHS", "find_nvcc", "nvcc_check", "nvcc_check_all", "host_library",
           "HostLauncher"]

CUDA_DIR = Path(__file__).with_name("cuda")
HEADER = CUDA_DIR / "refattn_cuda.cuh"
#: kernel file -> the kernels it defines
SOURCES = {
    "hashing.cu": ("simhash_codes", "argmax_buckets", "e2lsh_buckets"),
    "sparse.cu": ("sddmm", "row_softmax", "spmm"),
    "favor_prefix.cu": tuple(f"favor_{k}_{s}" for s in ("f64", "f32") for k in ("chunk_sums", "scan_chunks", "causal_rows")),
    "streaming.cu": ("stream_attention_f64", "stream_attention_f32"),
}
ARCHS = ("80", "90")
_FLAGS_VERSION = "v1"  # bump when nvcc_check's flags change: names the cache of successful builds


def find_nvcc():
    """Path of ``nvcc`` (``$CUDA_HOME/bin`` first, then ``PATH``), or None."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and (Path(home) / "bin" / "nvcc").is_file():
        return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def nvcc_check(source, out_dir, *, archs=ARCHS, nvcc=None, timeout=300):
    """Compile one source (a name in :data:`SOURCES`) to PTX for each ``compute_XX`` in ``archs``.

    Returns the path of the fatbin (uncompressed: the PTX text of each architecture is in it). Raises ``FileNotFoundError`` without nvcc and
    ``RuntimeError`` with nvcc's message when the source does not compile.
    """
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise FileNotFoundError("nvcc: not found on PATH or in $CUDA_HOME/bin")
    out = Path(out_dir) / (Path(source).stem + ".fatbin")
    cmd = [nvcc, "-std=c++17", "-Werror", "all-warnings", "-I", str(CUDA_DIR), "--no-compress", "--fatbin", "-o", str(out)]
    for a in archs:
        cmd += ["-gencode", f"arch=compute_{a},code=compute_{a}"]
    res = subprocess.run(cmd + [str(CUDA_DIR / source)], capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"{source}: nvcc failed ({' '.join(cmd)}):\n{res.stderr.strip()}")
    return out


def _digest():
    """Hash of the header and every source: names the cached builds."""
    paths = [HEADER] + [CUDA_DIR / s for s in SOURCES]
    return hashlib.sha256(b"".join(p.read_bytes() for p in paths)).hexdigest()[:16]


def _cache_dir(kind):
    path = Path(tempfile.gettempdir()) / f"refattn-cuda-{kind}-{os.getuid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def nvcc_check_all(*, archs=ARCHS, nvcc=None):
    """Compile every source (:func:`nvcc_check`, in parallel): ``(folder, {source: None or the error})``,
    the fatbins being ``folder / (stem + ".fatbin")``.

    Successful builds are cached by the sources' hash, the compile flags and the architectures,
    so `refattn info` and the tests pay the compile once per change of the sources.
    Raises ``FileNotFoundError`` without nvcc.
    """
    from concurrent.futures import ThreadPoolExecutor

    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise FileNotFoundError("nvcc: not found on PATH or in $CUDA_HOME/bin")
    out_dir = _cache_dir("nvcc") / f"{_digest()}-{_FLAGS_VERSION}-{'-'.join(archs)}"
    out_dir.mkdir(exist_ok=True)

    def one(source):
        if (out_dir / (Path(source).stem + ".fatbin")).exists():
            return None
        try:
            with tempfile.TemporaryDirectory(dir=out_dir) as tmp:  # a finished fatbin only, never a partial one
                os.replace(nvcc_check(source, tmp, archs=archs, nvcc=nvcc), out_dir / (Path(source).stem + ".fatbin"))
            return None
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            return str(exc)

    with ThreadPoolExecutor(max_workers=len(SOURCES)) as pool:
        return out_dir, dict(zip(SOURCES, pool.map(one, SOURCES)))


def _host_compiler():
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def host_library(build_dir=None):
    """Compile every source into one host shared library (cached by the sources' hash); its path.

    Raises ``FileNotFoundError`` without a C++ compiler, ``RuntimeError`` if compilation fails.
    """
    cxx = _host_compiler()
    if cxx is None:
        raise FileNotFoundError("CXX: no host C++ compiler (g++, c++, clang++) found")
    build = Path(build_dir) if build_dir else _cache_dir("host")
    build.mkdir(parents=True, exist_ok=True)
    lib = build / f"refattn_cuda_host_{_digest()}.so"
    if not lib.exists():
        tmp = build / f"{lib.name}.{os.getpid()}.tmp"
        cmd = [cxx, "-x", "c++", "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC",
               "-I", str(CUDA_DIR), "-o", str(tmp)] + [str(CUDA_DIR / s) for s in SOURCES]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            raise RuntimeError(f"host build of the CUDA sources failed ({' '.join(cmd)}):\n{res.stderr.strip()}")
        os.replace(tmp, lib)  # atomic: concurrent test processes never load a half-written library
    return lib


_CTYPES = {np.int64: ctypes.c_longlong, np.int32: ctypes.c_int, np.float64: ctypes.c_double,
           np.float32: ctypes.c_float}


class HostLauncher:
    """Runs the kernels' host build: ``launcher(name, n_threads, *args)`` with NumPy arrays
    (C-contiguous, passed as pointers) and NumPy scalars (``np.int64``, ``np.int32``,
    ``np.float64``, ``np.float32``, passed by value), as :class:`~refattn.kernels.cupy_backend.CupyLauncher`."""

    xp = np

    def __init__(self, build_dir=None):
        self._lib = ctypes.CDLL(str(host_library(build_dir)))

    def __call__(self, name, n_threads, *args):
        fn = getattr(self._lib, name)
        cargs = [ctypes.c_longlong(int(n_threads))]
        for a in args:
            if isinstance(a, np.ndarray):
                if not a.flags.c_contiguous:
                    raise ValueError(f"{name}: array arguments must be C-contiguous")
                cargs.append(ctypes.c_void_p(a.ctypes.data))
            else:
                cargs.append(_CTYPES[type(a)](a))
        fn.restype = None
        fn(*cargs)
