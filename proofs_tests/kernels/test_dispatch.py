"""Dispatch by array type, without CuPy or a GPU: NumPy inputs keep the CPU path; mixed
NumPy/CuPy inputs, arrays on different devices and dtypes a kernel does not support raise
clear errors naming the argument, before any CuPy call. A stand-in class whose type lives in
module ``cupy`` plays the CuPy array (the dispatch recognises CuPy by its type's module and
never imports CuPy for these checks)."""

from __future__ import annotations

import numpy as np
import pytest

from refattn import softmax_attention
from refattn.kernels.cuda.backend import check_gpu_dtype
from refattn.kernels.dispatch import is_cupy, on_gpu, shadow
from refattn.lsh import hashes as lsh
from refattn.lsh.sparse import Support, sparse_attention
from refattn.performer.attention import causal_prefix_sums


class _Device:
    def __init__(self, id):
        self.id = id


class FakeCupyArray:
    """Shape, dtype and device of a ``cupy.ndarray``; no data on any GPU."""

    def __init__(self, shape, dtype=np.float64, device=0):
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.size = int(np.prod(self.shape))
        self.ndim = len(self.shape)
        self.device = _Device(device)

    def __array__(self, *args, **kwargs):  # as cupy: no implicit conversion
        raise TypeError("Implicit conversion to a NumPy array is not allowed")


FakeCupyArray.__module__ = "cupy._core.core"


def gpu(*shape, dtype=np.float64, device=0):
    return FakeCupyArray(shape, dtype, device)


def test_recognises_cupy_without_importing_it():
    assert is_cupy(gpu(2, 3)) and not is_cupy(np.zeros(3)) and not is_cupy([1.0])
    assert on_gpu(q=np.zeros((2, 2)), k=[[1.0]], v=None) is False
    assert on_gpu(q=gpu(2, 2), k=gpu(3, 2), v=None) is True
    s = shadow(gpu(4, 5, dtype=np.float32))
    assert s.shape == (4, 5) and s.dtype == np.float32 and s.strides == (0, 0)


@pytest.mark.parametrize("call, name", [
    (lambda: lsh.simhash(gpu(5, 3), np.ones((1, 2, 3))), "planes"),
    (lambda: lsh.angular_hash(np.ones((5, 3)), gpu(1, 3, 2)), "x"),
    (lambda: lsh.cross_polytope_hash(gpu(5, 3), np.ones((1, 3, 3))), "rotations"),
    (lambda: lsh.e2lsh(gpu(5, 3), gpu(2, 3), np.zeros(2), 1.0), "b"),
    (lambda: sparse_attention(gpu(2, 3), np.ones((4, 3)), gpu(4, 1), Support.from_dense(np.ones((2, 4), bool))), "k"),
    (lambda: softmax_attention(np.ones((2, 3)), gpu(4, 3), gpu(4, 1)), "q"),
    (lambda: softmax_attention(gpu(2, 3), gpu(4, 3), gpu(4, 1), mask=np.ones((2, 4), bool)), "mask"),
    (lambda: causal_prefix_sums(gpu(2, 3), np.ones((4, 3)), gpu(4, 1)), "phi_k"),
])
def test_mixed_numpy_and_cupy_inputs_are_rejected(call, name):
    with pytest.raises(TypeError, match=f"^{name}: is a numpy.ndarray but .* is a CuPy array"):
        call()


def test_arrays_on_different_devices_are_rejected():
    with pytest.raises(ValueError, match="^v: is on GPU 1 but q is on GPU 0"):
        softmax_attention(gpu(2, 3), gpu(4, 3), gpu(4, 1, device=1))
    with pytest.raises(ValueError, match="^planes: is on GPU 2 but x is on GPU 0"):
        lsh.simhash(gpu(5, 3), gpu(1, 2, 3, device=2))


def test_unsupported_dtypes_and_implementations_are_named():
    with pytest.raises(TypeError, match="^dtype: the CUDA streaming kernel supports float64 and float32, got float16"):
        softmax_attention(gpu(2, 3), gpu(4, 3), gpu(4, 1), dtype=np.float16)
    with pytest.raises(ValueError, match="^implementation: 'numba' runs on the CPU"):
        softmax_attention(gpu(2, 3), gpu(4, 3), gpu(4, 1), implementation="numba")
    with pytest.raises(ValueError, match="^implementation: 'cuda' needs CuPy arrays"):
        softmax_attention(np.ones((2, 3)), np.ones((4, 3)), np.ones((4, 1)), implementation="cuda")
    with pytest.raises(TypeError, match="^phi_q: the CUDA kernel supports dtypes float64, float32, got float16"):
        causal_prefix_sums(gpu(2, 3, dtype=np.float16), gpu(4, 3), gpu(4, 1))
    with pytest.raises(TypeError, match="^buckets: expected an integer array"):
        lsh.sort_order(gpu(7))
    with pytest.raises(TypeError, match="^x: the CUDA kernel supports dtypes float64, got int32"):
        check_gpu_dtype(gpu(3, dtype=np.int32), "x", allowed=(np.float64,))


def test_gpu_path_validates_as_the_cpu_path():
    """Shapes, dtypes and parameters are checked on shadows by the CPU validators: same messages."""
    cases = [
        (lambda a: lsh.simhash(a(5, 3), a(1, 2, 4)), ValueError, "planes: expected shape"),
        (lambda a: lsh.angular_hash(a(5, 3, dtype=np.int64), a(1, 3, 2)), TypeError, "x: expected a real floating"),
        (lambda a: lsh.e2lsh(a(5, 3), a(2, 3), a(2), -1.0), ValueError, "width: must be > 0"),
        (lambda a: softmax_attention(a(2, 3), a(4, 2), a(4, 1)), ValueError, "k: head dim"),
        (lambda a: softmax_attention(a(2, 3), a(4, 3), a(4, 1), causal="sideways"), ValueError, "causal: expected"),
        (lambda a: softmax_attention(a(2, 3), a(4, 3), a(4, 1), mask=a(2, 4)), TypeError, "mask: expected a boolean"),
        (lambda a: sparse_attention(a(2, 3), a(4, 3), a(4, 1), Support.from_dense(np.ones((3, 4), bool))),
         ValueError, "support: shape"),
        (lambda a: causal_prefix_sums(a(2, 3), a(4, 3), a(5, 1)), ValueError, "v: has 5 keys"),
    ]
    cpu = lambda *shape, dtype=np.float64: np.ones(shape, dtype=dtype)  # noqa: E731
    for call, exc, message in cases:
        for make in (cpu, gpu):
            with pytest.raises(exc, match=f"^{message}"):
                call(make)


def _has_device():
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


@pytest.mark.skipif(_has_device(), reason="a GPU is present: bench_gpu.py measures (see the gpu tests)")
def test_bench_gpu_without_device_says_so_and_writes_nothing(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_gpu.py"
    proc = subprocess.run([sys.executable, str(script), "--quick", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA device present" in proc.stdout and "nothing measured" in proc.stdout
    assert list(tmp_path.iterdir()) == []
