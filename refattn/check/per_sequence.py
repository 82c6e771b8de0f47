r"""One verdict for a batch of sequences judged one by one (the packed and paged kinds): each sequence
by the tolerance rule against the oracle, heads as its batch axis; rows that see no key by the
empty-rows convention; the sequences that fail named, and what the output looks like.
"""

from __future__ import annotations

import numpy as np

from refattn.check.verdict import Verdict
from refattn.exact import softmax_attention
from refattn.tolerance import check_attention_output

__all__ = ["judge_sequences"]


def judge_sequences(name, items, *, precision, empty_rows, meaning, diagnose):
    """The verdict of case ``name``.

    ``items`` yields ``(b, got, q, k, v, options)`` per sequence ``b``: its output ``got (heads, T, Dv)``
    and its problem for [`refattn.softmax_attention`][refattn.exact.softmax_attention] (``k, v`` with the
    query heads' copies of grouped heads). ``diagnose(bound)`` is called when a sequence fails: what
    the output looks like, as a string.
    """
    worst, failed, empty_bad = None, [], 0
    for b, got, qs, ks, vs, kw in items:
        seen = np.isfinite(softmax_attention(qs, ks, vs, return_lse=True, **kw)[1])  # (heads, T)
        if (~seen).any() and empty_rows == "zeros":
            empty_bad += int((~np.all(got[~seen] == 0, axis=-1)).sum())
        if not seen.any():
            continue
        res = check_attention_output(got, qs, ks, vs, precision=precision, rows=seen, **kw)
        if worst is None or res.error / res.bound > worst.error / worst.bound:
            worst = res
        if not res.passed:
            failed.append(b)
    stat, bound = (worst.error, worst.bound) if worst is not None else (0.0, 0.0)
    faults = []
    if failed:
        faults.append(f"sequences {failed} wrong; {diagnose(bound)}")
    if empty_bad:
        faults.append(f"{empty_bad} rows that see no key are not zeros (--empty-rows zeros)")
    effect = f"max err {stat:.2g}"
    if faults:
        return Verdict(name, False, f"{meaning}; {'; '.join(faults)}", statistic=stat, bound=bound, effect=effect)
    return Verdict(name, True, meaning, statistic=stat, bound=bound, effect=effect)
