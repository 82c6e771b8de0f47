"""attention_backward against central finite differences (the mpmath comparison is in test_precise).

For L(q, k, v) = sum(dout * O), central differences with step h have error
O(h^2 |L'''|) + O(eps |L| / h); with h = 1e-5 and O(1) inputs both are below 1e-8, so the
assertion uses 1e-6 relative to the gradient's size. Deterministic.
"""

import numpy as np
import pytest

from refattn import attention_backward, softmax_attention


def _fd_grad(f, x, h=1e-5):
    g = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        g[idx] = (f(xp) - f(xm)) / (2 * h)
    return g


def _check(q, k, v, dout, grads, kw):
    loss = lambda q_, k_, v_: float(np.sum(dout * softmax_attention(q_, k_, v_, **kw)))  # noqa: E731
    fd = (
        _fd_grad(lambda x: loss(x, k, v), q),
        _fd_grad(lambda x: loss(q, x, v), k),
        _fd_grad(lambda x: loss(q, k, x), v),
    )
    return [np.abs(g - f).max() / max(1.0, np.abs(f).max()) for g, f in zip(grads, fd)]


KWARGS = [
    {},
    {"causal": True},
    {"causal": "top_left"},
    {"scale": 0.7, "bias": np.linspace(-2, 2, 5 * 6).reshape(5, 6)},
    {"mask": (np.arange(30).reshape(5, 6) % 4) != 1},
    {"key_lengths": np.array([6, 2])},
]


@pytest.mark.parametrize("kw", KWARGS, ids=["plain", "causal", "top_left", "bias", "mask", "padded"])
def test_backward_matches_finite_differences(kw):
    rng = np.random.default_rng(11)
    q = rng.standard_normal((2, 5, 3))
    k = rng.standard_normal((2, 6, 3))
    v = rng.standard_normal((2, 6, 4))
    dout = rng.standard_normal((2, 5, 4))
    rel = _check(q, k, v, dout, attention_backward(q, k, v, dout, **kw), kw)
    print(kw.keys(), rel)
    assert max(rel) <= 1e-6, rel


def test_backward_broadcast_inputs_are_summed():
    """k, v shared across the batch: their gradients are the sums of the per-item gradients."""
    rng = np.random.default_rng(12)
    q = rng.standard_normal((3, 4, 2))
    k = rng.standard_normal((5, 2))
    v = rng.standard_normal((1, 5, 3))
    dout = rng.standard_normal((3, 4, 3))
    dq, dk, dv = attention_backward(q, k, v, dout, causal=True)
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape
    rel = _check(q, k, v, dout, (dq, dk, dv), {"causal": True})
    assert max(rel) <= 1e-6, rel


def test_fully_masked_rows_have_zero_gradient():
    rng = np.random.default_rng(13)
    q, k, v = rng.standard_normal((6, 3)), rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    dq, dk, dv = attention_backward(q, k, v, np.ones((6, 2)), causal=True)  # T > S: rows 0, 1 see nothing
    assert np.all(dq[:2] == 0) and np.all(np.isfinite(dq)) and np.all(np.isfinite(dk))


def test_finite_difference_check_has_power():
    """Power twin: the same check rejects a backward that forgets the delta_i term."""
    rng = np.random.default_rng(11)
    q, k, v = rng.standard_normal((5, 3)), rng.standard_normal((6, 3)), rng.standard_normal((6, 4))
    dout = rng.standard_normal((5, 4))
    s = 1 / np.sqrt(3)
    P = softmax_attention(q, k, np.eye(6))  # P itself
    ds_wrong = P * (dout @ v.T)  # missing "- delta_i"
    wrong = (s * ds_wrong @ k, s * ds_wrong.T @ q, P.T @ dout)
    rel = _check(q, k, v, dout, wrong, {})
    assert max(rel) > 1e-3, rel
