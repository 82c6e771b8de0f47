"""The framework checks of test_adapters, as plain functions run in a fresh interpreter each: JAX's
and torch's thread pools must never live in the test process, whose checks fork workers for
closures (a fork of a process with JAX's threads deadlocks)."""

from __future__ import annotations

from functools import partial

import numpy as np

from refattn.check import check
from refattn.check.adapters import jax_backward, jax_forward, torch_backward, torch_forward
from refattn.check.exact import grid

JAX_KEYWORDS = {"causal": "is_causal", "mask": "mask", "bias": "bias"}
SDPA_KEYWORDS = {"causal": "is_causal", "mask": "attn_mask"}


def jax_forward_small():
    import jax

    f32 = jax_forward(jax.nn.dot_product_attention, dtype="float32", keywords=JAX_KEYWORDS)
    claims = dict(layout="BTNH", precision="float32", equal_head_dims=True, alignment="top_left", sizes="small")
    rep = check(f32, "exact", **claims)
    assert [v.check for v in rep.failures] == ["fully masked rows"] and "must be zeros" in rep.failures[0].meaning
    assert sum(v.passed is True for v in rep.verdicts) >= 10
    bf16 = jax_forward(jax.nn.dot_product_attention, dtype="bfloat16", keywords=JAX_KEYWORDS)
    assert check(bf16, "exact", **dict(claims, precision="bfloat16", empty_rows="any")).passed


def jax_forward_tiles():
    import jax

    f32 = jax_forward(jax.nn.dot_product_attention, dtype="float32", keywords=JAX_KEYWORDS)
    claims = dict(layout="BTNH", precision="float32", equal_head_dims=True, empty_rows="any")
    assert check(f32, "exact", alignment="top_left", **claims).passed
    rep = check(f32, "exact", **claims)
    assert {v.check for v in rep.failures} == {c.name for c in grid() if c.causal and c.T != c.S
                                                and not c.option and not c.batch}
    assert all("the other causal alignment (top_left)" in v.meaning for v in rep.failures)


def jax_backward_checks(empty_rows):
    import jax

    grads = jax_backward(jax.nn.dot_product_attention, dtype="float32", keywords=JAX_KEYWORDS)
    claims = dict(alignment="top_left", layout="BTNH", precision="float32", equal_head_dims=True, sizes="small")
    rep = check(grads, "backward", empty_rows=empty_rows, **claims)
    if empty_rows == "any":
        assert rep.passed, rep.format_table()
    else:
        assert [v.check for v in rep.failures] == ["fully masked rows"], rep.format_table()


def torch_float32():
    import torch

    sdpa = torch_forward(torch.nn.functional.scaled_dot_product_attention, dtype="float32", keywords=SDPA_KEYWORDS)
    rep = check(sdpa, "exact", layout="BNTH", precision="float32", alignment="top_left")
    assert rep.passed, rep.format_table()
    grads = torch_backward(torch.nn.functional.scaled_dot_product_attention, dtype="float32", keywords=SDPA_KEYWORDS)
    assert check(grads, "backward", layout="BNTH", precision="float32", alignment="top_left").passed


def torch_sdpa(precision):
    import torch

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


def _first(q, k, v):
    import jax.numpy as jnp

    return jnp.asarray(q)


def jax_results_numpy():
    fn = jax_forward(_first, dtype="bfloat16")
    out = fn(np.ones((2, 3), np.float32), np.ones((2, 3)), np.ones((2, 3)))
    assert isinstance(out, np.ndarray) and out.dtype == np.float32  # bfloat16 comes back as float32 values


def jax_closure_is_refused():
    """A closure cannot be pickled and this process runs JAX: the check says so at once (a fork here
    would deadlock until the start timeout)."""
    import time

    import jax  # noqa: F401 - JAX's threads in this process

    from refattn.check.planted import exact_attention

    start = time.perf_counter()
    rep = check(lambda q, k, v: exact_attention(q, k, v), "exact", sizes="small")
    assert not rep.passed and "this process runs JAX" in rep.verdicts[0].meaning, rep.format_table()
    assert time.perf_counter() - start < 60


def _torch_merge_state(v_a, s_a, v_b, s_b):
    """flashinfer's merge_state written in torch (base-2 lse, (T, N)): what the adapter hands tensors to."""
    import torch

    m = torch.maximum(s_a, s_b)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    a, b = torch.exp2(s_a - m), torch.exp2(s_b - m)
    t = a + b
    st = torch.where(t > 0, t, torch.ones_like(t))
    lse = torch.where(t > 0, m + torch.log2(st), torch.full_like(t, float("-inf")))
    return v_a * (a / st)[..., None] + v_b * (b / st)[..., None], lse


def torch_pairwise_merge():
    from refattn.check.adapters import pairwise_merge

    fn = pairwise_merge(_torch_merge_state, framework="torch", device="cpu", dtype="float32")
    rep = check(fn, "merge", lse_base="2", lse_layout="TN")
    assert rep.passed, rep.format_table()
    assert not check(fn, "merge", lse_layout="TN").passed  # base 2 claimed as natural: fails


def _torch_paged(q, k_cache, v_cache, k=None, v=None, *, cache_seqlens, block_table, **kw):
    """flash_attn_with_kvcache's signature on torch tensors (what paged_adapter hands over)."""
    import torch

    from refattn.check.serving_bugs import paged_kernel

    assert isinstance(q, torch.Tensor) and q.dtype == torch.float32 and block_table.dtype == torch.int32
    np_ = {n: (a.numpy() if isinstance(a, torch.Tensor) else a) for n, a in dict(kw, k=k, v=v).items()}
    out = paged_kernel(q.numpy(), k_cache.numpy(), v_cache.numpy(), cache_seqlens=cache_seqlens.numpy(),
                       block_table=block_table.numpy(), **np_)
    return torch.from_numpy(out)


def _torch_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **kw):
    import torch

    from refattn.check.serving_bugs import varlen_kernel

    assert isinstance(q, torch.Tensor) and q.dtype == torch.float32 and cu_seqlens_q.dtype == torch.int32
    kw = {n: (a.numpy() if isinstance(a, torch.Tensor) else a) for n, a in kw.items()}
    return torch.from_numpy(varlen_kernel(q.numpy(), k.numpy(), v.numpy(), cu_seqlens_q.numpy(), cu_seqlens_k.numpy(),
                                          max_seqlen_q, max_seqlen_k, **kw))


def torch_serving_adapters():
    from refattn.check.adapters import paged_adapter, varlen_adapter

    for fn, kind in ((paged_adapter(_torch_paged, device="cpu", dtype="float32"), "paged"),
                     (varlen_adapter(_torch_varlen, device="cpu", dtype="float32"), "varlen")):
        rep = check(fn, kind, precision="float32")
        assert rep.passed and not any(v.passed is None for v in rep.verdicts), rep.format_table()
