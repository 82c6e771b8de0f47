r"""Sparse attention supports (CSR over query rows) and exact softmax attention on them.

the docs' LSH page. A [`Support`][refattn.lsh.sparse.Support] lists, for each query row ``i``, the sorted, distinct
key indices it attends to: ``indices[indptr[i]:indptr[i+1]]``. Every sparse method in
refattn (Reformer, SMYRF, local windows, top-k, Scatterbrain's correction, SEA's mask)
produces one, and [`sparse_attention`][refattn.lsh.sparse.sparse_attention] computes

$$
O_i = \sum_{j \in S_i} \frac{e^{\ell_{ij}}}{\sum_{j' \in S_i} e^{\ell_{ij'}}} v_j, \qquad
\ell_{ij} = s\, q_i \cdot k_j + b_{ij},
$$

(SDDMM for the logits on the support, a row softmax with its lse, SpMM with ``V``), where
``b`` is an optional per-entry bias (e.g. ``-log(count)`` to de-duplicate rounds, or
``log(n/s)`` for sampled columns). A row with an empty support gets zeros and
``lse = -inf`` (as a fully masked row of the exact oracle).

Shapes: ``q (T, H)``, ``k (S, H)``, ``v (S, Hv)`` (one head; loop or vmap over heads).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refattn._validation import (
    InputError,
    InputTypeError,
    as_float_array,
    as_index_array,
    check_allocation,
    check_bool,
    check_positive_int,
    check_scale,
    choose_implementation,
)
from refattn.kernels.dispatch import gpu_backend, shadow64
from refattn.kernels.numba import sparse_attention as kern
from refattn.kernels.numba.lsh_support import union_support_numba
from refattn.problem import check_logit_range, score_problem

__all__ = [
    "Support",
    "sparse_attention",
    "local_window",
    "block_sparse",
    "topk_support",
    "bucket_support",
    "chunked_bucket_support",
    "balanced_clusters",
    "union",
    "support_probabilities",
]


@dataclass(frozen=True)
class Support:
    """CSR sparsity pattern: ``indptr (T+1,)``, ``indices (nnz,)`` sorted and distinct per row, ``n_keys = S``."""

    indptr: np.ndarray
    indices: np.ndarray
    n_keys: int

    def __post_init__(self):
        """Every construction is checked for what the kernels index with (so none reads out of
        bounds): integer arrays, ``indptr`` from 0, non-decreasing, ending at ``len(indices)``, every
        index in ``[0, n_keys)``. Sortedness within rows is `from_csr`'s (a user's CSR). The support
        keeps read-only copies: ``support.indices[1] = 10**6`` raises instead of corrupting memory."""
        n_keys = check_positive_int(self.n_keys, "n_keys", minimum=0)
        arrays = {}
        for name in ("indptr", "indices"):
            a = np.asarray(getattr(self, name))
            if a.ndim != 1 or not (np.issubdtype(a.dtype, np.integer) and a.dtype != np.bool_):
                raise InputTypeError(f"{name}: expected a 1-D integer array, got dtype {a.dtype} and shape {a.shape}")
            arrays[name] = a.astype(np.int64, copy=True)  # its own copy: nobody else holds a reference
        indptr, indices = arrays["indptr"], arrays["indices"]
        if indptr.size == 0 or indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] != indices.size:
            raise InputError("indptr: must start at 0, be non-decreasing and end at len(indices)")
        if indices.size and (indices.min() < 0 or indices.max() >= n_keys):
            raise InputError(f"indices: every key index must lie in [0, n_keys) = [0, {n_keys})")
        indptr.setflags(write=False)  # validated once, then read-only: a later write cannot send a kernel
        indices.setflags(write=False)  # out of bounds (the kernels trust these arrays)
        object.__setattr__(self, "indptr", indptr)
        object.__setattr__(self, "indices", indices)
        object.__setattr__(self, "n_keys", n_keys)

    @classmethod
    def from_csr(cls, indptr, indices, n_keys) -> "Support":
        """Validate a user CSR: monotone ``indptr`` from 0, indices in ``[0, n_keys)``, sorted, distinct per row."""
        n_keys = check_positive_int(n_keys, "n_keys", minimum=0)
        indptr = np.asarray(indptr)
        indices = np.asarray(indices)
        for name, a in (("indptr", indptr), ("indices", indices)):
            if a.ndim != 1 or not (np.issubdtype(a.dtype, np.integer) and a.dtype != np.bool_):
                raise InputTypeError(f"{name}: expected a 1-D integer array, got dtype {a.dtype} and shape {a.shape}")
        if indptr.size == 0 or indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] != indices.size:
            raise InputError("indptr: must start at 0, be non-decreasing and end at len(indices)")
        if indices.size and (indices.min() < 0 or indices.max() >= n_keys):
            raise InputError(f"indices: every key index must lie in [0, n_keys) = [0, {n_keys})")
        starts = np.zeros(indices.size, dtype=bool)
        starts[indptr[:-1][np.diff(indptr) > 0]] = True
        if indices.size > 1 and np.any((np.diff(indices) <= 0) & ~starts[1:]):
            raise InputError("indices: each row's key indices must be sorted and distinct")
        return cls(indptr.astype(np.int64), indices.astype(np.int64), n_keys)

    @classmethod
    def from_dense(cls, mask) -> "Support":
        """From a boolean ``(T, S)`` mask (True = attend)."""
        mask = np.asarray(mask)
        if mask.dtype != np.bool_ or mask.ndim != 2:
            raise InputTypeError(f"mask: expected a 2-D boolean array, got dtype {mask.dtype} and shape {mask.shape}")
        rows, cols = np.nonzero(mask)  # row-major: sorted by row, then column
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=mask.shape[0]))])
        return cls(indptr.astype(np.int64), cols.astype(np.int64), mask.shape[1])

    @classmethod
    def from_pairs(cls, rows, cols, n_queries, n_keys) -> "Support":
        """From (row, col) pairs, duplicates counted once."""
        n_queries = check_positive_int(n_queries, "n_queries", minimum=0)
        n_keys = check_positive_int(n_keys, "n_keys", minimum=0)
        rows = as_index_array(rows, "rows", maximum=n_queries - 1)
        cols = as_index_array(cols, "cols", maximum=n_keys - 1)
        if rows.shape != cols.shape:
            raise InputError(f"cols: shape {cols.shape} differs from rows' {rows.shape} (pairs)")
        key = np.unique(rows * max(1, n_keys) + cols)
        r, c = key // max(1, n_keys), key % max(1, n_keys)
        indptr = np.concatenate([[0], np.cumsum(np.bincount(r, minlength=n_queries))])
        return cls(indptr.astype(np.int64), c.astype(np.int64), n_keys)

    @property
    def n_queries(self) -> int:
        return self.indptr.size - 1

    @property
    def nnz(self) -> int:
        return int(self.indices.size)

    def row_counts(self) -> np.ndarray:
        return np.diff(self.indptr)

    def rows(self) -> np.ndarray:
        """The row index of every stored entry, ``(nnz,)``."""
        return np.repeat(np.arange(self.n_queries), self.row_counts())

    def to_dense(self) -> np.ndarray:
        mask = np.zeros((self.n_queries, self.n_keys), dtype=bool)
        mask[self.rows(), self.indices] = True
        return mask

    def intersect(self, allowed) -> "Support":
        """Keep the entries where the boolean ``(T, S)`` array ``allowed`` is True (e.g. a causal mask)."""
        allowed = np.asarray(allowed, dtype=bool)
        keep = allowed[self.rows(), self.indices]
        return Support.from_pairs(self.rows()[keep], self.indices[keep], self.n_queries, self.n_keys)


def union(*supports: Support) -> Support:
    """The union of supports of the same shape; an entry found in several counts once."""
    if not supports:
        raise InputError("supports: need at least one")
    T, S = supports[0].n_queries, supports[0].n_keys
    for s in supports:
        if (s.n_queries, s.n_keys) != (T, S):
            raise InputError(f"supports: shapes differ ({s.n_queries}, {s.n_keys}) vs ({T}, {S})")
    return Support.from_pairs(np.concatenate([s.rows() for s in supports]),
                              np.concatenate([s.indices for s in supports]), T, S)


def local_window(T, S, left, right=0, *, causal=False) -> Support:
    """Keys ``j`` with ``c_i - left <= j <= c_i + right``, ``c_i = i + S - T`` (bottom-right aligned,
    as the oracle's causal mask). ``causal=True`` forces ``right = 0``."""
    T = check_positive_int(T, "T", minimum=0)
    S = check_positive_int(S, "S", minimum=0)
    left = check_positive_int(left, "left", minimum=0)
    causal = check_bool(causal, "causal")
    right = 0 if causal else check_positive_int(right, "right", minimum=0)
    c = np.arange(T, dtype=np.int64) + (S - T)  # (T,) each row's diagonal key
    lo = np.clip(c - left, 0, S)  # (T,) first key, clipped to [0, S]
    hi = np.clip(c + right + 1, 0, S)  # (T,) one past the last key
    counts = np.maximum(hi - lo, 0)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    rows = np.repeat(np.arange(T), counts)  # (nnz,) O(nnz): no T x S mask
    return Support(indptr, (lo[rows] + np.arange(indptr[-1]) - indptr[:-1][rows]).astype(np.int64), S)


def block_sparse(T, S, block, layout) -> Support:
    """Blocks of ``block x block``: query block ``a`` sees key block ``b`` iff ``layout[a, b]``."""
    T = check_positive_int(T, "T", minimum=0)
    S = check_positive_int(S, "S", minimum=0)
    block = check_positive_int(block, "block")
    check_allocation(T * S, "T, S", "the dense block mask")
    layout = np.asarray(layout)
    nq, nk = -(-T // block), -(-S // block)
    if layout.dtype != np.bool_ or layout.shape != (nq, nk):
        raise InputError(f"layout: expected a boolean ({nq}, {nk}) array for T={T}, S={S}, block={block}")
    return Support.from_dense(np.repeat(np.repeat(layout, block, 0), block, 1)[:T, :S])


def topk_support(q, k, topk, *, scale=None, causal=False) -> Support:
    """The ``topk`` largest exact logits of each row (ties: the lower key index first): the best
    sparse support of that size, an oracle. Rows that see fewer keys keep all they see."""
    prob = score_problem(q, k, scale=scale, causal=causal)
    if prob.batch_shape:
        raise InputError("q: topk_support takes 2-D q and k (one head)")
    topk = check_positive_int(topk, "topk")
    logits = prob.logits()  # (T, S), -inf where masked
    kk = min(topk, prob.S)
    order = np.argsort(-logits, axis=1, kind="stable")[:, :kk]  # (T, kk)
    rows = np.repeat(np.arange(prob.T), kk)
    cols = order.ravel()
    keep = np.isfinite(logits[rows, cols])
    return Support.from_pairs(rows[keep], cols[keep], prob.T, prob.S)


def bucket_support(q_buckets, k_buckets) -> Support:
    """All (i, j) with ``q_buckets[i] == k_buckets[j]`` (one hash round), built in O(T log S + nnz):
    keys sorted stably by bucket, each query's row is the contiguous run of its bucket."""
    qb = as_index_array(q_buckets, "q_buckets", minimum=-(2**62))
    kb = as_index_array(k_buckets, "k_buckets", minimum=-(2**62))
    order = np.lexsort((np.arange(kb.size), kb))  # by bucket, then position: rows come out sorted
    sorted_b = kb[order]
    lo = np.searchsorted(sorted_b, qb, side="left")
    hi = np.searchsorted(sorted_b, qb, side="right")
    counts = hi - lo
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    pos = np.arange(indptr[-1]) - np.repeat(indptr[:-1] - lo, counts)  # positions in the sorted keys
    return Support(indptr, order[pos].astype(np.int64), kb.size)


def _chunks_of_sorted(buckets, n_chunks):
    """Stable order by (bucket, position) and the chunk id of each position in that order."""
    order = np.lexsort((np.arange(buckets.size), buckets))  # stable: bucket, then position
    chunk_of = np.empty(buckets.size, dtype=np.int64)
    bounds = np.round(np.linspace(0, buckets.size, n_chunks + 1)).astype(np.int64)
    for c in range(n_chunks):
        chunk_of[order[bounds[c]:bounds[c + 1]]] = c
    return chunk_of


def chunked_bucket_support(q_buckets, k_buckets, chunk, *, lookback=1, same_bucket=True,
                           implementation="auto") -> Support:
    """Reformer's chunked LSH attention pattern (Kitaev et al. 2020, section 2.2), over one or more rounds.

    Per round, queries and keys are sorted stably by (bucket, position) and cut into
    ``n_c = ceil(T / chunk)`` chunks (keys into ``n_c`` chunks of about ``S / n_c``); query chunk
    ``c`` sees key chunks ``c - lookback .. c``. With ``same_bucket`` only keys of the query's
    own bucket are kept (the paper's ``P_i``). ``q_buckets (T,)`` or ``(rounds, T)``; several
    rounds give the union of their supports, each entry once.

    ``implementation``: ``"numba"`` (or ``"auto"``) builds the CSR in O(nnz)
    ([`refattn.kernels.numba.lsh_support`][refattn.kernels.numba.lsh_support]); ``"numpy"`` is the readable twin, which forms a
    ``T x S`` mask per round: for tests and small inputs.
    """
    qb = np.atleast_2d(as_index_array(q_buckets, "q_buckets", ndim=None, minimum=-(2**62)))
    kb = np.atleast_2d(as_index_array(k_buckets, "k_buckets", ndim=None, minimum=-(2**62)))
    same_bucket = check_bool(same_bucket, "same_bucket")
    if qb.ndim != 2 or kb.ndim != 2 or qb.shape[0] != kb.shape[0]:
        raise InputError(f"k_buckets: expected (rounds, S) matching q_buckets' rounds, got {kb.shape} and {qb.shape}")
    chunk = check_positive_int(chunk, "chunk")
    lookback = check_positive_int(lookback, "lookback", minimum=0)

    if choose_implementation(implementation, ("auto", "numpy", "numba")) == "numpy":
        n_c = max(1, -(-qb.shape[1] // chunk))
        rounds = []
        for r in range(qb.shape[0]):
            cq = _chunks_of_sorted(qb[r], n_c)
            ck = _chunks_of_sorted(kb[r], n_c)
            diff = cq[:, None] - ck[None, :]
            mask = (diff >= 0) & (diff <= lookback)
            if same_bucket:
                mask &= qb[r][:, None] == kb[r][None, :]
            rounds.append(Support.from_dense(mask))
        return union(*rounds)

    indptr, indices = union_support_numba(qb, kb, chunk, lookback, same_bucket)
    return Support(indptr, indices, kb.shape[1])


def balanced_clusters(q_keys, k_keys, n_clusters) -> Support:
    """SMYRF's balanced clusters (Daras et al. 2020): sort queries and keys by a scalar (a hash
    projection), cut each into ``n_clusters`` equal-size groups; query group ``c`` sees key group ``c``."""
    n_clusters = check_positive_int(n_clusters, "n_clusters")
    qk = as_float_array(q_keys, "q_keys")
    kk = as_float_array(k_keys, "k_keys")
    for a, name in ((qk, "q_keys"), (kk, "k_keys")):
        if a.ndim != 1:
            raise InputError(f"{name}: expected one scalar per row, shape (L,), got {a.shape}")
    if n_clusters > min(qk.size, kk.size):
        raise InputError(f"n_clusters: {n_clusters} exceeds the number of queries or keys ({qk.size}, {kk.size})")
    cq = _chunks_of_sorted(qk, n_clusters)
    ck = _chunks_of_sorted(kk, n_clusters)
    return Support.from_dense(cq[:, None] == ck[None, :])


def _check_sparse(q, k, v, support, scale, entry_bias):
    """Validated ``(q, k, v, scale, entry_bias)`` of [`sparse_attention`][refattn.lsh.sparse.sparse_attention] (float64; zeros for no bias)."""
    q = as_float_array(q, "q").astype(np.float64, copy=False)
    k = as_float_array(k, "k").astype(np.float64, copy=False)
    v = as_float_array(v, "v").astype(np.float64, copy=False)
    if q.ndim != 2 or k.ndim != 2 or v.ndim != 2:
        raise InputError("q, k, v: sparse_attention takes 2-D (T, H), (S, H), (S, Hv) arrays (one head)")
    if q.shape[1] != k.shape[1]:
        raise InputError(f"k: head dim {k.shape[1]} does not match q's {q.shape[1]}")
    if k.shape[0] != v.shape[0]:
        raise InputError(f"v: has {v.shape[0]} keys but k has {k.shape[0]}")
    if not isinstance(support, Support):
        raise InputTypeError(f"support: expected a refattn.lsh.sparse.Support, got {type(support).__name__}")
    if support.n_queries != q.shape[0] or support.n_keys != k.shape[0]:
        raise InputError(f"support: shape ({support.n_queries}, {support.n_keys}) does not match (T, S) = "
                         f"({q.shape[0]}, {k.shape[0]})")
    s = check_scale(scale, q.shape[1])
    check_logit_range(q, k, s, None)
    if entry_bias is None:
        eb = np.zeros(support.nnz)
    else:
        eb = as_float_array(entry_bias, "entry_bias", allow_neg_inf=True).astype(np.float64, copy=False)
        if eb.shape != (support.nnz,):
            raise InputError(f"entry_bias: expected shape (nnz,) = ({support.nnz},), got {eb.shape}")
    return q, k, v, s, eb


def sparse_attention(q, k, v, support: Support, *, scale=None, entry_bias=None, return_lse=False,
                     implementation="auto"):
    """Exact softmax attention restricted to ``support`` (SDDMM, row softmax, SpMM); see the module docstring.

    ``entry_bias (nnz,)`` is added to each stored logit (``-inf`` removes the entry).
    ``implementation``: ``"auto"``, ``"numba"`` (parallel over rows), ``"numpy"`` (the twin) or
    ``"cuda"``. CuPy arrays ``q, k, v`` (and ``entry_bias``) run the CUDA kernels
    (``kernels/cuda/sparse.cu``) under ``"auto"`` or ``"cuda"`` and return CuPy arrays; the support
    stays a NumPy CSR.
    """
    return_lse = check_bool(return_lse, "return_lse")
    gpu = gpu_backend(q=q, k=k, v=v, entry_bias=entry_bias)
    if gpu:
        if implementation not in ("auto", "cuda"):
            raise InputError(f"implementation: {implementation!r} runs on the CPU; CuPy inputs take 'auto' or 'cuda'")
        *_, s, _ = _check_sparse(shadow64(q), shadow64(k), shadow64(v), support, scale,
                                 None if entry_bias is None else shadow64(entry_bias))
        out, lse = gpu.sparse_attention(q, k, v, support, s, entry_bias)
        return (out, lse) if return_lse else out
    implementation = choose_implementation(implementation, ("auto", "numpy", "numba", "cuda"))
    q, k, v, s, eb = _check_sparse(q, k, v, support, scale, entry_bias)
    fn = kern.sparse_numba if implementation == "numba" else kern.sparse_numpy
    out, lse = fn(q, k, v, support.indptr, support.indices, s, eb)
    return (out, lse) if return_lse else out


def support_probabilities(q, k, support: Support, *, scale=None) -> np.ndarray:
    """The attention probabilities on ``support``, ``(nnz,)`` in CSR order: ``exp(s q_i.k_j - lse_i)``,
    ``lse_i`` the row's log-sum-exp over its support (what [`sparse_attention`][refattn.lsh.sparse.sparse_attention] normalises by)."""
    q = as_float_array(q, "q").astype(np.float64)
    k = as_float_array(k, "k").astype(np.float64)
    if k.ndim != 2:
        raise InputError(f"k: expected shape (S, H), got {k.shape}")
    zeros = np.zeros((k.shape[0], 1))
    _, lse = sparse_attention(q, k, zeros, support, scale=scale, return_lse=True)
    s = check_scale(scale, q.shape[1])
    rows = support.rows()
    logits = np.einsum("nh,nh->n", q[rows], k[support.indices]) * s  # (nnz,)
    return np.exp(logits - lse[rows])
