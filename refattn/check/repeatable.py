"""Determinism and batch invariance for ``refattn check --kind exact`` (opt-in: ``--determinism``,
``--batch-invariance``).

Both are claims about bits, not about accuracy (the grid judges accuracy):

- **determinism**: the same inputs, three calls, the same bits every time. A kernel whose
  reduction order depends on scheduling (atomics in a split-K or split-KV combine, a work queue)
  fails, with the largest difference between calls.
- **batch invariance**: a batch item's output does not depend on the other items, nor on its
  position in the batch, nor on the batch size: the output of item ``i`` is the same bits when
  the batch of ``BATCH`` items is given, when the items are given in reverse order, and when item
  ``i`` is given alone. A kernel that picks its tiling or split count from the batch size
  (Thinking Machines Lab, He et al. 2025, "Defeating Nondeterminism in LLM Inference") fails here.

The problem crosses a tile of 128 both ways (``T = 129``, ``S = 257``, ``H = Hv = 64``), in the
callable's layout. A callable that does not take a batch of one (or for the ``TH`` layout,
leading batch dims) gets a skip that says so.
"""

from __future__ import annotations

import numpy as np

from refattn.check.verdict import Verdict

__all__ = ["check_determinism", "check_batch_invariance", "BATCH", "SHAPE"]

#: Batch items in the batch-invariance problem.
BATCH = 4
#: ``(T, S, H, Hv)`` of both problems.
SHAPE = (129, 257, 64, 64)
#: Calls of the determinism check.
CALLS = 3


def _canonical(rng, batch, heads, dtype):
    """q, k, v of shape ``(batch, heads, L, X)``."""
    T, S, H, Hv = SHAPE
    q = rng.standard_normal((batch, heads, T, H)) * 2.0
    k = rng.standard_normal((batch, heads, S, H))
    v = rng.standard_normal((batch, heads, S, Hv))
    return tuple(a.astype(dtype) for a in (q, k, v))


def _call(run, arrays, call_kw, layout, to_layout, from_layout, batched_th=True):
    """The callable's output, canonical ``(B, N, T, Hv)``, or ``(None, problem)``. In the ``TH``
    layout a batch is given as leading dims ``(B, T, H)`` (``batched_th``) or one item as ``(T, H)``."""
    B, N = arrays[0].shape[:2]
    T, Hv = arrays[0].shape[2], arrays[2].shape[-1]
    if layout == "TH":
        given = tuple(a[:, 0] if batched_th else a[0, 0] for a in arrays)
        shape = (B, T, Hv) if batched_th else (T, Hv)
    else:
        given = tuple(to_layout(a, layout) for a in arrays)
        shape = to_layout(np.empty((B, N, T, Hv)), layout).shape
    out, problem = run.call(given, call_kw, shape=shape, finite=False)
    if problem is not None:
        return None, problem
    out = np.asarray(out)
    if layout == "TH":
        return (out[:, None] if batched_th else out[None, None]), None
    return from_layout(out, layout), None


def _differs(a, b) -> float:
    """The largest difference between two arrays that are not the same bits (inf where NaN meets a number)."""
    with np.errstate(all="ignore"):
        d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    d = np.where(np.isnan(a) & np.isnan(b), 0.0, np.where(np.isnan(d), np.inf, d))
    return float(d.max()) if d.size else 0.0


def _same_bits(a, b) -> bool:
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


def check_determinism(run, rng, *, layout, dtype, heads, call_kw, to_layout, from_layout):
    name = "determinism"
    arrays = _canonical(rng, 2, heads, dtype)
    first, problem = _call(run, arrays, call_kw, layout, to_layout, from_layout)
    if problem is not None:
        return run.skip(name, f"fn could not be called on the problem ({problem})")
    worst = 0.0
    for _ in range(CALLS - 1):
        again, problem = _call(run, arrays, call_kw, layout, to_layout, from_layout)
        if problem is not None:
            return run.problem(name, problem, "a call that worked once failed on the same inputs")
        if not _same_bits(first, again):
            worst = max(worst, _differs(first, again))
    if worst:
        return run.add(Verdict(name, False, f"the same inputs gave different outputs (up to {worst:.3g} apart); looks "
                               "like: a reduction whose order depends on scheduling (atomics, a split-KV combine in "
                               "completion order)", statistic=worst, bound=0.0, effect="nondeterministic"))
    return run.add(Verdict(name, True, f"{CALLS} calls on the same inputs (T={SHAPE[0]}, S={SHAPE[1]}, H={SHAPE[2]}): "
                           "the same bits", statistic=0.0, bound=0.0))


def check_batch_invariance(run, rng, *, layout, dtype, heads, call_kw, to_layout, from_layout):
    name = "batch invariance"
    arrays = _canonical(rng, BATCH, heads, dtype)
    whole, problem = _call(run, arrays, call_kw, layout, to_layout, from_layout)
    if problem is not None:
        return run.skip(name, f"fn does not take a batch of {BATCH} ({problem})")
    reverse, problem = _call(run, tuple(a[::-1].copy() for a in arrays), call_kw, layout, to_layout, from_layout)
    if problem is not None:
        return run.problem(name, problem, "the batch in reverse order could not be judged")
    faults, worst = [], 0.0
    for i in range(BATCH):
        if not _same_bits(whole[i], reverse[BATCH - 1 - i]):
            faults.append(f"item {i} at position {BATCH - 1 - i}")
            worst = max(worst, _differs(whole[i], reverse[BATCH - 1 - i]))
        alone, problem = _call(run, tuple(a[i:i + 1].copy() for a in arrays), call_kw, layout, to_layout,
                               from_layout, batched_th=False)
        if problem is not None:
            return run.skip(name, f"fn does not take a single item ({problem})")
        if not _same_bits(whole[i], alone[0]):
            faults.append(f"item {i} alone")
            worst = max(worst, _differs(whole[i], alone[0]))
    if faults:
        return run.add(Verdict(name, False, f"an item's output depends on the rest of the batch ({', '.join(faults[:3])}"
                               f"{' ...' if len(faults) > 3 else ''}: up to {worst:.3g} apart); looks like: tiling or "
                               "split count chosen from the batch size, or a reduction across items",
                               statistic=worst, bound=0.0, effect="batch-variant"))
    return run.add(Verdict(name, True, f"{BATCH} items, in reverse and one at a time: every item the same bits",
                           statistic=0.0, bound=0.0))
