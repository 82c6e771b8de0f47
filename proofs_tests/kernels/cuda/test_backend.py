"""The whole GPU call chain on the CPU: a stand-in ``cupy`` module (NumPy underneath) whose
``RawModule`` runs the host build of the CUDA sources, so the public functions go through the
dispatch, the validation on shadows, the device-side NaN checks, :mod:`refattn.kernels.cuda.backend`
(launcher, kernel lookup by source, argument packing) and :mod:`refattn.kernels.cuda.ops`, and
are compared with the CPU path. Only CuPy itself and the device are missing. Deterministic;
tolerances as in test_cuda_kernels.py."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from refattn import softmax_attention
from refattn.kernels.cuda import backend as cupy_backend
from refattn.kernels.cuda.build import NVRTC_OPTIONS, SOURCES, HostLauncher, host_library
from refattn.lsh import hashes as lsh
from refattn.lsh.sparse import Support, sparse_attention
from refattn.performer.attention import causal_prefix_sums

REL64 = 1e-12


class _Device:
    def __init__(self, id=0):
        self.id = id

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class ndarray(np.ndarray):  # noqa: N801  the stand-in's array type lives in module "cupy"
    @property
    def device(self):
        return _Device(0)


ndarray.__module__ = "cupy"


@pytest.fixture
def fake_cupy(monkeypatch):
    try:
        host_library()
    except FileNotFoundError as exc:
        pytest.skip(f"no host C++ compiler: {exc}")
    host = HostLauncher()
    launches = []

    class RawModule:
        def __init__(self, code, options):
            assert options == NVRTC_OPTIONS
            self.code = code

        def get_function(self, name):
            assert f"void {name}(" in self.code or "_##SUFFIX(" in self.code, name

            def launch(grid, block, args):
                n_threads = int(args[0])
                assert grid[0] * block[0] >= min(n_threads, cupy_backend.MAX_BLOCKS * block[0]) and grid[0] >= 1
                launches.append(name)
                host(name, n_threads, *args[1:])

            return launch

    mod = types.ModuleType("cupy")
    mod.__getattr__ = lambda name: getattr(np, name)  # everything else: NumPy
    mod.ndarray = ndarray
    mod.RawModule = RawModule
    mod.cuda = types.SimpleNamespace(Device=_Device)
    monkeypatch.setitem(sys.modules, "cupy", mod)
    monkeypatch.setattr(cupy_backend, "_MODULES", {})
    mod.launches = launches
    return mod


def dev(a):
    return np.ascontiguousarray(a).view(ndarray)


def test_hashes_through_the_gpu_path(fake_cupy):
    g = np.random.default_rng(1)
    x = g.normal(size=(37, 6))
    planes, R = lsh.simhash_planes(6, 9, g, tables=2), lsh.angular_rotations(6, 8, g, rounds=3)
    rot = lsh.cross_polytope_rotations(6, g, rounds=2)
    a, b = lsh.e2lsh_draw(6, 0.5, g, tables=2)
    assert np.array_equal(lsh.simhash(dev(x), dev(planes)), lsh.simhash(x, planes))
    assert np.array_equal(lsh.angular_hash(dev(x), dev(R)), lsh.angular_hash(x, R))
    assert np.array_equal(lsh.cross_polytope_hash(dev(x), dev(rot)), lsh.cross_polytope_hash(x, rot))
    assert np.array_equal(lsh.e2lsh(dev(x), dev(a), dev(b), 0.5), lsh.e2lsh(x, a, b, 0.5))
    buckets = lsh.angular_hash(x, R)[0]
    assert np.array_equal(lsh.sort_order(dev(buckets)), lsh.sort_order(buckets))
    assert fake_cupy.launches == ["simhash_codes", "argmax_buckets", "argmax_buckets", "e2lsh_buckets"]


def test_sparse_attention_through_the_gpu_path(fake_cupy):
    g = np.random.default_rng(2)
    q, k, v = g.normal(size=(9, 4)), g.normal(size=(11, 4)), g.normal(size=(11, 3))
    sup = Support.from_dense(g.random((9, 11)) < 0.4)
    for eb in (None, g.normal(size=sup.nnz)):
        out, lse = sparse_attention(dev(q), dev(k), dev(v), sup, entry_bias=None if eb is None else dev(eb),
                                    return_lse=True, scale=0.3)
        ref, ref_lse = sparse_attention(q, k, v, sup, entry_bias=eb, return_lse=True, scale=0.3)
        assert np.abs(out - ref).max() <= REL64 * np.abs(v).max()
        fin = np.isfinite(ref_lse)
        assert np.array_equal(np.isfinite(lse), fin) and np.abs(lse[fin] - ref_lse[fin]).max() <= REL64 * 10
    assert fake_cupy.launches == ["sddmm", "row_softmax", "spmm"] * 2


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_prefix_sums_through_the_gpu_path(fake_cupy, dtype):
    g = np.random.default_rng(3)
    pq, pk, v = g.random((2, 10, 5)), g.random((13, 5)), g.normal(size=(2, 13, 2))
    num, den = causal_prefix_sums(dev(pq.astype(dtype)), dev(pk.astype(dtype)), dev(v.astype(dtype)), chunk_size=4)
    ref_num, ref_den = causal_prefix_sums(*(a.astype(dtype) for a in (pq, pk, v)), chunk_size=4)
    assert num.dtype == dtype and num.shape == ref_num.shape and den.shape == ref_den.shape
    tol = (REL64 if dtype == np.float64 else 1e-5) * np.abs(ref_den).max() * np.abs(v).max()
    assert np.abs(num - ref_num).max() <= tol and np.abs(den - ref_den).max() <= tol
    assert set(fake_cupy.launches) == {f"favor_{k}_{'f64' if dtype == np.float64 else 'f32'}"
                                       for k in ("chunk_sums", "scan_chunks", "causal_rows")}


def test_exact_attention_through_the_gpu_path(fake_cupy):
    g = np.random.default_rng(4)
    q, k, v = g.normal(size=(2, 7, 4)), g.normal(size=(2, 40, 4)), g.normal(size=(40, 3))
    mask = g.random((7, 40)) < 0.8
    bias = np.where(g.random((2, 7, 40)) < 0.1, -np.inf, g.normal(size=(2, 7, 40)))
    kw = dict(causal="top_left", key_lengths=np.array([40, 9]), scale=0.7)
    out, lse = softmax_attention(dev(q), dev(k), dev(v), mask=dev(mask), bias=dev(bias), return_lse=True, **kw)
    ref, ref_lse = softmax_attention(q, k, v, mask=mask, bias=bias, return_lse=True, **kw)
    assert np.abs(out - ref).max() <= REL64 * np.abs(v).max()
    fin = np.isfinite(ref_lse)
    assert np.array_equal(np.isfinite(lse), fin) and np.abs(lse[fin] - ref_lse[fin]).max() <= REL64 * 10
    assert fake_cupy.launches == ["stream_attention_f64"] * 2
    out32 = softmax_attention(dev(q), dev(k), dev(v), dtype=np.float32, implementation="cuda")
    assert out32.dtype == np.float32 and np.abs(out32 - softmax_attention(q, k, v)).max() <= 1e-5


def test_device_values_are_checked(fake_cupy):
    q = np.ones((3, 4))
    q[1, 1] = np.nan
    with pytest.raises(ValueError, match="^q: contains NaN or Inf"):
        softmax_attention(dev(q), dev(np.ones((5, 4))), dev(np.ones((5, 2))))
    with pytest.raises(ValueError, match="^x: contains NaN or Inf"):
        lsh.simhash(dev(q), dev(np.ones((1, 2, 4))))
    bias = np.zeros((3, 5))
    bias[0, 0] = np.inf
    with pytest.raises(ValueError, match="^bias: contains NaN or Inf"):
        softmax_attention(dev(np.ones((3, 4))), dev(np.ones((5, 4))), dev(np.ones((5, 2))), bias=dev(bias))
    assert fake_cupy.launches == []


def test_every_kernel_is_found_in_its_source(fake_cupy):
    assert cupy_backend.compile_all() == [name for names in SOURCES.values() for name in names]
