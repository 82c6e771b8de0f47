r"""Performer's closed forms: means, variances and bounds of the random-feature estimators of the
softmax kernel (Choromanski et al. 2021; FAVOR++: Likhosherstov et al. 2022), which the tests,
the docs and ``refattn theory`` compare against. Derivations: the docs' Performer page. Inputs ``x``, ``y`` are *already scaled* (``x = s^{1/2} q``,
``y = s^{1/2} k``), arrays ``(..., d)`` that broadcast; outputs have the broadcast
shape without the last axis. Notation:
``z = x + y``, ``D = x - y``, ``Lam = exp(-(|x|^2 + |y|^2)/2)``, ``w = |z|^2 / 2``,
``SM = exp(x.y)``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import gammaln

from refattn._validation import InputError, as_float_array, check_finite_result, check_positive_int, check_real
from refattn.problem import attention_problem

__all__ = [
    "pair_at_angle",
    "softmax_kernel",
    "mse_trigonometric",
    "mse_positive",
    "mse_hyperbolic",
    "smreg_ratio",
    "orthogonal_cross_moment",
    "mse_orthogonal",
    "theorem2_bound",
    "favorpp_variance",
    "favorpp_optimal_A",
    "favorpp_phi",
    "uniform_convergence_features",
    "relu_kernel",
    "positive_output_moments",
]


def _xy(x, y, names=("x", "y"), *, pairs=True):
    x = as_float_array(x, names[0]).astype(np.float64)
    y = as_float_array(y, names[1]).astype(np.float64)
    if x.ndim == 0 or x.shape[-1:] != y.shape[-1:]:
        raise InputError(f"{names[1]}: last dim {y.shape[-1:]} does not match {names[0]}'s {x.shape[-1:]}")
    if pairs:  # row i of x goes with row i of y
        try:
            np.broadcast_shapes(x.shape, y.shape)
        except ValueError:
            raise InputError(f"{names[1]}: shape {y.shape} does not broadcast with {names[0]}'s {x.shape}") from None
    return x, y


def _finite(value, what):
    """The closed form's value, or a ValueError naming x, y when it left float64."""
    return check_finite_result(value, "x, y", what)


#: Largest w = |x + y|^2 / 2 for the orthogonal closed forms: C(w, d) >= e^{2w} and the MSE holds
#: e^{4w}, which overflow float64 beyond w = 709.78 / 4.
_W_MAX = 177.0


def _parts(x, y):
    x, y = _xy(x, y)
    sx, sy = np.sum(x * x, -1), np.sum(y * y, -1)
    z2 = np.sum((x + y) ** 2, -1)
    d2 = np.sum((x - y) ** 2, -1)
    return sx, sy, z2, d2, np.sum(x * y, -1)


def pair_at_angle(angle_deg, norm_x, norm_y, d):
    """Scaled rows ``x = norm_x e_1`` and ``y`` at ``angle_deg`` degrees from it with norm ``norm_y``,
    in ``d >= 2`` dimensions: the inputs of Lemma 2's tables."""
    d = check_positive_int(d, "d", minimum=2)
    angle_deg = check_real(angle_deg, "angle_deg")
    norm_x = check_real(norm_x, "norm_x", minimum=0.0)
    norm_y = check_real(norm_y, "norm_y", minimum=0.0)
    x = np.zeros(d)
    y = np.zeros(d)
    x[0] = norm_x
    a = math.radians(angle_deg)
    y[0], y[1] = norm_y * math.cos(a), norm_y * math.sin(a)
    return x, y


def softmax_kernel(x, y):
    """``SM(x, y) = exp(x . y)`` (the docs' Performer page)."""
    x, y = _xy(x, y)
    return _finite(np.exp(np.sum(x * y, -1)), "SM(x, y) = exp(x . y)")


def mse_trigonometric(x, y, m):
    """Lemma 2: ``MSE_trig = (1/(2m)) exp(|x|^2 + |y|^2) (1 - exp(-|D|^2))^2`` (iid omegas)."""
    m = check_positive_int(m, "m")
    sx, sy, _, d2, _ = _parts(x, y)
    return _finite(np.exp(sx + sy) * (1.0 - np.exp(-d2)) ** 2 / (2.0 * m), "MSE_trig")


def mse_positive(x, y, m):
    """Lemma 2: ``MSE_pos = (1/m) SM^2 (exp(|z|^2) - 1)`` (iid omegas)."""
    m = check_positive_int(m, "m")
    _, _, z2, _, xy = _parts(x, y)
    return _finite(np.exp(2 * xy) * np.expm1(z2) / m, "MSE_pos")


def mse_hyperbolic(x, y, m):
    """Lemma 2: ``MSE_hyp = (1/(2m)) Lam^2 (exp(|z|^2) - 1)^2`` (m omegas, 2m features)."""
    m = check_positive_int(m, "m")
    sx, sy, z2, _, _ = _parts(x, y)
    return _finite(np.exp(-(sx + sy)) * np.expm1(z2) ** 2 / (2.0 * m), "MSE_hyp")


def _log_P(t, d):
    """log of P(t) = d (d+2) ... (d+2t-2) = 2^t Gamma(d/2 + t) / Gamma(d/2); P(0) = 1."""
    return t * math.log(2.0) + gammaln(d / 2.0 + t) - gammaln(d / 2.0)


def _series(w, term_log, rtol=1e-17, n_max=100_000):
    """Sum_n exp(term_log(n)) of positive terms until they fall below rtol of the sum past the peak."""
    total, n, peak = 0.0, 0, -np.inf
    while n < n_max:
        t = term_log(n)
        peak = max(peak, t)
        total += math.exp(t)
        if n > 2 * w + 10 and t < peak and math.exp(t) < rtol * total:
            return total
        n += 1
    raise ArithmeticError(f"series did not converge in {n_max} terms (w = {w})")


def smreg_ratio(x, y, d=None):
    r"""Performer Theorem 1: ``SMREG/SM = e^{-w} sum_k (w^k/k!) d^k / P(k) <= 1``, ``w = |z|^2/2``.

    The mean of the positive estimator with **regular** rows (norm ``sqrt(d)``, Haar
    directions), divided by the softmax kernel: regular features underestimate SM.
    ``P(k) = d (d+2) ... (d+2k-2)``. Derivation: ``E[(u.z)^{2k}] = |z|^{2k} (2k-1)!!/P(k)``
    for ``u`` uniform on the sphere (docs/performer.md).
    """
    x, y = _xy(x, y)
    d = x.shape[-1] if d is None else check_positive_int(d, "d")
    w_all = np.sum((x + y) ** 2, -1) / 2.0
    if np.any(w_all > 1e5):
        raise InputError(f"x, y: |x + y|^2 / 2 = {np.max(w_all):.3g} is beyond the series' reach (1e5)")
    out = np.empty(w_all.shape)
    for idx, w in np.ndenumerate(w_all):
        if w == 0:
            out[idx] = 1.0
            continue
        lw = math.log(w)
        out[idx] = _series(w, lambda k: k * lw - gammaln(k + 1) + k * math.log(d) - _log_P(k, d) - w)
    return out


def orthogonal_cross_moment(w, d):
    r"""``C(w, d) = E[exp(omega_1.z) exp(omega_2.z)]`` for an orthogonal pair with chi_d norms.

    Derived on the docs' Performer page: ``C = sum_n (w^n/n!) sum_{t<=n} binom(n,t) P(t) P(n-t) / P(n)``, with
    ``w = |z|^2/2``. Checked by Monte Carlo in proofs_tests/performer/test_theory.py.
    """
    d = check_positive_int(d, "d")
    w = check_real(w, "w", minimum=0.0)
    if w > 2 * _W_MAX:
        raise InputError(f"w: C(w, d) >= e^(2w) overflows float64 for w > {2 * _W_MAX:g}, got {w:g}")
    if w == 0:
        return 1.0
    lw = math.log(w)

    def term(n):
        t = np.arange(n + 1)
        logbin = gammaln(n + 1) - gammaln(t + 1) - gammaln(n - t + 1)
        inner = logbin + _log_P(t, d) + _log_P(n - t, d) - _log_P(n, d)
        top = inner.max()
        return n * lw - gammaln(n + 1) + top + math.log(np.exp(inner - top).sum())

    return _series(w, term)


def mse_orthogonal(x, y, m, d=None):
    r"""Exact MSE of the positive estimator with orthogonal features, one block (``m <= d``).

    Derived on the docs' Performer page: ``Lam^2 [ (e^{4w} - e^{2w})/m + (1 - 1/m)(C(w, d) - e^{2w}) ]``. For
    ``m > d`` the rows form independent blocks of sizes ``b_1..b_k`` (``d`` each, the last
    truncated), and the mean's MSE is ``sum_i b_i^2 MSE_ort(b_i) / m^2``.
    """
    x, y = _xy(x, y)
    d = x.shape[-1] if d is None else check_positive_int(d, "d")
    m = check_positive_int(m, "m")
    if m > d:
        sizes = {d: m // d} | ({m % d: 1} if m % d else {})  # block size -> count
        return sum(count * b * b * mse_orthogonal(x, y, b, d) for b, count in sizes.items()) / m**2
    sx, sy = np.sum(x * x, -1), np.sum(y * y, -1)
    w_all = np.sum((x + y) ** 2, -1) / 2.0
    if np.any(w_all > _W_MAX):
        raise InputError(f"x, y: MSE_ort holds e^(4w), which overflows float64 for w = |x + y|^2 / 2 > {_W_MAX:g}")
    lam2 = np.exp(-(sx + sy))
    C = np.vectorize(lambda w: orthogonal_cross_moment(w, d))(w_all)
    return lam2 * ((np.exp(4 * w_all) - np.exp(2 * w_all)) / m + (1 - 1 / m) * (C - np.exp(2 * w_all)))


def theorem2_bound(x, y, m, d=None):
    """Performer Theorem 2 (m <= d): ``MSE_ort <= MSE_pos - (2(m-1)/(m(d+2))) (SM - Lam)^2``."""
    x, y = _xy(x, y)
    d = x.shape[-1] if d is None else check_positive_int(d, "d")
    m = check_positive_int(m, "m")
    sx, sy = np.sum(x * x, -1), np.sum(y * y, -1)
    sm = np.exp(np.sum(x * y, -1))
    lam = np.exp(-(sx + sy) / 2)
    return _finite(mse_positive(x, y, m) - 2 * (m - 1) / (m * (d + 2)) * (sm - lam) ** 2, "the Theorem 2 bound")


def _check_A(A):
    A = check_real(A, "A")
    if not A < 0.125:
        raise InputError(f"A: FAVOR++ needs A < 1/8, got {A}")
    return A


def favorpp_variance(x, y, A):
    r"""Per-term variance of FAVOR++ positive features (m iid terms: divide by m).

    (Likhosherstov et al. 2022; derived on the docs' Performer page and checked):
    ``Lam^2 [((1-4A)^2/(1-8A))^{d/2} exp(2(1-4A)|z|^2/(1-8A)) - exp(|z|^2)]``; ``A = 0`` is
    FAVOR+ (``m MSE_pos``).
    """
    A = _check_A(A)
    x, y = _xy(x, y)
    d = x.shape[-1]
    sx, sy = np.sum(x * x, -1), np.sum(y * y, -1)
    z2 = np.sum((x + y) ** 2, -1)
    log_second = (d / 2) * (2 * math.log1p(-4 * A) - math.log1p(-8 * A)) + 2 * (1 - 4 * A) * z2 / (1 - 8 * A)
    return _finite(np.exp(-(sx + sy)) * (np.exp(log_second) - np.exp(z2)), "the FAVOR++ variance")


def favorpp_optimal_A(phi, d):
    r"""The ``A`` minimising [`favorpp_variance`][refattn.performer.theory.favorpp_variance] at ``|z|^2 = phi`` (derived on the docs' Performer page):
    ``rho = (sqrt((2 phi + d)^2 + 8 d phi) - 2 phi - d) / (4 phi)``, ``A* = (1 - 1/rho)/8``.
    At ``phi = 0`` the limit ``rho -> 1``, ``A* -> 0`` (FAVOR+) is returned.
    """
    d = check_positive_int(d, "d")
    phi = as_float_array(phi, "phi").astype(np.float64)
    if np.any(phi < 0):
        raise InputError("phi: must be finite and >= 0")
    # the same rho without cancellation (multiply by the conjugate): 2d / (sqrt(a^2 + 8 d phi) + a),
    # with sqrt(a^2 + 8 d phi) = a sqrt(1 + (8 d phi / a) / a) so that a^2 never overflows
    a = 2 * phi + d
    rho = 2 * d / (a * np.sqrt(1 + (8 * d * phi / a) / a) + a)
    return (1 - 1 / rho) / 8


def favorpp_phi(x, y):
    """The pair average of ``|x_i + y_j|^2`` over all (i, j), in O((Lq + Lk) d).

    ``mean|x|^2 + mean|y|^2 + 2 mean(x) . mean(y)`` (the docs' Performer page).
    """
    x, y = _xy(x, y, pairs=False)
    for a, name in ((x, "x"), (y, "y")):
        if a.ndim < 2 or a.shape[-2] == 0:
            raise InputError(f"{name}: expected rows (..., L, d) with L >= 1, got shape {a.shape}")
    return _finite(np.mean(np.sum(x * x, -1), axis=-1) + np.mean(np.sum(y * y, -1), axis=-1)
                   + 2 * np.sum(x.mean(axis=-2) * y.mean(axis=-2), -1), "phi")


def uniform_convergence_features(eps, d, R):
    r"""Performer Theorem 4 (trig + ORF): ``m = (d/delta^2) log(4 d^{3/4} R / delta)`` features,
    ``delta = eps e^{-l^2}``, ``l = R d^{-1/4}``, make ``max|A^ - A| <= eps`` w.h.p. for rows in
    a ball of radius ``R``, **up to the theorem's unspecified absolute constant** (it is an
    Omega statement): use the value for scaling, not as a guarantee.
    """
    d = check_positive_int(d, "d")
    eps = check_real(eps, "eps", minimum=0.0, low_open=True)
    R = check_real(R, "R", minimum=0.0, low_open=True)
    ell = R * d ** -0.25
    try:
        delta = eps * math.exp(-(ell**2))
        return _finite(d / delta**2 * math.log(max(4 * d**0.75 * R / delta, math.e)), "the feature count")
    except (OverflowError, ZeroDivisionError):
        raise InputError(f"eps, R: the feature count overflows float64 (eps = {eps:g}, R = {R:g})") from None


def relu_kernel(x, y):
    r"""Target of ReLU random features ``E[relu(w.x) relu(w.y)]``, ``w ~ N(0, I)``: the arc-cosine
    kernel of degree 1 (Cho & Saul 2009): ``|x||y| (sin t + (pi - t) cos t) / (2 pi)``."""
    x, y = _xy(x, y)
    nx, ny = np.linalg.norm(x, axis=-1), np.linalg.norm(y, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.clip(np.sum(x * y, -1) / (nx * ny), -1.0, 1.0)
    t = np.arccos(np.where(nx * ny > 0, c, 1.0))
    return _finite(nx * ny * (np.sin(t) + (np.pi - t) * np.cos(t)) / (2 * np.pi), "the arc-cosine kernel")


def positive_output_moments(q, k, v, m, *, scale=None):
    r"""Delta-method bias and variance of the normalised FAVOR+ output (iid features).

    **An approximation** (first order in 1/m), not an exact result. With per-feature terms
    ``n_r = sum_j f_r(q, k_j) v_j``, ``d_r = sum_j f_r(q, k_j)``, ``f_r = Lam_j exp(omega_r.z_j)``,
    the estimate is ``O^ = mean_r n_r / mean_r d_r`` and (derived in docs/performer.md)

    $$
    E[O^] - O \approx \frac1m\Bigl(\frac{\mu_N \mathrm{Var}(d)}{\mu_D^3}
        - \frac{\mathrm{Cov}(n, d)}{\mu_D^2}\Bigr),\quad
    \mathrm{Var}[O^] \approx \frac1m \frac{\mathrm{Var}(n - O d)}{\mu_D^2},
    $$

    with the exact second moments ``E[f(q,k_j) f(q,k_l)] = Lam_j Lam_l exp(|z_j + z_l|^2/2)``.
    ``q (T, H)``, ``k (S, H)``, ``v (S, Hv)``; returns ``(bias, variance)`` each ``(T, Hv)``.
    Cost O(T S^2 Hv): for small problems (tests, teaching).
    """
    m = check_positive_int(m, "m")
    prob = attention_problem(q, k, v, scale=scale)
    if prob.batch_shape:
        raise InputError("q: positive_output_moments takes 2-D q, k, v")
    s = math.sqrt(prob.scale)
    x, y, vv = prob.q * s, prob.k * s, prob.v.astype(np.float64)
    T = x.shape[0]
    bias = np.empty((T, vv.shape[1]))
    var = np.empty((T, vv.shape[1]))
    for i in range(T):
        z = x[i] + y  # (S, H)
        loglam = -(x[i] @ x[i] + np.sum(y * y, -1)) / 2  # (S,)
        a = np.exp(loglam + np.sum(z * z, -1) / 2)  # E[f_j] = SM_ij, (S,)
        zz = z[:, None, :] + z[None, :, :]  # (S, S, H)
        M = np.exp(loglam[:, None] + loglam[None, :] + np.sum(zz * zz, -1) / 2)  # E[f_j f_l], (S, S)
        muD = a.sum()
        muN = a @ vv  # (Hv,)
        O = muN / muD
        var_d = M.sum() - muD**2
        cov_nd = M.sum(axis=1) @ vv - muN * muD  # (Hv,)
        # Var(n - O d) = sum_jl M_jl (v_j - O)(v_l - O) - (muN - O muD)^2, the last term is 0
        r = vv - O  # (S, Hv)
        var_res = np.einsum("jl,jh,lh->h", M, r, r)
        bias[i] = (O * var_d / muD**2 - cov_nd / muD**2) / m
        var[i] = var_res / muD**2 / m
    check_finite_result(bias, "q, k, v", "the delta-method moments (exp(|z|^2) terms)")
    return bias, check_finite_result(var, "q, k, v", "the delta-method moments (exp(|z|^2) terms)")
