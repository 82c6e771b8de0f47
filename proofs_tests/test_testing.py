"""refattn.testing: the tools other suites rely on must themselves be right.

- The FlashAttention rule passes correct low-precision kernels and fails planted faults
  (wrong scale, other causal alignment, off-by-one mask, softmax over the wrong axis,
  missing max subtraction). Deterministic.
- The strategies draw the shapes and options they promise. Deterministic (hypothesis.find).
- assert_unbiased and assert_variance_matches have power against planted defects (statistical,
  each stating its false-failure probability).
"""

import numpy as np
import pytest
from hypothesis import find, given

from refattn import causal_mask, softmax_attention
from refattn.testing import (
    assert_close_to_reference,
    assert_unbiased,
    assert_variance_matches,
    attention_inputs,
    check_close_to_reference,
    tolerance_check,
)


def _problem(T=37, S=45, H=16, seed=0, logit_std=3.0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((T, H)) * logit_std, rng.standard_normal((S, H)), rng.standard_normal((S, 8))


def _fp16_kernel(q, k, v, *, scale=None, causal=False, mask=None, wrong_axis=False, shift=True):
    """A float16 'kernel' with its own operation order (reordered scaling, float32 accumulation)."""
    H = q.shape[-1]
    s = np.float16(1 / np.sqrt(H) if scale is None else scale)
    q16, k16, v16 = (x.astype(np.float16) for x in (q, k, v))
    logits = ((q16 * s) @ k16.T).astype(np.float32)
    if causal:
        logits = np.where(causal_mask(q.shape[0], k.shape[0], causal), logits, -np.inf)
    if mask is not None:
        logits = np.where(mask, logits, -np.inf)
    axis = 0 if wrong_axis else 1
    m = logits.max(axis=axis, keepdims=True) if shift else 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        p = np.exp((logits - m).astype(np.float16))
        p = p / p.sum(axis=axis, keepdims=True, dtype=np.float32)
    return (p.astype(np.float16) @ v16).astype(np.float16)


ALPHA_FAMILY = 1e-6  # per statistical assertion below


@pytest.mark.parametrize("causal", [False, "bottom_right", "top_left"])
def test_rule_passes_correct_low_precision_kernels(causal):
    q, k, v = _problem()
    r = assert_close_to_reference(_fp16_kernel(q, k, v, causal=causal), q, k, v, causal=causal)
    assert r.error > 0 and r.error_lo > 0  # a real comparison, not two zeros
    out32 = softmax_attention(q, k, v, causal=causal, implementation="numpy", dtype=np.float32)
    assert_close_to_reference(out32, q, k, v, causal=causal)


def test_rule_catches_planted_faults():
    q, k, v = _problem()
    T, S = q.shape[0], k.shape[0]
    faults = {
        "wrong scale (x1.1)": (_fp16_kernel(q, k, v, scale=1.1 / 4), {}),
        "other causal alignment": (_fp16_kernel(q, k, v, causal="top_left"), {"causal": "bottom_right"}),
        "off-by-one causal mask": (
            _fp16_kernel(q, k, v, mask=causal_mask(T, S, "bottom_right") & ~np.eye(T, S, k=S - T, dtype=bool)),
            {"causal": True},
        ),
        "softmax over the wrong axis": (_fp16_kernel(q, k, v, wrong_axis=True), {}),
    }
    for name, (out, kw) in faults.items():
        res = check_close_to_reference(out, q, k, v, **kw)
        print(name, res.summary())
        assert not res.passed, name
        with pytest.raises(AssertionError, match="FAIL"):
            assert_close_to_reference(out, q, k, v, **kw)
    # missing max subtraction overflows float16 at large logits
    q_hot = q * 20
    res = check_close_to_reference(_fp16_kernel(q_hot, k, v, shift=False), q_hot, k, v)
    assert not res.passed and res.error == np.inf


def test_rule_numbers_and_shape_mismatch():
    ref = np.array([1.0, 2.0])
    r = tolerance_check(np.array([1.0, 2.3]), ref, np.array([1.0, 2.1]), atol=0.0)
    assert r.error == pytest.approx(0.3) and r.error_lo == pytest.approx(0.1) and r.bound == pytest.approx(0.2)
    assert not r.passed
    assert tolerance_check(np.array([1.0, 2.19]), ref, np.array([1.0, 2.1]), atol=0.0).passed
    with pytest.raises(AssertionError, match="shape mismatch"):
        tolerance_check(np.zeros(3), ref, ref)


def test_float64_kernel_needs_the_floor():
    """With ref_lo == ref64 (a float64 kernel) only the floor absorbs the kernel's own rounding."""
    q, k, v = _problem()
    assert_close_to_reference(softmax_attention(q, k, v, implementation="numba"), q, k, v)
    assert not check_close_to_reference(softmax_attention(q, k, v) * (1 + 1e-9), q, k, v).passed


def test_strategy_reaches_the_awkward_cases():
    strat = attention_inputs()
    assert find(strat, lambda x: x.q.shape[-2] == 1 and x.k.shape[-2] > 1).q.shape[-2] == 1
    assert find(strat, lambda x: x.k.shape[-2] % 2 == 1 and x.k.shape[-2] > 2)
    assert find(strat, lambda x: x.q.dtype == np.float16)
    assert find(strat, lambda x: x.q.ndim == 4)
    assert find(strat, lambda x: "mask" in x.kwargs and not x.kwargs["mask"].any())
    assert find(strat, lambda x: x.kwargs.get("causal") == "top_left")
    x = find(attention_inputs(allow_empty=True), lambda x: x.q.shape[-2] == 0)
    assert softmax_attention(x.q, x.k, x.v, **x.kwargs).shape[-2] == 0


def test_the_tile_profile_crosses_the_tiles_and_finds_a_running_sum_not_rescaled():
    """``sizes="tiles"`` draws only tile-crossing lengths and the head dims kernels specialise for, and
    reaches a problem where a blocked online softmax (blocks of 64) that forgets to rescale its
    running sum fails the rule: a later key block raises the max. The small profile (``S <= 33``,
    one block) cannot reach one. Deterministic (hypothesis.find)."""
    from refattn.check.planted import blocked_attention
    from refattn.problem import attention_problem
    from refattn.testing import TILE_HEAD_DIMS, TILE_LENGTHS

    def not_rescaled(x):
        prob = attention_problem(x.q, x.k, x.v, **x.kwargs)
        allowed = prob.allowed()
        allowed = np.ones((prob.T, prob.S), bool) if allowed is None else allowed
        out = blocked_attention(x.q, x.k, x.v, allowed, prob.scale, block=64, rescale=False)
        return not check_close_to_reference(out.astype(x.q.dtype), x.q, x.k, x.v, **x.kwargs).passed

    strat = attention_inputs(sizes="tiles", dtypes=(np.float64,), max_batch_dims=0, masks=False, causal=False)
    x = find(strat, lambda x: x.k.shape[-2] > 64)
    assert {x.q.shape[-2], x.k.shape[-2]} <= set(TILE_LENGTHS) and x.q.shape[-1] in TILE_HEAD_DIMS
    x = find(strat, not_rescaled)
    assert x.k.shape[-2] > 64
    with pytest.raises(ValueError, match="sizes"):
        attention_inputs(sizes="huge")


@given(attention_inputs(logit_std=0.0, masks=False, causal=False))
def test_strategy_temperature_zero_is_uniform(x):
    """logit_std = 0 draws q = 0: every row of P is exactly uniform."""
    from refattn import attention_probabilities

    P = attention_probabilities(x.q, x.k)
    assert np.all(P == P[..., :1])


@pytest.mark.statistical
def test_assert_unbiased_has_power(seed):
    """Power twin: a 2% bias in the mean (n = 2000, sd 0.1, so z ~ 9) is rejected at alpha = 1e-6.

    Passing correct samples: false-failure 1e-6. The biased case fails to be rejected with
    probability < 1e-9 (z - z_crit ~ 4 standard errors).
    """
    rng = np.random.default_rng([seed, 2])
    assert_unbiased(rng.normal(1.0, 0.1, size=(2000, 3)), 1.0, alpha=ALPHA_FAMILY)
    with pytest.raises(AssertionError, match="mean differs"):
        assert_unbiased(rng.normal(1.02, 0.1, size=(2000, 3)), 1.0, alpha=ALPHA_FAMILY)


@pytest.mark.statistical
def test_assert_variance_matches_has_power(seed):
    """Power twin: n = 20000 Gaussian draws; the true variance passes, a value 10% off fails.

    Var of the sample variance is 2 sigma^4 / n, sd 1% of sigma^2, so 10% is 10 sd away.
    Normal bootstrap interval at alpha = 1e-6 (half-width ~ 4.9 sd). False-failure
    probability about 1e-6 (asymptotic level), power > 1 - 1e-9 (10 - 4.9 sd margin).
    """
    rng = np.random.default_rng([seed, 4])
    x = rng.normal(0.0, 2.0, size=20000)
    assert_variance_matches(x, 4.0, alpha=ALPHA_FAMILY, rng=rng, n_boot=300)
    with pytest.raises(AssertionError, match="outside"):
        assert_variance_matches(x, 4.4, alpha=ALPHA_FAMILY, rng=rng, n_boot=300)
