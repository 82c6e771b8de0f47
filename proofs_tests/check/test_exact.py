"""The exact kind (refattn.check.exact): a correct kernel passes every case, planted faults are named,
an inverted mask is diagnosed, a float16 kernel is judged at its precision, bad callables become
failing verdicts. Deterministic.
"""


import numpy as np
import pytest

from refattn.check import check
from refattn.check.planted import CATALOGUE, CORRECT, exact_attention


def test_exact_correct_passes_every_case(user_file):
    rep = check(f"{user_file}:good", "exact")
    print(rep.format_table())
    assert rep.passed and all(v.passed for v in rep.verdicts), rep.format_table()
    assert len(rep.verdicts) == 11


@pytest.mark.parametrize("name, fault", [
    ("wrong scale", "scale 1 instead of 1/sqrt(H)"),
    ("other causal alignment", "the other causal alignment"),
    ("off-by-one causal (exact)", "causal diagonal excluded"),
    ("missing max subtraction", "missing max subtraction"),
    ("softmax over the wrong axis", "softmax over the query axis"),
])
def test_exact_faults_are_named(name, fault):
    """Deterministic: each planted fault fails its case and the diagnosis names it."""
    planted = CATALOGUE[name]
    rep = check(planted.fn, "exact")
    failed = {v.check: v for v in rep.failures}
    assert planted.fails in failed, rep.format_table()
    assert fault in failed[planted.fails].meaning, failed[planted.fails].meaning


def test_mask_inverted_is_named():
    rep = check(lambda q, k, v, mask=None: exact_attention(q, k, v, mask=~mask), "exact")
    (v,) = [v for v in rep.verdicts if v.check == "mask"]
    assert v.passed is False and "mask inverted" in v.meaning


def test_float16_kernel_judged_at_its_precision():
    """A kernel computing in its inputs' dtype (float16 included) passes; a float32 kernel fed
    float64 is less accurate than float64 allows and fails; a 1% error fails everywhere."""
    rep = check(exact_attention, "exact")  # numpy computes float16 inputs in float16
    assert rep.passed, rep.format_table()

    def f32(q, k, v):
        return exact_attention(*(np.asarray(a, np.float32) for a in (q, k, v)))

    failed = {v.check for v in check(f32, "exact").failures}
    assert "T != S" in failed and "float32 inputs" not in failed and "float16 inputs" not in failed

    def sloppy(q, k, v):
        return exact_attention(q, k, v) * 1.01

    rep = check(sloppy, "exact")
    assert {v.check for v in rep.failures} >= {"float16 inputs", "float32 inputs", "T != S"}


@pytest.mark.parametrize("name, what", [
    ("raises", "raised RuntimeError: boom"), ("nan", "NaN/Inf"), ("wrong_shape", "returned shape (3,)"),
    ("ints", "expected a real floating array"), ("not_array", "dtype object"),
])
def test_bad_callables_become_failing_verdicts(user_file, name, what):
    rep = check(f"{user_file}:{name}", "exact")
    assert not rep.passed and rep.exit_code == 1
    assert any(what in v.meaning for v in rep.failures), rep.format_table()


@pytest.mark.parametrize("name", sorted(n for n, p in CORRECT.items() if p.kind == "exact"))
def test_correct_exact_implementations_pass(name, seed, passes):
    passes(name, seed)


@pytest.mark.parametrize("name", sorted(n for n, p in CATALOGUE.items() if p.kind == "exact"))
def test_planted_exact_defects_are_caught(name, seed, caught):
    caught(name, seed)
