"""Bad input gets a clear TypeError/ValueError naming the argument, never a silent NaN."""

import numpy as np
import pytest

from refattn import attention_backward, attention_probabilities, softmax_attention, softmax_attention_mp
from refattn.exact import forward_error_bound

Q = np.zeros((3, 4))
K = np.zeros((5, 4))
V = np.zeros((5, 2))

ALL = [softmax_attention, softmax_attention_mp, forward_error_bound,
       lambda q, k, v, **kw: attention_backward(q, k, v, np.zeros((3, 2)), **kw)]


@pytest.mark.parametrize("fn", ALL, ids=["oracle", "mp", "bound", "backward"])
@pytest.mark.parametrize(
    "args,kwargs,exc,match",
    [
        ((Q.astype(complex), K, V), {}, TypeError, "^q: .*complex"),
        ((Q, K.astype(int), V), {}, TypeError, "^k: .*int64"),
        ((Q, K, V.astype(bool)), {}, TypeError, "^v: .*bool"),
        ((Q.astype(object), K, V), {}, TypeError, "^q: "),
        ((np.array([[np.nan, 0, 0, 0]]), K, V), {}, ValueError, "^q: contains NaN"),
        ((Q, np.full((5, 4), np.inf), V), {}, ValueError, "^k: contains NaN or Inf"),
        ((Q, K, np.full((5, 2), -np.inf)), {}, ValueError, "^v: contains"),
        ((np.zeros(4), K, V), {}, ValueError, "^q: expected shape"),
        ((Q, np.zeros((5, 3)), V), {}, ValueError, "^k: head dim 3"),
        ((Q, K, np.zeros((6, 2))), {}, ValueError, "^v: has 6 keys"),
        ((np.zeros((3, 0)), np.zeros((5, 0)), V), {}, ValueError, "^q: head dim H must be >= 1"),
        ((np.zeros((2, 3, 4)), np.zeros((3, 5, 4)), V), {}, ValueError, "batch.*do not broadcast"),
        ((Q, K, V), {"scale": 0.0}, ValueError, "^scale: must be finite and > 0"),
        ((Q, K, V), {"scale": -1.0}, ValueError, "^scale"),
        ((Q, K, V), {"scale": float("nan")}, ValueError, "^scale"),
        ((Q, K, V), {"scale": float("inf")}, ValueError, "^scale"),
        ((Q, K, V), {"scale": "0.5"}, TypeError, "^scale"),
        ((Q, K, V), {"causal": "left"}, ValueError, "^causal"),
        ((Q, K, V), {"mask": np.ones((3, 5))}, TypeError, "^mask: expected a boolean"),
        ((Q, K, V), {"mask": np.ones((3, 4), dtype=bool)}, ValueError, "^mask: shape"),
        ((Q, K, V), {"mask": np.ones((2, 1, 1), dtype=bool), "bias": np.zeros((3, 1, 1))}, ValueError, "batch"),
        ((Q, K, V), {"bias": np.zeros((4, 5))}, ValueError, "^bias: shape"),
        ((Q, K, V), {"bias": np.full((3, 5), np.nan)}, ValueError, "^bias: contains NaN"),
        ((Q, K, V), {"bias": np.full((3, 5), np.inf)}, ValueError, "^bias: contains NaN or \\+Inf"),
        ((Q, K, V), {"key_lengths": 6}, ValueError, "^key_lengths: every entry"),
        ((Q, K, V), {"key_lengths": -1}, ValueError, "^key_lengths"),
        ((Q, K, V), {"key_lengths": 2.0}, TypeError, "^key_lengths: expected integers"),
    ],
)
def test_bad_input_names_the_argument(fn, args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fn(*args, **kwargs)


def test_bad_options():
    with pytest.raises(ValueError, match="^implementation"):
        softmax_attention(Q, K, V, implementation="flash")
    with pytest.raises(TypeError, match="^dtype"):
        softmax_attention(Q, K, V, dtype=np.int32)
    with pytest.raises(ValueError, match="^block_q"):
        softmax_attention(Q, K, V, block_q=0)
    with pytest.raises(TypeError, match="^block_k"):
        softmax_attention(Q, K, V, block_k=2.5)
    with pytest.raises(ValueError, match="^dout: expected the output's shape"):
        attention_backward(Q, K, V, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="^dps"):
        softmax_attention_mp(Q, K, V, dps=5)
    with pytest.raises(TypeError, match="^q: "):
        attention_probabilities(Q.astype(complex), K)


def test_neg_inf_bias_is_a_documented_mask():
    """-inf in bias removes the key; a row of -inf gives zeros and lse -inf, never NaN."""
    bias = np.zeros((3, 5))
    bias[0] = -np.inf
    bias[1, :2] = -np.inf
    out, lse = softmax_attention(Q, K, np.arange(10.0).reshape(5, 2), bias=bias, return_lse=True)
    assert np.all(out[0] == 0) and lse[0] == -np.inf
    np.testing.assert_allclose(out[1], np.arange(10.0).reshape(5, 2)[2:].mean(axis=0), rtol=1e-15)
    assert np.all(np.isfinite(out))


@pytest.mark.parametrize("fn", ALL[:3] + [lambda q, k, v, **kw: attention_probabilities(q, k, **kw)],
                         ids=["oracle", "mp", "bound", "probabilities"])
def test_logits_that_could_overflow_are_refused(fn):
    """Finite inputs whose logits could leave float64 (1e200 x 1e200) get an error naming q, k and
    scale and the limit, never inf - inf = NaN inside the softmax."""
    q = np.full((2, 3), 1e200)
    with pytest.raises(ValueError, match=r"^q, k, scale: logits could reach .* beyond the 1e\+300"):
        fn(q, q, np.ones((2, 1)))
    with pytest.raises(ValueError, match=r"^q, k, scale: logits could reach"):
        fn(np.ones((2, 3)), np.ones((2, 3)), np.ones((2, 1)), scale=1e301)
