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


# --- inputs that used to be accepted silently, crash or hang ---------------------------------------
def test_a_validated_support_is_read_only():
    """A Support keeps read-only copies of its arrays: writing an out-of-range index after validation
    raises instead of sending the sparse kernel out of bounds (a segfault before)."""
    from refattn.lsh.sparse import Support, local_window, sparse_attention

    s = local_window(5, 7, 2, 1)
    with pytest.raises(ValueError, match="read-only"):
        s.indices[1] = 10**6
    with pytest.raises(ValueError, match="read-only"):
        s.indptr[2] = 0
    mine = np.array([0, 1, 2], dtype=np.int64)
    t = Support(np.array([0, 1, 3]), mine, 4)
    mine[0] = 10**6  # the caller's array: the support holds its own copy
    assert t.indices[0] == 0
    rng = np.random.default_rng(0)
    q, k, v = rng.normal(size=(5, 4)), rng.normal(size=(7, 4)), rng.normal(size=(7, 2))
    assert np.isfinite(sparse_attention(q, k, v, s)).all()


def test_fixed_budget_decomposition_of_a_fortran_matrix():
    """A Fortran-ordered M gives the same (L, S) as its C-ordered copy (S was all zeros)."""
    from refattn.scatterbrain.rpca import fixed_budget_decomposition

    M = np.random.default_rng(1).normal(size=(12, 9))
    L1, S1 = fixed_budget_decomposition(np.asfortranarray(M), 2, 4)
    L2, S2 = fixed_budget_decomposition(M, 2, 4)
    assert np.count_nonzero(S1) == 4
    np.testing.assert_allclose(S1, S2, atol=1e-12)
    np.testing.assert_allclose(L1, L2, atol=1e-12)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"max_len": 2**40}, ValueError, "^max_len: must be <= 4096"),
    ({"max_head_dim": "8"}, TypeError, "^max_head_dim: expected an integer"),  # None: the profile's default
    ({"max_batch_dims": None}, TypeError, "^max_batch_dims: expected an integer"),
    ({"logit_std": float("nan")}, ValueError, "^logit_std"),
    ({"logit_std": (3.0, 1.0)}, ValueError, "^logit_std: low 3.0 exceeds high 1.0"),
])
def test_attention_inputs_refuses_sizes_it_cannot_draw(kwargs, error, match):
    from refattn.testing import attention_inputs

    with pytest.raises(error, match=match):
        attention_inputs(**kwargs)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"window": (True, False)}, ValueError, "^window: expected"),
    ({"window": (2.5, 1)}, ValueError, "^window: expected"),
    ({"softcap": "30"}, TypeError, "^softcap: expected a number"),
    ({"softcap": True}, TypeError, "^softcap: expected a number"),
])
@pytest.mark.parametrize("implementation", ["dense", "numpy", "numba"])
def test_window_and_softcap_are_numbers_on_every_path(kwargs, error, match, implementation):
    q = np.ones((3, 4))
    with pytest.raises(error, match=match):
        softmax_attention(q, q, q, implementation=implementation, **kwargs)


def test_check_limits_and_types_are_validated():
    """check(): strings and bools are not numbers; a timeout past a week or a memory limit past 2^62
    bytes is refused (an OverflowError, exit 3, and a FAIL for a correct kernel before)."""
    from refattn.check import check
    from refattn.check.planted import exact_attention

    for kwargs, error, match in [({"alpha": "0.5"}, TypeError, "^alpha: expected a number"),
                                 ({"timeout": "3"}, TypeError, "^timeout: expected a number"),
                                 ({"isolate": "yes"}, TypeError, "^isolate"),
                                 ({"timeout": 1e300}, ValueError, "^timeout: at most"),
                                 ({"memory_limit": 1e21}, ValueError, "^memory_limit: at most"),
                                 ({"width": float("nan")}, ValueError, "^width")]:
        with pytest.raises(error, match=match):
            check(exact_attention, "hash" if "width" in kwargs else "exact", **kwargs)
