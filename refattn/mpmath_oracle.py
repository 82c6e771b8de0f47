r"""Arbitrary-precision attention (mpmath): the oracle for the float64 oracle.

The same mathematics as [`refattn.exact`][refattn.exact] (the docs' exact-attention page), evaluated with
``mpmath`` at ``dps`` significant decimal digits (default 50). Inputs are float arrays;
every float is converted exactly (a binary float is an exact rational), the scale too,
so the only rounding is mpmath's own, far below float64's. Results are returned rounded
to the nearest float64 (``as_float=True``) or as object arrays of ``mpmath.mpf``.

There is no max subtraction and no overflow: mpmath's exponent range is unbounded, so
``exp(1e4)`` and ``exp(-1e4)`` are represented exactly enough. This makes it the judge
for adversarial inputs (logits 1e4 apart, near-ties, huge and tiny scales, long rows of
equal logits) on which a float64 implementation might lose accuracy.

Cost is ``O(T S (H + Hv))`` mpmath operations per batch item, so only tiny shapes are
accepted (`MAX_WORK`).
"""

from __future__ import annotations

import mpmath
import numpy as np

from refattn._validation import InputError, as_float_array, check_bool, check_positive_int
from refattn.problem import attention_problem, sum_to_shape

__all__ = ["softmax_attention_mp", "attention_backward_mp", "MAX_WORK"]

#: Largest batch * T * S * (H + Hv) accepted (about a second of mpmath work).
MAX_WORK = 2_000_000


def _check_work(prob):
    work = int(np.prod(prob.batch_shape, dtype=np.int64)) * prob.T * prob.S * (prob.H + prob.Hv)
    if work > MAX_WORK:
        raise InputError(
            f"q, k, v: too large for the arbitrary-precision oracle (batch*T*S*(H+Hv) = {work} > {MAX_WORK})"
        )


def _item_probabilities(q, k, scale, allowed, bias):
    """mp logits -> (P as list of lists of mpf, lse list). Masked entries are None in logits."""
    T, S = q.shape[0], k.shape[0]
    s = mpmath.mpf(scale)
    qm = [[mpmath.mpf(float(x)) for x in row] for row in q]
    km = [[mpmath.mpf(float(x)) for x in row] for row in k]
    P, lse = [], []
    for i in range(T):
        logits = []
        for j in range(S):
            if allowed is not None and not allowed[i, j]:
                logits.append(None)
                continue
            b = 0 if bias is None else bias[i, j]
            if b == -np.inf:
                logits.append(None)
                continue
            logits.append(s * mpmath.fdot(qm[i], km[j]) + mpmath.mpf(float(b)))
        live = [x for x in logits if x is not None]
        if not live:
            P.append([mpmath.mpf(0)] * S)
            lse.append(mpmath.mpf("-inf"))
            continue
        m = max(live)
        total = mpmath.fsum(mpmath.exp(x - m) for x in live)
        lse_i = m + mpmath.log(total)
        P.append([mpmath.mpf(0) if x is None else mpmath.exp(x - lse_i) for x in logits])
        lse.append(lse_i)
    return P, lse


def _items(prob):
    allowed = prob.allowed()
    allowed = None if allowed is None else np.broadcast_to(allowed, prob.batch_shape + (prob.T, prob.S))
    for idx, q, k, v, _mask, bias, _klen in prob.items():
        yield idx, q, k, v, (None if allowed is None else allowed[idx]), bias


def _round_nearest(x) -> float:
    """The float64 nearest to an mpf (``float(mpf)`` truncates, which can be 1 ulp off)."""
    return mpmath.libmp.to_float(mpmath.mpf(x)._mpf_, rnd=mpmath.libmp.round_nearest)


def _to_out(a, as_float):
    if not as_float:
        return a
    flat = np.array([_round_nearest(x) for x in a.ravel()], dtype=np.float64)
    return flat.reshape(a.shape)


def softmax_attention_mp(
    q, k, v, *, scale=None, causal=False, mask=None, bias=None, key_lengths=None,
    return_lse=False, dps=50, as_float=True,
):
    """Exact softmax attention at ``dps`` decimal digits; arguments as [`refattn.softmax_attention`][refattn.exact.softmax_attention].

    Returns float64 arrays (each entry the correctly rounded mp value) or, with
    ``as_float=False``, object arrays of ``mpmath.mpf``.

    Examples
    --------
    >>> import numpy as np
    >>> q = np.array([[1e4], [0.0]]); k = np.array([[1.0], [-1.0]]); v = np.array([[1.0], [2.0]])
    >>> softmax_attention_mp(q, k, v, scale=1.0)
    array([[1. ],
           [1.5]])
    """
    dps = check_positive_int(dps, "dps", minimum=20, maximum=10_000)
    as_float = check_bool(as_float, "as_float")
    prob = attention_problem(q, k, v, scale=scale, causal=causal, mask=mask, bias=bias, key_lengths=key_lengths)
    _check_work(prob)
    out = np.empty(prob.batch_shape + (prob.T, prob.Hv), dtype=object)
    lse = np.empty(prob.batch_shape + (prob.T,), dtype=object)
    with mpmath.workdps(dps):
        for idx, qb, kb, vb, allowed, bias_b in _items(prob):
            P, lse_b = _item_probabilities(qb, kb, prob.scale, allowed, bias_b)
            vm = [[mpmath.mpf(float(x)) for x in row] for row in vb]
            for i in range(prob.T):
                for h in range(prob.Hv):
                    out[idx + (i, h)] = mpmath.fsum(P[i][j] * vm[j][h] for j in range(prob.S))
                lse[idx + (i,)] = lse_b[i]
    out, lse = _to_out(out, as_float), _to_out(lse, as_float)
    return (out, lse) if return_lse else out


def attention_backward_mp(
    q, k, v, dout, *, scale=None, causal=False, mask=None, bias=None, key_lengths=None, dps=50, as_float=True,
):
    """``(dq, dk, dv)`` at ``dps`` digits, by the formulas of [`refattn.attention_backward`][refattn.exact.attention_backward].

    Gradients of broadcast inputs are summed back to the input's shape, as there.
    """
    dps = check_positive_int(dps, "dps", minimum=20, maximum=10_000)
    as_float = check_bool(as_float, "as_float")
    prob = attention_problem(q, k, v, scale=scale, causal=causal, mask=mask, bias=bias, key_lengths=key_lengths)
    _check_work(prob)
    d_o = as_float_array(dout, "dout")
    out_shape = prob.batch_shape + (prob.T, prob.Hv)
    if d_o.shape != out_shape:
        raise InputError(f"dout: expected the output's shape {out_shape}, got {d_o.shape}")
    T, S, H, Hv = prob.T, prob.S, prob.H, prob.Hv
    dq = np.empty(prob.batch_shape + (T, H), dtype=object)
    dk = np.empty(prob.batch_shape + (S, H), dtype=object)
    dv = np.empty(prob.batch_shape + (S, Hv), dtype=object)
    with mpmath.workdps(dps):
        s = mpmath.mpf(prob.scale)
        for idx, qb, kb, vb, allowed, bias_b in _items(prob):
            P, _ = _item_probabilities(qb, kb, prob.scale, allowed, bias_b)
            mp = lambda a: [[mpmath.mpf(float(x)) for x in row] for row in a]  # noqa: E731
            qm, km, vm, gm = mp(qb), mp(kb), mp(vb), mp(d_o[idx])
            o = [[mpmath.fsum(P[i][j] * vm[j][h] for j in range(S)) for h in range(Hv)] for i in range(T)]
            delta = [mpmath.fdot(gm[i], o[i]) for i in range(T)]
            ds = [[P[i][j] * (mpmath.fdot(gm[i], vm[j]) - delta[i]) for j in range(S)] for i in range(T)]
            for j in range(S):
                for h in range(Hv):
                    dv[idx + (j, h)] = mpmath.fsum(P[i][j] * gm[i][h] for i in range(T))
                for h in range(H):
                    dk[idx + (j, h)] = s * mpmath.fsum(ds[i][j] * qm[i][h] for i in range(T))
            for i in range(T):
                for h in range(H):
                    dq[idx + (i, h)] = s * mpmath.fsum(ds[i][j] * km[j][h] for j in range(S))
        # sum broadcast dims in mp arithmetic, then round once
        grads = (sum_to_shape(dq, prob.q.shape), sum_to_shape(dk, prob.k.shape), sum_to_shape(dv, prob.v.shape))
    return tuple(_to_out(g, as_float) for g in grads)
