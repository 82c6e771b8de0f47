r"""SEA against the exact oracle: recall of the true top-k keys, captured mass, output error, and
the comparison with Performer alone and sparse-only attention at the same memory (Lee et al. 2024, Sec. 4).

Memory accounting (numbers stored per query for the attention pattern, ``T = S``): SEA keeps the
compressed estimate (``K``) and the mask (``k``): ``K + k``. At the same memory, Performer alone
gets ``m = K + k`` features, and sparse-only attention a causal (or centred) window of ``K + k``
keys. The exact top-``k`` support (an oracle) is listed as the best any mask of ``k`` keys does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refattn._extras import install_hint
from refattn._validation import InputError
from refattn.exact import attention_probabilities, softmax_attention
from refattn.lsh.sparse import local_window, sparse_attention, support_probabilities, topk_support
from refattn.performer.attention import performer_attention
from refattn.problem import attention_problem
from refattn.sea.attention import sea_attention
from refattn.sea.mask import captured_mass, upsample

__all__ = ["SEAMetricsRow", "mask_recall", "sea_metrics", "compare_at_memory", "sea_sweep", "interpretable",
           "plot_interpretable"]


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
    """The figures of one single-head [`refattn.sea.attention.SEAResult`][refattn.sea.attention.SEAResult] against the oracle."""
    o = softmax_attention(q, k, v, scale=scale, causal=causal)
    K = result.estimate.shape[-1]
    return _row("sea", K + int(topk), q, k, result.output, o, result.supports[0], topk, scale, causal)


def compare_at_memory(q, k, v, *, n_bins, topk, m=64, rng=None, scale=None, causal=False, decoders=None):
    """SEA (each decoder in ``decoders``, default fixed and oracle), Performer alone, a window and the
    top-k oracle, at the memory of the module docstring. One head: ``q (T, H)``, ``k (S, H)``, ``v (S, Hv)``."""
    prob = attention_problem(q, k, v, scale=scale, causal=causal)
    if prob.batch_shape:
        raise InputError("q: compare_at_memory takes one head (2-D q, k, v)")
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


def sea_sweep(q, k, v, *, n_bins_list, topk_list, m=64, rng=None, scale=None, causal=False, decoders=None):
    """SEA's figures as ``K`` and ``k`` vary: a list of ``(K, k, SEAMetricsRow)`` for every decoder
    (default fixed and oracle). One head. The kernel estimate is recomputed per ``K`` (its basis)."""
    o = softmax_attention(q, k, v, scale=scale, causal=causal)
    out = []
    for K in n_bins_list:
        for kk in topk_list:
            for name, dec in (decoders or {"fixed": "fixed", "oracle": "oracle"}).items():
                res = sea_attention(q, k, v, n_bins=K, topk=kk, m=m, decoder=dec, rng=rng, scale=scale, causal=causal)
                out.append((K, kk, _row(f"sea ({name})", K + kk, q, k, res.output, o, res.supports[0], kk, scale,
                                        causal)))
    return out


def interpretable(q, k, result, *, head=0, scale=None, causal=False) -> dict:
    """SEA's interpretable attention for one head, as dense ``(T, S)`` arrays (for inspection at small sizes):
    ``teacher`` (the exact probabilities), ``estimate`` (``A~`` upsampled, rows sum to 1), ``mask``
    (boolean) and ``sparse`` (the probabilities SEA used, zero off the mask), plus ``compressed`` ``(T, K)``."""
    est = result.estimate if result.estimate.ndim == 2 else result.estimate[head]
    q_h = q if np.ndim(q) == 2 else q[head]
    k_h = k if np.ndim(k) == 2 else k[head]
    sup = result.supports[head]
    T, S = sup.n_queries, sup.n_keys
    sparse = np.zeros((T, S))
    sparse[sup.rows(), sup.indices] = support_probabilities(q_h, k_h, sup, scale=scale)
    return {"teacher": attention_probabilities(q_h, k_h, scale=scale, causal=causal),
            "estimate": upsample(est, result.lengths, S), "mask": sup.to_dense(), "sparse": sparse,
            "compressed": est}


def plot_interpretable(views: dict, path=None, *, title=None):
    """Teacher, estimate and mask side by side (log colour scale for the probabilities). Needs matplotlib
    (``pip install matplotlib``); returns the figure, and writes ``path`` when given."""
    try:
        import matplotlib

        if path is not None:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import LogNorm
    except ImportError as exc:  # an optional extra
        raise ImportError(f"plot_interpretable needs matplotlib: {install_hint('plots')}") from exc
    panels = [("teacher: exact P", views["teacher"]), ("SEA's estimate of P (upsampled)", views["estimate"]),
              ("SEA's mask: the kept entries of P", views["sparse"])]
    rows, cols = np.shape(views["teacher"])
    fig, axes = plt.subplots(1, 3, figsize=(12, 12 / 3 * rows / cols * 0.95 + 0.9), layout="constrained",
                             sharey=True)
    pos = [v[v > 0] for _, v in panels if (v > 0).any()]
    lo = max(min(float(p.min()) for p in pos), 1e-6) if pos else 1e-6
    norm = LogNorm(vmin=lo, vmax=1.0)
    for ax, (name, img) in zip(axes, panels):
        im = ax.imshow(np.where(img > 0, img, np.nan), norm=norm, cmap="viridis", interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("key j")
    axes[0].set_ylabel("query i")
    bar = fig.colorbar(im, ax=axes, shrink=0.9, pad=0.01)
    bar.set_label("attention probability $P_{ij}$ (log scale; blank: 0)")
    if title:
        fig.suptitle(title, fontsize=11)
    if path is not None:
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig
