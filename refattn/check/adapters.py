r"""Adapters: a PyTorch or JAX attention function into the checker's contract, in one call.

``refattn check`` hands a callable NumPy arrays (float64, or the claimed precision; bfloat16
values arrive in float32 arrays) and reads NumPy arrays back. An adapter converts the inputs to
the framework's tensors (dtype, device), renames the checker's keywords to the function's,
converts the result back, and exposes a signature that tells the checker which keywords the
function takes::

    import torch.nn.functional as F
    from refattn.check import check
    from refattn.check.adapters import torch_forward

    sdpa = torch_forward(F.scaled_dot_product_attention, dtype="float32", layout="BNTH",
                         keywords={"causal": "is_causal", "mask": "attn_mask"})
    check(sdpa, "exact", precision="float32", layout="BNTH", alignment="top_left")

``keywords`` maps the checker's keyword names (``causal``, ``mask``, ``window_size``,
``softcap``, ``alibi_slopes``, ``bias``, ``key_lengths``, ``return_lse``) to the function's. The
frameworks import lazily: refattn does not depend on them (extras ``torch``, ``jax``).
[`torch_backward`][refattn.check.adapters.torch_backward] and [`jax_backward`][refattn.check.adapters.jax_backward] turn a differentiable forward into the backward
kind's ``fn(q, k, v, dout, ...) -> (dq, dk, dv)`` by autograd.
"""

from __future__ import annotations

import inspect

import numpy as np

from refattn.precision import widen

__all__ = ["torch_forward", "torch_backward", "jax_forward", "jax_backward", "pairwise_merge", "MERGE_STYLES",
           "varlen_adapter", "paged_adapter", "PAGED_STYLES"]

#: The two-state merge signatures `pairwise_merge` adapts.
MERGE_STYLES = ("flashinfer", "vllm")
#: The paged-attention signatures `paged_adapter` adapts.
PAGED_STYLES = ("flash_attn", "vllm")


def _signature(names, keywords):
    params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names]
    params += [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=None) for k in keywords]
    return inspect.Signature(params)


def _renamed(kw, keywords):
    return {keywords[k]: v for k, v in kw.items() if v is not None and k in keywords}


def _torch_tensor(torch, a, dtype, device, grad=False):
    if not isinstance(a, np.ndarray):
        return a
    t = torch.as_tensor(np.ascontiguousarray(a), device=device)
    if t.is_floating_point():
        t = t.to(getattr(torch, dtype) if dtype else t.dtype)
    return t.requires_grad_(grad) if grad else t


def _from_torch(t):
    t = t.detach().cpu()
    return (t.float() if str(t.dtype) == "torch.bfloat16" else t).numpy()  # NumPy has no bfloat16


class _Adapter:
    """A framework function in the checker's contract: a module-level class, so the checker's worker
    process receives it pickled (by reference to ``fn``) and imports the framework itself, rather than
    inheriting it by ``fork`` from a process whose framework threads may hold a lock (a JAX or torch
    process forked mid-flight can deadlock)."""

    names = ("q", "k", "v")
    prefix = "adapter"

    def __init__(self, fn, *, dtype=None, keywords=None, label=""):
        self.fn, self.dtype, self.keywords = fn, dtype, dict(keywords or {})
        name = getattr(fn, "__name__", None) or getattr(getattr(fn, "func", None), "__name__", "fn")  # a partial's
        self.__name__ = self.__qualname__ = f"{self.prefix}({name}{label})"

    @property
    def __signature__(self):
        return _signature(self.names, self.keywords)

    def __repr__(self):
        return self.__name__


class _TorchForward(_Adapter):
    prefix = "torch_forward"
    def __init__(self, fn, *, dtype=None, device="cpu", keywords=None, layout="TH"):
        super().__init__(fn, dtype=dtype, keywords=keywords, label=f", {layout}")
        self.device = device

    def __call__(self, q, k, v, **kw):
        import torch

        args = [_torch_tensor(torch, a, self.dtype, self.device) for a in (q, k, v)]
        extra = {n: _torch_tensor(torch, a, None, self.device) for n, a in _renamed(kw, self.keywords).items()}
        with torch.no_grad():
            out = self.fn(*args, **extra)
        return tuple(_from_torch(o) for o in out) if isinstance(out, tuple) else _from_torch(out)


class _TorchBackward(_Adapter):
    prefix = "torch_backward"
    names = ("q", "k", "v", "dout")

    def __init__(self, fn, *, dtype=None, device="cpu", keywords=None):
        super().__init__(fn, dtype=dtype, keywords=keywords)
        self.device = device

    def __call__(self, q, k, v, dout, **kw):
        import torch

        args = [_torch_tensor(torch, a, self.dtype, self.device, grad=True) for a in (q, k, v)]
        extra = {n: _torch_tensor(torch, a, None, self.device) for n, a in _renamed(kw, self.keywords).items()}
        out = self.fn(*args, **extra)
        out.backward(_torch_tensor(torch, dout, self.dtype, self.device).to(out.dtype))
        return tuple(_from_torch(a.grad) for a in args)


class _JaxForward(_Adapter):
    prefix = "jax_forward"
    def __call__(self, q, k, v, **kw):
        import jax.numpy as jnp

        args = [_jax_array(jnp, a, self.dtype) for a in (q, k, v)]
        extra = {n: _jax_array(jnp, a, None) for n, a in _renamed(kw, self.keywords).items()}
        out = self.fn(*args, **extra)
        return tuple(_from_jax(o) for o in out) if isinstance(out, tuple) else _from_jax(out)


class _JaxBackward(_Adapter):
    prefix = "jax_backward"
    names = ("q", "k", "v", "dout")

    def __call__(self, q, k, v, dout, **kw):
        import jax
        import jax.numpy as jnp

        args = [_jax_array(jnp, a, self.dtype) for a in (q, k, v)]
        extra = {n: _jax_array(jnp, a, None) for n, a in _renamed(kw, self.keywords).items()}
        out, vjp = jax.vjp(_Bound(self.fn, extra), *args)
        return tuple(_from_jax(g) for g in vjp(_jax_array(jnp, dout, self.dtype).astype(out.dtype)))


class _Bound:
    """``fn`` with its keywords bound, as a function of ``(q, k, v)`` (what ``jax.vjp`` differentiates)."""

    def __init__(self, fn, kw):
        self.fn, self.kw = fn, kw

    def __call__(self, q, k, v):
        return self.fn(q, k, v, **self.kw)


def torch_forward(fn, *, dtype=None, device="cpu", keywords=None, layout="TH"):
    """``fn(q, k, v, **kw)`` on torch tensors as the checker's ``fn(q, k, v, ...) -> out`` (under
    ``torch.no_grad``). ``dtype``: the tensors' dtype name (``"float32"``, ``"bfloat16"``, ...;
    None keeps the input's); ``layout`` is documentation only: pass the same to ``check``. The
    result pickles when ``fn`` does (a module-level function, a ``functools.partial`` of one), so
    the checker's worker imports torch itself."""
    return _TorchForward(fn, dtype=dtype, device=device, keywords=keywords, layout=layout)


def torch_backward(fn, *, dtype=None, device="cpu", keywords=None):
    """The backward kind's ``fn(q, k, v, dout, ...) -> (dq, dk, dv)`` of a differentiable torch forward."""
    return _TorchBackward(fn, dtype=dtype, device=device, keywords=keywords)


def _jax_array(jnp, a, dtype):
    if not isinstance(a, np.ndarray):
        return a
    x = jnp.asarray(a)
    return x.astype(dtype) if dtype and jnp.issubdtype(x.dtype, jnp.floating) else x


def _from_jax(x):
    a = np.asarray(x)
    return widen(a)


def jax_forward(fn, *, dtype=None, keywords=None):
    """``fn(q, k, v, **kw)`` on JAX arrays as the checker's ``fn(q, k, v, ...) -> out``.
    ``dtype``: ``"float32"``, ``"bfloat16"``, ... (None keeps the input's; float64 needs
    ``jax_enable_x64``)."""
    return _JaxForward(fn, dtype=dtype, keywords=keywords)


def jax_backward(fn, *, dtype=None, keywords=None):
    """The backward kind's ``fn(q, k, v, dout, ...) -> (dq, dk, dv)`` of a JAX forward, by ``jax.vjp``."""
    return _JaxBackward(fn, dtype=dtype, keywords=keywords)


class _PairwiseMerge(_Adapter):
    """A two-state merge folded over the states (`pairwise_merge`)."""

    prefix = "pairwise_merge"
    names = ("outs", "lses")

    def __init__(self, fn, *, style, framework, device, dtype):
        super().__init__(fn, dtype=dtype, label=f", {style}")
        self.style, self.framework, self.device = style, framework, device

    def __call__(self, outs, lses):
        if self.framework == "torch":
            import torch

            conv = lambda a: _torch_tensor(torch, a, self.dtype, self.device)  # noqa: E731
            back = _from_torch
        else:
            conv = back = np.asarray
        out, lse = conv(outs[0]), conv(np.ascontiguousarray(lses[0]))
        for c in range(1, len(outs)):
            o_b, l_b = conv(outs[c]), conv(np.ascontiguousarray(lses[c]))
            if self.style == "flashinfer":  # merge_state(v_a, s_a, v_b, s_b) -> (v, s)
                out, lse = self.fn(out, lse, o_b, l_b)
            else:  # merge_attn_states(output, prefix_output, prefix_lse, suffix_output, suffix_lse, output_lse)
                new_out = out * 0 if self.framework == "numpy" else out.new_empty(out.shape)
                new_lse = lse * 0 if self.framework == "numpy" else lse.new_empty(lse.shape)
                self.fn(new_out, out, lse, o_b, l_b, new_lse)
                out, lse = new_out, new_lse
        return back(out), back(lse)


def _converters(framework, dtype, device):
    """``(to, back)``: NumPy arrays to the framework's (floating arrays in ``dtype``, integer arrays as
    int32, anything else as it is) and results back to NumPy."""
    if framework not in ("numpy", "torch"):
        raise ValueError(f"framework: expected 'numpy' or 'torch', got {framework!r}")
    if framework == "numpy":
        def to(a):
            return np.asarray(a, np.int32) if isinstance(a, np.ndarray) and a.dtype.kind in "iu" else a
        return to, np.asarray

    def to_torch(a):
        import torch

        if isinstance(a, np.ndarray) and a.dtype.kind in "iu":
            return torch.as_tensor(np.ascontiguousarray(a, np.int32), device=device)
        return _torch_tensor(torch, a, dtype, device)
    return to_torch, _from_torch


class _Varlen(_Adapter):
    """flash-attn's ``flash_attn_varlen_func`` on the framework's tensors (`varlen_adapter`)."""

    prefix = "varlen_adapter"
    names = ("q", "k", "v", "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k")

    def __init__(self, fn, *, framework, device, dtype):
        super().__init__(fn, dtype=dtype, keywords={n: n for n in ("causal", "window_size", "seqused_k")},
                         label=f", {framework}")
        self.framework, self.device = framework, device

    def __call__(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **kw):
        to, back = _converters(self.framework, self.dtype, self.device)
        extra = {n: to(a) for n, a in kw.items() if a is not None}
        return back(self.fn(*(to(a) for a in (q, k, v, cu_seqlens_q, cu_seqlens_k)), int(max_seqlen_q),
                            int(max_seqlen_k), **extra))


def varlen_adapter(fn, *, framework="torch", device="cuda", dtype=None):
    """The varlen kind's callable from flash-attn's ``flash_attn_varlen_func(q, k, v, cu_seqlens_q,
    cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=, window_size=, seqused_k=)`` (and any kernel with
    its signature): the arrays handed over as the framework's tensors on ``device`` (floating ones in
    ``dtype``, e.g. ``"bfloat16"``; the offsets and lengths int32), the output back as NumPy."""
    _converters(framework, dtype, device)
    return _Varlen(fn, framework=framework, device=device, dtype=dtype)


class _Paged(_Adapter):
    """A library's paged attention in the paged kind's contract (`paged_adapter`)."""

    prefix = "paged_adapter"
    names = ("q", "k_cache", "v_cache")

    def __init__(self, fn, *, style, framework, device, dtype):
        keywords = ("cache_seqlens", "block_table", "causal", "window_size") + (("k", "v") if style == "flash_attn"
                                                                                else ())
        super().__init__(fn, dtype=dtype, keywords={n: n for n in keywords}, label=f", {style}, {framework}")
        self.style, self.framework, self.device = style, framework, device

    def __call__(self, q, k_cache, v_cache, k=None, v=None, *, cache_seqlens, block_table, **kw):
        to, back = _converters(self.framework, self.dtype, self.device)
        extra = {n: to(a) for n, a in kw.items() if a is not None}
        if self.style == "flash_attn":  # flash_attn_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=, block_table=)
            new = {} if k is None else {"k": to(k), "v": to(v)}
            return back(self.fn(to(q), to(k_cache), to(v_cache), **new, cache_seqlens=to(cache_seqlens),
                                block_table=to(block_table), **extra))
        # vLLM: the batch's queries packed, the cache's lengths as seqused_k (flash_attn_varlen_func with a block
        # table, as vLLM's flash-attention backend calls it; the new tokens are written to the cache beforehand)
        B, T = q.shape[:2]
        lens = np.asarray(cache_seqlens)
        out = self.fn(q=to(np.reshape(q, (B * T,) + q.shape[2:])), k=to(k_cache), v=to(v_cache),
                      cu_seqlens_q=to(np.arange(B + 1, dtype=np.int32) * T), max_seqlen_q=int(T),
                      seqused_k=to(lens), max_seqlen_k=int(lens.max(initial=0)), block_table=to(block_table),
                      **extra)
        out = back(out)
        return np.reshape(out, (B, T) + out.shape[1:])


def paged_adapter(fn, *, style="flash_attn", framework="torch", device="cuda", dtype=None):
    """The paged kind's callable from a library's paged attention.

    ``style="flash_attn"``: flash-attn's ``flash_attn_with_kvcache(q, k_cache, v_cache, k=, v=,
    cache_seqlens=, block_table=, causal=, window_size=)`` (the appended tokens' case is posed).
    ``style="vllm"``: ``fn(q=, k=, v=, cu_seqlens_q=, max_seqlen_q=, seqused_k=, max_seqlen_k=,
    block_table=, causal=, window_size=)``, the call vLLM's flash-attention backend makes of its
    ``flash_attn_varlen_func`` (and its Triton ``unified_attention``): the batch's queries packed
    ``(B T, heads, head_dim)``, the pages as ``k``, ``v``, each item's length as ``seqused_k``; vLLM writes
    new tokens into the cache before the call, so the appended-tokens case is skipped. Arrays are
    handed over as the framework's tensors on ``device`` (floating ones in ``dtype``; integer ones int32)."""
    if style not in PAGED_STYLES:
        raise ValueError(f"style: expected one of {PAGED_STYLES}, got {style!r}")
    _converters(framework, dtype, device)
    return _Paged(fn, style=style, framework=framework, device=device, dtype=dtype)


def pairwise_merge(fn, *, style="flashinfer", framework="numpy", device="cuda", dtype=None):
    """The merge kind's ``fn(outs, lses) -> (out, lse)`` from a library's two-state merge, folded over
    the states (the merge is associative: [`refattn.splitkv`][refattn.splitkv]).

    ``style="flashinfer"``: ``fn(v_a, s_a, v_b, s_b) -> (v, s)`` (flashinfer's ``merge_state``: ``v``
    ``(T, N, D)``, ``s`` ``(T, N)`` in base 2: check with ``lse_layout="TN", lse_base="2"``).
    ``style="vllm"``: ``fn(output, prefix_output, prefix_lse, suffix_output, suffix_lse, output_lse)``
    writing in place (vLLM's ``merge_attn_states``: ``lse`` ``(N, T)``, natural, an infinite lse read as
    empty: ``lse_layout="NT"``, ``empty_lse="+inf"``). ``framework="torch"`` hands it torch tensors on
    ``device`` (of ``dtype``, e.g. ``"float32"``; None keeps the input's)."""
    if style not in MERGE_STYLES:
        raise ValueError(f"style: expected one of {MERGE_STYLES}, got {style!r}")
    if framework not in ("numpy", "torch"):
        raise ValueError(f"framework: expected 'numpy' or 'torch', got {framework!r}")
    return _PairwiseMerge(fn, style=style, framework=framework, device=device, dtype=dtype)
