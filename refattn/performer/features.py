r"""Random feature maps for kernel (Performer) attention, with numerical stabilisers.

Performer (Choromanski et al. 2021), the docs' Performer page; FAVOR++ (Likhosherstov et
al. 2022). Inputs are *scaled* rows ``x = s^{1/2} q`` of shape ``(..., L, d)``; ``W`` holds
the projection rows ``omega_r`` ``(..., m, d)`` (leading dims broadcast: the Monte Carlo
engine passes many draws at once). Each map returns ``(phi, log_scale)`` with
``true features = phi * exp(log_scale[..., None])``.

Kinds (``phi(x) . phi(y)`` estimates the target kernel):

| kind | features | target |
|---|---|---|
| positive | ``m^-1/2 exp(omega.x - |x|^2/2)`` (FAVOR+) | SM |
| hyperbolic | ``(2m)^-1/2 exp(-|x|^2/2) [exp(omega.x), exp(-omega.x)]`` | SM |
| trigonometric | ``m^-1/2 exp(|x|^2/2) [sin(omega.x), cos(omega.x)]`` | SM |
| favorpp | ``m^-1/2 (1-4A)^{d/4} exp(A|omega|^2 + sqrt(1-4A) omega.x - |x|^2/2)`` | SM |
| relu | ``m^-1/2 relu(omega.x)`` | arc-cosine |
| custom | ``m^-1/2 fn(omega.x)`` | E[fn(w.x) fn(w.y)] |

Stabilisers (``stabilize=``): ``"query"`` subtracts a per-row shift (the row's largest
log-feature), which multiplies a query's numerator and denominator by the same factor;
``"key"`` subtracts **one** shift shared by all rows (the largest log-feature over every key
and feature of a batch item), which multiplies every term of a query's sums by the same
factor. Both cancel exactly in the normalised output, never in the numerator alone; a
per-key shift would not cancel, so none is offered. ``None`` applies no shift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from refattn._validation import (
    InputError,
    InputTypeError,
    as_float_array,
    check_finite_result,
    check_positive_int,
    check_real,
)
from refattn.kernels import numba_enabled
from refattn.performer.projections import check_projection_name
from refattn.performer.projections import projection as projection_rows
from refattn.performer.theory import favorpp_optimal_A, favorpp_phi, relu_kernel
from refattn.precision import numpy_type

__all__ = ["RandomFeatures", "make_features", "as_features", "FEATURE_KINDS", "gauss_hermite_kernel"]

FEATURE_KINDS = ("positive", "hyperbolic", "trigonometric", "favorpp", "relu", "custom")
_SOFTMAX_KINDS = ("positive", "hyperbolic", "trigonometric", "favorpp")


def _shift(logf, stabilize):
    """The shift to subtract from log-features ``logf (..., L, F)``; returns an array broadcastable to it."""
    if stabilize is None:
        return np.zeros(logf.shape[:-2] + (1, 1), dtype=logf.dtype)
    if stabilize == "query":
        return logf.max(axis=-1, keepdims=True)  # (..., L, 1)
    if stabilize == "key":
        if logf.shape[-2] == 0:
            return np.zeros(logf.shape[:-2] + (1, 1), dtype=logf.dtype)
        return logf.max(axis=(-2, -1), keepdims=True)  # (..., 1, 1)
    raise InputError(f"stabilize: expected None, 'query' or 'key', got {stabilize!r}")


def _positive_fused(u, sq, m, stabilize, valid):
    """The positive map from projections ``u (..., L, m)`` (overwritten) through the fused kernels:
    the same operations as the NumPy form of ``RandomFeatures.__call__``, in the same order."""
    from refattn.kernels.numba.features import exp_shifted_rows, log_feature_row_max

    shape = u.shape
    rows = u.reshape(-1, shape[-1])  # a view: u is the fresh, C-contiguous product
    sq_rows = np.ascontiguousarray(np.broadcast_to(sq[..., 0], shape[:-1]).reshape(-1))  # x may lack W's batch dims
    keep = (np.ones(rows.shape[0], dtype=np.bool_) if valid is None
            else np.ascontiguousarray(np.broadcast_to(valid, shape[:-1]).reshape(-1)))
    log_root_m = u.dtype.type(0.5 * math.log(m))
    c = log_feature_row_max(rows, sq_rows, log_root_m, keep).reshape(shape[:-1])  # (..., L)
    if stabilize == "key":
        c = np.broadcast_to(c.max(axis=-1, keepdims=True), shape[:-1])  # u.size > 0: L >= 1
    c = np.where(np.isfinite(c), c, u.dtype.type(0))  # a row (or item) with no valid entry
    exp_shifted_rows(rows, sq_rows, log_root_m, np.ascontiguousarray(c.reshape(-1)), keep)
    return u, c.astype(np.float64)


@dataclass(frozen=True)
class RandomFeatures:
    """A feature map: ``kind``, projection rows ``W (..., m, d)``, FAVOR++ ``A``, custom ``fn``.

    ``phi, log_scale = features(x, stabilize=...)``; ``features.n_features`` is the
    feature count (``2m`` for hyperbolic and trigonometric); ``features.target_kernel(x, y)``
    is the kernel that ``phi(x) . phi(y)`` estimates without bias.
    """

    kind: str
    W: np.ndarray
    A: float = 0.0
    fn: Callable | None = None

    def __post_init__(self):
        if not isinstance(self.kind, str) or self.kind not in FEATURE_KINDS:
            raise InputError(f"kind: unknown feature kind {self.kind!r}; expected one of {FEATURE_KINDS}")
        W = as_float_array(self.W, "W")
        if W.ndim < 2:
            raise InputError(f"W: expected shape (..., m, d), got {W.shape}")
        if W.shape[-2] < 1 or W.shape[-1] < 1:
            raise InputError(f"W: need at least one projection row and column (m, d >= 1), got shape {W.shape}")
        object.__setattr__(self, "W", W.astype(np.float64, copy=False))
        object.__setattr__(self, "A", check_real(self.A, "A"))
        if self.kind == "favorpp" and not float(self.A) < 0.125:
            raise InputError(f"A: FAVOR++ needs A < 1/8, got {self.A}")
        if self.kind == "custom" and not callable(self.fn):
            raise InputTypeError("fn: the 'custom' kind needs a callable fn(u) applied to u = omega . x")

    @property
    def m(self) -> int:
        return self.W.shape[-2]

    @property
    def d(self) -> int:
        return self.W.shape[-1]

    @property
    def n_features(self) -> int:
        return 2 * self.m if self.kind in ("hyperbolic", "trigonometric") else self.m

    @property
    def targets_softmax(self) -> bool:
        return self.kind in _SOFTMAX_KINDS

    def __call__(self, x, *, stabilize=None, valid=None, dtype=np.float64, implementation="auto"):
        """Features of scaled rows ``x (..., L, d)`` -> ``phi (..., L, F)``, ``log_scale (..., L)``.

        ``valid (..., L)`` (optional, boolean): rows that are False (padding) get zero features
        and do not take part in the shared key shift. ``dtype`` (float64 or float32): the
        precision of the projections and features (``log_scale`` is float64). ``implementation``:
        ``"numpy"`` is the readable form; ``"auto"`` runs the positive map's elementwise work as
        one fused parallel Numba pass ([`refattn.kernels.numba.features`][refattn.kernels.numba.features],
        equal to the NumPy form to the exponential's rounding).
        """
        dt = np.dtype(numpy_type(dtype))  # features are computed in float64 or float32
        if implementation not in ("auto", "numpy"):
            raise InputError(f"implementation: expected 'auto' or 'numpy', got {implementation!r}")
        x = np.asarray(x, dtype=dt)
        if x.shape[-1] != self.d:
            raise InputError(f"x: last dim {x.shape[-1]} does not match W's d = {self.d}")
        u = x @ np.swapaxes(self.W.astype(dt, copy=False), -1, -2)  # (..., L, m)
        sq = np.sum(x * x, axis=-1)[..., None] / 2  # (..., L, 1)
        if stabilize not in (None, "query", "key"):
            raise InputError(f"stabilize: expected None, 'query' or 'key', got {stabilize!r}")
        return self.from_projections(u, sq, stabilize=stabilize, valid=valid, implementation=implementation)

    def from_projections(self, u, sq, *, stabilize=None, valid=None, implementation="auto"):
        """The map of ``__call__`` from the projections ``u = x W^T (..., L, m)`` (may be overwritten)
        and ``sq = |x|^2 / 2 (..., L, 1)``: the softmax kinds other than FAVOR++ need nothing else of
        ``W`` than ``m``, so a caller that draws ``u`` directly (the Monte Carlo engine's jointly
        Gaussian projections) gets the same features."""
        m = self.m
        if self.kind == "positive" and stabilize is not None and implementation == "auto" and numba_enabled() and u.size:
            # shifted arguments are <= 0, the domain of the fused exponential
            return _positive_fused(u, sq, m, stabilize, valid)
        if self.kind in ("positive", "favorpp", "hyperbolic"):
            if self.kind == "positive":
                logf = u - sq - 0.5 * math.log(m)
            elif self.kind == "favorpp":
                A = float(self.A)
                w2 = np.sum(self.W * self.W, axis=-1)[..., None, :]  # (..., 1, m)
                logf = (A * w2 + math.sqrt(1 - 4 * A) * u - sq
                        + (self.d / 4) * math.log1p(-4 * A) - 0.5 * math.log(m))
            else:
                logf = np.concatenate([u, -u], axis=-1) - sq - 0.5 * math.log(2 * m)
            if valid is not None:
                logf = np.where(valid[..., None], logf, -np.inf)
            c = _shift(logf, stabilize)
            c = np.where(np.isfinite(c), c, 0.0)  # a row (or item) with no valid entry
            return np.exp(logf - c), c[..., 0] * np.ones(logf.shape[:-1])
        if self.kind == "trigonometric":
            logmag = sq  # exp(|x|^2/2) per row, (..., L, 1)
            if valid is not None:
                logmag = np.where(valid[..., None], logmag, -np.inf)
            c = _shift(logmag, stabilize)
            c = np.where(np.isfinite(c), c, 0.0)
            phi = np.exp(logmag - c - 0.5 * math.log(m)) * np.concatenate([np.sin(u), np.cos(u)], axis=-1)
            return phi, c[..., 0] * np.ones(phi.shape[:-1])
        f = np.maximum(u, 0.0) if self.kind == "relu" else np.asarray(self.fn(u), dtype=np.float64)
        if f.shape != u.shape:
            raise InputError(f"fn: must map u elementwise (shape {u.shape}), returned {f.shape}")
        f = f / math.sqrt(m)
        if valid is not None:
            f = np.where(valid[..., None], f, 0.0)
        return f, np.zeros(f.shape[:-1])

    def target_kernel(self, x, y):
        """The kernel ``E[phi(x) . phi(y)]`` for scaled rows ``x``, ``y`` ``(..., d)``.

        ``exp(x . y)`` for the softmax kinds, the arc-cosine kernel for ``relu``, and a 2-D
        Gauss-Hermite quadrature of ``E[fn(u) fn(v)]`` for ``custom``.
        """
        if self.targets_softmax:
            return np.exp(np.sum(np.asarray(x) * np.asarray(y), -1))
        if self.kind == "relu":
            return relu_kernel(x, y)
        return gauss_hermite_kernel(self.fn, x, y)


def gauss_hermite_kernel(fn, x, y, n_nodes: int = 60):
    r"""``E[fn(w.x) fn(w.y)]`` for ``w ~ N(0, I)`` by 2-D Gauss-Hermite quadrature.

    ``(w.x, w.y)`` is bivariate normal with covariance ``[[|x|^2, x.y], [x.y, |y|^2]]``;
    with its Cholesky factor ``L`` and probabilists' Hermite nodes ``t`` the expectation is
    ``sum_ab w_a w_b fn((L t)_1) fn((L t)_2) / (2 pi)``. Exact for polynomial ``fn`` of
    degree < n_nodes; accurate for smooth ``fn``; for kinks (ReLU) convergence is slower.
    """
    from numpy.polynomial.hermite_e import hermegauss

    if not callable(fn):
        raise InputTypeError(f"fn: expected a callable, got {type(fn).__name__}")
    x = as_float_array(x, "x").astype(np.float64)
    y = as_float_array(y, "y").astype(np.float64)
    if x.ndim == 0 or x.shape[-1:] != y.shape[-1:]:
        raise InputError(f"y: shape {y.shape} does not match x's {x.shape} (rows of the same dimension)")
    try:
        np.broadcast_shapes(x.shape[:-1], y.shape[:-1])
    except ValueError:
        raise InputError(f"y: shape {y.shape} does not broadcast with x's {x.shape}") from None
    n_nodes = check_positive_int(n_nodes, "n_nodes", maximum=1000)
    t, wt = hermegauss(n_nodes)
    wt = wt / np.sqrt(2 * np.pi)  # weights of E over N(0, 1)
    T1, T2 = np.meshgrid(t, t, indexing="ij")
    W2 = np.outer(wt, wt)
    sy = np.sqrt(np.sum(y * y, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(sy > 0, np.sum(x * y, -1) / np.where(sy > 0, sy, 1), 0.0)  # x.y / |y|
    rest = np.sqrt(np.maximum(np.sum(x * x, -1) - rho**2, 0.0))
    # v = w.y = |y| t1; u = w.x = rho t1 + rest t2 (a Cholesky factorisation of the covariance)
    v = sy[..., None, None] * T1
    u = rho[..., None, None] * T1 + rest[..., None, None] * T2
    fu, fv = np.asarray(fn(u), dtype=np.float64), np.asarray(fn(v), dtype=np.float64)
    if fu.shape != u.shape:
        raise InputError(f"fn: must map u elementwise (shape {u.shape}), returned {fu.shape}")
    return check_finite_result(np.sum(W2 * fu * fv, axis=(-2, -1)), "fn, x, y", "E[fn(w.x) fn(w.y)]")


def make_features(d, *, m=256, kind="positive", projection="orthogonal", rng=None, W=None, A=None,
                  fn=None, x=None, y=None) -> RandomFeatures:
    """The one factory of a feature draw: [`RandomFeatures`][refattn.performer.features.RandomFeatures] of ``kind`` from an explicit draw
    ``W (m, d)`` or ``m`` rows of ``projection`` drawn from ``rng`` (a seed or a Generator).

    For ``favorpp`` with ``A=None`` the optimal ``A*`` is computed from the scaled data ``x``, ``y``
    ([`refattn.performer.theory.favorpp_optimal_A`][refattn.performer.theory.favorpp_optimal_A] at the pair-average ``|x_i + y_j|^2``).
    """
    if not isinstance(kind, str) or kind not in FEATURE_KINDS:
        raise InputError(f"kind: unknown feature kind {kind!r}; expected one of {FEATURE_KINDS}")
    if W is None:
        if rng is None:
            raise InputError("rng: pass a seed or Generator (or an explicit W); refattn has no global RNG")
        check_projection_name(projection)
        W = projection_rows(projection, check_positive_int(m, "m"), d, rng)
    else:
        W = np.asarray(W, dtype=np.float64)
        if W.ndim != 2 or W.shape[1] != d:
            raise InputError(f"W: expected shape (m, d) = (m, {d}), got {W.shape}")
    if kind == "favorpp" and A is None:
        phi = float(np.mean(favorpp_phi(x, y))) if x is not None else 0.0
        A = float(favorpp_optimal_A(phi, d))
    return RandomFeatures(kind, W, 0.0 if A is None else check_real(A, "A"), fn)


def as_features(features, d, *, m=256, projection="orthogonal", rng=None, W=None, A=None, fn=None, x=None,
                y=None) -> RandomFeatures:
    """The estimators' one entry point for a feature draw: ``features`` is a [`RandomFeatures`][refattn.performer.features.RandomFeatures]
    (used as it is: then ``W``, ``A`` and ``fn`` must not be given too) or a kind name, built by
    [`make_features`][refattn.performer.features.make_features] from the convenience keywords."""
    if isinstance(features, RandomFeatures):
        given = [name for name, value in (("W", W), ("A", A), ("fn", fn)) if value is not None]
        if given:
            raise InputError(f"{given[0]}: give either a RandomFeatures draw or {given[0]}, not both")
        if features.W.ndim != 2 or features.d != d:
            raise InputError(f"features: a draw with W of shape (m, {d}) is needed, got {features.W.shape}")
        return features
    if not isinstance(features, str):
        raise InputTypeError(f"features: expected a RandomFeatures or a kind name from {FEATURE_KINDS}, "
                        f"got {type(features).__name__}")
    if features not in FEATURE_KINDS:
        raise InputError(f"features: unknown kind {features!r}; expected one of {FEATURE_KINDS}")
    return make_features(d, m=m, kind=features, projection=projection, rng=rng, W=W, A=A, fn=fn, x=x, y=y)
