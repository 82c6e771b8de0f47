"""The reference at a claimed precision (refattn.precision): what a float32, float16 or bfloat16
kernel computes (inputs rounded to the precision, float32 accumulation and softmax, probabilities
rounded before the second product, output rounded). Deterministic.
"""

import ml_dtypes
import numpy as np
import pytest

from refattn import softmax_attention
from refattn.precision import PRECISIONS, STORAGE_PRECISIONS, as_dtype, as_given, eps, given_dtype, kernel_reference, round_to


def _qkv(T=9, S=11, H=8, Hv=5, seed=0, spread=1.0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(T, H)) * spread, rng.normal(size=(S, H)), rng.normal(size=(S, Hv))


@pytest.mark.parametrize("precision", PRECISIONS)
def test_error_is_at_the_precisions_rounding_level(precision):
    """|O_p - O_64| is a few ulps of the precision (the inputs' rounding dominates), and no better
    than rounding the exact answer (so the precision is really applied)."""
    q, k, v = _qkv()
    ref = softmax_attention(q, k, v)
    out = kernel_reference(q, k, v, precision)
    err = np.max(np.abs(out - ref)) / np.max(np.abs(ref))
    assert err <= 16 * eps(precision)
    if precision != "float64":
        assert err >= 0.05 * eps(precision)
        np.testing.assert_array_equal(round_to(out, precision), out)  # written in the precision


def test_float32_is_the_float32_oracle():
    q, k, v = (a.astype(np.float32) for a in _qkv(seed=3))
    np.testing.assert_allclose(kernel_reference(q, k, v, "float32"),
                               softmax_attention(q, k, v, dtype=np.float32), rtol=2e-6, atol=2e-7)


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_logits_beyond_the_half_range_stay_finite(precision):
    """Logits 1e5 apart overflow float16 (max 65504) if the softmax ran in it; a kernel's float32
    statistics do not: the output is finite and the oracle's, to the precision."""
    q, k, v = _qkv(seed=5)
    q = 6e4 * np.sign(q)  # representable in float16, logits of order 1e5
    out = kernel_reference(q, k, v, precision)
    assert np.all(np.isfinite(out))
    ref = softmax_attention(round_to(q, precision), round_to(k, precision), round_to(v, precision))
    assert np.max(np.abs(out - ref)) <= 4 * eps(precision) * np.max(np.abs(ref))


def test_masks_padding_and_empty_rows_follow_the_oracle():
    q, k, v = (a[None].repeat(2, 0) for a in _qkv(T=6, S=6))
    mask = np.ones((6, 6), bool)
    mask[2] = False  # a fully masked row
    out, lse = kernel_reference(q, k, v, "bfloat16", causal=True, mask=mask, key_lengths=np.array([6, 3]),
                                return_lse=True)
    ref, ref_lse = softmax_attention(q, k, v, causal=True, mask=mask, key_lengths=np.array([6, 3]), return_lse=True)
    assert np.all(out[:, 2] == 0) and np.all(lse[:, 2] == -np.inf)
    seen = np.isfinite(ref_lse)
    np.testing.assert_allclose(lse[seen], ref_lse[seen], atol=0.05)
    assert np.max(np.abs(out - ref)) <= 16 * eps("bfloat16") * np.max(np.abs(ref))


def test_probabilities_are_rounded_before_the_second_product():
    """Power twin: skipping the rounding of P (a float32 P against bfloat16 values) gives a different
    answer, so the reference encodes the kernels' mixed precision, not just rounded inputs and output."""
    q, k, v = _qkv(seed=8)
    out = kernel_reference(q, k, v, "bfloat16")
    f32 = np.float32
    qr, kr, vr = (round_to(a, "bfloat16").astype(f32) for a in (q, k, v))
    s = (qr @ kr.T) * f32(8**-0.5)
    p = np.exp(s - s.max(1, keepdims=True))
    p = p / p.sum(1, keepdims=True)
    unrounded = round_to(p @ vr, "bfloat16")
    assert not np.array_equal(out, unrounded)


def test_inputs_beyond_the_range_name_the_argument():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="^k: values up to 7e[+]04 exceed the float16 range"):
        kernel_reference(q, k * 0 + 7e4, v, "float16")


def test_bad_precision_names_the_argument():
    with pytest.raises(ValueError, match="^precision: expected one of"):
        as_dtype("float8")
    assert as_dtype("bfloat16") == np.dtype(ml_dtypes.bfloat16)


def test_one_vocabulary_for_every_spelling():
    """Names, NumPy dtypes and scalar types, ml_dtypes types and framework-style names all parse to the
    same precision; what is not a precision names the argument."""
    from refattn.precision import as_precision

    for spelling, name in [("float16", "float16"), (np.float16, "float16"), (np.dtype("float16"), "float16"),
                           ("half", "float16"), ("torch.bfloat16", "bfloat16"), (ml_dtypes.bfloat16, "bfloat16"),
                           ("bf16", "bfloat16"), ("fp32", "float32"), (np.float64, "float64"), ("double", "float64")]:
        assert as_precision(spelling) == name, spelling
    assert as_precision("float8_e4m3fn", allowed=("float8_e4m3fn",)) == "float8_e4m3fn"
    with pytest.raises(ValueError, match="^dtype: expected one of float64, float32, float16, bfloat16, got 'fp7'"):
        as_precision("fp7")
    with pytest.raises(TypeError, match="^dtype: must be one of .*, got int32"):
        as_precision(np.int32)
    with pytest.raises(TypeError, match="^dtype: must be one of .*, got float8_e5m2"):
        as_precision("float8_e5m2")  # a storage format, not a compute precision


def test_values_precision_sees_through_upcasts():
    """A float32 array upcast to float64 has float32 values; genuine float64 values stay float64; values
    that float16 holds exactly are float16 (the finer of the two 16-bit formats when both hold them)."""
    from refattn.precision import values_precision

    rng = np.random.default_rng(0)
    x = rng.standard_normal(100)
    assert values_precision(x) == "float64"
    assert values_precision(x.astype(np.float32).astype(np.float64)) == "float32"
    assert values_precision(x.astype(np.float16).astype(np.float64)) == "float16"
    assert values_precision(x.astype(ml_dtypes.bfloat16).astype(np.float32)) == "float16"  # float16 holds them
    assert values_precision((x * 1e6).astype(ml_dtypes.bfloat16).astype(np.float32)) == "bfloat16"  # it does not
    assert values_precision(np.array([0.5, 1.0, np.inf])) == "float16"  # non-finite values are ignored
    assert values_precision(x.astype(np.float16)) == "float16"


def test_recipe_knobs_change_what_they_say():
    """round_probabilities=False leaves P unrounded (closer to the oracle on these inputs than the
    default); round_output=False returns the float32 accumulation; accumulate="float64" is the
    float64 computation on the rounded inputs; round_logits rounds the logits (farther from it)."""
    q, k, v = _qkv(T=20, S=40, H=16, Hv=8, seed=4, spread=2.0)
    q, k, v = (round_to(a, "bfloat16") for a in (q, k, v))
    ref = softmax_attention(q, k, v)
    err = lambda out: float(np.max(np.abs(out - ref)))  # noqa: E731
    default = kernel_reference(q, k, v, "bfloat16")
    no_p = kernel_reference(q, k, v, "bfloat16", round_probabilities=False, round_output=False)
    assert np.array_equal(round_to(default, "bfloat16"), default)
    assert err(no_p) < err(default) / 10
    assert err(kernel_reference(q, k, v, "bfloat16", accumulate="float64", round_probabilities=False,
                                round_output=False)) < 1e-14
    assert err(kernel_reference(q, k, v, "bfloat16", round_logits=True)) > err(default)
    with pytest.raises(ValueError, match="^accumulate: float32 is narrower than the float64 inputs"):
        kernel_reference(q, k, v, "float64", accumulate="float32")


@pytest.mark.parametrize("precision", sorted(set(PRECISIONS) | set(STORAGE_PRECISIONS)))
def test_a_callable_is_given_the_claims_values_losslessly(precision):
    """as_given: the values rounded to the claim, in a dtype that holds them exactly (bfloat16 in float32)."""
    x = np.random.default_rng(0).standard_normal(1000) * 3
    g = as_given(x, precision)
    assert g.dtype == given_dtype(precision)
    np.testing.assert_array_equal(np.asarray(g, np.float64), round_to(x, precision))
    if precision != "float64":
        assert not np.array_equal(np.asarray(g, np.float64), x)  # really rounded
    assert given_dtype("bfloat16") == np.float32 and given_dtype(precision).itemsize <= 8
