r"""SEA: sparse attention on an estimated attention mask (Lee et al. 2024, seed 001; MATH.md section 5).

Shape legend: N heads (optional leading axis), T queries, S keys, H head dim, Hv value dim,
K compressed bins, n basis bins, k keys kept per query.

The pipeline, one function per step, each usable on its own:

1. :func:`kernel_estimate`: Performer attention with the positional basis ``P (S, n)`` as values
   (:func:`positional_basis`), ``E = softmax-kernel-estimate(Q, K) P (T, n)``, in linear time.
   With the bin-indicator basis, the exact ``A P`` *is* each attention row binned to ``n``
   position bins (:func:`binned_attention`), so ``E`` estimates the binned attention
   (MATH.md 5.1). A decoder (:mod:`refattn.sea_decoder`) maps ``E`` to ``K`` logits per row,
   over the row's *own* bins (a causal row of length ``l_i`` is cut into ``K`` bins of ``l_i``),
   and :func:`compressed_softmax` gives the compressed estimate ``A~ (T, K)``.
2.-3. :func:`sea_mask`: top-k on ``A~`` upsampled to key columns. **The pinned rule.** Bin ``b``
   of a row of length ``l`` covers columns ``[start_b, start_{b+1})``,
   ``start_b = floor(b l / K + 1/2)`` (round half up, computed in integers: no float ties;
   :func:`bin_starts`; the inverse map is :func:`column_bins`). Every column of bin ``b`` gets
   the upsampled estimate ``A~_b / w_b`` (:func:`upsample`). A row keeps the ``min(k, l)``
   columns with the largest upsampled estimate, ties to the lower column. Equivalently, on
   bins: the bins are ranked by ``A~_b / w_b`` (ties: lower bin), whole bins are taken until
   ``k`` columns are reached, and the last bin is cut to the budget (its lower columns kept):
   that cut is "capped at k columns". So the number of bins a row uses is the fewest top bins
   covering ``k`` columns, about ``ceil(k K / l)``: a row with ``l <= k`` is dense. Grouped
   top-k (``grouped=True``) ranks the ``(head, column)`` pairs of a query together with one
   budget ``N min(k, l)``, each head keeping at least its best column. ``k`` is a test-time
   choice (an int, or one per row): nothing upstream depends on it.
4. :func:`sea_attention`: exact softmax attention on that mask with the sparse kernels
   (:func:`refattn.sparse.sparse_attention`), optionally mixed with the (causal) mean of ``V``
   by a gate.

Facts the tests check (MATH.md section 5, derived there; the derivation is in docs/sea.md):
``KL(A_i || up(A~_i)) = KL(A_i^down || A~_i) + sum_b A_i^down[b] KL(A_{i|b} || U_b)``
(:func:`kl_decomposition`), and a mask keeping mass ``m_i`` of row ``i`` has
``TV = 1 - m_i`` and ``|o_i - o_i^mask| <= 2 (1 - m_i) max_j |v_j|`` (:func:`captured_mass`).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from refattn._validation import as_float_array, check_positive_int
from refattn.problem import attention_problem, causal_offset
from refattn.sparse import Support, sparse_attention

__all__ = [
    "SEAResult",
    "sea_attention",
    "row_lengths",
    "bin_starts",
    "column_bins",
    "positional_basis",
    "kernel_estimate",
    "binned_attention",
    "compressed_softmax",
    "upsample",
    "sea_mask",
    "kl_decomposition",
    "captured_mass",
]

#: Rows of exact probabilities computed at once by the blockwise helpers (never ``T x S``).
_BLOCK_ENTRIES = 1 << 22


# ----------------------------------------------------------------------------- bins


def row_lengths(T: int, S: int, causal=False) -> np.ndarray:
    """``l_i``: the number of keys query ``i`` sees, ``(T,)`` int64.

    ``S`` for every row without a causal mask; with one (alignment as the oracle's,
    :mod:`refattn.problem`), ``l_i = clip(i + offset + 1, 0, S)`` (``l_i = i + 1`` when ``T = S``).
    """
    from refattn.problem import _causal_alignment

    alignment = _causal_alignment(causal)
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
    lengths = np.asarray(lengths, dtype=np.int64)
    K = check_positive_int(n_bins, "n_bins")
    b = np.arange(K + 1, dtype=np.int64)
    return (2 * b[None, :] * lengths[:, None] + K) // (2 * K)


def column_bins(columns, length, n_bins: int) -> np.ndarray:
    """The bin of column ``j < l``: ``ceil((2j+1) K / (2l)) - 1 = ((2j+1) K - 1) // (2l)`` (derived:
    ``start_b <= j  <=>  b < (2j+1) K / (2l)``; docs/sea.md), the exact inverse of :func:`bin_starts`.

    Examples
    --------
    >>> column_bins(np.arange(5), 5, 4)
    array([0, 1, 1, 2, 3])
    """
    j = np.asarray(columns, dtype=np.int64)
    length = np.asarray(length, dtype=np.int64)
    return ((2 * j + 1) * n_bins - 1) // (2 * length)


def positional_basis(S: int, n: int, kind: str = "bins") -> np.ndarray:
    r"""The positional basis ``P (S, n)``; every row sums to 1.

    ``"bins"``: ``P[j, c] = 1`` iff column ``j`` lies in bin ``c`` of the full length ``S``
    (:func:`bin_starts`), so ``A P`` is the binned attention exactly. ``"linear"``: the identity
    ``I_n`` linearly interpolated to ``S`` positions (SEA's basis; half-pixel centres,
    ``t_j = (j + 1/2) n / S - 1/2`` clamped to ``[0, n-1]``, hat weights on ``floor(t_j)`` and
    ``floor(t_j) + 1``): a smoothed binning.
    """
    S = check_positive_int(S, "S")
    n = check_positive_int(n, "n_basis")
    if n > S:
        raise ValueError(f"n_basis: must be <= S = {S}, got {n}")
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
        raise ValueError(f"basis: expected 'bins' or 'linear', got {kind!r}")
    return P


# ----------------------------------------------------------------------------- step 1


def kernel_estimate(q, k, *, n_basis, basis="bins", m=256, features="positive", projection="orthogonal",
                    rng=None, W=None, scale=None, causal=False, chunk_size=128, implementation="auto"):
    r"""``E (..., T, n_basis)``: Performer attention with values ``P`` (MATH.md 5.1), linear in ``T``.

    Returns ``(E, features)``, ``features`` the :class:`refattn.features.RandomFeatures` draw. ``E``
    estimates :func:`binned_attention` at ``n_basis`` bins of the full length ``S`` (for the ``"bins"``
    basis); causal rows put no mass beyond their own length.

    ``implementation``: ``"performer"`` (the twin: :func:`refattn.performer.performer_attention` with the
    ``(S, n)`` matrix ``P`` as values) or ``"bins"`` (the bin basis only; ``"auto"`` picks it there).
    With a one-hot ``P``, ``phi(K)^T P`` is the per-bin sum ``Z_c = sum_{j in bin c} phi(k_j)``, and a
    causal row ``i`` sees whole bins ``c < p_i`` plus the prefix of bin ``p_i`` (the bin of its last key
    ``l_i - 1``): ``N_i[c] = phi(q_i) . Z_c`` for ``c < p_i``, ``phi(q_i) . C_{l_i - 1}`` for ``c = p_i``
    (``C`` the within-bin running sums), 0 beyond. Same features, same shifts: the two agree to
    rounding (``proofs_tests/test_sea.py``); the bin path does one ``T x F x n`` product, no chunk loop.
    """
    from refattn.performer import feature_maps, performer_attention

    if implementation not in ("auto", "bins", "performer"):
        raise ValueError(f"implementation: expected 'auto', 'bins' or 'performer', got {implementation!r}")
    if implementation == "bins" and basis != "bins":
        raise ValueError("implementation: 'bins' needs basis='bins'")
    S = np.shape(k)[-2] if np.ndim(k) >= 2 else 0
    P = positional_basis(S, n_basis, basis)  # (S, n) (validates n_basis and basis)
    if implementation == "performer" or basis != "bins":
        res = performer_attention(q, k, P, m=m, features=features, projection=projection, rng=rng, W=W,
                                  scale=scale, causal=causal, chunk_size=chunk_size)
        return res.output, res.features
    del P
    prob = attention_problem(q, k, np.zeros(np.shape(k)[:-1] + (0,)), scale=scale, causal=causal)
    feats, phi_q, phi_k, _ = feature_maps(prob, m=m, features=features, projection=projection, rng=rng, W=W)
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
    ``T x S`` array. ``lengths`` overrides the row lengths (default: :func:`row_lengths`).
    """
    from refattn.exact import attention_probabilities

    prob = attention_problem(q, k, np.zeros(np.shape(k)[:-1] + (0,)), scale=scale, causal=causal)
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
    K = n_bins
    logits = np.asarray(logits)
    if not np.issubdtype(logits.dtype, np.floating):
        raise TypeError(f"decoder: returned logits of dtype {logits.dtype}; expected a real floating array")
    if np.isnan(logits).any() or (logits == np.inf).any():
        raise ValueError("decoder: returned NaN or +inf logits (only -inf is allowed, to rule a bin out)")
    lengths = np.asarray(lengths, dtype=np.int64)
    starts = bin_starts(lengths, K)
    nonempty = np.diff(starts, axis=1) > 0  # (T, K)
    z = np.where(nonempty, logits.astype(np.float64), -np.inf)  # (..., T, K)
    zmax = z.max(axis=-1, keepdims=True)
    dead = ~np.isfinite(zmax[..., 0]) & (lengths > 0)
    if dead.any():
        i = np.argwhere(dead)[0]
        raise ValueError(f"decoder: row {tuple(int(x) for x in i)} has no finite logit on a non-empty bin")
    with np.errstate(invalid="ignore"):
        e = np.exp(z - np.where(np.isfinite(zmax), zmax, 0.0))
    total = e.sum(axis=-1, keepdims=True)
    return np.divide(e, total, out=np.zeros_like(e), where=total > 0)


def upsample(estimate, lengths, n_keys) -> np.ndarray:
    """The ``(..., T, S)`` form of ``A~``: column ``j < l_i`` of bin ``b`` gets ``A~[i, b] / w_b``
    (zero beyond ``l_i``). Rows sum to 1. Dense: for inspection and plots at small sizes."""
    estimate = np.asarray(estimate, dtype=np.float64)
    lengths = np.asarray(lengths, dtype=np.int64)
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


def _budgets(topk, lengths):
    T = lengths.size
    if isinstance(topk, numbers.Integral) and not isinstance(topk, (bool, np.bool_)):
        return np.full(T, check_positive_int(topk, "topk"), dtype=np.int64)
    arr = np.asarray(topk)
    if arr.shape != (T,) or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"topk: expected a positive int or a ({T},) integer array, got {arr.dtype} {arr.shape}")
    if T and arr.min() < 1:
        raise ValueError(f"topk: every budget must be >= 1, got min {int(arr.min())}")
    return arr.astype(np.int64)


def sea_mask(estimate, lengths, n_keys, topk, *, grouped=False, implementation="numba") -> list:
    """Top-k on ``A~`` upsampled to key columns (the pinned rule of the module docstring).

    ``estimate (T, K)`` or ``(N, T, K)``; returns one :class:`refattn.sparse.Support` per head
    (a list of length ``N``, or 1). ``implementation``: ``"numba"`` (on bins, linear in ``T``) or
    ``"dense"`` (the twin, upsampled rows and a stable sort).
    """
    from refattn.kernels import numba_enabled
    from refattn.kernels import sea_mask as kern

    est = np.asarray(estimate, dtype=np.float64)
    if est.ndim == 2:
        est = est[None]
    if est.ndim != 3:
        raise ValueError(f"estimate: expected (T, K) or (N, T, K), got shape {np.shape(estimate)}")
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.shape != (est.shape[1],):
        raise ValueError(f"lengths: expected shape ({est.shape[1]},), got {lengths.shape}")
    budget = _budgets(topk, lengths)
    if implementation not in ("numba", "dense"):
        raise ValueError(f"implementation: expected 'numba' or 'dense', got {implementation!r}")
    fn = kern.mask_numba if implementation == "numba" and numba_enabled() else kern.mask_dense
    heads = [est] if grouped else [est[h:h + 1] for h in range(est.shape[0])]
    csr = [pair for group in heads for pair in fn(np.ascontiguousarray(group), lengths, budget)]
    return [Support(indptr, indices, int(n_keys)) for indptr, indices in csr]


# ----------------------------------------------------------------------------- step 4


@dataclass
class SEAResult:
    """Everything SEA computed (per head on the leading axis when there is one).

    ``output (..., T, Hv)``; ``lse (..., T)`` of the sparse attention; ``estimate`` the compressed
    ``A~ (..., T, K)``; ``logits`` the decoder's; ``kernel`` the Performer estimate
    ``E (..., T, n_basis)``; ``supports`` one :class:`~refattn.sparse.Support` per head;
    ``lengths (T,)``; ``features`` the :class:`~refattn.features.RandomFeatures` (the draw).
    """

    output: np.ndarray
    lse: np.ndarray
    estimate: np.ndarray
    logits: np.ndarray
    kernel: np.ndarray
    supports: list
    lengths: np.ndarray
    features: object


def sea_attention(q, k, v, *, n_bins=256, topk=64, m=256, decoder="fixed", grouped=False, causal=False,
                  scale=None, rng=None, W=None, features="positive", projection="orthogonal", n_basis=None,
                  basis="bins", gate=None, mask_implementation="numba", sparse_implementation="numba",
                  estimate_implementation="auto", chunk_size=128) -> SEAResult:
    r"""SEA attention: estimate ``A~`` in linear time, keep its top-k keys, attend exactly on them.

    Parameters
    ----------
    q, k, v : arrays (T, H), (S, H), (S, Hv), or with a leading heads axis N (broadcast).
    n_bins : int
        ``K``, the width of the compressed estimate, ``1 <= K <= S``.
    topk : int or (T,) int array
        ``k``, keys kept per query (per head; the grouped budget is ``N k``).
    m : int
        Random features of the kernel estimate (one draw shared by all heads).
    decoder : "fixed", "oracle" or callable
        Maps the kernel estimate to logits: ``decoder(E, lengths, S, K) -> (..., T, K)``.
        ``"fixed"`` is :func:`refattn.sea_decoder.fixed_decoder`; ``"oracle"`` uses the exact
        binned attention (the best any width-``K`` estimate can do); a learned one comes from
        :func:`refattn.sea_decoder.distill_decoder`.
    grouped : bool
        One budget shared by the heads of a query (needs the heads axis).
    causal, scale
        As for :func:`refattn.softmax_attention`.
    rng, W, features, projection
        The Performer draw (:func:`refattn.performer.performer_attention`).
    n_basis : int, optional
        Bins of the positional basis (default ``K``); ``basis`` its kind (:func:`positional_basis`).
    gate : float in [0, 1], optional
        ``o = g o_sparse + (1 - g) mean_{j < l_i} v_j`` (the mean over the keys a row sees).
    mask_implementation, sparse_implementation, estimate_implementation
        ``"numba"`` / ``"auto"`` or the twins (``"dense"``, ``"numpy"``, ``"performer"``).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 40, 8)), rng.normal(size=(3, 40, 8)), rng.normal(size=(3, 40, 4))
    >>> res = sea_attention(q, k, v, n_bins=8, topk=6, m=32, rng=1, causal=True)
    >>> res.output.shape, res.estimate.shape, [int(s.row_counts().max()) for s in res.supports]
    ((3, 40, 4), (3, 40, 8), [6, 6, 6])
    """
    from refattn.sea_decoder import OracleDecoder, fixed_decoder

    prob = attention_problem(q, k, v, scale=scale, causal=causal)
    if len(prob.batch_shape) > 1:
        raise ValueError(f"q: expected (T, H) or (N, T, H) (one heads axis), got batch shape {prob.batch_shape}")
    T, S = prob.T, prob.S
    K = check_positive_int(n_bins, "n_bins")
    if K > max(S, 1):
        raise ValueError(f"n_bins: must be <= S = {S}, got {K}")
    n_basis = K if n_basis is None else check_positive_int(n_basis, "n_basis")
    if n_basis > max(S, 1):
        raise ValueError(f"n_basis: must be <= S = {S}, got {n_basis}")
    lengths = row_lengths(T, S, prob.causal or False)
    budget = _budgets(topk, lengths)
    if grouped and not prob.batch_shape:
        raise ValueError("grouped: needs a heads axis (q of shape (N, T, H))")
    if gate is not None:
        gate = float(gate)
        if not 0.0 <= gate <= 1.0:
            raise ValueError(f"gate: must lie in [0, 1], got {gate}")
    if decoder == "fixed":
        decoder = fixed_decoder
    elif isinstance(decoder, str) and decoder != "oracle" or not isinstance(decoder, str) and not callable(decoder):
        raise TypeError(f"decoder: expected 'fixed', 'oracle' or a callable, got {decoder!r}")

    N = prob.batch_shape[0] if prob.batch_shape else 1
    qh = np.broadcast_to(prob.q, (N, T, prob.H))
    kh = np.broadcast_to(prob.k, (N, S, prob.H))
    vh = np.broadcast_to(prob.v, (N, S, prob.Hv))
    if isinstance(decoder, str):  # "oracle"
        decoder = OracleDecoder(qh, kh, scale=prob.scale, causal=prob.causal or False)
    if T == 0 or S == 0:
        shape = prob.batch_shape + (T,)
        return SEAResult(np.zeros(shape + (prob.Hv,)), np.full(shape, -np.inf), np.zeros(shape + (K,)),
                         np.zeros(shape + (K,)), np.zeros(shape + (n_basis,)), [Support(np.zeros(T + 1, np.int64),
                         np.zeros(0, np.int64), S) for _ in range(N)], lengths, None)

    E, feats = kernel_estimate(qh, kh, n_basis=n_basis, basis=basis, m=m, features=features,
                               projection=projection, rng=rng, W=W, scale=prob.scale, causal=prob.causal or False,
                               chunk_size=chunk_size, implementation=estimate_implementation)  # (N, T, n)
    logits = _call_decoder(decoder, E, lengths, S, K)  # (N, T, K)
    est = compressed_softmax(logits, lengths, K)  # (N, T, K)
    supports = sea_mask(est, lengths, S, budget, grouped=grouped, implementation=mask_implementation)
    out = np.zeros((N, T, prob.Hv))
    lse = np.full((N, T), -np.inf)
    for h in range(N):
        out[h], lse[h] = sparse_attention(qh[h], kh[h], vh[h], supports[h], scale=prob.scale, return_lse=True,
                                          implementation=sparse_implementation)
    if gate is not None:
        csum = np.cumsum(vh, axis=1)  # (N, S, Hv)
        seen = lengths > 0
        mean_v = np.zeros((N, T, prob.Hv))
        mean_v[:, seen] = csum[:, lengths[seen] - 1] / lengths[seen][None, :, None]
        out = gate * out + (1.0 - gate) * mean_v
    if not prob.batch_shape:
        out, lse, est, logits, E = out[0], lse[0], est[0], logits[0], E[0]
    return SEAResult(out, lse, est, logits, E, supports, lengths, feats)


def _call_decoder(decoder, E, lengths, S, K):
    logits = decoder(E, lengths, S, K)
    try:
        logits = np.asarray(logits)
    except Exception as exc:  # noqa: BLE001 - a user's decoder may return anything
        raise TypeError(f"decoder: returned something that is not an array ({exc})") from None
    want = E.shape[:-1] + (K,)
    if logits.shape != want:
        raise ValueError(f"decoder: returned logits of shape {logits.shape}; expected {want}")
    return logits


# ----------------------------------------------------------------------------- the facts


def _check_teacher(teacher, lengths):
    p = as_float_array(teacher, "teacher")
    if p.ndim != 2 or p.shape[0] != lengths.size:
        raise ValueError(f"teacher: expected a (T, S) probability matrix with T = {lengths.size}, got {p.shape}")
    if (p < 0).any():
        raise ValueError("teacher: has negative entries; expected a probability matrix")
    beyond = np.arange(p.shape[1])[None, :] >= lengths[:, None]
    if (p[beyond] != 0).any():
        raise ValueError("teacher: puts mass on keys beyond a row's length (the causal mask)")
    sums = p.sum(axis=1)
    want = (lengths > 0).astype(np.float64)
    if np.abs(sums - want).max(initial=0.0) > 1e-9:
        i = int(np.argmax(np.abs(sums - want)))
        raise ValueError(f"teacher: row {i} sums to {sums[i]!r}; expected {want[i]} (rows with l > 0 sum to 1)")
    return p.astype(np.float64)


def _kl_rows(p, r):
    """``sum_j p_j log(p_j / r_j)`` per row, 0 log 0 = 0; ``+inf`` where ``p > 0 = r``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(r)), 0.0)
    return terms.sum(axis=-1)


def kl_decomposition(teacher, estimate, lengths):
    r"""The KL chain rule of MATH.md section 5 (derived, docs/sea.md), per row:

    .. math:: \mathrm{KL}(A_i \,\|\, \mathrm{up}(\tilde A_i)) = \mathrm{KL}(A_i^{\downarrow} \,\|\, \tilde A_i)
              + \sum_b A_i^{\downarrow}[b]\, \mathrm{KL}(A_{i|b} \,\|\, U_b)

    ``teacher (T, S)``: the exact attention rows (a probability matrix, zero beyond ``l_i``);
    ``estimate (T, K)``: ``A~``. Returns ``(total, compressed, floor)``, each ``(T,)``: the left side,
    the first term (0 for the oracle decoder) and the floor (no width-``K`` estimate goes below).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    p = _check_teacher(teacher, lengths)
    est = as_float_array(estimate, "estimate").astype(np.float64)
    T, S = p.shape
    K = est.shape[-1]
    if est.shape != (T, K):
        raise ValueError(f"estimate: expected shape ({T}, K), got {est.shape}")
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
    and ``|o_i - o_i^mask| <= 2 (1 - m_i) max_j |v_j|`` (MATH.md section 5).
    """
    from refattn.exact import softmax_attention

    prob = attention_problem(q, k, np.zeros(np.shape(k)[:-1] + (1,)), scale=scale, causal=causal)
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
    return out
