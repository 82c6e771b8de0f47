"""with_finite_retry (refattn.check.poison): a NaN failure from unused memory is re-posed with finite
values there, and the verdict says which of the two faults it is. Deterministic."""

from refattn.check.poison import NAN_FROM_UNUSED, with_finite_retry
from refattn.check.verdict import Verdict

NAN = Verdict("case", False, f"looks like: {NAN_FROM_UNUSED}", statistic=float("inf"), bound=1.0)
GOOD = Verdict("case", True, "fine", statistic=0.0, bound=1.0)
WRONG = Verdict("case", False, "wrong; looks like: the page-boundary mask", statistic=3.0, bound=1.0)


def _never():
    raise AssertionError("the finite pass must not run")


def test_a_pass_or_another_failure_is_not_posed_again():
    assert with_finite_retry(lambda: GOOD, _never, "the pad") is GOOD
    assert with_finite_retry(lambda: WRONG, _never, "the pad") is WRONG
    problem = object()  # a call's problem (it raised): returned as it is
    assert with_finite_retry(lambda: problem, _never, "the pad") is problem


def test_right_with_finite_values_means_it_loads_and_weighs_by_zero():
    out = with_finite_retry(lambda: NAN, lambda: GOOD, "the pad")
    assert not out.passed and "it loads the pad and weighs them by zero" in out.meaning
    assert out.statistic == NAN.statistic


def test_wrong_with_finite_values_gives_that_verdict():
    out = with_finite_retry(lambda: NAN, lambda: WRONG, "the pad")
    assert not out.passed and out.statistic == 3.0
    assert out.meaning.startswith(WRONG.meaning) and "with NaN there: NaN" in out.meaning
    problem = object()
    assert with_finite_retry(lambda: NAN, lambda: problem, "the pad") is NAN
