r"""SEA, step 1: the compressed estimate of each attention row in linear time (Lee et al. 2024, Sec. 3).

Shape legend: N heads (optional leading axis), T queries, S keys, H head dim, K compressed
bins, n basis bins.

[`kernel_estimate`][refattn.sea.estimate.kernel_estimate] is Performer attention with the positional basis ``P (S, n)`` as values
([`positional_basis`][refattn.sea.estimate.positional_basis]): ``E = softmax-kernel-estimate(Q, K) P (T, n)``. With the
bin-indicator basis the exact ``A P`` *is* each attention row binned to ``n`` position bins
([`binned_attention`][refattn.sea.estimate.binned_attention]), so ``E`` estimates the binned attention. A decoder
([`refattn.sea.decoder`][refattn.sea.decoder]) maps ``E`` to ``K`` logits per row over the row's own bins (a causal
row of length ``l_i`` is cut into ``K`` bins of ``l_i``: [`row_lengths`][refattn.sea.estimate.row_lengths], [`bin_starts`][refattn.sea.estimate.bin_starts]),
and [`compressed_softmax`][refattn.sea.estimate.compressed_softmax] gives the compressed estimate ``A~ (T, K)``. Derivation: the docs'
SEA page, "The estimate".
"""

from __future__ import annotations

import numpy as np

from refattn._validation import InputError, as_float_array, as_index_array, check_allocation, check_positive_int
from refattn.exact import attention_probabilities
from refattn.performer.attention import feature_maps, performer_attention, problem_features
from refattn.problem import causal_alignment, causal_offset, score_problem

__all__ = ["row_lengths", "bin_starts", "column_bins", "positional_basis", "kernel_estimate", "binned_attention",
           "compressed_softmax"]

#: Rows of exact probabilities computed at once by the blockwise helpers (never ``T x S``).
_BLOCK_ENTRIES = 1 << 22


# ----------------------------------------------------------------------------- bins


def row_lengths(T: int, S: int, causal=False) -> np.ndarray:
    """``l_i``: the number of keys query ``i`` sees, ``(T,)`` int64.

    ``S`` for every row without a causal mask; with one (alignment as the oracle's,
    [`refattn.problem`][refattn.problem]), ``l_i = clip(i + offset + 1, 0, S)`` (``l_i = i + 1`` when ``T = S``).
    """
    T = check_positive_int(T, "T", minimum=0)
    S = check_positive_int(S, "S", minimum=0)
    alignment = causal_alignment(causal)
    if alignment is None:
        return np.full(T, S, dtype=np.int64)
    off = causal_offset(T, S, alignment)
    return np.clip(np.arange(T, dtype=np.int64) + off + 1, 0, S)


def bin_starts(lengths, n_bins: int) -> np.ndarray:
    """Bin edges ``(T, K+1)``: ``start_b = floor(b l / K + 1/2)`` in exact integer arithmetic.

    ``start_0 = 0``, ``start_K = l``; widths are ``floor(l/K)`` or ``ceil(l/K)``, and a row
    shorter than ``K`` has empty bins (``start_b == start_{b+1}``).

    Examples
    --------
    >>> bin_starts([5, 2], 4)
    array([[0, 1, 3, 4, 5],
           [0, 1, 1, 2, 2]])
    """
    lengths = as_index_array(lengths, "lengths")
    K = check_positive_int(n_bins, "n_bins")
    check_allocation(lengths.size * (K + 1), "lengths, n_bins", "the bin edges")
    b = np.arange(K + 1, dtype=np.int64)
    return (2 * b[None, :] * lengths[:, None] + K) // (2 * K)


def column_bins(columns, length, n_bins: int) -> np.ndarray:
    """The bin of column ``j < l``: ``ceil((2j+1) K / (2l)) - 1 = ((2j+1) K - 1) // (2l)`` (derived:
    ``start_b <= j  <=>  b < (2j+1) K / (2l)``; docs/sea.md), the exact inverse of [`bin_starts`][refattn.sea.estimate.bin_starts].

    Examples
    --------
    >>> column_bins(np.arange(5), 5, 4)
    array([0, 1, 1, 2, 3])
    """
    j = as_index_array(columns, "columns", ndim=None)
    length = as_index_array(length, "length", ndim=None, minimum=1)
    n_bins = check_positive_int(n_bins, "n_bins")
    try:
        np.broadcast_shapes(j.shape, length.shape)
    except ValueError:
        raise InputError(f"length: shape {length.shape} does not broadcast with columns' {j.shape}") from None
    return ((2 * j + 1) * n_bins - 1) // (2 * length)


def positional_basis(S: int, n_basis: int, basis: str = "bins") -> np.ndarray:
    r"""The positional basis ``P (S, n)``; every row sums to 1.

    ``basis="bins"``: ``P[j, c] = 1`` iff column ``j`` lies in bin ``c`` of the full length ``S``
    ([`bin_starts`][refattn.sea.estimate.bin_starts]), so ``A P`` is the binned attention exactly. ``"linear"``: the identity
    ``I_n`` linearly interpolated to ``S`` positions (SEA's basis; half-pixel centres,
    ``t_j = (j + 1/2) n / S - 1/2`` clamped to ``[0, n-1]``, hat weights on ``floor(t_j)`` and
    ``floor(t_j) + 1``): a smoothed binning.
    """
    S = check_positive_int(S, "S")
    n = check_positive_int(n_basis, "n_basis")
    if n > S:
        raise InputError(f"n_basis: must be <= S = {S}, got {n}")
    check_allocation(S * n, "S, n_basis", "the (S, n_basis) basis")
    kind = basis
    P = np.zeros((S, n))
    j = np.arange(S)
    if kind == "bins":
        P[j, column_bins(j, S, n)] = 1.0
    elif kind == "linear":
        t = np.clip((j + 0.5) * n / S - 0.5, 0.0, n - 1)  # (S,) position in basis coordinates
        lo = np.floor(t).astype(np.int64)
        hi = np.minimum(lo + 1, n - 1)
        frac = t - lo
        np.add.at(P, (j, lo), 1.0 - frac)
        np.add.at(P, (j, hi), frac)
    else:
        raise InputError(f"basis: expected 'bins' or 'linear', got {kind!r}")
    return P


# ----------------------------------------------------------------------------- step 1


def kernel_estimate(q, k, *, n_basis, basis="bins", m=256, features="positive", projection="orthogonal",
                    rng=None, W=None, scale=None, causal=False, chunk_size=128, implementation="auto"):
    r"""``E (..., T, n_basis)``: Performer attention with values ``P`` (the docs' SEA page, the estimate), linear in ``T``.

    ``features``: a [`refattn.performer.RandomFeatures`][refattn.performer.features.RandomFeatures] draw, or a kind name built with ``m``,
    ``projection``, ``rng`` and ``W`` ([`refattn.performer.features.as_features`][refattn.performer.features.as_features]).
    Returns ``(E, features)``, ``features`` the draw used. ``E``
    estimates [`binned_attention`][refattn.sea.estimate.binned_attention] at ``n_basis`` bins of the full length ``S`` (for the ``"bins"``
    basis); causal rows put no mass beyond their own length.

    ``implementation``: ``"numpy"`` (the twin: [`refattn.performer.performer_attention`][refattn.performer.attention.performer_attention] with the
    ``(S, n)`` matrix ``P`` as values) or ``"auto"`` (the bin path below for the bin basis, the twin
    otherwise).
    With a one-hot ``P``, ``phi(K)^T P`` is the per-bin sum ``Z_c = sum_{j in bin c} phi(k_j)``, and a
    causal row ``i`` sees whole bins ``c < p_i`` plus the prefix of bin ``p_i`` (the bin of its last key
    ``l_i - 1``): ``N_i[c] = phi(q_i) . Z_c`` for ``c < p_i``, ``phi(q_i) . C_{l_i - 1}`` for ``c = p_i``
    (``C`` the within-bin running sums), 0 beyond. Same features, same shifts: the two agree to
    rounding (``proofs_tests/sea/``); the bin path does one ``T x F x n`` product, no chunk loop.
    """
    if implementation not in ("auto", "numpy"):
        raise InputError(f"implementation: expected one of ('auto', 'numpy'), got {implementation!r}")
    prob = score_problem(q, k, scale=scale, causal=causal)
    S = prob.S
    if S == 0:
        raise InputError("k: the kernel estimate needs at least one key (S >= 1)")
    P = positional_basis(S, n_basis, basis)  # (S, n) (validates n_basis and basis)
    feats = problem_features(prob, features, m=m, projection=projection, rng=rng, W=W)  # the one draw
    if implementation == "numpy" or basis != "bins":
        res = performer_attention(q, k, P, features=feats, scale=scale, causal=causal, chunk_size=chunk_size)
        return res.output, feats
    del P
    phi_q, phi_k, _ = feature_maps(prob, feats)
    n = int(n_basis)
    g = bin_starts(np.array([S]), n)[0]  # (n+1,) basis edges, every bin non-empty (n <= S)
    phi_q = np.broadcast_to(phi_q, prob.batch_shape + phi_q.shape[-2:])
    phi_k = np.broadcast_to(phi_k, prob.batch_shape + phi_k.shape[-2:])
    Z = np.add.reduceat(phi_k, g[:-1], axis=-2)  # (..., n, F) bin sums
    num = phi_q @ np.swapaxes(Z, -1, -2)  # (..., T, n)
    if prob.causal is not None:
        lengths = row_lengths(prob.T, S, prob.causal)
        last = np.maximum(lengths - 1, 0)  # (T,) the last key a row sees
        p = column_bins(last, S, n)  # (T,) its (partial) bin
        C = np.empty_like(phi_k)  # (..., S, F) running sums within each bin
        for c in range(n):
            np.cumsum(phi_k[..., g[c]:g[c + 1], :], axis=-2, out=C[..., g[c]:g[c + 1], :])
        partial = np.einsum("...tf,...tf->...t", phi_q, C[..., last, :])  # (..., T)
        cols = np.arange(n)
        num = np.where(cols[None, :] < p[:, None], num, 0.0)
        num = np.where(cols[None, :] == p[:, None], partial[..., None], num)
        num = np.where((lengths > 0)[:, None], num, 0.0)
    den = num.sum(axis=-1, keepdims=True)  # (..., T, 1): P rows sum to 1
    E = np.divide(num, den, out=np.zeros_like(num), where=den != 0)  # a zero denominator gives 0, as Performer
    return E, feats


def binned_attention(q, k, n_bins, *, scale=None, causal=False, lengths=None) -> np.ndarray:
    """The exact attention binned to each row's own ``K`` bins, ``(..., T, K)`` (the teacher of
    the oracle decoder and of distillation). Computed in blocks of rows: ``O(T S)`` work, never a
    ``T x S`` array. ``lengths`` overrides the row lengths (default: [`row_lengths`][refattn.sea.estimate.row_lengths]).
    """
    prob = score_problem(q, k, scale=scale, causal=causal)
    K = check_positive_int(n_bins, "n_bins")
    T, S = prob.T, prob.S
    if lengths is None:
        lengths = row_lengths(T, S, prob.causal or False)
    qb = np.broadcast_to(prob.q, prob.batch_shape + (T, prob.H))
    kb = np.broadcast_to(prob.k, prob.batch_shape + (S, prob.H))
    out = np.zeros(prob.batch_shape + (T, K))
    block = max(1, _BLOCK_ENTRIES // max(1, S))
    cols = np.arange(S)
    for i0 in range(0, T, block):
        i1 = min(T, i0 + block)
        l = lengths[i0:i1]  # (B,)
        visible = cols[None, :] < l[:, None]  # (B, S)
        p = attention_probabilities(qb[..., i0:i1, :], kb, scale=prob.scale, mask=visible)  # (..., B, S)
        binidx = column_bins(cols[None, :], np.maximum(l, 1)[:, None], K)  # (B, S)
        flat = (np.arange(i1 - i0)[:, None] * K + binidx)[visible]  # (nnz,) row-major bin ids
        pv = p[..., visible]  # (..., nnz)
        for idx in np.ndindex(*prob.batch_shape) if prob.batch_shape else [()]:
            out[idx + (slice(i0, i1),)] = np.bincount(flat, weights=pv[idx], minlength=(i1 - i0) * K).reshape(-1, K)
    return out


def compressed_softmax(logits, lengths, n_bins) -> np.ndarray:
    """``A~ = softmax`` of a decoder's logits over each row's non-empty bins, ``(..., T, K)``.

    Empty bins (a row shorter than ``K``) get probability 0 whatever their logit; a row with
    ``l = 0`` is all zeros. ``logits`` may be ``-inf`` (a bin ruled out) but not NaN or ``+inf``,
    and a row with ``l > 0`` needs one finite logit on a non-empty bin: otherwise a ``ValueError``
    naming ``decoder`` (the logits come from one).
    """
    K = check_positive_int(n_bins, "n_bins")
    logits = as_float_array(logits, "logits", allow_neg_inf=True)
    lengths = as_index_array(lengths, "lengths")
    if logits.ndim < 2 or logits.shape[-2:] != (lengths.size, K):
        raise InputError(f"logits: expected shape (..., T, K) = (..., {lengths.size}, {K}), got {logits.shape}")
    starts = bin_starts(lengths, K)
    nonempty = np.diff(starts, axis=1) > 0  # (T, K)
    z = np.where(nonempty, logits.astype(np.float64), -np.inf)  # (..., T, K)
    zmax = z.max(axis=-1, keepdims=True)
    dead = ~np.isfinite(zmax[..., 0]) & (lengths > 0)
    if dead.any():
        i = np.argwhere(dead)[0]
        raise InputError(f"logits: row {tuple(int(x) for x in i)} has no finite logit on a non-empty bin")
    with np.errstate(invalid="ignore"):
        e = np.exp(z - np.where(np.isfinite(zmax), zmax, 0.0))
    total = e.sum(axis=-1, keepdims=True)
    return np.divide(e, total, out=np.zeros_like(e), where=total > 0)
