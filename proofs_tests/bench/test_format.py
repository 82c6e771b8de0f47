"""A suite's structure check (refattn.bench.format): the validator passes a real run and catches a
dropped point, a NaN ratio, a wrong output shape and a bad verdict.
"""

from __future__ import annotations

from pathlib import Path

from refattn.bench.format import validate_suite
from refattn.bench.suite import load_goals, run_suite

GOALS = load_goals(Path(__file__).resolve().parents[2] / "benchmarks" / "goals.json")


def test_validate_suite_has_power():
    """The validator catches a dropped point, a NaN ratio, a wrong output shape and a bad verdict."""
    good = run_suite(methods=["exact streaming"], lengths=[64, 128], dtypes=["float64"], H=8, repeats=1,
                     gemm_n=64, isolate=False, goals=GOALS)
    assert validate_suite(good) == []
    import copy

    dropped = copy.deepcopy(good)
    dropped["results"].pop()
    nan = copy.deepcopy(good)
    nan["results"][0]["fraction_of_gemm"] = float("nan")
    shape = copy.deepcopy(good)
    shape["results"][0]["output_shape"] = [64, 7]
    verdict = copy.deepcopy(good)
    verdict["goals"][0]["met"] = "yes"
    for bad in (dropped, nan, shape, verdict):
        assert validate_suite(bad), bad
