"""The CUDA kernel sources (package data in ``refattn/kernels/cuda``) and their two builds.

- [`nvcc_check`][refattn.kernels.cuda.build.nvcc_check]: compile every source with ``nvcc`` to PTX for the given virtual
  architectures (default ``compute_80`` and ``compute_90``, embedded in one fatbin per source,
  one nvcc call per source); warnings are errors. Needs nvcc, not a GPU: CI runs it.
- [`HostLauncher`][refattn.kernels.cuda.build.HostLauncher]: the same sources compiled by the host C++ compiler (``g++ -x c++``),
  where ``RA_FOR_EACH_THREAD`` is a serial loop over the thread indices (see
  ``cuda/refattn_cuda.cuh``), loaded with ctypes. It runs every kernel's logic on the CPU,
  one "thread" after another, so [`refattn.kernels.cuda.ops`][refattn.kernels.cuda.ops] is tested against the NumPy
  twins without a GPU. It checks the arithmetic and indexing, not the launch configuration,
  memory transfers or races (the kernels have no shared memory and write disjoint outputs).

CuPy itself compiles the sources at run time with NVRTC ([`refattn.kernels.cuda.backend`][refattn.kernels.cuda.backend]);
[`nvrtc_check`][refattn.kernels.cuda.build.nvrtc_check] runs that compile (same options) through ``libnvrtc`` directly, without
CuPy or a GPU, wherever the library is found.
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

__all__ = ["CUDA_DIR", "HEADER", "SOURCES", "ARCHS", "NVRTC_OPTIONS", "find_nvcc", "nvcc_check", "nvcc_check_all",
           "find_nvrtc", "nvrtc_check", "host_library", "HostLauncher"]

CUDA_DIR = Path(__file__).parent
HEADER = CUDA_DIR / "refattn_cuda.cuh"
#: kernel file -> the kernels it defines
SOURCES = {
    "hashing.cu": ("simhash_codes", "argmax_buckets", "e2lsh_buckets"),
    "sparse.cu": ("sddmm", "row_softmax", "spmm"),
    "favor_prefix.cu": tuple(f"favor_{k}_{s}" for s in ("f64", "f32") for k in ("chunk_sums", "scan_chunks", "causal_rows")),
    "streaming.cu": ("stream_attention_f64", "stream_attention_f32"),
}
ARCHS = ("80", "90")
NVRTC_OPTIONS = ("-std=c++17", f"-I{CUDA_DIR}")  # what the CuPy backend passes to RawModule
_FLAGS_VERSION = "v1"  # bump when nvcc_check's flags change: names the cache of successful builds


def find_nvcc():
    """Path of ``nvcc`` (``$CUDA_HOME/bin`` first, then ``PATH``), or None."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and (Path(home) / "bin" / "nvcc").is_file():
        return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def nvcc_check(source, out_dir, *, archs=ARCHS, nvcc=None, timeout=300):
    """Compile one source (a name in `SOURCES`) to PTX for each ``compute_XX`` in ``archs``.

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
    """Compile every source ([`nvcc_check`][refattn.kernels.cuda.build.nvcc_check], in parallel): ``(folder, {source: None or the error})``,
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


def find_nvrtc():
    """Path of ``libnvrtc`` (``$REFATTN_NVRTC``, the loader's search, ``$CUDA_HOME/lib64``), or None."""
    import ctypes.util

    if os.environ.get("REFATTN_NVRTC"):
        return os.environ["REFATTN_NVRTC"]
    found = ctypes.util.find_library("nvrtc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            libs = sorted((Path(home) / "lib64").glob("libnvrtc.so*"))
            if libs:
                return str(libs[0])
    return None


def nvrtc_check(source, arch, *, library=None):
    """Compile one source with NVRTC as CuPy does (`NVRTC_OPTIONS`) for ``compute_<arch>``;
    returns the PTX size in bytes. Raises ``FileNotFoundError`` without libnvrtc and
    ``RuntimeError`` with NVRTC's log when the source does not compile."""
    library = library or find_nvrtc()
    if library is None:
        raise FileNotFoundError("libnvrtc: not found (set REFATTN_NVRTC to its path)")
    lib = ctypes.CDLL(library)
    path = CUDA_DIR / source
    prog = ctypes.c_void_p()
    if lib.nvrtcCreateProgram(ctypes.byref(prog), path.read_bytes(), path.name.encode(), 0, None, None):
        raise RuntimeError(f"{source}: nvrtcCreateProgram failed")
    try:
        opts = [o.encode() for o in NVRTC_OPTIONS + (f"--gpu-architecture=compute_{arch}",)]
        rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        if rc != 0:
            raise RuntimeError(f"{source}: NVRTC failed for compute_{arch}:\n{log.value.decode(errors='replace').strip()}")
        lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
        return size.value
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


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
    ``np.float64``, ``np.float32``, passed by value), as [`CupyLauncher`][refattn.kernels.cuda.backend.CupyLauncher]."""

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
