r"""The CUDA kernels' host-side orchestration, written once for any launcher.

Each function takes a launcher ``L`` (``L.xp`` is the array module; ``L(name, n_threads,
*args)`` runs a kernel of ``cuda/*.cu``) and already validated arrays; it allocates the
outputs with ``L.xp``, converts the inputs to C-contiguous arrays of the kernel's dtype and
launches the kernels. With [`refattn.kernels.cuda.backend.CupyLauncher`][refattn.kernels.cuda.backend.CupyLauncher] the arrays are
CuPy arrays and the kernels run on the GPU; with [`refattn.kernels.cuda.build.HostLauncher`][refattn.kernels.cuda.build.HostLauncher]
they are NumPy arrays and the same kernel sources run serially on the CPU, which is how the
tests check this module against the NumPy twins without a GPU.

Formulas: [`refattn.lsh.hashes`][refattn.lsh.hashes] (hashing), [`refattn.lsh.sparse`][refattn.lsh.sparse] (sparse attention),
[`refattn.performer.attention`][refattn.performer.attention] (causal prefix sums), [`refattn.kernels.numba.streaming`][refattn.kernels.numba.streaming] (streaming
exact attention); the kernels' own comments restate them.
"""

from __future__ import annotations

import numpy as np

from refattn.kernels.numba.streaming import NO_CAUSAL

__all__ = [
    "simhash",
    "angular_hash",
    "cross_polytope_hash",
    "e2lsh",
    "sort_order",
    "sparse_attention",
    "causal_prefix_sums",
    "softmax_attention",
]

_i64 = np.int64
_SUFFIX = {np.float64: "f64", np.float32: "f32"}


def _c(L, a, dtype):
    return L.xp.ascontiguousarray(a, dtype=dtype)


def simhash(L, x, planes):
    """Codes ``(tables, n)`` of [`refattn.lsh.hashes.simhash`][refattn.lsh.hashes.simhash]; ``x (n, d)``, ``planes (tables, r, d)``."""
    x, planes = _c(L, x, np.float64), _c(L, planes, np.float64)
    tables, r, d = planes.shape
    n = x.shape[0]
    codes = L.xp.empty((tables, n), dtype=np.int64)
    L("simhash_codes", tables * n, x, planes, _i64(n), _i64(d), _i64(r), codes)
    return codes


def _argmax_buckets(L, x, M, half, stride_h, stride_c):
    x, M = _c(L, x, np.float64), _c(L, M, np.float64)
    rounds, n, d = M.shape[0], x.shape[0], x.shape[1]
    buckets = L.xp.empty((rounds, n), dtype=np.int64)
    L("argmax_buckets", rounds * n, x, M, _i64(n), _i64(d), _i64(half), _i64(stride_h), _i64(stride_c), buckets)
    return buckets


def angular_hash(L, x, R):
    """Buckets ``(rounds, n)`` of [`refattn.lsh.hashes.angular_hash`][refattn.lsh.hashes.angular_hash]; ``R (rounds, d, b/2)``."""
    half = R.shape[2]
    return _argmax_buckets(L, x, R, half, half, 1)


def cross_polytope_hash(L, x, rotations):
    """Buckets ``(rounds, n)`` of [`refattn.lsh.hashes.cross_polytope_hash`][refattn.lsh.hashes.cross_polytope_hash]; ``rotations (rounds, d, d)``."""
    d = rotations.shape[1]
    return _argmax_buckets(L, x, rotations, d, 1, d)


def e2lsh(L, x, a, b, width):
    """Buckets ``(tables, n)`` of [`refattn.lsh.hashes.e2lsh`][refattn.lsh.hashes.e2lsh]; ``a (tables, d)``, ``b (tables,)``."""
    x, a, b = _c(L, x, np.float64), _c(L, a, np.float64), _c(L, b, np.float64)
    tables, n, d = a.shape[0], x.shape[0], x.shape[1]
    buckets = L.xp.empty((tables, n), dtype=np.int64)
    L("e2lsh_buckets", tables * n, x, a, b, np.float64(width), _i64(n), _i64(d), buckets)
    return buckets


def sort_order(L, buckets):
    """Stable order by (bucket, position), as [`refattn.lsh.hashes.sort_order`][refattn.lsh.hashes.sort_order]: the library's own lexsort."""
    b = L.xp.asarray(buckets).ravel()
    return L.xp.lexsort(L.xp.stack([L.xp.arange(b.size), b.astype(np.int64)]))


def sparse_attention(L, q, k, v, indptr, indices, scale, entry_bias):
    """``out (T, Hv)``, ``lse (T,)`` of [`refattn.lsh.sparse.sparse_attention`][refattn.lsh.sparse.sparse_attention] in float64.

    ``indptr``, ``indices``: the [`Support`][refattn.lsh.sparse.Support]'s NumPy arrays (copied to ``L.xp``).
    """
    xp = L.xp
    q, k, v, eb = (_c(L, a, np.float64) for a in (q, k, v, entry_bias))
    T, H, Hv = q.shape[0], q.shape[1], v.shape[1]
    rows = xp.asarray(np.repeat(np.arange(T, dtype=np.int64), np.diff(indptr)))  # (nnz,) row of each entry
    indptr_d, indices_d = xp.asarray(indptr, dtype=np.int64), xp.asarray(indices, dtype=np.int64)
    nnz = int(indices.size)
    p = xp.empty(nnz, dtype=np.float64)  # logits, then probabilities in place
    lse = xp.empty(T, dtype=np.float64)
    out = xp.empty((T, Hv), dtype=np.float64)
    L("sddmm", nnz, q, k, rows, indices_d, eb, np.float64(scale), _i64(H), p)
    L("row_softmax", T, indptr_d, p, lse)
    L("spmm", T * Hv, indptr_d, indices_d, p, v, _i64(Hv), out)
    return out, lse


def _causal_prefix_2d(L, pq, pk, v, offset, chunk, dt):
    xp, sfx = L.xp, _SUFFIX[dt]
    T, F = pq.shape
    S, Hv = pk.shape[0], v.shape[1]
    W = Hv + 1
    n_chunks = -(-S // chunk)
    P = xp.empty((n_chunks + 1, F, W), dtype=dt)  # P[c]: sum over keys of chunks < c of phi_k v1^T
    L(f"favor_chunk_sums_{sfx}", n_chunks * F * W, pk, v, _i64(S), _i64(F), _i64(Hv), _i64(chunk), P)
    L(f"favor_scan_chunks_{sfx}", F * W, _i64(n_chunks), P)
    out = xp.empty((T, W), dtype=dt)  # [num | den]
    L(f"favor_causal_rows_{sfx}", T * W, pq, pk, v, P, _i64(S), _i64(F), _i64(Hv), _i64(chunk), _i64(offset), out)
    return out


def _batched(L, arrays, tails, batch_shape, dt):
    """Each array broadcast to ``batch_shape + tail``; yields (index, C-contiguous items).

    ``index`` ends with an Ellipsis: ``out[index]`` is one batch item (also when there is no batch)."""
    views = [L.xp.broadcast_to(a, batch_shape + tail) for a, tail in zip(arrays, tails)]
    for idx in np.ndindex(*batch_shape) if batch_shape else [()]:
        yield idx + (Ellipsis,), [_c(L, a[idx + (Ellipsis,)], dt) for a in views]


def causal_prefix_sums(L, pq, pk, v, offset, chunk, dt, batch_shape):
    """``num (..., T, Hv)``, ``den (..., T)`` of [`refattn.performer.attention.causal_prefix_sums`][refattn.performer.attention.causal_prefix_sums]."""
    T, F, S, Hv = pq.shape[-2], pq.shape[-1], pk.shape[-2], v.shape[-1]
    num = L.xp.empty(batch_shape + (T, Hv), dtype=dt)
    den = L.xp.empty(batch_shape + (T,), dtype=dt)
    for idx, (a, b, c) in _batched(L, (pq, pk, v), ((T, F), (S, F), (S, Hv)), batch_shape, dt):
        out = _causal_prefix_2d(L, a, b, c, offset, chunk, dt)
        num[idx] = out[:, :Hv]
        den[idx] = out[:, Hv]
    return num, den


def softmax_attention(L, prob, q, k, v, mask, bias, dt):
    """``out (..., T, Hv)``, ``lse (..., T)`` of [`refattn.softmax_attention`][refattn.exact.softmax_attention] (streaming kernel).

    ``prob`` is the [`AttentionProblem`][refattn.problem.AttentionProblem] validated on shadows of the
    arrays (shapes, scale, causal alignment, NumPy key lengths); ``q, k, v, mask, bias`` are
    the ``L.xp`` arrays themselves (``mask``, ``bias`` may be None).
    """
    xp, sfx = L.xp, _SUFFIX[dt]
    T, S, H, Hv, batch = prob.T, prob.S, prob.H, prob.Hv, prob.batch_shape
    offset = prob.causal_offset() if prob.causal else NO_CAUSAL
    lens = np.broadcast_to(prob.key_lengths, batch) if prob.key_lengths is not None else None
    out = xp.empty(batch + (T, Hv), dtype=dt)
    lse = xp.empty(batch + (T,), dtype=dt)
    no_mask, no_bias = xp.zeros(1, dtype=np.uint8), xp.zeros(1, dtype=dt)
    mask_u8 = None if mask is None else xp.asarray(mask).astype(np.uint8)
    ts = (T, S)
    for idx, (qi, ki, vi, bi) in _batched(L, (q, k, v, bias if bias is not None else no_bias),
                                          ((T, H), (S, H), (S, Hv), ts if bias is not None else (1,)), batch, dt):
        mi = no_mask if mask is None else xp.ascontiguousarray(xp.broadcast_to(mask_u8, batch + ts)[idx])
        o = xp.empty((T, Hv), dtype=dt)
        ls = xp.empty(T, dtype=dt)
        L(f"stream_attention_{sfx}", T, qi, ki, vi, dt(prob.scale), _i64(offset), mi, np.int32(mask is not None),
          bi, np.int32(bias is not None), _i64(S if lens is None else lens[idx[:-1]]), _i64(S), _i64(H), _i64(Hv), o, ls)
        out[idx] = o
        lse[idx] = ls
    return out, lse
