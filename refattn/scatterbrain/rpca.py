r"""Robust PCA: low-rank + sparse decompositions (Scatterbrain's motivation), the docs' Scatterbrain page (robust PCA).

- [`robust_pca`][refattn.scatterbrain.rpca.robust_pca]: principal component pursuit (Candes, Li, Ma & Wright 2011),

    $$
    \min_{L,S}\ \|L\|_* + \lambda \|S\|_1 \ \text{s.t.}\ L + S = M,
    \qquad \lambda = 1/\sqrt{\max(n_1, n_2)},
    $$

    solved by the inexact augmented Lagrangian method (Lin, Chen & Ma 2010, Algorithm 5):
  ``Y0 = M / max(|M|_2, max|M_ij| / lambda)``, ``mu0 = 1.25 / |M|_2``, ``rho = 1.5``, ``mu``
  capped at ``1e7 mu0``; alternate singular-value thresholding at ``1/mu`` and entrywise
  shrinkage at ``lambda/mu``; stop at ``|M - L - S|_F <= tol |M|_F`` and, in addition, a
  small dual residual ``mu |S_k - S_{k-1}|_F <= sqrt(tol) |M|_F`` (feasibility alone can hold
  by accident at a non-optimal split). Entrywise l1 norm (not
  the induced norm), ``lambda`` from ``max(n1, n2)`` (so the problem is transpose
  equivariant), float64. Non-convergence within ``max_iter`` is reported by a warning and
  the ``converged`` flag, never silently.
- [`fixed_budget_decomposition`][refattn.scatterbrain.rpca.fixed_budget_decomposition]: rank ``r`` plus ``s`` nonzeros by alternating
  projections (truncated SVD of ``M - S``; the ``s`` largest entries of ``M - L``), the
  budget-matched sparse + low-rank oracle for attention matrices, which are only
  approximately low-rank plus sparse.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from refattn._validation import (
    InputError,
    as_float_array,
    as_generator,
    check_allocation,
    check_positive_int,
    check_real,
)

__all__ = ["RPCAResult", "RPCANotConverged", "robust_pca", "fixed_budget_decomposition", "shrink", "svt",
           "planted_low_rank_plus_sparse"]


class RPCANotConverged(RuntimeWarning):
    """robust_pca stopped at max_iter before reaching its tolerance."""


@dataclass
class RPCAResult:
    L: np.ndarray
    S: np.ndarray
    Y: np.ndarray  # the dual variable: a certificate at the optimum
    lam: float
    n_iter: int
    converged: bool
    residual: float  # |M - L - S|_F / |M|_F


def shrink(X, tau):
    """Entrywise soft thresholding ``sign(X) max(|X| - tau, 0)`` (the prox of ``tau |.|_1``)."""
    X = as_float_array(X, "X").astype(np.float64)
    tau = check_real(tau, "tau", minimum=0.0)
    return np.sign(X) * np.maximum(np.abs(X) - tau, 0.0)


def svt(X, tau):
    """Singular-value thresholding (the prox of ``tau |.|_*``); returns ``(D, rank)``."""
    X = as_float_array(X, "X").astype(np.float64)
    if X.ndim != 2:
        raise InputError(f"X: expected a 2-D matrix, got shape {X.shape}")
    tau = check_real(tau, "tau", minimum=0.0)
    U, sig, Vt = np.linalg.svd(X, full_matrices=False)
    keep = sig > tau
    return (U[:, keep] * (sig[keep] - tau)) @ Vt[keep], int(keep.sum())


def _matrix(M):
    M = as_float_array(M, "M").astype(np.float64)
    if M.ndim != 2 or 0 in M.shape:
        raise InputError(f"M: expected a non-empty 2-D matrix, got shape {M.shape}")
    return M


def robust_pca(M, *, lam=None, tol=1e-7, max_iter=1000, rho=1.5, time_limit=600.0) -> RPCAResult:
    """Principal component pursuit by inexact ALM (see the module docstring).

    Stops after ``max_iter`` iterations or ``time_limit`` seconds, whichever comes first; either
    way a run that did not converge says so (``converged=False`` and an [`RPCANotConverged`][refattn.scatterbrain.rpca.RPCANotConverged]
    warning). PCP is scale-equivariant, so ``M`` is solved at unit scale and ``L``, ``S`` scaled
    back (``Y``, a subgradient certificate, is scale-free): entries near 1e300 do not overflow.
    """
    M = _matrix(M)
    n1, n2 = M.shape
    lam = 1.0 / np.sqrt(max(n1, n2)) if lam is None else check_real(lam, "lam", minimum=0.0, low_open=True)
    tol = check_real(tol, "tol", minimum=0.0, low_open=True)
    rho = check_real(rho, "rho", minimum=1.0, low_open=True)
    max_iter = check_positive_int(max_iter, "max_iter", maximum=10**7)
    time_limit = check_real(time_limit, "time_limit", minimum=0.0, low_open=True)
    c = float(np.abs(M).max())
    if c == 0:
        Z = np.zeros_like(M)
        return RPCAResult(Z, Z.copy(), Z.copy(), lam, 0, True, 0.0)
    res = _pcp(M / c, lam, tol, max_iter, rho, time_limit)
    return RPCAResult(res.L * c, res.S * c, res.Y, lam, res.n_iter, res.converged, res.residual)


def _pcp(M, lam, tol, max_iter, rho, time_limit) -> RPCAResult:
    """Inexact ALM on ``M`` (max |M_ij| = 1)."""
    import time

    start = time.monotonic()
    normM = np.linalg.norm(M)
    two = np.linalg.norm(M, 2)
    Y = M / max(two, np.abs(M).max() / lam)
    mu = 1.25 / two
    mu_max = 1e7 * mu
    S = np.zeros_like(M)
    L = np.zeros_like(M)
    converged = False
    res = np.inf
    it = 0
    for it in range(1, max_iter + 1):
        L, _ = svt(M - S + Y / mu, 1.0 / mu)
        S_old = S
        S = shrink(M - L + Y / mu, lam / mu)
        Z = M - L - S
        Y = Y + mu * Z
        res = np.linalg.norm(Z) / normM
        # primal feasibility (Lin et al.) and a stalled S (the ADMM dual residual): feasibility
        # alone can hold by accident at a non-optimal split (see the identifiability test)
        step = mu * np.linalg.norm(S - S_old) / normM
        mu = min(rho * mu, mu_max)
        if res <= tol and step <= np.sqrt(tol):
            converged = True
            break
        if time.monotonic() - start > time_limit:
            break
    if not converged:
        warnings.warn(f"robust_pca: not converged after {it} iterations (primal residual {res:.3g}, dual "
                      f"step {step:.3g}; both must fall to tol {tol:g} and sqrt(tol))", RPCANotConverged, stacklevel=3)
    return RPCAResult(L, S, Y, lam, it, converged, float(res))


def fixed_budget_decomposition(M, rank, nnz, *, n_iter=50):
    """``M ~ L + S`` with ``rank(L) <= rank`` and at most ``nnz`` nonzeros in ``S`` (alternating
    projections; a local method: the error is non-increasing, not globally optimal)."""
    M = _matrix(M)
    rank = check_positive_int(rank, "rank", minimum=0)
    nnz = check_positive_int(nnz, "nnz", minimum=0)
    if rank > min(M.shape):
        raise InputError(f"rank: at most min(M.shape) = {min(M.shape)}, got {rank}")
    if nnz > M.size:
        raise InputError(f"nnz: at most M.size = {M.size}, got {nnz}")
    M = np.ascontiguousarray(M)  # C order: S's flat indices below are R's (a Fortran M gave S = 0)
    S = np.zeros(M.shape)
    L = np.zeros(M.shape)
    for _ in range(check_positive_int(n_iter, "n_iter", maximum=10**5)):
        U, sig, Vt = np.linalg.svd(M - S, full_matrices=False)
        L = (U[:, :rank] * sig[:rank]) @ Vt[:rank]
        R = M - L
        S = np.zeros(M.shape)
        if nnz:
            idx = np.argpartition(np.abs(R).ravel(), -nnz)[-nnz:]
            np.put(S, idx, R.ravel()[idx])
    return L, S


def planted_low_rank_plus_sparse(n, rank, frac, rng, *, coherent=False):
    """A planted PCP problem (Candes et al. 2011, Sec. 4): ``L0 = X Y^T`` with ``X, Y ~ N(0, 1/n)``
    of shape ``(n, rank)``, and ``S0`` with each entry corrupted independently with probability
    ``frac`` by a random sign (or, with ``coherent``, by ``sign(L0)``). Returns ``(L0, S0)``."""
    n = check_positive_int(n, "n")
    rank = check_positive_int(rank, "rank")
    frac = check_real(frac, "frac", minimum=0.0, maximum=1.0)
    check_allocation(n * n, "n", "the (n, n) matrices")
    gen = as_generator(rng)
    X, Y = gen.normal(size=(n, rank)) / np.sqrt(n), gen.normal(size=(n, rank)) / np.sqrt(n)
    L0 = X @ Y.T
    mask = gen.random((n, n)) < frac
    signs = np.sign(L0) if coherent else gen.choice([-1.0, 1.0], size=(n, n))
    return L0, np.where(mask, signs, 0.0)
