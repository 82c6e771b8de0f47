r"""SEA: sparse attention on an estimated attention mask (Lee et al. 2024; the docs' SEA page).

Shape legend: N heads (optional leading axis), T queries, S keys, H head dim, Hv value dim,
K compressed bins, n basis bins, k keys kept per query.

The pipeline, one function per step, each usable on its own:

1. [`kernel_estimate`][refattn.sea.estimate.kernel_estimate]: Performer attention with the positional basis ``P (S, n)`` as values
   (`positional_basis`), ``E = softmax-kernel-estimate(Q, K) P (T, n)``, in linear time.
   With the bin-indicator basis, the exact ``A P`` *is* each attention row binned to ``n``
   position bins (`binned_attention`), so ``E`` estimates the binned attention
   (the docs' SEA page, the estimate). A decoder ([`refattn.sea.decoder`][refattn.sea.decoder]) maps ``E`` to ``K`` logits per row,
   over the row's *own* bins (a causal row of length ``l_i`` is cut into ``K`` bins of ``l_i``),
   and [`compressed_softmax`][refattn.sea.estimate.compressed_softmax] gives the compressed estimate ``A~ (T, K)``.
2.-3. [`sea_mask`][refattn.sea.mask.sea_mask]: top-k on ``A~`` upsampled to key columns, with one
   pinned rounding rule ([`refattn.sea.mask`][refattn.sea.mask]).
4. [`sea_attention`][refattn.sea.attention.sea_attention]: exact softmax attention on that mask with the sparse kernels
   ([`refattn.lsh.sparse.sparse_attention`][refattn.lsh.sparse.sparse_attention]), optionally mixed with the (causal) mean of ``V``
   by a gate.

Facts the tests check (derived on the docs' SEA page):
``KL(A_i || up(A~_i)) = KL(A_i^down || A~_i) + sum_b A_i^down[b] KL(A_{i|b} || U_b)``
(`kl_decomposition`), and a mask keeping mass ``m_i`` of row ``i`` has
``TV = 1 - m_i`` and ``|o_i - o_i^mask| <= 2 (1 - m_i) max_j |v_j|`` (`captured_mass`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refattn._validation import InputError, InputTypeError, check_bool, check_positive_int
from refattn.lsh.sparse import Support, sparse_attention
from refattn.performer.attention import problem_features
from refattn.problem import attention_problem
from refattn.sea.decoder import OracleDecoder, fixed_decoder
from refattn.sea.estimate import bin_starts, compressed_softmax, kernel_estimate, row_lengths
from refattn.sea.mask import _budgets, sea_mask

__all__ = ["SEAResult", "sea_attention"]


# ----------------------------------------------------------------------------- step 4


@dataclass
class SEAResult:
    """Everything SEA computed (per head on the leading axis when there is one).

    ``output (..., T, Hv)``; ``lse (..., T)`` of the sparse attention; ``estimate`` the compressed
    ``A~ (..., T, K)``; ``logits`` the decoder's; ``kernel`` the Performer estimate
    ``E (..., T, n_basis)``; ``supports`` one [`Support`][refattn.lsh.sparse.Support] per head;
    ``lengths (T,)``; ``features`` the [`RandomFeatures`][refattn.performer.features.RandomFeatures] (the draw).
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
                  basis="bins", gate=None, mask_implementation="auto", sparse_implementation="auto",
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
        ``"fixed"`` is [`refattn.sea.decoder.fixed_decoder`][refattn.sea.decoder.fixed_decoder]; ``"oracle"`` uses the exact
        binned attention (the best any width-``K`` estimate can do); a learned one comes from
        [`refattn.sea.decoder.distill_decoder`][refattn.sea.decoder.distill_decoder].
    grouped : bool
        One budget shared by the heads of a query (needs the heads axis).
    causal, scale
        As for [`refattn.softmax_attention`][refattn.exact.softmax_attention].
    rng, W, features, projection
        The Performer draw ([`refattn.performer.attention.performer_attention`][refattn.performer.attention.performer_attention]).
    n_basis : int, optional
        Bins of the positional basis (default ``K``); ``basis`` its kind (`positional_basis`).
    gate : float in [0, 1], optional
        ``o = g o_sparse + (1 - g) mean_{j < l_i} v_j`` (the mean over the keys a row sees).
    mask_implementation, sparse_implementation, estimate_implementation
        Each step's path: ``"auto"`` (the fast one) or ``"numpy"`` (its twin); the mask and the
        sparse attention also take ``"numba"``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 40, 8)), rng.normal(size=(3, 40, 8)), rng.normal(size=(3, 40, 4))
    >>> res = sea_attention(q, k, v, n_bins=8, topk=6, m=32, rng=1, causal=True)
    >>> res.output.shape, res.estimate.shape, [int(s.row_counts().max()) for s in res.supports]
    ((3, 40, 4), (3, 40, 8), [6, 6, 6])
    """

    prob = attention_problem(q, k, v, scale=scale, causal=causal)
    if len(prob.batch_shape) > 1:
        raise InputError(f"q: expected (T, H) or (N, T, H) (one heads axis), got batch shape {prob.batch_shape}")
    T, S = prob.T, prob.S
    K = check_positive_int(n_bins, "n_bins")
    if K > max(S, 1):
        raise InputError(f"n_bins: must be <= S = {S}, got {K}")
    n_basis = K if n_basis is None else check_positive_int(n_basis, "n_basis")
    if n_basis > max(S, 1):
        raise InputError(f"n_basis: must be <= S = {S}, got {n_basis}")
    lengths = row_lengths(T, S, prob.causal or False)
    budget = _budgets(topk, lengths)
    grouped = check_bool(grouped, "grouped")
    if grouped and not prob.batch_shape:
        raise InputError("grouped: needs a heads axis (q of shape (N, T, H))")
    if gate is not None:
        gate = float(gate)
        if not 0.0 <= gate <= 1.0:
            raise InputError(f"gate: must lie in [0, 1], got {gate}")
    if decoder == "fixed":
        decoder = fixed_decoder
    elif isinstance(decoder, str) and decoder != "oracle" or not isinstance(decoder, str) and not callable(decoder):
        raise InputTypeError(f"decoder: expected 'fixed', 'oracle' or a callable, got {decoder!r}")

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

    feats = problem_features(prob, features, m=m, projection=projection, rng=rng, W=W)  # the one draw
    E, feats = kernel_estimate(qh, kh, n_basis=n_basis, basis=basis, features=feats, scale=prob.scale,
                               causal=prob.causal or False, chunk_size=chunk_size,
                               implementation=estimate_implementation)  # (N, T, n)
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
        raise InputTypeError(f"decoder: returned something that is not an array ({exc})") from None
    want = E.shape[:-1] + (K,)
    if logits.shape != want:
        raise InputError(f"decoder: returned logits of shape {logits.shape}; expected {want}")
    if not np.issubdtype(logits.dtype, np.floating):
        raise InputTypeError(f"decoder: returned logits of dtype {logits.dtype}; expected a real floating array")
    if np.isnan(logits).any() or (logits == np.inf).any():
        raise InputError("decoder: returned NaN or +inf logits (only -inf is allowed, to rule a bin out)")
    dead = ~np.isfinite(np.where(np.diff(bin_starts(lengths, K), axis=1) > 0, logits, -np.inf)).any(axis=-1) \
        & (lengths > 0)
    if dead.any():
        i = np.argwhere(dead)[0]
        raise InputError(f"decoder: row {tuple(int(x) for x in i)} has no finite logit on a non-empty bin")
    return logits
