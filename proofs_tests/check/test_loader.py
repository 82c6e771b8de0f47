"""Loading a TARGET (refattn.check.loader): load failures, a module that raises on import and a file
path target all become failing verdicts, never tracebacks.
"""

import textwrap

import pytest

from refattn.check import check

USER_MODULE = textwrap.dedent('''
    import numpy as np
    from refattn.check.planted import exact_attention

    def good(q, k, v, causal=False, mask=None):
        return exact_attention(q, k, v, causal=causal, mask=mask)

    def top_left(q, k, v, causal=False, mask=None):
        return exact_attention(q, k, v, causal=causal, mask=mask, alignment="top_left")

    def raises(q, k, v):
        raise RuntimeError("boom")

    def nan(q, k, v):
        return np.full((q.shape[-2], v.shape[-1]), np.nan)

    def wrong_shape(q, k, v):
        return np.zeros(3)

    def ints(q, k, v):
        return np.zeros((q.shape[-2], v.shape[-1]), dtype=int)

    def not_array(q, k, v):
        return object()

    def exits(m, d, seed):
        raise SystemExit(3)

    def hash_floats(x, seed):
        return np.random.default_rng(seed).random(x.shape[0])

    not_callable = 3
''')


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "user_impl.py"
    path.write_text(USER_MODULE)
    return path


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
