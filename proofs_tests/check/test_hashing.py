"""The hash kind (refattn.check.hashing): refattn's SimHash, cross-polytope, E2LSH and angular
hashes pass, and each planted defect (a double-counted round, correlated seeds) fails its named check.

Statistical: the correct hashes are judged at alpha = 1e-6 each (false-failure probability <= 1e-6 per
hash and seed); the defects at the default alpha = 1e-3, each on two seeds (miss rates measured by the
slow tests of proofs_tests/check/test_planted.py).
"""

import pytest

from refattn.check.planted import CATALOGUE, CORRECT


@pytest.mark.statistical
@pytest.mark.parametrize("name", sorted(n for n, p in CORRECT.items() if p.kind == "hash"))
def test_correct_hash_implementations_pass(name, seed, passes):
    passes(name, seed)


@pytest.mark.statistical
@pytest.mark.parametrize("name", sorted(n for n, p in CATALOGUE.items() if p.kind == "hash"))
def test_planted_hash_defects_are_caught(name, seed, caught):
    caught(name, seed)
