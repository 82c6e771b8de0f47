"""The catalogue of real bugs (refattn.check.bugs): every reproduced bug fails its check at the
checker's defaults, and the same kernels without a fault pass every check (in float64, float16,
bfloat16, split, grouped). Deterministic (the checker's exact and backward kinds); the false-alarm
and catch rates over 30 seeds each are measured by scripts/rule_audit.py (slow test below).
"""

import numpy as np
import pytest

from refattn import attention_backward, softmax_attention
from refattn.check import check
from refattn.check.bugs import BUGS, CORRECT_KERNELS, FAULTS, BACKWARD_FAULTS, flash_backward, flash_forward, stored_in


@pytest.mark.parametrize("name", sorted(CORRECT_KERNELS))
def test_the_kernels_without_a_fault_pass_every_check(name, seed):
    b = CORRECT_KERNELS[name]
    rep = check(b.fn, b.kind, seed=seed, isolate=False, **b.options)
    assert rep.passed, rep.format_table()


@pytest.mark.parametrize("name", sorted(BUGS))
def test_each_reported_bug_fails_at_the_defaults(name, seed):
    b = BUGS[name]
    rep = check(b.fn, b.kind, seed=seed, isolate=False, **b.options)
    assert b.fails in {v.check for v in rep.failures}, rep.format_table()


@pytest.mark.parametrize("name", sorted(n for n, b in BUGS.items() if b.kind == "exact"))
def test_each_reported_bug_fails_in_bfloat16_too(name, seed):
    """The same bug in a kernel that stores in bfloat16, checked at that claim (the anchors' precision)."""
    b = stored_in(BUGS[name], "bfloat16")
    rep = check(b.fn, b.kind, seed=seed, isolate=False, **b.options)
    assert b.fails in {v.check for v in rep.failures}, rep.format_table()


def test_every_fault_is_a_catalogued_bug_with_its_source():
    from functools import partial

    planted = {b.fn.keywords["fault"] for b in BUGS.values() if isinstance(b.fn, partial)}
    assert planted == (set(FAULTS) | set(BACKWARD_FAULTS)) - {""}
    assert len(BUGS) >= 25 and all("/" in b.source and b.what for b in BUGS.values())


def test_the_kernel_is_the_definition():
    rng = np.random.default_rng(11)
    q, k, v, do = rng.standard_normal((200, 32)), rng.standard_normal((150, 32)), rng.standard_normal((150, 16)), \
        rng.standard_normal((200, 16))
    for kw in ({}, {"causal": True}, {"window_size": (40, 7)}, {"softcap": 3.0}, {"key_lengths": np.array([97])}):
        okw = {"window" if a == "window_size" else a: b for a, b in kw.items()}
        if "key_lengths" in okw:
            okw["key_lengths"] = okw["key_lengths"][0]
        np.testing.assert_allclose(flash_forward(q, k, v, **kw), softmax_attention(q, k, v, **okw), atol=1e-13)
        np.testing.assert_allclose(flash_forward(q, k, v, splits=3, **kw), softmax_attention(q, k, v, **okw),
                                   atol=1e-13)
        for g, r in zip(flash_backward(q, k, v, do, **kw), attention_backward(q, k, v, do, **okw)):
            np.testing.assert_allclose(g, r, atol=1e-12)
    with pytest.raises(ValueError, match="fault"):
        flash_forward(q, k, v, fault="typo")


@pytest.mark.slow
def test_over_30_seeds_no_false_alarm_and_every_bug_caught():
    """refattn's verdicts over 30 seeds (REFATTN_CHECK_RUNS): 0 failed runs for every correct kernel,
    every bug (and its bfloat16 twin) caught on every seed. The exact and backward kinds are
    deterministic given the seed, so a single failure is a defect of the rule, not chance."""
    import os

    from refattn.check.rules import audit

    n = int(os.environ.get("REFATTN_CHECK_RUNS", "30"))
    entries = {n_: (b.fn, b.kind, b.options) for n_, b in CORRECT_KERNELS.items()}
    table = audit(entries, range(3000, 3000 + n), rules={})
    assert all(row["refattn"] == 0 for row in table.values()), table
    bugs = dict(BUGS, **{name + " (bfloat16)": stored_in(b, "bfloat16") for name, b in BUGS.items() if b.kind == "exact"})
    table = audit({n_: (b.fn, b.kind, b.options) for n_, b in bugs.items()}, range(3000, 3000 + n), rules={})
    assert all(row["refattn"] == n for row in table.values()), {k: v for k, v in table.items() if v["refattn"] < n}
