"""Verdicts and the report (refattn.check.verdict): Holm's step-down, the table, the JSON and the exit code.
"""

import json

import numpy as np

from refattn.check.verdict import CheckReport, Verdict, holm


def test_holm_controls_and_steps_down():
    assert holm([0.01, 0.04, 0.03], 0.05).tolist() == [True, False, False]
    assert holm([1e-9, 0.02, 0.04], 0.05).tolist() == [True, True, True]
    assert holm([], 0.05).tolist() == []


def test_report_table_json_and_exit_code():
    rep = CheckReport("t", "kernel", 1e-3, 0)
    rep.add(Verdict("a", None, "stat", statistic=5.0, pvalue=1e-5, statistical=True))
    rep.add(Verdict("b", None, "stat", statistic=1.0, pvalue=0.5, statistical=True))
    rep.add(Verdict("c", None, "skipped"))
    rep.finalize()
    assert [v.passed for v in rep.verdicts] == [False, True, None]
    assert rep.exit_code == 1 and "RESULT: FAIL (1 of 2 checks failed, 1 skipped)" in rep.format_table()
    d = json.loads(rep.to_json())
    assert [c["verdict"] for c in d["checks"]] == ["FAIL", "PASS", "skip"] and d["passed"] is False


def test_bonferroni_p_of_an_empty_family_is_one():
    from refattn.check.verdict import bonferroni_p

    assert bonferroni_p([]) == 1.0
    assert bonferroni_p([0.01, 0.2]) == 0.02 and bonferroni_p([0.9, np.nan]) == 1.0


def test_table_columns_line_up_and_printed_output_is_cut_at_800_characters():
    """Every column starts at the same offset in the header and in each row (widths are the
    longest cell); the last column is free text; what the callable printed is shown whole up
    to 800 characters and cut (with a marker) beyond."""
    rep = CheckReport("t", "kernel", 1e-3, 0)
    rep.add(Verdict("a much longer check name", True, "short meaning", statistic=1.0, pvalue=0.5))
    rep.add(Verdict("b", False, "a considerably longer meaning than the header", statistic=12345.678))
    lines = rep.format_table().splitlines()
    head = next(ln for ln in lines if ln.startswith("check"))
    rows = [ln for ln in lines if ln.startswith("a much") or ln.startswith("b ")]
    for col in ("verdict", "statistic", "what it means"):
        at = head.index(col)
        assert all(r[at - 2:at] == "  " and r[at] != " " for r in rows), (col, rows)
    dashes = next(ln for ln in lines if ln.startswith("-"))
    assert dashes.split()[-1] == "-" * len("what it means")  # the free-text column is not padded
    assert [len(d) for d in dashes.split()][:5] == [len("a much longer check name"), 7, len("statistic"), 7, 6]
    rep.output = "x" * 800
    assert "x" * 800 in rep.format_table() and "[...]" not in rep.format_table()
    rep.output = "x" * 801
    assert "x" * 800 + " [...]" in rep.format_table() and "x" * 801 not in rep.format_table()


def test_only_statistical_verdicts_are_decided_by_holm():
    """A deterministic verdict that carries a p-value keeps its own pass/fail through finalize."""
    rep = CheckReport("t", "kernel", 1e-3, 0)
    rep.add(Verdict("exact", True, "a bound", statistic=1.0, pvalue=1e-12))
    rep.add(Verdict("stat", None, "random", statistic=5.0, pvalue=1e-12, statistical=True))
    rep.finalize()
    assert [v.passed for v in rep.verdicts] == [True, False]


def test_the_result_line_counts_the_checks_run_and_the_skips_apart():
    rep = CheckReport("t", "exact", 1e-3, 0)
    rep.add(Verdict("a", False, "wrong", statistic=2.0, bound=1.0))
    rep.add(Verdict("b", True, "right", statistic=0.5, bound=1.0))
    assert rep.format_table().splitlines()[-1] == "RESULT: FAIL (1 of 2 checks failed)"
    rep = CheckReport("t", "kernel", 1e-3, 0)
    rep.add(Verdict("a", None, "underpowered", inconclusive=True))
    rep.add(Verdict("b", None, "fn takes no m= keyword"))
    assert "RESULT: INCONCLUSIVE (1 of 1 checks could not have detected a defect of their tolerance, 1 skipped;" \
        in rep.format_table()
