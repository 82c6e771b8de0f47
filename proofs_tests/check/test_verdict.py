"""Verdicts and the report (refattn.check.verdict): Holm's step-down, the table, the JSON and the exit code.
"""

import json

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
    assert rep.exit_code == 1 and "RESULT: FAIL (1 of 3" in rep.format_table()
    d = json.loads(rep.to_json())
    assert [c["verdict"] for c in d["checks"]] == ["FAIL", "PASS", "skip"] and d["passed"] is False
