"""The attention kind (refattn.check.attention): refattn's correct random-feature attention passes,
and each planted defect of the catalogue (an epsilon floor, fewer features than claimed, values-only
padding, a cumulative sum over the wrong axis, an off-by-one causal mask) fails its named check.

Statistical: the correct implementations are judged at alpha = 1e-6 each (false-failure probability
<= 1e-6 per implementation and seed); the defects at the default alpha = 1e-3, each on two seeds (their
miss rates are measured by the slow tests of proofs_tests/check/test_planted.py: 0 in 300).
"""

import pytest

from refattn.check.planted import CATALOGUE, CORRECT


@pytest.mark.statistical
@pytest.mark.parametrize("name", sorted(n for n, p in CORRECT.items() if p.kind == "attention"))
def test_correct_attention_implementations_pass(name, seed, passes):
    passes(name, seed)


@pytest.mark.statistical
@pytest.mark.parametrize("name", sorted(n for n, p in CATALOGUE.items() if p.kind == "attention"))
def test_planted_attention_defects_are_caught(name, seed, caught):
    caught(name, seed)
