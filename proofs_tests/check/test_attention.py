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


@pytest.mark.statistical
def test_a_float32_estimator_needs_no_precision_claim(seed):
    """A Performer computing in float32 passes the attention kind as it is: the statistical checks'
    noise dwarfs float32 rounding and the deterministic ones allow the result dtype's rounding.
    False-failure probability <= 1e-6 (alpha = 1e-6)."""
    import numpy as np

    from refattn.check import check
    from refattn.check.planted import performer_estimator

    def in_float32(q, k, v, seed, m=64, causal=False, key_lengths=None):
        args = (a.astype(np.float32) for a in (q, k, v))
        return performer_estimator(*args, seed, m=m, causal=causal, key_lengths=key_lengths).astype(np.float32)

    rep = check(in_float32, "attention", m=64, seed=seed, alpha=1e-6, isolate=False)
    assert rep.passed, rep.format_table()


def test_a_float32_estimator_with_a_planted_defect_still_fails():
    """Power twin of the test above: the same float32 Performer with half the features it claims is
    caught at the defaults (the float32 allowance does not hide a real defect)."""
    import numpy as np

    from refattn.check import check
    from refattn.check.planted import performer_estimator

    def in_float32(q, k, v, seed, m=64, causal=False, key_lengths=None):
        args = (a.astype(np.float32) for a in (q, k, v))
        return performer_estimator(*args, seed, m=m, causal=causal, key_lengths=key_lengths,
                                   feature_fraction=0.5).astype(np.float32)

    for seed in (0, 1000):
        rep = check(in_float32, "attention", m=64, seed=seed, isolate=False)
        assert not rep.passed, rep.format_table()
