"""Adapters (refattn.check.adapters): a framework's attention into the checker's contract in one call.
The JAX and PyTorch examples of the docs' check page run here when the extras are installed (they
skip otherwise); the signature the checker reads is tested without them. Deterministic.
"""

import inspect

import numpy as np
import pytest

from refattn.check import check
from refattn.check.exact import grid
from refattn.check.adapters import jax_backward, jax_forward, torch_backward, torch_forward
from refattn.check.loader import accepts


@pytest.mark.parametrize("make", [torch_forward, jax_forward])
def test_the_adapter_shows_the_checker_the_keywords_it_maps(make):
    fn = make(lambda q, k, v, is_causal=False: q, keywords={"causal": "is_causal", "mask": "attn_mask"})
    assert list(inspect.signature(fn).parameters)[:3] == ["q", "k", "v"]
    assert accepts(fn, "causal") and accepts(fn, "mask") and not accepts(fn, "window_size")
    grads = (torch_backward if make is torch_forward else jax_backward)(lambda q, k, v: q, keywords={})
    assert list(inspect.signature(grads).parameters) == ["q", "k", "v", "dout"]


@pytest.mark.parametrize("make", [torch_forward, torch_backward, jax_forward, jax_backward])
def test_adapters_reach_the_worker_pickled_not_forked(make):
    """An adapter is a module-level object that pickles with its function, so the checker's worker is
    a fresh process that imports the framework itself; inherited by fork from a process whose JAX or
    torch threads hold a lock, it deadlocked until the start timeout (seen with JAX on 2 cores)."""
    import pickle
    from functools import partial

    from refattn.check.isolation import Worker
    from refattn.exact import softmax_attention

    adapter = make(partial(softmax_attention, implementation="dense"), dtype="float32", keywords={"causal": "causal"})
    again = pickle.loads(pickle.dumps(adapter))
    assert inspect.signature(again) == inspect.signature(adapter) and again.__name__ == adapter.__name__
    assert Worker._plan(adapter)[0][0] == "pickled"


JAX_KEYWORDS = {"causal": "is_causal", "mask": "mask", "bias": "bias"}


def test_jax_dot_product_attention_in_float32_and_bfloat16():
    """jax.nn.dot_product_attention, (B, T, N, H), values with the head dim of q and k, causal top-left:
    a row that sees no key gets uniform weights over the masked keys (its mask is a large negative
    number, not -inf), so under the default convention (zeros) exactly the fully masked rows fail,
    named, and every other case passes at float32; with ``empty_rows="any"`` it passes at bfloat16.
    (The tile sizes and the other alignment: the slow twin below.)"""
    jax = pytest.importorskip("jax")
    f32 = jax_forward(jax.nn.dot_product_attention, dtype="float32", keywords=JAX_KEYWORDS)
    claims = dict(layout="BTNH", precision="float32", equal_head_dims=True, alignment="top_left", sizes="small")
    rep = check(f32, "exact", **claims)
    assert [v.check for v in rep.failures] == ["fully masked rows"] and "must be zeros" in rep.failures[0].meaning
    assert sum(v.passed is True for v in rep.verdicts) >= 10
    bf16 = jax_forward(jax.nn.dot_product_attention, dtype="bfloat16", keywords=JAX_KEYWORDS)
    assert check(bf16, "exact", **dict(claims, precision="bfloat16", empty_rows="any")).passed


@pytest.mark.slow
def test_jax_at_tile_sizes_and_claimed_bottom_right():
    """At the default tile sizes it passes with ``empty_rows="any"``; claimed bottom-right, exactly the
    causal cases with T != S fail, each diagnosed as the other alignment."""
    jax = pytest.importorskip("jax")
    f32 = jax_forward(jax.nn.dot_product_attention, dtype="float32", keywords=JAX_KEYWORDS)
    claims = dict(layout="BTNH", precision="float32", equal_head_dims=True, empty_rows="any")
    assert check(f32, "exact", alignment="top_left", **claims).passed
    rep = check(f32, "exact", **claims)
    assert {v.check for v in rep.failures} == {c.name for c in grid() if c.causal and c.T != c.S
                                                and not c.option and not c.batch}
    assert all("the other causal alignment (top_left)" in v.meaning for v in rep.failures)


def test_jax_gradients_through_the_backward_adapter():
    """Its gradients pass with ``empty_rows="any"`` (no gradient flows from a row that sees no key;
    under the default, zeros, the masked rows' uniform weights reach dv: the slow twin)."""
    jax = pytest.importorskip("jax")
    grads = jax_backward(jax.nn.dot_product_attention, dtype="float32", keywords=JAX_KEYWORDS)
    claims = dict(alignment="top_left", layout="BTNH", precision="float32", equal_head_dims=True, sizes="small")
    assert check(grads, "backward", empty_rows="any", **claims).passed


@pytest.mark.slow
def test_jax_gradients_under_the_zeros_convention_fail_on_the_masked_rows_alone():
    jax = pytest.importorskip("jax")
    grads = jax_backward(jax.nn.dot_product_attention, dtype="float32", keywords=JAX_KEYWORDS)
    claims = dict(alignment="top_left", layout="BTNH", precision="float32", equal_head_dims=True, sizes="small")
    failed = check(grads, "backward", **claims).failures
    assert [v.check for v in failed] == ["fully masked rows"], failed


def test_torch_scaled_dot_product_attention_in_float32():
    torch = pytest.importorskip("torch")
    sdpa = torch_forward(torch.nn.functional.scaled_dot_product_attention, dtype="float32",
                         keywords={"causal": "is_causal", "mask": "attn_mask"})
    rep = check(sdpa, "exact", layout="BNTH", precision="float32", alignment="top_left")
    assert rep.passed, rep.format_table()
    grads = torch_backward(torch.nn.functional.scaled_dot_product_attention, dtype="float32",
                           keywords={"causal": "is_causal", "mask": "attn_mask"})
    assert check(grads, "backward", layout="BNTH", precision="float32", alignment="top_left").passed


SDPA_KEYWORDS = {"causal": "is_causal", "mask": "attn_mask"}


@pytest.mark.parametrize("precision", ["float64", "float32", "bfloat16", "float16"])
def test_torch_sdpa_passes_at_each_precision_with_its_claims(precision):
    """torch's scaled_dot_product_attention (CPU), (B, N, T, H), causal top-left: a correct kernel at
    each precision passes the default grid (tiles, masks, fully masked rows, no keys), with grouped
    query heads through enable_gqa; claimed bottom-right, its T != S causal cases fail, named. The
    false alarms over 30 seeds are in benchmarks/results/rule_audit.json (scripts/rule_audit.py)."""
    from functools import partial

    torch = pytest.importorskip("torch")
    sdpa = torch.nn.functional.scaled_dot_product_attention
    claims = dict(layout="BNTH", precision=precision, sizes="tiles" if precision == "float32" else "small")
    fn = torch_forward(sdpa, dtype=precision, layout="BNTH", keywords=SDPA_KEYWORDS)
    rep = check(fn, "exact", alignment="top_left", **claims)
    assert rep.passed and {"fully masked rows", "no keys (S = 0)"} <= {
        v.check for v in rep.verdicts if v.passed}, rep.format_table()
    gqa = torch_forward(partial(sdpa, enable_gqa=True), dtype=precision, layout="BNTH", keywords=SDPA_KEYWORDS)
    assert check(gqa, "exact", alignment="top_left", gqa=True, **claims).passed
    if precision == "float32":
        failed = check(fn, "exact", **claims).failures
        assert {v.check for v in failed} >= {"causal T < S", "causal T > S", "causal tiles 65 x 257"}
        assert all("the other causal alignment (top_left)" in v.meaning for v in failed)


def test_results_come_back_as_numpy():
    jnp = pytest.importorskip("jax.numpy")
    fn = jax_forward(lambda q, k, v: jnp.asarray(q), dtype="bfloat16")
    out = fn(np.ones((2, 3), np.float32), np.ones((2, 3)), np.ones((2, 3)))
    assert isinstance(out, np.ndarray) and out.dtype == np.float32  # bfloat16 comes back as float32 values
