"""
Check your attention kernel
===========================

You wrote an attention kernel (PyTorch, JAX, Triton, CUDA: anything whose output `numpy.asarray`
accepts) and want to know whether it computes softmax attention, to the accuracy its precision
allows. refattn's oracle gives the answer in three steps: compare against the float64 reference
with the FlashAttention rule, read the diagnosis when it fails, then let Hypothesis search shapes,
masks and temperatures for a counterexample inside your pytest suite.

The rule (the docs' *Exact attention* page): with `ref64` the float64 oracle and `ref_lo` the
oracle computed in your kernel's precision, a kernel passes when
`max|out - ref64| <= 2 max|ref_lo - ref64| + floor`: it may be twice as wrong as a careful
implementation in the same precision, never more.
"""

# %%
# A float32 kernel
# ----------------
# This stands for your kernel: a textbook float32 softmax attention with a causal option. Causal
# attention with more keys than queries has two conventions; the oracle's default (and
# FlashAttention's) is *bottom-right*: query `i` sees keys `j <= i + S - T`.
import numpy as np

from refattn import causal_mask
from refattn.testing import check_close_to_reference


def my_attention(q, k, v, causal=False, alignment="bottom_right"):
    q, k, v = (np.asarray(x, dtype=np.float32) for x in (q, k, v))
    logits = (q @ np.swapaxes(k, -1, -2)) / np.float32(np.sqrt(q.shape[-1]))
    if causal:
        logits = np.where(causal_mask(q.shape[-2], k.shape[-2], alignment), logits, -np.inf)
    p = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (p / p.sum(axis=-1, keepdims=True)) @ v


rng = np.random.default_rng(0)
q, k, v = rng.normal(size=(64, 32)), rng.normal(size=(96, 32)), rng.normal(size=(96, 16))
verdict = check_close_to_reference(my_attention(q, k, v, causal=True), q, k, v, causal=True, dtype=np.float32)
print(verdict.summary())
assert verdict.passed

# %%
# A planted bug
# -------------
# The same kernel with the other causal convention (*top-left*: query `i` sees keys `j <= i`) is
# a real bug found in real kernels: it agrees with the reference whenever `T == S`, so a test on
# square inputs never sees it. With 64 queries and 96 keys the rule fails, by orders of magnitude:
buggy = my_attention(q, k, v, causal=True, alignment="top_left")
verdict_bug = check_close_to_reference(buggy, q, k, v, causal=True, dtype=np.float32)
print(verdict_bug.summary())
assert not verdict_bug.passed

# %%
# Where it goes wrong: the error of every row against the float64 oracle. Each query row sees 32
# fewer keys than it should, so every row is wrong; the first rows, which see only a handful of
# keys instead of 33 or more, are the worst.
from refattn import softmax_attention

ref = softmax_attention(q, k, v, causal=True)
row_error_ok = np.abs(my_attention(q, k, v, causal=True) - ref).max(axis=-1)
row_error_bug = np.abs(buggy - ref).max(axis=-1)
print(f"rows of the buggy kernel beyond the bound: {(row_error_bug > verdict.bound).sum()} of {len(ref)}")

# %%
# The same search in pytest, with Hypothesis
# ------------------------------------------
# One input proves little. `refattn.testing.attention_inputs` is a Hypothesis strategy that draws
# shapes, batch dimensions, causal flags and temperatures (and the kernel options your function
# accepts); the rule is applied to each draw. Put this in your test suite (here it runs in place
# of `pytest test_my_kernel.py`; `assert_close_to_reference` does the same and prints the
# numbers of every call):
from hypothesis import given, settings

from refattn.testing import attention_inputs


def rule(kernel):
    @settings(max_examples=60, deadline=None, derandomize=True, database=None)
    @given(attention_inputs(masks=False, max_batch_dims=1))
    def test_kernel(x):
        causal = bool(x.kwargs.get("causal", False))
        verdict = check_close_to_reference(kernel(x.q, x.k, x.v, causal=causal), x.q, x.k, x.v,
                                           causal=causal, dtype=np.float32)
        assert verdict.passed, verdict.summary()
    return test_kernel


try:
    with np.errstate(invalid="ignore"):  # the kernel's 0/0, which the verdict reports
        rule(my_attention)()
except AssertionError as exc:
    print(str(exc))
    print("\n".join(getattr(exc, "__notes__", [])))  # Hypothesis' shrunk failing input

# %%
# The textbook kernel fails, and not on a bug we planted: with more queries than keys, causal
# bottom-right leaves the first `T - S` query rows with **no visible key**. The softmax of an
# empty row is 0/0 = NaN in the kernel; the oracle's convention (FlashAttention's too) is an
# output of 0 for such a row (the docs' *Exact attention* page). Hypothesis shrank the failing
# input to two queries and one key. The fix is two `np.where`s:


def my_attention_fixed(q, k, v, causal=False, alignment="bottom_right"):
    q, k, v = (np.asarray(x, dtype=np.float32) for x in (q, k, v))
    logits = (q @ np.swapaxes(k, -1, -2)) / np.float32(np.sqrt(q.shape[-1]))
    if causal:
        logits = np.where(causal_mask(q.shape[-2], k.shape[-2], alignment), logits, -np.inf)
    top = logits.max(axis=-1, keepdims=True)
    p = np.exp(logits - np.where(np.isfinite(top), top, 0))  # an empty row: all zeros, no NaN
    denom = p.sum(axis=-1, keepdims=True)
    return np.where(denom > 0, p / np.where(denom > 0, denom, 1), 0) @ v


rule(my_attention_fixed)()
print("my_attention_fixed: 60 Hypothesis examples pass")

# %%
# And the planted alignment bug, on the fixed kernel: Hypothesis finds it too (any causal draw
# with fewer queries than keys).


def top_left(q, k, v, causal=False):
    return my_attention_fixed(q, k, v, causal=causal, alignment="top_left")


try:
    rule(top_left)()
except AssertionError as exc:
    print("Hypothesis found:", str(exc).splitlines()[0][:200])
else:
    raise AssertionError("Hypothesis should have found the planted bug")

# %%
# The picture
# -----------
# Each row's error against the float64 oracle, for the correct kernel and the planted bug, with
# the rule's bound: the correct kernel sits far below it, the bug far above.
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(8, 4))
rows = np.arange(len(ref))
ax.semilogy(rows, np.maximum(row_error_ok, 1e-12), "o", ms=3, label="my_attention (float32)")
ax.semilogy(rows, row_error_bug, "s", ms=3, label="planted bug (top-left causal alignment)")
ax.axhline(verdict.bound, color="k", ls="--", lw=1, label=f"the rule's bound ({verdict.bound:.1e})")
ax.set(xlabel="query row", ylabel="max |out - ref64| in the row",
       title="Checking a kernel against the float64 oracle (T = 64 queries, S = 96 keys, causal)")
ax.legend(loc="center right", fontsize=8)
fig.tight_layout()
