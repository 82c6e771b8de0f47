"""The GPU backend: the kernels of ``cuda/*.cu`` on CuPy arrays (CuPy in, CuPy out).

The public functions ([`refattn.lsh.simhash`][refattn.lsh.hashes.simhash], [`refattn.lsh.sparse_attention`][refattn.lsh.sparse.sparse_attention],
[`refattn.performer.causal_prefix_sums`][refattn.performer.attention.causal_prefix_sums], [`refattn.softmax_attention`][refattn.exact.softmax_attention], ...) call the
functions here when their arrays are CuPy arrays ([`refattn.kernels.dispatch.gpu_backend`][refattn.kernels.dispatch.gpu_backend]),
after validating shapes and dtypes exactly as the CPU path does, on shadows of the device arrays
(same shape and dtype, no copy; [`shadow64`][refattn.kernels.dispatch.shadow64]). The functions here
check values (NaN/Inf) on the device, then run [`refattn.kernels.cuda.ops`][refattn.kernels.cuda.ops] with
[`CupyLauncher`][refattn.kernels.cuda.backend.CupyLauncher] on the arrays' device. Like everything under ``refattn.kernels``, this
module imports nothing from the layers above it. CuPy is imported on first use only, never when refattn is imported.

The sources are compiled by CuPy's ``RawModule`` (NVRTC) once per device and source.
Same draws give the same answers as the CPU: bucket ids are identical except for points
within rounding of a hyperplane or bucket boundary (the dot products are summed in another
order); values agree to rounding (float64 within 1e-12 relative, float32 within the
FlashAttention tolerance rule, [`refattn.testing.tolerance_check`][refattn.testing.tolerance_check]).
"""

from __future__ import annotations

import numpy as np

from refattn.kernels.cuda import ops as cuda_ops
from refattn.kernels.cuda.build import CUDA_DIR, NVRTC_OPTIONS, SOURCES

__all__ = ["CupyLauncher", "compile_all", "check_gpu_dtype", "simhash", "angular_hash", "cross_polytope_hash", "e2lsh",
           "sort_order", "sparse_attention", "causal_prefix_sums", "softmax_attention"]

THREADS_PER_BLOCK = 256
MAX_BLOCKS = 1 << 20  # the kernels are grid-stride loops: a capped grid still covers every thread
_MODULES: dict = {}  # (device id, source) -> cupy.RawModule
_SOURCE_OF = {kernel: source for source, kernels in SOURCES.items() for kernel in kernels}


def _cupy():
    try:
        import cupy
    except ImportError as exc:  # pragma: no cover - only reached with CuPy-like arrays
        raise ImportError(f"cupy: the GPU backend needs CuPy (pip install cupy-cuda12x, or in a clone of refattn: pip install -e '.[gpu]'): {exc}") from None
    return cupy


def _module(source):
    cp = _cupy()
    key = (cp.cuda.Device().id, source)
    if key not in _MODULES:
        _MODULES[key] = cp.RawModule(code=(CUDA_DIR / source).read_text(), options=NVRTC_OPTIONS)
    return _MODULES[key]


def compile_all():
    """Compile every source for the current device (NVRTC); returns the kernel names found."""
    names = []
    for source, kernels in SOURCES.items():
        module = _module(source)
        for name in kernels:
            module.get_function(name)
            names.append(name)
    return names


class CupyLauncher:
    """``launcher(name, n_threads, *args)``: launch a kernel of ``cuda/*.cu`` on the current
    device with CuPy arrays (pointers) and NumPy scalars (by value)."""

    def __init__(self):
        self.xp = _cupy()

    def __call__(self, name, n_threads, *args):
        n_threads = int(n_threads)
        if n_threads == 0:
            return
        blocks = min(-(-n_threads // THREADS_PER_BLOCK), MAX_BLOCKS)
        _module(_SOURCE_OF[name]).get_function(name)((blocks,), (THREADS_PER_BLOCK,), (np.int64(n_threads),) + args)


def check_gpu_dtype(a, name: str, allowed=(np.float64, np.float32)):
    """Raise a ``TypeError`` naming ``name`` unless ``a.dtype`` is one of ``allowed``."""
    dt = np.dtype(a.dtype)
    if dt.type not in allowed:
        names = ", ".join(np.dtype(t).name for t in allowed)
        raise TypeError(f"{name}: the CUDA kernel supports dtypes {names}, got {dt.name}")
    return dt


def _finite(a, name, *, allow_neg_inf=False):
    """The device half of [`refattn._validation.as_float_array`][refattn._validation.as_float_array]: NaN/Inf checked on the GPU."""
    cp = _cupy()
    if a.size and np.dtype(a.dtype).kind == "f":
        bad = (cp.isnan(a) | (a == cp.inf)) if allow_neg_inf else ~cp.isfinite(a)
        if bool(bad.any()):
            raise ValueError(f"{name}: contains NaN or Inf" + (" (only -inf is allowed, as a mask)" if allow_neg_inf else ""))


def _run(device_of, fn, *args):
    cp = _cupy()
    with cp.cuda.Device(device_of.device.id):
        return fn(CupyLauncher(), *args)


def _hash(op, x, draw, names):
    for a, name in zip((x,) + tuple(draw), names):
        _finite(a, name)
    return _run(x, op, x, *draw)


def simhash(x, planes):
    """Codes of [`refattn.lsh.simhash`][refattn.lsh.hashes.simhash] (shapes already validated on shadows)."""
    return _hash(cuda_ops.simhash, x, (planes,), ("x", "planes"))


def angular_hash(x, R):
    """Buckets of [`refattn.lsh.angular_hash`][refattn.lsh.hashes.angular_hash] (shapes already validated on shadows)."""
    return _hash(cuda_ops.angular_hash, x, (R,), ("x", "R"))


def cross_polytope_hash(x, rotations):
    """Buckets of [`refattn.lsh.cross_polytope_hash`][refattn.lsh.hashes.cross_polytope_hash] (shapes already validated on shadows)."""
    return _hash(cuda_ops.cross_polytope_hash, x, (rotations,), ("x", "rotations"))


def e2lsh(x, a, b, width):
    """Buckets of [`refattn.lsh.e2lsh`][refattn.lsh.hashes.e2lsh]; ``width`` already validated, ``b`` checked here."""
    for arr, name in ((x, "x"), (a, "a"), (b, "b")):
        _finite(arr, name)
    cp = _cupy()
    b = cp.asarray(b, dtype=np.float64).reshape(-1)
    if b.shape != (a.shape[0],):
        raise ValueError(f"b: expected shape (tables,) = ({a.shape[0]},), got {b.shape}")
    return _run(x, cuda_ops.e2lsh, x, a, b, width)


def sort_order(buckets):
    if np.dtype(buckets.dtype).kind not in "iu":
        raise TypeError(f"buckets: expected an integer array, got dtype {buckets.dtype}")
    return _run(buckets, cuda_ops.sort_order, buckets)


def sparse_attention(q, k, v, support, scale, entry_bias):
    """``(out, lse)`` of [`refattn.lsh.sparse_attention`][refattn.lsh.sparse.sparse_attention] on the GPU; ``support`` and the
    float ``scale`` already validated on shadows."""
    for a, name in ((q, "q"), (k, "k"), (v, "v")):
        _finite(a, name)
    cp = _cupy()
    if entry_bias is None:
        with cp.cuda.Device(q.device.id):
            entry_bias = cp.zeros(support.nnz)
    else:
        _finite(entry_bias, "entry_bias", allow_neg_inf=True)
    return _run(q, cuda_ops.sparse_attention, q, k, v, support.indptr, support.indices, scale, entry_bias)


def causal_prefix_sums(phi_q, phi_k, v, *, offset, chunk, batch_shape):
    """``(num, den)`` of [`refattn.performer.causal_prefix_sums`][refattn.performer.attention.causal_prefix_sums] on the GPU: query ``i`` sees
    keys ``j <= i + offset``; shapes already validated on shadows."""
    for a, name in ((phi_q, "phi_q"), (phi_k, "phi_k"), (v, "v")):
        check_gpu_dtype(a, name)
        _finite(a, name)
    dt = np.result_type(phi_q.dtype, phi_k.dtype, v.dtype).type
    return _run(phi_q, cuda_ops.causal_prefix_sums, phi_q, phi_k, v, offset, chunk, dt, batch_shape)


def softmax_attention(prob, q, k, v, mask, bias, dtype):
    """``(out, lse)`` of [`refattn.softmax_attention`][refattn.exact.softmax_attention] on the GPU (the streaming kernel).

    ``prob`` is the problem validated on shadows ([`refattn.problem.attention_problem`][refattn.problem.attention_problem]);
    ``dtype`` float64 or float32. Values (NaN/Inf) are checked here, on the device."""
    if dtype not in (np.float64, np.float32):
        raise TypeError(f"dtype: the CUDA streaming kernel supports float64 and float32, got {np.dtype(dtype).name}")
    for a, name in ((q, "q"), (k, "k"), (v, "v")):
        _finite(a, name)
    if bias is not None:
        _finite(bias, "bias", allow_neg_inf=True)
    return _run(q, cuda_ops.softmax_attention, prob, q, k, v, mask, bias, dtype)
