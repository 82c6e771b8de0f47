r"""Streaming (online-softmax) exact attention for one batch item: O((T + S) H) memory.

Milakov & Gimelshein (2018), "Online normalizer calculation for softmax"; Dao et al.
(2022), FlashAttention, Algorithm 1; derivation: the docs' exact-attention page. For each query block keep, per
row, the running max ``m``, the running sum ``l`` and the running unnormalised output
``o``; for a new key block with logits ``b``:

$$
m' = \max(m, \max_j b_j), \quad
l' = l\,e^{m - m'} + \textstyle\sum_j e^{b_j - m'}, \quad
o' = o\,e^{m - m'} + \textstyle\sum_j e^{b_j - m'} v_j .
$$

At the end ``out = o / l`` and ``lse = m + log l``. A row whose logits are all ``-inf``
keeps ``m = -inf, l = 0`` and returns zeros and ``lse = -inf``.

``softcap`` (0: none) replaces the scaled logits ``x`` by ``softcap tanh(x / softcap)`` before
the bias and the masks.

Masking inputs (already validated, see [`refattn.problem`][refattn.problem]): ``offset`` (query ``i``
sees keys ``j <= i + offset``; pass ``NO_CAUSAL`` for none), ``mask`` and ``bias``
``(T, S)`` views or ``None``, and ``key_length`` (keys ``j >= key_length`` are padding).
Key blocks beyond the last visible key of a query block are skipped (whether the causal offset
or the mask hides them), so causal attention costs about half of full attention.

The Numba kernel scales each query block once and multiplies (``(s q) k``, one rounding per
entry of ``s q``, where the twin rounds ``s (q k)`` once per logit): each term of the dot product
still carries one extra rounding, so the logit error stays within the ``gamma_{H+2}`` of the
oracle's derived bound (``forward_error_bound``); for a power-of-two ``s``, as at ``H = 64``,
the two orders give the same bits.

Two implementations with one signature: [`stream_numpy`][refattn.kernels.numba.streaming.stream_numpy] (the twin) and
[`stream_numba`][refattn.kernels.numba.streaming.stream_numba] (parallel over query blocks; each thread owns its block's buffers,
so there are no races; no fastmath, so results match the twin to rounding).
"""

from __future__ import annotations

import numba
import numpy as np

from refattn.kernels.numba.gemm import gemm
from refattn.kernels.numba.vexp import exp_inplace

__all__ = ["stream_numpy", "stream_numba", "NO_CAUSAL", "DEFAULT_BLOCK_Q", "DEFAULT_BLOCK_K"]

NO_CAUSAL = np.iinfo(np.int64).max // 4
DEFAULT_BLOCK_Q = 128
DEFAULT_BLOCK_K = 512


def _key_end(i1: int, offset: int, key_length: int) -> int:
    """One past the last key that any query in ``[i0, i1)`` may see."""
    return max(0, min(key_length, i1 - 1 + offset + 1))


@numba.njit(cache=True)
def _mask_end(mask, i0, i1, j_end):
    """One past the last key a boolean ``mask`` lets any query in ``[i0, i1)`` see, at most ``j_end``:
    the key range ends there whether it is cut by a causal offset or by a mask, so a causal problem
    posed as a mask runs the same products, of the same shapes, as the causal one (and gives the
    same bits)."""
    last = -1
    for r in range(i0, i1):
        for c in range(j_end - 1, last, -1):
            if mask[r, c]:
                last = c
                break
    return last + 1


def stream_numpy(q, k, v, scale, offset, mask, bias, key_length, block_q, block_k, softcap=0.0):
    """NumPy twin. ``q (T, H)``, ``k (S, H)``, ``v (S, Hv)`` -> ``out (T, Hv)``, ``lse (T,)``."""
    T, Hv = q.shape[0], v.shape[1]
    dt = q.dtype.type
    out = np.zeros((T, Hv), dtype=q.dtype)
    lse = np.full(T, -np.inf, dtype=q.dtype)
    for i0 in range(0, T, block_q):
        i1 = min(T, i0 + block_q)
        m = np.full(i1 - i0, -np.inf, dtype=q.dtype)  # running max  (bq,)
        l = np.zeros(i1 - i0, dtype=q.dtype)  # running sum  (bq,)
        acc = np.zeros((i1 - i0, Hv), dtype=q.dtype)  # running o    (bq, Hv)
        j_end = _key_end(i1, offset, key_length)
        if mask is not None:
            j_end = _mask_end(mask, i0, i1, j_end)
        for j0 in range(0, j_end, block_k):
            j1 = min(j_end, j0 + block_k)
            s = (q[i0:i1] @ k[j0:j1].T) * dt(scale)  # (bq, bk)
            if softcap:
                s = dt(softcap) * np.tanh(s / dt(softcap))
            if bias is not None:
                s = s + bias[i0:i1, j0:j1]
            if mask is not None:
                s = np.where(mask[i0:i1, j0:j1], s, -np.inf)
            if j1 - 1 > i0 + offset:  # block crosses the causal diagonal
                vis = np.arange(j0, j1)[None, :] <= np.arange(i0, i1)[:, None] + offset
                s = np.where(vis, s, -np.inf)
            m_new = np.maximum(m, s.max(axis=1))
            ref = np.where(m_new > -np.inf, m_new, 0)  # rows with nothing visible yet
            alpha = np.exp(m - ref)  # 0 when m = -inf
            p = np.exp(s - ref[:, None])  # (bq, bk), 0 where masked
            l = l * alpha + p.sum(axis=1)
            acc = acc * alpha[:, None] + p @ v[j0:j1]
            m = m_new
        seen = l > 0
        out[i0:i1][seen] = acc[seen] / l[seen, None]
        lse[i0:i1] = np.where(seen, m + np.log(np.where(seen, l, 1)), -np.inf)
    return out, lse


@numba.njit(cache=True)
def _row_max(row, n):
    """``max(row[:n])`` (``-inf`` when ``n <= 0``) with eight independent running maxima: one
    dependent chain of ``max`` is latency bound, and a maximum does not depend on the order."""
    n8 = n - n % 8 if n > 0 else 0
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = -np.inf
    for c in range(0, n8, 8):
        m0 = max(m0, row[c])
        m1 = max(m1, row[c + 1])
        m2 = max(m2, row[c + 2])
        m3 = max(m3, row[c + 3])
        m4 = max(m4, row[c + 4])
        m5 = max(m5, row[c + 5])
        m6 = max(m6, row[c + 6])
        m7 = max(m7, row[c + 7])
    for c in range(n8, max(n, 0)):
        m0 = max(m0, row[c])
    return max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))


@numba.njit(cache=True)
def _shifted_row(row, i, j0, offset, softcap, mask, has_mask, bias, has_bias, m, r):
    """One row (query ``i``) of a block of scaled logits in place: cap, bias, mask and causal cut,
    then ``exp(row - m')`` with the row's new running max ``m' = m[r]`` after the call; returns
    ``alpha = exp(m - m')``.

    On a row that stays in L1: the optional passes, the row max, and the shift fused into the
    vectorised exponential."""
    neg_inf = -np.inf
    bk = row.size
    c_last = min(bk - 1, i + offset - j0)  # last visible column (causal), may be < 0
    if softcap > 0:
        for c in range(bk):
            row[c] = softcap * np.tanh(row[c] / softcap)
    if has_bias:
        for c in range(bk):
            row[c] += bias[i, j0 + c]
    if has_mask:
        for c in range(bk):
            if not mask[i, j0 + c]:
                row[c] = neg_inf
    for c in range(max(0, c_last + 1), bk):
        row[c] = neg_inf
    m_old = m[r]
    m_new = max(m_old, _row_max(row, c_last + 1))
    ref = m_new if m_new > neg_inf else softcap * 0  # rows that have seen nothing keep l = 0 (a zero of the dtype)
    m[r] = m_new
    exp_inplace(row, ref)
    return np.exp(m_old - ref)


@numba.njit(cache=True)
def _query_block(q, k, v_ext, scale, softcap, offset, mask, has_mask, bias, has_bias, key_length, i0, i1, block_k,
                 out, lse):
    """The worker: queries ``[i0, i1)`` against every key block they may see, into ``out``, ``lse``.

    ``v_ext = [V | 1] (S, Hv + 1)``: one matrix product updates the outputs and the row sums ``l``.
    Both products run in place on the blocks (``gemm``: ``Q_b K_b^T`` into the logits buffer,
    ``P V_b`` accumulated into ``acc``), so a key block costs no copy and no allocation. Every
    buffer is this call's own, so parallel workers never share one."""
    H = q.shape[1]
    Hv1 = v_ext.shape[1]
    bq = i1 - i0
    qb = q[i0:i1] * scale  # scaled once: the product gives the scaled logits
    m = np.full(bq, -np.inf, dtype=q.dtype)  # running max
    acc = np.zeros((bq, Hv1), dtype=q.dtype)  # running [o | l]
    s = np.empty((bq, block_k), dtype=q.dtype)  # logits, then probabilities, of one key block
    j_end = max(0, min(key_length, i1 + offset))
    if has_mask:
        j_end = _mask_end(mask, i0, i1, j_end)
    for j0 in range(0, j_end, block_k):
        j1 = min(j_end, j0 + block_k)
        bk = j1 - j0
        gemm(False, True, bq, bk, H, qb, H, k[j0:j1], H, 0.0, s, block_k)  # s = (s Q_b) K_b^T
        for r in range(bq):
            alpha = _shifted_row(s[r][:bk], i0 + r, j0, offset, softcap, mask, has_mask, bias, has_bias, m, r)
            if alpha != 1:
                for h in range(Hv1):
                    acc[r, h] *= alpha
        gemm(False, False, bq, Hv1, bk, s, block_k, v_ext[j0:j1], Hv1, 1.0, acc, Hv1)  # acc += P V_b
    Hv = Hv1 - 1
    for r in range(bq):
        l = acc[r, Hv]
        if l > 0:
            for h in range(Hv):
                out[i0 + r, h] = acc[r, h] / l
            lse[i0 + r] = m[r] + np.log(l)
        else:
            for h in range(Hv):
                out[i0 + r, h] = 0.0
            lse[i0 + r] = -np.inf


@numba.njit(parallel=True, cache=True)
def _all_blocks(q, k, v_ext, scale, softcap, offset, mask, has_mask, bias, has_bias, key_length, block_q, block_k,
                out, lse):
    """The parallel loop over query blocks, interleaving cheap and expensive blocks (causal) so that
    the static schedule is balanced."""
    n_blocks = (q.shape[0] + block_q - 1) // block_q
    for t in numba.prange(n_blocks):
        b = t // 2 if t % 2 == 0 else n_blocks - 1 - t // 2
        i0 = b * block_q
        _query_block(q, k, v_ext, scale, softcap, offset, mask, has_mask, bias, has_bias, key_length, i0,
                     min(q.shape[0], i0 + block_q), block_k, out, lse)


def stream_numba(q, k, v, scale, offset, mask, bias, key_length, block_q, block_k, softcap=0.0):
    """The driver of the parallel Numba kernel; same contract as [`stream_numpy`][refattn.kernels.numba.streaming.stream_numpy]."""
    T, S = q.shape[0], k.shape[0]
    dtype = q.dtype
    out = np.empty((T, v.shape[1]), dtype=dtype)
    lse = np.empty(T, dtype=dtype)
    if T == 0:
        return out, lse
    # Fixed argument types (one compilation per dtype): a (1, 1) placeholder when absent.
    # Writeable C-contiguous arrays only (read-only views, e.g. from broadcast_to, would be
    # a different Numba type and trigger a recompilation).
    def own(a, dt):
        return np.require(a, dtype=dt, requirements=["C", "W"])

    mask_arr = own(mask, np.bool_) if mask is not None else np.ones((1, 1), dtype=np.bool_)
    bias_arr = own(bias, dtype) if bias is not None else np.zeros((1, 1), dtype=dtype)
    v_ext = np.empty((S, v.shape[1] + 1), dtype=dtype)  # [V | 1]
    v_ext[:, :-1] = v
    v_ext[:, -1] = 1
    _all_blocks(
        own(q, dtype), own(k, dtype), v_ext,
        dtype.type(scale), dtype.type(softcap), np.int64(offset), mask_arr, mask is not None, bias_arr, bias is not None,
        np.int64(key_length), np.int64(block_q), np.int64(block_k), out, lse,
    )
    return out, lse
