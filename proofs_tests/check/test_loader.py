"""Loading a TARGET (refattn.check.loader): load failures, a module that raises on import and a file
path target all become failing verdicts, never tracebacks.
"""



import pytest

from refattn.check import check


@pytest.mark.parametrize("target, what", [("not_callable", "not callable"), ("missing", "no attribute")])
def test_load_failures_are_verdicts(user_file, target, what):
    rep = check(f"{user_file}:{target}", "exact")
    assert [v.check for v in rep.failures] == ["load"] and what in rep.failures[0].meaning


def test_module_that_raises_on_import(tmp_path):
    (tmp_path / "broken.py").write_text("raise ImportError('half-installed')\n")
    rep = check(f"{tmp_path / 'broken.py'}:fn", "exact")
    assert "ImportError: half-installed" in rep.failures[0].meaning


def test_module_path_target():
    rep = check("refattn.check.planted:exact_attention", "exact")
    assert rep.passed
