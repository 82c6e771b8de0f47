"""The exact oracle (refattn.exact): properties of the forward pass by Hypothesis and by construction,
and attention_backward against central finite differences (the mpmath comparison is in
test_mpmath_oracle).

Deterministic. Forward tolerances are rounding-level: ``TOL * max|v|`` with TOL = 64 eps, far below
any modelling error (a wrong mask, scale or axis moves outputs by O(1)). Backward: for
L(q, k, v) = sum(dout * O), central differences with step h have error O(h^2 |L'''|) +
O(eps |L| / h); with h = 1e-5 and O(1) inputs both are below 1e-8, so the assertion uses 1e-6
relative to the gradient's size.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proofs_tests._spies import record_calls
from refattn import attention_backward, attention_probabilities, causal_mask, softmax_attention
from refattn.testing import attention_inputs
from refattn.precision import kernel_reference

EPS = np.finfo(np.float64).eps


TOL = 64 * EPS


def _vmax(v):
    return max(1.0, float(np.max(np.abs(v)))) if np.size(v) else 1.0


@given(attention_inputs())
def test_rows_of_P_are_probabilities(x):
    """P >= 0; each row sums to 1, or is all zeros (and lse = -inf) when the query sees no key."""
    P, lse = attention_probabilities(x.q, x.k, return_lse=True, **x.kwargs)
    assert np.all(P >= 0)
    sums = P.sum(axis=-1)
    dead = np.isneginf(lse)
    assert np.all(np.abs(sums[~dead] - 1) <= (x.k.shape[-2] + 4) * EPS)
    assert np.all(sums[dead] == 0)
    out, lse_out = softmax_attention(x.q, x.k, x.v, return_lse=True, **x.kwargs)
    assert np.all(out[np.isneginf(lse_out)] == 0)
    assert np.array_equal(np.broadcast_to(lse, lse_out.shape), lse_out)


@given(attention_inputs(masks=False, causal=False), st.randoms(use_true_random=False))
def test_query_permutation_equivariance(x, r):
    """Permuting queries permutes the output rows."""
    T = x.q.shape[-2]
    perm = np.array(r.sample(range(T), T))
    out = softmax_attention(x.q, x.k, x.v)
    out_p = softmax_attention(x.q[..., perm, :], x.k, x.v)
    assert np.abs(out_p - out[..., perm, :]).max() <= TOL * _vmax(x.v)


@given(attention_inputs(masks=False, causal=False), st.randoms(use_true_random=False))
def test_key_value_permutation_invariance(x, r):
    """Permuting (key, value) pairs together leaves the output unchanged."""
    S = x.k.shape[-2]
    perm = np.array(r.sample(range(S), S))
    out = softmax_attention(x.q, x.k, x.v)
    out_p = softmax_attention(x.q, x.k[..., perm, :], x.v[..., perm, :])
    assert np.abs(out_p - out).max() <= TOL * _vmax(x.v)


@given(attention_inputs(), st.floats(-1e3, 1e3))
def test_row_shift_invariance(x, c):
    """Adding a per-row constant to the logits (via bias) does not change the output."""
    T, S = x.q.shape[-2], x.k.shape[-2]
    shift = np.random.default_rng(abs(int(c))).uniform(-abs(c), abs(c), size=(T, 1))
    out = softmax_attention(x.q, x.k, x.v, **x.kwargs)
    out_s = softmax_attention(x.q, x.k, x.v, bias=np.broadcast_to(shift, (T, S)), **x.kwargs)
    # the shifted logits reach |c| ~ 1e3: conditioning 2 u |c| per the forward error bound
    assert np.abs(out_s - out).max(initial=0) <= (TOL + 4 * EPS * abs(c)) * _vmax(x.v)


@pytest.mark.parametrize("alignment", ["bottom_right", "top_left"])
@pytest.mark.parametrize("implementation", ["dense", "numpy", "numba"])
@pytest.mark.parametrize("T,S", [(9, 9), (5, 12), (12, 5)])
def test_causal_canary(alignment, implementation, T, S):
    """A huge change to a future key/value leaves every earlier output bit-identical."""
    rng = np.random.default_rng(T * 100 + S)
    q, k, v = rng.standard_normal((T, 8)), rng.standard_normal((S, 8)), rng.standard_normal((S, 3))
    allowed = causal_mask(T, S, alignment)
    kw = dict(causal=alignment, implementation=implementation, block_q=2, block_k=3)
    out = softmax_attention(q, k, v, **kw)
    for j in range(S):
        k2, v2 = k.copy(), v.copy()
        k2[j] *= 1e6
        v2[j] = 1e6
        out2 = softmax_attention(q, k2, v2, **kw)
        blind = ~allowed[:, j]  # queries that may not see key j
        assert np.array_equal(out[blind], out2[blind]), (j, alignment)


def test_causal_alignments_documented():
    """bottom_right: query i sees keys j <= i + S - T; top_left: j <= i; equal when T == S."""
    assert np.array_equal(causal_mask(3, 5), np.arange(5)[None] <= np.arange(3)[:, None] + 2)
    assert np.array_equal(causal_mask(3, 5, "top_left"), np.arange(5)[None] <= np.arange(3)[:, None])
    assert np.array_equal(causal_mask(4, 4), causal_mask(4, 4, "top_left"))
    assert np.array_equal(causal_mask(4, 4), np.tril(np.ones((4, 4), dtype=bool)))
    # T > S bottom-right: the first T - S queries see nothing -> zeros and lse -inf
    rng = np.random.default_rng(0)
    out, lse = softmax_attention(rng.standard_normal((5, 2)), rng.standard_normal((3, 2)),
                                 rng.standard_normal((3, 2)), causal=True, return_lse=True)
    assert np.all(out[:2] == 0) and np.all(np.isneginf(lse[:2])) and np.all(np.isfinite(lse[2:]))


@given(attention_inputs(masks=False, causal=False), st.data())
def test_mask_equals_slicing_keys_out(x, data):
    """A key mask shared by all queries gives the same output as deleting those keys."""
    S = x.k.shape[-2]
    keep = np.array(data.draw(st.lists(st.booleans(), min_size=S, max_size=S)))
    if not keep.any():
        keep[0] = True
    out = softmax_attention(x.q, x.k, x.v, mask=np.broadcast_to(keep, (x.q.shape[-2], S)))
    sliced = softmax_attention(x.q, x.k[..., keep, :], x.v[..., keep, :])
    assert np.abs(out - sliced).max() <= TOL * _vmax(x.v)


@given(attention_inputs(masks=False, causal=False, dtypes=(np.float64,)))
def test_key_lengths_equal_slicing(x):
    """key_lengths = L gives the output of the first L keys."""
    S = x.k.shape[-2]
    for L in {1, S // 2 + 1, S}:
        a = softmax_attention(x.q, x.k, x.v, key_lengths=L)
        b = softmax_attention(x.q, x.k[..., :L, :], x.v[..., :L, :])
        assert np.abs(a - b).max() <= TOL * _vmax(x.v)


@given(attention_inputs(masks=False, causal=False, dtypes=(np.float64,)))
def test_tiny_scale_gives_mean_of_values(x):
    """scale -> 0: uniform attention, the output is the mean of v."""
    out = softmax_attention(x.q, x.k, x.v, scale=1e-300)
    mean = np.broadcast_to(x.v.mean(axis=-2, keepdims=True), out.shape)
    assert np.abs(out - mean).max() <= (x.k.shape[-2] + 8) * EPS * _vmax(x.v)


@given(attention_inputs(masks=False, causal=False, dtypes=(np.float64,), max_batch_dims=0))
def test_large_scale_gives_argmax_row(x):
    """A large scale makes attention one-hot on the argmax key (when the max is unique)."""
    logits = x.q @ x.k.T
    srt = np.sort(logits, axis=-1)
    gap = (srt[:, -1] - srt[:, -2]).min() if x.k.shape[0] > 1 else 1.0
    if gap <= 1e-9 * max(1.0, np.abs(logits).max()):
        return  # a (near-)tie: no unique argmax to compare with
    scale = 800.0 / gap  # every non-max probability <= exp(-800) = 0 in float64
    out = softmax_attention(x.q, x.k, x.v, scale=scale)
    assert np.array_equal(out, x.v[np.argmax(logits, axis=-1)])


@given(attention_inputs())
def test_batched_equals_loop(x):
    """A batched call equals a loop over batch items (with broadcast inputs and masks)."""
    out, lse = softmax_attention(x.q, x.k, x.v, return_lse=True, **x.kwargs)
    batch = out.shape[:-2]
    T, S = x.q.shape[-2], x.k.shape[-2]
    for idx in np.ndindex(*batch):
        item = lambda a, tail: np.broadcast_to(a, batch + tail)[idx]  # noqa: E731
        kw = dict(x.kwargs)
        if "mask" in kw:
            kw["mask"] = item(kw["mask"], (T, S))
        if "key_lengths" in kw:
            kw["key_lengths"] = item(kw["key_lengths"], ())
        o, l = softmax_attention(item(x.q, (T, x.q.shape[-1])), item(x.k, (S, x.k.shape[-1])),
                                 item(x.v, (S, x.v.shape[-1])), return_lse=True, **kw)
        assert np.abs(o - out[idx]).max(initial=0) <= TOL * _vmax(x.v)
        assert np.array_equal(np.isneginf(l), np.isneginf(lse[idx]))


@given(attention_inputs(dtypes=(np.float32, np.float16)))
def test_low_precision_inputs_give_float64_answer(x):
    """float32/float16 inputs are computed in float64: identical to upcasting them first."""
    out = softmax_attention(x.q, x.k, x.v, **x.kwargs)
    assert out.dtype == np.float64
    up = softmax_attention(x.q.astype(np.float64), x.k.astype(np.float64), x.v.astype(np.float64), **x.kwargs)
    assert np.array_equal(out, up)


def test_empty_inputs_give_empty_outputs():
    """T = 0 gives (..., 0, Hv); S = 0 makes every row fully masked (zeros, lse -inf)."""
    out, lse = softmax_attention(np.zeros((2, 0, 4)), np.zeros((2, 3, 4)), np.zeros((2, 3, 5)), return_lse=True)
    assert out.shape == (2, 0, 5) and lse.shape == (2, 0)
    for impl in ("dense", "numpy", "numba"):
        out, lse = softmax_attention(np.ones((3, 4)), np.zeros((0, 4)), np.zeros((0, 5)),
                                     return_lse=True, implementation=impl)
        assert out.shape == (3, 5) and np.all(out == 0) and np.all(np.isneginf(lse))


def test_lse_matches_log_sum_exp():
    rng = np.random.default_rng(3)
    q, k, v = rng.standard_normal((4, 6)) * 5, rng.standard_normal((7, 6)), rng.standard_normal((7, 2))
    _, lse = softmax_attention(q, k, v, return_lse=True)
    from scipy.special import logsumexp

    np.testing.assert_allclose(lse, logsumexp(q @ k.T / np.sqrt(6), axis=-1), rtol=1e-14)


def test_attention_probabilities_times_v_is_output():
    rng = np.random.default_rng(4)
    q, k, v = rng.standard_normal((2, 4, 3)), rng.standard_normal((2, 5, 3)), rng.standard_normal((2, 5, 2))
    P = attention_probabilities(q, k, causal=True)
    np.testing.assert_allclose(P @ v, softmax_attention(q, k, v, causal=True), rtol=0, atol=4 * EPS)


def test_outputs_are_writeable_full_arrays():
    """Batch dims that only v carries still give full, writeable out and lse."""
    rng = np.random.default_rng(8)
    q, k, v = rng.standard_normal((4, 3)), rng.standard_normal((5, 3)), rng.standard_normal((2, 5, 2))
    for impl in ("dense", "numpy", "numba"):
        out, lse = softmax_attention(q, k, v, return_lse=True, implementation=impl)
        assert out.shape == (2, 4, 2) and lse.shape == (2, 4)
        assert out.flags.writeable and lse.flags.writeable
        out[...] = 0


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


# ----------------------------------------------------------------------------- flash-attn's options
def _qkvh(seed=0, spread=3.0):
    rng = np.random.default_rng([seed, 77])
    return (rng.normal(size=(2, 3, 7, 8)) * spread, rng.normal(size=(2, 3, 11, 8)), rng.normal(size=(2, 3, 11, 4)))


@pytest.mark.parametrize("window", [(2, 1), (0, 0), (3, -1), (-1, 2), (-1, -1), (20, 20)])
def test_window_is_the_band_of_keys_around_the_aligned_diagonal(window):
    """flash-attn's window_size: query i sees keys i + S - T - left <= j <= i + S - T + right (-1: unbounded)."""
    from refattn.problem import window_mask

    q, k, v = _qkvh()
    left, right = window
    i, j = np.arange(7)[:, None] + 11 - 7, np.arange(11)[None, :]
    band = ((j >= i - left) if left >= 0 else True) & ((j <= i + right) if right >= 0 else True)
    band = np.broadcast_to(band, (7, 11))
    np.testing.assert_array_equal(window_mask(7, 11, window), band)
    ref = softmax_attention(q, k, v, mask=band)
    for impl in ("dense", "numpy", "numba"):
        np.testing.assert_allclose(softmax_attention(q, k, v, window=window, implementation=impl), ref,
                                   rtol=0, atol=TOL)


def test_alibi_is_its_linear_bias():
    """ALiBi (Press et al. 2022), flash-attn's convention: logits - m |i + S - T - j|, one slope per head."""
    q, k, v = _qkvh()
    slopes = np.array([0.5, 0.25, 0.125])
    dist = np.abs(np.arange(7)[:, None] + 11 - 7 - np.arange(11)[None, :])
    ref = softmax_attention(q, k, v, bias=-slopes[:, None, None] * dist)
    for impl in ("dense", "numpy", "numba"):
        np.testing.assert_allclose(softmax_attention(q, k, v, alibi_slopes=slopes, implementation=impl), ref,
                                   rtol=0, atol=TOL)


@pytest.mark.parametrize("cap", [0.5, 2.0, 50.0])
def test_softcap_is_c_tanh_of_the_scaled_logits(cap):
    """Gemma 2 / flash-attn softcapping: c tanh(s q.k / c) before bias and masks; every path agrees."""
    q, k, v = _qkvh(seed=2)
    logits = cap * np.tanh(8**-0.5 * q @ np.swapaxes(k, -1, -2) / cap)
    logits = np.where(causal_mask(7, 11), logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    ref = (p / p.sum(-1, keepdims=True)) @ v
    for impl in ("dense", "numpy", "numba"):
        np.testing.assert_allclose(softmax_attention(q, k, v, softcap=cap, causal=True, implementation=impl), ref,
                                   rtol=0, atol=TOL)
    assert np.max(np.abs(softmax_attention(q, k, v, softcap=cap) - softmax_attention(q, k, v))) > 1e-6 or cap > 10


def test_softcap_zero_is_no_capping_and_bad_options_name_the_argument():
    q, k, v = _qkvh()
    np.testing.assert_array_equal(softmax_attention(q, k, v, softcap=0.0), softmax_attention(q, k, v))
    for kw, match in [({"softcap": -1.0}, "^softcap: must be finite"), ({"softcap": "x"}, "^softcap: expected"),
                      ({"window": (1,)}, "^window: expected"), ({"window": (-2, 0)}, "^window: expected"),
                      ({"alibi_slopes": np.array([np.nan])}, "^alibi_slopes: contains NaN"),
                      ({"alibi_slopes": np.ones(5)}, r"do not broadcast: .* alibi_slopes \(5,\)")]:
        with pytest.raises((TypeError, ValueError), match=match):
            softmax_attention(q, k, v, **kw)


def test_backward_through_the_options_matches_finite_differences():
    rng = np.random.default_rng(9)
    q, k, v = rng.normal(size=(5, 4)) * 2, rng.normal(size=(6, 4)), rng.normal(size=(6, 3))
    dout = rng.normal(size=(5, 3))
    kw = dict(softcap=1.5, window=(2, 1), alibi_slopes=np.array(0.3))
    grads = attention_backward(q, k, v, dout, **kw)
    h = 1e-6
    for g, x, idx in [(grads[0], q, (1, 2)), (grads[1], k, (3, 0)), (grads[2], v, (4, 1))]:
        e = np.zeros_like(x)
        e[idx] = h
        args = [q, k, v]
        which = [a is x for a in args].index(True)
        plus, minus = list(args), list(args)
        plus[which], minus[which] = x + e, x - e
        num = (np.sum(dout * softmax_attention(*plus, **kw)) - np.sum(dout * softmax_attention(*minus, **kw))) / (2 * h)
        assert abs(num - g[idx]) <= 1e-6 * max(1.0, abs(num)), (which, num, g[idx])


def _sink_as_a_key(q, k, v, sinks, mask):
    """The definition of an attention sink: one more key whose logit is the sink ``z`` (a key of zeros
    scored through a bias) and whose value is zero, visible to every query."""
    B = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], np.shape(sinks))
    T, S = q.shape[-2], k.shape[-2]
    k1 = np.concatenate([np.broadcast_to(k, B + k.shape[-2:]), np.zeros(B + (1, k.shape[-1]))], -2)
    v1 = np.concatenate([np.broadcast_to(v, B + v.shape[-2:]), np.zeros(B + (1, v.shape[-1]))], -2)
    bias = np.zeros(B + (T, S + 1))
    bias[..., -1] = np.broadcast_to(sinks, B)[..., None]
    m1 = np.concatenate([np.broadcast_to(mask, B + (T, S)), np.ones(B + (T, 1), bool)], -1)
    return k1, v1, bias, m1


@pytest.mark.parametrize("sinks", [np.array([0.5, -1.0, 3.0]), np.array(40.0), np.array([-np.inf, 0.0, 1.0])],
                         ids=["per head", "a dominant sink", "one head without"])
def test_sinks_are_a_key_with_logit_z_and_no_value(sinks):
    """gpt-oss's learnable sink (flash-attn's ``learnable_sink``): one more term e^z in each row's
    denominator, no value; equal to the oracle with that key appended (every path, the float32
    reference, lse). Rows that see no key (key_lengths 0) are zeros with lse = z. Deterministic."""
    q, k, v = _qkvh(seed=4)
    lengths = np.array([[11], [0]])
    allowed = causal_mask(7, 11) & (np.arange(11) < lengths[..., None, None])
    k1, v1, bias, m1 = _sink_as_a_key(q, k, v, sinks, allowed)
    ref, ref_lse = softmax_attention(q, k1, v1, bias=bias, mask=m1, return_lse=True)
    kw = dict(sinks=sinks, causal=True, key_lengths=lengths)
    for impl in ("dense", "numpy", "numba"):
        out, lse = softmax_attention(q, k, v, implementation=impl, block_k=4, return_lse=True, **kw)
        np.testing.assert_allclose(out, ref, rtol=0, atol=TOL * 4)
        np.testing.assert_allclose(lse, ref_lse, rtol=1e-14, atol=0)
    np.testing.assert_array_equal(out[1], 0.0)
    np.testing.assert_array_equal(lse[1], np.broadcast_to(sinks, (3,))[:, None] * np.ones(7))
    low, low_lse = kernel_reference(q, k, v, "float32", return_lse=True, **kw)
    np.testing.assert_allclose(low, ref, rtol=0, atol=1e-5)
    p = attention_probabilities(q, k, **kw)  # the definition's probabilities of the real keys (rows sum to < 1)
    np.testing.assert_allclose(p, attention_probabilities(q, k1, bias=bias, mask=m1)[..., :-1], rtol=0, atol=1e-15)


def test_sinks_error_bound_holds_against_mpmath():
    """forward_error_bound with a sink (one more exact term of the sum) bounds the dense and the
    streaming paths' distance from the mpmath oracle of the definition (the sink as a key).
    Deterministic."""
    from refattn.exact import forward_error_bound
    from refattn.mpmath_oracle import softmax_attention_mp

    rng = np.random.default_rng(12)
    q, k, v = rng.normal(size=(1, 2, 5, 4)) * 6, rng.normal(size=(1, 2, 9, 4)), rng.normal(size=(1, 2, 9, 3))
    sinks = np.array([2.5, -30.0])
    k1, v1, bias, m1 = _sink_as_a_key(q, k, v, sinks, np.ones((5, 9), bool))
    exact = softmax_attention_mp(q, k1, v1, bias=bias, mask=m1, scale=0.5)
    bound = forward_error_bound(q, k, v, sinks=sinks, scale=0.5)
    for impl in ("dense", "numba"):
        err = np.max(np.abs(softmax_attention(q, k, v, sinks=sinks, scale=0.5, implementation=impl) - exact), -1)
        assert np.all(err <= bound), (impl, err, bound)


def test_sinks_gradient_matches_finite_differences():
    """d/dz of sum(dout * O) = -sum_i P_i,sink (dout_i . O_i) (derived on the docs' exact-attention
    page), per head, summed over the batch; dq, dk, dv through the sink's denominator too.
    Deterministic."""
    rng = np.random.default_rng(31)
    q, k, v = rng.normal(size=(2, 3, 5, 4)) * 2, rng.normal(size=(2, 3, 6, 4)), rng.normal(size=(2, 3, 6, 3))
    dout, sinks = rng.normal(size=(2, 3, 5, 3)), np.array([0.3, 2.0, -1.0])
    kw = dict(causal=True, window=(2, 0), sink_tokens=1)
    dq, dk, dv, dz = attention_backward(q, k, v, dout, sinks=sinks, **kw)
    assert dz.shape == sinks.shape
    h = 1e-6

    def loss(q=q, k=k, v=v, z=sinks):
        return np.sum(dout * softmax_attention(q, k, v, sinks=z, **kw))

    for x, g, name in [(sinks, dz, "z"), (q, dq, "q"), (k, dk, "k"), (v, dv, "v")]:
        for idx in [(0,), (2,)] if name == "z" else [(0, 1, 2, 1), (1, 2, 0, 0)]:
            e = np.zeros_like(x)
            e[idx] = h
            num = (loss(**{name: x + e}) - loss(**{name: x - e})) / (2 * h)
            assert abs(num - g[idx]) <= 1e-6 * max(1.0, abs(num)), (name, idx, num, g[idx])
    assert len(attention_backward(q, k, v, dout, **kw)) == 3  # no sinks: the three gradients


@pytest.mark.parametrize("kw", [{}, {"causal": True}, {"sinks": np.array([0.5, -1.0, 2.0])},
                                {"causal": "top_left", "window": (2, 0)}], ids=["plain", "causal", "sinks", "window"])
def test_the_lse_gradient_matches_finite_differences(kw):
    """With dlse, the gradients are those of sum(dout * O) + sum(dlse * lse) (derived on the docs'
    exact-attention page, "The gradient of the lse"): central differences, every input, and the rows
    that see no key (T > S, causal) get none of it. Deterministic."""
    rng = np.random.default_rng(41)
    q, k, v = rng.normal(size=(2, 3, 7, 4)) * 2, rng.normal(size=(2, 3, 5, 4)), rng.normal(size=(2, 3, 5, 3))
    dout, dlse = rng.normal(size=(2, 3, 7, 3)), rng.normal(size=(2, 3, 7))
    grads = attention_backward(q, k, v, dout, dlse=dlse, **kw)
    h = 1e-6

    def loss(q=q, k=k, v=v, sinks=kw.get("sinks")):
        o, lse = softmax_attention(q, k, v, return_lse=True, **dict(kw, sinks=sinks) if sinks is not None else kw)
        return np.sum(dout * o) + np.sum(np.where(np.isfinite(lse), dlse * lse, 0.0))

    named = [("q", q), ("k", k), ("v", v)] + ([("sinks", kw["sinks"])] if "sinks" in kw else [])
    for (name, x), g in zip(named, grads):
        for idx in [(0,), (2,)] if name == "sinks" else [(0, 1, 2, 1), (1, 2, 4, 0)]:
            e = np.zeros_like(x)
            e[idx] = h
            num = (loss(**{name: x + e}) - loss(**{name: x - e})) / (2 * h)
            assert abs(num - g[idx]) <= 1e-6 * max(1.0, abs(num)), (name, idx, num, g[idx])
    plain = attention_backward(q, k, v, dout, **kw)
    assert all(np.max(np.abs(a - b)) > 1e-3 for a, b in zip(grads[:2], plain[:2]))  # power: dlse moves dq, dk
    np.testing.assert_array_equal(grads[2], plain[2])  # ... and not dv (P^T dO)
    with pytest.raises(ValueError, match="dlse"):
        attention_backward(q, k, v, dout, dlse=dlse[..., :3])


def test_sink_tokens_stay_in_the_window():
    """StreamingLLM's sink tokens: the first n keys are visible through the sliding window, still
    causal and still cut by key_lengths; no window: no change. Bad values name the argument.
    Deterministic."""
    from refattn.problem import window_mask

    q, k, v = _qkvh(seed=5)
    band = window_mask(7, 11, (2, 0))
    band[:, :3] = True
    allowed = band & causal_mask(7, 11)
    for impl in ("dense", "numpy", "numba"):
        np.testing.assert_allclose(softmax_attention(q, k, v, window=(2, 0), sink_tokens=3, causal=True,
                                                     implementation=impl),
                                   softmax_attention(q, k, v, mask=allowed), rtol=0, atol=TOL)
    np.testing.assert_array_equal(softmax_attention(q, k, v, sink_tokens=3), softmax_attention(q, k, v))
    for kw, match in [({"sink_tokens": -1}, "^sink_tokens: expected"), ({"sink_tokens": 1.5}, "^sink_tokens: expected"),
                      ({"sinks": np.array([np.nan])}, "^sinks: contains NaN"), ({"sinks": "a"}, "^sinks"),
                      ({"sinks": np.ones(5)}, r"do not broadcast: .* sinks \(5,\)"),
                      ({"sinks": np.array(1e301)}, "^sinks: entries up to")]:
        with pytest.raises((TypeError, ValueError), match=match):
            softmax_attention(q, k, v, **kw)


@pytest.mark.parametrize("implementation, runs", [("numba", "stream_numba"), ("numpy", "stream_numpy")])
def test_each_implementation_runs_its_own_kernel(monkeypatch, implementation, runs):
    """``implementation=`` selects the kernel it names (the paths agree to rounding, so only a spy
    can tell which one ran). Deterministic."""
    from refattn.kernels.numba import streaming

    calls = record_calls(monkeypatch, streaming, ("stream_numba", "stream_numpy"))
    rng = np.random.default_rng(0)
    softmax_attention(rng.standard_normal((4, 3)), rng.standard_normal((5, 3)), rng.standard_normal((5, 2)),
                      implementation=implementation)
    assert set(calls) == {runs}


LOW = [np.float16, "bfloat16"]


def _ulp(dtype):
    import ml_dtypes

    return float(ml_dtypes.finfo(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype).eps)


@pytest.mark.parametrize("dtype", LOW, ids=["float16", "bfloat16"])
def test_low_precision_has_kernel_semantics(dtype):
    """float16 / bfloat16 as real kernels compute them: inputs rounded to the dtype, float32
    accumulation and softmax, probabilities and output rounded to the dtype: the one reference at a
    precision (refattn.precision.kernel_reference, which the default path is, bit for bit). Its answer
    is the exact attention of the rounded inputs to within one ulp of the dtype times max |v| (the
    probabilities' and the output's rounding). The streaming paths are float64/float32 only: asked
    for one of these they say so. Logits of 1e4 and more (beyond float16's 65504 once squared) stay
    finite. Deterministic."""
    import ml_dtypes

    low = np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    rng = np.random.default_rng(3)
    q, k = rng.standard_normal((2, 40, 16)) * 40, rng.standard_normal((2, 48, 16)) * 40  # logits ~ 1e4
    v = rng.standard_normal((2, 48, 8))
    outs = {impl: softmax_attention(q, k, v, dtype=dtype, implementation=impl, causal=True)
            for impl in ("auto", "dense")}
    np.testing.assert_array_equal(outs["dense"].astype(np.float64), kernel_reference(q, k, v, dtype, causal=True))
    for impl in ("numpy", "numba"):
        with pytest.raises(ValueError, match="^implementation: the .* reference is dense"):
            softmax_attention(q, k, v, dtype=dtype, implementation=impl)
    rounded = [a.astype(low).astype(np.float64) for a in (q, k, v)]
    want = softmax_attention(*rounded, causal=True).astype(low).astype(np.float64)
    tol = _ulp(dtype) * np.abs(v).max()
    P = attention_probabilities(q, k, dtype=dtype, causal=True)  # the probabilities, same semantics
    assert P.dtype == low and np.all(np.isfinite(P.astype(np.float64)))
    np.testing.assert_allclose(P.astype(np.float64).sum(-1), 1.0, atol=8 * _ulp(dtype))
    for impl, out in outs.items():
        assert out.dtype == low, impl
        got = out.astype(np.float64)
        assert np.all(np.isfinite(got)), impl
        assert np.abs(got - want).max() <= tol, (impl, np.abs(got - want).max(), tol)


@pytest.mark.parametrize("dtype", LOW, ids=["float16", "bfloat16"])
def test_low_precision_backward_is_finite_and_close(dtype):
    """The backward in low precision (float32 inside, gradients rounded) is finite and within a few
    ulps of the dtype of the float64 backward of the rounded inputs. Deterministic."""
    import ml_dtypes

    low = np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    rng = np.random.default_rng(4)
    q, k, v, do = (rng.standard_normal(s) for s in ((12, 8), (14, 8), (14, 4), (12, 4)))
    got = attention_backward(q * 30, k * 30, v, do, dtype=dtype)
    ref = attention_backward(*(a.astype(low).astype(np.float64) for a in (q * 30, k * 30, v, do)))
    for g, r in zip(got, ref):
        assert g.dtype == low and np.all(np.isfinite(g.astype(np.float64)))
        scale = max(1.0, np.abs(r).max())
        assert np.abs(g.astype(np.float64) - r).max() <= 8 * _ulp(dtype) * scale


def test_low_precision_inputs_beyond_the_range_name_the_argument():
    q = np.ones((2, 3))
    with pytest.raises(ValueError, match=r"^k: values up to 1e\+05 exceed the float16 range"):
        softmax_attention(q, q * 1e5, q, dtype=np.float16)
    with pytest.raises(TypeError, match="^dtype: must be one of float64, float32, float16, bfloat16, got int8"):
        softmax_attention(q, q, q, dtype=np.int8)


@pytest.mark.parametrize("precision", ["float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"])
def test_the_error_bound_holds_for_a_kernel_of_each_storage_precision(precision):
    """Derived bound, checked: a kernel that casts P to the format unscaled (refattn.precision.kernel_reference;
    the FP8 formats' probabilities fall below their normal range, where the rounding error is half a
    subnormal, not relative) stays within forward_error_bound(dtype=precision) on 30 draws at three
    sizes up to 129 x 257; power twin: the FP8 kernel's error exceeds the bound of a bfloat16 kernel.
    Deterministic."""
    from refattn.exact import forward_error_bound
    from refattn.precision import kernel_reference, round_to

    rng = np.random.default_rng([5, len(precision)])
    beyond_bf16 = 0
    for draw in range(30):
        T, S = [(9, 11), (65, 129), (129, 257)][draw % 3]
        q, k, v = (round_to(rng.standard_normal(shape) * spread, precision)
                   for shape, spread in (((T, 64), 2.0), ((S, 64), 1.0), ((S, 64), 1.0)))
        unscaled = dict(p_scale=1, output=precision)  # the worst case: P cast unscaled, the output at the format
        err = np.abs(kernel_reference(q, k, v, precision, **unscaled) - softmax_attention(q, k, v)).max(axis=-1)
        assert np.all(err <= forward_error_bound(q, k, v, dtype=precision, **unscaled)), (precision, draw)
        if precision.startswith("float8"):  # FlashAttention 3's recipe: P scaled by 2^8, the output in bfloat16
            err_fa3 = np.abs(kernel_reference(q, k, v, precision) - softmax_attention(q, k, v)).max(axis=-1)
            assert np.all(err_fa3 <= forward_error_bound(q, k, v, dtype=precision)), (precision, draw)
        beyond_bf16 += bool(np.any(err > forward_error_bound(q, k, v, dtype="bfloat16")))
    assert beyond_bf16 == 30 if precision.startswith("float8") else True
