"""The anchors' tolerance rules (refattn.check.rules): each rule passes what its source passes and
fails what it fails, on arrays built so the answer follows from the rule's statement; the audit
runs refattn's checker and every rule on the same calls. Deterministic.
"""

import numpy as np
import pytest

from refattn import softmax_attention
from refattn.check.rules import (ANCHOR_RULES, audit, cosine_rule, fixed_rule, flash_attention_rule,
                                 flex_attention_rule, sdpa_rule)
from refattn.precision import kernel_reference, round_to


@pytest.fixture
def problem():
    rng = np.random.default_rng(7)
    q, k, v = (round_to(rng.standard_normal((48, 32)), "bfloat16") for _ in range(3))
    return softmax_attention(q, k, v), kernel_reference(q, k, v, "bfloat16")


def test_the_flash_attention_rule_allows_twice_the_low_precision_error_plus_its_floor(problem):
    ref64, ref_lo = problem
    ref = round_to(ref64, "bfloat16").astype(np.float64)
    e_lo = np.max(np.abs(ref_lo - ref))
    worst = np.unravel_index(np.argmax(np.abs(ref)), ref.shape)
    ulp = 2.0 ** (np.floor(np.log2(np.abs(ref[worst]))) - 7)  # bfloat16's spacing at the largest output
    assert flash_attention_rule(ref_lo, ref64, ref_lo, "bfloat16")  # its own low-precision reference
    bumped = ref.copy()
    bumped[0, 0] += 2 * e_lo + 0.5 * ulp  # within 2 e_lo + its floor (2 ulp at most)
    assert flash_attention_rule(bumped, ref64, ref_lo, "bfloat16")
    assert flash_attention_rule(ref + 2.9 * e_lo, ref64, ref_lo, "bfloat16", softcap=True)  # rtol 3 with a softcap
    bumped[0, 0] += 2 * ulp + e_lo  # past 2 e_lo + 2 x (the largest rounding of ref + 0.3 - 0.3 <= 1 ulp)
    assert not flash_attention_rule(bumped, ref64, ref_lo, "bfloat16")
    nan = ref.copy()
    nan[3, 3] = np.nan
    assert not flash_attention_rule(nan, ref64, ref_lo, "bfloat16")


def test_the_flex_attention_rule_compares_mean_errors_and_refuses_new_nans(problem):
    ref64, ref_lo = problem
    e = np.mean(np.abs(ref_lo - ref64))
    # |e_c - e| <= 1e-7 + 1.1 e: up to 2.1 e (torch.testing.assert_close of the two means, rtol 1.1)
    assert flex_attention_rule(ref64 + 2.05 * e, ref64, ref_lo, "bfloat16")
    assert not flex_attention_rule(ref64 + 2.2 * e, ref64, ref_lo, "bfloat16")
    nan = ref64.copy()
    nan[0, 0] = np.nan
    assert not flex_attention_rule(nan, ref64, ref_lo, "bfloat16")
    # one entry far off, the rest exact: the mean hides it as long as it is below fudge x the total
    spike = ref64.copy()
    spike[0, 0] += 0.5 * 2.1 * e * ref64.size
    assert flex_attention_rule(spike, ref64, ref_lo, "bfloat16")


def test_the_sdpa_rule_allows_five_times_the_low_precision_max_error(problem):
    ref64, ref_lo = problem
    e = np.max(np.abs(ref_lo - ref64))
    one = ref64.copy()
    one[1, 1] += 4.9 * e
    assert sdpa_rule(one, ref64, ref_lo, "bfloat16")
    one[1, 1] += 0.2 * e
    assert not sdpa_rule(one, ref64, ref_lo, "bfloat16")
    assert sdpa_rule(ref64 + 5e-6, ref64, ref64, "float64")  # the 1e-5 floor
    one[1, 1] = np.nan
    assert not sdpa_rule(one, ref64, ref_lo, "bfloat16")


def test_fixed_tolerances_are_entrywise_and_cosine_similarity_is_scale_blind():
    ref = np.array([1.0, -2.0, 0.0])
    assert fixed_rule(ref + [0.009, 0.0, 0.0], ref, ref, "float16", atol=1e-2, rtol=1e-2)
    assert not fixed_rule(ref + [0.0, 0.0, 0.011], ref, ref, "float16", atol=1e-2, rtol=1e-2)
    assert fixed_rule(ref + [0.0, 0.029, 0.0], ref, ref, "float16", atol=1e-2, rtol=1e-2)  # 0.01 + 0.02
    assert not fixed_rule(np.array([np.nan, -2.0, 0.0]), ref, ref, "float16", atol=1e-2, rtol=1e-2)
    assert cosine_rule(2 * ref, ref, ref, "float16")  # twice the output: similar
    assert not cosine_rule(np.array([2.0, 1.0, 0.0]), ref, ref, "float16")  # orthogonal
    assert cosine_rule(np.zeros(3), np.zeros(3), np.zeros(3), "float16")


def test_the_audit_judges_the_same_calls_by_every_rule():
    from functools import partial

    from refattn.check.bugs import flash_forward

    table = audit({"correct": (partial(flash_forward, store="float16"), "exact", {"precision": "float16"}),
                   "exp2": (partial(flash_forward, fault="exp2 without log2(e)", store="float16"), "exact",
                                  {"precision": "float16"})}, [0])
    assert table["correct"] == {"runs": 1, "refattn": 0, **{r: 0 for r in ANCHOR_RULES}}
    assert table["exp2"] == {"runs": 1, "refattn": 1, **{r: 1 for r in ANCHOR_RULES}}
