r"""Performer (FAVOR+ family) attention: bidirectional and causal, with its pieces exposed.

Choromanski et al. (2021), "Rethinking Attention with Performers", Sec. 2 (derivations: the
docs' Performer page). With scaled rows ``x = s^{1/2} q``, ``y = s^{1/2} k`` and a feature map ``phi``:

$$
N = \phi(Q)\,(\phi(K)^\top V), \qquad D = \phi(Q)\,(\phi(K)^\top \mathbf 1), \qquad
\hat O = N / D .
$$

``N`` and ``D`` are unbiased for the exact ``A V`` and ``A 1`` (``A_ij = exp(s q_i.k_j)``);
``O^`` is a ratio estimator with ``O(1/m)`` bias ([`refattn.theory.positive_output_moments`][refattn.performer.theory.positive_output_moments]).
Causal (prefix sums): ``S_i = sum_{j visible to i} phi(k_j) v_j^T``, ``z_i = sum phi(k_j)``,
``O_i = phi(q_i)^T S_i / phi(q_i)^T z_i``, which equals the row-normalised masked product
``mask * (phi(Q) phi(K)^T)`` times ``V``. The causal alignment for ``T != S`` is the
oracle's ([`refattn.problem`][refattn.problem]: bottom-right by default).

Two causal implementations: ``"dense"`` (the masked ``T x S`` product, the twin) and
``"numpy"`` (``"auto"``; queries in chunks: keys every query of a chunk sees enter a running state
``(m, Hv)`` by one matrix product; the rest of the chunk's keys by a masked
``chunk x chunk`` product), ``O(T m Hv)`` work and no ``T x S`` or ``T x m x Hv`` array.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from refattn._validation import (
    InputError,
    check_bool,
    check_finite_result,
    check_positive_int,
    check_real,
    choose_implementation,
    renamed_errors,
)
from refattn.kernels.dispatch import gpu_backend, shadow64
from refattn.performer.features import RandomFeatures, as_features
from refattn.precision import numpy_type
from refattn.problem import attention_problem, causal_mask

__all__ = ["PerformerResult", "performer_attention", "causal_prefix_sums"]


@dataclass
class PerformerResult:
    """Everything a Performer estimate is made of.

    ``numerator (..., T, Hv)`` and ``denominator (..., T)`` are in stabilised units: the
    true (unbiased) values are ``numerator * exp(log_scale[..., None])`` and
    ``denominator * exp(log_scale)``. ``output = numerator / denominator``; rows whose
    denominator is exactly 0 (all features underflowed, or signed features cancelled) get
    output 0 and are flagged in ``degenerate``.
    """

    output: np.ndarray
    numerator: np.ndarray
    denominator: np.ndarray
    log_scale: np.ndarray
    degenerate: np.ndarray
    features: RandomFeatures
    phi_q: np.ndarray
    phi_k: np.ndarray


def scaled_rows(prob, dtype=np.float64):
    """``x = s^{1/2} q``, ``y = s^{1/2} k`` in ``dtype`` (float64 by default): the rows the features see."""
    dt = np.dtype(dtype).type
    root = dt(math.sqrt(prob.scale))
    return prob.q.astype(dt, copy=False) * root, prob.k.astype(dt, copy=False) * root


def problem_features(prob, features="positive", **draw) -> RandomFeatures:
    """[`as_features`][refattn.performer.features.as_features] for a validated problem: FAVOR++'s ``A*`` from its rows."""
    x, y = scaled_rows(prob)
    return as_features(features, prob.H, x=x.reshape(-1, prob.H) if x.size else None,
                       y=y.reshape(-1, prob.H) if y.size else None, **draw)


def feature_maps(prob, features: RandomFeatures, *, stabilize=True, dtype=np.float64):
    """``(phi_q (..., T, F), phi_k (..., S, F), log_scale (..., T))`` of the draw ``features`` for a validated problem.

    The stabilised features of [`performer_attention`][refattn.performer.attention.performer_attention] (query shift per row, one shared key shift;
    padded keys get zero features): ``phi(q_i) . phi(k_j) * exp(log_scale_i)`` estimates
    ``exp(s q_i . k_j)``. Shared with [`refattn.sea`][refattn.sea], whose kernel estimate uses the same features.
    ``dtype`` (float64 or float32) is the precision of the rows and features.
    """
    x, y = scaled_rows(prob, dtype)  # (..., T, H), (..., S, H)
    phi_q, ls_q = features(x, stabilize="query" if stabilize else None, dtype=dtype)  # (..., T, F), (..., T)
    keep = None
    if prob.key_lengths is not None:
        keep = np.arange(prob.S) < prob.key_lengths[..., None]  # (..., S): padded keys get zero features
    phi_k, ls_k = features(y, stabilize="key" if stabilize else None, valid=keep, dtype=dtype)  # (..., S, F), (..., S)
    # the key shift is one constant per batch item: take it from any key position
    log_scale = ls_q + (ls_k[..., :1] if ls_k.shape[-1] else 0.0)  # (..., T)
    return phi_q, phi_k, log_scale


def performer_attention(
    q, k, v, *, m=256, features="positive", projection="orthogonal", rng=None, W=None, A=None, fn=None,
    scale=None, causal=False, key_lengths=None, stabilize=True, eps=0.0, implementation="auto",
    chunk_size=128, dtype=None,
) -> PerformerResult:
    r"""Random-feature attention (Performer), bidirectional or causal.

    Parameters
    ----------
    q, k, v : arrays (..., T, H), (..., S, H), (..., S, Hv); leading dims broadcast.
    m : int
        Number of projection rows (features: ``m``, or ``2m`` for hyperbolic/trigonometric).
    features : RandomFeatures or {"positive", "hyperbolic", "trigonometric", "favorpp", "relu", "custom"}
        The feature draw ([`refattn.performer.make_features`][refattn.performer.features.make_features]), or its kind: then the draw is
        built from the convenience keywords below, in one place
        ([`refattn.performer.features.as_features`][refattn.performer.features.as_features]).
    projection : {"orthogonal", "gaussian", "regular", "sorf"}
        Ignored when ``W`` is given. ``"regular"`` estimates SMREG, not softmax.
    rng : Generator or int
        The draw of ``W`` (one ``W`` shared by all batch items and heads).
    W : array (m, H), optional
        An explicit draw (then ``m``, ``projection`` and ``rng`` are ignored).
    A : float, optional
        FAVOR++ parameter (< 1/8); default: the optimal ``A*`` for these inputs.
    fn : callable, optional
        For ``features="custom"``: ``phi(x) = m^-1/2 fn(omega . x)``.
    scale, causal, key_lengths
        As for [`refattn.softmax_attention`][refattn.exact.softmax_attention]. Padded keys get zero features, so they
        leave numerator and denominator.
    stabilize : bool
        Query shift and shared key shift (cancel in the output; see [`refattn.performer.features`][refattn.performer.features]).
    eps : float
        Added to the denominator. Default 0: no hidden epsilon. A positive ``eps`` biases
        the output towards 0; it exists to reproduce implementations that use one.
    implementation : {"auto", "numpy", "dense"}
        Causal path: ``"auto"`` or ``"numpy"``, the chunked prefix sums; ``"dense"``, the masked
        ``T x S`` product (the twin). Bidirectional attention is always the two matrix products.
    dtype : {float64, float32}
        Precision of the features and the attention products (log-scales stay float64).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(5, 8)), rng.normal(size=(7, 8)), rng.normal(size=(7, 2))
    >>> res = performer_attention(q, k, v, m=16, rng=1, causal=True)
    >>> res.output.shape, res.denominator.shape
    ((5, 2), (5,))
    """
    prob = attention_problem(q, k, v, scale=scale, causal=causal, key_lengths=key_lengths)
    implementation = choose_implementation(implementation, ("auto", "numpy", "dense"))
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    eps = check_real(eps, "eps", minimum=0.0)
    stabilize = check_bool(stabilize, "stabilize")
    dt = np.float64 if dtype is None else numpy_type(dtype)

    feats = problem_features(prob, features, m=m, projection=projection, rng=rng, W=W, A=A, fn=fn)
    phi_q, phi_k, log_scale = feature_maps(prob, feats, stabilize=stabilize, dtype=dt)

    pq = phi_q.astype(dt, copy=False)
    pk = phi_k.astype(dt, copy=False)
    vv = prob.v.astype(dt, copy=False)
    if prob.causal is None:
        kv = np.swapaxes(pk, -1, -2) @ vv  # (..., F, Hv)
        z = np.sum(pk, axis=-2)  # (..., F)
        num = pq @ kv  # (..., T, Hv)
        den = np.einsum("...tf,...f->...t", pq, z)  # (..., T)
    elif implementation == "dense":
        allowed = causal_mask(prob.T, prob.S, prob.causal)  # (T, S)
        a_hat = (pq @ np.swapaxes(pk, -1, -2)) * allowed  # (..., T, S)
        num = a_hat @ vv
        den = a_hat.sum(axis=-1)
    else:
        num, den = _causal_chunked(pq, pk, vv, prob.causal_offset(), chunk_size)
    num = np.broadcast_to(num, prob.batch_shape + (prob.T, prob.Hv))
    den = np.broadcast_to(den, prob.batch_shape + (prob.T,))
    den_eps = den + dt(eps) if eps else den
    degenerate = den_eps == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(degenerate[..., None], dt(0), num / np.where(degenerate, dt(1), den_eps)[..., None])
    if not np.all(np.isfinite(out)):  # unbounded features (relu, custom) can overflow; never return NaN silently
        bad = "fn" if feats.kind == "custom" else "q, k, W"
        check_finite_result(out, bad, f"the {feats.kind} features' products")
    return PerformerResult(out, np.array(num), np.array(den), np.broadcast_to(log_scale, prob.batch_shape + (prob.T,)).copy(),
                           degenerate, feats, phi_q, phi_k)


def causal_prefix_sums(phi_q, phi_k, v, *, causal=True, chunk_size=128):
    r"""Causal linear attention's numerator and denominator from features (the FAVOR+ prefix sums).

    $$
    N_i = \sum_{j \le i + o} (\phi_q[i] \cdot \phi_k[j])\, v_j, \qquad
    D_i = \sum_{j \le i + o} \phi_q[i] \cdot \phi_k[j]
    $$

    (Choromanski et al. 2021, section 2.6; ``o`` the causal offset of ``causal``, as the oracle's).
    ``phi_q (..., T, F)``, ``phi_k (..., S, F)``, ``v (..., S, Hv)``; leading dims broadcast.
    NumPy arrays run the chunked prefix sums below (in the inputs' precision); CuPy arrays run
    the CUDA kernels of ``kernels/cuda/favor_prefix.cu`` (float64 or float32) and return CuPy
    arrays. Returns ``num (..., T, Hv)``, ``den (..., T)``.

    Examples
    --------
    >>> import numpy as np
    >>> num, den = causal_prefix_sums(np.ones((3, 2)), np.ones((3, 2)), np.ones((3, 1)))
    >>> den
    array([2., 4., 6.])
    """
    chunk = check_positive_int(chunk_size, "chunk_size")
    if causal is False:
        raise InputError("causal: the prefix sums are causal (True, 'bottom_right' or 'top_left'); "
                         "bidirectional attention is two matrix products")
    gpu = gpu_backend(phi_q=phi_q, phi_k=phi_k, v=v)
    if gpu:
        prob = attention_problem(shadow64(phi_q), shadow64(phi_k), shadow64(v), causal=causal)
        return gpu.causal_prefix_sums(phi_q, phi_k, v, offset=prob.causal_offset(), chunk=chunk,
                                      batch_shape=prob.batch_shape)
    with renamed_errors(q="phi_q", k="phi_k"):
        prob = attention_problem(phi_q, phi_k, v, causal=causal)
    return _causal_chunked(prob.q, prob.k, prob.v, prob.causal_offset(), chunk)


def _causal_chunked(pq, pk, v, offset, chunk):
    """Prefix-sum causal attention: query i sees keys j <= i + offset.

    For the query chunk ``[i0, i1)``: keys ``< i0 + offset + 1`` are seen by every query of
    the chunk and live in the running state ``(S_state (m, Hv), z_state (m,))``; keys in
    ``[i0 + offset + 1, i1 + offset)`` are seen by some, handled by a masked product.
    """
    T, S = pq.shape[-2], pk.shape[-2]
    batch = np.broadcast_shapes(pq.shape[:-2], pk.shape[:-2], v.shape[:-2])
    F, Hv = pq.shape[-1], v.shape[-1]
    num = np.zeros(batch + (T, Hv), dtype=pq.dtype)
    den = np.zeros(batch + (T,), dtype=pq.dtype)
    state = np.zeros(batch + (F, Hv), dtype=pq.dtype)  # sum phi(k_j) v_j^T over absorbed keys
    zstate = np.zeros(batch + (F,), dtype=pq.dtype)  # sum phi(k_j) over absorbed keys
    absorbed = 0  # keys [0, absorbed) are in the state
    for i0 in range(0, T, chunk):
        i1 = min(T, i0 + chunk)
        full_end = max(0, min(S, i0 + offset + 1))  # every query in the chunk sees keys < full_end
        if full_end > absorbed:
            kb, vb = pk[..., absorbed:full_end, :], v[..., absorbed:full_end, :]
            state = state + np.swapaxes(kb, -1, -2) @ vb  # (..., F, Hv)
            zstate = zstate + kb.sum(axis=-2)
            absorbed = full_end
        qc = pq[..., i0:i1, :]  # (..., c, F)
        num[..., i0:i1, :] = qc @ state
        den[..., i0:i1] = np.einsum("...cf,...f->...c", qc, zstate)
        part_end = max(absorbed, min(S, i1 + offset))  # keys seen by some queries of the chunk
        if part_end > absorbed:
            j = np.arange(absorbed, part_end)
            i = np.arange(i0, i1)
            vis = j[None, :] <= i[:, None] + offset  # (c, p)
            a = (qc @ np.swapaxes(pk[..., absorbed:part_end, :], -1, -2)) * vis  # (..., c, p)
            num[..., i0:i1, :] += a @ v[..., absorbed:part_end, :]
            den[..., i0:i1] += a.sum(axis=-1)
    return num, den
