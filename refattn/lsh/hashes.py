r"""Locality-sensitive hash families, each with explicit draws (the docs' LSH page).

Every family is a pair: a function that draws the random parameters from an ``rng`` (a
Generator or an int seed), and a hash that applies them. Queries and keys hashed with the
same draw use the same hash; asymmetric transforms (SMYRF) map queries and keys
differently before one shared hash.

- SimHash (Charikar 2002): ``h(x) = sign(g . x)``; ``r`` bits per table, ``L`` tables.
  ``P[collide] = (1 - theta/pi)^r`` per table.
- Reformer's angular hash (Kitaev et al. 2020): ``argmax([x R; -x R])`` with ``R (d, b/2)``
  Gaussian, ``b`` buckets (``b = 2`` is SimHash).
- Cross-polytope (Andoni et al. 2015): the same argmax after a Haar rotation of the
  normalised input, ``2d`` buckets.
- E2LSH (Datar et al. 2004): ``floor((a . x + b)/r)``.
- SMYRF (Daras et al. 2020): the asymmetric transform ``F(q) = [q, 0, sqrt(M^2 - |q|^2)]``,
  ``G(k) = [k, sqrt(M^2 - |k|^2), 0]``, then a Gaussian projection sorted and cut into equal
  clusters ([`refattn.lsh.sparse.balanced_clusters`][refattn.lsh.sparse.balanced_clusters]).
- HyperAttention's sortLSH (Han et al. 2023): SimHash codes ordered by Gray code
  ([`gray_rank`][refattn.lsh.hashes.gray_rank]), stable sort.
"""

from __future__ import annotations

import numpy as np

from refattn._validation import (
    InputError,
    as_float_array,
    as_generator,
    as_index_array,
    check_allocation,
    check_positive_int,
    check_real,
    choose_implementation,
)
from refattn.kernels.dispatch import gpu_backend, shadow64
from refattn.performer.projections import haar_orthogonal

__all__ = [
    "simhash_planes",
    "simhash",
    "angular_rotations",
    "angular_hash",
    "cross_polytope_rotations",
    "cross_polytope_hash",
    "e2lsh_draw",
    "e2lsh",
    "smyrf_transform",
    "gray_rank",
    "sort_order",
]

MAX_BITS = 62  # codes are packed into int64


def _x(x, name="x"):
    x = as_float_array(x, name).astype(np.float64, copy=False)
    if x.ndim != 2:
        raise InputError(f"{name}: expected shape (n, d), got {x.shape}")
    return x


def simhash_planes(d, r, rng, *, tables=1):
    """Gaussian hyperplanes ``(tables, r, d)`` for [`simhash`][refattn.lsh.hashes.simhash]."""
    d = check_positive_int(d, "d")
    r = check_positive_int(r, "r")
    if r > MAX_BITS:
        raise InputError(f"r: at most {MAX_BITS} bits fit the int64 codes, got {r}")
    tables = check_positive_int(tables, "tables")
    return as_generator(rng).standard_normal((tables, r, d))


def _check_simhash(x, planes):
    x = _x(x)
    planes = as_float_array(planes, "planes")
    if planes.ndim != 3 or planes.shape[2] != x.shape[1]:
        raise InputError(f"planes: expected shape (tables, r, d = {x.shape[1]}), got {planes.shape}")
    return x, planes


def simhash(x, planes):
    """Codes ``(tables, n)``: bit ``b`` of table ``t`` is ``[planes[t, b] . x > 0]``.

    CuPy arrays in: the CUDA kernel, CuPy codes out (here and in every hash below)."""
    gpu = gpu_backend(x=x, planes=planes)
    if gpu:
        _check_simhash(shadow64(x), shadow64(planes))
        return gpu.simhash(x, planes)
    x, planes = _check_simhash(x, planes)
    bits = (np.matmul(x, np.swapaxes(planes, -1, -2)) > 0).astype(np.int64)  # (tables, n, r), BLAS
    return bits @ (np.int64(1) << np.arange(planes.shape[1], dtype=np.int64))


def _check_buckets(n_buckets):
    n_buckets = check_positive_int(n_buckets, "n_buckets", minimum=2)
    if n_buckets % 2:
        raise InputError(f"n_buckets: must be even (argmax over [xR; -xR]), got {n_buckets}")
    return n_buckets


def angular_rotations(d, n_buckets, rng, *, rounds=1):
    """Reformer's random matrices ``R (rounds, d, n_buckets/2)``, Gaussian."""
    d = check_positive_int(d, "d")
    b = _check_buckets(n_buckets)
    rounds = check_positive_int(rounds, "rounds")
    return as_generator(rng).standard_normal((rounds, d, b // 2))


def _check_angular(x, R):
    x = _x(x)
    R = as_float_array(R, "R")
    if R.ndim != 3 or R.shape[1] != x.shape[1]:
        raise InputError(f"R: expected shape (rounds, d = {x.shape[1]}, b/2), got {R.shape}")
    return x, R


def angular_hash(x, R, *, implementation="auto"):
    """Buckets ``(rounds, n)``: ``argmax([x R; -x R])`` (Kitaev et al. 2020, section 2.2).

    ``implementation``: ``"numpy"`` forms ``[x R; -x R]`` whole (the readable form, quadratic
    memory at Reformer's ``b ~ n``); ``"auto"``/``"numba"`` hashes row blocks in cache
    ([`refattn.kernels.numba.angular_hash`][refattn.kernels.numba.angular_hash]), the same
    buckets (tested).
    """
    gpu = gpu_backend(x=x, R=R)
    if gpu:
        _check_angular(shadow64(x), shadow64(R))
        return gpu.angular_hash(x, R)
    x, R = _check_angular(x, R)
    if choose_implementation(implementation, ("auto", "numpy", "numba")) == "numba" and x.size and R.size:
        from refattn.kernels.numba.angular_hash import angular_hash_blocked, hash_block_rows
        from refattn.kernels.numba.gemm import blas_single_thread

        limit = blas_single_thread()
        try:
            return angular_hash_blocked(np.ascontiguousarray(x, dtype=np.float64),
                                        np.ascontiguousarray(R, dtype=np.float64), hash_block_rows(R.shape[-1]))
        finally:
            limit.restore_original_limits()
    p = np.matmul(x, R)  # (rounds, n, b/2), BLAS
    return np.argmax(np.concatenate([p, -p], axis=-1), axis=-1).astype(np.int64)


def cross_polytope_rotations(d, rng, *, rounds=1):
    """Haar rotations ``(rounds, d, d)`` for [`cross_polytope_hash`][refattn.lsh.hashes.cross_polytope_hash]."""
    d = check_positive_int(d, "d")
    rounds = check_positive_int(rounds, "rounds")
    return haar_orthogonal(rounds, d, as_generator(rng))


def _check_cross_polytope(x, rotations):
    x = _x(x)
    rotations = as_float_array(rotations, "rotations")
    if rotations.ndim != 3 or rotations.shape[1:] != (x.shape[1], x.shape[1]):
        raise InputError(f"rotations: expected shape (rounds, d, d) with d = {x.shape[1]}, got {rotations.shape}")
    return x, rotations


def cross_polytope_hash(x, rotations):
    """Buckets ``(rounds, n)`` in ``[0, 2d)``: the closest signed basis vector to the rotated, normalised ``x``
    (Andoni et al. 2015). A zero row hashes to bucket 0."""
    gpu = gpu_backend(x=x, rotations=rotations)
    if gpu:
        _check_cross_polytope(shadow64(x), shadow64(rotations))
        return gpu.cross_polytope_hash(x, rotations)
    x, rotations = _check_cross_polytope(x, rotations)
    p = np.matmul(x, np.swapaxes(rotations, -1, -2))  # (rounds, n, d): rows of the rotation
    return np.argmax(np.concatenate([p, -p], axis=-1), axis=-1).astype(np.int64)


def e2lsh_draw(d, width, rng, *, tables=1):
    """``(a (tables, d) Gaussian, b (tables,) uniform on [0, width))`` for [`e2lsh`][refattn.lsh.hashes.e2lsh]."""
    d = check_positive_int(d, "d")
    tables = check_positive_int(tables, "tables")
    width = check_real(width, "width", minimum=0.0, low_open=True)
    if not width > 0 or not np.isfinite(width):
        raise InputError(f"width: must be finite and > 0, got {width}")
    check_allocation(tables * d, "tables, d", "the projections")
    gen = as_generator(rng)
    return gen.standard_normal((tables, d)), gen.uniform(0, width, size=tables)


def _check_e2lsh(x, a, width):
    x = _x(x)
    a = as_float_array(a, "a")
    if a.ndim != 2 or a.shape[1] != x.shape[1]:
        raise InputError(f"a: expected shape (tables, d = {x.shape[1]}), got {a.shape}")
    width = check_real(width, "width", minimum=0.0, low_open=True)
    if not width > 0:
        raise InputError(f"width: must be > 0, got {width}")
    return x, a, width


def e2lsh(x, a, b, width):
    """Buckets ``(tables, n)``: ``floor((a . x + b) / width)`` (Datar et al. 2004)."""
    gpu = gpu_backend(x=x, a=a, b=b)
    if gpu:
        _, _, width = _check_e2lsh(shadow64(x), shadow64(a), width)
        return gpu.e2lsh(x, a, b, width)
    x, a, width = _check_e2lsh(x, a, width)
    return np.floor((a @ x.T + np.asarray(b, dtype=np.float64)[:, None]) / width).astype(np.int64)


def smyrf_transform(q, k, M=None):
    """SMYRF's asymmetric transform: ``F(q) (T, d+2)``, ``G(k) (S, d+2)`` and ``M``.

    ``F(q) = [q, 0, sqrt(M^2 - |q|^2)]``, ``G(k) = [k, sqrt(M^2 - |k|^2), 0]`` with
    ``M^2 >= max|q|^2 + max|k|^2`` (default: equality), so that
    ``|F(q) - G(k)|^2 = 2 M^2 - 2 q . k`` (Daras et al. 2020, section 3): nearest neighbours of
    ``F(q)`` among ``G(k)`` are the largest inner products.
    """
    q = _x(q, "q")
    k = _x(k, "k")
    if q.shape[1] != k.shape[1]:
        raise InputError(f"k: dim {k.shape[1]} does not match q's {q.shape[1]}")
    nq, nk = np.sum(q * q, 1), np.sum(k * k, 1)
    need = (nq.max(initial=0.0) + nk.max(initial=0.0)) ** 0.5
    if not np.isfinite(need) or need > 1e150:
        raise InputError(f"q, k: norms up to {need:.3g} leave float64 in the transform (M^2 = max|q|^2 + max|k|^2)")
    if M is not None:
        M = check_real(M, "M", minimum=0.0, maximum=1e150)
    if M is None:
        M = need
    elif not float(M) >= need * (1 - 1e-12):
        raise InputError(f"M: must satisfy M^2 >= max|q|^2 + max|k|^2 = {need**2:.6g}, got M = {M}")
    M = float(M)
    F = np.concatenate([q, np.zeros((q.shape[0], 1)), np.sqrt(np.maximum(M * M - nq, 0))[:, None]], axis=1)
    G = np.concatenate([k, np.sqrt(np.maximum(M * M - nk, 0))[:, None], np.zeros((k.shape[0], 1))], axis=1)
    return F, G, M


def gray_rank(codes):
    """Position of each code in the reflected Gray-code order (inverse Gray code): buckets that are
    neighbours in this order differ in one bit (HyperAttention's sortLSH)."""
    c = as_index_array(codes, "codes", ndim=None)
    rank = c.copy()
    shift = 1
    while shift < 64:
        rank ^= rank >> shift
        shift <<= 1
    return rank


def sort_order(buckets):
    """Stable order by (bucket, position): ties keep their original order (CuPy in: CuPy's lexsort)."""
    gpu = gpu_backend(buckets=buckets)
    if gpu:
        return gpu.sort_order(buckets)
    b = as_index_array(buckets, "buckets", minimum=-(2**62))
    return np.lexsort((np.arange(b.size), b))
