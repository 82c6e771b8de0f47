"""The float64 oracle against the arbitrary-precision (mpmath) oracle on adversarial inputs.

Each case asserts ``|O_64 - O_mp| <= forward_error_bound`` row by row: a derived, rigorous
bound (docs/exact.md, "Forward error of the oracle"), not a tuned tolerance. The power
twins show the same comparison rejects a float32 computation and a naive (unshifted)
softmax. Deterministic tests: no false-failure probability.
"""

import math

import mpmath
import numpy as np
import pytest

from refattn import attention_backward, attention_backward_mp, softmax_attention, softmax_attention_mp
from refattn.exact import forward_error_bound


def _adversarial_cases():
    """(name, q, k, v, kwargs): inputs that break careless softmax implementations."""
    rng = np.random.default_rng(20261125)
    v5 = rng.standard_normal((5, 3))
    k5 = np.array([[1.0, 0.0], [1.0 - 1e-12, 0.0], [0.5, 0.5], [0.0, 1.0], [-1.0, 0.0]])
    yield "logits 1e4 apart", np.array([[1e4, 0.0], [-1e4, 3.0]]), k5, v5, {"scale": 1.0}
    yield "logits 1e4 apart, causal", np.array([[1e4, 0.0], [-1e4, 3.0]]), k5, v5, {"scale": 1.0, "causal": True}
    # near-ties: logits equal to within 1e-13 (P ~ 1/2 each, sensitive to rounding)
    yield "near-tie", np.array([[1.0, 0.0]]), np.array([[1.0, 0.0], [1.0 - 1e-13, 1e-13]]), v5[:2], {"scale": 1.0}
    # huge scale: P is one-hot up to exp(-huge); tiny scale: P is uniform up to O(scale)
    q = rng.standard_normal((3, 4))
    k = rng.standard_normal((6, 4))
    v = rng.standard_normal((6, 2))
    yield "huge scale", q, k, v, {"scale": 1e6}
    yield "tiny scale", q, k, v, {"scale": 1e-300}
    # a long row of equal logits: P = 1/S exactly, the sum of S equal terms must not drift
    S = 1500
    yield "long equal row", np.ones((2, 2)), np.ones((S, 2)), rng.standard_normal((S, 1)), {}
    # large-magnitude logits that cancel: q.k = 1e8 - 1e8 + small
    yield "cancelling logits", np.array([[1e4, 1e4]]), np.array([[1e4, -1e4 + 1e-3], [1.0, 1.0]]), v5[:2], {"scale": 1.0}
    # masks, bias with -inf, padding, fully masked row, T != S both alignments
    mask = rng.random((4, 5)) < 0.6
    mask[2] = False
    bias = np.where(rng.random((4, 5)) < 0.2, -np.inf, rng.standard_normal((4, 5)) * 50)
    q4 = rng.standard_normal((4, 2)) * 30
    yield "mask+bias", q4, k5, v5, {"mask": mask, "bias": bias}
    yield "top-left T<S", q4, k5, v5, {"causal": "top_left"}
    yield "bottom-right T>S", rng.standard_normal((7, 2)) * 30, k5, v5, {"causal": True}
    yield "padded batch", np.stack([q4, q4]), np.stack([k5, k5]), v5, {"key_lengths": np.array([5, 2])}


CASES = list(_adversarial_cases())


@pytest.mark.parametrize("name,q,k,v,kw", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("implementation", ["dense", "numpy", "numba"])
def test_float64_oracle_within_derived_bound(name, q, k, v, kw, implementation):
    """|O_64 - O_mp| <= forward_error_bound, per row, for every implementation."""
    out, lse = softmax_attention(q, k, v, implementation=implementation, return_lse=True, block_k=2, **kw)
    ref, ref_lse = softmax_attention_mp(q, k, v, return_lse=True, **kw)
    bound = forward_error_bound(q, k, v, **kw)
    err = np.abs(out - ref).max(axis=-1, initial=0.0)
    print(name, implementation, "max err", err.max(), "bound at worst", bound.ravel()[np.argmax(err)])
    assert np.all(err <= bound), (err, bound)
    # lse: exact -inf rows agree; finite rows agree to the same logit-level accuracy
    assert np.array_equal(np.isneginf(lse), np.isneginf(ref_lse))
    fin = np.isfinite(ref_lse)
    np.testing.assert_allclose(lse[fin], ref_lse[fin], rtol=1e-12, atol=1e-12)


def test_float32_computation_violates_float64_bound():
    """Power twin: the float64 bound is tight enough to reject float32 arithmetic."""
    name, q, k, v, kw = CASES[0]
    out32 = softmax_attention(q, k, v, dtype=np.float32, **kw)
    ref = softmax_attention_mp(q, k, v, **kw)
    assert np.any(np.abs(out32 - ref).max(axis=-1) > forward_error_bound(q, k, v, **kw))


def test_naive_softmax_fails_on_adversarial_logits():
    """Power twin: softmax without max subtraction overflows on logits 1e4 apart; the oracle does not."""
    name, q, k, v, kw = CASES[0]
    with np.errstate(over="ignore", invalid="ignore"):
        e = np.exp(q @ k.T)
        naive = (e / e.sum(axis=1, keepdims=True)) @ v
    ref = softmax_attention_mp(q, k, v, **kw)
    assert not np.all(np.abs(naive - ref) <= 1e-6)  # NaN rows compare False
    assert np.all(np.isfinite(softmax_attention(q, k, v, **kw)))


def test_mp_oracle_closed_forms():
    """The mpmath oracle on inputs with closed-form answers (two keys: a logistic; equal logits: the mean)."""
    d = 3.25
    q = np.array([[1.0]])
    k = np.array([[d], [0.0]])
    v = np.array([[1.0], [0.0]])
    out = softmax_attention_mp(q, k, v, scale=1.0, as_float=False)
    with mpmath.workdps(60):
        expected = 1 / (1 + mpmath.exp(-mpmath.mpf(d)))
        assert abs(out[0, 0] - expected) < mpmath.mpf(10) ** -45
    vv = np.arange(7.0).reshape(7, 1)
    assert softmax_attention_mp(np.zeros((1, 2)), np.zeros((7, 2)), vv)[0, 0] == 3.0


def test_mp_oracle_stable_in_precision():
    """50 and 100 digits agree to float64 rounding (the mp result does not depend on dps)."""
    name, q, k, v, kw = CASES[4]
    a = softmax_attention_mp(q, k, v, dps=50, **kw)
    b = softmax_attention_mp(q, k, v, dps=100, **kw)
    assert np.array_equal(a, b)


def test_mp_oracle_rejects_large_shapes():
    with pytest.raises(ValueError, match="too large"):
        softmax_attention_mp(np.zeros((300, 64)), np.zeros((300, 64)), np.zeros((300, 64)))


def test_backward_against_mp():
    """attention_backward matches the mpmath backward (masks, causal, bias) to 1e-12 relative."""
    rng = np.random.default_rng(7)
    q, k, v = rng.standard_normal((2, 5, 3)) * 3, rng.standard_normal((2, 6, 3)), rng.standard_normal((6, 2))
    dout = rng.standard_normal((2, 5, 2))
    mask = rng.random((5, 6)) < 0.7
    mask[1] = False
    for kw in ({}, {"causal": True}, {"causal": "top_left", "mask": mask},
               {"bias": rng.standard_normal((5, 6)), "key_lengths": np.array([6, 3])}):
        got = attention_backward(q, k, v, dout, **kw)
        ref = attention_backward_mp(q, k, v, dout, **kw)
        for g, r, n in zip(got, ref, ("dq", "dk", "dv")):
            assert g.shape == r.shape, n
            scale = max(1.0, np.abs(r).max())
            assert np.abs(g - r).max() <= 1e-12 * scale, (n, kw, np.abs(g - r).max())


@pytest.mark.parametrize("a", [1.0, 30.0])
def test_forward_error_bound_pinned_by_hand(a):
    """The bound's value on one input, computed by hand from its formula, so no term can be
    dropped or rescaled unnoticed (the mpmath cases above only show it is not too small).

    q = [[a, 0]], k = I_2, v = [[1], [-1]], scale 1, float64 (u = 2^-53), H = S = 2: the
    absolute-product term is max_j a |k_j1| = a, the logits are [a, 0] so the range is R = a,
    Delta = gamma_4 a + 2 u a + gamma_14 and the bound is (exp(2 Delta) - 1 + 2 gamma_4) * 1.
    At a = 1 the sum terms dominate, at a = 30 the conditioning term; halving any one of the four
    terms moves the bound by far more than the 1e-12 the pin allows (checked below)."""
    u = 2.0**-53
    g = lambda n: n * u / (1 - n * u)  # noqa: E731
    delta = g(4) * a + 2 * u * a + g(14)
    by_hand = math.expm1(2 * delta) + 2 * g(4)
    q, k, v = np.array([[a, 0.0]]), np.eye(2), np.array([[1.0], [-1.0]])
    bound = forward_error_bound(q, k, v, scale=1.0)
    assert bound.shape == (1,)
    assert bound[0] == pytest.approx(by_hand, rel=1e-12, abs=0.0)  # ~48 u: no absolute slack
    # the bound scales with max |v_j| over the visible keys (here 0.5, not 1)
    assert forward_error_bound(q, k, v * 0.5, scale=1.0)[0] == pytest.approx(by_hand / 2, rel=1e-12, abs=0.0)
    for drop in range(4):  # the bound with term `drop` halved
        t = [g(4) * a, 2 * u * a, g(14), 2 * g(4)]
        t[drop] /= 2
        assert abs(math.expm1(2 * (t[0] + t[1] + t[2])) + t[3] - by_hand) > 1e-3 * by_hand
