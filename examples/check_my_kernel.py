"""Check a hand-written attention kernel against refattn's oracle.

Run: `python examples/check_my_kernel.py`

`my_float32_attention` stands for your kernel (PyTorch, JAX, Triton...: anything whose output
numpy.asarray accepts). The FlashAttention rule judges it against the float64 oracle, and
Hypothesis searches shapes, masks, dtypes and temperatures for a counterexample. A second
kernel with a planted bug (the other causal alignment) shows what a failure looks like.
"""

import numpy as np
from hypothesis import given, settings

from refattn import causal_mask
from refattn.testing import assert_close_to_reference, attention_inputs, check_close_to_reference


def my_float32_attention(q, k, v, causal=False, alignment="bottom_right"):
    q, k, v = (np.asarray(x, dtype=np.float32) for x in (q, k, v))
    logits = (q @ np.swapaxes(k, -1, -2)) / np.float32(np.sqrt(q.shape[-1]))
    if causal:
        logits = np.where(causal_mask(q.shape[-2], k.shape[-2], alignment), logits, -np.inf)
    m = logits.max(axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    p = np.exp(logits - m)
    denom = p.sum(axis=-1, keepdims=True)
    return np.where(denom > 0, (p / np.where(denom > 0, denom, 1)) @ v, 0)


@settings(max_examples=50, deadline=None, derandomize=True)
@given(attention_inputs(masks=False, max_batch_dims=1))
def check_kernel(x):
    causal = bool(x.kwargs.get("causal", False))
    out = my_float32_attention(x.q, x.k, x.v, causal=causal)
    assert_close_to_reference(out, x.q, x.k, x.v, causal=causal, dtype=np.float32, name=f"T={x.q.shape[-2]}")


def main():
    check_kernel()
    print("my_float32_attention passes the FlashAttention rule on 50 Hypothesis examples")
    rng = np.random.default_rng(0)
    q, k, v = rng.normal(size=(6, 16)), rng.normal(size=(9, 16)), rng.normal(size=(9, 4))
    wrong = my_float32_attention(q, k, v, causal=True, alignment="top_left")
    verdict = check_close_to_reference(wrong, q, k, v, causal=True)
    print("planted bug (top-left alignment):", verdict.summary())
    assert not verdict.passed, "the rule should have caught the planted bug"


if __name__ == "__main__":
    main()
