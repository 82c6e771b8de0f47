r"""SEA against the exact oracle: recall of the true top-k keys, captured mass, output error, and
the comparison with Performer alone and sparse-only attention at the same memory (issue 6, item 7).

Memory accounting (numbers stored per query for the attention pattern, ``T = S``): SEA keeps the
compressed estimate (``K``) and the mask (``k``): ``K + k``. At the same memory, Performer alone
gets ``m = K + k`` features, and sparse-only attention a causal (or centred) window of ``K + k``
keys. The exact top-``k`` support (an oracle) is listed as the best any mask of ``k`` keys does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refattn.exact import softmax_attention
from refattn.problem import attention_problem
from refattn.sea import captured_mass, sea_attention
from refattn.sparse import local_window, sparse_attention, topk_support

__all__ = ["SEAMetricsRow", "mask_recall", "sea_metrics", "compare_at_memory"]


@dataclass
class SEAMetricsRow:
    """One method's figures: mean recall of the true top-k keys (NaN where it keeps no mask),
    mean and minimum captured mass, and the relative Frobenius output error ``|O^ - O|_F / |O|_F``."""

    method: str
    memory: int
    recall: float
    captured_mean: float
    captured_min: float
    output_error: float


def mask_recall(q, k, support, topk, *, scale=None, causal=False) -> np.ndarray:
    """Per row, the fraction of the true top-``k`` keys (exact logits, ties to the lower key) in ``support``."""
    truth = topk_support(q, k, topk, scale=scale, causal=causal)
    mine = support.to_dense()
    hit = mine[truth.rows(), truth.indices]
    counts = truth.row_counts()
    found = np.bincount(truth.rows(), weights=hit, minlength=truth.n_queries)
    return np.divide(found, counts, out=np.full(counts.shape, np.nan), where=counts > 0)


def _row(method, memory, q, k, o_hat, o_exact, support, topk, scale, causal):
    err = float(np.linalg.norm(o_hat - o_exact) / np.linalg.norm(o_exact))
    if support is None:
        return SEAMetricsRow(method, memory, float("nan"), float("nan"), float("nan"), err)
    mass = captured_mass(q, k, [support], scale=scale, causal=causal)[0]
    recall = mask_recall(q, k, support, topk, scale=scale, causal=causal)
    return SEAMetricsRow(method, memory, float(np.nanmean(recall)), float(mass.mean()), float(mass.min()), err)


def sea_metrics(q, k, v, result, topk, *, scale=None, causal=False) -> SEAMetricsRow:
    """The figures of one single-head :class:`refattn.sea.SEAResult` against the oracle."""
    o = softmax_attention(q, k, v, scale=scale, causal=causal)
    K = result.estimate.shape[-1]
    return _row("sea", K + int(topk), q, k, result.output, o, result.supports[0], topk, scale, causal)


def compare_at_memory(q, k, v, *, n_bins, topk, m=64, rng=None, scale=None, causal=False, decoders=None):
    """SEA (each decoder in ``decoders``, default fixed and oracle), Performer alone, a window and the
    top-k oracle, at the memory of the module docstring. One head: ``q (T, H)``, ``k (S, H)``, ``v (S, Hv)``."""
    from refattn.performer import performer_attention

    prob = attention_problem(q, k, v, scale=scale, causal=causal)
    if prob.batch_shape:
        raise ValueError("q: compare_at_memory takes one head (2-D q, k, v)")
    s = prob.scale
    o = softmax_attention(q, k, v, scale=s, causal=causal)
    mem = int(n_bins) + int(topk)
    rows = []
    for name, dec in (decoders or {"fixed": "fixed", "oracle": "oracle"}).items():
        res = sea_attention(q, k, v, n_bins=n_bins, topk=topk, m=m, decoder=dec, rng=rng, scale=s, causal=causal)
        rows.append(_row(f"sea ({name})", mem, q, k, res.output, o, res.supports[0], topk, s, causal))
    perf = performer_attention(q, k, v, m=mem, rng=rng, scale=s, causal=causal).output
    rows.append(_row("performer", mem, q, k, perf, o, None, topk, s, causal))
    T, S = prob.T, prob.S
    win = local_window(T, S, mem - 1, 0, causal=True) if causal else local_window(T, S, mem // 2, mem - mem // 2 - 1)
    rows.append(_row("window", mem, q, k, sparse_attention(q, k, v, win, scale=s), o, win, topk, s, causal))
    best = topk_support(q, k, topk, scale=s, causal=causal)
    rows.append(_row("top-k oracle", int(topk), q, k, sparse_attention(q, k, v, best, scale=s), o, best, topk, s,
                     causal))
    return rows
