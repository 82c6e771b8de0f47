r"""Scatterbrain: sparse + low-rank attention, unbiased (Chen et al. 2021).

the docs' Scatterbrain page. With random features ``phi`` (Performer, [`refattn.performer.features`][refattn.performer.features]) and a
sparse support ``S`` (LSH buckets, a local window, any [`refattn.lsh.sparse.Support`][refattn.lsh.sparse.Support])
**drawn independently of the features**:

$$
\hat A = \phi(Q)\phi(K)^\top + C, \qquad
C_{ij} = \bigl(e^{s q_i\cdot k_j} - \phi(q_i)\cdot\phi(k_j)\bigr)\,[(i,j)\in S],
$$

so ``A^_ij = exp(s q_i.k_j)`` on ``S`` and ``phi(q_i).phi(k_j)`` off it: given ``S``,
``E[A^_ij] = A_ij`` (the features are unbiased), and
``Var[A^_ij] = (1 - P_ij) Var_pfm(q_i, k_j)`` with ``P_ij = P[(i,j) in S]`` (derived in
docs/scatterbrain.md). The output is ``O = (phi(Q)(phi(K)^T V) + C V) / (phi(Q)(phi(K)^T 1) + C 1)``.

Cost ``O(T m H + nnz(S) (H + m))``: the low-rank part as in Performer, the correction on the
support's entries only (no ``T x S`` array outside the naive twin [`scatterbrain_matrix`][refattn.scatterbrain.attention.scatterbrain_matrix]).
All sums are kept per row in units of ``exp(u_i)``, ``u_i`` the larger of the row's feature
scale and its largest exact logit on the support, so nothing overflows; the numerator and
denominator are returned in those units with ``log_unit``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refattn._validation import InputError, InputTypeError, choose_implementation
from refattn.kernels.numba import scatterbrain_correction as kern
from refattn.lsh.sparse import Support
from refattn.performer.attention import PerformerResult, performer_attention, problem_features
from refattn.problem import attention_problem, causal_mask

__all__ = ["ScatterbrainResult", "scatterbrain_attention", "scatterbrain_matrix"]


@dataclass
class ScatterbrainResult:
    """Output and pieces. True numerator = ``numerator * exp(log_unit)[:, None]``; likewise the
    denominator. ``correction`` holds ``C`` on ``support`` (one value per stored entry) in the
    row's units ``exp(log_unit[i])``."""

    output: np.ndarray
    numerator: np.ndarray
    denominator: np.ndarray
    log_unit: np.ndarray
    support: Support
    correction: np.ndarray
    lowrank: PerformerResult


def scatterbrain_attention(q, k, v, support: Support, *, m=128, features="positive", projection="orthogonal",
                           rng=None, W=None, scale=None, causal=False, implementation="auto",
                           sparse_implementation="auto") -> ScatterbrainResult:
    """Scatterbrain attention for one head (``q (T, H)``, ``k (S, H)``, ``v (S, Hv)``).

    ``support`` must be drawn independently of the feature draw (``rng``/``W``) for the
    unbiasedness claim to hold: refattn cannot check independence, so it is the caller's
    contract (build the support from its own seed). With ``causal`` the support is
    intersected with the causal mask and the low-rank part uses prefix sums.
    ``implementation`` picks the causal low-rank path (Performer's); ``sparse_implementation``
    the correction kernel: ``"auto"``, ``"numba"`` (per row, no gathered copies) or ``"numpy"`` (the twin).
    """
    prob = attention_problem(q, k, v, scale=scale, causal=causal)
    if prob.batch_shape:
        raise InputError("q: scatterbrain_attention takes 2-D (T, H) inputs (one head)")
    if not isinstance(support, Support):
        raise InputTypeError(f"support: expected a refattn.lsh.sparse.Support, got {type(support).__name__}")
    if (support.n_queries, support.n_keys) != (prob.T, prob.S):
        raise InputError(f"support: shape ({support.n_queries}, {support.n_keys}) does not match (T, S) = "
                         f"({prob.T}, {prob.S})")
    if prob.causal is not None:
        support = support.intersect(causal_mask(prob.T, prob.S, prob.causal))
    feats = problem_features(prob, features, m=m, projection=projection, rng=rng, W=W)  # the one draw
    lr = performer_attention(prob.q, prob.k, prob.v, features=feats, scale=prob.scale, causal=causal,
                             implementation=implementation)

    sparse_implementation = choose_implementation(sparse_implementation, ("auto", "numpy", "numba"),
                                                  name="sparse_implementation")
    fn = kern.correction_numba if sparse_implementation == "numba" else kern.correction_numpy
    u, corr, cv, c1 = fn(prob.q, prob.k, prob.v, lr.phi_q, lr.phi_k, lr.log_scale, support.indptr, support.indices,
                         prob.scale)
    shift = np.exp(lr.log_scale - u)  # (T,): the low-rank part from its units to exp(u)
    num = lr.numerator * shift[:, None] + cv  # phi(Q)(phi(K)^T V) + C V
    den = lr.denominator * shift + c1  # phi(Q)(phi(K)^T 1) + C 1
    degenerate = den == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(degenerate[:, None], 0.0, num / np.where(degenerate, 1.0, den)[:, None])
    return ScatterbrainResult(out, num, den, u, support, corr, lr)


def scatterbrain_matrix(result: ScatterbrainResult) -> np.ndarray:
    """The naive twin: the dense unnormalised estimate ``A^ (T, S)`` in true units (may overflow
    for large logits; for tests and small problems)."""
    lr = result.lowrank
    a = (lr.phi_q @ lr.phi_k.T) * np.exp(lr.log_scale)[:, None]  # phi(Q) phi(K)^T, true units
    rows, cols = result.support.rows(), result.support.indices
    a[rows, cols] += result.correction * np.exp(result.log_unit[rows])
    return a
