r"""Random projections for random-feature attention: the rows omega_r of W (m, d).

Performer (Choromanski et al. 2021), the docs' Performer page. Every sampler takes
``m`` (rows), ``d`` (input dim) and ``rng`` (a Generator or an int seed) and returns
``W`` of shape ``(m, d)``; ``size=n`` returns ``n`` independent draws ``(n, m, d)`` at once
(the Monte Carlo engine uses it).

- [`gaussian_projection`][refattn.performer.projections.gaussian_projection]: iid ``N(0, I_d)`` rows.
- [`orthogonal_projection`][refattn.performer.projections.orthogonal_projection]: orthogonal random features (ORF). Directions are Haar:
  QR of a Gaussian ``d x d`` block with column ``j`` of ``Q`` multiplied by
  ``sign(R_jj)`` (Mezzadri 2007; a plain LAPACK QR is *not* Haar, ``P(Q_00 < 0) = 1``).
  Norms are independent ``chi_d``, so each row is marginally ``N(0, I_d)``; blocks of
  ``d`` rows are independent and stacked, the last truncated.
- [`regular_projection`][refattn.performer.projections.regular_projection]: Haar directions with **fixed norms** ``sqrt(d)``. The
  features then estimate ``SMREG``, not the softmax kernel ``SM`` (Performer Theorem 1,
  [`refattn.theory.smreg_ratio`][refattn.performer.theory.smreg_ratio]): a biased estimator of softmax attention.
- [`sorf_projection`][refattn.performer.projections.sorf_projection]: structured orthogonal random features (Yu et al. 2016):
  ``sqrt(p) H D_1 H D_2 H D_3`` blocks (``H`` the normalised Hadamard matrix of size
  ``p = 2^ceil(log2 d)``, ``D_i`` random signs), first ``d`` columns, times ``chi_d``
  norms. Not exactly Gaussian marginals: its bias is measured (``refattn theory``,
  proofs_tests/performer/test_projections.py), not assumed zero.
"""

from __future__ import annotations

import numpy as np

from refattn._validation import InputError, as_generator, check_allocation, check_positive_int

__all__ = [
    "gaussian_projection",
    "orthogonal_projection",
    "regular_projection",
    "sorf_projection",
    "haar_orthogonal",
    "projection",
    "PROJECTIONS",
]


def _args(m, d, size):
    m = check_positive_int(m, "m")
    d = check_positive_int(d, "d")
    n = 1 if size is None else check_positive_int(size, "size")
    check_allocation(n * max(m, d) * d, "m, d, size", "the projection rows")
    return m, d, n


def _out(W, size):
    return W[0] if size is None else W


def haar_orthogonal(n: int, d: int, rng, *, sign_correction: bool = True) -> np.ndarray:
    """``n`` Haar-distributed ``d x d`` orthogonal matrices ``(n, d, d)`` (rows orthonormal).

    QR of a Gaussian matrix, then column ``j`` of ``Q`` times ``sign(R_jj)`` (Mezzadri 2007,
    "How to generate random matrices from the classical compact groups", section 5).
    ``sign_correction=False`` gives LAPACK's plain ``Q``, which is not Haar (kept only so
    the tests can show the difference).
    """
    n = check_positive_int(n, "n")
    d = check_positive_int(d, "d")
    check_allocation(n * d * d, "n, d", "the (n, d, d) matrices")
    gen = as_generator(rng)
    G = gen.standard_normal((n, d, d))
    Q, R = np.linalg.qr(G)  # batched, (n, d, d)
    if sign_correction:
        sgn = np.sign(np.diagonal(R, axis1=-2, axis2=-1))  # (n, d)
        sgn[sgn == 0] = 1.0
        Q = Q * sgn[:, None, :]
    return np.swapaxes(Q, -1, -2)  # rows = Q's columns: a Haar orthonormal basis


def _stacked_directions(m, d, n, gen, sign_correction=True):
    """Unit rows, orthogonal within each block of d, blocks independent: (n, m, d)."""
    n_blocks = -(-m // d)
    Q = haar_orthogonal(n * n_blocks, d, gen, sign_correction=sign_correction)  # (n * nb, d, d)
    return Q.reshape(n, n_blocks * d, d)[:, :m, :]


def gaussian_projection(m, d, rng, *, size=None) -> np.ndarray:
    """iid Gaussian rows ``omega_r ~ N(0, I_d)`` (Performer Lemma 1)."""
    m, d, n = _args(m, d, size)
    return _out(as_generator(rng).standard_normal((n, m, d)), size)


def orthogonal_projection(m, d, rng, *, size=None, sign_correction=True) -> np.ndarray:
    """Orthogonal random features: Haar directions times independent ``chi_d`` norms.

    Rows within a block of ``d`` are exactly orthogonal; every row is marginally
    ``N(0, I_d)``, so every Performer estimator stays unbiased (Lemma 1) while its MSE drops
    (Theorem 2). ``sign_correction=False`` reproduces the common bug (plain QR).
    """
    m, d, n = _args(m, d, size)
    gen = as_generator(rng)
    dirs = _stacked_directions(m, d, n, gen, sign_correction)
    norms = np.sqrt(gen.chisquare(d, size=(n, m, 1)))
    return _out(dirs * norms, size)


def regular_projection(m, d, rng, *, size=None) -> np.ndarray:
    """Haar directions with fixed norms ``sqrt(d)``.

    Warning: with these rows the Performer features estimate ``SMREG``, not the softmax
    kernel: ``E[estimate] = SMREG(x, y) <= SM(x, y)`` (Performer Theorem 1,
    [`refattn.theory.smreg_ratio`][refattn.performer.theory.smreg_ratio]). Use it to reproduce that estimator, not as softmax.
    """
    m, d, n = _args(m, d, size)
    return _out(_stacked_directions(m, d, n, as_generator(rng)) * np.sqrt(d), size)


def _hadamard(p: int) -> np.ndarray:
    H = np.ones((1, 1))
    while H.shape[0] < p:
        H = np.block([[H, H], [H, -H]])
    return H / np.sqrt(p)


def sorf_projection(m, d, rng, *, size=None, n_products: int = 3) -> np.ndarray:
    """Structured orthogonal random features: ``sqrt(p) H D_1 H D_2 H D_3`` blocks.

    Yu et al. (2016), "Orthogonal Random Features", section 4. ``p = 2^ceil(log2 d)``; each
    block's rows are orthogonal with norm ``sqrt(p)`` before the first ``d`` columns are
    kept; each row is then rescaled to an independent ``chi_d`` norm. Marginals are close to,
    not exactly, Gaussian: measure its bias before trusting it.
    """
    m, d, n = _args(m, d, size)
    n_products = check_positive_int(n_products, "n_products")
    gen = as_generator(rng)
    p = 1 << (d - 1).bit_length()
    H = _hadamard(p)
    n_blocks = -(-m // p)
    signs = gen.choice([-1.0, 1.0], size=(n * n_blocks, n_products, p))
    B = np.broadcast_to(np.eye(p), (n * n_blocks, p, p)).copy()
    for i in range(n_products - 1, -1, -1):  # B = H D_1 H D_2 ... H D_k
        B = H @ (signs[:, i, :, None] * B)
    B = B.reshape(n, n_blocks * p, p)[:, :m, :d]  # (n, m, d)
    rownorm = np.linalg.norm(B, axis=-1, keepdims=True)
    rownorm[rownorm == 0] = 1.0
    norms = np.sqrt(gen.chisquare(d, size=(n, m, 1)))
    return _out(B / rownorm * norms, size)


PROJECTIONS = {
    "gaussian": gaussian_projection,
    "iid": gaussian_projection,
    "orthogonal": orthogonal_projection,
    "regular": regular_projection,
    "sorf": sorf_projection,
}


def projection(name: str, m, d, rng, *, size=None) -> np.ndarray:
    """Dispatch by name: one of ``gaussian`` (alias ``iid``), ``orthogonal``, ``regular``, ``sorf``."""
    check_projection_name(name, "name")
    return PROJECTIONS[name](m, d, rng, size=size)


def check_projection_name(value, name: str = "projection") -> str:
    """``value`` if it names a projection (`PROJECTIONS`), else a ValueError naming ``name``."""
    if not isinstance(value, str) or value not in PROJECTIONS:
        raise InputError(f"{name}: unknown projection {value!r}; expected one of {sorted(PROJECTIONS)}")
    return value
