"""The projection kind (refattn.check.projection): refattn's Gaussian and orthogonal samplers pass,
and each planted defect (plain QR, fixed-norm rows, a 2 percent row scale) fails its named check.

Statistical: the correct samplers are judged at alpha = 1e-6 each (false-failure probability <= 1e-6
per sampler and seed); the defects at the default alpha = 1e-3, each on two seeds (miss rates measured
by the slow tests of proofs_tests/check/test_planted.py).
"""

import pytest

from refattn.check.planted import CATALOGUE, CORRECT


@pytest.mark.statistical
@pytest.mark.parametrize("name", sorted(n for n, p in CORRECT.items() if p.kind == "projection"))
def test_correct_projection_implementations_pass(name, seed, passes):
    passes(name, seed)


@pytest.mark.statistical
@pytest.mark.parametrize("name", sorted(n for n, p in CATALOGUE.items() if p.kind == "projection"))
def test_planted_projection_defects_are_caught(name, seed, caught):
    caught(name, seed)
