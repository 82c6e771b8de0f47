r"""LSH sparse attention estimators built on [`refattn.lsh.hashes`][refattn.lsh.hashes] and [`refattn.lsh.sparse`][refattn.lsh.sparse].

- [`reformer_attention`][refattn.lsh.attention.reformer_attention] (Kitaev et al. 2020): angular-hash buckets, stable sort by
  (bucket, position), chunks with look-back; several rounds combined as the **union** of
  their supports, each entry counted once (the docs' LSH page: without de-duplication the
  softmax over the union is wrong); shared-QK with unit keys and self-exclusion.
- [`smyrf_attention`][refattn.lsh.attention.smyrf_attention] (Daras et al. 2020): the asymmetric transform, one Gaussian
  projection per round, sorted and cut into equal-size (balanced) clusters.
- [`hyper_attention`][refattn.lsh.attention.hyper_attention] (Han et al. 2023): sortLSH blocks (SimHash codes in Gray-code
  order, stable sort, exact attention on the diagonal blocks) plus ``s`` key columns
  sampled uniformly with replacement, weighted ``S/s``, block entries excluded; merged in
  log space. Given the hash, the estimated row sums are unbiased. Causal by recursive
  halving.

Given the draws, both are exact softmax attention on their support (the kernels of
[`refattn.lsh.sparse`][refattn.lsh.sparse]), so they are as deterministic as their hashes: their error against
the oracle is the probability mass outside the support.
"""

from __future__ import annotations

import math

import numpy as np

from refattn._validation import InputError, as_float_array, as_generator, check_bool, check_positive_int
from refattn.kernels import numba_enabled
from refattn.lsh.hashes import (
    angular_hash,
    angular_rotations,
    gray_rank,
    simhash,
    simhash_planes,
    smyrf_transform,
    sort_order,
)
from refattn.lsh.sparse import Support, balanced_clusters, chunked_bucket_support, sparse_attention, union
from refattn.problem import attention_problem, causal_alignment, causal_mask

__all__ = ["LSHAttentionResult", "reformer_attention", "smyrf_clusters", "smyrf_attention", "hyper_attention"]


class LSHAttentionResult:
    """Output, lse, the union support and the per-round buckets (or cluster keys) of the draw.

    ``support`` is built on first access when the method ran on the support's blocks without
    forming it (Reformer's default path).
    """

    def __init__(self, output, lse, support, buckets):
        self.output = output
        self.lse = lse
        self.buckets = buckets
        self._support = support  # a Support, None, or a zero-argument callable that builds it

    @property
    def support(self) -> Support | None:
        if callable(self._support):
            self._support = self._support()
        return self._support

    def __repr__(self):
        return f"LSHAttentionResult(output={self.output.shape}, buckets={np.shape(self.buckets)})"


def _two_d(q, k, v, scale):
    prob = attention_problem(q, k, v, scale=scale)
    if prob.batch_shape:
        raise InputError("q: LSH attention takes 2-D (T, H) inputs (one head); loop over heads")
    return prob


def _reformer_blocks(prob, hq, hk, chunk, lookback, same_bucket, shared_qk, causal, offset):
    """Reformer on the blocks of its support ([`refattn.kernels.numba.lsh_blocks`][refattn.kernels.numba.lsh_blocks]):
    the sorted q, k, [v | 1] gathered once per round, two small products per chunk."""
    from refattn.kernels.numba.gemm import blas_single_thread
    from refattn.kernels.numba.lsh_blocks import chunked_round
    from refattn.kernels.numba.lsh_support import chunk_layout

    rounds, T = hq.shape
    S, Hv = prob.S, prob.Hv
    n_c = max(1, -(-T // chunk))
    q, k, v = (np.ascontiguousarray(a, dtype=np.float64) for a in (prob.q, prob.k, prob.v))
    layouts = [(chunk_layout(hq[r], n_c), chunk_layout(hk[r], n_c)) for r in range(rounds)]
    q_chunk = np.stack([lq[2] for lq, _ in layouts])
    k_chunk = np.stack([lk[2] for _, lk in layouts])
    v_ext = np.empty((S, Hv + 1))
    v_ext[:, :Hv] = v
    v_ext[:, Hv] = 1.0
    qs = q * prob.scale
    m = np.full(T, -np.inf)
    acc = np.zeros((T, Hv + 1))
    hq64, hk64 = np.ascontiguousarray(hq, dtype=np.int64), np.ascontiguousarray(hk, dtype=np.int64)
    limit = blas_single_thread()
    try:
        for r, ((q_order, q_bounds, _), (k_order, k_bounds, _)) in enumerate(layouts):
            chunked_round(r, qs[q_order], k[k_order], v_ext[k_order], q_order, k_order, q_bounds, k_bounds, q_chunk,
                          k_chunk, hq64, hk64, np.int64(lookback), bool(same_bucket), bool(shared_qk), causal,
                          np.int64(offset), m, acc)
    finally:
        limit.restore_original_limits()
    l = acc[:, Hv]
    seen = l > 0
    out = np.divide(acc[:, :Hv], l[:, None], out=np.zeros((T, Hv)), where=seen[:, None])
    lse = np.add(m, np.log(l, out=np.zeros(T), where=seen), out=np.full(T, -np.inf), where=seen)
    if shared_qk:  # a query with no other key attends to itself (its support is {i})
        alone = ~seen
        out[alone] = v[alone]
        lse[alone] = prob.scale * np.sum(q[alone] * k[alone], axis=-1)
    return out, lse


def reformer_attention(q, k, v, *, n_buckets, chunk, rounds=1, rng, shared_qk=False, causal=False,
                       lookback=1, same_bucket=True, scale=None, implementation="auto") -> LSHAttentionResult:
    """Reformer's LSH attention for one head.

    With ``shared_qk`` the keys are the unit-normalised queries (``k`` is ignored; T = S) and
    a query does not attend to itself unless it has no other key in its support
    (Kitaev et al. 2020, section 2.2). ``causal`` intersects the support with the causal
    mask (bottom-right alignment).

    ``implementation``: ``"auto"`` (``"blocks"`` when Numba is usable) computes on the support's
    blocks: per round, the sorted rows gathered once and two small matrix products per chunk
    ([`refattn.kernels.numba.lsh_blocks`][refattn.kernels.numba.lsh_blocks]); ``result.support`` is
    then built on first access. ``"numba"`` and ``"numpy"`` build the union support as CSR and run
    the sparse kernel on it (the readable twin; equal to summation order, tested).
    """
    if implementation not in ("auto", "blocks", "numba", "numpy"):
        raise InputError(f"implementation: expected one of ('auto', 'blocks', 'numba', 'numpy'), got {implementation!r}")
    shared_qk = check_bool(shared_qk, "shared_qk")
    causal = causal_alignment(causal)
    if shared_qk:
        qa = as_float_array(q, "q").astype(np.float64)
        norms = np.linalg.norm(qa, axis=-1, keepdims=True)
        k = qa / np.where(norms > 0, norms, 1.0)
    prob = _two_d(q, k, v, scale)
    rounds = check_positive_int(rounds, "rounds")
    chunk = check_positive_int(chunk, "chunk")
    lookback = check_positive_int(lookback, "lookback", minimum=0)
    same_bucket = check_bool(same_bucket, "same_bucket")
    csr_impl = "numpy" if implementation == "numpy" else "auto"
    R = angular_rotations(prob.H, n_buckets, as_generator(rng), rounds=rounds)
    hq = angular_hash(prob.q, R, implementation=csr_impl)  # (rounds, T)
    hk = hq if shared_qk else angular_hash(prob.k, R, implementation=csr_impl)

    def support():
        sup = chunked_bucket_support(hq, hk, chunk, lookback=lookback, same_bucket=same_bucket,
                                     implementation=csr_impl)  # union of rounds
        return sup.intersect(causal_mask(prob.T, prob.S, causal)) if causal else sup

    if implementation in ("auto", "blocks") and numba_enabled() and prob.T and prob.S:
        offset = (prob.S - prob.T if causal == "bottom_right" else 0) if causal else prob.S
        out, lse = _reformer_blocks(prob, hq, hk, chunk, lookback, same_bucket, shared_qk, bool(causal), offset)
        return LSHAttentionResult(out, lse, support, hq)
    sup = support()
    bias = None
    if shared_qk:
        rows = sup.rows()
        self_entry = rows == sup.indices
        alone = sup.row_counts()[rows] == 1
        bias = np.where(self_entry & ~alone, -np.inf, 0.0)
    out, lse = sparse_attention(prob.q, prob.k, prob.v, sup, scale=prob.scale, entry_bias=bias,
                                return_lse=True, implementation=csr_impl)
    return LSHAttentionResult(out, lse, sup, hq)


def smyrf_clusters(q, k, *, n_clusters, rounds=1, rng, scale=None):
    """SMYRF's cluster supports, one per hash round (Daras et al. 2020, Sec. 3), for one head.

    The scaled rows go through the asymmetric transform ([`smyrf_transform`][refattn.lsh.hashes.smyrf_transform]:
    nearest neighbours become the largest inner products), are projected on one Gaussian direction
    per round, and sorted queries and keys are cut into ``n_clusters`` equal-size clusters
    ([`balanced_clusters`][refattn.lsh.sparse.balanced_clusters]). Returns ``(supports, keys)``: a list of
    ``rounds`` supports (query cluster ``c`` sees key cluster ``c``) and the projections
    ``(rounds, T)`` of the queries. A pair found in several rounds is in several supports; their
    [`union`][refattn.lsh.sparse.union] counts it once.
    """
    prob = _two_d(q, k, k, scale)  # k stands in for v: the clusters read only q, k and the scale
    rounds = check_positive_int(rounds, "rounds")
    root = math.sqrt(prob.scale)
    F, G, _ = smyrf_transform(prob.q * root, prob.k * root)
    gen = as_generator(rng)
    a = gen.standard_normal((rounds, F.shape[1]))
    keys, supports = [], []
    for r in range(rounds):
        fq, gk = F @ a[r], G @ a[r]
        keys.append(fq)
        supports.append(balanced_clusters(fq, gk, n_clusters))
    return supports, np.stack(keys)


def smyrf_attention(q, k, v, *, n_clusters, rounds=1, rng, scale=None, implementation="auto") -> LSHAttentionResult:
    """SMYRF for one head: attention within the clusters of [`smyrf_clusters`][refattn.lsh.attention.smyrf_clusters],
    rounds merged as a union (a pair found in several rounds counts once)."""
    prob = _two_d(q, k, v, scale)
    supports, keys = smyrf_clusters(prob.q, prob.k, n_clusters=n_clusters, rounds=rounds, rng=rng, scale=prob.scale)
    sup = union(*supports)
    out, lse = sparse_attention(prob.q, prob.k, prob.v, sup, scale=prob.scale, return_lse=True,
                                implementation=implementation)
    return LSHAttentionResult(out, lse, sup, keys)


def _block_ids(order, n_blocks):
    """Block index of each original position, blocks cut from the sorted ``order``."""
    ids = np.empty(order.size, dtype=np.int64)
    bounds = np.round(np.linspace(0, order.size, n_blocks + 1)).astype(np.int64)
    for c in range(n_blocks):
        ids[order[bounds[c]:bounds[c + 1]]] = c
    return ids


def _hyper_noncausal(q, k, v, scale, block_size, n_samples, planes, gen, implementation):
    """One non-causal HyperAttention: (out, lse, support, entry_bias)."""
    T, S = q.shape[0], k.shape[0]
    if T == 0 or S == 0:
        return np.zeros((T, v.shape[1])), np.full(T, -np.inf), Support.from_dense(np.zeros((T, S), bool)), None
    n_blocks = max(1, -(-max(T, S) // block_size))
    cq = gray_rank(simhash(q, planes)[0])
    ck = gray_rank(simhash(k, planes)[0])
    bq = _block_ids(sort_order(cq), min(n_blocks, T))
    bk = _block_ids(sort_order(ck), min(n_blocks, S))
    if min(n_blocks, T) != min(n_blocks, S):  # T != S: map block ids onto a common count
        nb = min(n_blocks, T, S)
        bq = bq * nb // min(n_blocks, T)
        bk = bk * nb // min(n_blocks, S)
    in_block = bq[:, None] == bk[None, :]  # (T, S); O(T S) booleans: the reference, not the fast path
    cols, counts = np.unique(gen.integers(0, S, size=n_samples), return_counts=True) if n_samples else (
        np.zeros(0, np.int64), np.zeros(0, np.int64))
    sampled = np.zeros((T, S), dtype=bool)
    sampled[:, cols] = True
    sampled &= ~in_block  # block entries are computed exactly, not sampled
    weight = np.zeros(S)
    weight[cols] = counts * S / max(n_samples, 1)  # with replacement: count * S / s
    sup = Support.from_dense(in_block | sampled)
    rows, idx = sup.rows(), sup.indices
    bias = np.where(in_block[rows, idx], 0.0, np.log(np.where(weight[idx] > 0, weight[idx], 1.0)))
    out, lse = sparse_attention(q, k, v, sup, scale=scale, entry_bias=bias, return_lse=True,
                                implementation=implementation)
    return out, lse, sup, bias


def _merge(out_a, lse_a, out_b, lse_b):
    """Combine two attentions over disjoint key sets by log-sum-exp."""
    lse = np.logaddexp(lse_a, lse_b)
    fin = np.isfinite(lse)
    wa = np.where(fin, np.exp(np.where(fin, lse_a - lse, -np.inf)), 0.0)
    wb = np.where(fin, np.exp(np.where(fin, lse_b - lse, -np.inf)), 0.0)
    return wa[:, None] * out_a + wb[:, None] * out_b, lse


def hyper_attention(q, k, v, *, block_size, n_samples, bits=4, rng, causal=False, min_seq_len=None,
                    scale=None, implementation="auto") -> LSHAttentionResult:
    """HyperAttention for one head (Han et al. 2023, Algorithms 1-3).

    ``block_size``: size of the diagonal blocks in the sortLSH order; ``n_samples``: uniformly
    sampled key columns (with replacement) for the rest, weighted ``S / n_samples``; ``bits``:
    SimHash bits of sortLSH. With ``causal`` (``T == S``), the problem is halved recursively:
    the top-left and bottom-right halves are causal sub-problems, the bottom-left block is a
    non-causal HyperAttention, merged by log-sum-exp; below ``min_seq_len`` (default
    ``block_size``) exact causal attention is used. The ``support`` returned is that of the
    non-causal estimate (``None`` for causal).
    """
    prob = _two_d(q, k, v, scale)
    causal = causal_alignment(causal)
    block_size = check_positive_int(block_size, "block_size")
    n_samples = check_positive_int(n_samples, "n_samples", minimum=0)
    gen = as_generator(rng)
    planes = simhash_planes(prob.H, check_positive_int(bits, "bits"), gen)
    qq, kk, vv = (a.astype(np.float64) for a in (prob.q, prob.k, prob.v))
    if not causal:
        out, lse, sup, _ = _hyper_noncausal(qq, kk, vv, prob.scale, block_size, n_samples, planes, gen,
                                            implementation)
        return LSHAttentionResult(out, lse, sup, simhash(qq, planes))
    if prob.T != prob.S:
        raise InputError("causal: HyperAttention's recursive causal form needs T == S")
    base = block_size if min_seq_len is None else check_positive_int(min_seq_len, "min_seq_len")

    def rec(lo, hi):
        n = hi - lo
        if n <= base:
            mask = causal_mask(n, n)
            return sparse_attention(qq[lo:hi], kk[lo:hi], vv[lo:hi], Support.from_dense(mask), scale=prob.scale,
                                    return_lse=True, implementation=implementation)
        mid = lo + n // 2
        out_top, lse_top = rec(lo, mid)
        out_br, lse_br = rec(mid, hi)
        out_bl, lse_bl, _, _ = _hyper_noncausal(qq[mid:hi], kk[lo:mid], vv[lo:mid], prob.scale, block_size,
                                                n_samples, planes, gen, implementation)
        out_bot, lse_bot = _merge(out_bl, lse_bl, out_br, lse_br)
        return np.concatenate([out_top, out_bot]), np.concatenate([lse_top, lse_bot])

    out, lse = rec(0, prob.T)
    return LSHAttentionResult(out, lse, None, simhash(qq, planes))
