r"""A Monte Carlo engine for random-feature estimators, vectorised over draws.

Many independent draws of the projection ``W`` are made at once (``size=`` of the
samplers in [`refattn.performer.projections`][refattn.performer.projections], batched QR for orthogonal ones) and the estimators
are evaluated for all of them with one batched product, in chunks that bound memory.
10^5 draws at ``d = 64`` take seconds (``benchmarks/``). The statistical tests and
``refattn theory`` use it.

- [`kernel_samples`][refattn.montecarlo.kernel_samples]: ``(n_draws, P)`` samples of the softmax-kernel estimate
  ``SM^(x_p, y_p)`` for ``P`` pairs (each draw's ``W`` shared by all pairs), computed by the
  shipped feature maps ([`RandomFeatures`][refattn.performer.features.RandomFeatures]) on the stabilised
  product ``phi(x).phi(y) exp(ls_x + ls_y)``, so the statistical tests test what ships.
- [`attention_samples`][refattn.montecarlo.attention_samples]: ``(n_draws, T, Hv)`` normalised Performer outputs.
- [`scatterbrain_samples`][refattn.montecarlo.scatterbrain_samples]: ``(n_draws, P)`` samples of Scatterbrain's entry estimate
  (exact on an r-bit SimHash collision, iid positive features off it).
"""

from __future__ import annotations

import math

import numpy as np

from refattn._validation import (
    InputError,
    as_float_array,
    as_generator,
    check_allocation,
    check_finite_result,
    check_positive_int,
    check_real,
)
from refattn.performer.features import RandomFeatures
from refattn.performer.projections import projection as _projection
from refattn.precision import eps
from refattn.problem import attention_problem

__all__ = ["kernel_samples", "attention_samples", "scatterbrain_samples", "ESTIMATORS"]

ESTIMATORS = ("positive", "hyperbolic", "trigonometric", "favorpp")


def _chunks(n, per_draw, budget=4_000_000):
    c = max(1, budget // max(1, per_draw))
    for start in range(0, n, c):
        yield min(c, n - start)


def _gram_factor(z):
    """``L`` with ``L L^T = z z^T`` (eigendecomposition; the Gram matrix may be singular)."""
    lam, U = np.linalg.eigh(z @ z.T)
    return U * np.sqrt(np.clip(lam, 0.0, None))


def kernel_samples(x, y, *, estimator="positive", projection="gaussian", m, n_draws, rng, A=0.0, sampler="auto"):
    r"""Independent samples of ``SM^(x_p, y_p)`` (scaled inputs), shape ``(n_draws, P)``.

    ``x``, ``y`` are ``(P, d)`` (or ``(d,)`` for one pair). Computed by
    [`RandomFeatures`][refattn.performer.features.RandomFeatures]; what each estimator is (averages over
    the ``m`` rows of one draw of ``W``, the docs' Performer page):

    - positive: ``Lam mean_r exp(omega_r . z)``
    - hyperbolic: ``Lam mean_r cosh(omega_r . z)``
    - trigonometric: ``exp((|x|^2 + |y|^2)/2) mean_r cos(omega_r . D)``
    - favorpp: ``Lam (1-4A)^{d/2} mean_r exp(2A |omega_r|^2 + sqrt(1-4A) omega_r . z)``

    ``sampler``: ``"direct"`` draws each ``W (m, d)`` and projects (the readable form).
    ``"gram"`` draws only what the estimate reads: for iid Gaussian rows ``omega ~ N(0, I_d)`` the
    projections ``(omega . x_1 .. omega . x_P, omega . y_1 .. omega . y_P)`` are jointly Gaussian
    with covariance the Gram matrix ``G = Z Z^T`` of ``Z = [x; y]``, so ``u = L e`` with
    ``L L^T = G`` and ``e ~ N(0, I_{2P})`` has their law exactly (derived: a linear map of a
    standard Gaussian; the docs' Monte Carlo section), at ``2P`` normals per row instead of ``d``. It
    applies to Gaussian projections and the estimators that read only the projections (not
    FAVOR++, which also reads ``|omega|^2``). For orthogonal projections the same idea draws a
    frame instead of a rotation: a block of ``d`` rows is ``omega_r = n_r q_r`` with ``Q`` Haar and
    ``n_r ~ chi_d``, and ``Q Z = (Q B) C`` for an orthonormal basis ``B (d, k)`` of the span of
    ``Z``'s rows and ``C = B^T Z^T``; ``Q B`` is a Haar ``k``-frame, the sign-corrected QR of a
    Gaussian ``(d, k)`` matrix (Mezzadri 2007, Sec. 5, on ``k`` columns), so a block costs a
    ``d x k`` QR instead of ``d x d`` (derived; the docs' Monte Carlo section). ``"auto"``: the
    reduced draw where it applies and ``2P < d``, else ``"direct"``. The two have the same
    distribution (a two-sample test), not the same draws.
    """
    if estimator not in ESTIMATORS:
        raise InputError(f"estimator: expected one of {ESTIMATORS}, got {estimator!r}")
    x = np.atleast_2d(as_float_array(x, "x")).astype(np.float64)
    y = np.atleast_2d(as_float_array(y, "y")).astype(np.float64)
    if x.shape != y.shape:
        raise InputError(f"y: shape {y.shape} differs from x's {x.shape} (pairs)")
    m = check_positive_int(m, "m")
    n_draws = check_positive_int(n_draws, "n_draws")
    A = check_real(A, "A")
    if estimator == "favorpp" and not A < 0.125:
        raise InputError(f"A: FAVOR++ needs A < 1/8, got {A}")
    if sampler not in ("auto", "direct", "gram"):
        raise InputError(f"sampler: expected 'auto', 'direct' or 'gram', got {sampler!r}")
    gen = as_generator(rng)
    P, d = x.shape
    gram_ok = projection in ("gaussian", "orthogonal") and estimator != "favorpp"
    if sampler == "gram" and not gram_ok:
        raise InputError("sampler: 'gram' needs projection 'gaussian' or 'orthogonal' and an estimator other than "
                         f"favorpp (got {projection!r}, {estimator!r})")
    if sampler == "gram" or (sampler == "auto" and gram_ok and 2 * P < d):
        return _kernel_samples_gram(x, y, estimator, projection, m, n_draws, gen)
    out = np.empty((n_draws, P))
    row = 0
    for c in _chunks(n_draws, 2 * m * (P + d)):
        W = _projection(projection, m, d, gen, size=c)  # (c, m, d)
        feats = RandomFeatures(estimator, W, A)  # the shipped feature maps, one draw per batch item
        px, lx = feats(x, stabilize="query")  # (c, P, F), (c, P): a shift per row, undone below
        py, ly = feats(y, stabilize="query")
        est = np.sum(px * py, axis=-1) * np.exp(lx + ly)  # phi(x).phi(y) exp(ls_x + ls_y)
        out[row:row + c] = est
        row += c
    return check_finite_result(out, "x, y", "the kernel estimate (exp of the projections)")


def _haar_frame_projections(Z, m, c, gen):
    """``(c, m, 2P)`` projections ``omega_r . z`` of the rows of ``Z (2P, d)`` for ``c`` draws of ``m``
    orthogonal rows (blocks of ``d``), through a Haar ``k``-frame per block (``kernel_samples``)."""
    d = Z.shape[1]
    U, sv, Vt = np.linalg.svd(Z.T, full_matrices=False)  # Z^T = U diag(sv) Vt
    k = max(1, int(np.sum(sv > sv.max(initial=0.0) * d * eps("float64"))))
    C = sv[:k, None] * Vt[:k]  # Z^T = B C with B = U[:, :k] (d, k) orthonormal; Q B is drawn as F below
    n_blocks = -(-m // d)
    G = gen.standard_normal((c * n_blocks, d, k))
    F, R = np.linalg.qr(G)  # (., d, k), Haar after the sign correction
    sgn = np.sign(np.diagonal(R, axis1=-2, axis2=-1))
    sgn[sgn == 0] = 1.0
    F = F * sgn[:, None, :]
    proj = (F @ C).reshape(c, n_blocks * d, -1)[:, :m, :]  # (c, m, 2P): q_r . z
    norms = np.sqrt(gen.chisquare(d, size=(c, m, 1)))
    return proj * norms


def _kernel_samples_gram(x, y, estimator, projection, m, n_draws, gen):
    """``kernel_samples`` from the projections drawn directly (see its ``sampler``)."""
    P, d = x.shape
    Z = np.concatenate([x, y])  # (2P, d)
    L = _gram_factor(Z) if projection == "gaussian" else None  # (2P, 2P)
    feats = RandomFeatures(estimator, np.zeros((m, d)))  # from_projections reads only m of W here
    sqx = np.sum(x * x, axis=-1)[:, None] / 2  # (P, 1)
    sqy = np.sum(y * y, axis=-1)[:, None] / 2
    out = np.empty((n_draws, P))
    row = 0
    per_draw = 4 * m * P if projection == "gaussian" else 4 * m * P + 2 * m * d
    for c in _chunks(n_draws, per_draw):
        if L is not None:
            u = gen.standard_normal((c, m, 2 * P)) @ L.T  # (c, m, 2P): row r of draw t is (omega . x_p, omega . y_p)
        else:
            u = _haar_frame_projections(Z, m, c, gen)
        ux = np.ascontiguousarray(np.swapaxes(u[..., :P], -1, -2))  # (c, P, m)
        uy = np.ascontiguousarray(np.swapaxes(u[..., P:], -1, -2))
        px, lx = feats.from_projections(ux, sqx, stabilize="query")
        py, ly = feats.from_projections(uy, sqy, stabilize="query")
        out[row:row + c] = np.sum(px * py, axis=-1) * np.exp(lx + ly)
        row += c
    return check_finite_result(out, "x, y", "the kernel estimate (exp of the projections)")


def attention_samples(q, k, v, *, m, n_draws, rng, features="positive", projection="gaussian", scale=None, A=0.0):
    """``(n_draws, T, Hv)`` normalised Performer outputs (bidirectional), one ``W`` per draw.

    ``q (T, H)``, ``k (S, H)``, ``v (S, Hv)``; stabilised (query and shared key shifts).
    """
    prob = attention_problem(q, k, v, scale=scale)
    if prob.batch_shape:
        raise InputError("q: attention_samples takes 2-D q, k, v")
    m = check_positive_int(m, "m")
    n_draws = check_positive_int(n_draws, "n_draws")
    gen = as_generator(rng)
    root = math.sqrt(prob.scale)
    x, y, v = prob.q * root, prob.k * root, prob.v.astype(np.float64)
    out = np.empty((n_draws, prob.T, prob.Hv))
    row = 0
    for c in _chunks(n_draws, 2 * m * (prob.T + prob.S + prob.H)):
        W = _projection(projection, m, prob.H, gen, size=c)  # (c, m, H)
        feats = RandomFeatures(features, W, A)
        pq, _ = feats(x, stabilize="query")  # (c, T, F)
        pk, _ = feats(y, stabilize="key")  # (c, S, F)
        num = pq @ (np.swapaxes(pk, -1, -2) @ v)  # (c, T, Hv)
        den = pq @ pk.sum(axis=-2)[..., None]  # (c, T, 1)
        out[row:row + c] = num / den
        row += c
    return check_finite_result(out, "q, k", "the Performer output (exp of the projections)")


def scatterbrain_samples(x, y, *, m, r, n_draws, rng):
    r"""Samples of Scatterbrain's estimate of ``exp(x_p . y_p)`` for ``P`` pairs of scaled rows.

    Each draw has its own iid Gaussian positive features (``m`` rows; Performer Lemma 1) and,
    independently, its own ``r``-bit SimHash (one table) shared by all pairs: the estimate is
    ``exp(x . y)`` when ``x`` and ``y`` get the same code (the pair is on the support) and
    ``phi(x) . phi(y)`` otherwise (Chen et al. 2021, Sec. 4; the docs' Scatterbrain page). Its mean is
    ``exp(x . y)`` and its variance ``(1 - P) Var_pfm`` with ``P = (1 - theta/pi)^r``
    (derived in docs/scatterbrain.md).

    Returns
    -------
    estimate, sparse_only : ndarray (n_draws, P)
        The Scatterbrain estimate, and the sparse-only (Reformer-like) one, 0 off the support.
    """
    X = np.atleast_2d(as_float_array(x, "x")).astype(np.float64)  # (P, d)
    Y = np.atleast_2d(as_float_array(y, "y")).astype(np.float64)
    if X.shape != Y.shape or X.ndim != 2:
        raise InputError(f"x, y: expected equal shapes (P, d) or (d,), got {X.shape} and {Y.shape}")
    m = check_positive_int(m, "m")
    r = check_positive_int(r, "r")
    n_draws = check_positive_int(n_draws, "n_draws")
    gen = as_generator(rng)
    d = X.shape[1]
    check_allocation(n_draws * m * max(d, X.shape[0]), "n_draws, m", "the feature draws")
    W = gen.standard_normal((n_draws, m, d))
    lam = np.exp(-(np.sum(X * X, 1) + np.sum(Y * Y, 1)) / 2)  # (P,)
    lowrank = lam * np.exp(W @ (X + Y).T).mean(axis=1)  # (n, P): phi(x).phi(y) = mean_w Lambda e^{w.(x+y)}
    planes = gen.standard_normal((n_draws, r, d))  # independent of W
    hit = np.all((planes @ X.T > 0) == (planes @ Y.T > 0), axis=1)  # (n, P): the same r-bit code
    A = np.exp(np.sum(X * Y, 1))
    return (check_finite_result(np.where(hit, A, lowrank), "x, y", "exp(x . y) and its estimate"),
            check_finite_result(np.where(hit, A, 0.0), "x, y", "exp(x . y)"))
