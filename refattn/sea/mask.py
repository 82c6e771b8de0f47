r"""SEA, steps 2-3: top-k on the compressed estimate, upsampled to key columns (Lee et al. 2024,
Sec. 3), and the facts that bound what a mask loses.

[`sea_mask`][refattn.sea.mask.sea_mask]: top-k on ``A~`` upsampled to key columns. **The pinned rule.** Bin ``b``
of a row of length ``l`` covers columns ``[start_b, start_{b+1})``,
``start_b = floor(b l / K + 1/2)`` (round half up, computed in integers: no float ties;
[`bin_starts`][refattn.sea.estimate.bin_starts]; the inverse map is [`column_bins`][refattn.sea.estimate.column_bins]). Every column of bin ``b`` gets
the upsampled estimate ``A~_b / w_b`` ([`upsample`][refattn.sea.mask.upsample]). A row keeps the ``min(k, l)``
columns with the largest upsampled estimate, ties to the lower column. Equivalently, on
bins: the bins are ranked by ``A~_b / w_b`` (ties: lower bin), whole bins are taken until
``k`` columns are reached, and the last bin is cut to the budget (its lower columns kept):
that cut is "capped at k columns". So the number of bins a row uses is the fewest top bins
covering ``k`` columns, about ``ceil(k K / l)``: a row with ``l <= k`` is dense. Grouped
top-k (``grouped=True``) ranks the ``(head, column)`` pairs of a query together with one
budget ``N min(k, l)``, each head keeping at least its best column. ``k`` is a test-time
choice (an int, or one per row): nothing upstream depends on it.

Facts the tests check (derived on the docs' SEA page):
``KL(A_i || up(A~_i)) = KL(A_i^down || A~_i) + sum_b A_i^down[b] KL(A_{i|b} || U_b)``
([`kl_decomposition`][refattn.sea.mask.kl_decomposition]), and a mask keeping mass ``m_i`` of row ``i`` has
``TV = 1 - m_i`` and ``|o_i - o_i^mask| <= 2 (1 - m_i) max_j |v_j|`` ([`captured_mass`][refattn.sea.mask.captured_mass]).
"""

from __future__ import annotations

import numbers

import numpy as np

from refattn._validation import (
    InputError,
    InputTypeError,
    as_float_array,
    as_index_array,
    check_allocation,
    check_bool,
    check_finite_result,
    check_positive_int,
    choose_implementation,
)
from refattn.exact import softmax_attention
from refattn.kernels.numba import sea_mask as kern
from refattn.lsh.sparse import Support, sparse_attention
from refattn.problem import score_problem
from refattn.sea.estimate import bin_starts, column_bins

__all__ = ["upsample", "sea_mask", "kl_decomposition", "captured_mass"]


def upsample(estimate, lengths, n_keys) -> np.ndarray:
    """The ``(..., T, S)`` form of ``A~``: column ``j < l_i`` of bin ``b`` gets ``A~[i, b] / w_b``
    (zero beyond ``l_i``). Rows sum to 1. Dense: for inspection and plots at small sizes."""
    n_keys = check_positive_int(n_keys, "n_keys", minimum=0)
    estimate, lengths = _check_estimate(estimate, lengths, n_keys)
    check_allocation(estimate[..., 0].size * max(n_keys, 1), "estimate, n_keys", "the upsampled (..., T, S) rows")
    K = estimate.shape[-1]
    starts = bin_starts(lengths, K)  # (T, K+1)
    width = np.diff(starts, axis=1)  # (T, K)
    cols = np.arange(n_keys)
    visible = cols[None, :] < lengths[:, None]  # (T, S)
    b = np.where(visible, column_bins(cols[None, :], np.maximum(lengths, 1)[:, None], K), 0)  # (T, S)
    rows = np.arange(lengths.size)[:, None]
    dens = np.take_along_axis(estimate, np.broadcast_to(b, estimate.shape[:-2] + b.shape), axis=-1)
    w = width[rows, b]
    return np.where(visible, dens / np.maximum(w, 1), 0.0)


# ----------------------------------------------------------------------------- steps 2-3


def _check_estimate(estimate, lengths, n_keys):
    """``A~ (..., T, K)`` (finite, >= 0) and row lengths ``(T,)`` in ``[0, n_keys]``."""
    est = as_float_array(estimate, "estimate").astype(np.float64)
    lengths = as_index_array(lengths, "lengths", maximum=n_keys)
    if est.ndim < 2 or est.shape[-2] != lengths.size or est.shape[-1] < 1:
        raise InputError(f"estimate: expected shape (..., T, K) with T = {lengths.size} rows and K >= 1 bins, "
                         f"got {est.shape}")
    return est, lengths


def _budgets(topk, lengths):
    T = lengths.size
    if isinstance(topk, numbers.Integral) and not isinstance(topk, (bool, np.bool_)):
        return np.full(T, check_positive_int(topk, "topk"), dtype=np.int64)
    arr = np.asarray(topk)
    if arr.shape != (T,) or not np.issubdtype(arr.dtype, np.integer):
        raise InputTypeError(f"topk: expected a positive int or a ({T},) integer array, got {arr.dtype} {arr.shape}")
    if T and arr.min() < 1:
        raise InputError(f"topk: every budget must be >= 1, got min {int(arr.min())}")
    return arr.astype(np.int64)


def sea_mask(estimate, lengths, n_keys, topk, *, grouped=False, implementation="auto") -> list:
    """Top-k on ``A~`` upsampled to key columns (the pinned rule of the module docstring).

    ``estimate (T, K)`` or ``(N, T, K)``; returns one [`refattn.lsh.sparse.Support`][refattn.lsh.sparse.Support] per head
    (a list of length ``N``, or 1). ``implementation``: ``"auto"``, ``"numba"`` (on bins, linear in
    ``T``) or ``"numpy"`` (the twin: upsampled ``T x S`` rows and a stable sort).
    """
    n_keys = check_positive_int(n_keys, "n_keys", minimum=0)
    est, lengths = _check_estimate(estimate, lengths, n_keys)
    if est.ndim == 2:
        est = est[None]
    if est.ndim != 3:
        raise InputError(f"estimate: expected (T, K) or (N, T, K), got shape {np.shape(estimate)}")
    grouped = check_bool(grouped, "grouped")
    budget = _budgets(topk, lengths)
    implementation = choose_implementation(implementation, ("auto", "numpy", "numba"))
    fn = kern.mask_numba if implementation == "numba" else kern.mask_dense
    heads = [est] if grouped else [est[h:h + 1] for h in range(est.shape[0])]
    csr = [pair for group in heads for pair in fn(np.ascontiguousarray(group), lengths, budget)]
    return [Support(indptr, indices, int(n_keys)) for indptr, indices in csr]


# ----------------------------------------------------------------------------- the facts


def _check_teacher(teacher, lengths):
    p = as_float_array(teacher, "teacher")
    if p.ndim != 2 or p.shape[0] != lengths.size:
        raise InputError(f"teacher: expected a (T, S) probability matrix with T = {lengths.size}, got {p.shape}")
    if (p < 0).any():
        raise InputError("teacher: has negative entries; expected a probability matrix")
    beyond = np.arange(p.shape[1])[None, :] >= lengths[:, None]
    if (p[beyond] != 0).any():
        raise InputError("teacher: puts mass on keys beyond a row's length (the causal mask)")
    sums = p.sum(axis=1)
    want = (lengths > 0).astype(np.float64)
    if np.abs(sums - want).max(initial=0.0) > 1e-9:
        i = int(np.argmax(np.abs(sums - want)))
        raise InputError(f"teacher: row {i} sums to {sums[i]!r}; expected {want[i]} (rows with l > 0 sum to 1)")
    return p.astype(np.float64)


def _kl_rows(p, r):
    """``sum_j p_j log(p_j / r_j)`` per row, 0 log 0 = 0; ``+inf`` where ``p > 0 = r``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(r)), 0.0)
    return terms.sum(axis=-1)


def kl_decomposition(teacher, estimate, lengths):
    r"""The KL chain rule of the docs' SEA page (derived there), per row:

    $$
    \mathrm{KL}(A_i \,\|\, \mathrm{up}(\tilde A_i)) = \mathrm{KL}(A_i^{\downarrow} \,\|\, \tilde A_i)
                  + \sum_b A_i^{\downarrow}[b]\, \mathrm{KL}(A_{i|b} \,\|\, U_b)
    $$

    ``teacher (T, S)``: the exact attention rows (a probability matrix, zero beyond ``l_i``);
    ``estimate (T, K)``: ``A~``. Returns ``(total, compressed, floor)``, each ``(T,)``: the left side,
    the first term (0 for the oracle decoder) and the floor (no width-``K`` estimate goes below).
    """
    lengths = as_index_array(lengths, "lengths")
    p = _check_teacher(teacher, lengths)
    est = as_float_array(estimate, "estimate").astype(np.float64)
    T, S = p.shape
    K = est.shape[-1]
    if est.shape != (T, K):
        raise InputError(f"estimate: expected shape ({T}, K), got {est.shape}")
    up = upsample(est, lengths, S)  # (T, S)
    total = _kl_rows(p, up)
    cols = np.arange(S)
    visible = cols[None, :] < lengths[:, None]
    b = np.where(visible, column_bins(cols[None, :], np.maximum(lengths, 1)[:, None], K), 0)  # (T, S)
    rows = np.repeat(np.arange(T), S).reshape(T, S)
    down = np.zeros((T, K))
    np.add.at(down, (rows[visible], b[visible]), p[visible])  # (T, K) binned teacher
    compressed = _kl_rows(down, est)
    width = np.diff(bin_starts(lengths, K), axis=1)  # (T, K)
    with np.errstate(divide="ignore", invalid="ignore"):
        within = np.where(visible & (p > 0), p / down[rows, b], 0.0)  # A_{i|b}, (T, S)
        term = np.where(within > 0, within * np.log(within * width[rows, b]), 0.0)  # KL(A_{i|b} || U_b) pieces
    floor = np.zeros(T)
    np.add.at(floor, rows[visible], (down[rows, b] * term)[visible])
    return total, compressed, floor


def captured_mass(q, k, supports, *, scale=None, causal=False) -> np.ndarray:
    """``m_i``: the exact attention mass a mask keeps, ``exp(lse_mask - lse_exact)`` per row, ``(N, T)``.

    Linear memory: both log-sum-exps come from streaming kernels. With ``TV(p_i, p_i|mask) = 1 - m_i``
    and ``|o_i - o_i^mask| <= 2 (1 - m_i) max_j |v_j|`` (the docs' SEA page).
    """
    prob = score_problem(q, k, scale=scale, causal=causal)
    if isinstance(supports, Support) or not isinstance(supports, (list, tuple)) or not supports:
        raise InputTypeError("supports: expected a non-empty list of refattn.lsh.sparse.Support (one per head)")
    for h, sup in enumerate(supports):
        if not isinstance(sup, Support):
            raise InputTypeError(f"supports[{h}]: expected a refattn.lsh.sparse.Support, got {type(sup).__name__}")
        if (sup.n_queries, sup.n_keys) != (prob.T, prob.S):
            raise InputError(f"supports[{h}]: shape ({sup.n_queries}, {sup.n_keys}) does not match "
                             f"(T, S) = ({prob.T}, {prob.S}) of q and k")
    N = len(supports)
    qh = np.broadcast_to(prob.q, (N, prob.T, prob.H)) if prob.q.ndim == 3 or N > 1 else prob.q[None]
    kh = np.broadcast_to(prob.k, (N, prob.S, prob.H)) if prob.k.ndim == 3 or N > 1 else prob.k[None]
    zeros = np.zeros((prob.S, 1))
    out = np.zeros((N, prob.T))
    for h, sup in enumerate(supports):
        _, lse_exact = softmax_attention(qh[h], kh[h], zeros, scale=prob.scale, causal=causal, return_lse=True)
        _, lse_mask = sparse_attention(qh[h], kh[h], zeros, sup, scale=prob.scale, return_lse=True)
        with np.errstate(invalid="ignore"):
            out[h] = np.where(np.isfinite(lse_exact), np.exp(lse_mask - lse_exact), 0.0)
    return check_finite_result(out, "q, k", "the captured mass (a ratio of exp(logit) sums)")
