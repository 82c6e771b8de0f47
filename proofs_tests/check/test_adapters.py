"""Adapters (refattn.check.adapters): a framework's attention into the checker's contract in one call.
The JAX and PyTorch examples of the docs' check page run here when the extras are installed (they
skip otherwise); the signature the checker reads is tested without them. Deterministic.
"""

import inspect

import numpy as np
import pytest

from refattn.check import check
from refattn.check.adapters import jax_backward, jax_forward, torch_backward, torch_forward
from refattn.check.loader import accepts


@pytest.mark.parametrize("make", [torch_forward, jax_forward])
def test_the_adapter_shows_the_checker_the_keywords_it_maps(make):
    fn = make(lambda q, k, v, is_causal=False: q, keywords={"causal": "is_causal", "mask": "attn_mask"})
    assert list(inspect.signature(fn).parameters)[:3] == ["q", "k", "v"]
    assert accepts(fn, "causal") and accepts(fn, "mask") and not accepts(fn, "window_size")
    grads = (torch_backward if make is torch_forward else jax_backward)(lambda q, k, v: q, keywords={})
    assert list(inspect.signature(grads).parameters) == ["q", "k", "v", "dout"]


JAX_KEYWORDS = {"causal": "is_causal", "mask": "mask", "bias": "bias"}


def test_jax_dot_product_attention_in_float32_and_bfloat16():
    """jax.nn.dot_product_attention, (B, T, N, H), values with the head dim of q and k: it passes at
    float32 and bfloat16 with its causal masks top-left aligned; claimed bottom-right, the T != S causal
    cases fail with that diagnosis."""
    jax = pytest.importorskip("jax")
    f32 = jax_forward(jax.nn.dot_product_attention, dtype="float32", keywords=JAX_KEYWORDS)
    claims = dict(layout="BTNH", precision="float32", equal_head_dims=True)
    assert check(f32, "exact", alignment="top_left", **claims).passed
    rep = check(f32, "exact", **claims)
    assert {v.check for v in rep.failures} == {"causal T < S", "causal T > S"}
    assert all("the other causal alignment (top_left)" in v.meaning for v in rep.failures)
    bf16 = jax_forward(jax.nn.dot_product_attention, dtype="bfloat16", keywords=JAX_KEYWORDS)
    assert check(bf16, "exact", alignment="top_left", **dict(claims, precision="bfloat16")).passed


def test_jax_gradients_through_the_backward_adapter():
    jax = pytest.importorskip("jax")
    grads = jax_backward(jax.nn.dot_product_attention, dtype="float32", keywords=JAX_KEYWORDS)
    rep = check(grads, "backward", alignment="top_left", layout="BTNH", precision="float32", equal_head_dims=True)
    assert rep.passed, rep.format_table()


def test_torch_scaled_dot_product_attention_in_float32():
    torch = pytest.importorskip("torch")
    sdpa = torch_forward(torch.nn.functional.scaled_dot_product_attention, dtype="float32",
                         keywords={"causal": "is_causal", "mask": "attn_mask"})
    rep = check(sdpa, "exact", layout="BNTH", precision="float32", alignment="top_left")
    assert rep.passed, rep.format_table()
    grads = torch_backward(torch.nn.functional.scaled_dot_product_attention, dtype="float32",
                           keywords={"causal": "is_causal", "mask": "attn_mask"})
    assert check(grads, "backward", layout="BNTH", precision="float32", alignment="top_left").passed


def test_results_come_back_as_numpy():
    jnp = pytest.importorskip("jax.numpy")
    fn = jax_forward(lambda q, k, v: jnp.asarray(q), dtype="bfloat16")
    out = fn(np.ones((2, 3), np.float32), np.ones((2, 3)), np.ones((2, 3)))
    assert isinstance(out, np.ndarray) and out.dtype == np.float32  # bfloat16 comes back as float32 values
