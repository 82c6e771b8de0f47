r"""SEA decoders: from the kernel estimate ``E (T, n)`` to ``K`` logits over each row's own bins.

The docs' SEA page, steps 1 and 5. A decoder is any callable
``decoder(E, lengths, n_keys, n_bins) -> logits (..., T, K)`` (``E (..., T, n)`` over the ``n``
basis bins of the full length ``S``; the logits over the ``K`` bins of each row's length ``l_i``,
[`refattn.sea.attention.bin_starts`][refattn.sea.estimate.bin_starts]). Three are provided:

* [`OracleDecoder`][refattn.sea.decoder.OracleDecoder]: the exact binned attention (``log A^down``): the best any width-``K``
  estimate can do; by the KL chain rule (`refattn.sea.attention.kl_decomposition`) it reaches the floor.
* [`fixed_decoder`][refattn.sea.decoder.fixed_decoder]: untrained. [`resample_bins`][refattn.sea.decoder.resample_bins] spreads each basis bin's estimated mass
  uniformly over the part of it the row sees and re-bins to the row's ``K`` bins;
  the logits are ``log`` of those masses.
* [`LogLinearDecoder`][refattn.sea.decoder.LogLinearDecoder], learned by [`distill_decoder`][refattn.sea.decoder.distill_decoder]: a one-layer convolution over the
  fixed decoder's log masses plus a relative-position term,
  ``z_b = theta_0 f_b + theta_1 f_{b-1} + theta_2 f_{b+1} + theta_3 t_b + theta_4 t_b^2``,
  ``t_b = (b + 1/2)/K``. It is a small stand-in for SEA's MLP + CNN decoder, chosen because the
  logits are linear in ``theta``: the KL part of the distillation loss is then convex (a log-linear
  model), and ``theta = (1, 0, 0, 0, 0)`` is exactly the fixed decoder, so distillation starts from
  (b) and can only move to a lower training loss. The loss (SEA's distillation, the docs' SEA page, distillation):
  ``mean_i [KL(A_i^down || A~_i) + lam |A~_i - A_i^down|^2]`` on calibration inputs, minimised by
  ``scipy.optimize.minimize`` (L-BFGS-B) with the analytic gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from refattn._validation import (
    InputError,
    InputTypeError,
    as_float_array,
    as_index_array,
    check_allocation,
    check_positive_int,
    choose_implementation,
)
from refattn.kernels.numba import sea_resample as kern
from refattn.sea.estimate import bin_starts, binned_attention, kernel_estimate, row_lengths

__all__ = ["resample_bins", "fixed_decoder", "OracleDecoder", "LogLinearDecoder", "distill_decoder",
           "decoder_loss"]

#: Floor for log masses used as *features* of the learned decoder (a zero mass maps here, not to -inf).
LOG_FLOOR = -700.0


def resample_bins(E, lengths, n_keys, n_bins, *, implementation="auto") -> np.ndarray:
    """Masses ``(..., T, K)`` on each row's own bins from the basis-bin masses ``E (..., T, n)``.

    Basis bin ``c`` covers ``[g_c, g_{c+1})`` of the full length ``S`` ([`refattn.sea.attention.bin_starts`][refattn.sea.estimate.bin_starts]
    at ``l = S``); row ``i`` sees ``w_c = min(g_{c+1}, l_i) - g_c`` of it. A row bin gets, from every
    basis bin it overlaps, ``E_c * overlap / w_c`` (uniform spreading; derived in docs/sea.md).
    Sums are preserved: ``sum_b mass_b = sum_c E_c`` over the basis bins a row sees.
    ``implementation``: ``"auto"``, ``"numba"`` or ``"numpy"`` (the twin), [`refattn.kernels.numba.sea_resample`][refattn.kernels.numba.sea_resample].
    """
    n_keys = check_positive_int(n_keys, "n_keys")
    n_bins = check_positive_int(n_bins, "n_bins")
    E = as_float_array(E, "E").astype(np.float64)
    lengths = as_index_array(lengths, "lengths", maximum=n_keys)
    if E.ndim < 2 or E.shape[-2] != lengths.size or not 1 <= E.shape[-1] <= n_keys:
        raise InputError(f"E: expected shape (..., T, n) with T = {lengths.size} rows and 1 <= n <= n_keys = "
                         f"{n_keys} basis bins, got {E.shape}")
    check_allocation(E[..., 0].size * n_bins, "E, n_bins", "the (..., T, n_bins) masses")
    implementation = choose_implementation(implementation, ("auto", "numpy", "numba"))
    n = E.shape[-1]
    g = bin_starts(np.array([n_keys]), n)[0]  # (n+1,)
    flat = np.ascontiguousarray(E.reshape((-1,) + E.shape[-2:]))  # (R, T, n)
    fn = kern.resample_numba if implementation == "numba" else kern.resample_numpy
    return fn(flat, lengths, g, int(n_keys), int(n_bins)).reshape(E.shape[:-1] + (n_bins,))


def _log_masses(mass):
    """``log`` of positive masses, ``-inf`` elsewhere (no hidden epsilon)."""
    with np.errstate(divide="ignore"):
        return np.where(mass > 0, np.log(np.where(mass > 0, mass, 1.0)), -np.inf)


def fixed_decoder(E, lengths, n_keys, n_bins) -> np.ndarray:
    """Untrained decoder (b): ``log`` of [`resample_bins`][refattn.sea.decoder.resample_bins].

    A row whose resampled masses are all ``<= 0`` (possible only with signed features, e.g.
    trigonometric, or when every feature underflowed) gets logit 0 on every bin (uniform): a
    documented fallback rather than an invalid row.
    """
    z = _log_masses(resample_bins(E, lengths, n_keys, n_bins))
    dead = ~np.isfinite(z).any(axis=-1, keepdims=True)
    return np.where(dead, 0.0, z)


class OracleDecoder:
    """Decoder (a): the exact attention binned to each row's ``K`` bins, as logits ``log A^down``.

    Holds ``q`` and ``k``; ignores the kernel estimate. ``-inf`` where a bin's exact mass is 0.
    """

    def __init__(self, q, k, *, scale=None, causal=False):
        self.q, self.k, self.scale, self.causal = q, k, scale, causal

    def __call__(self, E, lengths, n_keys, n_bins):
        return _log_masses(binned_attention(self.q, self.k, n_bins, scale=self.scale, causal=self.causal,
                                            lengths=np.asarray(lengths)))


def _features(E, lengths, n_keys, n_bins):
    """``F (..., T, K, 5)`` of [`LogLinearDecoder`][refattn.sea.decoder.LogLinearDecoder] and the non-empty bins ``(T, K)``."""
    lengths = np.asarray(lengths, dtype=np.int64)
    f = np.maximum(_log_masses(resample_bins(E, lengths, n_keys, n_bins)), LOG_FLOOR)  # (..., T, K)
    nonempty = np.diff(bin_starts(lengths, n_bins), axis=1) > 0  # (T, K)
    f = np.where(nonempty, f, LOG_FLOOR)
    prev = np.concatenate([f[..., :1], f[..., :-1]], axis=-1)
    nxt = np.concatenate([f[..., 1:], f[..., -1:]], axis=-1)
    ok_prev = np.concatenate([np.zeros_like(nonempty[:, :1]), nonempty[:, :-1]], axis=1)
    ok_next = np.concatenate([nonempty[:, 1:], np.zeros_like(nonempty[:, :1])], axis=1)
    prev = np.where(ok_prev, prev, f)  # an empty or missing neighbour reads as the bin itself
    nxt = np.where(ok_next, nxt, f)
    t = (np.arange(n_bins) + 0.5) / n_bins  # (K,)
    t = np.broadcast_to(t, f.shape)
    first = np.broadcast_to(np.arange(n_bins) == 0, f.shape).astype(np.float64)  # the first keys (a "sink")
    last_bin = n_bins - 1 - np.argmax(nonempty[:, ::-1], axis=1)  # (T,) the row's last non-empty bin
    last = np.broadcast_to(np.arange(n_bins)[None, :] == last_bin[:, None], f.shape).astype(np.float64)
    return np.stack([f, prev, nxt, t, t * t, first, last], axis=-1), nonempty


@dataclass
class LogLinearDecoder:
    """Decoder (c): ``z = F theta`` (module docstring); ``theta = (1, 0, 0, 0, 0)`` is the fixed decoder."""

    theta: np.ndarray = field(default_factory=lambda: np.array([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]))

    def __call__(self, E, lengths, n_keys, n_bins):
        F, nonempty = _features(E, lengths, n_keys, n_bins)
        return np.where(nonempty, F @ np.asarray(self.theta, dtype=np.float64), -np.inf)


def decoder_loss(theta, F, teacher, nonempty, valid, lam):
    """Distillation loss and its gradient in ``theta``: mean over valid rows of
    ``KL(teacher || A~) + lam |A~ - teacher|^2``, ``A~ = softmax(F theta)`` over non-empty bins."""
    z = np.where(nonempty, F @ theta, -np.inf)  # (R, K)
    zmax = z.max(axis=-1, keepdims=True)
    e = np.exp(z - zmax)
    a = e / e.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(teacher > 0, teacher * (np.log(teacher) - np.log(a)), 0.0).sum(axis=-1)
    r = a - teacher
    loss = kl + lam * (r * r).sum(axis=-1)
    g = (a - teacher) + lam * 2.0 * a * (r - (a * r).sum(axis=-1, keepdims=True))  # d loss / d z, (R, K)
    g = np.where(nonempty, g, 0.0)
    n = max(1, int(valid.sum()))
    grad = np.einsum("rk,rkp->p", g[valid], F[valid]) / n
    return float(loss[valid].sum() / n), grad


def distill_decoder(calibration, *, n_bins, W, n_basis=None, basis="bins", scale=None, causal=False, lam=1.0,
                    maxiter=200) -> LogLinearDecoder:
    """Learn a [`LogLinearDecoder`][refattn.sea.decoder.LogLinearDecoder] from a teacher's attention (SEA's distillation, the docs' SEA page, distillation).

    ``calibration``: a list of ``(q, k)`` pairs (each ``(T, H)`` and ``(S, H)``, or with a heads axis).
    ``W (m, H)``: the feature draw the decoder will be used with (pass the same ``W`` to
    [`refattn.sea.attention.sea_attention`][refattn.sea.attention.sea_attention]). The teacher is `refattn.sea.attention.binned_attention`.
    """
    from scipy.optimize import minimize

    if not isinstance(calibration, (list, tuple)) or not calibration:
        raise InputError("calibration: need a non-empty list of (q, k) pairs")
    n_bins = check_positive_int(n_bins, "n_bins")
    maxiter = check_positive_int(maxiter, "maxiter", maximum=10**6)
    W = as_float_array(W, "W").astype(np.float64)
    if W.ndim != 2 or W.shape[0] < 1:
        raise InputError(f"W: expected a projection (m, H) with m >= 1, got shape {W.shape}")
    Fs, ts, nes, vals = [], [], [], []
    for index, item in enumerate(calibration):
        try:
            q, k = item
        except (TypeError, ValueError):
            raise InputTypeError("calibration: expected a list of (q, k) pairs") from None
        try:
            E, _ = kernel_estimate(q, k, n_basis=n_bins if n_basis is None else n_basis, basis=basis, W=W,
                                   scale=scale, causal=causal)
        except (TypeError, ValueError) as exc:
            if str(exc).startswith(("q:", "k:", "q, k:")):
                raise type(exc)(f"calibration[{index}]: {exc}") from None
            raise
        S, T = np.shape(k)[-2], np.shape(q)[-2]
        lengths = row_lengths(T, S, causal)
        F, nonempty = _features(E, lengths, S, n_bins)
        teacher = binned_attention(q, k, n_bins, scale=scale, causal=causal)
        F = F.reshape(-1, T, n_bins, F.shape[-1])
        teacher = teacher.reshape(-1, T, n_bins)
        for h in range(F.shape[0]):
            Fs.append(F[h])
            ts.append(teacher[h])
            nes.append(nonempty)
            vals.append(lengths > 0)
    F = np.concatenate(Fs)
    teacher = np.concatenate(ts)
    nonempty = np.concatenate(nes)
    valid = np.concatenate(vals)
    theta0 = LogLinearDecoder().theta
    res = minimize(decoder_loss, theta0, args=(F, teacher, nonempty, valid, float(lam)), jac=True,
                   method="L-BFGS-B", options={"maxiter": int(maxiter)})
    return LogLinearDecoder(np.asarray(res.x, dtype=np.float64))
