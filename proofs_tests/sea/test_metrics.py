"""SEA against Performer and a window at the same memory (refattn.sea.metrics). Deterministic.
"""

import numpy as np

from refattn.evaluation.datasets import local_sink_inputs
from refattn.sea.metrics import compare_at_memory


def test_compare_at_memory_rows():
    rng = np.random.default_rng(1)
    q, k = local_sink_inputs(128, 16, rng)
    v = rng.normal(size=(128, 4))
    rows = compare_at_memory(q, k, v, n_bins=16, topk=8, m=16, rng=2, causal=True)
    names = [r.method for r in rows]
    assert names == ["sea (fixed)", "sea (oracle)", "performer", "window", "top-k oracle"]
    best = rows[-1]
    assert best.recall == 1.0
    for r in rows:
        assert r.output_error >= 0
        if r.method.startswith("sea") or r.method == "top-k oracle":
            assert 0 < r.captured_mean <= 1 + 1e-12
    assert rows[1].captured_mean <= best.captured_mean + 1e-12 or rows[1].recall < 1  # k keys: top-k is best
