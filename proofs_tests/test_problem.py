"""Input conventions (refattn.problem): the causal alignments, masks, key padding, broadcasting, and
errors that name the argument. Deterministic.
"""

import numpy as np
import pytest

from refattn.problem import CAUSAL_ALIGNMENTS, attention_problem, causal_mask, causal_offset


@pytest.mark.parametrize("T,S", [(1, 1), (3, 5), (5, 3), (4, 4), (0, 3)])
def test_causal_mask_alignments_by_definition(T, S):
    i, j = np.arange(T)[:, None], np.arange(S)[None, :]
    np.testing.assert_array_equal(causal_mask(T, S), j <= i + S - T)  # bottom-right (FlashAttention >= 2.1)
    np.testing.assert_array_equal(causal_mask(T, S, True), j <= i + S - T)
    np.testing.assert_array_equal(causal_mask(T, S, "top_left"), j <= i)
    np.testing.assert_array_equal(causal_mask(T, S, False), np.ones((T, S), bool))
    assert causal_offset(T, S, "bottom_right") == S - T and causal_offset(T, S, "top_left") == 0
    assert CAUSAL_ALIGNMENTS == ("bottom_right", "top_left")


def test_logits_follow_scale_mask_bias_and_padding():
    rng = np.random.default_rng(0)
    q, k, v = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 5, 4)), rng.normal(size=(2, 5, 2))
    mask = rng.random((3, 5)) < 0.7
    bias = rng.normal(size=(3, 5))
    prob = attention_problem(q, k, v, scale=0.3, causal=True, mask=mask, bias=bias, key_lengths=np.array([5, 2]))
    assert (prob.T, prob.S, prob.H, prob.Hv, prob.batch_shape) == (3, 5, 4, 2, (2,))
    expected = 0.3 * q @ np.swapaxes(k, -1, -2) + bias
    allowed = mask & causal_mask(3, 5) & (np.arange(5) < np.array([5, 2])[:, None, None])  # (2, 3, 5)
    np.testing.assert_allclose(prob.logits(), np.where(allowed, expected, -np.inf), rtol=1e-15, atol=0)


def test_default_scale_is_one_over_sqrt_H():
    prob = attention_problem(np.ones((2, 16)), np.ones((3, 16)), np.ones((3, 1)))
    assert prob.scale == 0.25 and prob.causal is None and not prob.has_mask


def test_leading_dims_broadcast():
    prob = attention_problem(np.ones((4, 1, 3, 2)), np.ones((1, 5, 6, 2)), np.ones((6, 7)))
    assert prob.batch_shape == (4, 5) and prob.logits().shape == (4, 5, 3, 6)


@pytest.mark.parametrize("kwargs,match", [
    (dict(q=np.ones((2, 3), int)), "^q: expected a real floating-point array"),
    (dict(k=np.ones((4, 5))), "^k: "),
    (dict(v=np.ones((3, 2))), "^v: "),
    (dict(causal="top"), "^causal: expected False, True, 'bottom_right' or 'top_left'"),
    (dict(mask=np.ones((3, 3), bool)), "^mask: "),
    (dict(bias=np.full((2, 4), np.nan)), "^bias: "),
    (dict(key_lengths=np.array([9])), "^key_lengths: "),
    (dict(scale=-1.0), "^scale: "),
    (dict(q=np.full((2, 3), np.inf)), "^q: contains NaN or Inf"),
])
def test_bad_input_names_the_argument(kwargs, match):
    args = dict(q=np.ones((2, 3)), k=np.ones((4, 3)), v=np.ones((4, 2)))
    args.update(kwargs)
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    with pytest.raises((TypeError, ValueError), match=match):
        attention_problem(q, k, v, **args)


def test_score_problem_checks_q_and_k_like_the_full_problem():
    from refattn.problem import score_problem

    prob = score_problem(np.ones((2, 3, 4)), np.ones((5, 4)), causal="top_left")
    assert (prob.T, prob.S, prob.Hv, prob.batch_shape, prob.causal) == (3, 5, 0, (2,), "top_left")
    with pytest.raises(ValueError, match="^k: "):
        score_problem(np.ones((3, 4)), np.ones(4))
    with pytest.raises(ValueError, match="^k: "):
        score_problem(np.ones((3, 4)), np.ones((5, 3)))


def test_sum_to_shape_reverses_broadcasting():
    from refattn.problem import sum_to_shape

    g = np.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(sum_to_shape(g, (3, 4)), g.sum(0))
    np.testing.assert_array_equal(sum_to_shape(g, (1, 3, 1)), g.sum(axis=(0, 2), keepdims=True)[None][0])
    np.testing.assert_array_equal(sum_to_shape(g, (2, 3, 4)), g)


@pytest.mark.parametrize("causal,expected", [(False, None), (None, None), (True, "bottom_right"),
                                             ("bottom_right", "bottom_right"), ("top_left", "top_left")])
def test_causal_alignment_names(causal, expected):
    from refattn.problem import causal_alignment

    assert causal_alignment(causal) == expected


def test_a_huge_bias_or_alibi_slope_is_named_in_the_logit_range_error():
    from refattn.problem import attention_problem

    q = np.ones((2, 3))
    with pytest.raises(ValueError, match="^bias: entries up to 1e"):
        attention_problem(q, q, q, bias=np.full((2, 2), 1e305))
    with pytest.raises(ValueError, match="^alibi_slopes: entries up to"):
        attention_problem(q, q, q, alibi_slopes=np.array([1e304]))
    with pytest.raises(ValueError, match="^q, k, scale: logits could reach"):
        attention_problem(q * 1e160, q * 1e160, q, bias=np.ones((2, 2)))
