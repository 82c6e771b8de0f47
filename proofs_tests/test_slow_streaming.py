"""Long runs of the streaming oracle (marked slow; `python -m pytest -m slow`).

The default run covers the same claims at small sizes (test_kernels_streaming.py); these
repeat them where the blocks, threads and the causal skip all matter. Deterministic.
"""

import numpy as np
import pytest

from refattn import softmax_attention


@pytest.mark.slow
@pytest.mark.parametrize("causal", [False, True])
def test_streaming_equals_dense_at_T4096(causal):
    rng = np.random.default_rng(4096)
    q, k, v = (rng.standard_normal((4096, 64)) for _ in range(3))
    ref = softmax_attention(q, k, v, causal=causal, implementation="dense")
    for impl in ("numpy", "numba"):
        out = softmax_attention(q, k, v, causal=causal, implementation=impl)
        assert np.abs(out - ref).max() <= 1e-12 * np.abs(v).max()


@pytest.mark.slow
def test_streaming_runs_where_dense_cannot():
    """T = S = 32768 (dense logits would take 8 GiB): numba and the NumPy twin agree."""
    rng = np.random.default_rng(32768)
    q, k, v = (rng.standard_normal((32768, 32)) for _ in range(3))
    a = softmax_attention(q, k, v, causal=True, implementation="numba")
    b = softmax_attention(q[-64:], k, v, causal=True, implementation="numpy")  # the last 64 rows
    assert np.abs(a[-64:] - b).max() <= 1e-12 * np.abs(v).max()
