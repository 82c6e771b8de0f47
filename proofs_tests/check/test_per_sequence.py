"""judge_sequences (refattn.check.per_sequence): each sequence by the tolerance rule, the failing ones
named, empty rows by the convention, the worst error reported. Deterministic."""

import numpy as np

from refattn.check.per_sequence import judge_sequences
from refattn.exact import softmax_attention


def _items(rng, wrong=(), empty_value=0.0):
    items = []
    for b, (T, S) in enumerate(((3, 5), (4, 0), (6, 6))):
        q, k, v = rng.normal(size=(2, T, 8)), rng.normal(size=(2, S, 8)), rng.normal(size=(2, S, 4))
        got = softmax_attention(q, k, v) if S else np.full((2, T, 4), empty_value)
        if b in wrong:
            got = got + 1e-3
        items.append((b, got, q, k, v, {}))
    return items


def test_a_correct_batch_passes_with_its_worst_error():
    v = judge_sequences("c", _items(np.random.default_rng(0)), precision="float64", empty_rows="zeros",
                        meaning="m", diagnose=lambda bound: "unused")
    assert v.passed and v.statistic < v.bound < 1e-12


def test_the_failing_sequences_are_named_with_the_diagnosis():
    seen = []
    v = judge_sequences("c", _items(np.random.default_rng(0), wrong=(2,)), precision="float64",
                        empty_rows="zeros", meaning="m", diagnose=lambda bound: seen.append(bound) or "looks like: X")
    assert not v.passed and "sequences [2] wrong; looks like: X" in v.meaning and seen == [v.bound]
    assert abs(v.statistic - 1e-3) < 1e-9


def test_rows_without_keys_follow_the_convention():
    items = _items(np.random.default_rng(0), empty_value=np.nan)
    v = judge_sequences("c", items, precision="float64", empty_rows="zeros", meaning="m", diagnose=str)
    assert not v.passed and "8 rows that see no key are not zeros" in v.meaning  # 2 heads x 4 rows
    assert judge_sequences("c", items, precision="float64", empty_rows="any", meaning="m", diagnose=str).passed
