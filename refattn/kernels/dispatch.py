"""Which backend a call runs on, decided by its input arrays: CuPy arrays in, CUDA kernels
and CuPy arrays out; NumPy (or lists) in, the CPU path.

Nothing here imports CuPy: a CuPy array is recognised by its type's module, so this module
is free to import (and its errors are testable) on machines without CuPy or a GPU.

Errors, each naming the argument:

- ``TypeError`` for mixed inputs (some CuPy arrays, some NumPy arrays);
- ``ValueError`` for CuPy arrays on different devices;
"""

from __future__ import annotations

import numpy as np

from refattn.kernels.cuda import backend

__all__ = ["is_cupy", "on_gpu", "gpu_backend", "shadow", "shadow64"]


def is_cupy(a) -> bool:
    """True for a ``cupy.ndarray`` (recognised without importing CuPy)."""
    return type(a).__module__.split(".", 1)[0] == "cupy"


def _kind(a) -> str:
    return f"a {type(a).__module__.split('.', 1)[0]}.{type(a).__name__}"


def on_gpu(**arrays) -> bool:
    """True when the (non-None) arguments are CuPy arrays on one device, False when none is.

    Raises ``TypeError`` when some are CuPy arrays and others are not (NumPy arrays, lists,
    scalars), and ``ValueError`` when CuPy arrays live on different devices.
    """
    given = {name: a for name, a in arrays.items() if a is not None}
    gpu = [name for name, a in given.items() if is_cupy(a)]
    if not gpu:
        return False
    cpu = [name for name in given if name not in gpu]
    if cpu:
        raise TypeError(
            f"{cpu[0]}: is {_kind(given[cpu[0]])} but {gpu[0]} is a CuPy array; pass all arrays on one "
            f"device (cupy.asarray(...) to move to the GPU, .get() to move to the host)"
        )
    devices = {name: getattr(getattr(given[name], "device", None), "id", None) for name in gpu}
    first = gpu[0]
    for name in gpu[1:]:
        if devices[name] != devices[first]:
            raise ValueError(
                f"{name}: is on GPU {devices[name]} but {first} is on GPU {devices[first]}; "
                f"move the arrays to one device"
            )
    return True


def shadow(a):
    """A read-only NumPy stand-in for a device array: same shape and dtype, zero strides, no copy.

    The CPU validators ([`refattn.problem`][refattn.problem], `refattn._validation`) check shapes,
    broadcasting and dtypes on shadows, so the GPU path has the CPU path's errors; values
    (NaN/Inf) are checked on the device.
    """
    return np.broadcast_to(np.zeros((), dtype=np.dtype(a.dtype)), a.shape)


def shadow64(a):
    """[`shadow`][refattn.kernels.dispatch.shadow] in float64 when ``a`` is floating (the CPU validators cast floats to float64,
    so they then make no copy), else in ``a``'s own dtype."""
    return np.broadcast_to(np.zeros((), np.float64), a.shape) if np.dtype(a.dtype).kind == "f" else shadow(a)


def gpu_backend(**arrays):
    """The CUDA backend ([`refattn.kernels.cuda.backend`][refattn.kernels.cuda.backend]) when the (non-None) arguments are
    CuPy arrays on one device, None when none is; the errors of [`on_gpu`][refattn.kernels.dispatch.on_gpu] otherwise.

    The one dispatch idiom of the public functions::

        gpu = gpu_backend(x=x, planes=planes)
        if gpu:
            check(shadow64(x), shadow64(planes))   # the CPU path's validation, on shadows
            return gpu.simhash(x, planes)          # values checked and the kernel run on the device
    """
    return backend if on_gpu(**arrays) else None  # the backend imports CuPy on its first launch
